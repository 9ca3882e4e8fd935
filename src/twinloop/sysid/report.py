"""What a fit reports: a table (markdown, JSON) and how the error shrinks with more episodes.

:func:`learning_curve` refits on the first N episodes for a few N and, where the device's
profile is known, :func:`plot_learning_curve` draws each parameter's error (estimate / true - 1,
or estimate - true for an offset in the field's units) with its 95 % interval against N.
Matplotlib (the ``plot`` extra) is imported only to draw.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from twinloop.sysid.base import ParameterEstimate, Progress, SysidResult, fit


def _fmt(x: float | None) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:.4g}"


def markdown_table(result: SysidResult) -> str:
    """One row per parameter: estimate, 95 % interval, nominal, true, units, note."""
    head = "| parameter | estimate | 95 % interval | nominal | true | units | note |"
    rule = "|---|---|---|---|---|---|---|"
    rows = [head, rule]
    for e in result.estimates:
        interval = f"{_fmt(e.low)} .. {_fmt(e.high)}" if e.identified else "not identified"
        rows.append(
            f"| `{e.path}` | {_fmt(e.estimate)} | {interval} | {_fmt(e.nominal)} | "
            f"{_fmt(e.true)} | {e.units} | {e.note} |"
        )
    return "\n".join(rows)


def episode_grid(n_episodes: int, points: int = 5, smallest: int = 5) -> list[int]:
    """About ``points`` episode counts, geometrically spaced from ``smallest`` to all."""
    if n_episodes < 1:
        raise ValueError(f"n_episodes = {n_episodes} must be >= 1")
    lo = min(smallest, n_episodes)
    grid = np.unique(np.rint(np.geomspace(lo, n_episodes, points)).astype(int))
    return [int(n) for n in grid]


def learning_curve(
    env_id: str,
    dataset_dirs: Sequence[str | Path],
    counts: Sequence[int],
    *,
    seed: int = 0,
    progress: Progress | None = None,
) -> list[SysidResult | None]:
    """Fit on the first N episodes for each N in ``counts`` (None where N is too few)."""
    out: list[SysidResult | None] = []
    for k, n in enumerate(counts):
        try:
            out.append(fit(env_id, dataset_dirs, seed=seed, max_episodes=int(n)))
        except ValueError:
            out.append(None)  # too little data to identify the rate model at this N
        if progress:
            progress("episodes", k + 1, len(counts))
    return out


def error_of(e: ParameterEstimate) -> tuple[float, float, float]:
    """Error of an estimate and of its interval's ends: relative, or absolute for an offset.

    Parameters whose prior is a shift (``kind="shift"``, an offset in the field's units) use
    ``x - true``; the others ``x / true - 1``.
    """
    if e.true is None or not e.identified:
        return math.nan, math.nan, math.nan
    if e.kind == "shift" or e.true == 0:
        return e.estimate - e.true, e.low - e.true, e.high - e.true
    return e.estimate / e.true - 1, e.low / e.true - 1, e.high / e.true - 1


def plot_learning_curve(
    counts: Sequence[int], results: Sequence[SysidResult | None], path: str | Path
) -> Path | None:
    """Draw each identified parameter's error vs episodes with intervals; None if no truth.

    Raises:
        ImportError: Matplotlib is missing (``pip install 'twinloop[plot]'``).
    """
    fitted = [(n, r) for n, r in zip(counts, results, strict=True) if r is not None]
    if not fitted:
        return None
    paths = [e.path for e in fitted[-1][1].estimates if e.identified and e.true is not None]
    if not paths:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    cols = min(3, len(paths))
    rows = math.ceil(len(paths) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    kinds = {e.path: e.kind for e in fitted[-1][1].estimates}
    for ax, p in zip(axes.flat, paths, strict=False):
        xs, ys, lo, hi = [], [], [], []
        for n, r in fitted:
            try:
                e = r.estimate(p)
            except KeyError:
                continue
            err = error_of(e)
            if not math.isfinite(err[0]):
                continue
            xs.append(n)
            ys.append(err[0])
            lo.append(err[0] - err[1] if math.isfinite(err[1]) else 0.0)
            hi.append(err[2] - err[0] if math.isfinite(err[2]) else 0.0)
        ax.errorbar(xs, ys, yerr=[lo, hi], fmt="o-", capsize=3)
        ax.axhline(0.0, color="k", lw=0.8)
        ax.set_xscale("log")
        ax.set_xticks([n for n, _ in fitted], [str(n) for n, _ in fitted])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(p.split(".")[-1], fontsize=9)
        ax.set_xlabel("episodes")
        ax.set_ylabel("estimate - true" if kinds[p] == "shift" else "estimate / true - 1")
    for ax in list(axes.flat)[len(paths) :]:
        ax.set_visible(False)
    fig.suptitle("error vs episodes used (95 % intervals)")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(
    result: SysidResult,
    out: str | Path,
    curve: tuple[Sequence[int], Sequence[SysidResult | None]] | None = None,
) -> dict[str, Path]:
    """Write ``sysid.md``, ``sysid.json`` and (with a curve and a known truth) the figure.

    Returns:
        Name -> path of each file written.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    payload: dict[str, Any] = result.to_dict()
    lines = [
        f"# System identification of {result.env_id}",
        "",
        f"{result.n_episodes} episodes, {result.n_transitions} transitions; "
        f"device profile: {result.profile_name or 'unknown'}.",
        f"Intervals: {result.method}.",
        "",
        markdown_table(result),
    ]
    if curve is not None:
        counts, results = curve
        payload["learning_curve"] = [
            {"episodes": int(n), "estimates": None if r is None else r.to_dict()["estimates"]}
            for n, r in zip(counts, results, strict=True)
        ]
        try:
            fig = plot_learning_curve(counts, results, out / "error_vs_episodes.png")
        except ImportError:
            fig = None
            lines += ["", "(figure skipped: install matplotlib, pip install 'twinloop[plot]')"]
        if fig is not None:
            written["figure"] = fig
            lines += ["", "![error vs episodes](error_vs_episodes.png)"]
    md = out / "sysid.md"
    md.write_text("\n".join(lines) + "\n", encoding="utf-8")
    js = out / "sysid.json"
    js.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    written["markdown"], written["json"] = md, js
    return written
