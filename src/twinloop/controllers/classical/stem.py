"""Controllers of the STEM task.

``greedy-neighbor``: park the beam on the C neighbour nearest the goal (the field's simplest
manipulation strategy, used as a baseline in Schwarzer et al., arXiv:2311.17894, and the
Vienna manipulation plug-in, which parks on the target C). ``greedy-learned``: park at the
learned rate optimum rotated onto that bond (the paper's deployed controller). ``planner``:
a shortest lattice path around known holes, each hop driven by the beam spot and dwell that
maximise the chance of the intended hop per unit microscope time under the learned model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import numpy as np

from twinloop.controllers.base import Controller


def nearest_neighbor_to_goal(neighbors: np.ndarray, goal: np.ndarray) -> np.ndarray:
    """Index (per row) of the neighbour offset nearest the goal offset.

    Args:
        neighbors: ``(n, 3, 2)`` neighbour offsets relative to the Si (A).
        goal: ``(n, 2)`` goal offsets relative to the Si (A).
    """
    d2 = ((neighbors - goal[:, None, :]) ** 2).sum(axis=-1)
    return d2.argmin(axis=1)


class StemBeamController(Controller):
    """Base of STEM controllers that choose a beam spot relative to the Si.

    Subclasses implement :meth:`beam_offsets`; this class turns offsets into actions for the
    env's action mode (offset or absolute, with or without dwell).

    Args:
        observation_space: The env's observation space.
        action_space: The env's action space.
        metadata: The env's metadata.
        dwell_s: Dwell used when the action includes one (clipped to the action bounds).
    """

    systems = ("stem",)

    def __init__(
        self,
        observation_space: gym.Space,
        action_space: gym.Space,
        metadata: Mapping[str, Any] | None = None,
        dwell_s: float = 5.0,
    ) -> None:
        """Read the action mode from the env's metadata."""
        super().__init__(observation_space, action_space, metadata)
        self.absolute = self.metadata.get("action_mode") == "absolute"
        self.with_dwell = bool(self.metadata.get("action_dwell", False))
        self.dwell_s = float(dwell_s)

    def beam_offsets(self, obs: np.ndarray) -> np.ndarray:
        """Beam positions relative to the Si, ``(n, 2)`` in A."""
        raise NotImplementedError

    def act(self, obs: np.ndarray) -> np.ndarray:
        """Actions that park the beam at :meth:`beam_offsets`."""
        offsets = self.beam_offsets(obs)
        if self.absolute:
            offsets = offsets + self.field(obs, "si_position_angstrom")
        cols = [offsets]
        if self.with_dwell:
            cols.append(np.full((obs.shape[0], 1), self.dwell_s))
        actions = np.concatenate(cols, axis=1)
        space = self.action_space
        return np.clip(actions, space.low, space.high).astype(space.dtype)


class GreedyNeighbor(StemBeamController):
    """Park the beam on the C neighbour nearest the goal."""

    name = "greedy-neighbor"

    def beam_offsets(self, obs: np.ndarray) -> np.ndarray:
        """The offset of the chosen neighbour itself."""
        nbrs = self.field(obs, "neighbor_offsets_angstrom").astype(np.float64)
        goal = self.field(obs, "goal_offset_angstrom").astype(np.float64)
        k = nearest_neighbor_to_goal(nbrs, goal)
        return nbrs[np.arange(obs.shape[0]), k]


def _rotation(angles: np.ndarray) -> np.ndarray:
    """``(n, 2, 2)`` rotation matrices."""
    c, s = np.cos(angles), np.sin(angles)
    return np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)


class _LearnedModelController(StemBeamController):
    """Base of controllers that use a learned rate model (``model=`` path or object)."""

    def __init__(
        self,
        observation_space: gym.Space,
        action_space: gym.Space,
        metadata: Mapping[str, Any] | None = None,
        model: Any = None,
        current_na: float | None = None,
        voltage_kv: float | None = None,
        dwell_s: float = 5.0,
    ) -> None:
        """Load the model; current and voltage default to the env's config in ``metadata``."""
        super().__init__(observation_space, action_space, metadata, dwell_s=dwell_s)
        from twinloop.controllers.rates import RateModel

        if model is None:
            raise ValueError(f"controller {self.name!r} needs a trained rate model (model=PATH)")
        self.model = model if isinstance(model, RateModel) else RateModel.load(model)
        beam = self.metadata.get("beam", {})
        self.current_na = float(
            current_na if current_na is not None else beam.get("current_na", 0.1)
        )
        self.voltage_kv = float(
            voltage_kv if voltage_kv is not None else beam.get("voltage_kv", 60.0)
        )
        self.optimum_angstrom, self.peak_rate = self.model.optimum(self.current_na, self.voltage_kv)

    def _offsets_towards(
        self, nbrs: np.ndarray, k: np.ndarray, canonical: np.ndarray
    ) -> np.ndarray:
        """Rotate a canonical-frame beam offset onto the bond towards neighbour ``k``."""
        target = nbrs[np.arange(nbrs.shape[0]), k]
        rot = _rotation(np.arctan2(target[:, 1], target[:, 0]))
        return np.einsum("nij,j->ni", rot, canonical)


