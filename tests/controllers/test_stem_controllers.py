from __future__ import annotations

import numpy as np
import pytest

import twinloop
from twinloop.controllers import make_controller
from twinloop.controllers.classical.stem import nearest_neighbor_to_goal

ID = "twinloop/StemSteer-v0"


def test_nearest_neighbor_to_goal_geometry() -> None:
    nbrs = np.array([[[1.23, 0.71], [-1.23, 0.71], [0.0, -1.42]]] * 3)
    goals = np.array([[5.0, 3.0], [-4.0, 1.0], [0.3, -6.0]])
    np.testing.assert_array_equal(nearest_neighbor_to_goal(nbrs, goals), [0, 1, 2])


@pytest.mark.parametrize("mode", ["offset", "absolute"])
def test_greedy_neighbor_parks_on_the_neighbour_nearest_the_goal(mode: str) -> None:
    env = twinloop.make(ID, action_mode=mode, action_dwell=True)
    ctrl = make_controller("greedy-neighbor", env, dwell_s=4.0)
    obs, _ = env.reset(seed=5)
    layout = env.unwrapped.task.layout
    action = ctrl.act_one(obs)
    nbrs = layout.get(obs, "neighbor_offsets_angstrom")
    goal = layout.get(obs, "goal_offset_angstrom")
    k = int(np.argmin(np.linalg.norm(nbrs - goal, axis=1)))
    want = nbrs[k] + (layout.get(obs, "si_position_angstrom") if mode == "absolute" else 0)
    np.testing.assert_allclose(action[:2], want, atol=1e-6)
    assert action[2] == 4.0
    assert env.action_space.contains(action)


def test_random_controller_rows_depend_only_on_their_seed() -> None:
    env = twinloop.make(ID)
    a = make_controller("random", env)
    b = make_controller("random", env)
    a.reset(3, np.array([10, 11, 12]))
    b.reset(1, np.array([11]))
    obs3 = np.zeros((3, env.observation_space.shape[0]), np.float32)
    acts_a = np.array([a.act(obs3) for _ in range(5)])
    acts_b = np.array([b.act(obs3[:1]) for _ in range(5)])
    np.testing.assert_array_equal(acts_a[:, 1], acts_b[:, 0])
    assert all(env.action_space.contains(x) for x in acts_a.reshape(-1, 2))
    assert len({x.tobytes() for x in acts_a.reshape(-1, 2)}) == 15


def test_unknown_controller_and_wrong_system() -> None:
    env = twinloop.make(ID)
    with pytest.raises(ValueError, match="valid controllers: random, greedy-neighbor"):
        make_controller("nope", env)
    from twinloop.controllers.classical.stem import GreedyNeighbor

    with pytest.raises(ValueError, match="works on systems stem, not on 'balloon'"):
        GreedyNeighbor(env.observation_space, env.action_space, {"system": "balloon"})


def test_save_and_load_round_trip(tmp_path) -> None:
    env = twinloop.make(ID)
    ctrl = make_controller("greedy-neighbor", env)
    ctrl.save(tmp_path / "c.json")
    ctrl.load(tmp_path / "c.json")
    other = make_controller("random", env)
    with pytest.raises(ValueError, match="holds a 'greedy-neighbor' controller"):
        other.load(tmp_path / "c.json")
