"""The world and the skills: benchmark sizes, scenes, preconditions, rewards, episode end."""

from __future__ import annotations

import numpy as np
import pytest

import twinloop
from twinloop.sim.rearrange import catalog as C
from twinloop.sim.rearrange import episodes as E

ENV_ID = "twinloop/LangRearrange-v0"


def test_benchmark_sizes() -> None:
    assert len(C.RECEPTACLES) == 11 and len(C.CATEGORIES) == 33
    assert C.CATEGORIES[-5:] == ("mug", "orange", "lid", "toy airplane", "wrench")
    assert C.N_ACTIONS == 71 == len(C.action_names()) == len(set(C.action_names()))
    assert C.action_names()[C.A_PICK + C.CATEGORIES.index("apple")] == "pick(apple)"
    env = twinloop.make(ENV_ID)
    assert env.action_space.n == 71


def test_scenes_are_fixed_and_distinct() -> None:
    n_rooms, rooms, xy = E.scene_layouts()
    assert rooms.shape == (60, 11) and E.N_TRAIN_SCENES == 50
    assert (n_rooms >= 3).all() and (n_rooms <= 5).all()
    assert (rooms < n_rooms[:, None]).all()
    assert len({xy[s].tobytes() + rooms[s].tobytes() for s in range(60)}) == 60
    E.scene_layouts.cache_clear()
    again = E.scene_layouts()
    np.testing.assert_array_equal(again[2], xy)  # regenerated from the same seeds


def _start(split: str, index: int):
    env = twinloop.make(ENV_ID)
    obs, _ = env.reset(seed=0, options={"backend": {"split": split, "episode": index}})
    return env, obs, E.episode_spec(split, index)


def _field(env, obs, name):
    return env.unwrapped.task.layout.get(obs, name)


def test_preconditions_and_invalid_cost() -> None:
    env, obs, spec = _start("train", 0)
    cat = E.episode_spec("train", 0).row[E.SP_SLOTS]
    src = spec.slots["src"]
    pick = C.A_PICK + cat
    # pick before reaching the receptacle: invalid, costs 0.05, changes nothing
    obs2, reward, *_, info = env.step(pick)
    assert info["invalid_action"] and reward == pytest.approx(-0.05)
    assert _field(env, obs2, "is_holding") == 0
    np.testing.assert_array_equal(
        _field(env, obs2, "true/object_receptacle"), _field(env, obs, "true/object_receptacle")
    )
    env.step(C.A_NAV + src)
    if src >= C.N_OPEN_RECEPTACLES:  # a container: closed means unreachable
        a = C.ARTICULATED_RECEPTACLE.index(src)
        if not spec.articulated_open[a]:
            *_, info = env.step(pick)
            assert info["invalid_action"]
            *_, info = env.step(C.A_OPEN + a)
            assert not info["invalid_action"]
            *_, info = env.step(C.A_OPEN + a)  # already open
            assert info["invalid_action"]
    obs3, reward, *_, info = env.step(pick)
    assert not info["invalid_action"] and reward == pytest.approx(5.0)  # the pick subgoal
    assert _field(env, obs3, "is_holding") == 1
    _, reward, *_, info = env.step(pick)  # hand full
    assert info["invalid_action"]
    wrong = (spec.slots["tgt"] + 1) % C.N_RECEPTACLES
    _, reward, *_, info = env.step(C.A_PLACE + wrong)  # not at that receptacle
    assert info["invalid_action"]
    _, reward, *_, info = env.step(C.A_NOOP)
    assert not info["invalid_action"] and reward == 0.0


def test_success_pays_subgoals_and_ends_the_episode() -> None:
    from twinloop.controllers import make_controller

    env, obs, spec = _start("train", 3)
    oracle = make_controller("oracle", env)
    total, steps = 0.0, 0
    while True:
        obs, reward, term, trunc, info = env.step(int(oracle.act_one(obs)))
        total += reward
        steps += 1
        if term or trunc:
            break
    assert term and info["is_success"]
    n_subgoals = sum(1 + n for _, _, n in spec.goal)  # a pick and each placement per atom
    assert info["subgoals_done"] == n_subgoals
    assert total == pytest.approx(10.0 + 5.0 * n_subgoals)


def test_episode_is_cut_after_32_actions() -> None:
    env, _, _ = _start("train", 1)
    for t in range(32):
        _, _, term, trunc, _ = env.step(C.A_NOOP)
        assert not term
        assert trunc == (t == 31)


def test_capacity_limits_place() -> None:
    env, obs, _ = _start("train", 5)
    orec = _field(env, obs, "true/object_receptacle")
    counts = np.bincount(orec[orec >= 0].astype(int), minlength=11)
    assert (counts <= np.array(C.CAPACITY)).all()
    assert (counts[C.N_OPEN_RECEPTACLES :] <= 3).all()  # clutter only on open receptacles


def test_config_limits_are_checked() -> None:
    with pytest.raises(ValueError, match="n_clutter"):
        twinloop.make(ENV_ID, n_clutter=40)
    with pytest.raises(ValueError, match="split"):
        twinloop.make(ENV_ID, split="spatial")


def test_bad_reset_options_name_the_limit() -> None:
    env = twinloop.make(ENV_ID)
    with pytest.raises(ValueError, match=r"episode 100 is outside split 'conditional' of 100"):
        env.reset(seed=0, options={"backend": {"split": "conditional", "episode": 100}})
    with pytest.raises(ValueError, match="unknown split 'contexts'"):
        env.reset(seed=0, options={"backend": {"split": "contexts"}})
    with pytest.raises(ValueError, match="unknown reset option"):
        env.reset(seed=0, options={"backend": {"level": 3}})
    vec = twinloop.make_vec(ENV_ID, 3)
    with pytest.raises(ValueError, match="3 ints"):
        vec.reset(seed=0, options={"backend": {"split": "train", "episode": [1, 2]}})


def test_vector_reset_options_pick_the_episodes() -> None:
    vec = twinloop.make_vec(ENV_ID, 4)
    obs, info = vec.reset(
        seed=0, options={"backend": {"split": "rephrasing", "episode": [7, 0, 3, 99]}}
    )
    np.testing.assert_array_equal(info["episode"], [7, 0, 3, 99])
    layout = twinloop.make(ENV_ID).unwrapped.task.layout
    for row, k in enumerate([7, 0, 3, 99]):
        spec = E.episode_spec("rephrasing", k)
        np.testing.assert_array_equal(layout.get(obs[row], "instruction"), spec.tokens)
