"""STEM sim-to-real loop, the figures of issue 5 (an experiment, not a test).

Usage::

    python benchmarks/exp_stem_learning.py [--episodes 300] [--sizes 250 500 1000 2000 4000]

1. Learning curve: random-beam transitions captured on the simulator (vector env, recorded to
   HDF5 and read back through the same pipeline as any instrument's data), models trained on
   growing subsets; error against the simulator's true rates (optimum location, rate map,
   peak) per number of transitions.
2. Goals 5 sites away: greedy-neighbor vs greedy-learned vs planner (model of 2,000
   transitions), success rate (Wilson 95 % CI) and median microscope time to goal (bootstrap
   95 % CI), and the difference of the median times.
3. Goals 20 sites away with holes in the way: planner vs greedy-learned.

Prints tables and writes ``benchmarks/results/stem_learning.json``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

import twinloop
from twinloop.controllers import make_controller
from twinloop.controllers.rates import RateTrainingConfig, train
from twinloop.controllers.transitions import from_dataset
from twinloop.datasets import RecordVectorEpisodes, open_dataset
from twinloop.demo import CAPTURE_SETTINGS
from twinloop.eval.metrics import aggregate, difference
from twinloop.eval.rollout import run_vector, wilson_interval
from twinloop.eval.stem import rate_model_errors

ID = "twinloop/StemSteer-v0"


def capture_sim(n: int, directory: Path, seed: int = 0) -> Path:
    vec = twinloop.make_vec(ID, 64, **CAPTURE_SETTINGS)
    rec = RecordVectorEpisodes(
        vec,
        directory,
        dataset_id="twinloop/stem-exp-capture-v0",
        tags={"controller": "random", "backend": "sim"},
    )
    ctrl = make_controller("random", vec)
    obs, _ = rec.reset(seed=seed)
    ctrl.reset(64, np.arange(seed, seed + 64))
    steps = 0
    while steps < n:
        obs, *_ = rec.step(ctrl.act(obs))
        steps += 64
    rec.close()
    return directory


def controller_run(name: str, model: str | None, episodes: int, seed: int, **over) -> dict:
    vec = twinloop.make_vec(ID, 32, **over)
    kw = {"model": model} if model else {}
    res = run_vector(vec, make_controller(name, vec, **kw), episodes, seed)
    wins = sum(r.success for r in res)
    times = np.array([r.time_s for r in res if r.success])
    med = aggregate(times, metrics=("median",))["median"] if times.size > 1 else None
    failures: dict[str, int] = {}
    for r in res:
        if r.failure != "none":
            failures[r.failure] = failures.get(r.failure, 0) + 1
    return {
        "controller": name,
        "episodes": episodes,
        "success_rate": wins / episodes,
        "success_rate_ci95": list(wilson_interval(wins, episodes)),
        "median_time_s": med.point if med else float("nan"),
        "median_time_ci95": [med.low, med.high] if med else [float("nan")] * 2,
        "times": times.tolist(),
        "failures": failures,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[250, 500, 1000, 2000, 4000])
    p.add_argument("--episodes", type=int, default=300)
    p.add_argument("--train-steps", type=int, default=2000)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "stem_learning.json"))
    args = p.parse_args()
    t0 = time.time()
    cfg = twinloop.make_config(ID)
    results: dict = {"learning_curve": [], "hops5": [], "hops20_holes": []}
    with tempfile.TemporaryDirectory() as tmp:
        ds = open_dataset(capture_sim(int(max(args.sizes) * 1.25), Path(tmp) / "capture"))
        data, dropped = from_dataset(ds)
    print(
        f"captured {len(data)} usable transitions (dropped {dropped}) in {time.time() - t0:.0f} s"
    )
    rng = np.random.default_rng(0)
    order = rng.permutation(len(data))
    model_2000 = None
    print(
        f"\n{'transitions':>11s} {'optimum err A':>14s} {'rate-map err':>13s} {'peak ratio':>11s}"
    )
    for n in args.sizes:
        sub = data.subset(order[: min(n, len(data))])
        model = train(sub, RateTrainingConfig(steps=args.train_steps))
        err = rate_model_errors(model, cfg)
        results["learning_curve"].append({"transitions": len(sub), **err})
        print(
            f"{len(sub):11d} {err['optimum_error_angstrom']:14.3f} "
            f"{100 * err['rate_map_error']:12.1f}% {err['peak_ratio']:11.2f}"
        )
        if n == 2000:
            model_2000 = model
    model_path = str(Path(tempfile.gettempdir()) / "twinloop-exp-rates.npz")
    (model_2000 or model).save(model_path)

    print(f"\ngoals 5 sites away, {args.episodes} episodes each (sim)")
    for name in ("greedy-neighbor", "greedy-learned", "planner"):
        r = controller_run(
            name,
            None if name == "greedy-neighbor" else model_path,
            args.episodes,
            50_000,
            goal_hops=5,
        )
        results["hops5"].append(r)
        lo, hi = r["success_rate_ci95"]
        mlo, mhi = r["median_time_ci95"]
        print(
            f"  {name:16s} success {r['success_rate']:.3f} [{lo:.3f}, {hi:.3f}]  median time "
            f"{r['median_time_s']:.0f} s [{mlo:.0f}, {mhi:.0f}]  {r['failures']}"
        )
    base = results["hops5"][0]
    for r in results["hops5"][1:]:
        d = difference(r["times"], base["times"], statistic="median")
        r["median_time_minus_greedy_neighbor_s"] = [d.point, d.low, d.high]
        print(f"  {r['controller']} - greedy-neighbor median time: {d}")

    print(f"\ngoals 20 sites away, 3 holes of 2.5 A between 6 and 15 A, {args.episodes} episodes")
    for name in ("greedy-learned", "planner"):
        r = controller_run(
            name, model_path, args.episodes, 60_000, goal_hops=20, n_holes=3, max_steps=400
        )
        results["hops20_holes"].append(r)
        lo, hi = r["success_rate_ci95"]
        print(
            f"  {name:16s} success {r['success_rate']:.3f} [{lo:.3f}, {hi:.3f}]  median time "
            f"{r['median_time_s']:.0f} s  {r['failures']}"
        )
    results["wall_time_s"] = time.time() - t0
    for group in ("hops5", "hops20_holes"):
        for r in results[group]:
            r.pop("times")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"\nwall time {results['wall_time_s']:.0f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
