"""Every declared limit of every system's config sections holds, found by walking the declarations.

For each field of each section (reached from a system's root config), the test takes the
limits the field declares and checks that a value just outside each bound is rejected with
an error naming the section, the field and the value, and that a value just inside is not
rejected by that field's own limits (a cross-field check may still object). A new field or
section is covered without editing this file.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from typing import Any

import pytest

from twinloop.core.config import ConfigError, ConfigSection, field_param
from twinloop.sim.balloon.config import BalloonConfig
from twinloop.sim.stem.config import StemConfig

ROOTS = (StemConfig, BalloonConfig)


def _sections(cfg: object) -> Iterator[object]:
    """Every :class:`ConfigSection` instance in a config tree, root first."""
    if isinstance(cfg, ConfigSection):
        yield cfg
    for f in dataclasses.fields(cfg):  # type: ignore[arg-type]
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            yield from _sections(value)


def _leaves(section: object) -> Iterator[dataclasses.Field]:
    for f in dataclasses.fields(section):  # type: ignore[arg-type]
        if not dataclasses.is_dataclass(getattr(section, f.name)):
            yield f


SECTIONS = {type(s).__name__: s for root in ROOTS for s in _sections(root())}
FIELDS = [(name, f.name) for name, s in SECTIONS.items() for f in _leaves(s)]


def _field(section: object, name: str) -> dataclasses.Field:
    return next(f for f in dataclasses.fields(section) if f.name == name)  # type: ignore[arg-type]


def _rejects(section: object, name: str, value: Any) -> ConfigError:
    where = f"{type(section).__name__}.{name}"
    with pytest.raises(ConfigError) as exc:
        dataclasses.replace(section, **{name: value})
    assert where in exc.value.fields, f"{where} = {value!r}: rejected for another reason"
    assert f"{where} = {value!r}" in str(exc.value) or f"{where} has" in str(exc.value)
    return exc.value


def _accepts(section: object, name: str, value: Any) -> None:
    """``value`` passes the field's own limits (a cross-field check may still object)."""
    where = f"{type(section).__name__}.{name}"
    try:
        dataclasses.replace(section, **{name: value})
    except ConfigError as exc:
        assert where not in exc.fields, f"{where} = {value!r} was rejected: {exc}"


def _step(bound: float, integer: bool, direction: float) -> float:
    """The next representable value after ``bound`` towards ``direction`` (+-inf)."""
    if integer:
        return bound + (1 if direction > 0 else -1)
    return math.nextafter(bound, direction)


def test_every_section_declares_every_field() -> None:
    """The walk below covers every field: each leaf of each section is declared with param()."""
    assert {type(s).__name__ for s in SECTIONS.values()} >= {r.__name__ for r in ROOTS}
    for section in SECTIONS.values():
        for f in _leaves(section):
            assert field_param(f) is not None, f"{type(section).__name__}.{f.name}: use param()"
        dataclasses.replace(section)  # the defaults pass their own validation


@pytest.mark.parametrize(("section_name", "name"), FIELDS, ids=[f"{s}.{n}" for s, n in FIELDS])
def test_every_declared_limit_rejects_just_outside_and_accepts_just_inside(
    section_name: str, name: str
) -> None:
    section = SECTIONS[section_name]
    spec = field_param(_field(section, name))
    assert spec is not None
    value = getattr(section, name)
    if spec.choices is not None:
        for choice in spec.choices:
            _accepts(section, name, choice)
        exc = _rejects(section, name, "<not a choice>")
        assert "is not one of" in str(exc)
        return
    if isinstance(value, bool):
        _accepts(section, name, not value)
        _rejects(section, name, int(value))
        return
    if isinstance(value, tuple):
        _rejects(section, name, list(value))
        if spec.length is not None:
            _rejects(section, name, value + value[-1:])
            _rejects(section, name, value[:-1])
        if spec.increasing:
            _rejects(section, name, value[::-1])
        return
    if isinstance(value, str):
        _accepts(section, name, value + "x")
        _rejects(section, name, 0)
        return
    integer = isinstance(value, int)
    _rejects(section, name, "1")
    _rejects(section, name, math.nan if not integer else 1.5)
    for bound, is_open, outward in ((*spec.low, -math.inf), (*spec.high, math.inf)):
        if bound is None:
            continue
        limit = getattr(section, bound) if isinstance(bound, str) else bound
        outside = limit if is_open else _step(limit, integer, outward)
        inside = _step(limit, integer, -outward) if is_open else limit
        exc = _rejects(section, name, outside)
        assert "is outside" in str(exc)
        _accepts(section, name, inside)
