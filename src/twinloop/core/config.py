"""Configuration: declared, self-validating sections; copy-on-override; JSON round trips.

Every system's config is a tree of frozen, keyword-only dataclasses whose field names carry
units (``dwell_s``, ``beam_energy_kev``). A section is a list of fields, each declared with
:func:`param`: its default, units, meaning and source, and its limits (bounds, choices,
length). Sections derive from :class:`ConfigSection`, whose ``__post_init__`` runs
:func:`validate`: one routine checks every declared limit, then the section's cross-field
checks (methods marked :func:`cross_check`), and raises one :class:`ConfigError` naming the
section, the field, the value and the limits::

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class ProbeConfig(ConfigSection):
        dwell_min_s: float = param(0.1, units="s", gt=0.0, le=3600.0, doc="instrument limit")
        dwell_s: float = param(3.0, units="s", ge="dwell_min_s", le=20.0, doc="[S23]")

        @cross_check
        def _dwell_fits_frame(self) -> str | None:
            ...  # a problem description, or None

A bound may name a sibling field (``ge="dwell_min_s"``). :func:`describe` lists every leaf
with its units, limits and meaning (``twinloop info``).

Nothing here mutates a config: :func:`override` returns a copy. Overrides may name a field by
its flat name when that name is unique in the tree (``beam_current_na=0.2``), by a dotted
path (``"physics.beam_current_na"``), or by a section given as a mapping
(``physics={"beam_current_na": 0.2}``). Unknown names raise :class:`ConfigError` listing the
valid ones. This module knows no system: limits live beside the fields that they bound.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import logging
import math
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple, TypeVar

log = logging.getLogger(__name__)

C = TypeVar("C")
T = TypeVar("T")

#: Key of a field's :class:`Param` in ``dataclasses.Field.metadata``.
PARAM_KEY = "twinloop.param"


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message names the field and its limits.

    Attributes:
        fields: ``"Section.field"`` of every field whose own declared limits (type, bounds,
            choices, length) the value broke; empty for unknown keys and cross-field checks.
    """

    def __init__(self, message: str, *, fields: Iterable[str] = ()) -> None:  # noqa: D107
        super().__init__(message)
        self.fields = tuple(fields)


Bound = float | int | str | None


@dataclasses.dataclass(frozen=True)
class Param:
    """What a config field declares besides its default: units, meaning, source and limits.

    Attributes:
        units: Units of the value (``"s"``, ``"W/m^2"``); ``""`` for dimensionless values.
        doc: Meaning and source of the value (citation tags refer to the module docstring).
        ge: Inclusive lower bound, or the name of a sibling field holding it.
        gt: Exclusive lower bound, or the name of a sibling field holding it.
        le: Inclusive upper bound, or the name of a sibling field holding it.
        lt: Exclusive upper bound, or the name of a sibling field holding it.
        choices: The only values allowed, or None.
        length: Required number of entries of a tuple field, or None.
        increasing: The entries of a tuple field must increase strictly.
    """

    units: str = ""
    doc: str = ""
    ge: Bound = None
    gt: Bound = None
    le: Bound = None
    lt: Bound = None
    choices: tuple[Any, ...] | None = None
    length: int | None = None
    increasing: bool = False

    def __post_init__(self) -> None:  # noqa: D105
        if self.ge is not None and self.gt is not None:
            raise TypeError("param(): give at most one of ge= and gt=")
        if self.le is not None and self.lt is not None:
            raise TypeError("param(): give at most one of le= and lt=")
        for bound in (self.ge, self.gt, self.le, self.lt):
            if not (bound is None or isinstance(bound, str) or _is_number(bound)):
                raise TypeError(f"param(): bound {bound!r} must be a number or a field name")

    @property
    def low(self) -> tuple[Bound, bool]:
        """``(lower bound, open)``; the bound is None when there is none."""
        return (self.gt, True) if self.gt is not None else (self.ge, False)

    @property
    def high(self) -> tuple[Bound, bool]:
        """``(upper bound, open)``; the bound is None when there is none."""
        return (self.lt, True) if self.lt is not None else (self.le, False)

    def limits_text(self) -> str:
        """The declared limits in words: ``"[0.0, 10.0]"``, ``"one of 'a', 'b'"``, ``""``."""
        parts = []
        (lo, lo_open), (hi, hi_open) = self.low, self.high
        if lo is not None or hi is not None:
            parts.append(_interval(lo, hi, lo_open, hi_open))
        if self.choices is not None:
            parts.append("one of " + ", ".join(map(repr, self.choices)))
        if self.length is not None:
            parts.append(f"{self.length} entries")
        if self.increasing:
            parts.append("strictly increasing")
        return ", ".join(parts)


