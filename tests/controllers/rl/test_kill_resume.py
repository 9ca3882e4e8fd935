"""A real kill: ``twinloop agent train`` SIGKILLed mid-run, rerun, ends bit for bit as a whole run.

The in-process equivalents (an exception raised from the progress callback) are in
``test_train.py``; this one kills the process, so nothing in it gets to clean up or flush.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("jax", reason="the 'learn' extra (jax, optax) trains agents")

from twinloop.cli import main
from twinloop.controllers.rl.checkpoint import checkpoints, latest_checkpoint, read_part

BALLOON = "twinloop/BalloonStationKeeping-v0"
#: Values that measure time, not training: they differ between any two runs.
TIMING = ("wall_s", "env_steps_per_s")


def _command(out: Path) -> list[str]:
    """The command's arguments: bbf reincarnated from a classical teacher, 10 segments.

    Every piece of state a resume must restore is live: gamma and n annealed, resets, SPR,
    the teacher's capture, the performance decay; segments of 48 env steps, 10-step episodes.
    """
    settings = {"hidden": 16, "learning_starts": 16, "batch_size": 8, "buffer_size": 256,
                "quantiles": 4, "n_step": 2, "n_step_start": 5, "n_step_anneal": 10,
                "spr_steps": 2, "spr_dim": 8, "reset_interval": 20, "replay_ratio": 0.5,
                "pretrain_updates": 5, "distill_decay": "performance",
                "distill_updates": 50}  # fmt: skip
    return ["agent", "train", BALLOON, "--agent", "bbf", "--steps", "480", "--seed", "3",
            "--n-envs", "4", "--checkpoint-every", "48", "--env-set", "max_steps=10",
            "--teacher", "station-seeker", "--teacher-episodes", "2", "--out", str(out),
            "--quiet", *(f"--set={k}={v}" for k, v in settings.items())]  # fmt: skip


def _twinloop() -> list[str]:
    """The console script beside this interpreter, or the same entry point through ``-c``."""
    script = Path(sys.executable).with_name("twinloop")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from twinloop.cli import main; sys.exit(main())"]


def _without_timing(value):
    if isinstance(value, dict):
        return {k: _without_timing(v) for k, v in value.items() if k not in TIMING}
    if isinstance(value, list):
        return [_without_timing(v) for v in value]
    return value


@pytest.mark.slow  # three runs, two of them new processes: ~45 s loaded (a fast equivalent
# that interrupts in process is test_train.py's resume tests)
def test_a_sigkilled_training_run_resumes_and_ends_as_the_uninterrupted_run(tmp_path) -> None:
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert main(_command(whole)) == 0  # the reference, uninterrupted (in this process)

    proc = subprocess.Popen([*_twinloop(), *_command(cut)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while latest_checkpoint(cut) is None and proc.poll() is None:
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, err  # killed, not finished
    steps = [int(p.name.split("-")[1]) for p in checkpoints(cut)]
    assert steps and max(steps) < 480  # it was mid-way: the run's end was not written

    rerun = subprocess.run([*_twinloop(), *_command(cut)], capture_output=True, text=True,
                           timeout=300)  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr
    resumed_from = next(
        line.split()[-1] for line in rerun.stdout.splitlines() if "resumed from step" in line
    )
    assert int(resumed_from) >= max(steps)

    teacher = read_part(latest_checkpoint(whole), "state")[0]["extra"]["teacher_return"]
    assert teacher > 0  # the performance decay had a teacher to compare with

    a, b = latest_checkpoint(whole), latest_checkpoint(cut)
    assert a.name == b.name == "checkpoint-000000000480"
    for part in ("state", "policy"):
        meta_a, arrays_a = read_part(a, part)
        meta_b, arrays_b = read_part(b, part)
        assert sorted(arrays_a) == sorted(arrays_b)
        for k in arrays_a:
            assert arrays_a[k].dtype == arrays_b[k].dtype, k
            np.testing.assert_array_equal(arrays_a[k], arrays_b[k], err_msg=f"{part} {k}")
        assert _without_timing(meta_a) == _without_timing(meta_b)
    metrics_a = json.loads((whole / "metrics.json").read_text())
    metrics_b = json.loads((cut / "metrics.json").read_text())
    assert metrics_a["episodes"] and _without_timing(metrics_a) == _without_timing(metrics_b)
    assert (whole / "episodes.csv").read_text() == (cut / "episodes.csv").read_text()
