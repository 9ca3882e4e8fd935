"""The request envelope of every ZeroMQ twin: the one validation path, written once.

Every network twin (``twinloop serve microscope``, ``robot``, ...) speaks the same envelope
over :mod:`twinloop.hardware.zmtp`, one msgpack map per message, never pickle (``v`` is the
twin's protocol version: the robot twin speaks 2, the others 1)::

    request  {"v": 1, "id": <int>, "op": <str>, "args": {<str>: <value>}, "token": <str|nil>}
    response {"v": 1, "id": <same int>, "ok": true,  "result": <value>}
           | {"v": 1, "id": <same int|nil>, "ok": false, "error": {"type": <str>, "message": <str>}}

This module holds everything of it that does not depend on the device: the size and nesting
bounds, reading the id, checking the keys, the version, the token and the operation, and each
argument against the operation's spec (:class:`Arg`, :class:`Text`). A twin's protocol
module keeps only its own operations table, version, refusal kinds and device checks, and calls
:func:`decode_request` with them, so the envelope's share of the twin contract in
:mod:`twinloop.hardware.microscope.protocol` (2: one validation path; 3: a refusal names the
request; 7: the token compared in constant time) is written, and tested, once for all twins.
"""

from __future__ import annotations

import dataclasses
import hmac
import math
import reprlib
from collections.abc import Mapping
from typing import Any, Protocol

#: Largest request a twin accepts (bytes, all frames together); requests are small maps.
MAX_REQUEST_BYTES = 64 * 1024
#: Most frames of one request message (a valid one has two).
MAX_FRAMES = 8
#: Request ids are integers in [0, MAX_ID].
MAX_ID = 2**63 - 1
#: Keys of a request map; ``args`` and ``token`` may be left out.
REQUEST_KEYS = frozenset({"v", "id", "op", "args", "token"})
#: Bounds on every length inside a request (all below its size); ext types are refused.
UNPACK_LIMITS: Mapping[str, Any] = dict(
    raw=False,
    max_bin_len=1024,
    max_str_len=4096,
    max_array_len=64,
    max_map_len=32,
    max_ext_len=0,
    strict_map_key=True,
)

_repr = reprlib.Repr()
_repr.maxlevel, _repr.maxstring, _repr.maxother = 2, 40, 40
_repr.maxlist = _repr.maxdict = _repr.maxtuple = 4


def show(value: Any) -> str:
    """A short, bounded description of a client's value: its type and an abbreviated repr.

    However deep or large the value, the text stays one line of at most a few hundred
    characters, so a refusal message never echoes a hostile payload.
    """
    return f"{type(value).__name__} {_repr.repr(value)}"


class Refusal(Exception):
    """A request a twin will not execute: its error type, message and id (if readable).

    Args:
        kind: The error type, one of the twin protocol's ``REFUSALS``.
        message: What was wrong, for the client (one bounded line).
        rid: The request's id, or None when none could be read.
    """

    def __init__(self, kind: str, message: str, rid: int | None = None) -> None:
        """Keep the kind and id beside the message."""
        super().__init__(message)
        self.kind = kind
        self.rid = rid


@dataclasses.dataclass(frozen=True)
class Arg:
    """One argument of an operation: its type on the wire, its domain, and for arrays their length.

    Attributes:
        kind: ``int`` (an integer, not a bool) or ``float`` (an int or a float, finite).
        lo: Smallest value the protocol admits (the device's own limits apply later).
        hi: Largest value the protocol admits.
        size: 0 for a scalar, else the exact length of an array of such values.
    """

    kind: type
    lo: float = -math.inf
    hi: float = math.inf
    size: int = 0

    def check(self, where: str, value: Any) -> Any:
        """The value (a list for arrays), if its type, length and domain are right.

        Args:
            where: The argument's name in messages (``op.name``).
            value: What the client sent.

        Raises:
            Refusal: ``bad_request`` otherwise, naming the first element that is wrong.
        """
        if not self.size:
            return self._scalar(where, value)
        if not isinstance(value, list) or len(value) != self.size:
            n = f"{len(value)} values" if isinstance(value, list) else show(value)
            raise Refusal(
                "bad_request", f"{where} must be an array of {self.size} numbers, got {n}"
            )
        return [self._scalar(f"{where}[{i}]", v) for i, v in enumerate(value)]

    def _scalar(self, where: str, value: Any) -> int | float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise Refusal("bad_request", f"{where} must be {self.kind.__name__}, got {show(value)}")
        if self.kind is int and not isinstance(value, int):
            raise Refusal("bad_request", f"{where} must be int, got {show(value)}")
        if isinstance(value, float) and not math.isfinite(value):
            raise Refusal("bad_request", f"{where} must be a finite number, got {value!r}")
        if not self.lo <= value <= self.hi:
            raise Refusal("bad_request", f"{where} = {value!r} is outside [{self.lo}, {self.hi}]")
        return value


