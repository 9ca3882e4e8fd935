"""What a LeRobot robot speaks, and the declared mapping between its dicts and twinloop's arrays.

A LeRobot robot (``lerobot.robots.Robot``, LeRobot 0.4) exchanges flat dicts: ``get_observation``
returns ``{key: value}`` whose keys and kinds ``observation_features`` declares (``float`` for a
scalar such as ``"shoulder_pan.pos"``, a shape tuple such as ``(480, 640, 3)`` for a camera), and
``send_action`` takes ``{key: float}`` as declared by ``action_features`` and returns the action
actually sent, after the robot's own clipping (e.g. ``max_relative_target``).
:class:`LeRobotRobot` states that interface; the bridge only ever calls what it lists.

A :class:`LeRobotMapping` says, once and explicitly, how those dicts become a backend's arrays:

* every element of the measurement layout has a source: a robot key (:class:`Channel`, with its
  unit conversion), a finite-difference estimate (:class:`FiniteDifference`), the gravity
  direction from an IMU quaternion (:class:`GravityFromQuaternion`), or a declaration that the
  robot does not provide it (:class:`Unavailable`, NaN unless a fill value is declared). Nothing
  is ever filled with zeros silently;
* every command element goes to one action key (a :class:`Channel`), and every action key the
  robot declares receives one;
* every observation key the robot declares is either read or listed in ``ignore`` (cameras).

Units: a channel's ``scale`` and ``offset`` convert twinloop's units into the robot's,
``robot = scale * twinloop + offset``, in both directions (``Channel.degrees("hip.pos")`` for a
robot that speaks degrees where the task speaks radians). Reading inverts it.

Validation happens here, at the boundary: :meth:`LeRobotMapping.read` accepts a value only if it
is a real, finite scalar (Python ``int``/``float`` or a NumPy real scalar or 0-d array; ``bool``,
strings, sequences and arrays are refused) and raises :class:`ObservationError` naming the key.
It writes into a fresh array, so a refused observation changes nothing.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import gymnasium as gym
import numpy as np

from twinloop.core.layout import Layout

DEG_PER_RAD = 180.0 / math.pi


@runtime_checkable
class LeRobotRobot(Protocol):
    """LeRobot's ``Robot`` interface (``lerobot/robots/robot.py``, 0.4), as the bridge uses it.

    ``observation_features`` and ``action_features`` are readable whether or not the robot is
    connected. ``get_observation`` and ``send_action`` raise (LeRobot's
    ``DeviceNotConnectedError``, a ``ConnectionError``) while disconnected, and ``connect``
    raises ``DeviceAlreadyConnectedError`` when called twice.
    """

    @property
    def observation_features(self) -> dict[str, Any]:
        """``{key: float}`` for scalars, ``{key: (h, w, c)}`` for arrays such as images."""
        ...

    @property
    def action_features(self) -> dict[str, Any]:
        """``{key: float}`` for every value ``send_action`` expects."""
        ...

    @property
    def is_connected(self) -> bool:
        """Whether the robot is connected."""
        ...

    @property
    def is_calibrated(self) -> bool:
        """Whether the robot is calibrated (True where that does not apply)."""
        ...

    def connect(self, calibrate: bool = True) -> None:
        """Open the link (and calibrate if asked and needed)."""
        ...

    def get_observation(self) -> dict[str, Any]:
        """The current observation, keyed as ``observation_features``."""
        ...

    def send_action(self, action: dict[str, Any]) -> dict[str, Any]:
        """Send an action; return the action actually sent (possibly clipped)."""
        ...

    def disconnect(self) -> None:
        """Close the link."""
        ...


class MappingError(ValueError):
    """A mapping does not fit its layout, or a robot's features do not fit the mapping."""


class ObservationError(ValueError):
    """An observation (or a returned action) holds a missing, malformed or non-finite value."""


