"""The acting network of an agent, shared by training (JAX) and deployment (NumPy).

A policy is an encoder (:mod:`~twinloop.controllers.rl.networks`), optionally a GRU core
that carries a state from step to step (``rnn_hidden > 0``: recurrent PPO), and one linear
head whose meaning ``head`` names:

=============  ==========================================  ================================
``head``       outputs                                      greedy action
=============  ==========================================  ================================
``q``          ``A`` action values                          argmax
``quantiles``  ``A x N`` quantiles of each action's return  argmax of the quantiles' mean
``logits``     ``A`` logits of a categorical policy         argmax (the mode)
``gaussian``   ``D`` means of a Gaussian policy             the mean, clipped to ``[-1, 1]``
=============  ==========================================  ================================

Continuous agents act in ``[-1, 1]^D``; :func:`to_env_action` maps that onto a Box with
finite bounds (and leaves an unbounded Box as it is), so one learning rate fits every
system's units.

A recurrent policy acts through :func:`policy_step`, which takes and returns the state
``(B, rnn_hidden)`` of each row (zeros at an episode's start: :func:`initial_state`); the
caller keeps it between steps (a deployed controller does, per env row).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import gymnasium as gym
import numpy as np

from twinloop.controllers.rl.encoders import gru_cell, gru_init
from twinloop.controllers.rl.networks import (
    EncoderConfig,
    Params,
    dense_apply,
    dense_init,
    encoder_apply,
    encoder_init,
)

HEADS = ("q", "quantiles", "logits", "gaussian")


def action_spec(space: gym.Space) -> dict[str, Any]:
    """JSON description of a ``Discrete`` or ``Box`` action space.

    Raises:
        TypeError: Any other space.
    """
    if isinstance(space, gym.spaces.Discrete):
        return {"kind": "discrete", "n": int(space.n), "start": int(space.start)}
    if isinstance(space, gym.spaces.Box):
        return {
            "kind": "box",
            "shape": list(space.shape),
            "low": np.asarray(space.low, np.float64).ravel().tolist(),
            "high": np.asarray(space.high, np.float64).ravel().tolist(),
            "dtype": str(space.dtype),
        }
    raise TypeError(f"agents support Discrete and Box action spaces, not {space}")


def action_dim(spec: dict[str, Any]) -> int:
    """Number of discrete actions, or of continuous action components."""
    return int(spec["n"]) if spec["kind"] == "discrete" else int(np.prod(spec["shape"]))


def to_env_action(spec: dict[str, Any], action: np.ndarray) -> np.ndarray:
    """A batch of agent actions as env actions (see the module docstring)."""
    action = np.asarray(action)
    if spec["kind"] == "discrete":
        return action.astype(np.int64) + spec["start"]
    low, high = np.asarray(spec["low"]), np.asarray(spec["high"])
    a = np.clip(action.reshape(action.shape[0], -1).astype(np.float64), -1.0, 1.0)
    finite = np.isfinite(low) & np.isfinite(high)
    scaled = np.where(finite, low + (a + 1.0) * 0.5 * (high - low), action.reshape(a.shape))
    return scaled.reshape(action.shape[0], *spec["shape"]).astype(spec["dtype"])


@dataclasses.dataclass(frozen=True)
class PolicySpec:
    """Shape of a policy network (hashable, so jitted functions take it as a static argument).

    Attributes:
        encoder: The encoder's shape.
        head: One of :data:`HEADS`.
        n_actions: Discrete actions, or continuous action components.
        quantiles: Quantiles per action (``head == "quantiles"`` only; else 0).
        rnn_hidden: Width of the GRU core's state between encoder and head (0: none, a
            feed-forward policy; specs saved before the field existed read as 0).
    """

    encoder: EncoderConfig
    head: str
    n_actions: int
    quantiles: int = 0
    rnn_hidden: int = 0

    def __post_init__(self) -> None:
        """Check the head and the core's width."""
        if self.head not in HEADS:
            raise ValueError(f"unknown policy head {self.head!r}; valid: {', '.join(HEADS)}")
        if self.rnn_hidden < 0:
            raise ValueError(f"rnn_hidden must be >= 0, got {self.rnn_hidden}")

    @property
    def recurrent(self) -> bool:
        """Whether the policy carries a state (a GRU core)."""
        return self.rnn_hidden > 0

    @property
    def features_dim(self) -> int:
        """Width of the head's input (the GRU's state, or the encoder's output)."""
        return self.rnn_hidden or self.encoder.out_dim

    @property
    def out_dim(self) -> int:
        """Width of the head's output."""
        return self.n_actions * max(1, self.quantiles)

    def to_json(self) -> dict[str, Any]:
        """JSON form."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PolicySpec:
        """Inverse of :meth:`to_json`."""
        data = dict(data)
        data["encoder"] = EncoderConfig.from_json(data["encoder"])
        return cls(**data)


def policy_init(rng: np.random.Generator, obs_dim: int, spec: PolicySpec, gain: float) -> Params:
    """Parameters of a policy network (NumPy float32; the head's weights scaled by ``gain``).

    ``obs_dim`` is the width of the encoder's vector input (the flat observation, or the
    vector parts of a structured one: :attr:`~twinloop.controllers.rl.encoders.ObsLayout.in_dim`).
    A recurrent spec adds ``rnn`` (:func:`~twinloop.controllers.rl.encoders.gru_init`), drawn
    after the encoder and before the head.
    """
    params = {"encoder": encoder_init(rng, obs_dim, spec.encoder)}
    if spec.recurrent:
        params["rnn"] = gru_init(rng, spec.encoder.out_dim, spec.rnn_hidden)
    params["head"] = dense_init(rng, spec.features_dim, spec.out_dim, gain)
    return params


def initial_state(spec: PolicySpec, n: int) -> np.ndarray:
    """The state ``(n, rnn_hidden)`` of rows whose episode starts: zeros."""
    return np.zeros((int(n), spec.rnn_hidden), np.float32)


def rnn_step(xp: Any, rnn: Params, features: Any, h: Any) -> Any:
    """The GRU core's next state ``(B, H)`` from encoder features ``(B, F)`` and state ``h``."""
    return gru_cell(xp, rnn, features @ rnn["wx"] + rnn["bx"], h)


