"""The simulated robot behind the twin: the QuadrupedVelocity plant with a joint-level interface.

:class:`SimRobot` runs :class:`~twinloop.sim.locomotion.velocity.QuadrupedPhysics` (the same
MuJoCo model, PD actuators at the physics rate, and sim-to-real effects as the ``sim``
backend; no second copy of the physics) and adds what a robot's low-level interface does:
per-command gains, clipping by position, velocity and torque limits that it reports, a
damping mode, a latched e-stop, and an IMU and state estimate in its state report.

Hidden physical parameters: the plant's domain randomisation, action delay and pushes are
those of the twin's own config, drawn at every reset from streams seeded by the episode's
seed mixed with ``hidden_seed``, which the client never sees (``hidden_seed=None`` seeds them
with the episode's seed alone, as the ``sim`` backend does: parity). Nothing of them is
reported.

Limits (:func:`robot_model`): position ranges and torque limits from the MJCF; joint speed
limits of the Go1 (30.1 rad/s at hip and thigh, 20.07 rad/s at the calf after its 1.5:1
reduction; sources in the MJCF's header).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from twinloop.core.profile import DeviceProfile
from twinloop.core.rng import new_entropy, new_streams, seed_streams
from twinloop.hardware.robot.protocol import N_JOINTS, RobotModel
from twinloop.sim.locomotion.velocity import (
    DEFAULT_POSE,
    JOINT_NAMES,
    QuadrupedPhysics,
    joint_limits,
)
from twinloop.sim.locomotion.velocity_config import QuadrupedVelocityConfig

#: Go1 joint speed limits (rad/s): hip, thigh, calf [U, K of the MJCF header].
SPEED_LIMITS_RAD_PER_S = (30.1, 30.1, 20.07)
GRAVITY_M_PER_S2 = 9.81


def robot_model(
    cfg: QuadrupedVelocityConfig,
    watchdog_s: float,
    damping_kd: float = 1.0,
    kp_max: float = 100.0,
    kd_max: float = 10.0,
) -> RobotModel:
    """The model facts the twin announces in ``hello``."""
    from twinloop.sim.locomotion.velocity import load_model

    low, high = joint_limits()
    torque = load_model(cfg).actuator_forcerange[:, 1]
    return RobotModel(
        joint_names=tuple(JOINT_NAMES),
        q_min_rad=tuple(low.tolist()),
        q_max_rad=tuple(high.tolist()),
        velocity_limit_rad_per_s=SPEED_LIMITS_RAD_PER_S * 4,
        torque_limit_nm=tuple(float(t) for t in torque),
        kp_max=float(kp_max),
        kd_max=float(kd_max),
        damping_kd=float(damping_kd),
        sim_dt_s=cfg.control.sim_dt_s,
        decimation=cfg.control.decimation,
        watchdog_s=float(watchdog_s),
    )


def mix_seed(hidden_seed: int | None, seed: int) -> int:
    """The plant's stream seed: the episode's seed, mixed with the hidden seed if there is one."""
    if hidden_seed is None:
        return seed
    words = np.random.SeedSequence([hidden_seed, seed]).generate_state(1, np.uint64)
    return int(words[0] >> np.uint64(1))


class SimRobot:
    """A simulated quadruped with a joint-level interface (the twin's device).

    Args:
        cfg: The plant's config (its randomisation, latency and pushes are the hidden effects).
        hidden_seed: Mixed into every episode's seed (None: the episode's seed alone).
        watchdog_s: Announced in the model; the server enforces it.
        damping_kd: Kd of the damping mode (N m s/rad).
        kp_max: Largest Kp accepted before clipping (N m/rad).
        kd_max: Largest Kd accepted before clipping (N m s/rad).
        profile: The device's hidden physics (:mod:`twinloop.core.profile`; the ``plant``
            section), applied over ``cfg``; only its name is ever shown (:meth:`identity`).

    Raises:
        ValueError: The profile changes anything but the ``plant`` section.
    """

    def __init__(
        self,
        cfg: QuadrupedVelocityConfig,
        hidden_seed: int | None = None,
        watchdog_s: float = 0.5,
        damping_kd: float = 1.0,
        kp_max: float = 100.0,
        kd_max: float = 10.0,
        profile: DeviceProfile | None = None,
    ) -> None:
        """Load the model and start an episode (seed 0) in damping."""
        if profile is not None:
            profiled = profile.apply(cfg)
            if dataclasses.replace(profiled, plant=cfg.plant) != cfg:
                raise ValueError(
                    f"device profile {profile.name!r} changes more than the robot's own physics "
                    "(the 'plant' section): the task, control and effects stay the user's"
                )
            cfg = profiled
        self.profile = profile
        self.cfg = cfg
        self.hidden_seed = hidden_seed
        self.model = robot_model(cfg, watchdog_s, damping_kd, kp_max, kd_max)
        self.physics = QuadrupedPhysics(cfg)
        self._mj = self.physics._mj
        self._rng = new_streams(1)
        self._low = np.array(self.model.q_min_rad)
        self._high = np.array(self.model.q_max_rad)
        self._max_step = np.array(self.model.velocity_limit_rad_per_s) * self.model.control_dt_s
        self._torque = np.array(self.model.torque_limit_nm)
        self._meas = np.zeros(51)
        self.mode = "damping"
        self.seq = -1
        #: ``(seq, result)`` of the last executed command (a repeated seq gets it again).
        self.last_command: tuple[int, dict[str, Any]] | None = None
        self.episodes = 0
        self._target = DEFAULT_POSE.copy()
        self._vel_prev = np.zeros(3)
        self._accel = np.array([0.0, 0.0, GRAVITY_M_PER_S2])
        self.reset(0)
        self.damp()

    # episodes ------------------------------------------------------------------------------------
    def reset(self, seed: int | None) -> None:
        """New episode: draw the hidden plant, stand in the default pose at nominal gains."""
        seed = new_entropy() if seed is None else int(seed)
        seed_streams(self._rng, 0, mix_seed(self.hidden_seed, seed))
        self.physics.reset(self._rng, 0)
        self._target = DEFAULT_POSE.copy()
        self.seq = -1
        self.last_command = None
        self.mode = "active"
        self.episodes += 1
        self._vel_prev = np.array(self.physics.data.qvel[:3])
        self._accel = self._trunk_rot().T @ np.array([0.0, 0.0, GRAVITY_M_PER_S2])

    # commands -------------------------------------------------------------------------------------
    def clip(
        self, q: np.ndarray, kp: np.ndarray, kd: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """Targets and gains after the position, velocity and gain limits, and what was clipped."""
        q_pos = np.clip(q, self._low, self._high)
        prev = self._target
        q_out = np.clip(q_pos, prev - self._max_step, prev + self._max_step)
        kp_out = np.minimum(kp, self.model.kp_max)
        kd_out = np.minimum(kd, self.model.kd_max)
        clipped = {"q_rad": q_out != q, "kp": kp_out != kp, "kd": kd_out != kd}
        return q_out, kp_out, kd_out, clipped

    def command(self, seq: int, q: Any, kp: Any, kd: Any) -> dict[str, Any]:
        """One control period of PD on the clipped targets and gains; what was applied.

        Raises:
            RuntimeError: The e-stop is latched (the server refuses before calling this).
        """
        if self.mode == "estop":
            raise RuntimeError("the e-stop is latched")
        q, kp, kd = (np.asarray(v, dtype=np.float64) for v in (q, kp, kd))
        q_out, kp_out, kd_out, clipped = self.clip(q, kp, kd)
        self._set_gains(kp_out, kd_out)
        self.mode = "active"
        self._target = q_out
        self.seq = int(seq)
        self.physics.step(q_out)
        self._after_step(self.model.control_dt_s)
        force = np.array(self.physics.data.actuator_force)
        clipped["torque_nm"] = np.abs(force) >= self._torque * (1.0 - 1e-9)
        return {
            "state": self.state(),
            "applied": {"q_rad": q_out.tolist(), "kp": kp_out.tolist(), "kd": kd_out.tolist()},
            "clipped": {k: v.astype(bool).tolist() for k, v in clipped.items()},
        }

    def damp(self) -> None:
        """Zero-torque damping: Kp 0, Kd = ``damping_kd`` (left by the next command)."""
        if self.mode != "estop":
            self.mode = "damping"
        self._set_gains(np.zeros(N_JOINTS), np.full(N_JOINTS, self.model.damping_kd))

    def estop(self) -> None:
        """Latch the e-stop: damping, and commands refused until :meth:`clear_estop`."""
        self.damp()
        self.mode = "estop"

    def clear_estop(self) -> None:
        """Release the latch; the robot stays in damping until the next command."""
        if self.mode == "estop":
            self.mode = "damping"

    def run_damped(self, seconds: float) -> int:
        """Advance the physics in damping by ``seconds`` (whole physics steps); steps taken."""
        if self.mode == "active":
            return 0
        n = int(seconds / self.model.sim_dt_s)
        if n <= 0:
            return 0
        mj, m, d = self._mj, self.physics.model, self.physics.data
        mj.mj_step2(m, d)
        if n > 1:
            mj.mj_step(m, d, n - 1)
        mj.mj_step1(m, d)
        self._after_step(n * self.model.sim_dt_s)
        return n

    def _set_gains(self, kp: np.ndarray, kd: np.ndarray) -> None:
        """Write gains into the actuators through the hidden motor strength and gain scales."""
        p = self.physics
        p.randomizer.write_gains(p.drawn_layout, p.drawn, kp, kd)

    def _trunk_rot(self) -> np.ndarray:
        return np.array(self.physics.data.xmat[self.physics._trunk]).reshape(3, 3)

    def _after_step(self, dt: float) -> None:
        """The IMU's specific force over the last ``dt`` (trunk frame)."""
        v = np.array(self.physics.data.qvel[:3])
        world = (v - self._vel_prev) / dt + np.array([0.0, 0.0, GRAVITY_M_PER_S2])
        self._accel = self._trunk_rot().T @ world
        self._vel_prev = v

    # reports --------------------------------------------------------------------------------------
    def measurement(self) -> np.ndarray:
        """The simulator's measurement row (the ``sim`` backend's layout), for tests."""
        self.physics.measure(self._meas)
        return self._meas.copy()

    def state(self) -> dict[str, Any]:
        """The state report of the protocol (plain data)."""
        d = self.physics.data
        m = self._meas
        self.physics.measure(m)
        return {
            "time_s": float(d.time),
            "mode": self.mode,
            "seq": self.seq,
            "q_rad": m[0:12].tolist(),
            "dq_rad_per_s": m[12:24].tolist(),
            "torque_nm": m[39:51].tolist(),
            "imu": {
                "quat_wxyz": [float(x) for x in d.qpos[3:7]],
                "gyro_rad_per_s": m[27:30].tolist(),
                "accel_m_per_s2": self._accel.tolist(),
            },
            "feet_contact": m[34:38].tolist(),
            "trunk_contact": float(m[38]),
            "estimate": {"lin_vel_m_per_s": m[24:27].tolist(), "height_m": float(m[33])},
        }

    def truth(self) -> dict[str, Any]:
        """The hidden plant values (never served; for tests and the twin's own log)."""
        return self.physics.truth()

    def identity(self) -> dict[str, Any]:
        """What this robot is."""
        out = {"kind": "sim-robot", "model": "quadruped_go1", "mujoco": self._mj.__version__}
        if self.profile is not None:  # its name only: the values stay hidden
            out["profile"] = self.profile.name
        return out


def is_finite_state(state: dict[str, Any]) -> bool:
    """Whether every number of a state report is finite (a diverged simulation is not)."""
    stack: list[Any] = [state]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
        elif isinstance(v, float) and not math.isfinite(v):
            return False
    return True