@dataclasses.dataclass(frozen=True)
class Channel:
    """One robot key and its unit conversion: ``robot = scale * twinloop + offset``.

    Attributes:
        key: The robot's key (``"FR_hip.pos"``).
        scale: Robot units per twinloop unit (``180/pi`` for a robot that speaks degrees).
        offset: Robot value at twinloop's zero (a calibration offset), in robot units.
    """

    key: str
    scale: float = 1.0
    offset: float = 0.0

    def __post_init__(self) -> None:  # noqa: D105
        if not isinstance(self.key, str) or not self.key:
            raise MappingError(f"Channel.key = {self.key!r} must be a non-empty string")
        if not (_is_real(self.scale) and math.isfinite(self.scale) and self.scale != 0.0):
            raise MappingError(f"Channel {self.key!r}: scale = {self.scale!r} must be finite, != 0")
        if not (_is_real(self.offset) and math.isfinite(self.offset)):
            raise MappingError(f"Channel {self.key!r}: offset = {self.offset!r} must be finite")

    @classmethod
    def degrees(cls, key: str, offset_deg: float = 0.0) -> Channel:
        """A channel whose robot side is in degrees (twinloop's side in radians)."""
        return cls(key, DEG_PER_RAD, offset_deg)

    def to_robot(self, value: float) -> float:
        """Twinloop units -> robot units."""
        return float(self.scale * value + self.offset)

    def from_robot(self, value: float) -> float:
        """Robot units -> twinloop units."""
        return float((value - self.offset) / self.scale)

    def text(self) -> str:
        """``key`` with its conversion, for :meth:`LeRobotMapping.describe`."""
        if self.scale == 1.0 and self.offset == 0.0:
            return self.key
        return f"{self.key} (robot = {self.scale:g} x + {self.offset:g})"


@dataclasses.dataclass(frozen=True)
class Unavailable:
    """The robot does not measure this: filled with ``fill`` (NaN unless declared otherwise).

    NaN propagates into the task's observation and into the reward terms that read it, so a
    missing quantity is visible rather than a plausible zero. Declare a number (``fill=1.0``
    for "feet assumed on the ground") only where the task needs one and it is a known fact.

    Attributes:
        fill: The value written to every element of the field.
        why: One line for :meth:`LeRobotMapping.describe` (``"no foot sensors"``).
    """

    fill: float = math.nan
    why: str = ""

    def __post_init__(self) -> None:  # noqa: D105
        if not _is_real(self.fill):
            raise MappingError(f"Unavailable.fill = {self.fill!r} must be a number (or NaN)")


@dataclasses.dataclass(frozen=True)
class FiniteDifference:
    """Estimate a rate from another field: ``(x_now - x_prev) / control_dt_s``.

    ``x`` is the measurement field named ``of`` (same size, read from the robot). The first
    measurement of an episode has no previous one and gets ``at_reset``.

    Attributes:
        of: The measurement field to differentiate (``"joint_pos_rad"``).
        at_reset: Value at the first measurement of an episode (0.0: "at rest"; NaN: unknown).
    """

    of: str
    at_reset: float = 0.0

    def __post_init__(self) -> None:  # noqa: D105
        if not _is_real(self.at_reset):
            raise MappingError(f"FiniteDifference.at_reset = {self.at_reset!r} must be a number")


@dataclasses.dataclass(frozen=True)
class GravityFromQuaternion:
    """The gravity direction in the body frame, ``R^T (0, 0, -1)``, from an IMU quaternion.

    Attributes:
        keys: The robot's keys of the quaternion's ``w, x, y, z`` (normalised before use).
    """

    keys: tuple[str, str, str, str] = ("imu.quat.w", "imu.quat.x", "imu.quat.y", "imu.quat.z")

    def __post_init__(self) -> None:  # noqa: D105
        if len(self.keys) != 4 or not all(isinstance(k, str) and k for k in self.keys):
            raise MappingError(f"GravityFromQuaternion.keys = {self.keys!r}: need 4 keys (w,x,y,z)")


Source = Channel | Unavailable | FiniteDifference | GravityFromQuaternion
#: A field's sources: one per element (channels or :class:`Unavailable`), or one for the field.
FieldSource = Source | Sequence[Channel | Unavailable]


@dataclasses.dataclass(frozen=True)
class _Read:
    """Compiled reading of one element: ``out[index] = (obs[key] - offset) / scale``."""

    index: int
    channel: Channel


