"""The microscope network twin: a simulated STEM behind protocol version 1 (ZeroMQ + msgpack).

``twinloop serve microscope [--host H] [--port P] [--token T]`` runs :class:`MicroscopeServer`
in its own process. It binds to 127.0.0.1 unless told otherwise, validates every message
(size, encoding, version, operation, argument names and types, token) before acting, refuses
commands outside the instrument's limits without executing them, and never stops serving on a
bad message. A watchdog blanks the beam when no request arrives for ``watchdog_s`` seconds
while the beam is unblanked.

Before it serves, :meth:`MicroscopeServer.warm_up` replays :func:`warm_up_requests` (every
operation, and both branches of ``acquire``: the Si in view and out of it) through the same
decode-execute-encode path on a throwaway copy of the instrument, so the STEM kernels are
compiled (or loaded from the numba cache) before the twin announces its address instead of
inside its first request (see :mod:`twinloop.hardware.ready`).
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from typing import Any

from twinloop.hardware.microscope.fake import SimMicroscope
from twinloop.hardware.microscope.protocol import (
    MAX_REQUEST_BYTES,
    OPERATIONS,
    PROTOCOL_VERSION,
    MicroscopeLimitError,
    MicroscopeLimits,
)

log = logging.getLogger(__name__)


class _BadRequest(Exception):
    def __init__(self, kind: str, message: str, rid: Any = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.rid = rid


def warm_up_requests(limits: MicroscopeLimits) -> list[tuple[str, dict[str, Any]]]:
    """The requests a warm-up replays: every operation, with the smallest valid arguments.

    The second ``acquire`` follows a shift of one field of view, which leaves the Si outside the
    scanned field, so that the frame takes the no-dose branch (drift only) as well.
    """
    pixels, pixel_time_s = int(limits.frame_pixels[0]), float(limits.pixel_time_s[0])
    acquire = {"pixels": pixels, "pixel_time_s": pixel_time_s}
    return [
        ("hello", {}),
        ("ping", {}),
        ("reset", {"seed": 0}),
        ("park", {"x_angstrom": 0.0, "y_angstrom": 0.0}),
        ("unblank", {}),
        ("blank", {}),
        ("dwell", {"seconds": float(limits.dwell_s[0])}),
        ("acquire", dict(acquire)),
        ("shift_view", {"dx_angstrom": float(limits.shift_angstrom), "dy_angstrom": 0.0}),
        ("acquire", dict(acquire)),
        ("state", {}),
        ("truth", {}),
    ]


class MicroscopeServer:
    """Serve a :class:`~.fake.SimMicroscope` over ZeroMQ REQ/REP.

    Args:
        microscope: The simulated instrument to serve.
        host: Interface to bind (default loopback only).
        port: TCP port; 0 picks a free one (see :attr:`address`).
        token: Shared secret every request must carry (None: no token required).
        watchdog_s: Blank the beam after this long without a request while it is unblanked.
        share_truth: Answer ``truth`` requests with the simulator's privileged state.
    """

    def __init__(
        self,
        microscope: SimMicroscope,
        host: str = "127.0.0.1",
        port: int = 5555,
        token: str | None = None,
        watchdog_s: float = 5.0,
        share_truth: bool = True,
    ) -> None:
        """Bind the socket (the port is taken when this returns)."""
        import zmq

        if not 0 <= int(port) <= 65535:
            raise ValueError(f"port must be in [0, 65535], got {port}")
        if not watchdog_s > 0:
            raise ValueError(f"watchdog_s must be > 0, got {watchdog_s}")
        self.microscope = microscope
        self.token = token
        self.watchdog_s = float(watchdog_s)
        self.share_truth = share_truth
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.REP)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.MAXMSGSIZE, MAX_REQUEST_BYTES)
        if int(port) == 0:
            port = self._sock.bind_to_random_port(f"tcp://{host}")
        else:
            self._sock.bind(f"tcp://{host}:{int(port)}")
        self.host, self.port = host, int(port)
        self.address = f"tcp://{host}:{self.port}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.requests = 0
        self.rejected = 0
        self.watchdog_trips = 0
        self.warmed_up = False
        self.microscope.connect()

    def warm_up(self) -> None:
        """Compile (or load) every kernel a request runs; the served instrument is untouched.

        Replays :func:`warm_up_requests` through the request path (decode, execute, encode) on a
        throwaway :class:`~.fake.SimMicroscope` with the same config. Runs once; :meth:`start`
        and :meth:`serve_forever` call it if nobody did.

        Raises:
            RuntimeError: A warm-up request failed (the error a first client would have met).
        """
        import msgpack

        if self.warmed_up:
            return
        shadow = SimMicroscope(self.microscope.cfg)
        shadow.connect()
        for rid, (op, args) in enumerate(warm_up_requests(shadow.limits), start=1):
            if op == "truth" and not self.share_truth:
                continue
            msg = {"v": PROTOCOL_VERSION, "id": rid, "op": op, "args": args, "token": self.token}
            raw = msgpack.packb(msg, use_bin_type=True)
            reply = self._reply(raw, shadow)
            msgpack.packb(reply, use_bin_type=True)
            if not reply["ok"]:
                error = reply["error"]
                raise RuntimeError(
                    f"the twin's warm-up request {op} {args} failed ({error['type']}): "
                    f"{error['message']}"
                )
        self.warmed_up = True

    # serving -------------------------------------------------------------------------------------
    def serve_forever(self) -> None:
        """Warm up if not done yet, then answer requests until :meth:`stop`.

        The beam is blanked on the way out.
        """
        import zmq

        self.warm_up()
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        last = time.monotonic()
        try:
            while not self._stop.is_set():
                events = dict(poller.poll(timeout=100))
                if self._sock not in events:
                    if not self.microscope.blanked and time.monotonic() - last > self.watchdog_s:
                        self.microscope.blank()
                        self.watchdog_trips += 1
                        log.warning(
                            "watchdog: no request for %.1f s, beam blanked", self.watchdog_s
                        )
                    continue
                raw = self._sock.recv()
                last = time.monotonic()
                self._sock.send(self._answer(raw))
        finally:
            self.microscope.blank()
            self._sock.close(linger=0)
            self._ctx.term()

    def start(self) -> MicroscopeServer:
        """Warm up (in this thread), then serve in a background thread (tests, in-process twins)."""
        self.warm_up()
        self._thread = threading.Thread(
            target=self.serve_forever, name="microscope-twin", daemon=True
        )
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop serving and release the port."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    # one request ----------------------------------------------------------------------------------
    def _answer(self, raw: bytes) -> bytes:
        import msgpack

        self.requests += 1
        reply = self._reply(raw, self.microscope)
        if not reply["ok"] and reply["error"]["type"] != "internal":
            self.rejected += 1
        return msgpack.packb(reply, use_bin_type=True)

    def _reply(self, raw: bytes, mic: SimMicroscope) -> dict[str, Any]:
        """The reply to one request, executed on ``mic`` (the served one, or the warm-up's)."""
        rid: Any = None
        try:
            msg = self._decode(raw)
            rid = msg["id"]
            result = self._execute(msg["op"], msg["args"], mic)
            return {"v": PROTOCOL_VERSION, "id": rid, "ok": True, "result": result}
        except _BadRequest as exc:
            return _error(exc.rid if rid is None else rid, exc.kind, str(exc))
        except MicroscopeLimitError as exc:
            mic.blank()
            return _error(rid, "limit", str(exc))
        except Exception as exc:  # the twin must keep serving whatever went wrong
            log.exception("internal error while serving a request")
            mic.blank()
            return _error(rid, "internal", f"{type(exc).__name__}: {exc}")

    def _decode(self, raw: bytes) -> dict[str, Any]:
        import msgpack

        if len(raw) > MAX_REQUEST_BYTES:
            raise _BadRequest("bad_request", f"request of {len(raw)} bytes exceeds the limit")
        try:
            msg = msgpack.unpackb(
                raw,
                raw=False,
                max_bin_len=1024,
                max_str_len=4096,
                max_array_len=64,
                max_map_len=32,
                strict_map_key=True,
            )
        except Exception as exc:
            raise _BadRequest("bad_request", f"undecodable request: {type(exc).__name__}") from exc
        if not isinstance(msg, dict):
            raise _BadRequest("bad_request", "a request must be a map")
        rid = msg.get("id")
        if isinstance(rid, bool) or not isinstance(rid, int):
            raise _BadRequest("bad_request", "request id must be an int")
        if msg.get("v") != PROTOCOL_VERSION:
            raise _BadRequest(
                "version", f"protocol {msg.get('v')!r}; this twin speaks v{PROTOCOL_VERSION}", rid
            )
        if self.token is not None:
            given = msg.get("token")
            if not isinstance(given, str) or not hmac.compare_digest(given, self.token):
                raise _BadRequest("unauthorized", "wrong or missing token", rid)
        op = msg.get("op")
        if op not in OPERATIONS:
            raise _BadRequest(
                "bad_request", f"unknown operation {op!r}; valid: {', '.join(OPERATIONS)}", rid
            )
        args = msg.get("args", {})
        if not isinstance(args, dict):
            raise _BadRequest("bad_request", "args must be a map", rid)
        spec = OPERATIONS[op]
        if set(args) != set(spec):
            raise _BadRequest(
                "bad_request",
                f"{op} takes arguments {sorted(spec)}, got {sorted(map(str, args))}",
                rid,
            )
        for name, kind in spec.items():
            value = args[name]
            ok = (
                isinstance(value, int) and not isinstance(value, bool)
                if kind is int
                else isinstance(value, int | float) and not isinstance(value, bool)
            )
            if not ok:
                raise _BadRequest(
                    "bad_request",
                    f"{op}.{name} must be {kind.__name__}, got {type(value).__name__}",
                    rid,
                )
        msg["args"] = args
        return msg

    def _execute(self, op: str, args: dict[str, Any], mic: SimMicroscope) -> Any:
        if op == "hello":
            return {
                "protocol": PROTOCOL_VERSION,
                "limits": mic.limits.to_dict(),
                "identity": {**mic.identity(), "twin": True},
            }
        if op == "ping":
            return {"clock_s": mic.clock_s}
        if op == "reset":
            seed = args["seed"]
            if seed < -1:
                raise MicroscopeLimitError(f"seed = {seed} must be >= 0 (or -1 for fresh entropy)")
            mic.reset_sample(None if seed == -1 else seed)
        elif op == "park":
            mic.park(args["x_angstrom"], args["y_angstrom"])
        elif op == "dwell":
            mic.dwell(args["seconds"])
        elif op == "blank":
            mic.blank()
        elif op == "unblank":
            mic.unblank()
        elif op == "shift_view":
            mic.shift_view(args["dx_angstrom"], args["dy_angstrom"])
        elif op == "acquire":
            frame = mic.acquire(args["pixels"], args["pixel_time_s"])
            return {"clock_s": mic.clock_s, "frame": frame.to_wire()}
        elif op == "truth":
            if not self.share_truth:
                raise _BadRequest("unsupported", "this twin does not share its truth")
            return mic.truth()
        return mic.state()


def _error(rid: Any, kind: str, message: str) -> dict[str, Any]:
    return {
        "v": PROTOCOL_VERSION,
        "id": rid if isinstance(rid, int) else None,
        "ok": False,
        "error": {"type": kind, "message": message},
    }
