"""The safety layer: action validation, command limits, rate limits, a watchdog and a safe state.

Safety wraps every backend, the simulator included, so training sees the clipping that
deployment will. It works at two places:

* the **action boundary** (:func:`check_action`): a controller's action must be finite, of
  the right shape and inside the action space; otherwise a ``ValueError`` names the env, the
  element, the value and the bound, unless ``SafetyConfig.clip_actions`` asks for clipping;
* the **command boundary** (:class:`SafetyLayer`): the command sent to the device is clipped
  to the device's limits and, optionally, to a maximum change per step; the command actually
  applied is reported. A watchdog puts the device into its safe state when no command arrives
  within ``watchdog_s`` seconds.

The clipping arithmetic is one numba function (:func:`clip_command_row`) used both by
:class:`SafetyLayer` and inside batched kernels, so a vector env clips exactly as a single one.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from twinloop.core.config import ConfigError, ConfigSection, cross_check, param
from twinloop.core.jit import njit

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SafetyConfig(ConfigSection):
    """What the safety layer does at the action and command boundaries."""

    clip_actions: bool = param(
        False,
        doc="clip finite actions outside the action space (reporting the applied action in "
        "info['applied_action']) instead of raising ValueError",
    )
    max_command_step: tuple[float, ...] = param(
        (),
        units="command units",
        doc="largest change of each command element between two steps; () for no rate limit",
    )
    watchdog_s: float = param(
        0.0,
        units="s",
        ge=0.0,
        le=86400.0,
        doc="safe state when no command arrives within this many wall-clock seconds; "
        "0 disables the watchdog (the simulator default)",
    )

    @cross_check
    def _positive_steps(self) -> str | None:
        for k, v in enumerate(self.max_command_step):
            if not (isinstance(v, int | float) and v > 0 and math.isfinite(v)):
                return f"SafetyConfig.max_command_step[{k}] = {v!r} must be > 0"
        return None


def rate_limits(config: SafetyConfig, n_elements: int) -> np.ndarray:
    """Per-element largest change per step (``inf``: none), checked against the command size.

    Raises:
        ConfigError: ``max_command_step`` has a different number of entries than the command.
    """
    steps = config.max_command_step
    if steps and len(steps) != n_elements:
        raise ConfigError(
            f"SafetyConfig.max_command_step has {len(steps)} entries; the command has {n_elements}"
        )
    return np.array(steps if steps else [math.inf] * n_elements, dtype=np.float64)


class SafetyFault(RuntimeError):
    """The safety layer tripped (watchdog or fault); the backend was put in its safe state."""


def _space_text(space: gym.Space) -> str:
    return repr(space)


def check_action(
    env_id: str,
    space: gym.Space,
    action: Any,
    *,
    clip: bool = False,
    labels: Sequence[str] = (),
) -> tuple[Any, bool]:
    """Validate one action at the env boundary.

    Args:
        env_id: Id of the env, used in error messages.
        space: The action space.
        action: The controller's action.
        clip: Clip finite out-of-bounds Box actions instead of raising.
        labels: Optional names of Box elements (with units) for error messages.

    Returns:
        ``(applied_action, was_clipped)``. Box actions come back as float64 arrays.

    Raises:
        ValueError: Wrong shape, non-finite, or out of bounds (when not clipping).
    """
    if isinstance(space, gym.spaces.Box):
        arr = np.asarray(action, dtype=np.float64)
        bounds = _small_box_bounds(space)
        if bounds is not None and arr.shape == space.shape:
            # fast path for small boxes: one pass over Python floats; NaN fails every
            # comparison and +-inf fails finite bounds, so anything odd takes the full check
            lows, highs, finite = bounds
            ok = True
            for v, lo, hi in zip(arr.ravel().tolist(), lows, highs, strict=True):
                if not (lo <= v <= hi) or not (finite or math.isfinite(v)):
                    ok = False
                    break
            if ok:
                return arr, False
        elif arr.shape == space.shape:
            low, high = _large_box_bounds(space)
            if _within(arr.reshape(-1), low, high):
                return arr, False
        if arr.shape != space.shape:
            raise ValueError(
                f"{env_id}: action has shape {arr.shape}, expected {space.shape} "
                f"for {_space_text(space)}"
            )
        bad = np.flatnonzero(~np.isfinite(arr))
        if bad.size:
            k = int(bad[0])
            raise ValueError(
                f"{env_id}: action{_index(arr, k)}{_label(labels, k)} = {arr.flat[k]} is not finite"
            )
        low = space.low.astype(np.float64)
        high = space.high.astype(np.float64)
        over = arr > high
        under = arr < low
        if over.any() or under.any():
            if clip:
                return np.clip(arr, low, high), True
            k = int(np.flatnonzero(over | under)[0])
            side, bound = (
                ("above the upper", high.flat[k])
                if over.flat[k]
                else (
                    "below the lower",
                    low.flat[k],
                )
            )
            raise ValueError(
                f"{env_id}: action{_index(arr, k)}{_label(labels, k)} = {arr.flat[k]:.6g} is "
                f"{side} bound {bound:.6g} of the action space {_space_text(space)}"
            )
        return arr, False
    if isinstance(space, gym.spaces.Discrete):
        try:
            value = int(action)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{env_id}: action {action!r} is not an integer") from exc
        if np.ndim(action) != 0 or value != action:
            raise ValueError(f"{env_id}: action {action!r} is not a scalar integer")
        lo, hi = int(space.start), int(space.start + space.n - 1)
        if not lo <= value <= hi:
            if clip:
                return min(max(value, lo), hi), True
            raise ValueError(f"{env_id}: action {value} is outside {{{lo}, ..., {hi}}} of {space}")
        return value, False
    if not space.contains(action):
        raise ValueError(f"{env_id}: action {action!r} is not in the action space {space}")
    return action, False


_SMALL_BOX = 16
_BOX_BOUNDS: dict[int, tuple[gym.spaces.Box, list[float], list[float], bool]] = {}


def _small_box_bounds(space: gym.spaces.Box) -> tuple[list[float], list[float], bool] | None:
    """Cached float bounds of a Box with at most ``_SMALL_BOX`` elements (else None)."""
    hit = _BOX_BOUNDS.get(id(space))
    if hit is not None and hit[0] is space:
        return hit[1], hit[2], hit[3]
    if space.low.size > _SMALL_BOX:
        return None
    lows = space.low.astype(np.float64).ravel().tolist()
    highs = space.high.astype(np.float64).ravel().tolist()
    finite = all(math.isfinite(v) for v in lows + highs)
    if len(_BOX_BOUNDS) > 256:  # spaces come and go with envs; keep the cache small
        _BOX_BOUNDS.clear()
    _BOX_BOUNDS[id(space)] = (space, lows, highs, finite)
    return lows, highs, finite


_LARGE_BOUNDS: dict[int, tuple[gym.spaces.Box, np.ndarray, np.ndarray]] = {}


def _large_box_bounds(space: gym.spaces.Box) -> tuple[np.ndarray, np.ndarray]:
    """Cached flat float64 bounds of a Box with more than ``_SMALL_BOX`` elements."""
    hit = _LARGE_BOUNDS.get(id(space))
    if hit is not None and hit[0] is space:
        return hit[1], hit[2]
    low = np.ascontiguousarray(space.low, dtype=np.float64).reshape(-1)
    high = np.ascontiguousarray(space.high, dtype=np.float64).reshape(-1)
    if len(_LARGE_BOUNDS) > 256:
        _LARGE_BOUNDS.clear()
    _LARGE_BOUNDS[id(space)] = (space, low, high)
    return low, high


@njit
def _within(x: np.ndarray, low: np.ndarray, high: np.ndarray) -> bool:
    """Whether every element is finite and within its bounds (NaN fails every comparison)."""
    for k in range(x.size):
        v = x[k]
        if not (low[k] <= v <= high[k]) or not np.isfinite(v):
            return False
    return True


def _index(arr: np.ndarray, k: int) -> str:
    if arr.ndim <= 1:
        return f"[{k}]"
    return "[" + ", ".join(str(int(i)) for i in np.unravel_index(k, arr.shape)) + "]"


def _label(labels: Sequence[str], k: int) -> str:
    return f" ({labels[k]})" if k < len(labels) else ""


@njit(inline="always")
def clip_command_row(
    cmd: np.ndarray,
    low: np.ndarray,
    high: np.ndarray,
    prev: np.ndarray,
    max_step: np.ndarray,
    has_prev: bool,
    out: np.ndarray,
) -> bool:
    """Clip one command to ``[low, high]`` and to ``prev +- max_step``; return True if changed.

    ``max_step`` entries that are ``inf`` impose no rate limit on that element.
    """
    changed = False
    for j in range(cmd.shape[0]):
        v = cmd[j]
        if has_prev:
            lo_r = prev[j] - max_step[j]
            hi_r = prev[j] + max_step[j]
            v = min(max(v, lo_r), hi_r)
        v = min(max(v, low[j]), high[j])
        if v != cmd[j]:
            changed = True
        out[j] = v
    return changed


class SafetyLayer:
    """Command limits, rate limits and a watchdog in front of one backend.

    Args:
        command_space: The backend's command space (a ``Box``); its bounds are the device's
            limits.
        config: What to enforce.
        on_trip: Called (from the watchdog thread) to put the device in its safe state.
    """

    def __init__(
        self,
        command_space: gym.spaces.Box,
        config: SafetyConfig,
        on_trip: Any | None = None,
    ) -> None:
        """Prepare the limits; the watchdog starts with the first command."""
        if not isinstance(command_space, gym.spaces.Box):
            raise TypeError("SafetyLayer needs a Box command space")
        self.config = config
        self.low = command_space.low.astype(np.float64).ravel()
        self.high = command_space.high.astype(np.float64).ravel()
        n = self.low.size
        self.max_step = rate_limits(config, n)
        self._prev = np.zeros(n, dtype=np.float64)
        self._has_prev = False
        self._on_trip = on_trip
        self._timer: threading.Timer | None = None
        self._tripped = threading.Event()

    @property
    def tripped(self) -> bool:
        """Whether the watchdog fired since the last reset."""
        return self._tripped.is_set()

    def reset(self) -> None:
        """Forget the previous command (rate limits restart) and clear a tripped watchdog."""
        self._has_prev = False
        self._tripped.clear()

    def filter(self, command: np.ndarray) -> tuple[np.ndarray, bool]:
        """Clip a command to the device limits; return ``(applied_command, was_clipped)``.

        Raises:
            SafetyFault: The watchdog fired before this command; the device is in its safe
                state and the episode must be reset.
        """
        if self._tripped.is_set():
            raise SafetyFault(
                f"watchdog: no command for {self.config.watchdog_s} s; the backend was put in "
                "its safe state. Reset the env to continue."
            )
        cmd = np.asarray(command, dtype=np.float64).ravel()
        out = np.empty_like(cmd)
        changed = clip_command_row(
            cmd, self.low, self.high, self._prev, self.max_step, self._has_prev, out
        )
        self._prev[:] = out
        self._has_prev = True
        self._arm()
        return out, bool(changed)

    def _arm(self) -> None:
        if self.config.watchdog_s <= 0:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer = threading.Timer(self.config.watchdog_s, self._trip)
        self._timer.daemon = True
        self._timer.start()

    def _trip(self) -> None:
        self._tripped.set()
        log.warning("safety watchdog fired after %.3f s without a command", self.config.watchdog_s)
        if self._on_trip is not None:
            try:
                self._on_trip()
            except Exception:  # the watchdog must never die silently
                log.exception("safe-state handler failed")

    def disarm(self) -> None:
        """Stop the watchdog (on close or episode end)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
