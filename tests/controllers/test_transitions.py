"""Transition extraction, each filter rule, canonicalisation and C3v augmentation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from twinloop.controllers.transitions import (
    NO_HOP,
    RawStep,
    Transitions,
    augment_c3v,
    canonicalize,
    filter_steps,
)

B = 1.42
# neighbours of an A-site Si, lattice rotated by 20 degrees
ANG = math.radians(20)
NBRS = np.array(
    [
        [B * math.cos(ANG + a), B * math.sin(ANG + a)]
        for a in (math.pi / 6, 5 * math.pi / 6, 3 * math.pi / 2)
    ]
)


def _step(disp=(0.0, 0.0), failure=0, nbrs_after=None, beam=(1.0, 0.5), dwell=3.0) -> RawStep:
    goal_before = np.array([[5.0, 1.0]])
    return RawStep(
        nbrs_before=NBRS[None],
        nbrs_after=(NBRS if nbrs_after is None else nbrs_after)[None],
        si_before=np.array([[0.5, -0.2]]),
        goal_before=goal_before,
        goal_after=goal_before - np.asarray(disp)[None],
        command=np.array([[0.5 + beam[0], -0.2 + beam[1], dwell]]),
        failure=np.array([failure]),
        current_na=np.array([0.1]),
        voltage_kv=np.array([60.0]),
    )


def test_no_hop_and_single_hops_are_kept_with_canonical_labels() -> None:
    for k in range(3):
        s = _step(disp=NBRS[k] + 0.1, nbrs_after=-NBRS)
        keep, dropped = filter_steps(s)
        assert keep.all() and sum(dropped.values()) == 0
        t = canonicalize(s, keep)
        assert t.label[0] == k  # NBRS is already in counter-clockwise order from neighbour 0
    t = canonicalize(_step(), filter_steps(_step())[0])
    assert t.label[0] == NO_HOP
    # the beam offset is rotated so neighbour 0 lies on +x, in bond lengths
    rot = -(ANG + math.pi / 6)
    want = (
        np.array(
            [math.cos(rot) * 1.0 - math.sin(rot) * 0.5, math.sin(rot) * 1.0 + math.cos(rot) * 0.5]
        )
        / B
    )
    np.testing.assert_allclose(t.beam[0], want)


@pytest.mark.parametrize(
    ("step", "rule"),
    [
        (_step(failure=1), "failure"),
        (_step(nbrs_after=NBRS * 1.5), "three_fold"),
        (_step(disp=NBRS[0] - NBRS[1]), "single_hop"),  # two hops: second-shell site
        (_step(disp=(0.9, 0.0)), "single_hop"),  # neither stayed nor on a neighbour
        (_step(nbrs_after=NBRS @ np.array([[0, -1], [1, 0]])), "aligned"),  # rotated lattice
        (_step(disp=NBRS[0], nbrs_after=NBRS), "aligned"),  # hop without the sublattice flip
    ],
)
def test_each_exclusion_rule(step: RawStep, rule: str) -> None:
    keep, dropped = filter_steps(step)
    assert not keep.any()
    assert dropped[rule] == 1 and sum(dropped.values()) == 1


def _rate(beam: np.ndarray, k: int) -> np.ndarray:
    """A toy C3v-symmetric rate: a Gaussian around 1.4 bonds along neighbour k's bond."""
    ang = 2 * math.pi / 3 * k
    c = 1.4 * np.array([math.cos(ang), math.sin(ang)])
    return np.exp(-((beam - c) ** 2).sum(-1))


def test_augmentation_produces_the_six_symmetric_images() -> None:
    rng = np.random.default_rng(0)
    t = Transitions(
        rng.normal(size=(5, 2)),
        np.ones(5),
        np.full(5, 0.1),
        np.full(5, 60.0),
        np.array([0, 1, 2, -1, 1]),
    )
    a = augment_c3v(t)
    assert len(a) == 30
    # every image keeps the rate of the labelled neighbour (the physics is C3v-symmetric)
    for row in range(len(a)):
        src = row % 5
        if t.label[src] >= 0:
            assert _rate(a.beam[row], a.label[row]) == pytest.approx(
                _rate(t.beam[src], t.label[src])
            )
    np.testing.assert_array_equal(a.label[a.label < 0].size, 6)
    # the six images of a beam are distinct points at the same distance from the Si
    r = np.linalg.norm(a.beam.reshape(6, 5, 2), axis=-1)
    np.testing.assert_allclose(r, np.broadcast_to(r[0], r.shape))
