"""Balloon system identification: power budget, forecast error, vertical physics, BLE's noise.

What a flight controller reports per control step, and a capture of
``twinloop/BalloonStationKeeping-v0`` holds, is enough: the observation before and after the
step (ambient pressure, battery state of charge, the sun's elevation, the compressor's power and
the pressure ratio) and the command the vehicle applied after its safety layers
(``infos["applied_command"]``). ``true/...`` infos are never read. The device profile in a
capture's privileged metadata is used by :mod:`twinloop.sysid.base` for scoring only.

Model (the kernel's, evaluated, not re-derived): over one control step of ``n`` sub-steps of
``dt`` each, :func:`twinloop.sim.balloon.kernel.sub_step` moves the charge by
``(solar - load - acs) dt`` per sub-step, where ``solar = panel_peak_w * u(sin el, p)`` with
``u`` the kernel's :func:`~twinloop.sim.balloon.kernel.solar_power_w` of the capture's config
with a 1 W panel, ``load`` the day or night load (day when the sun is above the kernel's night
threshold) and ``acs`` the compressor's power (DOWN only). Sub-step ``k`` sees the sun at
``t0 + k dt``; the elevation and pressure within a step are interpolated linearly between
the two observations (the sun moves 0.75 degrees in a 3-minute step). Dividing by the
capacity,

    soc1 - soc0 = a S - b H_night - c H_day - d A,     a = panel/cap, b = night/cap,
                                                      c = day/cap,   d = 1/cap,

linear in ``(a, b, c, d)`` with ``S``, ``H``, ``A`` known per step. The compressor's energy
``A`` (its power table is not part of the device prior) fixes the scale, so the panel peak, both
loads and the capacity are each identified. Steps whose charge is clipped (within 0.1 % of full
or empty), that end the episode, or in which the day/night switch happens (the switching
sub-step is not known from the end points) are left out and counted in the details.

Intervals: ``boot = 0``: ordinary least squares, the Laplace approximation of a Gaussian
likelihood with the residual variance (samples of ``(a, b, c, d)`` from it are mapped to the
parameters; percentile intervals); ``boot = N``: N refits on episodes resampled with
replacement. The compressor's power is reported for the last sub-step only (and computed by
the kernel at the first one's pressure ratio), so its energy over a step is the trapezoid of
the two; that leaves a systematic error of the power scale of 0.1-0.3 %, which moves all four
parameters together; the interpolation of the sun adds up to 0.7 % to the day load alone.
Both kinds of interval add these model errors to their samples as log-normal factors, one
common to the four parameters (95 % half-width :data:`SCALE_ERROR_REL`) and one each
(:data:`PARAM_ERROR_REL`); the coverage test checks the result. Steps with a term whose
parameter is not fitted (too few steps of its kind) are left out of the fit.

Forecast error (``wind.forecast_error_rms_m_per_s``, generative winds only): the forecast a
controller reads is the operator's own service, so it is rebuilt, not observed: for each
episode a kernel row of the capture's recorded config is reset with the episode's seed (the
capture's episode metadata), as :class:`twinloop.hardware.balloon.backend.ForecastService`
does; the forecast field is drawn before the error field from the same stream, so it does not
depend on the error's scale. The in-situ wind reported after step ``t`` is the true wind at the
state that began it (the kernel holds it over the step), so the residual of step ``t`` is
``wind_measured[t + 1] - forecast(x[t], y[t], p[t], time_s[t])`` (kernel's
:func:`~twinloop.sim.balloon.kernel.wind_at`; the position from the distance and direction to
the station). Under the model the truth minus the forecast is an error field with vector RMS
``r`` at its knots; linear interpolation between correlated knots (levels and times) shrinks
its variance at a point by the known factor ``f = (w0^2 + w1^2 + 2 w0 w1 rho)`` per axis, so
``E|res|^2 = r^2 f_level f_time``. Per episode ``m = mean(|res|^2 / f)``; the estimate is
``sqrt(mean over episodes of m)``. Interval: chi-square with ``2 E`` degrees of freedom for
``E`` episodes (each episode's field is an independent draw: its two components count as two
samples; the steps of one episode are strongly correlated along the track and are counted as
no more, which is conservative for episodes longer than the field's correlation). Episodes
flown in a start wind table (``reset(options=...)``: the table is both truth and forecast)
carry no information; captures do not record reset options, so such an episode is recognised
only by its constant in-situ wind (a constant table) and left out and counted. A table that
varies with pressure is not recognised: fit the forecast error to captures of drawn winds.

Envelope, lift gas, drag and altitude control (the seven of
:data:`twinloop.sysid.balloon_vertical.VERTICAL_PATHS`): each replayable episode (its start
drawn from its recorded seed) is flown again with the kernel under the applied commands and
the reported winds, and the replayed pressure and superpressure are fitted to the reported
ones over their float32 rounding; see :mod:`twinloop.sysid.balloon_vertical`. The
compressor's efficiency is a multiplier of its whole table: its estimate is the table's
mean, and the override file gets the whole fitted table (``details["table_overrides"]``).
These intervals are always Laplace (``boot`` applies to the power budget only).

BLE's wind noise (``wind.ble_noise_variance_m2_per_s2``, ``source="ble-vae"`` only): the
forecast is rebuilt from each episode's seed as above (BLE's decoder at the drawn latent),
and so is the noise field: its harmonics' seeds and offsets are drawn from the same stream,
and the field scales with the noise's sd, so the residual (in-situ wind minus forecast) is
``sd g`` with ``g`` the kernel's :func:`~twinloop.sim.balloon.wind.ble_noise` of sd 1 at the
same point. The sd is the least-squares slope of the residuals on ``g`` (both components,
every step), its interval the slope's normal interval from the regression's residual
variance (floored at the winds' float32 rounding), both squared. A chi-square interval as
for the forecast error would need the field's variance at a point, which the harmonic sum
sets only approximately; the regression needs neither.

Not identified (reported with the reason, left out of the override file): a vertical fit
that did not reach the telemetry's rounding (all seven), or whose interval is wide against
the prior; captures without a replayable episode (every start set by reset options); BLE's
noise for other wind sources; the forecast error of gridded or BLE winds or of captures
without a usable episode; and the power budget of captures without enough DOWN steps (its
scale) or whose fit is non-physical (``details["power_failure"]`` says why). Each part is
fitted whether or not the others could be; only a capture that identifies nothing raises.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from twinloop.core.config import field_param, override
from twinloop.sim.balloon import kernel as K
from twinloop.sim.balloon import wind as W
from twinloop.sim.balloon.config import BalloonConfig
from twinloop.sim.balloon.profile import PRIORS
from twinloop.sysid import balloon_vertical as V
from twinloop.sysid.balloon_vertical import config_of
from twinloop.sysid.base import ParameterEstimate, Progress, SysidResult

#: The parameters of the power fit, in the order of the columns of ``(S, H_night, H_day, A)``.
POWER_PATHS = (
    "vehicle.panel_peak_w",
    "vehicle.night_load_w",
    "vehicle.day_load_w",
    "vehicle.battery_capacity_wh",
)
_Z975 = 1.959963984540054
#: Fewest usable steps of each kind (sunlit, night, day, compressor) for its parameter.
MIN_STEPS = 20
#: Relative model error of the power scale (95 % half-width): the compressor's power within a
#: step is known only at its ends, and its energy, which sets the scale of all four
#: parameters, is off by 0.1-0.3 % on the captures we checked (all four move together).
SCALE_ERROR_REL = 0.006
#: Relative model error of each parameter on its own (95 % half-width): the interpolation of
#: the sun and pressure within a step; the day load, seen only by day beside the panels, is
#: off by up to 0.7 % (0.3 % for the others) over 24 random devices.
PARAM_ERROR_REL = 0.005
#: Fewest episodes for bootstrap intervals (resampling fewer says nothing).
MIN_BOOT_EPISODES = 5
#: Charge within this of full or empty: the step may have been clipped by the battery.
SOC_MARGIN = 1e-3

_REASONS = {
    "wind.ble_noise_variance_m2_per_s2": (
        "not identified: applies to BLE's winds (source='ble-vae') only; these captures fly "
        "another wind source"
    ),
}
#: The parameter of the forecast-error fit.
FORECAST_ERROR_PATH = "wind.forecast_error_rms_m_per_s"
#: BLE's wind noise (``source="ble-vae"`` only).
BLE_NOISE_PATH = "wind.ble_noise_variance_m2_per_s2"
#: Floor of the residual sd of the noise regression (m/s): the float32 rounding of winds.
BLE_WIND_ROUNDING_SD = 1e-6
#: Fewest usable episodes for the forecast error (each is one independent draw of the field).
MIN_FORECAST_EPISODES = 3
#: In-situ wind varying by less than this (m/s) over an episode: it flew in a constant start
#: wind table, which is both truth and forecast.
TABLE_WIND_SPREAD_M_PER_S = 1e-9


@dataclasses.dataclass
class PowerSteps:
    """The usable control steps of the captures, one row each.

    Attributes:
        episode: ``(n,)`` global episode index of the step.
        dsoc: ``(n,)`` change of the state of charge over the step.
        design: ``(n, 4)`` per step: sunlit energy of a 1 W panel (Wh), night hours, day hours
            and compressor energy (Wh), the coefficients of ``(a, -b, -c, -d)``.
        n_episodes: Episodes read.
        dropped: Steps left out, by reason.
    """

    episode: np.ndarray
    dsoc: np.ndarray
    design: np.ndarray
    n_episodes: int
    dropped: dict[str, int]

    def select(self, episodes: np.ndarray) -> PowerSteps:
        """The steps of ``episodes`` (global indices, repeats allowed), renumbered 0..k-1."""
        rows, new_ep = [], []
        for j, e in enumerate(episodes):
            r = np.flatnonzero(self.episode == e)
            rows.append(r)
            new_ep.append(np.full(r.size, j, dtype=np.int64))
        idx = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
        return PowerSteps(
            episode=np.concatenate(new_ep) if new_ep else np.zeros(0, dtype=np.int64),
            dsoc=self.dsoc[idx],
            design=self.design[idx],
            n_episodes=len(episodes),
            dropped=dict(self.dropped),
        )


# --- reading captures ---------------------------------------------------------------------------
def _field(obs: np.ndarray, layout: dict[str, Any], name: str) -> np.ndarray:
    if name not in layout:
        raise ValueError(f"observation has no field {name!r}; fields: {sorted(layout)}")
    entry = layout[name]
    return obs[:, entry["start"] : entry["stop"]].astype(np.float64).reshape(obs.shape[0], -1)


def unit_params(cfg: BalloonConfig) -> np.ndarray:
    """The kernel's parameter vector of ``cfg`` with a 1 W panel peak (solar power per W)."""
    return K.physics_params(override(cfg, **{"vehicle.panel_peak_w": 1.0}))


