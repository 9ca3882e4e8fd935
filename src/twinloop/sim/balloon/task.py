"""Balloon station-keeping task: observation, reward and termination, from measurements only.

Everything here reads the backend's measurement (:func:`~.kernel.measurement_layout`) and
never the simulator's state, so the same functions score a simulated flight and a flight
through the MAVLink adapter. They are numba functions over one row, called by the single env
(through :class:`BalloonTask`) and inside the vector env's kernel.

Observation (flat ``float32``; read fields by name with ``observation_layout(cfg)``):

=====  ==========================  ==========================================================
index  field                       meaning (units)
=====  ==========================  ==========================================================
0      pressure_pa                 ambient pressure (Pa)
1      battery_soc                 state of charge (0-1)
2      solar_elevation_deg         sun above the horizon (deg)
3-4    solar_cycle                 sin, cos of the solar hour angle
5      distance_km                 distance to the station (km)
6-7    station_direction           unit vector (east, north) from the balloon to the station
8-10   last_command                one-hot of the applied command (down, stay, up)
11     excess_energy               1 when solar > day load and the battery is full
12     acs_power_w                 altitude-control power of the last step (W)
13     pressure_ratio              (p + superpressure) / p
14     navigation_paused           1 when a safety layer overrode or holds the command
15     time_fraction               steps used / max_steps
16-17  wind_measured_m_per_s       in-situ wind over the last step (u, v) (m/s)
18-    wind_column                 (n_column_levels, 3): uncertainty (0-1), |angle between
                                   the wind and the station direction| / pi, speed / (speed
                                   + 30 m/s); levels ``cfg.column_levels_pa``
=====  ==========================  ==========================================================

Wind column: the forecast corrected by in-situ measurements. For each level a Kalman filter
tracks the forecast error with exponential (Matern-1/2) correlations: between steps the
estimate decays by exp(-distance / l_km - dt / l_s) towards the prior, and a measurement at
pressure p_m informs level p with correlation exp(-|p - p_m| / l_pa). The uncertainty is the
posterior standard deviation over the prior's. This costs O(levels) per step; BLE refits a
Gaussian process on the last 6 h of measurements at every step [B20].

Actions: ``Discrete(3)``: 0 DOWN (compressor on), 1 STAY, 2 UP (vent).
"""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np

from twinloop.core.jit import njit
from twinloop.core.layout import Field, Layout
from twinloop.core.task import TaskStep
from twinloop.sim.balloon.config import BalloonConfig
from twinloop.sim.balloon.kernel import (
    DOWN,
    M_ACS_W,
    M_CMD,
    M_COLUMN,
    M_EL,
    M_ELAPSED,
    M_EXCESS,
    M_HOUR,
    M_P,
    M_PAUSED,
    M_POS,
    M_SOC,
    M_SP,
    M_STATUS,
    M_WIND,
    M_WIND_FC,
    M_WIND_P,
    OK,
    STATUS_NAMES,
)

# --- observation indices -----------------------------------------------------------------------
O_P = 0
O_SOC = 1
O_EL = 2
O_CYCLE = 3
O_DIST = 5
O_DIR = 6
O_CMD = 8
O_EXCESS = 11
O_ACS = 12
O_RATIO = 13
O_PAUSED = 14
O_TIME = 15
O_WIND = 16
O_COLUMN = 18

# --- task state columns ------------------------------------------------------------------------
T_STEP = 0
T_WITHIN = 1  # steps ending within the station radius
T_REQUESTED = 2  # command the controller asked for in this step
T_LAST_X = 3  # where and when the last in-situ measurement was taken
T_LAST_Y = 4
T_LAST_T = 5
T_HAS_MEAS = 6
T_ERR = 7  # per level: error estimate u, error estimate v, variance (3 x n columns)
N_T_FIXED = 7

# --- task parameters ---------------------------------------------------------------------------
TP_NCOL = 0
TP_PMIN = 1
TP_PMAX = 2
TP_MAX_STEPS = 3
TP_RADIUS_M = 4
TP_FAR = 5
TP_HALF_M = 6
TP_PEN_BASE = 7
TP_PEN_SLOPE = 8
TP_R_STATION = 9
TP_R_POWER = 10
TP_L_M = 11
TP_L_PA = 12
TP_L_S = 13
TP_PRIOR_VAR = 14
TP_NOISE_VAR = 15
TP_SPEED = 16
TP_MAX_DIST_KM = 17
TP_REGION_M = 18
N_TP = 19

