"""``twinloop agent``: train learned agents and list their settings.

``twinloop agent train ID --agent NAME --steps N --seed S --out DIR`` trains on a vector env
of ``ID`` with a progress bar, writes checkpoints, metrics and a learning curve to DIR, and
resumes from DIR's newest checkpoint when there is one; ``twinloop run ID --controller
agent:DIR`` then runs the agent on any backend. The work is in
:mod:`twinloop.controllers.rl.train`; this module parses and renders.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from twinloop.controllers.rl import AGENTS
from twinloop.core.cliargs import add_training_options, non_negative_int, positive_int


def add_agent_parser(sub: Any) -> None:
    """Add ``agent train`` and ``agent settings`` to the subcommands ``sub``."""
    group = sub.add_parser(
        "agent",
        help="train learned agents (PPO, DQN, QR-DQN, BBF) and list their settings",
        description="Learned agents in JAX. A trained agent runs as a controller: "
        "'twinloop run ID --controller agent:DIR'.",
    )
    verbs = group.add_subparsers(dest="agent_command", required=True, metavar="COMMAND")
    s = verbs.add_parser(
        "train",
        help="train an agent on a vector env with checkpoints (resumed after a kill), "
        "metrics CSV/JSON and a learning curve",
        description="Train an agent on a vector env of ID. Checkpoints (npz + json) go to "
        "DIR every --checkpoint-every env steps; a run resumes from DIR's newest checkpoint "
        "and then continues exactly as an uninterrupted run would.",
    )
    add_training_options(s, list(AGENTS))
    s.add_argument(
        "--seed", type=non_negative_int, default=0, metavar="S",
        help="seed of the agent and of the envs (default: %(default)s)",
    )  # fmt: skip
    s.add_argument(
        "--out", required=True, metavar="DIR",
        help="run folder: checkpoints, metrics.csv/json, episodes.csv, learning_curve.png",
    )  # fmt: skip
    s.add_argument(
        "--resume", action="store_true",
        help="require a checkpoint in DIR to continue from (without it a run continues from "
        "DIR's newest checkpoint when there is one, and starts fresh otherwise)",
    )  # fmt: skip
    s.add_argument(
        "--teacher", default=None, metavar="CONTROLLER",
        help="reincarnate the agent (dqn, qr-dqn, bbf) from this controller or agent:DIR "
        "(QDagger): offline pretraining on its captured episodes, then online training "
        "with a distillation term that decays to 0 (linearly over distill_updates, or with "
        "--set distill_decay=performance as the student's return nears the teacher's)",
    )  # fmt: skip
    s.add_argument(
        "--teacher-episodes", type=positive_int, default=20, metavar="N",
        help="episodes of the teacher to capture into DIR/teacher-data when --teacher-data "
        "is not given (default: %(default)s)",
    )  # fmt: skip
    s.add_argument(
        "--teacher-data", default=None, metavar="PATH",
        help="the teacher's episodes captured already ('twinloop run ... --record'): a "
        "dataset folder",
    )  # fmt: skip
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_train)

    s = verbs.add_parser(
        "settings",
        help="list an agent's settings (for --set) with defaults, limits and meaning",
        description="List the settings of an agent that 'twinloop agent train --set' changes.",
    )
    s.add_argument(
        "agent", metavar="NAME", choices=list(AGENTS), help=f"one of {', '.join(AGENTS)}"
    )
    s.set_defaults(func=cmd_settings)
    from twinloop.controllers.rl.pretrain_cli import register_pretrain
    from twinloop.eval.sweep_cli import register_sweep

    register_pretrain(verbs)
    register_sweep(verbs)


def capture_teacher(env: Any, teacher: Any, root: Any, episodes: int, seed: int) -> Path:
    """Record ``episodes`` episodes of ``teacher`` on the single env ``env`` under ``root``.

    Episode ``e`` uses seed ``seed + e``; the recorder is what ``twinloop run --record`` uses
    and ``env`` is closed at the end.

    Returns:
        The dataset's folder (``twinloop.datasets.open_dataset`` reads it).
    """
    from twinloop.controllers.rl.reincarnate import TEACHER_DATASET
    from twinloop.datasets import record
    from twinloop.datasets.writer import dataset_dir
    from twinloop.eval.rollout import run_single

    if episodes < 1:
        raise ValueError(f"teacher episodes must be >= 1, got {episodes}")
    path = Path(dataset_dir(root, TEACHER_DATASET))
    wrapped = record(env, path, dataset_id=TEACHER_DATASET, tags={"teacher": teacher.name})
    try:
        run_single(wrapped, teacher, episodes, seed)
    finally:
        wrapped.close()
    return path


def _teacher(args: argparse.Namespace, env_overrides: dict[str, Any]) -> tuple[Any, list]:
    """The teacher controller and its captured episodes (captured into DIR now if needed)."""
    import twinloop
    from twinloop.controllers import make_controller
    from twinloop.controllers.rl.reincarnate import TEACHER_DATASET
    from twinloop.datasets import open_dataset
    from twinloop.datasets.writer import dataset_dir

    single = twinloop.make(args.env_id, **env_overrides)
    teacher = make_controller(args.teacher, single)
    if args.teacher_data:
        path = Path(args.teacher_data)
        single.close()
    else:
        root = Path(args.out) / "teacher-data"
        path = Path(dataset_dir(root, TEACHER_DATASET))
        if path.exists():  # captured by an earlier (interrupted) run of this command
            single.close()
        else:
            # captured under another name and renamed when complete, so a run killed during
            # the capture leaves no partial teacher data for the next run to train on
            partial = Path(args.out) / ".teacher-data.partial"
            shutil.rmtree(partial, ignore_errors=True)
            capture_teacher(single, teacher, partial, args.teacher_episodes, args.seed)
            if root.exists():  # a folder without the dataset: nothing of ours to keep
                shutil.rmtree(root)
            os.replace(partial, root)
    with open_dataset(path) as data:
        return teacher, list(data)


def cmd_settings(args: argparse.Namespace) -> int:
    """Print an agent's config fields."""
    from twinloop.core.config import describe
    from twinloop.core.registry import load
    from twinloop.core.text import table

    cfg = load(AGENTS[args.agent]).Config()
    rows = [(r.path, r.value, r.limits or "-", r.doc) for r in describe(cfg)]
    print(table(rows, ("setting", "default", "limits", "meaning")))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Train an agent and print a summary."""
    from tqdm import tqdm

    import twinloop
    from twinloop.controllers.rl.checkpoint import latest_checkpoint
    from twinloop.controllers.rl.train import train
    from twinloop.core.config import parse_assignment
    from twinloop.core.registry import load
    from twinloop.core.text import table

    if args.resume and latest_checkpoint(args.out) is None:
        raise ValueError(f"--resume: {args.out} holds no checkpoint to continue from")
    cfg = load(AGENTS[args.agent]).Config()
    overrides = dict(parse_assignment(cfg, a) for a in args.set)
    env_cfg = twinloop.make_config(args.env_id)
    env_overrides = dict(parse_assignment(env_cfg, a) for a in args.env_set)
    teacher = teacher_data = None
    if args.teacher:
        teacher, teacher_data = _teacher(args, env_overrides)
    elif args.teacher_data:
        raise ValueError("--teacher-data needs --teacher (the controller it captured)")
    env = twinloop.make_vec(args.env_id, args.n_envs, **env_overrides)
    bar = tqdm(
        total=args.steps, desc=f"{args.agent} on {args.env_id}", unit="step",
        file=sys.stderr, disable=args.quiet, unit_scale=True,
    )  # fmt: skip

    def progress(row: dict[str, Any]) -> None:
        bar.total = row["total_steps"]
        bar.update(row["env_step"] - bar.n)
        ret = row["return_recent"]
        bar.set_postfix(
            steps_per_s=f"{row['env_steps_per_s']:.0f}",
            ret="-" if math.isnan(ret) else f"{ret:.3g}",
            refresh=False,
        )

    try:
        result = train(
            env, args.agent, args.steps, args.seed, args.out,
            overrides=overrides, env_id=args.env_id, env_overrides=env_overrides,
            checkpoint_every=args.checkpoint_every, progress=progress,
            teacher=teacher, teacher_data=teacher_data, teacher_name=args.teacher or "",
        )  # fmt: skip
    except KeyboardInterrupt:
        bar.close()
        print(
            f"twinloop: interrupted; the same command continues from the newest checkpoint "
            f"in {args.out}",
            file=sys.stderr,
        )
        return 130
    finally:
        bar.close()
        env.close()
    busy = result.env_s + result.agent_s
    rows = [
        ("env steps", result.env_steps),
        ("resumed from step", result.resumed_from),
        ("episodes", result.episodes),
        ("recent return (last 20 episodes)", f"{result.return_recent:.4g}"),
        ("learner updates", result.updates),
        ("wall time (s)", f"{result.wall_s:.1f}"),
        ("time in env", f"{result.env_s / busy:.0%}" if busy else "-"),
        ("run folder", str(result.run_dir)),
        ("learning curve", str(result.curve) if result.curve else result.note),
    ]
    print(table(rows, ("metric", "value")))
    from twinloop.controllers.rl.controller import settings_flags

    flags = settings_flags(env_overrides)
    print(f"run it: twinloop run {args.env_id} --controller agent:{args.out} {flags}".rstrip())
    return 0
