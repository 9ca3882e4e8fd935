"""The stateful shell every agent shares: spaces, observation normalisation, persistence.

An agent trains on a vector env of ``n_envs`` rows through two calls per vector step
(Dopamine's begin/step shell, batched)::

    actions = agent.act(obs)                              # exploring actions, env units
    obs2, reward, terminated, truncated, info = env.step(actions)
    stats = agent.observe(obs, reward, terminated, truncated, next_obs)  # may learn

where ``next_obs`` is ``obs2`` with the final observation in the rows whose episode ended
(``SAME_STEP`` auto-reset). :meth:`Agent.end_segment` tells the agent the trainer is about to
reset every env (at a checkpoint), so pending episode fragments count as truncated.

The math lives in pure jitted functions of each agent's module; this shell only holds
arrays between calls. :meth:`Agent.policy` is what a deployed controller needs;
:meth:`Agent.state` is everything else, so a checkpoint continues a run exactly.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

from twinloop.controllers.rl.checkpoint import flatten, unflatten
from twinloop.controllers.rl.networks import EncoderConfig, Params, flat_dim
from twinloop.controllers.rl.normalize import RunningNorm
from twinloop.controllers.rl.policy import PolicySpec, action_spec
from twinloop.core.config import ConfigSection, param, to_dict

Json = dict[str, Any]
Arrays = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True, kw_only=True)
class AgentConfig(ConfigSection):
    """Settings every agent has: the encoder, the optimiser, the discount."""

    hidden: tuple[int, ...] = param((128, 128), doc="widths of the encoder's hidden layers")
    activation: str = param("relu", choices=("relu", "tanh"), doc="hidden activation")
    sem_simplices: int = param(
        0, ge=0, le=4096, doc="simplicial embedding: number L of simplices (0: none)"
    )
    sem_dim: int = param(8, ge=2, le=4096, doc="simplicial embedding: dimension V of a simplex")
    sem_tau: float = param(1.0, gt=0.0, doc="simplicial embedding: softmax temperature tau")
    lr: float = param(3e-4, gt=0.0, le=1.0, doc="Adam learning rate")
    adam_eps: float = param(1e-8, gt=0.0, le=1.0, doc="Adam epsilon")
    max_grad_norm: float = param(10.0, gt=0.0, doc="gradients clipped to this global norm")
    gamma: float = param(0.99, ge=0.0, le=1.0, doc="discount")
    normalize_obs: bool = param(True, doc="normalise observations by running mean and std")

    @property
    def encoder(self) -> EncoderConfig:
        """The encoder's shape."""
        return EncoderConfig(
            hidden=tuple(int(h) for h in self.hidden),
            activation=self.activation,
            sem_simplices=self.sem_simplices,
            sem_dim=self.sem_dim,
            sem_tau=self.sem_tau,
        )


