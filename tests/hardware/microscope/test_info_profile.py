"""``twinloop info ID --backend remote``: a twin's profile is in force, by name only."""

from __future__ import annotations

import pytest

pytest.importorskip("msgpack", reason="the 'microscope' extra is needed")
pytest.importorskip("zmq", reason="the 'microscope' extra is needed")

import twinloop
from twinloop.cli import main
from twinloop.core.profile import parse_profile
from twinloop.hardware.microscope.fake import SimMicroscope
from twinloop.hardware.microscope.server import MicroscopeServer

ID = "twinloop/StemSteer-v0"
FAST = dict(frame_pixels=64, frame_time_s=0.5)


@pytest.mark.parametrize("spec", [None, "random:5"])
def test_info_on_a_twin_names_its_profile_and_hides_the_values(capsys, spec) -> None:
    cfg = twinloop.make_config(ID, **FAST)
    profile = parse_profile(spec, cfg) if spec else None
    server = MicroscopeServer(SimMicroscope(cfg, profile), port=0).start()
    try:
        argv = ["info", ID, "--backend", "remote", "--address", server.address]
        assert main([*argv, "--set", "frame_pixels=64", "--set", "frame_time_s=0.5"]) == 0
    finally:
        server.stop()
    out = capsys.readouterr().out
    assert f"{ID} on backend remote" in out
    if profile is None:
        assert "device profile: none announced" in out
        return
    assert "device profile: 'random:5' is in force" in out
    for path, value in profile.values.items():
        assert path.split(".")[-1] not in out
        assert f"{float(value):.4g}" not in out and repr(float(value)) not in out
