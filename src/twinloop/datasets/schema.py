"""What a dataset stores per step: fields derived from the spaces and infos of an env.

An episode of ``L`` steps is a group of datasets. Observation-aligned fields (observation
leaves, infos, the wall clock) have ``L + 1`` rows: row 0 is the reset, row ``k`` the result of
step ``k``. Step-aligned fields (actions, rewards, terminations, truncations) have ``L`` rows.
Dict and Tuple observations become groups (Tuple members are named ``_index_<k>``, as Minari
names them); ``uint8`` image boxes are chunked one frame per chunk and deflate-compressed;
``Text`` becomes fixed-width UTF-8. Info keys with ``/`` (``reward/progress``) become nested
groups under ``infos``.

Spaces are serialised to the JSON that Minari reads (``{"type": "Box", "dtype": ...}``), so a
dataset's ``metadata.json`` is understood by ``minari.MinariDataset`` as well as by us.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Iterator, Mapping
from typing import Any

import gymnasium as gym
import numpy as np

log = logging.getLogger(__name__)

#: Where a field's value comes from.
SOURCE_OBS = "obs"
SOURCE_ACTION = "action"
SOURCE_REWARD = "reward"
SOURCE_TERMINATED = "terminated"
SOURCE_TRUNCATED = "truncated"
SOURCE_INFO = "info"
SOURCE_WALL = "wall"

#: The info key under which the writer stores the wall clock of every row (Unix time, s).
WALL_TIME_KEY = "wall_time_s"


@dataclasses.dataclass(frozen=True, kw_only=True)
class FieldSpec:
    """One dataset of an episode group.

    Attributes:
        path: Path inside the episode group, e.g. ``observations/image`` or
            ``infos/reward/progress``.
        source: One of the ``SOURCE_*`` names.
        key: Leaf path within the source (dict keys / tuple indices, or the info key).
        dtype: Element type as a numpy dtype string (little-endian).
        shape: Shape of one row.
        obs_aligned: ``L + 1`` rows (observations, infos, wall clock) instead of ``L``.
        image: Chunked one row per chunk and deflate-compressed.
        text: Fixed-width UTF-8 text (a ``Text`` space leaf).
    """

    path: str
    source: str
    key: tuple[str | int, ...] = ()
    dtype: str
    shape: tuple[int, ...] = ()
    obs_aligned: bool = False
    image: bool = False
    text: bool = False

    @property
    def np_dtype(self) -> np.dtype:
        """The element dtype."""
        return np.dtype(self.dtype)

    @property
    def row_bytes(self) -> int:
        """Bytes of one row."""
        return int(self.np_dtype.itemsize * math.prod(self.shape))

    def to_json(self) -> dict[str, Any]:
        """A JSON-friendly dict."""
        d = dataclasses.asdict(self)
        d["key"] = list(self.key)
        d["shape"] = list(self.shape)
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> FieldSpec:
        """Inverse of :meth:`to_json`."""
        return cls(**{**d, "key": tuple(d["key"]), "shape": tuple(d["shape"])})


# --- spaces -----------------------------------------------------------------------------------
def is_image_space(space: gym.Space) -> bool:
    """A ``uint8`` Box of rank 2 (H, W) or 3 (H, W, C): stored chunked and compressed."""
    return (
        isinstance(space, gym.spaces.Box)
        and space.dtype == np.uint8
        and len(space.shape) in (2, 3)
        and space.shape[0] >= 8
        and space.shape[1] >= 8
    )


def text_width(space: gym.spaces.Text) -> int:
    """Bytes of the widest UTF-8 string a ``Text`` space can hold."""
    widest = max((len(c.encode("utf-8")) for c in space.character_set), default=1)
    return max(1, space.max_length * widest)


def leaves(space: gym.Space, key: tuple = ()) -> Iterator[tuple[tuple, gym.Space]]:
    """``(key path, leaf space)`` for every leaf of a (nested) Dict/Tuple space."""
    if isinstance(space, gym.spaces.Dict):
        for k, sub in space.spaces.items():
            yield from leaves(sub, (*key, k))
    elif isinstance(space, gym.spaces.Tuple):
        for k, sub in enumerate(space.spaces):
            yield from leaves(sub, (*key, k))
    else:
        yield key, space


def _leaf_name(part: str | int) -> str:
    return f"_index_{part}" if isinstance(part, int) else str(part)


def _leaf_dtype_shape(space: gym.Space, where: str) -> tuple[str, tuple[int, ...], bool]:
    if isinstance(space, gym.spaces.Box):
        return np.dtype(space.dtype).newbyteorder("<").str, tuple(space.shape), False
    if isinstance(space, gym.spaces.Discrete):
        return "<i8", (), False
    if isinstance(space, gym.spaces.MultiDiscrete):
        return np.dtype(space.dtype).newbyteorder("<").str, tuple(space.shape), False
    if isinstance(space, gym.spaces.MultiBinary):
        return "|i1", tuple(np.atleast_1d(space.n).tolist()), False
    if isinstance(space, gym.spaces.Text):
        return f"|S{text_width(space)}", (), True
    raise TypeError(f"{where}: cannot record a {type(space).__name__} space")


def space_fields(space: gym.Space, root: str, source: str, obs_aligned: bool) -> list[FieldSpec]:
    """Fields for every leaf of ``space`` under ``root`` (``observations`` or ``actions``)."""
    out = []
    for key, leaf in leaves(space):
        dtype, shape, text = _leaf_dtype_shape(leaf, root)
        path = "/".join([root, *(_leaf_name(k) for k in key)])
        out.append(
            FieldSpec(
                path=path,
                source=source,
                key=key,
                dtype=dtype,
                shape=shape,
                obs_aligned=obs_aligned,
                image=is_image_space(leaf),
                text=text,
            )
        )
    return out


# --- infos ------------------------------------------------------------------------------------
_SKIP_INFO = ("final_obs", "final_info", "final_observation", "episode")


def flatten_info(info: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested info dicts into ``a/b`` keys, dropping ``_mask`` keys and final_*."""
    out: dict[str, Any] = {}
    for k, v in info.items():
        k = str(k)
        if k.startswith("_") or (not prefix and k in _SKIP_INFO):
            continue
        name = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten_info(v, f"{name}/"))
        else:
            out[name] = v
    return out


