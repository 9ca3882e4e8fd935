"""Shared pieces of the balloon MAVLink tests: hostile-input strategies, oracles, small waits.

The strategies draw what a hostile or broken peer could send: any bytes, valid MAVLink framing
around random payloads of every message type of the dialect, messages of every type with any
value their wire types carry (non-finite and extreme floats included), and COMMAND_LONGs of
this protocol with any parameter. :func:`contract_valid` says, from the words of the contract
(not from the protocol's tables), whether a command is well formed. The helpers at the end
read what the vehicle answers a hand-made ground station (:class:`~.fake.RawPeer`).
"""

from __future__ import annotations

import math
import struct
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from twinloop.hardware.balloon import protocol as P
from twinloop.hardware.balloon.fake import RawPeer

DIALECT = P.load_dialect()
#: Every message class of the common dialect, in a fixed order (hypothesis replays examples).
MESSAGE_CLASSES = sorted(DIALECT.mavlink_map.values(), key=lambda cls: cls.id)

#: Floats a hostile peer likes: non-finite, negative, fractional, at and past every limit.
SPECIAL_FLOATS = (
    math.nan,
    -math.nan,
    math.inf,
    -math.inf,
    -1.0,
    -0.0,
    0.0,
    0.5,
    1.0,
    2.0,
    3.0,
    7.0,
    float(2**24 - 1),
    float(2**24),
    float(2**31),
    1e10,
    -1e10,
    3.4e38,
    1e-45,
)


def float32s() -> st.SearchStrategy[float]:
    """Any value a float32 field carries, with the special ones and small whole numbers often."""
    return st.one_of(
        st.sampled_from(SPECIAL_FLOATS),
        st.integers(0, 40).map(float),
        st.floats(width=32, allow_nan=True, allow_infinity=True),
    )


_INT_RANGES = {
    "int8_t": (-(2**7), 2**7 - 1),
    "uint8_t": (0, 2**8 - 1),
    "int16_t": (-(2**15), 2**15 - 1),
    "uint16_t": (0, 2**16 - 1),
    "int32_t": (-(2**31), 2**31 - 1),
    "uint32_t": (0, 2**32 - 1),
    "int64_t": (-(2**63), 2**63 - 1),
    "uint64_t": (0, 2**64 - 1),
}


def _scalar(ftype: str) -> st.SearchStrategy[Any]:
    if ftype in ("float", "double"):
        return float32s()
    if ftype == "char":
        return st.binary(min_size=1, max_size=1)
    lo, hi = _INT_RANGES[ftype]
    return st.one_of(st.sampled_from((lo, hi, 0, 1, 2, -1 if lo < 0 else hi)), st.integers(lo, hi))


def field_values(cls: Any, attr: str) -> st.SearchStrategy[Any]:
    """Any value the wire type of ``cls.attr`` carries (for floats: non-finite ones too)."""
    lengths = dict(zip(cls.ordered_fieldnames, cls.array_lengths, strict=True))
    types = dict(zip(cls.fieldnames, cls.fieldtypes, strict=True))
    return _value(types[attr], lengths[attr])


def replace(msg: Any, **changes: Any) -> Any:
    """A copy of ``msg`` with some fields changed, as a receiver decodes it."""
    fields = {f: getattr(msg, f) for f in msg.fieldnames}
    fields.update(changes)
    fields = {k: v.encode("ascii") if isinstance(v, str) else v for k, v in fields.items()}
    sysid, compid = msg.get_srcSystem(), msg.get_srcComponent()
    (got,) = P.parse_datagram(P.new_link(0, 0), pack(type(msg)(**fields), sysid, compid))
    return got


def _value(ftype: str, length: int) -> st.SearchStrategy[Any]:
    if length == 0:
        return _scalar(ftype)
    if ftype == "char":
        return st.binary(max_size=length)
    return st.lists(_scalar(ftype), min_size=length, max_size=length)


