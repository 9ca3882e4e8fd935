"""The microscope twin is ready when it says so: warm-up before the "listening" line (issue 12)."""

from __future__ import annotations

import argparse
import time

import pytest

zmq = pytest.importorskip("zmq", reason="the 'microscope' extra (pyzmq, msgpack) is needed")
pytest.importorskip("msgpack", reason="the 'microscope' extra is needed")

import twinloop  # noqa: E402
from twinloop.hardware.microscope import cli  # noqa: E402
from twinloop.hardware.microscope.fake import SimMicroscope  # noqa: E402
from twinloop.hardware.microscope.protocol import OPERATIONS, MicroscopeFault  # noqa: E402
from twinloop.hardware.microscope.remote import RemoteMicroscope  # noqa: E402
from twinloop.hardware.microscope.server import MicroscopeServer, warm_up_requests  # noqa: E402

ID = "twinloop/StemSteer-v0"
FAST = dict(frame_pixels=64, frame_time_s=0.5)


def test_warm_up_replays_every_operation_and_both_acquire_branches(monkeypatch) -> None:
    cfg = twinloop.make_config(ID, **FAST)
    server = MicroscopeServer(SimMicroscope(cfg), port=0)
    try:
        assert {op for op, _ in warm_up_requests(server.microscope.limits)} == set(OPERATIONS)
        seen: list[tuple[str, bool]] = []
        in_view = SimMicroscope._si_in_view

        def spy(self: SimMicroscope) -> bool:
            answer = in_view(self)
            seen.append(("served" if self is server.microscope else "shadow", answer))
            return answer

        monkeypatch.setattr(SimMicroscope, "_si_in_view", spy)
        server.warm_up()
        # a frame with the Si in view (render + dose) and one without (render + drift only),
        # both on the throwaway instrument
        assert sorted(seen) == [("shadow", False), ("shadow", True)]
        assert server.warmed_up
        server.warm_up()  # once only
        assert len(seen) == 2
    finally:
        server.stop()


def test_warm_up_leaves_the_served_instrument_untouched() -> None:
    cfg = twinloop.make_config(ID, **FAST)
    mic = SimMicroscope(cfg)
    mic.reset_sample(5)
    server = MicroscopeServer(mic, port=0)
    try:
        truth, state = mic.truth(), mic.state()
        server.warm_up()
        assert mic.truth() == truth and mic.state() == state  # clock, probe, sample, beam
        assert (server.requests, server.rejected) == (0, 0)
    finally:
        server.stop()


def test_warm_up_failure_is_raised_before_serving(monkeypatch) -> None:
    def broken(self: SimMicroscope, pixels: int, pixel_time_s: float) -> None:
        raise FloatingPointError("render diverged")

    monkeypatch.setattr(SimMicroscope, "acquire", broken)
    server = MicroscopeServer(SimMicroscope(twinloop.make_config(ID, **FAST)), port=0)
    try:
        with pytest.raises(RuntimeError, match=r"warm-up request acquire .*render diverged"):
            server.start()
        assert not server.warmed_up and server._thread is None  # nothing was served
    finally:
        server.stop()


def test_start_warms_up_before_it_serves(monkeypatch) -> None:
    calls: list[str] = []
    real = MicroscopeServer.warm_up

    def spy(self: MicroscopeServer) -> None:
        calls.append("warm_up")
        real(self)

    monkeypatch.setattr(MicroscopeServer, "warm_up", spy)
    server = MicroscopeServer(SimMicroscope(twinloop.make_config(ID, **FAST)), port=0).start()
    try:
        assert calls[0] == "warm_up" and server.warmed_up
        mic = RemoteMicroscope(server.address, timeout_s=2)
        mic.connect()
        mic.close()
    finally:
        server.stop()


def test_serve_says_it_compiles_and_announces_only_when_warm(monkeypatch, capsys) -> None:
    """``twinloop serve microscope``: compiling (stderr), warm-up, then "listening" (stdout)."""
    events: list[tuple[str, str, str, bool]] = []
    real = MicroscopeServer.warm_up

    def note(what: str, server: MicroscopeServer) -> None:
        out, err = capsys.readouterr()
        events.append((what, out, err, server.warmed_up))

    def warm_up(self: MicroscopeServer) -> None:
        note("warm_up", self)
        real(self)

    def serve_forever(self: MicroscopeServer) -> None:
        note("serve", self)

    monkeypatch.setattr(MicroscopeServer, "warm_up", warm_up)
    monkeypatch.setattr(MicroscopeServer, "serve_forever", serve_forever)
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    assert cli.main(parser.parse_args(["--port", "0", "--set", "frame_pixels=64"])) == 0
    (w, w_out, w_err, w_warm), (s, s_out, s_err, s_warm) = events
    assert w == "warm_up" and not w_warm
    assert "listening" not in w_out  # nothing announced before the warm-up
    assert "microscope twin: compiling its kernels" in w_err
    assert s == "serve" and s_warm
    assert "microscope twin listening on tcp://127.0.0.1:" in s_out
    assert "microscope twin: kernels ready in" in s_err


def test_a_late_answer_says_what_to_do() -> None:
    silent = zmq.Context.instance().socket(zmq.REP)  # a twin that never answers
    port = silent.bind_to_random_port("tcp://127.0.0.1")
    try:
        mic = RemoteMicroscope(f"tcp://127.0.0.1:{port}", timeout_s=0.3)
        t0 = time.monotonic()
        with pytest.raises(MicroscopeFault) as info:
            mic.connect()
        assert time.monotonic() - t0 < 1.5
        text = str(info.value)
        assert "did not answer 'hello' within 0.3 s" in text
        assert "`twinloop serve microscope`" in text and "'listening on' line" in text
        assert "raise the backend option timeout_s (now 0.3 s)" in text
    finally:
        silent.close(linger=0)
