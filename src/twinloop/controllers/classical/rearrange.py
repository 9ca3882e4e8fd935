"""The rearrangement oracle: a planner over the true symbolic state (the upper bound).

It reads the privileged ``true/`` fields of the symbolic observation (world state and goal
atoms) through the env's ``metadata["observation_layout"]``, and the action table from
``metadata``, so it imports no simulator (in ``observation_mode="rgb"``, from the
observation's ``symbolic`` entry). Each step it replans from scratch: with an object in
hand, carry it to the receptacle of a goal atom that still needs its category (navigate, open
the container if closed, place); with an empty hand, fetch an object of the first unmet atom
from wherever it lies (navigate, open, pick). Every spec the generator makes is solvable in
at most 18 actions this way, within LLaRP's 32.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import numpy as np

from twinloop.controllers.base import Controller


class Oracle(Controller):
    """Plans over the true world state and goal of ``twinloop/LangRearrange-v0`` (symbolic)."""

    name = "oracle"
    systems = ("rearrange",)

    def __init__(
        self,
        observation_space: gym.Space,
        action_space: gym.Space,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        """Read the action table and the articulated objects from the env's metadata."""
        super().__init__(observation_space, action_space, metadata)
        table = self.metadata["action_table"]
        self._nav, self._pick, self._place = table["nav"], table["pick"], table["place"]
        self._open, self._noop = table["open"], table["noop"]
        self._art_nav = tuple(self.metadata["articulated_nav"])
        n_rec = int(self.metadata["n_receptacles"])
        self._rec_art = [-1] * n_rec
        for a, r in enumerate(self.metadata["articulated_receptacle"]):
            if r >= 0:
                self._rec_art[r] = a

    def act(self, obs: np.ndarray | Mapping[str, np.ndarray]) -> np.ndarray:
        """One grounded action per row (rgb mode: planned from its ``symbolic`` entry)."""
        obs = np.asarray(obs["symbolic"] if isinstance(obs, Mapping) else obs)
        loc = self.field(obs, "true/robot_location").astype(np.int64)
        held = self.field(obs, "true/held_category").astype(np.int64)
        art = self.field(obs, "true/articulated_open").astype(np.int64)
        ocat = self.field(obs, "true/object_category").astype(np.int64)
        orec = self.field(obs, "true/object_receptacle").astype(np.int64)
        goal = self.field(obs, "true/goal").astype(np.int64)
        out = np.empty(obs.shape[0], dtype=np.int64)
        for i in range(obs.shape[0]):
            out[i] = self._plan(loc[i], held[i], art[i], ocat[i], orec[i], goal[i])
        return out

    def act_one(self, obs: np.ndarray | Mapping[str, np.ndarray]) -> np.ndarray:
        """Action for one observation (symbolic vector or rgb-mode dict)."""
        obs = obs["symbolic"] if isinstance(obs, Mapping) else obs
        return self.act(np.asarray(obs)[None])[0]

    def _go(self, loc: int, r: int, art: np.ndarray, then: int) -> int:
        """Navigate to receptacle ``r``, open it if it is a closed container, then ``then``."""
        if loc != r:
            return self._nav + r
        a = self._rec_art[r]
        if a >= 0 and not art[a]:
            return self._open + a
        return then

    def _plan(
        self,
        loc: int,
        held: int,
        art: np.ndarray,
        ocat: np.ndarray,
        orec: np.ndarray,
        goal: np.ndarray,
    ) -> int:
        unmet = [
            (c, r)
            for c, r, n in goal
            if c >= 0 and int(np.count_nonzero((ocat == c) & (orec == r))) < n
        ]
        if held >= 0:
            targets = [r for c, r in unmet if c == held] or [r for c, r, _ in goal if c == held]
            if not targets:
                return self._noop  # holding something no atom wants (never from the oracle)
            return self._go(loc, targets[0], art, self._place + targets[0])
        for c, r in unmet:
            where = np.flatnonzero((ocat == c) & (orec >= 0) & (orec != r))
            if where.size:
                src = int(orec[where[0]])
                return self._go(loc, src, art, self._pick + c)
        return self._noop
