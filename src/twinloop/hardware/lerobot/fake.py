"""Robots with LeRobot's ``Robot`` interface and no hardware: for tests and dry runs of a mapping.

:class:`FakeRobot` follows LeRobot 0.4's documented interface (``lerobot/robots/robot.py``):
``observation_features`` / ``action_features`` readable while disconnected, ``connect`` raising
:class:`DeviceAlreadyConnectedError` when connected and ``get_observation`` / ``send_action`` /
``disconnect`` raising :class:`DeviceNotConnectedError` when not (both ``ConnectionError``, as in
LeRobot), and ``send_action`` returning the action actually sent after clipping: to each key's
``limits``, then to ``max_relative_target`` around the present position (as LeRobot's arm
followers do). Its joints are ideal position servos (the present position is the last goal).

Faults are injected with :meth:`FakeRobot.inject` (:class:`Fault`): a call raises, stalls, or
returns a value replaced or a key dropped, for a number of calls.

:class:`SimQuadrupedRobot` is the quadruped of ``twinloop/QuadrupedVelocity-v0`` behind the same
interface: its ``send_action`` runs one control period of the simulator's physics
(:class:`~twinloop.sim.locomotion.velocity.QuadrupedPhysics`, the ``sim`` backend's own code),
and its observation holds every quantity the task measures under LeRobot-style keys, in
radians or degrees. :meth:`SimQuadrupedRobot.mapping` maps all of them; with it, an episode
through the bridge equals the ``sim`` backend's from the same seed.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from twinloop.hardware.lerobot.protocol import DEG_PER_RAD, Channel, LeRobotMapping


class DeviceNotConnectedError(ConnectionError):
    """The robot is not connected (LeRobot's error of the same name)."""


class DeviceAlreadyConnectedError(ConnectionError):
    """The robot is already connected (LeRobot's error of the same name)."""


@dataclasses.dataclass
class Fault:
    """A fault injected into a :class:`FakeRobot`'s calls.

    Attributes:
        method: ``"connect"``, ``"get_observation"``, ``"send_action"`` or ``"disconnect"``.
        kind: ``"raise"`` (raise ``error``), ``"stall"`` (sleep ``seconds``, then answer),
            ``"value"`` (replace ``key``'s value in the answer with ``value``) or ``"drop"``
            (remove ``key`` from the answer).
        key: The key of a ``"value"`` or ``"drop"`` fault.
        value: The replacement value of a ``"value"`` fault.
        error: The exception of a ``"raise"`` fault (default: ``OSError("bus error")``).
        seconds: The stall of a ``"stall"`` fault.
        times: Calls affected; -1: every call from now on.
    """

    method: str
    kind: str
    key: str = ""
    value: Any = None
    error: BaseException | None = None
    seconds: float = 0.0
    times: int = 1

    def __post_init__(self) -> None:  # noqa: D105
        methods = ("connect", "get_observation", "send_action", "disconnect")
        if self.method not in methods:
            raise ValueError(f"Fault.method = {self.method!r} is not one of {methods}")
        if self.kind not in ("raise", "stall", "value", "drop"):
            raise ValueError(f"Fault.kind = {self.kind!r} is not raise, stall, value or drop")
        if self.kind in ("value", "drop") and not self.key:
            raise ValueError(f"a {self.kind!r} fault needs a key")


class FakeRobot:
    """A LeRobot-interface robot whose joints are ideal position servos.

    Args:
        motors: Motor names; the keys are ``f"{motor}{suffix}"``.
        suffix: Key suffix (LeRobot's arms use ``".pos"``).
        limits: ``{key: (low, high)}`` in the robot's units; goals are clipped to them.
        max_relative_target: Largest move from the present position per action (robot units);
            None: no such cap.
        initial: ``{key: position}`` at connect (default: 0, clipped to the limits).
        extra_observation: Constant scalar observations (``{"imu.gyro.x": 0.0}``).
        cameras: ``{name: (height, width, channels)}``; each observation holds a uint8 frame.
        calibrated: What ``is_calibrated`` says until ``calibrate()`` is called.
        robot_id: LeRobot's ``id`` of the robot.
    """

    name = "twinloop_fake"

    def __init__(
        self,
        motors: Sequence[str],
        *,
        suffix: str = ".pos",
        limits: Mapping[str, tuple[float, float]] | None = None,
        max_relative_target: float | None = None,
        initial: Mapping[str, float] | None = None,
        extra_observation: Mapping[str, float] | None = None,
        cameras: Mapping[str, tuple[int, int, int]] | None = None,
        calibrated: bool = True,
        robot_id: str = "fake",
    ) -> None:
        """Disconnected, with no faults pending."""
        self.id = robot_id
        self.robot_type = self.name
        self.keys = tuple(f"{m}{suffix}" for m in motors)
        self.limits = {k: (-math.inf, math.inf) for k in self.keys}
        unknown = sorted(set(limits or {}) - set(self.keys))
        if unknown:
            raise ValueError(f"limits for unknown keys: {', '.join(unknown)}")
        self.limits.update({k: (float(lo), float(hi)) for k, (lo, hi) in (limits or {}).items()})
        self.max_relative_target = max_relative_target
        self.initial = {k: float((initial or {}).get(k, 0.0)) for k in self.keys}
        self.extra = dict(extra_observation or {})
        self.cameras = dict(cameras or {})
        self._calibrated = bool(calibrated)
        self._connected = False
        self.present = {k: self._clip_to_limits(k, v) for k, v in self.initial.items()}
        self.faults: list[Fault] = []
        #: Every call, in order (``"connect(calibrate=False)"``, ``"send_action"`` ...).
        self.calls: list[str] = []
        #: ``(requested, sent)`` of every ``send_action``.
        self.actions: list[tuple[dict[str, float], dict[str, float]]] = []

    # features (readable while disconnected) -------------------------------------------------
    @property
    def observation_features(self) -> dict[str, Any]:
        """Motor keys and extra scalars as ``float``; cameras as their shape."""
        return {
            **dict.fromkeys(self.keys, float),
            **dict.fromkeys(self.extra, float),
            **{name: tuple(shape) for name, shape in self.cameras.items()},
        }

    @property
    def action_features(self) -> dict[str, Any]:
        """Motor keys as ``float``."""
        return dict.fromkeys(self.keys, float)

    @property
    def is_connected(self) -> bool:
        """Whether :meth:`connect` was called and :meth:`disconnect` was not since."""
        return self._connected

    @property
    def is_calibrated(self) -> bool:
        """As constructed, or True after :meth:`calibrate`."""
        return self._calibrated

    # lifecycle ------------------------------------------------------------------------------
    def connect(self, calibrate: bool = True) -> None:
        """Connect; calibrate if asked and needed.

        Raises:
            DeviceAlreadyConnectedError: Already connected.
        """
        self.calls.append(f"connect(calibrate={calibrate})")
        if self._connected:
            raise DeviceAlreadyConnectedError(f"{self} is already connected.")
        self._fault("connect", None)
        self._connected = True
        if calibrate and not self._calibrated:
            self.calibrate()
        self.configure()

    def calibrate(self) -> None:
        """Mark calibrated (no prompt: a fake has no hardware to move)."""
        self.calls.append("calibrate")
        self._calibrated = True

    def configure(self) -> None:
        """Nothing to configure."""

    def disconnect(self) -> None:
        """Disconnect.

        Raises:
            DeviceNotConnectedError: Not connected.
        """
        self.calls.append("disconnect")
        self._check_connected()
        self._fault("disconnect", None)
        self._connected = False

    # data -----------------------------------------------------------------------------------
    def get_observation(self) -> dict[str, Any]:
        """Present positions, extra scalars and camera frames.

        Raises:
            DeviceNotConnectedError: Not connected.
        """
        self.calls.append("get_observation")
        self._check_connected()
        obs: dict[str, Any] = self._read()
        for name, shape in self.cameras.items():
            obs[name] = np.zeros(shape, dtype=np.uint8)
        return self._fault("get_observation", obs)

    def send_action(self, action: dict[str, Any]) -> dict[str, Any]:
        """Clip the goals (limits, then ``max_relative_target``), move, and return them.

        Raises:
            DeviceNotConnectedError: Not connected.
            KeyError: An action key the robot does not have.
        """
        self.calls.append("send_action")
        self._check_connected()
        unknown = sorted(set(action) - set(self.keys))
        if unknown:
            raise KeyError(f"unknown action keys: {', '.join(unknown)}")
        sent = {}
        for k, goal in action.items():
            v = self._clip_to_limits(k, float(goal))
            if self.max_relative_target is not None:
                cap, now = self.max_relative_target, self.present[k]
                v = min(max(v, now - cap), now + cap)
            sent[k] = v
        self._write(sent)
        self.actions.append((dict(action), dict(sent)))
        return self._fault("send_action", dict(sent))

    def __enter__(self) -> FakeRobot:
        """Connect (calibrating if needed) and return self."""
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        """Disconnect."""
        self.disconnect()

    def __str__(self) -> str:
        """``"<id> <class>"``, as LeRobot prints robots."""
        return f"{self.id} {type(self).__name__}"

    # faults ---------------------------------------------------------------------------------
    def inject(self, fault: Fault) -> None:
        """Add a fault to the next ``fault.times`` calls of ``fault.method``."""
        self.faults.append(fault)

    def _fault(self, method: str, answer: Any) -> Any:
        for f in list(self.faults):
            if f.method != method:
                continue
            if f.times > 0:
                f.times -= 1
                if f.times == 0:
                    self.faults.remove(f)
            if f.kind == "raise":
                raise f.error if f.error is not None else OSError("bus error")
            if f.kind == "stall":
                time.sleep(f.seconds)
            elif f.kind == "value" and isinstance(answer, dict):
                answer[f.key] = f.value
            elif f.kind == "drop" and isinstance(answer, dict):
                answer.pop(f.key, None)
        return answer

    # the plant (subclasses replace these) ---------------------------------------------------
    def _read(self) -> dict[str, Any]:
        return {**self.present, **self.extra}

    def _write(self, goals: dict[str, float]) -> None:
        self.present.update(goals)

    def _clip_to_limits(self, key: str, value: float) -> float:
        lo, hi = self.limits[key]
        return min(max(value, lo), hi)

    def _check_connected(self) -> None:
        if not self._connected:
            raise DeviceNotConnectedError(f"{self} is not connected. Run `.connect()` first.")


class SimQuadrupedRobot(FakeRobot):
    """The simulated Go1-sized quadruped behind LeRobot's interface.

    Keys (``<j>``: ``FR_hip`` ... ``RL_calf``): ``<j>.pos`` (read and sent), ``<j>.vel``,
    ``<j>.tau`` (N m), ``imu.gyro.{x,y,z}``, ``imu.quat.{w,x,y,z}``, ``imu.gravity.{x,y,z}``,
    ``base.lin_vel.{x,y,z}`` (m/s), ``base.height`` (m), ``<leg>.contact`` and
    ``trunk.contact`` (0 or 1). Angles and angular rates are in degrees when ``degrees``.

    Args:
        cfg: The plant's config (a ``QuadrupedVelocityConfig``; default: the defaults).
        degrees: Speak degrees instead of radians.
        max_relative_target: LeRobot-style cap of a target's distance from the present
            position (robot units); None: only the joint ranges clip.
        robot_id: LeRobot's ``id``.
    """

    name = "twinloop_sim_quadruped"

    def __init__(
        self,
        cfg: Any = None,
        *,
        degrees: bool = False,
        max_relative_target: float | None = None,
        robot_id: str = "sim",
    ) -> None:
        """Load the model and stand in an episode seeded 0."""
        from twinloop.core.rng import new_streams
        from twinloop.sim.locomotion.velocity import (
            JOINT_NAMES,
            LEGS,
            N_MEAS,
            QuadrupedPhysics,
            joint_limits,
        )
        from twinloop.sim.locomotion.velocity_config import QuadrupedVelocityConfig

        self.cfg = QuadrupedVelocityConfig() if cfg is None else cfg
        self.degrees = bool(degrees)
        self._unit = DEG_PER_RAD if degrees else 1.0
        low, high = joint_limits()
        keys = [f"{j}.pos" for j in JOINT_NAMES]
        u = self._unit
        limits = {k: (lo * u, hi * u) for k, lo, hi in zip(keys, low, high, strict=True)}
        self.joint_names = JOINT_NAMES
        self.legs = LEGS
        self._scalars = self._scalar_keys()
        super().__init__(
            JOINT_NAMES,
            limits=limits,
            max_relative_target=max_relative_target,
            extra_observation=dict.fromkeys(self._scalars, 0.0),
            robot_id=robot_id,
        )
        self.physics = QuadrupedPhysics(self.cfg)
        self._rng = new_streams(1)
        self._meas = np.zeros(N_MEAS)
        self.episodes = 0
        self.start_episode(0)

    def _scalar_keys(self) -> tuple[str, ...]:
        j = self.joint_names
        return (
            *(f"{n}.vel" for n in j),
            *(f"{n}.tau" for n in j),
            *(f"imu.gyro.{a}" for a in "xyz"),
            *(f"imu.quat.{a}" for a in "wxyz"),
            *(f"imu.gravity.{a}" for a in "xyz"),
            *(f"base.lin_vel.{a}" for a in "xyz"),
            "base.height",
            *(f"{leg}.contact" for leg in self.legs),
            "trunk.contact",
        )

    def start_episode(self, seed: int | None) -> None:
        """Put the robot back on the floor as the ``sim`` backend's ``reset(seed)`` does.

        Not part of LeRobot's interface: pass it to the backend as a reset hook,
        ``reset_hook=lambda robot, seed: robot.start_episode(seed)``.
        """
        from twinloop.core.rng import new_entropy, seed_streams

        seed_streams(self._rng, 0, new_entropy() if seed is None else int(seed))
        self.physics.reset(self._rng, 0)
        self.physics.measure(self._meas)
        self.present = self._positions()
        self.episodes += 1

    def _positions(self) -> dict[str, float]:
        q = self._meas[0:12] * self._unit
        return {k: float(v) for k, v in zip(self.keys, q, strict=True)}

    def _read(self) -> dict[str, Any]:
        m, u, j = self._meas, self._unit, self.joint_names
        qpos = self.physics.data.qpos
        obs: dict[str, Any] = dict(self._positions())
        obs.update({f"{n}.vel": float(m[12 + i] * u) for i, n in enumerate(j)})
        obs.update({f"{n}.tau": float(m[39 + i]) for i, n in enumerate(j)})
        obs.update({f"imu.gyro.{a}": float(m[27 + i] * u) for i, a in enumerate("xyz")})
        obs.update({f"imu.quat.{a}": float(qpos[3 + i]) for i, a in enumerate("wxyz")})
        obs.update({f"imu.gravity.{a}": float(m[30 + i]) for i, a in enumerate("xyz")})
        obs.update({f"base.lin_vel.{a}": float(m[24 + i]) for i, a in enumerate("xyz")})
        obs["base.height"] = float(m[33])
        obs.update({f"{leg}.contact": float(m[34 + i]) for i, leg in enumerate(self.legs)})
        obs["trunk.contact"] = float(m[38])
        return obs

    def _write(self, goals: dict[str, float]) -> None:
        target = np.array([goals[k] for k in self.keys]) / self._unit
        self.physics.step(target)
        self.physics.measure(self._meas)
        self.present = self._positions()

    def mapping(self) -> LeRobotMapping:
        """Every quantity of the velocity task's measurement, read from this robot's keys."""
        return sim_quadruped_mapping(degrees=self.degrees)


def sim_quadruped() -> SimQuadrupedRobot:
    """A :class:`SimQuadrupedRobot` with the default config (``robot="...fake:sim_quadruped"``)."""
    return SimQuadrupedRobot()


def start_sim_episode(robot: SimQuadrupedRobot, seed: int | None) -> None:
    """Reset hook of a :class:`SimQuadrupedRobot` (``reset_hook="...fake:start_sim_episode"``)."""
    robot.start_episode(seed)


def sim_quadruped_mapping(degrees: bool = False) -> LeRobotMapping:
    """Every quantity of the velocity task's measurement, read from a :class:`SimQuadrupedRobot`.

    Args:
        degrees: The robot speaks degrees (``SimQuadrupedRobot(degrees=True)``).
    """
    from twinloop.sim.locomotion.velocity import (
        JOINT_NAMES,
        LEGS,
        command_space,
        measurement_layout,
    )

    def ang(key: str) -> Channel:
        return Channel.degrees(key) if degrees else Channel(key)

    j, xyz = JOINT_NAMES, "xyz"
    return LeRobotMapping(
        measurement_layout(),
        command_space(),
        measurement={
            "joint_pos_rad": tuple(ang(f"{n}.pos") for n in j),
            "joint_vel_rad_per_s": tuple(ang(f"{n}.vel") for n in j),
            "lin_vel_m_per_s": tuple(Channel(f"base.lin_vel.{a}") for a in xyz),
            "gyro_rad_per_s": tuple(ang(f"imu.gyro.{a}") for a in xyz),
            "gravity": tuple(Channel(f"imu.gravity.{a}") for a in xyz),
            "height_m": Channel("base.height"),
            "foot_contact": tuple(Channel(f"{leg}.contact") for leg in LEGS),
            "trunk_contact": Channel("trunk.contact"),
            "torque_nm": tuple(Channel(f"{n}.tau") for n in j),
        },
        action=tuple(ang(f"{n}.pos") for n in j),
        ignore=tuple(f"imu.quat.{a}" for a in "wxyz"),
        hold_field="joint_pos_rad",
    )
