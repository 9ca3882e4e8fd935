"""``backend="robot"`` of ``twinloop/QuadrupedVelocity-v0``: the velocity task over the robot twin.

Data flow of one episode and one step::

    connect: hello (model checked) -> acquire (this backend owns the robot, or a one-line
             fault says another controller does and for how long)
    reset:   acquire (renews the lease, or acquires again after it ended) -> reset {seed}
    close:   release (the twin damps the joints)

    joint targets (from the task; after the env's safety layer)
        -> RemoteRobot.command(seq, q, Kp, Kd of the config, session)   (a lost reply: the same seq
           again, up to the client's ``retries``; the twin answers a repeat, not re-executing)
        -> reply: state (joints, IMU, contacts, estimate), applied targets after clipping
        -> measurement in the ``sim`` backend's layout (gravity from the IMU quaternion)
        -> (measurement, applied targets)

The task, the reward and the termination are the simulator's own code. Any fault (timeout,
twin gone, e-stop, refusal, malformed reply, a lease that ended while the controller was
silent) is a one-line :class:`~.protocol.RobotFault` (a ``BackendFault``); the env then calls
:meth:`RobotBackend.safe_state`, which damps the joints if this backend still owns the robot
(a robot that another controller now owns is not disturbed). With latency, loss and the
twin's hidden effects all off, a run equals the ``sim`` backend's from the same seed
(``tests/hardware/robot/test_backend.py``).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from twinloop.core.backend import BaseBackend
from twinloop.hardware.robot.protocol import RobotFault, RobotState
from twinloop.hardware.robot.remote import RemoteRobot
from twinloop.sim.locomotion.velocity import (
    JOINT_NAMES,
    N_MEAS,
    NJ,
    command_space,
    measurement_layout,
)
from twinloop.sim.locomotion.velocity_config import QuadrupedVelocityConfig

log = logging.getLogger(__name__)


def measurement_from_state(state: RobotState, out: np.ndarray | None = None) -> np.ndarray:
    """The ``sim`` backend's measurement row from a robot's state report."""
    m = np.zeros(N_MEAS) if out is None else out
    m[0:12] = state.q_rad
    m[12:24] = state.dq_rad_per_s
    m[24:27] = state.lin_vel_m_per_s
    m[27:30] = state.gyro_rad_per_s
    m[30:33] = state.gravity()
    m[33] = state.height_m
    m[34:38] = state.feet_contact
    m[38] = state.trunk_contact
    m[39:51] = state.torque_nm
    return m


class RobotBackend(BaseBackend):
    """The quadruped over the joint-level protocol (a twin, or a robot speaking it).

    Args:
        cfg: The env's config (its PD gains are sent with every command).
        robot: The client (its ``retries`` resend a command whose reply was lost).
    """

    kind = "robot"
    deterministic = False

    def __init__(self, cfg: QuadrupedVelocityConfig, robot: RemoteRobot) -> None:
        """Nothing connects until :meth:`connect`."""
        super().__init__()
        self.cfg = cfg
        self.robot = robot
        self.command_space = command_space()
        self.measurement_layout = measurement_layout()
        self.measurement_space = self.measurement_layout.space(np.float64)
        self._kp = [float(cfg.control.kp_nm_per_rad)] * NJ
        self._kd = [float(cfg.control.kd_nm_s_per_rad)] * NJ
        self._seq = 0
        self.repeats = 0
        self.last_clipped: dict[str, list[bool]] = {}

    def connect(self) -> None:
        """Say hello, check that the robot is the one the task expects, and acquire it.

        Raises:
            RobotFault: Another robot, another controller owns it, or the link failed.
        """
        if self.connected:
            return
        model = self.robot.connect()
        if model.joint_names != JOINT_NAMES:
            raise RobotFault(f"robot joints {model.joint_names} are not the task's {JOINT_NAMES}")
        if not math.isclose(model.control_dt_s, self.cfg.control_dt_s, rel_tol=1e-9):
            raise RobotFault(
                f"robot control period {model.control_dt_s:g} s != the config's "
                f"{self.cfg.control_dt_s:g} s (control.sim_dt_s x control.decimation)"
            )
        self.robot.acquire()
        super().connect()

    def reset(self, seed: int | None = None, options: dict[str, Any] | None = None) -> np.ndarray:
        """A new episode on the twin (acquiring it first); the first measurement.

        Raises:
            ValueError: ``options`` were given.
            RobotFault: The twin refused or did not answer (the joints are then damped if
                this backend owns the robot).
        """
        if options:
            raise ValueError(f"backend 'robot' takes no reset options, got {sorted(options)}")
        try:
            state = self.robot.reset(seed)
        except RobotFault:
            self._try_damp()
            raise
        self._seq = 0
        return measurement_from_state(state)

    def apply(self, command: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One control period on the robot: ``(measurement, targets applied after clipping)``."""
        self._seq += 1
        q = [float(x) for x in np.asarray(command, dtype=np.float64)]
        state, applied, clipped, repeat = self.robot.command(self._seq, q, self._kp, self._kd)
        self.repeats += int(repeat)
        self.last_clipped = clipped
        return measurement_from_state(state), np.array(applied["q_rad"])

    def safe_state(self) -> None:
        """Damp the joints (short timeout, one try: the link may be down), if this owns them.

        A backend whose session was refused for ownership leaves the robot alone: either
        its lease ended (the twin damped the joints then) or another controller owns it.
        """
        if self.robot.session is None:
            return
        self.robot.damp(timeout_s=min(self.robot.timeout_s, 0.5), retries=0)

    def _try_damp(self) -> None:
        try:
            self.safe_state()
        except RobotFault as exc:
            log.warning("could not damp the robot: %s", exc)

    def close(self) -> None:
        """Release the robot (the twin damps the joints; best effort) and close the link."""
        self._connected = False
        self.robot.close()

    def identity(self) -> dict[str, Any]:
        """Kind, address and what the robot says it is."""
        return {"kind": self.kind, "address": self.robot.address, "server": self.robot.server}
