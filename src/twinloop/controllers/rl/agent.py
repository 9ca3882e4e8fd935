"""The stateful shell every agent shares: spaces, observation normalisation, persistence.

An agent trains on a vector env of ``n_envs`` rows through two calls per vector step
(Dopamine's begin/step shell, batched)::

    actions = agent.act(obs)                              # exploring actions, env units
    obs2, reward, terminated, truncated, info = env.step(actions)
    stats = agent.observe(obs, reward, terminated, truncated, next_obs)  # may learn

where ``next_obs`` is ``obs2`` with the final observation in the rows whose episode ended
(``SAME_STEP`` auto-reset). :meth:`Agent.end_segment` tells the agent the trainer is about to
reset every env (at a checkpoint), so pending episode fragments count as truncated.

Observations are a Box (flat vectors, or an image) or a Dict of them (images, token ids,
vectors): :class:`~twinloop.controllers.rl.encoders.ObsLayout` chooses an encoder for each
part (settings ``obs_keys``, ``image_encoder``, ``text_encoder`` ...) and packs an observation
into one stored row, uint8 for anything but a vector Box, so replay buffers and rollouts hold
images as bytes. :meth:`Agent.flat` packs, :meth:`Agent.normalized` turns stored rows into
the networks' input.

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
from twinloop.controllers.rl.encoders import (
    IMAGE_ENCODERS,
    PRIVILEGED_KEYS,
    TEXT_ENCODERS,
    ObsLayout,
    parse_keys,
)
from twinloop.controllers.rl.networks import EncoderConfig, Params
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
    obs_keys: str = param(
        "",
        doc="comma-separated keys of a Dict observation the agent sees, e.g. "
        f"image,instruction,is_holding (empty: all but {', '.join(PRIVILEGED_KEYS)})",
    )
    image_encoder: str = param(
        "cnn", choices=IMAGE_ENCODERS, doc="images: Nature-DQN CNN or IMPALA ResNet"
    )
    cnn_channels: tuple[int, ...] = param((32, 64, 64), doc="cnn: channels of each conv layer")
    cnn_kernels: tuple[int, ...] = param((8, 4, 3), doc="cnn: kernel size of each conv layer")
    cnn_strides: tuple[int, ...] = param((4, 2, 1), doc="cnn: stride of each conv layer")
    impala_channels: tuple[int, ...] = param((16, 32, 32), doc="impala: channels of each stage")
    text_encoder: str = param(
        "gru", choices=TEXT_ENCODERS, doc="token ids: a GRU, or the mean of the embeddings"
    )
    token_dim: int = param(32, ge=1, le=4096, doc="token ids: width of an embedding")
    text_hidden: int = param(64, ge=1, le=4096, doc="token ids: width of the GRU's state")
    sem_simplices: int = param(
        0, ge=0, le=4096, doc="simplicial embedding: number L of simplices (0: none)"
    )
    sem_dim: int = param(8, ge=2, le=4096, doc="simplicial embedding: dimension V of a simplex")
    sem_tau: float = param(1.0, gt=0.0, doc="simplicial embedding: softmax temperature tau")
    lr: float = param(3e-4, gt=0.0, le=1.0, doc="Adam learning rate")
    adam_eps: float = param(1e-8, gt=0.0, le=1.0, doc="Adam epsilon")
    max_grad_norm: float = param(10.0, gt=0.0, doc="gradients clipped to this global norm")
    gamma: float = param(0.99, ge=0.0, le=1.0, doc="discount")
    normalize_obs: bool = param(
        True, doc="normalise vector observations by running mean and std (images: / 255)"
    )

    @property
    def encoder(self) -> EncoderConfig:
        """The encoder's shape (its ``inputs`` are the agent's: :attr:`Agent.encoder`)."""
        return EncoderConfig(
            hidden=tuple(int(h) for h in self.hidden),
            activation=self.activation,
            sem_simplices=self.sem_simplices,
            sem_dim=self.sem_dim,
            sem_tau=self.sem_tau,
            image_encoder=self.image_encoder,
            cnn_channels=tuple(int(c) for c in self.cnn_channels),
            cnn_kernels=tuple(int(c) for c in self.cnn_kernels),
            cnn_strides=tuple(int(c) for c in self.cnn_strides),
            impala_channels=tuple(int(c) for c in self.impala_channels),
            text_encoder=self.text_encoder,
            token_dim=self.token_dim,
            text_hidden=self.text_hidden,
        )


class Agent:
    """Base of the agents: see the module docstring for the calls a trainer makes.

    Args:
        observation_space: The env's single observation space: a Box, or a Dict of Box,
            MultiBinary and Discrete (see :class:`~twinloop.controllers.rl.encoders.ObsLayout`).
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
        if not isinstance(observation_space, gym.spaces.Box | gym.spaces.Dict):
            raise TypeError(f"agents need a Box or Dict observation space, not {observation_space}")
        if not isinstance(config, self.Config):
            raise TypeError(f"{self.name} needs a {self.Config.__name__}, not {type(config)}")
        if n_envs < 1:
            raise ValueError(f"n_envs must be >= 1, got {n_envs}")
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        self.config = config
        self.layout = ObsLayout(observation_space, parse_keys(config.obs_keys))
        shape = observation_space.shape
        #: The Box's shape (None for a Dict).
        self.observation_shape = None if shape is None else tuple(shape)
        #: Width of the encoder's vector input (the flat observation of a vector Box).
        self.obs_dim = self.layout.in_dim
        #: The encoder's shape, with this observation's images and token inputs.
        self.encoder = dataclasses.replace(config.encoder, inputs=self.layout.inputs)
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
    def flat(self, obs: Any) -> np.ndarray:
        """A batch of observations as stored rows ``(n, width)``.

        Float32 flattened observations for a vector Box (``width == obs_dim``), packed
        uint8 rows otherwise (:meth:`~twinloop.controllers.rl.encoders.ObsLayout.pack`).
        """
        return self.layout.pack(obs)

    def update_norm(self, rows: np.ndarray) -> None:
        """Merge stored rows' vector features into the normaliser (if it is on)."""
        if self.config.normalize_obs:
            self.norm.update(self.layout.vector(rows))

    def normalized(self, rows: np.ndarray) -> Any:
        """Stored rows ``(..., width)`` as the networks see them (normalised vectors)."""
        vec = self.layout.vector(rows)
        if self.config.normalize_obs:
            vec = self.norm(vec)
        return self.layout.net_inputs(rows, vec)

    # --- persistence ---------------------------------------------------------------------
    def policy(self) -> tuple[Json, Arrays]:
        """``(json, arrays)`` a deployed controller loads."""
        meta = {
            "agent": self.name,
            "config": to_dict(self.config),
            "policy": self.spec.to_json(),
            "action": self.action,
            "observation_shape": (
                None if self.observation_shape is None else list(self.observation_shape)
            ),
            "observation": self.layout.to_json(),
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
        now = to_dict(self.config)
        saved = dict(meta.get("config") or {})
        defaults = to_dict(type(self.config)())
        for k, v in now.items():  # settings added after the checkpoint was written
            if k not in saved and v == defaults.get(k):
                saved[k] = v
        if saved != now:
            raise ValueError(
                "checkpoint was written with another agent config; resume with the same "
                f"--set values (saved: {meta.get('config')}, now: {now})"
            )
        self.set_learner_state(unflatten(self.learner_state(), arrays, "learner/"))
        self.norm.load_arrays(unflatten(self.norm.arrays(), arrays, "norm/"))
        self.rng.bit_generator.state = meta["rng"]
        self.env_steps = int(meta["env_steps"])
        self.updates = int(meta["updates"])
        extra = {k[len("extra/") :]: v for k, v in arrays.items() if k.startswith("extra/")}
        self.load_extra_state(meta.get("extra", {}), extra)
