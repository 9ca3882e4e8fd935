"""The microscope network twin: a simulated STEM behind protocol version 1 (ZeroMQ + msgpack).

``twinloop serve microscope [--host H] [--port P] [--token T]`` runs :class:`MicroscopeServer`
in its own process. It binds to 127.0.0.1 unless told otherwise, validates every message
(size, encoding, version, operation, argument names and types, token) before acting, refuses
commands outside the instrument's limits without executing them, and never stops serving on a
bad message. A watchdog blanks the beam when no request arrives for ``watchdog_s`` seconds
while the beam is unblanked.
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
)

log = logging.getLogger(__name__)


class _BadRequest(Exception):
    def __init__(self, kind: str, message: str, rid: Any = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.rid = rid


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
        self.microscope.connect()

    # serving -------------------------------------------------------------------------------------
    def serve_forever(self) -> None:
        """Answer requests until :meth:`stop`; the beam is blanked on the way out."""
        import zmq

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
        """Serve in a background thread (tests and in-process twins)."""
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
        rid: Any = None
        try:
            msg = self._decode(raw)
            rid = msg["id"]
            result = self._execute(msg["op"], msg["args"])
            reply = {"v": PROTOCOL_VERSION, "id": rid, "ok": True, "result": result}
        except _BadRequest as exc:
            self.rejected += 1
            reply = _error(exc.rid if rid is None else rid, exc.kind, str(exc))
        except MicroscopeLimitError as exc:
            self.rejected += 1
            self.microscope.blank()
            reply = _error(rid, "limit", str(exc))
        except Exception as exc:  # the twin must keep serving whatever went wrong
            log.exception("internal error while serving a request")
            self.microscope.blank()
            reply = _error(rid, "internal", f"{type(exc).__name__}: {exc}")
        return msgpack.packb(reply, use_bin_type=True)

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

    def _execute(self, op: str, args: dict[str, Any]) -> Any:
        mic = self.microscope
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
