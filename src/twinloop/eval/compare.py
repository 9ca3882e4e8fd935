"""Compare controllers run on the same seeds: per-controller scores and paired differences.

``twinloop eval ID --controller A --controller B ...`` runs every controller on episodes with
the same seeds (episode ``e`` uses seed ``S + e`` for each), so the comparison is *paired*: the
difference between two controllers is resampled over episodes jointly (the same goal, the same
hidden draws for both), which removes the variation the seeds share from the interval. That is
the design of a paired experiment; an unpaired bootstrap (:func:`~twinloop.eval.metrics.
difference`) would be wider and answer a question nobody asked.

For each controller: success rate with its 95 % Wilson interval, the mean and the IQM of the
episode returns with stratified-bootstrap intervals (rliable's definitions,
:mod:`twinloop.eval.metrics`), and the env's own episode metrics (e.g. ``twr50``). For each
controller against the first (the baseline): paired differences of success rate, mean return
and every shared metric, and the probability of improvement of the returns.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from twinloop.eval.metrics import Interval, aggregate, probability_of_improvement
from twinloop.eval.rollout import EpisodeResult, summarize


def paired_difference(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    *,
    confidence: float = 0.95,
    n_resamples: int = 5000,
    seed: int = 0,
) -> Interval:
    """``mean(a) - mean(b)`` with a percentile bootstrap that resamples the pairs together.

    ``a[i]`` and ``b[i]`` come from the same episode seed. An interval that excludes 0 says the
    two differ at this sample size; one that contains 0 says the data cannot tell them apart.

    Raises:
        ValueError: ``a`` and ``b`` differ in length, or are empty.
    """
    xa, xb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if xa.shape != xb.shape or xa.ndim != 1:
        raise ValueError(f"paired samples need equal 1-D shapes, got {xa.shape} and {xb.shape}")
    if xa.size == 0:
        raise ValueError("paired_difference: no pairs")
    d = xa - xb
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, d.size, size=(n_resamples, d.size))
    boot = d[idx].mean(axis=1)
    alpha = 1.0 - confidence
    lo, hi = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    return Interval(float(d.mean()), float(lo), float(hi))


def _check_paired(results: Mapping[str, Sequence[EpisodeResult]]) -> list[int]:
    """The seeds every controller ran, in order; raises if the runs are not paired."""
    if len(results) < 1:
        raise ValueError("nothing to compare: give at least one controller")
    names = list(results)
    seeds = [r.seed for r in results[names[0]]]
    if not seeds:
        raise ValueError(f"controller {names[0]!r} ran no episode")
    for name in names[1:]:
        other = [r.seed for r in results[name]]
        if other != seeds:
            raise ValueError(
                f"controllers {names[0]!r} and {name!r} ran different seeds "
                f"({len(seeds)} vs {len(other)} episodes): a paired comparison needs the same"
            )
    return seeds


def _interval(i: Interval) -> dict[str, float]:
    return {"point": i.point, "low": i.low, "high": i.high}


def compare_controllers(
    results: Mapping[str, Sequence[EpisodeResult]],
    *,
    n_resamples: int = 5000,
    seed: int = 0,
) -> dict[str, Any]:
    """Per-controller summaries and paired differences against the first controller.

    Args:
        results: Controller label -> its episodes, every list on the same seeds in the same
            order (what :func:`~twinloop.eval.rollout.run_single` returns for one seed ``S``).
        n_resamples: Bootstrap resamples of every interval.
        seed: Seed of the resampling (intervals are reproducible).

    Returns:
        ``{"baseline", "seeds", "controllers": [{"controller", "summary", "return_mean",
        "return_iqm"}], "versus_baseline": [{"controller", "success_rate", "return",
        "metrics", "probability_of_improvement"}]}`` with intervals as ``{point, low, high}``.

    Raises:
        ValueError: No controller, or controllers that ran different seeds.
    """
    seeds = _check_paired(results)
    names = list(results)
    rows = []
    for name in names:
        eps = results[name]
        returns = np.array([r.episode_return for r in eps])
        agg = aggregate(returns, metrics=("mean", "iqm"), n_resamples=n_resamples, seed=seed)
        rows.append(
            {
                "controller": name,
                "summary": summarize(eps),
                "return_mean": _interval(agg["mean"]),
                "return_iqm": _interval(agg["iqm"]),
            }
        )
    base = results[names[0]]
    versus = []
    for name in names[1:]:
        eps = results[name]
        success = paired_difference(
            [float(r.success) for r in eps], [float(r.success) for r in base],
            n_resamples=n_resamples, seed=seed,
        )  # fmt: skip
        ret = paired_difference(
            [r.episode_return for r in eps], [r.episode_return for r in base],
            n_resamples=n_resamples, seed=seed,
        )  # fmt: skip
        shared = sorted({k for r in eps for k in r.metrics} & {k for r in base for k in r.metrics})
        metrics = {}
        for key in shared:
            pairs = [(r.metrics[key], q.metrics[key]) for r, q in zip(eps, base, strict=True)]
            pairs = [(x, y) for x, y in pairs if np.isfinite(x) and np.isfinite(y)]
            if pairs:
                x, y = zip(*pairs, strict=True)
                metrics[key] = _interval(
                    paired_difference(x, y, n_resamples=n_resamples, seed=seed)
                )
        poi = probability_of_improvement(
            [r.episode_return for r in eps], [r.episode_return for r in base],
            n_resamples=min(n_resamples, 2000), seed=seed,
        )  # fmt: skip
        versus.append(
            {
                "controller": name,
                "success_rate": _interval(success),
                "return": _interval(ret),
                "metrics": metrics,
                "probability_of_improvement": _interval(poi),
            }
        )
    return {"baseline": names[0], "seeds": seeds, "controllers": rows, "versus_baseline": versus}


def _fmt(i: Mapping[str, float], digits: int = 3) -> str:
    return f"{i['point']:+.{digits}f} [{i['low']:+.{digits}f}, {i['high']:+.{digits}f}]"


def format_comparison(report: Mapping[str, Any]) -> str:
    """The comparison as two plain-text tables: scores, then differences from the baseline."""
    from twinloop.core.text import table

    rows = []
    for r in report["controllers"]:
        s = r["summary"]
        lo, hi = s["success_rate_ci95"]
        m, q = r["return_mean"], r["return_iqm"]
        rows.append(
            (
                r["controller"],
                s["episodes"],
                f"{s['success_rate']:.3f} [{lo:.3f}, {hi:.3f}]",
                f"{m['point']:.3f} [{m['low']:.3f}, {m['high']:.3f}]",
                f"{q['point']:.3f} [{q['low']:.3f}, {q['high']:.3f}]",
            )
        )
    text = table(
        rows,
        ("controller", "episodes", "success (95% Wilson)", "mean return (95% CI)", "IQM return"),
    )
    if report["versus_baseline"]:
        diff_rows = []
        for v in report["versus_baseline"]:
            extra = ", ".join(f"{k} {_fmt(i)}" for k, i in v["metrics"].items()) or "-"
            poi = v["probability_of_improvement"]
            diff_rows.append(
                (
                    v["controller"],
                    _fmt(v["success_rate"]),
                    _fmt(v["return"]),
                    f"{poi['point']:.2f} [{poi['low']:.2f}, {poi['high']:.2f}]",
                    extra,
                )
            )
        text += (
            f"\n\nminus {report['baseline']} on the same {len(report['seeds'])} seeds "
            "(paired bootstrap, 95%; an interval without 0 is a difference):\n"
        )
        text += table(
            diff_rows,
            ("controller", "success", "mean return", "P(improvement)", "episode metrics"),
        )
    return text


def plot_comparison(report: Mapping[str, Any], path: str | Path, title: str = "") -> Path:
    """Success rate and IQM return per controller, and paired differences, with intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["controllers"]
    names = [r["controller"] for r in rows]
    x = np.arange(len(rows))
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2))
    ax = axes[0]
    rate = np.array([r["summary"]["success_rate"] for r in rows])
    ci = np.array([r["summary"]["success_rate_ci95"] for r in rows])
    ax.bar(x, rate, color="tab:blue", alpha=0.7)
    ax.errorbar(x, rate, yerr=np.clip([rate - ci[:, 0], ci[:, 1] - rate], 0, None), fmt="none",
                color="k", capsize=4)  # fmt: skip
    ax.set_ylim(0, 1)
    ax.set_ylabel("success rate (95% Wilson CI)")
    ax = axes[1]
    iq = np.array([r["return_iqm"]["point"] for r in rows])
    lo = np.array([r["return_iqm"]["low"] for r in rows])
    hi = np.array([r["return_iqm"]["high"] for r in rows])
    ax.bar(x, iq, color="tab:green", alpha=0.7)
    ax.errorbar(x, iq, yerr=np.clip([iq - lo, hi - iq], 0, None), fmt="none", color="k",
                capsize=4)  # fmt: skip
    ax.set_ylabel("IQM episode return (95% CI)")
    for a in axes[:2]:
        a.set_xticks(x, names, fontsize=7, rotation=30, ha="right")
    ax = axes[2]
    vs = report["versus_baseline"]
    if vs:
        y = np.arange(len(vs))
        d = np.array([v["return"]["point"] for v in vs])
        dl = np.array([v["return"]["low"] for v in vs])
        dh = np.array([v["return"]["high"] for v in vs])
        ax.errorbar(d, y, xerr=np.clip([d - dl, dh - d], 0, None), fmt="o", color="k",
                    capsize=4)  # fmt: skip
        ax.axvline(0.0, color="tab:red", lw=1)
        ax.set_yticks(y, [v["controller"] for v in vs], fontsize=7)
        ax.set_xlabel(f"mean return minus {report['baseline']} (paired, 95% CI)")
    else:
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