def read_episode(
    obs: np.ndarray,
    applied: np.ndarray,
    terminated: bool,
    layout: dict[str, Any],
    params: np.ndarray,
    dropped: dict[str, int],
) -> tuple[np.ndarray, np.ndarray]:
    """``(dsoc, design)`` of the usable steps of one episode (see :class:`PowerSteps`).

    Args:
        obs: ``(T + 1, obs_dim)`` observations.
        applied: ``(T,)`` applied command of each step.
        terminated: Whether the episode ended in a failure (its last step is left out).
        layout: The observation layout (capture metadata).
        params: :func:`unit_params` of the capture's config.
        dropped: Counts of left-out steps by reason, updated in place.
    """
    soc = _field(obs, layout, "battery_soc")[:, 0]
    el = _field(obs, layout, "solar_elevation_deg")[:, 0]
    p = _field(obs, layout, "pressure_pa")[:, 0]
    ratio = _field(obs, layout, "pressure_ratio")[:, 0]
    acs_w = _field(obs, layout, "acs_power_w")[:, 0]
    n = applied.size
    n_sub = int(params[K.P_NSUB])
    h = params[K.P_DT] / 3600.0
    sin_night = params[K.P_SIN_NIGHT]
    w = np.arange(n_sub) / n_sub
    design = np.zeros((n, 4))
    keep = np.ones(n, dtype=bool)
    for t in range(n):
        sin_el = np.sin(np.radians(el[t] + (el[t + 1] - el[t]) * w))
        day = sin_el > sin_night
        if day.any() and not day.all():
            keep[t] = False
            dropped["day_night_switch"] = dropped.get("day_night_switch", 0) + 1
            continue
        pk = p[t] + (p[t + 1] - p[t]) * w
        design[t, 0] = h * sum(
            K.solar_power_w(s, q, params) for s, q in zip(sin_el, pk, strict=True)
        )
        design[t, 2 if day[0] else 1] = h * n_sub
        if int(round(applied[t])) == K.DOWN:
            # sub-step 0 runs at the start's ratio; the last one's power is reported
            w0 = K.acs_power_w(ratio[t], params)
            design[t, 3] = h * n_sub * 0.5 * (w0 + acs_w[t + 1])
    clipped = (np.minimum(soc[:-1], soc[1:]) <= SOC_MARGIN) | (
        np.maximum(soc[:-1], soc[1:]) >= 1.0 - SOC_MARGIN
    )
    dropped["battery_clipped"] = dropped.get("battery_clipped", 0) + int((clipped & keep).sum())
    keep &= ~clipped
    if terminated and n:
        if keep[-1]:
            dropped["terminal"] = dropped.get("terminal", 0) + 1
        keep[-1] = False
    return (soc[1:] - soc[:-1])[keep], design[keep]


