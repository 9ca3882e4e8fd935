"""A balloon twin with a device profile: its values never go out, its physics differ."""

from __future__ import annotations

import struct
import time
from collections.abc import Callable

import numpy as np
import pytest

pytest.importorskip("pymavlink", reason="the MAVLink backend needs pymavlink: twinloop[balloon]")

import twinloop
from twinloop.cli import main
from twinloop.core.profile import parse_profile
from twinloop.hardware.balloon import protocol as P
from twinloop.hardware.balloon.fake import RawPeer, running_twin
from twinloop.hardware.balloon.server import VehicleTwin

ID = "twinloop/BalloonStationKeeping-v0"
INFO = P.MAV_SEVERITY_INFO
FAST = {"ack_timeout_s": 0.3, "retries": 2, "connect_timeout_s": 5.0, "heartbeat_s": 0.2}


def wait(cond: Callable[[], bool], timeout_s: float = 3.0) -> bool:
    """Poll ``cond`` until it holds or ``timeout_s`` passes; its last value."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


def _secrets(profile) -> list[float]:
    out: list[float] = []
    for value in profile.values.values():
        out += [float(v) for v in value] if isinstance(value, tuple) else [float(value)]
    return [v for v in out if v != 0.0]


def test_nothing_the_twin_sends_carries_the_profile() -> None:
    cfg = twinloop.make_config(ID)
    profile = parse_profile("random:7", cfg)
    secrets = _secrets(profile)
    with running_twin(cfg, profile=profile, heartbeat_s=0.2) as (twin, _):
        peer = RawPeer(sysid=255)
        try:
            low, high = P.split_seed(3)
            peer.command(twin.address, P.CMD_EPISODE, low, high, 1)
            got = peer.receive(timeout_s=0.5)
            for seq, code in enumerate([0, 2, 1, 0], start=2):
                peer.command(twin.address, P.CMD_ALTITUDE, code, seq)
                got += peer.receive(timeout_s=0.3)
        finally:
            peer.close()
    assert any(m.get_type() == "COMMAND_ACK" for m in got)
    numbers = [
        float(v)
        for m in got
        for v in m.to_dict().values()
        if isinstance(v, int | float) and not isinstance(v, bool)
    ]
    for secret in secrets:
        assert not np.isclose(numbers, secret, rtol=1e-6, atol=0).any(), secret
        for m in got:  # nor in any message's bytes, as float32 or float64
            raw = bytes(m.get_msgbuf())
            assert struct.pack("<f", secret) not in raw and struct.pack("<d", secret) not in raw
    # the name goes out in the announcement only: at first contact and after the episode start
    announced = [m.text for m in got if m.get_type() == "STATUSTEXT" and m.severity == INFO]
    assert announced == ["device profile: random:7"] * 2
    texts = " ".join(
        str(v)
        for m in got
        if not (m.get_type() == "STATUSTEXT" and m.severity == INFO)
        for v in m.to_dict().values()
        if isinstance(v, str)
    )
    assert "random" not in texts and "profile" not in texts


def test_a_profiled_twin_flies_other_physics_than_the_nominal_one() -> None:
    cfg = twinloop.make_config(ID)
    commands = [0, 0, 0, 1, 2, 2, 0, 0]
    flights, identities = {}, {}
    for name, profile in (("nominal", None), ("profiled", parse_profile("random:7", cfg))):
        with running_twin(cfg, profile=profile) as (_, address):
            env = twinloop.make(ID, backend="mavlink", address=address, **FAST)
            obs = [env.reset(seed=4)[0]]
            obs += [env.step(a)[0] for a in commands]
            identities[name] = env.unwrapped.backend.identity()
            env.close()
        flights[name] = np.array(obs)
    assert not np.allclose(flights["nominal"][1:], flights["profiled"][1:], rtol=1e-4)
    assert "profile" not in identities["nominal"]  # a nominal twin announces nothing
    assert identities["profiled"]["profile"] == "random:7"


def test_serve_refuses_a_bad_profile_precisely(tmp_path, capsys) -> None:
    assert main(["serve", "balloon", "--port", "0", "--profile", "random:-3"]) == 2
    assert "seed must be an integer >= 0" in capsys.readouterr().err
    bad = tmp_path / "leaky.json"
    bad.write_text('{"drag_coefficient": -1}')
    assert main(["serve", "balloon", "--port", "0", "--profile", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "leaky.json" in err and "drag_coefficient = -1" in err


def test_a_capture_through_a_profiled_twin_records_its_name_not_its_values(tmp_path) -> None:
    from twinloop.datasets import open_dataset, record
    from twinloop.datasets.writer import dataset_dir

    cfg = twinloop.make_config(ID)
    profile = parse_profile("random:12", cfg)
    with running_twin(cfg, profile=profile) as (_, address):
        env = twinloop.make(ID, backend="mavlink", address=address, max_steps=3, **FAST)
        directory = dataset_dir(tmp_path, "tt/balloon-profiled-v0")
        env = record(env, directory, dataset_id="tt/balloon-profiled-v0")
        env.reset(seed=2)
        assert env.unwrapped.backend.identity()["profile"] == "random:12"
        while True:
            *_, terminated, truncated, _ = env.step(1)
            if terminated or truncated:
                break
        env.close()
    with open_dataset(directory) as ds:
        meta = ds.metadata["twinloop"]
        assert meta["device_profile"] == {"name": "random:12"}
        assert meta["backend"]["profile"] == "random:12"
        assert "privileged" not in meta
    text = (directory / "data" / "metadata.json").read_text()
    for secret in _secrets(profile):
        assert repr(secret) not in text


def test_the_twin_refuses_a_name_no_announcement_can_carry(tmp_path, capsys) -> None:
    cfg = twinloop.make_config(ID)
    long = parse_profile("random:1", cfg)
    long = type(long)("x" * (P.MAX_PROFILE_NAME + 1), long.values)
    with pytest.raises(ValueError, match=f"has {P.MAX_PROFILE_NAME + 1} characters.*1 to 32"):
        VehicleTwin(cfg, port=0, profile=long)
    spaced = tmp_path / "my device.json"
    spaced.write_text('{"drag_coefficient": 0.3}')
    assert main(["serve", "balloon", "--port", "0", "--profile", str(spaced)]) == 2
    err = capsys.readouterr().err
    assert "'my device'" in err and "letters, digits" in err


ROGUE_TEXTS = {
    "oversized": (INFO, 0, b"device profile: " + b"n" * (P.MAX_PROFILE_NAME + 2)),
    "not printable": (INFO, 0, b"device profile: ok\x07bell"),
    "not ascii": (INFO, 0, b"device profile: caf\xc3\xa9"),
    "a space": (INFO, 0, b"device profile: two words"),
    "empty": (INFO, 0, b"device profile: "),
    "leading dot": (INFO, 0, b"device profile: .hidden"),
    "not INFO": (P.MAV_SEVERITY_WARNING, 0, b"device profile: other"),
    "a chunk": (INFO, 3, b"device profile: other"),
}


def test_a_rogue_vehicles_malformed_announcement_is_dropped() -> None:
    cfg = twinloop.make_config(ID)
    with running_twin(cfg, profile=parse_profile("random:7", cfg)) as (_, address):
        env = twinloop.make(ID, backend="mavlink", address=address, **FAST)
        env.reset(seed=1)
        gcs = env.unwrapped.backend
        rogue = RawPeer(sysid=P.VEHICLE_SYSID)
        client = gcs._sock.getsockname()
        try:
            for i, (why, (severity, chunk, text)) in enumerate(ROGUE_TEXTS.items()):
                before = gcs.stats["rejected"]
                rogue.send_msg(rogue.mav.statustext_encode(severity, text, chunk), client)
                # the client has read it once it has read the plain status text sent after it
                mark = f"mark {i}"
                rogue.send_msg(
                    rogue.mav.statustext_encode(P.MAV_SEVERITY_WARNING, mark.encode()), client
                )
                assert wait(lambda m=mark: gcs.vehicle_status["said"] == m), why
                assert gcs.stats["rejected"] == before + 1, why
                assert gcs.identity()["profile"] == "random:7", why
            assert gcs.listening and gcs.stats["errors"] == 0
            # a well-formed one is taken: the ones above were dropped for their form alone
            text = f"device profile: {'n' * P.MAX_PROFILE_NAME}".encode()
            rogue.send_msg(rogue.mav.statustext_encode(INFO, text), client)
            assert wait(lambda: gcs.identity().get("profile") == "n" * P.MAX_PROFILE_NAME)
            env.step(1)  # and the client still flies the vehicle
        finally:
            rogue.close()
            env.close()
