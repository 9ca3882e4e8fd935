"""HAADF image formation against the reference sheet's figures and exact statistics.

Sources: ``shared/reference/stem.md`` (image formation): intensity ~ Y (Z/6)^gamma per atom
(Si/C peak ratio 4.3-5.1 from abTEM multislice at 60 kV), ~1e-3 detected electrons per incident
electron at a C column, ``I t / e`` electrons per pixel, Poisson shot noise, per-line jitter.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from twinloop.core.config import override
from twinloop.core.jit import njit
from twinloop.core.rng import new_streams, seed_streams
from twinloop.sim.stem import kernel as K
from twinloop.sim.stem import render as R
from twinloop.sim.stem.config import StemConfig

QUIET = dict(
    line_jitter_angstrom=0.0,
    flyback_distortion_angstrom=0.0,
    drift_speed_max_angstrom_per_s=0.0,
    drift_diffusion_angstrom2_per_s=0.0,
    randomize_lattice_angle=False,
)


def _setup(cfg: StemConfig, seed: int = 0):
    p = K.physics_params(cfg)
    f, i, h, m = K.new_state(1)
    rng = new_streams(1)
    seed_streams(rng, 0, seed)
    K.reset(0, f, i, h, p, rng, m)
    return p, (f, i, h), rng, R.imaging_params(cfg)


def _value_at(img: np.ndarray, cfg: StemConfig, f: np.ndarray, x: float, y: float) -> float:
    n = img.shape[0]
    px = cfg.microscope.fov_angstrom / n
    half = 0.5 * cfg.microscope.fov_angstrom
    r = int((y - f[0, K.F_FOV_Y] + half) / px)
    c = int((x - f[0, K.F_FOV_X] + half) / px)
    return float(img[r - 1 : r + 2, c - 1 : c + 2].mean())


def test_si_to_carbon_peak_ratio_follows_z_to_the_gamma() -> None:
    """Peak ratio (14/6)^gamma = 4.6 for gamma = 1.8, inside abTEM's 4.3-5.1 [ref sheet]."""
    cfg = override(StemConfig(), imaging_current_na=5.0, frame_pixels=256, **QUIET)
    p, state, rng, ip = _setup(cfg)
    img = R.render_frame(cfg, 0, state, p, ip, rng)
    f = state[0]
    si = _value_at(img, cfg, f, *K.site_xy(0, 0, 0, 1.0, 0.0))
    far_c = np.mean(
        [
            _value_at(img, cfg, f, *K.site_xy(a, b, s, 1.0, 0.0))
            for a, b, s in [(2, 1, 0), (-2, 1, 1), (1, -3, 0), (-1, 2, 1)]
        ]
    )
    bg = cfg.imaging.background_yield / cfg.imaging.carbon_yield
    ratio = (si - bg * far_c) / (far_c - bg * far_c)
    assert 4.3 < ratio < 5.1
    assert ratio == pytest.approx((14 / 6) ** 1.8, rel=0.08)


def test_counts_scale_with_current_times_pixel_time() -> None:
    """Detected electrons = (I t / e) x yield: doubling the current doubles the mean counts."""
    means = []
    for current in (0.02, 0.04):
        cfg = override(StemConfig(), imaging_current_na=current, **QUIET)
        p, state, rng, ip = _setup(cfg)
        means.append(R.render_frame(cfg, 0, state, p, ip, rng).mean())
    assert means[1] / means[0] == pytest.approx(2.0, rel=0.02)
    cfg = override(StemConfig(), **QUIET)
    electrons = cfg.imaging.imaging_current_na * 1e-9 * cfg.pixel_time_s / 1.602176634e-19
    p, state, rng, ip = _setup(cfg)
    img = R.render_frame(cfg, 0, state, p, ip, rng)
    c_peak = _value_at(img, cfg, state[0], *K.site_xy(2, 1, 0, 1.0, 0.0))
    # a C column sends ~1e-3 of the incident electrons to the detector (3x3 mean: ~0.9 peak)
    assert c_peak == pytest.approx(electrons * (1e-3 + 1e-4), rel=0.25)