def read_captures(datasets: Sequence[Any], max_episodes: int | None = None) -> PowerSteps:
    """Every usable step of every episode (the first ``max_episodes`` only, if given).

    Raises:
        ValueError: Not balloon captures, captures of different vehicles' nominal power
            configs, or no episodes.
    """
    parts_y, parts_x, parts_e = [], [], []
    dropped: dict[str, int] = {}
    n_ep = 0
    ref: tuple[float, ...] | None = None
    for ds in datasets:
        cfg = config_of(ds)
        params = unit_params(cfg)
        # The nominal config enters only through the known parts of the model (panel geometry,
        # compressor table, night threshold, sub-steps); captures must agree on them.
        key = tuple(np.round(params, 12))
        if ref is None:
            ref = key
        elif key != ref:
            raise ValueError(
                f"{ds.path}: recorded with a different nominal vehicle or physics than the "
                "first capture; fit captures of one configuration together"
            )
        layout = ds.metadata["twinloop"]["env_metadata"]["observation_layout"]
        for ep in ds.iterate_episodes():
            if max_episodes is not None and n_ep >= max_episodes:
                break
            infos = ep.infos
            if "applied_command" not in infos:
                raise ValueError(f"{ds.path}: episode {ep.id} has no applied_command info")
            applied = np.asarray(infos["applied_command"], dtype=np.float64).reshape(-1)[1:]
            obs = np.asarray(ep.observations)
            if obs.shape[0] != applied.size + 1:
                raise ValueError(
                    f"{ds.path}: episode {ep.id} has {obs.shape[0]} observations for "
                    f"{applied.size} steps (expected one more)"
                )
            terminated = bool(np.asarray(ep.terminations).any())
            y, x = read_episode(obs, applied, terminated, layout, params, dropped)
            parts_y.append(y)
            parts_x.append(x)
            parts_e.append(np.full(y.size, n_ep, dtype=np.int64))
            n_ep += 1
    if n_ep == 0:
        raise ValueError("no episodes in the captures: record some with 'twinloop run --record'")
    return PowerSteps(
        episode=np.concatenate(parts_e),
        dsoc=np.concatenate(parts_y),
        design=np.concatenate(parts_x),
        n_episodes=n_ep,
        dropped=dropped,
    )


