"""``twinloop sysid`` on STEM: a fit recovers a known device from in-process captures.

A "device" is the simulator run with a device profile (hidden physics) behind the nominal
config, as ``twinloop serve microscope --profile`` runs it: the capture's recorded config is
the nominal one and the profile's values sit only in the privileged metadata, which the fit
uses for scoring, never for fitting. The controller parks the beam at random offsets for
random dwells, as ``twinloop stem-rates capture`` does.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest

from twinloop.core.profile import DeviceProfile, load_profile
from twinloop.core.registry import make_config
from twinloop.demo import CAPTURE_SETTINGS
from twinloop.sysid import fit
from twinloop.sysid.commands import add_sysid_parser

ENV_ID = "twinloop/StemSteer-v0"
#: A device clearly off nominal (nominal: 0.6 A, 1.06 A, 0.03 barn, 0.15, 0.05 A/s,
#: 0.0005 A^2/s), each inside the STEM prior's range.
DEVICE = {
    "physics.optimum_offset_angstrom": 0.85,
    "physics.probe_fwhm_angstrom": 0.95,
    "physics.cross_section_barn_60kv": 0.045,
    "physics.knockout_ratio_60kv": 0.11,
    "microscope.drift_speed_max_angstrom_per_s": 0.1,
    "microscope.drift_diffusion_angstrom2_per_s": 0.001,
}
#: What random-beam dwells at one beam energy identify.
IDENTIFIED = {
    "physics.optimum_offset_angstrom",
    "physics.probe_fwhm_angstrom",
    "physics.cross_section_barn_60kv",
    "physics.knockout_ratio_60kv",
    "microscope.drift_speed_max_angstrom_per_s",
    "microscope.drift_diffusion_angstrom2_per_s",
}
#: Off nominal by far more than the interval's half-width at 60 episodes.
CLEARLY_OFF = (
    "physics.optimum_offset_angstrom",
    "physics.cross_section_barn_60kv",
    "microscope.drift_speed_max_angstrom_per_s",
    "microscope.drift_diffusion_angstrom2_per_s",
)


def capture(
    directory: Path,
    profile: DeviceProfile,
    n_episodes: int,
    seed: int,
    images: bool = False,
    **settings: float,
) -> Path:
    """Record ``n_episodes`` of random-beam dwells on a simulated device with ``profile``.

    ``images``: through the image pipeline (``sim-image``: frames rendered by the device,
    perception, frame alignment), as a microscope twin is captured, in-process.
    """
    from twinloop.datasets import record
    from twinloop.sim.stem.env import StemSimBackend, make_env

    cfg = make_config(ENV_ID, **{**CAPTURE_SETTINGS, **settings})
    if images:
        from twinloop.hardware.microscope.backend import MicroscopeBackend
        from twinloop.hardware.microscope.fake import SimMicroscope

        backend = MicroscopeBackend(cfg, SimMicroscope(cfg, profile), "sim-image", True)
    else:
        backend = StemSimBackend(profile.apply(cfg))
    env = make_env(cfg, backend=backend)
    rec = record(env, directory, dataset_id="twinloop/stem-device-v0", mode="create")
    rec.writer.note_device_profile(profile)
    rng = np.random.default_rng(seed)
    low, high = rec.action_space.low, rec.action_space.high
    try:
        for e in range(n_episodes):
            rec.reset(seed=seed * 100_000 + e)
            while True:
                action = rng.uniform(low, high).astype(np.float32)
                _, _, term, trunc, _ = rec.step(action)
                if term or trunc:
                    break
    finally:
        rec.close()
    return directory


@pytest.fixture(scope="module")
def device_capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 episodes (~2000 dwells) of the DEVICE, its profile read from a JSON file."""
    root = tmp_path_factory.mktemp("sysid")
    spec = root / "device.json"
    spec.write_text(json.dumps(DEVICE))
    profile = load_profile(spec, make_config(ENV_ID, **CAPTURE_SETTINGS))
    return capture(root / "capture", profile, 60, seed=1)


