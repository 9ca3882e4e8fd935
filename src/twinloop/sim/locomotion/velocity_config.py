"""Configuration of ``twinloop/QuadrupedVelocity-v0`` (frozen, units in field names).

Sources of the defaults:

* [LG] Rudin et al., "Learning to Walk in Minutes Using Massively Parallel Deep RL", CoRL 2021
  (legged_gym): sim dt 0.005 s, decimation 4 (policy at 50 Hz), command ranges +-1, reward
  terms and weights (per second; multiplied by the control period), feet air time 0.5 s.
* [MP] MuJoCo Playground, Go1 joystick task (Zakka et al. 2025): Kp 35, Kd 0.5, action scale
  0.5, per-channel observation noise times one level.
* [REF] ``shared/reference/locomotion.md``: the domain-randomisation ranges, observation noise,
  latency of 1-3 control steps or ~30 ms, pushes every ~15 s up to 1 m/s.

Every randomised value has a comment with its distribution and units, is drawn per env at every
reset (:mod:`.effects`), and has its own off-switch (``*_enabled``): off means the nominal value.
"""

from __future__ import annotations

import dataclasses

from twinloop.core.config import ConfigSection, cross_check, param
from twinloop.core.safety import SafetyConfig

#: Config switches of every per-episode effect drawn at reset (domain randomisation, pushes,
#: action latency): a twin with ``--no-hidden-effects`` and an identification's replay model
#: turn them all off.
RANDOM_EFFECT_SWITCHES = (
    "randomization.friction_enabled",
    "randomization.mass_scale_enabled",
    "randomization.added_mass_enabled",
    "randomization.com_enabled",
    "randomization.motor_strength_enabled",
    "randomization.motor_offset_enabled",
    "randomization.joint_friction_enabled",
    "randomization.gains_enabled",
    "randomization.push_enabled",
    "latency.action_enabled",
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class VelocityCommandConfig(ConfigSection):
    """The commanded body velocity, drawn uniformly per episode [LG]."""

    lin_vel_x_min_m_per_s: float = param(-1.0, units="m/s", ge=-3.0, le=3.0, doc="[LG]")
    lin_vel_x_max_m_per_s: float = param(
        1.0, units="m/s", ge="lin_vel_x_min_m_per_s", le=3.0, doc="U(min, max) forward [LG]"
    )
    lin_vel_y_min_m_per_s: float = param(-1.0, units="m/s", ge=-3.0, le=3.0, doc="[LG]")
    lin_vel_y_max_m_per_s: float = param(
        1.0, units="m/s", ge="lin_vel_y_min_m_per_s", le=3.0, doc="U(min, max) lateral [LG]"
    )
    yaw_rate_min_rad_per_s: float = param(-1.0, units="rad/s", ge=-5.0, le=5.0, doc="[LG]")
    yaw_rate_max_rad_per_s: float = param(
        1.0, units="rad/s", ge="yaw_rate_min_rad_per_s", le=5.0, doc="U(min, max) yaw [LG]"
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class QuadrupedControlConfig(ConfigSection):
    """The PD loop under the policy: rates, gains, action scale."""

    sim_dt_s: float = param(0.005, units="s", gt=0.0, le=0.02, doc="physics step, 200 Hz [LG]")
    decimation: int = param(4, ge=1, le=100, doc="physics steps per policy step (50 Hz) [LG]")
    kp_nm_per_rad: float = param(30.0, units="N m/rad", gt=0.0, le=500.0, doc="20-35 [LG, MP]")
    kd_nm_s_per_rad: float = param(0.6, units="N m s/rad", ge=0.0, le=50.0, doc="0.5-1 [LG, MP]")
    action_scale_rad: float = param(
        0.5, units="rad", gt=0.0, le=2.0, doc="target = default pose + scale * action [MP]"
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class VelocityRewardConfig(ConfigSection):
    """Reward weights per second of simulated time (scaled by the control period) [LG]."""

    tracking_lin_vel: float = param(1.0, doc="exp(-|cmd_xy - v_xy|^2 / sigma) [LG]")
    tracking_ang_vel: float = param(0.5, doc="exp(-(cmd_yaw - w_z)^2 / sigma) [LG]")
    lin_vel_z: float = param(-2.0, doc="v_z^2 (m^2/s^2) [LG]")
    ang_vel_xy: float = param(-0.05, doc="|w_xy|^2 (rad^2/s^2) [LG]")
    orientation: float = param(-1.0, doc="|g_xy|^2 of the body-frame gravity direction [LG]")
    torques: float = param(-2e-4, doc="|tau|^2 (N^2 m^2) [LG]")
    action_rate: float = param(-0.01, doc="|a_t - a_(t-1)|^2 [LG]")
    feet_air_time: float = param(1.0, doc="sum over touchdowns of (air time - target) [LG]")
    tracking_sigma: float = param(0.25, gt=0.0, le=10.0, doc="tracking kernel width [LG]")
    air_time_target_s: float = param(0.5, units="s", ge=0.0, le=5.0, doc="[LG]")


@dataclasses.dataclass(frozen=True, kw_only=True)
class PlantConfig(ConfigSection):
    """The robot's own physical values around the model's nominal ones (all nominal: the MJCF).

    A device differs from the simulator in fixed ways; a device profile
    (``twinloop serve robot --profile``, :mod:`twinloop.sim.locomotion.profile`) sets these.
    Domain randomisation acts on top: its scale draws multiply these values, its added mass
    adds to :attr:`added_base_mass_kg`, and its friction draw replaces :attr:`floor_friction`
    while it is on; the action delay adds :attr:`actuation_delay_ms`.
    """

    floor_friction: float = param(1.0, ge=0.0, le=5.0, doc="sliding friction of the floor")
    mass_scale: float = param(1.0, gt=0.0, le=2.0, doc="every link's mass and inertia x this")
    added_base_mass_kg: float = param(
        0.0, units="kg", ge=-3.0, le=20.0, doc="a payload on the trunk (battery, sensors)"
    )
    motor_strength: float = param(1.0, gt=0.0, le=2.0, doc="every motor's torque x this")
    joint_friction_scale: float = param(
        1.0, ge=0.0, le=10.0, doc="every joint's friction loss x this"
    )
    actuation_delay_ms: float = param(
        0.0,
        units="ms",
        ge=0.0,
        le=200.0,
        doc="from command to motor, in physics steps (bus and motor driver)",
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class RandomizationConfig(ConfigSection):
    """Domain randomisation of the plant, drawn per env at every reset [REF]."""

    friction_enabled: bool = param(True, doc="randomise the floor's friction")
    friction_min: float = param(0.4, ge=0.0, le=5.0, doc="floor friction ~ U(min, max) [REF]")
    friction_max: float = param(1.0, ge="friction_min", le=5.0, doc="[REF]; wider: 0.1-3.0")
    mass_scale_enabled: bool = param(True, doc="scale every link's mass and inertia")
    mass_scale_min: float = param(0.9, gt=0.0, le=2.0, doc="per link ~ U(min, max) [REF]")
    mass_scale_max: float = param(1.1, ge="mass_scale_min", le=2.0, doc="[REF]")
    added_mass_enabled: bool = param(True, doc="add a payload to the trunk")
    added_mass_min_kg: float = param(-1.0, units="kg", ge=-3.0, le=20.0, doc="~ U(min, max) [REF]")
    added_mass_max_kg: float = param(3.0, units="kg", ge="added_mass_min_kg", le=20.0, doc="[REF]")
    com_enabled: bool = param(True, doc="shift the trunk's centre of mass")
    com_offset_m: float = param(0.05, units="m", ge=0.0, le=0.2, doc="each axis ~ U(-x, x) [REF]")
    motor_strength_enabled: bool = param(True, doc="scale each motor's torque")
    motor_strength_min: float = param(0.9, gt=0.0, le=2.0, doc="per motor ~ U(min, max) [REF]")
    motor_strength_max: float = param(1.1, ge="motor_strength_min", le=2.0, doc="[REF]")
    motor_offset_enabled: bool = param(True, doc="offset each motor's zero (calibration error)")
    motor_offset_rad: float = param(0.02, units="rad", ge=0.0, le=0.5, doc="~ U(-x, x) [REF]")
    joint_friction_enabled: bool = param(True, doc="scale each joint's friction loss")
    joint_friction_min: float = param(0.9, ge=0.0, le=5.0, doc="per joint ~ U(min, max) [REF]")
    joint_friction_max: float = param(1.1, ge="joint_friction_min", le=5.0, doc="[REF]")
    gains_enabled: bool = param(True, doc="scale the PD gains")
    kp_scale_min: float = param(0.9, gt=0.0, le=2.0, doc="Kp x U(min, max), per env")
    kp_scale_max: float = param(1.1, ge="kp_scale_min", le=2.0, doc="assumed +-10 %")
    kd_scale_min: float = param(0.9, gt=0.0, le=2.0, doc="Kd x U(min, max), per env")
    kd_scale_max: float = param(1.1, ge="kd_scale_min", le=2.0, doc="assumed +-10 %")
    push_enabled: bool = param(True, doc="push the trunk every push_interval_s")
    push_interval_s: float = param(15.0, units="s", gt=0.0, le=1e6, doc="[REF]")
    push_max_m_per_s: float = param(
        1.0, units="m/s", ge=0.0, le=5.0, doc="each horizontal axis += U(-x, x) [REF]"
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class NoiseConfig(ConfigSection):
    """Uniform observation noise: U(-1, 1) x channel scale x level [REF, MP]."""

    enabled: bool = param(True, doc="add observation noise")
    level: float = param(1.0, ge=0.0, le=10.0, doc="one factor on every channel [MP]")
    joint_pos_rad: float = param(0.03, units="rad", ge=0.0, le=1.0, doc="0.01-0.03 [REF]")
    joint_vel_rad_per_s: float = param(1.5, units="rad/s", ge=0.0, le=20.0, doc="[REF]")
    gyro_rad_per_s: float = param(0.2, units="rad/s", ge=0.0, le=5.0, doc="[REF]")
    gravity: float = param(0.05, ge=0.0, le=1.0, doc="projected gravity (unit vector) [REF]")
    lin_vel_m_per_s: float = param(0.1, units="m/s", ge=0.0, le=5.0, doc="[REF]")


@dataclasses.dataclass(frozen=True, kw_only=True)
class LatencyConfig(ConfigSection):
    """Action and observation delay in control steps (20 ms each at 50 Hz) and in ms [REF].

    The delay is drawn per env at every reset, uniformly among the integers ``[min, max]``;
    with jitter, every step adds another uniform integer in ``[0, jitter]``. The action delay
    takes a further part in milliseconds, rounded to whole physics steps (``sim_dt_s``, 5 ms
    by default) and drawn the same way (uniform among the whole physics steps in
    ``[min_ms, max_ms]``, jitter among ``[0, jitter_ms]``): a delay that is not a whole number
    of control steps switches the motors' target part-way through a control step, as on a
    robot whose commands arrive between policy ticks. The observation delay is in control
    steps only: observations are sampled at the policy's rate.
    """

    action_enabled: bool = param(True, doc="delay the joint targets on their way to the motors")
    action_delay_min_steps: int = param(1, ge=0, le=50, doc="1-2 steps = 20-40 ms (~30 ms) [REF]")
    action_delay_max_steps: int = param(2, ge="action_delay_min_steps", le=50, doc="[REF]")
    action_jitter_steps: int = param(0, ge=0, le=50, doc="extra U{0..j} steps, every step")
    action_delay_min_ms: float = param(
        0.0,
        ge=0.0,
        le=1000.0,
        doc="a further action delay in ms, applied at physics-step resolution (sim_dt_s), so "
        "that a target can reach the motors within a control step (walk-these-ways: 6 x 5 ms)",
    )
    action_delay_max_ms: float = param(
        0.0, ge="action_delay_min_ms", le=1000.0, doc="drawn per reset in [min, max] ms"
    )
    action_jitter_ms: float = param(
        0.0, ge=0.0, le=1000.0, doc="extra U[0, j] ms (in physics steps), every control step"
    )
    observation_enabled: bool = param(True, doc="delay the proprioceptive observation")
    observation_delay_min_steps: int = param(0, ge=0, le=50, doc="[REF]")
    observation_delay_max_steps: int = param(
        1, ge="observation_delay_min_steps", le=50, doc="[REF]"
    )
    observation_jitter_steps: int = param(0, ge=0, le=50, doc="extra U{0..j} steps, every step")

    @property
    def max_action_delay(self) -> int:
        """Longest action delay that can occur (sizes the buffer)."""
        return self.action_delay_max_steps + self.action_jitter_steps

    @property
    def max_observation_delay(self) -> int:
        """Longest observation delay that can occur (sizes the buffer)."""
        return self.observation_delay_max_steps + self.observation_jitter_steps


@dataclasses.dataclass(frozen=True, kw_only=True)
class QuadrupedVelocityConfig(ConfigSection):
    """``twinloop/QuadrupedVelocity-v0``: track a commanded body velocity with a Go1-sized robot."""

    max_steps: int = param(1000, ge=1, le=10_000_000, doc="20 s at 50 Hz [LG]")
    threads: int = param(
        0,
        ge=0,
        le=256,
        doc="vector env worker threads (0: one per CPU); results do not depend on it",
    )
    max_tilt_rad: float = param(
        1.0, units="rad", gt=0.0, le=3.1416, doc="a fall: trunk tilted beyond this from upright"
    )
    terminate_on_trunk_contact: bool = param(True, doc="a fall: the trunk touches the floor [LG]")
    joint_noise_rad: float = param(
        0.1, units="rad", ge=0.0, le=0.5, doc="initial joints = default pose + U(-x, x)"
    )
    history_steps: int = param(
        3, ge=1, le=50, doc="frames of (observation, last action) stacked; 1: no history"
    )
    command: VelocityCommandConfig = dataclasses.field(default_factory=VelocityCommandConfig)
    control: QuadrupedControlConfig = dataclasses.field(default_factory=QuadrupedControlConfig)
    reward: VelocityRewardConfig = dataclasses.field(default_factory=VelocityRewardConfig)
    plant: PlantConfig = dataclasses.field(default_factory=PlantConfig)
    randomization: RandomizationConfig = dataclasses.field(default_factory=RandomizationConfig)
    noise: NoiseConfig = dataclasses.field(default_factory=NoiseConfig)
    latency: LatencyConfig = dataclasses.field(default_factory=LatencyConfig)
    safety: SafetyConfig = dataclasses.field(default_factory=SafetyConfig)

    @property
    def control_dt_s(self) -> float:
        """The policy's period (s)."""
        return self.control.sim_dt_s * self.control.decimation

    @cross_check
    def _push_after_a_step(self) -> str | None:
        if self.randomization.push_interval_s < self.control_dt_s:
            return (
                f"randomization.push_interval_s = {self.randomization.push_interval_s} must be "
                f">= the control period {self.control_dt_s} s"
            )
        return None
