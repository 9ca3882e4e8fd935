"""``twinloop/QuadrupedVelocity-v0``: a Go1-sized quadruped tracks a commanded body velocity.

The plant is our own MJCF (``models/quadruped_go1.xml``: Unitree Go1's published dimensions,
masses and actuator limits, primitive geoms) on C MuJoCo. The policy acts at 50 Hz
(``control.decimation`` x ``control.sim_dt_s``); under it the position actuators run a PD
loop at every physics step (200 Hz), ``tau = clip(s (Kp (target + offset - q) - Kd qdot),
+-limit)`` with the motor strength ``s``, offset and gains drawn per reset (:mod:`.effects`).

Data flow of one step (single env and vector env run the same functions)::

    action in [-1, 1]^12 --targets--> default pose + action_scale * action, clipped to the
        joint ranges --safety--> command --plant: action delay line, motor offset, pushes,
        mj_step2, mj_step x (n-1), mj_step1--> measurement (true state)
        --task: reward terms, fall check (true values); noise, observation delay,
        history (the policy's view)--> observation

========  =====================================================================  ============
index     observation (per history frame, newest first; then the command)        units
========  =====================================================================  ============
0-2       trunk linear velocity in the trunk frame (+ noise)                     m/s
3-5       gyro: trunk angular velocity in the trunk frame (+ noise)              rad/s
6-8       gravity direction in the trunk frame (+ noise)                         1
9-20      joint positions minus the default pose (+ noise)                       rad
21-32     joint velocities (+ noise)                                             rad/s
33-44     previous action (exact)                                                1
45 H ..   commanded forward, lateral velocity and yaw rate (exact)               m/s, rad/s
========  =====================================================================  ============

Joints (and actions) in the order FR, FL, RR, RL legs x hip, thigh, calf. Reward terms
(legged_gym's [LG], weights in :class:`~.velocity_config.VelocityRewardConfig`, each multiplied
by the control period): ``tracking_lin_vel``, ``tracking_ang_vel``, ``lin_vel_z``,
``ang_vel_xy``, ``orientation``, ``torques``, ``action_rate``, ``feet_air_time``; logged as
``info["reward/<term>"]``. A fall (the trunk touches the floor, or tilts beyond
``max_tilt_rad``) terminates; ``max_steps`` truncates.

[LG] Rudin et al., CoRL 2021 (legged_gym: reward terms, default pose of its Go1 config
``FL/RL hip 0.1, FR/RR hip -0.1, front thigh 0.8, rear thigh 1.0, calf -1.5 rad``).
"""

from __future__ import annotations

import functools
import math
import os
import types
from pathlib import Path
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np

from twinloop.core.backend import BaseBackend
from twinloop.core.bundle import Rows, bundle
from twinloop.core.env import TwinEnv
from twinloop.core.jit import njit
from twinloop.core.layout import Field, Layout
from twinloop.core.rng import (
    STREAM_BACKEND,
    STREAM_SENSOR,
    STREAM_TASK,
    new_streams,
    seed_streams,
    uniform,
)
from twinloop.core.task import TaskStep
from twinloop.core.vector import STREAMS, Actions, KernelVectorEnv, ResetOut, StepOut
from twinloop.core.vector import command_limits as safety_limits
from twinloop.sim.locomotion.effects import (
    ModelRandomizer,
    add_noise,
    delay_bounds,
    draw_int,
    draw_randomization,
    noise_scales,
    push_delayed,
    push_history,
    randomization_layout,
    randomization_params,
)
from twinloop.sim.locomotion.env import clip_batch
from twinloop.sim.locomotion.kernel import mujoco_module
from twinloop.sim.locomotion.velocity_config import QuadrupedVelocityConfig

ENV_ID = "twinloop/QuadrupedVelocity-v0"
MODEL_FILE = Path(__file__).parent / "models" / "quadruped_go1.xml"
LEGS = ("FR", "FL", "RR", "RL")
JOINT_NAMES = tuple(f"{leg}_{part}" for leg in LEGS for part in ("hip", "thigh", "calf"))
NJ = 12
#: Default standing pose (rad), legged_gym's Go1 config [LG].
DEFAULT_POSE = np.array([-0.1, 0.8, -1.5, 0.1, 0.8, -1.5, -0.1, 1.0, -1.5, 0.1, 1.0, -1.5])
FOOT_RADIUS_M = 0.02

# --- measurement (what a robot reports; the simulator's values are exact) ------------------------
M_Q, M_QD, M_LINVEL, M_GYRO, M_GRAV, M_HEIGHT, M_FEET, M_TRUNK, M_TAU = (
    0, 12, 24, 27, 30, 33, 34, 38, 39,
)  # fmt: skip
N_MEAS = 51
#: One proprioceptive frame (noisy, delayed): linvel, gyro, gravity, q - q0, qdot.
FRAME = 9 + 2 * NJ
#: One history entry: the frame and the previous action.
ENTRY = FRAME + NJ

REWARD_TERMS = (
    "tracking_lin_vel",
    "tracking_ang_vel",
    "lin_vel_z",
    "ang_vel_xy",
    "orientation",
    "torques",
    "action_rate",
    "feet_air_time",
)
N_TERMS = len(REWARD_TERMS)

# --- task parameters (flat float vector) and per-row task state ----------------------------------
TP_SIGMA, TP_AIR, TP_DT, TP_COS_TILT, TP_TRUNK, TP_OD_MIN, TP_OD_MAX, TP_OD_JIT = range(8)
TP_CMD = 8  # x min, x max, y min, y max, yaw min, yaw max
N_TP = 14
TS_CMD, TS_ACT, TS_AIR, TS_CONTACT = 0, 3, 15, 19
TS_ERR_LIN, TS_ERR_YAW, TS_ERR_N = 23, 24, 25  # tracking errors summed over the episode's steps
N_TS = 26
#: Episode metrics (step ``info`` keys, the mean over the episode's steps so far): the
#: true trunk velocity's distance from the command in the plane, and the yaw rate's.
TRACKING_METRICS = ("lin_vel_error_m_per_s", "yaw_rate_error_rad_per_s")


