"""Network client of a robot twin (``twinloop serve robot``), protocol version 1.

ZeroMQ REQ with a timeout on every request; a request that times out closes its socket and
the next one opens a fresh connection ("lazy pirate", as the microscope's client). Replies are
capped at :data:`MAX_REPLY_BYTES` before they are received (ZMQ_MAXMSGSIZE) and validated
(version, id, shapes, finiteness) before use. Every failure is a one-line
:class:`~.protocol.RobotFault`. See :mod:`.protocol` for the wire format and the contract.
"""

from __future__ import annotations

import logging

from twinloop.hardware.client import TwinClient
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


class RemoteRobot(TwinClient):
    """A robot reached over the network through the joint-level protocol.

    Every operation may be sent again when its reply does not come (a lost reply): ``hello``,
    ``state``, ``damp``, ``estop`` and ``clear_estop`` are idempotent, ``reset`` with a seed
    starts the same episode again, and a ``command`` repeated with its ``seq`` is answered
    without being executed twice. Requests, resends and reply checks are
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
    safe_op = "damp"
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

    def _greeted(self) -> bool:
        return self.model is not None

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
