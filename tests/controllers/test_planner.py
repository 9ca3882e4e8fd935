"""Planner geometry: shortest lattice paths, detours around holes."""

from __future__ import annotations

import math

import numpy as np

from twinloop.controllers.classical.stem import next_hop

B = 1.42
NBRS = np.array(
    [[B * math.cos(a), B * math.sin(a)] for a in (math.pi / 6, 5 * math.pi / 6, 3 * math.pi / 2)]
)
NO_HOLES = np.zeros((0, 3))


def test_first_hop_points_towards_a_straight_goal() -> None:
    for k in range(3):
        assert next_hop(NBRS, NBRS[k] * 5, NO_HOLES) == k


def test_path_detours_around_a_hole() -> None:
    goal = NBRS[0] * 6  # straight up the bond direction of neighbour 0 ...
    hole = np.array([[*(NBRS[0] * 2.5), 2.0]])  # ... but a hole sits on that line
    k = next_hop(NBRS, goal, hole)
    assert k != 0
    # following the plan step by step never puts the Si next to the hole and reaches the goal
    pos, nb = np.zeros(2), NBRS.copy()
    for _ in range(40):
        if np.hypot(*(goal - pos)) < 0.71:
            break
        k = next_hop(nb, goal - pos, hole - np.array([*pos, 0.0]))
        pos = pos + nb[k]
        nb = -nb
        for n in nb:
            assert np.hypot(*(pos + n - hole[0, :2])) >= hole[0, 2]
    assert np.hypot(*(goal - pos)) < 0.71


def test_no_path_falls_back_to_the_nearest_neighbour() -> None:
    walled = np.array([[0.0, 0.0, 50.0]])  # everything is a hole
    assert next_hop(NBRS, NBRS[2] * 4, walled) == 2