def measurement_layout() -> Layout:
    """The measurement's named fields (float64)."""
    return Layout(
        [
            Field("joint_pos_rad", (NJ,), doc="joint positions"),
            Field("joint_vel_rad_per_s", (NJ,), doc="joint velocities"),
            Field("lin_vel_m_per_s", (3,), doc="trunk linear velocity, trunk frame"),
            Field("gyro_rad_per_s", (3,), doc="trunk angular velocity, trunk frame"),
            Field("gravity", (3,), -1.0, 1.0, doc="gravity direction, trunk frame"),
            Field("height_m", doc="trunk origin height"),
            Field("foot_contact", (4,), 0.0, 1.0, doc="foot touches the floor (FR, FL, RR, RL)"),
            Field("trunk_contact", (), 0.0, 1.0, doc="trunk touches the floor"),
            Field("torque_nm", (NJ,), doc="motor torques of the last physics step"),
        ]
    )


def observation_layout(cfg: QuadrupedVelocityConfig) -> Layout:
    """History frames (newest first, suffix ``_prev<k>``), then the command."""
    fields = []
    for h in range(cfg.history_steps):
        s = f"_prev{h}" if h else ""
        fields += [
            Field(f"lin_vel_m_per_s{s}", (3,), doc="trunk velocity, trunk frame (noisy)"),
            Field(f"gyro_rad_per_s{s}", (3,), doc="trunk angular velocity (noisy)"),
            Field(f"gravity{s}", (3,), doc="gravity direction, trunk frame (noisy)"),
            Field(f"joint_pos_rad{s}", (NJ,), doc="joints minus the default pose (noisy)"),
            Field(f"joint_vel_rad_per_s{s}", (NJ,), doc="joint velocities (noisy)"),
            Field(f"last_action{s}", (NJ,), -1.0, 1.0, doc="previous action"),
        ]
    fields.append(Field("command", (3,), doc="commanded v_x, v_y (m/s) and yaw rate (rad/s)"))
    return Layout(fields)


def load_model(cfg: QuadrupedVelocityConfig) -> Any:
    """A fresh ``MjModel`` of the quadruped with the config's physics step (each env owns one)."""
    mj = mujoco_module()
    model = mj.MjModel.from_xml_path(str(MODEL_FILE))
    model.opt.timestep = cfg.control.sim_dt_s
    return model


@functools.cache
def joint_limits() -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper joint limits (rad) of the 12 joints, read from the model."""
    mj = mujoco_module()
    model = mj.MjModel.from_xml_path(str(MODEL_FILE))
    rng = np.array(model.jnt_range[1:], dtype=np.float64)
    return rng[:, 0].copy(), rng[:, 1].copy()


def action_space() -> tuple[gym.spaces.Box, tuple[str, ...]]:
    """Actions in [-1, 1]^12 (scaled joint-target offsets) and their labels."""
    space = gym.spaces.Box(-1.0, 1.0, (NJ,), dtype=np.float32)
    return space, tuple(f"{name} target offset" for name in JOINT_NAMES)


def command_space() -> gym.spaces.Box:
    """Joint position targets (rad) within the joint ranges."""
    low, high = joint_limits()
    return gym.spaces.Box(low, high, dtype=np.float64)


def reward_scales(cfg: QuadrupedVelocityConfig) -> dict[str, float]:
    """Per-step scale of each term: the config's weight (per second) x the control period."""
    w = cfg.reward
    return {k: float(np.float64(getattr(w, k)) * cfg.control_dt_s) for k in REWARD_TERMS}


def task_params(cfg: QuadrupedVelocityConfig) -> np.ndarray:
    """Pack the task for the numba row functions."""
    c, od = cfg.command, delay_bounds(cfg.latency, action=False)
    p = np.zeros(N_TP)
    p[TP_SIGMA] = cfg.reward.tracking_sigma
    p[TP_AIR] = cfg.reward.air_time_target_s
    p[TP_DT] = cfg.control_dt_s
    p[TP_COS_TILT] = math.cos(cfg.max_tilt_rad)
    p[TP_TRUNK] = cfg.terminate_on_trunk_contact
    p[TP_OD_MIN], p[TP_OD_MAX], p[TP_OD_JIT] = od
    p[TP_CMD : TP_CMD + 6] = (
        c.lin_vel_x_min_m_per_s, c.lin_vel_x_max_m_per_s,
        c.lin_vel_y_min_m_per_s, c.lin_vel_y_max_m_per_s,
        c.yaw_rate_min_rad_per_s, c.yaw_rate_max_rad_per_s,
    )  # fmt: skip
    return p


class TaskArrays(NamedTuple):
    """The task's numba inputs: parameters and per-row state (a batch of one in the single env)."""

    tp: np.ndarray  # task_params
    q0: np.ndarray  # default pose
    noise: np.ndarray  # per-element noise half-widths of a frame
    scales: np.ndarray  # reward scales in REWARD_TERMS order
    ts: np.ndarray  # (n, N_TS) command, last action, air time, last contact
    odelay: np.ndarray  # (n,) observation delay drawn at reset
    ring: np.ndarray  # (n, max delay + 1, FRAME) frames, newest first
    hist: np.ndarray  # (n, history_steps, ENTRY)


def tracking_errors(ts: np.ndarray) -> np.ndarray:
    """``(n, 2)``: each row's mean linear-velocity and yaw-rate errors so far (0 before a step)."""
    n = np.maximum(ts[:, TS_ERR_N], 1.0)
    return np.stack([ts[:, TS_ERR_LIN] / n, ts[:, TS_ERR_YAW] / n], axis=1)


def task_arrays(cfg: QuadrupedVelocityConfig, n: int) -> TaskArrays:
    """Parameters and zeroed state for ``n`` rows."""
    od = delay_bounds(cfg.latency, action=False)
    return TaskArrays(
        task_params(cfg),
        DEFAULT_POSE.copy(),
        noise_scales(cfg.noise, NJ),
        np.array(list(reward_scales(cfg).values())),
        np.zeros((n, N_TS)),
        np.zeros(n, dtype=np.int64),
        np.zeros((n, od[1] + od[2] + 1, FRAME)),
        np.zeros((n, cfg.history_steps, ENTRY)),
    )