def test_fit_recovers_device_and_override_round_trips(device_capture: Path, tmp_path: Path):
    res = fit(ENV_ID, [device_capture])
    assert res.profile_name == "device" and res.n_episodes == 60
    assert {e.path for e in res.estimates if e.identified} == IDENTIFIED
    for e in res.estimates:
        if e.identified:
            assert e.true == pytest.approx(DEVICE[e.path])
            assert e.low <= e.true <= e.high, f"{e.path}: {e.true} not in [{e.low}, {e.high}]"
            assert e.low < e.estimate < e.high
        else:  # reported as such, with the reason, never a value
            assert math.isnan(e.estimate) and e.note
    for path in CLEARLY_OFF:
        e = res.estimate(path)
        assert not e.low <= e.nominal <= e.high, f"{path}: the fit did not move off nominal"
    assert "beam energy" in res.estimate("physics.thermal_tail_ev").note
    assert "images" in res.estimate("imaging.carbon_yield").note
    assert "'physical' rate model" in res.estimate("physics.prior_sigma_angstrom").note
    # posterior samples agree with the intervals
    assert res.samples.shape[1] == len(res.sample_paths) == len(IDENTIFIED)
    for k, path in enumerate(res.sample_paths):
        e = res.estimate(path)
        assert e.low < np.median(res.samples[:, k]) < e.high
    # the override file is a --profile FILE: a config built from it holds the fitted values
    out = res.write_overrides(tmp_path / "fit.json")
    nominal = make_config(ENV_ID, **CAPTURE_SETTINGS)
    fitted = load_profile(out, nominal).apply(nominal)
    for path, value in res.overrides().items():
        section, name = path.split(".")
        assert getattr(getattr(fitted, section), name) == value
    assert set(json.loads(out.read_text())) == IDENTIFIED


def test_intervals_shrink_with_episodes_and_errors_name_the_fix(device_capture: Path):
    few = fit(ENV_ID, [device_capture], max_episodes=10)
    many = fit(ENV_ID, [device_capture])
    for path in ("physics.optimum_offset_angstrom", "physics.probe_fwhm_angstrom"):
        w_few = few.estimate(path).high - few.estimate(path).low
        w_many = many.estimate(path).high - many.estimate(path).low
        assert w_many < 0.7 * w_few, f"{path}: width {w_few} -> {w_many}"
    with pytest.raises(ValueError, match="capture more episodes"):
        fit(ENV_ID, [device_capture], max_episodes=1)
    with pytest.raises(ValueError, match="is a capture of 'twinloop/StemSteer-v0'"):
        fit("twinloop/BalloonStationKeeping-v0", [device_capture])
    with pytest.raises(ValueError, match="boot"):
        fit(ENV_ID, [device_capture], boot=5)


def test_cli_writes_overrides_and_report(device_capture: Path, tmp_path: Path, capsys):
    parser = argparse.ArgumentParser()
    add_sysid_parser(parser.add_subparsers())
    out, report = tmp_path / "o.json", tmp_path / "report"
    argv = ["sysid", ENV_ID, "--data", str(device_capture.parent), "--out", str(out)]
    args = parser.parse_args([*argv, "--report", str(report), "--quiet"])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "physics.optimum_offset_angstrom" in printed and "not identified" in printed
    values = json.loads(out.read_text())
    assert set(values) == IDENTIFIED
    summary = json.loads((report / "sysid.json").read_text())
    curve = summary["learning_curve"]
    assert [c["episodes"] for c in curve] == sorted(c["episodes"] for c in curve)
    assert curve[-1]["episodes"] == 60 and curve[-1]["estimates"] is not None
    assert "| `physics.probe_fwhm_angstrom` |" in (report / "sysid.md").read_text()
    pytest.importorskip("matplotlib")
    assert (report / "error_vs_episodes.png").stat().st_size > 1000