#: Reward terms in summation order.
REWARD_TERMS = ("station", "power")
#: Failure code of a balloon that left the mission region (a task-level terminal state).
OUT_OF_REGION = len(STATUS_NAMES)
#: Failure names by code (0 = none): the vehicle's terminal states, then the task's.
FAILURE_NAMES = (*STATUS_NAMES, "out_of_region")


def state_size(cfg: BalloonConfig) -> int:
    """Columns of one row of task state."""
    return N_T_FIXED + 3 * cfg.task.n_column_levels


def observation_layout(cfg: BalloonConfig) -> Layout:
    """The observation's named fields and bounds for this config."""
    t = cfg.task
    return Layout(
        [
            Field("pressure_pa", (), 0.0, 2e5, "ambient pressure (Pa)"),
            Field("battery_soc", (), 0.0, 1.0, "battery state of charge (0-1)"),
            Field("solar_elevation_deg", (), -90.0, 90.0, "sun above the horizon (deg)"),
            Field("solar_cycle", (2,), -1.0, 1.0, "sin, cos of the solar hour angle"),
            Field("distance_km", (), 0.0, t.max_distance_km, "distance to the station (km)"),
            Field("station_direction", (2,), -1.0, 1.0, "unit vector to the station (E, N)"),
            Field("last_command", (3,), 0.0, 1.0, "one-hot applied command (down, stay, up)"),
            Field("excess_energy", (), 0.0, 1.0, "solar > day load and battery full"),
            Field("acs_power_w", (), 0.0, 1e4, "altitude-control power (W)"),
            Field("pressure_ratio", (), 0.0, 10.0, "(p + superpressure) / p"),
            Field("navigation_paused", (), 0.0, 1.0, "a safety layer overrode or holds"),
            Field("time_fraction", (), 0.0, 1.0, "steps used / max_steps"),
            Field("wind_measured_m_per_s", (2,), -300.0, 300.0, "in-situ wind u, v (m/s)"),
            Field(
                "wind_column",
                (t.n_column_levels, 3),
                0.0,
                1.0,
                "per level: uncertainty, |angle to station| / pi, speed / (speed + 30 m/s)",
            ),
        ]
    )


def task_params(cfg: BalloonConfig) -> np.ndarray:
    """Pack the task config into the parameter vector of the numba functions."""
    t = cfg.task
    p = np.zeros(N_TP, dtype=np.float64)
    p[TP_NCOL] = t.n_column_levels
    p[TP_PMIN] = cfg.wind.min_pressure_pa
    p[TP_PMAX] = cfg.wind.max_pressure_pa
    p[TP_MAX_STEPS] = t.max_steps
    p[TP_RADIUS_M] = t.station_radius_km * 1000.0
    p[TP_FAR] = t.reward_far
    p[TP_HALF_M] = t.reward_half_distance_km * 1000.0
    p[TP_PEN_BASE] = t.power_penalty_base
    p[TP_PEN_SLOPE] = t.power_penalty_slope
    p[TP_R_STATION] = t.reward_station
    p[TP_R_POWER] = t.reward_power
    p[TP_L_M] = t.error_length_km * 1000.0
    p[TP_L_PA] = t.error_length_pa
    p[TP_L_S] = t.error_length_s
    p[TP_PRIOR_VAR] = t.error_prior_sd_m_per_s**2
    p[TP_NOISE_VAR] = t.measurement_noise_sd_m_per_s**2
    p[TP_SPEED] = t.speed_scale_m_per_s
    p[TP_MAX_DIST_KM] = t.max_distance_km
    p[TP_REGION_M] = t.region_radius_km * 1000.0
    return p


def reward_scales(cfg: BalloonConfig) -> dict[str, float]:
    """Scale of each reward term, in summation order."""
    return {"station": cfg.task.reward_station, "power": cfg.task.reward_power}


