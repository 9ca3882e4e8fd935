"""The robot network twin: the simulated quadruped behind protocol version 1 (ZeroMQ + msgpack).

:class:`RobotServer` serves a :class:`~.fake.SimRobot` over the shared transport
(:mod:`twinloop.hardware.zmtp`) and keeps the contract of :mod:`.protocol`: every request
that arrives whole gets one reply on its own connection (unless packet loss drops it on
purpose); :func:`~.protocol.decode_request` validates every field first; every refusal damps
the joints and carries the request's id when one can be read; only accepted requests feed the
watchdog (damping after ``watchdog_s`` without one); what one peer may make the twin hold is
bounded.

Data flow of one request::

    TCP bytes -> zmtp.ZmtpServer (handshake, frames, per-peer bounds)
    -> RobotServer.handle(frames) -> protocol.decode_request
        -> refused:  joints damped, {"ok": false, "id": <id if readable>, "error": ...}
        -> accepted: watchdog fed -> _execute on the SimRobot (clipping reported)
           -> {"ok": true, "result": ...}
    -> latency + jitter (sleep), packet loss (no reply) -> msgpack -> the same connection

Latency and jitter are served by sleeping before the reply, in the serving loop: a twin with
latency L answers at most 1/L requests a second over all its peers (a robot has one
controller; keep L well under the clients' timeouts). Every round of the serving loop also
runs the watchdog and, while the robot is in damping or
e-stop, advances its physics in real time at the physics rate (the robot sinks under damping).
Before it serves, :meth:`RobotServer.warm_up` replays every operation on a throwaway robot, so
that the kernels are compiled or loaded before the twin says it is listening
(:mod:`twinloop.hardware.ready`).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import numpy as np

from twinloop.hardware.robot.fake import SimRobot, is_finite_state
from twinloop.hardware.robot.protocol import (
    MAX_FRAMES,
    MAX_REQUEST_BYTES,
    N_JOINTS,
    PROTOCOL_VERSION,
    Refusal,
    Request,
    decode_request,
    error_reply,
    ok_reply,
)
from twinloop.hardware.zmtp import LogThrottle, PeerLimits, ZmtpServer

log = logging.getLogger(__name__)
#: Longest stretch of real time one serving round catches up in damping (s).
MAX_CATCH_UP_S = 1.0


def warm_up_requests(robot: SimRobot) -> list[tuple[str, dict[str, Any]]]:
    """Every operation once, with valid arguments (a command at the nominal gains)."""
    m = robot.model
    kp = [float(robot.cfg.control.kp_nm_per_rad)] * N_JOINTS
    kd = [float(robot.cfg.control.kd_nm_s_per_rad)] * N_JOINTS
    q = [float(x) for x in robot.physics.data.qpos[7:19]]
    return [
        ("hello", {}),
        ("ping", {}),
        ("reset", {"seed": 0}),
        ("state", {}),
        ("command", {"seq": 0, "q_rad": q, "kp": kp, "kd": kd}),
        ("command", {"seq": 0, "q_rad": q, "kp": kp, "kd": kd}),
        ("command", {"seq": 1, "q_rad": list(m.q_max_rad), "kp": kp, "kd": kd}),
        ("damp", {}),
        ("estop", {}),
        ("clear_estop", {}),
    ]


class RobotServer:
    """Serve a :class:`~.fake.SimRobot` to ZeroMQ REQ (and DEALER) clients.

    Args:
        robot: The simulated robot.
        host: Interface to bind (default loopback only).
        port: TCP port; 0 picks a free one (see :attr:`address`).
        token: Shared secret every request must carry (None: none); any Unicode string.
        watchdog_s: Damp the joints after this long without an accepted request.
        latency_s: Added to every reply (s).
        jitter_s: Plus U(0, jitter_s) per reply (s).
        loss: Probability that a reply is dropped (the request was executed).
        seed: Seeds the latency and loss draws (None: fresh entropy).
        max_connections: Open connections at most.
        idle_timeout_s: Close a connection without an accepted request for this long.
        send_timeout_s: Close a connection whose reply made no progress for this long.
        handshake_timeout_s: Close a connection that has not finished its handshake by then.
    """

    def __init__(
        self,
        robot: SimRobot,
        host: str = "127.0.0.1",
        port: int = 5556,
        token: str | None = None,
        watchdog_s: float = 0.5,
        latency_s: float = 0.0,
        jitter_s: float = 0.0,
        loss: float = 0.0,
        seed: int | None = None,
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
        for name, v, hi in (("latency_s", latency_s, 1.0), ("jitter_s", jitter_s, 1.0)):
            if not 0.0 <= v <= hi:
                raise ValueError(f"{name} must be in [0, {hi}] s, got {v}")
        if not 0.0 <= loss < 1.0:
            raise ValueError(f"loss must be in [0, 1), got {loss}")
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
        self.watchdog_s = float(watchdog_s)
        self.latency_s, self.jitter_s, self.loss = float(latency_s), float(jitter_s), float(loss)
        self._link_rng = np.random.default_rng(seed)
        self._net = ZmtpServer(host, int(port), limits)
        self.host, self.port, self.address = host, self._net.port, self._net.address
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._serving = False
        self.requests = 0
        self.rejected = 0
        self.dropped_replies = 0
        self.watchdog_trips = 0
        #: When the last accepted request arrived (time.monotonic); only these feed the watchdog.
        self.last_accepted_s = time.monotonic()
        self._run_clock = time.monotonic()
        self.warmed_up = False
        self._say = LogThrottle(log)

    @property
    def net(self) -> ZmtpServer:
        """The transport: connections, evictions, bytes held for peers."""
        return self._net

    def warm_up(self) -> None:
        """Compile (or load) every kernel a request runs, on a throwaway robot; runs once.

        Raises:
            RuntimeError: A warm-up request failed (the error a first client would have met).
        """
        import msgpack

        if self.warmed_up:
            return
        shadow = SimRobot(self.robot.cfg, hidden_seed=0)
        for rid, (op, args) in enumerate(warm_up_requests(shadow), start=1):
            msg = {"v": PROTOCOL_VERSION, "id": rid, "op": op, "args": args, "token": self.token}
            reply = self._reply([b"", msgpack.packb(msg, use_bin_type=True)], shadow)
            msgpack.packb(reply, use_bin_type=True)
            if not reply["ok"]:
                error = reply["error"]
                raise RuntimeError(
                    f"the twin's warm-up request {op} failed ({error['type']}): {error['message']}"
                )
        shadow.run_damped(0.1)
        self.warmed_up = True

    # serving -----------------------------------------------------------------------------------
    def serve_forever(self) -> None:
        """Warm up if not done yet, then answer requests until :meth:`stop`; damp on the way out."""
        self.warm_up()
        self.last_accepted_s = self._run_clock = time.monotonic()
        self._serving = True
        try:
            self._net.serve(self.handle, self._tick, self._stop, refused=self._dropped, poll_s=0.02)
        finally:
            self._serving = False
            self.robot.damp()

    def start(self) -> RobotServer:
        """Warm up (in this thread), then serve in a background thread (tests, in-process twins)."""
        self.warm_up()
        self._thread = threading.Thread(target=self.serve_forever, name="robot-twin", daemon=True)
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
        """A message refused before it could be read (over a bound, not ZMTP): damp."""
        self.robot.damp()
        self.rejected += 1

    def _tick(self, now: float) -> None:
        """The watchdog, then real-time physics while damping."""
        robot = self.robot
        if robot.mode == "active" and now - self.last_accepted_s > self.watchdog_s:
            robot.damp()
            self.watchdog_trips += 1
            self._run_clock = now
            log.warning("watchdog: no accepted request for %.2f s, joints damped", self.watchdog_s)
        if robot.mode == "active":
            self._run_clock = now
            return
        self._run_clock = max(self._run_clock, now - MAX_CATCH_UP_S)
        n = robot.run_damped(now - self._run_clock)
        self._run_clock += n * robot.model.sim_dt_s

    # one request -------------------------------------------------------------------------------
    def handle(self, frames: list[bytes]) -> tuple[list[bytes] | None, bool]:
        """Answer one request: ``([b"", reply], accepted)``; no reply when it is lost."""
        import msgpack

        self.requests += 1
        reply = self._reply(frames, self.robot)
        if not reply["ok"] and reply["error"]["type"] != "internal":
            self.rejected += 1
        delay = self.latency_s + (self.jitter_s * self._link_rng.random() if self.jitter_s else 0)
        if delay > 0:
            time.sleep(delay)
        if self.loss and self._link_rng.random() < self.loss:
            self.dropped_replies += 1
            return None, reply["ok"]
        try:
            return [b"", msgpack.packb(reply, use_bin_type=True)], reply["ok"]
        except Exception as exc:  # a result the twin cannot encode: its own fault
            self.robot.damp()
            message = f"unencodable reply: {type(exc).__name__}: {exc}"
            self._say(logging.ERROR, "internal error on request %s: %s", reply["id"], message)
            failed = error_reply(reply["id"], "internal", message)
            return [b"", msgpack.packb(failed, use_bin_type=True)], False

    def _reply(self, frames: list[bytes], robot: SimRobot) -> dict[str, Any]:
        """The reply to one request, executed on ``robot``; every way out but success damps."""
        request: Request | None = None
        try:
            request = decode_request(frames, self.token)
            result = self._execute(request, robot)
            if robot is self.robot:
                self.last_accepted_s = time.monotonic()
            return ok_reply(request.id, result)
        except Refusal as exc:
            robot.damp()
            rid = request.id if request is not None else exc.rid
            if robot is self.robot:
                self._say(logging.WARNING, "refused request %s (%s): %s", rid, exc.kind, exc)
            return error_reply(rid, exc.kind, str(exc))
        except Exception as exc:  # a fault of the twin itself; it must keep serving
            robot.damp()
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

    def _execute(self, request: Request, robot: SimRobot) -> Any:
        """Run one validated request."""
        op, args = request.op, request.args
        if op == "hello":
            return {
                "protocol": PROTOCOL_VERSION,
                "model": {**robot.model.to_dict(), "control_dt_s": robot.model.control_dt_s},
                "identity": {**robot.identity(), "twin": True},
            }
        if op == "ping":
            return {"time_s": float(robot.physics.data.time), "mode": robot.mode}
        if op in ("command", "reset") and robot.mode == "estop":
            raise Refusal("estop", f"{op}: the e-stop is latched; send clear_estop first")
        if op == "reset":
            seed = int(args["seed"])
            robot.reset(None if seed == -1 else seed)
        elif op == "command":
            return self._command(args, robot)
        elif op == "damp":
            robot.damp()
        elif op == "estop":
            robot.estop()
            if robot is self.robot:
                log.warning("e-stop latched by a client")
        elif op == "clear_estop":
            robot.clear_estop()
        state = robot.state()
        if not is_finite_state(state):
            raise RuntimeError("the simulation diverged (non-finite state)")
        return state

    def _command(self, args: dict[str, Any], robot: SimRobot) -> dict[str, Any]:
        seq = int(args["seq"])
        last = robot.last_command
        if last is not None and seq == last[0]:
            return {**last[1], "repeat": True}
        if seq <= robot.seq:
            raise Refusal(
                "bad_request", f"command.seq = {seq} is not after the last executed {robot.seq}"
            )
        result = robot.command(seq, args["q_rad"], args["kp"], args["kd"])
        if not is_finite_state(result["state"]):
            raise RuntimeError("the simulation diverged (non-finite state)")
        result["repeat"] = False
        robot.last_command = (seq, result)
        return result
