"""The LeRobot bridge: any LeRobot ``Robot`` object as a backend of the robot envs.

``backend="lerobot"`` runs ``twinloop/QuadrupedVelocity-v0`` on a robot object that follows
LeRobot's ``Robot`` interface (``connect``, ``get_observation``, ``send_action`` returning the
action actually sent, ``disconnect``). The bridge never imports ``lerobot``: pass a LeRobot robot
(``pip install 'lerobot>=0.4,<0.5'``), or any object with the same interface such as
:class:`~.fake.FakeRobot` and :class:`~.fake.SimQuadrupedRobot`.

Modules: :mod:`.protocol` (the interface and the declared mapping between the robot's dicts
and twinloop's arrays), :mod:`.backend` (:class:`~.backend.LeRobotBackend`), :mod:`.quadruped`
(the velocity task's mapping), :mod:`.fake` (robots for tests and dry runs).
"""

from __future__ import annotations

from typing import Any

from twinloop.sim.locomotion.velocity_config import QuadrupedVelocityConfig


def make_lerobot_backend(
    cfg: QuadrupedVelocityConfig,
    robot: Any = None,
    mapping: Any = None,
    timeout_s: float = 0.1,
    connect_timeout_s: float = 30.0,
    calibrate: bool = False,
    pace: bool = True,
    safe_pose: tuple[float, ...] = (),
    reset_hook: Any = None,
) -> Any:
    """Backend factory for ``backend="lerobot"`` of ``twinloop/QuadrupedVelocity-v0``.

    Args:
        cfg: The env's config (its control period paces the robot).
        robot: The robot object, or ``"module:factory"`` naming a function that returns one
            (called with no arguments; for command lines).
        mapping: A :class:`~.protocol.LeRobotMapping`, or ``"module:attr"`` naming one or a
            function that returns one; None: :func:`~.quadruped.quadruped_mapping` with its
            defaults (``"<joint>.pos"`` in radians).
        timeout_s: Deadline of one observation or action (s).
        connect_timeout_s: Deadline of connect and disconnect (s).
        calibrate: Let ``robot.connect`` calibrate (it may prompt on the terminal).
        pace: Keep actions one control period apart.
        safe_pose: Joint targets (rad) of the safe state; (): hold the last measured position.
        reset_hook: ``hook(robot, seed)`` run at every reset, or ``"module:attr"`` naming it
            (see :class:`~.backend.LeRobotBackend`).

    Raises:
        ValueError: No robot was given.
        MappingError: The mapping or the safe pose does not fit the task.
    """
    from twinloop.core.registry import load
    from twinloop.hardware.lerobot.backend import LeRobotBackend, LeRobotConfig
    from twinloop.hardware.lerobot.quadruped import quadruped_mapping

    if robot is None:
        raise ValueError(
            "backend 'lerobot' needs robot=<a LeRobot robot object> or robot='module:factory'"
        )
    if isinstance(robot, str):
        robot = load(robot)()
    if isinstance(reset_hook, str):
        reset_hook = load(reset_hook)
    if isinstance(mapping, str):
        mapping = load(mapping)
        mapping = mapping() if callable(mapping) else mapping
    config = LeRobotConfig(
        timeout_s=timeout_s,
        connect_timeout_s=connect_timeout_s,
        calibrate=calibrate,
        control_dt_s=cfg.control_dt_s,
        pace=pace,
        safe_pose=tuple(float(x) for x in safe_pose),
    )
    return LeRobotBackend(
        robot,
        config=config,
        mapping=quadruped_mapping() if mapping is None else mapping,
        reset_hook=reset_hook,
    )