def param(
    default: T,
    *,
    units: str = "",
    doc: str = "",
    ge: Bound = None,
    gt: Bound = None,
    le: Bound = None,
    lt: Bound = None,
    choices: Iterable[Any] | None = None,
    length: int | None = None,
    increasing: bool = False,
) -> T:
    """Declare a config field: its default, units, meaning and source, and its limits.

    Use as the default of a field of a :class:`ConfigSection`:
    ``dwell_s: float = param(3.0, units="s", ge=0.1, le=20.0, doc="1.5-5 s [S23]")``.
    Bounds are numbers or the name of a sibling field (``ge="dwell_min_s"``).

    Returns:
        A ``dataclasses.field`` carrying a :class:`Param` in its metadata (typed as the
        default, as ``dataclasses.field`` is).

    Raises:
        TypeError: Both ``ge`` and ``gt`` (or ``le`` and ``lt``) given, or a bound is neither
            a number nor a field name.
    """
    spec = Param(
        units=units,
        doc=doc,
        ge=ge,
        gt=gt,
        le=le,
        lt=lt,
        choices=None if choices is None else tuple(choices),
        length=length,
        increasing=increasing,
    )
    return typing.cast(T, dataclasses.field(default=default, metadata={PARAM_KEY: spec}))


def field_param(f: dataclasses.Field) -> Param | None:
    """The :class:`Param` a field was declared with, or None for a plain field."""
    return f.metadata.get(PARAM_KEY)


def cross_check(method: Callable[[Any], str | None]) -> Callable[[Any], str | None]:
    """Mark a :class:`ConfigSection` method as a cross-field check.

    The method returns None when the section is consistent, else the problem in words (name
    the fields, their values and what to change). It runs after every field has passed its
    own limits, so it may rely on them.
    """
    method.__config_check__ = True  # type: ignore[attr-defined]
    return method


class ConfigSection:
    """Base of every config section: validates the declared limits and checks after init.

    Subclasses are frozen, keyword-only dataclasses whose fields are declared with
    :func:`param` and whose cross-field checks are methods marked :func:`cross_check`;
    they define no ``__post_init__`` of their own.
    """

    def __post_init__(self) -> None:  # noqa: D105
        validate(self)


class _Plan(NamedTuple):
    """How to validate one section class: its leaf fields and its checks, in order."""

    fields: tuple[tuple[str, str, Param | None], ...]  # (name, kind, param)
    checks: tuple[Callable[[Any], str | None], ...]


def _kind(hint: Any) -> str:
    """``"float"``, ``"int"``, ``"bool"``, ``"str"``, ``"tuple"``, ``"float-tuple"``, ``""``."""
    if hint is bool:
        return "bool"
    if hint is int:
        return "int"
    if hint is float:
        return "float"
    if hint is str:
        return "str"
    if typing.get_origin(hint) is tuple:
        args = typing.get_args(hint)
        return "float-tuple" if args and args[0] is float else "tuple"
    return ""


@functools.cache
def _plan(cls: type) -> _Plan:
    hints = typing.get_type_hints(cls)
    fields = []
    names = {f.name for f in dataclasses.fields(cls)}
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            continue  # a nested section validates itself
        spec = field_param(f)
        for bound in (spec.low[0], spec.high[0]) if spec else ():
            if isinstance(bound, str) and bound not in names:
                raise TypeError(f"{cls.__name__}.{f.name}: bound {bound!r} names no field")
        fields.append((f.name, _kind(hint), spec))
    checks: dict[str, Callable[[Any], str | None]] = {}
    for klass in reversed(cls.__mro__):  # a subclass's check replaces its base's of that name
        for name, value in vars(klass).items():
            if getattr(value, "__config_check__", False):
                checks[name] = value
    return _Plan(tuple(fields), tuple(checks.values()))


