"""Training sweeps: each run equals train() alone, interrupted sweeps resume, the report's numbers.

The hooks below run inside the workers (a spawned process or a Ray worker imports this module
to find them): one raises in a run after its first checkpoint, one kills its process with
``os._exit`` once (a marker file remembers), so that a retry can succeed.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("jax", reason="the 'learn' extra (jax, optax) trains agents")

import twinloop
from twinloop.controllers.rl.checkpoint import latest_checkpoint, read_part
from twinloop.controllers.rl.train import train
from twinloop.eval.metrics import aggregate, performance_profile
from twinloop.eval.sweep import (
    SweepFailed,
    SweepRun,
    SweepSpec,
    parse_grid,
    plan_configs,
    run_sweep,
)

STEM = "twinloop/StemSteer-v0"
ENV = {"task.max_steps": 10}
#: PPO small enough that 4 runs take seconds: 256 steps, a checkpoint at 128, a row every 32.
SETS = ["n_steps=8", "minibatches=1", "epochs=1"]
GRID = ["hidden=[16],[8]"]
STEPS, EVERY, LOG = 256, 128, 32
RESAMPLES = 400
CLI = [
    "sweep", STEM, "--agent", "ppo", "--steps", str(STEPS), "--seeds", "2", "--n-envs", "4",
    "--checkpoint-every", str(EVERY), "--log-every", str(LOG), "--env-set", "max_steps=10",
    "--quiet", "--bootstrap", str(RESAMPLES),
    *[f"--set={s}" for s in SETS], *[f"--grid={g}" for g in GRID],
]  # fmt: skip
#: Fields of a log row that measure time, not training.
TIMING = {"wall_s", "env_steps_per_s"}


def _spec() -> SweepSpec:
    configs = plan_configs("ppo", SETS, GRID)
    return SweepSpec(STEM, "ppo", STEPS, (0, 1), configs, 4, ENV, EVERY, LOG)


def _cli(argv: list[str]) -> int:
    from twinloop.cli import main

    return main(["agent", *argv])


def _state(run_dir: Path) -> dict[str, np.ndarray]:
    return read_part(latest_checkpoint(run_dir), "state")[1]


def _metrics(run_dir: Path) -> dict:
    data = json.loads((run_dir / "metrics.json").read_text())
    log = [{k: v for k, v in row.items() if k not in TIMING} for row in data["log"]]
    return {"log": log, "episodes": data["episodes"]}


def _same_runs(a: Path, b: Path, keys: list[str]) -> None:
    for key in keys:
        sa, sb = _state(a / key), _state(b / key)
        assert set(sa) == set(sb), key
        for name in sa:
            np.testing.assert_array_equal(sa[name], sb[name], err_msg=f"{key}: {name}")
        assert _metrics(a / key) == _metrics(b / key), key


def _raise_after_checkpoint(key: str, run: SweepRun, env_step: int) -> None:
    if run.key == key and EVERY < env_step < STEPS:
        raise RuntimeError("hook: this run stops after its first checkpoint")


def _exit_once_after_checkpoint(key: str, marker: str, run: SweepRun, env_step: int) -> None:
    if run.key == key and EVERY < env_step < STEPS and not os.path.exists(marker):
        Path(marker).write_text("died once")
        os._exit(3)


@pytest.mark.parametrize(
    ("sets", "grid", "message"),
    [
        ([], ["bogus=1,2"], "bogus"),
        ([], ["clip=0.2,-1"], "PPOConfig.clip = -1.0"),
        ([], ["lr=1e-3,"], "empty value"),
        ([], ["lr"], "must look like name=v1,v2"),
        (["lr=1e-3"], ["lr=1e-3,1e-2"], "in both --set and --grid"),
        ([], ["lr=1e-3", "lr=1e-2"], "twice"),
    ],
)
def test_a_bad_grid_fails_before_anything_runs(tmp_path, capsys, sets, grid, message) -> None:
    out = tmp_path / "never"
    argv = [*CLI[:-4], "--out", str(out), *[f"--set={s}" for s in sets]]
    assert _cli([*argv, *[f"--grid={g}" for g in grid]]) == 2  # 'twinloop: error: ...'
    assert message in capsys.readouterr().err
    assert not out.exists()
    assert parse_grid("hidden=[16],[32,32], 8") == ("hidden", ["[16]", "[32,32]", "8"])


@pytest.fixture(scope="module")
def whole(tmp_path_factory) -> Path:
    """An uninterrupted sweep of 2 seeds x 2 grid values, run in this process by the CLI."""
    out = tmp_path_factory.mktemp("sweep") / "whole"
    assert _cli([*CLI, "--out", str(out)]) == 0
    return out


def test_a_sweep_equals_train_alone_and_its_report_equals_eval_metrics(whole, tmp_path) -> None:
    plan = json.loads((whole / "sweep.json").read_text())
    keys = list(plan["runs"])
    assert keys == ["hidden=16/seed-0", "hidden=16/seed-1", "hidden=8/seed-0", "hidden=8/seed-1"]
    assert all(r["status"] == "done" and r["attempts"] == 1 for r in plan["runs"].values())
    # each run is train() called alone with its seed and config
    for config in plan_configs("ppo", SETS, GRID):
        for seed in (0, 1):
            env = twinloop.make_vec(STEM, 4, **ENV)
            train(
                env, "ppo", STEPS, seed, tmp_path / config.label / f"seed-{seed}",
                overrides=config.overrides, env_id=STEM, env_overrides=ENV,
                checkpoint_every=EVERY, log_every=LOG,
            )  # fmt: skip
            env.close()
    _same_runs(whole, tmp_path, keys)
    a, b = _state(whole / keys[0]), _state(whole / keys[2])
    assert (
        a["learner/train/params/actor/head/w"].shape != b["learner/train/params/actor/head/w"].shape
    )
    # the report's numbers are eval.metrics on the runs' final scores
    report = json.loads((whole / "report.json").read_text())
    scores = {}
    for c in report["configs"]:
        mine = [
            json.loads((whole / c["label"] / f"seed-{s}" / "metrics.json").read_text())
            for s in (0, 1)
        ]
        scores[c["label"]] = [m["summary"]["return_recent"] for m in mine]
        assert c["scores"] == scores[c["label"]] and c["seeds"] == [0, 1]
        want = aggregate(scores[c["label"]], metrics=("iqm", "mean"), n_resamples=RESAMPLES)
        for name, iv in want.items():
            assert c[name] == {"point": iv.point, "low": iv.low, "high": iv.high}
    assert scores["hidden=16"] != scores["hidden=8"]  # the grid values do train differently
    taus = report["profiles"]["thresholds"]
    everything = [s for v in scores.values() for s in v]
    assert taus[0] == min(everything) and taus[-1] == max(everything)
    frac, lo, hi = performance_profile(scores["hidden=8"], taus, n_resamples=RESAMPLES)
    assert report["profiles"]["hidden=8"] == {
        "fraction": frac.tolist(), "low": lo.tolist(), "high": hi.tolist(),
    }  # fmt: skip
    last = report["curves"]["hidden=16"][-1]
    assert report["curves"]["env_step"][-1] == STEPS and last["runs"] == 2
    assert last["point"] == pytest.approx(np.mean(scores["hidden=16"]))  # IQM of 2 = mean
    assert "IQM [95 % CI]" in (whole / "report.md").read_text()
    if report["plots"]:
        assert (whole / "curves.png").read_bytes()[:4] == b"\x89PNG"
        assert (whole / "profiles.png").read_bytes()[:4] == b"\x89PNG"
    else:
        assert any("matplotlib is missing" in n for n in report["notes"])


def test_an_interrupted_sweep_resumes_where_it_stopped(whole, tmp_path) -> None:
    """A run stopped after its first checkpoint, another cut back to it: both resume.

    The sweep fails naming the stopped run; run again, both continue from their checkpoint,
    the finished runs are skipped, and every run equals the uninterrupted sweep's.
    """
    out = tmp_path / "cut"
    key = "hidden=8/seed-1"
    hook = functools.partial(_raise_after_checkpoint, key)
    with pytest.raises(SweepFailed, match=r"1 of 4 runs failed \(hidden=8/seed-1: Runtime"):
        run_sweep(_spec(), out, hook=hook)
    plan = json.loads((out / "sweep.json").read_text())
    assert plan["runs"][key]["status"] == "failed"
    assert [r["status"] for k, r in plan["runs"].items() if k != key] == ["done"] * 3
    assert latest_checkpoint(out / key).name == f"checkpoint-{EVERY:012d}"
    # a run folder left half-done by a kill (its newest checkpoint removed as well)
    half = "hidden=16/seed-0"
    shutil.rmtree(latest_checkpoint(out / half))
    assert latest_checkpoint(out / half).name == f"checkpoint-{EVERY:012d}"
    events = []
    result = run_sweep(_spec(), out, progress=events.append)
    assert sorted(result.outcomes) == sorted([key, half])
    assert result.outcomes[key].resumed_from == EVERY  # not retrained from scratch
    assert result.outcomes[half].resumed_from == EVERY
    assert sorted(result.skipped) == ["hidden=16/seed-1", "hidden=8/seed-0"]
    assert events[-1]["done"] == events[-1]["total"] == 4
    assert {e["key"] for e in events if e["event"] == "step"} == {key, half}
    plan = json.loads((out / "sweep.json").read_text())
    assert plan["invocations"] == 2 and plan["runs"][key]["attempts"] == 2
    _same_runs(whole, out, list(plan["runs"]))
    # once finished, the same sweep trains nothing
    again = run_sweep(_spec(), out)
    assert not again.outcomes and len(again.skipped) == 4


def test_a_run_folder_of_other_settings_is_refused(whole, tmp_path) -> None:
    out = tmp_path / "other"
    shutil.copytree(whole / "hidden=16" / "seed-0", out / "hidden=16" / "seed-1")
    with pytest.raises(ValueError, match=r"hidden=16/seed-1 holds a run with other settings.*seed"):
        run_sweep(_spec(), out)
    assert not (out / "sweep.json").exists()


# --- slow: other processes ------------------------------------------------------------------
@pytest.mark.slow
def test_a_pool_of_two_equals_one_process_and_retries_a_dead_worker(whole, tmp_path) -> None:
    """2 pool workers, and one run's worker dies after its first checkpoint, once.

    The run is retried in a fresh pool and resumes there; every run equals the in-process
    sweep's.
    """
    key = "hidden=16/seed-1"
    marker = str(tmp_path / "died")
    hook = functools.partial(_exit_once_after_checkpoint, key, marker)
    result = run_sweep(_spec(), tmp_path / "pool", workers=2, hook=hook)
    assert os.path.exists(marker) and result.engine == "pool"
    # the broken pool also stopped the run beside it, which is retried (resumed) as well
    assert result.retried[key] == 2 and len(result.retried) <= 2
    assert result.outcomes[key].resumed_from == EVERY and result.outcomes[key].attempt == 2
    _same_runs(whole, tmp_path / "pool", sorted(result.outcomes))
    # without retries the sweep fails, naming the run; the same sweep again finishes it
    marker2 = str(tmp_path / "died2")
    hook = functools.partial(_exit_once_after_checkpoint, key, marker2)
    with pytest.raises(SweepFailed, match="a worker process died"):
        run_sweep(_spec(), tmp_path / "pool0", workers=2, max_retries=0, hook=hook)
    again = run_sweep(_spec(), tmp_path / "pool0", workers=2)
    assert key in again.outcomes and again.outcomes[key].resumed_from == EVERY
    _same_runs(whole, tmp_path / "pool0", sorted(result.outcomes))


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray instance of 2 CPUs (the test skips without the ray extra)."""
    ray = pytest.importorskip("ray", reason="the Ray tests need the ray extra (pip install .[ray])")
    ray.init(num_cpus=2, log_to_driver=False, include_dashboard=False)
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_ray_equals_one_process_and_a_retried_task_resumes(whole, tmp_path, local_ray) -> None:
    key = "hidden=8/seed-0"
    marker = str(tmp_path / "died")
    hook = functools.partial(_exit_once_after_checkpoint, key, marker)
    result = run_sweep(_spec(), tmp_path / "ray", ray_address="auto", hook=hook)
    assert os.path.exists(marker) and result.engine == "ray"
    assert result.retried == {key: 2}
    assert result.outcomes[key].resumed_from == EVERY  # Ray's retry resumed the run
    _same_runs(whole, tmp_path / "ray", sorted(result.outcomes))
    plan = json.loads((tmp_path / "ray" / "sweep.json").read_text())
    assert plan["engine"] == "ray" and plan["runs"][key]["attempts"] == 2