# --- the forecast error -------------------------------------------------------------------------
@dataclasses.dataclass
class ForecastResiduals:
    """In-situ wind minus the rebuilt forecast, per usable episode (see the module doc).

    Attributes:
        per_episode: ``(E,)`` mean over the episode's steps of ``|residual|^2 / f``, where
            ``f`` is the variance factor of the error field's interpolation at the step.
        n_steps: Residual steps used in all.
        dropped: Episodes left out, by reason.
    """

    per_episode: np.ndarray
    n_steps: int
    dropped: dict[str, int]


def interpolation_factor(weight: float, rho: float) -> float:
    """Variance of a unit-variance field linearly interpolated between two knots.

    Args:
        weight: Weight of the upper knot (0-1), as the kernel's ``uniform_level`` returns it.
        rho: Correlation of the two knots.

    Returns:
        ``w0^2 + w1^2 + 2 w0 w1 rho`` (1 at a knot).
    """
    w0 = 1.0 - weight
    return w0 * w0 + weight * weight + 2.0 * w0 * weight * rho


def forecast_residuals(
    datasets: Sequence[Any], max_episodes: int | None = None
) -> ForecastResiduals:
    """Rebuild each episode's forecast from its seed and compare it with the in-situ wind.

    Raises:
        ValueError: A capture is not a balloon capture, its wind is not generative, or an
            episode has no seed or no ``time_s`` info.
    """
    from twinloop.sim.balloon.env import BalloonSimBackend

    per_ep: list[float] = []
    n_steps = 0
    dropped: dict[str, int] = {}
    n_ep = 0
    for ds in datasets:
        cfg = config_of(ds)
        if cfg.wind.source != "generative":
            raise ValueError(
                f"{ds.path}: wind source {cfg.wind.source!r}; the forecast error is fitted for "
                "source='generative' only"
            )
        w = cfg.wind
        layout = ds.metadata["twinloop"]["env_metadata"]["observation_layout"]
        shadow = BalloonSimBackend(cfg)
        horizon = w.horizon_h * 3600.0
        n_lev = w.n_wind_levels
        for ep in ds.iterate_episodes():
            if max_episodes is not None and n_ep >= max_episodes:
                break
            n_ep += 1
            seed = (getattr(ep, "metadata", None) or {}).get("seed")
            if seed is None:
                raise ValueError(f"{ds.path}: episode {ep.id} has no seed in its metadata")
            if "time_s" not in ep.infos:
                raise ValueError(f"{ds.path}: episode {ep.id} has no time_s info")
            obs = np.asarray(ep.observations)
            if obs.shape[0] < 3:  # one step cannot be told from a constant start wind
                dropped["under_2_steps"] = dropped.get("under_2_steps", 0) + 1
                continue
            ts = np.asarray(ep.infos["time_s"], dtype=np.float64).reshape(-1)
            dist = _field(obs, layout, "distance_km")[:, 0] * 1000.0
            direction = _field(obs, layout, "station_direction")
            p = _field(obs, layout, "pressure_pa")[:, 0]
            measured = _field(obs, layout, "wind_measured_m_per_s")
            shadow.reset(seed=int(seed))
            f, _, wind, work, _params, wp, grid, levels = shadow.kernel_args()
            t_offset = float(f[0, K.F_T_OFFSET])
            res = np.empty((obs.shape[0] - 1, 2))
            fac = np.empty(obs.shape[0] - 1)
            for t in range(obs.shape[0] - 1):
                # the balloon sits at -distance * (unit vector to the station)
                x, y = -dist[t] * direction[t, 0], -dist[t] * direction[t, 1]
                fu, fv = K.wind_at(
                    0, x, y, p[t], ts[t] + t_offset, ts[t], False, wind, work, wp, grid, levels
                )
                res[t] = measured[t + 1, 0] - fu, measured[t + 1, 1] - fv
                # the kernel's weights: levels in pressure, knots in time
                _, wl = W.uniform_level(p[t], w.min_pressure_pa, w.max_pressure_pa, n_lev)
                _, wt = W.uniform_level(ts[t], 0.0, horizon, w.n_wind_times)
                fac[t] = interpolation_factor(wl, w.error_level_correlation) * (
                    interpolation_factor(wt, w.error_time_correlation)
                )
            if np.all(np.ptp(measured[1:], axis=0) < TABLE_WIND_SPREAD_M_PER_S):
                # a constant start wind: both truth and forecast, drawn fields unused
                dropped["start_wind_table"] = dropped.get("start_wind_table", 0) + 1
                continue
            per_ep.append(float(np.mean((res**2).sum(axis=1) / fac)))
            n_steps += res.shape[0]
    return ForecastResiduals(np.asarray(per_ep, dtype=np.float64), n_steps, dropped)


