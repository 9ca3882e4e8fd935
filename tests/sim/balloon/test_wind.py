"""The generative wind: divergence-free, sheared with altitude, time-varying; truth vs forecast.

Expectations from ``shared/reference/balloon.md``: the forecast is built from a stream function
(horizontally divergence-free) over +-500 km, 5000-14000 Pa and 48 h; the truth is the forecast
plus an error whose 12-h magnitude matches real forecasts (3.5-4.5 m/s) [B20].
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from twinloop.core.config import override
from twinloop.core.rng import new_streams, seed_streams
from twinloop.sim.balloon import kernel as K
from twinloop.sim.balloon.config import BalloonConfig


def _episodes(n: int, cfg: BalloonConfig | None = None, seed: int = 0):
    cfg = cfg or BalloonConfig()
    params, wp = K.physics_params(cfg), K.wind_params(cfg)
    f, i, wind, work, meas = K.new_state(cfg, n)
    grid, levels = K.empty_grid()
    rng = new_streams(n)
    for row in range(n):
        seed_streams(rng, row, seed + row)
        K.reset(row, f, i, wind, work, params, wp, grid, levels, rng, meas)

    def at(row: int, x: float, y: float, p: float, t: float, truth: bool) -> tuple[float, float]:
        return K.wind_at(row, x, y, p, t, t, truth, wind, work, wp, grid, levels)

    return at, f


def test_forecast_is_horizontally_divergence_free() -> None:
    """du/dx + dv/dy = 0 (finite differences) while the vorticity is not."""
    at, _ = _episodes(5)
    h = 50.0  # m
    rng = np.random.default_rng(0)
    for row in range(5):
        for _ in range(10):
            x, y = rng.uniform(-4e5, 4e5, 2)
            p, t = rng.uniform(5000, 14000), rng.uniform(0, 48 * 3600)
            ue, _ = at(row, x + h, y, p, t, False)
            uw, _ = at(row, x - h, y, p, t, False)
            _, vn = at(row, x, y + h, p, t, False)
            _, vs = at(row, x, y - h, p, t, False)
            div = (ue - uw + vn - vs) / (2 * h)
            _, vee = at(row, x + h, y, p, t, False)
            _, vww = at(row, x - h, y, p, t, False)
            un, _ = at(row, x, y + h, p, t, False)
            us, _ = at(row, x, y - h, p, t, False)
            curl = (vee - vww - un + us) / (2 * h)
            assert abs(div) < 1e-9
            assert abs(curl) > 1e-8 or abs(div) < 1e-12


def test_wind_direction_turns_with_altitude() -> None:
    """Directions differ across the flight range (the shear station keeping relies on)."""
    at, _ = _episodes(40)
    spreads = []
    for row in range(40):
        angles = [
            math.atan2(*at(row, 0.0, 0.0, p, 0.0, False)[::-1]) for p in range(5000, 14001, 500)
        ]
        mean = math.atan2(np.mean(np.sin(angles)), np.mean(np.cos(angles)))
        spreads.append(max(abs((a - mean + math.pi) % (2 * math.pi) - math.pi) for a in angles))
    assert np.median(spreads) > math.radians(60)


def test_wind_changes_over_time_and_magnitudes_are_stratospheric() -> None:
    """Winds vary over 48 h; typical speeds are a few to a few tens of m/s."""
    at, _ = _episodes(20)
    speeds, changes = [], []
    for row in range(20):
        u0, v0 = at(row, 0.0, 0.0, 8000.0, 0.0, False)
        u1, v1 = at(row, 0.0, 0.0, 8000.0, 24 * 3600.0, False)
        speeds.append(math.hypot(u0, v0))
        changes.append(math.hypot(u1 - u0, v1 - v0))
    assert 3.0 < np.median(speeds) < 25.0
    assert np.median(changes) > 1.0


def test_truth_minus_forecast_has_the_configured_rms() -> None:
    """The error field's vector RMS is forecast_error_rms_m_per_s (default 4 m/s) [B20]."""
    for target in (4.0, 2.0):
        cfg = override(BalloonConfig(), forecast_error_rms_m_per_s=target)
        at, _ = _episodes(200, cfg)
        rng = np.random.default_rng(1)
        sq = []
        for row in range(200):
            x, y = rng.uniform(-4e5, 4e5, 2)
            p, t = rng.uniform(5000, 14000), rng.uniform(0, 48 * 3600)
            tu, tv = at(row, x, y, p, t, True)
            fu, fv = at(row, x, y, p, t, False)
            sq.append((tu - fu) ** 2 + (tv - fv) ** 2)
        assert math.sqrt(np.mean(sq)) == pytest.approx(target, rel=0.2)


def test_positions_outside_the_box_clamp() -> None:
    """The field is defined over +-500 km; beyond it values clamp to the edge [B20]."""
    at, _ = _episodes(1)
    assert at(0, 6e5, 0.0, 8000.0, 0.0, False) == at(0, 5e5, 0.0, 8000.0, 0.0, False)
    assert at(0, 0.0, 0.0, 15000.0, 0.0, False) == at(0, 0.0, 0.0, 14000.0, 0.0, False)
