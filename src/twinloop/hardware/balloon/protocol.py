"""How twinloop talks to a balloon flight controller over MAVLink 2 (common dialect).

Both ends send a ``HEARTBEAT`` every second: the vehicle as ``MAV_TYPE_FREE_BALLOON``, the
ground station as ``MAV_TYPE_GCS``. The vehicle's heartbeat says whether it is in failsafe
(``system_status`` ``MAV_STATE_ACTIVE`` or ``MAV_STATE_CRITICAL``) and which altitude command it
flies now (``custom_mode``: 0 DOWN, 1 STAY, 2 UP).

Commands (ground -> vehicle), each a ``COMMAND_LONG`` with a sequence number, acknowledged with
one ``COMMAND_ACK`` and retried until acknowledged:

* ``MAV_CMD_USER_1`` (altitude control): param1 = 0 DOWN, 1 STAY, 2 UP; param2 = sequence.
* ``MAV_CMD_USER_2`` (start an episode): param1, param2 = a seed's low and high 24 bits;
  param3 = sequence. Only the vehicle twin accepts it; a real vehicle answers ``UNSUPPORTED``
  and the episode starts from wherever it flies.
* ``MAV_CMD_USER_3`` (release command of the vehicle): param1 = sequence. A ground station
  sends it when it closes, so the next one may command the vehicle at once.

The ACK's ``result_param2`` is ``8 * sequence + executed command`` (the command after the
vehicle's safety layers: STAY for every refusal), so a late ACK of an earlier retry is never
mistaken for this one; it is ``NO_SEQUENCE`` (-1) when the sequence itself could not be read.
``progress`` carries the reason of a refusal (:data:`REASONS`), and the vehicle sends the
refused station a ``STATUSTEXT`` that says it in words.

Telemetry frame (vehicle -> the station whose command it answers, after every control step and
episode start): ``HOME_POSITION`` (the station; it opens the frame), ``GLOBAL_POSITION_INT``
(position, altitude, vx/vy = in-situ wind in cm/s), ``SCALED_PRESSURE`` (ambient pressure,
``press_diff`` = superpressure, hPa), ``SYSTEM_TIME``, ``NAMED_VALUE_FLOAT`` for the fields
MAVLink has no message for (below), and last a ``NAMED_VALUE_INT`` ``"frame"`` with the
sequence number that closes the frame. All its messages but ``HOME_POSITION`` carry the same
``time_boot_ms``.

Device profile (vehicle -> station): a twin that flies hidden physics
(:mod:`twinloop.core.profile`) sends a ``STATUSTEXT`` of severity ``MAV_SEVERITY_INFO``, ``id``
0 (one chunk), text ``"device profile: NAME"`` (:data:`PROFILE_PREFIX`): to a station when it is
first heard (before its first heartbeat) and after each episode start (before the ACK). NAME
is 1 to :data:`MAX_PROFILE_NAME` characters of ``A-Z a-z 0-9 . _ : + -``, beginning with a
letter or a digit (``random:7``, a profile file's stem). A nominal vehicle sends none.

Contract
--------
What every vehicle (the twin, a real adapter) and every ground station (the ``mavlink``
backend) of this protocol guarantees. Twins of other devices keep the same promises in their
own protocols.

1. **One validation path.** Every field the protocol reads, in every message either end
   receives, is checked by :func:`read_fields` against its :class:`Field` (a number, finite, a
   whole number where a count, code or sequence is meant, inside its range in SI units). The
   tables are :data:`COMMANDS`, :data:`VEHICLE_HEARTBEAT`, :data:`ACK`, :data:`TELEMETRY` and
   :data:`PROFILE_TEXT` (with the name's rule, :func:`read_profile`); a COMMAND_LONG
   parameter a command does not use must be 0 or NaN (MAVLink's "no value"). A field the
   protocol does not use is never read, so no value in it can matter. A message with any
   field out of its table is refused whole (a telemetry frame with one bad message is dropped
   whole), counted, and logged in one line (at most one line a second per kind:
   :class:`Throttle`), never with a traceback.
2. **The receive loop never dies from input.** A datagram longer than :data:`MAX_DATAGRAM` is
   dropped unread; garbage, truncated messages, unknown message types and messages from other
   systems are counted and dropped. An unexpected error while handling a message is logged in
   one line, counted, answered ``FAILED`` (reason ``INTERNAL``) where its command and sequence
   are known, and leaves the vehicle holding STAY; the next datagram is served. No input
   reaches that last line of defence: the validation path refuses it first.
3. **Every command is answered.** Each ``COMMAND_LONG`` addressed to the vehicle (target
   system 0 or 1, component 0 or 1) from a station it serves gets exactly one ``COMMAND_ACK``
   (a station beyond ``max_stations``: point 6):
   ``ACCEPTED``; ``DENIED`` (malformed, reason ``INVALID``; or refused by the vehicle, reason
   ``POLICY``: it flies one STAY step instead); ``TEMPORARILY_REJECTED`` (reason ``TERMINAL``:
   the episode is over; ``OTHER_STATION``: another station commands the vehicle;
   ``TOO_MANY_STATIONS``); ``UNSUPPORTED`` (a command this protocol does not define; nothing
   changes); ``FAILED`` (reason ``INTERNAL``). A release from a station that holds no command
   is ``ACCEPTED`` and changes nothing (a watcher that closes does not disturb the vehicle).
   Commands addressed to other systems are not answered.
4. **The safe state after every refusal.** After any refused altitude, episode or release
   command, whatever the reason and whichever station sent it, the vehicle holds STAY (its
   heartbeat's ``custom_mode`` says so) until a command of the station in command is accepted.
   A malformed or refused-for-now command is never executed; a command refused by the
   vehicle's policy flies one STAY step.
5. **Sequences.** A sequence number is a whole number in ``[0, SEQ_LIMIT)`` (what a float32
   parameter carries exactly); a ground station counts 1, 2, ... and wraps to 1. Per station a
   command is executed at most once: a repeat of the station's last sequence gets the same ACK
   and telemetry frame again (a command that failed internally, its ``FAILED`` again); a
   repeat of one of its :data:`RECENT` sequences before that gets its ACK again (a late
   duplicate); neither is executed. Any other number is a new command: no order is required.
   The sequence is checked before anything is run, so no step runs without its ACK.
6. **Stations.** A ground station is a sender ``(host, port, system id, component id)`` with
   system id :data:`GCS_SYSID`; repeat detection, replies and command rights key on all four.
   Any well-formed MAVLink message of a station shows it is there (its heartbeat is meant for
   that); a station that sends only refused commands keeps its link, not the vehicle moving
   (point 4). A vehicle serves up to ``max_stations`` at once; each gets the heartbeat (the
   first one at once, when it is first heard). A station silent for ``station_timeout_s`` is
   forgotten. When the table is full, a new station replaces the one silent longest if that
   one has been silent for the link timeout (the station in command too: it has lost command),
   and is refused otherwise (``TOO_MANY_STATIONS``, with a ``STATUSTEXT``; such answers are
   rate-limited for all unserved senders together). One station commands the vehicle at a
   time: the first whose command is accepted, until it releases command (``MAV_CMD_USER_3``)
   or has been silent for the link timeout; the others' commands are refused
   (``OTHER_STATION``; the ``STATUSTEXT`` names the station in command), and they may watch
   the heartbeat. Replies (ACK, frame, status text) go to the sender only.
7. **Failsafe is visible.** When the station in command has been silent for the link timeout,
   the vehicle holds STAY and its heartbeat says ``MAV_STATE_CRITICAL`` until that station is
   heard again or another takes command; the station in command keeps getting heartbeats. A
   ground station logs the change and names it in its link-lost error.
8. **Bounded resources, fair turns.** Per station the vehicle holds its address, ids and
   times, its last reply (one ACK and frame) and the ACKs of its :data:`RECENT` commands
   before; at most ``max_stations`` stations. It reads its socket in batches and handles a
   bounded number of datagrams of one sender (host and port) per batch, dropping and counting
   the rest, so a flood from one address delays the others by one batch, never takes their
   turn. A ground station holds the ACK and frame of the one command it waits for (answers to
   anything else, late or forged, are dropped on arrival), one frame in assembly (a
   ``HOME_POSITION`` starts a new one, so stray parts never spoil the next frame), the
   vehicle's last status text and the name of its device profile.
9. **Faults are one line.** A ground station raises
   :class:`~twinloop.core.backend.BackendFault` with a one-line message that says what failed,
   what the vehicle reported (its state, its status text) and what to do; the vehicle's
   failsafe holds STAY. Text from the wire is shown as printable ASCII only.
10. **Hidden physics stay hidden.** A vehicle with a device profile tells its stations that a
    profile is in force and its name, never a value of it: only the profile announcement
    above carries it. A ground station checks the announcement (severity, one chunk, the
    name's length and characters: :func:`read_profile`), refuses a malformed one whole like
    any message (point 1; the name it knew stays), and reports the name in its identity as
    ``"profile"``, so captures record it (``device_profile``); a status text that does not
    begin with :data:`PROFILE_PREFIX` is no announcement. A nominal vehicle announces
    nothing, and its ground station's identity has no ``"profile"``.

No pickle, no Python objects: only MAVLink's own binary encoding crosses the wire.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from twinloop.sim.balloon import kernel as K
from twinloop.sim.balloon.config import EARTH_RADIUS_M, BalloonConfig

VEHICLE_SYSID = 1
VEHICLE_COMPID = 1  # MAV_COMP_ID_AUTOPILOT1
GCS_SYSID = 255
GCS_COMPID = 190  # MAV_COMP_ID_MISSIONPLANNER
MAV_TYPE_FREE_BALLOON = 8
MAV_TYPE_GCS = 6
MAV_AUTOPILOT_GENERIC = 0
MAV_MODE_FLAG_CUSTOM_MODE_ENABLED = 1
MAV_STATE_ACTIVE = 4
MAV_STATE_CRITICAL = 5
MAV_STATE_EMERGENCY = 6
MAV_STATE_NAMES = (
    "UNINIT",
    "BOOT",
    "CALIBRATING",
    "STANDBY",
    "ACTIVE",
    "CRITICAL",
    "EMERGENCY",
    "POWEROFF",
    "FLIGHT_TERMINATION",
)
MAV_SEVERITY_WARNING = 4
MAV_SEVERITY_INFO = 6
CMD_ALTITUDE = 31010  # MAV_CMD_USER_1
CMD_EPISODE = 31011  # MAV_CMD_USER_2
CMD_RELEASE = 31012  # MAV_CMD_USER_3
RESULT_ACCEPTED = 0
RESULT_TEMPORARILY_REJECTED = 1
RESULT_DENIED = 2
RESULT_UNSUPPORTED = 3
RESULT_FAILED = 4
RESULT_NAMES = (
    "ACCEPTED",
    "TEMPORARILY_REJECTED",
    "DENIED",
    "UNSUPPORTED",
    "FAILED",
    "IN_PROGRESS",
    "CANCELLED",
    "COMMAND_LONG_ONLY",
    "COMMAND_INT_ONLY",
    "COMMAND_UNSUPPORTED_MAV_FRAME",
)
FRAME_MARK = b"frame"

#: Reasons of a refusal, carried in ``COMMAND_ACK.progress``.
REASON_NONE = 0
REASON_INVALID = 1
REASON_POLICY = 2
REASON_TERMINAL = 3
REASON_OTHER_STATION = 4
REASON_TOO_MANY_STATIONS = 5
REASON_INTERNAL = 6
REASONS = (
    "none",
    "a parameter is malformed or out of range",
    "the vehicle refuses this command (it flew STAY)",
    "the episode is over (terminal state)",
    "another ground station commands the vehicle",
    "the vehicle serves as many ground stations as it can",
    "the vehicle failed internally (it holds STAY)",
)

#: Sequence numbers are whole numbers below this (a float32 parameter carries them exactly).
SEQ_LIMIT = 1 << 24
#: ``result_param2`` of an ACK whose command's sequence could not be read.
NO_SEQUENCE = -1
#: Datagrams longer than this are dropped unread (a MAVLink 2 message is at most 280 bytes).
MAX_DATAGRAM = 4096
#: How many earlier commands per station a vehicle remembers to answer late duplicates.
RECENT = 16
#: What a profile announcement's STATUSTEXT says before the profile's name.
PROFILE_PREFIX = "device profile: "
#: Longest device profile name an announcement carries (the text field holds 50 characters).
MAX_PROFILE_NAME = 32
_PROFILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+\-]*")


def ack_code(seq: int, executed: int) -> int:
    """``result_param2`` of an acknowledged command: sequence and executed command.

    Raises:
        ValueError: ``seq`` outside ``[0, SEQ_LIMIT)`` or ``executed`` outside ``[0, 8)``.
    """
    if not (0 <= seq < SEQ_LIMIT and 0 <= executed < 8):
        raise ValueError(f"ack_code({seq!r}, {executed!r}): sequence or command out of range")
    return int(seq) * 8 + int(executed)


def parse_ack_code(code: int) -> tuple[int, int]:
    """Inverse of :func:`ack_code`: ``(sequence, executed command)``; ``(-1, -1)`` for none."""
    if code == NO_SEQUENCE:
        return NO_SEQUENCE, NO_SEQUENCE
    return int(code) // 8, int(code) % 8


def next_seq(seq: int) -> int:
    """The sequence number after ``seq``: 1, 2, ..., SEQ_LIMIT - 1, then 1 again."""
    return seq % (SEQ_LIMIT - 1) + 1


# --- the one validation path -------------------------------------------------------------------
class ProtocolError(ValueError):
    """A message broke the protocol: a field out of its table (the message names it)."""


class FrameError(ProtocolError):
    """A telemetry frame carried a value out of its range, or was incomplete or mixed."""


class CommandError(ProtocolError):
    """A COMMAND_LONG with a malformed parameter.

    Attributes:
        seq: The command's sequence number if that one was readable, else None.
    """

    def __init__(self, message: str, seq: int | None) -> None:
        """Keep the readable sequence number for the refusal's ACK."""
        super().__init__(message)
        self.seq = seq


