"""``twinloop agent pretrain``: pretrain an agent's encoder on unlabeled captures (SGI).

``twinloop agent pretrain ID --data DIR [--data DIR ...] --steps N --out DIR`` reads the
captured episodes of each DIR (``twinloop run ID --record`` writes them; rewards are not
read), pretrains the encoder of an agent of ``--agent NAME`` with ``--set`` settings (a
name of :class:`~twinloop.controllers.rl.pretrain.PretrainConfig` sets pretraining, so
``lr`` and ``batch_size`` are pretraining's; any other name is an agent setting, which
shapes the encoder as the agent will build it) and writes ``pretrained.json`` +
``pretrained.npz``, ``metrics.json`` and ``loss_curve.png`` (when matplotlib is installed)
into OUT. The work is in
:mod:`twinloop.controllers.rl.pretrain`; this module parses and renders.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

from twinloop.controllers.rl import AGENTS
from twinloop.core.cliargs import non_negative_int, positive_int
from twinloop.core.text import json_ready


def register_pretrain(verbs: Any) -> None:
    """Add ``pretrain`` to the ``twinloop agent`` subcommands ``verbs``."""
    s = verbs.add_parser(
        "pretrain",
        help="pretrain an agent's encoder on captured episodes (SGI: SPR, goal-conditioned "
        "RL, inverse dynamics), then fine-tune with --set init_encoder=DIR",
        description="Pretrain the encoder of an agent of --agent on the episodes captured in "
        "each --data folder, without their rewards (Schwarzer et al. 2021, SGI). OUT gets "
        "pretrained.json/npz, metrics.json and loss_curve.png.",
    )
    s.add_argument("env_id", metavar="ID", help="the env id the captures come from")
    s.add_argument(
        "--data", action="append", required=True, metavar="DIR",
        help="a capture folder ('twinloop run ID --record DIR'); repeatable",
    )  # fmt: skip
    s.add_argument(
        "--steps", required=True, type=positive_int, metavar="N", help="pretraining updates"
    )
    s.add_argument(
        "--out", required=True, metavar="DIR",
        help="folder for pretrained.json/npz, metrics.json and loss_curve.png",
    )  # fmt: skip
    s.add_argument(
        "--agent", default="dqn", choices=list(AGENTS), metavar="NAME",
        help="the agent the encoder is for (its encoder settings; default: %(default)s)",
    )  # fmt: skip
    s.add_argument(
        "--set", action="append", default=[], metavar="NAME=VALUE",
        help="an agent setting (hidden=64,64 ...) or a pretraining setting (goal_window=20, "
        "batch_size=64 ...); repeatable",
    )  # fmt: skip
    s.add_argument(
        "--objectives", default=None, metavar="LIST",
        help="comma-separated objectives to train, of spr,goal,inverse (default: all with a "
        "weight above 0)",
    )  # fmt: skip
    s.add_argument(
        "--seed", type=non_negative_int, default=0, metavar="S",
        help="seed of the initialisation, batches and goals (default: %(default)s)",
    )  # fmt: skip
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_pretrain)


def split_settings(agent: str, assignments: list[str]) -> tuple[Any, Any]:
    """``(agent config, pretrain config)`` with each ``NAME=VALUE`` applied where it belongs.

    A name that is a pretraining setting goes to :class:`PretrainConfig` (names both have,
    such as ``lr``, ``batch_size`` and ``spr_steps``, too: the agent's optimiser is not
    used here), any other to the agent's config.

    Raises:
        ValueError: A name neither config has (the message says so).
    """
    from twinloop.controllers.rl.pretrain import PretrainConfig
    from twinloop.core.config import override, parse_assignment
    from twinloop.core.registry import load

    agent_cfg = load(AGENTS[agent]).Config()
    pre_cfg = PretrainConfig()
    pre_names = {f.name for f in dataclasses.fields(PretrainConfig)}
    agent_names = {f.name for f in dataclasses.fields(type(agent_cfg))}
    to_agent, to_pre = {}, {}
    for text in assignments:
        name = text.split("=", 1)[0].strip()
        if name in pre_names:
            key, value = parse_assignment(pre_cfg, text)
            to_pre[key] = value
        elif name in agent_names:
            key, value = parse_assignment(agent_cfg, text)
            to_agent[key] = value
        else:
            raise ValueError(
                f"--set {text}: {name!r} is neither a {agent} setting ('twinloop agent "
                f"settings {agent}') nor a pretraining setting ({', '.join(sorted(pre_names))})"
            )
    return override(agent_cfg, **to_agent), override(pre_cfg, **to_pre)


def _episodes(paths: list[str], env_id: str) -> tuple[list[list[Any]], Any, Any]:
    """Every capture's episodes and the capture's spaces (all captures must agree)."""
    from twinloop.datasets import open_dataset

    data, spaces = [], None
    for path in paths:
        with open_dataset(path) as ds:
            recorded = ds.metadata.get("twinloop", {}).get("env_id")
            if recorded and recorded != env_id:
                raise ValueError(f"capture {path} was recorded on {recorded}, not {env_id}")
            these = (ds.observation_space, ds.action_space)
            if spaces is not None and these != spaces:
                raise ValueError(
                    f"capture {path} has spaces {these[0]} / {these[1]}, the first capture "
                    f"{spaces[0]} / {spaces[1]}"
                )
            spaces = these
            data.append(list(ds))
    return data, spaces[0], spaces[1]


def write_loss_curve(
    out: Path, history: list[dict[str, Any]], title: str
) -> tuple[Path | None, str]:
    """``loss_curve.png``: each objective's loss against updates (log scale).

    Returns:
        ``(path, "")`` or ``(None, why)`` when matplotlib is missing.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None, "no loss_curve.png: matplotlib is missing (pip install 'twinloop[plot]')"
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    steps = [row["step"] for row in history]
    for key in ("spr_loss", "goal_loss", "inverse_loss"):
        if history and key in history[0]:
            ax.plot(steps, [max(row[key], 1e-8) for row in history], label=key)
    ax.set_yscale("log")
    ax.set_xlabel("updates")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend(loc="best")
    fig.tight_layout()
    path = out / "loss_curve.png"
    tmp = out / ".loss_curve.png.tmp"
    fig.savefig(tmp, format="png")
    plt.close(fig)
    os.replace(tmp, path)
    return path, ""


