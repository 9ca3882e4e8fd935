from __future__ import annotations

import numpy as np
import pytest

from twinloop.eval.bootstrap import bootstrap_ci


def test_interval_covers_the_mean_at_the_nominal_rate() -> None:
    rng = np.random.default_rng(0)
    hits = 0
    for k in range(300):
        x = rng.beta(2, 5, size=100)
        lo, hi = bootstrap_ci(x, n_resamples=1000, seed=k)
        hits += lo <= 2 / 7 <= hi
    assert 0.9 <= hits / 300 <= 0.98


def test_strata_and_errors() -> None:
    x = np.r_[np.zeros(50), np.ones(50)]
    lo, hi = bootstrap_ci(x, strata=np.r_[np.zeros(50), np.ones(50)])
    assert lo == hi == 0.5  # within-stratum resampling of constants cannot vary
    lo, hi = bootstrap_ci(x)
    assert lo < 0.5 < hi
    with pytest.raises(ValueError, match="at least one"):
        bootstrap_ci([])
    with pytest.raises(ValueError, match="finite"):
        bootstrap_ci([1.0, np.nan])
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_ci([1.0], confidence=1.0)