@dataclass(frozen=True)
class Field:
    """One field of a message: where it is, its unit and its valid range.

    Args:
        attr: The message's attribute.
        lo: Smallest valid value, in SI units (after ``scale``).
        hi: Largest valid value, in SI units.
        scale: SI value = wire value * scale (e.g. 1e-7 for degE7, 0.01 for cm/s).
        whole: The wire value must be a whole number (counts, codes, sequences).
        key: Name of the value in :func:`read_fields`' result (default ``attr``).
    """

    attr: str
    lo: float
    hi: float
    scale: float = 1.0
    whole: bool = False
    key: str = ""

    def read(self, msg: Any) -> float | int:
        """The checked value of this field of ``msg``.

        Raises:
            ProtocolError: The value is not a finite number, not whole where required, or
                out of range.
        """
        raw = getattr(msg, self.attr, None)
        # only NAMED_VALUE_* have a name field (pymavlink logs an error when asked for another's)
        named = f" {read_name(msg)!r}" if "name" in getattr(msg, "fieldnames", ()) else ""
        what = f"{_kind(msg)}{named}.{self.attr}"
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            raise ProtocolError(f"{what} = {_short(raw)} is not a number")
        if not math.isfinite(raw):
            raise ProtocolError(f"{what} = {raw!r} is not finite")
        if self.whole and raw != math.floor(raw):
            raise ProtocolError(f"{what} = {raw!r} is not a whole number")
        value = raw * self.scale if self.scale != 1.0 else raw
        if not self.lo <= value <= self.hi:
            raise ProtocolError(f"{what} = {raw!r} is outside [{self.lo:g}, {self.hi:g}]")
        return int(value) if self.whole else float(value)


