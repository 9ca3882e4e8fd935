"""``twinloop data export DIR --format {lerobot,robomimic} OUT``: datasets for other stacks.

``--format lerobot OUT`` writes a LeRobot v3.0 dataset folder (``LeRobotDataset(repo_id,
root=OUT)`` loads it; needs ``pip install 'twinloop[lerobot]'``); ``--format robomimic
OUT.hdf5`` writes robomimic's HDF5 layout with filter keys. The work is in
:mod:`twinloop.datasets.export`; this module parses, renders progress and prints.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def add_export_parser(sub: Any) -> None:
    """Register ``twinloop data export`` on the ``twinloop data`` subparsers."""
    s = sub.add_parser(
        "export",
        help="export a dataset, requested and applied actions, for LeRobot (a v3.0 folder; the "
        "lerobot extra) or robomimic (an HDF5 file)",
        description="Export the readable episodes of DIR. Both formats hold the controller's "
        "requested action ('action' / 'actions') and, when recorded, what the device applied "
        "('applied_command' / 'applied_commands').",
    )
    s.add_argument("path", metavar="DIR", help="the dataset folder (or its data folder)")
    s.add_argument("out", metavar="OUT", help="output: a folder (lerobot) or an .hdf5 file")
    s.add_argument(
        "--format",
        required=True,
        choices=("lerobot", "robomimic"),
        help="lerobot: LeRobot v3.0 dataset folder; robomimic: robomimic HDF5 file",
    )
    s.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    g = s.add_argument_group("lerobot")
    g.add_argument(
        "--fps",
        type=int,
        default=None,
        help="frames per second written to meta/info.json (default: the env's render_fps, else 1)",
    )
    g.add_argument(
        "--task",
        default=None,
        help="task string of every frame (default: the env id, else the dataset id)",
    )
    g.add_argument(
        "--task-field",
        default=None,
        metavar="LEAF",
        help="text observation leaf (e.g. 'instruction') whose value is each frame's task",
    )
    g.add_argument(
        "--robot-type", default=None, help="robot_type in meta/info.json (default: the env id)"
    )
    g = s.add_argument_group("robomimic")
    g.add_argument(
        "--valid-fraction",
        type=float,
        default=None,
        help="share of episodes in the 'valid' filter key, the rest in 'train' (default 0.1; "
        "0 writes no 'valid')",
    )
    g.add_argument(
        "--split-seed",
        type=int,
        default=None,
        help="seed of the deterministic train/valid split (default 0)",
    )
    g.add_argument(
        "--no-image-compression",
        action="store_true",
        help="store image observations uncompressed (default: gzip, one frame per chunk)",
    )
    s.set_defaults(func=cmd_export)


def _check_options(args: argparse.Namespace) -> str | None:
    """An error message when an option of the other format was given, else None."""
    lerobot_only = {
        "--fps": args.fps,
        "--task": args.task,
        "--task-field": args.task_field,
        "--robot-type": args.robot_type,
    }
    robomimic_only = {
        "--valid-fraction": args.valid_fraction,
        "--split-seed": args.split_seed,
        "--no-image-compression": args.no_image_compression or None,
    }
    other = robomimic_only if args.format == "lerobot" else lerobot_only
    given = [name for name, value in other.items() if value is not None]
    if given:
        return f"{', '.join(given)} cannot be used with --format {args.format}"
    return None


def cmd_export(args: argparse.Namespace) -> int:
    """Export the dataset at ``DIR`` to ``OUT`` in the requested format.

    Raises:
        ValueError: An option of the other format, or what the exporter refuses
            (``twinloop``'s entry point prints it and exits with status 2).
        DatasetError: The dataset cannot be read, or ``OUT`` exists without ``--overwrite``.
        ImportError: ``--format lerobot`` without the ``lerobot`` extra.
    """
    from tqdm import tqdm

    from twinloop.datasets.export import export_lerobot, export_robomimic

    problem = _check_options(args)
    if problem:
        raise ValueError(problem)
    with tqdm(desc=f"export {args.format}", unit="ep", file=sys.stderr, disable=args.quiet) as bar:

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        if args.format == "lerobot":
            result = export_lerobot(
                args.path,
                args.out,
                fps=args.fps,
                task=args.task,
                task_field=args.task_field,
                robot_type=args.robot_type,
                overwrite=args.overwrite,
                progress=progress,
            )
        else:
            result = export_robomimic(
                args.path,
                args.out,
                valid_fraction=0.1 if args.valid_fraction is None else args.valid_fraction,
                split_seed=args.split_seed or 0,
                compress_images=not args.no_image_compression,
                overwrite=args.overwrite,
                progress=progress,
            )
    if args.format == "lerobot":
        print(
            f"exported {result['episodes']} episodes ({result['frames']} frames, "
            f"{result['tasks']} task(s)) to {result['path']} (LeRobot v3.0)"
        )
        print(f"features: {', '.join(result['features'])}")
    else:
        print(
            f"exported {result['episodes']} episodes ({result['steps']} steps) to "
            f"{result['path']} (robomimic)"
        )
        keys = ", ".join(f"{k} ({n})" for k, n in result["filter_keys"].items())
        print(f"obs keys: {', '.join(result['obs_keys'])}")
        print(f"filter keys: {keys}")
    for problem in result["skipped"]:
        print(f"skipped: {problem}")
    return 0