@dataclasses.dataclass(frozen=True)
class Text:
    """A string argument of an operation, of at most ``max_chars`` characters.

    Attributes:
        max_chars: The longest string the protocol admits (its own catalog checks apply later).
    """

    max_chars: int = UNPACK_LIMITS["max_str_len"]

    def check(self, where: str, value: Any) -> str:
        """The value, if it is a string of at most :attr:`max_chars` characters.

        Args:
            where: The argument's name in messages (``op.name``).
            value: What the client sent.

        Raises:
            Refusal: ``bad_request`` otherwise, naming the value (or its length) and the limit.
        """
        if not isinstance(value, str):
            raise Refusal("bad_request", f"{where} must be a string, got {show(value)}")
        if len(value) > self.max_chars:
            raise Refusal(
                "bad_request", f"{where} has {len(value)} characters, over {self.max_chars}"
            )
        return value


class ArgSpec(Protocol):
    """What :func:`decode_request` needs of an argument's spec (:class:`Arg`, :class:`Text`)."""

    def check(self, where: str, value: Any) -> Any:
        """The checked value; raises :class:`Refusal` (``bad_request``) when it is not valid."""
        ...


@dataclasses.dataclass(frozen=True)
class Request:
    """A request that passed :func:`decode_request`: a known operation with valid arguments.

    Attributes:
        id: The client's request id, in [0, :data:`MAX_ID`].
        op: A key of the protocol's operations table.
        args: Exactly the operation's arguments, each checked by its spec (:class:`ArgSpec`).
    """

    id: int
    op: str
    args: dict[str, Any]


def _read_id(msg: Any) -> int | None:
    rid = msg.get("id") if isinstance(msg, dict) else None
    if isinstance(rid, int) and not isinstance(rid, bool) and 0 <= rid <= MAX_ID:
        return rid
    return None


def unpack(raw: bytes) -> Any:
    """Decode one msgpack value within :data:`UNPACK_LIMITS` (no ext types, string keys only).

    Raises:
        Exception: Whatever msgpack raises for malformed, too long or too deep input.
    """
    import msgpack

    return msgpack.unpackb(raw, **UNPACK_LIMITS)


def peek_id(raw: bytes) -> int | None:
    """The id of an encoded request, read up to the first thing wrong with it (else None).

    The top-level map is read pair by pair, so the id is found even when a later value cannot
    be decoded (too deep, too long, an ext type), as long as it comes before that value. Never
    raises; reads at most :data:`MAX_REQUEST_BYTES`.
    """
    import msgpack

    if len(raw) > MAX_REQUEST_BYTES:
        return None
    unpacker = msgpack.Unpacker(max_buffer_size=MAX_REQUEST_BYTES, **UNPACK_LIMITS)
    unpacker.feed(raw)
    try:
        for _ in range(min(unpacker.read_map_header(), UNPACK_LIMITS["max_map_len"])):
            key = unpacker.unpack()
            value = unpacker.unpack()
            if key == "id":
                return _read_id({"id": value})
    except Exception:  # nothing more can be read
        return None
    return None


