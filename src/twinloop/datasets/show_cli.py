"""``twinloop data show DIR``: write figures of a recorded dataset and list them.

The generic figures come from :mod:`twinloop.datasets.show`; this command fills in what the
library must not know: names of observation fields and actions (from the env that recorded
the dataset, rebuilt from ``twinloop.env_id`` and ``twinloop.env_config``, else from the
recorded ``env_metadata.observation_layout``), failure names, interval estimators from
:mod:`twinloop.eval`, and a system's own figures
(``twinloop.sim.<system>.figures.dataset_figures``, found through the registry).
"""

from __future__ import annotations

import argparse
import importlib
import logging
from pathlib import Path
from typing import Any

from twinloop.core.cliargs import StageBars

log = logging.getLogger(__name__)


def add_show_parser(sub: Any) -> None:
    """Register ``twinloop data show`` on the ``twinloop data`` subparsers."""
    s = sub.add_parser(
        "show",
        help="write figures of a dataset: returns and lengths, endings and failure causes, "
        "observation and action traces, image fields (contact sheet, GIF), the system's own "
        "views (the Si path, the flight track)",
        description="Write PNG figures (and GIF animations of image observations) of a "
        "recorded dataset, then list the files written.",
    )
    s.add_argument("path", metavar="DIR", help="a dataset folder (or its data folder)")
    s.add_argument(
        "--episode",
        type=int,
        default=None,
        metavar="K",
        help="episode (position 0..N-1 in the dataset) drawn step by step; default: the "
        "episode with the median return",
    )
    s.add_argument(
        "--out",
        default=None,
        metavar="FOLDER",
        help="where the figures go (default: DIR/figures, beside DIR/data)",
    )
    s.add_argument("--fps", type=float, default=10.0, help="frames per second of animations")
    s.add_argument(
        "--max-frames",
        type=int,
        default=300,
        help="most frames per animation (longer episodes are subsampled evenly)",
    )
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_show)


def _env_config(ds: Any) -> tuple[str | None, Any]:
    tl = ds.metadata.get("twinloop", {})
    return tl.get("env_id"), tl.get("env_config")


def _task_of(env_id: str, env_config: Any) -> Any:
    """The task of the env that recorded the dataset (its recorded config), or None."""
    import twinloop
    from twinloop.core.config import from_dict
    from twinloop.core.registry import load

    try:
        spec = twinloop.spec(env_id)
        config = None
        if isinstance(env_config, dict):
            config = from_dict(load(spec.config_entry_point), env_config)
        env = twinloop.make(env_id, config=config)
    except (ValueError, TypeError, KeyError, ImportError, OSError) as exc:
        # a dataset of another version or install: fall back to the recorded metadata
        log.info(
            "cannot rebuild %s to name the fields (%s); using the recorded metadata", env_id, exc
        )
        return None
    try:
        return getattr(env.unwrapped, "task", None)
    finally:
        env.close()


def hints_for(ds: Any) -> Any:
    """Field, action and failure names of a dataset, from its env where twinloop knows it."""
    from twinloop.datasets.show import Hints

    meta = ds.metadata.get("twinloop", {}).get("env_metadata", {}) or {}
    layout = meta.get("observation_layout")
    actions = None
    env_id, env_config = _env_config(ds)
    if env_id:
        task = _task_of(env_id, env_config)
        if task is not None and hasattr(task, "layout"):
            layout = task.layout.describe()
        if task is not None:
            actions = getattr(task, "action_labels", None)
    failures = meta.get("failure_names")
    return Hints(
        observation_layout=layout if isinstance(layout, dict) else None,
        action_labels=tuple(actions) if actions else None,
        failure_names=tuple(failures) if failures else None,
    )


def system_figures(ds: Any, out_dir: Path, episode: int) -> list[Path]:
    """The figures of the dataset's system (``twinloop.sim.<system>.figures``), if it has any."""
    import twinloop

    env_id, _ = _env_config(ds)
    if not env_id:
        return []
    try:
        system = twinloop.spec(env_id).system
    except ValueError:
        log.info("%s is not a registered env id: no system figures", env_id)
        return []
    name = f"twinloop.sim.{system}.figures"
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name not in (name, f"twinloop.sim.{system}"):
            raise
        return []
    return list(module.dataset_figures(ds, out_dir, episode))


def cmd_show(args: argparse.Namespace) -> int:
    """Write the figures of one dataset and print their paths.

    Raises:
        ValueError: No dataset, several datasets or no episodes under ``DIR``, or a bad
            ``--episode`` (``twinloop``'s entry point prints it and exits with status 2).
        DatasetError: The dataset cannot be read.
    """
    from twinloop.datasets import open_dataset
    from twinloop.datasets.show import show_dataset
    from twinloop.datasets.writer import find_datasets
    from twinloop.eval.bootstrap import bootstrap_ci
    from twinloop.eval.rollout import wilson_interval

    found = find_datasets(args.path)
    if not found:
        raise ValueError(f"no dataset under {args.path} (no */data/metadata.json)")
    if len(found) > 1:
        names = ", ".join(str(p.parent) for p in found[:5]) + (", ..." if len(found) > 5 else "")
        raise ValueError(f"{args.path} holds {len(found)} datasets; name one: {names}")
    ds = open_dataset(found[0])
    out = Path(args.out) if args.out else found[0].parent / "figures"
    bars = StageBars(args.quiet)
    with ds:
        try:
            if len(ds) == 0:
                raise ValueError(
                    f"{found[0].parent}: the dataset holds no episodes yet; nothing to show"
                )
            result = show_dataset(
                ds,
                out,
                episode=args.episode,
                hints=hints_for(ds),
                mean_interval=lambda x: bootstrap_ci(x, n_resamples=2000),
                rate_interval=wilson_interval,
                fps=args.fps,
                max_frames=args.max_frames,
                progress=bars,
            )
            paths = result.paths + system_figures(ds, out, result.episode)
        finally:
            bars.close()
    print(f"episode {result.episode} (id {result.episode_id}): {result.reason}")
    print(f"wrote {len(paths)} files to {out}:")
    for p in paths:
        print(f"  {p}")
    return 0
