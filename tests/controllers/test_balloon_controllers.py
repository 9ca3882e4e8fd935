"""Balloon controllers: observation-only, batch-independent, and better than doing nothing."""

from __future__ import annotations

import numpy as np
import pytest

import twinloop
from twinloop.controllers import CONTROLLERS, make_controller
from twinloop.controllers.classical.balloon import StationSeeker
from twinloop.eval.rollout import run_single, run_vector

ID = "twinloop/BalloonStationKeeping-v0"
NAMES = ("station-seeker", "random-walk", "altitude-hold")


def test_registered() -> None:
    assert set(NAMES) <= set(CONTROLLERS)


@pytest.mark.parametrize("name", NAMES)
def test_single_and_vector_runs_agree(name: str) -> None:
    """Episode e sees seed S + e whatever the batch size (short episodes to stay fast)."""
    env = twinloop.make(ID, max_steps=40)
    single = run_single(env, make_controller(name, env), 4, seed=9)
    vec = twinloop.make_vec(ID, 3, max_steps=40)
    batched = run_vector(vec, make_controller(name, vec), 4, seed=9)
    assert single == batched
    assert all("twr50" in r.metrics for r in single)


def test_station_seeker_prefers_levels_blowing_home() -> None:
    """Far from the station the best level is the one whose wind points at it."""
    vec = twinloop.make_vec(ID, 1)
    obs, _ = vec.reset(seed=0)
    ctrl = make_controller("station-seeker", vec, level_cost_per_kpa=0.0)
    assert isinstance(ctrl, StationSeeker)
    layout = vec.metadata["observation_layout"]
    levels = np.asarray(vec.metadata["column_levels_pa"])
    obs = obs.copy()
    col = slice(layout["wind_column"]["start"], layout["wind_column"]["stop"])
    column = np.zeros((levels.size, 3), dtype=np.float32)
    column[:, 1] = 1.0  # every level blows away from the station ...
    column[:, 2] = 0.25  # ... at 10 m/s
    best = int(np.argmin(abs(levels - 9000.0)))
    column[best, 1] = 0.0  # except one, which blows home
    obs[0, col] = column.ravel()
    obs[0, layout["distance_km"]["start"]] = 300.0
    obs[0, layout["pressure_pa"]["start"]] = 7000.0
    obs[0, layout["solar_elevation_deg"]["start"]] = 30.0
    assert ctrl.scores(obs)[0].argmax() == best
    assert ctrl.act(obs)[0] == 0  # DOWN toward the higher pressure
    obs[0, layout["pressure_pa"]["start"]] = 10500.0
    assert ctrl.act(obs)[0] == 2  # UP toward the lower pressure


def test_altitude_hold_keeps_its_start_level() -> None:
    env = twinloop.make(ID, max_steps=120)
    ctrl = make_controller("altitude-hold", env)
    obs, _ = env.reset(seed=5)
    ctrl.reset(1, np.array([5]))
    p0 = float(obs[0])
    pressures = []
    for _ in range(120):
        obs, _, term, trunc, _ = env.step(int(ctrl.act_one(obs)))
        pressures.append(float(obs[0]))
        if term or trunc:
            break
    assert max(abs(p - p0) for p in pressures) < 400.0


def test_controllers_refuse_other_systems() -> None:
    env = twinloop.make("twinloop/StemSteer-v0")
    with pytest.raises(ValueError, match="balloon"):
        make_controller("station-seeker", env)
