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


class BrightQuadrant(gym.Env):
    """A one-step image task: a bright square lies in one of the four quadrants of a 12x12 frame.

    The observation is a uint8 ``(12, 12, 1)`` image (dim noise everywhere, a 3x3 square of
    200-255 at a random place inside one quadrant); the action names a quadrant (0: top left,
    1: top right, 2: bottom left, 3: bottom right) and earns 1 if it is the square's, else 0;
    every episode ends after that one step. A random policy earns 0.25 per episode; only an
    encoder that looks at the image can do better.
    """

    metadata: dict[str, Any] = {}  # noqa: RUF012
    SIZE = 12

    def __init__(self) -> None:  # noqa: D107
        self.observation_space = gym.spaces.Box(0, 255, (self.SIZE, self.SIZE, 1), np.uint8)
        self.action_space = gym.spaces.Discrete(4)
        self._quadrant = 0
        self._image = np.zeros((self.SIZE, self.SIZE, 1), np.uint8)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        rng = self.np_random
        self._quadrant = int(rng.integers(4))
        half = self.SIZE // 2
        img = rng.integers(0, 40, (self.SIZE, self.SIZE, 1)).astype(np.uint8)
        y = (self._quadrant // 2) * half + int(rng.integers(0, half - 2))
        x = (self._quadrant % 2) * half + int(rng.integers(0, half - 2))
        img[y : y + 3, x : x + 3] = rng.integers(200, 256, (3, 3, 1))
        self._image = img
        return img.copy(), {}

    def step(self, action):
        reward = float(int(action) == self._quadrant)
        return self._image.copy(), reward, True, False, {}


def quadrant_vec(n_envs: int) -> gym.vector.VectorEnv:
    """A SAME_STEP vector env of :class:`BrightQuadrant`."""
    return gym.vector.SyncVectorEnv(
        [BrightQuadrant for _ in range(n_envs)], autoreset_mode=AutoresetMode.SAME_STEP
    )
