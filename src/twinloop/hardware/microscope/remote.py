"""Network client of a microscope twin (``twinloop serve microscope``), protocol version 1.

ZeroMQ REQ with a timeout on every request. A request that times out leaves a REQ socket
unusable, so the client closes it and opens a fresh one for the next request ("lazy pirate"):
after a twin restarts, the next call simply reconnects. Every response is validated (version,
id, types, frame size) before it is used. A timeout's error says what to do: a twin answers
only once it has printed its "listening on" line (:mod:`twinloop.hardware.ready`). See
:mod:`.protocol` for the wire format and the contract.

A reply is never larger than :attr:`RemoteMicroscope.max_reply_bytes` (by default the largest
frame, ``max_frame_pixels`` squared float32, plus 1 MiB for the rest of the map): ZeroMQ's
ZMQ_MAXMSGSIZE makes the socket drop a connection that announces a larger frame before any of
it is received or decoded, so a rogue endpoint cannot make the client take 256 MiB. The
request then fails when its timeout ends, with an error that names the limit.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any

from twinloop.hardware.microscope.protocol import (
    PROTOCOL_VERSION,
    Frame,
    MicroscopeFault,
    MicroscopeLimitError,
    MicroscopeLimits,
)
from twinloop.hardware.ready import slow_answer_hint

log = logging.getLogger(__name__)

DEFAULT_ADDRESS = "tcp://127.0.0.1:5555"
#: Room in a reply for everything but the frame's pixels (metadata, msgpack framing).
REPLY_OVERHEAD_BYTES = 1 << 20


class RemoteMicroscope:
    """A :class:`~.protocol.Microscope` reached over the network.

    Args:
        address: ZeroMQ endpoint of the twin, e.g. ``"tcp://127.0.0.1:5555"``.
        token: Shared secret, if the twin requires one.
        timeout_s: Longest wait for any reply.
        max_frame_pixels: Largest frame side accepted from the twin.
        max_reply_bytes: Largest reply accepted (default: a frame of ``max_frame_pixels``
            squared plus 1 MiB).
    """

    kind = "remote"

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        token: str | None = None,
        timeout_s: float = 10.0,
        max_frame_pixels: int = 2048,
        max_reply_bytes: int | None = None,
    ) -> None:
        """Nothing connects until :meth:`connect`."""
        if not isinstance(address, str) or "://" not in address:
            raise ValueError(f"address must look like 'tcp://host:port', got {address!r}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        self.address = address
        self.token = token
        self.timeout_s = float(timeout_s)
        self.max_frame_pixels = int(max_frame_pixels)
        if max_reply_bytes is None:
            max_reply_bytes = 4 * self.max_frame_pixels**2 + REPLY_OVERHEAD_BYTES
        if not int(max_reply_bytes) > 0:
            raise ValueError(f"max_reply_bytes must be > 0, got {max_reply_bytes!r}")
        self.max_reply_bytes = int(max_reply_bytes)
        self._monitor: Any = None
        self._ids = itertools.count(1)
        self._ctx: Any = None
        self._sock: Any = None
        self.limits: MicroscopeLimits | None = None  # type: ignore[assignment]
        self._clock = 0.0
        self._server: dict[str, Any] = {}
        self._link_down = False  # the last request timed out or failed

    # transport -------------------------------------------------------------------------------
    def _open(self) -> None:
        import zmq

        if self._ctx is None:
            self._ctx = zmq.Context()
        sock = self._ctx.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, int(self.timeout_s * 1000))
        sock.setsockopt(zmq.SNDTIMEO, int(self.timeout_s * 1000))
        sock.setsockopt(zmq.MAXMSGSIZE, self.max_reply_bytes)
        # watch for dropped connections, to say why a reply did not come
        self._monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        sock.connect(self.address)
        self._sock = sock

    def _drop_socket(self) -> None:
        if self._sock is not None:
            if self._monitor is not None:
                self._sock.disable_monitor()
                self._monitor.close(linger=0)
                self._monitor = None
            self._sock.close(linger=0)
            self._sock = None

    def _disconnects(self) -> int:
        """Connections dropped since the last call (from the socket's monitor)."""
        import zmq

        n = 0
        while self._monitor is not None:
            try:
                self._monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            n += 1
        return n

    def request(self, op: str, timeout_s: float | None = None, **args: Any) -> Any:
        """Send one request and return its validated result.

        Raises:
            MicroscopeLimitError: The twin refused the command (outside the limits).
            PermissionError: Wrong or missing token.
            MicroscopeFault: Timeout, disconnect, malformed reply or an error in the twin.
        """
        import msgpack
        import zmq

        if self._sock is None:
            self._open()
        if timeout_s is not None:
            self._sock.setsockopt(zmq.RCVTIMEO, int(timeout_s * 1000))
        rid = next(self._ids)
        msg = {"v": PROTOCOL_VERSION, "id": rid, "op": op, "args": args, "token": self.token}
        self._disconnects()  # forget drops before this request
        try:
            self._sock.send(msgpack.packb(msg, use_bin_type=True))
            raw = self._sock.recv()
        except zmq.Again:
            dropped = self._disconnects()
            self._drop_socket()
            self._link_down = True
            why = (
                "the connection dropped while waiting: the twin stopped, or its reply was "
                f"larger than this client accepts (max_reply_bytes = {self.max_reply_bytes}). "
                if dropped
                else ""
            )
            raise MicroscopeFault(
                f"microscope at {self.address} did not answer {op!r} within "
                f"{timeout_s or self.timeout_s:g} s. {why}"
                + slow_answer_hint("twinloop serve microscope", "timeout_s", self.timeout_s)
            ) from None
        except zmq.ZMQError as exc:
            self._drop_socket()
            self._link_down = True
            raise MicroscopeFault(f"link to {self.address} failed during {op!r}: {exc}") from exc
        finally:
            if timeout_s is not None and self._sock is not None:
                self._sock.setsockopt(zmq.RCVTIMEO, int(self.timeout_s * 1000))
        self._link_down = False
        try:
            reply = msgpack.unpackb(raw, raw=False)
        except Exception as exc:
            raise MicroscopeFault(f"undecodable reply to {op!r} from {self.address}") from exc
        if not isinstance(reply, dict) or reply.get("v") != PROTOCOL_VERSION:
            raise MicroscopeFault(f"reply to {op!r} is not protocol v{PROTOCOL_VERSION}: {reply!r}")
        ok = reply.get("ok")
        # a refusal without an id answers this request too: the twin could not read the id
        if reply.get("id") != rid and not (ok is False and reply.get("id") is None):
            raise MicroscopeFault(f"reply id {reply.get('id')!r} does not match request {rid}")
        if ok is True:
            return reply.get("result")
        error = reply.get("error")
        error = error if isinstance(error, dict) else {}
        kind, text = str(error.get("type", "internal")), str(error.get("message", "unknown error"))
        if kind == "limit":
            raise MicroscopeLimitError(text)
        if kind == "unauthorized":
            raise PermissionError(f"microscope at {self.address} refused the request: {text}")
        raise MicroscopeFault(f"microscope error ({kind}) on {op!r}: {text}")

    # Microscope interface ---------------------------------------------------------------------
    def connect(self) -> None:
        """Say hello: check the protocol version and read the limits."""
        hello = self.request("hello")
        if not isinstance(hello, dict) or hello.get("protocol") != PROTOCOL_VERSION:
            raise MicroscopeFault(f"twin at {self.address} speaks {hello!r}, not v1")
        self.limits = MicroscopeLimits.from_dict(hello.get("limits", {}))
        self._server = dict(hello.get("identity", {}))

    def close(self) -> None:
        """Blank the beam (best effort) and close the socket."""
        try:
            if self._sock is not None:
                self.request("blank", timeout_s=min(self.timeout_s, 2.0))
        except (MicroscopeFault, PermissionError):
            log.warning("could not blank the beam at %s while closing", self.address)
        finally:
            self._drop_socket()
            if self._ctx is not None:
                self._ctx.term()
                self._ctx = None

    def _limits(self) -> MicroscopeLimits:
        if self.limits is None:
            raise MicroscopeFault("not connected: call connect() first")
        return self.limits

    @property
    def clock_s(self) -> float:
        """The twin's clock as of the last command."""
        return self._clock

    def _timed(self, op: str, **args: Any) -> Any:
        result = self.request(op, **args)
        if not isinstance(result, dict) or not isinstance(result.get("clock_s"), int | float):
            raise MicroscopeFault(f"reply to {op!r} lacks the instrument clock: {result!r}")
        self._clock = float(result["clock_s"])
        return result

    def park(self, x_angstrom: float, y_angstrom: float) -> None:
        """Move the probe (checked against the limits before sending)."""
        self._limits().check_probe(x_angstrom, y_angstrom)
        self._timed("park", x_angstrom=float(x_angstrom), y_angstrom=float(y_angstrom))

    def dwell(self, seconds: float) -> None:
        """Expose the parked position."""
        self._limits().check_dwell(seconds)
        self._timed("dwell", seconds=float(seconds))

    def blank(self) -> None:
        """Blank the beam (with a short timeout while the link is known to be down)."""
        if self._link_down:
            self.request("blank", timeout_s=min(self.timeout_s, 0.5))
            return
        self._timed("blank")

    def unblank(self) -> None:
        """Unblank the beam at the parked probe."""
        self._timed("unblank")

    def acquire(self, pixels: int, pixel_time_s: float) -> Frame:
        """Acquire one frame and validate it."""
        self._limits().check_acquire(pixels, pixel_time_s)
        result = self._timed("acquire", pixels=int(pixels), pixel_time_s=float(pixel_time_s))
        frame = Frame.from_wire(result.get("frame"), self.max_frame_pixels)
        if frame.image.shape != (pixels, pixels):
            raise MicroscopeFault(f"asked for {pixels}^2 pixels, got {frame.image.shape}")
        return frame

    def shift_view(self, dx_angstrom: float, dy_angstrom: float) -> None:
        """Move the scan field."""
        self._limits().check_shift(dx_angstrom, dy_angstrom)
        self._timed("shift_view", dx_angstrom=float(dx_angstrom), dy_angstrom=float(dy_angstrom))

    def reset_sample(self, seed: int | None) -> bool:
        """Re-seed the twin's simulated sample."""
        self._timed("reset", seed=-1 if seed is None else int(seed))
        return True

    def state(self) -> dict[str, Any]:
        """The twin's state report."""
        return self._timed("state")

    def truth(self) -> dict[str, Any]:
        """The twin's privileged state (``{}`` if it does not share it)."""
        result = self.request("truth")
        return result if isinstance(result, dict) else {}

    def identity(self) -> dict[str, Any]:
        """Address and what the twin says it is."""
        return {"kind": self.kind, "address": self.address, "server": self._server}
