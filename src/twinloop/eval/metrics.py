"""Aggregate metrics with stratified-bootstrap intervals, after rliable's definitions.

Agarwal, Schwarzer, Castro, Courville & Bellemare, "Deep Reinforcement Learning at the Edge of
the Statistical Precipice", NeurIPS 2021 (the rliable library): report interval estimates, not
point estimates; use the interquartile mean (IQM, the mean of the middle 50 % of runs), the
optimality gap (mean shortfall below a target score), the probability of improvement
``P(X > Y) + P(X = Y) / 2`` (the Mann-Whitney U statistic over m x n pairs, averaged over
tasks), and performance profiles (the fraction of runs scoring above each threshold), each with
a percentile bootstrap that resamples runs within each task (stratified). rliable itself does
not import beside pandas 3 (it pins arch < 8), so these are written on numpy/scipy and tested
against its published definitions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy import stats

from twinloop.eval.bootstrap import bootstrap_ci

Stat = Callable[..., Any]


def iqm(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Interquartile mean: the mean of the middle 50 % (``scipy.stats.trim_mean(x, 0.25)``)."""
    return stats.trim_mean(np.asarray(x, dtype=np.float64), 0.25, axis=axis)


def optimality_gap(x: np.ndarray, gamma: float = 1.0, axis: int = -1) -> np.ndarray:
    """Mean of ``max(gamma - x, 0)``: how far runs fall short of the target ``gamma``."""
    return np.mean(np.maximum(gamma - np.asarray(x, dtype=np.float64), 0.0), axis=axis)


def _mean(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x, axis=axis)


