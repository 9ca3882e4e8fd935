"""The per-env random streams: reproducible, uniform, independent between streams and seeds."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from twinloop.core.rng import fill_uniform, new_streams, seed_streams, stream_state


def _draw(seed: int, stream: int, n: int) -> np.ndarray:
    rng = new_streams(1)
    seed_streams(rng, 0, seed)
    out = np.empty(n)
    fill_uniform(rng, 0, stream, out)
    return out


def test_same_seed_same_numbers_and_streams_differ() -> None:
    a, b = _draw(7, 0, 1000), _draw(7, 0, 1000)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(_draw(7, 0, 1000), _draw(7, 1, 1000))
    assert not np.array_equal(_draw(7, 0, 1000), _draw(8, 0, 1000))


def test_uniform_distribution() -> None:
    x = _draw(1, 0, 200_000)
    assert ((x > 0) & (x <= 1)).all()
    counts, _ = np.histogram(x, bins=100, range=(0, 1))
    assert stats.chisquare(counts).pvalue > 1e-4
    assert stats.kstest(x, "uniform").pvalue > 1e-4


def test_neighbouring_seeds_are_uncorrelated() -> None:
    """Vector env i is seeded s + i: consecutive seeds must give independent streams."""
    draws = np.array([_draw(100 + k, 0, 20_000) for k in range(8)])
    corr = np.corrcoef(draws)
    off = corr[~np.eye(8, dtype=bool)]
    assert np.abs(off).max() < 0.04  # ~5.6 sigma for n = 20000
    # and successive outputs within one stream are uncorrelated
    x = draws[0]
    assert abs(np.corrcoef(x[:-1], x[1:])[0, 1]) < 0.03


def test_stream_state_rejects_bad_seeds() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        stream_state(-1, 0)
    with pytest.raises(ValueError, match="non-negative"):
        stream_state(True, 0)  # type: ignore[arg-type]
    assert stream_state(3, 0)[1] % 2 == 1, "the SplitMix64 increment must be odd"


def test_normal_pairs_are_independent_standard_normals() -> None:
    from twinloop.core.jit import njit
    from twinloop.core.rng import normal_pair

    @njit
    def draw(rng: np.ndarray, n: int) -> np.ndarray:
        out = np.empty((n, 2))
        for j in range(n):
            out[j, 0], out[j, 1] = normal_pair(rng, 0, 0)
        return out

    rng = new_streams(1)
    seed_streams(rng, 0, 5)
    x = draw(rng, 100_000)
    for col in (x[:, 0], x[:, 1]):
        assert stats.kstest(col, "norm").pvalue > 1e-4
    assert abs(np.corrcoef(x[:, 0], x[:, 1])[0, 1]) < 0.02