def read_fields(msg: Any, fields: tuple[Field, ...]) -> dict[str, Any]:
    """Every field of ``fields`` from ``msg``, checked (the protocol's only validation path).

    Raises:
        ProtocolError: The first field out of its table.
    """
    return {f.key or f.attr: f.read(msg) for f in fields}


def read_name(msg: Any, attr: str = "name") -> str:
    """A char field as printable ASCII (anything else shown as ``?``), without padding."""
    raw = getattr(msg, attr, "")
    if isinstance(raw, bytes):
        raw = raw.decode("ascii", errors="replace")
    text = str(raw).split("\x00", 1)[0]
    return "".join(c if " " <= c <= "~" else "?" for c in text[:64])


def _kind(msg: Any) -> str:
    try:
        return str(msg.get_type())
    except Exception:  # a message object that cannot even name itself
        return "message"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


_SEQ = (0.0, float(SEQ_LIMIT - 1))
_HALF_SEED = (0.0, float((1 << 24) - 1))

#: COMMAND_LONG parameters of each command (the others must be 0 or NaN), with its name.
COMMANDS: dict[int, tuple[str, tuple[Field, ...]]] = {
    CMD_ALTITUDE: (
        "altitude",
        (
            Field("param2", *_SEQ, whole=True, key="seq"),
            Field("param1", 0.0, 2.0, whole=True, key="code"),
        ),
    ),
    CMD_EPISODE: (
        "episode start",
        (
            Field("param3", *_SEQ, whole=True, key="seq"),
            Field("param1", *_HALF_SEED, whole=True, key="seed_low"),
            Field("param2", *_HALF_SEED, whole=True, key="seed_high"),
        ),
    ),
    CMD_RELEASE: ("release", (Field("param1", *_SEQ, whole=True, key="seq"),)),
}
_PARAMS = tuple(f"param{i}" for i in range(1, 8))