# --- numba row functions -------------------------------------------------------------------------
@njit
def write_observation(m: np.ndarray, t: np.ndarray, tp: np.ndarray, obs: np.ndarray) -> float:
    """Fill one observation row from a measurement and the task state; return distance (m)."""
    x, y = m[M_POS], m[M_POS + 1]
    dist = math.sqrt(x * x + y * y)
    p = m[M_P]
    obs[O_P] = min(max(p, 0.0), 2e5)
    obs[O_SOC] = min(max(m[M_SOC], 0.0), 1.0)
    obs[O_EL] = min(max(m[M_EL], -90.0), 90.0)
    h = m[M_HOUR] * math.pi / 180.0
    obs[O_CYCLE] = math.sin(h)
    obs[O_CYCLE + 1] = math.cos(h)
    obs[O_DIST] = min(dist / 1000.0, tp[TP_MAX_DIST_KM])
    if dist > 0.0:
        dx, dy = -x / dist, -y / dist
    else:
        dx, dy = 0.0, 0.0
    obs[O_DIR] = dx
    obs[O_DIR + 1] = dy
    cmd = int(m[M_CMD])
    for c in range(3):
        obs[O_CMD + c] = 1.0 if c == cmd else 0.0
    obs[O_EXCESS] = m[M_EXCESS]
    obs[O_ACS] = min(max(m[M_ACS_W], 0.0), 1e4)
    obs[O_RATIO] = min(max((p + max(m[M_SP], 0.0)) / p, 0.0), 10.0) if p > 0.0 else 1.0
    obs[O_PAUSED] = m[M_PAUSED]
    obs[O_TIME] = min(t[T_STEP] / tp[TP_MAX_STEPS], 1.0)
    obs[O_WIND] = min(max(m[M_WIND], -300.0), 300.0)
    obs[O_WIND + 1] = min(max(m[M_WIND + 1], -300.0), 300.0)
    n = int(tp[TP_NCOL])
    to_station = math.atan2(dy, dx)
    sd_prior = math.sqrt(tp[TP_PRIOR_VAR])
    for lev in range(n):
        u = m[M_COLUMN + lev] + t[T_ERR + 3 * lev]
        v = m[M_COLUMN + n + lev] + t[T_ERR + 3 * lev + 1]
        speed = math.sqrt(u * u + v * v)
        base = O_COLUMN + 3 * lev
        obs[base] = min(math.sqrt(max(t[T_ERR + 3 * lev + 2], 0.0)) / sd_prior, 1.0)
        if speed > 0.0 and dist > 0.0:
            diff = abs(math.atan2(v, u) - to_station) % (2.0 * math.pi)
            obs[base + 1] = min(diff, 2.0 * math.pi - diff) / math.pi
        else:
            obs[base + 1] = 0.0
        obs[base + 2] = speed / (speed + tp[TP_SPEED])
    return dist


@njit
def assimilate(m: np.ndarray, t: np.ndarray, tp: np.ndarray) -> None:
    """Decay the forecast-error estimates and fold in the in-situ wind of the last step."""
    n = int(tp[TP_NCOL])
    prior = tp[TP_PRIOR_VAR]
    x, y, now = m[M_POS], m[M_POS + 1], m[M_ELAPSED]
    if t[T_HAS_MEAS] > 0.0:
        d = math.hypot(x - t[T_LAST_X], y - t[T_LAST_Y])
        rho = math.exp(-d / tp[TP_L_M] - max(now - t[T_LAST_T], 0.0) / tp[TP_L_S])
        for lev in range(n):
            t[T_ERR + 3 * lev] *= rho
            t[T_ERR + 3 * lev + 1] *= rho
            t[T_ERR + 3 * lev + 2] = rho * rho * t[T_ERR + 3 * lev + 2] + (1.0 - rho * rho) * prior
    eu = m[M_WIND] - m[M_WIND_FC]
    ev = m[M_WIND + 1] - m[M_WIND_FC + 1]
    pm = m[M_WIND_P]
    pmin, pmax = tp[TP_PMIN], tp[TP_PMAX]
    for lev in range(n):
        p = pmin + (pmax - pmin) * lev / (n - 1)
        c = math.exp(-abs(p - pm) / tp[TP_L_PA])
        var = t[T_ERR + 3 * lev + 2]
        # measured error = c * e_level + sqrt(1 - c^2) * independent + noise
        s = var * c * c + prior * (1.0 - c * c) + tp[TP_NOISE_VAR]
        gain = var * c / s
        t[T_ERR + 3 * lev] += gain * (eu - c * t[T_ERR + 3 * lev])
        t[T_ERR + 3 * lev + 1] += gain * (ev - c * t[T_ERR + 3 * lev + 1])
        t[T_ERR + 3 * lev + 2] = var * (1.0 - gain * c)
    t[T_LAST_X] = x
    t[T_LAST_Y] = y
    t[T_LAST_T] = now
    t[T_HAS_MEAS] = 1.0