def info_fields(
    info: Mapping[str, Any], batch: int | None, exclude: tuple[str, ...] = ()
) -> list[FieldSpec]:
    """Fields for the numeric and boolean entries of a step's info.

    Args:
        info: A step info (single env) or the info of a vector step (arrays with a leading
            batch axis).
        batch: The vector env's batch size, or None for a single env.
        exclude: Info keys (or key prefixes ending in ``/``) not to record.

    Returns:
        One field per recordable key, sorted by key. Strings, objects and ragged values are
        skipped with a log message.
    """
    out = []
    for name, value in sorted(flatten_info(info).items()):
        if any(name == e or (e.endswith("/") and name.startswith(e)) for e in exclude):
            continue
        if name == WALL_TIME_KEY:
            raise ValueError(f"info key {WALL_TIME_KEY!r} is reserved for the recorder's clock")
        parts = name.split("/")
        if any(p in ("", ".", "..") for p in parts) or len(name.encode("utf-8")) > 200:
            log.warning("not recording info %r: not a valid HDF5 path", name)
            continue
        arr = np.asarray(value)
        if arr.dtype.kind not in "biuf":
            log.warning(
                "not recording info %r of dtype %s (only numbers and bools)", name, arr.dtype
            )
            continue
        shape = arr.shape[1:] if batch is not None else arr.shape
        if batch is not None and (arr.ndim == 0 or arr.shape[0] != batch):
            log.warning("not recording info %r: shape %s has no batch axis", name, arr.shape)
            continue
        dtype = np.dtype(np.bool_) if arr.dtype.kind == "b" else arr.dtype.newbyteorder("<")
        out.append(
            FieldSpec(
                path=f"infos/{name}",
                source=SOURCE_INFO,
                key=(name,),
                dtype=dtype.str,
                shape=tuple(int(s) for s in shape),
                obs_aligned=True,
            )
        )
    return out