@dataclass(frozen=True)
class Command:
    """A checked COMMAND_LONG: its id, name, sequence number and other parameters."""

    command: int
    name: str
    seq: int
    args: dict[str, int]


def decode_command(msg: Any) -> Command:
    """Check a COMMAND_LONG of :data:`COMMANDS` field by field.

    The sequence number is read first, so a refusal can name it.

    Raises:
        CommandError: A parameter out of its table, or an unused one neither 0 nor NaN.
        KeyError: ``msg.command`` is not a command of this protocol.
    """
    name, fields = COMMANDS[int(msg.command)]
    seq: int | None = None
    try:
        seq = int(fields[0].read(msg))
        args = read_fields(msg, fields[1:])
        used = {f.attr for f in fields}
        for attr in _PARAMS:
            value = getattr(msg, attr, None)
            if attr not in used and not (
                isinstance(value, float) and (value == 0.0 or math.isnan(value))
            ):
                raise ProtocolError(f"COMMAND_LONG.{attr} = {_short(value)} must be 0 or NaN")
    except ProtocolError as exc:
        raise CommandError(f"{name} command: {exc}", seq) from None
    return Command(int(msg.command), name, seq, args)


#: What a ground station reads of the vehicle's HEARTBEAT.
VEHICLE_HEARTBEAT = (
    Field("type", MAV_TYPE_FREE_BALLOON, MAV_TYPE_FREE_BALLOON, whole=True),
    Field("system_status", 0, len(MAV_STATE_NAMES) - 1, whole=True),
    Field("custom_mode", 0, 2, whole=True, key="held"),
)

