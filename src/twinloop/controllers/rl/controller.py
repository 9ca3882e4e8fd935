"""A trained agent as a controller: ``twinloop run ID --controller agent:DIR``.

Loads the policy of the newest checkpoint in a run folder (or of a checkpoint folder given
directly) and acts greedily: the argmax of the Q values or of the quantiles' mean, the mode
of a categorical policy, the mean of a Gaussian one. It runs on NumPy alone (no JAX), so a
device machine needs only the base install. Acting is deterministic, so ``reset``'s seeds
change nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from twinloop.controllers.base import Controller
from twinloop.controllers.rl.checkpoint import latest_checkpoint, read_part, unflatten
from twinloop.controllers.rl.networks import flat_dim
from twinloop.controllers.rl.normalize import RunningNorm
from twinloop.controllers.rl.policy import (
    PolicySpec,
    action_spec,
    greedy,
    policy_init,
    to_env_action,
)


def resolve_checkpoint(path: str | Path) -> Path:
    """The checkpoint folder ``path`` names: itself, or the newest one inside a run folder.

    Raises:
        ValueError: No checkpoint is there.
    """
    path = Path(path)
    if (path / "policy.json").is_file():
        return path
    found = latest_checkpoint(path)
    if found is None:
        raise ValueError(
            f"{path} holds no agent checkpoint (train one with 'twinloop agent train')"
        )
    return found


class AgentController(Controller):
    """A saved agent's greedy policy (see the module docstring).

    Args:
        observation_space: The env's single observation space (must match training's).
        action_space: The env's single action space (must match training's).
        metadata: The env's metadata.
        path: A run folder of ``twinloop agent train`` or one of its checkpoint folders.
    """

    name = "agent"

    def __init__(
        self,
        observation_space: gym.Space,
        action_space: gym.Space,
        metadata: Mapping[str, Any] | None = None,
        *,
        path: str | Path,
    ) -> None:
        """Load the policy and check it fits the env."""
        super().__init__(observation_space, action_space, metadata)
        self.checkpoint = resolve_checkpoint(path)
        meta, arrays = read_part(self.checkpoint, "policy")
        self.meta = meta
        self.spec = PolicySpec.from_json(meta["policy"])
        shape = tuple(meta["observation_shape"])
        if tuple(observation_space.shape) != shape:
            raise ValueError(
                f"agent {self.checkpoint} was trained on observations of shape {shape}, "
                f"this env's are {tuple(observation_space.shape)}"
            )
        self.action = action_spec(action_space)
        if self.action != meta["action"]:
            raise ValueError(
                f"agent {self.checkpoint} was trained for actions {meta['action']}, "
                f"this env's are {self.action}"
            )
        obs_dim = flat_dim(shape)
        template: dict[str, Any] = {
            "params": policy_init(np.random.default_rng(0), obs_dim, self.spec, 1.0),
            "norm": RunningNorm(obs_dim).arrays(),
        }
        if "params/log_std" in arrays:
            template["params"]["log_std"] = np.zeros(self.spec.n_actions, np.float32)
        loaded = unflatten(template, arrays)
        self.params = loaded["params"]
        self.norm = RunningNorm(obs_dim)
        self.norm.load_arrays(loaded["norm"])
        self.normalize = bool(meta.get("normalize_obs", True))

    def act(self, obs: np.ndarray) -> np.ndarray:
        """Greedy actions for a batch of observations."""
        obs = np.asarray(obs, np.float32)
        flat = obs.reshape(obs.shape[0], -1)
        x = self.norm(flat) if self.normalize else flat
        return to_env_action(self.action, greedy(np, self.params, self.spec, x))
