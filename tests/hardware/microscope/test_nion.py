"""The nion backend, end to end through Nion Swift's own API against nionswift-usim headless.

The usim instrument's sample is twinloop's simulated sample (``TwinloopSample``), so parking,
unblanking, blanking and recording through Nion's STEM controller and scan hardware source run
our physics and our renderer. The twin runs on a simulated clock: dwells cost no wall time;
frames are 64 x 64 pixels at ~16 us, so usim's real pixel wait stays ~0.1 s a frame.
"""

from __future__ import annotations

import math
import sys
import time

import numpy as np
import pytest

import twinloop
from twinloop.hardware.microscope.protocol import MicroscopeFault, MicroscopeLimitError
from twinloop.sim.stem import perception as P

ID = "twinloop/StemSteer-v0"
# 64 px frames of 0.1 s at 1 nA imaging current: fast under usim and still read reliably.
FAST = dict(frame_pixels=64, frame_time_s=0.1, imaging_current_na=1.0)
SKIP_REASON = "the nion backend needs the 'nion' extra: pip install 'twinloop[nion]'"


@pytest.fixture
def nion_modules():
    pytest.importorskip("nion.instrumentation.scan_base", reason=SKIP_REASON)
    pytest.importorskip("nion.usim_device.InstrumentDevice", reason=SKIP_REASON)
    from twinloop.hardware.microscope import nion

    return nion


@pytest.fixture
def cfg():
    return twinloop.make_config(ID, **FAST)


