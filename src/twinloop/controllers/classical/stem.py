"""Classical controllers of the STEM task.

``greedy-neighbor``: park the beam on the C neighbour nearest the goal (the field's simplest
manipulation strategy, used as a baseline in Schwarzer et al., arXiv:2311.17894, and the
Vienna manipulation plug-in, which parks on the target C).
"""

from __future__ import annotations

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