class LeRobotMapping:
    """The declared correspondence between a LeRobot robot's dicts and a backend's arrays.

    Args:
        measurement_layout: The measurement the task reads (e.g. the ``sim`` backend's).
        command_space: The command the task sends (joint targets), one element per action key.
        measurement: For every field of ``measurement_layout``: a sequence with one
            :class:`Channel` or :class:`Unavailable` per element, or one source for the whole
            field (:class:`Unavailable`, :class:`FiniteDifference`,
            :class:`GravityFromQuaternion`, or a :class:`Channel` for a scalar field).
        action: One :class:`Channel` per command element, in command order.
        ignore: Observation keys the robot declares and the task does not read (cameras).
        hold_field: The measurement field whose values hold the robot where it is when sent as a
            command (the joint positions); ``None``: the safe state needs a configured pose.

    Raises:
        MappingError: A field or element without a source, an unknown field, a size mismatch,
            a key used twice, or a finite difference of a field that is not read from the robot.
    """

    def __init__(
        self,
        measurement_layout: Layout,
        command_space: gym.spaces.Box,
        *,
        measurement: Mapping[str, FieldSource],
        action: Sequence[Channel],
        ignore: Sequence[str] = (),
        hold_field: str | None = None,
    ) -> None:
        """Check the mapping against the layout and the command space and compile it."""
        self.measurement_layout = measurement_layout
        self.command_space = command_space
        self.sources = dict(measurement)
        self.action = tuple(action)
        self.ignore = tuple(ignore)
        self.hold_field = hold_field
        self.size = measurement_layout.size
        missing = [f.name for f in measurement_layout if f.name not in self.sources]
        unknown = [name for name in self.sources if name not in measurement_layout]
        if missing or unknown:
            raise MappingError(
                "measurement mapping does not match the layout: "
                + "; ".join(
                    part
                    for part in (
                        f"fields without a source: {', '.join(missing)}" if missing else "",
                        f"unknown fields: {', '.join(unknown)}" if unknown else "",
                    )
                    if part
                )
                + f" (layout fields: {', '.join(measurement_layout.names)})"
            )
        self._reads: list[_Read] = []
        self._fills: list[tuple[slice, float]] = []
        self._diffs: list[tuple[slice, slice, float]] = []
        self._gravity: list[tuple[slice, tuple[str, ...]]] = []
        for f in measurement_layout:
            self._compile_field(f.name, f.size, self.sources[f.name])
        n = int(np.prod(command_space.shape))
        if len(command_space.shape) != 1 or len(self.action) != n:
            raise MappingError(
                f"action mapping has {len(self.action)} channels; the command has {n} elements"
            )
        for k, ch in enumerate(self.action):
            if not isinstance(ch, Channel):
                raise MappingError(f"action[{k}] = {ch!r} must be a Channel")
        _no_duplicates("action keys", [ch.key for ch in self.action])
        _no_duplicates("observation keys read", self.observation_keys)
        overlap = sorted(set(self.ignore) & set(self.observation_keys))
        if overlap:
            raise MappingError(f"observation keys both read and ignored: {', '.join(overlap)}")
        if hold_field is not None:
            if hold_field not in measurement_layout:
                raise MappingError(f"hold_field {hold_field!r} is not a measurement field")
            if measurement_layout.field(hold_field).size != n:
                raise MappingError(
                    f"hold_field {hold_field!r} has {measurement_layout.field(hold_field).size} "
                    f"elements; the command has {n}"
                )
        self._action_keys = tuple(ch.key for ch in self.action)

    # construction --------------------------------------------------------------------------
    def _compile_field(self, name: str, size: int, source: FieldSource) -> None:
        sl = self.measurement_layout.slice(name)
        if isinstance(source, Unavailable):
            self._fills.append((sl, float(source.fill)))
        elif isinstance(source, FiniteDifference):
            if source.of not in self.measurement_layout:
                raise MappingError(f"{name}: FiniteDifference of unknown field {source.of!r}")
            of = self.sources.get(source.of)
            if not _is_read(of):
                raise MappingError(
                    f"{name}: FiniteDifference of {source.of!r}, which is not read from the robot"
                )
            if self.measurement_layout.field(source.of).size != size:
                raise MappingError(f"{name}: {source.of!r} has a different number of elements")
            self._diffs.append((sl, self.measurement_layout.slice(source.of), source.at_reset))
        elif isinstance(source, GravityFromQuaternion):
            if size != 3:
                raise MappingError(f"{name}: GravityFromQuaternion fills 3 elements, not {size}")
            self._gravity.append((sl, tuple(source.keys)))
        elif isinstance(source, Channel):
            if size != 1:
                raise MappingError(f"{name} has {size} elements; give one source per element")
            self._reads.append(_Read(sl.start, source))
        elif isinstance(source, Sequence) and not isinstance(source, str):
            if len(source) != size:
                raise MappingError(f"{name} has {size} elements; its mapping has {len(source)}")
            for k, s in enumerate(source):
                if isinstance(s, Channel):
                    self._reads.append(_Read(sl.start + k, s))
                elif isinstance(s, Unavailable):
                    self._fills.append((slice(sl.start + k, sl.start + k + 1), float(s.fill)))
                else:
                    raise MappingError(f"{name}[{k}] = {s!r} must be a Channel or Unavailable")
        else:
            raise MappingError(f"{name}: {source!r} is not a source (see LeRobotMapping)")

    # what the robot must declare -----------------------------------------------------------
    @property
    def observation_keys(self) -> tuple[str, ...]:
        """Every observation key the mapping reads, in layout order."""
        keys = [r.channel.key for r in self._reads]
        for _, quat in self._gravity:
            keys += quat
        return tuple(keys)

    @property
    def action_keys(self) -> tuple[str, ...]:
        """The action keys, in command order."""
        return self._action_keys

    def check_features(self, observation_features: Any, action_features: Any) -> None:
        """Refuse a robot whose declared features do not match this mapping.

        Raises:
            MappingError: Names every missing key, every undeclared extra key, and every read
                key whose feature is not a scalar (``float``).
        """
        problems = []
        for what, features in (("observation", observation_features), ("action", action_features)):
            if not isinstance(features, Mapping):
                problems.append(f"{what}_features is {type(features).__name__}, not a dict")
        if problems:
            raise MappingError("; ".join(problems))
        obs = set(observation_features)
        read = set(self.observation_keys)
        missing_obs = [k for k in self.observation_keys if k not in obs]
        missing_ignored = [k for k in self.ignore if k not in obs]
        extra_obs = sorted(obs - read - set(self.ignore))
        missing_act = [k for k in self.action_keys if k not in action_features]
        extra_act = sorted(set(action_features) - set(self.action_keys))
        not_scalar = [
            f"{k} ({observation_features[k]!r})"
            for k in self.observation_keys
            if k in obs and not _is_scalar_feature(observation_features[k])
        ] + [
            f"{k} ({action_features[k]!r})"
            for k in self.action_keys
            if k in action_features and not _is_scalar_feature(action_features[k])
        ]
        for label, keys in (
            ("observation keys the mapping reads but the robot lacks", missing_obs),
            ("ignored observation keys the robot lacks", missing_ignored),
            ("observation keys neither read nor ignored", extra_obs),
            ("action keys the mapping sends but the robot lacks", missing_act),
            ("action keys the robot expects but the mapping does not send", extra_act),
            ("keys read or sent that are not scalar (float) features", not_scalar),
        ):
            if keys:
                problems.append(f"{label}: {', '.join(keys)}")
        if problems:
            raise MappingError("robot features do not match the mapping: " + "; ".join(problems))

    # reading and writing -------------------------------------------------------------------
    def read(
        self, observation: Any, previous: np.ndarray | None, control_dt_s: float
    ) -> np.ndarray:
        """A new measurement array from one observation dict.

        Args:
            observation: What ``get_observation`` returned.
            previous: The previous measurement of this episode (finite differences), or None.
            control_dt_s: The period between two measurements (finite differences).

        Raises:
            ObservationError: Not a dict, a read key missing, or a value that is not a real,
                finite scalar; the message names the key and shows the value.
        """
        if not isinstance(observation, Mapping):
            raise ObservationError(
                f"get_observation returned {type(observation).__name__}, not a dict"
            )
        m = np.empty(self.size)
        for r in self._reads:
            m[r.index] = r.channel.from_robot(scalar(observation, r.channel.key, "observation"))
        for sl, fill in self._fills:
            m[sl] = fill
        for sl, keys in self._gravity:
            m[sl] = gravity_from_quaternion(
                [scalar(observation, k, "observation") for k in keys], keys
            )
        for sl, of, at_reset in self._diffs:
            m[sl] = at_reset if previous is None else (m[of] - previous[of]) / control_dt_s
        return m

    def action_dict(self, command: np.ndarray) -> dict[str, float]:
        """The action dict for a command (twinloop units -> robot units)."""
        return {ch.key: ch.to_robot(float(c)) for ch, c in zip(self.action, command, strict=True)}

    def applied(
        self, sent: Any, action: Mapping[str, float], command: np.ndarray
    ) -> tuple[np.ndarray, list[str]]:
        """The command the robot says it executed, and the keys it changed.

        An element the robot returns unchanged is the command's own value exactly (no unit
        round trip), so only the robot's own clipping shows as a difference.

        Raises:
            ObservationError: ``sent`` is not a dict, lacks an action key, or holds a value that
                is not a real, finite scalar.
        """
        if not isinstance(sent, Mapping):
            raise ObservationError(f"send_action returned {type(sent).__name__}, not a dict")
        out = np.array(command, dtype=np.float64)
        changed = []
        for k, ch in enumerate(self.action):
            v = scalar(sent, ch.key, "returned action")
            if v != action[ch.key]:
                out[k] = ch.from_robot(v)
                changed.append(ch.key)
        return out, changed

    def describe(self) -> list[str]:
        """One line per measurement field and one per action key: where each value comes from."""
        lines = []
        for f in self.measurement_layout:
            src = self.sources[f.name]
            if isinstance(src, Channel):
                text = src.text()
            elif isinstance(src, Unavailable):
                why = f" ({src.why})" if src.why else ""
                text = f"unavailable, filled with {src.fill:g}{why}"
            elif isinstance(src, FiniteDifference):
                text = f"finite difference of {src.of} (at reset: {src.at_reset:g})"
            elif isinstance(src, GravityFromQuaternion):
                text = f"gravity from quaternion {', '.join(src.keys)}"
            else:
                text = ", ".join(
                    s.text() if isinstance(s, Channel) else f"unavailable ({s.fill:g})" for s in src
                )
            lines.append(f"{f.name} <- {text}")
        lines += [f"command[{k}] -> {ch.text()}" for k, ch in enumerate(self.action)]
        return lines


