"""``twinloop run ID --split NAME|all``: success per evaluation split, LLaRP's table."""

from __future__ import annotations

import json

import numpy as np
import pytest

import twinloop
from twinloop.cli import main
from twinloop.controllers import make_controller
from twinloop.eval.rollout import EpisodeResult, wilson_interval
from twinloop.eval.splits import OVERALL, split_rows

ENV_ID = "twinloop/LangRearrange-v0"


def _episode(k: int, success: bool, ret: float) -> EpisodeResult:
    return EpisodeResult(k, k, ret, 3, success, "none", success, not success, float("nan"))


def test_rows_pool_the_benchmark_splits_into_overall_and_keep_the_others_apart() -> None:
    results = {
        "a": [_episode(0, True, 20.0), _episode(1, False, 1.0)],
        "b": [_episode(0, True, 10.0)] * 3,
        "extra": [_episode(0, False, 0.0)] * 4,
    }
    rows = split_rows(results, benchmark=("a", "b"))
    assert [r["split"] for r in rows] == ["a", "b", OVERALL, "extra"]
    overall = rows[2]
    assert overall["episodes"] == 5 and overall["successes"] == 4
    assert overall["success_rate_ci95"] == pytest.approx(wilson_interval(4, 5))
    assert overall["mean_return"] == pytest.approx((20 + 1 + 30) / 5)
    assert rows[3]["success_rate"] == 0.0  # not part of overall


def _run(tmp_path, *extra: str) -> tuple[int, dict]:
    out = tmp_path / "splits.json"
    code = main(["run", ENV_ID, "--quiet", "--json", str(out), *extra])
    return code, (json.loads(out.read_text()) if out.exists() else {})


def test_split_all_prints_every_evaluation_split_overall_and_a_figure(tmp_path, capsys) -> None:
    png = tmp_path / "splits.png"
    code, out = _run(
        tmp_path, "--controller", "oracle", "--split", "all", "--episodes", "3",
        "--n-envs", "3", "--plot", str(png),
    )  # fmt: skip
    assert code == 0
    meta = twinloop.make(ENV_ID).metadata
    names = [r["split"] for r in out["splits"]]
    assert names == [*meta["evaluation_splits"], OVERALL, *meta["extra_evaluation_splits"]]
    assert len(meta["evaluation_splits"]) == 10
    for r in out["splits"]:  # the oracle solves every episode (the upper bound)
        assert r["success_rate"] == 1.0, r
    assert out["splits"][10]["episodes"] == 30
    assert png.stat().st_size > 10_000
    text = capsys.readouterr().out
    assert "overall" in text and "95% CI (Wilson)" in text


def test_episode_k_of_a_split_is_that_episode_in_single_and_vector_envs(tmp_path) -> None:
    """The run pins episode k of the split.

    Equal to resetting an env to it by hand, and the same whether the episodes run in one env
    or spread over a vector env's rows.
    """
    args = ("--controller", "scripted", "--split", "multiple_objects", "--episodes", "5")
    _, single = _run(tmp_path, *args)
    _, vector = _run(tmp_path, *args, "--n-envs", "2")
    ret_single = [e["episode_return"] for e in single["episodes"]["multiple_objects"]]
    ret_vector = [e["episode_return"] for e in vector["episodes"]["multiple_objects"]]
    assert ret_single == ret_vector
    env = twinloop.make(ENV_ID)
    ctrl = make_controller("scripted", env)
    by_hand = []
    for k in range(5):
        opts = {"backend": {"split": "multiple_objects", "episode": k}}
        obs, _ = env.reset(seed=k, options=opts)
        ctrl.reset(1, np.array([k]))
        total, done = 0.0, False
        while not done:
            obs, r, term, trunc, _ = env.step(ctrl.act_one(obs))
            total += float(r)
            done = term or trunc
        by_hand.append(total)
    assert ret_single == pytest.approx(by_hand)
    assert len(set(ret_single)) > 1  # different episodes, not one repeated


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--split", "nope"), "not a split of twinloop/LangRearrange-v0"),
        (("--split", "context", "--episodes", "101"), "split 'context' has 100 episodes"),
        (("--split", "context", "--workers", "2"), "drop --workers"),
        (("--plot", "x.png"), "--plot draws the per-split figure"),
    ],
)
def test_bad_split_requests_are_refused_precisely(tmp_path, capsys, extra, message) -> None:
    code, out = _run(tmp_path, "--controller", "random", *extra)
    assert code == 2 and not out
    assert message in capsys.readouterr().err


def test_envs_without_splits_refuse_split(tmp_path, capsys) -> None:
    pytest.importorskip("mujoco")
    code = main(["run", "twinloop/dmc-cheetah-run-v0", "--controller", "random", "--split", "all"])
    assert code == 2
    assert "has no splits" in capsys.readouterr().err
