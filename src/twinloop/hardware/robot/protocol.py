"""The joint-level robot interface, its wire protocol, and the robot's terms of the twin contract.

What twinloop needs from a legged robot's low-level interface, modelled on what real stacks
expose (Unitree's low-level ``LowCmd``/``LowState``: per motor a position target with its own
Kp and Kd, joint positions and velocities, an IMU, foot contacts; a damping mode; an e-stop):
a robot answers ``hello`` with its model facts, reports its state, takes joint position
targets with gains and says what it applied after clipping, damps its joints on request, on
an e-stop, on every refused request and when commands stop, and (the twin only) starts a new
episode from a seed. Implementations: the simulated robot (:mod:`.fake`), served by
``twinloop serve robot`` (:mod:`.server`), and its network client (:mod:`.remote`), which
:mod:`.backend` turns into the ``robot`` backend of ``twinloop/QuadrupedVelocity-v0``.

Wire protocol, version 2: the microscope's transport and envelope, unchanged (ZeroMQ
request-reply over TCP, ``[empty, msgpack map]``; never pickle; see
:mod:`twinloop.hardware.microscope.protocol`), checked by the same code
(:mod:`twinloop.hardware.wire`)::

    request  {"v": 2, "id": <int>, "op": <str>, "args": {<str>: <value>}, "token": <str|nil>}
    response {"v": 2, "id": <same int>, "ok": true,  "result": <value>}
           | {"v": 2, "id": <same int|nil>, "ok": false, "error": {"type": <str>, "message": <str>}}

Version 2 added ownership (points 9-13 below): ``acquire`` and ``release``, and a ``session``
argument on every actuating operation, which a version-1 client cannot send; such a client
is refused with ``version`` rather than with a malformed ``command``.

Operations (:data:`OPERATIONS`), by who may send them (point 10):

* open to every peer: ``hello`` (protocol, model facts: joint names, position, velocity and
  torque limits, gain limits, damping gain, control and physics periods, watchdog (the
  lease); identity), ``ping`` (time, mode, and whether a controller owns the robot:
  ``owned``, ``lease_left_s``), ``state``; and, for safety, ``damp`` and ``estop``;
* ownership: ``acquire`` {nonce} (result ``{"session", "lease_s", "renewed"}``) and
  ``release`` {session} (result ``{"released", "mode"}``);
* the owner's only: ``command`` {seq, q_rad, kp, kd, session}, ``clear_estop`` {session},
  ``reset`` {seed, session} (twin only: a new episode; -1 draws fresh entropy).

``seed`` is an integer in [-1, 2^63), ``seq`` an integer in [0, 2^63) (booleans are not
integers); ``q_rad``, ``kp`` and ``kd`` are arrays of exactly one finite number per joint
(:data:`N_JOINTS`), gains >= 0; ``session`` and ``nonce`` are strings of 16 to 64
characters from ``A-Z a-z 0-9 _ -`` (:data:`SESSION_CHARS`). Request keys and argument
names are exactly those listed.

A state (the result of ``state``, ``reset``, ``damp``, ``estop``, ``clear_estop``, and inside
a ``command``'s result) is ``{"time_s", "mode", "seq", "q_rad", "dq_rad_per_s", "torque_nm",
"imu": {"quat_wxyz", "gyro_rad_per_s", "accel_m_per_s2"}, "feet_contact", "trunk_contact",
"estimate": {"lin_vel_m_per_s", "height_m"}}``: joint values in joint order, the IMU in the
trunk frame (gyro: angular velocity; accel: specific force over the last control period),
contacts as 0/1, and the state estimator's trunk velocity (trunk frame) and height, which a
real robot estimates and the twin reports exactly. ``mode`` is ``active`` (PD on the last
command's targets and gains), ``damping`` (zero-torque damping: Kp 0, Kd = the model's
``damping_kd``) or ``estop`` (damping, latched). A ``command``'s result adds ``applied``:
``{"q_rad", "kp", "kd"}`` after clipping, ``clipped``: per joint and per quantity (``q_rad``
by position or velocity limit, ``kp``, ``kd``, ``torque_nm``: the torque was at its limit in
the last physics step), and ``repeat`` (true when ``seq`` repeated the last executed
command: its reply again, nothing executed twice).

Clipping, in this order: ``q_rad`` to the joint's position range, then to within velocity
limit x control period of the previous target (a target moves no faster than the joint can);
``kp`` and ``kd`` to the model's ``kp_max``/``kd_max``; the torque to the motor's limit.
A ``command`` executes one control period (``decimation`` physics steps of PD at the physics
rate): the twin is lock-stepped to its controller while active, so a run is reproducible and
equals the ``sim`` backend when the hidden effects are off. In ``damping`` and ``estop`` it
runs in real time at the physics rate, as a robot does, and sinks under damping. A command
after damping re-engages PD; after an e-stop, only ``clear_estop`` (and then a command) does.

Error types (:data:`REFUSALS`): ``bad_request``, ``version``, ``unauthorized``,
``unsupported`` as the microscope's; ``estop`` (a ``command`` or ``reset`` while the e-stop
is latched); ``owned_by_another`` (another controller holds the lease: the message says how
long until it ends if its owner stays silent) and ``no_lease`` (the session holds no lease:
released, expired or never issued; the message says which and when); ``internal`` is a
fault of the twin itself.

The contract. A robot twin keeps every guarantee of the contract in
:mod:`twinloop.hardware.microscope.protocol` (numbered the same), with damping as its safe
state:

1. One request, one reply, to its sender (the shared transport, :mod:`twinloop.hardware.zmtp`);
   except that a twin configured with packet loss drops a reply now and then on purpose
   (the request was executed: a ``command`` repeated with the same ``seq`` gets that reply).
2. One validation path: :func:`decode_request` checks every field of every message before
   anything executes; clipping then happens in the robot and is reported, never silent.
3. A refusal names the request (its id whenever one can be read) and logs one line.
4. Every refusal leaves the robot safe: whatever the reason, nothing of the request executes
   and the joints are damped before the reply goes out (a connection closed for breaking the
   transport or a bound damps them too). The one exception is point 11.
5. Only accepted requests count: the watchdog is the owner's lease (point 12), fed by the
   owner's accepted requests only; a connection's idle timeout is fed by the valid,
   authorized requests on it.
6. Bounded resources per peer, loopback by default (:mod:`twinloop.hardware.zmtp`).
7. Secrets: the token is compared in constant time; ``--token-file``/``$TWINLOOP_TOKEN``.
8. The client is bounded too: :class:`~.remote.RemoteRobot` caps the reply size, validates
   every reply (shapes, finiteness, ids), and the backend damps the robot on any fault.
9. **One controller at a time.** ``acquire`` makes its sender the robot's owner when nobody
   owns it, and answers a ``session``: a random id issued by the twin (128 bits, hex) that
   the owner sends with every actuating request. While a lease is held, ``acquire`` from
   anyone else is refused ``owned_by_another``. The ``nonce`` of ``acquire`` is a random
   string that a client draws once: an ``acquire`` with the owner's nonce renews the lease
   and answers the same session (``renewed``), so an ``acquire`` resent after its reply was
   lost gets the session that was issued. A new owner starts with no last command (a
   ``command`` repeating the previous owner's ``seq`` is not a repeat).
10. **Who may do what.** ``hello``, ``ping`` and ``state`` are open to every peer (a state
    reader needs no lease). ``damp`` and ``estop`` are accepted from every peer, safety
    first: whoever can reach a robot can stop it, as anyone near a robot may press its
    e-stop button; they do not feed the lease. ``command``, ``reset`` and ``clear_estop``
    (which make the robot move, or may let it) are executed for the owner's session only.
11. **Refusals by ownership do not damp.** A well-formed actuating request whose session is
    not the owner's (a wrong, forged or stale id) is refused ``owned_by_another`` while
    another session holds the lease, ``no_lease`` when none does; nothing of it executes
    and, unlike every other refusal, the joints are left as the owner left them: the twin
    knows that this sender is not the controller, and damping for it would let any peer
    stall the controller. A malformed request still damps (point 4): its sender cannot be
    known.
12. **The lease.** It lasts ``watchdog_s`` (the model's ``watchdog_s``, also ``lease_s`` in
    the reply to ``acquire``) after each accepted request of the owner: one that carries its
    session (``command``, ``reset``, ``clear_estop``) or its nonce (``acquire``); refused
    requests, open ones and
    other peers' requests do not feed it. After ``reset`` the robot stands holding its pose
    and the lease lasts at least 10 s for the first ``command`` (a controller getting ready:
    kernels to load, a capture to open); from the first command on, ``watchdog_s``. It ends
    on ``release`` (the joints are damped) or
    when it is not fed for ``watchdog_s`` (the watchdog: the joints are damped, and the
    session is refused ``no_lease`` from then on; its owner acquires again, as a backend
    does on ``reset``). The robot is ``active`` only while a lease is held. ``release`` is
    idempotent: with a session that holds no lease it changes nothing and answers
    ``released: false`` (a resent release, or one after the lease expired).
13. **A session is not a connection.** Ownership keys on the session alone, never on the
    TCP connection: a client that reconnects (a timed-out request opens a fresh socket; the
    twin closes idle connections) keeps its session and its lease, and a closed connection
    ends no lease (a client's ``close`` sends ``release``; one that vanishes leaves it to the
    watchdog). Sessions coordinate
    controllers that share the token; like the token they cross the wire in clear, so they
    are no defence against a peer that can read the traffic.
14. **Link effects are per reply.** The configured latency and jitter hold each reply on its
    own connection until it is due (arrival + ``latency_s`` + U(0, ``jitter_s``)), without
    holding the serving loop: other peers' requests are executed and answered meanwhile,
    and a peer's reply never leaves before its delay. The request itself executes on
    arrival (the owner's plant stays lock-stepped to its commands). A connection with a held
    reply is not read until it is sent (one request, one reply). Packet loss drops a reply
    whole (point 1), whatever its delay.

Robot specifics: the e-stop is latched until ``clear_estop``; the hidden physical
parameters of the twin (domain randomisation, action delay, pushes) are drawn from a seed
that the client never sees and are never reported.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import numpy as np

from twinloop.core.backend import BackendFault
from twinloop.hardware import wire
from twinloop.hardware.wire import (
    MAX_FRAMES,
    MAX_ID,
    MAX_REQUEST_BYTES,
    REQUEST_KEYS,
    Arg,
    Refusal,
    Request,
    peek_id,
)

__all__ = [
    "ACTUATING",
    "MAX_FRAMES",
    "MAX_ID",
    "MAX_REQUEST_BYTES",
    "N_JOINTS",
    "OPERATIONS",
    "OWNERSHIP_REFUSALS",
    "PROTOCOL_VERSION",
    "REFUSALS",
    "REQUEST_KEYS",
    "SESSION_CHARS",
    "Arg",
    "Refusal",
    "Request",
    "RobotFault",
    "RobotModel",
    "RobotState",
    "SessionId",
    "decode_request",
    "error_reply",
    "ok_reply",
    "peek_id",
]

PROTOCOL_VERSION = 2
#: Joints of the robot (Go1: FR, FL, RR, RL legs x hip, thigh, calf).
N_JOINTS = 12
#: Refusals for a sender that does not own the robot; they do not damp it (contract point 11).
OWNERSHIP_REFUSALS = ("owned_by_another", "no_lease")
#: Error types a robot twin answers to what a client sent (``internal`` is its own fault).
REFUSALS = ("bad_request", "version", "unauthorized", "unsupported", "estop", *OWNERSHIP_REFUSALS)
#: Operations executed for the owner's session only (contract point 10).
ACTUATING = frozenset({"command", "reset", "clear_estop"})
#: The characters of a session id or a nonce.
SESSION_CHARS = "A-Z a-z 0-9 _ -"
MODES = ("active", "damping", "estop")


@dataclasses.dataclass(frozen=True)
class SessionId:
    """A session id or an ``acquire`` nonce: ``min_chars`` to ``max_chars`` of ``[A-Za-z0-9_-]``.

    Restricted to characters that a message may quote as they are, and long enough that two
    clients that draw one at random never meet (a session is 32 hex digits).

    Attributes:
        min_chars: The shortest id admitted.
        max_chars: The longest id admitted.
    """

    min_chars: int = 16
    max_chars: int = 64

    def check(self, where: str, value: Any) -> str:
        """The id, if it is a string of the right length and characters.

        Raises:
            Refusal: ``bad_request`` otherwise, naming the value (bounded) and the rule.
        """
        if not isinstance(value, str):
            raise Refusal("bad_request", f"{where} must be a string, got {wire.show(value)}")
        if not self.min_chars <= len(value) <= self.max_chars:
            raise Refusal(
                "bad_request",
                f"{where} has {len(value)} characters; it must have "
                f"{self.min_chars} to {self.max_chars}",
            )
        if not _SESSION_RE.fullmatch(value):
            raise Refusal(
                "bad_request",
                f"{where} = {wire.show(value)} has characters outside {SESSION_CHARS}",
            )
        return value


_SESSION_RE = re.compile(r"[A-Za-z0-9_-]+")
_JOINTS = Arg(float, size=N_JOINTS)
_GAINS = Arg(float, 0.0, math.inf, N_JOINTS)
_SESSION = SessionId()
#: Operations of protocol version 2 and the arguments each takes.
OPERATIONS: dict[str, dict[str, Any]] = {
    "hello": {},
    "ping": {},
    "state": {},
    "acquire": {"nonce": _SESSION},
    "release": {"session": _SESSION},
    "command": {
        "seq": Arg(int, 0, MAX_ID),
        "q_rad": _JOINTS,
        "kp": _GAINS,
        "kd": _GAINS,
        "session": _SESSION,
    },
    "damp": {},
    "estop": {},
    "clear_estop": {"session": _SESSION},
    "reset": {"seed": Arg(int, -1, MAX_ID), "session": _SESSION},
}


def ok_reply(rid: int, result: Any) -> dict[str, Any]:
    """The reply to an executed request, in this protocol's version."""
    return wire.ok_reply(rid, result, version=PROTOCOL_VERSION)


