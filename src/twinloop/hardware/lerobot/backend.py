"""``backend="lerobot"``: any LeRobot robot object as a twinloop backend.

Data flow of one step::

    command (joint targets in the task's units, after the env's safety layer)
        -> mapping.action_dict: {action key: scale * target + offset}     (robot units)
        -> wait until one control period after the previous action        (pacing)
        -> robot.send_action(action)  -> the action actually sent (the robot's clipping)
        -> mapping.applied: the sent action back in the task's units      (applied command)
        -> robot.get_observation()    -> {key: value}
        -> mapping.read: validated, converted measurement (estimates and declared fills)
        -> (measurement, applied command)

The robot is duck-typed (:class:`~.protocol.LeRobotRobot`): the bridge never imports
``lerobot``, so any object with LeRobot's ``Robot`` interface works, including the fakes of
:mod:`.fake`. The features are checked against the mapping before connecting, and the robot is
connected with ``calibrate=False`` unless the config asks (LeRobot's calibration prompts on the
terminal, which a library must not do unasked).

Every call into the robot runs on one worker thread with a deadline (``timeout_s``; connect and
disconnect get ``connect_timeout_s``), so a stalled bus is a fault, not a hang. A call still
running after its deadline keeps the worker: later calls wait for it up to their own deadline
and then fail, and the robot is never called from two threads at once. Any exception of the
robot, a late answer, or a malformed value becomes one-line :class:`LeRobotFault` (a
``BackendFault``) naming the call or the key; the env then calls :meth:`LeRobotBackend.safe_state`,
which sends a hold action (a configured safe pose, else the last measured position) and never
raises.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import numpy as np

from twinloop.core.backend import BackendFault, BaseBackend
from twinloop.core.config import ConfigSection, cross_check, param
from twinloop.hardware.lerobot.protocol import LeRobotMapping, MappingError, ObservationError

log = logging.getLogger(__name__)

#: A hook run at every reset with the robot and the episode's seed (e.g. a scripted stand-up).
ResetHook = Callable[[Any, "int | None"], None]


class LeRobotFault(BackendFault):
    """The robot failed, answered late, or answered something the mapping refuses."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class LeRobotConfig(ConfigSection):
    """How the bridge drives a LeRobot robot."""

    timeout_s: float = param(
        0.1,
        units="s",
        ge=0.0,
        le=60.0,
        doc="longest wait for one get_observation or send_action before it is a fault; 0: no "
        "deadline (calls run in the caller's thread)",
    )
    connect_timeout_s: float = param(
        30.0, units="s", gt=0.0, le=600.0, doc="longest wait for connect or disconnect"
    )
    calibrate: bool = param(
        False,
        doc="pass calibrate=True to robot.connect (LeRobot may then prompt on the terminal); "
        "False refuses an uncalibrated robot instead",
    )
    control_dt_s: float = param(
        0.02,
        units="s",
        gt=0.0,
        le=10.0,
        doc="control period: the divisor of finite-difference estimates and, with pace, the "
        "least time between two actions",
    )
    pace: bool = param(
        True, doc="wait so that actions are at least control_dt_s apart (the rate of training)"
    )
    safe_pose: tuple[float, ...] = param(
        (),
        units="command units",
        doc="targets sent as the safe state; (): hold the last measured position (the "
        "mapping's hold_field)",
    )

    @cross_check
    def _timeouts(self) -> str | None:
        if self.timeout_s and self.timeout_s > self.connect_timeout_s:
            return (
                f"LeRobotConfig.timeout_s = {self.timeout_s} exceeds connect_timeout_s = "
                f"{self.connect_timeout_s}"
            )
        return None


_STOP = object()


