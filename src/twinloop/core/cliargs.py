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
