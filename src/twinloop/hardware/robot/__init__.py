"""The joint-level robot: its protocol, its network twin and the ``robot`` backend.

Backend factory (named in the registry table): ``robot``, the velocity task of
``twinloop/QuadrupedVelocity-v0`` over a twin served by ``twinloop serve robot``
(``address=``, ``token=``, ``timeout_s=``, ``retries=``).
"""

from __future__ import annotations

from typing import Any

from twinloop.sim.locomotion.velocity_config import QuadrupedVelocityConfig


def make_robot_backend(
    cfg: QuadrupedVelocityConfig,
    address: str = "tcp://127.0.0.1:5556",
    token: str | None = None,
    timeout_s: float = 1.0,
    retries: int = 2,
) -> Any:
    """The quadruped over the robot protocol at ``address``."""
    from twinloop.hardware.robot.backend import RobotBackend
    from twinloop.hardware.robot.remote import RemoteRobot

    return RobotBackend(cfg, RemoteRobot(address, token, timeout_s=timeout_s, retries=retries))