def _interval(lo: Any, hi: Any, lo_open: bool, hi_open: bool) -> str:
    left = "(" if lo_open else "["
    right = ")" if hi_open else "]"
    return f"{left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _range_problem(
    where: str,
    value: Any,
    lo: Any = None,
    hi: Any = None,
    lo_open: bool = False,
    hi_open: bool = False,
    note: str = "",
) -> str | None:
    """The problem with ``value`` against ``[lo, hi]`` (open ends as flagged), or None.

    ``note`` (where the bounds come from) is appended to an out-of-range message.
    """
    if not _is_number(value):
        return f"{where} = {value!r} must be a number"
    if not math.isfinite(value):
        return f"{where} = {value!r} must be finite"
    below = lo is not None and (value < lo or (lo_open and value == lo))
    above = hi is not None and (value > hi or (hi_open and value == hi))
    if below or above:
        interval = _interval(lo, hi, lo_open, hi_open)
        return f"{where} = {value!r} is outside {interval}" + (f" ({note})" if note else "")
    return None


def _resolve_bound(section: object, bound: Bound) -> tuple[Any, str]:
    """``(value, note)`` of a declared bound; a sibling field's name is read from the section.

    The value is None (no check) when the sibling itself is not a finite number: its own
    check reports that.
    """
    if not isinstance(bound, str):
        return bound, ""
    value = getattr(section, bound)
    if not _is_number(value) or not math.isfinite(value):
        return None, ""
    return value, f"{bound} = {value!r}"


def _field_problem(section: object, name: str, kind: str, spec: Param | None) -> str | None:
    """The problem with one field of ``section`` against its type and declared limits."""
    value = getattr(section, name)
    where = f"{type(section).__name__}.{name}"
    if spec is not None and spec.choices is not None:
        if value not in spec.choices:
            valid = ", ".join(map(repr, spec.choices))
            return f"{where} = {value!r} is not one of {valid}"
        return None
    if kind == "bool" and not isinstance(value, bool):
        return f"{where} = {value!r} must be True or False"
    if kind == "str" and not isinstance(value, str):
        return f"{where} = {value!r} must be a string"
    if kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
        return f"{where} = {value!r} must be an integer"
    if kind in ("tuple", "float-tuple"):
        return _tuple_problem(where, value, kind, spec)
    if kind not in ("int", "float"):
        return None
    (lo, lo_open), (hi, hi_open) = (spec.low, spec.high) if spec else ((None, False),) * 2
    lo_value, lo_note = _resolve_bound(section, lo)
    hi_value, hi_note = _resolve_bound(section, hi)
    notes = ", ".join(n for n in (lo_note, hi_note) if n)
    note = f"bounds from {notes}" if notes else ""
    return _range_problem(where, value, lo_value, hi_value, lo_open, hi_open, note)


def _tuple_problem(where: str, value: Any, kind: str, spec: Param | None) -> str | None:
    if not isinstance(value, tuple):
        return f"{where} = {value!r} must be a tuple"
    if kind == "float-tuple":
        for k, v in enumerate(value):
            if not _is_number(v) or not math.isfinite(v):
                return f"{where}[{k}] = {v!r} must be a finite number"
    if spec is None:
        return None
    if spec.length is not None and len(value) != spec.length:
        what = f" ({spec.doc})" if spec.doc else ""
        return f"{where} has {len(value)} entries, expected {spec.length}{what}"
    if spec.increasing and any(b <= a for a, b in itertools.pairwise(value)):
        return f"{where} = {value!r} must increase strictly"
    return None


def validate(section: object) -> None:
    """Check every field of ``section`` against its declared limits, then its cross checks.

    Every field is checked (so one error lists every bad field); the cross-field checks run
    only when all fields passed.

    Raises:
        ConfigError: Naming the section, each bad field, its value and its limits
            (problems joined by ``"; "``); ``fields`` lists the bad fields.
    """
    plan = _plan(type(section))
    problems: list[str] = []
    bad: list[str] = []
    for name, kind, spec in plan.fields:
        problem = _field_problem(section, name, kind, spec)
        if problem:
            problems.append(problem)
            bad.append(f"{type(section).__name__}.{name}")
    if not problems:
        problems = [p for p in (check(section) for check in plan.checks) if p]
    if problems:
        raise ConfigError("; ".join(problems), fields=bad)


def check_range(
    owner: object,
    name: str,
    lo: float | None = None,
    hi: float | None = None,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
) -> None:
    """Raise :class:`ConfigError` unless ``owner.name`` is finite and within ``[lo, hi]``.

    For sections that are not (yet) declared with :func:`param`.

    Args:
        owner: The dataclass instance holding the field.
        name: The field name.
        lo: Lower bound, or None for no bound.
        hi: Upper bound, or None for no bound.
        lo_open: Exclude the lower bound itself.
        hi_open: Exclude the upper bound itself.
    """
    where = f"{type(owner).__name__}.{name}"
    problem = _range_problem(where, getattr(owner, name), lo, hi, lo_open, hi_open)
    if problem:
        raise ConfigError(problem, fields=(where,))


