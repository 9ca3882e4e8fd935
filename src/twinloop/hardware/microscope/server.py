"""The microscope network twin: a simulated STEM behind protocol version 1 (ZeroMQ + msgpack).

``twinloop serve microscope [--host H] [--port P] [--token-file F]`` runs
:class:`MicroscopeServer` in its own process. It binds to 127.0.0.1 unless told otherwise and
keeps the contract written in :mod:`.protocol`: every request that arrives whole gets one
reply on its own connection; :func:`~.protocol.decode_request` validates every field before
anything executes; every refusal blanks the beam and carries the request's id when one can be
read; only accepted requests feed the watchdog (beam blanked after ``watchdog_s`` without one
while unblanked); what one peer may make the twin hold is bounded (:mod:`twinloop.hardware.zmtp`).

Data flow of one request::

    TCP bytes -> zmtp.ZmtpServer (handshake, frames, per-peer bounds, one request per peer
    per round) -> MicroscopeServer.handle(frames) -> protocol.decode_request (envelope,
    encoding, keys, version, token, op, argument types)
        -> refused:  beam blanked, {"ok": false, "id": <id if readable>, "error": ...}
        -> accepted: watchdog fed -> _execute on the SimMicroscope (limits checked there;
           a limit refusal blanks the beam too) -> {"ok": true, "result": ...}
    -> msgpack -> back on the same connection

Before it serves, :meth:`MicroscopeServer.warm_up` replays :func:`warm_up_requests` (every
operation, and both branches of ``acquire``: the Si in view and out of it) through the same
decode-execute-encode path on a throwaway copy of the instrument, so the STEM kernels are
compiled (or loaded from the numba cache) before the twin announces its address instead of
inside its first request (see :mod:`twinloop.hardware.ready`).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from twinloop.hardware.microscope.fake import SimMicroscope
from twinloop.hardware.microscope.protocol import (
    MAX_FRAMES,
    MAX_REQUEST_BYTES,
    PROTOCOL_VERSION,
    MicroscopeLimitError,
    MicroscopeLimits,
    Refusal,
    Request,
    decode_request,
    error_reply,
    ok_reply,
)
from twinloop.hardware.zmtp import LogThrottle, PeerLimits, ZmtpServer

log = logging.getLogger(__name__)


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
    """Serve a :class:`~.fake.SimMicroscope` to ZeroMQ REQ (and DEALER) clients.

    Args:
        microscope: The simulated instrument to serve.
        host: Interface to bind (default loopback only).
        port: TCP port; 0 picks a free one (see :attr:`address`).
        token: Shared secret every request must carry (None: no token required); any
            Unicode string.
        watchdog_s: Blank the beam after this long without an accepted request while it is
            unblanked.
        share_truth: Answer ``truth`` requests with the simulator's privileged state.
        max_connections: Open connections at most; a new one evicts the least recently active.
        idle_timeout_s: Close a connection without an accepted request for this long.
        send_timeout_s: Close a connection whose reply made no progress for this long.
        handshake_timeout_s: Close a connection that has not finished its handshake by then.
    """

    def __init__(
        self,
        microscope: SimMicroscope,
        host: str = "127.0.0.1",
        port: int = 5555,
        token: str | None = None,
        watchdog_s: float = 5.0,
        share_truth: bool = True,
        max_connections: int = 16,
        idle_timeout_s: float = 300.0,
        send_timeout_s: float = 10.0,
        handshake_timeout_s: float = 5.0,
    ) -> None:
        """Bind the socket (the port is taken when this returns)."""
        if not 0 <= int(port) <= 65535:
            raise ValueError(f"port must be in [0, 65535], got {port}")
        if not watchdog_s > 0:
            raise ValueError(f"watchdog_s must be > 0, got {watchdog_s}")
        if token is not None:
            if not isinstance(token, str) or not token:
                raise ValueError("token must be a non-empty string (or None)")
            try:
                token.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise ValueError(f"token is not valid Unicode text: {exc}") from None
        limits = PeerLimits(
            max_message_bytes=MAX_REQUEST_BYTES,
            max_frames=MAX_FRAMES,
            max_connections=int(max_connections),
            idle_timeout_s=float(idle_timeout_s),
            handshake_timeout_s=float(handshake_timeout_s),
            send_timeout_s=float(send_timeout_s),
        )
        self.microscope = microscope
        self.token = token
        self.watchdog_s = float(watchdog_s)
        self.share_truth = share_truth
        self._net = ZmtpServer(host, int(port), limits)
        self.host, self.port, self.address = host, self._net.port, self._net.address
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._serving = False
        self.requests = 0
        self.rejected = 0
        self.watchdog_trips = 0
        #: When the last accepted request arrived (time.monotonic); only these feed the watchdog.
        self.last_accepted_s = time.monotonic()
        self.warmed_up = False
        self._say = LogThrottle(log)
        self.microscope.connect()

    @property
    def net(self) -> ZmtpServer:
        """The transport: connections, eviction count, bytes held for peers."""
        return self._net

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
            reply = self._reply([b"", msgpack.packb(msg, use_bin_type=True)], shadow)
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
        self.warm_up()
        self.last_accepted_s = time.monotonic()
        self._serving = True
        try:
            self._net.serve(self.handle, self._watchdog, self._stop, refused=self._dropped)
        finally:
            self._serving = False
            self.microscope.blank()

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
        if not self._serving:  # otherwise the serving loop closes it on its way out
            self._net.close()

    def _dropped(self, why: str) -> None:
        """A message refused before it could be read (over a bound, not ZMTP): go safe."""
        self.microscope.blank()
        self.rejected += 1

    def _watchdog(self, now: float) -> None:
        if not self.microscope.blanked and now - self.last_accepted_s > self.watchdog_s:
            self.microscope.blank()
            self.watchdog_trips += 1
            log.warning("watchdog: no accepted request for %.1f s, beam blanked", self.watchdog_s)

    # one request ----------------------------------------------------------------------------------
    def handle(self, frames: list[bytes]) -> tuple[list[bytes], bool]:
        """Answer one request message (its frames): ``([b"", reply], accepted)``."""
        import msgpack

        self.requests += 1
        reply = self._reply(frames, self.microscope)
        if not reply["ok"] and reply["error"]["type"] != "internal":
            self.rejected += 1
        try:
            return [b"", msgpack.packb(reply, use_bin_type=True)], reply["ok"]
        except Exception as exc:  # a result the twin cannot encode: its own fault
            self.microscope.blank()
            message = f"unencodable reply: {type(exc).__name__}: {exc}"
            self._say(logging.ERROR, "internal error on request %s: %s", reply["id"], message)
            failed = error_reply(reply["id"], "internal", message)
            return [b"", msgpack.packb(failed, use_bin_type=True)], False

    def _reply(self, frames: list[bytes], mic: SimMicroscope) -> dict[str, Any]:
        """The reply to one request, executed on ``mic`` (the served one, or the warm-up's).

        Every way out but success blanks the beam first (the contract's safe state).
        """
        request: Request | None = None
        try:
            request = decode_request(frames, self.token)
            result = self._execute(request, mic)
            if mic is self.microscope:
                self.last_accepted_s = time.monotonic()
            return ok_reply(request.id, result)
        except Refusal as exc:
            mic.blank()
            rid = request.id if request is not None else exc.rid
            if mic is self.microscope:
                self._say(logging.WARNING, "refused request %s (%s): %s", rid, exc.kind, exc)
            return error_reply(rid, exc.kind, str(exc))
        except Exception as exc:  # a fault of the twin itself; it must keep serving
            mic.blank()
            rid = request.id if request is not None else None
            self._say(
                logging.ERROR,
                "internal error on request %s (%s): %s: %s",
                rid,
                request.op if request else "?",
                type(exc).__name__,
                exc,
            )
            log.debug("internal error", exc_info=True)
            return error_reply(rid, "internal", f"{type(exc).__name__}: {exc}")

    def _execute(self, request: Request, mic: SimMicroscope) -> Any:
        """Run one validated request; the instrument's limits refuse as ``limit``."""
        op, args = request.op, request.args
        try:
            if op == "hello":
                return {
                    "protocol": PROTOCOL_VERSION,
                    "limits": mic.limits.to_dict(),
                    "identity": {**mic.identity(), "twin": True},
                }
            if op == "ping":
                return {"clock_s": mic.clock_s}
            if op == "reset":
                seed = int(args["seed"])
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
                frame = mic.acquire(int(args["pixels"]), args["pixel_time_s"])
                return {"clock_s": mic.clock_s, "frame": frame.to_wire()}
            elif op == "truth":
                if not self.share_truth:
                    raise Refusal("unsupported", "this twin does not share its truth")
                truth = mic.truth()
                if getattr(mic, "profile", None) is not None:
                    # the rates are the hidden physics itself (a client could read the
                    # profile's rate model off them); the sample's state is what scoring needs
                    truth.pop("rates_per_s", None)
                return truth
        except MicroscopeLimitError as exc:
            raise Refusal("limit", str(exc)) from None
        return mic.state()
