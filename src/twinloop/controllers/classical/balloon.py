"""Classical controllers of the balloon station-keeping task (observations only).

* ``station-seeker``: the heuristic of Bellemare et al., Nature 588 (2020): score every
  reachable level of the wind column by how well its wind carries the balloon toward the
  station (bearing and speed) and, close to the station, by how calm it is, blending the two
  by ``alpha = exp(-d / 35 km)``; prefer nearby levels; climb or descend toward the best one.
* ``random-walk``: hold a uniformly drawn command for a random number of steps (a baseline
  and a data-collection policy; each row draws from its own seeded stream).
* ``altitude-hold``: keep the pressure of the episode's start (or a given pressure) with a
  dead band.

All three read named observation fields through the env's ``metadata["observation_layout"]``
and the column levels from ``metadata["column_levels_pa"]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import numpy as np

from twinloop.controllers.base import Controller
from twinloop.core.jit import njit
from twinloop.core.rng import new_streams, seed_streams, uniform

DOWN, STAY, UP = 0, 1, 2


class BalloonController(Controller):
    """Base of balloon controllers: checks the system and reads the column levels."""

    systems = ("balloon",)

    def __init__(
        self,
        observation_space: gym.Space,
        action_space: gym.Space,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        """Read the wind-column levels from the env's metadata."""
        super().__init__(observation_space, action_space, metadata)
        self.levels_pa = np.asarray(self.metadata.get("column_levels_pa", ()), dtype=np.float64)

    @staticmethod
    def toward(target_pa: np.ndarray, pressure_pa: np.ndarray, deadband_pa: float) -> np.ndarray:
        """DOWN to a higher pressure, UP to a lower one, STAY within the dead band."""
        act = np.full(pressure_pa.shape[0], STAY, dtype=np.int64)
        act[target_pa > pressure_pa + deadband_pa] = DOWN
        act[target_pa < pressure_pa - deadband_pa] = UP
        return act


class StationSeeker(BalloonController):
    """Fly to the level whose wind best serves station keeping.

    Args:
        observation_space: The env's observation space.
        action_space: The env's action space.
        metadata: The env's metadata.
        blend_km: Distance scale of ``alpha = exp(-d / blend_km)`` [Bellemare et al. 2020].
        level_cost_per_kpa: Score (m/s) lost per 1000 Pa between a level and the balloon.
        min_pressure_pa: Highest reachable level (the empty-ballonet float level is ~6000 Pa).
        max_pressure_pa: Lowest level considered (stays clear of the 50 000 ft floor).
        deadband_pa: No action while the balloon is this close to the chosen level.
        night_min_soc: At night with less charge than this, DOWN becomes STAY.
    """

    name = "station-seeker"

    def __init__(
        self,
        observation_space: gym.Space,
        action_space: gym.Space,
        metadata: Mapping[str, Any] | None = None,
        blend_km: float = 35.0,
        level_cost_per_kpa: float = 0.4,
        min_pressure_pa: float = 5800.0,
        max_pressure_pa: float = 11000.0,
        deadband_pa: float = 150.0,
        night_min_soc: float = 0.3,
    ) -> None:
        """Set the heuristic's parameters."""
        super().__init__(observation_space, action_space, metadata)
        self.blend_km = float(blend_km)
        self.level_cost_per_kpa = float(level_cost_per_kpa)
        self.deadband_pa = float(deadband_pa)
        self.night_min_soc = float(night_min_soc)
        self._reachable = (self.levels_pa >= min_pressure_pa) & (self.levels_pa <= max_pressure_pa)
        if not self._reachable.any():
            raise ValueError(
                f"station-seeker: no column level within [{min_pressure_pa}, {max_pressure_pa}] Pa"
            )

    def scores(self, obs: np.ndarray) -> np.ndarray:
        """Score (m/s) of every column level, ``(n, levels)``; unreachable levels are -inf."""
        col = self.field(obs, "wind_column").astype(np.float64)
        d_km = self.field(obs, "distance_km").astype(np.float64)
        p = self.field(obs, "pressure_pa").astype(np.float64)
        frac = np.clip(col[..., 2], 0.0, 0.999)
        speed = 30.0 * frac / (1.0 - frac)  # invert speed / (speed + 30 m/s)
        toward = speed * np.cos(np.pi * col[..., 1])  # velocity made good toward the station
        alpha = np.exp(-d_km / self.blend_km)[:, None]
        score = (1.0 - alpha) * toward - alpha * speed
        score -= self.level_cost_per_kpa * np.abs(self.levels_pa[None, :] - p[:, None]) / 1000.0
        return np.where(self._reachable[None, :], score, -np.inf)

    def act(self, obs: np.ndarray) -> np.ndarray:
        """Move toward the best-scoring level."""
        best = self.scores(obs).argmax(axis=1)
        p = self.field(obs, "pressure_pa").astype(np.float64)
        act = self.toward(self.levels_pa[best], p, self.deadband_pa)
        night = self.field(obs, "solar_elevation_deg") < 0.0
        low = self.field(obs, "battery_soc") < self.night_min_soc
        act[(act == DOWN) & night & low] = STAY
        return act


