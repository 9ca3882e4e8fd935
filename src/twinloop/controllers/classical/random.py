"""Uniformly random actions: data collection and a baseline.

Each row draws from its own seeded stream, so row ``i``'s actions depend only on its seed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import numpy as np

from twinloop.controllers.base import Controller
from twinloop.core.jit import njit
from twinloop.core.rng import new_streams, seed_streams, uniform

_STREAM = 0


@njit
def _fill_box(rng: np.ndarray, low: np.ndarray, high: np.ndarray, out: np.ndarray) -> None:
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            out[i, j] = low[j] + (high[j] - low[j]) * uniform(rng, i, _STREAM)


@njit
def _fill_discrete(rng: np.ndarray, start: int, n: int, out: np.ndarray) -> None:
    for i in range(out.shape[0]):
        out[i] = start + min(int(uniform(rng, i, _STREAM) * n), n - 1)


class RandomController(Controller):
    """Actions uniform over the action space (a ``Box`` with finite bounds, or ``Discrete``)."""

    name = "random"

    def __init__(
        self,
        observation_space: gym.Space,
        action_space: gym.Space,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        """Check the action space can be sampled uniformly."""
        super().__init__(observation_space, action_space, metadata)
        if isinstance(action_space, gym.spaces.Box):
            if not (np.isfinite(action_space.low).all() and np.isfinite(action_space.high).all()):
                raise ValueError("random controller needs a Box with finite bounds")
            self._low = action_space.low.astype(np.float64).ravel()
            self._high = action_space.high.astype(np.float64).ravel()
        elif not isinstance(action_space, gym.spaces.Discrete):
            raise TypeError(f"random controller supports Box and Discrete, not {action_space}")
        self._rng = new_streams(0)

    def reset(self, n_envs: int, seeds: np.ndarray, mask: np.ndarray | None = None) -> None:
        """Re-seed the streams of the rows that start an episode."""
        if n_envs != self._rng.shape[0]:
            self._rng = new_streams(n_envs)
        super().reset(n_envs, seeds, mask)
        rows = range(n_envs) if mask is None else np.flatnonzero(mask)
        for i in rows:
            seed_streams(self._rng, int(i), int(seeds[i]))

    def act(self, obs: np.ndarray) -> np.ndarray:
        """Uniform actions, one row per observation."""
        n = obs.shape[0]
        if n != self._rng.shape[0]:
            raise ValueError(f"random controller was reset for {self._rng.shape[0]} rows, got {n}")
        space = self.action_space
        if isinstance(space, gym.spaces.Box):
            out = np.empty((n, self._low.size), dtype=np.float64)
            _fill_box(self._rng, self._low, self._high, out)
            return out.reshape(n, *space.shape).astype(space.dtype)
        out_d = np.empty(n, dtype=np.int64)
        _fill_discrete(self._rng, int(space.start), int(space.n), out_d)
        return out_d
