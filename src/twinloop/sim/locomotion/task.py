"""Control-suite tasks: observations and rewards from measurements, as dm_control defines them.

Everything here reads the backend's measurement (:func:`~.kernel.measurement_layout`) and never
MuJoCo's data, so the same functions would score a robot that reports those quantities. The
row functions are numba; :func:`observe_batch` runs them over every row of a batch, and the
single env is a batch of one, so single and vector envs agree to the last bit.

Rewards and observations follow dm_control 1.0.50's task files [DMC] (facts carried over,
code our own); ``dm_control.utils.rewards.tolerance`` is :func:`tolerance`:

=============  ========================================  ===========================================
task           observation (dm_control's key order)      reward
=============  ========================================  ===========================================
cheetah-run    position = qpos[1:] (8), velocity (9)     tol(v_x, [10, inf), margin 10, linear, 0)
walker-*       orientations (xx, xz of 7 bodies) (14),   stand = (3 tol(h, [1.2, inf), margin 0.6)
               height (1), velocity (9)                  + (1 + zz) / 2) / 4; walk/run (speed 1 /
                                                         8): stand (5 tol(v_x, [s, inf), s/2,
                                                         linear, 0.5) + 1) / 6
hopper-*       position = qpos[1:] (6), velocity (7),    standing = [0.6 <= z_torso - z_foot <= 2];
               touch = log1p(toe, heel) (2)              hop: standing tol(v_x, [2, inf), 1,
                                                         linear, 0.5); stand: standing (mean_k
                                                         tol(u_k, 0, 1, quadratic, 0) + 4) / 5
humanoid-*     joint_angles = qpos[7:] (21), head_height standing = tol(z_head, [1.4, inf), 0.35)
               (1), extremities (hands, feet in the      x tol(zz, [0.9, inf), 1.9, linear, 0);
               torso frame) (12), torso_vertical (zx,    control = (mean_k tol(u_k, 0, 1,
               zy, zz) (3), com_velocity (3),            quadratic, 0) + 4) / 5; stand: x mean
               velocity (27)                             tol(v_xy, 0, 2); walk/run (1 / 10 m/s):
                                                         x (5 tol(|v_xy|, [s, inf), s, linear, 0)
                                                         + 1) / 6
quadruped-*    egocentric_state (hinge qpos, qvel, act)  tol(zz, [1, inf), 2, linear, 0) x
               (44), torso_velocity (3), torso_upright   tol(v'_x, [s, inf), s, linear, 0.5),
               (1), imu (gyro, accelerometer) (6),       s = 0.5 (walk), 5 (run) m/s
               force_torque = asinh(toe sensors) (24)
=============  ========================================  ===========================================

Here ``v_x`` is the torso sub-tree's linear velocity along x (``v_xy`` its horizontal part),
``v'_x`` the quadruped torso's velocimeter (its own frame), ``h`` the torso frame's height,
``zz`` the torso frame's z-z entry, ``z_*`` the heights of body centres of mass (``z_head``:
of the head frame); tol without bounds means bounds (0, 0), gaussian, 0.1 at the margin. No
task ends early (dm_control's ``get_termination`` is None for all of them); every episode is
truncated after ``max_steps`` (1000) control steps, or at once when the physics went unstable
(the measurement's ``physics_unstable`` flag; that step's reward is 0 and
``info["physics_unstable"]`` is True). Observations are returned as ``float32``.

[DMC] Tassa et al., arXiv:1801.00690 (2018);
``dm_control/suite/{cheetah,walker,hopper,humanoid,quadruped}.py`` and
``dm_control/utils/rewards.py`` 1.0.50.
"""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np

from twinloop.core.jit import njit
from twinloop.core.layout import Field, Layout
from twinloop.core.task import TaskStep
from twinloop.sim.locomotion.config import DmcConfig
from twinloop.sim.locomotion.kernel import ModelFacts, model_facts

#: Reward terms in summation order: the control suite's reward, unscaled.
REWARD_TERMS = ("dmc",)

