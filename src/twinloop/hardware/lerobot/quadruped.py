"""The mapping of ``twinloop/QuadrupedVelocity-v0`` onto a LeRobot robot's keys.

The task reads the ``sim`` backend's measurement (joint positions and velocities, trunk linear
velocity, gyro, gravity direction, height, foot and trunk contacts, motor torques; see
:func:`twinloop.sim.locomotion.velocity.measurement_layout`) and commands 12 joint position
targets in radians, joints in the order FR, FL, RR, RL x hip, thigh, calf.

:func:`quadruped_mapping` builds the usual case from key patterns: ``"{joint}.pos"`` for the
joints (LeRobot's convention), optional velocity, torque, gyro and IMU-quaternion keys. What a
pattern is not given for is declared, never zero: joint velocities are a finite difference of the
positions (0 at reset: the robot is assumed at rest when an episode starts), and the trunk's
linear velocity, height, foot and trunk contacts, and torques are :class:`~.protocol.Unavailable`
(NaN) unless mapped. NaN reaches the observation and the reward terms that read it (tracking
rewards, ``lin_vel_z``, ``feet_air_time``, ``torques``): deploy with a controller that does not
read those entries, or map them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from twinloop.hardware.lerobot.protocol import (
    Channel,
    FieldSource,
    FiniteDifference,
    GravityFromQuaternion,
    LeRobotMapping,
    Unavailable,
)


def quadruped_mapping(
    *,
    position: str = "{joint}.pos",
    velocity: str | None = None,
    torque: str | None = None,
    gyro: Sequence[str] | None = None,
    quaternion: Sequence[str] | None = None,
    degrees: bool = False,
    joint_names: Sequence[str] | None = None,
    ignore: Sequence[str] = (),
    fields: Mapping[str, FieldSource] | None = None,
) -> LeRobotMapping:
    """The velocity task's measurement and command on a LeRobot quadruped's keys.

    Args:
        position: Key pattern of a joint's position (read) and target (sent); ``{joint}`` is
            the robot's joint name.
        velocity: Key pattern of a joint's velocity; None: a finite difference of positions.
        torque: Key pattern of a joint's torque (N m); None: unavailable (NaN).
        gyro: The three keys of the trunk's angular velocity (rad/s, trunk frame); None: NaN.
        quaternion: The ``w, x, y, z`` keys of the trunk orientation; None: gravity is NaN.
        degrees: The robot speaks degrees (and degrees/s) for joints and the gyro.
        joint_names: The robot's names of the 12 joints in the task's order (FR, FL, RR, RL x
            hip, thigh, calf); None: the task's own names (``"FR_hip"`` ...).
        ignore: Observation keys the robot declares that the task does not read.
        fields: Sources of other measurement fields, replacing the defaults above (e.g.
            ``{"foot_contact": tuple(Channel(f"{leg}.contact") for leg in legs)}``).

    Raises:
        MappingError: Wrong number of joint names or keys, or a key used twice.
    """
    from twinloop.sim.locomotion.velocity import (
        JOINT_NAMES,
        command_space,
        measurement_layout,
    )

    names = tuple(JOINT_NAMES if joint_names is None else joint_names)
    if len(names) != len(JOINT_NAMES):
        from twinloop.hardware.lerobot.protocol import MappingError

        raise MappingError(f"joint_names has {len(names)} names; the quadruped has 12 joints")

    def chans(pattern: str, deg: bool) -> tuple[Channel, ...]:
        keys = [pattern.format(joint=n) for n in names]
        return tuple(Channel.degrees(k) if deg else Channel(k) for k in keys)

    def keyed(keys: Sequence[str] | None, why: str) -> FieldSource:
        if keys is None:
            return Unavailable(why=why)
        return tuple(Channel.degrees(k) if degrees else Channel(k) for k in keys)

    nan = Unavailable
    sources: dict[str, FieldSource] = {
        "joint_pos_rad": chans(position, degrees),
        "joint_vel_rad_per_s": (
            FiniteDifference("joint_pos_rad", at_reset=0.0)
            if velocity is None
            else chans(velocity, degrees)
        ),
        "lin_vel_m_per_s": nan(why="no trunk velocity estimate"),
        "gyro_rad_per_s": keyed(gyro, "no gyro"),
        "gravity": (
            nan(why="no IMU orientation")
            if quaternion is None
            else GravityFromQuaternion(
                tuple(quaternion)  # type: ignore[arg-type]
            )
        ),
        "height_m": nan(why="no height estimate"),
        "foot_contact": nan(why="no foot contact sensors"),
        "trunk_contact": nan(why="no trunk contact sensor"),
        "torque_nm": nan(why="no torque reading") if torque is None else chans(torque, False),
    }
    sources.update(fields or {})
    return LeRobotMapping(
        measurement_layout(),
        command_space(),
        measurement=sources,
        action=chans(position, degrees),
        ignore=ignore,
        hold_field="joint_pos_rad",
    )
