"""Device profiles: the hidden "true" physics of a device twin, drawn or read, never shown.

A real device differs from the simulator in ways its user does not know. A *device profile*
makes that difference part of a twin: ``twinloop serve <device> --profile random:SEED|FILE``
runs the simulator with some of its physical parameters replaced by the device's "true"
values, and tells its clients only that a profile is in force and its name (``"random:7"``,
or a file's stem), never the values.

A profile is a set of config overrides (dotted path -> value) applied with
:func:`twinloop.core.config.override`, so it passes the config's own validation: a value
outside a field's declared limits raises :class:`~twinloop.core.config.ConfigError` naming the
field, the value and the limits. It comes from one of two places:

* ``random:SEED``: each parameter of the system's prior (a tuple of :class:`Prior`, kept
  beside the system's config in ``sim/<system>/profile.py`` and found through
  :data:`PRIORS_FOR_CONFIG`) is drawn around the nominal value of the config it applies to,
  in the prior's order, from one NumPy generator seeded with
  ``SeedSequence(SEED, spawn_key=(PROFILE_STREAM,))``: the same seed and nominal config give
  the same profile on every machine.
* a JSON file: an object of config overrides (flat field names unique in the tree, dotted
  paths, or sections given as objects; whatever ``--set`` and ``override`` accept).

This module knows no system: the priors live beside the fields that they perturb.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from twinloop.core.config import ConfigError, flat_fields, override

C = TypeVar("C")

#: Spawn key of the generator that draws ``random:SEED`` profiles (apart from every env stream).
PROFILE_STREAM = 0x70F11E

#: Config class (``"module:qualname"``) -> its system's priors (``"module:attr"``), loaded lazily.
PRIORS_FOR_CONFIG: dict[str, str] = {
    "twinloop.sim.stem.config:StemConfig": "twinloop.sim.stem.profile:PRIORS",
    "twinloop.sim.balloon.config:BalloonConfig": "twinloop.sim.balloon.profile:PRIORS",
    "twinloop.sim.locomotion.velocity_config:QuadrupedVelocityConfig": (
        "twinloop.sim.locomotion.profile:PRIORS"
    ),
    "twinloop.hardware.skills.fake:SkillsDeviceConfig": "twinloop.sim.rearrange.profile:PRIORS",
}

#: Help text of ``--profile`` on every twin's command line.
PROFILE_HELP = (
    "the device's hidden physics: random:SEED draws them from the system's documented prior "
    "around the simulator's nominal values, FILE reads a JSON object of config overrides; "
    "clients see only that a profile is in force and its name (default: nominal physics)"
)

_RANDOM = re.compile(r"random:(?P<seed>.*)")


@dataclasses.dataclass(frozen=True)
class Prior:
    """The prior of one parameter of a device around the simulator's nominal value.

    ``kind="log"``: the device's value is ``nominal x m`` with ``ln m ~ N(0, sd^2)``
    truncated to ``m in [low, high]``. ``kind="shift"``: ``nominal + d`` with
    ``d ~ N(0, sd^2)`` (the field's units) truncated to ``d in [low, high]``. Truncation
    redraws (the draw stays a truncated normal, no mass piles up at a bound).

    Attributes:
        path: Dotted config path of the field (``"physics.cross_section_barn_60kv"``).
        kind: ``"log"`` (a multiplier) or ``"shift"`` (an offset in the field's units).
        sd: Standard deviation of ``ln m`` (log) or of ``d`` (shift).
        low: Smallest multiplier (log) or offset (shift).
        high: Largest multiplier (log) or offset (shift).
        source: Why this spread: the range in the literature, or the reason for a guess.
    """

    path: str
    kind: str
    sd: float
    low: float
    high: float
    source: str

    def __post_init__(self) -> None:  # noqa: D105
        if self.kind not in ("log", "shift"):
            raise ValueError(f"Prior {self.path}: kind = {self.kind!r} is not 'log' or 'shift'")
        if not (math.isfinite(self.sd) and self.sd > 0):
            raise ValueError(f"Prior {self.path}: sd = {self.sd!r} must be finite and > 0")
        if not (math.isfinite(self.low) and math.isfinite(self.high) and self.low < self.high):
            raise ValueError(
                f"Prior {self.path}: bounds [{self.low!r}, {self.high!r}] must be finite with "
                "low < high"
            )
        if self.kind == "log" and not (self.low > 0 and self.low <= 1.0 <= self.high):
            raise ValueError(
                f"Prior {self.path}: multiplier bounds [{self.low}, {self.high}] must hold 1 and "
                "lie above 0"
            )
        if self.kind == "shift" and not self.low <= 0.0 <= self.high:
            raise ValueError(
                f"Prior {self.path}: offset bounds [{self.low}, {self.high}] must hold 0"
            )

    def bounds(self, nominal: float) -> tuple[float, float]:
        """The smallest and largest value this prior gives around ``nominal``."""
        if self.kind == "log":
            return nominal * self.low, nominal * self.high
        return nominal + self.low, nominal + self.high

    def draw(self, nominal: Any, rng: np.random.Generator) -> Any:
        """One value around ``nominal`` (see the class doc); a tuple (a table) scales whole."""
        if self.kind == "log":
            lo, hi = math.log(self.low), math.log(self.high)
        else:
            lo, hi = self.low, self.high
        for _ in range(1000):  # P(outside) < 0.5 for every declared prior: this always ends
            z = float(rng.normal(0.0, self.sd))
            if lo <= z <= hi:
                break
        else:  # pragma: no cover - bounds many sd away on both sides cannot all miss
            z = min(max(z, lo), hi)
        if isinstance(nominal, tuple):
            if self.kind != "log":
                raise ValueError(f"Prior {self.path}: a table takes a 'log' prior, not 'shift'")
            return tuple(float(v) * math.exp(z) for v in nominal)
        return float(nominal) * math.exp(z) if self.kind == "log" else float(nominal) + z


@dataclasses.dataclass(frozen=True)
class DeviceProfile:
    """A device's hidden parameters: a name that may be shown, values that may not.

    Attributes:
        name: What clients and captures may see (``"random:7"``, a file's stem).
        values: Dotted config path -> the device's value.
    """

    name: str
    values: Mapping[str, Any]

    def apply(self, cfg: C) -> C:
        """``cfg`` with the profile's values (a validated copy; ``cfg`` is untouched).

        Raises:
            ConfigError: A value breaks its field's limits (the message names the field, the
                value and the limits, and the profile).
        """
        try:
            return override(cfg, **dict(self.values))
        except ConfigError as exc:
            raise ConfigError(f"device profile {self.name!r}: {exc}", fields=exc.fields) from None

    def public(self) -> dict[str, Any]:
        """What a twin may tell its clients: that a profile is in force, and its name."""
        return {"profile": self.name}

    def privileged(self) -> dict[str, Any]:
        """Name and values, for a capture's strippable ``privileged`` section (never a client)."""
        return {"name": self.name, "values": dict(self.values)}


def priors_for(cfg: object) -> tuple[Prior, ...]:
    """The priors of the system whose config ``cfg`` is (see :data:`PRIORS_FOR_CONFIG`).

    Raises:
        ValueError: No prior is declared for this config class (the message lists those that
            have one).
    """
    import importlib

    key = f"{type(cfg).__module__}:{type(cfg).__qualname__}"
    entry = PRIORS_FOR_CONFIG.get(key)
    if entry is None:
        known = ", ".join(sorted(PRIORS_FOR_CONFIG))
        raise ValueError(f"no device-profile prior for {key}; priors exist for {known}")
    module, attr = entry.split(":")
    return tuple(getattr(importlib.import_module(module), attr))


def draw_profile(cfg: C, seed: int, priors: Sequence[Prior] | None = None) -> DeviceProfile:
    """Draw a ``random:SEED`` profile around the nominal values of ``cfg``.

    Args:
        cfg: The nominal config (the simulator the twin would otherwise run).
        seed: A non-negative integer.
        priors: The priors to draw (default: :func:`priors_for` ``cfg``).

    Raises:
        ValueError: ``seed`` is not a non-negative integer, or a prior names no field.
        ConfigError: A drawn value breaks its field's limits (a prior too wide for an
            overridden nominal value).
    """
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"profile seed = {seed!r} must be an integer >= 0")
    priors = priors_for(cfg) if priors is None else tuple(priors)
    paths = flat_fields(cfg)
    rng = np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(PROFILE_STREAM,)))
    values: dict[str, Any] = {}
    for prior in priors:
        if prior.path not in paths:
            raise ValueError(
                f"prior names {prior.path!r}, which is no field of {type(cfg).__name__}"
            )
        values[prior.path] = prior.draw(_get(cfg, prior.path), rng)
    profile = DeviceProfile(f"random:{int(seed)}", values)
    profile.apply(cfg)  # validates now, with the profile's name in any error
    return profile


