"""TwinEnv: a ``gymnasium.Env`` made of Task x Backend x Safety.

Data flow of one step::

    action --check_action--> applied_action --task.command--> command
        --safety.filter--> clipped command --backend.apply--> (measurement, applied_command)
        --task.step--> observation, reward terms, terminated, truncated

Swapping ``backend="sim"`` for ``backend="remote"`` or a vendor adapter changes only the
backend object; the task, the safety layer and this loop are the same code.
"""

from __future__ import annotations

import logging
from typing import Any

import gymnasium as gym
import numpy as np

from twinloop.core.backend import Backend, BackendFault
from twinloop.core.rng import new_entropy
from twinloop.core.safety import SafetyConfig, SafetyFault, SafetyLayer, check_action
from twinloop.core.task import Task, total_reward

log = logging.getLogger(__name__)


class TwinEnv(gym.Env):
    """A single environment: one task, one backend, one safety layer.

    Args:
        task: Observation, command and reward logic.
        backend: The plant (simulator or device). Connected on the first reset.
        safety: Safety configuration.
        env_id: Registered id, used in error messages.
        config: The full system config (recorded by datasets).
        metadata: Extra metadata merged into ``self.metadata``.
    """

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012 (gymnasium convention)

    def __init__(
        self,
        task: Task,
        backend: Backend,
        safety: SafetyConfig | None = None,
        *,
        env_id: str = "twinloop/unregistered",
        config: Any = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """Assemble the env; nothing connects until :meth:`reset`."""
        self.task = task
        self.backend = backend
        self.safety_config = safety or SafetyConfig()
        self.safety = SafetyLayer(
            backend.command_space, self.safety_config, on_trip=backend.safe_state
        )
        self.env_id = env_id
        self.config = config
        self.observation_space = task.observation_space
        self.action_space = task.action_space
        self.metadata = {**type(self).metadata, **(metadata or {})}
        self._measurement: np.ndarray | None = None
        self._needs_reset = True
        self._started = False

    # gymnasium API -------------------------------------------------------------------------
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Start an episode; ``seed`` re-seeds the backend's and the task's streams."""
        super().reset(seed=seed)
        if seed is None and not self._started:
            seed = new_entropy()  # an unseeded env still has one recorded root seed
        self._started = True
        if not self.backend.connected:
            self.backend.connect()
        self.safety.reset()
        backend_options = (options or {}).get("backend")
        measurement = self.backend.reset(seed=seed, options=backend_options)
        obs, info = self.task.reset(measurement, seed, options)
        self._measurement = measurement
        self._needs_reset = False
        info = dict(info)
        info.update(self._privileged())
        return obs, info

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        """Validate the action, run it through safety and the backend, and score it."""
        if self._needs_reset or self._measurement is None:
            raise RuntimeError(f"{self.env_id}: call reset() before step() (the episode ended)")
        applied_action, action_clipped = check_action(
            self.env_id,
            self.action_space,
            action,
            clip=self.safety_config.clip_actions,
            labels=self.task.action_labels,
        )
        command = self.task.command(applied_action, self._measurement)
        try:
            safe_command, command_clipped = self.safety.filter(command)
            measurement, applied_command = self.backend.apply(safe_command)
        except (BackendFault, SafetyFault):
            self._needs_reset = True
            self._to_safe_state()
            raise
        result = self.task.step(measurement, applied_command)
        self._measurement = measurement
        reward, parts = total_reward(self.task.reward_scales, result.terms)
        info = dict(result.info)
        info.update(parts)
        info["applied_action"] = (
            applied_action.copy() if isinstance(applied_action, np.ndarray) else applied_action
        )
        info["applied_command"] = np.asarray(applied_command, dtype=np.float64).copy()
        info["action_clipped"] = bool(action_clipped)
        info["command_clipped"] = bool(
            command_clipped
            or (
                applied_command is not safe_command
                and not np.array_equal(applied_command, safe_command)
            )
        )
        info.update(self._privileged())
        if result.terminated or result.truncated:
            self._needs_reset = True
            self.safety.disarm()
        return result.observation, reward, bool(result.terminated), bool(result.truncated), info

    def close(self) -> None:
        """Disarm the watchdog and close the backend (which goes to its safe state)."""
        self.safety.disarm()
        self.backend.close()
        super().close()

    # helpers ---------------------------------------------------------------------------------
    def _privileged(self) -> dict[str, Any]:
        return {f"true/{k}": v for k, v in self.backend.privileged().items()}

    def _to_safe_state(self) -> None:
        self.safety.disarm()
        try:
            self.backend.safe_state()
        except Exception:  # report the original fault, not the failed recovery
            log.exception("%s: could not reach the safe state after a fault", self.env_id)

    @property
    def last_measurement(self) -> np.ndarray | None:
        """The backend's most recent measurement (what the task last saw)."""
        return self._measurement
