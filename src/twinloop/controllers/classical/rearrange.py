"""The rearrangement oracle: a planner over the true symbolic state (the upper bound).

It reads the privileged ``true/`` fields of the symbolic observation (world state and goal
atoms) through the env's ``metadata["observation_layout"]``, and the action table from
``metadata``, so it imports no simulator (in ``observation_mode="rgb"``, from the
observation's ``symbolic`` entry). Each step it replans from scratch: with an object in
hand, carry it to the receptacle of a goal atom that still needs its category (navigate, open
the container if closed, place), or, for an atom "none of it on r", to the receptacle other
than ``r`` that holds the fewest objects (it always has room); with an empty hand, work on the
first unmet atom: fetch an object of its category from wherever it lies (navigate, open,
pick), go to the receptacle that holds one ("find"), go to the navigation target ("go to"),
or go to an articulated object and open or close it. Every spec the generator makes is
solvable in at most 18 actions this way, within LLaRP's 32.

The goal atoms' codes (:data:`GOAL_ARTICULATED`, :data:`GOAL_AT`, :data:`GOAL_HERE`) are the
task's (``twinloop.sim.rearrange.episodes``; a test checks that they agree).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import numpy as np

from twinloop.controllers.base import Controller

#: Goal-atom codes: category column (an articulated object's state; the robot's location) and
#: place column (the receptacle the robot is at).
GOAL_ARTICULATED = -2
GOAL_AT = -3
GOAL_HERE = -2


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
        self._open, self._close, self._noop = table["open"], table["close"], table["noop"]
        self._art_nav = tuple(self.metadata["articulated_nav"])
        n_rec = self._n_rec = int(self.metadata["n_receptacles"])
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
            (int(c), int(p), int(n))
            for c, p, n in goal
            if c != -1 and not self._holds(int(c), int(p), int(n), loc, art, ocat, orec)
        ]
        if held >= 0:
            for c, p, n in unmet:
                if c == held and p >= 0 and n > 0:
                    return self._go(loc, p, art, self._place + p)
            for c, p, n in goal:  # none of it on p: the hand must still put it down
                if c == held and p >= 0 and n == 0:
                    drop = self._drop(int(p), ocat, orec)
                    return self._go(loc, drop, art, self._place + drop)
            for c, p, n in goal:  # an atom that is met: put it back there
                if c == held and p >= 0 and n > 0:
                    return self._go(loc, int(p), art, self._place + int(p))
            return self._noop  # holding something no atom wants (never from the oracle)
        for c, p, n in unmet:
            if c == GOAL_AT:
                return self._nav + p
            if c == GOAL_ARTICULATED:
                if loc != self._art_nav[p]:
                    return self._nav + self._art_nav[p]
                return (self._open if n == 1 else self._close) + p
            if p == GOAL_HERE:
                where = np.flatnonzero((ocat == c) & (orec >= 0))
                if where.size:
                    return self._nav + int(orec[where[0]])
                continue
            if n == 0:  # none of c on p: take one away
                return self._go(loc, p, art, self._pick + c)
            where = np.flatnonzero((ocat == c) & (orec >= 0) & (orec != p))
            if where.size:
                src = int(orec[where[0]])
                return self._go(loc, src, art, self._pick + c)
        return self._noop

    @staticmethod
    def _holds(
        c: int, p: int, n: int, loc: int, art: np.ndarray, ocat: np.ndarray, orec: np.ndarray
    ) -> bool:
        """Whether goal atom ``(c, p, n)`` holds (the hand's emptiness aside)."""
        if c == GOAL_ARTICULATED:
            return int(art[p]) == n
        if c == GOAL_AT:
            return loc == p
        if p == GOAL_HERE:
            return loc >= 0 and int(np.count_nonzero((ocat == c) & (orec == loc))) >= n
        on = int(np.count_nonzero((ocat == c) & (orec == p)))
        return on == 0 if n == 0 else on >= n

    def _drop(self, p: int, ocat: np.ndarray, orec: np.ndarray) -> int:
        """The receptacle other than ``p`` that holds the fewest objects (the first of ties).

        The generator puts clutter on open receptacles only, so a container other than
        ``p`` holds at most the task's few objects, fewer than any capacity (4 or more).
        """
        counts = np.bincount(orec[orec >= 0], minlength=self._n_rec)
        counts[p] = np.iinfo(counts.dtype).max
        return int(np.argmin(counts))
