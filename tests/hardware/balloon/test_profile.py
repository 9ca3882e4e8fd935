"""A balloon twin with a device profile: its values never go out, its physics differ."""

from __future__ import annotations

import struct

import numpy as np
import pytest

pytest.importorskip("pymavlink", reason="the MAVLink backend needs pymavlink: twinloop[balloon]")

import twinloop
from twinloop.cli import main
from twinloop.core.profile import parse_profile
from twinloop.hardware.balloon import protocol as P
from twinloop.hardware.balloon.fake import RawPeer, running_twin

ID = "twinloop/BalloonStationKeeping-v0"
FAST = {"ack_timeout_s": 0.3, "retries": 2, "connect_timeout_s": 5.0, "heartbeat_s": 0.2}


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
    texts = " ".join(str(v) for m in got for v in m.to_dict().values() if isinstance(v, str))
    assert "random" not in texts and "profile" not in texts


def test_a_profiled_twin_flies_other_physics_than_the_nominal_one() -> None:
    cfg = twinloop.make_config(ID)
    commands = [0, 0, 0, 1, 2, 2, 0, 0]
    flights = {}
    for name, profile in (("nominal", None), ("profiled", parse_profile("random:7", cfg))):
        with running_twin(cfg, profile=profile) as (_, address):
            env = twinloop.make(ID, backend="mavlink", address=address, **FAST)
            obs = [env.reset(seed=4)[0]]
            obs += [env.step(a)[0] for a in commands]
            env.close()
        flights[name] = np.array(obs)
    assert not np.allclose(flights["nominal"][1:], flights["profiled"][1:], rtol=1e-4)


def test_serve_refuses_a_bad_profile_precisely(tmp_path, capsys) -> None:
    assert main(["serve", "balloon", "--port", "0", "--profile", "random:-3"]) == 2
    assert "seed must be an integer >= 0" in capsys.readouterr().err
    bad = tmp_path / "leaky.json"
    bad.write_text('{"drag_coefficient": -1}')
    assert main(["serve", "balloon", "--port", "0", "--profile", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "leaky.json" in err and "drag_coefficient = -1" in err