class Agent:
    """Base of the agents: see the module docstring for the calls a trainer makes.

    Args:
        observation_space: The env's single observation space (a Box; flattened).
        action_space: The env's single action space (``Discrete`` or ``Box``).
        n_envs: Rows of the vector env the agent trains on.
        total_steps: Env steps the run will take (schedules are fractions of it).
        config: The agent's config (an instance of the class's ``Config``).
        seed: Seeds every random choice of the agent.
    """

    #: Name used by ``twinloop agent train --agent NAME``.
    name: ClassVar[str] = "base"
    #: The agent's config class.
    Config: ClassVar[type[AgentConfig]] = AgentConfig

    def __init__(
        self,
        observation_space: gym.Space,
        action_space: gym.Space,
        n_envs: int,
        total_steps: int,
        config: AgentConfig,
        seed: int,
    ) -> None:
        """Set up the shared pieces; subclasses build their networks after this."""
        if not isinstance(observation_space, gym.spaces.Box):
            raise TypeError(f"agents need a Box observation space, not {observation_space}")
        if not isinstance(config, self.Config):
            raise TypeError(f"{self.name} needs a {self.Config.__name__}, not {type(config)}")
        if n_envs < 1:
            raise ValueError(f"n_envs must be >= 1, got {n_envs}")
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        self.config = config
        self.observation_shape = tuple(observation_space.shape)
        self.obs_dim = flat_dim(self.observation_shape)
        self.action = action_spec(action_space)
        self.n_envs, self.total_steps, self.seed = int(n_envs), int(total_steps), int(seed)
        self.norm = RunningNorm(self.obs_dim)
        self.rng = np.random.default_rng(seed)
        self.env_steps = 0
        self.updates = 0

    # --- what subclasses provide ---------------------------------------------------------
    @property
    def spec(self) -> PolicySpec:
        """The acting network's shape."""
        raise NotImplementedError

    def policy_params(self) -> Params:
        """The acting network's parameters."""
        raise NotImplementedError

    def learner_state(self) -> Any:
        """The learner's arrays (parameters, optimiser state, ...) as a nested structure."""
        raise NotImplementedError

    def set_learner_state(self, tree: Any) -> None:
        """Restore :meth:`learner_state` output."""
        raise NotImplementedError

    def extra_state(self) -> tuple[Json, Arrays]:
        """Further JSON values and arrays of a subclass (replay, rollout, counters)."""
        return {}, {}

    def load_extra_state(self, meta: Json, arrays: Arrays) -> None:
        """Restore :meth:`extra_state` output."""

    def act(self, obs: np.ndarray) -> np.ndarray:
        """Exploring actions (env units) for a batch of observations."""
        raise NotImplementedError

    def observe(
        self,
        obs: np.ndarray,
        reward: np.ndarray,
        terminated: np.ndarray,
        truncated: np.ndarray,
        next_obs: np.ndarray,
    ) -> dict[str, float]:
        """Take in one vector step (after :meth:`act` on ``obs``); learn when due.

        Returns:
            Mean learner statistics of the updates made in this call (empty if none).
        """
        raise NotImplementedError

    def end_segment(self) -> None:
        """The trainer resets every env next: count unfinished episodes as truncated."""

    # --- shared helpers ------------------------------------------------------------------
    def flat(self, obs: np.ndarray) -> np.ndarray:
        """A batch of observations as float32 rows ``(n, obs_dim)``."""
        obs = np.asarray(obs, np.float32)
        if obs.shape[1:] != self.observation_shape:
            raise ValueError(
                f"observations of shape {obs.shape[1:]} given to an agent trained on "
                f"{self.observation_shape}"
            )
        return obs.reshape(obs.shape[0], self.obs_dim)

    def normalized(self, flat_obs: np.ndarray) -> np.ndarray:
        """Observations as the networks see them."""
        return self.norm(flat_obs) if self.config.normalize_obs else flat_obs

    # --- persistence ---------------------------------------------------------------------
    def policy(self) -> tuple[Json, Arrays]:
        """``(json, arrays)`` a deployed controller loads."""
        meta = {
            "agent": self.name,
            "config": to_dict(self.config),
            "policy": self.spec.to_json(),
            "action": self.action,
            "observation_shape": list(self.observation_shape),
            "normalize_obs": bool(self.config.normalize_obs),
        }
        arrays = flatten({"params": self.policy_params(), "norm": self.norm.arrays()})
        return meta, arrays

    def state(self) -> tuple[Json, Arrays]:
        """``(json, arrays)`` of everything besides the policy that training needs."""
        extra_meta, extra_arrays = self.extra_state()
        meta = {
            "agent": self.name,
            "config": to_dict(self.config),
            "rng": self.rng.bit_generator.state,
            "env_steps": self.env_steps,
            "updates": self.updates,
            "extra": extra_meta,
        }
        arrays = flatten({"learner": self.learner_state(), "norm": self.norm.arrays()})
        arrays.update({f"extra/{k}": v for k, v in extra_arrays.items()})
        return meta, arrays

    def load_state(self, meta: Json, arrays: Arrays) -> None:
        """Restore :meth:`state` output written by an agent of the same name and config."""
        if meta.get("agent") != self.name:
            raise ValueError(f"checkpoint holds a {meta.get('agent')!r} agent, not {self.name!r}")
        if meta.get("config") != to_dict(self.config):
            raise ValueError(
                "checkpoint was written with another agent config; resume with the same "
                f"--set values (saved: {meta.get('config')}, now: {to_dict(self.config)})"
            )
        self.set_learner_state(unflatten(self.learner_state(), arrays, "learner/"))
        self.norm.load_arrays(unflatten(self.norm.arrays(), arrays, "norm/"))
        self.rng.bit_generator.state = meta["rng"]
        self.env_steps = int(meta["env_steps"])
        self.updates = int(meta["updates"])
        extra = {k[len("extra/") :]: v for k, v in arrays.items() if k.startswith("extra/")}
        self.load_extra_state(meta.get("extra", {}), extra)
