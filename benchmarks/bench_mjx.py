"""MJX env-steps/s of the control-suite tasks against the C vector env, per batch size.

Usage::

    python benchmarks/bench_mjx.py [--tasks cheetah-run walker-walk hopper-hop]
        [--batches 1 16 64 256] [--horizon 50] [--seconds 3] [--threads 0] [--out PATH]

For each task and batch size ``B``, in one run on one machine:

* ``mjx``: ``twinloop.sim.locomotion.mjx`` (``DmcMjxEnv``): a jitted ``lax.scan`` of
  ``--horizon`` control steps of ``jax.vmap(env.step)`` over ``B`` envs (the way a JAX trainer
  unrolls; no auto-reset, random actions fixed beforehand); env-steps/s = ``B x horizon`` per
  call over the time of the call after ``block_until_ready``. ``compile_s`` is the
  trace, lowering and XLA compile of that function for that shape, timed apart (and the
  reset's, ``reset_compile_s``, for ``jax.vmap(env.reset)``);
* ``c_vector``: ``twinloop.make_vec(id, B, threads=--threads)`` (C MuJoCo, one ``MjData`` per
  env on a thread pool, auto-reset included), random actions;
* ``ratio``: ``mjx / c_vector``, the median of per-round ratios (the two run in alternating
  rounds, so that load from other processes hits both alike).

JAX runs on its default device (a GPU if ``jax[cuda]`` is installed and one is visible; the
table names it). Prints a table and writes ``benchmarks/results/mjx.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import twinloop
from twinloop.sim.locomotion import mjx as M

HERE = Path(__file__).parent


def _time_call(call: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    call()
    return time.perf_counter() - t0


def _rate(call: Callable[[], object], per_call: int, seconds: float) -> float:
    """Env-steps/s of ``call`` (``per_call`` env-steps each) over about ``seconds``."""
    n, t0 = 0, time.perf_counter()
    while True:
        call()
        n += 1
        dt = time.perf_counter() - t0
        if dt >= seconds:
            return n * per_call / dt


def bench_batch(
    env: M.DmcMjxEnv, env_id: str, batch: int, horizon: int, seconds: float, threads: int,
    rounds: int,
) -> dict:  # fmt: skip
    """One task at one batch size: MJX's and the C vector env's env-steps/s, compile times."""
    rng = np.random.default_rng(0)
    keys = jax.random.split(jax.random.PRNGKey(0), batch)
    reset = jax.jit(jax.vmap(env.reset))
    t0 = time.perf_counter()
    reset_c = reset.lower(keys).compile()
    reset_compile = time.perf_counter() - t0
    state = jax.block_until_ready(reset_c(keys))
    actions = jnp.asarray(rng.uniform(-1, 1, (horizon, batch, env.action_size)), jnp.float32)
    vstep = jax.vmap(env.step)

    def rollout(s: M.MjxState, a: jax.Array) -> M.MjxState:
        return jax.lax.scan(lambda x, u: (vstep(x, u), None), s, a)[0]

    t0 = time.perf_counter()
    roll = jax.jit(rollout).lower(state, actions).compile()
    compile_s = time.perf_counter() - t0
    jax.block_until_ready(roll(state, actions))  # warm (allocations)

    def mjx_call() -> None:
        jax.block_until_ready(roll(state, actions))

    vec = twinloop.make_vec(env_id, batch, threads=threads)
    vec.reset(seed=0)
    vacts = rng.uniform(-1, 1, (16, batch, env.action_size))
    k = [0]

    def c_call() -> None:
        for _ in range(horizon):
            k[0] += 1
            vec.step(vacts[k[0] % 16])

    c_call()  # warm
    per = batch * horizon
    res = []
    for _ in range(rounds):
        res.append(
            {
                "mjx": _rate(mjx_call, per, seconds / rounds),
                "c_vector": _rate(c_call, per, seconds / rounds),
            }
        )
    vec.close()
    return {
        "batch": batch,
        "reset_compile_s": reset_compile,
        "compile_s": compile_s,
        "first_call_s": _time_call(mjx_call),
        "rounds": res,
        "mjx_steps_per_s": float(np.median([r["mjx"] for r in res])),
        "c_vector_steps_per_s": float(np.median([r["c_vector"] for r in res])),
        "ratio": float(np.median([r["mjx"] / r["c_vector"] for r in res])),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", nargs="+", default=["cheetah-run", "walker-walk", "hopper-hop"])
    p.add_argument("--batches", nargs="+", type=int, default=[1, 16, 64, 256])
    p.add_argument("--horizon", type=int, default=50, help="control steps per jitted call")
    p.add_argument("--seconds", type=float, default=3.0, help="timing per batch size")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="C vector env threads (0: per CPU)")
    p.add_argument("--out", type=Path, default=HERE / "results" / "mjx.json")
    args = p.parse_args()

    device = jax.devices()[0]
    meta = {
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "mujoco": __import__("mujoco").__version__,
        "device": f"{device.platform}: {device.device_kind}",
        "horizon": args.horizon,
        "c_vector_threads": args.threads or os.cpu_count(),
    }
    results = []
    print(f"device {meta['device']}, {meta['cpus']} CPUs, horizon {args.horizon}")
    header = (
        f"{'task':14s} {'batch':>5s} {'reset comp s':>12s} {'step comp s':>11s} "
        f"{'mjx steps/s':>12s} {'C vec steps/s':>13s} {'mjx/C':>6s}"
    )
    print(header)
    for name in args.tasks:
        env_id = f"twinloop/dmc-{name}-v0"
        env = M.make_mjx_env(env_id, max_steps=10_000_000)  # no truncation inside the timing
        for batch in args.batches:
            r = bench_batch(
                env, env_id, batch, args.horizon, args.seconds, args.threads, args.rounds
            )
            r["id"] = env_id
            results.append(r)
            print(
                f"{name:14s} {batch:5d} {r['reset_compile_s']:12.1f} {r['compile_s']:11.1f} "
                f"{r['mjx_steps_per_s']:12,.0f} {r['c_vector_steps_per_s']:13,.0f} "
                f"{r['ratio']:6.2f}",
                flush=True,
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