@pytest.mark.slow
def test_interval_coverage_over_repeats(tmp_path: Path):
    """20 devices drawn from the prior, 30 episodes each: the 95 % intervals cover.

    With 20 repeats a parameter covers 19 times on average; 14 or more (70 %) fails by chance
    with probability < 0.1 %, and >= 85 % of all intervals pooled (~120) likewise.
    """
    from twinloop.core.profile import draw_profile

    nominal = make_config(ENV_ID, **CAPTURE_SETTINGS)
    covers: dict[str, list[bool]] = {}
    for seed in range(20):
        profile = draw_profile(nominal, 500 + seed)
        d = capture(tmp_path / f"d{seed}", profile, 30, seed=seed)
        for e in fit(ENV_ID, [d]).estimates:
            if e.identified:
                covers.setdefault(e.path, []).append(bool(e.covers))
    for path in IDENTIFIED - {"physics.knockout_ratio_60kv"}:
        assert len(covers[path]) == 20, path
    for path, hits in covers.items():
        if len(hits) >= 10:
            assert np.mean(hits) >= 0.7, f"{path}: {np.mean(hits):.2f} of {len(hits)}"
    pooled = [h for hits in covers.values() for h in hits]
    assert np.mean(pooled) >= 0.85, f"{np.mean(pooled):.2f} of {len(pooled)} intervals cover"


@pytest.mark.slow
def test_bootstrap_and_two_energies(tmp_path: Path):
    """Bootstrap intervals cover; captures at 60 and 70 kV identify the energy tails."""
    nominal = make_config(ENV_ID, **CAPTURE_SETTINGS)
    values = {**DEVICE, "physics.thermal_tail_ev": 1.1}
    profile = DeviceProfile("two-energies", values)
    capture(tmp_path / "kv60" / "a", profile, 40, seed=3)
    capture(tmp_path / "kv70" / "a", profile, 40, seed=4, beam_energy_kev=70.0)
    res = fit(ENV_ID, [tmp_path], boot=30, seed=1)
    assert res.method.startswith("bootstrap") and res.samples.shape[0] >= 20
    tail = res.estimate("physics.thermal_tail_ev")
    assert tail.identified and tail.low <= 1.1 <= tail.high
    assert tail.high < nominal.physics.thermal_tail_ev * 10
    assert res.estimate("physics.knockout_tail_ev").identified
    # ~8 intervals at 95 %: two misses would happen by chance ~5 % of the time, one ~30 %
    missed = [e.path for e in res.estimates if e.identified and not e.covers]
    assert len(missed) <= 1, f"intervals miss the truth: {missed}"


def _finite(e) -> bool:
    return all(math.isfinite(x) for x in (e.estimate, e.low, e.high))


def test_a_fit_at_a_bound_or_on_a_flat_likelihood_is_not_identified(
    device_capture: Path, monkeypatch: pytest.MonkeyPatch
):
    """An optimum at a bound, or a Hessian not positive definite, is no estimate.

    Such a parameter is reported not identified, with the reason, never with NaN intervals.
    """
    from twinloop.sysid import stem

    ok_cov, ok = stem.laplace_covariance(np.array([[4.0, 1.0], [1.0, 2.0]]))
    assert ok and np.allclose(ok_cov @ np.array([[4.0, 1.0], [1.0, 2.0]]), np.eye(2))
    assert not stem.laplace_covariance(np.array([[1.0, 1.0], [1.0, 1.0]]))[1]  # singular
    assert not stem.laplace_covariance(np.array([[1.0, 0.0], [0.0, -1.0]]))[1]  # saddle

    real = stem._minimize
    shape = ("physics.optimum_offset_angstrom", "physics.cross_section_barn_60kv")

    def probe_at_bound(model, free, u0):  # as on twin captures before image-aware reading
        u, nll = real(model, free, u0)
        k = [p.path for p in free].index("physics.probe_fwhm_angstrom")
        u = u.copy()
        u[k] = free[k].to_u(free[k].high)
        return u, nll

    monkeypatch.setattr(stem, "_minimize", probe_at_bound)
    res = fit(ENV_ID, [device_capture], max_episodes=20)
    probe = res.estimate("physics.probe_fwhm_angstrom")
    assert not probe.identified and "bound" in probe.note and math.isnan(probe.estimate)
    for path in shape:  # they trade off with the probe: fitted at its bound, they mean nothing
        e = res.estimate(path)
        assert not e.identified and "at a bound" in e.note, (path, e.note)
    assert res.estimate("microscope.drift_diffusion_angstrom2_per_s").identified
    assert all(_finite(e) for e in res.estimates if e.identified)
    assert set(res.sample_paths) == {e.path for e in res.estimates if e.identified}
    assert res.samples.shape[1] == len(res.sample_paths)

    monkeypatch.setattr(stem, "_minimize", real)
    monkeypatch.setattr(stem, "_hessian", lambda fun, u, step=1e-3: -np.eye(u.size))
    res = fit(ENV_ID, [device_capture], max_episodes=20)
    for path in (*shape, "physics.probe_fwhm_angstrom"):
        e = res.estimate(path)
        assert not e.identified and "positive definite" in e.note, (path, e.note)
    assert all(_finite(e) for e in res.estimates if e.identified)
    assert res.overrides() and all(math.isfinite(v) for v in res.overrides().values())


