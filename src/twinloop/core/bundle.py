"""Named bundles of arrays: a system declares its state once; core allocates it for ``n_envs``.

A system's per-env state is a ``typing.NamedTuple`` whose fields default to :class:`Rows`
specs (the shape of one env's row and its dtype, or a function of the config giving the
shape)::

    class PhysicsState(NamedTuple):
        f: np.ndarray = Rows((N_F,))               # float64 physics state (F_* columns)
        i: np.ndarray = Rows((N_I,), np.int64)     # lattice site, status, hop counts
        ...

:func:`bundle` joins bundles and more fields into one flat class (a vector env's state: the
physics, the task's columns and the rows core manages)::

    StemState = bundle("StemState", __name__, PhysicsState, task=Rows((N_T,)), **core_rows(3))

:func:`allocate` builds one with every array sized ``(n_envs, *row shape)``; numba passes the
whole bundle to a kernel as one argument. Kernels unpack the fields they use into locals
before their parallel loop, so the compiled loop is the one loose arrays would give (no
reference counting on bundle members inside the loop). Adding a state array is one line here
and the code that uses it; no argument list changes.

The bundle classes must live at module level under their own name: numba's on-disk cache
refers to them by module and name.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

B = TypeVar("B")


@dataclasses.dataclass(frozen=True)
class Rows:
    """One field of a bundle: a row of ``shape`` per env, of ``dtype``.

    Attributes:
        shape: Shape of one env's row, or ``shape(config)`` when the config decides it.
        dtype: Element type.
    """

    shape: tuple[int, ...] | Callable[[Any], tuple[int, ...]] = ()
    dtype: Any = np.float64

    def row_shape(self, config: Any) -> tuple[int, ...]:
        """The row shape for ``config``."""
        if callable(self.shape):
            if config is None:
                raise ValueError("this bundle's shapes depend on the config: pass it")
            return tuple(int(s) for s in self.shape(config))
        return tuple(self.shape)


def _is_bundle(value: Any) -> bool:
    return isinstance(value, type) and hasattr(value, "_fields")


def allocate(cls: type[B], n_envs: int, config: Any = None) -> B:
    """A bundle of zeroed arrays, one row per env, as ``cls``'s fields declare.

    A field's default is a :class:`Rows` spec, or another bundle class (allocated the same
    way, e.g. the physics state inside a vector env's state).

    Raises:
        TypeError: A field of ``cls`` declares neither.
    """
    specs = getattr(cls, "_field_defaults", {})
    fields = getattr(cls, "_fields", ())
    missing = [
        f for f in fields if not (isinstance(specs.get(f), Rows) or _is_bundle(specs.get(f)))
    ]
    if missing:
        raise TypeError(f"{cls.__name__}: fields {missing} declare no Rows(shape, dtype)")
    values = {}
    for name in fields:
        spec = specs[name]
        if _is_bundle(spec):
            values[name] = allocate(spec, n_envs, config)
        else:
            values[name] = np.zeros((int(n_envs), *spec.row_shape(config)), dtype=spec.dtype)
    return cls(**values)


def bundle(name: str, module: str, *parts: type, doc: str = "", **fields: Rows) -> type:
    """A flat bundle class holding the fields of ``parts`` (other bundles), then ``fields``.

    Flat, because numba passes a bundle into a ``prange`` loop member by member and cannot
    pass one bundle nested in another. ``module`` must be the caller's ``__name__`` and the
    result bound to a module global called ``name`` (numba's cache finds it there).
    """
    specs: dict[str, Any] = {}
    for part in parts:
        specs.update({f: part._field_defaults[f] for f in part._fields})
    clash = set(specs) & set(fields)
    if clash:
        raise TypeError(f"{name}: fields {sorted(clash)} are declared twice")
    specs.update(fields)
    cls = collections.namedtuple(name, list(specs), defaults=list(specs.values()), module=module)
    cls.__doc__ = doc or f"{name}: " + ", ".join(specs)
    return cls


def require_fields(cls: type, names: tuple[str, ...], what: str) -> None:
    """Raise ``TypeError`` naming what is missing if ``cls`` lacks any of ``names``."""
    missing = [n for n in names if n not in getattr(cls, "_fields", ())]
    if missing:
        raise TypeError(f"{cls.__name__} lacks the fields {missing} that {what} needs")