def fit_forecast_error(
    residuals: ForecastResiduals, rng: np.random.Generator, n_samples: int
) -> tuple[float, float, float, np.ndarray]:
    """Estimate, 95 % interval and samples of the forecast error's vector RMS (m/s).

    Chi-square with two degrees of freedom per episode (see the module doc).

    Raises:
        ValueError: Fewer than :data:`MIN_FORECAST_EPISODES` usable episodes.
    """
    from scipy import stats

    m = residuals.per_episode
    if m.size < MIN_FORECAST_EPISODES:
        raise ValueError(
            f"{m.size} usable episodes for the forecast error, fewer than "
            f"{MIN_FORECAST_EPISODES} (episodes in a start wind table carry none)"
        )
    dof = 2 * m.size
    total = 2.0 * float(m.sum())  # ~ r^2 chi2(dof)
    est = math.sqrt(float(m.mean()))
    lo = math.sqrt(total / stats.chi2.ppf(0.975, dof))
    hi = math.sqrt(total / stats.chi2.ppf(0.025, dof))
    samples = np.sqrt(total / rng.chisquare(dof, n_samples))
    return est, lo, hi, samples


# --- BLE's wind noise ---------------------------------------------------------------------------
@dataclasses.dataclass
class BleNoiseResiduals:
    """In-situ wind minus the rebuilt forecast, and BLE's noise of unit sd there, per step.

    Attributes:
        residual: ``(n, 2)`` in-situ wind minus the forecast (m/s).
        unit_noise: ``(n, 2)`` the episode's noise field evaluated with sd 1 at the same point.
        n_episodes: Episodes used.
        dropped: Episodes left out, by reason.
    """

    residual: np.ndarray
    unit_noise: np.ndarray
    n_episodes: int
    dropped: dict[str, int]


def ble_noise_residuals(
    datasets: Sequence[Any], max_episodes: int | None = None
) -> BleNoiseResiduals:
    """Rebuild each episode's BLE forecast and noise field from its seed (see the module doc).

    Raises:
        ValueError: A capture whose wind is not BLE's, or an episode without seed or time_s.
    """
    from twinloop.sim.balloon.env import BalloonSimBackend

    res: list[np.ndarray] = []
    unit: list[np.ndarray] = []
    dropped: dict[str, int] = {}
    n_ep = used = 0
    for ds in datasets:
        cfg = config_of(ds)
        if cfg.wind.source != "ble-vae":
            raise ValueError(
                f"{ds.path}: wind source {cfg.wind.source!r}; BLE's noise applies to "
                "source='ble-vae' only"
            )
        layout = ds.metadata["twinloop"]["env_metadata"]["observation_layout"]
        shadow = BalloonSimBackend(cfg)
        for ep in ds.iterate_episodes():
            if max_episodes is not None and n_ep >= max_episodes:
                break
            n_ep += 1
            seed = (getattr(ep, "metadata", None) or {}).get("seed")
            if seed is None or "time_s" not in ep.infos:
                raise ValueError(f"{ds.path}: episode {ep.id} has no seed or no time_s info")
            obs = np.asarray(ep.observations)
            measured = _field(obs, layout, "wind_measured_m_per_s")
            if obs.shape[0] < 3 or np.all(np.ptp(measured[1:], axis=0) < TABLE_WIND_SPREAD_M_PER_S):
                dropped["start_wind_table_or_short"] = (
                    dropped.get("start_wind_table_or_short", 0) + 1
                )
                continue
            ts = np.asarray(ep.infos["time_s"], dtype=np.float64).reshape(-1)
            dist = _field(obs, layout, "distance_km")[:, 0] * 1000.0
            direction = _field(obs, layout, "station_direction")
            p = _field(obs, layout, "pressure_pa")[:, 0]
            shadow.reset(seed=int(seed))
            f, _, wind, work, _params, wp, grid, levels = shadow.kernel_args()
            t_offset = float(f[0, K.F_T_OFFSET])
            noise_at = W.TABLE_SIZE + W.VAE_PSI_SIZE
            for t in range(obs.shape[0] - 1):
                x, y = -dist[t] * direction[t, 0], -dist[t] * direction[t, 1]
                fu, fv = K.wind_at(
                    0, x, y, p[t], ts[t] + t_offset, ts[t], False, wind, work, wp, grid, levels
                )
                res.append(measured[t + 1] - np.array([fu, fv]))
                unit.append(np.array(W.ble_noise(wind[0], noise_at, x, y, p[t], ts[t], 1.0)))
            used += 1
    return BleNoiseResiduals(
        np.asarray(res, dtype=np.float64).reshape(-1, 2),
        np.asarray(unit, dtype=np.float64).reshape(-1, 2),
        used,
        dropped,
    )


