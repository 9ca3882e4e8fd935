"""BLE's wind model (``wind.source="ble-vae"``): properties of the fields it makes.

Facts from ``shared/reference/balloon.md`` and BLE 1.0.1 [B20]: the decoder maps z ~ N(0, I_64)
to a stream function whose winds live on a 21 x 21 x 10 x 9 grid (+-500 km at 50 km, 10
pressure levels 5000-14000 Pa, 9 times over 48 h), trained on ERA5 stratospheric winds;
lookups are linear in each axis, clamp in space and reflect in time past 48 h; the truth adds
noise of about 1 m/s per component. Tests that need the decoder weights skip without the
BLE wheel (``pip install --no-deps balloon-learning-environment==1.0.1``).
"""

from __future__ import annotations

import importlib.metadata

import numpy as np
import pytest

import twinloop
from twinloop.core.config import override
from twinloop.sim.balloon import blevae
from twinloop.sim.balloon import kernel as K
from twinloop.sim.balloon import wind as W
from twinloop.sim.balloon.config import BalloonConfig

ENV_ID = "twinloop/BalloonStationKeeping-v0"
needs_wheel = pytest.mark.skipif(
    not blevae.available(), reason=f"needs the BLE wheel: {blevae.INSTALL_HINT}"
)


@pytest.fixture(scope="module")
def psis() -> list[np.ndarray]:
    """Stream functions of 12 latents z ~ N(0, I_64)."""
    w = blevae.load_weights()
    rng = np.random.default_rng(14)
    out = []
    for _ in range(12):
        psi = np.empty(W.VAE_PSI_SIZE)
        blevae.decode(rng.standard_normal(blevae.N_LATENT), w, psi)
        out.append(psi)
    return out


def _nodes(psi: np.ndarray) -> np.ndarray:
    """The whole field (u, v) on (first axis, second axis, level, time): 21 x 21 x 10 x 9 x 2.

    Written independently of the kernel: the 7 x 7 stream function resized linearly to
    23 x 23 (half-pixel centres, edges held) as a matrix product, then central differences.
    """
    n_in, n_out = W.VAE_PSI, W.VAE_NODES + 2
    r = np.zeros((n_out, n_in))
    for a in range(n_out):
        s = min(max((a + 0.5) * n_in / n_out - 0.5, 0.0), n_in - 1.0)
        lo = min(int(s), n_in - 2)
        r[a, lo], r[a, lo + 1] = 1.0 - (s - lo), s - lo
    grid = psi.reshape(n_in, n_in, W.VAE_LEVELS, W.VAE_TIMES)
    big = np.einsum("ai,bj,ijlt->ablt", r, r, grid)
    u = 0.5 * (big[2:, 1:-1] - big[:-2, 1:-1])
    v = -0.5 * (big[1:-1, 2:] - big[1:-1, :-2])
    return np.stack([u, v], axis=-1)


@needs_wheel
def test_weights_and_field_shapes(psis: list) -> None:
    """6.5 M parameters; 4410 stream-function values make a 21 x 21 x 10 x 9 x 2 field."""
    w = blevae.load_weights()
    assert w.shape == (blevae.N_WEIGHTS,) and w.dtype == np.float32
    assert 6.4e6 < blevae.N_WEIGHTS < 6.6e6
    assert W.VAE_PSI_SIZE == 7 * 7 * 90
    psi = np.full(W.VAE_PSI_SIZE, np.nan)
    blevae.decode(np.zeros(blevae.N_LATENT), w, psi)
    assert np.isfinite(psi).all()
    field = _nodes(psis[0])
    assert field.shape == (21, 21, 10, 9, 2)
    rng = np.random.default_rng(0)
    for _ in range(50):  # the kernel's node evaluation agrees with the field above
        a, b, lev, t = (int(rng.integers(0, k)) for k in (21, 21, 10, 9))
        got = W.vae_node(psis[0], 0, a, b, lev * W.VAE_TIMES + t)
        np.testing.assert_allclose(got, field[a, b, lev, t], rtol=1e-12, atol=1e-12)


