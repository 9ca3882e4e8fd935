"""Network client of a robot twin (``twinloop serve robot``), protocol version 1.

ZeroMQ REQ with a timeout on every request; a request that times out closes its socket and
the next one opens a fresh connection ("lazy pirate", as the microscope's client). Replies are
capped at :data:`MAX_REPLY_BYTES` before they are received (ZMQ_MAXMSGSIZE) and validated
(version, id, shapes, finiteness) before use. Every failure is a one-line
:class:`~.protocol.RobotFault`. See :mod:`.protocol` for the wire format and the contract.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any

from twinloop.hardware.ready import slow_answer_hint
from twinloop.hardware.robot.protocol import (
    N_JOINTS,
    PROTOCOL_VERSION,
    RobotFault,
    RobotModel,
    RobotState,
)

log = logging.getLogger(__name__)

DEFAULT_ADDRESS = "tcp://127.0.0.1:5556"
#: Largest reply accepted (a state report is about 2 KiB).
MAX_REPLY_BYTES = 64 * 1024


class _NoReply(Exception):
    """No reply within the timeout (the socket was dropped; the request may be sent again)."""

    def __init__(self, wait_s: float) -> None:
        super().__init__(f"no reply within {wait_s:g} s")
        self.wait_s = wait_s


class RemoteRobot:
    """A robot reached over the network through the joint-level protocol.

    Every operation may be sent again when its reply does not come (a lost reply): ``hello``,
    ``state``, ``damp``, ``estop`` and ``clear_estop`` are idempotent, ``reset`` with a seed
    starts the same episode again, and a ``command`` repeated with its ``seq`` is answered
    without being executed twice.

    Args:
        address: ZeroMQ endpoint of the twin, e.g. ``"tcp://127.0.0.1:5556"``.
        token: Shared secret, if the twin requires one.
        timeout_s: Longest wait for any reply.
        retries: Resends of a request whose reply did not come within ``timeout_s``.
    """

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        token: str | None = None,
        timeout_s: float = 1.0,
        retries: int = 2,
    ) -> None:
        """Nothing connects until :meth:`connect`."""
        if not isinstance(address, str) or "://" not in address:
            raise ValueError(f"address must look like 'tcp://host:port', got {address!r}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        if not 0 <= int(retries) <= 10:
            raise ValueError(f"retries must be in [0, 10], got {retries}")
        self.address, self.token, self.timeout_s = address, token, float(timeout_s)
        self.retries = int(retries)
        self.resent = 0
        self.model: RobotModel | None = None
        self.server: dict[str, Any] = {}
        self._ids = itertools.count(1)
        self._ctx: Any = None
        self._sock: Any = None

    # transport ---------------------------------------------------------------------------------
    def _open(self) -> None:
        import zmq

        if self._ctx is None:
            self._ctx = zmq.Context()
        sock = self._ctx.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_REPLY_BYTES)
        sock.connect(self.address)
        self._sock = sock

    def _drop_socket(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None

    def request(
        self, op: str, timeout_s: float | None = None, retries: int | None = None, **args: Any
    ) -> Any:
        """Send one request (again, up to ``retries`` times, while no reply comes); its result.

        Raises:
            RobotFault: Timeout, disconnect, a malformed reply, or a refusal (its type and
                message in one line).
        """
        tries = 1 + (self.retries if retries is None else retries)
        for attempt in range(tries):
            try:
                return self._request_once(op, timeout_s, args)
            except _NoReply as exc:
                if attempt + 1 == tries:
                    raise RobotFault(
                        f"robot at {self.address} did not answer {op!r} within "
                        f"{exc.wait_s:g} s ({tries} tries: twin stopped, stalled, or the "
                        "replies were lost). "
                        + slow_answer_hint("twinloop serve robot", "timeout_s", self.timeout_s)
                    ) from None
                self.resent += 1
                log.info("no reply to %r within %g s: sending it again", op, exc.wait_s)
        raise AssertionError("unreachable")

    def _request_once(self, op: str, timeout_s: float | None, args: dict[str, Any]) -> Any:
        import msgpack
        import zmq

        if self._sock is None:
            self._open()
        wait_ms = int(1000 * (timeout_s or self.timeout_s))
        self._sock.setsockopt(zmq.RCVTIMEO, wait_ms)
        self._sock.setsockopt(zmq.SNDTIMEO, wait_ms)
        rid = next(self._ids)
        msg = {"v": PROTOCOL_VERSION, "id": rid, "op": op, "args": args, "token": self.token}
        try:
            self._sock.send(msgpack.packb(msg, use_bin_type=True))
            raw = self._sock.recv()
        except zmq.Again:
            self._drop_socket()
            raise _NoReply(wait_ms / 1000) from None
        except zmq.ZMQError as exc:
            self._drop_socket()
            raise RobotFault(
                f"link to the robot at {self.address} failed during {op!r}: {exc}"
            ) from None
        try:
            reply = msgpack.unpackb(raw, raw=False)
        except Exception:
            raise RobotFault(f"undecodable reply to {op!r} from {self.address}") from None
        if not isinstance(reply, dict) or reply.get("v") != PROTOCOL_VERSION:
            raise RobotFault(f"reply to {op!r} from {self.address} is not protocol v1")
        ok = reply.get("ok")
        if reply.get("id") != rid and not (ok is False and reply.get("id") is None):
            raise RobotFault(f"reply id {reply.get('id')!r} does not match request {rid}")
        if ok is True:
            return reply.get("result")
        error = reply.get("error") if isinstance(reply.get("error"), dict) else {}
        kind = str(error.get("type", "internal"))[:40]
        text = " ".join(str(error.get("message", "unknown error")).split())[:300]
        raise RobotFault(f"robot at {self.address} refused {op!r} ({kind}): {text}")

    # the robot -----------------------------------------------------------------------------------
    def connect(self) -> RobotModel:
        """Say hello: check the protocol version and read the model."""
        hello = self.request("hello")
        if not isinstance(hello, dict) or hello.get("protocol") != PROTOCOL_VERSION:
            raise RobotFault(f"robot at {self.address} does not speak protocol v1")
        self.model = RobotModel.from_dict(hello.get("model"))
        identity = hello.get("identity")
        self.server = dict(identity) if isinstance(identity, dict) else {}
        return self.model

    def state(self) -> RobotState:
        """The robot's state."""
        return RobotState.from_wire(self.request("state"))

    def reset(self, seed: int | None) -> RobotState:
        """A new episode on the twin (-1 or None: the twin draws the seed)."""
        return RobotState.from_wire(self.request("reset", seed=-1 if seed is None else int(seed)))

    def command(
        self, seq: int, q_rad: list[float], kp: list[float], kd: list[float]
    ) -> tuple[RobotState, dict[str, list[float]], dict[str, list[bool]], bool]:
        """Send joint targets with gains; ``(state, applied, clipped, repeat)``.

        Raises:
            RobotFault: As :meth:`request`, or the reply's ``applied``/``clipped`` are malformed.
        """
        result = self.request("command", seq=int(seq), q_rad=q_rad, kp=kp, kd=kd)
        if not isinstance(result, dict):
            raise RobotFault(f"reply to 'command' is not a map: {type(result).__name__}")
        state = RobotState.from_wire(result.get("state"))
        applied, clipped = result.get("applied"), result.get("clipped")
        try:
            applied = {k: [float(x) for x in applied[k]] for k in ("q_rad", "kp", "kd")}
            clipped = {k: [bool(x) for x in v] for k, v in clipped.items()}
        except (KeyError, TypeError, ValueError, AttributeError):
            raise RobotFault("malformed 'applied' or 'clipped' in the reply to 'command'") from None
        if any(len(v) != N_JOINTS for v in (*applied.values(), *clipped.values())):
            raise RobotFault(f"'applied'/'clipped' must have {N_JOINTS} values per quantity")
        if state.seq != seq:
            raise RobotFault(f"the robot executed command {state.seq}, not {seq}")
        return state, applied, clipped, bool(result.get("repeat"))

    def damp(self, timeout_s: float | None = None, retries: int | None = None) -> RobotState:
        """Zero-torque damping (the safe state)."""
        return RobotState.from_wire(self.request("damp", timeout_s=timeout_s, retries=retries))

    def estop(self) -> RobotState:
        """Latch the e-stop."""
        return RobotState.from_wire(self.request("estop"))

    def clear_estop(self) -> RobotState:
        """Release the e-stop latch (the robot stays damped until the next command)."""
        return RobotState.from_wire(self.request("clear_estop"))

    def close(self) -> None:
        """Damp the joints (best effort, short timeout) and close the socket."""
        try:
            if self._sock is not None or self.model is not None:
                self.request("damp", timeout_s=min(self.timeout_s, 0.5), retries=0)
        except RobotFault as exc:
            log.warning("could not damp the robot at %s while closing: %s", self.address, exc)
        finally:
            self._drop_socket()
            if self._ctx is not None:
                self._ctx.term()
                self._ctx = None
