"""The rate model: loss in closed form, symmetric predictions, persistence, and learning."""

from __future__ import annotations

import math

import numpy as np
import pytest

from twinloop.controllers.rates import RateModel, RateTrainingConfig, survival_loss, train
from twinloop.controllers.transitions import _ROT120, Transitions


def test_survival_loss_closed_form() -> None:
    # no hop in dt: the likelihood is exp(-L dt) -> loss L dt
    loss = survival_loss(np.array([0.2]), np.array([3.0]), np.array([False]))
    assert loss[0] == pytest.approx(0.6)
    # a hop: 1 - exp(-L dt) -> loss -log(1 - exp(-0.6))
    want = -math.log(1 - math.exp(-0.6))
    loss = survival_loss(np.array([0.2]), np.array([3.0]), np.array([True]))
    assert loss[0] == pytest.approx(want)
    # minimised at the true rate: for k hops out of n dwells of dt, L* = -log(1 - k/n) / dt
    lam = np.linspace(0.01, 1.0, 2000)
    hopped = np.array([True] * 30 + [False] * 70)
    total = [survival_loss(np.full(100, x), np.full(100, 2.0), hopped).sum() for x in lam]
    assert lam[int(np.argmin(total))] == pytest.approx(-math.log(0.7) / 2.0, rel=0.01)


def _toy_data(n: int, seed: int = 0) -> Transitions:
    """Sample transitions from a known C3v rate law (peak 0.15/s at 1.4 bonds, width 0.3)."""
    rng = np.random.default_rng(seed)
    beam = rng.uniform(-2.2, 2.2, size=(n, 2))
    rates = np.stack(
        [
            0.15
            * np.exp(
                -((beam - 1.4 * np.array([math.cos(a), math.sin(a)])) ** 2).sum(-1) / (2 * 0.3**2)
            )
            for a in (0.0, 2 * math.pi / 3, 4 * math.pi / 3)
        ],
        axis=1,
    )
    dwell = rng.uniform(1.0, 20.0, n)
    total = rates.sum(1)
    hop = rng.random(n) < 1 - np.exp(-total * dwell)
    which = np.array([rng.choice(3, p=r / r.sum()) if r.sum() > 0 else 0 for r in rates])
    label = np.where(hop, which, -1)
    return Transitions(beam, dwell, np.full(n, 0.1), np.full(n, 60.0), label)


@pytest.fixture(scope="module")
def model() -> RateModel:
    return train(_toy_data(3000), RateTrainingConfig(steps=800, ensemble=2))


def test_learned_optimum_and_symmetry(model: RateModel, tmp_path) -> None:
    opt, peak = model.optimum(0.1, 60.0)
    assert np.hypot(*(opt / 1.42 - [1.4, 0.0])) < 0.15
    assert 0.08 < peak < 0.25
    b = np.random.default_rng(1).normal(size=(20, 2))
    r0 = model.mean_rates(b, 0.1, 60.0)
    np.testing.assert_allclose(
        model.mean_rates(b @ _ROT120.T, 0.1, 60.0)[:, [1, 2, 0]], r0, atol=1e-12
    )
    np.testing.assert_allclose(
        model.mean_rates(b * [1, -1], 0.1, 60.0)[:, [0, 2, 1]], r0, atol=1e-12
    )
    model.save(tmp_path / "m.npz")
    again = RateModel.load(tmp_path / "m.npz")
    np.testing.assert_array_equal(again.mean_rates(b, 0.1, 60.0), r0)
    assert again.info["transitions"] == 3000


def test_training_rejects_too_little_data() -> None:
    with pytest.raises(ValueError, match="at least 10 transitions"):
        train(_toy_data(5))