@njit
def task_reset(m: np.ndarray, t: np.ndarray, tp: np.ndarray, obs: np.ndarray) -> float:
    """Start an episode: forget the wind measurements; write the first observation.

    Returns:
        The distance to the station (km).
    """
    for q in range(t.shape[0]):
        t[q] = 0.0
    t[T_REQUESTED] = 1.0
    n = int(tp[TP_NCOL])
    for lev in range(n):
        t[T_ERR + 3 * lev + 2] = tp[TP_PRIOR_VAR]
    return write_observation(m, t, tp, obs) / 1000.0


@njit
def task_command(action: int, t: np.ndarray) -> float:
    """The device command of an action (its code as a float); remembers what was asked."""
    t[T_REQUESTED] = action
    return float(action)


@njit
def task_step(
    m: np.ndarray, t: np.ndarray, tp: np.ndarray, obs: np.ndarray
) -> tuple[bool, bool, bool, int, float, float, float, float, float]:
    """Score a measurement and write the next observation.

    Returns:
        ``(terminated, truncated, within_station, failure, distance_km, twr50, time_s,
        term_station, term_power)``; ``twr50`` counts the steps so far that ended within the
        station radius over ``max_steps``, so at the end of an episode (truncated or not) it is
        the episode's time within radius [B20].
    """
    t[T_STEP] += 1.0
    assimilate(m, t, tp)
    dist = write_observation(m, t, tp, obs)
    radius = tp[TP_RADIUS_M]
    within = dist <= radius
    if within:
        t[T_WITHIN] += 1.0
        r = 1.0
    else:
        r = tp[TP_FAR] * 2.0 ** (-(dist - radius) / tp[TP_HALF_M])
    factor = 1.0
    if int(t[T_REQUESTED]) == DOWN and m[M_EXCESS] < 0.5:
        over = min(max((m[M_ACS_W] - 100.0) / 200.0, 0.0), 1.0)
        factor = tp[TP_PEN_BASE] - tp[TP_PEN_SLOPE] * over
    status = int(m[M_STATUS])
    if status == OK and dist > tp[TP_REGION_M]:
        status = OUT_OF_REGION
    terminated = status != OK
    truncated = (not terminated) and t[T_STEP] >= tp[TP_MAX_STEPS]
    return (
        terminated,
        truncated,
        within,
        status,
        dist / 1000.0,
        t[T_WITHIN] / tp[TP_MAX_STEPS],
        m[M_ELAPSED],
        r,
        r * (factor - 1.0),
    )


class BalloonTask:
    """The station-keeping task for one env (a batch of one over the numba row functions).

    Args:
        cfg: The system config.
    """

    action_labels = ("command (0 down, 1 stay, 2 up)",)

    def __init__(self, cfg: BalloonConfig) -> None:
        """Build spaces and the task state."""
        self.cfg = cfg
        self.layout = observation_layout(cfg)
        self.observation_space = self.layout.space(np.float32)
        self.action_space = gym.spaces.Discrete(3)
        self.reward_scales = reward_scales(cfg)
        self._tp = task_params(cfg)
        self._t = np.zeros(state_size(cfg), dtype=np.float64)
        self._obs = np.zeros(self.layout.size, dtype=np.float32)

    def reset(
        self, measurement: np.ndarray, seed: int | None, options: dict[str, Any] | None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """First observation of an episode (the task draws nothing at random)."""
        dist_km = task_reset(measurement, self._t, self._tp, self._obs)
        return self._obs.copy(), {"time_s": float(measurement[M_ELAPSED]), "distance_km": dist_km}

    def command(self, action: Any, measurement: np.ndarray) -> np.ndarray:
        """The ACS command for this action."""
        return np.array([task_command(int(action), self._t)], dtype=np.float64)

    def step(self, measurement: np.ndarray, applied_command: np.ndarray) -> TaskStep:
        """Reward terms and termination for the measurement after a command."""
        (term, trunc, within, failure, dist_km, twr, time_s, r_s, r_p) = task_step(
            measurement, self._t, self._tp, self._obs
        )
        info = {
            "distance_km": dist_km,
            "twr50": twr,
            "time_s": time_s,
            "within_station": bool(within),
            "failure": int(failure),
        }
        terms = {"station": r_s, "power": r_p}
        return TaskStep(self._obs.copy(), terms, bool(term), bool(trunc), info)
