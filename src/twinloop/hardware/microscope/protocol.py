"""The STEM instrument interface, its wire protocol, and the contract every device twin keeps.

:class:`Microscope` is what twinloop needs from a scanning transmission electron microscope:
field of view, voltage and current, a probe parked at a position, a dwell with the beam
unblanked, frames acquired with a given size and pixel time, a scan field that can be moved,
and a safe state (beam blanked). Three implementations exist: the in-process simulated
instrument (:mod:`.fake`), a network client (:mod:`.remote`) for the twin served by
``twinloop serve microscope`` (:mod:`.server`), and an adapter to Nion Swift (:mod:`.nion`).

Every command is checked against the instrument's :class:`MicroscopeLimits` before it is
sent, and again by the twin when it arrives.

Wire protocol, version 1 (ZeroMQ request-reply over TCP, one msgpack map per message; never
pickle). A request is a ZeroMQ message of two frames, an empty delimiter and the map (what a
``REQ`` socket sends); the reply comes back the same way::

    request  {"v": 1, "id": <int>, "op": <str>, "args": {<str>: <number>}, "token": <str|nil>}
    response {"v": 1, "id": <same int>, "ok": true,  "result": <value>}
           | {"v": 1, "id": <same int|nil>, "ok": false, "error": {"type": <str>, "message": <str>}}

Operations: ``hello`` (protocol version, limits, identity), ``ping``, ``reset`` {seed} (twin
only: re-seed the simulated sample; -1 draws fresh entropy), ``state`` (fov, voltage, current,
probe, blanked, clock), ``park`` {x_angstrom, y_angstrom}, ``dwell`` {seconds}, ``blank``,
``unblank``, ``acquire`` {pixels, pixel_time_s}, ``shift_view`` {dx_angstrom, dy_angstrom},
``truth`` (twin only: the simulator's privileged state). ``seed`` is an integer in
[-1, 2^63), ``pixels`` an integer in [0, 2^31) (booleans are not integers); every other
argument is a finite number (int or float). An operation takes exactly its arguments
(``args`` may be left out when it takes none); a request has no keys but ``v``, ``id``,
``op``, ``args`` and ``token``; ``id`` is an integer in [0, 2^63). A frame travels as
``{"image": <bytes, little-endian float32, row-major>, "shape": [h, w], "metadata": {...}}``.
Error types (:data:`REFUSALS`): ``bad_request`` (malformed: envelope, encoding, keys, types,
shapes, domains, non-finite numbers), ``version``, ``unauthorized`` (wrong or missing token),
``unsupported``, ``limit`` (a command outside the instrument's limits); and ``internal``, a
fault of the twin itself, never the answer to anything a client sent.

The contract of a device twin. What a client may rely on, whatever any other peer sends. It
is written for every network twin, not only this one: the robot and skills twins that come
next keep the same guarantees with their own safe state (here: the beam blanked), and their
tests check each one as ``tests/hardware/microscope`` does (``test_protocol.py``,
``test_zmtp.py``, ``test_hostile.py``, ``test_client.py``), with random and adversarial input:
random bytes, wrong types and shapes, non-finite and extreme numbers in every field,
multi-part and out-of-order messages, floods, silent and slow peers, several clients at once.

1. **One request, one reply, to its sender.** Every request that arrives whole gets exactly
   one reply, on the connection it came on, in the order sent, and pipelined requests are
   answered as fast as they come. Other peers' messages, however malformed, never take, drop
   or hold up that reply beyond their turn. A request that has arrived when its connection's
   idle time runs out is still answered. A message whose envelope is not ``[empty, map]``
   (an extra frame, no delimiter, several copies) is answered ``bad_request``. Bytes that
   are not the transport's protocol (ZMTP 3), a frame or message over
   :data:`MAX_REQUEST_BYTES` or of more than :data:`MAX_FRAMES` frames close that one
   connection without a reply: they are refused before they are read.
2. **One validation path.** :func:`decode_request` checks every field of every message (size,
   encoding, nesting, keys, the version, the token, the operation, each argument's type,
   domain and finiteness) before anything executes; the instrument then checks its limits.
   Nothing a client sends reaches the device unchecked or ends as ``internal``. Every twin
   runs the same envelope checks, written once in :mod:`twinloop.hardware.wire`, with its own
   operations table.
3. **A refusal names the request.** It carries the request's id whenever one can be read (a
   map with an integer ``id`` before anything undecodable, whatever else is wrong), so the
   client reports the refusal, not an id mismatch. The twin logs one line per refusal
   (at most 10 a second, the rest counted), never a traceback.
4. **Every refusal leaves the device safe.** Whatever the reason (malformed, version, token,
   unsupported, limit, a connection closed for breaking the transport's protocol or a bound,
   or an internal fault), the twin executes nothing of the refused request and puts the
   device in its safe state (beam blanked) before it replies.
5. **Only accepted requests count.** The watchdog (the safe state when no accepted request
   came for ``watchdog_s``) and the idle timeout are fed by valid, authorized requests only;
   a stream of refused ones keeps neither the device out of its safe state nor a connection
   open.
6. **Bounded resources per peer.** The twin binds to 127.0.0.1 unless told otherwise. Per
   connection it holds at most one request in progress and one unsent reply: it reads a
   connection's next request only once the previous reply is on its way, so a peer that
   never reads is throttled by TCP and closed after ``send_timeout_s``. A handshake must
   finish within ``handshake_timeout_s``; a connection without an accepted request for
   ``idle_timeout_s`` is closed (a ZeroMQ client reconnects by itself). At most
   ``max_connections`` are open: a new one first frees the slots of peers whose handshake
   was garbage or who left, then evicts the least valuable (no handshake yet, then no
   accepted request yet, then the least recently active; one being answered last), so idle,
   hostile or flooding connections cannot lock a well-formed client out. An exhausted
   file-descriptor table evicts or pauses accepting, never spins. Each round answers at most
   one request per connection (fair). Memory stays below ``max_connections x (largest reply
   + 2 x MAX_REQUEST_BYTES + 64 KiB)`` (:mod:`twinloop.hardware.zmtp`).
7. **Secrets.** The token is compared in constant time on its UTF-8 bytes (any Unicode
   token); ``twinloop serve`` and ``twinloop run`` read it from ``--token-file`` or
   ``$TWINLOOP_TOKEN`` as well as from ``--token`` (which other local users see in the process
   list). Nothing travels pickled.
8. **The client is bounded too.** :class:`~.remote.RemoteMicroscope` refuses a reply larger
   than its ``max_reply_bytes`` before receiving it (ZMQ_MAXMSGSIZE: the connection drops and
   the request fails with a fault that says so), validates every reply, and the backend tries
   the safe state on any fault, in ``reset`` as in ``step``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Protocol, runtime_checkable

import numpy as np

from twinloop.core.backend import BackendFault
from twinloop.hardware import wire
from twinloop.hardware.wire import (
    MAX_FRAMES,
    MAX_ID,
    MAX_REQUEST_BYTES,
    REQUEST_KEYS,
    Arg,
    Refusal,
    Request,
    error_reply,
    ok_reply,
    peek_id,
)

__all__ = [
    "MAX_FRAMES",
    "MAX_ID",
    "MAX_REQUEST_BYTES",
    "OPERATIONS",
    "PROTOCOL_VERSION",
    "REFUSALS",
    "REQUEST_KEYS",
    "Arg",
    "Frame",
    "Microscope",
    "MicroscopeFault",
    "MicroscopeLimitError",
    "MicroscopeLimits",
    "Refusal",
    "Request",
    "decode_request",
    "error_reply",
    "ok_reply",
    "peek_id",
]

PROTOCOL_VERSION = 1
#: Error types a twin answers to what a client sent (``internal`` is the twin's own fault).
REFUSALS = ("bad_request", "version", "unauthorized", "unsupported", "limit")

#: Operations of protocol version 1 and the arguments each takes.
OPERATIONS: dict[str, dict[str, Arg]] = {
    "hello": {},
    "ping": {},
    "reset": {"seed": Arg(int, -1, 2**63 - 1)},
    "state": {},
    "park": {"x_angstrom": Arg(float), "y_angstrom": Arg(float)},
    "dwell": {"seconds": Arg(float)},
    "blank": {},
    "unblank": {},
    "acquire": {"pixels": Arg(int, 0, 2**31 - 1), "pixel_time_s": Arg(float)},
    "shift_view": {"dx_angstrom": Arg(float), "dy_angstrom": Arg(float)},
    "truth": {},
}


def decode_request(frames: list[bytes], token: str | None) -> Request:
    """Validate one request message, every field of it; the only way a request is read.

    The envelope and every argument are checked by :func:`twinloop.hardware.wire.decode_request`
    against :data:`OPERATIONS`; the instrument's limits are checked when it executes.

    Args:
        frames: The message's frames after any routing id (a valid one: ``[b"", map]``).
        token: The secret the twin requires (None: none).

    Raises:
        Refusal: The request is malformed, of another version, or unauthorized; its ``rid``
            is the request's id whenever one can be read.
    """
    return wire.decode_request(frames, token, operations=OPERATIONS, version=PROTOCOL_VERSION)


class MicroscopeLimitError(ValueError):
    """A command lies outside the instrument's limits; nothing was executed."""