def policy_step(xp: Any, params: Params, spec: PolicySpec, obs: Any, h: Any) -> tuple[Any, Any]:
    """One step of a policy: the head's raw output and the next state.

    Args:
        xp: ``numpy`` or ``jax.numpy``.
        params: The policy's parameters (:func:`policy_init`).
        spec: Its shape.
        obs: A batch of encoder inputs (normalised observations).
        h: The rows' states ``(B, rnn_hidden)`` (None for a feed-forward policy).

    Returns:
        ``(out, h')``: the head's output ``(B, out_dim)`` and the state after this step
        (``h`` itself, None, for a feed-forward policy).

    Raises:
        ValueError: A recurrent policy given no state.
    """
    z = encoder_apply(xp, params["encoder"], spec.encoder, obs)
    if spec.recurrent:
        if h is None:
            raise ValueError(f"a recurrent policy (rnn_hidden={spec.rnn_hidden}) needs its state")
        h = rnn_step(xp, params["rnn"], z, h)
        z = h
    return dense_apply(params["head"], z), h


def head_apply(xp: Any, params: Params, spec: PolicySpec, obs: Any) -> Any:
    """The head's raw output for a batch of encoder inputs (normalised observations).

    Raises:
        ValueError: A recurrent policy (it needs its state: :func:`policy_step`).
    """
    if spec.recurrent:
        raise ValueError("a recurrent policy acts through policy_step, which carries its state")
    return dense_apply(params["head"], encoder_apply(xp, params["encoder"], spec.encoder, obs))


def greedy(xp: Any, params: Params, spec: PolicySpec, obs: Any) -> Any:
    """Greedy actions (agent units) of a batch of encoder inputs (normalised observations)."""
    return greedy_action(xp, spec, head_apply(xp, params, spec, obs))


def greedy_action(xp: Any, spec: PolicySpec, out: Any) -> Any:
    """Greedy actions (agent units) from the head's raw outputs ``(B, out_dim)``."""
    if spec.head == "quantiles":
        out = out.reshape(out.shape[0], spec.n_actions, spec.quantiles).mean(axis=-1)
    if spec.head == "gaussian":
        return xp.clip(out, -1.0, 1.0)
    return xp.argmax(out, axis=-1)