class _Calls:
    """Robot calls on one daemon worker thread, each with a deadline (see module docstring)."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._jobs: queue.SimpleQueue[Any] | None = None  # the running worker's queue
        self._busy: tuple[str, float, Future[Any]] | None = None

    def call(self, what: str, timeout_s: float, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` within ``timeout_s`` (0: in this thread, no deadline).

        Raises:
            LeRobotFault: The call raised, or did not finish (or could not start) in time.
        """
        start = time.monotonic()
        self._wait_until_free(what, timeout_s)
        if timeout_s <= 0.0:
            try:
                return fn(*args)
            except Exception as exc:
                raise LeRobotFault(f"{self._name}: {what} failed: {_one_line(exc)}") from exc
        fut: Future[Any] = Future()
        self._queue().put((fn, args, fut))
        left = max(timeout_s - (time.monotonic() - start), 0.0)
        try:
            return fut.result(timeout=left)
        except FutureTimeout:
            self._busy = (what, start, fut)
            raise LeRobotFault(
                f"{self._name}: {what} took longer than {timeout_s:g} s (timeout_s)"
            ) from None
        except Exception as exc:
            raise LeRobotFault(f"{self._name}: {what} failed: {_one_line(exc)}") from exc

    def _wait_until_free(self, what: str, timeout_s: float) -> None:
        """Wait (up to ``timeout_s``) for a call that outlived its deadline; else a fault."""
        if self._busy is None:
            return
        prev, since, fut = self._busy
        try:
            fut.exception(timeout=timeout_s if timeout_s > 0.0 else 0.0)
        except FutureTimeout:
            raise LeRobotFault(
                f"{self._name}: cannot {what}: the robot is still busy with {prev} "
                f"(started {time.monotonic() - since:.2f} s ago)"
            ) from None
        self._busy = None

    def _queue(self) -> queue.SimpleQueue[Any]:
        if self._jobs is None:
            self._jobs = queue.SimpleQueue()
            worker = threading.Thread(
                target=_work, args=(self._jobs,), name=f"lerobot {self._name}", daemon=True
            )
            worker.start()
        return self._jobs

    def stop(self) -> None:
        """Let the worker end after its current call (a daemon, should that never return)."""
        if self._jobs is not None:
            self._jobs.put(_STOP)
            self._jobs = None


def _work(jobs: queue.SimpleQueue[Any]) -> None:
    """The worker: run jobs in order until told to stop; results go to each job's future."""
    while True:
        job = jobs.get()
        if job is _STOP:
            return
        fn, args, fut = job
        if not fut.set_running_or_notify_cancel():
            continue
        try:
            fut.set_result(fn(*args))
        except BaseException as exc:  # handed to the caller, which raises LeRobotFault
            fut.set_exception(exc)