class MicroscopeFault(BackendFault):
    """The instrument or the link to it failed (timeout, disconnect, internal error)."""


@dataclasses.dataclass(frozen=True)
class MicroscopeLimits:
    """Bounds of every command (inclusive).

    Attributes:
        fov_angstrom: Width of the square field of view.
        dwell_s: One dwell.
        pixel_time_s: Pixel dwell while scanning.
        frame_pixels: Frame width in pixels (square frames).
        shift_angstrom: Largest scan-field shift per command.
    """

    fov_angstrom: float
    dwell_s: tuple[float, float]
    pixel_time_s: tuple[float, float]
    frame_pixels: tuple[int, int]
    shift_angstrom: float

    def to_dict(self) -> dict[str, Any]:
        """Plain data for the wire."""
        return {
            "fov_angstrom": self.fov_angstrom,
            "dwell_s": list(self.dwell_s),
            "pixel_time_s": list(self.pixel_time_s),
            "frame_pixels": list(self.frame_pixels),
            "shift_angstrom": self.shift_angstrom,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MicroscopeLimits:
        """Inverse of :meth:`to_dict` (validating types)."""
        try:
            return cls(
                fov_angstrom=float(data["fov_angstrom"]),
                dwell_s=(float(data["dwell_s"][0]), float(data["dwell_s"][1])),
                pixel_time_s=(float(data["pixel_time_s"][0]), float(data["pixel_time_s"][1])),
                frame_pixels=(int(data["frame_pixels"][0]), int(data["frame_pixels"][1])),
                shift_angstrom=float(data["shift_angstrom"]),
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise MicroscopeFault(f"malformed limits from the instrument: {data!r}") from exc

    def check_probe(self, x: float, y: float) -> None:
        """The probe must lie inside the field of view."""
        half = 0.5 * self.fov_angstrom
        for name, v in (("x_angstrom", x), ("y_angstrom", y)):
            _finite(name, v)
            if not -half <= v <= half:
                raise MicroscopeLimitError(
                    f"probe {name} = {v:.4g} A is outside the field of view [-{half:g}, {half:g}] A"
                )

    def check_dwell(self, seconds: float) -> None:
        """A dwell within the instrument's bounds."""
        _within("dwell seconds", seconds, self.dwell_s, "s")

    def check_acquire(self, pixels: int, pixel_time_s: float) -> None:
        """Frame size and pixel time within the instrument's bounds."""
        if isinstance(pixels, bool) or not isinstance(pixels, int | np.integer):
            raise MicroscopeLimitError(f"pixels must be an int, got {pixels!r}")
        lo, hi = self.frame_pixels
        if not lo <= pixels <= hi:
            raise MicroscopeLimitError(f"pixels = {pixels} is outside [{lo}, {hi}]")
        _within("pixel_time_s", pixel_time_s, self.pixel_time_s, "s")

    def check_shift(self, dx: float, dy: float) -> None:
        """A scan-field shift no larger than the instrument allows."""
        _finite("dx_angstrom", dx)
        _finite("dy_angstrom", dy)
        if math.hypot(dx, dy) > self.shift_angstrom:
            raise MicroscopeLimitError(
                f"view shift |({dx:.4g}, {dy:.4g})| A exceeds the limit {self.shift_angstrom:g} A"
            )


def _finite(name: str, v: float) -> None:
    if isinstance(v, bool) or not isinstance(v, int | float | np.number) or not math.isfinite(v):
        raise MicroscopeLimitError(f"{name} = {v!r} must be a finite number")


def _within(name: str, v: float, bounds: tuple[float, float], unit: str) -> None:
    _finite(name, v)
    lo, hi = bounds
    if not lo <= v <= hi:
        raise MicroscopeLimitError(f"{name} = {v:.4g} {unit} is outside [{lo:g}, {hi:g}] {unit}")


@dataclasses.dataclass
class Frame:
    """One acquired frame.

    Attributes:
        image: ``(h, w)`` float32 HAADF signal (detected electrons); row 0 at the bottom.
        metadata: fov_angstrom, pixel_time_s, start_s and duration_s on the instrument's
            clock, frame_index, and whatever else the instrument reports.
    """

    image: np.ndarray
    metadata: dict[str, Any]

    def to_wire(self) -> dict[str, Any]:
        """Encode for msgpack: raw little-endian float32 bytes plus shape."""
        img = np.ascontiguousarray(self.image, dtype="<f4")
        return {"image": img.tobytes(), "shape": list(img.shape), "metadata": self.metadata}

    @classmethod
    def from_wire(cls, data: Any, max_pixels: int) -> Frame:
        """Decode and validate a frame received from an instrument."""
        if not isinstance(data, dict):
            raise MicroscopeFault(f"frame must be a map, got {type(data).__name__}")
        shape = data.get("shape")
        raw = data.get("image")
        meta = data.get("metadata", {})
        if (
            not isinstance(shape, list)
            or len(shape) != 2
            or not all(isinstance(s, int) and 0 < s <= max_pixels for s in shape)
        ):
            raise MicroscopeFault(f"frame shape {shape!r} is invalid (max {max_pixels} pixels)")
        if not isinstance(raw, bytes) or len(raw) != 4 * shape[0] * shape[1]:
            raise MicroscopeFault(
                f"frame data has {len(raw) if isinstance(raw, bytes) else 'no'} bytes for shape "
                f"{shape} (expected {4 * shape[0] * shape[1]})"
            )
        if not isinstance(meta, dict):
            raise MicroscopeFault("frame metadata must be a map")
        image = np.frombuffer(raw, dtype="<f4").reshape(shape).astype(np.float32)
        return cls(image=image, metadata=meta)


@runtime_checkable
class Microscope(Protocol):
    """What twinloop drives on a STEM (simulated, remote twin, or a vendor's API)."""

    kind: str
    limits: MicroscopeLimits

    def connect(self) -> None:
        """Open the instrument (idempotent)."""
        ...

    def close(self) -> None:
        """Blank the beam and release the instrument."""
        ...

    @property
    def clock_s(self) -> float:
        """The instrument's own clock (s): microscope time spent."""
        ...

    def park(self, x_angstrom: float, y_angstrom: float) -> None:
        """Move the (blanked) probe to a position in the view and let it settle."""
        ...

    def dwell(self, seconds: float) -> None:
        """Unblank the beam at the parked position for ``seconds``, then blank it."""
        ...

    def blank(self) -> None:
        """Blank the beam (the safe state)."""
        ...

    def acquire(self, pixels: int, pixel_time_s: float) -> Frame:
        """Scan one HAADF frame of ``pixels`` x ``pixels``."""
        ...

    def shift_view(self, dx_angstrom: float, dy_angstrom: float) -> None:
        """Move the scan field by ``(dx, dy)`` A (re-centring)."""
        ...

    def reset_sample(self, seed: int | None) -> bool:
        """Start a new simulated sample (twins only); return False on a real instrument."""
        ...

    def truth(self) -> dict[str, Any]:
        """Privileged simulator state (twins only; ``{}`` on a real instrument)."""
        ...

    def identity(self) -> dict[str, Any]:
        """Kind, address and versions, recorded in datasets."""
        ...