def _median(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.median(x, axis=axis)


#: Aggregate statistics by name; each takes an array and an ``axis``.
AGGREGATES: dict[str, Stat] = {
    "mean": _mean,
    "median": _median,
    "iqm": iqm,
    "optimality_gap": optimality_gap,
}


@dataclasses.dataclass(frozen=True)
class Interval:
    """A point estimate with its bootstrap interval."""

    point: float
    low: float
    high: float

    def contains(self, value: float) -> bool:
        """Whether ``value`` lies inside the interval."""
        return self.low <= value <= self.high

    def __str__(self) -> str:
        """E.g. ``0.512 [0.431, 0.590]``."""
        return f"{self.point:.3g} [{self.low:.3g}, {self.high:.3g}]"


def aggregate(
    values: Sequence[float] | np.ndarray,
    *,
    strata: Sequence[object] | np.ndarray | None = None,
    metrics: Sequence[str] = ("mean", "median", "iqm", "optimality_gap"),
    gamma: float = 1.0,
    confidence: float = 0.95,
    n_resamples: int = 5000,
    seed: int = 0,
) -> dict[str, Interval]:
    """Each aggregate metric of per-run scores with a stratified percentile bootstrap interval.

    Args:
        values: One score per run (episode).
        strata: Task of each run (e.g. the goal); runs are resampled within their task.
        metrics: Names from :data:`AGGREGATES`.
        gamma: Target score of the optimality gap.
        confidence: Interval coverage.
        n_resamples: Bootstrap resamples.
        seed: Seed of the resampling (intervals are reproducible).
    """
    x = np.asarray(values, dtype=np.float64)
    out: dict[str, Interval] = {}
    for name in metrics:
        if name not in AGGREGATES:
            raise ValueError(f"unknown metric {name!r}; valid: {', '.join(AGGREGATES)}")
        fn = AGGREGATES[name]

        def stat(a: np.ndarray, axis: int = -1, fn: Stat = fn) -> np.ndarray:
            return fn(a, gamma=gamma, axis=axis) if fn is optimality_gap else fn(a, axis=axis)

        lo, hi = bootstrap_ci(
            x,
            strata=strata,
            statistic=stat,
            confidence=confidence,
            n_resamples=n_resamples,
            seed=seed,
        )
        out[name] = Interval(float(stat(x)), lo, hi)
    return out


def _groups(n: int, strata: Sequence[object] | np.ndarray | None) -> dict[Any, np.ndarray]:
    if strata is None:
        return {None: np.arange(n)}
    labels = np.asarray(strata)
    if labels.shape != (n,):
        raise ValueError(f"strata has shape {labels.shape}, expected ({n},)")
    return {u: np.flatnonzero(labels == u) for u in np.unique(labels)}


def _poi(x: np.ndarray, y: np.ndarray) -> float:
    """P(X > Y) + P(X = Y) / 2 over all pairs (the normalised Mann-Whitney U)."""
    gt = (x[:, None] > y[None, :]).mean()
    eq = (x[:, None] == y[None, :]).mean()
    return float(gt + 0.5 * eq)


def probability_of_improvement(
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    *,
    x_strata: Sequence[object] | np.ndarray | None = None,
    y_strata: Sequence[object] | np.ndarray | None = None,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> Interval:
    """Probability that a run of X scores higher than a run of Y, averaged over tasks.

    Both samples are resampled independently within each task for the interval.
    """
    xa, ya = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    gx, gy = _groups(xa.size, x_strata), _groups(ya.size, y_strata)
    if set(gx) != set(gy):
        raise ValueError(f"X and Y cover different tasks: {sorted(gx)} vs {sorted(gy)}")
    tasks = list(gx)
    point = float(np.mean([_poi(xa[gx[t]], ya[gy[t]]) for t in tasks]))
    rng = np.random.default_rng(seed)
    boot = np.empty(n_resamples)
    for b in range(n_resamples):
        per_task = []
        for t in tasks:
            ix = rng.choice(gx[t], size=gx[t].size)
            iy = rng.choice(gy[t], size=gy[t].size)
            per_task.append(_poi(xa[ix], ya[iy]))
        boot[b] = np.mean(per_task)
    alpha = 1.0 - confidence
    lo, hi = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    return Interval(point, float(lo), float(hi))


def performance_profile(
    values: Sequence[float] | np.ndarray,
    thresholds: Sequence[float] | np.ndarray,
    *,
    strata: Sequence[object] | np.ndarray | None = None,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fraction of runs scoring above each threshold, with bootstrap bands.

    Returns:
        ``(fraction, low, high)``, one entry per threshold.
    """
    x = np.asarray(values, dtype=np.float64)
    taus = np.asarray(thresholds, dtype=np.float64)
    frac = (x[:, None] > taus[None, :]).mean(axis=0)
    groups = list(_groups(x.size, strata).values())
    rng = np.random.default_rng(seed)
    boot = np.empty((n_resamples, taus.size))
    for b in range(n_resamples):
        idx = np.concatenate([rng.choice(g, size=g.size) for g in groups])
        boot[b] = (x[idx][:, None] > taus[None, :]).mean(axis=0)
    alpha = 1.0 - confidence
    lo, hi = np.quantile(boot, [alpha / 2, 1 - alpha / 2], axis=0)
    return frac, lo, hi


def difference(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    *,
    statistic: str = "mean",
    a_strata: Sequence[object] | np.ndarray | None = None,
    b_strata: Sequence[object] | np.ndarray | None = None,
    confidence: float = 0.95,
    n_resamples: int = 5000,
    seed: int = 0,
) -> Interval:
    """``statistic(a) - statistic(b)`` with an interval from resampling both independently.

    Used for the sim-vs-backend gap: the same controller on the same goals, two backends.
    An interval that contains 0 means the two are statistically indistinguishable at this
    sample size (not that they are equal).
    """
    fn = AGGREGATES[statistic]
    xa, xb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    ga, gb = list(_groups(xa.size, a_strata).values()), list(_groups(xb.size, b_strata).values())
    rng = np.random.default_rng(seed)

    def resample(x: np.ndarray, groups: list[np.ndarray]) -> np.ndarray:
        idx = np.concatenate(
            [g[rng.integers(0, g.size, size=(n_resamples, g.size))] for g in groups], axis=1
        )
        return x[idx]

    boot = fn(resample(xa, ga), axis=-1) - fn(resample(xb, gb), axis=-1)
    alpha = 1.0 - confidence
    lo, hi = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    return Interval(float(fn(xa) - fn(xb)), float(lo), float(hi))
