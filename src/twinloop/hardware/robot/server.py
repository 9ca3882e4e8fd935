"""The robot network twin: the simulated quadruped behind protocol version 2 (ZeroMQ + msgpack).

:class:`RobotServer` serves a :class:`~.fake.SimRobot` over the shared transport
(:mod:`twinloop.hardware.zmtp`) and keeps the contract of :mod:`.protocol`: every request
that arrives whole gets one reply on its own connection (unless packet loss drops it on
purpose); :func:`~.protocol.decode_request` validates every field first; every refusal damps
the joints (but one for ownership: point 11) and carries the request's id when one can be
read; one controller owns the robot at a time (:class:`Ownership`), and its lease is the
watchdog (damping after ``watchdog_s`` without an accepted request from the owner); what
one peer may make the twin hold is bounded.

Data flow of one request::

    TCP bytes -> zmtp (handshake, frames, per-peer bounds, the link delay held per reply)
    -> RobotServer.handle(frames) -> protocol.decode_request
        -> refused:  joints damped (not for owned_by_another / no_lease),
                     {"ok": false, "id": <id if readable>, "error": ...}
        -> accepted: an expired lease ended (joints damped) -> ownership checked (acquire,
           release, and the session of command / reset / clear_estop)
           -> _execute on the SimRobot (clipping reported) -> the owner's lease fed
           -> {"ok": true, "result": ...}
    -> packet loss (no reply) -> msgpack
    -> held on its connection until due (latency + jitter; the loop serves the others)
    -> the same connection

Latency and jitter delay each reply on its own connection (contract point 14): the serving
loop holds the reply, does not read that connection until it has gone, and serves every
other peer meanwhile, so a state reader never slows the controller; the transport
(``ZmtpServer(reply_delay=...)``) wakes for a held reply's due time. Every round of the
serving loop also ends an expired lease (the watchdog) and, while the robot is in damping or
e-stop, advances its physics in real time at the physics rate
(the robot sinks under damping). Before it serves, :meth:`RobotServer.warm_up` replays every
operation on a throwaway robot, so that the kernels are compiled or loaded before the twin
says it is listening (:mod:`twinloop.hardware.ready`).
"""

from __future__ import annotations

