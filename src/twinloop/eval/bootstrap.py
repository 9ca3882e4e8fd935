"""Bootstrap confidence intervals of per-episode metrics (percentile, optionally stratified).

Efron & Tibshirani, "An Introduction to the Bootstrap" (1993), ch. 13: resample episodes with
replacement, recompute the statistic, and take the (alpha/2, 1 - alpha/2) percentiles. With
``strata`` every resample keeps each stratum's size (e.g. one stratum per controller seed or
per wind condition), so the interval reflects variation within strata only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    *,
    strata: Sequence[object] | np.ndarray | None = None,
    statistic: Callable[[np.ndarray], float] = np.mean,
    confidence: float = 0.95,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(values)``.

    Args:
        values: One number per episode.
        strata: Optional label per episode; resampling happens within each label.
        statistic: Maps a 1-D array to a number (vectorised over axis -1 if it accepts
            ``axis``; the mean and median do).
        confidence: Coverage of the interval, in (0, 1).
        n_resamples: Bootstrap resamples.
        seed: Seed of the resampling generator (the interval is reproducible).

    Returns:
        ``(low, high)``.

    Raises:
        ValueError: No values, a non-finite value, or a confidence outside (0, 1).
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    if not np.isfinite(x).all():
        raise ValueError(f"bootstrap_ci: values must be finite, got {x[~np.isfinite(x)][:3]}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence = {confidence} must lie in (0, 1)")
    if n_resamples < 1:
        raise ValueError(f"n_resamples = {n_resamples} must be >= 1")
    rng = np.random.default_rng(seed)
    if strata is None:
        groups = [np.arange(x.size)]
    else:
        labels = np.asarray(strata)
        if labels.shape != x.shape:
            raise ValueError(f"strata has shape {labels.shape}, values {x.shape}")
        groups = [np.flatnonzero(labels == u) for u in np.unique(labels)]
    idx = np.concatenate(
        [g[rng.integers(0, g.size, size=(n_resamples, g.size))] for g in groups], axis=1
    )
    samples = x[idx]
    try:
        stats = np.asarray(statistic(samples, axis=-1), dtype=np.float64)  # type: ignore[call-arg]
    except TypeError:
        stats = np.array([statistic(s) for s in samples], dtype=np.float64)
    alpha = 1.0 - confidence
    lo, hi = np.quantile(stats, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(lo), float(hi)
