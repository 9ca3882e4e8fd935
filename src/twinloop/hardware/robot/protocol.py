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

Wire protocol, version 1: the microscope's transport and envelope, unchanged (ZeroMQ
request-reply over TCP, ``[empty, msgpack map]``; never pickle; see
:mod:`twinloop.hardware.microscope.protocol`), checked by the same code
(:mod:`twinloop.hardware.wire`)::

    request  {"v": 1, "id": <int>, "op": <str>, "args": {<str>: <value>}, "token": <str|nil>}
    response {"v": 1, "id": <same int>, "ok": true,  "result": <value>}
           | {"v": 1, "id": <same int|nil>, "ok": false, "error": {"type": <str>, "message": <str>}}

Operations (:data:`OPERATIONS`): ``hello`` (protocol, model facts: joint names, position,
velocity and torque limits, gain limits, damping gain, control and physics periods, watchdog;
identity), ``ping``, ``state``, ``command`` {seq, q_rad, kp, kd}, ``damp``, ``estop``,
``clear_estop``, ``reset`` {seed} (twin only: a new episode; -1 draws fresh entropy).
``seed`` is an integer in [-1, 2^63), ``seq`` an integer in [0, 2^63) (booleans are not
integers); ``q_rad``, ``kp`` and ``kd`` are arrays of exactly one finite number per joint
(:data:`N_JOINTS`), gains >= 0. Request keys and argument names are exactly those listed.

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
is latched); ``internal`` is a fault of the twin itself.

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
   transport or a bound damps them too).
5. Only accepted requests count: the watchdog (damping when no accepted request came for
   ``watchdog_s``) and the idle timeout are fed by valid, authorized requests only.
6. Bounded resources per peer, loopback by default (:mod:`twinloop.hardware.zmtp`).
7. Secrets: the token is compared in constant time; ``--token-file``/``$TWINLOOP_TOKEN``.
8. The client is bounded too: :class:`~.remote.RemoteRobot` caps the reply size, validates
   every reply (shapes, finiteness, ids), and the backend damps the robot on any fault.

Robot specifics: the e-stop is latched until ``clear_estop``; the hidden physical
parameters of the twin (domain randomisation, action delay, pushes) are drawn from a seed
that the client never sees and are never reported.
"""

from __future__ import annotations

import dataclasses
import math
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
    error_reply,
    ok_reply,
    peek_id,
)

__all__ = [
    "MAX_FRAMES",
    "MAX_ID",
    "MAX_REQUEST_BYTES",
    "N_JOINTS",
    "OPERATIONS",
    "PROTOCOL_VERSION",
    "REFUSALS",
    "REQUEST_KEYS",
    "Arg",
    "Refusal",
    "Request",
    "RobotFault",
    "RobotModel",
    "RobotState",
    "decode_request",
    "error_reply",
    "ok_reply",
    "peek_id",
]

PROTOCOL_VERSION = 1
#: Joints of the robot (Go1: FR, FL, RR, RL legs x hip, thigh, calf).
N_JOINTS = 12
#: Error types a robot twin answers to what a client sent (``internal`` is its own fault).
REFUSALS = ("bad_request", "version", "unauthorized", "unsupported", "estop")
MODES = ("active", "damping", "estop")

_JOINTS = Arg(float, size=N_JOINTS)
_GAINS = Arg(float, 0.0, math.inf, N_JOINTS)
#: Operations of protocol version 1 and the arguments each takes.
OPERATIONS: dict[str, dict[str, Arg]] = {
    "hello": {},
    "ping": {},
    "state": {},
    "command": {"seq": Arg(int, 0, MAX_ID), "q_rad": _JOINTS, "kp": _GAINS, "kd": _GAINS},
    "damp": {},
    "estop": {},
    "clear_estop": {},
    "reset": {"seed": Arg(int, -1, MAX_ID)},
}


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
