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


def _first_of_type(typ: str, split: str = "train") -> int:
    """The first episode of ``split`` whose instruction is of type ``typ``."""
    return next(k for k in range(1000) if E.episode_spec(split, k).instruction_type == typ)


def _field(env, obs, name):
    return env.unwrapped.task.layout.get(obs, name)


def test_preconditions_and_invalid_cost() -> None:
    k = _first_of_type("single")
    env, obs, spec = _start("train", k)
    cat = spec.row[E.SP_SLOTS]
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


#: Subgoals of each kind of goal atom (task module): a pick and each placement; a pick and
#: the placement elsewhere; none.
def n_subgoals(spec: E.EpisodeSpec) -> int:
    """The subgoals of a spec's goal, as the task module defines them."""
    per_kind = {"on": lambda a: 1 + a.count, "none_on": lambda a: 2}
    return sum(per_kind.get(a.kind, lambda a: 0)(a) for a in spec.goal)


@pytest.mark.parametrize(
    ("split", "typ"),
    [*(("train", t) for t in E.TRAINING_MIX), ("multiple_rearrangements", "all_from")],
)
def test_success_pays_subgoals_and_ends_the_episode(split: str, typ: str) -> None:
    from twinloop.controllers import make_controller

    env, obs, spec = _start(split, _first_of_type(typ, split))
    oracle = make_controller("oracle", env)
    total, steps = 0.0, 0
    while True:
        obs, reward, term, trunc, info = env.step(int(oracle.act_one(obs)))
        total += reward
        steps += 1
        if term or trunc:
            break
    assert term and info["is_success"]
    assert info["subgoals_done"] == n_subgoals(spec)
    assert total == pytest.approx(10.0 + 5.0 * n_subgoals(spec))
    assert {"go_to": 1, "find": 1}.get(typ, steps) == steps  # one nav, if nothing else


def _do(env, action: int):
    _, reward, term, _, info = env.step(action)
    assert not info["invalid_action"], C.action_names()[action]
    return reward, term


def test_removal_pays_the_pick_and_the_placement_elsewhere_once() -> None:
    env, _, spec = _start("train", _first_of_type("remove"))
    (atom,) = spec.goal
    src, cat = C.RECEPTACLES.index(atom.place), C.CATEGORIES.index(atom.category)
    other = 8 if src != 8 else 9  # a container: no clutter there, so room for it
    _do(env, C.A_NAV + src)
    if src >= C.N_OPEN_RECEPTACLES and not spec.articulated_open[src - C.N_OPEN_RECEPTACLES]:
        _do(env, C.A_OPEN + src - C.N_OPEN_RECEPTACLES)
    assert _do(env, C.A_PICK + cat) == (5.0, False)
    assert _do(env, C.A_PLACE + src) == (0.0, False)  # back where it was: nothing
    assert _do(env, C.A_PICK + cat) == (0.0, False)  # the pick was paid already
    _do(env, C.A_NAV + other)
    if not spec.articulated_open[other - C.N_OPEN_RECEPTACLES]:
        _do(env, C.A_OPEN + other - C.N_OPEN_RECEPTACLES)
    assert _do(env, C.A_PLACE + other) == (15.0, True)  # the placement and success


def test_open_close_and_go_to_end_when_their_state_holds() -> None:
    for typ in ("open", "close"):
        env, _, spec = _start("train", _first_of_type(typ))
        a = spec.slots["art"]
        assert spec.articulated_open[a] == (typ == "close")  # it starts in the other state
        _do(env, C.A_NAV + C.ARTICULATED_NAV[a])
        assert _do(env, (C.A_OPEN if typ == "open" else C.A_CLOSE) + a) == (10.0, True)
    env, _, spec = _start("train", _first_of_type("go_to"))
    tgt = spec.slots["tgt"]
    assert _do(env, C.A_NAV + (tgt + 1) % C.N_RECEPTACLES) == (0.0, False)
    assert _do(env, C.A_NAV + tgt) == (10.0, True)


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