def decode_request(
    frames: list[bytes],
    token: str | None,
    *,
    operations: Mapping[str, Mapping[str, ArgSpec]],
    version: int,
) -> Request:
    """Validate one request message, every field of it, in a fixed order.

    The order: the frames' shape (``[b"", map]``), the size, msgpack decoding within
    :data:`UNPACK_LIMITS`, a map, its id, its keys, the version, the token (compared in
    constant time on its UTF-8 bytes), the operation, and each argument against its spec
    (:class:`Arg`, :class:`Text`). Nothing of the message is trusted before it passes.

    Args:
        frames: The message's frames after any routing id.
        token: The secret the twin requires (None: none).
        operations: The protocol's operations, each with its arguments' specs by name.
        version: The protocol version the twin speaks.

    Raises:
        Refusal: ``bad_request`` (malformed), ``version`` or ``unauthorized``; its ``rid`` is
            the request's id whenever one can be read.
    """
    if len(frames) != 2 or len(frames[0]) != 0:
        shape = "/".join(str(len(f)) for f in frames[:MAX_FRAMES])
        ids = (peek_id(f) for f in frames[:MAX_FRAMES] if f)
        raise Refusal(
            "bad_request",
            f"a request is two frames, an empty delimiter and one msgpack map (what a ZeroMQ "
            f"REQ socket sends); got {len(frames)} frame(s) of {shape} bytes",
            next((i for i in ids if i is not None), None),
        )
    raw = frames[1]
    if len(raw) > MAX_REQUEST_BYTES:
        raise Refusal("bad_request", f"request of {len(raw)} bytes exceeds {MAX_REQUEST_BYTES}")
    try:
        msg = unpack(raw)
    except Exception as exc:  # any decoder complaint: malformed, too deep, too long, ext
        raise Refusal(
            "bad_request", f"undecodable request ({type(exc).__name__})", peek_id(raw)
        ) from None
    if not isinstance(msg, dict):
        raise Refusal("bad_request", f"a request must be a map, got {show(msg)}")
    rid = _read_id(msg)
    if rid is None:
        raise Refusal(
            "bad_request", f"request id must be an int in [0, 2^63), got {show(msg.get('id'))}"
        )
    try:
        return _validate(msg, rid, token, operations, version)
    except Refusal as exc:
        exc.rid = rid
        raise


def _validate(
    msg: dict[Any, Any],
    rid: int,
    token: str | None,
    operations: Mapping[str, Mapping[str, ArgSpec]],
    version: int,
) -> Request:
    unknown = [k for k in msg if k not in REQUEST_KEYS]
    if unknown:
        raise Refusal("bad_request", f"unknown request keys {show(unknown)}")
    v = msg.get("v")
    if type(v) is not int or v != version:
        raise Refusal("version", f"protocol {show(v)}; this twin speaks v{version}")
    given = msg.get("token")
    if given is not None and not isinstance(given, str):
        raise Refusal("bad_request", f"token must be a string, got {type(given).__name__}")
    if token is not None and not (
        isinstance(given, str) and hmac.compare_digest(given.encode("utf-8"), token.encode("utf-8"))
    ):
        raise Refusal("unauthorized", "wrong or missing token")
    op = msg.get("op")
    if not isinstance(op, str) or op not in operations:
        raise Refusal(
            "bad_request", f"unknown operation {show(op)}; valid: {', '.join(operations)}"
        )
    args = msg.get("args", {})
    if not isinstance(args, dict):
        raise Refusal("bad_request", f"{op}: args must be a map, got {show(args)}")
    spec = operations[op]
    if set(args) != set(spec):
        got = ", ".join(sorted(_repr.repr(k) for k in args)) or "none"
        raise Refusal("bad_request", f"{op} takes arguments {sorted(spec)}, got {got}")
    return Request(
        rid, op, {name: arg.check(f"{op}.{name}", args[name]) for name, arg in spec.items()}
    )


def ok_reply(rid: int, result: Any, version: int = 1) -> dict[str, Any]:
    """The reply to an executed request (``version``: the twin's protocol)."""
    return {"v": version, "id": rid, "ok": True, "result": result}


def error_reply(rid: int | None, kind: str, message: str, version: int = 1) -> dict[str, Any]:
    """The reply to a refused (or failed) request, with the request's id when one was read."""
    return {
        "v": version,
        "id": rid,
        "ok": False,
        "error": {"type": kind, "message": message},
    }