@pytest.fixture
def twin(nion_modules, cfg, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # usim must not write anywhere (no ./test_data)
    with nion_modules.make_usim_with_twinloop_sample(cfg, seed=5) as t:
        yield t
    assert not list(tmp_path.iterdir()), "the usim twin wrote into the working directory"


@pytest.fixture
def scope(nion_modules, cfg, twin):
    m = nion_modules.NionMicroscope(cfg, timeout_s=5.0, **twin.backend_options())
    m.connect()
    yield m
    m.close()


def _ratio(cfg) -> float:
    return (14.0 / 6.0) ** cfg.imaging.z_exponent


def _look(scope, cfg) -> P.Detection:
    frame = scope.acquire(cfg.imaging.frame_pixels, cfg.pixel_time_s)
    det = P.analyse(frame.image, 20.0, cfg.physics.probe_sigma_angstrom, _ratio(cfg))
    assert det.status == P.OK, det.status
    return det


def _si_in_view(twin) -> np.ndarray:
    t = twin.sim.truth()
    return np.asarray(t["si_position_angstrom"]) - np.asarray(t["view_center_angstrom"])


# without the extra ---------------------------------------------------------------------------
def test_missing_packages_name_the_extra(monkeypatch):
    from twinloop.hardware.microscope.nion import NionMicroscope

    monkeypatch.setitem(sys.modules, "nion.instrumentation", None)
    with pytest.raises(ImportError, match=r"pip install 'twinloop\[nion\]'"):
        NionMicroscope(twinloop.make_config(ID))
    with pytest.raises(ImportError, match=r"twinloop\[nion\]"):
        twinloop.make(ID, backend="nion", **FAST)


def test_coordinate_conventions():
    from twinloop.hardware.microscope import nion

    assert nion.view_to_fraction(0.0, 0.0, 20.0) == (0.5, 0.5)
    assert nion.view_to_fraction(-10.0, 10.0, 20.0) == (0.0, 0.0)  # top-left corner
    back = nion.fraction_to_view(*nion.view_to_fraction(3.0, -4.0, 20.0), 20.0)
    assert back == pytest.approx((3.0, -4.0))
    assert nion.offset_of(nion.center_nm_of(1.5, -2.5)) == pytest.approx((1.5, -2.5))
    clock = nion.SimulatedClock()
    clock.sleep(2.5)
    clock.advance(0.5)
    assert clock.now() == 3.0
    with pytest.raises(ValueError, match="cannot go back"):
        clock.advance(-1.0)


# the adapter through Nion's API --------------------------------------------------------------
def test_connect_blanks_and_reports(scope, twin, cfg):
    assert twin.instrument.GetVal("C_Blank") == 1.0
    state = scope.state()
    assert state["blanked"] and state["probe_state"] == "parked"
    assert state["voltage_kev"] == pytest.approx(cfg.physics.beam_energy_kev)
    assert state["current_na"] == pytest.approx(cfg.physics.beam_current_na)
    ident = scope.identity()
    assert ident["kind"] == "nion" and ident["clock"] == "simulated"
    assert ident["sample"] == "twinloop usim twin"
    assert ident["versions"]["nionswift-instrumentation"] != "missing"


def test_park_sets_the_nion_probe(scope, twin, cfg):
    scope.park(3.0, -4.0)
    pos = twin.instrument.probe_position
    assert twin.instrument.probe_state == "parked"
    assert (pos.y, pos.x) == pytest.approx((0.5 + 4.0 / 20.0, 0.5 + 3.0 / 20.0))
    assert scope.clock_s == pytest.approx(cfg.microscope.beam_settle_s)
    event = twin.sample.events[-1]
    assert event.kind == "park" and event.position_angstrom == pytest.approx((3.0, -4.0))
    assert scope.blanked


def test_frames_are_our_render_in_the_right_orientation(scope, twin, cfg):
    frame = scope.acquire(64, cfg.pixel_time_s)
    assert frame.image.shape == (64, 64) and frame.image.dtype == np.float32
    meta = frame.metadata
    assert meta["channel"] == "HAADF" and meta["fov_angstrom"] == 20.0
    assert meta["duration_s"] == pytest.approx(cfg.microscope.frame_time_s)
    assert meta["nion_scan_id"]
    assert twin.sample.events[-1].kind == "frame"
    assert scope.blanked  # the adapter unblanked for the scan and blanked after it
    det = P.analyse(frame.image, 20.0, cfg.physics.probe_sigma_angstrom, _ratio(cfg))
    assert det.status == P.OK
    # a wrong flip or transposition would put the Si far from its true place
    assert np.hypot(*(det.si_position_angstrom - _si_in_view(twin))) < 0.3


def test_dwell_at_the_optimum_moves_the_si(nion_modules, tmp_path, monkeypatch):
    # high current, no knock-out or loss: a parked beam at the optimum makes the Si hop
    cfg = twinloop.make_config(
        ID, **FAST, beam_current_na=1.0, knockout_ratio_60kv=0.0, loss_ratio=0.0
    )
    monkeypatch.chdir(tmp_path)
    with nion_modules.make_usim_with_twinloop_sample(cfg, seed=11) as twin:
        scope = nion_modules.NionMicroscope(cfg, **twin.backend_options())
        scope.connect()
        det = _look(scope, cfg)
        site = list(twin.sim.truth()["si_site"])
        nbr = det.neighbor_offsets_angstrom[0]
        reach = (np.hypot(*nbr) + cfg.physics.optimum_offset_angstrom) / np.hypot(*nbr)
        for _ in range(10):  # rate ~2/s at the optimum: P(no hop in 10 x 1 s) ~ e^-20
            scope.park(*(det.si_position_angstrom + reach * nbr))
            scope.dwell(1.0)
            assert scope.blanked
            if twin.sim.truth()["n_hops"]:
                break
        assert list(twin.sim.truth()["si_site"]) != site
        after = _look(scope, cfg)
        # the Si went to the neighbour the beam was parked behind
        assert np.hypot(*(after.si_position_angstrom - det.si_position_angstrom - nbr)) < 0.5
        assert scope.clock_s == pytest.approx(twin.sim.clock_s)
        scope.close()


def test_dwell_runs_our_physics_for_the_requested_time(scope, twin):
    scope.park(-2.0, 1.0)
    clock = twin.sim.clock_s
    scope.dwell(2.5)
    event = twin.sample.events[-1]
    assert event.kind == "dwell" and event.seconds == pytest.approx(2.5)
    assert event.position_angstrom == pytest.approx((-2.0, 1.0))
    assert twin.sim.clock_s == pytest.approx(clock + 2.5)
    assert twin.instrument.GetVal("C_Blank") == 1.0


def test_the_usim_seam_without_the_adapter(twin, nion_modules):
    """Unblank a parked probe, wait, blank: Nion's own calls drive the dwell physics."""
    geometry = pytest.importorskip("nion.utils.Geometry")
    inst = twin.instrument
    inst.set_probe_position(geometry.FloatPoint(y=0.25, x=0.75))  # (x, y) = (5, 5) A
    inst.SetVal("C_Blank", 0.0)
    twin.clock.sleep(1.5)
    inst.SetVal("C_Blank", 1.0)
    event = twin.sample.events[-1]
    assert event.kind == "dwell" and event.seconds == pytest.approx(1.5)
    assert event.position_angstrom == pytest.approx((5.0, 5.0))
    # a frame scanned with the beam blanked is dark and delivers no dose
    fp = twin.scan.get_current_frame_parameters()
    fp.pixel_size = geometry.IntSize(h=32, w=32)
    fp.pixel_time_us = 5.0
    fp.fov_nm = 2.0
    (xdata,) = twin.scan.record_immediate(fp)
    assert xdata.data.shape == (32, 32) and not xdata.data.any()
    assert twin.sample.events[-1].kind == "dark_frame"


def test_shift_view_moves_the_scan_field(scope, twin, cfg):
    before = _si_in_view(twin)
    scope.shift_view(2.0, -1.0)
    assert twin.scan.get_current_frame_parameters().center_nm.as_tuple() == pytest.approx(
        (0.1, 0.2)
    )
    det = _look(scope, cfg)
    assert np.hypot(*(det.si_position_angstrom - (before - (2.0, -1.0)))) < 0.4


# limits and faults ---------------------------------------------------------------------------
def test_limits_are_enforced_and_the_beam_stays_blanked(scope, twin):
    scope.park(1.0, 1.0)
    events, clock = len(twin.sample.events), scope.clock_s
    with pytest.raises(
        MicroscopeLimitError, match=r"x_angstrom = 10\.5 A is outside .*\[-10, 10\]"
    ):
        scope.park(10.5, 0.0)
    with pytest.raises(MicroscopeLimitError, match=r"y_angstrom = nan"):
        scope.park(0.0, math.nan)
    with pytest.raises(
        MicroscopeLimitError, match=r"dwell seconds = 0\.01 s is outside \[0\.1, 20\]"
    ):
        scope.dwell(0.01)
    with pytest.raises(MicroscopeLimitError, match=r"dwell seconds = 25 s is outside \[0\.1, 20\]"):
        scope.dwell(25.0)
    with pytest.raises(MicroscopeLimitError, match=r"pixels = 8 is outside \[16, 1024\]"):
        scope.acquire(8, 1e-5)
    with pytest.raises(MicroscopeLimitError, match=r"view shift"):
        scope.shift_view(30.0, 0.0)
    # nothing was executed: the probe, the sample and the clock are untouched; beam blanked
    pos = twin.instrument.probe_position
    assert (pos.y, pos.x) == pytest.approx((0.45, 0.55))
    assert len(twin.sample.events) == events and scope.clock_s == clock
    assert twin.instrument.GetVal("C_Blank") == 1.0


def test_unknown_ids_and_wrong_voltage_are_faults(nion_modules, cfg, twin):
    with pytest.raises(MicroscopeFault, match=r"'autostem_controller' .*usim_stem_controller"):
        nion_modules.NionMicroscope(cfg).connect()
    bad = nion_modules.NionMicroscope(cfg, instrument_id=twin.instrument_id, scan_id="superscan")
    with pytest.raises(MicroscopeFault, match=r"'superscan' .*usim_scan_device"):
        bad.connect()
    twin.instrument.SetVal("EHT", 100e3)
    with pytest.raises(MicroscopeFault, match=r"EHT = 100 kV .* 60 kV"):
        nion_modules.NionMicroscope(cfg, **twin.backend_options()).connect()
    assert twin.instrument.GetVal("C_Blank") == 1.0


def test_a_stuck_recording_times_out_blanked(nion_modules, cfg, twin, monkeypatch):
    scope = nion_modules.NionMicroscope(cfg, timeout_s=0.3, **twin.backend_options())
    scope.connect()
    with monkeypatch.context() as patch:
        patch.setattr(twin.scan, "record_immediate", lambda *a, **k: time.sleep(3.0))
        start = time.monotonic()
        with pytest.raises(
            MicroscopeFault, match=r"did not deliver a frame within [0-9.]+ s .*timeout_s = 0\.3 s"
        ):
            scope.acquire(64, cfg.pixel_time_s)
        assert time.monotonic() - start < 2.5  # no hang beyond the timeout
        assert twin.instrument.GetVal("C_Blank") == 1.0
    # Nion answers again: the adapter recovers
    assert scope.acquire(64, cfg.pixel_time_s).image.shape == (64, 64)
    scope.close()


# the env on the nion backend -----------------------------------------------------------------
def test_env_episode_with_greedy_neighbor(twin, cfg):
    from twinloop.controllers import make_controller

    env = twinloop.make(ID, backend="nion", config=cfg, clock=twin.clock, **twin.backend_options())
    try:
        controller = make_controller("greedy-neighbor", env)
        obs, info = env.reset(seed=1)
        controller.reset(1, np.array([1]))
        assert env.observation_space.contains(obs)
        times = [info["time_s"]]
        for _ in range(4):
            obs, reward, term, trunc, info = env.step(controller.act_one(obs))
            assert env.observation_space.contains(obs) and np.isfinite(reward)
            times.append(info["time_s"])
            if term or trunc:
                break
        assert np.all(np.diff(times) > 0)
        # the twin's ground truth reaches info, and the beam ends blanked
        assert "true/si_site" in info
        assert twin.instrument.GetVal("C_Blank") == 1.0
    finally:
        env.close()
    assert twin.instrument.GetVal("C_Blank") == 1.0