@st.composite
def messages(draw: st.DrawFn, classes: tuple[Any, ...] | None = None) -> Any:
    """A message of a random type (or one of ``classes``) with random values in every field."""
    cls = draw(st.sampled_from(classes or MESSAGE_CLASSES))
    lengths = dict(zip(cls.ordered_fieldnames, cls.array_lengths, strict=True))  # wire order
    types = zip(cls.fieldnames, cls.fieldtypes, strict=True)  # the constructor's order
    return cls(*[draw(_value(t, lengths[name])) for name, t in types])


def pack(msg: Any, sysid: int, compid: int) -> bytes:
    """``msg`` packed as ``(sysid, compid)`` sends it."""
    return msg.pack(P.new_link(sysid, compid))


def frame(msgid: int, payload: bytes, sysid: int, compid: int, crc_extra: int) -> bytes:
    """A MAVLink 2 frame with a valid checksum around any payload (up to 255 bytes)."""
    from pymavlink.generator.mavcrc import x25crc

    header = struct.pack(
        "<BBBBBBBHB", 0xFD, len(payload), 0, 0, 0, sysid, compid, msgid & 0xFFFF, msgid >> 16
    )
    crc = x25crc(header[1:] + payload)
    crc.accumulate(bytes([crc_extra]))
    return header + payload + struct.pack("<H", crc.crc)


@st.composite
def framed_payloads(draw: st.DrawFn, sysid: int, compid: int) -> bytes:
    """Valid framing and checksum around random payload bytes of a random message type."""
    cls = draw(st.sampled_from(MESSAGE_CLASSES))
    payload = draw(st.binary(max_size=255))
    return frame(cls.id, payload, sysid, compid, cls.crc_extra)


def _classes(*names: str) -> tuple[Any, ...]:
    by_name = {cls.msgname: cls for cls in MESSAGE_CLASSES}
    return tuple(by_name[name] for name in names)


#: What the vehicle reads (COMMAND_LONG drawn most often) and what a ground station reads:
#: hostile input claiming to come from one or the other is drawn from these types often.
TO_VEHICLE = _classes("COMMAND_LONG", "COMMAND_LONG", "COMMAND_LONG", "HEARTBEAT")
TO_STATION = _classes(
    "HEARTBEAT",
    "COMMAND_ACK",
    "STATUSTEXT",
    "HOME_POSITION",
    "GLOBAL_POSITION_INT",
    "SCALED_PRESSURE",
    "SYSTEM_TIME",
    "NAMED_VALUE_FLOAT",
    "NAMED_VALUE_INT",
)


@st.composite
def protocol_messages(draw: st.DrawFn, classes: tuple[Any, ...]) -> Any:
    """A message of a type the protocol reads; half the time its key fields are the protocol's.

    A COMMAND_LONG then carries one of the protocol's commands to the vehicle (every parameter
    still random), a NAMED_VALUE_* one of the frame's names, a HEARTBEAT the balloon's type, so
    the values reach the validation of every field, not only the first check.
    """
    msg = draw(messages(classes))
    if draw(st.booleans()):
        kind = msg.get_type()
        if kind == "COMMAND_LONG":
            msg.command = draw(st.sampled_from((P.CMD_ALTITUDE, P.CMD_EPISODE, P.CMD_RELEASE)))
            msg.target_system, msg.target_component = draw(st.sampled_from(((1, 1), (0, 0))))
        elif kind.startswith("NAMED_VALUE"):
            msg.name = draw(st.sampled_from((*P.NAMED_FLOATS, "frame"))).encode()
        elif kind == "HEARTBEAT":
            msg.type = P.MAV_TYPE_FREE_BALLOON
    return msg


def datagrams(sysid: int, compid: int) -> st.SearchStrategy[bytes]:
    """Anything a peer could send in one datagram, as ``(sysid, compid)`` where it is MAVLink."""
    focus = TO_VEHICLE if sysid == P.GCS_SYSID else TO_STATION
    packed = messages().map(lambda m: pack(m, sysid, compid))
    ours = protocol_messages(focus).map(lambda m: pack(m, sysid, compid))
    return st.one_of(
        st.binary(max_size=600),
        framed_payloads(sysid, compid),
        packed,
        ours,
        ours,
        st.lists(st.one_of(packed, ours), max_size=4).map(b"".join),
        messages().map(lambda m: pack(m, sysid, compid)[: -1 - (m.get_msgId() % 5)]),
        st.integers(P.MAX_DATAGRAM + 1, 9000).map(lambda n: b"\xfd" * n),
    )