#: What a ground station reads of a COMMAND_ACK (the addressing fields are read apart).
ACK = (
    Field("command", 0, 65535, whole=True),
    Field("result", 0, len(RESULT_NAMES) - 1, whole=True),
    Field("progress", 0, len(REASONS) - 1, whole=True, key="reason"),
    Field("result_param2", NO_SEQUENCE, 8 * SEQ_LIMIT - 6, whole=True, key="code"),
)


def read_ack(msg: Any) -> dict[str, int]:
    """A COMMAND_ACK's fields, checked; ``seq`` and ``executed`` split from ``result_param2``.

    Raises:
        ProtocolError: A field out of :data:`ACK`, or an executed command outside {0, 1, 2}.
    """
    ack = read_fields(msg, ACK)
    ack["seq"], ack["executed"] = parse_ack_code(ack["code"])
    if ack["code"] != NO_SEQUENCE and ack["executed"] > 2:
        raise ProtocolError(
            f"COMMAND_ACK.result_param2 = {ack['code']} names executed command "
            f"{ack['executed']}, not 0, 1 or 2"
        )
    return ack


#: What a ground station reads of a profile announcement besides its text (one chunk, INFO).
PROFILE_TEXT = (
    Field("severity", MAV_SEVERITY_INFO, MAV_SEVERITY_INFO, whole=True),
    Field("id", 0, 0, whole=True),
)


def check_profile_name(name: str) -> str:
    """``name`` if a profile announcement can carry it (see the module doc).

    Raises:
        ValueError: ``name`` is not a string, is empty or longer than
            :data:`MAX_PROFILE_NAME`, or has a character outside ``A-Z a-z 0-9 . _ : + -``
            (or does not begin with a letter or a digit).
    """
    if not isinstance(name, str):
        raise ValueError(f"device profile name {_short(name)} is not a string")
    if not 1 <= len(name) <= MAX_PROFILE_NAME:
        raise ValueError(
            f"device profile name {_short(name)} has {len(name)} characters; an announcement "
            f"carries 1 to {MAX_PROFILE_NAME}"
        )
    if not _PROFILE_NAME.fullmatch(name):
        raise ValueError(
            f"device profile name {_short(name)} may hold only letters, digits and . _ : + - "
            "and must begin with a letter or a digit"
        )
    return name


def profile_text(name: str) -> bytes:
    """The text of the STATUSTEXT that announces device profile ``name`` (ASCII).

    Raises:
        ValueError: The name breaks the rule of :func:`check_profile_name`.
    """
    return (PROFILE_PREFIX + check_profile_name(name)).encode("ascii")


def read_profile(msg: Any) -> str | None:
    """The profile name a STATUSTEXT announces, checked; None if it is no announcement.

    A text that begins with :data:`PROFILE_PREFIX` is an announcement; it is checked whole:
    :data:`PROFILE_TEXT` and the name's rule (:func:`check_profile_name`), on the text as
    received (a character that is not printable ASCII breaks the rule).

    Raises:
        ProtocolError: An announcement with a field out of :data:`PROFILE_TEXT` or a name that
            breaks the rule (the message shows the name as printable ASCII).
    """
    raw = getattr(msg, "text", "")
    if isinstance(raw, bytes):
        raw = raw.decode("ascii", errors="replace")
    if not isinstance(raw, str):
        return None
    text = raw.split("\x00", 1)[0]
    if not text.startswith(PROFILE_PREFIX):
        return None
    read_fields(msg, PROFILE_TEXT)
    name = text[len(PROFILE_PREFIX) :]
    try:
        return check_profile_name(name)
    except ValueError:
        shown = "".join(c if " " <= c <= "~" else "?" for c in name)
        raise ProtocolError(
            f"STATUSTEXT announces device profile {_short(shown)} ({len(name)} characters): "
            f"a name is 1 to {MAX_PROFILE_NAME} of letters, digits and . _ : + -"
        ) from None