# --- numba row functions -------------------------------------------------------------------------
@njit
def targets_batch(
    acts: np.ndarray,
    q0: np.ndarray,
    scale: float,
    low: np.ndarray,
    high: np.ndarray,
    out: np.ndarray,
) -> None:
    """Joint targets = default pose + scale * action, clipped to the joint ranges."""
    for i in range(acts.shape[0]):
        for j in range(acts.shape[1]):
            out[i, j] = min(max(q0[j] + scale * acts[i, j], low[j]), high[j])


@njit
def measure_row(
    qpos: np.ndarray,
    qvel: np.ndarray,
    xmat: np.ndarray,
    tau: np.ndarray,
    touch: np.ndarray,
    out: np.ndarray,
) -> None:
    """The measurement from MuJoCo's state (``touch``: the five contact sensors' counts)."""
    for j in range(NJ):
        out[M_Q + j] = qpos[7 + j]
        out[M_QD + j] = qvel[6 + j]
        out[M_TAU + j] = tau[j]
    for a in range(3):  # R^T v: the free joint's linear velocity is in the world frame
        out[M_LINVEL + a] = xmat[a] * qvel[0] + xmat[3 + a] * qvel[1] + xmat[6 + a] * qvel[2]
        out[M_GYRO + a] = qvel[3 + a]  # the free joint's angular velocity is in the body frame
        out[M_GRAV + a] = -xmat[6 + a]
    out[M_HEIGHT] = qpos[2]
    out[M_TRUNK] = 1.0 if touch[0] > 0.0 else 0.0
    for f in range(4):
        out[M_FEET + f] = 1.0 if touch[1 + f] > 0.0 else 0.0


@njit(inline="always")
def _observe(
    i: int, m: np.ndarray, ta: TaskArrays, rng: np.ndarray, obs: np.ndarray, first: bool
) -> None:
    frame = np.empty(FRAME)
    for a in range(3):
        frame[a] = m[M_LINVEL + a]
        frame[3 + a] = m[M_GYRO + a]
        frame[6 + a] = m[M_GRAV + a]
    for j in range(NJ):
        frame[9 + j] = m[M_Q + j] - ta.q0[j]
        frame[9 + NJ + j] = m[M_QD + j]
    add_noise(rng, i, STREAM_SENSOR, frame, ta.noise)
    ring, hist, ts = ta.ring[i], ta.hist[i], ta.ts[i]
    act = ts[TS_ACT : TS_ACT + NJ]
    if first:
        for t in range(ring.shape[0]):
            ring[t, :] = frame
        for t in range(hist.shape[0]):
            hist[t, :FRAME] = frame
            hist[t, FRAME:] = act
    else:
        d = ta.odelay[i]
        jit = int(ta.tp[TP_OD_JIT])
        if jit > 0:
            d += draw_int(rng, i, STREAM_SENSOR, 0, jit)
        push_history(hist, push_delayed(ring, frame, d), act)
    k = 0
    for t in range(hist.shape[0]):
        for j in range(ENTRY):
            obs[k] = hist[t, j]
            k += 1
    for a in range(3):
        obs[k + a] = ts[TS_CMD + a]


@njit
def task_reset_batch(
    rows: np.ndarray, meas: np.ndarray, ta: TaskArrays, rng: np.ndarray, obs: np.ndarray
) -> None:
    """New episodes for ``rows``: draw the command and observation delay, first observation."""
    tp = ta.tp
    for i in rows:
        ts = ta.ts[i]
        for a in range(3):
            lo, hi = tp[TP_CMD + 2 * a], tp[TP_CMD + 2 * a + 1]
            ts[TS_CMD + a] = lo + (hi - lo) * uniform(rng, i, STREAM_TASK)
        ta.odelay[i] = draw_int(rng, i, STREAM_TASK, int(tp[TP_OD_MIN]), int(tp[TP_OD_MAX]))
        for j in range(NJ):
            ts[TS_ACT + j] = 0.0
        for f in range(4):
            ts[TS_AIR + f] = 0.0
            ts[TS_CONTACT + f] = meas[i, M_FEET + f]
        ts[TS_ERR_LIN] = 0.0
        ts[TS_ERR_YAW] = 0.0
        ts[TS_ERR_N] = 0.0
        _observe(i, meas[i], ta, rng, obs[i], True)


@njit
def task_step_batch(
    meas: np.ndarray,
    acts: np.ndarray,
    ta: TaskArrays,
    rng: np.ndarray,
    obs: np.ndarray,
    terms: np.ndarray,
    reward: np.ndarray,
    terminated: np.ndarray,
) -> None:
    """Reward terms (true values), falls and the next observation of every row."""
    tp = ta.tp
    sigma, dt = tp[TP_SIGMA], tp[TP_DT]
    for i in range(meas.shape[0]):
        m, ts, a, r = meas[i], ta.ts[i], acts[i], terms[i]
        ex = ts[TS_CMD] - m[M_LINVEL]
        ey = ts[TS_CMD + 1] - m[M_LINVEL + 1]
        ew = ts[TS_CMD + 2] - m[M_GYRO + 2]
        r[0] = math.exp(-(ex * ex + ey * ey) / sigma)
        r[1] = math.exp(-(ew * ew) / sigma)
        ts[TS_ERR_LIN] += math.sqrt(ex * ex + ey * ey)
        ts[TS_ERR_YAW] += abs(ew)
        ts[TS_ERR_N] += 1.0
        r[2] = m[M_LINVEL + 2] ** 2
        r[3] = m[M_GYRO] ** 2 + m[M_GYRO + 1] ** 2
        r[4] = m[M_GRAV] ** 2 + m[M_GRAV + 1] ** 2
        tau = 0.0
        rate = 0.0
        for j in range(NJ):
            tau += m[M_TAU + j] ** 2
            rate += (a[j] - ts[TS_ACT + j]) ** 2
            ts[TS_ACT + j] = a[j]
        r[5] = tau
        r[6] = rate
        air = 0.0
        for f in range(4):  # legged_gym's feet air time: paid at touchdown
            contact = m[M_FEET + f] > 0.5
            ts[TS_AIR + f] += dt
            if contact and ts[TS_CONTACT + f] < 0.5:
                air += ts[TS_AIR + f] - tp[TP_AIR]
            if contact:
                ts[TS_AIR + f] = 0.0
            ts[TS_CONTACT + f] = 1.0 if contact else 0.0
        moving = ts[TS_CMD] ** 2 + ts[TS_CMD + 1] ** 2 > 0.01
        r[7] = air if moving else 0.0
        total = 0.0
        for k in range(N_TERMS):
            total += ta.scales[k] * r[k]
        reward[i] = total
        upright = -m[M_GRAV + 2]
        terminated[i] = upright < tp[TP_COS_TILT] or (tp[TP_TRUNK] > 0.0 and m[M_TRUNK] > 0.5)
        _observe(i, m, ta, rng, obs[i], False)


