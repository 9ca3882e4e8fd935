"""The oracle solves every spec of every split; the scripted parser is between it and random."""

from __future__ import annotations

import functools

import numpy as np
import pytest

import twinloop
from tests.sim.rearrange.test_world import n_subgoals
from twinloop.controllers import make_controller
from twinloop.controllers.classical import rearrange as oracle
from twinloop.sim.rearrange import catalog as C
from twinloop.sim.rearrange import episodes as E

ENV_ID = "twinloop/LangRearrange-v0"


@functools.cache
def _first_episodes(split: str, controller: str, n: int = 100) -> dict[str, np.ndarray]:
    """Run the first episode of each row (episode k of ``split`` in row k)."""
    vec = twinloop.make_vec(ENV_ID, n)
    ctrl = make_controller(controller, vec)
    ctrl.reset(n, np.arange(n))
    opts = {"backend": {"split": split, "episode": np.arange(n) % E.split_size(split)}}
    obs, _ = vec.reset(seed=0, options=opts)
    done = np.zeros(n, bool)
    success = np.zeros(n, bool)
    ret = np.zeros(n)
    invalid = np.zeros(n, int)
    steps = np.zeros(n, int)
    for _ in range(32):
        obs, reward, term, trunc, info = vec.step(ctrl.act(obs))
        live = ~done
        ret[live] += reward[live]
        steps[live] += 1
        ended = (term | trunc) & live
        if ended.any():
            fin = info["final_info"]
            success[ended] = fin["is_success"][ended]
            invalid[ended] += fin["invalid_action"][ended]
        if "invalid_action" in info:
            invalid[live & ~ended] += info["invalid_action"][live & ~ended]
        done |= ended
    assert done.all()
    return {"success": success, "return": ret, "invalid": invalid, "steps": steps}


@pytest.mark.parametrize("split", E.SPLITS)
def test_oracle_solves_every_spec(split: str) -> None:
    out = _first_episodes(split, "oracle")
    assert out["success"].all(), np.flatnonzero(~out["success"])
    assert (out["invalid"] == 0).all()
    for k in range(10):  # return = 10 + 5 per subgoal (see the task module)
        spec = E.episode_spec(split, k)
        assert out["return"][k] == pytest.approx(10 + 5 * n_subgoals(spec))


def test_oracle_and_task_share_the_goal_codes() -> None:
    assert (oracle.GOAL_ARTICULATED, oracle.GOAL_AT, oracle.GOAL_HERE) == (
        E.GOAL_ARTICULATED,
        E.GOAL_AT,
        E.GOAL_HERE,
    )


def test_random_does_poorly() -> None:
    out = _first_episodes("train", "random", n=256)
    types = [E.episode_spec("train", k).instruction_type for k in range(256)]
    moves = np.array([t not in ("go_to", "find", "open", "close") for t in types])
    assert out["success"][moves].mean() < 0.02  # a rearrangement by chance: almost never
    assert out["success"].mean() < 0.1  # one right nav of 71 actions solves "go to"
    assert out["invalid"].mean() > 10  # most random skills fail their preconditions
    oracle = _first_episodes("train", "oracle", n=256)
    assert oracle["success"].all() and oracle["steps"].mean() < out["steps"].mean()


@pytest.mark.parametrize("split", E.SPLITS)
def test_scripted_parser_is_well_above_random_and_at_most_oracle(split: str) -> None:
    scripted = _first_episodes(split, "scripted")["success"].mean()
    random = _first_episodes(split, "random")["success"].mean()
    oracle = _first_episodes(split, "oracle")["success"].mean()
    assert random + 0.2 <= scripted <= oracle, (random, scripted, oracle)