def test_fit_of_a_capture_through_a_microscope_twin(tmp_path: Path, monkeypatch):
    """Captures through a twin (frames, perception, frame-to-frame alignment) fit honestly.

    The client's view centre comes from aligning frames, which (without drift prediction,
    as here) slips to another lattice match on ~10 % of the steps at this device's drift;
    read as the ``sim`` backend's exact measurements, those slips were hops (234 "several
    hops" of 1478 steps) and the fit went
    to a bound with NaN intervals. Small frames (64 px) keep this fast (600 steps). The twin
    is deterministic per seed; each 95 % interval misses by chance 5 % of the time (on other
    seeds: 22 of 24 covered), so a miss here after a change is worth a look at other seeds.
    """
    pytest.importorskip("msgpack", reason="the 'microscope' extra is needed")
    pytest.importorskip("zmq", reason="the 'microscope' extra is needed")
    from twinloop.core.profile import parse_profile
    from twinloop.datasets.reader import open_dataset
    from twinloop.demo import capture as capture_through
    from twinloop.hardware.microscope.backend import MicroscopeBackend
    from twinloop.hardware.microscope.fake import SimMicroscope
    from twinloop.hardware.microscope.server import MicroscopeServer
    from twinloop.sim.stem.profile import PRIORS

    # an aligner that ignores drift (an instrument without drift correction, and this
    # backend before it predicted drift): its slips must not read as hops
    monkeypatch.setattr(MicroscopeBackend, "_drift_guess", lambda self, dt: np.zeros(2))
    small = {"frame_pixels": 64}
    cfg = make_config(ENV_ID, **small)
    profile = parse_profile("random:7", cfg, PRIORS)
    server = MicroscopeServer(SimMicroscope(cfg, profile), port=0).start()
    try:
        data = capture_through(
            "remote",
            600,
            tmp_path / "twin",
            address=server.address,
            seed=100,
            device_profile=profile,
            **small,
        )
    finally:
        server.stop()
    res = fit(ENV_ID, [data])
    outcomes, dropped = res.details["outcomes"], res.details["dropped_steps"]
    ds = open_dataset(data)
    try:  # single hops that really happened (true/... infos: scoring only)
        true_hops = sum(
            int((np.asarray(ep.infos["true/n_hops"])[1:] == 1).sum())
            for ep in ds.iterate_episodes()
        )
    finally:
        ds.close()
    assert dropped["alignment_slip_drift_only"] > 0  # the slips are there, and caught
    # the beam offsets' error is estimated and integrated out (the drift's walk between the
    # frame and the dwell, ~0.07 A at this device's diffusion, and the frames' own error)
    assert 0.03 < res.details["beam_offset_error"]["sd_angstrom"][0] < 0.2
    assert outcomes["several_hops"] <= 2
    assert 0.6 * true_hops <= outcomes["hop"] <= 1.05 * true_hops, (outcomes, true_hops)
    for e in res.estimates:
        if e.identified:
            assert _finite(e) and e.low < e.estimate < e.high, e
        else:
            assert math.isnan(e.estimate) and e.note
    fitted = {e.path for e in res.estimates if e.identified}
    assert fitted >= IDENTIFIED - {"physics.knockout_ratio_60kv"}, fitted  # few knock-outs
    for path in fitted:
        e = res.estimate(path)
        assert e.covers, f"{path}: {e.true} not in [{e.low}, {e.high}]"


