"""Network client of a robot twin (``twinloop serve robot``), protocol version 2.

ZeroMQ REQ with a timeout on every request; a request that times out closes its socket and
the next one opens a fresh connection ("lazy pirate", as the microscope's client). Replies are
capped at :data:`MAX_REPLY_BYTES` before they are received (ZMQ_MAXMSGSIZE) and validated
(version, id, shapes, finiteness) before use. Every failure is a one-line
:class:`~.protocol.RobotFault`. See :mod:`.protocol` for the wire format and the contract.

Ownership (contract points 9-13): a client draws a random nonce once; :meth:`RemoteRobot.acquire`
(which :meth:`~RemoteRobot.reset` sends first) makes it the robot's owner, or renews its
lease, and keeps the session the twin issued; every actuating request carries that session,
over whichever connection (a reconnect keeps it); :meth:`~RemoteRobot.close` releases it. A
refusal for ownership (``owned_by_another``, ``no_lease``) forgets the session: the client then
neither commands nor damps the robot until it acquires again. A client that never acquires
(a state reader, an operator with the e-stop) may use every open operation and disturbs
nothing when it closes.
"""

from __future__ import annotations

import logging
import math
import re
import secrets
from typing import Any

from twinloop.hardware.client import TwinClient
from twinloop.hardware.robot.protocol import (
    N_JOINTS,
    OWNERSHIP_REFUSALS,
    PROTOCOL_VERSION,
    Refusal,
    RobotFault,
    RobotModel,
    RobotState,
    SessionId,
)

log = logging.getLogger(__name__)

DEFAULT_ADDRESS = "tcp://127.0.0.1:5556"
#: Largest reply accepted (a state report is about 2 KiB).
MAX_REPLY_BYTES = 64 * 1024
#: How :class:`~twinloop.hardware.client.TwinClient` words a refusal: "... refused 'op' (kind): ".
_REFUSED = re.compile(r" refused '[a-z_]+' \(([a-z_]+)\): ")


