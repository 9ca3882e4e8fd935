"""The MAVLink path: sim-vs-twin parity, link loss, garbage and out-of-range input, refusals."""

from __future__ import annotations

import time

import numpy as np
import pytest

pytest.importorskip("pymavlink", reason="the MAVLink backend needs pymavlink: twinloop[balloon]")

import twinloop
from twinloop.core.backend import BackendFault
from twinloop.hardware.balloon import protocol as P
from twinloop.hardware.balloon.fake import RawPeer, running_twin

ID = "twinloop/BalloonStationKeeping-v0"
FAST = {"ack_timeout_s": 0.3, "retries": 2, "connect_timeout_s": 5.0, "heartbeat_s": 0.2}


def _wait(cond, timeout: float = 3.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


def test_sim_and_twin_fly_the_same_flight() -> None:
    """Same seed, same commands: the twin over MAVLink matches the in-process simulator.

    Differences come only from the wire formats (1e-7 degree positions, float32 fields). The
    ambient features and the reward match tightly; in the 181-level wind column a measurement
    updates the level nearest the balloon's pressure, so a float32-rounded pressure at a level
    boundary may update its neighbour instead: up to 1 % of column entries may differ more.
    """
    sim = twinloop.make(ID)
    with running_twin() as (_, address):
        env = twinloop.make(ID, backend="mavlink", address=address)
        o_twin, _ = env.reset(seed=7)
        o_sim, _ = sim.reset(seed=7)
        column = env.observation_space.shape[0] - 181 * 3  # the wind column comes last

        def same(a: np.ndarray, b: np.ndarray) -> None:
            np.testing.assert_allclose(a[:column], b[:column], rtol=1e-5, atol=1e-2)
            off = ~np.isclose(a[column:], b[column:], rtol=1e-5, atol=1e-2)
            assert off.mean() <= 0.01, f"{off.sum()} wind-column entries differ"

        same(o_twin, o_sim)
        commands = [0, 0, 0, 1, 2, 2, 1, 0, 1, 1] * 3
        for a in commands:
            got, want = env.step(a), sim.step(a)
            same(got[0], want[0])
            assert got[1] == pytest.approx(want[1], abs=1e-6)
            assert got[2:4] == want[2:4]
            assert got[4]["applied_command"][0] == want[4]["applied_command"][0]
            assert got[4]["distance_km"] == pytest.approx(want[4]["distance_km"], abs=1e-4)
        env.close()


def test_link_loss_mid_flight_is_a_fault_and_the_vehicle_holds() -> None:
    with running_twin(link_timeout_s=0.5) as (twin, address):
        env = twinloop.make(ID, backend="mavlink", address=address, **FAST)
        env.reset(seed=1)
        for _ in range(3):
            env.step(1)
        steps = twin.stats["steps"]
        twin.link_up = False  # the radio goes silent both ways
        with pytest.raises(BackendFault, match="link lost"):
            env.step(0)
        assert twin.stats["steps"] == steps  # the vehicle never executed the command
        assert _wait(lambda: twin.failsafe), "the twin must enter its failsafe"
        with pytest.raises(RuntimeError, match="reset"):
            env.step(1)  # the env ended the episode on the fault
        twin.link_up = True
        env.reset(seed=2)  # the link is back: a new episode flies
        env.step(1)
        assert not twin.failsafe
        env.close()


def test_garbage_and_out_of_range_telemetry_are_dropped() -> None:
    with running_twin() as (twin, address):
        env = twinloop.make(ID, backend="mavlink", address=address, **FAST)
        env.reset(seed=3)
        backend = env.unwrapped.backend
        client = backend._sock.getsockname()
        peer = RawPeer(sysid=P.VEHICLE_SYSID)  # pretends to be the vehicle
        peer.send(b"\xfd\x09garbage\x00\xff" * 20, client)
        peer.send(bytes(range(256)), twin.address)
        # a frame with a latitude of 200 degrees
        mav = peer.mav
        peer.send_msg(mav.home_position_encode(0, 0, 0, 0, 0, 0, [1, 0, 0, 0], 0, 0, 0), client)
        peer.send_msg(mav.global_position_int_encode(0, 2_000_000_000, 0, 0, 0, 0, 0, 0, 0), client)
        assert _wait(lambda: backend.stats["rejected_frames"] >= 1)
        assert _wait(lambda: backend.stats["garbage"] >= 1)
        assert _wait(lambda: twin.stats["garbage"] >= 1)
        # an out-of-range command from a ground station is denied and not executed
        gcs = RawPeer(sysid=P.GCS_SYSID)
        steps = twin.stats["steps"]
        gcs.send_msg(
            gcs.mav.command_long_encode(1, 1, P.CMD_ALTITUDE, 0, 7.0, 9999.0, 0, 0, 0, 0, 0),
            twin.address,
        )
        assert _wait(lambda: twin.stats["denied"] >= 1)
        assert twin.stats["steps"] == steps
        # the env still flies normally
        *_, info = env.step(1)
        assert info["applied_command"][0] == 1.0
        peer.close()
        gcs.close()
        env.close()


def test_a_refused_command_flies_stay_and_is_reported() -> None:
    with running_twin(refuse=(0,)) as (twin, address):
        env = twinloop.make(ID, backend="mavlink", address=address, **FAST)
        env.reset(seed=4)
        *_, info = env.step(0)
        assert info["applied_command"][0] == 1.0
        assert info["command_clipped"]
        assert env.unwrapped.backend.stats["denied"] == 1
        assert twin.stats["denied"] == 1
        env.close()


def test_no_vehicle_is_a_precise_error() -> None:
    peer = RawPeer()  # a silent port nobody serves
    host, port = peer.address
    peer.close()
    env = twinloop.make(ID, backend="mavlink", address=f"udp:{host}:{port}", connect_timeout_s=0.3)
    with pytest.raises(BackendFault, match="no heartbeat"):
        env.reset(seed=0)
    with pytest.raises(ValueError, match="udp:HOST:PORT"):
        twinloop.make(ID, backend="mavlink", address="nowhere")


def test_seed_travels_exactly() -> None:
    for seed in (0, 1, 2**24 - 1, 2**24, 123456789012):
        assert P.join_seed(*P.split_seed(seed)) == seed
    with pytest.raises(ValueError, match="2\\^48"):
        P.split_seed(2**48)


def test_cli_serve_and_run_fly_through_the_twin(capsys: pytest.CaptureFixture[str]) -> None:
    """``twinloop serve balloon`` in its own process; ``twinloop run --backend mavlink``."""
    import subprocess
    import sys

    from twinloop.cli import main

    proc = subprocess.Popen(
        [sys.executable, "-m", "twinloop.cli", "serve", "balloon", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()  # "balloon vehicle twin listening on udp:HOST:PORT"
        address = line.strip().rsplit(" ", 1)[-1]
        assert address.startswith("udp:127.0.0.1:")
        rc = main(
            [
                "run",
                ID,
                "--backend",
                "mavlink",
                "--address",
                address,
                "--controller",
                "station-seeker",
                "--episodes",
                "2",
                "--set",
                "max_steps=20",
                "--quiet",
            ]
        )
        assert rc == 0
        out = capsys.readouterr().out
        assert "backend=mavlink" in out and "twr50" in out
    finally:
        proc.kill()
        proc.wait(timeout=10)