class LeRobotBackend(BaseBackend):
    """A LeRobot robot (any object with LeRobot's ``Robot`` interface) as a backend.

    Args:
        robot: The robot object; connected on the first reset unless it already is.
        config: The bridge's settings (deadlines, pacing, calibration, safe pose).
        mapping: Which observation key feeds which measurement element and which action key
            each command element goes to, with units (:class:`~.protocol.LeRobotMapping`).
        reset_hook: Called as ``reset_hook(robot, seed)`` at every reset, before the first
            observation (a scripted stand-up, a prompt in a user's script, a simulated robot's
            episode reset); its exceptions are faults. None: reset only reads the robot.

    Raises:
        MappingError: ``config.safe_pose`` does not fit the command, or neither a safe pose
            nor the mapping's ``hold_field`` says what the safe state sends.
    """

    kind = "lerobot"
    deterministic = False

    def __init__(
        self,
        robot: Any,
        *,
        config: LeRobotConfig,
        mapping: LeRobotMapping,
        reset_hook: ResetHook | None = None,
    ) -> None:
        """Nothing is called on the robot until :meth:`connect`."""
        super().__init__()
        self.robot = robot
        self.config = config
        self.mapping = mapping
        self.reset_hook = reset_hook
        self.command_space = mapping.command_space
        self.measurement_layout = mapping.measurement_layout
        self.measurement_space = self.measurement_layout.space(np.float64)
        n = len(mapping.action)
        if config.safe_pose and len(config.safe_pose) != n:
            raise MappingError(
                f"LeRobotConfig.safe_pose has {len(config.safe_pose)} entries; the command has {n}"
            )
        if not config.safe_pose and mapping.hold_field is None:
            raise MappingError(
                "the safe state needs LeRobotConfig.safe_pose or the mapping's hold_field"
            )
        self._name = _robot_name(robot)
        self._calls = _Calls(self._name)
        self._we_connected = False
        self._last: np.ndarray | None = None  # the last good measurement
        self._last_applied: np.ndarray | None = None
        self._last_send = -np.inf
        #: Action keys the robot changed in the last step (its own clipping).
        self.last_clipped: list[str] = []
        #: Steps whose previous step took longer than the control period (pacing fell behind).
        self.overruns = 0

    # connection ------------------------------------------------------------------------------
    def connect(self) -> None:
        """Check the features against the mapping, then connect (if not already) and check.

        Raises:
            LeRobotFault: The features do not match the mapping (naming every missing and extra
                key), the robot failed to connect, or it is not calibrated.
        """
        if self.connected:
            return
        try:
            self.mapping.check_features(self.robot.observation_features, self.robot.action_features)
        except MappingError as exc:
            raise LeRobotFault(f"{self._name}: {exc}") from exc
        except Exception as exc:
            raise LeRobotFault(
                f"{self._name}: reading its features failed: {_one_line(exc)}"
            ) from exc
        t = self.config.connect_timeout_s
        if not self._calls.call("is_connected", t, _attr, self.robot, "is_connected"):
            self._calls.call(
                "connect", t, lambda: self.robot.connect(calibrate=self.config.calibrate)
            )
            self._we_connected = True
        if not self._calls.call("is_calibrated", t, _attr, self.robot, "is_calibrated"):
            self._disconnect_quietly()
            raise LeRobotFault(
                f"{self._name} is not calibrated; calibrate it with LeRobot's calibration "
                "command, or pass calibrate=True to let connect() do it"
            )
        super().connect()

    def close(self) -> None:
        """Send the safe state (best effort) and disconnect the robot.

        Raises:
            LeRobotFault: ``disconnect`` raised or hung (the backend is closed all the same).
        """
        if not self.connected:
            return
        self.safe_state()
        self._connected = False
        self._last = None
        try:
            self._calls.call("disconnect", self.config.connect_timeout_s, self.robot.disconnect)
        finally:
            self._calls.stop()

    def _disconnect_quietly(self) -> None:
        if not self._we_connected:
            return
        try:
            self._calls.call("disconnect", self.config.connect_timeout_s, self.robot.disconnect)
        except LeRobotFault as exc:
            log.warning("%s", exc)

    # episode ---------------------------------------------------------------------------------
    def reset(self, seed: int | None = None, options: dict[str, Any] | None = None) -> np.ndarray:
        """Connect if needed, run the reset hook, and return the first measurement.

        A robot cannot be re-seeded: ``seed`` reaches only the reset hook.

        Raises:
            ValueError: ``options`` were given.
            LeRobotFault: Connecting, the hook or the observation failed (the hold action is
                then sent where the robot is connected).
        """
        if options:
            raise ValueError(f"backend 'lerobot' takes no reset options, got {sorted(options)}")
        if not self.connected:
            self.connect()
        try:
            if self.reset_hook is not None:
                self._calls.call(
                    "reset_hook", self.config.connect_timeout_s, self.reset_hook, self.robot, seed
                )
            m = self._observe(previous=None)
        except LeRobotFault:
            self.safe_state()
            raise
        self._last_applied = None
        self._last_send = -np.inf
        return m

    def apply(self, command: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Send the command, then read the robot: ``(measurement, the command it executed)``.

        Raises:
            ValueError: ``command`` has the wrong shape or a non-finite element.
            LeRobotFault: A robot call failed or was late, or an answer was malformed.
        """
        cmd = np.asarray(command, dtype=np.float64)
        if cmd.shape != self.command_space.shape:
            raise ValueError(f"command shape {cmd.shape} != {self.command_space.shape}")
        bad = np.flatnonzero(~np.isfinite(cmd))
        if bad.size:
            raise ValueError(f"command[{int(bad[0])}] = {cmd[bad[0]]} is not finite")
        action = self.mapping.action_dict(cmd)
        self._wait_for_period()
        sent = self._calls.call(
            "send_action", self.config.timeout_s, self.robot.send_action, action
        )
        try:
            applied, changed = self.mapping.applied(sent, action, cmd)
        except ObservationError as exc:
            raise LeRobotFault(f"{self._name}: {exc}") from exc
        self._last_applied = applied
        self.last_clipped = changed
        return self._observe(previous=self._last), applied

    def _wait_for_period(self) -> None:
        now = time.monotonic()
        if self.config.pace:
            due = self._last_send + self.config.control_dt_s
            if now < due:
                time.sleep(due - now)
            elif np.isfinite(self._last_send) and now > due + 0.5 * self.config.control_dt_s:
                self.overruns += 1
            self._last_send = max(now, due)
        else:
            self._last_send = now

    def _observe(self, previous: np.ndarray | None) -> np.ndarray:
        obs = self._calls.call("get_observation", self.config.timeout_s, self.robot.get_observation)
        try:
            m = self.mapping.read(obs, previous, self.config.control_dt_s)
        except ObservationError as exc:
            raise LeRobotFault(f"{self._name}: {exc}") from exc
        self._last = m
        return m.copy()

    # safety ----------------------------------------------------------------------------------
    def hold_targets(self) -> np.ndarray | None:
        """The targets the safe state sends (None while nothing is known yet).

        ``config.safe_pose`` if set; else the last measured ``hold_field`` (its non-finite
        elements: the last applied command), clipped to the command space.
        """
        if self.config.safe_pose:
            pose = np.array(self.config.safe_pose, dtype=np.float64)
        else:
            field = self.mapping.hold_field
            if self._last is None or field is None:
                return None
            pose = self._last[self.measurement_layout.slice(field)].copy()
            gap = ~np.isfinite(pose)
            if gap.any():
                if self._last_applied is None:
                    return None
                pose[gap] = self._last_applied[gap]
        return np.clip(pose, self.command_space.low, self.command_space.high)

    def safe_state(self) -> None:
        """Send the hold action (see :meth:`hold_targets`); log, never raise, if it fails."""
        try:
            pose = self.hold_targets()
            if pose is None:
                log.warning("%s: no position known yet; no hold action sent", self._name)
                return
            self._calls.call(
                "send_action (safe state)",
                self.config.timeout_s,
                self.robot.send_action,
                self.mapping.action_dict(pose),
            )
        except Exception as exc:  # the safe state must never raise (the env reports the fault)
            log.warning("%s: could not send the hold action: %s", self._name, _one_line(exc))

    # reporting -------------------------------------------------------------------------------
    @property
    def last_measurement(self) -> np.ndarray | None:
        """A copy of the last measurement that passed validation (None before the first)."""
        return None if self._last is None else self._last.copy()

    def identity(self) -> dict[str, Any]:
        """Kind, the robot's class, type and id, and LeRobot's version if it is loaded."""
        ident: dict[str, Any] = {
            "kind": self.kind,
            "robot_class": f"{type(self.robot).__module__}.{type(self.robot).__qualname__}",
            "robot_type": str(getattr(self.robot, "name", "")),
            "robot_id": str(getattr(self.robot, "id", "")),
        }
        lerobot = sys.modules.get("lerobot")
        if lerobot is not None:
            ident["lerobot"] = str(getattr(lerobot, "__version__", "unknown"))
        return ident


# --- helpers -------------------------------------------------------------------------------------
def _attr(obj: Any, name: str) -> Any:
    return getattr(obj, name)


def _robot_name(robot: Any) -> str:
    rid = getattr(robot, "id", None)
    return f"{type(robot).__name__}" + (f" {rid!r}" if rid else "")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