def fit_ble_noise(
    noise: BleNoiseResiduals, rng: np.random.Generator, n_samples: int
) -> tuple[float, float, float, np.ndarray]:
    """Estimate, 95 % interval and samples of BLE's noise variance (m^2/s^2).

    Least squares of the residual on the unit noise field (one slope, the noise's sd); the
    interval is the slope's normal interval from the residual variance, squared.

    Raises:
        ValueError: Fewer than :data:`MIN_FORECAST_EPISODES` usable episodes.
    """
    if noise.n_episodes < MIN_FORECAST_EPISODES:
        raise ValueError(
            f"{noise.n_episodes} usable episodes for BLE's noise, fewer than "
            f"{MIN_FORECAST_EPISODES} (episodes in a start wind table carry none)"
        )
    g = noise.unit_noise.ravel()
    r = noise.residual.ravel()
    gg = float(g @ g)
    sd = float(g @ r) / gg
    e = r - sd * g
    se = math.sqrt(max(float(e @ e) / max(r.size - 1, 1), BLE_WIND_ROUNDING_SD**2) / gg)
    draws = sd + se * rng.standard_normal(n_samples)
    lo, hi = sd - _Z975 * se, sd + _Z975 * se
    return sd * sd, max(lo, 0.0) ** 2, hi * hi, draws * draws


# --- the fit ------------------------------------------------------------------------------------
def _counts(steps: PowerSteps) -> dict[str, int]:
    d = steps.design
    return {
        "sunlit_steps": int((d[:, 0] > 0).sum()),
        "night_steps": int((d[:, 1] > 0).sum()),
        "day_steps": int((d[:, 2] > 0).sum()),
        "compressor_steps": int((d[:, 3] > 0).sum()),
    }


def _columns(steps: PowerSteps) -> list[int]:
    """Columns with enough steps; the compressor's (the scale) is required."""
    c = _counts(steps)
    if c["compressor_steps"] < MIN_STEPS:
        raise ValueError(
            f"{c['compressor_steps']} usable steps with the compressor on (DOWN), fewer than "
            f"{MIN_STEPS}: the battery capacity, which sets the scale of the power budget, "
            "needs them; capture episodes with DOWN commands"
        )
    cols = [k for k, name in enumerate(c) if c[name] >= MIN_STEPS]
    return cols


def _solve(steps: PowerSteps, cols: list[int]) -> tuple[np.ndarray, np.ndarray, float]:
    """Least squares of ``dsoc`` on the columns: ``(beta, (X^T X)^-1, residual variance)``."""
    sign = np.array([1.0, -1.0, -1.0, -1.0])
    # a step with a term whose coefficient is not fitted cannot be explained: leave it out
    rest = [k for k in range(4) if k not in cols]
    rows = ~np.any(steps.design[:, rest] != 0.0, axis=1)
    x = steps.design[rows][:, cols] * sign[cols]
    y = steps.dsoc[rows]
    if y.size <= len(cols):
        raise ValueError(f"{y.size} usable steps for {len(cols)} coefficients: capture more")
    xtx_inv = np.linalg.inv(x.T @ x)
    beta = xtx_inv @ (x.T @ y)
    resid = y - x @ beta
    s2 = float(resid @ resid) / (y.size - len(cols))
    return beta, xtx_inv, s2


def _to_params(beta: np.ndarray, cols: list[int]) -> np.ndarray:
    """``(..., len(cols))`` coefficients -> parameters in ``cols`` order (capacity last)."""
    d = beta[..., cols.index(3)]
    with np.errstate(divide="ignore", invalid="ignore"):
        cap = 1.0 / d
        return np.stack([cap if k == 3 else beta[..., j] * cap for j, k in enumerate(cols)], -1)


@dataclasses.dataclass(frozen=True)
class _PowerFit:
    """The power budget's fit: estimates, samples in ``paths`` order, fitted columns."""

    fitted: dict[str, tuple[float, float, float, str]]
    samples: np.ndarray
    paths: list[str]
    cols: list[int]
    method: str
    residual_sd_wh: float