class RemoteRobot(TwinClient):
    """A robot reached over the network through the joint-level protocol.

    Every operation may be sent again when its reply does not come (a lost reply): ``hello``,
    ``state``, ``damp``, ``estop``, ``clear_estop`` and ``release`` are idempotent, ``acquire``
    with the client's nonce answers the session it issued, ``reset`` with a seed starts the
    same episode again, and a ``command`` repeated with its ``seq`` is answered without being
    executed twice. Requests, resends and reply checks are
    :class:`~twinloop.hardware.client.TwinClient`'s; :meth:`request` raises :class:`RobotFault`.

    Args:
        address: ZeroMQ endpoint of the twin, e.g. ``"tcp://127.0.0.1:5556"``.
        token: Shared secret, if the twin requires one.
        timeout_s: Longest wait for any reply.
        retries: Resends of a request whose reply did not come within ``timeout_s``.
    """

    fault = RobotFault
    protocol_version = PROTOCOL_VERSION
    max_reply_bytes = MAX_REPLY_BYTES
    name = "robot"
    serve_command = "twinloop serve robot"
    no_reply_causes = "twin stopped, stalled, or the replies were lost"
    safe_op = "damp"  # what the backend sends on a fault; close() releases instead
    log = log

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        token: str | None = None,
        timeout_s: float = 1.0,
        retries: int = 2,
    ) -> None:
        """Nothing connects until :meth:`connect`."""
        super().__init__(address, token, timeout_s, retries)
        self.model: RobotModel | None = None
        #: Drawn once: an ``acquire`` with it renews this client's lease (contract point 9).
        self.nonce = secrets.token_hex(16)
        #: The session the twin issued to this client (None: it holds no lease it knows of).
        self.session: str | None = None
        #: The lease's length, as the twin said in its reply to ``acquire``.
        self.lease_s: float | None = None

    # the robot -----------------------------------------------------------------------------------
    def connect(self) -> RobotModel:
        """Say hello: check the protocol version and read the model."""
        hello = self.request("hello")
        if not isinstance(hello, dict) or hello.get("protocol") != PROTOCOL_VERSION:
            raise RobotFault(f"robot at {self.address} does not speak protocol v{PROTOCOL_VERSION}")
        self.model = RobotModel.from_dict(hello.get("model"))
        identity = hello.get("identity")
        self.server = dict(identity) if isinstance(identity, dict) else {}
        return self.model

    def state(self) -> RobotState:
        """The robot's state."""
        return RobotState.from_wire(self.request("state"))

    def request(
        self, op: str, timeout_s: float | None = None, retries: int | None = None, **args: Any
    ) -> Any:
        """As :meth:`TwinClient.request`; a refusal for ownership also forgets the session.

        Raises:
            RobotFault: Timeout, disconnect, a malformed reply, or a refusal.
        """
        try:
            return super().request(op, timeout_s, retries, **args)
        except RobotFault as exc:
            kind = _REFUSED.search(str(exc))
            if kind is not None and kind.group(1) in OWNERSHIP_REFUSALS:
                self.session = None
            raise

    def acquire(self) -> str:
        """Own the robot, or renew this client's lease; the session the twin issued.

        Raises:
            RobotFault: Another controller owns it (``owned_by_another``, with how long its
                lease lasts), or as :meth:`request`.
        """
        result = self.request("acquire", nonce=self.nonce)
        try:
            session = SessionId().check("session", result["session"])
            lease_s = float(result["lease_s"])
        except (Refusal, KeyError, TypeError, ValueError):
            raise RobotFault("malformed 'session' or 'lease_s' in the reply to 'acquire'") from None
        if not (math.isfinite(lease_s) and lease_s > 0):
            raise RobotFault(f"the robot's lease_s must be a positive number, got {lease_s!r}")
        self.session, self.lease_s = session, lease_s
        return session

    def release(self, timeout_s: float | None = None, retries: int | None = None) -> bool:
        """Give up ownership (the twin damps the joints); whether a lease was released.

        False when this client holds no session, or when the twin says that the session held
        no lease any more (it expired). The session is forgotten either way.

        Raises:
            RobotFault: As :meth:`request`.
        """
        if self.session is None:
            return False
        session, self.session = self.session, None
        result = self.request("release", timeout_s=timeout_s, retries=retries, session=session)
        if not isinstance(result, dict) or not isinstance(result.get("released"), bool):
            raise RobotFault("malformed reply to 'release': no boolean 'released'")
        return result["released"]

    def _session(self, op: str) -> str:
        if self.session is None:
            raise RobotFault(
                f"{op!r} needs a lease on the robot at {self.address} and this client holds "
                "none (never acquired, released, or refused for ownership): call reset() or "
                "acquire() first"
            )
        return self.session

    def reset(self, seed: int | None) -> RobotState:
        """Acquire (or renew) the lease, then a new episode (-1 or None: the twin draws a seed)."""
        self.acquire()
        seed = -1 if seed is None else int(seed)
        return RobotState.from_wire(
            self.request("reset", seed=seed, session=self._session("reset"))
        )

    def command(
        self, seq: int, q_rad: list[float], kp: list[float], kd: list[float]
    ) -> tuple[RobotState, dict[str, list[float]], dict[str, list[bool]], bool]:
        """Send joint targets with gains; ``(state, applied, clipped, repeat)``.

        Raises:
            RobotFault: As :meth:`request`, or the reply's ``applied``/``clipped`` are malformed.
        """
        session = self._session("command")
        result = self.request("command", seq=int(seq), q_rad=q_rad, kp=kp, kd=kd, session=session)
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
        """Zero-torque damping, the safe state (open to every client: no lease needed)."""
        return RobotState.from_wire(self.request("damp", timeout_s=timeout_s, retries=retries))

    def estop(self) -> RobotState:
        """Latch the e-stop (open to every client: no lease needed)."""
        return RobotState.from_wire(self.request("estop"))

    def clear_estop(self) -> RobotState:
        """Release the e-stop latch (the owner only; the robot stays damped until a command)."""
        session = self._session("clear_estop")
        return RobotState.from_wire(self.request("clear_estop", session=session))

    def close(self) -> None:
        """Release the lease if this client holds one (best effort, short timeout); close.

        Releasing damps the joints; a client that holds no lease leaves the robot as it is
        (a state reader or an operator does not disturb the controller). Where the twin
        cannot be reached, its watchdog ends the lease and damps the joints.
        """
        try:
            self.release(timeout_s=min(self.timeout_s, 0.5), retries=0)
        except RobotFault as exc:
            log.warning("could not release the robot at %s while closing: %s", self.address, exc)
        finally:
            self._drop_socket()
            if self._ctx is not None:
                self._ctx.term()
                self._ctx = None