@pytest.mark.parametrize("lam", [0.03, 0.3, 3.3, 4.0, 9.5, 15.99, 16.0, 37.0, 250.0])
def test_shot_noise_is_exactly_poisson(lam: float) -> None:
    """Both regimes of the sampler (guided tables below 16, Hormann's PTRS above) are Poisson."""

    @njit
    def draw(lam: float, n: int, rng: np.ndarray) -> np.ndarray:
        out = np.empty(n)
        for k in range(n):
            out[k] = R.poisson(lam, rng, 0)
        return out

    rng = new_streams(1)
    seed_streams(rng, 0, 1)
    x = draw(lam, 100_000, rng).astype(np.int64)
    assert x.mean() == pytest.approx(lam, rel=0.02, abs=0.01)
    assert x.var() == pytest.approx(lam, rel=0.03, abs=0.01)
    counts = np.bincount(x)
    ks = np.arange(counts.size)
    expected = 100_000 * stats.poisson.pmf(ks, lam)
    keep = expected > 20
    obs, exp = counts[keep], expected[keep]
    assert stats.chisquare(obs, exp * obs.sum() / exp.sum()).pvalue > 1e-4


def test_line_jitter_shifts_rows_by_the_configured_spread() -> None:
    """Per-line jitter N(0, sd^2): the x centroid of an atom's rows scatters by ~sd."""
    sd = 0.2
    cfg = override(
        StemConfig(),
        imaging_current_na=10.0,
        line_jitter_angstrom=sd,
        **{k: v for k, v in QUIET.items() if k != "line_jitter_angstrom"},
    )
    p, state, rng, ip = _setup(cfg)
    img = R.render_frame(cfg, 0, state, p, ip, rng).astype(np.float64)
    n, fov = img.shape[0], cfg.microscope.fov_angstrom
    px = fov / n
    f = state[0]
    x, y = K.site_xy(0, 0, 0, 1.0, 0.0)  # the bright Si
    r0 = int((y - f[0, K.F_FOV_Y] + fov / 2) / px)
    c0 = int((x - f[0, K.F_FOV_X] + fov / 2) / px)
    w = int(0.35 / px)
    cols = np.arange(c0 - w, c0 + w + 1)
    centroids = []
    for r in range(r0 - 2, r0 + 3):
        row = img[r, cols] - img[r, cols].min()
        centroids.append((row * cols).sum() / row.sum() * px)
    spread = np.std(np.diff(centroids)) / math.sqrt(2)
    assert 0.3 * sd < spread < 2.0 * sd


def test_drift_shears_the_frame() -> None:
    """With drift along x, atoms in later rows appear shifted by v x (time of their row)."""
    cfg = override(StemConfig(), imaging_current_na=5.0, frame_time_s=60.0, **QUIET)
    p, state, rng, ip = _setup(cfg)
    f = state[0]
    f[0, K.F_VX] = 0.05  # A/s: 3 A over the frame
    img = R.render_frame(cfg, 0, state, p, ip, rng).astype(np.float64)
    from twinloop.sim.stem.perception import find_atoms

    xy, _, _ = find_atoms(img, cfg.microscope.fov_angstrom, cfg.physics.probe_sigma_angstrom)
    line_s = cfg.microscope.frame_time_s / img.shape[0]
    px = cfg.microscope.fov_angstrom / img.shape[0]
    # expected apparent position: sample x - view x at the time the row is scanned
    sites = np.array(
        [K.site_xy(a, b, s, 1.0, 0.0) for a in range(-8, 9) for b in range(-8, 9) for s in (0, 1)]
    )
    rows = (xy[:, 1] + cfg.microscope.fov_angstrom / 2) / px
    t = rows * line_s
    truth_now = sites[None, :, :] - np.array([f[0, K.F_FOV_X], f[0, K.F_FOV_Y]])
    d = xy[:, None, :] - (truth_now - np.stack([0.05 * t, 0 * t], axis=1)[:, None, :])
    err = np.hypot(d[..., 0], d[..., 1]).min(axis=1)
    assert np.median(err) < 0.1, "atoms sit where the drifting scan finds them"
