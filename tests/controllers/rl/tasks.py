"""Tiny tasks for the learning checks: quick to learn, with a known random-policy return."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode

from twinloop.controllers.base import Controller


class PointToOrigin(gym.Env):
    """A point on a line starts at a uniform position in [-1, 1] and is rewarded ``-|x|``.

    The action is a velocity in a Box of [-0.2, 0.2] per step (so an agent must map its
    [-1, 1] output onto the bounds); episodes are truncated after 20 steps. Moving straight
    to the origin returns about -1.1 on average; random actions about -10.
    """

    metadata: dict[str, Any] = {}  # noqa: RUF012

    def __init__(self) -> None:  # noqa: D107
        self.observation_space = gym.spaces.Box(-2.0, 2.0, (1,), np.float32)
        self.action_space = gym.spaces.Box(-0.2, 0.2, (1,), np.float32)
        self._x = 0.0
        self._t = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._x = float(self.np_random.uniform(-1.0, 1.0))
        self._t = 0
        return np.array([self._x], np.float32), {}

    def step(self, action):
        v = float(np.clip(np.asarray(action).ravel()[0], -0.2, 0.2))
        self._x = float(np.clip(self._x + v, -2.0, 2.0))
        self._t += 1
        return np.array([self._x], np.float32), -abs(self._x), False, self._t >= 20, {}


def point_vec(n_envs: int) -> gym.vector.VectorEnv:
    """A SAME_STEP vector env of :class:`PointToOrigin`."""
    return gym.vector.SyncVectorEnv(
        [PointToOrigin for _ in range(n_envs)], autoreset_mode=AutoresetMode.SAME_STEP
    )


def cartpole_vec(n_envs: int) -> gym.vector.VectorEnv:
    """Gymnasium's CartPole as a SAME_STEP vector env (random policy: about 22 per episode)."""
    return gym.make_vec(
        "CartPole-v1",
        num_envs=n_envs,
        vectorization_mode="sync",
        vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP},
    )


class CartPoleTeacher(Controller):
    """A hand-written CartPole policy: push towards where the pole falls.

    Pushes right when ``angle + 0.5 * angular velocity + 0.05 * velocity > 0``: it usually
    holds the pole for the whole 500 steps (random actions: about 22).
    """

    name = "cartpole-teacher"

    def act(self, obs: np.ndarray) -> np.ndarray:
        obs = np.asarray(obs)
        return (obs[:, 2] + 0.5 * obs[:, 3] + 0.05 * obs[:, 1] > 0).astype(np.int64)
