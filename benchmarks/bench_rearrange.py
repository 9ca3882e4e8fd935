"""Language Rearrangement throughput: the symbolic vector env against BabyAI's PutNext.

Usage::

    python benchmarks/bench_rearrange.py [--seconds 3] [--sizes 1024 4096 16384]

In one run and on one machine:

* ``single``: ``twinloop.make("twinloop/LangRearrange-v0").step`` (validation, safety, skill,
  task; a batch of one);
* ``vector``: ``twinloop.make_vec(id, n)`` env-steps/s at each size (the full Gymnasium step:
  validation, the ``SAME_STEP`` infos, ``final_obs``/``final_info`` of auto-reset episodes,
  each of which draws and generates a fresh training episode inside the kernel);
* ``BabyAI PutNextLocal``: minigrid's pure-Python ``BabyAI-PutNextLocal-v0`` single env
  (the row says why when ``minigrid`` does not import), and the ratio of our best vector
  figure to it.

* ``rgb``: rendered frames per second (``observation_mode="rgb"``) at 64 and 224 px, single
  env and vector env (every env-step renders one frame per env; auto-resets render the final
  frame too).

Uniformly random actions (fixed seed) everywhere: episodes run their 32 actions and reset.
Reports steps per wall-clock second and per CPU-second of this process.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numba
import numpy as np

import twinloop

ENV_ID = "twinloop/LangRearrange-v0"


def _timed(step, seconds: float) -> tuple[int, float, float]:
    """Call ``step()`` (returns env-steps done) for ``seconds``; (steps, wall s, cpu s)."""
    n = 0
    t0, c0 = time.perf_counter(), time.process_time()
    while time.perf_counter() - t0 < seconds:
        n += step()
    return n, time.perf_counter() - t0, time.process_time() - c0


def bench_single(seconds: float) -> tuple[int, float, float]:
    env = twinloop.make(ENV_ID)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    acts = rng.integers(0, env.action_space.n, 4096).tolist()
    k = [0]

    def step() -> int:
        for _ in range(256):
            _, _, term, trunc, _ = env.step(acts[k[0] & 4095])
            k[0] += 1
            if term or trunc:
                env.reset()
        return 256

    step()
    return _timed(step, seconds)


def bench_rgb_single(resolution: int, seconds: float) -> tuple[int, float, float]:
    env = twinloop.make(ENV_ID, observation_mode="rgb", resolution=resolution)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    acts = rng.integers(0, env.action_space.n, 4096).tolist()
    k = [0]

    def step() -> int:
        for _ in range(16):
            _, _, term, trunc, _ = env.step(acts[k[0] & 4095])
            k[0] += 1
            if term or trunc:
                env.reset()
        return 16

    step()
    return _timed(step, seconds)


def bench_vector(n: int, seconds: float, **kw: object) -> tuple[int, float, float]:
    vec = twinloop.make_vec(ENV_ID, n, **kw)
    vec.reset(seed=0)
    rng = np.random.default_rng(0)
    acts = [rng.integers(0, 71, n) for _ in range(16)]
    k = [0]

    def step() -> int:
        vec.step(acts[k[0] & 15])
        k[0] += 1
        return n

    for _ in range(3):
        step()
    return _timed(step, seconds)


def bench_babyai(seconds: float) -> tuple[int, float, float] | str:
    try:
        import gymnasium as gym
        import minigrid  # noqa: F401  (registers the BabyAI ids)
    except ImportError as exc:
        return f"skipped: minigrid does not import ({exc})"
    env = gym.make("BabyAI-PutNextLocal-v0")
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    acts = rng.integers(0, env.action_space.n, 4096).tolist()
    k = [0]

    def step() -> int:
        for _ in range(256):
            _, _, term, trunc, _ = env.step(acts[k[0] & 4095])
            k[0] += 1
            if term or trunc:
                env.reset()
        return 256

    step()
    return _timed(step, seconds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096, 16384])
    ap.add_argument("--rgb-sizes", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--resolutions", type=int, nargs="+", default=[64, 224])
    ap.add_argument("--rgb-only", action="store_true", help="only the rendered-view table")
    args = ap.parse_args()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, numba threads "
        f"{numba.get_num_threads()}, Python {platform.python_version()}, numba {numba.__version__}"
    )
    if args.rgb_only:
        print_rgb(args)
        return
    print("| env | n_envs | steps/s (wall) | steps per CPU-second |")
    print("|---|---:|---:|---:|")
    rows = [("LangRearrange single (TwinEnv)", 1, bench_single(args.seconds))]
    rows += [("LangRearrange vector", n, bench_vector(n, args.seconds)) for n in args.sizes]
    best = 0.0
    for name, n, (steps, wall, cpu) in rows:
        print(f"| {name} | {n} | {steps / wall:,.0f} | {steps / max(cpu, 1e-9):,.0f} |")
        if n > 1:
            best = max(best, steps / wall)
    baby = bench_babyai(args.seconds)
    if isinstance(baby, str):
        print(f"| BabyAI-PutNextLocal-v0 (minigrid) | 1 | {baby} | |")
    else:
        steps, wall, cpu = baby
        print(
            f"| BabyAI-PutNextLocal-v0 (minigrid) | 1 | {steps / wall:,.0f} | {steps / cpu:,.0f} |"
        )
        print(f"ratio, best vector / BabyAI (wall): {best / (steps / wall):,.0f}x")
    print_rgb(args)


def print_rgb(args: argparse.Namespace) -> None:
    """The rendered-view table: frames/s per resolution, single env and vector env."""
    print()
    print("| rendered view | resolution | n_envs | frames/s (wall) | frames per CPU-second |")
    print("|---|---:|---:|---:|---:|")
    for res in args.resolutions:
        rgb = [("single (TwinEnv)", 1, bench_rgb_single(res, args.seconds))]
        rgb += [
            ("vector", n, bench_vector(n, args.seconds, observation_mode="rgb", resolution=res))
            for n in args.rgb_sizes
        ]
        for name, n, (steps, wall, cpu) in rgb:
            print(f"| {name} | {res} | {n} | {steps / wall:,.0f} | {steps / max(cpu, 1e-9):,.0f} |")


if __name__ == "__main__":
    main()
