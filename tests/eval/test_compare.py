"""``twinloop eval``: controllers on the same seeds, paired differences; ``run --config FILE``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from twinloop.cli import build_parser, main, modernize
from twinloop.eval.compare import compare_controllers, paired_difference
from twinloop.eval.metrics import difference
from twinloop.eval.rollout import EpisodeResult

ID = "twinloop/StemSteer-v0"
SHORT = ["--set", "max_steps=30", "--quiet"]


def test_paired_intervals_cover_the_true_difference_and_beat_unpaired() -> None:
    """A paired bootstrap covers the true mean difference near its nominal 95 %.

    It is also narrower than resampling the two samples independently when they share
    variation (Efron & Tibshirani 1993, ch. 13: the percentile interval of a mean).
    """
    rng = np.random.default_rng(0)
    covered, widths_paired, widths_unpaired = 0, [], []
    repeats = 200
    for r in range(repeats):
        shared = rng.normal(0.0, 3.0, size=40)  # what the seed does to both controllers
        a = shared + 0.5 + rng.normal(0.0, 0.5, size=40)
        b = shared + rng.normal(0.0, 0.5, size=40)
        i = paired_difference(a, b, n_resamples=600, seed=r)
        covered += i.contains(0.5)
        widths_paired.append(i.high - i.low)
        if r < 20:
            u = difference(a, b, n_resamples=600, seed=r)
            widths_unpaired.append(u.high - u.low)
    assert 0.88 <= covered / repeats <= 0.99
    assert np.mean(widths_paired) < 0.4 * np.mean(widths_unpaired)


def test_paired_difference_refuses_unpaired_input() -> None:
    with pytest.raises(ValueError, match="equal 1-D shapes"):
        paired_difference([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="no pairs"):
        paired_difference([], [])


def _episode(seed: int, ret: float, success: bool, **metrics: float) -> EpisodeResult:
    return EpisodeResult(seed, seed, ret, 10, success, "none", success, not success, 1.0, metrics)


def test_comparison_refuses_controllers_run_on_different_seeds() -> None:
    a = [_episode(s, 1.0, True) for s in range(4)]
    b = [_episode(s, 0.0, False) for s in range(1, 5)]
    with pytest.raises(ValueError, match="ran different seeds"):
        compare_controllers({"a": a, "b": b})


def test_comparison_differences_are_paired_per_seed() -> None:
    """B scores A's return plus 1 on every seed: the paired difference is exactly +1.

    A zero-width interval, although the returns spread over 0..9; metrics pair the same way.
    """
    a = [_episode(s, float(s), s % 2 == 0, twr50=0.1 * s) for s in range(10)]
    b = [_episode(s, float(s) + 1.0, True, twr50=0.1 * s + 0.2) for s in range(10)]
    report = compare_controllers({"a": a, "b": b}, n_resamples=500)
    v = report["versus_baseline"][0]
    assert v["return"] == {"point": 1.0, "low": 1.0, "high": 1.0}
    assert v["success_rate"]["point"] == pytest.approx(0.5)
    assert v["metrics"]["twr50"]["point"] == pytest.approx(0.2)
    assert v["probability_of_improvement"]["point"] > 0.5
    assert [r["controller"] for r in report["controllers"]] == ["a", "b"]


def test_eval_prints_the_comparison_and_equals_run_per_controller(capsys, tmp_path) -> None:
    """Each controller's episodes in ``eval`` are exactly those ``run`` gives on the same seeds."""
    out = tmp_path / "cmp.json"
    png = tmp_path / "cmp.png"
    argv = ["eval", ID, "--controller", "random", "--controller", "greedy-neighbor"]
    argv += ["--episodes", "12", "--seed", "3", "--json", str(out), "--plot", str(png), *SHORT]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "minus random on the same 12 seeds" in text and "greedy-neighbor" in text
    payload = json.loads(out.read_text())
    assert png.stat().st_size > 10_000
    for name in ("random", "greedy-neighbor"):
        run_json = tmp_path / f"{name}.json"
        argv = ["run", ID, "--controller", name, "--episodes", "12", "--seed", "3"]
        assert main([*argv, "--json", str(run_json), *SHORT]) == 0
        assert payload["episodes"][name] == json.loads(run_json.read_text())["episodes"]
    greedy = payload["comparison"]["versus_baseline"][0]
    assert greedy["controller"] == "greedy-neighbor"
    assert greedy["success_rate"]["low"] > 0.0  # greedy beats random beyond doubt here


def test_eval_refuses_a_controller_named_twice(capsys) -> None:
    argv = ["eval", ID, "--controller", "random", "--controller", "random", *SHORT]
    assert main(argv) == 2
    assert "--controller random given twice" in capsys.readouterr().err


def test_eval_and_the_old_dataset_spelling_coexist(capsys) -> None:
    """``eval ID --controller`` is today's verb; ``eval DATASET...`` still means stem-rates eval."""
    assert modernize(["eval", ID, "--controller", "random"]) == [
        "eval",
        ID,
        "--controller",
        "random",
    ]
    assert modernize(["eval", "-h"]) == ["eval", "-h"]
    assert "deprecated" not in capsys.readouterr().err
    assert modernize(["eval", "runs/a", "runs/b"]) == ["stem-rates", "eval", "runs/a", "runs/b"]
    args = build_parser().parse_args(["eval", ID, "--controller", "a", "--controller", "b"])
    assert args.controller == ["a", "b"] and args.func.__name__ == "cmd_eval"


def test_run_config_file_applies_and_set_wins(capsys, tmp_path) -> None:
    """``--config FILE`` (sysid's output format) changes the run; ``--set`` overrides it."""
    cfg = tmp_path / "fit.json"
    base = ["run", ID, "--controller", "greedy-neighbor", "--episodes", "6", "--quiet"]

    def steps(*extra: str) -> float:
        out = tmp_path / "r.json"
        assert main([*base, "--json", str(out), *extra]) == 0
        payload = json.loads(out.read_text())
        return payload["overrides"], [e["steps"] for e in payload["episodes"]]

    cfg.write_text(json.dumps({"task": {"max_steps": 3}}))
    overrides, lengths = steps("--config", str(cfg))
    assert overrides == {"task.max_steps": 3} and max(lengths) <= 3
    overrides, lengths = steps("--config", str(cfg), "--set", "max_steps=5")
    assert overrides == {"task.max_steps": 5} and max(lengths) == 5


def test_run_config_file_errors_name_the_option_and_the_field(capsys, tmp_path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"task.max_steps": -4}))
    argv = ["run", ID, "--controller", "random", "--episodes", "1", "--config", str(bad), "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"--config {bad}" in err and "max_steps" in err and "-4" in err
    bad.write_text("[1, 2]")
    assert main(argv) == 2
    assert "expected a non-empty JSON object" in capsys.readouterr().err


def test_eval_on_two_workers_equals_one_process(capsys, tmp_path) -> None:
    """Issue 19: ``eval --workers N`` splits each controller's seeds; the results do not move."""
    base = ["eval", ID, "--controller", "random", "--controller", "greedy-neighbor"]
    base += ["--episodes", "6", "--seed", "2", *SHORT]
    here, pool = tmp_path / "here.json", tmp_path / "pool.json"
    assert main([*base, "--json", str(here)]) == 0
    assert main([*base, "--json", str(pool), "--workers", "2", "--chunk-episodes", "3"]) == 0
    out = capsys.readouterr().out
    assert "random: workers: 2 (process pool)" in out
    a, b = json.loads(here.read_text()), json.loads(pool.read_text())
    assert a["episodes"] == b["episodes"] and a["comparison"] == b["comparison"]
