"""A trained agent as a controller: ``twinloop run ID --controller agent:DIR``.

Loads the policy of the newest checkpoint in a run folder (or of a checkpoint folder given
directly) and acts greedily: the argmax of the Q values or of the quantiles' mean, the mode
of a categorical policy, the mean of a Gaussian one. It runs on NumPy alone (no JAX), so a
device machine needs only the base install (its convolutions are NumPy's im2col). It acts
on the observations it was trained on: a Box, or a Dict (images, token ids, vectors) of
which it reads the keys it was trained with. Acting is deterministic, so ``reset``'s seeds
change nothing.

A recurrent agent (PPO with ``recurrent=gru``) keeps its GRU state here, one row per env
row: :meth:`AgentController.reset` zeroes the rows whose episodes start (every row without a
mask), and each :meth:`~AgentController.act` advances it, exactly as in training (the NumPy
step is :func:`~twinloop.controllers.rl.policy.policy_step`, the one JAX trains through). A
batch of another size than the held state's starts from zeros.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from twinloop.controllers.base import Controller
from twinloop.controllers.rl.checkpoint import latest_checkpoint, read_part, unflatten
from twinloop.controllers.rl.encoders import ObsLayout, batch_one
from twinloop.controllers.rl.normalize import RunningNorm
from twinloop.controllers.rl.policy import (
    PolicySpec,
    action_spec,
    greedy_action,
    initial_state,
    policy_init,
    policy_step,
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


def trained_env_settings(checkpoint: Path) -> dict[str, Any]:
    """The env settings the run of ``checkpoint`` trained on (its run folder's ``run.json``).

    Returns {} when the run folder has no readable ``run.json`` (a checkpoint copied alone).
    """
    try:
        run = json.loads((checkpoint.parent / "run.json").read_text())
        return dict(run.get("env_overrides") or {})
    except (OSError, ValueError, AttributeError):
        return {}


def settings_flags(settings: Mapping[str, Any]) -> str:
    """``--set NAME=VALUE`` flags of env settings (values as JSON where not plain words)."""
    out = []
    for k, v in settings.items():
        text = v if isinstance(v, str) else json.dumps(v)
        out.append(f"--set {k}={text}")
    return " ".join(out)


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
        self.layout = self._layout(observation_space, meta)
        self.action = action_spec(action_space)
        if self.action != meta["action"]:
            raise ValueError(
                f"agent {self.checkpoint} was trained for actions {meta['action']}, "
                f"this env's are {self.action}"
            )
        obs_dim = self.layout.in_dim
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
        #: The GRU state of each env row (recurrent agents; None until the first act).
        self.state: np.ndarray | None = None

    def reset(self, n_envs: int, seeds: np.ndarray, mask: np.ndarray | None = None) -> None:
        """Start episodes in the rows of ``mask`` (all if None): their recurrent state is zeroed.

        Raises:
            ValueError: A mask whose length is not ``n_envs``.
        """
        super().reset(n_envs, seeds, mask)
        if not self.spec.recurrent:
            return
        if mask is None or self.state is None or self.state.shape[0] != self.n_envs:
            self.state = initial_state(self.spec, self.n_envs)
            return
        mask = np.asarray(mask, bool)
        if mask.shape != (self.n_envs,):
            raise ValueError(f"reset mask of shape {mask.shape} for {self.n_envs} env rows")
        self.state[mask] = 0.0

    def _hint(self) -> str:
        """What to pass to recreate the env the agent trained on, if it used settings."""
        settings = trained_env_settings(self.checkpoint)
        if not settings:
            return ""
        flags = settings_flags(settings)
        return f"; it was trained with env settings {settings}: run it with {flags}"

    def _layout(self, space: gym.Space, meta: Mapping[str, Any]) -> ObsLayout:
        """The layout of ``space`` the agent reads; it must be the one it was trained on."""
        saved = meta.get("observation")
        keys = () if saved is None or saved.get("keys") is None else tuple(saved["keys"])
        try:
            layout = ObsLayout(space, keys)  # the default keys for an agent of a Box
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"agent {self.checkpoint} cannot read this env's observations: {exc}{self._hint()}"
            ) from exc
        if saved is None or saved["flat"]:  # a Box of vectors (saved is None: older agents)
            shape = tuple(meta["observation_shape"])
            if not layout.flat or layout.shape != shape:
                theirs = space.shape if layout.flat else space
                raise ValueError(
                    f"agent {self.checkpoint} was trained on observations of shape {shape}, "
                    f"this env's are {theirs}{self._hint()}"
                )
        elif layout.to_json() != saved:
            raise ValueError(
                f"agent {self.checkpoint} was trained on observations {saved}, this env's "
                f"are {layout.to_json()}{self._hint()}"
            )
        return layout

    def outputs(self, obs: Any) -> np.ndarray:
        """The policy head's raw outputs for a batch (a recurrent agent's state advances).

        ``(n, out_dim)``: Q values, quantiles, logits or Gaussian means (see
        :mod:`~twinloop.controllers.rl.policy`).
        """
        rows = self.layout.pack(obs)
        vec = self.layout.vector(rows)
        x = self.layout.net_inputs(rows, self.norm(vec) if self.normalize else vec)
        h = None
        if self.spec.recurrent:
            h = self.state
            if h is None or h.shape[0] != rows.shape[0]:
                h = initial_state(self.spec, rows.shape[0])
        out, h = policy_step(np, self.params, self.spec, x, h)
        if self.spec.recurrent:
            self.state = np.asarray(h, np.float32)
        return out

    def act(self, obs: Any) -> np.ndarray:
        """Greedy actions for a batch of observations (arrays, or a Dict of batched arrays)."""
        return to_env_action(self.action, greedy_action(np, self.spec, self.outputs(obs)))

    def act_one(self, obs: Any) -> np.ndarray:
        """Action for one observation (an array, or a Dict of arrays)."""
        return self.act(batch_one(obs))[0]
