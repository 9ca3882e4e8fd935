"""The skills network twin: the simulated mobile manipulator behind protocol version 1.

:class:`SkillsServer` serves a :class:`~.fake.SimSkillsRobot` over the shared transport
(:mod:`twinloop.hardware.zmtp`) and keeps the contract of :mod:`.protocol`: every request
that arrives whole gets one reply on its own connection; :func:`~.protocol.decode_request`
validates every field first; every refusal stops the robot and carries the request's id when
one can be read; only accepted requests feed the idle timeout; what one peer may make the
twin hold is bounded.

Data flow of one request::

    TCP bytes -> zmtp.ZmtpServer (handshake, frames, per-peer bounds)
    -> SkillsServer.handle(frames) -> protocol.decode_request
        -> refused:  robot stopped, {"ok": false, "id": <id if readable>, "error": ...}
        -> accepted: _execute on the SimSkillsRobot (failures, perception errors drawn there)
           -> report (+ frame rendered from the true world if asked) -> {"ok": true, ...}
    -> latency + jitter (sleep) -> msgpack -> the same connection

Latency is served by sleeping before the reply, in the serving loop (a robot has one
controller; keep it well under the clients' timeouts). :meth:`SkillsServer.warm_up` runs
every operation on a throwaway robot first, so that the kernels and the renderer are compiled
or loaded before the twin says it is listening (:mod:`twinloop.hardware.ready`).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import numpy as np

from twinloop.hardware.skills.fake import SimSkillsRobot
from twinloop.hardware.skills.protocol import (
    CATALOG,
    MAX_FRAME_PX,
    MAX_FRAMES,
    MAX_REQUEST_BYTES,
    MIN_FRAME_PX,
    PROTOCOL_VERSION,
    Refusal,
    Request,
    decode_request,
    error_reply,
    frame_to_wire,
    measurement_fields,
    observation_to_wire,
    ok_reply,
)
from twinloop.hardware.zmtp import LogThrottle, PeerLimits, ZmtpServer
from twinloop.sim.rearrange import episodes as E

log = logging.getLogger(__name__)


def warm_up_requests() -> list[tuple[str, dict[str, Any]]]:
    """Every operation once, with valid arguments (a frame at the smallest size)."""
    return [
        ("hello", {}),
        ("ping", {}),
        ("reset", {"split": "train", "episode": 0, "seed": 0}),
        ("state", {"frame_px": 0}),
        ("state", {"frame_px": MIN_FRAME_PX}),
        ("execute", {"seq": 1, "skill": "nav", "target": "sofa", "frame_px": MIN_FRAME_PX}),
        ("execute", {"seq": 1, "skill": "nav", "target": "sofa", "frame_px": 0}),
        ("execute", {"seq": 2, "skill": "pick", "target": "apple", "frame_px": 0}),
        ("stop", {}),
    ]


class SkillsServer:
    """Serve a :class:`~.fake.SimSkillsRobot` to ZeroMQ REQ (and DEALER) clients.

    Args:
        robot: The simulated robot.
        host: Interface to bind (default loopback only).
        port: TCP port; 0 picks a free one (see :attr:`address`).
        token: Shared secret every request must carry (None: none); any Unicode string.
        latency_s: Added to every reply (s).
        jitter_s: Plus U(0, jitter_s) per reply (s).
        seed: Seeds the jitter draws (None: fresh entropy).
        max_connections: Open connections at most.
        idle_timeout_s: Close a connection without an accepted request for this long.
        send_timeout_s: Close a connection whose reply made no progress for this long.
        handshake_timeout_s: Close a connection that has not finished its handshake by then.
    """

    def __init__(
        self,
        robot: SimSkillsRobot,
        host: str = "127.0.0.1",
        port: int = 5557,
        token: str | None = None,
        latency_s: float = 0.0,
        jitter_s: float = 0.0,
        seed: int | None = None,
        max_connections: int = 16,
        idle_timeout_s: float = 300.0,
        send_timeout_s: float = 10.0,
        handshake_timeout_s: float = 5.0,
    ) -> None:
        """Bind the socket (the port is taken when this returns)."""
        if not 0 <= int(port) <= 65535:
            raise ValueError(f"port must be in [0, 65535], got {port}")
        for name, v, hi in (("latency_s", latency_s, 1.0), ("jitter_s", jitter_s, 1.0)):
            if not 0.0 <= v <= hi:
                raise ValueError(f"{name} must be in [0, {hi}] s, got {v}")
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
        self.robot = robot
        self.token = token
        self.latency_s, self.jitter_s = float(latency_s), float(jitter_s)
        self._link_rng = np.random.default_rng(seed)
        self._net = ZmtpServer(host, int(port), limits)
        self.host, self.port, self.address = host, self._net.port, self._net.address
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._serving = False
        self.requests = 0
        self.rejected = 0
        self.warmed_up = False
        self._say = LogThrottle(log)

    @property
    def net(self) -> ZmtpServer:
        """The transport: connections, evictions, bytes held for peers."""
        return self._net

    def warm_up(self) -> None:
        """Compile (or load) the kernels and the renderer, on a throwaway robot; runs once.

        Raises:
            RuntimeError: A warm-up request failed (the error a first client would have met).
        """
        import msgpack

        if self.warmed_up:
            return
        shadow = SimSkillsRobot(self.robot.cfg, hidden_seed=0)
        for rid, (op, args) in enumerate(warm_up_requests(), start=1):
            msg = {"v": PROTOCOL_VERSION, "id": rid, "op": op, "args": args, "token": self.token}
            reply = self._reply([b"", msgpack.packb(msg, use_bin_type=True)], shadow)
            msgpack.packb(reply, use_bin_type=True)
            if not reply["ok"]:
                error = reply["error"]
                raise RuntimeError(
                    f"the twin's warm-up request {op} failed ({error['type']}): {error['message']}"
                )
        self.warmed_up = True

    # serving -----------------------------------------------------------------------------------
    def serve_forever(self) -> None:
        """Warm up if not done yet, then answer requests until :meth:`stop`; stop the robot last."""
        self.warm_up()
        self._serving = True
        try:
            self._net.serve(self.handle, _no_tick, self._stop, refused=self._dropped, poll_s=0.05)
        finally:
            self._serving = False
            self.robot.stop()

    def start(self) -> SkillsServer:
        """Warm up (in this thread), then serve in a background thread (tests, in-process twins)."""
        self.warm_up()
        self._thread = threading.Thread(target=self.serve_forever, name="skills-twin", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop serving and release the port."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        if not self._serving:
            self._net.close()

    def _dropped(self, why: str) -> None:
        """A message refused before it could be read (over a bound, not ZMTP): stop."""
        self.robot.stop()
        self.rejected += 1

    # one request -------------------------------------------------------------------------------
    def handle(self, frames: list[bytes]) -> tuple[list[bytes] | None, bool]:
        """Answer one request: ``([b"", reply], accepted)``."""
        import msgpack

        self.requests += 1
        reply = self._reply(frames, self.robot)
        if not reply["ok"] and reply["error"]["type"] != "internal":
            self.rejected += 1
        delay = self.latency_s + (self.jitter_s * self._link_rng.random() if self.jitter_s else 0)
        if delay > 0:
            time.sleep(delay)
        try:
            return [b"", msgpack.packb(reply, use_bin_type=True)], reply["ok"]
        except Exception as exc:  # a result the twin cannot encode: its own fault
            self.robot.stop()
            message = f"unencodable reply: {type(exc).__name__}: {exc}"
            self._say(logging.ERROR, "internal error on request %s: %s", reply["id"], message)
            failed = error_reply(reply["id"], "internal", message)
            return [b"", msgpack.packb(failed, use_bin_type=True)], False

    def _reply(self, frames: list[bytes], robot: SimSkillsRobot) -> dict[str, Any]:
        """The reply to one request, executed on ``robot``; every way out but success stops it."""
        request: Request | None = None
        try:
            request = decode_request(frames, self.token)
            return ok_reply(request.id, self._execute(request, robot))
        except Refusal as exc:
            robot.stop()
            rid = request.id if request is not None else exc.rid
            if robot is self.robot:
                self._say(logging.WARNING, "refused request %s (%s): %s", rid, exc.kind, exc)
            return error_reply(rid, exc.kind, str(exc))
        except Exception as exc:  # a fault of the twin itself; it must keep serving
            robot.stop()
            rid = request.id if request is not None else None
            self._say(
                logging.ERROR,
                "internal error on request %s (%s): %s: %s",
                rid,
                request.op if request else "?",
                type(exc).__name__,
                exc,
            )
            return error_reply(rid, "internal", f"{type(exc).__name__}: {exc}")

    def _execute(self, request: Request, robot: SimSkillsRobot) -> Any:
        """Run one validated request."""
        op, args = request.op, request.args
        if op == "hello":
            return {
                "protocol": PROTOCOL_VERSION,
                "catalog": {k: list(v) for k, v in CATALOG.items()},
                "splits": {s: E.split_size(s) for s in E.SPLITS},
                "measurement": measurement_fields(),
                "frame_px": [MIN_FRAME_PX, MAX_FRAME_PX],
                "identity": {**robot.identity(), "twin": True},
            }
        if op == "ping":
            return {"mode": robot.mode, "seq": robot.seq}
        if op == "reset":
            episode, seed = args["episode"], args["seed"]
            robot.reset(
                args["split"] or None, None if episode < 0 else episode, None if seed < 0 else seed
            )
        elif op == "execute":
            return self._skill(args, robot)
        elif op == "stop":
            robot.stop()
        elif op == "state":
            return _report(robot, args["frame_px"])
        return _report(robot, 0)

    def _skill(self, args: dict[str, Any], robot: SimSkillsRobot) -> dict[str, Any]:
        seq = args["seq"]
        last = robot.last
        if last is not None and seq == last[0]:
            return {**last[1], "repeat": True}
        if seq <= robot.seq:
            raise Refusal(
                "bad_request", f"execute.seq = {seq} is not after the last executed {robot.seq}"
            )
        success, duration_s = robot.execute(seq, args["skill"], args["target"])
        result = {
            **_report(robot, args["frame_px"]),
            "skill": args["skill"],
            "target": args["target"],
            "success": success,
            "duration_s": duration_s,
            "repeat": False,
        }
        robot.last = (seq, result)
        return result


def _no_tick(now: float) -> None:
    """Nothing runs between requests: a skill runs only inside its request."""


def _report(robot: SimSkillsRobot, frame_px: int) -> dict[str, Any]:
    """The report of the robot's last observation, with a frame of ``frame_px`` if > 0."""
    return {
        "mode": robot.mode,
        "seq": robot.seq,
        "observation": observation_to_wire(robot.reported),
        "frame": frame_to_wire(robot.frame(frame_px)) if frame_px else None,
    }
