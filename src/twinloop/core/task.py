"""The Task protocol: what the controller sees and is rewarded for, shared by sim and hardware.

A task turns a backend's measurement into an observation, a controller's action into a device
command, and a measurement after a command into reward terms and termination. It never sees
privileged simulator state, so the reward that an experiment reports on hardware is computed
by the same code as in training.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import gymnasium as gym
import numpy as np


@dataclasses.dataclass
class TaskStep:
    """What a task returns for one step.

    Attributes:
        observation: The controller's next observation.
        terms: Raw (unscaled) reward terms by name; the env sums ``scale * term``.
        terminated: The episode reached a terminal state (success or failure).
        truncated: The episode was cut (step limit) without reaching a terminal state.
        info: Task-level diagnostics (no privileged state).
    """

    observation: Any
    terms: dict[str, float]
    terminated: bool
    truncated: bool
    info: dict[str, Any]


@runtime_checkable
class Task(Protocol):
    """Observation, command, reward and termination, from measurements only."""

    observation_space: gym.Space
    action_space: gym.Space
    #: One label per action element (with units), used in error messages.
    action_labels: tuple[str, ...]
    #: Reward scales by term name, in the order in which terms are summed.
    reward_scales: Mapping[str, float]

    def reset(
        self, measurement: np.ndarray, seed: int | None, options: dict[str, Any] | None
    ) -> tuple[Any, dict[str, Any]]:
        """Start an episode from the first measurement; return ``(observation, info)``."""
        ...

    def command(self, action: Any, measurement: np.ndarray) -> np.ndarray:
        """Turn a (validated) action into a device command, given the last measurement."""
        ...

    def step(self, measurement: np.ndarray, applied_command: np.ndarray) -> TaskStep:
        """Score the measurement that followed ``applied_command``."""
        ...


def total_reward(scales: Mapping[str, float], terms: Mapping[str, float]) -> tuple[float, dict]:
    """Sum ``scale * term`` in the order of ``scales``; return ``(reward, {"reward/k": ...})``.

    Batched kernels sum in the same order, so single and vector envs agree to the last bit.
    """
    reward = 0.0
    parts: dict[str, float] = {}
    for name, scale in scales.items():
        contribution = float(scale) * float(terms[name])
        parts[f"reward/{name}"] = contribution
        reward += contribution
    return reward, parts