def error_reply(rid: int | None, kind: str, message: str) -> dict[str, Any]:
    """The reply to a refused (or failed) request, with its id when one was read."""
    return wire.error_reply(rid, kind, message, version=PROTOCOL_VERSION)


def decode_request(frames: list[bytes], token: str | None) -> Request:
    """Validate one request message, every field of it; the only way a request is read.

    The envelope and every argument are checked by :func:`twinloop.hardware.wire.decode_request`
    against :data:`OPERATIONS`; the robot clips to its model's limits when it executes.

    Args:
        frames: The message's frames after any routing id (a valid one: ``[b"", map]``).
        token: The secret the twin requires (None: none).

    Raises:
        Refusal: Malformed, of another version, or unauthorized; ``rid`` is the request's id
            whenever one can be read.
    """
    return wire.decode_request(frames, token, operations=OPERATIONS, version=PROTOCOL_VERSION)


class RobotFault(BackendFault):
    """The robot or the link to it failed (timeout, disconnect, e-stop, an error in the twin)."""


@dataclasses.dataclass(frozen=True)
class RobotModel:
    """What a robot says about itself in ``hello`` (the limits it clips to, its rates).

    Attributes:
        joint_names: One name per joint, in joint order.
        q_min_rad: Lower position limit per joint.
        q_max_rad: Upper position limit per joint.
        velocity_limit_rad_per_s: Joint speed limit per joint.
        torque_limit_nm: Motor torque limit per joint.
        kp_max: Largest proportional gain (N m/rad).
        kd_max: Largest derivative gain (N m s/rad).
        damping_kd: Derivative gain of the damping mode (N m s/rad).
        sim_dt_s: Physics (PD) period.
        decimation: Physics periods per command.
        watchdog_s: Damping after this long without an accepted request.
    """

    joint_names: tuple[str, ...]
    q_min_rad: tuple[float, ...]
    q_max_rad: tuple[float, ...]
    velocity_limit_rad_per_s: tuple[float, ...]
    torque_limit_nm: tuple[float, ...]
    kp_max: float
    kd_max: float
    damping_kd: float
    sim_dt_s: float
    decimation: int
    watchdog_s: float

    @property
    def control_dt_s(self) -> float:
        """The period of one command (s)."""
        return self.sim_dt_s * self.decimation

    def to_dict(self) -> dict[str, Any]:
        """Plain data for the wire."""
        out = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    @classmethod
    def from_dict(cls, data: Any) -> RobotModel:
        """Inverse of :meth:`to_dict`, validating every field.

        Raises:
            RobotFault: A field is missing, of the wrong type or length, or not finite.
        """
        if not isinstance(data, dict):
            raise RobotFault(f"robot model must be a map, got {type(data).__name__}")
        try:
            names = tuple(str(n) for n in data["joint_names"])
            arrays = {
                k: tuple(float(x) for x in data[k])
                for k in ("q_min_rad", "q_max_rad", "velocity_limit_rad_per_s", "torque_limit_nm")
            }
            scalars = {
                k: float(data[k]) for k in ("kp_max", "kd_max", "damping_kd", "sim_dt_s")
            } | {"watchdog_s": float(data["watchdog_s"])}
            decimation = data["decimation"]
        except (KeyError, TypeError, ValueError) as exc:
            raise RobotFault(f"malformed robot model from the robot: {exc!r}") from None
        if len(names) != N_JOINTS or any(len(v) != N_JOINTS for v in arrays.values()):
            raise RobotFault(f"robot model must describe {N_JOINTS} joints")
        values = [*scalars.values(), *(x for v in arrays.values() for x in v)]
        if not all(math.isfinite(x) for x in values) or not isinstance(decimation, int):
            raise RobotFault("robot model has non-finite numbers or a non-integer decimation")
        return cls(joint_names=names, decimation=decimation, **arrays, **scalars)


