"""Configuration helpers: frozen keyword-only dataclasses, copy-on-override, JSON round trips.

Every system's config is a tree of frozen dataclasses whose field names carry units
(``dwell_s``, ``beam_energy_kev``). Nothing here mutates a config: :func:`override` returns a
copy. Overrides may name a field by its flat name when that name is unique in the tree
(``beam_current_na=0.2``), by a dotted path (``"physics.beam_current_na"``), or by a section
given as a mapping (``physics={"beam_current_na": 0.2}``). Unknown names raise
:class:`ConfigError` listing the valid ones.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import typing
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

log = logging.getLogger(__name__)

C = TypeVar("C")


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message names the field and its limits."""


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

    Args:
        owner: The dataclass instance holding the field.
        name: The field name.
        lo: Lower bound, or None for no bound.
        hi: Upper bound, or None for no bound.
        lo_open: Exclude the lower bound itself.
        hi_open: Exclude the upper bound itself.
    """
    value = getattr(owner, name)
    where = f"{type(owner).__name__}.{name}"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where} = {value!r} must be a number")
    if not math.isfinite(value):
        raise ConfigError(f"{where} = {value!r} must be finite")
    left = "(" if lo_open else "["
    right = ")" if hi_open else "]"
    interval = f"{left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"
    if lo is not None and (value < lo or (lo_open and value == lo)):
        raise ConfigError(f"{where} = {value!r} is outside {interval}")
    if hi is not None and (value > hi or (hi_open and value == hi)):
        raise ConfigError(f"{where} = {value!r} is outside {interval}")


def check_choice(owner: object, name: str, choices: Iterable[Any]) -> None:
    """Raise :class:`ConfigError` unless ``owner.name`` is one of ``choices``."""
    value = getattr(owner, name)
    options = tuple(choices)
    if value not in options:
        valid = ", ".join(map(repr, options))
        raise ConfigError(f"{type(owner).__name__}.{name} = {value!r} is not one of {valid}")


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
        else:
            node[leaf] = value


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
