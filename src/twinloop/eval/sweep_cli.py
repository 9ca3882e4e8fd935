"""``twinloop agent sweep``: the command line of :mod:`twinloop.eval.sweep`.

It parses, shows progress (runs done, env steps of the runs in flight) and prints the
report; the work is in :mod:`twinloop.eval.sweep`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from twinloop.core.cliargs import add_training_options, non_negative_int, positive_int
from twinloop.eval.sweep import (
    SweepFailed,
    SweepSpec,
    plan_configs,
    report_markdown,
    run_sweep,
    seed_list,
    sweep_report,
)


def register_sweep(verbs: Any) -> None:
    """Add ``agent sweep`` to the ``agent`` subcommands ``verbs``."""
    from twinloop.controllers.rl import AGENTS

    s = verbs.add_parser(
        "sweep",
        help="train one run per (seed, config) on a process pool or Ray, then report IQM "
        "with intervals, performance profiles and learning curves",
        description="Train an agent once per seed and per point of the --grid product, each "
        "run into OUT/<config>/seed-<S>/ with checkpoints (a retried or re-run run resumes "
        "from its newest one), then aggregate: OUT/report.md, report.json, curves.png, "
        "profiles.png. The same command again skips finished runs and resumes the others.",
    )
    add_training_options(s, list(AGENTS), each_run=True)
    s.add_argument(
        "--seeds", type=positive_int, default=10, metavar="N",
        help="seeds per config: --first-seed .. --first-seed + N - 1 (default: %(default)s)",
    )  # fmt: skip
    s.add_argument(
        "--first-seed", type=non_negative_int, default=0, metavar="S",
        help="the first seed (default: %(default)s)",
    )  # fmt: skip
    s.add_argument(
        "--out", required=True, metavar="DIR",
        help="sweep folder: sweep.json, one run folder per config and seed, the report",
    )  # fmt: skip
    s.add_argument(
        "--grid", action="append", default=[], metavar="NAME=V1,V2",
        help="agent setting to sweep; several --grid give their cartesian product; a tuple "
        "value goes in brackets: --grid hidden=[16],[32,32] (repeatable)",
    )  # fmt: skip
    s.add_argument(
        "--log-every", type=positive_int, default=None, metavar="N",
        help="env steps between a run's log rows (default: about 1 %% of a run)",
    )  # fmt: skip
    s.add_argument(
        "--workers", type=positive_int, default=None, metavar="N",
        help="runs at once: 1 (the default without --ray) trains in this process, more on "
        "a local process pool; with --ray, Ray tasks in flight (default: all, Ray "
        "schedules them by CPUs)",
    )  # fmt: skip
    s.add_argument(
        "--ray", default=None, metavar="ADDRESS",
        help="run the runs as Ray tasks: 'local' starts Ray here, 'auto' or host:port or "
        "ray://host:port joins a cluster (needs the ray extra)",
    )  # fmt: skip
    s.add_argument(
        "--max-retries", type=non_negative_int, default=3, metavar="N",
        help="retries of a run whose worker process or node died; each resumes from the "
        "run's newest checkpoint (default: %(default)s)",
    )  # fmt: skip
    s.add_argument(
        "--bootstrap", type=positive_int, default=5000, metavar="N",
        help="bootstrap resamples of every interval in the report (default: %(default)s)",
    )  # fmt: skip
    s.add_argument("--quiet", action="store_true", help="no progress display")
    s.set_defaults(func=cmd_sweep)


def cmd_sweep(args: argparse.Namespace) -> int:
    """Plan, run and report a sweep; print the report's table."""
    from tqdm import tqdm

    import twinloop
    from twinloop.core.config import parse_assignment

    configs = plan_configs(args.agent, args.set, args.grid)
    env_cfg = twinloop.make_config(args.env_id)
    env_overrides = dict(parse_assignment(env_cfg, a) for a in args.env_set)
    spec = SweepSpec(
        env_id=args.env_id, agent=args.agent, steps=args.steps,
        seeds=seed_list(args.seeds, args.first_seed), configs=configs, n_envs=args.n_envs,
        env_overrides=env_overrides, checkpoint_every=args.checkpoint_every,
        log_every=args.log_every,
    )  # fmt: skip
    n_runs = len(configs) * len(spec.seeds)
    bar = tqdm(
        total=n_runs, desc=f"sweep {args.agent} on {args.env_id}", unit="run",
        file=sys.stderr, disable=args.quiet,
    )  # fmt: skip
    last = [0.0]

    def progress(event: dict[str, Any]) -> None:
        bar.update(event["done"] - bar.n)
        now = time.monotonic()
        if event["event"] == "step" and now - last[0] < 0.5:
            return
        last[0] = now
        running = [
            f"{k} {s}/{t}" for k, (s, t) in event["steps"].items() if 0 < s < t
        ]  # per-run env steps of the runs in flight
        bar.set_postfix_str("; ".join(running[:4]), refresh=True)

    try:
        result = run_sweep(
            spec, args.out, workers=args.workers,
            ray_address=args.ray, max_retries=args.max_retries, progress=progress,
        )  # fmt: skip
    except SweepFailed as exc:
        bar.close()
        print(f"twinloop: {exc}", file=sys.stderr)
        sweep_report(args.out, n_resamples=args.bootstrap)
        return 2
    except KeyboardInterrupt:
        bar.close()
        print(
            f"twinloop: interrupted; the same command resumes every unfinished run of "
            f"{args.out} from its newest checkpoint",
            file=sys.stderr,
        )
        return 130
    finally:
        bar.close()
    report = sweep_report(args.out, n_resamples=args.bootstrap)
    print(report_markdown(report), end="")
    print(
        f"{len(result.outcomes)} runs trained, {len(result.skipped)} finished before, "
        f"{len(result.retried)} retried; report: {Path(args.out) / 'report.md'}"
    )
    return 0
