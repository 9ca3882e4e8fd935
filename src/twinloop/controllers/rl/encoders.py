"""Observation encoders for every kind of observation the systems emit, in NumPy and JAX.

An agent's observation is split into *parts* by kind (:func:`classify`):

=========  ===============================================  ====================================
kind       what                                             encoder
=========  ===============================================  ====================================
vector     float or integer Box, ``MultiBinary``,           none here: the parts are
           ``Discrete`` (flattened, normalised by the       concatenated and fed to the MLP
           agent's running mean and std)                    torso (:mod:`.networks`)
image      uint8 Box ``(H, W, C <= 4)`` or ``(H, W)``       ``cnn``: Nature-DQN's three convs
                                                            (Mnih et al. 2015: 8x8/4, 4x4/2,
                                                            3x3/1, 32/64/64 channels, VALID);
                                                            ``impala``: IMPALA's ResNet (Espeholt
                                                            et al. 2018: 3 stages of 3x3 conv,
                                                            3x3/2 max-pool and 2 residual blocks,
                                                            16/32/32 channels)
tokens     a Dict member that is a 1-D integer Box with     ``gru`` (default): a token embedding
           ``low = 0`` and one ``high >= 2`` for every      read by a GRU (Cho et al. 2014) that
           position: token ids, 0 = pad                     skips pad positions, its last state;
                                                            ``mean``: the masked mean of the
                                                            token embeddings (bag of words)
=========  ===============================================  ====================================

The features of every part are concatenated, then the MLP torso and the optional simplicial
embedding follow (:func:`~twinloop.controllers.rl.networks.encoder_apply`). Why a GRU by
default for text: LangRearrange's instructions name a source and a target from the same
receptacle words ("from the sink to the sofa"), so a bag of words cannot tell the two apart
(its mean is the same for both orders); the GRU reads order at the price of a sequential
30-step loop. ``mean`` is the cheap choice for order-free vocabularies.

Images are scaled to ``[0, 1]`` (``/ 255``) inside the network, not by the running
normaliser, so replay buffers and rollouts keep them as uint8 and a GPU receives bytes.

Every forward takes the array module ``xp``: ``numpy`` (a deployed controller: convolution
by im2col, a matrix product over the patches) or ``jax.numpy`` (training:
``lax.conv_general_dilated``); both use the same explicit padding, so they agree to float32
rounding. Max-pooling and the GRU are written once for both.

Storage (:class:`ObsLayout`): a Box of vectors is kept as float32 rows, as before; any other
observation is packed into one uint8 row per observation, each part as its own bytes (images
as they come, token ids as uint8/uint16, vectors as float32), so a replay buffer or a rollout
stores a 64-px frame in 12,288 bytes rather than 49,152 (float32) or 98,304 (float64).

Memory: a replay transition keeps its observation and its next one, so 100k transitions of
LangRearrange's rgb observation at 64 px (image, instruction as 30 uint16 ids, is_holding:
12,349 bytes) take 2.47 GB (4 x that as float32 rows: 9.9 GB); at 128 px, 9.8 GB. A PPO
rollout of the defaults (128 steps x 8 envs) holds 25 MB of frames (obs and next_obs).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np

Params = dict[str, Any]

VECTOR, IMAGE, TOKENS = "vector", "image", "tokens"
KINDS = (VECTOR, IMAGE, TOKENS)
IMAGE_ENCODERS = ("cnn", "impala")
TEXT_ENCODERS = ("gru", "mean")
#: Dict keys an agent leaves out unless ``obs_keys`` names them: privileged state (the
#: rearrangement task's ``symbolic`` vector holds the true world and the goal).
PRIVILEGED_KEYS = ("symbolic",)
#: IMPALA's max-pool: 3x3 window, stride 2, SAME padding.
_POOL, _POOL_STRIDE = 3, 2


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """One non-vector part of an observation, as the encoder sees it.

    Attributes:
        key: The Dict key (``""`` for a bare Box).
        kind: ``"image"`` or ``"tokens"``.
        shape: ``(H, W, C)`` of an image, ``(T,)`` of a token sequence.
        vocab: Number of token ids (tokens only; else 0).
    """

    key: str
    kind: str
    shape: tuple[int, ...]
    vocab: int = 0

    def __post_init__(self) -> None:
        """Check the kind and shape."""
        if self.kind == IMAGE and (len(self.shape) != 3 or min(self.shape) < 1):
            raise ValueError(f"image input {self.key!r} needs a shape (H, W, C), not {self.shape}")
        if self.kind == TOKENS and (len(self.shape) != 1 or self.vocab < 2):
            raise ValueError(
                f"token input {self.key!r} needs a shape (T,) and vocab >= 2, "
                f"not {self.shape} and {self.vocab}"
            )
        if self.kind not in (IMAGE, TOKENS):
            raise ValueError(f"input kind {self.kind!r} is not one of {IMAGE}, {TOKENS}")

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> InputSpec:
        """Inverse of ``dataclasses.asdict``."""
        return cls(str(data["key"]), str(data["kind"]), tuple(int(s) for s in data["shape"]),
                   int(data.get("vocab", 0)))  # fmt: skip


# --- observation spaces: parts, packing into rows ---------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Part:
    key: str
    kind: str
    shape: tuple[int, ...]  # as the env gives it (per observation)
    dtype: str  # storage dtype in the packed row
    vocab: int = 0

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1

    @property
    def nbytes(self) -> int:
        return self.size * np.dtype(self.dtype).itemsize


def _token_dtype(vocab: int) -> str:
    return "uint8" if vocab <= 256 else "uint16" if vocab <= 65536 else "int32"


def classify(space: gym.Space, key: str = "", in_dict: bool = False) -> _Part:
    """The part an observation space is (see the module docstring's table).

    Raises:
        TypeError: A space that is neither Box, MultiBinary nor Discrete.
    """
    if isinstance(space, gym.spaces.Box):
        shape = tuple(int(s) for s in space.shape)
        if space.dtype == np.uint8 and (
            len(shape) == 2 or (len(shape) == 3 and 1 <= shape[2] <= 4)
        ):
            return _Part(key, IMAGE, shape, "uint8")
        if in_dict and np.issubdtype(space.dtype, np.integer) and len(shape) == 1:
            low, high = np.asarray(space.low), np.asarray(space.high)
            if shape[0] >= 2 and (low == 0).all() and (high == high[0]).all() and high[0] >= 2:
                vocab = int(high[0]) + 1
                return _Part(key, TOKENS, shape, _token_dtype(vocab), vocab)
        return _Part(key, VECTOR, shape, "float32")
    if isinstance(space, gym.spaces.MultiBinary):
        return _Part(key, VECTOR, tuple(np.atleast_1d(space.n).tolist()), "uint8")
    if isinstance(space, gym.spaces.Discrete):
        return _Part(key, VECTOR, (), "float32")
    raise TypeError(
        f"observation {key or 'space'} {space} is not a Box, MultiBinary or Discrete; "
        "agents encode those (and Dicts of them)"
    )


def parse_keys(text: str) -> tuple[str, ...]:
    """``"image, instruction"`` -> ``("image", "instruction")`` (empty: the default keys)."""
    return tuple(k.strip() for k in text.split(",") if k.strip())


class ObsLayout:
    """How an agent stores and feeds one observation space.

    A Box whose parts are all vectors is *flat*: rows are the float32 flattened observation
    (``width == in_dim``) and all of it is normalised. Anything else (an image Box, a Dict)
    is *structured*: rows are uint8, each part's bytes in turn, and only the vector parts are
    normalised (``in_dim`` of them) and fed to the torso directly.

    Args:
        space: The env's single observation space (Box, or Dict of Box, MultiBinary,
            Discrete).
        keys: The Dict keys the agent sees, in this order (empty: every key but
            :data:`PRIVILEGED_KEYS`, in the space's order). Must be empty for a Box.

    Raises:
        TypeError: An unsupported space.
        ValueError: ``keys`` name a key the Dict lacks, twice, or a Box is given keys.
    """

    def __init__(self, space: gym.Space, keys: Sequence[str] = ()) -> None:
        """Split the space into parts and lay them out in a row."""
        keys = tuple(keys)
        if isinstance(space, gym.spaces.Dict):
            names = list(space.spaces)
            for k in keys:
                if k not in names:
                    raise ValueError(
                        f"obs_keys names {k!r}, not a key of the observation; keys: "
                        f"{', '.join(names)}"
                    )
            if len(set(keys)) != len(keys):
                raise ValueError(f"obs_keys repeats a key: {', '.join(keys)}")
            used = keys or tuple(k for k in names if k not in PRIVILEGED_KEYS)
            if not used:
                raise ValueError(f"no observation key left to encode among {', '.join(names)}")
            parts = [classify(space.spaces[k], k, in_dict=True) for k in used]
            self.dict = True
        else:
            if keys:
                raise ValueError(f"obs_keys {keys} given for a {type(space).__name__} observation")
            parts = [classify(space)]
            self.dict = False
        self.keys = tuple(p.key for p in parts)
        self.parts = tuple(parts)
        self.flat = not self.dict and parts[0].kind == VECTOR
        #: No images or tokens: the encoder's input is the vector part alone (a flat Box, or a
        #: Dict whose chosen keys are all vectors).
        self.vector_only = all(p.kind == VECTOR for p in parts)
        vectors = [p for p in parts if p.kind == VECTOR]
        self.in_dim = sum(p.size for p in vectors)
        if self.flat:
            self.shape = parts[0].shape
            self.width, self.dtype = self.in_dim, np.dtype(np.float32)
        else:
            self.shape = None
            self.width, self.dtype = sum(p.nbytes for p in parts), np.dtype(np.uint8)
        offsets = np.cumsum([0] + [p.nbytes for p in parts]).tolist()
        self._offsets = tuple(itertools.pairwise(offsets))

    @property
    def inputs(self) -> tuple[InputSpec, ...]:
        """The non-vector parts, as the encoder's config names them (empty when flat)."""
        out = []
        for p in self.parts:
            if p.kind == IMAGE:
                shape = p.shape if len(p.shape) == 3 else (*p.shape, 1)
                out.append(InputSpec(p.key, IMAGE, shape))
            elif p.kind == TOKENS:
                out.append(InputSpec(p.key, TOKENS, p.shape, p.vocab))
        return tuple(out)

    def to_json(self) -> dict[str, Any]:
        """JSON form: what a deployed controller checks against its env."""
        return {
            "flat": self.flat,
            "keys": list(self.keys) if self.dict else None,
            "parts": [
                {"key": p.key, "kind": p.kind, "shape": list(p.shape), "dtype": p.dtype,
                 "vocab": p.vocab}
                for p in self.parts
            ],
        }  # fmt: skip

    def row_bytes(self) -> int:
        """Bytes one stored observation takes."""
        return self.width * self.dtype.itemsize

    # --- packing ------------------------------------------------------------------------------
    def pack(self, obs: Any) -> np.ndarray:
        """A batch of env observations as stored rows ``(n, width)``.

        Raises:
            ValueError: An observation (or one of its parts) of another shape than the space's.
        """
        if self.flat:
            arr = np.asarray(obs, np.float32)
            if arr.shape[1:] != self.shape:
                raise ValueError(
                    f"observations of shape {arr.shape[1:]} given to an agent trained on "
                    f"{self.shape}"
                )
            return arr.reshape(arr.shape[0], self.width)
        if self.dict and not isinstance(obs, Mapping):
            raise ValueError(f"a Dict observation with keys {self.keys} expected, not {type(obs)}")
        chunks = []
        n = None
        for p in self.parts:
            arr = np.asarray(obs[p.key] if self.dict else obs)
            if arr.shape[1:] != p.shape:
                raise ValueError(
                    f"observation {p.key or 'image'!r} of shape {arr.shape[1:]} given to an "
                    f"agent trained on {p.shape}"
                )
            if n is None:
                n = arr.shape[0]
            elif arr.shape[0] != n:
                raise ValueError(f"observation {p.key!r} has {arr.shape[0]} rows, not {n}")
            chunk = np.ascontiguousarray(arr.reshape(n, p.size), dtype=p.dtype)
            chunks.append(chunk.view(np.uint8))
        return np.concatenate(chunks, axis=1)

    def _part(self, rows: np.ndarray, i: int) -> np.ndarray:
        """Part ``i`` of rows ``(n, width)`` in its storage dtype, shaped ``(n, *shape)``."""
        p = self.parts[i]
        a, b = self._offsets[i]
        raw = np.ascontiguousarray(rows[:, a:b]).view(p.dtype)
        return raw.reshape(rows.shape[0], *p.shape)

    def vector(self, rows: np.ndarray) -> np.ndarray:
        """The vector features ``(..., in_dim)`` (float32) of stored rows ``(..., width)``."""
        rows = np.asarray(rows)
        if self.flat:
            return rows.astype(np.float32, copy=False)
        lead = rows.shape[:-1]
        flat_rows = rows.reshape(-1, self.width)
        cols = [
            self._part(flat_rows, i).reshape(flat_rows.shape[0], p.size).astype(np.float32)
            for i, p in enumerate(self.parts)
            if p.kind == VECTOR
        ]
        out = np.concatenate(cols, axis=1) if cols else np.zeros((len(flat_rows), 0), np.float32)
        return out.reshape(*lead, self.in_dim)

    def net_inputs(self, rows: np.ndarray, normalized_vector: np.ndarray) -> Any:
        """The encoder's input of stored rows ``(..., width)`` (see :func:`encode_inputs`).

        Args:
            rows: Stored rows.
            normalized_vector: ``self.vector(rows)`` after normalisation (or as it is).

        Returns:
            ``normalized_vector`` itself for a layout without images or tokens (a flat Box, or
            a Dict whose chosen keys are all vectors); otherwise a dict: ``vector`` (float32
            ``(..., in_dim)``) and ``parts``, a list of the images (uint8 ``(..., H, W, C)``)
            and token ids (int32 ``(..., T)``) in the order of :attr:`inputs`.
        """
        if self.flat:
            return normalized_vector
        if self.vector_only:
            return np.asarray(normalized_vector, np.float32)
        rows = np.asarray(rows)
        lead = rows.shape[:-1]
        flat_rows = rows.reshape(-1, self.width)
        parts = []
        for i, p in enumerate(self.parts):
            if p.kind == IMAGE:
                img = self._part(flat_rows, i)
                shape = p.shape if len(p.shape) == 3 else (*p.shape, 1)
                parts.append(img.reshape(*lead, *shape))
            elif p.kind == TOKENS:
                parts.append(self._part(flat_rows, i).astype(np.int32).reshape(*lead, *p.shape))
        return {"vector": np.asarray(normalized_vector, np.float32), "parts": parts}

    def zeros_inputs(self, lead: tuple[int, ...]) -> Any:
        """Zero encoder inputs for a batch of shape ``lead`` (storage for rollouts)."""
        if self.vector_only:
            return np.zeros((*lead, self.in_dim), np.float32)
        parts = [
            np.zeros((*lead, *s.shape), np.uint8 if s.kind == IMAGE else np.int32)
            for s in self.inputs
        ]
        return {"vector": np.zeros((*lead, self.in_dim), np.float32), "parts": parts}


def assign(dst: Any, index: Any, src: Any) -> None:
    """``dst[index] = src`` leaf by leaf for arrays, dicts and lists of them (in place)."""
    if isinstance(dst, dict):
        for k in dst:
            assign(dst[k], index, src[k])
    elif isinstance(dst, list | tuple):
        for d, s in zip(dst, src, strict=True):
            assign(d, index, s)
    else:
        dst[index] = src


def batch_one(obs: Any) -> Any:
    """One observation (array or Dict of arrays) as a batch of one."""
    if isinstance(obs, Mapping):
        return {k: np.asarray(v)[None] for k, v in obs.items()}
    return np.asarray(obs)[None]


# --- layers, in NumPy and JAX -----------------------------------------------------------------
def _normal(rng: np.random.Generator, shape: tuple[int, ...], std: float) -> np.ndarray:
    return (rng.standard_normal(shape) * std).astype(np.float32)


def conv_init(rng: np.random.Generator, k: int, c_in: int, c_out: int) -> Params:
    """A ``k x k`` convolution's parameters: HWIO weights ``N(0, 2 / fan_in)``, zero bias."""
    w = _normal(rng, (k, k, c_in, c_out), math.sqrt(2.0 / (k * k * c_in)))
    return {"w": w, "b": np.zeros(c_out, np.float32)}


def _is_numpy(xp: Any) -> bool:
    return xp is np


def conv2d(xp: Any, x: Any, p: Params, stride: int, pad: tuple[int, int, int, int]) -> Any:
    """2-D convolution (cross-correlation, as every deep-learning library) of NHWC ``x``.

    Args:
        xp: ``numpy`` (im2col and one matrix product) or ``jax.numpy`` (XLA's convolution).
        x: ``(B, H, W, C)``.
        p: ``w`` ``(k, k, C, O)`` (HWIO) and ``b`` ``(O,)``.
        stride: The same along both axes.
        pad: Zero padding ``(top, bottom, left, right)``.

    Returns:
        ``(B, H', W', O)`` with ``H' = (H + top + bottom - k) // stride + 1`` (and so W').
    """
    w, b = p["w"], p["b"]
    kh, kw, c, o = w.shape
    top, bottom, left, right = pad
    if not _is_numpy(xp):
        import jax

        y = jax.lax.conv_general_dilated(
            x, w, (stride, stride), ((top, bottom), (left, right)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )  # fmt: skip
        return y + b
    x = np.pad(np.asarray(x, np.float32), ((0, 0), (top, bottom), (left, right), (0, 0)))
    windows = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(1, 2))
    windows = windows[:, ::stride, ::stride]  # (B, H', W', C, kh, kw)
    bsz, ho, wo = windows.shape[:3]
    cols = windows.transpose(0, 1, 2, 4, 5, 3).reshape(bsz * ho * wo, kh * kw * c)
    y = cols @ np.asarray(w, np.float32).reshape(kh * kw * c, o)
    return y.reshape(bsz, ho, wo, o) + b


def _same_pad(size: int, k: int, stride: int) -> tuple[int, int, int]:
    """Output size and ``(before, after)`` padding of SAME padding (XLA's convention)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + k - size, 0)
    return out, total // 2, total - total // 2


def max_pool(xp: Any, x: Any, k: int = _POOL, stride: int = _POOL_STRIDE) -> Any:
    """``k x k`` max-pooling of NHWC ``x`` at ``stride`` with SAME padding (by -inf)."""
    h, w = x.shape[1], x.shape[2]
    ho, top, bottom = _same_pad(h, k, stride)
    wo, left, right = _same_pad(w, k, stride)
    x = xp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)), constant_values=-np.inf)
    out = None
    for i in range(k):
        for j in range(k):
            s = x[:, i : i + (ho - 1) * stride + 1 : stride, j : j + (wo - 1) * stride + 1 : stride]
            out = s if out is None else xp.maximum(out, s)
    return out


def _relu(xp: Any, x: Any) -> Any:
    return xp.maximum(x, 0.0)


def _sigmoid(xp: Any, x: Any) -> Any:
    return 0.5 * (xp.tanh(0.5 * x) + 1.0)  # no overflow for large |x|, unlike 1 / (1 + e^-x)


def _out_size(size: int, k: int, stride: int) -> int:
    return (size - k) // stride + 1


# --- image encoders ---------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ImageNet:
    """Shape of an image encoder (part of the encoder's config).

    Attributes:
        name: ``"cnn"`` or ``"impala"``.
        channels: Output channels per conv layer (cnn) or per stage (impala).
        kernels: Kernel size per conv layer (cnn only).
        strides: Stride per conv layer (cnn only).
    """

    name: str
    channels: tuple[int, ...]
    kernels: tuple[int, ...] = ()
    strides: tuple[int, ...] = ()


def image_out_shape(net: ImageNet, shape: tuple[int, int, int]) -> tuple[int, int, int]:
    """``(H, W, C)`` of the image encoder's last feature map for input ``shape``.

    Raises:
        ValueError: The image is too small for the kernels.
    """
    h, w, _ = shape
    if net.name == "impala":
        for _ in net.channels:
            h, w = _same_pad(h, _POOL, _POOL_STRIDE)[0], _same_pad(w, _POOL, _POOL_STRIDE)[0]
        return h, w, net.channels[-1]
    for i, (k, s) in enumerate(zip(net.kernels, net.strides, strict=True)):
        if h < k or w < k:
            raise ValueError(
                f"an image of {shape[0]}x{shape[1]} px is too small for cnn_kernels="
                f"{net.kernels}, cnn_strides={net.strides}: conv layer {i + 1} sees {h}x{w} px "
                f"with a {k}x{k} kernel (use smaller kernels or strides, or image_encoder=impala)"
            )
        h, w = _out_size(h, k, s), _out_size(w, k, s)
    return h, w, net.channels[-1]


def image_init(rng: np.random.Generator, net: ImageNet, shape: tuple[int, int, int]) -> Params:
    """Parameters of the image encoder ``net`` for images of ``shape``."""
    image_out_shape(net, shape)  # raises if too small
    c = shape[2]
    if net.name == "cnn":
        convs = []
        for k, c_out in zip(net.kernels, net.channels, strict=True):
            convs.append(conv_init(rng, k, c, c_out))
            c = c_out
        return {"convs": convs}
    stages = []
    for c_out in net.channels:
        stages.append(
            {
                "conv": conv_init(rng, 3, c, c_out),
                "blocks": [
                    {"a": conv_init(rng, 3, c_out, c_out), "b": conv_init(rng, 3, c_out, c_out)}
                    for _ in range(2)
                ],
            }
        )
        c = c_out
    return {"stages": stages}


def image_apply(xp: Any, params: Params, net: ImageNet, x: Any) -> Any:
    """Features ``(B, F)`` of uint8 images ``(B, H, W, C)`` (scaled to ``[0, 1]`` first)."""
    x = x.astype(np.float32) * np.float32(1.0 / 255.0)
    if net.name == "cnn":
        for conv, s in zip(params["convs"], net.strides, strict=True):
            x = _relu(xp, conv2d(xp, x, conv, s, (0, 0, 0, 0)))
    else:
        same = (1, 1, 1, 1)  # 3x3 convolutions at stride 1
        for stage in params["stages"]:
            x = max_pool(xp, conv2d(xp, x, stage["conv"], 1, same))
            for block in stage["blocks"]:
                y = conv2d(xp, _relu(xp, x), block["a"], 1, same)
                x = x + conv2d(xp, _relu(xp, y), block["b"], 1, same)
        x = _relu(xp, x)
    return x.reshape(x.shape[0], -1)


# --- token encoders ---------------------------------------------------------------------------
# --- a GRU cell with a carried state (recurrent agents) ---------------------------------------
def gru_init(rng: np.random.Generator, n_in: int, hidden: int) -> Params:
    """A GRU's weights, laid out as :func:`tokens_init`'s ``gru`` (gates r, z, n in turn).

    Input weights ``N(0, 1 / n_in)``, recurrent weights ``N(0, 1 / hidden)``, zero biases.
    """
    return {
        "wx": _normal(rng, (n_in, 3 * hidden), 1.0 / math.sqrt(n_in)),
        "wh": _normal(rng, (hidden, 3 * hidden), 1.0 / math.sqrt(hidden)),
        "bx": np.zeros(3 * hidden, np.float32),
        "bh": np.zeros(3 * hidden, np.float32),
    }


def gru_cell(xp: Any, g: Params, gx: Any, h: Any) -> Any:
    """One GRU step (Cho et al. 2014; the reset gate applied after ``h @ wh`` as in cuDNN).

    Args:
        xp: ``numpy`` or ``jax.numpy``.
        g: Weights of :func:`gru_init`.
        gx: Input terms ``x @ wx + bx`` ``(B, 3H)`` (computed for every step at once).
        h: State ``(B, H)``.

    Returns:
        The next state ``(B, H)``: the same math as :func:`tokens_apply`'s GRU.
    """
    hidden = g["wh"].shape[0]
    gh = h @ g["wh"] + g["bh"]
    r = _sigmoid(xp, gx[..., :hidden] + gh[..., :hidden])
    z = _sigmoid(xp, gx[..., hidden : 2 * hidden] + gh[..., hidden : 2 * hidden])
    n = xp.tanh(gx[..., 2 * hidden :] + r * gh[..., 2 * hidden :])
    return (1.0 - z) * n + z * h


def tokens_init(
    rng: np.random.Generator, vocab: int, encoder: str, token_dim: int, hidden: int
) -> Params:
    """Parameters of a token encoder: the embedding table (and the GRU's weights)."""
    params: Params = {"embed": _normal(rng, (vocab, token_dim), 1.0)}
    if encoder == "gru":
        params["gru"] = gru_init(rng, token_dim, hidden)
    return params


def tokens_out_dim(encoder: str, token_dim: int, hidden: int) -> int:
    """Width of a token encoder's features."""
    return hidden if encoder == "gru" else token_dim


def tokens_apply(xp: Any, params: Params, encoder: str, ids: Any) -> Any:
    """Features ``(B, F)`` of token ids ``(B, T)`` (0 = pad, ignored).

    ``mean``: the mean embedding of the non-pad tokens (zeros for an empty sequence).
    ``gru``: the GRU's state after the last non-pad token, starting from zeros; a pad
    position leaves the state as it is, so pads anywhere are skipped.
    """
    emb = params["embed"][ids]  # (B, T, E)
    mask = (ids != 0).astype(np.float32)
    if encoder == "mean":
        total = (emb * mask[..., None]).sum(axis=1)
        return total / xp.maximum(mask.sum(axis=1, keepdims=True), 1.0)
    g = params["gru"]
    hidden = g["wh"].shape[0]
    gx = emb @ g["wx"] + g["bx"]  # (B, T, 3H): input terms of every step at once
    h = xp.zeros((ids.shape[0], hidden), np.float32)
    for t in range(ids.shape[1]):
        m = mask[:, t : t + 1]
        h = m * gru_cell(xp, g, gx[:, t], h) + (1.0 - m) * h
    return h


# --- every part together ----------------------------------------------------------------------
def inputs_init(rng: np.random.Generator, cfg: Any) -> tuple[list[Params], int]:
    """Parameters of the encoders of ``cfg.inputs`` and the width of their features."""
    params, width = [], 0
    for spec in cfg.inputs:
        if spec.kind == IMAGE:
            net = cfg.image_net
            params.append(image_init(rng, net, spec.shape))
            width += int(np.prod(image_out_shape(net, spec.shape)))
        else:
            params.append(
                tokens_init(rng, spec.vocab, cfg.text_encoder, cfg.token_dim, cfg.text_hidden)
            )
            width += tokens_out_dim(cfg.text_encoder, cfg.token_dim, cfg.text_hidden)
    return params, width


def encode_inputs(xp: Any, params: list[Params], cfg: Any, x: Mapping[str, Any]) -> Any:
    """The concatenated features ``(..., F)`` of a structured input ``x``.

    ``x`` holds ``vector`` ``(..., in_dim)`` and ``parts`` (as
    :meth:`ObsLayout.net_inputs` gives them); any number of leading axes.
    """
    vec = x["vector"]
    lead = vec.shape[:-1]
    n = int(np.prod(lead, dtype=np.int64)) if lead else 1
    feats = [vec.reshape(n, vec.shape[-1])]
    for spec, p, a in zip(cfg.inputs, params, x["parts"], strict=True):
        a = a.reshape(n, *spec.shape)
        if spec.kind == IMAGE:
            feats.append(image_apply(xp, p, cfg.image_net, a))
        else:
            feats.append(tokens_apply(xp, p, cfg.text_encoder, a))
    out = xp.concatenate(feats, axis=-1)
    return out.reshape(*lead, out.shape[-1])


def memory_per_transition(layout: ObsLayout, stored_observations: int = 2) -> int:
    """Bytes of observations one stored transition takes (obs and next_obs by default)."""
    return stored_observations * layout.row_bytes()
