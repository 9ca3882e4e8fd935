"""Episodes per second of ``twinloop run`` on 1 and 2 workers (process pool, and Ray if present).

For each env (STEM steering, balloon station keeping) and engine it times the whole run, the
workers' start included, as ``twinloop run --workers N`` does it, and reports:

* episodes/s of the run;
* the per-episode overhead: (wall time x workers - the time in-process episodes take) /
  episodes, i.e. what starting processes, building envs per chunk and shipping results cost
  on top of the episodes themselves.

The in-process baseline is ``run_single`` in this process after a warm-up (numba compiled).
Prints a table and, with ``--json FILE``, writes the figures as JSON.

Then a STEM capture on 2 pool workers into shards and its merge, timed apart (the merge runs
on one process: on a cluster, the head node).

    NUMBA_CACHE_DIR=/tmp/nbcache python benchmarks/bench_workers.py [--scale 0.25]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from typing import Any

import twinloop
from twinloop.controllers import make_controller
from twinloop.core.text import table
from twinloop.eval.rollout import run_single
from twinloop.eval.workers import RunSpec, run_workers

#: env id, controller, overrides, episodes (x --scale): default horizons (STEM 100 steps,
#: about 1 ms an episode; balloon 960 steps, 48 h, about 70 ms).
CASES = {
    "stem": ("twinloop/StemSteer-v0", "greedy-neighbor", {}, 2000),
    "balloon": ("twinloop/BalloonStationKeeping-v0", "station-seeker", {}, 48),
}


def _in_process(spec: RunSpec) -> float:
    env = twinloop.make(spec.env_id, **spec.overrides)
    try:
        controller = make_controller(spec.controller, env)
        run_single(env, controller, 1, spec.seed + 10_000)  # compile and warm up
        t0 = time.perf_counter()
        run_single(env, controller, spec.episodes, spec.seed)
        return time.perf_counter() - t0
    finally:
        env.close()


def _engines() -> list[tuple[str, str | None]]:
    engines: list[tuple[str, str | None]] = [("pool", None)]
    try:
        import ray  # noqa: F401
    except ImportError:
        return engines
    engines.append(("ray", "local"))
    return engines


def bench_capture_merge(episodes: int, workers: int) -> dict[str, Any]:
    """A STEM capture on ``workers`` pool workers into shards, then the merge, timed apart.

    The merge runs on one process (the head node on a cluster): its episodes/s and MB/s are
    what bounds a fleet's capture at scale.
    """
    import shutil
    import tempfile
    from pathlib import Path

    from twinloop.eval.workers import merge_shards

    env_id, controller, overrides, _ = CASES["stem"]
    spec = RunSpec(env_id, controller, seed=0, episodes=episodes, overrides=overrides)
    root = Path(tempfile.mkdtemp(prefix="bench_merge_"))
    try:
        t0 = time.perf_counter()
        run = run_workers(spec, workers, shards=root / "shards")
        capture_s = time.perf_counter() - t0
        shard_bytes = sum(f.stat().st_size for f in (root / "shards").rglob("*") if f.is_file())
        t0 = time.perf_counter()
        merged = merge_shards(run, root / "out", dataset_id="bench/merge-v0", mode="create")
        merge_s = time.perf_counter() - t0
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {
        "episodes": episodes,
        "steps": merged["steps"],
        "workers": workers,
        "shards": len(run.shards),
        "capture_s": capture_s,
        "capture_episodes_per_s": episodes / capture_s,
        "merge_s": merge_s,
        "merge_episodes_per_s": episodes / merge_s,
        "merge_mb_per_s": shard_bytes / 1e6 / merge_s,
        "shard_mb": shard_bytes / 1e6,
    }


def main() -> None:
    """Run the benchmark and print the table (and JSON)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scale", type=float, default=1.0, help="multiply every case's episodes")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = p.parse_args()
    rows: list[dict[str, Any]] = []
    ray_started = False
    for name, (env_id, controller, overrides, n) in CASES.items():
        episodes = max(1, round(n * args.scale))
        spec = RunSpec(env_id, controller, seed=0, episodes=episodes, overrides=overrides)
        here_s = _in_process(spec)
        rows.append(
            {
                "env": name,
                "engine": "in-process",
                "workers": 1,
                "episodes": episodes,
                "wall_s": here_s,
                "episodes_per_s": episodes / here_s,
                "overhead_ms_per_episode": 0.0,
            }
        )
        for engine, address in _engines():
            if engine == "ray" and not ray_started:
                import ray

                ray.init(num_cpus=2, log_to_driver=False, include_dashboard=False)
                ray_started = True
            for workers in (1, 2):
                t0 = time.perf_counter()
                run_workers(spec, workers, ray_address=address)
                wall = time.perf_counter() - t0
                overhead = (wall * workers - here_s) / episodes
                rows.append(
                    {
                        "env": name,
                        "engine": engine,
                        "workers": workers,
                        "episodes": episodes,
                        "wall_s": wall,
                        "episodes_per_s": episodes / wall,
                        "overhead_ms_per_episode": 1e3 * overhead,
                    }
                )
    if ray_started:
        import ray

        ray.shutdown()
    machine = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    print(f"CPUs: {machine['cpus']}")
    print(
        table(
            [
                (
                    r["env"],
                    r["engine"],
                    r["workers"],
                    r["episodes"],
                    f"{r['wall_s']:.2f}",
                    f"{r['episodes_per_s']:.1f}",
                    f"{r['overhead_ms_per_episode']:.0f}",
                )
                for r in rows
            ],
            ("env", "engine", "workers", "episodes", "wall s", "episodes/s", "overhead ms/ep"),
        )
    )
    merge = bench_capture_merge(max(2, round(2000 * args.scale)), 2)
    print(
        f"capture + merge (STEM, {merge['episodes']} episodes, {merge['steps']} steps, "
        f"{merge['shards']} shards, {merge['shard_mb']:.1f} MB): capture "
        f"{merge['capture_episodes_per_s']:.0f} episodes/s on {merge['workers']} workers; merge "
        f"{merge['merge_episodes_per_s']:.0f} episodes/s, {merge['merge_mb_per_s']:.1f} MB/s "
        "on one process"
    )
    payload = {"machine": machine, "rows": rows, "capture_merge": merge}
    print(json.dumps(payload))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(payload, fh, indent=2)


if __name__ == "__main__":
    main()