def load_profile(path: str | Path, cfg: object, option: str = "--profile") -> DeviceProfile:
    """Read a profile from a JSON file of config overrides; its name is the file's stem.

    ``option`` is the command-line option that named the file, for the error messages
    (``twinloop run --config FILE`` reads the same format).

    Raises:
        ValueError: The file is unreadable, not JSON, or not an object.
        ConfigError: A key names no field, or a value breaks its field's limits (the message
            names the file, the field, the value and the limits).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{option} {path}: cannot read it ({exc})") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"{option} {path}: not JSON ({exc})") from exc
    if not isinstance(data, dict) or not data:
        raise ValueError(
            f"{option} {path}: expected a non-empty JSON object of config overrides "
            f"(name or dotted path -> value), got {type(data).__name__}"
        )
    values = _flatten(data)
    profile = DeviceProfile(path.stem, values)
    try:
        profile.apply(cfg)
    except ConfigError as exc:
        raise ConfigError(f"{option} {path}: {exc}", fields=exc.fields) from None
    return profile


def parse_profile(spec: str, cfg: object, priors: Sequence[Prior] | None = None) -> DeviceProfile:
    """``random:SEED`` (drawn) or the path of a JSON file (read); see the module doc.

    Raises:
        ValueError: A malformed seed, or a file that cannot be read.
        ConfigError: A value that breaks its field's limits.
    """
    m = _RANDOM.fullmatch(spec.strip())
    if m:
        text = m.group("seed")
        if not text.isdigit():
            raise ValueError(f"--profile {spec!r}: the seed must be an integer >= 0, got {text!r}")
        return draw_profile(cfg, int(text), priors)
    return load_profile(spec, cfg)


def _get(cfg: object, path: str) -> Any:
    for part in path.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested objects -> dotted keys (``{"physics": {"a": 1}}`` -> ``{"physics.a": 1}``)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