class RandomWalk(BalloonController):
    """Hold a random command for a geometric number of steps (mean ``mean_hold_steps``).

    Args:
        observation_space: The env's observation space.
        action_space: The env's action space.
        metadata: The env's metadata.
        mean_hold_steps: Mean number of steps a command is held.
    """

    name = "random-walk"

    def __init__(
        self,
        observation_space: gym.Space,
        action_space: gym.Space,
        metadata: Mapping[str, Any] | None = None,
        mean_hold_steps: float = 10.0,
    ) -> None:
        """Allocate the per-row streams."""
        super().__init__(observation_space, action_space, metadata)
        if mean_hold_steps < 1.0:
            raise ValueError(f"random-walk: mean_hold_steps = {mean_hold_steps} must be >= 1")
        self.switch_p = 1.0 / float(mean_hold_steps)
        self._rng = new_streams(0)
        self._cmd = np.zeros(0, dtype=np.int64)

    def reset(self, n_envs: int, seeds: np.ndarray, mask: np.ndarray | None = None) -> None:
        """Re-seed the rows that start an episode; their first step draws a new command."""
        if n_envs != self._rng.shape[0]:
            self._rng = new_streams(n_envs)
            self._cmd = np.full(n_envs, -1, dtype=np.int64)
        super().reset(n_envs, seeds, mask)
        rows = range(n_envs) if mask is None else np.flatnonzero(mask)
        for i in rows:
            seed_streams(self._rng, int(i), int(seeds[i]))
            self._cmd[i] = -1

    def act(self, obs: np.ndarray) -> np.ndarray:
        """The held command, re-drawn with probability 1 / mean_hold_steps."""
        n = obs.shape[0]
        if n != self._rng.shape[0]:
            raise ValueError(f"random-walk was reset for {self._rng.shape[0]} rows, got {n}")
        _walk(self._rng, self._cmd, self.switch_p)
        return self._cmd.copy()


@njit
def _walk(rng: np.ndarray, cmd: np.ndarray, switch_p: float) -> None:
    for i in range(cmd.shape[0]):
        if cmd[i] < 0 or uniform(rng, i, 0) < switch_p:
            cmd[i] = min(int(uniform(rng, i, 0) * 3.0), 2)


class AltitudeHold(BalloonController):
    """Keep a pressure level: the episode's first pressure, or ``target_pressure_pa``.

    Args:
        observation_space: The env's observation space.
        action_space: The env's action space.
        metadata: The env's metadata.
        target_pressure_pa: Level to hold; ``None`` holds the start pressure of each episode.
        deadband_pa: No action within this distance of the target.
    """

    name = "altitude-hold"

    def __init__(
        self,
        observation_space: gym.Space,
        action_space: gym.Space,
        metadata: Mapping[str, Any] | None = None,
        target_pressure_pa: float | None = None,
        deadband_pa: float = 100.0,
    ) -> None:
        """Set the target."""
        super().__init__(observation_space, action_space, metadata)
        self.target_pressure_pa = target_pressure_pa
        self.deadband_pa = float(deadband_pa)
        self._target = np.zeros(0)

    def reset(self, n_envs: int, seeds: np.ndarray, mask: np.ndarray | None = None) -> None:
        """Forget the target of rows that start an episode (it is read from their first step)."""
        if n_envs != self._target.shape[0]:
            self._target = np.full(n_envs, np.nan)
        super().reset(n_envs, seeds, mask)
        rows = np.arange(n_envs) if mask is None else np.flatnonzero(mask)
        self._target[rows] = np.nan

    def act(self, obs: np.ndarray) -> np.ndarray:
        """Climb or descend toward the target pressure."""
        p = self.field(obs, "pressure_pa").astype(np.float64)
        if self._target.shape[0] != p.shape[0]:
            self._target = np.full(p.shape[0], np.nan)
        unset = np.isnan(self._target)
        fixed = self.target_pressure_pa
        self._target[unset] = p[unset] if fixed is None else float(fixed)
        return self.toward(self._target, p, self.deadband_pa)