def _fit_power(
    steps: PowerSteps,
    boot: int,
    rng: np.random.Generator,
    n_samples: int,
    progress: Progress | None,
) -> _PowerFit:
    """Least squares of the charge trace, with Laplace or bootstrap intervals (module doc).

    Raises:
        ValueError: Too few compressor steps, or non-physical values (the message says what
            to capture).
    """
    cols = _columns(steps)
    beta, xtx_inv, s2 = _solve(steps, cols)
    est = _to_params(beta, cols)
    if not np.all(np.isfinite(est)) or np.any(est <= 0.0):
        raise ValueError(
            f"the power fit gave non-physical values {est.tolist()} for "
            f"{[POWER_PATHS[k] for k in cols]}: capture more episodes with day, night and DOWN"
        )
    paths = [POWER_PATHS[k] for k in cols]
    if boot:
        reps = []
        for b in range(boot):
            pick = rng.integers(0, steps.n_episodes, steps.n_episodes)
            sub = steps.select(pick)
            try:
                bb, *_ = _solve(sub, cols)
                reps.append(_to_params(bb, cols))
            except (ValueError, np.linalg.LinAlgError):
                continue  # a resample without some kind of step
            if progress:
                progress("bootstrap", b + 1, boot)
        if len(reps) < max(20, boot // 2):
            raise ValueError(
                f"only {len(reps)} of {boot} bootstrap resamples could be fitted: capture more "
                "episodes, or use Laplace intervals (--boot 0)"
            )
        samples = np.asarray(reps, dtype=np.float64)
        method = f"bootstrap: percentile 95 % intervals of {len(reps)} refits on resampled episodes"
        note = f"bootstrap over episodes ({len(reps)})"
    else:
        draws = rng.multivariate_normal(beta, s2 * xtx_inv, size=n_samples, method="cholesky")
        samples = _to_params(draws, cols)
        method = (
            "laplace: least squares of the charge change per step (Gaussian errors with the "
            "residual variance); 95 % percentile intervals of samples mapped to the parameters"
        )
        note = "laplace (least squares of the charge trace)"
    # the scale's model error, one factor per sample for all four (they share the scale)
    z = rng.standard_normal(samples.shape[0])[:, None]
    samples = samples * np.exp(z * math.log1p(SCALE_ERROR_REL) / _Z975)
    z = rng.standard_normal(samples.shape)
    samples = samples * np.exp(z * math.log1p(PARAM_ERROR_REL) / _Z975)
    lo, hi = np.nanpercentile(samples, [2.5, 97.5], axis=0)
    fitted = {p: (float(est[j]), float(lo[j]), float(hi[j]), note) for j, p in enumerate(paths)}
    sd = float(math.sqrt(s2) * est[cols.index(3)])
    return _PowerFit(fitted, samples, paths, cols, method, sd)


def fit_balloon(
    datasets: Sequence[Any],
    *,
    boot: int = 0,
    seed: int = 0,
    max_episodes: int | None = None,
    progress: Progress | None = None,
    n_samples: int = 4000,
) -> SysidResult:
    """Fit a balloon's power budget, winds and vertical physics to its captures (module doc).

    Args:
        datasets: Open captures of ``twinloop/BalloonStationKeeping-v0`` of one device.
        boot: 0 for Laplace intervals, else the number of bootstrap resamples of episodes.
        seed: Seed of the samples and of the bootstrap.
        max_episodes: Use the first N episodes only.
        progress: ``progress(stage, done, total)``.
        n_samples: Samples drawn from the Laplace approximation.

    Raises:
        ValueError: Bad arguments, or too little data (the message says what to capture).
    """
    if isinstance(boot, bool) or not isinstance(boot, int) or boot < 0:
        raise ValueError(f"boot = {boot!r} must be an integer >= 0 (0: Laplace intervals)")
    if boot and boot < 20:
        raise ValueError(f"boot = {boot} is too few for 95 % intervals: use 0 or >= 20")
    if not isinstance(n_samples, int) or n_samples < 100:
        raise ValueError(f"n_samples = {n_samples!r} must be an integer >= 100")
    if not datasets:
        raise ValueError("no datasets given")
    cfg = config_of(datasets[0])
    steps = read_captures(datasets, max_episodes)
    if progress:
        progress("read", 1, 1)
    if boot and steps.n_episodes < MIN_BOOT_EPISODES:
        raise ValueError(
            f"boot = {boot} needs >= {MIN_BOOT_EPISODES} episodes to resample, the captures "
            f"have {steps.n_episodes}: capture more, or use Laplace intervals (--boot 0)"
        )
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0xBA11,)))
    reasons = dict(_REASONS)
    try:
        power = _fit_power(steps, boot, rng, n_samples, progress)
    except ValueError as exc:  # the other parts may still be identified: go on without it
        power = _PowerFit({}, np.empty((n_samples, 0)), [], [], "", float("nan"))
        power_failure = str(exc)
        reasons.update({p: f"not identified: {exc}" for p in POWER_PATHS})
    else:
        power_failure = ""
    fitted = dict(power.fitted)
    samples, paths, cols = power.samples, list(power.paths), power.cols
    method = power.method or (
        "power budget not fitted; each other part's interval as its note says"
    )
    counts = _counts(steps)
    forecast: dict[str, Any] = {}
    table_overrides: dict[str, list[float]] = {}
    try:
        fres = forecast_residuals(datasets, max_episodes)
        forecast = {"episodes": int(fres.per_episode.size), "steps": fres.n_steps}
        forecast["dropped"] = dict(fres.dropped)
        fe, fe_lo, fe_hi, fe_samples = fit_forecast_error(fres, rng, samples.shape[0])
    except ValueError as exc:
        reasons[FORECAST_ERROR_PATH] = f"not identified: {exc}"
    else:
        fitted[FORECAST_ERROR_PATH] = (
            fe,
            fe_lo,
            fe_hi,
            f"chi-square, 2 dof per episode ({fres.per_episode.size}): in-situ wind minus the "
            "forecast rebuilt from each episode's seed",
        )
        samples = np.column_stack([samples, fe_samples])
        paths = [*paths, FORECAST_ERROR_PATH]
    vertical: dict[str, Any] = {}
    try:
        vdata = V.read_vertical(datasets, max_episodes)
        vertical = {"episodes": len(vdata.episodes), "dropped": dict(vdata.dropped)}
        vfit = V.fit_vertical(vdata, rng, progress)
    except ValueError as exc:
        reasons.update({p: f"not identified: {exc}" for p in V.VERTICAL_PATHS})
    else:
        v_fitted, v_reasons, v_samples, v_paths = V.estimates(vfit, cfg, rng, samples.shape[0])
        fitted.update(v_fitted)
        reasons.update(v_reasons)
        samples = np.column_stack([samples, v_samples])
        paths = [*paths, *v_paths]
        vertical.update(
            observations=vdata.n_observations,
            residual_rms=vfit.rms,
            starts=vfit.starts,
            replays=vfit.evaluations,
        )
        if V.ACS_PATH in v_fitted:
            table_overrides[V.ACS_PATH] = V.fitted_table(cfg, vfit)
    ble: dict[str, Any] = {}
    if cfg.wind.source == "ble-vae":
        try:
            bres = ble_noise_residuals(datasets, max_episodes)
            ble = {"episodes": bres.n_episodes, "steps": int(bres.residual.shape[0])}
            ble["dropped"] = dict(bres.dropped)
            bn, bn_lo, bn_hi, bn_samples = fit_ble_noise(bres, rng, samples.shape[0])
        except ValueError as exc:
            reasons[BLE_NOISE_PATH] = f"not identified: {exc}"
        else:
            fitted[BLE_NOISE_PATH] = (
                bn,
                bn_lo,
                bn_hi,
                f"least squares over {ble['steps']} steps: in-situ wind minus the forecast "
                "rebuilt from each episode's seed, on the noise field of unit sd rebuilt alike",
            )
            samples = np.column_stack([samples, bn_samples])
            paths = [*paths, BLE_NOISE_PATH]
    for k, name in enumerate(counts):
        if k not in cols and not power_failure:
            reasons[POWER_PATHS[k]] = (
                f"not identified: {counts[name]} usable {name.replace('_', ' ')}, fewer than "
                f"{MIN_STEPS}"
            )
    details: dict[str, Any] = {
        **counts,
        "dropped": dict(steps.dropped),
        "residual_sd_wh": power.residual_sd_wh,
        "power_failure": power_failure,
        "forecast_error": forecast,
        "vertical": vertical,
        "ble_noise": ble,
        "table_overrides": table_overrides,
    }
    if not fitted:
        raise ValueError(
            "nothing could be identified from these captures: "
            + "; ".join(f"{p}: {reasons[p]}" for p in sorted(reasons))
        )
    return SysidResult(
        env_id="",
        n_episodes=steps.n_episodes,
        n_transitions=int(steps.dsoc.size),
        estimates=_estimates(cfg, fitted, reasons),
        samples=samples,
        sample_paths=paths,
        method=method,
        details=details,
    )


