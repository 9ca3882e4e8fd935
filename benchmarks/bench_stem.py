"""STEM env throughput: single-env step time and vector env-steps/s at several batch sizes.

Usage::

    python benchmarks/bench_stem.py [--sizes 1 64 1024 4096 16384 65536] [--seconds 3]

Prints a table and writes ``benchmarks/results/stem.json``. Actions are drawn once (uniform in
the action box) and replayed, so the figures are the env's cost alone; episodes end and
auto-reset inside the measured loop as they would in training.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numba
import numpy as np

import twinloop
from twinloop.core.vector import Actions

ID = "twinloop/StemSteer-v0"


def bench_single(seconds: float) -> dict:
    env = twinloop.make(ID)
    rng = np.random.default_rng(0)
    actions = rng.uniform(-3, 3, size=(4096, 2)).astype(np.float32)
    env.reset(seed=0)
    for a in actions[:200]:  # warm-up (compilation is cached, this primes the caches)
        if any(env.step(a)[2:4]):
            env.reset()
    step_us = []
    t_end = time.perf_counter() + seconds
    k = 0
    while time.perf_counter() < t_end:
        t0 = time.perf_counter_ns()
        for _ in range(1000):
            _, _, term, trunc, _ = env.step(actions[k % 4096])
            k += 1
            if term or trunc:
                env.reset()
        step_us.append((time.perf_counter_ns() - t0) / 1000 / 1000)
    return {"median_step_us": statistics.median(step_us), "steps": k}


def bench_vector(n_envs: int, seconds: float) -> dict:
    vec = twinloop.make_vec(ID, n_envs)
    rng = np.random.default_rng(1)
    actions = [rng.uniform(-3, 3, size=(n_envs, 2)).astype(np.float32) for _ in range(8)]
    vec.reset(seed=0)
    for k in range(5):
        vec.step(actions[k % 8])
    steps = 0
    rounds = []
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        n_calls = max(1, 200_000 // n_envs)
        for k in range(n_calls):
            vec.step(actions[k % 8])
        dt = time.perf_counter() - t0
        rounds.append(n_calls * n_envs / dt)
        steps += n_calls * n_envs
    # the fused kernel alone (validated actions, reused output buffers): the physics' share
    acts = Actions(*vec._validate(actions[0]))
    out = vec._alloc_step()
    kernel_rounds = []
    for _ in range(max(3, len(rounds))):
        n_calls = max(1, 200_000 // n_envs)
        t0 = time.perf_counter()
        for _ in range(n_calls):
            vec._step_kernel(vec.state, vec.params, acts, out)
        kernel_rounds.append(n_calls * n_envs / (time.perf_counter() - t0))
    return {
        "env_steps_per_s": statistics.median(rounds),
        "kernel_env_steps_per_s": statistics.median(kernel_rounds),
        "steps": steps,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1, 64, 1024, 4096, 16384, 65536])
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "stem.json"))
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
    rows = [
        (
            "single env (TwinEnv)",
            1,
            f"{1e6 / single['median_step_us']:,.0f}",
            "-",
            f"{single['median_step_us']:.2f}",
        )
    ]
    vector = {}
    for n in args.sizes:
        r = bench_vector(n, args.seconds)
        vector[n] = r
        rows.append(
            (
                "vector env (kernel)",
                n,
                f"{r['env_steps_per_s']:,.0f}",
                f"{r['kernel_env_steps_per_s']:,.0f}",
                f"{1e6 * n / r['env_steps_per_s']:.2f}",
            )
        )
    header = ("env", "n_envs", "env-steps/s", "kernel only", "us per step call")
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    print(
        f"STEM throughput on {machine['cpu_count']} cores, {machine['numba_threads']} numba "
        f"threads, {machine['processor']}"
    )
    for row in (header, *rows):
        print("  ".join(str(c).rjust(w) for c, w in zip(row, widths, strict=True)))
    best = max(r["env_steps_per_s"] for r in vector.values())
    print(
        f"targets: single step <= 20 us: {single['median_step_us']:.2f} us; "
        f"vector >= 5,000,000 env-steps/s: best {best:,.0f}"
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps(
            {"machine": machine, "single": single, "vector": vector, "best_vector": best},
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