def test_scripted_parser_reads_every_instruction() -> None:
    """The parsed plan names the goal's categories and places, for every kind of atom."""
    vec = twinloop.make_vec(ENV_ID, 1)
    ctrl = make_controller("scripted", vec)
    kinds = set()
    for split in E.SPLITS:
        n = 400 if split == "train" else E.N_EVAL_EPISODES
        for k in range(n):
            spec = E.episode_spec(split, k)
            plan = ctrl.parse(spec.tokens)
            assert plan.parsed, spec.instruction
            cats = [C.CATEGORIES.index(c) for c in spec.goal_categories]
            assert [a.category for a in plan.atoms] == cats, spec.instruction
            goal = spec.goal[0]
            kinds.add(goal.kind)
            if goal.kind == "at":
                assert plan.go_to == C.RECEPTACLES.index(goal.place)
            elif goal.kind == "articulated":
                art = C.ARTICULATED.index(goal.place)
                assert plan.articulated == (art, goal.count == 1)
            elif goal.kind == "on_here":
                assert plan.atoms[0].kind == "find"
            elif goal.kind == "none_on":  # taken off its source, to any other receptacle
                src = C.RECEPTACLES.index(goal.place)
                assert plan.atoms[0].source == src and src not in plan.atoms[0].targets
                assert len(plan.atoms[0].targets) == C.N_RECEPTACLES - 1
            else:
                for atom, want in zip(plan.atoms, spec.goal, strict=True):
                    assert C.RECEPTACLES.index(want.place) in (
                        *atom.targets,
                        *((plan.condition[2],) if plan.condition else ()),
                    )
            if spec.instruction_type == "swap":  # each object's source is the other's target
                a, b = plan.atoms
                assert (a.source, b.source) == (b.targets[0], a.targets[0])
    assert kinds == set(E.GOAL_KINDS)


@pytest.mark.parametrize("split", ["train", "spatial_relationships", "conditional"])
def test_scripted_parser_never_reads_true_fields(split: str) -> None:
    """Scrambling every true/ field changes no action of the scripted parser."""
    n = 64
    vec = twinloop.make_vec(ENV_ID, n)
    layout = vec.metadata["observation_layout"]
    true = np.zeros(vec.single_observation_space.shape[0], bool)
    for name, entry in layout.items():
        if name.startswith("true/"):
            true[entry["start"] : entry["stop"]] = True
    honest, blind = make_controller("scripted", vec), make_controller("scripted", vec)
    for ctrl in (honest, blind):
        ctrl.reset(n, np.arange(n))
    obs, _ = vec.reset(seed=0, options={"backend": {"split": split, "episode": np.arange(n)}})
    rng = np.random.default_rng(0)
    for _ in range(40):  # past the first episodes' ends: auto-reset rows re-parse
        scrambled = obs.copy()
        scrambled[:, true] = rng.integers(-1, 30, (n, int(true.sum())))
        act = honest.act(obs)
        np.testing.assert_array_equal(act, blind.act(scrambled))
        obs, *_ = vec.step(act)


@pytest.mark.parametrize("split", ["multiple_objects", "conditional"])
def test_scripted_parser_acts_the_same_in_rgb_mode(split: str) -> None:
    """In rgb mode the parser reads the same instruction and fields: the same actions."""
    n = 8
    opts = {"backend": {"split": split, "episode": np.arange(n)}}
    sym = twinloop.make_vec(ENV_ID, n)
    rgb = twinloop.make_vec(ENV_ID, n, observation_mode="rgb", resolution=64)
    a_ctrl, b_ctrl = make_controller("scripted", sym), make_controller("scripted", rgb)
    for ctrl in (a_ctrl, b_ctrl):
        ctrl.reset(n, np.arange(n))
    o_sym, _ = sym.reset(seed=0, options=opts)
    o_rgb, _ = rgb.reset(seed=0, options=opts)
    for _ in range(40):
        a, b = a_ctrl.act(o_sym), b_ctrl.act(o_rgb)
        np.testing.assert_array_equal(a, b)
        o_sym, r_sym, *_ = sym.step(a)
        o_rgb, r_rgb, *_ = rgb.step(b)
        np.testing.assert_array_equal(r_sym, r_rgb)
    sym.close()
    rgb.close()