def _get(cfg: object, path: str) -> Any:
    for part in path.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _units(cfg: object, path: str) -> str:
    *parents, name = path.split(".")
    section = cfg
    for part in parents:
        section = getattr(section, part)
    for f in dataclasses.fields(section):  # type: ignore[arg-type]
        if f.name == name:
            spec = field_param(f)
            return spec.units if spec is not None else ""
    return ""


def _nominal(value: Any) -> float:
    """A scalar field's value, or the mean of a table (the prior scales it as a whole)."""
    if isinstance(value, tuple | list):
        return float(np.mean(value))
    return float(value)


def _estimates(
    cfg: BalloonConfig,
    fitted: dict[str, tuple[float, float, float, str]],
    reasons: dict[str, str],
) -> list[ParameterEstimate]:
    """One entry per prior parameter, in the prior's order."""
    out = []
    for prior in PRIORS:
        nominal = _nominal(_get(cfg, prior.path))
        units = _units(cfg, prior.path)
        if prior.path in fitted:
            v, lo, hi, note = fitted[prior.path]
            out.append(
                ParameterEstimate(
                    prior.path, v, lo, hi, nominal, None, units, True, note, prior.kind
                )
            )
        else:
            why = reasons.get(prior.path, "not identified by these captures")
            nan = math.nan
            out.append(
                ParameterEstimate(
                    prior.path, nan, nan, nan, nominal, None, units, False, why, prior.kind
                )
            )
    return out
