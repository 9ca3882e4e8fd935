"""``twinloop demo | capture | train | eval``: the sim-to-real loop from the command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


class _Bars:
    """One tqdm bar per stage name, on stderr."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.bars: dict[str, Any] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        from tqdm import tqdm

        bar = self.bars.get(stage)
        if bar is None:
            bar = self.bars[stage] = tqdm(
                total=total, desc=stage, file=sys.stderr, disable=self.quiet, leave=True
            )
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


def _backend_args(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument(
        "--backend", default=default, help=f"sim | sim-image | remote | nion (default: {default})"
    )
    p.add_argument("--address", default=None, help="twin address for --backend remote")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def add_parsers(sub: Any) -> None:
    """Register demo, capture, train and eval."""
    d = sub.add_parser("demo", help="the main job: capture, learn rates, steer, evaluate")
    d.add_argument("--out", default="twinloop-demo", help="report folder (default: %(default)s)")
    _backend_args(d, "remote")
    d.add_argument("--transitions", type=int, default=2000)
    d.add_argument("--episodes", type=int, default=100, help="per controller and backend")
    d.add_argument("--goal-hops", type=int, default=5)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--train-steps", type=int, default=2000)
    d.add_argument("--ensemble", type=int, default=5)
    d.add_argument(
        "--no-sim-comparison",
        action="store_true",
        help="skip re-running the controllers on the simulator",
    )
    d.add_argument("--overwrite", action="store_true")
    d.set_defaults(func=cmd_demo)

    c = sub.add_parser("capture", help="record random-beam dwells into an HDF5 dataset")
    c.add_argument("out", help="dataset folder")
    _backend_args(c, "sim")
    c.add_argument("--transitions", type=int, default=2000)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--overwrite", action="store_true")
    c.set_defaults(func=cmd_capture)

    t = sub.add_parser("train", help="fit the Si rate model on a captured dataset")
    t.add_argument("dataset")
    t.add_argument("--out", default="model.npz")
    t.add_argument("--steps", type=int, default=2000)
    t.add_argument("--ensemble", type=int, default=5)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="compare recorded runs with 95%% intervals, write plots")
    e.add_argument(
        "datasets", nargs="+", help="dataset folders (one run each), or roots to search for them"
    )
    e.add_argument("--out", default=None, help="folder for results.json and plots")
    e.set_defaults(func=cmd_eval)


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the whole loop and print where the report is."""
    from twinloop.demo import DemoConfig, run_demo
    from twinloop.eval.report import format_tables

    cfg = DemoConfig(
        out=args.out,
        backend=args.backend,
        transitions=args.transitions,
        episodes=args.episodes,
        goal_hops=args.goal_hops,
        seed=args.seed,
        train_steps=args.train_steps,
        ensemble=args.ensemble,
        compare_sim=not args.no_sim_comparison,
        overwrite=args.overwrite,
    )
    bars = _Bars(args.quiet)
    try:
        results = run_demo(cfg, progress=bars)
    finally:
        bars.close()
    rm = results.get("rate_model", {})
    print(
        f"rate model: optimum error {rm.get('optimum_error_angstrom', float('nan')):.3f} A, "
        f"rate-map error {100 * rm.get('rate_map_error', float('nan')):.1f} % of peak"
    )
    print(format_tables(results["evaluation"]))
    print(f"\nreport: {Path(args.out) / 'report.md'} (wall time {results['wall_time_s']:.0f} s)")
    return 0


def cmd_capture(args: argparse.Namespace) -> int:
    """Record random-beam dwells."""
    from twinloop.demo import capture

    bars = _Bars(args.quiet)
    try:
        path = capture(
            args.backend,
            args.transitions,
            args.out,
            address=args.address,
            seed=args.seed,
            overwrite=args.overwrite,
            progress=bars,
        )
    finally:
        bars.close()
    print(f"captured {args.transitions} transitions into {path}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Fit and save the rate model."""
    import twinloop
    from twinloop.controllers.rates import RateModel
    from twinloop.demo import ENV_ID, train
    from twinloop.eval.stem import rate_model_errors

    bars = _Bars(args.quiet)
    try:
        info = train(
            args.dataset,
            args.out,
            steps=args.steps,
            ensemble=args.ensemble,
            seed=args.seed,
            progress=bars,
        )
    finally:
        bars.close()
    print(
        f"trained on {info['transitions']} transitions (dropped {info['dropped_by_filter']}); "
        f"model: {args.out}"
    )
    err = rate_model_errors(RateModel.load(args.out), twinloop.make_config(ENV_ID))
    print(
        f"against the simulator's true rates: optimum error "
        f"{err['optimum_error_angstrom']:.3f} A, rate-map error "
        f"{100 * err['rate_map_error']:.1f} % of peak, peak ratio {err['peak_ratio']:.2f}"
    )
    return 0


def _dataset_folders(items: list[str]) -> list[Path]:
    """Dataset folders named directly, or found below a Minari root (``*/*/data``)."""
    found: list[Path] = []
    for item in items:
        p = Path(item)
        if (p / "data" / "metadata.json").exists() or (p / "metadata.json").exists():
            found.append(p)
            continue
        below = sorted(m.parent.parent for m in p.glob("**/data/metadata.json"))
        if not below:
            raise FileNotFoundError(f"no dataset at or below {p}")
        found.extend(below)
    return found


def cmd_eval(args: argparse.Namespace) -> int:
    """Summarise recorded runs."""
    from twinloop.datasets import open_dataset
    from twinloop.eval.report import (
        format_tables,
        plot_runs,
        run_from_dataset,
        summarize_runs,
        write_json,
    )

    paths = _dataset_folders(args.datasets)
    runs = [run_from_dataset(open_dataset(p)) for p in paths]
    summary = summarize_runs(runs)
    print(format_tables(summary))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        write_json(summary, out / "results.json")
        plot_runs(runs, summary, out / "controllers.png")
        print(f"\nwrote {out / 'results.json'} and {out / 'controllers.png'}")
    return 0