DOMAIN_CODES = {"cheetah": 0, "walker": 1, "hopper": 2, "humanoid": 3, "quadruped": 4}

SIGMOID_GAUSSIAN = 0
SIGMOID_LINEAR = 1
SIGMOID_QUADRATIC = 2

# --- task parameters ----------------------------------------------------------------------------
TP_DOMAIN = 0
TP_SPEED = 1  # target speed (m/s); 0: stand (walker), hopping flag (hopper: 1 hop, 0 stand)
TP_NQ = 2
TP_NV = 3
TP_NU = 4
N_TP = 5

#: Task speeds (m/s) [DMC]: cheetah _RUN_SPEED, walker _WALK_SPEED / _RUN_SPEED, hopper _HOP_SPEED.
TASK_SPEED = {
    ("cheetah", "run"): 10.0,
    ("walker", "stand"): 0.0,
    ("walker", "walk"): 1.0,
    ("walker", "run"): 8.0,
    ("hopper", "stand"): 0.0,
    ("hopper", "hop"): 2.0,
    ("humanoid", "stand"): 0.0,
    ("humanoid", "walk"): 1.0,
    ("humanoid", "run"): 10.0,
    ("quadruped", "walk"): 0.5,
    ("quadruped", "run"): 5.0,
}
WALKER_STAND_HEIGHT_M = 1.2
HOPPER_STAND_HEIGHT_M = 0.6
HOPPER_MAX_HEIGHT_M = 2.0
HUMANOID_STAND_HEIGHT_M = 1.4


def observation_layout(cfg: DmcConfig) -> Layout:
    """The observation's fields, in dm_control's key order, for this task."""
    f = model_facts(cfg.DOMAIN)
    if cfg.DOMAIN == "walker":
        nb = f.layout.field("orientations").shape[0]
        return Layout(
            [
                Field("orientations", (nb, 2), -1.0, 1.0, "xx, xz of each body frame"),
                Field("height", (), doc="torso frame height (m)"),
                Field("velocity", (f.nv,), doc="joint velocities (m/s, rad/s)"),
            ]
        )
    if cfg.DOMAIN == "humanoid":
        return Layout(
            [
                Field("joint_angles", (f.nq - 7,), doc="joint angles but the root's (rad)"),
                Field("head_height", (), doc="head frame height (m)"),
                Field("extremities", (4, 3), doc="hands and feet in the torso frame (m)"),
                Field("torso_vertical", (3,), -1.0, 1.0, "zx, zy, zz of the torso frame"),
                Field("com_velocity", (3,), doc="centre-of-mass velocity (m/s)"),
                Field("velocity", (f.nv,), doc="joint velocities (m/s, rad/s)"),
            ]
        )
    if cfg.DOMAIN == "quadruped":
        ml = f.layout
        n_ego = sum(ml.field(k).size for k in ("hinge_qpos", "hinge_qvel", "act"))
        return Layout(
            [
                Field("egocentric_state", (n_ego,), doc="hinge angles, velocities, activations"),
                Field("torso_velocity", (3,), doc="torso velocity in its own frame (m/s)"),
                Field("torso_upright", (), -1.0, 1.0, doc="zz of the torso frame"),
                Field("imu", (ml.field("imu").size,), doc="gyro (rad/s), accelerometer (m/s^2)"),
                Field("force_torque", (ml.field("force_torque").size,), doc="asinh of toe F/T"),
            ]
        )
    fields = [
        Field("position", (f.nq - 1,), doc="joint positions but the horizontal one (m, rad)"),
        Field("velocity", (f.nv,), doc="joint velocities (m/s, rad/s)"),
    ]
    if cfg.DOMAIN == "hopper":
        fields.append(Field("touch", (2,), 0.0, math.inf, "log1p of toe and heel touch (N)"))
    return Layout(fields)


def action_space(facts: ModelFacts) -> tuple[gym.spaces.Box, tuple[str, ...]]:
    """The action space (the actuators' control ranges) and a label per element."""
    space = gym.spaces.Box(
        facts.ctrl_low.astype(np.float32), facts.ctrl_high.astype(np.float32), dtype=np.float32
    )
    return space, tuple(f"{name} control" for name in facts.actuator_names)


