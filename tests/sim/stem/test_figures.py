"""STEM dataset figures: the Si path in the goal's frame lies on the lattice the task used."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import twinloop
from twinloop.controllers import make_controller
from twinloop.datasets import RecordEpisodes, open_dataset
from twinloop.sim.stem.config import BOND_ANGSTROM
from twinloop.sim.stem.figures import config_of, dataset_figures, si_path

ID = "twinloop/StemSteer-v0"
SEEDS = (11, 12, 13, 14, 15)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """Greedy episodes recorded through the single env, with the task's true goal of each."""
    path = tmp_path_factory.mktemp("stem_fig") / "ns" / "stem-v0"
    env = RecordEpisodes(twinloop.make(ID, n_holes=2), path)
    controller = make_controller("greedy-neighbor", env)
    goals = []
    for seed in SEEDS:
        obs, _ = env.reset(seed=seed)
        controller.reset(1, np.array([seed]))
        goals.append(env.unwrapped.task.goal_angstrom)
        while True:
            obs, _, terminated, truncated, _ = env.step(controller.act_one(obs))
            if terminated or truncated:
                break
    env.close()
    return path, goals


def _min_distance(points: np.ndarray, sites: np.ndarray) -> np.ndarray:
    return np.sqrt(((points[:, None, :] - sites[None]) ** 2).sum(-1)).min(axis=1)


def test_si_path_is_in_the_goal_frame_on_the_lattice(recorded):
    path, goals = recorded
    moved = 0
    with open_dataset(path) as ds:
        cfg = config_of(ds)
        assert cfg.physics.n_holes == 2  # the recorded config, not the defaults
        for k, ep in enumerate(ds.iterate_episodes()):
            d = si_path(ep, cfg)
            goal_offset = ep.observations[:, 8:10].astype(np.float64)
            np.testing.assert_array_equal(d["measured"], -goal_offset)
            # the true path is shifted by one vector: the goal site in the sample frame, which
            # is the task's goal up to the localisation noise of the Si it was chosen from
            goal = ep.infos["true/si_position_angstrom"] - d["true"]
            np.testing.assert_allclose(goal, np.broadcast_to(goal[0], goal.shape), atol=1e-9)
            assert np.hypot(*(goal[0] - goals[k])) < 0.3
            sites = np.concatenate([d["sites_a"], d["sites_b"]])
            # the goal is a site and every true position is a site of the drawn lattice
            assert _min_distance(np.zeros((1, 2)), sites)[0] < 1e-9
            assert _min_distance(d["true"], sites).max() < 1e-6
            # a honeycomb: every site's nearest neighbour is one bond away
            nn = np.sort(np.sqrt(((sites[:, None] - sites[None]) ** 2).sum(-1)), axis=1)[:, 1]
            np.testing.assert_allclose(nn, BOND_ANGSTROM, rtol=1e-6)
            # measured = true + localisation noise; the distance info is the measured one
            assert np.abs(d["measured"] - d["true"]).max() < 0.5
            np.testing.assert_allclose(
                np.hypot(*d["measured"].T), d["distance_angstrom"], atol=1e-4
            )
            if ep.infos["is_success"][-1]:
                np.testing.assert_allclose(d["true"][-1], 0.0, atol=1e-5)  # float32 bonds
            moved += int(np.any(np.abs(np.diff(d["true"], axis=0)) > 1e-9))
            # holes at reset, relative to the goal, as the observation gives them
            assert d["holes"].shape[1] == 3 and np.all(d["holes"][:, 2] > 0)
    assert moved >= 2  # the greedy controller moved the Si in several episodes


def test_dataset_figures_writes_a_png(recorded, tmp_path):
    path, _ = recorded
    with open_dataset(path) as ds:
        written = dataset_figures(ds, tmp_path, 1)
    assert [p.name for p in written] == ["episode_1_si_path.png"]
    with Image.open(written[0]) as im:
        assert im.format == "PNG" and im.width > 600


def test_a_dataset_of_another_layout_is_refused(recorded):
    path, _ = recorded
    with open_dataset(path) as ds:
        ep = ds[0]
    from twinloop.sim.stem.config import StemConfig

    with pytest.raises(ValueError, match="observation layout"):
        si_path(ep, StemConfig())  # no holes: 12 elements, the dataset has 18