class GreedyLearned(_LearnedModelController):
    """Park the beam at the learned rate optimum, rotated onto the bond nearest the goal.

    The strategy of Schwarzer et al. (arXiv:2311.17894): choose the neighbour nearest the goal,
    park at the learned optimum for that neighbour, dwell, image, repeat.
    """

    name = "greedy-learned"

    def beam_offsets(self, obs: np.ndarray) -> np.ndarray:
        """The learned optimum rotated onto the bond towards the neighbour nearest the goal."""
        nbrs = self.field(obs, "neighbor_offsets_angstrom").astype(np.float64)
        goal = self.field(obs, "goal_offset_angstrom").astype(np.float64)
        k = nearest_neighbor_to_goal(nbrs, goal)
        return self._offsets_towards(nbrs, k, self.optimum_angstrom)


class Planner(_LearnedModelController):
    """Shortest lattice path to the goal around known holes, executed hop by hop.

    Each step plans a breadth-first shortest path over lattice sites from the Si to the site
    nearest the goal, avoiding sites next to a known hole (an Si there would sit at an edge),
    and drives the first hop of the path with the beam spot and dwell that maximise the chance
    of that hop, and no other, per second of microscope time:
    ``lambda_k / Lambda (1 - exp(-Lambda t)) / (t + overhead)`` under the learned rates.

    Args:
        overhead_s: Microscope time per step besides the dwell (settle + frame).
        max_sites: Search limit of the path search.
    """

    name = "planner"

    def __init__(
        self,
        observation_space: gym.Space,
        action_space: gym.Space,
        metadata: Mapping[str, Any] | None = None,
        model: Any = None,
        current_na: float | None = None,
        voltage_kv: float | None = None,
        dwell_s: float = 5.0,
        overhead_s: float | None = None,
        max_sites: int = 20000,
    ) -> None:
        """Choose the beam spot and dwell of a hop once (the rates are C3v-symmetric)."""
        super().__init__(
            observation_space, action_space, metadata, model, current_na, voltage_kv, dwell_s
        )
        timing = self.metadata.get("timing", {})
        self.overhead_s = float(
            overhead_s
            if overhead_s is not None
            else timing.get("settle_s", 2.0) + timing.get("frame_s", 3.0)
        )
        self.max_sites = int(max_sites)
        self.hop_spot, self.hop_dwell_s, self.hop_probability = self._best_hop()

    def _best_hop(self) -> tuple[np.ndarray, float, float]:
        from twinloop.controllers.transitions import BOND_ANGSTROM

        g = np.linspace(-2.5, 2.5, 81)
        xx, yy = np.meshgrid(g, g)
        beam = np.column_stack([xx.ravel(), yy.ravel()])
        rates = self.model.mean_rates(beam, self.current_na, self.voltage_kv)
        total = rates.sum(axis=1)
        if self.with_dwell:
            space = self.action_space
            dwells = np.geomspace(float(space.low[2]), float(space.high[2]), 40)
        else:
            dwells = np.array([float(self.metadata.get("timing", {}).get("dwell_s", 3.0))])
        p_first = rates[:, 0] / np.maximum(total, 1e-12)
        p_any = -np.expm1(-np.outer(total, dwells))
        score = p_first[:, None] * p_any / (dwells[None, :] + self.overhead_s)
        i, j = np.unravel_index(int(np.argmax(score)), score.shape)
        offset = beam[i] * BOND_ANGSTROM
        # keep the spot inside the action's offset box
        if not self.absolute:
            offset = np.clip(offset, self.action_space.low[:2], self.action_space.high[:2])
        return offset, float(dwells[j]), float(p_first[i] * p_any[i, j])

    def act(self, obs: np.ndarray) -> np.ndarray:
        """Beam spot and dwell of the next hop on the planned path."""
        nbrs = self.field(obs, "neighbor_offsets_angstrom").astype(np.float64)
        goal = self.field(obs, "goal_offset_angstrom").astype(np.float64)
        holes = (
            self.field(obs, "hole_offsets_angstrom").astype(np.float64)
            if "hole_offsets_angstrom" in self.metadata.get("observation_layout", {})
            else np.zeros((obs.shape[0], 0, 3))
        )
        k = np.array(
            [next_hop(nbrs[i], goal[i], holes[i], self.max_sites) for i in range(obs.shape[0])]
        )
        offsets = self._offsets_towards(nbrs, k, self.hop_spot)
        if self.absolute:
            offsets = offsets + self.field(obs, "si_position_angstrom")
        cols = [offsets]
        if self.with_dwell:
            cols.append(np.full((obs.shape[0], 1), self.hop_dwell_s))
        space = self.action_space
        return np.clip(np.concatenate(cols, axis=1), space.low, space.high).astype(space.dtype)