import collections
import dataclasses
import hmac
import logging
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from twinloop.hardware.robot.fake import SimRobot, is_finite_state
from twinloop.hardware.robot.protocol import (
    ACTUATING,
    MAX_FRAMES,
    MAX_REQUEST_BYTES,
    N_JOINTS,
    OWNERSHIP_REFUSALS,
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
#: Longest wait of the serving loop for input (s).
POLL_S = 0.02
#: The same while a link delay is configured: a held reply leaves at most about this long
#: after it is due (measured: 20 ms latency gave 21.9 ms median round trips, and 5% of a
#: core while idle against 1.5% without delay).
#: Ended sessions remembered, so that a stale one is refused with why and when it ended.
ENDED_SESSIONS = 16
#: The nonce of the warm-up's ``acquire`` (on a throwaway robot).
WARM_UP_NONCE = "warm-up-of-the-twin"


def warm_up_requests(robot: SimRobot) -> list[tuple[str, dict[str, Any]]]:
    """Every operation once, with valid arguments (a command at the nominal gains).

    ``session`` arguments are empty: :meth:`RobotServer.warm_up` fills in the session that
    its ``acquire`` was given.
    """
    m = robot.model
    kp = [float(robot.cfg.control.kp_nm_per_rad)] * N_JOINTS
    kd = [float(robot.cfg.control.kd_nm_s_per_rad)] * N_JOINTS
    q = [float(x) for x in robot.physics.data.qpos[7:19]]
    session = {"session": ""}
    return [
        ("hello", {}),
        ("ping", {}),
        ("acquire", {"nonce": WARM_UP_NONCE}),
        ("acquire", {"nonce": WARM_UP_NONCE}),
        ("reset", {"seed": 0, **session}),
        ("state", {}),
        ("command", {"seq": 0, "q_rad": q, "kp": kp, "kd": kd, **session}),
        ("command", {"seq": 0, "q_rad": q, "kp": kp, "kd": kd, **session}),
        ("command", {"seq": 1, "q_rad": list(m.q_max_rad), "kp": kp, "kd": kd, **session}),
        ("damp", {}),
        ("estop", {}),
        ("clear_estop", {**session}),
        ("release", {**session}),
        ("release", {**session}),
    ]


#: After ``reset`` the robot stands and holds its pose, and the owner's lease lasts this long
#: for the first command (a controller getting ready: kernels, a capture); then watchdog_s.
FIRST_COMMAND_GRACE_S = 10.0


@dataclasses.dataclass
class Lease:
    """The robot's owner (contract point 9).

    Attributes:
        session: The id issued to the owner, sent with each of its actuating requests.
        nonce: What the owner acquired with (its ``acquire`` again renews the lease).
        fed_s: When its last accepted request came (``time.monotonic()``).
    """

    session: str
    nonce: str
    fed_s: float
    grace_until_s: float = 0.0  # after a reset, the lease cannot end before this (point 12)


class Ownership:
    """Who owns the robot: at most one lease, fed by its owner's accepted requests.

    Keeps contract points 9, 11 (which refusal), 12 and 13 of :mod:`.protocol`, apart from
    damping: the server damps the joints whenever a lease ends (:meth:`expire` and
    :meth:`release` return whether one did). Every method takes the time
    (``time.monotonic()``), so that a test may drive it with its own clock.

    Args:
        lease_s: How long a lease lasts after its owner's last accepted request (s).
        new_session: Draws a session id (default: 128 random bits as 32 hex digits).
    """

    def __init__(self, lease_s: float, new_session: Callable[[], str] | None = None) -> None:
        """No owner yet."""
        if not lease_s > 0:
            raise ValueError(f"lease_s must be > 0, got {lease_s}")
        self.lease_s = float(lease_s)
        self.lease: Lease | None = None
        self.grants = 0
        self._new_session = new_session or (lambda: secrets.token_hex(16))
        self._ended: collections.OrderedDict[str, tuple[float, str]] = collections.OrderedDict()

    def left_s(self, now: float) -> float:
        """Seconds until the lease ends if its owner sends nothing more (0 without a lease)."""
        if self.lease is None:
            return 0.0
        return max(0.0, self.lease_s - (now - self.lease.fed_s), self.lease.grace_until_s - now)

    def expire(self, now: float) -> bool:
        """End the lease if it was not fed for ``lease_s``; whether one ended."""
        lease = self.lease
        if lease is None or now - lease.fed_s <= self.lease_s or now < lease.grace_until_s:
            return False
        self._end(now, f"it expired: no accepted request with it for {self.lease_s:g} s")
        return True

    def acquire(self, nonce: str, now: float) -> tuple[str, bool]:
        """Grant (or renew) the lease for an ``acquire``: ``(session, renewed)``.

        Call :meth:`expire` first: an expired lease still counts as held here.

        Raises:
            Refusal: ``owned_by_another``: another nonce holds the lease (how long it lasts).
        """
        lease = self.lease
        if lease is not None:
            if hmac.compare_digest(lease.nonce, nonce):
                lease.fed_s = now
                return lease.session, True
            raise Refusal("owned_by_another", f"acquire: {self._owned(now)}")
        self.lease = Lease(self._new_session(), nonce, now)
        self.grants += 1
        return self.lease.session, False

    def check(self, op: str, session: str, now: float) -> None:
        """Refuse an actuating request unless ``session`` holds the lease (:meth:`expire` first).

        Raises:
            Refusal: ``owned_by_another`` while another session holds the lease, else
                ``no_lease``; the message says what became of ``session`` and when.
        """
        lease = self.lease
        if lease is not None and hmac.compare_digest(lease.session, session):
            return
        yours = self._describe(session, now)
        if lease is not None:
            raise Refusal("owned_by_another", f"{op}: {self._owned(now)}; {yours}")
        raise Refusal("no_lease", f"{op}: {yours}; send acquire first")

    def feed(self, session: str, now: float, grace_s: float = 0.0) -> None:
        """An accepted request with ``session`` came: the lease lasts from now, if it holds it.

        ``grace_s`` > 0 (a ``reset``): the lease also lasts that long for the first command;
        any other request ends the grace.
        """
        if self.lease is not None and hmac.compare_digest(self.lease.session, session):
            self.lease.fed_s = now
            self.lease.grace_until_s = now + grace_s if grace_s > 0 else 0.0

    def release(self, session: str, now: float) -> bool:
        """End the lease if ``session`` holds it; whether it did (else nothing changes)."""
        if self.lease is None or not hmac.compare_digest(self.lease.session, session):
            return False
        self._end(now, "released by its owner")
        return True

    def _end(self, now: float, why: str) -> None:
        assert self.lease is not None
        self._ended[self.lease.session] = (now, why)
        while len(self._ended) > ENDED_SESSIONS:
            self._ended.popitem(last=False)
        self.lease = None

    def _owned(self, now: float) -> str:
        return (
            f"the robot is owned by another controller; its lease ends in "
            f"{self.left_s(now):.2f} s unless it sends a request (or at once when it releases)"
        )

    def _describe(self, session: str, now: float) -> str:
        name = f"session {session[:8]}..."  # the characters were checked (SessionId)
        ended = self._ended.get(session)
        if ended is None:
            return f"{name} holds no lease (it was not issued by this twin, or ended long ago)"
        when, why = ended
        return f"{name} holds no lease ({why}, {now - when:.2f} s ago)"


class RobotServer:
    """Serve a :class:`~.fake.SimRobot` to ZeroMQ REQ (and DEALER) clients.

    Args:
        robot: The simulated robot.
        host: Interface to bind (default loopback only).
        port: TCP port; 0 picks a free one (see :attr:`address`).
        token: Shared secret every request must carry (None: none); any Unicode string.
        watchdog_s: The owner's lease: the joints are damped and the lease ends after this
            long without an accepted request from the owner.
        latency_s: Added to every reply (s), per connection (contract point 14).
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
        if not latency_s + jitter_s < watchdog_s:
            raise ValueError(
                f"latency_s + jitter_s = {latency_s + jitter_s:g} s must be below watchdog_s = "
                f"{watchdog_s:g} s (else the lease ends between a controller's requests)"
            )
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
        self._net = ZmtpServer(host, int(port), limits, reply_delay=self._reply_delay)
        self.host, self.port, self.address = host, self._net.port, self._net.address
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._serving = False
        #: Who owns the robot (its lease is the watchdog).
        self.owners = Ownership(self.watchdog_s)
        self.requests = 0
        self.rejected = 0
        self.dropped_replies = 0
        self.watchdog_trips = 0
        #: When the last accepted request of any peer arrived (time.monotonic()).
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
        owners = Ownership(self.watchdog_s)
        session = ""
        for rid, (op, args) in enumerate(warm_up_requests(shadow), start=1):
            if "session" in args:
                args = {**args, "session": session}
            msg = {"v": PROTOCOL_VERSION, "id": rid, "op": op, "args": args, "token": self.token}
            reply = self._reply([b"", msgpack.packb(msg, use_bin_type=True)], shadow, owners)
            msgpack.packb(reply, use_bin_type=True)
            if not reply["ok"]:
                error = reply["error"]
                raise RuntimeError(
                    f"the twin's warm-up request {op} failed ({error['type']}): {error['message']}"
                )
            if op == "acquire":
                session = reply["result"]["session"]
        shadow.run_damped(0.1)
        self.warmed_up = True

    # serving -----------------------------------------------------------------------------------
    def serve_forever(self) -> None:
        """Warm up if not done yet, then answer requests until :meth:`stop`; damp on the way out."""
        self.warm_up()
        self.last_accepted_s = self._run_clock = time.monotonic()
        poll_s = POLL_S
        self._serving = True
        try:
            self._net.serve(
                self.handle, self._tick, self._stop, refused=self._dropped, poll_s=poll_s
            )
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
        """The watchdog (the owner's lease), then real-time physics while damping."""
        robot = self.robot
        self._end_expired_lease(self.owners, robot, now)
        if robot.mode == "active" and self.owners.lease is None:  # active only while owned
            robot.damp()
            log.warning("the robot was active without an owner: joints damped")
        if robot.mode == "active":
            self._run_clock = now
            return
        self._run_clock = max(self._run_clock, now - MAX_CATCH_UP_S)
        n = robot.run_damped(now - self._run_clock)
        self._run_clock += n * robot.model.sim_dt_s

    def _end_expired_lease(self, owners: Ownership, robot: SimRobot, now: float) -> None:
        """End the lease if its owner was silent for ``watchdog_s``, damping the joints."""
        if not owners.expire(now):
            return
        was_active = robot.mode == "active"
        robot.damp()
        if robot is not self.robot:
            return
        if was_active:
            self.watchdog_trips += 1
            log.warning(
                "watchdog: no accepted request from the owner for %.2f s: lease ended, "
                "joints damped",
                self.watchdog_s,
            )
        else:
            log.info(
                "the owner's lease ended: no accepted request from it for %.2f s", self.watchdog_s
            )

    # one request -------------------------------------------------------------------------------
    def handle(self, frames: list[bytes]) -> tuple[list[bytes] | None, bool]:
        """Answer one request: ``([b"", reply], accepted)``; no reply when it is lost.

        The reply's link delay is drawn by the transport (:meth:`_reply_delay`) when it is
        sent; nothing here waits.
        """
        import msgpack

        self.requests += 1
        reply = self._reply(frames, self.robot, self.owners)
        if not reply["ok"] and reply["error"]["type"] != "internal":
            self.rejected += 1
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

    def _reply_delay(self) -> float:
        """The link delay of one reply: ``latency_s`` plus U(0, ``jitter_s``) (s)."""
        jitter = self.jitter_s * self._link_rng.random() if self.jitter_s else 0.0
        return self.latency_s + jitter

    def _reply(self, frames: list[bytes], robot: SimRobot, owners: Ownership) -> dict[str, Any]:
        """The reply to one request, executed on ``robot``; every way out but success damps.

        Refusals for ownership (contract point 11) are the exception: they leave the joints
        as the owner left them.
        """
        request: Request | None = None
        try:
            request = decode_request(frames, self.token)
            now = time.monotonic()
            result = self._execute(request, robot, owners, now)
            session = request.args.get("session")
            if session is not None:
                grace = FIRST_COMMAND_GRACE_S if request.op == "reset" else 0.0
                owners.feed(session, now, grace)
            if robot is self.robot:
                self.last_accepted_s = now
            return ok_reply(request.id, result)
        except Refusal as exc:
            if exc.kind not in OWNERSHIP_REFUSALS:
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

    def _execute(self, request: Request, robot: SimRobot, owners: Ownership, now: float) -> Any:
        """Run one validated request (ownership first, then the robot)."""
        op, args = request.op, request.args
        if op == "hello":
            return {
                "protocol": PROTOCOL_VERSION,
                "model": {**robot.model.to_dict(), "control_dt_s": robot.model.control_dt_s},
                "identity": {**robot.identity(), "twin": True},
            }
        self._end_expired_lease(owners, robot, now)
        if op == "ping":
            return {
                "time_s": float(robot.physics.data.time),
                "mode": robot.mode,
                "owned": owners.lease is not None,
                "lease_left_s": owners.left_s(now),
            }
        if op == "acquire":
            return self._acquire(args["nonce"], robot, owners, now)
        if op == "release":
            released = owners.release(args["session"], now)
            if released:
                robot.damp()
                if robot is self.robot:
                    log.info("the owner released the robot: joints damped")
            return {"released": released, "mode": robot.mode}
        if op in ACTUATING:
            owners.check(op, args["session"], now)
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

    def _acquire(
        self, nonce: str, robot: SimRobot, owners: Ownership, now: float
    ) -> dict[str, Any]:
        session, renewed = owners.acquire(nonce, now)
        if not renewed:
            robot.last_command = None  # a new owner's seq repeats nothing of the last owner's
            if robot is self.robot:
                log.info("a controller acquired the robot (lease %.2f s)", owners.lease_s)
        return {"session": session, "lease_s": owners.lease_s, "renewed": renewed}

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