def f32(value: float) -> float:
    """What a float32 parameter carries of ``value`` (the twin reads the rounded value)."""
    with np.errstate(over="ignore"):
        return float(np.float32(value))


def wait(cond: Callable[[], bool], timeout_s: float = 3.0) -> bool:
    """Poll ``cond`` until it holds or ``timeout_s`` passes; its last value."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


# --- settings --------------------------------------------------------------------------------
def examples(n: int) -> Any:
    """Settings of the default run: ``n`` derandomized examples, no deadline, no database."""
    return settings(
        max_examples=n,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def campaign(n: int) -> Any:
    """Settings of a slow campaign: ``n`` random examples."""
    return settings(
        max_examples=n,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


QUICK = examples(200)


# --- the contract's words --------------------------------------------------------------------
def _whole_in(value: float, lo: float, hi: float) -> bool:
    return math.isfinite(value) and value == math.floor(value) and lo <= value <= hi


def contract_valid(command: int, p: list[float]) -> tuple[bool, int | None]:
    """(valid?, readable sequence) of a COMMAND_LONG of the protocol, from the contract's words.

    ``p`` holds param1..param7 as the vehicle reads them (float32). A sequence is a whole
    number in [0, 2^24), a seed half too, an altitude code one of 0, 1, 2; every parameter a
    command does not use is 0 or NaN.
    """
    seq_limit = 2**24
    if command == P.CMD_ALTITUDE:
        seq_at, used = 1, {0: (0, 2), 1: (0, seq_limit - 1)}
    elif command == P.CMD_EPISODE:
        seq_at, used = 2, {0: (0, 2**24 - 1), 1: (0, 2**24 - 1), 2: (0, seq_limit - 1)}
    else:  # release
        seq_at, used = 0, {0: (0, seq_limit - 1)}
    seq = int(p[seq_at]) if _whole_in(p[seq_at], *used[seq_at]) else None
    valid = all(
        _whole_in(p[i], *used[i]) if i in used else (p[i] == 0.0 or math.isnan(p[i]))
        for i in range(7)
    )
    return valid, seq


# --- what a hand-made ground station hears ---------------------------------------------------
def is_ack(msg: Any, command: int, seq: int | None = None, compid: int | None = None) -> bool:
    """Whether ``msg`` is the ACK of ``command`` (of sequence ``seq``, to component ``compid``).

    An ACK without a sequence (``result_param2`` -1) answers any sequence.
    """
    return (
        msg.get_type() == "COMMAND_ACK"
        and msg.command == command
        and (seq is None or msg.result_param2 in (P.NO_SEQUENCE, *range(8 * seq, 8 * seq + 3)))
        and (compid is None or msg.target_component == compid)
    )


def ask(
    peer: RawPeer,
    to: tuple[str, int],
    command: int,
    *params: float,
    seq: int | None = None,
    timeout_s: float = 2.0,
) -> Any | None:
    """Send one COMMAND_LONG and return its ACK (None if none came within ``timeout_s``)."""
    peer.command(to, command, *params)
    got = peer.receive(lambda m: is_ack(m, command, seq), timeout_s)
    return got[-1] if got and is_ack(got[-1], command, seq) else None


def heartbeat(
    peer: RawPeer, where: Callable[[Any], bool] = lambda hb: True, timeout_s: float = 3.0
) -> Any | None:
    """The next vehicle HEARTBEAT that satisfies ``where`` (None if none within the timeout)."""

    def ok(m: Any) -> bool:
        return m.get_type() == "HEARTBEAT" and m.get_srcSystem() == P.VEHICLE_SYSID and where(m)

    got = peer.receive(ok, timeout_s)
    return got[-1] if got and ok(got[-1]) else None