# --- image captures ---------------------------------------------------------------------------
def test_image_neighbours_are_put_in_the_kernels_bond_order():
    """Perception's neighbour order is its own; the likelihood needs the kernel's.

    The kernel's bond ``k`` of an Si points at ``30 + 120 k`` degrees from the lattice angle,
    which the fit takes from neighbour 0; neighbours 1 and 2 swapped made a hop towards one
    scored with the other's rate (about half the steps of an image capture).
    """
    from twinloop.sim.stem import kernel as K
    from twinloop.sysid.stem import kernel_order

    rng = np.random.default_rng(0)
    n = 200
    angle = rng.uniform(-np.pi, np.pi, n)
    sub = rng.integers(0, 2, n)
    c, s = np.cos(angle), np.sin(angle)
    truth = np.array(
        [[K.bond_unit(k, int(sub[i]), c[i], s[i]) for k in range(3)] for i in range(n)]
    )
    truth = 1.42 * truth + rng.normal(0.0, 0.03, truth.shape)  # as measured
    shuffled = truth.copy()
    swap = rng.random(n) < 0.5
    shuffled[swap, 1], shuffled[swap, 2] = truth[swap, 2], truth[swap, 1]
    out = kernel_order(shuffled)
    np.testing.assert_array_equal(out, truth)
    # what the likelihood uses: neighbour k along the kernel's bond k of a sublattice-0 Si
    # whose lattice angle puts bond 0 on neighbour 0
    a = np.arctan2(out[:, 0, 1], out[:, 0, 0]) - np.pi / 6.0
    for i in range(n):
        for k in range(3):
            u = K.bond_unit(k, 0, math.cos(a[i]), math.sin(a[i]))
            assert np.dot(u, out[i, k]) / np.linalg.norm(out[i, k]) > 0.99


def _synthetic_steps(offsets: np.ndarray, outcome: int, hop: int = -1):
    from twinloop.sysid import stem

    n = offsets.shape[0]
    nbrs = 1.42 * np.array(
        [[[math.cos(math.radians(30 + 120 * k)), math.sin(math.radians(30 + 120 * k))]
          for k in range(3)]] * n
    )  # fmt: skip
    return stem.StemSteps(
        dataset=np.zeros(n, dtype=np.int64),
        episode=np.zeros(n, dtype=np.int64),
        offset=offsets,
        lead_s=np.zeros(n),
        box_mu=np.zeros((n, 2)),
        dwell_s=np.full(n, 8.0),
        cos=np.ones(n),
        sin=np.zeros(n),
        nbrs=nbrs,
        outcome=np.full(n, outcome, dtype=np.int64),
        hop=np.full(n, hop, dtype=np.int64),
        drift_df=[np.zeros((0, 2))],
        drift_t=[np.zeros(0)],
        loc_r=[np.zeros((0, 2))],
        loc_t=[np.zeros(0)],
        dropped={},
    )


def test_offset_blur_is_averaged_over_exactly():
    """A step's likelihood under a Gaussian beam-offset error, against a fine quadrature.

    The 7-point cubature (degree 5) must match a 24 x 24 Gauss-Hermite grid, and the blur
    must act as a wider probe does: fewer events at the optimum, more in the tails.
    """
    from twinloop.sim.stem.config import StemConfig
    from twinloop.sysid import stem

    cfg = make_config(ENV_ID, **CAPTURE_SETTINGS)
    settings = [stem.Settings(cfg, 2.0, 3.0, cfg.microscope.drift_resolution_angstrom, 60.0)]
    assert isinstance(cfg, StemConfig)
    peak = (1.42 + cfg.physics.optimum_offset_angstrom) * np.array([0.866, 0.5])  # bond 0
    offsets = np.array([peak, [1.8, 1.4], 1.7 * peak, [-0.3, 0.9]])
    sd = 0.15
    z, w = np.polynomial.hermite_e.hermegauss(24)
    w = w / w.sum()
    for outcome, hop in ((stem.HOP, 0), (stem.STAY, -1)):
        steps = _synthetic_steps(offsets, outcome, hop)
        vel = np.zeros((1, 2))
        exact = stem.RateModel(steps, settings, vel, {})
        fine = np.zeros(offsets.shape[0])
        for a, wa in zip(z, w, strict=True):
            for b, wb in zip(z, w, strict=True):
                steps.offset = offsets + sd * np.array([a, b])
                fine += wa * wb * np.exp(exact.loglik({}, per_step=True))
        steps.offset = offsets
        blur = stem.BlurFit(np.array([sd]), np.array([0.0]), np.array([0]), 0.0)
        blurred = np.exp(stem.RateModel(steps, settings, vel, {}, blur).loglik({}, True))
        np.testing.assert_allclose(blurred, fine, rtol=2e-3)
        sharp = np.exp(exact.loglik({}, per_step=True))
        if outcome == stem.HOP:  # far out, the blurred profile reaches further
            assert blurred[2] > 1.05 * sharp[2]
        else:  # at the optimum, the blurred profile is lower: fewer events
            assert blurred[0] > 1.05 * sharp[0]