def task_params(cfg: DmcConfig) -> np.ndarray:
    """Pack the task into the parameter vector of the numba functions."""
    f = model_facts(cfg.DOMAIN)
    p = np.zeros(N_TP, dtype=np.float64)
    p[TP_DOMAIN] = DOMAIN_CODES[cfg.DOMAIN]
    p[TP_SPEED] = TASK_SPEED[(cfg.DOMAIN, cfg.TASK)]
    p[TP_NQ], p[TP_NV], p[TP_NU] = f.nq, f.nv, f.nu
    return p


def measurement_offsets(cfg: DmcConfig) -> np.ndarray:
    """Where each measurement field starts, in layout order (the row functions read them)."""
    layout = model_facts(cfg.DOMAIN).layout
    return np.array([layout.slice(name).start for name in layout.names], dtype=np.int64)


# --- numba row functions ------------------------------------------------------------------------
@njit(inline="always")
def tolerance(
    x: float, lower: float, upper: float, margin: float, sigmoid: int, value_at_margin: float
) -> float:
    """1 inside ``[lower, upper]``, a sigmoid of the distance over ``margin`` outside.

    dm_control's ``rewards.tolerance`` for the gaussian, linear and quadratic sigmoids: with
    ``d`` the distance to the nearest bound over ``margin``, gaussian ``exp(-(d s)^2 / 2)``
    with ``s = sqrt(-2 ln v)``; linear ``1 - d (1 - v)``, quadratic ``1 - d^2 (1 - v)``, both
    0 once that scaled distance reaches 1. ``margin == 0`` gives an indicator.
    """
    if lower <= x <= upper:
        return 1.0
    if margin == 0.0:
        return 0.0
    d = (lower - x if x < lower else x - upper) / margin
    if sigmoid == SIGMOID_GAUSSIAN:
        scale = math.sqrt(-2.0 * math.log(value_at_margin))
        return math.exp(-0.5 * (d * scale) ** 2)
    if sigmoid == SIGMOID_LINEAR:
        scaled = d * (1.0 - value_at_margin)
        return 1.0 - scaled if abs(scaled) < 1.0 else 0.0
    scaled = d * math.sqrt(1.0 - value_at_margin)
    return 1.0 - scaled**2 if abs(scaled) < 1.0 else 0.0


@njit(inline="always")
def _cheetah(m: np.ndarray, mo: np.ndarray, tp: np.ndarray, obs: np.ndarray) -> float:
    nq, nv = int(tp[TP_NQ]), int(tp[TP_NV])
    for k in range(nq - 1):
        obs[k] = m[mo[0] + 1 + k]
    for k in range(nv):
        obs[nq - 1 + k] = m[mo[1] + k]
    speed = tp[TP_SPEED]
    return tolerance(m[mo[3]], speed, math.inf, speed, SIGMOID_LINEAR, 0.0)


@njit(inline="always")
def _walker(m: np.ndarray, mo: np.ndarray, tp: np.ndarray, obs: np.ndarray) -> float:
    nv = int(tp[TP_NV])
    n_or = mo[5] - mo[4]
    for k in range(n_or):
        obs[k] = m[mo[4] + k]
    height = m[mo[5]]
    obs[n_or] = height
    for k in range(nv):
        obs[n_or + 1 + k] = m[mo[1] + k]
    standing = tolerance(
        height, WALKER_STAND_HEIGHT_M, math.inf, WALKER_STAND_HEIGHT_M / 2, SIGMOID_GAUSSIAN, 0.1
    )
    upright = (1.0 + m[mo[6]]) / 2.0
    stand = (3.0 * standing + upright) / 4.0
    speed = tp[TP_SPEED]
    if speed == 0.0:
        return stand
    move = tolerance(m[mo[3]], speed, math.inf, speed / 2.0, SIGMOID_LINEAR, 0.5)
    return stand * (5.0 * move + 1.0) / 6.0


