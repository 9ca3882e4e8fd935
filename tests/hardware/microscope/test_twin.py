"""The microscope twin: parity with the in-process instrument, and every fault of issue 3."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

zmq = pytest.importorskip("zmq", reason="the 'microscope' extra (pyzmq, msgpack) is needed")
msgpack = pytest.importorskip("msgpack", reason="the 'microscope' extra is needed")

import twinloop  # noqa: E402
from tests.conftest import assert_same  # noqa: E402
from twinloop.cli import main  # noqa: E402
from twinloop.hardware.microscope.fake import SimMicroscope  # noqa: E402
from twinloop.hardware.microscope.protocol import (  # noqa: E402
    MAX_REQUEST_BYTES,
    MicroscopeFault,
    MicroscopeLimitError,
)
from twinloop.hardware.microscope.remote import RemoteMicroscope  # noqa: E402
from twinloop.hardware.microscope.server import MicroscopeServer  # noqa: E402

ID = "twinloop/StemSteer-v0"
FAST = dict(frame_pixels=64, frame_time_s=0.5)  # small frames keep these tests quick


@pytest.fixture
def twin():
    cfg = twinloop.make_config(ID)
    server = MicroscopeServer(SimMicroscope(cfg), port=0, watchdog_s=0.3).start()
    yield server
    server.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _raw(address: str, payload: bytes, timeout_ms: int = 2000):
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, timeout_ms)
    sock.connect(address)
    try:
        sock.send(payload)
        return msgpack.unpackb(sock.recv(), raw=False)
    except zmq.Again:
        return None
    finally:
        sock.close(linger=0)


def _episode(env, seed: int, actions) -> list:
    out = [env.reset(seed=seed)]
    for a in actions:
        step = env.step(a)
        out.append(step)
        if step[2] or step[3]:
            break
    return out


def test_remote_twin_equals_in_process_instrument(twin) -> None:
    """Same seeds, same actions -> same trajectories (the twin runs the same kernel)."""
    local = twinloop.make(ID, backend="sim-image")
    remote = twinloop.make(ID, backend="remote", address=twin.address)
    rng = np.random.default_rng(0)
    for seed in (1, 2):
        actions = rng.uniform(-3, 3, size=(12, 2)).astype(np.float32)
        assert_same(_episode(local, seed, actions), _episode(remote, seed, actions))
    remote.close()
    assert twin.microscope.blanked


def test_image_backends_give_the_simulators_spaces(twin) -> None:
    sim = twinloop.make(ID)
    remote = twinloop.make(ID, backend="remote", address=twin.address)
    assert remote.observation_space == sim.observation_space
    assert remote.action_space == sim.action_space
    obs, info = remote.reset(seed=0)
    assert remote.observation_space.contains(obs)
    _, _, _, _, info = remote.step(remote.action_space.sample())
    assert {"applied_command", "elapsed_s", "reward/time", "true/si_site"} <= set(info)


def test_out_of_range_commands_are_refused_and_leave_the_beam_blanked(twin) -> None:
    mic = RemoteMicroscope(twin.address, timeout_s=2)
    mic.connect()
    with pytest.raises(MicroscopeLimitError, match=r"x_angstrom = 12 A is outside .*\[-10, 10\]"):
        mic.park(12.0, 0.0)
    with pytest.raises(MicroscopeLimitError, match=r"dwell seconds = 25 s is outside \[0.1, 20\]"):
        mic.dwell(25.0)
    # the twin checks again whatever a client sends
    reply = _raw(
        twin.address,
        msgpack.packb(
            {"v": 1, "id": 7, "op": "park", "args": {"x_angstrom": 50.0, "y_angstrom": 0.0}}
        ),
    )
    assert reply["ok"] is False and reply["error"]["type"] == "limit"
    assert "outside the field of view" in reply["error"]["message"]
    assert twin.microscope.blanked
    mic.close()


@pytest.mark.parametrize(
    ("payload", "kind"),
    [
        (b"\xc1\xff garbage", "bad_request"),
        (msgpack.packb([1, 2, 3]), "bad_request"),
        (msgpack.packb({"v": 1, "id": 1, "op": "explode", "args": {}}), "bad_request"),
        (msgpack.packb({"v": 1, "id": 1, "op": "dwell", "args": {"seconds": "x"}}), "bad_request"),
        (msgpack.packb({"v": 1, "id": 1, "op": "dwell", "args": {}}), "bad_request"),
        (msgpack.packb({"v": 9, "id": 1, "op": "ping", "args": {}}), "version"),
    ],
)
def test_malformed_messages_are_rejected_and_the_twin_stays_up(twin, payload, kind) -> None:
    reply = _raw(twin.address, payload)
    assert reply["ok"] is False and reply["error"]["type"] == kind
    mic = RemoteMicroscope(twin.address, timeout_s=2)
    mic.connect()  # still serving
    mic.close()


def test_oversized_messages_are_dropped_and_the_twin_stays_up(twin) -> None:
    assert _raw(twin.address, b"x" * (MAX_REQUEST_BYTES + 1), timeout_ms=500) is None
    mic = RemoteMicroscope(twin.address, timeout_s=2)
    mic.connect()
    mic.close()


def test_wrong_token_is_refused() -> None:
    cfg = twinloop.make_config(ID)
    server = MicroscopeServer(SimMicroscope(cfg), port=0, token="s3cret").start()
    try:
        with pytest.raises(PermissionError, match="wrong or missing token"):
            RemoteMicroscope(server.address, token="guess", timeout_s=2).connect()
        with pytest.raises(PermissionError):
            RemoteMicroscope(server.address, timeout_s=2).connect()
        ok = RemoteMicroscope(server.address, token="s3cret", timeout_s=2)
        ok.connect()
        ok.close()
    finally:
        server.stop()


def test_request_timeout_is_bounded() -> None:
    ctx = zmq.Context.instance()
    silent = ctx.socket(zmq.REP)  # accepts requests and never answers
    port = silent.bind_to_random_port("tcp://127.0.0.1")
    try:
        mic = RemoteMicroscope(f"tcp://127.0.0.1:{port}", timeout_s=0.3)
        t0 = time.monotonic()
        with pytest.raises(MicroscopeFault, match=r"did not answer 'hello' within 0.3 s"):
            mic.connect()
        assert time.monotonic() - t0 < 1.5
    finally:
        silent.close(linger=0)


def test_watchdog_blanks_the_beam_when_the_client_disappears(twin) -> None:
    mic = RemoteMicroscope(twin.address, timeout_s=2)
    mic.connect()
    mic.unblank()
    assert not twin.microscope.blanked
    time.sleep(0.8)  # the client falls silent for longer than watchdog_s = 0.3
    assert twin.microscope.blanked and twin.watchdog_trips >= 1


def _spawn_twin(port: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "twinloop.cli",
            "serve",
            "microscope",
            "--port",
            str(port),
            "--set",
            "frame_pixels=64",
            "--set",
            "frame_time_s=0.5",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()
    assert "listening on" in line, proc.stderr.read()
    return proc


def test_twin_killed_mid_episode_then_restarted() -> None:
    port = _free_port()
    proc = _spawn_twin(port)
    env = twinloop.make(
        ID, backend="remote", address=f"tcp://127.0.0.1:{port}", timeout_s=2.0, **FAST
    )
    try:
        env.reset(seed=0)
        # an episode that is still running when the twin dies (a random action can end one
        # in a single step: a hop onto the goal, a knock-out)
        _, _, term, trunc, _ = env.step(env.action_space.sample())
        while term or trunc:
            env.reset()
            _, _, term, trunc, _ = env.step(np.zeros(2, np.float32))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        t0 = time.monotonic()
        with pytest.raises(MicroscopeFault, match="did not answer"):
            env.step(env.action_space.sample())
        assert time.monotonic() - t0 < 4.0, "no hang beyond the timeout (+ the safe-state try)"
        with pytest.raises(RuntimeError, match="reset"):
            env.step(env.action_space.sample())  # the env reports the fault: reset required
        proc = _spawn_twin(port)
        obs, _ = env.reset(seed=1)  # the client reconnects to the restarted twin
        assert env.observation_space.contains(obs)
        env.step(env.action_space.sample())
    finally:
        env.close()
        proc.kill()
        proc.wait()


def test_cli_runs_a_controller_against_the_twin(capsys) -> None:
    port = _free_port()
    proc = _spawn_twin(port)
    try:
        code = main(
            [
                "run",
                ID,
                "--backend",
                "remote",
                "--port",
                str(port),
                "--controller",
                "greedy-neighbor",
                "--episodes",
                "2",
                "--quiet",
                "--set",
                "frame_pixels=64",
                "--set",
                "frame_time_s=0.5",
            ]
        )
        assert code == 0
        out = capsys.readouterr().out
        assert "backend=remote" in out and "success rate" in out
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
