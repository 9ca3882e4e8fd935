"""Small networks as plain pytrees: an MLP encoder, a simplicial embedding, linear heads.

Parameters are nested dicts of arrays, so they checkpoint as named arrays (npz + json, no
pickle) and need no module library. Every forward function takes the array module ``xp``
(``jax.numpy`` in training, ``numpy`` in a deployed controller), so one definition serves
both and a saved agent acts without JAX.

Simplicial embedding (Lavoie et al. 2022, "Simplicial Embeddings in Self-Supervised
Learning and Downstream Classification"): the encoder's output of ``L * V`` features is
split into ``L`` groups of ``V`` and each group passes through a softmax with temperature
``tau``, so each group is a point on a ``V - 1`` simplex.

Initialisation: weights ``N(0, gain^2 / fan_in)`` (He-style for ReLU, Glorot-like gain 1 for
tanh), biases zero; each head has its own gain (policy heads small, as PPO practice
recommends, Andrychowicz et al. 2021, "What Matters in On-Policy RL").
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

#: Hidden activations by name; each works on JAX and NumPy arrays.
ACTIVATIONS = ("relu", "tanh")
#: Gain of the hidden layers' initial weights for each activation.
_GAIN = {"relu": math.sqrt(2.0), "tanh": 1.0}

Params = dict[str, Any]


@dataclasses.dataclass(frozen=True, kw_only=True)
class EncoderConfig:
    """Shape of a flat-vector encoder.

    Attributes:
        hidden: Widths of the hidden layers.
        activation: ``"relu"`` or ``"tanh"``.
        sem_simplices: Number ``L`` of simplices of the simplicial embedding (0: none).
        sem_dim: Dimension ``V`` of each simplex.
        sem_tau: Softmax temperature ``tau`` of the embedding (> 0).
    """

    hidden: tuple[int, ...] = (128, 128)
    activation: str = "relu"
    sem_simplices: int = 0
    sem_dim: int = 8
    sem_tau: float = 1.0

    def __post_init__(self) -> None:
        """Check the shape."""
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"activation {self.activation!r} unknown; valid: {', '.join(ACTIVATIONS)}"
            )
        if not self.hidden or any(int(h) < 1 for h in self.hidden):
            raise ValueError(f"hidden widths must be >= 1 and at least one, got {self.hidden}")
        if self.sem_simplices < 0:
            raise ValueError(f"sem_simplices must be >= 0, got {self.sem_simplices}")
        if self.sem_simplices and self.sem_dim < 2:
            raise ValueError(f"sem_dim must be >= 2 with simplices, got {self.sem_dim}")
        if not self.sem_tau > 0:
            raise ValueError(f"sem_tau must be > 0, got {self.sem_tau}")

    @property
    def out_dim(self) -> int:
        """Width of the encoder's output."""
        return self.sem_simplices * self.sem_dim if self.sem_simplices else self.hidden[-1]


def dense_init(rng: np.random.Generator, n_in: int, n_out: int, gain: float) -> Params:
    """One dense layer's parameters (float32)."""
    w = rng.standard_normal((n_in, n_out)) * (gain / math.sqrt(n_in))
    return {"w": w.astype(np.float32), "b": np.zeros(n_out, np.float32)}


def encoder_init(rng: np.random.Generator, in_dim: int, cfg: EncoderConfig) -> Params:
    """Parameters of :func:`encoder_apply` for inputs of width ``in_dim``."""
    widths = [in_dim, *cfg.hidden]
    gain = _GAIN[cfg.activation]
    layers = [dense_init(rng, a, b, gain) for a, b in itertools.pairwise(widths)]
    params: Params = {"layers": layers}
    if cfg.sem_simplices:
        params["sem"] = dense_init(rng, widths[-1], cfg.sem_simplices * cfg.sem_dim, 1.0)
    return params


def dense_apply(p: Params, x: Any) -> Any:
    """``x @ w + b``."""
    return x @ p["w"] + p["b"]


def _act(xp: Any, name: str, x: Any) -> Any:
    return xp.maximum(x, 0.0) if name == "relu" else xp.tanh(x)


def simplicial_embedding(xp: Any, x: Any, simplices: int, dim: int, tau: float) -> Any:
    """Split the last axis into ``simplices`` groups of ``dim`` and softmax each at ``tau``.

    Args:
        xp: ``numpy`` or ``jax.numpy``.
        x: Array of shape ``(..., simplices * dim)``.
        simplices: ``L``.
        dim: ``V``.
        tau: Temperature (> 0): small values push each group towards a vertex.

    Returns:
        Array of the same shape whose ``L`` groups are each non-negative and sum to 1.
    """
    if x.shape[-1] != simplices * dim:
        raise ValueError(f"embedding input has width {x.shape[-1]}, not {simplices} x {dim}")
    z = x.reshape(*x.shape[:-1], simplices, dim) / tau
    z = z - z.max(axis=-1, keepdims=True)
    e = xp.exp(z)
    return (e / e.sum(axis=-1, keepdims=True)).reshape(x.shape)


def layer_norm(xp: Any, x: Any, eps: float = 1e-5) -> Any:
    """Each row of ``x`` shifted and scaled to zero mean and unit variance (no parameters)."""
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / xp.sqrt(var + eps)


def encoder_apply(xp: Any, params: Params, cfg: EncoderConfig, x: Any) -> Any:
    """The encoder's features of a batch of flat observations ``(..., in_dim)``."""
    x = encoder_trunk(xp, params, cfg, x)
    if cfg.sem_simplices:
        x = sem_apply(xp, params["sem"], cfg, x)
    return x


def encoder_trunk(xp: Any, params: Params, cfg: EncoderConfig, x: Any) -> Any:
    """The encoder's hidden layers alone (the input of the simplicial embedding)."""
    for layer in params["layers"]:
        x = _act(xp, cfg.activation, dense_apply(layer, x))
    return x


def sem_apply(xp: Any, params: Params, cfg: EncoderConfig, x: Any) -> Any:
    """Projection, per-row normalisation, then the simplicial embedding at ``cfg.sem_tau``.

    The normalisation stands where the paper has BatchNorm: it keeps the logits at unit
    scale, so ``tau`` alone sets how sharp the simplices are. Without it the logits of a
    Q network grow with training until every softmax saturates on one vertex for every
    state, the features stop depending on the observation and no gradient reaches the
    encoder (QR-DQN on CartPole then acts constantly). A parameter-free per-row norm
    rather than BatchNorm keeps acting identical to training and needs no running
    statistics in a saved agent.
    """
    z = layer_norm(xp, dense_apply(params, x))
    return simplicial_embedding(xp, z, cfg.sem_simplices, cfg.sem_dim, cfg.sem_tau)


def flat_dim(shape: Sequence[int]) -> int:
    """Number of elements of an observation of ``shape``."""
    return int(np.prod(shape, dtype=np.int64)) if len(shape) else 1