# --- helpers -------------------------------------------------------------------------------------
def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool | np.bool_)


def _is_read(source: object) -> bool:
    if isinstance(source, Channel):
        return True
    if isinstance(source, Sequence) and not isinstance(source, str):
        return all(isinstance(s, Channel) for s in source)
    return False


def _is_scalar_feature(feature: object) -> bool:
    """LeRobot declares a scalar as the type ``float`` (some robots use ``int``)."""
    return feature is float or feature is int


def _no_duplicates(what: str, keys: Sequence[str]) -> None:
    seen, dup = set(), []
    for k in keys:
        if k in seen and k not in dup:
            dup.append(k)
        seen.add(k)
    if dup:
        raise MappingError(f"{what} used more than once: {', '.join(dup)}")


def _show(value: object) -> str:
    text = repr(value)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{type(value).__name__} {text}"


def scalar(values: Mapping[str, Any], key: str, what: str) -> float:
    """``values[key]`` as a float if it is a real, finite scalar.

    Raises:
        ObservationError: The key is missing, or the value is a bool, a string, a sequence, an
            array of non-zero rank, complex, or not finite (the message names the key).
    """
    if key not in values:
        raise ObservationError(f"{what} lacks key {key!r}")
    v = values[key]
    is_0d = isinstance(v, np.ndarray) and v.shape == () and v.dtype.kind in "iuf"
    if is_0d or _is_real(v):
        x = float(v)
    else:
        raise ObservationError(f"{what}[{key!r}] = {_show(v)} is not a real scalar")
    if not math.isfinite(x):
        raise ObservationError(f"{what}[{key!r}] = {x!r} is not finite")
    return x


def gravity_from_quaternion(wxyz: Sequence[float], keys: Sequence[str] = ()) -> np.ndarray:
    """Gravity direction in the body frame, ``R(q)^T (0, 0, -1)``, of a ``w, x, y, z`` quaternion.

    Raises:
        ObservationError: The quaternion's norm is not within 0.5-2 (not an orientation).
    """
    q = np.asarray(wxyz, dtype=np.float64)
    norm = float(np.linalg.norm(q))
    if not 0.5 <= norm <= 2.0:
        raise ObservationError(
            f"quaternion {', '.join(keys) or 'w,x,y,z'} has norm {norm:.3g}, not an orientation"
        )
    w, x, y, z = q / norm
    return -np.array([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)])
