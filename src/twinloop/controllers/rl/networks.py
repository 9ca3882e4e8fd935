"""Small networks as plain pytrees: the encoder (MLP torso), a simplicial embedding, heads.

The encoder takes a flat vector (a Box observation: the MLP torso alone, as always) or a
structured observation, whose images and token ids are first encoded by
:mod:`~twinloop.controllers.rl.encoders` (CNN / IMPALA ResNet, GRU / mean of embeddings)
and concatenated with its vector parts before the torso. The simplicial embedding, when on,
is the last stage of every encoder.

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

from twinloop.controllers.rl.encoders import (
    IMAGE,
    IMAGE_ENCODERS,
    TEXT_ENCODERS,
    ImageNet,
    InputSpec,
    encode_inputs,
    image_out_shape,
    inputs_init,
)

#: Hidden activations by name; each works on JAX and NumPy arrays.
ACTIVATIONS = ("relu", "tanh")
#: Gain of the hidden layers' initial weights for each activation.
_GAIN = {"relu": math.sqrt(2.0), "tanh": 1.0}

Params = dict[str, Any]


@dataclasses.dataclass(frozen=True, kw_only=True)
class EncoderConfig:
    """Shape of an encoder.

    Attributes:
        hidden: Widths of the torso's hidden layers.
        activation: ``"relu"`` or ``"tanh"`` (the torso's; convolutions use ReLU).
        sem_simplices: Number ``L`` of simplices of the simplicial embedding (0: none).
        sem_dim: Dimension ``V`` of each simplex.
        sem_tau: Softmax temperature ``tau`` of the embedding (> 0).
        inputs: The observation's images and token sequences (empty: a flat vector).
        image_encoder: ``"cnn"`` (Nature DQN) or ``"impala"`` (IMPALA's ResNet).
        cnn_channels: Channels of the ``cnn``'s conv layers.
        cnn_kernels: Kernel sizes of the ``cnn``'s conv layers.
        cnn_strides: Strides of the ``cnn``'s conv layers.
        impala_channels: Channels of the ``impala`` stages.
        text_encoder: ``"gru"`` or ``"mean"`` (of the token embeddings).
        token_dim: Width of a token embedding.
        text_hidden: Width of the GRU's state.
    """

    hidden: tuple[int, ...] = (128, 128)
    activation: str = "relu"
    sem_simplices: int = 0
    sem_dim: int = 8
    sem_tau: float = 1.0
    inputs: tuple[InputSpec, ...] = ()
    image_encoder: str = "cnn"
    cnn_channels: tuple[int, ...] = (32, 64, 64)
    cnn_kernels: tuple[int, ...] = (8, 4, 3)
    cnn_strides: tuple[int, ...] = (4, 2, 1)
    impala_channels: tuple[int, ...] = (16, 32, 32)
    text_encoder: str = "gru"
    token_dim: int = 32
    text_hidden: int = 64

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
        if self.image_encoder not in IMAGE_ENCODERS:
            raise ValueError(
                f"image_encoder {self.image_encoder!r} unknown; valid: {', '.join(IMAGE_ENCODERS)}"
            )
        if self.text_encoder not in TEXT_ENCODERS:
            raise ValueError(
                f"text_encoder {self.text_encoder!r} unknown; valid: {', '.join(TEXT_ENCODERS)}"
            )
        n = len(self.cnn_channels)
        if not n or len(self.cnn_kernels) != n or len(self.cnn_strides) != n:
            raise ValueError(
                f"cnn_channels {self.cnn_channels}, cnn_kernels {self.cnn_kernels} and "
                f"cnn_strides {self.cnn_strides} must be non-empty and of one length"
            )
        for name in ("cnn_channels", "cnn_kernels", "cnn_strides", "impala_channels"):
            values = getattr(self, name)
            if not values or any(int(v) < 1 for v in values):
                raise ValueError(f"{name} must be >= 1 and at least one, got {values}")
        if self.token_dim < 1 or self.text_hidden < 1:
            raise ValueError(
                f"token_dim and text_hidden must be >= 1, got {self.token_dim}, {self.text_hidden}"
            )
        for spec in self.inputs:
            if spec.kind == IMAGE:
                image_out_shape(self.image_net, spec.shape)  # raises if the image is too small

    @property
    def out_dim(self) -> int:
        """Width of the encoder's output."""
        return self.sem_simplices * self.sem_dim if self.sem_simplices else self.hidden[-1]

    @property
    def image_net(self) -> ImageNet:
        """The image encoder's shape."""
        if self.image_encoder == "impala":
            return ImageNet("impala", tuple(self.impala_channels))
        return ImageNet(
            "cnn", tuple(self.cnn_channels), tuple(self.cnn_kernels), tuple(self.cnn_strides)
        )

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EncoderConfig:
        """Inverse of ``dataclasses.asdict`` (a config saved before ``inputs`` existed too)."""
        from twinloop.core.config import from_dict

        data = dict(data)
        inputs = tuple(InputSpec.from_json(d) for d in data.pop("inputs", ()))
        return dataclasses.replace(from_dict(cls, data), inputs=inputs)


def dense_init(rng: np.random.Generator, n_in: int, n_out: int, gain: float) -> Params:
    """One dense layer's parameters (float32)."""
    w = rng.standard_normal((n_in, n_out)) * (gain / math.sqrt(n_in))
    return {"w": w.astype(np.float32), "b": np.zeros(n_out, np.float32)}


def encoder_init(rng: np.random.Generator, in_dim: int, cfg: EncoderConfig) -> Params:
    """Parameters of :func:`encoder_apply` for vector inputs of width ``in_dim``.

    With ``cfg.inputs`` the parameters also hold ``parts``, one encoder per image or token
    input, and ``in_dim`` is the width of the observation's vector parts alone (maybe 0).
    """
    params: Params = {}
    width = in_dim
    if cfg.inputs:
        params["parts"], extra = inputs_init(rng, cfg)
        width += extra
    widths = [width, *cfg.hidden]
    gain = _GAIN[cfg.activation]
    params["layers"] = [dense_init(rng, a, b, gain) for a, b in itertools.pairwise(widths)]
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
    """The encoder's features of a batch of observations.

    ``x``: flat observations ``(..., in_dim)``, or with ``cfg.inputs`` the dict of
    :meth:`~twinloop.controllers.rl.encoders.ObsLayout.net_inputs`.
    """
    x = encoder_trunk(xp, params, cfg, x)
    if cfg.sem_simplices:
        x = sem_apply(xp, params["sem"], cfg, x)
    return x


def encoder_trunk(xp: Any, params: Params, cfg: EncoderConfig, x: Any) -> Any:
    """The encoder up to its torso's last hidden layer (the input of the simplicial embedding)."""
    if cfg.inputs:
        x = encode_inputs(xp, params["parts"], cfg, x)
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
