"""Figure helpers shared by the evidence experiments (``exp_agents*.py``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend, or None (said once) when it is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("no matplotlib: the figure is skipped")
        return None
    return plt


def on_grid(grid: np.ndarray, runs: Sequence[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """``(runs, grid)``: each ``(steps, values)`` curve on ``grid``, non-finite values left out."""
    return np.array([np.interp(grid, s[np.isfinite(r)], r[np.isfinite(r)]) for s, r in runs])
