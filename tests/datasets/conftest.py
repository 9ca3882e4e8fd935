"""Shared helpers: a small synthetic env with dict/image/text observations, and env factories."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest

import twinloop

STEM = "twinloop/StemSteer-v0"


class ToyEnv(gym.Env):
    """Dict observations with an image, a vector and text; Discrete actions; nested infos.

    Episodes last 3-12 steps (drawn at reset); every value is a function of the seed and the
    actions, so two instances with the same seed and actions agree exactly.
    """

    metadata = {"render_modes": []}  # noqa: RUF012

    def __init__(self, image_shape: tuple[int, ...] = (32, 32, 3)) -> None:  # noqa: D107
        self.observation_space = gym.spaces.Dict(
            {
                "image": gym.spaces.Box(0, 255, image_shape, np.uint8),
                "state": gym.spaces.Box(-1.0, 1.0, (3,), np.float32),
                "note": gym.spaces.Text(max_length=8),
            }
        )
        self.action_space = gym.spaces.Discrete(4)
        self._t = 0
        self._len = 0
        self._x = np.zeros(3, np.float32)

    def _obs(self) -> dict[str, Any]:
        img = np.zeros(self.observation_space["image"].shape, np.uint8)
        img.reshape(img.shape[0], img.shape[1], -1)[..., 0] = (
            np.arange(img.shape[1]) * 7 + self._t * 13
        ) % 256
        img[self._t % img.shape[0]] = 200
        note = "ab" * (1 + self._t % 3) if self._t % 2 else f"t{self._t}"
        return {"image": img, "state": self._x.copy(), "note": note}

    def _info(self) -> dict[str, Any]:
        return {
            "count": self._t,
            "pos": self._x.astype(np.float64) * 2,
            "flag": bool(self._t % 2),
            "reward": {"a": float(self._t) / 10, "b": -1.0},
            "label": "not-a-number",
        }

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._t = 0
        self._len = int(self.np_random.integers(3, 13))
        self._x = self.np_random.uniform(-1, 1, 3).astype(np.float32)
        return self._obs(), self._info()

    def step(self, action):
        self._t += 1
        self._x = np.clip(self._x + 0.1 * (int(action) - 1.5), -1, 1).astype(np.float32)
        reward = float(self._x.sum()) + 0.01 * self._t
        terminated = bool(self._x[0] >= 1.0) and self._t < self._len
        truncated = self._t >= self._len and not terminated
        return self._obs(), reward, terminated, truncated, self._info()


@pytest.fixture
def toy_env() -> ToyEnv:
    return ToyEnv()


def stem_env() -> gym.Env:
    return twinloop.make(STEM)


def run_episodes(env: gym.Env, n: int, seed: int, action_seed: int = 0) -> list[dict[str, Any]]:
    """Run ``n`` episodes (seeded ``seed + k``) and return what the env produced."""
    env.action_space.seed(action_seed)
    out = []
    for k in range(n):
        obs, info = env.reset(seed=seed + k)
        ep: dict[str, Any] = {"obs": [obs], "actions": [], "rewards": [], "term": [], "trunc": []}
        ep["infos"] = [info]
        while True:
            action = env.action_space.sample()
            obs, reward, term, trunc, info = env.step(action)
            ep["obs"].append(obs)
            ep["actions"].append(action)
            ep["rewards"].append(reward)
            ep["term"].append(term)
            ep["trunc"].append(trunc)
            ep["infos"].append(info)
            if term or trunc:
                break
        out.append(ep)
    return out