#: NAMED_VALUE_FLOAT names (<= 10 chars) -> measurement column and valid range.
NAMED_FLOATS: dict[str, tuple[int, float, float]] = {
    "soc": (K.M_SOC, 0.0, 1.0),
    "sun_el": (K.M_EL, -90.0, 90.0),
    "hour_ang": (K.M_HOUR, -180.0, 180.0),
    "acs_w": (K.M_ACS_W, 0.0, 5000.0),
    "cmd": (K.M_CMD, 0.0, 2.0),
    "status": (K.M_STATUS, 0.0, 3.0),
    "excess": (K.M_EXCESS, 0.0, 1.0),
    "paused": (K.M_PAUSED, 0.0, 1.0),
    "wfc_u": (K.M_WIND_FC, -300.0, 300.0),
    "wfc_v": (K.M_WIND_FC + 1, -300.0, 300.0),
    "w_p": (K.M_WIND_P, 100.0, 1e5),
}

DEG_E7 = 1e7
M_PER_DEG = EARTH_RADIUS_M * math.pi / 180.0

_T_MS = Field("time_boot_ms", 0.0, 4_294_967.295, scale=1e-3, key="t_s")
#: What a ground station reads of each telemetry message (NAMED_VALUE_* apart: by name).
TELEMETRY: dict[str, tuple[Field, ...]] = {
    "HOME_POSITION": (
        Field("latitude", -90.0, 90.0, scale=1e-7, key="lat0"),
        Field("longitude", -180.0, 180.0, scale=1e-7, key="lon0"),
    ),
    "GLOBAL_POSITION_INT": (
        _T_MS,
        Field("lat", -90.0, 90.0, scale=1e-7),
        Field("lon", -180.0, 180.0, scale=1e-7),
        Field("alt", -1000.0, 60000.0, scale=1e-3, key="alt_m"),
        Field("vx", -300.0, 300.0, scale=0.01, key="wind_u"),
        Field("vy", -300.0, 300.0, scale=0.01, key="wind_v"),
    ),
    "SCALED_PRESSURE": (
        _T_MS,
        Field("press_abs", 100.0, 1.1e5, scale=100.0, key="p_pa"),
        Field("press_diff", -1e4, 1e4, scale=100.0, key="sp_pa"),
    ),
    "SYSTEM_TIME": (_T_MS, Field("time_unix_usec", 0.0, 1e10, scale=1e-6, key="unix_s")),
    "NAMED_VALUE_FLOAT": (_T_MS,),
    "NAMED_VALUE_INT": (_T_MS, Field("value", *_SEQ, whole=True, key="seq")),
}
_NAMED_VALUES = {
    name: Field("value", lo, hi, key=name) for name, (_, lo, hi) in NAMED_FLOATS.items()
}
_FRAME_PARTS = ("HOME_POSITION", "GLOBAL_POSITION_INT", "SCALED_PRESSURE", "SYSTEM_TIME")


def load_dialect() -> Any:
    """Load pymavlink's MAVLink 2 common dialect (imported lazily: an optional dependency)."""
    try:
        from pymavlink.dialects.v20 import common
    except ImportError as exc:
        raise ImportError(
            "the MAVLink backend needs pymavlink; install it with: pip install 'twinloop[balloon]'"
        ) from exc
    return common


def new_link(sysid: int, compid: int) -> Any:
    """A MAVLink 2 encoder/decoder that skips malformed bytes instead of raising."""
    dialect = load_dialect()
    mav = dialect.MAVLink(None, srcSystem=sysid, srcComponent=compid)
    mav.robust_parsing = True
    return mav