def check_choice(owner: object, name: str, choices: Iterable[Any]) -> None:
    """Raise :class:`ConfigError` unless ``owner.name`` is one of ``choices``."""
    value = getattr(owner, name)
    options = tuple(choices)
    if value not in options:
        valid = ", ".join(map(repr, options))
        where = f"{type(owner).__name__}.{name}"
        raise ConfigError(f"{where} = {value!r} is not one of {valid}", fields=(where,))


class FieldInfo(NamedTuple):
    """One leaf of a config tree as :func:`describe` lists it."""

    path: str
    value: Any
    units: str
    limits: str
    doc: str


def describe(cfg: object, prefix: str = "") -> list[FieldInfo]:
    """Every leaf field of a config tree with its value, units, limits and meaning.

    Returns:
        One :class:`FieldInfo` per leaf, depth first; plain fields have empty units, limits
        and doc.
    """
    out: list[FieldInfo] = []
    for f in dataclasses.fields(cfg):  # type: ignore[arg-type]
        value = getattr(cfg, f.name)
        path = f"{prefix}{f.name}"
        if _is_config(value):
            out.extend(describe(value, prefix=f"{path}."))
            continue
        spec = field_param(f) or Param()
        out.append(FieldInfo(path, value, spec.units, spec.limits_text(), spec.doc))
    return out


def _is_config(obj: object) -> bool:
    return dataclasses.is_dataclass(obj) and not isinstance(obj, type)


def flat_fields(cfg: object, prefix: str = "") -> dict[str, str]:
    """Map every leaf field of a config tree to its dotted path.

    Returns:
        ``{dotted_path: leaf_name}`` for every non-dataclass field, depth first.
    """
    out: dict[str, str] = {}
    for f in dataclasses.fields(cfg):  # type: ignore[arg-type]
        value = getattr(cfg, f.name)
        path = f"{prefix}{f.name}"
        if _is_config(value):
            out.update(flat_fields(value, prefix=f"{path}."))
        else:
            out[path] = f.name
    return out


def _section_paths(cfg: object, prefix: str = "") -> set[str]:
    out: set[str] = set()
    for f in dataclasses.fields(cfg):  # type: ignore[arg-type]
        value = getattr(cfg, f.name)
        if _is_config(value):
            out.add(f"{prefix}{f.name}")
            out |= _section_paths(value, prefix=f"{prefix}{f.name}.")
    return out


def _resolve(cfg: object, key: str) -> str:
    """Return the dotted path that ``key`` names in ``cfg``, or raise listing valid names."""
    paths = flat_fields(cfg)
    sections = _section_paths(cfg)
    if key in paths or key in sections:
        return key
    matches = [p for p, leaf in paths.items() if leaf == key]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise ConfigError(
            f"{type(cfg).__name__}: {key!r} is ambiguous; use one of {', '.join(sorted(matches))}"
        )
    unique = sorted({leaf for leaf in paths.values() if list(paths.values()).count(leaf) == 1})
    raise ConfigError(
        f"{type(cfg).__name__} has no field {key!r}; valid keys: {', '.join(unique)}"
        + (f" (sections: {', '.join(sorted(sections))})" if sections else "")
    )


def _collect(cfg: object, overrides: Mapping[str, Any], tree: dict[str, Any]) -> None:
    """Resolve every key of ``overrides`` against ``cfg`` into a nested tree of changes."""
    for key, value in overrides.items():
        path = _resolve(cfg, key).split(".")
        owner, node = cfg, tree
        for part in path[:-1]:
            owner = getattr(owner, part)
            node = node.setdefault(part, {})
        leaf = path[-1]
        current = getattr(owner, leaf)
        if _is_config(current) and isinstance(value, Mapping):
            _collect(current, value, node.setdefault(leaf, {}))
        elif _is_config(current) and type(value) is not type(current):
            raise ConfigError(
                f"{type(owner).__name__}.{leaf} must be a {type(current).__name__} or a mapping, "
                f"got {type(value).__name__}"
            )
        elif isinstance(current, tuple) and isinstance(value, list):
            node[leaf] = _tuples(value)  # JSON (a recorded config, env_kwargs) has lists
        else:
            node[leaf] = value


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, list | tuple) else value


