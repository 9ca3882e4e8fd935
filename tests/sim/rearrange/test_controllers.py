"""The oracle solves every spec of every split; the scripted parser is between it and random."""

from __future__ import annotations

import functools

import numpy as np
import pytest

import twinloop
from twinloop.controllers import make_controller
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
    for k in range(5):  # return = 10 + 5 per subgoal (a pick and each placement per atom)
        spec = E.episode_spec(split, k)
        assert out["return"][k] == pytest.approx(10 + 5 * sum(1 + n for *_, n in spec.goal))


def test_random_does_poorly() -> None:
    out = _first_episodes("train", "random", n=256)
    assert out["success"].mean() < 0.02
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
    vec = twinloop.make_vec(ENV_ID, 1)
    ctrl = make_controller("scripted", vec)
    for split in E.SPLITS:
        for k in range(E.N_EVAL_EPISODES):
            spec = E.episode_spec(split, k)
            plan = ctrl.parse(spec.tokens)
            assert plan.parsed, spec.instruction
            cats = [C.CATEGORIES.index(c) for c in spec.goal_categories]
            assert [a.category for a in plan.atoms] == cats, spec.instruction
            assert C.RECEPTACLES.index(spec.goal[0][1]) in (
                *plan.atoms[0].targets,
                *((plan.condition[2],) if plan.condition else ()),
            )


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