def parse_datagram(mav: Any, data: bytes) -> list[Any]:
    """Decode one UDP datagram; bytes left over from an earlier datagram are discarded.

    pymavlink's parser is a byte stream; over UDP each datagram holds whole messages, so a
    truncated or garbage datagram must not swallow the start of the next one. A datagram
    longer than :data:`MAX_DATAGRAM` is not parsed.

    Raises:
        ProtocolError: The datagram is too long.
        Exception: Whatever pymavlink raises on some malformed input despite robust parsing
            (callers count it as garbage).
    """
    if len(data) > MAX_DATAGRAM:
        raise ProtocolError(f"a datagram of {len(data)} bytes (at most {MAX_DATAGRAM})")
    mav.buf = bytearray()
    mav.buf_index = 0
    mav.expected_length = 8  # HEADER_LEN_V1 + 2, pymavlink's initial state
    mav.have_prefix_error = False
    return mav.parse_buffer(data) or []


def split_seed(seed: int) -> tuple[float, float]:
    """A seed < 2^48 as two floats that a float32 parameter carries exactly (24 bits each)."""
    if not 0 <= seed < 2**48:
        raise ValueError(f"seed {seed} must lie in [0, 2^48) to travel over MAVLink")
    return float(seed & 0xFFFFFF), float(seed >> 24)


def join_seed(low: float, high: float) -> int:
    """Inverse of :func:`split_seed` (the halves must be whole numbers in ``[0, 2^24)``).

    Raises:
        ValueError: A half out of its range.
    """
    if not all(isinstance(h, int | float) and math.isfinite(h) for h in (low, high)) or not all(
        0 <= h < (1 << 24) and h == int(h) for h in (low, high)
    ):
        raise ValueError(f"seed halves ({low!r}, {high!r}) must be whole numbers in [0, 2^24)")
    return (int(high) << 24) | int(low)


def encode_frame(mav: Any, meas: np.ndarray, seq: int) -> list[bytes]:
    """The telemetry frame of one measurement row, as packed MAVLink messages."""
    lat0, lon0 = float(meas[K.M_STATION]), float(meas[K.M_STATION + 1])
    x, y = float(meas[K.M_POS]), float(meas[K.M_POS + 1])
    lat = lat0 + y / M_PER_DEG
    lon = lon0 + x / (M_PER_DEG * math.cos(math.radians(lat0)))
    t_ms = round(float(meas[K.M_ELAPSED]) * 1000.0)
    msgs = [
        mav.home_position_encode(
            round(lat0 * DEG_E7),
            round(lon0 * DEG_E7),
            0,
            0.0,
            0.0,
            0.0,
            [1.0, 0.0, 0.0, 0.0],
            0.0,
            0.0,
            0.0,
        ),
        mav.global_position_int_encode(
            t_ms,
            round(lat * DEG_E7),
            round(lon * DEG_E7),
            round(float(meas[K.M_ALT]) * 1000.0),
            round(float(meas[K.M_ALT]) * 1000.0),
            round(float(meas[K.M_WIND]) * 100.0),
            round(float(meas[K.M_WIND + 1]) * 100.0),
            0,
            65535,
        ),
        mav.scaled_pressure_encode(
            t_ms, float(meas[K.M_P]) / 100.0, float(meas[K.M_SP]) / 100.0, 0
        ),
        mav.system_time_encode(round(float(meas[K.M_UNIX]) * 1e6), t_ms),
    ]
    for name, (col, _, _) in NAMED_FLOATS.items():
        msgs.append(mav.named_value_float_encode(t_ms, name.encode(), float(meas[col])))
    msgs.append(mav.named_value_int_encode(t_ms, FRAME_MARK, int(seq)))
    return [m.pack(mav) for m in msgs]


