"""A two-joint robot in degrees and its mapping: the bridge's tests without a simulator."""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np

from twinloop.core.layout import Field, Layout
from twinloop.hardware.lerobot.backend import LeRobotBackend, LeRobotConfig
from twinloop.hardware.lerobot.fake import FakeRobot
from twinloop.hardware.lerobot.protocol import (
    Channel,
    FiniteDifference,
    LeRobotMapping,
    Unavailable,
)

#: The command space (rad) is wider than the robot's own limits (degrees), so the robot clips.
COMMAND_LIMIT_RAD = 1.5
ROBOT_LIMIT_DEG = 60.0
DT = 0.02


def layout() -> Layout:
    """Two joint positions, their rates, and a temperature the robot does not report."""
    return Layout(
        [
            Field("q_rad", (2,)),
            Field("qd_rad_per_s", (2,)),
            Field("temperature_c"),
        ]
    )


def mapping(*, degrees: bool = True, **overrides: Any) -> LeRobotMapping:
    """``a.pos``/``b.pos`` in degrees feed ``q_rad``; rates by finite difference; no temperature."""
    ch = Channel.degrees if degrees else Channel
    kwargs: dict[str, Any] = {
        "measurement": {
            "q_rad": (ch("a.pos"), ch("b.pos")),
            "qd_rad_per_s": FiniteDifference("q_rad", at_reset=0.0),
            "temperature_c": Unavailable(why="no sensor"),
        },
        "action": (ch("a.pos"), ch("b.pos")),
        "ignore": (),
        "hold_field": "q_rad",
    }
    kwargs.update(overrides)
    space = gym.spaces.Box(-COMMAND_LIMIT_RAD, COMMAND_LIMIT_RAD, (2,), dtype=np.float64)
    return LeRobotMapping(layout(), space, **kwargs)


def robot(**kwargs: Any) -> FakeRobot:
    """The fake two-joint arm, limited to +-60 degrees."""
    lim = (-ROBOT_LIMIT_DEG, ROBOT_LIMIT_DEG)
    kwargs.setdefault("limits", {"a.pos": lim, "b.pos": lim})
    return FakeRobot(["a", "b"], **kwargs)


def backend(fake: FakeRobot | None = None, **config: Any) -> LeRobotBackend:
    """The bridge over ``fake`` (no pacing, a 0.5 s deadline unless overridden)."""
    config.setdefault("pace", False)
    config.setdefault("timeout_s", 0.5)
    config.setdefault("control_dt_s", DT)
    m = config.pop("mapping", None) or mapping()
    return LeRobotBackend(fake or robot(), config=LeRobotConfig(**config), mapping=m)


def rad(deg: float) -> float:
    """Degrees to radians."""
    return deg * math.pi / 180.0
