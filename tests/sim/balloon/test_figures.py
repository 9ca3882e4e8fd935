"""Balloon dataset figures: the track and altitude drawn are where the simulator flew."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import twinloop
from twinloop.datasets import RecordEpisodes, open_dataset
from twinloop.sim.balloon import kernel as K
from twinloop.sim.balloon.figures import altitude_km, config_of, dataset_figures, flight_track

ID = "twinloop/BalloonStationKeeping-v0"
STEPS = 40


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """Short random flights, with the simulator's position, altitude and atmosphere per row."""
    path = tmp_path_factory.mktemp("balloon_fig") / "ns" / "balloon-v0"
    env = RecordEpisodes(twinloop.make(ID, max_steps=STEPS, station_radius_km=40.0), path)
    env.action_space.seed(0)
    state = env.unwrapped.backend.state
    truth = []
    for seed in (3, 4):
        env.reset(seed=seed)
        rows = [state["meas"][0].copy()]
        while True:
            *_, terminated, truncated, _ = env.step(env.action_space.sample())
            rows.append(state["meas"][0].copy())
            if terminated or truncated:
                break
        truth.append({"meas": np.array(rows), "alpha": float(state["f"][0, K.F_ALPHA])})
    env.close()
    return path, truth


def test_track_and_altitude_match_the_simulator(recorded):
    path, truth = recorded
    with open_dataset(path) as ds:
        cfg = config_of(ds)
        assert cfg.task.max_steps == STEPS and cfg.task.station_radius_km == 40.0
        for k, ep in enumerate(ds.iterate_episodes()):
            d = flight_track(ep, cfg)
            meas = truth[k]["meas"]
            assert meas.shape[0] == len(ep) + 1
            # east/north of the station (km) from distance and the unit vector to the station
            np.testing.assert_allclose(d["east_km"], meas[:, K.M_POS] / 1000.0, atol=1e-3)
            np.testing.assert_allclose(d["north_km"], meas[:, K.M_POS + 1] / 1000.0, atol=1e-3)
            np.testing.assert_array_equal(d["distance_km"], ep.infos["distance_km"])
            np.testing.assert_allclose(d["time_h"], ep.infos["time_s"] / 3600.0)
            # altitude: the episode's own atmosphere reproduces the simulator's altitude, and
            # the drawn band (alpha in [0, 1]) holds it
            alt_true = meas[:, K.M_ALT] / 1000.0
            own = altitude_km(d["pressure_pa"], cfg, truth[k]["alpha"])
            np.testing.assert_allclose(own, alt_true, atol=2e-3)
            assert np.all(d["altitude_low_km"] - 1e-3 <= alt_true)
            assert np.all(alt_true <= d["altitude_high_km"] + 1e-3)
            assert np.all(d["altitude_low_km"] <= d["altitude_km"])
            assert np.all(d["altitude_km"] <= d["altitude_high_km"])
            np.testing.assert_array_equal(d["actions"], ep.actions)
            assert d["station_radius_km"] == 40.0


def test_altitude_falls_with_pressure():
    from twinloop.sim.balloon.config import BalloonConfig

    p = np.array([12000.0, 9000.0, 7000.0, 5000.0])
    alt = altitude_km(p, BalloonConfig(), 0.5)
    assert np.all(np.diff(alt) > 0)
    assert 13.0 < alt[0] < alt[-1] < 23.0  # the stratosphere where superpressure balloons fly


def test_dataset_figures_writes_a_png(recorded, tmp_path):
    path, _ = recorded
    with open_dataset(path) as ds:
        written = dataset_figures(ds, tmp_path, 1)
    assert [p.name for p in written] == ["episode_1_flight.png"]
    with Image.open(written[0]) as im:
        assert im.format == "PNG" and im.width > 800