def cmd_pretrain(args: argparse.Namespace) -> int:
    """Pretrain an encoder and print a summary."""
    from tqdm import tqdm

    from twinloop.controllers.rl.pretrain import (
        pretrain_encoder,
        save_pretrained,
        with_objectives,
    )
    from twinloop.core.text import table

    agent_cfg, pre_cfg = split_settings(args.agent, args.set)
    if args.objectives is not None:
        pre_cfg = with_objectives(pre_cfg, args.objectives.split(","))
    data, obs_space, act_space = _episodes(args.data, args.env_id)
    bar = tqdm(
        total=args.steps, desc=f"pretrain {args.agent} encoder", unit="update",
        file=sys.stderr, disable=args.quiet,
    )  # fmt: skip

    def progress(row: dict[str, Any]) -> None:
        bar.update(row["step"] - bar.n)
        losses = {k[: -len("_loss")]: f"{v:.3g}" for k, v in row.items() if k.endswith("_loss")}
        bar.set_postfix(ups=f"{row['updates_per_s']:.0f}", **losses, refresh=False)

    try:
        encoder, history = pretrain_encoder(
            data, obs_space, act_space, pre_cfg, agent_cfg, args.steps, args.seed, progress
        )
    finally:
        bar.close()
    out = Path(args.out)
    extra = {"env_id": args.env_id, "agent": args.agent, "data": [str(p) for p in args.data]}
    save_pretrained(out, encoder, extra)
    metrics = {"run": {**extra, "steps": args.steps, "seed": args.seed,
                       "objectives": list(pre_cfg.objectives), "settings": list(args.set)},
               "log": history}  # fmt: skip
    tmp = out / ".metrics.json.tmp"
    tmp.write_text(json.dumps(json_ready(metrics), indent=1, allow_nan=False))
    os.replace(tmp, out / "metrics.json")
    curve, note = write_loss_curve(out, history, f"{args.agent} encoder on {args.env_id}")
    last = history[-1]
    rows = [("updates", last["step"]), ("objectives", ", ".join(pre_cfg.objectives)),
            ("episodes / transitions",
             f"{encoder.meta['episodes']} / {encoder.meta['transitions']}")]  # fmt: skip
    for key in ("spr_loss", "goal_loss", "inverse_loss", "inverse_accuracy"):
        if key in last:
            rows.append((f"{key} (first -> last log)", f"{history[0][key]:.4g} -> {last[key]:.4g}"))
    rows += [("updates/s (last log)", f"{last['updates_per_s']:.0f}"),
             ("folder", str(out)), ("loss curve", str(curve) if curve else note)]  # fmt: skip
    print(table(rows, ("metric", "value")))
    print(
        f"fine-tune: twinloop agent train {args.env_id} --agent {args.agent} "
        f"--set init_encoder={out} (with the same encoder --set values)"
    )
    return 0