@njit(inline="always")
def _hopper(m: np.ndarray, mo: np.ndarray, tp: np.ndarray, obs: np.ndarray) -> float:
    nq, nv, nu = int(tp[TP_NQ]), int(tp[TP_NV]), int(tp[TP_NU])
    for k in range(nq - 1):
        obs[k] = m[mo[0] + 1 + k]
    for k in range(nv):
        obs[nq - 1 + k] = m[mo[1] + k]
    obs[nq - 1 + nv] = math.log1p(m[mo[4]])
    obs[nq + nv] = math.log1p(m[mo[4] + 1])
    height = m[mo[5]] - m[mo[5] + 1]
    standing = tolerance(height, HOPPER_STAND_HEIGHT_M, HOPPER_MAX_HEIGHT_M, 0.0, 0, 0.1)
    if tp[TP_SPEED] > 0.0:
        speed = tp[TP_SPEED]
        return standing * tolerance(m[mo[3]], speed, math.inf, speed / 2.0, SIGMOID_LINEAR, 0.5)
    total = 0.0
    for k in range(nu):
        total += tolerance(m[mo[2] + k], 0.0, 0.0, 1.0, SIGMOID_QUADRATIC, 0.0)
    return standing * (total / nu + 4.0) / 5.0


@njit(inline="always")
def _small_control(m: np.ndarray, at: int, nu: int) -> float:
    """(4 + mean_k tol(u_k, 0, 0, 1, quadratic, 0)) / 5: dm_control's small-control term."""
    total = 0.0
    for k in range(nu):
        total += tolerance(m[at + k], 0.0, 0.0, 1.0, SIGMOID_QUADRATIC, 0.0)
    return (4.0 + total / nu) / 5.0


@njit(inline="always")
def _humanoid(m: np.ndarray, mo: np.ndarray, tp: np.ndarray, obs: np.ndarray) -> float:
    nq, nv, nu = int(tp[TP_NQ]), int(tp[TP_NV]), int(tp[TP_NU])
    k = 0
    for j in range(7, nq):  # joint angles: the free root's 7 entries skipped
        obs[k] = m[mo[0] + j]
        k += 1
    head = m[mo[4]]
    obs[k] = head
    k += 1
    xm, tx, ex = mo[5], mo[6], mo[7]
    for limb in range(4):  # (x_limb - x_torso) . R_torso: the limb in the torso frame
        for c in range(3):
            v = 0.0
            for r in range(3):
                v += (m[ex + 3 * limb + r] - m[tx + r]) * m[xm + 3 * r + c]
            obs[k] = v
            k += 1
    for c in range(3):  # zx, zy, zz
        obs[k] = m[xm + 6 + c]
        k += 1
    for c in range(3):
        obs[k] = m[mo[3] + c]
        k += 1
    for j in range(nv):
        obs[k + j] = m[mo[1] + j]
    standing = tolerance(
        head,
        HUMANOID_STAND_HEIGHT_M,
        math.inf,
        HUMANOID_STAND_HEIGHT_M / 4.0,
        SIGMOID_GAUSSIAN,
        0.1,
    )
    upright = tolerance(m[xm + 8], 0.9, math.inf, 1.9, SIGMOID_LINEAR, 0.0)
    control = _small_control(m, mo[2], nu)
    vx, vy = m[mo[3]], m[mo[3] + 1]
    speed = tp[TP_SPEED]
    if speed == 0.0:
        dont_move = (
            tolerance(vx, 0.0, 0.0, 2.0, SIGMOID_GAUSSIAN, 0.1)
            + tolerance(vy, 0.0, 0.0, 2.0, SIGMOID_GAUSSIAN, 0.1)
        ) / 2.0
        return control * (standing * upright) * dont_move
    move = tolerance(math.sqrt(vx * vx + vy * vy), speed, math.inf, speed, SIGMOID_LINEAR, 0.0)
    return control * (standing * upright) * ((5.0 * move + 1.0) / 6.0)


