"""What every command line shares: integer argument types and one progress bar per stage.

It sits in core, below every command-line module (``twinloop/cli.py``, ``demo_cli.py``, the
agent, data and sysid commands), so that they share it without importing one another.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def positive_int(text: str) -> int:
    """An ``argparse`` type: an integer >= 1 (the error names the value)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """An ``argparse`` type: an integer >= 0 (the error names the value)."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def add_training_options(
    s: argparse.ArgumentParser, agents: list[str], *, each_run: bool = False
) -> None:
    """The options every training command shares (``agent train``, ``agent sweep``).

    Args:
        s: The command's parser.
        agents: The agent names ``--agent`` takes.
        each_run: The command trains several runs (the help says "of each run").
    """
    each = " of each run" if each_run else ""
    s.add_argument("env_id", metavar="ID", help="registered env id, e.g. twinloop/StemSteer-v0")
    s.add_argument(
        "--agent", required=True, choices=agents, metavar="NAME",
        help=f"agent: {', '.join(agents)}",
    )  # fmt: skip
    s.add_argument(
        "--steps", required=True, type=positive_int, metavar="N",
        help=f"env steps{each} in all (rounded up to whole rollouts or vector steps)",
    )  # fmt: skip
    s.add_argument(
        "--n-envs", type=positive_int, default=8, metavar="N",
        help=f"rows of the vector env{each} (default: %(default)s)",
    )  # fmt: skip
    s.add_argument(
        "--set", action="append", default=[], metavar="NAME=VALUE",
        help="agent setting, e.g. --set lr=1e-3 or --set hidden=64,64 (repeatable; "
        "'twinloop agent settings NAME' lists them)",
    )  # fmt: skip
    s.add_argument(
        "--env-set", action="append", default=[], metavar="NAME=VALUE",
        help="env config override, as 'twinloop run --set', e.g. --env-set max_steps=50 "
        "(repeatable)",
    )  # fmt: skip
    s.add_argument(
        "--checkpoint-every", type=positive_int, default=50_000, metavar="N",
        help=f"env steps between checkpoints{each} (a resumed run redoes at most this many); "
        "the envs are reset at each one, so keep it well above n-envs x an episode's length "
        "(default: %(default)s)",
    )  # fmt: skip


class StageBars:
    """One tqdm bar per stage name, on stderr: call it as ``progress(stage, done, total)``.

    A stage's bar closes when ``done`` reaches ``total``; :meth:`close` closes the rest
    (call it in a ``finally``). ``quiet`` draws nothing.
    """

    def __init__(self, quiet: bool = False) -> None:
        """No bar until a stage reports."""
        self.quiet = quiet
        self.bars: dict[str, Any] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        """Move stage ``stage``'s bar to ``done`` of ``total``."""
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
        """Close every bar."""
        for bar in self.bars.values():
            bar.close()