class FrameAssembler:
    """Collects telemetry messages into frames; checks every field on arrival (:data:`TELEMETRY`).

    Holds one frame in assembly: a fixed set of keys, so a rogue sender cannot grow it. A
    ``HOME_POSITION`` starts a new frame (the vehicle sends it first): parts of a frame that
    never closed, stray or forged, are dropped then and cannot spoil the next frame.
    """

    def __init__(self) -> None:
        """Start with an empty frame."""
        self._fields: dict[str, Any] = {}
        self._t_s: float | None = None

    def add(self, msg: Any) -> tuple[int, dict[str, Any]] | None:
        """Take one message; return ``(seq, fields)`` when it closes a frame.

        Messages that are no part of a frame (other types, other names) are ignored.

        Raises:
            FrameError: A value out of its range, a frame that lacks a part, or parts of
                different times (the frame in progress is dropped).
        """
        kind = _kind(msg)
        fields = TELEMETRY.get(kind)
        if fields is None:
            return None
        name = read_name(msg) if kind.startswith("NAMED_VALUE") else ""
        if (kind == "NAMED_VALUE_FLOAT" and name not in NAMED_FLOATS) or (
            kind == "NAMED_VALUE_INT" and name != FRAME_MARK.decode()
        ):
            return None
        if kind == _FRAME_PARTS[0]:
            self._reset()
        try:
            try:
                got = read_fields(msg, fields)
                if kind == "NAMED_VALUE_FLOAT":
                    got[name] = _NAMED_VALUES[name].read(msg)
            except ProtocolError as exc:
                raise FrameError(str(exc)) from None
            t_s = got.pop("t_s", None)
            if t_s is not None:
                if self._t_s is None:
                    self._t_s = t_s
                elif t_s != self._t_s:
                    raise FrameError(
                        f"{kind} of time {t_s:.3f} s in a frame of time {self._t_s:.3f} s"
                    )
            if kind == "NAMED_VALUE_INT":
                missing = {*_FRAME_PARTS, *NAMED_FLOATS} - set(self._fields)
                if missing:
                    raise FrameError(f"telemetry frame {got['seq']} lacks {sorted(missing)}")
                frame = self._frame(self._fields)
                self._reset()
                return got["seq"], frame
            self._fields[kind] = True
            self._fields.update({k: v for k, v in got.items()})
        except FrameError:
            self._reset()
            raise
        return None

    def _reset(self) -> None:
        self._fields = {}
        self._t_s = None

    def _frame(self, f: dict[str, Any]) -> dict[str, Any]:
        out = {
            "station": (f["lat0"], f["lon0"]),
            "lat": f["lat"],
            "lon": f["lon"],
            "alt_m": f["alt_m"],
            "wind": (f["wind_u"], f["wind_v"]),
            "elapsed_s": self._t_s,
            "p_pa": f["p_pa"],
            "sp_pa": f["sp_pa"],
            "unix_s": f["unix_s"],
        }
        out.update({name: f[name] for name in NAMED_FLOATS})
        return out


def frame_to_measurement(
    fields: dict[str, Any], cfg: BalloonConfig, column: np.ndarray | None
) -> np.ndarray:
    """A measurement row (:func:`~twinloop.sim.balloon.kernel.measurement_layout`) from a frame.

    Args:
        fields: A frame from :class:`FrameAssembler`.
        cfg: The system config (column size).
        column: Forecast u then v on the column levels (from the forecast service), or None
            for zeros.
    """
    m = np.zeros(K.measurement_size(cfg))
    lat0, lon0 = fields["station"]
    m[K.M_POS] = (fields["lon"] - lon0) * M_PER_DEG * math.cos(math.radians(lat0))
    m[K.M_POS + 1] = (fields["lat"] - lat0) * M_PER_DEG
    m[K.M_P] = fields["p_pa"]
    m[K.M_ALT] = fields["alt_m"]
    m[K.M_SP] = fields["sp_pa"]
    m[K.M_ELAPSED] = fields["elapsed_s"]
    m[K.M_WIND] = fields["wind"][0]
    m[K.M_WIND + 1] = fields["wind"][1]
    m[K.M_STATION] = lat0
    m[K.M_STATION + 1] = lon0
    m[K.M_UNIX] = fields["unix_s"]
    for name, (col, _, _) in NAMED_FLOATS.items():
        m[col] = fields[name]
    if column is not None:
        m[K.M_COLUMN : K.M_COLUMN + column.size] = column
    return m


class Throttle:
    """At most one log line a second per kind; the next line says how many were left out.

    Args:
        period_s: Shortest time between two lines of one kind.
        max_kinds: Kinds remembered (bounded; the oldest is forgotten).
    """

    def __init__(self, period_s: float = 1.0, max_kinds: int = 64) -> None:
        """Remember nothing yet."""
        self.period_s = period_s
        self.max_kinds = max_kinds
        self._last: dict[str, tuple[float, int]] = {}

    def __call__(self, kind: str) -> int | None:
        """Whether a line of ``kind`` may be logged now: the count left out since, or None."""
        now = time.monotonic()
        last, skipped = self._last.get(kind, (-math.inf, 0))
        if now - last < self.period_s:
            self._last[kind] = (last, skipped + 1)
            return None
        self._last.pop(kind, None)
        if len(self._last) >= self.max_kinds:
            self._last.pop(next(iter(self._last)))
        self._last[kind] = (now, 0)
        return skipped

    def log(self, logger: Any, level: int, kind: str, msg: str, *args: Any) -> None:
        """Log ``msg % args`` at ``level`` unless a line of ``kind`` was logged in the period."""
        skipped = self(kind)
        if skipped is None or not logger.isEnabledFor(level):
            return
        suffix = f" ({skipped} more like it not logged)" if skipped else ""
        logger.log(level, msg + suffix, *args)