@dataclasses.dataclass(frozen=True)
class RobotState:
    """One validated state report (see the module docstring for the fields)."""

    time_s: float
    mode: str
    seq: int
    q_rad: np.ndarray
    dq_rad_per_s: np.ndarray
    torque_nm: np.ndarray
    quat_wxyz: np.ndarray
    gyro_rad_per_s: np.ndarray
    accel_m_per_s2: np.ndarray
    feet_contact: np.ndarray
    trunk_contact: float
    lin_vel_m_per_s: np.ndarray
    height_m: float

    @classmethod
    def from_wire(cls, data: Any) -> RobotState:
        """Decode and validate a state received from a robot.

        Raises:
            RobotFault: Anything missing, of the wrong shape, or not finite.
        """
        try:
            imu, est = data["imu"], data["estimate"]
            out = cls(
                time_s=_num(data["time_s"]),
                mode=data["mode"] if data["mode"] in MODES else _bad("mode", data["mode"]),
                seq=int(data["seq"]),
                q_rad=_vec(data["q_rad"], N_JOINTS),
                dq_rad_per_s=_vec(data["dq_rad_per_s"], N_JOINTS),
                torque_nm=_vec(data["torque_nm"], N_JOINTS),
                quat_wxyz=_vec(imu["quat_wxyz"], 4),
                gyro_rad_per_s=_vec(imu["gyro_rad_per_s"], 3),
                accel_m_per_s2=_vec(imu["accel_m_per_s2"], 3),
                feet_contact=_vec(data["feet_contact"], 4),
                trunk_contact=_num(data["trunk_contact"]),
                lin_vel_m_per_s=_vec(est["lin_vel_m_per_s"], 3),
                height_m=_num(est["height_m"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise RobotFault(f"malformed state from the robot: {exc}") from None
        return out

    def gravity(self) -> np.ndarray:
        """The gravity direction in the trunk frame, from the IMU's orientation."""
        w, x, y, z = self.quat_wxyz / np.linalg.norm(self.quat_wxyz)
        # -(third row of the rotation matrix): R^T (0, 0, -1)
        return -np.array([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)])


def _show(value: Any) -> str:
    """A short description of a value in a robot's reply (a list or map by its length)."""
    text = repr(value) if not isinstance(value, list | dict) else f"{len(value)} items"
    return f"{type(value).__name__} {text[:40]}"


def _bad(name: str, value: Any) -> Any:
    raise ValueError(f"{name} = {_show(value)} is not valid")


def _num(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"expected a finite number, got {_show(value)}")
    return float(value)


def _vec(value: Any, n: int) -> np.ndarray:
    if not isinstance(value, list) or len(value) != n:
        raise ValueError(f"expected {n} numbers, got {_show(value)}")
    return np.array([_num(v) for v in value], dtype=np.float64)
