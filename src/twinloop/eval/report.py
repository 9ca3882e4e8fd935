"""Evaluate recorded runs: per controller and backend, success and time to goal with intervals.

Reads datasets written by ``twinloop run --record`` (or the demo), one per controller and
backend, and computes, honestly:

* success rate with a 95 % Wilson interval;
* median microscope time to goal among successful episodes, with a percentile bootstrap
  interval stratified by nothing (episodes are independent);
* for every pair of controllers on the same backend: the difference of success rates and of
  median times with bootstrap intervals, and the probability that a successful episode of one
  is faster than one of the other;
* for every controller run on two backends (e.g. ``sim`` and ``remote``) with the same seeds:
  the gap of success rate and median time with intervals (``contains 0`` = indistinguishable
  at this sample size).

Plots (matplotlib, optional extra ``plot``): success rate and time to goal per controller with
their intervals, and a performance profile of the time to goal.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from twinloop.eval.metrics import Interval, aggregate, difference, probability_of_improvement
from twinloop.eval.rollout import wilson_interval


@dataclasses.dataclass
class Run:
    """The episodes of one controller on one backend."""

    controller: str
    backend: str
    seeds: np.ndarray
    success: np.ndarray
    time_s: np.ndarray
    steps: np.ndarray
    failures: dict[str, int]
    source: str

    @property
    def key(self) -> str:
        """``backend/controller``."""
        return f"{self.backend}/{self.controller}"


def run_from_dataset(dataset: Any) -> Run:
    """Per-episode outcomes of one recorded run (a :class:`twinloop.datasets.Dataset`)."""
    meta = dataset.metadata.get("twinloop", {})
    tags = meta.get("tags", {})
    controller = str(tags.get("controller", dataset.id))
    backend = str(tags.get("backend") or meta.get("backend", {}).get("kind", "unknown"))
    names = meta.get("env_metadata", {}).get("failure_names", [])
    seeds, success, times, steps, failures = [], [], [], [], {}
    for ep in dataset.iterate_episodes():
        if len(ep) == 0:
            continue
        info = ep.infos
        seeds.append(int(ep.metadata.get("seed", -1)))
        success.append(bool(np.asarray(info["is_success"])[-1]))
        times.append(float(np.asarray(info["time_s"])[-1]))
        steps.append(len(ep))
        code = int(np.asarray(info["failure"])[-1])
        if code:
            name = names[code] if code < len(names) else str(code)
            failures[name] = failures.get(name, 0) + 1
    return Run(
        controller,
        backend,
        np.array(seeds),
        np.array(success),
        np.array(times),
        np.array(steps),
        failures,
        str(dataset.path),
    )


def _median_time(run: Run, n_resamples: int) -> Interval | None:
    t = run.time_s[run.success]
    if t.size < 2:
        return None
    return aggregate(t, metrics=("median",), n_resamples=n_resamples)["median"]


def summarize_runs(runs: Sequence[Run], n_resamples: int = 5000) -> dict[str, Any]:
    """Tables of the runs, pairwise comparisons and sim-vs-backend gaps (JSON-friendly)."""
    table = []
    for r in runs:
        n, wins = r.success.size, int(r.success.sum())
        lo, hi = wilson_interval(wins, n)
        med = _median_time(r, n_resamples)
        table.append(
            {
                "backend": r.backend,
                "controller": r.controller,
                "episodes": n,
                "success_rate": wins / n,
                "success_rate_ci95": [lo, hi],
                "median_time_to_goal_s": med.point if med else math.nan,
                "median_time_to_goal_ci95": [med.low, med.high] if med else [math.nan, math.nan],
                "mean_steps": float(r.steps.mean()),
                "failures": dict(sorted(r.failures.items())),
            }
        )
    pairs = []
    by_backend: dict[str, list[Run]] = {}
    for r in runs:
        by_backend.setdefault(r.backend, []).append(r)
    for backend, group in by_backend.items():
        for i, a in enumerate(group):
            for b in group[i + 1 :]:
                pairs.append(_compare(a, b, backend, n_resamples))
    gaps = []
    by_controller: dict[str, list[Run]] = {}
    for r in runs:
        by_controller.setdefault(r.controller, []).append(r)
    for controller, group in by_controller.items():
        for i, a in enumerate(group):
            for b in group[i + 1 :]:
                gaps.append({"controller": controller, **_compare(a, b, None, n_resamples)})
    return {"runs": table, "controller_pairs": pairs, "backend_gaps": gaps}


def _compare(a: Run, b: Run, backend: str | None, n_resamples: int) -> dict[str, Any]:
    name_a = a.controller if backend else a.backend
    name_b = b.controller if backend else b.backend
    d_success = difference(
        a.success.astype(float), b.success.astype(float), n_resamples=n_resamples
    )
    out: dict[str, Any] = {
        "a": name_a,
        "b": name_b,
        "success_rate_a_minus_b": dataclasses.asdict(d_success),
    }
    if backend:
        out["backend"] = backend
    ta, tb = a.time_s[a.success], b.time_s[b.success]
    if ta.size >= 2 and tb.size >= 2:
        out["median_time_a_minus_b_s"] = dataclasses.asdict(
            difference(ta, tb, statistic="median", n_resamples=n_resamples)
        )
        # P(a successful episode of A is faster than one of B)
        out["p_a_faster"] = dataclasses.asdict(
            probability_of_improvement(-ta, -tb, n_resamples=min(n_resamples, 1000))
        )
    return out


def format_tables(summary: dict[str, Any]) -> str:
    """Plain-text tables of a :func:`summarize_runs` result."""
    lines = [
        f"{'backend':10s} {'controller':16s} {'eps':>4s} {'success rate [95% CI]':>26s} "
        f"{'median time to goal s [95% CI]':>34s}  failures"
    ]
    for r in summary["runs"]:
        lo, hi = r["success_rate_ci95"]
        tlo, thi = r["median_time_to_goal_ci95"]
        fails = ", ".join(f"{k}: {v}" for k, v in r["failures"].items()) or "none"
        lines.append(
            f"{r['backend']:10s} {r['controller']:16s} {r['episodes']:4d} "
            f"{r['success_rate']:8.3f} [{lo:.3f}, {hi:.3f}]    "
            f"{r['median_time_to_goal_s']:10.1f} [{tlo:.1f}, {thi:.1f}]      {fails}"
        )
    if summary["controller_pairs"]:
        lines.append("\ncontroller pairs (A - B, 95% bootstrap CI):")
        for p in summary["controller_pairs"]:
            lines.append("  " + _pair_text(p, f"{p['backend']}: {p['a']} vs {p['b']}"))
    if summary["backend_gaps"]:
        lines.append(
            "\nbackend gaps, same controller and seeds (A - B; CI containing 0 = "
            "indistinguishable at this sample size):"
        )
        for p in summary["backend_gaps"]:
            lines.append("  " + _pair_text(p, f"{p['controller']}: {p['a']} vs {p['b']}"))
    return "\n".join(lines)


def _pair_text(p: dict[str, Any], title: str) -> str:
    s = p["success_rate_a_minus_b"]
    text = f"{title}: success {s['point']:+.3f} [{s['low']:+.3f}, {s['high']:+.3f}]"
    if "median_time_a_minus_b_s" in p:
        t = p["median_time_a_minus_b_s"]
        f = p["p_a_faster"]
        text += (
            f"; median time {t['point']:+.1f} s [{t['low']:+.1f}, {t['high']:+.1f}]"
            f"; P(A faster) {f['point']:.2f} [{f['low']:.2f}, {f['high']:.2f}]"
        )
    return text


def plot_runs(runs: Sequence[Run], summary: dict[str, Any], path: str | Path) -> Path:
    """Success rate and time to goal per controller and backend, with 95 % intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary["runs"]
    labels = [f"{r['controller']}\n({r['backend']})" for r in rows]
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(4.2 * 3, 4.2))
    _bars_with_intervals(
        ax1,
        rows,
        labels,
        "success_rate",
        "success_rate_ci95",
        "tab:blue",
        "success rate (95% Wilson CI)",
    )
    ax1.set_ylim(0, 1)
    _bars_with_intervals(
        ax2,
        rows,
        labels,
        "median_time_to_goal_s",
        "median_time_to_goal_ci95",
        "tab:orange",
        "median microscope time to goal, s (95% CI)",
    )
    taus = np.linspace(0, max(1.0, float(np.nanmax([r.time_s.max() for r in runs]))), 200)
    for r in runs:
        # fraction of all episodes that reached the goal within tau seconds
        reached = np.array([(r.success & (r.time_s <= t)).mean() for t in taus])
        ax3.plot(taus, reached, label=r.key)
    ax3.set_xlabel("microscope time tau, s")
    ax3.set_ylabel("fraction of episodes at the goal by tau")
    ax3.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _bars_with_intervals(
    ax: Any, rows: list[dict], labels: list[str], key: str, ci_key: str, color: str, ylabel: str
) -> None:
    x = np.arange(len(rows))
    value = np.array([r[key] for r in rows], dtype=np.float64)
    ci = np.array([r[ci_key] for r in rows], dtype=np.float64)
    ax.bar(x, value, color=color, alpha=0.7)
    # (with very few episodes a percentile interval can sit beside its point: clip at zero)
    err = np.clip([value - ci[:, 0], ci[:, 1] - value], 0, None)
    ax.errorbar(x, value, yerr=err, fmt="none", color="k", capsize=4)
    ax.set_xticks(x, labels, fontsize=7, rotation=35, ha="right")
    ax.set_ylabel(ylabel)


def write_json(obj: Any, path: str | Path) -> None:
    """Write JSON with numpy values converted."""

    def default(o: Any) -> Any:
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
        raise TypeError(type(o).__name__)

    Path(path).write_text(json.dumps(obj, indent=2, default=default))