def episode_fields(
    observation_space: gym.Space,
    action_space: gym.Space,
    infos: list[FieldSpec],
) -> list[FieldSpec]:
    """The full field list of an episode, in storage order."""
    fields = [
        *space_fields(observation_space, "observations", SOURCE_OBS, obs_aligned=True),
        *space_fields(action_space, "actions", SOURCE_ACTION, obs_aligned=False),
        FieldSpec(path="rewards", source=SOURCE_REWARD, dtype="<f8"),
        FieldSpec(path="terminations", source=SOURCE_TERMINATED, dtype="|b1"),
        FieldSpec(path="truncations", source=SOURCE_TRUNCATED, dtype="|b1"),
        FieldSpec(
            path=f"infos/{WALL_TIME_KEY}",
            source=SOURCE_WALL,
            key=(WALL_TIME_KEY,),
            dtype="<f8",
            obs_aligned=True,
        ),
        *infos,
    ]
    paths = [f.path for f in fields]
    for p in paths:
        if any(q.startswith(p + "/") for q in paths):
            raise ValueError(f"field {p!r} is both a dataset and a group")
    return fields


# --- Minari-compatible space JSON ---------------------------------------------------------------
def space_to_dict(space: gym.Space) -> dict[str, Any]:
    """The JSON-friendly description of a space, in the form Minari stores in metadata.json."""
    if isinstance(space, gym.spaces.Box):
        return {
            "type": "Box",
            "dtype": str(space.dtype),
            "shape": list(space.shape),
            "low": space.low.tolist(),
            "high": space.high.tolist(),
        }
    if isinstance(space, gym.spaces.Discrete):
        return {"type": "Discrete", "dtype": "int64", "start": int(space.start), "n": int(space.n)}
    if isinstance(space, gym.spaces.MultiDiscrete):
        return {
            "type": "MultiDiscrete",
            "dtype": str(space.dtype),
            "nvec": space.nvec.tolist(),
            "start": space.start.tolist(),
        }
    if isinstance(space, gym.spaces.MultiBinary):
        n = space.n
        return {"type": "MultiBinary", "n": n.tolist() if isinstance(n, np.ndarray) else n}
    if isinstance(space, gym.spaces.Dict):
        return {"type": "Dict", "subspaces": {k: space_to_dict(s) for k, s in space.spaces.items()}}
    if isinstance(space, gym.spaces.Tuple):
        return {"type": "Tuple", "subspaces": [space_to_dict(s) for s in space.spaces]}
    if isinstance(space, gym.spaces.Text):
        return {
            "type": "Text",
            "max_length": space.max_length,
            "min_length": space.min_length,
            "charset": space.characters,
        }
    raise TypeError(f"cannot serialise a {type(space).__name__} space")


def space_from_dict(d: Mapping[str, Any]) -> gym.Space:
    """Inverse of :func:`space_to_dict`."""
    kind = d["type"]
    if kind == "Box":
        dtype = np.dtype(d["dtype"])
        low = np.array(d["low"], dtype=dtype)
        high = np.array(d["high"], dtype=dtype)
        return gym.spaces.Box(low=low, high=high, shape=tuple(d["shape"]), dtype=dtype)
    if kind == "Discrete":
        return gym.spaces.Discrete(int(d["n"]), start=int(d["start"]))
    if kind == "MultiDiscrete":
        return gym.spaces.MultiDiscrete(d["nvec"], dtype=d["dtype"], start=d["start"])
    if kind == "MultiBinary":
        return gym.spaces.MultiBinary(d["n"])
    if kind == "Dict":
        return gym.spaces.Dict({k: space_from_dict(v) for k, v in d["subspaces"].items()})
    if kind == "Tuple":
        return gym.spaces.Tuple([space_from_dict(v) for v in d["subspaces"]])
    if kind == "Text":
        return gym.spaces.Text(
            max_length=d["max_length"], min_length=d["min_length"], charset=d["charset"]
        )
    raise ValueError(f"unknown space type {kind!r}")


def space_to_json(space: gym.Space) -> str:
    """:func:`space_to_dict` as a JSON string (Minari stores spaces as strings)."""
    return json.dumps(space_to_dict(space))


def space_from_json(text: str) -> gym.Space:
    """Inverse of :func:`space_to_json`."""
    return space_from_dict(json.loads(text))
