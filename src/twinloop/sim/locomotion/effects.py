"""Sim-to-real effects of the quadruped: domain randomisation, pushes, noise, delays, history.

Every effect is drawn per env from that env's :mod:`twinloop.core.rng` streams, at every reset
(never once at construction), so N single envs and one vector env of N draw the same values.
Draws never depend on the off-switches: a switched-off effect still consumes its draws and then
uses the nominal value, so turning one effect off leaves every other draw unchanged.

=======================  ==============================================  ==================
effect                   distribution (defaults: ``shared/reference``)    where it acts
=======================  ==============================================  ==================
floor friction           U(0.4, 1.0), per env                            floor geom (priority)
link masses              x U(0.9, 1.1) per link (mass and inertia)       every robot body
added base mass          + U(-1, 3) kg                                   trunk
centre of mass           + U(-0.05, 0.05) m per axis                     trunk
motor strength           x U(0.9, 1.1) per motor (both PD gains)         actuators
motor offset             + U(-0.02, 0.02) rad per motor (zero error)     actuator targets
joint friction           x U(0.9, 1.1) per joint (friction loss)         joints
Kp, Kd                   x U(0.9, 1.1) each, per env                     actuators
pushes                   trunk xy velocity += U(-1, 1) m/s every 15 s    trunk
observation noise        U(-1, 1) x channel scale x level, every step    task (observation)
action delay             U{min..max} steps per reset (+ U{0..jitter})    backend (targets)
observation delay        U{min..max} steps per reset (+ U{0..jitter})    task (observation)
history                  last ``history_steps`` frames stacked            task (observation)
=======================  ==============================================  ==================

Streams: the plant's draws (randomisation, action delay, pushes, action jitter) come from
``STREAM_BACKEND``; the task's (command, observation delay) from ``STREAM_TASK``; noise and
observation jitter from ``STREAM_SENSOR``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from twinloop.core.jit import njit
from twinloop.core.layout import Field, Layout
from twinloop.core.rng import uniform
from twinloop.sim.locomotion.velocity_config import (
    LatencyConfig,
    NoiseConfig,
    PlantConfig,
    RandomizationConfig,
)

# --- randomisation parameters (a flat float vector for numba) ---------------------------------
RP_FRICTION = 0  # enabled, min, max
RP_MASS = 3  # enabled, min, max
RP_ADDED = 6  # enabled, min, max
RP_COM = 9  # enabled, half width
RP_STRENGTH = 11  # enabled, min, max
RP_OFFSET = 14  # enabled, half width
RP_JFRIC = 16  # enabled, min, max
RP_GAINS = 19  # enabled, kp min, kp max, kd min, kd max
N_RP = 24


def randomization_params(cfg: RandomizationConfig) -> np.ndarray:
    """Pack the randomisation ranges and switches for :func:`draw_randomization`."""
    c = cfg
    return np.array(
        [
            c.friction_enabled, c.friction_min, c.friction_max,
            c.mass_scale_enabled, c.mass_scale_min, c.mass_scale_max,
            c.added_mass_enabled, c.added_mass_min_kg, c.added_mass_max_kg,
            c.com_enabled, c.com_offset_m,
            c.motor_strength_enabled, c.motor_strength_min, c.motor_strength_max,
            c.motor_offset_enabled, c.motor_offset_rad,
            c.joint_friction_enabled, c.joint_friction_min, c.joint_friction_max,
            c.gains_enabled, c.kp_scale_min, c.kp_scale_max, c.kd_scale_min, c.kd_scale_max,
        ],
        dtype=np.float64,
    )  # fmt: skip


def randomization_layout(n_links: int, n_joints: int, nominal_friction: float) -> Layout:
    """The drawn values, as reported under ``info["true/<name>"]`` (nominal values in docs)."""
    return Layout(
        [
            Field(
                "floor_friction", doc=f"sliding friction of the floor (nominal {nominal_friction})"
            ),
            Field("link_mass_scale", (n_links,), doc="factor on each link's mass and inertia (1)"),
            Field("added_base_mass_kg", doc="payload added to the trunk (0 kg)"),
            Field("com_offset_m", (3,), doc="shift of the trunk's centre of mass (0 m)"),
            Field("motor_strength", (n_joints,), doc="factor on each motor's PD torque (1)"),
            Field("motor_offset_rad", (n_joints,), doc="error of each motor's zero (0 rad)"),
            Field("joint_friction_scale", (n_joints,), doc="factor on friction loss (1)"),
            Field("kp_scale", doc="factor on Kp (1)"),
            Field("kd_scale", doc="factor on Kd (1)"),
        ]
    )


@njit(inline="always")
def draw_range(rng: np.ndarray, i: int, k: int, lo: float, hi: float) -> float:
    """Uniform on (lo, hi] from stream ``k`` of env ``i`` (``lo`` itself when ``lo == hi``)."""
    return lo + (hi - lo) * uniform(rng, i, k)


@njit(inline="always")
def draw_int(rng: np.ndarray, i: int, k: int, lo: int, hi: int) -> int:
    """Uniform integer in ``[lo, hi]`` (one draw, even when ``lo == hi``)."""
    u = 1.0 - uniform(rng, i, k)  # [0, 1)
    return lo + min(int(u * (hi - lo + 1)), hi - lo)


@njit
def draw_randomization(
    rng: np.ndarray, i: int, k: int, p: np.ndarray, n_links: int, out: np.ndarray
) -> None:
    """Draw every randomised plant value of env ``i`` into ``out`` (:func:`randomization_layout`).

    Every value is drawn; a switched-off effect then writes its nominal value. ``out[0]``
    (the floor friction) is nominal-less here: its nominal is written by the caller when off.
    """
    nj = (out.shape[0] - 1 - n_links - 1 - 3 - 2) // 3
    o = 0
    f = draw_range(rng, i, k, p[RP_FRICTION + 1], p[RP_FRICTION + 2])
    out[o] = f if p[RP_FRICTION] else -1.0  # -1: the caller writes the model's nominal
    o += 1
    for b in range(n_links):
        s = draw_range(rng, i, k, p[RP_MASS + 1], p[RP_MASS + 2])
        out[o + b] = s if p[RP_MASS] else 1.0
    o += n_links
    a = draw_range(rng, i, k, p[RP_ADDED + 1], p[RP_ADDED + 2])
    out[o] = a if p[RP_ADDED] else 0.0
    o += 1
    for j in range(3):
        c = draw_range(rng, i, k, -p[RP_COM + 1], p[RP_COM + 1])
        out[o + j] = c if p[RP_COM] else 0.0
    o += 3
    for j in range(nj):
        s = draw_range(rng, i, k, p[RP_STRENGTH + 1], p[RP_STRENGTH + 2])
        out[o + j] = s if p[RP_STRENGTH] else 1.0
    o += nj
    for j in range(nj):
        s = draw_range(rng, i, k, -p[RP_OFFSET + 1], p[RP_OFFSET + 1])
        out[o + j] = s if p[RP_OFFSET] else 0.0
    o += nj
    for j in range(nj):
        s = draw_range(rng, i, k, p[RP_JFRIC + 1], p[RP_JFRIC + 2])
        out[o + j] = s if p[RP_JFRIC] else 1.0
    o += nj
    kp = draw_range(rng, i, k, p[RP_GAINS + 1], p[RP_GAINS + 2])
    kd = draw_range(rng, i, k, p[RP_GAINS + 3], p[RP_GAINS + 4])
    out[o] = kp if p[RP_GAINS] else 1.0
    out[o + 1] = kd if p[RP_GAINS] else 1.0


class ModelRandomizer:
    """Writes drawn values into one ``MjModel``, always starting from its nominal values.

    Args:
        model: The env's own ``MjModel`` (each env owns one: randomisation edits it).
        floor: Geom id of the floor.
        trunk: Body id of the trunk.
        kp: Nominal proportional gain (N m/rad).
        kd: Nominal derivative gain (N m s/rad).
    """

    def __init__(
        self, model: Any, floor: int, trunk: int, kp: float, kd: float, plant: PlantConfig
    ) -> None:
        """Remember the nominal values the draws scale: the model's, times the plant's."""
        self.model = model
        self.floor, self.trunk = floor, trunk
        self.kp, self.kd = kp, kd
        self.plant = plant
        self.friction = float(plant.floor_friction)
        self.mass = np.array(model.body_mass[1:]) * plant.mass_scale
        self.inertia = np.array(model.body_inertia[1:]) * plant.mass_scale
        self.ipos = np.array(model.body_ipos[trunk])
        self.frictionloss = np.array(model.dof_frictionloss[6:]) * plant.joint_friction_scale
        self.n_links = self.mass.size
        self.n_joints = int(model.nu)

    def apply(self, layout: Layout, drawn: np.ndarray, target: Any = None) -> None:
        """Set friction, masses, centre of mass, joint friction and PD gains from ``drawn``.

        ``target`` is where they go: the model (default) or any object with its arrays as
        attributes (one simulation's rows of a ``mujoco.batch.Batch``'s expanded fields).
        """
        m = self.model if target is None else target
        g = layout.get
        if drawn[0] < 0.0:
            drawn[0] = self.friction
        m.geom_friction[self.floor, 0] = drawn[0]
        scale = g(drawn, "link_mass_scale")
        m.body_mass[1:] = self.mass * scale
        m.body_inertia[1:] = self.inertia * scale[:, None]
        added = g(drawn, "added_base_mass_kg")[()] + self.plant.added_base_mass_kg
        m.body_mass[self.trunk] += added
        m.body_ipos[self.trunk] = self.ipos + g(drawn, "com_offset_m")
        m.dof_frictionloss[6:] = self.frictionloss * g(drawn, "joint_friction_scale")
        self.write_gains(layout, drawn, self.kp, self.kd, m)

    def write_gains(
        self, layout: Layout, drawn: np.ndarray, kp: Any, kd: Any, target: Any = None
    ) -> None:
        """Commanded gains ``kp``, ``kd`` as the motors realise them: x strength and gain scales."""
        m = self.model if target is None else target
        g = layout.get
        strength = g(drawn, "motor_strength") * self.plant.motor_strength
        kp_eff = strength * (kp * g(drawn, "kp_scale")[()])
        kd_eff = strength * (kd * g(drawn, "kd_scale")[()])
        m.actuator_gainprm[:, 0] = kp_eff
        m.actuator_biasprm[:, 1] = -kp_eff
        m.actuator_biasprm[:, 2] = -kd_eff


def delay_bounds(cfg: LatencyConfig, action: bool) -> tuple[int, int, int]:
    """``(min, max, jitter)`` steps of the action or observation delay (zeros when off)."""
    if action:
        if not cfg.action_enabled:
            return 0, 0, 0
        return cfg.action_delay_min_steps, cfg.action_delay_max_steps, cfg.action_jitter_steps
    if not cfg.observation_enabled:
        return 0, 0, 0
    return (
        cfg.observation_delay_min_steps,
        cfg.observation_delay_max_steps,
        cfg.observation_jitter_steps,
    )


@njit
def push_delayed(buf: np.ndarray, value: np.ndarray, delay: int) -> np.ndarray:
    """Shift the delay line ``buf`` (newest first), insert ``value``, return ``delay`` steps ago."""
    for t in range(buf.shape[0] - 1, 0, -1):
        for j in range(buf.shape[1]):
            buf[t, j] = buf[t - 1, j]
    for j in range(buf.shape[1]):
        buf[0, j] = value[j]
    return buf[min(delay, buf.shape[0] - 1)]


def noise_scales(cfg: NoiseConfig, n_joints: int) -> np.ndarray:
    """Per-element noise half-widths of one proprioceptive frame (linvel, gyro, gravity, q, qd)."""
    if not cfg.enabled:
        return np.zeros(9 + 2 * n_joints)
    per = [cfg.lin_vel_m_per_s] * 3 + [cfg.gyro_rad_per_s] * 3 + [cfg.gravity] * 3
    per += [cfg.joint_pos_rad] * n_joints + [cfg.joint_vel_rad_per_s] * n_joints
    return np.array(per, dtype=np.float64) * cfg.level


@njit(inline="always")
def add_noise(rng: np.ndarray, i: int, k: int, frame: np.ndarray, scales: np.ndarray) -> None:
    """Add U(-1, 1) x ``scales`` to ``frame`` (one draw per element, whatever the scale)."""
    for j in range(frame.shape[0]):
        frame[j] += scales[j] * (2.0 * uniform(rng, i, k) - 1.0)


@njit(inline="always")
def push_history(hist: np.ndarray, frame: np.ndarray, action: np.ndarray) -> None:
    """Shift the history (newest first) and insert ``(frame, action)`` as the newest entry."""
    for t in range(hist.shape[0] - 1, 0, -1):
        for j in range(hist.shape[1]):
            hist[t, j] = hist[t - 1, j]
    nf = frame.shape[0]
    for j in range(nf):
        hist[0, j] = frame[j]
    for j in range(action.shape[0]):
        hist[0, nf + j] = action[j]