@needs_wheel
def test_field_is_divergence_free_only_with_y_on_the_first_axis(psis: list) -> None:
    """The field comes from a stream function, so it is divergence-free the right way round.

    With x on the second grid axis, du/dx + dv/dy vanishes to round-off at every node; BLE's
    lookup puts x on the first axis, where the same differences do not vanish (what
    ``physics_variant="corrected"`` changes).
    """
    for psi in psis[:3]:
        f = _nodes(psi)
        u, v = f[..., 0], f[..., 1]
        du_db = (u[1:-1, 2:] - u[1:-1, :-2]) / 2.0
        dv_da = (v[2:, 1:-1] - v[:-2, 1:-1]) / 2.0
        du_da = (u[2:, 1:-1] - u[:-2, 1:-1]) / 2.0
        dv_db = (v[1:-1, 2:] - v[1:-1, :-2]) / 2.0
        scale = np.abs(du_db).mean() + np.abs(dv_da).mean()
        assert np.abs(du_db + dv_da).max() < 1e-9 * scale  # x on the second axis
        assert np.abs(du_da + dv_db).mean() > 0.3 * scale  # x on the first (BLE's lookup)


@needs_wheel
def test_speeds_by_level_look_like_the_stratosphere(psis: list) -> None:
    """RMS speed per level of a few m/s to tens of m/s, differing between levels (ERA5)."""
    speed = np.stack([np.hypot(*np.moveaxis(_nodes(p), -1, 0)) for p in psis[:6]])
    rms = np.sqrt((speed**2).mean(axis=(0, 1, 2, 4)))  # per level
    assert rms.shape == (10,)
    assert (rms > 2.0).all() and (rms < 40.0).all()
    assert rms.max() / rms.min() > 1.2  # levels are not copies of each other
    assert speed.max() < 100.0
    # the latent matters: two draws give different fields
    assert np.abs(_nodes(psis[0]) - _nodes(psis[1])).mean() > 1.0


@needs_wheel
def test_lookup_is_linear_between_levels_clamped_in_space_reflected_in_time(psis: list) -> None:
    psi = psis[0]
    pu, pv = np.zeros(64), np.zeros(64)

    def profile(x_km: float, y_km: float, t_h: float) -> np.ndarray:
        W.vae_profile(psi, 0, x_km * 1e3, y_km * 1e3, t_h * 3600.0, False, pu, pv)
        return np.stack([pu[:10], pv[:10]]).copy()

    # on a node: the node's values
    node = np.array(W.vae_node(psi, 0, 12, 8, 3 * 9 + 2))
    np.testing.assert_allclose(profile(100.0, -100.0, 12.0)[:, 3], node, atol=1e-12)
    # clamped beyond +-500 km, reflected past 48 h ("boomerang")
    np.testing.assert_array_equal(profile(650.0, -720.0, 5.0), profile(500.0, -500.0, 5.0))
    np.testing.assert_allclose(profile(10.0, 20.0, 60.0), profile(10.0, 20.0, 36.0), atol=1e-12)
    np.testing.assert_allclose(profile(10.0, 20.0, 100.0), profile(10.0, 20.0, 4.0), atol=1e-12)
    # level structure: 10 levels every 1000 Pa from 5000 Pa, linear between
    j, w = W.uniform_level(7500.0, W.VAE_PMIN_PA, W.VAE_PMAX_PA, W.VAE_LEVELS)
    assert (j, w) == (2, pytest.approx(0.5))


@needs_wheel
def test_envs_fly_bles_winds_with_noise_of_about_one_metre_per_second() -> None:
    """The env on source="ble-vae": finite observations; truth - forecast sd ~ 1 m/s [B20]."""
    venv = twinloop.make_vec(ENV_ID, 8, **{"wind.source": "ble-vae"})
    obs, _ = venv.reset(seed=0)
    assert np.isfinite(obs).all()
    f = venv.unwrapped.state.f
    diffs = []
    for _ in range(30):
        obs, *_ = venv.step(np.full(8, K.STAY))
        diffs.append(np.stack([f[:, K.F_WU] - f[:, K.F_WFU], f[:, K.F_WV] - f[:, K.F_WFV]]))
    assert np.isfinite(obs).all()
    d = np.concatenate(diffs, axis=1)
    assert 0.4 < d.std() < 2.0
    # different seeds draw different latents: different forecasts
    assert np.unique(np.round(f[:, K.F_WFU], 6)).size == 8


def test_missing_wheel_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the wheel: an ImportError that says what to install (and nothing downloads)."""

    def missing(name: str) -> None:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    blevae.load_weights.cache_clear()
    try:
        assert not blevae.available()
        cfg = override(BalloonConfig(), **{"wind.source": "ble-vae"})
        with pytest.raises(blevae.BleWheelNotFound, match=r"pip install --no-deps "):
            twinloop.make(ENV_ID, config=cfg)
    finally:
        blevae.load_weights.cache_clear()
