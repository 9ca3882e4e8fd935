"""``twinloop sysid ID --data DIR [--out FILE] [--report DIR]``: the command line of a fit.

Registered by ``twinloop/cli.py`` through :func:`add_sysid_parser`. It parses, renders
progress and prints; the work is :func:`twinloop.sysid.base.fit` and
:mod:`twinloop.sysid.report`. Errors are raised as :class:`ValueError` with what to do next,
which the top-level command prints as ``twinloop: error: ...``.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

from twinloop.core.cliargs import StageBars


def add_sysid_parser(sub: Any) -> None:
    """Register ``twinloop sysid`` on the top-level subparsers."""
    p = sub.add_parser(
        "sysid",
        help="fit a device's hidden physics to its captures; write a config override file",
        description="System identification: fit the simulator's identifiable parameters (the "
        "fields a device may differ in, sim/<system>/profile.py) to captured HDF5 data of a "
        "device, with 95 %% intervals, and write a JSON file of config overrides that "
        "'--profile FILE' and 'twinloop run --config FILE' read. Uses only what a device "
        "records (observations, applied commands, timings); a capture's privileged device "
        "profile, when present, only scores the fit.",
    )
    p.add_argument(
        "env_id", metavar="ID", help="env id of the captures, e.g. twinloop/StemSteer-v0"
    )
    p.add_argument(
        "--data",
        action="append",
        required=True,
        metavar="DIR",
        help="a dataset folder, or a root holding several (repeatable)",
    )
    p.add_argument(
        "--out",
        default="sysid.json",
        metavar="FILE",
        help="override file to write (default: %(default)s)",
    )
    p.add_argument(
        "--report",
        default=None,
        metavar="DIR",
        help="also write sysid.md, sysid.json and, when the device profile is known, the "
        "figure of each estimate's error vs the number of episodes used",
    )
    p.add_argument(
        "--boot",
        type=int,
        default=0,
        metavar="N",
        help="0: Laplace intervals; N >= 20: percentile intervals of N bootstrap refits over "
        "episodes (default: %(default)s)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of samples and bootstrap")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_sysid)


def _fmt(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    return f"{x:.4g}"


def cmd_sysid(args: argparse.Namespace) -> int:
    """Fit, write the override file (and the report), print the table."""
    from twinloop.core.text import table
    from twinloop.sysid.base import fit
    from twinloop.sysid.report import episode_grid, learning_curve, write_report

    if args.seed < 0:
        raise ValueError(f"--seed {args.seed} must be >= 0")
    bars = StageBars(args.quiet)
    try:
        result = fit(args.env_id, args.data, boot=args.boot, seed=args.seed, progress=bars)
        out = result.write_overrides(args.out)
        rows = [
            [
                e.path,
                _fmt(e.estimate) if e.identified else "not identified",
                f"{_fmt(e.low)} .. {_fmt(e.high)}" if e.identified else "-",
                _fmt(e.nominal),
                _fmt(e.true),
                e.units,
            ]
            for e in result.estimates
        ]
        print(table(rows, ["parameter", "estimate", "95 % interval", "nominal", "true", "units"]))
        print(
            f"{result.n_episodes} episodes, {result.n_transitions} transitions; "
            f"intervals: {result.method.split(':')[0]}"
        )
        for e in result.estimates:
            if not e.identified:
                print(f"  {e.path}: {e.note}")
        print(f"wrote {out} ({len(result.overrides())} overrides; use it as --profile {out})")
        if args.report:
            curve = None
            if any(e.true is not None for e in result.estimates):
                counts = episode_grid(result.n_episodes)
                curve = (
                    counts,
                    learning_curve(args.env_id, args.data, counts, seed=args.seed, progress=bars),
                )
            files = write_report(result, args.report, curve)
            print("report: " + ", ".join(str(p) for p in files.values()))
    finally:
        bars.close()
    return 0
