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


def _draws(kind: str, n: int, seed: int) -> np.ndarray:
    from twinloop.core.jit import njit
    from twinloop.core.rng import normal, standard_exponential

    @njit
    def draw_exp(rng: np.ndarray, n: int) -> np.ndarray:
        out = np.empty(n)
        for j in range(n):
            out[j] = standard_exponential(rng, 0, 0)
        return out

    @njit
    def draw_norm(rng: np.ndarray, n: int) -> np.ndarray:
        out = np.empty(n)
        for j in range(n):
            out[j] = normal(rng, 0, 0)
        return out

    rng = new_streams(1)
    seed_streams(rng, 0, seed)
    return (draw_exp if kind == "exp" else draw_norm)(rng, n)


def test_ziggurat_layers_have_equal_areas_and_close_at_the_top() -> None:
    """Every layer of both ziggurats has the same area (Marsaglia & Tsang 2000, eq. 1-2).

    The base layer is the rectangle [0, r] x [0, f(r)] plus the tail beyond r; layer i >= 1
    is the rectangle [0, x_i] x [f(x_i), f(x_{i+1})]; the top layer ends at f(0) = 1.
    """
    import math

    from twinloop.core import rng as R

    for x, f, tail in (
        (R._ZE_X, R._ZE_F, math.exp(-R._ZE_R)),
        (R._ZN_X, R._ZN_F, math.sqrt(math.pi / 2) * math.erfc(R._ZN_R / math.sqrt(2))),
    ):
        base = x[1] * f[1] + tail
        layers = x[1:-1] * (f[2:] - f[1:-1])
        np.testing.assert_allclose(layers, base, rtol=1e-9)
        assert x[-1] == 0.0 and f[-1] == 1.0
        assert np.all(np.diff(x[1:]) < 0)


@pytest.mark.parametrize("seed", [1, 2])
def test_ziggurat_exponential_is_exp1_including_the_tail(seed: int) -> None:
    """The ziggurat's exponential passes a KS test against Exp(1), tail included.

    200,000 draws; the tail beyond r = 7.697 (probability e^-r = 4.5e-4, ~91 draws) has the
    right frequency and is itself Exp(1) beyond r.
    """
    x = _draws("exp", 200_000, seed)
    assert x.min() >= 0.0
    assert stats.kstest(x, "expon").pvalue > 1e-4
    tail = x[x > 7.69711747013104972]
    expected = 200_000 * np.exp(-7.69711747013104972)
    assert abs(tail.size - expected) < 5 * np.sqrt(expected)
    assert stats.kstest(tail - 7.69711747013104972, "expon").pvalue > 1e-4


@pytest.mark.parametrize("seed", [1, 2])
def test_ziggurat_normal_is_standard_normal_including_the_tails(seed: int) -> None:
    """The ziggurat's normal passes a KS test against N(0, 1), tails included.

    200,000 draws; symmetric signs; the tails beyond |x| > 3.654 (probability 2.6e-4) have
    the right frequency and the right conditional distribution.
    """
    x = _draws("norm", 200_000, seed)
    assert stats.kstest(x, "norm").pvalue > 1e-4
    assert abs(np.mean(x > 0) - 0.5) < 5 * np.sqrt(0.25 / x.size)
    r = 3.6541528853610088
    expected = x.size * 2 * stats.norm.sf(r)
    n_tail = int(np.sum(np.abs(x) > r))
    assert abs(n_tail - expected) < 5 * np.sqrt(expected)
    beyond = np.abs(x[np.abs(x) > r])
    # conditional tail distribution: P(|X| > t | |X| > r) = sf(t) / sf(r)
    cdf = lambda t: 1.0 - stats.norm.sf(t) / stats.norm.sf(r)  # noqa: E731
    assert stats.kstest(beyond, cdf).pvalue > 1e-4