def test_fit_blur_separates_localisation_from_the_drifts_walk():
    """Stills' residuals are two frames' errors plus the walk: ``E r^2 = 2 s^2 + 2 D t``."""
    from twinloop.sysid import stem

    rng = np.random.default_rng(3)
    d, s_loc, n = 0.0008, 0.05, 4000
    t = rng.uniform(6.0, 25.0, n)
    r = rng.normal(0.0, 1.0, (n, 2)) * np.sqrt(2 * s_loc**2 + 2 * d * t)[:, None]
    steps = _synthetic_steps(np.zeros((n, 2)), stem.STAY)
    steps.loc_r, steps.loc_t = [r], [t]
    cfg = make_config(ENV_ID, **CAPTURE_SETTINGS)
    image = stem.Settings(cfg, 2.0, 3.0, 0.1, 60.0, from_images=True)
    fitted = stem.fit_blur(steps, [image], d)
    assert fitted.localisation_sd[0] == pytest.approx(s_loc, rel=0.15)
    assert fitted.sd[0] == pytest.approx(math.sqrt(s_loc**2 + 2 * d * 5.0), rel=0.03)
    sim = stem.fit_blur(steps, [dataclasses.replace(image, from_images=False)], d)
    assert sim.sd[0] == 0.0  # sim captures: exact offsets


#: The rate-shape parameters, which beam offsets read from frames bear on.
SHAPE = (
    "physics.optimum_offset_angstrom",
    "physics.probe_fwhm_angstrom",
    "physics.cross_section_barn_60kv",
)


@pytest.mark.slow
def test_interval_coverage_and_bias_on_image_captures(tmp_path: Path):
    """10 devices drawn from the prior, captured through frames (256 px, 30 episodes each).

    The shape parameters' 95 % intervals cover, and their errors average out over devices.
    Before the neighbours were put in the kernel's order and the offsets' error, the scan
    lag and the dropped re-centred steps were modelled, 12 such devices gave a cross section
    23 % low on average (covered 3 times of 12) and a probe 25 % wide; after, -6 % and +1 %
    (+- 3 % and 2 %). With 10 repeats a parameter covers 9.5 times on average; 6 or fewer
    happens by chance with probability ~0.1 %.
    """
    from twinloop.core.profile import draw_profile

    nominal = make_config(ENV_ID, **CAPTURE_SETTINGS)
    covers: dict[str, list[bool]] = {p: [] for p in SHAPE}
    errors: dict[str, list[float]] = {p: [] for p in SHAPE}
    for seed in range(10):
        profile = draw_profile(nominal, 700 + seed)
        d = capture(tmp_path / f"d{seed}", profile, 30, seed=seed, images=True)
        res = fit(ENV_ID, [d])
        assert 0.02 < res.details["beam_offset_error"]["sd_angstrom"][0] < 0.2
        for path in SHAPE:
            e = res.estimate(path)
            if not e.identified:
                continue
            covers[path].append(bool(e.covers))
            off = e.estimate - e.true
            errors[path].append(off if "optimum" in path else math.log(e.estimate / e.true))
    for path in SHAPE:
        hits = covers[path]
        assert len(hits) >= 8, f"{path}: identified on {len(hits)} devices of 10"
        assert np.mean(hits) >= 0.7, f"{path}: covered {sum(hits)} of {len(hits)}"
    assert abs(np.mean(errors["physics.optimum_offset_angstrom"])) < 0.06
    assert abs(np.mean(errors["physics.probe_fwhm_angstrom"])) < 0.08
    assert abs(np.mean(errors["physics.cross_section_barn_60kv"])) < 0.15