def next_hop(nbrs: np.ndarray, goal: np.ndarray, holes: np.ndarray, max_sites: int = 20000) -> int:
    """First hop (neighbour index) of a shortest lattice path from the Si to the goal site.

    Sites are ``m u + q w + p n0`` relative to the Si, with ``u = n0 - n1``, ``w = n0 - n2``
    (lattice vectors) and ``p`` the sublattice (0: the Si's). From a ``p = 0`` site the
    neighbours are ``+n_k``; from a ``p = 1`` site, ``-n_k``. A site is usable when it and its
    three neighbours lie outside every hole (``(dx, dy, radius)`` rows, radius 0 = none).
    Falls back to the neighbour nearest the goal when no path is found within ``max_sites``.
    """
    from collections import deque

    n0 = nbrs[0]
    u, w = nbrs[0] - nbrs[1], nbrs[0] - nbrs[2]
    active = holes[holes[:, 2] > 0] if holes.size else np.zeros((0, 3))

    def pos(m: int, q: int, p: int) -> np.ndarray:
        return m * u + q * w + p * n0

    def missing(x: np.ndarray) -> bool:
        if not active.shape[0]:
            return False
        return bool((np.hypot(active[:, 0] - x[0], active[:, 1] - x[1]) < active[:, 2]).any())

    moves = {0: [(0, 0), (-1, 0), (0, -1)], 1: [(0, 0), (1, 0), (0, 1)]}

    def neighbours(m: int, q: int, p: int) -> list[tuple[int, int, int, int]]:
        return [(m + dm, q + dl, 1 - p, k) for k, (dm, dl) in enumerate(moves[p])]

    def usable(m: int, q: int, p: int) -> bool:
        if missing(pos(m, q, p)):
            return False
        return not any(missing(pos(a, b, c)) for a, b, c, _ in neighbours(m, q, p))

    # the goal site: the lattice site nearest the goal offset
    best, target = math.inf, (0, 0, 0)
    det = u[0] * w[1] - u[1] * w[0]
    for p in (0, 1):
        r = goal - p * n0
        a = (r[0] * w[1] - r[1] * w[0]) / det
        b = (u[0] * r[1] - u[1] * r[0]) / det
        for m in (math.floor(a), math.floor(a) + 1):
            for q in (math.floor(b), math.floor(b) + 1):
                d = float(np.hypot(*(pos(m, q, p) - goal)))
                if d < best:
                    best, target = d, (m, q, p)
    fallback = int(nearest_neighbor_to_goal(nbrs[None], goal[None])[0])
    if target == (0, 0, 0):
        return fallback
    first: dict[tuple[int, int, int], int] = {}
    queue: deque[tuple[int, int, int]] = deque()
    for a, b, c, k in neighbours(0, 0, 0):
        if usable(a, b, c):
            first[(a, b, c)] = k
            queue.append((a, b, c))
    while queue and len(first) < max_sites:
        site = queue.popleft()
        if site == target:
            return first[site]
        for a, b, c, _ in neighbours(*site):
            if (a, b, c) not in first and (a, b, c) != (0, 0, 0) and usable(a, b, c):
                first[(a, b, c)] = first[site]
                queue.append((a, b, c))
    return fallback