def _apply(cfg: C, tree: Mapping[str, Any]) -> C:
    changes = {}
    for name, value in tree.items():
        current = getattr(cfg, name)
        changes[name] = (
            _apply(current, value) if _is_config(current) and isinstance(value, dict) else value
        )
    return dataclasses.replace(cfg, **changes)  # type: ignore[type-var]


def override(cfg: C, /, **overrides: Any) -> C:
    """Return a copy of ``cfg`` with ``overrides`` applied; ``cfg`` itself is untouched.

    Keys may be flat leaf names unique in the tree, dotted paths, or section names with a
    mapping value. All overrides are applied together, so validation in each dataclass's
    ``__post_init__`` (including checks that span fields) sees only the final values.

    Raises:
        ConfigError: On an unknown or ambiguous key, or an invalid value.
    """
    if not _is_config(cfg):
        raise TypeError(f"override() needs a dataclass instance, got {type(cfg).__name__}")
    tree: dict[str, Any] = {}
    _collect(cfg, overrides, tree)
    return _apply(cfg, tree)


def to_dict(cfg: object) -> dict[str, Any]:
    """Convert a config tree into plain JSON-compatible Python (tuples become lists)."""

    def convert(value: Any) -> Any:
        if _is_config(value):
            return {f.name: convert(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, tuple | list):
            return [convert(v) for v in value]
        if isinstance(value, Mapping):
            return {str(k): convert(v) for k, v in value.items()}
        return value

    return convert(cfg)


def to_json(cfg: object) -> str:
    """Serialise a config tree to a JSON string with a ``__class__`` tag at the top."""
    payload = {"__class__": f"{type(cfg).__module__}:{type(cfg).__qualname__}", **to_dict(cfg)}
    return json.dumps(payload, sort_keys=True)


def recorded_config(cls: type[C], metadata: Mapping[str, Any], where: str = "") -> C:
    """The config a dataset was recorded with (``twinloop.env_config`` in its metadata).

    Falls back to the defaults, with a logged warning naming ``where``, when the dataset
    holds none or one this version cannot read.
    """
    raw = (metadata.get("twinloop") or {}).get("env_config")
    if isinstance(raw, Mapping):
        try:
            return from_dict(cls, raw)
        except (TypeError, ValueError, KeyError) as exc:
            log.warning("%s: recorded config unreadable (%s); using the defaults", where, exc)
    return cls()


def from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
    """Build a config of type ``cls`` from :func:`to_dict` output, validating every field."""
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key, value in data.items():
        if key == "__class__":
            continue
        if key not in names:
            raise ConfigError(f"{cls.__name__} has no field {key!r}; valid keys: {sorted(names)}")
        hint = hints[key]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            kwargs[key] = from_dict(hint, value)
        elif isinstance(value, list):
            kwargs[key] = tuple(value)
        else:
            kwargs[key] = value
    return cls(**kwargs)


def parse_assignment(cfg: object, text: str) -> tuple[str, Any]:
    """Parse a command-line override ``"name=value"`` using the field's declared type.

    Returns:
        ``(dotted_path, typed_value)``, ready for :func:`override`.
    """
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like name=value")
    key, raw = (s.strip() for s in text.split("=", 1))
    path = _resolve(cfg, key)
    owner: Any = cfg
    for part in path.split(".")[:-1]:
        owner = getattr(owner, part)
    leaf = path.split(".")[-1]
    hint = typing.get_type_hints(type(owner))[leaf]
    current = getattr(owner, leaf)
    try:
        if isinstance(current, bool):
            low = raw.lower()
            if low not in {"true", "false", "1", "0", "yes", "no"}:
                raise ValueError(raw)
            value: Any = low in {"true", "1", "yes"}
        elif isinstance(current, int):
            value = int(raw)
        elif isinstance(current, float):
            value = float(raw)
        elif isinstance(current, tuple):
            value = tuple(json.loads(raw if raw.startswith("[") else f"[{raw}]"))
        elif current is None and hint is not type(None):
            value = None if raw.lower() == "none" else json.loads(raw)
        else:
            value = raw
    except ValueError as exc:
        raise ConfigError(f"cannot parse {key}={raw!r} as {type(current).__name__}") from exc
    return path, value
