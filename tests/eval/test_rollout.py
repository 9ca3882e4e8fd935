from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

import twinloop
from twinloop.controllers import make_controller
from twinloop.eval.rollout import run_single, run_vector, summarize, wilson_interval

ID = "twinloop/StemSteer-v0"


def test_vector_and_single_runs_give_identical_episodes() -> None:
    env = twinloop.make(ID)
    single = run_single(env, make_controller("random", env), 12, seed=4)
    vec = twinloop.make_vec(ID, 5)
    batched = run_vector(vec, make_controller("random", vec), 12, seed=4)
    assert single == batched
    assert [r.seed for r in single] == list(range(4, 16))


def test_summary_counts() -> None:
    env = twinloop.make(ID)
    res = run_single(env, make_controller("greedy-neighbor", env), 30, seed=0)
    s = summarize(res)
    assert s["episodes"] == 30
    assert s["success_rate"] == pytest.approx(np.mean([r.success for r in res]))
    assert sum(s["failures"].values()) + s["truncated"] + round(30 * s["success_rate"]) == 30
    lo, hi = s["success_rate_ci95"]
    assert lo <= s["success_rate"] <= hi


def test_wilson_interval_matches_scipy_and_covers() -> None:
    lo, hi = wilson_interval(7, 20)
    ref = stats.binomtest(7, 20).proportion_ci(method="wilson")
    assert (lo, hi) == pytest.approx((ref.low, ref.high), abs=1e-12)
    rng = np.random.default_rng(0)
    p, n, hits = 0.3, 50, 0
    for _ in range(2000):
        lo, hi = wilson_interval(int(rng.binomial(n, p)), n)
        hits += lo <= p <= hi
    assert 0.93 <= hits / 2000 <= 0.97
