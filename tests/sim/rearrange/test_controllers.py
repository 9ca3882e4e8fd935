"""The oracle solves every spec of every split; random does poorly."""

from __future__ import annotations

import numpy as np
import pytest

import twinloop
from twinloop.controllers import make_controller
from twinloop.sim.rearrange import episodes as E

ENV_ID = "twinloop/LangRearrange-v0"


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
