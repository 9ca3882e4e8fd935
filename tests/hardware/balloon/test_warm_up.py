"""The balloon vehicle twin is ready when it says so: warm-up before "listening" (issue 12)."""

from __future__ import annotations

import pytest

pytest.importorskip("pymavlink", reason="the MAVLink backend needs pymavlink: twinloop[balloon]")

import twinloop
from twinloop.core.backend import BackendFault
from twinloop.hardware.balloon import server as S
from twinloop.hardware.balloon.backend import MavlinkBalloonBackend
from twinloop.hardware.balloon.fake import RawPeer, running_twin
from twinloop.sim.balloon.env import BalloonSimBackend

ID = "twinloop/BalloonStationKeeping-v0"
FAST = {"ack_timeout_s": 0.3, "retries": 2, "connect_timeout_s": 5.0, "heartbeat_s": 0.2}


def test_warm_up_flies_a_throwaway_simulator(monkeypatch) -> None:
    cfg = twinloop.make_config(ID)
    flown: list[tuple[str, str]] = []
    apply = BalloonSimBackend.apply

    def spy(self: BalloonSimBackend, command):
        flown.append(("served" if self is twin.sim else "shadow", "apply"))
        return apply(self, command)

    monkeypatch.setattr(BalloonSimBackend, "apply", spy)
    twin = S.VehicleTwin(cfg, port=0)
    try:
        seq, stats = twin.mav.seq, dict(twin.stats)
        twin.warm_up()
        assert flown == [("shadow", "apply")] and twin.warmed_up
        assert twin.mav.seq == seq and twin.stats == stats  # the served link is untouched
        twin.warm_up()  # once only
        assert len(flown) == 1
        twin.start()
        # the first episode starts after the warm-up, from the twin's seed
        want = BalloonSimBackend(cfg)
        assert (twin._meas == want.reset(seed=0)).all()
    finally:
        twin.stop()


def test_serve_says_it_compiles_and_announces_only_when_warm(monkeypatch, capsys) -> None:
    """``twinloop serve balloon``: compiling (stderr), warm-up, then "listening" (stdout)."""
    events: list[tuple[str, str, str, bool]] = []
    real = S.VehicleTwin.warm_up

    def note(what: str, twin: S.VehicleTwin) -> None:
        out, err = capsys.readouterr()
        events.append((what, out, err, twin.warmed_up))

    def warm_up(self: S.VehicleTwin) -> None:
        note("warm_up", self)
        real(self)

    def serve_forever(self: S.VehicleTwin) -> None:
        note("serve", self)
        self.stop()

    monkeypatch.setattr(S.VehicleTwin, "warm_up", warm_up)
    monkeypatch.setattr(S.VehicleTwin, "serve_forever", serve_forever)
    S.serve(port=0)
    (w, w_out, w_err, w_warm), (s, s_out, s_err, s_warm) = events
    assert w == "warm_up" and not w_warm
    assert "listening" not in w_out
    assert "balloon vehicle twin: compiling its kernels" in w_err
    assert s == "serve" and s_warm
    assert "balloon vehicle twin listening on udp:127.0.0.1:" in s_out
    assert "balloon vehicle twin: kernels ready in" in s_err


def test_a_silent_vehicle_says_what_to_do() -> None:
    peer = RawPeer()  # a port nobody serves
    host, port = peer.address
    peer.close()
    backend = MavlinkBalloonBackend(
        twinloop.make_config(ID), address=f"udp:{host}:{port}", connect_timeout_s=0.3
    )
    with pytest.raises(BackendFault) as info:
        backend.connect()
    text = str(info.value)
    assert "no heartbeat" in text and "within 0.3 s" in text
    assert "`twinloop serve balloon`" in text and "'listening on' line" in text
    assert "raise the backend option connect_timeout_s (now 0.3 s)" in text


def test_an_unacknowledged_first_command_says_what_to_do() -> None:
    with running_twin() as (twin, address):
        env = twinloop.make(ID, backend="mavlink", address=address, **FAST)
        backend = env.unwrapped.backend
        backend.connect()  # the vehicle's heartbeat was heard
        twin.link_up = False
        with pytest.raises(BackendFault) as info:
            backend.reset(seed=0)
        first = str(info.value)
        assert "has not acknowledged any command on this link yet" in first
        assert "ack_timeout_s (now 0.3 s) or retries (now 2)" in first
        twin.link_up = True
        env.reset(seed=0)
        env.step(1)
        twin.link_up = False  # a link lost mid-flight is not a slow first answer
        with pytest.raises(BackendFault, match="link lost") as info:
            env.step(1)
        assert "not acknowledged any command" not in str(info.value)
        env.close()
