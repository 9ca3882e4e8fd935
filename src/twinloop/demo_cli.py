"""``twinloop demo`` and ``twinloop stem-rates capture | train | eval``: the STEM demo's CLI.

``twinloop demo`` runs the whole sim-to-real loop (:func:`twinloop.demo.run_demo`);
``twinloop stem-rates`` runs its stages alone. The group is named for what its stages do,
learn the Si transition rates of the STEM system and evaluate steering with them, so the
generic verbs (``run``, ``data``, later ``sysid`` …) stay free for every system.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from twinloop.core.cliargs import StageBars


def _backend_args(p: argparse.ArgumentParser, default: str, starts_twin: bool) -> None:
    remote = (
        "remote: the twin at --address, else one started on loopback for the run"
        if starts_twin
        else "remote: the twin at --address (default tcp://127.0.0.1:5555), e.g. one started "
        "by 'twinloop serve microscope'"
    )
    p.add_argument(
        "--backend",
        default=default,
        help=f"STEM backend: sim | sim-image | remote | nion (default: %(default)s; {remote})",
    )
    p.add_argument(
        "--address", default=None, help="address of a running microscope twin, for --backend remote"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def add_parsers(sub: Any) -> None:
    """Register ``twinloop demo``, ``transfer`` and ``stem-rates capture | train | eval``."""
    from twinloop.demo import DEFAULT_PROFILE

    d = sub.add_parser(
        "demo",
        help="the main job: capture through a microscope twin, learn the Si rates, steer with "
        "three controllers, evaluate, write a report",
        description="The main job, the STEM paper's sim-to-real loop: capture random-beam "
        "dwells (through a microscope twin by default), learn the Si transition rates, steer "
        "the Si to goals with three controllers, evaluate with intervals and write a report.",
    )
    d.add_argument("--out", default="twinloop-demo", help="report folder (default: %(default)s)")
    _backend_args(d, "remote", starts_twin=True)
    d.add_argument(
        "--transitions",
        type=int,
        default=2000,
        help="random-beam dwells to capture for learning (default: %(default)s)",
    )
    d.add_argument(
        "--episodes",
        type=int,
        default=100,
        help="episodes per controller and backend (default: %(default)s)",
    )
    d.add_argument(
        "--goal-hops",
        type=int,
        default=5,
        help="lattice hops from the Si's start to its goal (default: %(default)s)",
    )
    d.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the capture and of training; evaluation episode e uses seed+100000+e "
        "(default: %(default)s)",
    )
    d.add_argument(
        "--train-steps",
        type=int,
        default=2000,
        help="optimiser steps of the rate model (default: %(default)s)",
    )
    d.add_argument(
        "--ensemble",
        type=int,
        default=5,
        help="rate models in the ensemble (default: %(default)s)",
    )
    d.add_argument(
        "--no-sim-comparison",
        action="store_true",
        help="skip re-running the controllers on the simulator",
    )
    d.add_argument(
        "--profile",
        default=DEFAULT_PROFILE,
        metavar="random:SEED|FILE|nominal",
        help="hidden physics of the twin the demo starts, so the sim-vs-device gap is real "
        "('nominal': none; default: %(default)s)",
    )
    d.add_argument(
        "--no-calibrate",
        action="store_true",
        help="skip fitting the simulator to the capture and the calibrated-simulator runs",
    )
    d.add_argument("--overwrite", action="store_true", help="replace an existing report folder")
    d.set_defaults(func=cmd_demo)
    _add_transfer(sub)

    g = sub.add_parser(
        "stem-rates",
        help="the demo's stages one at a time: capture, train, eval",
        description="The stages of 'twinloop demo', one at a time: capture random-beam dwells, "
        "train the Si transition-rate model on them, evaluate runs recorded with "
        "'twinloop run --record'.",
    )
    stages = g.add_subparsers(dest="stage", required=True, metavar="STAGE")

    c = stages.add_parser(
        "capture",
        help="record random-beam dwells (STEM) into an HDF5 dataset to learn the rates from",
        description="Record random-beam dwells on the STEM env into an HDF5 dataset, the data "
        "that 'twinloop stem-rates train' learns the Si transition rates from.",
    )
    c.add_argument("out", help="dataset folder to write")
    _backend_args(c, "sim", starts_twin=False)
    c.add_argument(
        "--transitions",
        type=int,
        default=2000,
        help="dwells to record (default: %(default)s)",
    )
    c.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the first episode; episode e uses seed+e (default: %(default)s)",
    )
    c.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    c.set_defaults(func=cmd_capture)

    t = stages.add_parser(
        "train",
        help="fit the Si transition-rate model on a capture; print its error against the "
        "simulator's true rates",
        description="Fit the ensemble rate model on a capture, save it, and compare it with "
        "the simulator's true rates.",
    )
    t.add_argument("dataset", help="dataset folder written by 'twinloop stem-rates capture'")
    t.add_argument(
        "--out",
        default="model.npz",
        help="model file to write, for --model of the learned controllers (default: %(default)s)",
    )
    t.add_argument("--steps", type=int, default=2000, help="optimiser steps (default: %(default)s)")
    t.add_argument(
        "--ensemble", type=int, default=5, help="models in the ensemble (default: %(default)s)"
    )
    t.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of initialisation and batches (default: %(default)s)",
    )
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)

    e = stages.add_parser(
        "eval",
        help="compare recorded runs: success and time to goal with 95%% intervals; write plots",
        description="Compare runs recorded with 'twinloop run --record' (one per controller "
        "and backend): success rate and time to goal with 95% intervals, differences between "
        "controllers and gaps between backends.",
    )
    e.add_argument(
        "datasets", nargs="+", help="dataset folders (one run each), or roots to search for them"
    )
    e.add_argument("--out", default=None, help="folder for results.json and plots")
    e.set_defaults(func=cmd_eval)


def _add_transfer(sub: Any) -> None:
    from twinloop.transfer import (
        BALLOON_CONTROLLERS,
        BALLOON_ID,
        CONTROLLERS,
        ENV_ID,
        REARRANGE_CONTROLLERS,
        REARRANGE_ID,
        ROBOT_CONTROLLERS,
        ROBOT_ID,
    )

    t = sub.add_parser(
        "transfer",
        help="the sim-to-real gap on a device twin with hidden physics, and how far "
        "identification from a device capture closes it (STEM, balloon, quadruped, skills robot)",
        description="Controllers built on the nominal simulator run on a device twin started "
        "with --profile (hidden physics) and on the simulator, the same seeds: the gap. Then a "
        "capture on the device identifies it ('twinloop sysid'; for STEM also a rate model "
        "learned from the capture) and the controllers run again. Writes results.json, "
        "report.md and a figure.",
    )
    t.add_argument(
        "env_id",
        metavar="ID",
        help=f"{ENV_ID} (the microscope), {BALLOON_ID}, {ROBOT_ID} (the robot) or "
        f"{REARRANGE_ID} (the skills robot)",
    )
    t.add_argument(
        "--profile",
        default="random:7",
        metavar="random:SEED|FILE",
        help="the device's hidden physics, as 'twinloop serve microscope|balloon --profile' "
        "takes them (default: %(default)s)",
    )
    t.add_argument(
        "--out", default="twinloop-transfer", help="report folder (default: %(default)s)"
    )
    t.add_argument(
        "--episodes",
        type=int,
        default=None,
        help="episodes per controller and condition, the same seeds in each (default: 60 for "
        "STEM, 20 flights for the balloon, 10 for the robot, 40 for the skills robot)",
    )
    t.add_argument("--seed", type=int, default=0, help="seed of everything (default: %(default)s)")
    t.add_argument(
        "--controller",
        action="append",
        default=None,
        metavar="NAME",
        help=f"a controller to compare (repeatable; default: {', '.join(CONTROLLERS)} for "
        f"STEM, {', '.join(BALLOON_CONTROLLERS)} for the balloon, "
        f"{', '.join(ROBOT_CONTROLLERS)} for the robot, {', '.join(REARRANGE_CONTROLLERS)} for "
        "the skills robot; agent:DIR for the robots too)",
    )
    t.add_argument(
        "--no-sysid",
        action="store_true",
        help="skip fitting the simulator's parameters (and the calibrated-simulator runs)",
    )
    stem = t.add_argument_group("STEM")
    stem.add_argument(
        "--address",
        default=None,
        help="a running microscope twin started with this --profile (default: start one on "
        "loopback for the run)",
    )
    stem.add_argument(
        "--transitions",
        type=int,
        default=None,
        help="random-beam dwells in each capture, nominal simulator and device (default: 2000)",
    )
    stem.add_argument(
        "--goal-hops", type=int, default=None, help="hops from the Si to its goal (default: 5)"
    )
    stem.add_argument(
        "--train-steps",
        type=int,
        default=None,
        help="optimiser steps per rate model (default: 2000)",
    )
    stem.add_argument(
        "--ensemble", type=int, default=None, help="models per rate-model ensemble (default: 5)"
    )
    stem.add_argument(
        "--sim-backend",
        default=None,
        choices=("sim", "sim-image"),
        help="the simulator's measurements: sim (exact, fast; the default) or sim-image "
        "(frames and perception, as the twin reports them)",
    )
    balloon = t.add_argument_group("balloon and robot")
    balloon.add_argument(
        "--device-winds",
        default=None,
        choices=("ble-vae", "generative"),
        help="the device's atmosphere (default: ble-vae, BLE's wind model)",
    )
    balloon.add_argument(
        "--max-steps",
        type=int,
        default=None,
        help="steps per episode: 3-minute steps per flight (default: 960, 48 h); 20-ms control "
        "steps per robot episode (default: 250, 5 s)",
    )
    balloon.add_argument(
        "--capture-episodes",
        type=int,
        default=None,
        help="episodes captured on the device for identification (default: 10 flights of "
        "station-seeker; 8 episodes of standing joint excitation on the robot)",
    )
    skills = t.add_argument_group("skills robot")
    skills.add_argument(
        "--split",
        default=None,
        help="the rearrangement split episodes are drawn from (default: train)",
    )
    t.add_argument("--overwrite", action="store_true", help="replace an existing report folder")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    t.set_defaults(func=cmd_transfer)


#: ``twinloop transfer`` options that belong to some systems' reports only.
_TRANSFER_OPTIONS = {
    "stem": ("address", "transitions", "goal_hops", "train_steps", "ensemble", "sim_backend"),
    "balloon": ("device_winds", "max_steps", "capture_episodes"),
    "robot": ("max_steps", "capture_episodes"),
    "rearrange": ("split",),
}


def cmd_transfer(args: argparse.Namespace) -> int:
    """Run the transfer report of the env's system and print its tables."""
    import dataclasses

    from twinloop import transfer as T

    systems = {
        T.ENV_ID: "stem",
        T.BALLOON_ID: "balloon",
        T.ROBOT_ID: "robot",
        T.REARRANGE_ID: "rearrange",
    }
    system = systems.get(args.env_id)
    if system is None:
        raise ValueError(
            f"transfer covers {', '.join(systems)}; {args.env_id!r} has no device twin (see "
            "'twinloop list' for each env's backends)"
        )
    own_names = set(_TRANSFER_OPTIONS[system])
    for other, names in _TRANSFER_OPTIONS.items():
        given = [n for n in names if n not in own_names and getattr(args, n) is not None]
        if given:
            flags = ", ".join("--" + n.replace("_", "-") for n in given)
            raise ValueError(f"{flags}: an option of the {other} report, not of {args.env_id}")
    common = {
        "profile": args.profile,
        "out": args.out,
        "seed": args.seed,
        "sysid": not args.no_sysid,
        "overwrite": args.overwrite,
    }
    if args.controller:
        common["controllers"] = tuple(args.controller)
    if args.episodes is not None:
        common["episodes"] = args.episodes
    own = {n: getattr(args, n) for n in _TRANSFER_OPTIONS[system] if getattr(args, n) is not None}
    config_cls, run = {
        "stem": (T.TransferConfig, T.run_transfer),
        "balloon": (T.BalloonTransferConfig, T.run_balloon_transfer),
        "robot": (T.RobotTransferConfig, T.run_robot_transfer),
        "rearrange": (T.RearrangeTransferConfig, T.run_rearrange_transfer),
    }[system]
    fields = {f.name for f in dataclasses.fields(config_cls)}
    cfg = config_cls(**{k: v for k, v in {**common, **own}.items() if k in fields})
    bars = StageBars(args.quiet)
    try:
        results = run(cfg, progress=bars)
    finally:
        bars.close()
    report = (Path(args.out) / "report.md").read_text()
    body = report.split("\n\n", 2)[2] if report.count("\n\n") >= 2 else report
    print(body.split("![", 1)[0].strip())
    print(f"\nreport: {Path(args.out) / 'report.md'} (wall time {results['wall_time_s']:.0f} s)")
    return 0


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
        address=args.address,
        profile=None if args.profile == "nominal" else args.profile,
        calibrate=not args.no_calibrate,
    )
    bars = StageBars(args.quiet)
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

    bars = StageBars(args.quiet)
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

    bars = StageBars(args.quiet)
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