@njit
def initial_pose(
    rng: np.ndarray,
    i: int,
    q0: np.ndarray,
    low: np.ndarray,
    high: np.ndarray,
    noise: float,
    qpos: np.ndarray,
) -> None:
    """Joints = default pose + U(-noise, noise) within range; yaw ~ U(-pi, pi); level trunk."""
    yaw = -math.pi + 2.0 * math.pi * uniform(rng, i, STREAM_BACKEND)
    qpos[3] = math.cos(0.5 * yaw)
    qpos[4] = 0.0
    qpos[5] = 0.0
    qpos[6] = math.sin(0.5 * yaw)
    for j in range(NJ):
        v = q0[j] + noise * (2.0 * uniform(rng, i, STREAM_BACKEND) - 1.0)
        qpos[7 + j] = min(max(v, low[j]), high[j])


# --- the plant -----------------------------------------------------------------------------------
def contact_sensors(model: Any) -> slice:
    """Where the five contact sensors (trunk, then the feet) sit in ``sensordata``."""
    mj = mujoco_module()
    adr = [
        int(model.sensor_adr[mj.mj_name2id(model, mj.mjtObj.mjOBJ_SENSOR, f"{name}_contact")])
        for name in ("trunk", *LEGS)
    ]
    if adr != list(range(adr[0], adr[0] + 5)):  # pragma: no cover - the shipped model's order
        raise RuntimeError(f"{MODEL_FILE.name}: the contact sensors are not consecutive: {adr}")
    return slice(adr[0], adr[0] + 5)


def action_delay_substeps(cfg: QuadrupedVelocityConfig) -> tuple[int, int, int]:
    """``(min, max, jitter)`` of the action delay's millisecond part, in whole physics steps."""
    lat = cfg.latency
    if not lat.action_enabled:
        return 0, 0, 0
    step_ms = 1000.0 * cfg.control.sim_dt_s
    lo, hi, jit = (
        round(v / step_ms)
        for v in (lat.action_delay_min_ms, lat.action_delay_max_ms, lat.action_jitter_ms)
    )
    return lo, hi, jit


