"""Balloon throughput: control steps/s of the single env, the vector env and (if found) BLE.

Usage::

    python benchmarks/bench_balloon.py [--sizes 1 64 1024 4096] [--seconds 3]
        [--ble-python /work/ble-venv/bin/python] [--ble-steps 300]

Each control step is 3 simulated minutes: 18 physics sub-steps of 10 s, the safety layers, the
true wind at the balloon, a 181-level forecast column and the measurement-corrected wind
observation. The policy is a random walk (a command held for a geometric number of steps,
mean 10) for every simulator, so the figures are the envs' cost. BLE (Python 3.10 only) runs
in its own interpreter through ``benchmarks/ble_step_rate.py``; without ``--ble-python`` (or
when it fails) the ratio is omitted. Prints a table and writes
``benchmarks/results/balloon.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

import numba
import numpy as np

import twinloop
from twinloop.controllers import make_controller

ID = "twinloop/BalloonStationKeeping-v0"
HERE = Path(__file__).parent


def _walk_actions(n_rows: int, n_steps: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((n_steps, n_rows), dtype=np.int64)
    cur = rng.integers(0, 3, n_rows)
    for k in range(n_steps):
        switch = rng.random(n_rows) < 0.1
        cur = np.where(switch, rng.integers(0, 3, n_rows), cur)
        out[k] = cur
    return out


def bench_single(seconds: float) -> dict:
    env = twinloop.make(ID)
    ctrl = make_controller("random-walk", env)
    obs, _ = env.reset(seed=0)
    ctrl.reset(1, np.array([0]))
    for _ in range(200):  # warm-up (compilation is cached on disk)
        obs, _, term, trunc, _ = env.step(int(ctrl.act_one(obs)))
        if term or trunc:
            obs, _ = env.reset()
    rounds = []
    steps = 0
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        for _ in range(500):
            obs, _, term, trunc, _ = env.step(int(ctrl.act_one(obs)))
            if term or trunc:
                obs, _ = env.reset()
        rounds.append(500 / (time.perf_counter() - t0))
        steps += 500
    return {"steps_per_s": statistics.median(rounds), "steps": steps}


def bench_vector(n_envs: int, seconds: float) -> dict:
    vec = twinloop.make_vec(ID, n_envs)
    actions = _walk_actions(n_envs, 64, seed=1)
    vec.reset(seed=0)
    for k in range(3):
        vec.step(actions[k])
    rounds = []
    steps = 0
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        n_calls = max(2, 40_000 // n_envs)
        t0 = time.perf_counter()
        for k in range(n_calls):
            vec.step(actions[k % 64])
        rounds.append(n_calls * n_envs / (time.perf_counter() - t0))
        steps += n_calls * n_envs
    return {"steps_per_s": statistics.median(rounds), "steps": steps}


def bench_ble(python: str, steps: int) -> dict:
    cmd = [python, str(HERE / "ble_step_rate.py"), "--steps", str(steps)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        return {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    for line in reversed(out.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return {"error": "no result line from ble_step_rate.py"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1, 64, 1024, 4096])
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--ble-python", default="", help="python of an env with BLE 1.0.1 installed")
    p.add_argument("--ble-steps", type=int, default=300)
    p.add_argument("--out", default=str(HERE / "results" / "balloon.json"))
    args = p.parse_args()

    machine = {
        "cpu_count": os.cpu_count(),
        "numba_threads": numba.get_num_threads(),
        "python": platform.python_version(),
        "processor": platform.processor() or platform.machine(),
        "numba": numba.__version__,
        "numpy": np.__version__,
    }
    single = bench_single(args.seconds)
    rows = [("twinloop single env (TwinEnv)", 1, f"{single['steps_per_s']:,.0f}")]
    vector = {}
    for n in args.sizes:
        r = bench_vector(n, args.seconds)
        vector[n] = r
        rows.append(("twinloop vector env (kernel)", n, f"{r['steps_per_s']:,.0f}"))
    ble: dict = {"error": "not run (no --ble-python)"}
    if args.ble_python:
        ble = bench_ble(args.ble_python, args.ble_steps)
    if "ble_steps_per_s" in ble:
        rows.append(("BLE 1.0.1 BalloonEnv (Python 3.10)", 1, f"{ble['ble_steps_per_s']:,.1f}"))
    header = ("env", "n_envs", "control steps/s")
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    print(
        f"Balloon throughput on {machine['cpu_count']} cores, {machine['numba_threads']} numba "
        f"threads, {machine['processor']} (1 control step = 18 physics sub-steps)"
    )
    for row in (header, *rows):
        print("  ".join(str(c).rjust(w) for c, w in zip(row, widths, strict=True)))
    best = max(r["steps_per_s"] for r in vector.values())
    ratio = single["steps_per_s"] / ble["ble_steps_per_s"] if "ble_steps_per_s" in ble else None
    ratio_text = f"{ratio:,.0f}x" if ratio else f"n/a ({ble.get('error')})"
    print(
        f"targets: single env >= 100x BLE: {ratio_text}; "
        f"batched >= 50,000 control steps/s: best {best:,.0f}"
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps(
            {
                "machine": machine,
                "single": single,
                "vector": vector,
                "best_vector": best,
                "ble": ble,
                "single_over_ble": ratio,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
