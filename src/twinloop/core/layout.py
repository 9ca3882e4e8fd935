"""Named layouts of flat arrays: observations, measurements and infos that kernels fill by index.

Kernels write rows of flat float/int/bool arrays; people and controllers read named fields.
A :class:`Layout` is the single description of both views: it builds the Gymnasium ``Box`` of a
flat observation with per-element bounds, gives per-element labels for error messages, and
unpacks a row (single env) or a batch of rows (vector env) into named arrays without copying.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sequence
from typing import Any

import gymnasium as gym
import numpy as np


@dataclasses.dataclass(frozen=True)
class Field:
    """One named field of a flat layout.

    Attributes:
        name: Key under which the field is read (units in the name, e.g. ``elapsed_s``).
        shape: Shape of the field; ``()`` for a scalar.
        low: Lower bound of every element (for observation spaces).
        high: Upper bound of every element.
        doc: One line: meaning, units and source.
    """

    name: str
    shape: tuple[int, ...] = ()
    low: float = -math.inf
    high: float = math.inf
    doc: str = ""

    @property
    def size(self) -> int:
        """Number of scalar elements."""
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1


class Layout:
    """An ordered set of :class:`Field` packed into one flat vector."""

    def __init__(self, fields: Sequence[Field]) -> None:
        """Compute offsets; field names must be unique."""
        names = [f.name for f in fields]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate field names in layout: {names}")
        self.fields: tuple[Field, ...] = tuple(fields)
        self._by_name = {f.name: f for f in self.fields}
        self._slices: dict[str, slice] = {}
        offset = 0
        for f in self.fields:
            self._slices[f.name] = slice(offset, offset + f.size)
            offset += f.size
        self.size = offset

    def __iter__(self) -> Iterator[Field]:
        """Iterate over the fields in order."""
        return iter(self.fields)

    def __contains__(self, name: object) -> bool:
        """Whether a field of that name exists."""
        return name in self._slices

    @property
    def names(self) -> tuple[str, ...]:
        """Field names in order."""
        return tuple(f.name for f in self.fields)

    def slice(self, name: str) -> slice:
        """The slice of the flat vector holding ``name``."""
        try:
            return self._slices[name]
        except KeyError:
            raise KeyError(f"no field {name!r}; fields: {', '.join(self.names)}") from None

    def field(self, name: str) -> Field:
        """The :class:`Field` called ``name``."""
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"no field {name!r}; fields: {', '.join(self.names)}") from None

    def get(self, flat: np.ndarray, name: str) -> np.ndarray:
        """Read field ``name`` from a flat row ``(size,)`` or batch ``(..., size)`` (a view)."""
        f = self.field(name)
        part = flat[..., self._slices[name]]
        return part.reshape((*flat.shape[:-1], *f.shape))

    def unpack(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        """All fields of a row or batch as a dict of views."""
        return {f.name: self.get(flat, f.name) for f in self.fields}

    def row_dict(self, row: np.ndarray) -> dict[str, Any]:
        """One row as a dict of Python scalars (for ``()`` fields) and arrays (copies)."""
        out: dict[str, Any] = {}
        for f in self.fields:
            s = self._slices[f.name]
            if f.shape:
                out[f.name] = row[s].reshape(f.shape).copy()
            else:
                out[f.name] = row[s.start].item()
        return out

    def space(self, dtype: type = np.float32) -> gym.spaces.Box:
        """A ``Box`` over the flat vector with each field's bounds."""
        low = np.concatenate([np.full(f.size, f.low) for f in self.fields])
        high = np.concatenate([np.full(f.size, f.high) for f in self.fields])
        return gym.spaces.Box(low=low.astype(dtype), high=high.astype(dtype), dtype=dtype)

    def labels(self) -> tuple[str, ...]:
        """A label per flat element, e.g. ``goal_offset_angstrom[1]``."""
        out: list[str] = []
        for f in self.fields:
            if not f.shape:
                out.append(f.name)
            else:
                out.extend(f"{f.name}{list(idx)}" for idx in np.ndindex(*f.shape))
        return tuple(out)

    def describe(self) -> dict[str, dict[str, Any]]:
        """A JSON-friendly table: name -> start, stop, shape, bounds, doc."""
        return {
            f.name: {
                "start": self._slices[f.name].start,
                "stop": self._slices[f.name].stop,
                "shape": list(f.shape),
                "low": f.low,
                "high": f.high,
                "doc": f.doc,
            }
            for f in self.fields
        }

    def index(self, name: str) -> int:
        """Start index of ``name`` (for numba kernels, which address columns by integer)."""
        return self._slices[name].start