class QuadrupedPhysics:
    """One quadruped: its own ``MjModel`` (randomised at every reset) and ``MjData``.

    Args:
        cfg: The env's config.
    """

    def __init__(self, cfg: QuadrupedVelocityConfig) -> None:
        """Load the model; nothing is drawn until :meth:`reset`."""
        mj = mujoco_module()
        self._mj = mj
        self.cfg = cfg
        self.model = m = load_model(cfg)
        self.data = mj.MjData(m)

        def gid(name: str) -> int:
            return int(mj.mj_name2id(m, mj.mjtObj.mjOBJ_GEOM, name))

        self._trunk = int(mj.mj_name2id(m, mj.mjtObj.mjOBJ_BODY, "trunk"))
        self._ids = np.array([gid("floor"), gid("trunk"), *(gid(f"{leg}_foot") for leg in LEGS)])
        self._touch = self.data.sensordata[contact_sensors(m)]
        ctl = cfg.control
        self.randomizer = ModelRandomizer(
            m, int(self._ids[0]), self._trunk, ctl.kp_nm_per_rad, ctl.kd_nm_s_per_rad, cfg.plant
        )
        self.drawn_layout = randomization_layout(
            self.randomizer.n_links, NJ, self.randomizer.friction
        )
        self.drawn = np.zeros(self.drawn_layout.size)
        self._rp = randomization_params(cfg.randomization)
        self._delay = delay_bounds(cfg.latency, action=True)
        self._ms = action_delay_substeps(cfg)
        self._dec = cfg.control.decimation
        self._substep_ms = 1000.0 * cfg.control.sim_dt_s
        self.action_delay = 0
        self.action_delay_substeps = 0  # the whole base delay, steps and ms, in physics steps
        self._plant_delay = round(cfg.plant.actuation_delay_ms / self._substep_ms)
        longest = (self._delay[1] + self._delay[2]) * self._dec + self._ms[1] + self._ms[2]
        longest += self._plant_delay
        # the command side of a step is plant_commands_batch on a batch of one (the vector
        # env's QuadrupedBatchPhysics runs the same function over all its rows)
        self._lines = np.zeros((1, -(-longest // self._dec) + 1, NJ))
        self._line = self._lines[0]
        r = cfg.randomization
        push_every = max(1, round(r.push_interval_s / cfg.control_dt_s))
        #: ``plant_commands_batch``'s ``jitter`` and ``push`` parameters.
        self.jitter_params = np.array([self._delay[2], self._ms[2], self._dec], dtype=np.float64)
        self.push_params = np.array([push_every, float(r.push_enabled), r.push_max_m_per_s])
        self._low, self._high = joint_limits()
        self._offset = self.drawn_layout.get(self.drawn, "motor_offset_rad")
        self._offsets = self._offset.reshape(1, NJ)  # a view: follows every draw
        self._rng = new_streams(1)
        self._row = 0
        self._delay_sub = np.zeros(1, dtype=np.int64)
        self._steps = np.zeros(1, dtype=np.int64)
        self._old, self._now = np.zeros((1, NJ)), np.zeros((1, NJ))
        self._split = np.zeros(1, dtype=np.int64)
        self._pushes = np.zeros((1, 2))
        self._pushed = np.zeros(1, dtype=np.bool_)

    @property
    def steps(self) -> int:
        """Control steps of this episode."""
        return int(self._steps[0])

    def reset(self, rng: np.ndarray, i: int) -> None:
        """New episode: draw the plant (row ``i`` of ``rng``), pose the robot on the floor."""
        mj, m, d = self._mj, self.model, self.data
        self._rng, self._row = rng, i
        mj.mj_resetData(m, d)
        draw_randomization(rng, i, STREAM_BACKEND, self._rp, self.randomizer.n_links, self.drawn)
        self.randomizer.apply(self.drawn_layout, self.drawn)
        lo, hi, _ = self._delay
        self.action_delay = int(draw_int(rng, i, STREAM_BACKEND, lo, hi))
        lo_ms, hi_ms, _ = self._ms
        extra = int(draw_int(rng, i, STREAM_BACKEND, lo_ms, hi_ms)) if hi_ms > lo_ms else lo_ms
        self.action_delay_substeps = self.action_delay * self._dec + extra + self._plant_delay
        self._delay_sub[0] = self.action_delay_substeps
        q = np.array(d.qpos)
        initial_pose(rng, i, DEFAULT_POSE, self._low, self._high, self.cfg.joint_noise_rad, q)
        d.qpos[:] = q
        mj.mj_kinematics(m, d)
        lowest = min(float(d.geom_xpos[g, 2]) for g in self._ids[2:])
        d.qpos[2] -= lowest - FOOT_RADIUS_M  # feet just on the floor
        self._line[:] = DEFAULT_POSE
        d.ctrl[:] = DEFAULT_POSE + self._offset
        mj.mj_forward(m, d)
        self._steps[0] = 0

    def step(self, target: np.ndarray) -> None:
        """One control step: the delay line, the motor offset, a push if due, the PD substeps."""
        mj, m, d = self._mj, self.model, self.data
        n = self._dec
        plant_commands_batch(
            self._lines, target.reshape(1, NJ), self._offsets, self._delay_sub,
            self.jitter_params, self._steps, self.push_params,
            self._rng[self._row : self._row + 1], self._old, self._now, self._split,
            self._pushes, self._pushed,
        )  # fmt: skip
        if self._pushed[0]:
            d.qvel[0] += self._pushes[0, 0]
            d.qvel[1] += self._pushes[0, 1]
            mj.mj_step1(m, d)  # velocity-stage quantities of the pushed state
        # the older target until physics step r, this control step's from r on
        r = int(self._split[0])
        d.ctrl[:] = self._old[0]
        mj.mj_step2(m, d)
        if r == 0:
            if n > 1:
                mj.mj_step(m, d, n - 1)
        else:
            if r > 1:
                mj.mj_step(m, d, r - 1)
            d.ctrl[:] = self._now[0]
            mj.mj_step(m, d, n - r)
        mj.mj_step1(m, d)

    def measure(self, out: np.ndarray) -> None:
        """Write the measurement (:func:`measurement_layout`) into ``out``."""
        d = self.data
        measure_row(d.qpos, d.qvel, d.xmat[self._trunk], d.actuator_force, self._touch, out)

    def truth(self) -> dict[str, Any]:
        """The drawn plant values (``info["true/<name>"]``)."""
        out: dict[str, Any] = {}
        for f in self.drawn_layout:
            v = self.drawn_layout.get(self.drawn, f.name)
            out[f.name] = float(v[()]) if f.shape == () else v.copy()
        out["action_delay_steps"] = self.action_delay
        out["action_delay_ms"] = self.action_delay_substeps * self._substep_ms
        return out


@njit
def plant_commands_batch(
    lines: np.ndarray,
    targets: np.ndarray,
    offsets: np.ndarray,
    delay: np.ndarray,
    jitter: np.ndarray,
    steps: np.ndarray,
    push: np.ndarray,
    rng: np.ndarray,
    old: np.ndarray,
    now: np.ndarray,
    split: np.ndarray,
    pushes: np.ndarray,
    pushed: np.ndarray,
) -> None:
    """The command side of a control step, for every row: what the motors get and when.

    :meth:`QuadrupedPhysics.step` runs it on a batch of one, the vector env on all its rows.

    The same draws in the same order from each row's stream: the delay jitter (control steps,
    then physics steps), then a push when one is due. ``jitter`` is ``(steps, physics steps,
    decimation)``, ``push`` is ``(every, enabled, vmax)``. Writes the motor targets before
    (``old``) and from (``now``) physics step ``split`` of the control step, and the pushes.
    """
    n, depth = targets.shape[0], lines.shape[1]
    jit_steps, jit_sub, dec = int(jitter[0]), int(jitter[1]), int(jitter[2])
    every, enabled, vmax = int(push[0]), push[1] > 0.0, push[2]
    for i in range(n):
        d = delay[i]
        if jit_steps > 0:
            d += dec * draw_int(rng, i, STREAM_BACKEND, 0, jit_steps)
        if jit_sub > 0:
            d += draw_int(rng, i, STREAM_BACKEND, 0, jit_sub)
        back = d // dec
        r = d - back * dec
        for t in range(depth - 1, 0, -1):
            for j in range(NJ):
                lines[i, t, j] = lines[i, t - 1, j]
        for j in range(NJ):
            lines[i, 0, j] = targets[i, j]
        b_now, b_old = min(back, depth - 1), min(back + 1, depth - 1)
        for j in range(NJ):
            now[i, j] = lines[i, b_now, j] + offsets[i, j]
            old[i, j] = (lines[i, b_old, j] if r else lines[i, b_now, j]) + offsets[i, j]
        split[i] = r
        steps[i] += 1
        pushed[i] = False
        if steps[i] % every == 0:
            p0 = vmax * (2.0 * uniform(rng, i, STREAM_BACKEND) - 1.0)
            p1 = vmax * (2.0 * uniform(rng, i, STREAM_BACKEND) - 1.0)
            if enabled:
                pushes[i, 0], pushes[i, 1] = p0, p1
                pushed[i] = True


@njit
def measure_batch(
    qpos: np.ndarray,
    qvel: np.ndarray,
    xmat: np.ndarray,
    tau: np.ndarray,
    sensordata: np.ndarray,
    trunk: int,
    touch: int,
    out: np.ndarray,
) -> None:
    """:func:`measure_row` of every row (``touch``: where the contact sensors start)."""
    for i in range(qpos.shape[0]):
        measure_row(
            qpos[i], qvel[i], xmat[i, trunk], tau[i], sensordata[i, touch : touch + 5], out[i]
        )


#: The model fields :class:`~.effects.ModelRandomizer` writes (per env in a batch).
RANDOMIZED_FIELDS = (
    "geom_friction",
    "body_mass",
    "body_inertia",
    "body_ipos",
    "dof_frictionloss",
    "actuator_gainprm",
    "actuator_biasprm",
)


class QuadrupedBatchPhysics:
    """``n`` quadrupeds stepped together on MuJoCo's thread pool (``mujoco.batch``).

    The same plant as ``n`` :class:`QuadrupedPhysics`, bit for bit: each env's drawn model
    values live in the batch's per-simulation copies of :data:`RANDOMIZED_FIELDS`; the delay
    lines, jitter and pushes run in :func:`plant_commands_batch` over every row; the physics
    steps every env at once (those whose target switches part-way through the control step in
    two calls, split at that physics step). A reset draws on one scratch
    :class:`QuadrupedPhysics` (the single env's code and draws), then copies its drawn
    values, delay line and integration state into the env's row.

    Args:
        cfg: The env's config.
        n: Number of envs.
        threads: Threads of MuJoCo's pool, the calling thread included.
    """

    def __init__(self, cfg: QuadrupedVelocityConfig, n: int, threads: int) -> None:
        """Load the model, make the batch, expand the randomised fields."""
        from twinloop.sim.locomotion.kernel import batch_module

        mj = mujoco_module()
        self._mj = mj
        self.cfg = cfg
        self.n = n
        self.scratch = QuadrupedPhysics(cfg)
        sc = self.scratch
        self.drawn_layout = sc.drawn_layout
        self.batch = b = batch_module().Batch(sc.model, n, nthread=threads, persistent=True)
        self._spec = int(mj.mjtState.mjSTATE_INTEGRATION)
        self._vel = int(mj.mjtStage.mjSTAGE_VEL)
        self._none = int(mj.mjtStage.mjSTAGE_NONE)
        expanded = {name: b.expand(name) for name in RANDOMIZED_FIELDS}
        self._targets = [
            types.SimpleNamespace(**{k: v[i] for k, v in expanded.items()}) for i in range(n)
        ]
        self.drawn = np.zeros((n, sc.drawn.size))
        self.action_delay = np.zeros(n, dtype=np.int64)
        self.action_delay_substeps = np.zeros(n, dtype=np.int64)
        self.substep_ms = sc._substep_ms
        self._lines = np.zeros((n, *sc._line.shape))
        self._offsets = np.zeros((n, NJ))
        self._steps = np.zeros(n, dtype=np.int64)
        self._jitter, self._push = sc.jitter_params, sc.push_params
        self._old, self._now = np.zeros((n, NJ)), np.zeros((n, NJ))
        self._split = np.zeros(n, dtype=np.int64)
        self._pushes = np.zeros((n, 2))
        self._pushed = np.zeros(n, dtype=np.bool_)
        self._qpos, self._qvel, self.ctrl = b.bind("qpos"), b.bind("qvel"), b.bind("ctrl")
        self._xmat, self._tau = b.bind("xmat"), b.bind("actuator_force")
        self._sensordata = b.bind("sensordata")
        self._touch = contact_sensors(sc.model).start
        b.reset()
        b.forward(stage=self._vel)

    def reset(self, rows: np.ndarray, rng: np.ndarray, meas: np.ndarray) -> None:
        """New episodes in ``rows``: draw each plant and pose from its stream row."""
        if rows.size == 0:
            return
        sc, state = self.scratch, self.batch.state
        for i in rows:
            sc.reset(rng, int(i))
            sc.randomizer.apply(self.drawn_layout, sc.drawn, self._targets[i])
            self.drawn[i] = sc.drawn
            self.action_delay[i] = sc.action_delay
            self.action_delay_substeps[i] = sc.action_delay_substeps
            self._lines[i] = sc._line
            self._offsets[i] = sc._offset
            self._steps[i] = 0
            self._mj.mj_getState(sc.model, sc.data, state[i], self._spec)
            sc.measure(meas[i])
        self.batch.forward(rows, stage=self._vel)

    def step(self, targets: np.ndarray, rng: np.ndarray, meas: np.ndarray) -> None:
        """One control step of every env towards joint ``targets`` (n, 12); measure."""
        b, dec = self.batch, self.cfg.control.decimation
        plant_commands_batch(
            self._lines, targets, self._offsets, self.action_delay_substeps, self._jitter,
            self._steps, self._push, rng, self._old, self._now, self._split, self._pushes,
            self._pushed,
        )  # fmt: skip
        pushed = np.flatnonzero(self._pushed)
        if pushed.size:
            self._qvel[pushed, 0] += self._pushes[pushed, 0]
            self._qvel[pushed, 1] += self._pushes[pushed, 1]
            b.forward(pushed, stage=self._vel)
        split = self._split
        if not split.any():
            self.ctrl[:] = self._now
            b.step(nstep=dec, stage=self._vel)
        else:
            self.ctrl[:] = self._old
            for r in np.unique(split):
                ids = np.flatnonzero(split == r)
                if r:
                    b.step(ids, nstep=int(r), stage=self._none)
                self.ctrl[ids] = self._now[ids]
                b.step(ids, nstep=dec - int(r), stage=self._vel)
        measure_batch(
            self._qpos, self._qvel, self._xmat, self._tau, self._sensordata,
            self.scratch._trunk, self._touch, meas,
        )  # fmt: skip


class QuadrupedSimBackend(BaseBackend):
    """The simulated quadruped behind the shared backend API.

    Args:
        cfg: The env's config.
    """

    kind = "sim"
    deterministic = True

    def __init__(self, cfg: QuadrupedVelocityConfig) -> None:
        """Load the model; nothing is drawn until :meth:`reset`."""
        super().__init__()
        self.cfg = cfg
        self.physics = QuadrupedPhysics(cfg)
        self.command_space = command_space()
        self.measurement_layout = measurement_layout()
        self.measurement_space = self.measurement_layout.space(np.float64)
        self._rng = new_streams(1)
        self._meas = np.zeros(N_MEAS)

    def reset(self, seed: int | None = None, options: dict[str, Any] | None = None) -> np.ndarray:
        """New episode; ``seed`` re-seeds the streams, ``None`` continues them.

        Raises:
            ValueError: ``options`` were given (this backend takes none).
        """
        if options:
            raise ValueError(f"{ENV_ID}: reset takes no backend options, got {sorted(options)}")
        if seed is not None:
            seed_streams(self._rng, 0, int(seed))
        self.physics.reset(self._rng, 0)
        self.physics.measure(self._meas)
        return self._meas.copy()

    def apply(self, command: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One control step; return ``(measurement, the joint targets accepted)``."""
        self.physics.step(np.asarray(command, dtype=np.float64))
        self.physics.measure(self._meas)
        return self._meas.copy(), np.array(command, dtype=np.float64)

    def privileged(self) -> dict[str, Any]:
        """The drawn plant values (randomisation and action delay)."""
        return self.physics.truth()

    def identity(self) -> dict[str, Any]:
        """Kind, model and the MuJoCo version."""
        return {"kind": self.kind, "model": MODEL_FILE.name, "mujoco": self.physics._mj.__version__}


def make_sim_backend(cfg: QuadrupedVelocityConfig) -> QuadrupedSimBackend:
    """Backend factory for ``backend="sim"``."""
    return QuadrupedSimBackend(cfg)


# --- the task (single env: a batch of one) -------------------------------------------------------
class VelocityTask:
    """Velocity tracking from measurements: reward terms, falls, the noisy delayed observation.

    Args:
        cfg: The env's config.
    """

    def __init__(self, cfg: QuadrupedVelocityConfig) -> None:
        """Build the spaces and the batch-of-one state."""
        self.cfg = cfg
        self.layout = observation_layout(cfg)
        self.observation_space = self.layout.space(np.float32)
        self.action_space, self.action_labels = action_space()
        self.reward_scales = reward_scales(cfg)
        self._ta = task_arrays(cfg, 1)
        self._rng = new_streams(1)
        self._low, self._high = joint_limits()
        self._act = np.zeros((1, NJ))
        self._obs = np.zeros((1, self.layout.size), dtype=np.float32)
        self._terms = np.zeros((1, N_TERMS))
        self._reward = np.zeros(1)
        self._term = np.zeros(1, dtype=np.bool_)
        self._rows = np.zeros(1, dtype=np.int64)
        self._steps = 0

    def _info(self, step: bool = True) -> dict[str, Any]:
        """The observation delay; after a step also the tracking errors (as in a vector env)."""
        info: dict[str, Any] = {"true/observation_delay_steps": int(self._ta.odelay[0])}
        if step:
            lin, yaw = tracking_errors(self._ta.ts[:1])[0]
            info[TRACKING_METRICS[0]] = float(lin)
            info[TRACKING_METRICS[1]] = float(yaw)
        return info

    def reset(
        self, measurement: np.ndarray, seed: int | None, options: dict[str, Any] | None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Draw the command and observation delay; the first observation."""
        if seed is not None:
            seed_streams(self._rng, 0, int(seed))
        self._steps = 0
        task_reset_batch(self._rows, measurement[None, :], self._ta, self._rng, self._obs)
        return self._obs[0].copy(), self._info(step=False)

    def command(self, action: np.ndarray, measurement: np.ndarray) -> np.ndarray:
        """Joint targets from the action (remembered for the action-rate term)."""
        self._act[0] = np.asarray(action, dtype=np.float64)
        out = np.empty((1, NJ))
        scale = self.cfg.control.action_scale_rad
        targets_batch(self._act, self._ta.q0, scale, self._low, self._high, out)
        return out[0]

    def step(self, measurement: np.ndarray, applied_command: np.ndarray) -> TaskStep:
        """Reward terms, fall and observation after a control step."""
        self._steps += 1
        task_step_batch(
            measurement[None, :], self._act, self._ta, self._rng,
            self._obs, self._terms, self._reward, self._term,
        )  # fmt: skip
        terminated = bool(self._term[0])
        truncated = not terminated and self._steps >= self.cfg.max_steps
        terms = dict(zip(REWARD_TERMS, self._terms[0].tolist(), strict=True))
        return TaskStep(self._obs[0].copy(), terms, terminated, truncated, self._info())


def metadata(cfg: QuadrupedVelocityConfig, layout: Layout) -> dict[str, Any]:
    """Env metadata shared by the single and vector envs."""
    return {
        "render_modes": [],
        "system": "locomotion",
        "observation_layout": layout.describe(),
        "control_timestep_s": cfg.control_dt_s,
        "n_sub_steps": cfg.control.decimation,
        "reward_terms": REWARD_TERMS,
        "joint_names": JOINT_NAMES,
        "default_pose_rad": DEFAULT_POSE.tolist(),
        "episode_metrics": TRACKING_METRICS,
    }


def make_env(cfg: QuadrupedVelocityConfig, *, backend: Any, env_id: str | None = None) -> TwinEnv:
    """Single-env factory: the velocity task on ``backend`` behind the safety layer."""
    task = VelocityTask(cfg)
    return TwinEnv(
        task,
        backend,
        cfg.safety,
        env_id=env_id or ENV_ID,
        config=cfg,
        metadata=metadata(cfg, task.layout),
    )


# --- the vector env ------------------------------------------------------------------------------
def _obs_size(cfg: QuadrupedVelocityConfig) -> tuple[int]:
    return (observation_layout(cfg).size,)


QuadrupedState = bundle(
    "QuadrupedState",
    __name__,
    meas=Rows((N_MEAS,)),  # the last measurement
    obs=Rows(_obs_size, np.float32),  # the last observation (a partial reset keeps the others)
    steps=Rows((), np.int64),  # control steps in this episode
    cmd=Rows((NJ,)),  # the safe joint targets of this step
    rng=STREAMS,  # the row's random streams, seeded by reset(seed=...)
    prev_cmd=Rows((NJ,)),  # the safety layer's last command
    has_prev=Rows((), np.bool_),  # whether it has one (rate limits apply)
    doc="Every env's state but its MuJoCo data and task arrays, which the vector env holds.",
)


def info_layouts(drawn: Layout) -> tuple[Layout, Layout, Layout]:
    """Float, int and bool info fields (the keys :class:`TwinEnv` reports)."""
    floats = Layout(
        [Field(f"reward/{k}") for k in REWARD_TERMS]
        + [Field("applied_action", (NJ,)), Field("applied_command", (NJ,))]
        + [Field(f"true/{f.name}", f.shape) for f in drawn]
        + [Field("true/action_delay_ms")]
        + [Field(name) for name in TRACKING_METRICS]
    )
    ints = Layout([Field("true/action_delay_steps"), Field("true/observation_delay_steps")])
    return floats, ints, Layout([Field("action_clipped"), Field("command_clipped")])


class QuadrupedVectorEnv(KernelVectorEnv):
    """``n_envs`` quadrupeds stepped on a thread pool, task math batched (``SAME_STEP``).

    Args:
        cfg: The config (shared by all envs; every env draws its own plant at every reset).
        n_envs: Batch size.
        env_id: Registered id.
    """

    State = QuadrupedState
    reset_kernel = None
    step_kernel = None

    def __init__(
        self, cfg: QuadrupedVelocityConfig, n_envs: int, env_id: str | None = None
    ) -> None:
        """Load one model and data per env and start the thread pool."""
        layout = observation_layout(cfg)
        probe = QuadrupedPhysics(cfg)
        self._drawn_layout = probe.drawn_layout
        fl, il, bl = info_layouts(probe.drawn_layout)
        space, labels = action_space()
        true_names = tuple(n for n in (*fl.names, *il.names) if n.startswith("true/"))
        super().__init__(
            n_envs, layout, space, fl, il, bl, true_names,
            params=safety_limits(command_space(), cfg.safety),
            config=cfg, env_id=env_id or ENV_ID,
            clip_actions=cfg.safety.clip_actions, action_labels=labels,
        )  # fmt: skip
        self.cfg = cfg
        self.metadata = {**self.metadata, **metadata(cfg, layout)}
        threads = cfg.threads or os.cpu_count() or 1
        self.threads = max(1, min(threads, self.num_envs))
        self.physics = QuadrupedBatchPhysics(cfg, self.num_envs, self.threads)
        self.task = task_arrays(cfg, self.num_envs)
        self._low, self._high = joint_limits()

    def _reset_physics(self, rows: np.ndarray) -> None:
        st = self.state
        self.physics.reset(rows, st.rng, st.meas)
        st.steps[rows] = 0
        st.has_prev[rows] = False

    def _truth_rows(self, rows: np.ndarray, f: np.ndarray, n: np.ndarray) -> None:
        """Write the drawn values of ``rows`` into float rows ``f`` and int rows ``n``."""
        fl, p = self.info_float, self.physics
        start = fl.slice(f"true/{self._drawn_layout.names[0]}").start
        size = p.drawn.shape[1]
        f[:, start : start + size] = p.drawn[rows]
        f[:, start + size] = p.action_delay_substeps[rows] * p.substep_ms
        n[:, 0] = p.action_delay[rows]
        n[:, 1] = self.task.odelay[rows]

    def reset_rows(
        self, state: Any, params: Any, mask: np.ndarray, options: Any, out: ResetOut
    ) -> None:
        """Reset the masked rows on the batch (a scratch physics draws each), then observe."""
        rows = np.flatnonzero(mask)
        self._reset_physics(rows)
        task_reset_batch(rows, state.meas, self.task, state.rng, state.obs)
        out.obs[:] = state.obs
        f, n = np.zeros((rows.size, out.info_f.shape[1])), np.zeros((rows.size, 2), np.int64)
        self._truth_rows(rows, f, n)
        out.info_f[rows] = f
        out.info_i[rows] = n

    def step_rows(self, state: Any, params: Any, actions: Actions, out: StepOut) -> None:
        """Clip, step every env on the batch, observe, score, auto-reset ended rows."""
        n = self.num_envs
        acts, action_clipped = actions.values, actions.clipped
        targets = np.empty((n, NJ))
        scale = self.cfg.control.action_scale_rad
        targets_batch(acts, self.task.q0, scale, self._low, self._high, targets)
        cmd_clipped = np.empty(n, dtype=np.bool_)
        clip_batch(
            targets, params.low, params.high, params.max_step,
            state.prev_cmd, state.has_prev, state.cmd, cmd_clipped,
        )  # fmt: skip
        self.physics.step(state.cmd, state.rng, state.meas)
        terms = np.empty((n, N_TERMS))
        task_step_batch(
            state.meas, acts, self.task, state.rng, out.obs, terms, out.reward, out.terminated
        )
        state.steps[:] += 1
        np.greater_equal(state.steps, self.cfg.max_steps, out=out.truncated)
        np.logical_and(out.truncated, ~out.terminated, out=out.truncated)
        ended = out.truncated | out.terminated
        fl = self.info_float
        all_rows = np.arange(n)
        rows_f = np.zeros((n, fl.size))
        rows_i = np.zeros((n, 2), dtype=np.int64)
        rows_f[:, :N_TERMS] = terms * self.task.scales[None, :]
        rows_f[:, fl.slice("applied_action")] = acts
        rows_f[:, fl.slice("applied_command")] = state.cmd
        errors = tracking_errors(self.task.ts)
        for k, name in enumerate(TRACKING_METRICS):
            rows_f[:, fl.slice(name)] = errors[:, k : k + 1]
        self._truth_rows(all_rows, rows_f, rows_i)
        rows_b = np.stack([action_clipped, cmd_clipped], axis=1)
        live = ~ended
        for top, fin, rows in (
            (out.top_f, out.fin_f, rows_f),
            (out.top_i, out.fin_i, rows_i),
            (out.top_b, out.fin_b, rows_b),
        ):
            top[:] = 0
            fin[:] = 0
            top[live] = rows[live]
            fin[ended] = rows[ended]
        done = np.flatnonzero(ended)
        if done.size:
            out.final_obs[done] = out.obs[done]
            self._reset_physics(done)
            task_reset_batch(done, state.meas, self.task, state.rng, out.obs)
            f = np.zeros((done.size, fl.size))
            k = np.zeros((done.size, 2), dtype=np.int64)
            self._truth_rows(done, f, k)
            true_cols = [fl.slice(name) for name in fl.names if name.startswith("true/")]
            for sl in true_cols:
                out.top_f[done, sl] = f[:, sl]
            out.top_i[done] = k
        state.obs[:] = out.obs

    def close_extras(self, **kwargs: Any) -> None:
        """Release the batch (its thread pool and data)."""
        self.physics = None  # type: ignore[assignment]


def make_vec_env(
    cfg: QuadrupedVelocityConfig, *, n_envs: int, env_id: str | None = None
) -> QuadrupedVectorEnv:
    """Vector-env factory."""
    return QuadrupedVectorEnv(cfg, n_envs, env_id=env_id)
