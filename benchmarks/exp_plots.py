"""Figure helpers shared by the evidence experiments (``exp_agents*.py``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
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


def save(fig: Any, path: Path) -> None:
    """Lay ``fig`` out, write it to ``path`` (folders made) at 110 dpi, close it, say where."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"figure: {path}")


def on_grid(grid: np.ndarray, runs: Sequence[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """``(runs, grid)``: each ``(steps, values)`` curve on ``grid``, non-finite values left out."""
    return np.array([np.interp(grid, s[np.isfinite(r)], r[np.isfinite(r)]) for s, r in runs])


def iqm_band(
    ax: Any, grid: np.ndarray, runs: Sequence[tuple[np.ndarray, np.ndarray]], name: str
) -> None:
    """The runs' IQM on ``grid`` (labelled ``name (IQM of N seeds)``) and their min-max band."""
    from twinloop.eval.metrics import iqm

    ys = on_grid(grid, runs)
    ax.plot(grid, iqm(ys, axis=0), label=f"{name} (IQM of {len(runs)} seeds)")
    ax.fill_between(grid, ys.min(axis=0), ys.max(axis=0), alpha=0.2)
