"""The station-keeping task: BLE's reward and TWR50, and the measurement-corrected wind column."""

from __future__ import annotations

import math

import numpy as np
import pytest

import twinloop
from twinloop.sim.balloon import kernel as K
from twinloop.sim.balloon import task as T
from twinloop.sim.balloon.config import BalloonConfig

ENV_ID = "twinloop/BalloonStationKeeping-v0"


def _setup(cfg: BalloonConfig | None = None):
    cfg = cfg or BalloonConfig()
    m = np.zeros(K.measurement_size(cfg))
    m[K.M_P] = 8000.0
    m[K.M_SOC] = 0.9
    m[K.M_CMD] = K.STAY
    t = np.zeros(T.state_size(cfg))
    tp = T.task_params(cfg)
    obs = np.zeros(T.observation_layout(cfg).size, dtype=np.float32)
    T.task_reset(m, t, tp, obs)
    return cfg, m, t, tp, obs


@pytest.mark.parametrize(
    ("distance_km", "expected"),
    [(0.0, 1.0), (49.9, 1.0), (150.0, 0.4 * 0.5), (350.0, 0.4 * 2.0**-3)],
)
def test_station_reward_follows_ble(distance_km: float, expected: float) -> None:
    """1 within 50 km; 0.4 * 2^(-(d - 50 km) / 100 km) outside [B20]."""
    _, m, t, tp, obs = _setup()
    m[K.M_POS] = distance_km * 1000.0
    out = T.task_step(m, t, tp, obs)
    assert out[7] == pytest.approx(expected, rel=1e-12)
    assert out[8] == 0.0


def test_down_without_excess_energy_is_penalised() -> None:
    """A DOWN command multiplies the reward by 0.95 - 0.3 clip((P - 100) / 200, 0, 1) [B20]."""
    _, m, t, tp, obs = _setup()
    T.task_command(K.DOWN, t)
    m[K.M_ACS_W] = 200.0
    out = T.task_step(m, t, tp, obs)
    assert out[7] + out[8] == pytest.approx(0.95 - 0.3 * 0.5)
    T.task_command(K.DOWN, t)
    m[K.M_EXCESS] = 1.0
    out = T.task_step(m, t, tp, obs)
    assert out[8] == 0.0


def test_twr50_counts_steps_within_radius_over_the_episode_length() -> None:
    """TWR50 = steps ending within 50 km / 960 [B20]."""
    _, m, t, tp, obs = _setup()
    for k in range(10):
        m[K.M_POS] = (10.0 if k < 4 else 80.0) * 1000.0
        out = T.task_step(m, t, tp, obs)
    assert out[5] == pytest.approx(4 / 960)


def test_leaving_the_region_terminates() -> None:
    """Beyond 500 km (the forecast's box) the episode ends as out_of_region."""
    _, m, t, tp, obs = _setup()
    m[K.M_POS] = 501e3
    out = T.task_step(m, t, tp, obs)
    assert out[0] and not out[1]
    assert T.FAILURE_NAMES[out[3]] == "out_of_region"


def test_uncertainty_shrinks_near_measurements_and_grows_back() -> None:
    """A measured wind at p_m pins the error near p_m only; uncertainty returns with time."""
    cfg, m, t, tp, obs = _setup()
    layout = T.observation_layout(cfg)
    levels = np.array(cfg.column_levels_pa)
    near = int(np.argmin(abs(levels - 8000.0)))
    far = int(np.argmin(abs(levels - 13000.0)))
    m[K.M_WIND_P] = 8000.0
    m[K.M_WIND] = 5.0  # measured u
    m[K.M_WIND_FC] = 2.0  # forecast u there: error +3 m/s
    for _ in range(20):
        m[K.M_ELAPSED] += 180.0
        T.task_step(m, t, tp, obs)
    col = layout.get(obs, "wind_column")
    assert col[near, 0] < 0.35
    assert col[far, 0] > 0.95
    assert t[T.T_ERR + 3 * near] == pytest.approx(3.0, rel=0.05)  # corrected toward truth
    # a day later, far away, with a measurement at another level: the old one is forgotten
    m[K.M_ELAPSED] += 86400.0
    m[K.M_POS] = 3e5
    m[K.M_WIND_P] = 13000.0
    T.task_step(m, t, tp, obs)
    col = layout.get(obs, "wind_column")
    assert col[near, 0] > 0.9


def test_column_angle_and_speed_features() -> None:
    """Each level gives |angle to the station| / pi and speed / (speed + 30)."""
    cfg, m, t, tp, obs = _setup()
    n = cfg.task.n_column_levels
    m[K.M_POS] = 100e3  # balloon east of the station: the station lies due west
    m[K.M_COLUMN : K.M_COLUMN + n] = -10.0  # westward wind on every level
    T.task_step(m, t, tp, obs)
    col = T.observation_layout(cfg).get(obs, "wind_column")
    assert np.allclose(col[:, 1], 0.0, atol=1e-6)
    assert np.allclose(col[:, 2], 10.0 / 40.0)
    m[K.M_COLUMN + n : K.M_COLUMN + 2 * n] = 10.0  # north-west
    T.task_step(m, t, tp, obs)
    col = T.observation_layout(cfg).get(obs, "wind_column")
    assert np.allclose(col[:, 1], 0.25, atol=1e-6)
    assert np.allclose(col[:, 2], math.hypot(10, 10) / (math.hypot(10, 10) + 30), atol=1e-6)


def test_env_info_carries_reward_terms_and_twr50() -> None:
    """Per-step ``reward/<term>`` and ``twr50`` in info; 960-step truncation."""
    env = twinloop.make(ENV_ID, max_steps=5)
    env.reset(seed=3)
    for _ in range(5):
        _, reward, term, trunc, info = env.step(1)
    assert {"reward/station", "reward/power", "twr50", "distance_km"} <= set(info)
    assert reward == pytest.approx(info["reward/station"] + info["reward/power"])
    assert trunc and not term
    assert BalloonConfig().task.max_steps == 960