@njit(inline="always")
def _quadruped(m: np.ndarray, mo: np.ndarray, tp: np.ndarray, obs: np.ndarray) -> float:
    # measurement fields 4..9: hinge qpos, hinge qvel, act, torso zz, imu, force/torque
    k = 0
    for j in range(mo[4], mo[7]):  # egocentric state: hinge qpos, hinge qvel, act
        obs[k] = m[j]
        k += 1
    for c in range(3):
        obs[k] = m[mo[3] + c]
        k += 1
    upright = m[mo[7]]
    obs[k] = upright
    k += 1
    for j in range(mo[8], mo[9]):
        obs[k] = m[j]
        k += 1
    for j in range(mo[9], mo[10]):
        obs[k] = math.asinh(m[j])
        k += 1
    speed = tp[TP_SPEED]
    move = tolerance(m[mo[3]], speed, math.inf, speed, SIGMOID_LINEAR, 0.5)
    return tolerance(upright, 1.0, math.inf, 2.0, SIGMOID_LINEAR, 0.0) * move


@njit
def observe_batch(
    meas: np.ndarray, mo: np.ndarray, tp: np.ndarray, obs: np.ndarray, reward: np.ndarray
) -> None:
    """Write every row's observation and reward from its measurement.

    A row whose measurement flags unstable physics (its last entry) gets reward 0.
    """
    domain = int(tp[TP_DOMAIN])
    last = meas.shape[1] - 1
    for i in range(meas.shape[0]):
        if domain == 0:
            r = _cheetah(meas[i], mo, tp, obs[i])
        elif domain == 1:
            r = _walker(meas[i], mo, tp, obs[i])
        elif domain == 2:
            r = _hopper(meas[i], mo, tp, obs[i])
        elif domain == 3:
            r = _humanoid(meas[i], mo, tp, obs[i])
        else:
            r = _quadruped(meas[i], mo, tp, obs[i])
        reward[i] = 0.0 if meas[i, last] > 0.0 else r


class DmcTask:
    """A control-suite task for one env (a batch of one over :func:`observe_batch`).

    Args:
        cfg: The task's config.
    """

    def __init__(self, cfg: DmcConfig) -> None:
        """Build the spaces and the parameter vectors."""
        self.cfg = cfg
        self.facts = model_facts(cfg.DOMAIN)
        self.layout = observation_layout(cfg)
        self.observation_space = self.layout.space(np.float32)
        self.action_space, self.action_labels = action_space(self.facts)
        self.reward_scales = {"dmc": 1.0}
        self._tp = task_params(cfg)
        self._mo = measurement_offsets(cfg)
        self._reward = np.zeros(1)
        self._size = self.layout.size
        self._max_steps = cfg.max_steps
        self._steps = 0

    def _observe(self, measurement: np.ndarray) -> tuple[np.ndarray, float]:
        obs = np.empty((1, self._size), dtype=np.float32)
        observe_batch(measurement.reshape(1, -1), self._mo, self._tp, obs, self._reward)
        return obs[0], float(self._reward[0])

    def reset(
        self, measurement: np.ndarray, seed: int | None, options: dict[str, Any] | None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """First observation of an episode (the task draws nothing itself)."""
        self._steps = 0
        return self._observe(measurement)[0], {}

    def command(self, action: np.ndarray, measurement: np.ndarray) -> np.ndarray:
        """The actuators' controls are the action (already a float64 array, not changed)."""
        return action

    def step(self, measurement: np.ndarray, applied_command: np.ndarray) -> TaskStep:
        """Observation and reward after a control step.

        Truncation after ``max_steps``, or at once when the measurement flags unstable
        physics (``info["physics_unstable"]``; the reward is then 0).
        """
        self._steps += 1
        obs, reward = self._observe(measurement)
        unstable = bool(measurement[-1] > 0.0)
        truncated = unstable or self._steps >= self._max_steps
        return TaskStep(obs, {"dmc": reward}, False, truncated, {"physics_unstable": unstable})
