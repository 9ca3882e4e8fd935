"""Balloon identification, the vertical part: envelope, lift gas, drag and altitude control.

The seven parameters (:data:`VERTICAL_PATHS`): the envelope's base volume and film stiffness
``dV/dP``, its mass, the helium, the drag coefficient, the valve's discharge coefficient and
the compressor's efficiency (a multiplier of the whole table, reported as the table's mean).

Why a replay: a device reports the ambient pressure and the pressure ratio (so the
superpressure) but neither the gas temperature nor the ballonet air, and both move the
superpressure and the lift; the ambient temperature at the balloon depends on the episode's
atmosphere (a lapse-rate mix drawn at reset). A one-step prediction from the telemetry
would have to guess those hidden states. Every hidden value of an episode's start is drawn
from its seed, which a capture records with its config (as the forecast-error fit uses it):
the start draws (place, date, pressure, atmosphere, upwelling infrared, charge) do not
depend on the vehicle, so a kernel row reset with the episode's seed gives them, and
:func:`twinloop.sim.balloon.kernel.start_state` then solves the start (neutral buoyancy in
thermal equilibrium) for candidate parameters. :func:`replay` flies the episode with the
kernel's own functions (``update_sun``, ``sub_step``: buoyancy against drag, the film's heat
balance, vent and compressor, the envelope) under the applied commands and the in-situ
winds the device reported (the kernel holds the true wind over a step, and it only moves
the balloon sideways, i.e. the sun a little). Nothing about the device's physics is read;
its profile scores only.

Likelihood: the replayed pressure and superpressure after every step against the reported
ones, each over the standard deviation of its float32 rounding in the observation (ulp /
sqrt 12; the superpressure through the ratio). With the device's own parameters the replay
matches to that rounding (normalised RMS ~1), so a fit is accepted only there
(:data:`ACCEPT_RMS`). The free replay has many local minima (the drag acts mostly through
the explicit sub-steps' chatter about the float level, and the residuals jump with it), so
each start is fitted over a growing horizon (:data:`HORIZONS`), the drag searched on a grid
when a stage stalls, from the nominal vehicle and then from draws of the prior
(:data:`MAX_STARTS`). A fit that never reaches the rounding leaves all seven unidentified,
with the reason. Over 20 random devices (``random:10`` to ``random:29``, one 8-hour
episode of random commands each) 18 fits converged (17 from the first start), and all 126 of
their 95 % intervals held the truth; the largest error of a converged fit was 3e-5 in ``ln``.

Intervals: Laplace at the optimum (central-difference Jacobian of the normalised residuals,
covariance scaled by the residual variance when above 1) plus the optimiser's own error
(:data:`CONVERGENCE_LOG`), in ``ln`` of each multiplier; samples are drawn from that normal.
A parameter is reported as identified only when its interval is narrow against its prior
(:data:`IDENTIFIED_FRACTION`). In the simulator all seven come out identified: volume,
helium and envelope mass would trade off in the lift alone, but the gas law (moles of helium
against the mass of helium and air) and the film's heat capacity (envelope mass) and area
(volume) in the thermal response separate them, and the noise (float32 rounding, ~1e-4 Pa)
is tiny. The Jacobian is ill-conditioned (singular values over ~3 decades): with the sensor
noise of a real flight (~1 Pa) and a model that is not the device's, these intervals would
widen by orders of magnitude, and the lift group may well come out unidentified; the
replay also needs the start drawn from the seed, so episodes started by ``reset(options=
...)`` (not recorded by captures; recognised by a start pressure, sun or charge that differs
from the seed's) are left out and counted.

Captures through the MAVLink twin (``--backend mavlink``): its telemetry sends the in-situ
winds in whole cm/s, and a replay that integrated them drifted ~100 m in 100 steps, enough
for the sun on the envelope to move the pressure by ~0.007 Pa (47 rounding sds). Each step
therefore starts from the reported position (distance and direction to the station).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from twinloop.core.config import from_dict
from twinloop.core.jit import njit
from twinloop.sim.balloon import kernel as K
from twinloop.sim.balloon.config import N_ACS_EFF_POWERS, N_ACS_EFF_RATIOS, BalloonConfig
from twinloop.sim.balloon.profile import PRIORS
from twinloop.sysid.base import Progress

_Z975 = 1.959963984540054
#: The compressor's efficiency: a table, scaled as a whole (its estimate is the table's mean).
ACS_PATH = "vehicle.acs_efficiency_kg_per_wh"
#: The parameters of the vertical fit (each a multiplier of its nominal value; the
#: compressor's efficiency multiplies the whole table).
VERTICAL_PATHS = (
    "vehicle.envelope_volume_base_m3",
    "vehicle.envelope_dv_dp_m3_per_pa",
    "vehicle.envelope_mass_kg",
    "vehicle.helium_mol",
    "vehicle.drag_coefficient",
    "vehicle.valve_discharge_coefficient",
    "vehicle.acs_efficiency_kg_per_wh",
)
#: The start drawn from the seed must show the recorded sun within this (deg) and charge
#: within this, else the episode was started by ``reset(options=...)`` and is left out.
START_ELEVATION_TOL_DEG = 1e-3
START_SOC_TOL = 1e-5
#: Normalised residual of an observation the replay did not reach (it failed earlier).
FAILED_RESIDUAL = 1e6
#: Horizons (steps) of the continuation: each start is fitted to the first 5 steps of every
#: episode, then 10, 20 ... and all of them (a long free replay has many local minima).
HORIZONS = (5, 10, 20, 40, 80, 160, 320, 640)
#: Starts tried at most: the nominal vehicle, then draws from the prior.
MAX_STARTS = 3
#: Evaluations of least squares per continuation stage, and for the last (all steps).
STAGE_EVALUATIONS = 50
POLISH_EVALUATIONS = 200
#: A fit is accepted when the normalised residuals' RMS is at most this (1: the replay
#: matches the telemetry to its float32 rounding).
ACCEPT_RMS = 3.0
#: Index of the drag coefficient in :data:`VERTICAL_PATHS`, and the points of its grid search.
DRAG_INDEX = 4
SCAN_POINTS = 141
#: The optimiser's own error (95 % half-width, ln units) added to the Laplace interval: a
#: converged fit stops within 3e-5 of the truth (20 random devices), while the Laplace sd at
#: the telemetry's rounding is ~1e-6.
CONVERGENCE_LOG = 1e-4
#: A parameter is identified when its 95 % half-width (ln units) is under this fraction of
#: its prior's ``ln(high / low)``.
IDENTIFIED_FRACTION = 0.25
#: Step (ln units) of the central differences of the Laplace approximation.
JACOBIAN_STEP = 1e-6


def config_of(dataset: Any) -> BalloonConfig:
    """The recorded (nominal) config of a balloon capture.

    Raises:
        ValueError: Not a balloon capture.
    """
    tl = dataset.metadata.get("twinloop") or {}
    raw = tl.get("env_config")
    meta = tl.get("env_metadata") or {}
    if meta.get("system") != "balloon" or not isinstance(raw, dict):
        raise ValueError(f"{dataset.path} is not a balloon capture (no balloon config)")
    try:
        return from_dict(BalloonConfig, raw)
    except Exception as exc:  # any mismatch means "not ours"
        raise ValueError(f"{dataset.path}: recorded config is not a BalloonConfig: {exc}") from None


@dataclasses.dataclass
class VerticalEpisode:
    """One replayable episode: its seed's start draws, the commands, winds and the trace.

    Attributes:
        start: ``(lat0, lon0, jd0, x, y, p0, ir, alpha, soc)`` as the seed draws them.
        commands: ``(T,)`` applied command of each step.
        winds: ``(T, 2)`` in-situ wind of each step (held over the step by the kernel).
        positions: ``(T + 1, 2)`` reported position (m east, north of the station); each step
            starts from it, so rounded winds do not accumulate into a track error.
        pressure: ``(T + 1,)`` observed ambient pressure (Pa).
        superpressure: ``(T + 1,)`` observed superpressure (Pa), from the pressure ratio.
        sd: ``(T + 1, 2)`` standard deviation of the float32 rounding of both.
        n_fit: Observations compared (the last step of a failed episode is left out).
    """

    start: np.ndarray
    commands: np.ndarray
    winds: np.ndarray
    positions: np.ndarray
    pressure: np.ndarray
    superpressure: np.ndarray
    sd: np.ndarray
    n_fit: int


@njit
def replay(
    start: np.ndarray,
    commands: np.ndarray,
    winds: np.ndarray,
    positions: np.ndarray,
    params: np.ndarray,
    fstate: np.ndarray,
    istate: np.ndarray,
    out: np.ndarray,
) -> None:
    """Fly one episode with the kernel from its start under the recorded commands and winds.

    Every step after the first starts from the reported position: integrating the reported
    winds instead would accumulate their rounding (MAVLink sends whole cm/s: ~100 m after 100
    steps), which moves the sun on the envelope enough to show in the pressure.

    Writes the pressure and superpressure after each step into ``out`` (``(T + 1, 2)``, the
    start in row 0); rows after a failure are NaN. The battery never fails here (the
    caller's params hold a huge capacity): the power budget is fitted apart.
    """
    K.start_state(
        0, start[0], start[1], start[2], start[3], start[4], start[5], start[6], start[7],
        start[8], math.nan, math.nan, fstate, istate, params,
    )  # fmt: skip
    f = fstate[0]
    out[0, 0] = f[K.F_P]
    out[0, 1] = f[K.F_SP]
    n_sub = int(params[K.P_NSUB])
    for t in range(commands.shape[0]):
        if istate[0, K.I_STATUS] != K.OK:
            out[t + 1, 0] = math.nan
            out[t + 1, 1] = math.nan
            continue
        if t > 0:
            f[K.F_X] = positions[t, 0]
            f[K.F_Y] = positions[t, 1]
        K.update_sun(f, params, True)
        cmd = int(commands[t])
        istate[0, K.I_CMD] = cmd
        wu, wv = winds[t, 0], winds[t, 1]
        f[K.F_WU] = wu
        f[K.F_WV] = wv
        for _ in range(n_sub):
            K.sub_step(0, cmd, wu, wv, fstate, istate, params)
            if istate[0, K.I_STATUS] != K.OK:
                break
        K.update_sun(f, params, False)
        out[t + 1, 0] = f[K.F_P]
        out[t + 1, 1] = f[K.F_SP]


#: Where each :data:`VERTICAL_PATHS` parameter sits in the kernel's parameter vector; each
#: entry is the config value times a constant (the valve's is ``C_d`` times its area).
_PARAM_SLICES = (
    slice(K.P_V0, K.P_V0 + 1),
    slice(K.P_DVDP, K.P_DVDP + 1),
    slice(K.P_M_ENV, K.P_M_ENV + 1),
    slice(K.P_N_HE, K.P_N_HE + 1),
    slice(K.P_CD, K.P_CD + 1),
    slice(K.P_VALVE, K.P_VALVE + 1),
    slice(K.P_EFF, K.P_EFF + N_ACS_EFF_POWERS * N_ACS_EFF_RATIOS),
)


def nominal_params(cfg: BalloonConfig) -> np.ndarray:
    """The kernel's parameter vector of the nominal config, the battery never empty."""
    params = K.physics_params(cfg)
    params[K.P_CAP_WH] = 1e12  # the power budget is fitted apart; a replay never runs dry
    return params


def replay_params(nominal: np.ndarray, multipliers: Sequence[float]) -> np.ndarray:
    """``nominal`` (:func:`nominal_params`) with the vertical parameters scaled."""
    params = nominal.copy()
    for sl, m in zip(_PARAM_SLICES, multipliers, strict=True):
        params[sl] *= m
    return params


def _field(obs: np.ndarray, layout: dict[str, Any], name: str) -> np.ndarray:
    if name not in layout:
        raise ValueError(f"observation has no field {name!r}; fields: {sorted(layout)}")
    entry = layout[name]
    return obs[:, entry["start"] : entry["stop"]].astype(np.float64).reshape(obs.shape[0], -1)


def rounding_sd(obs_values: np.ndarray) -> np.ndarray:
    """Standard deviation of the float32 rounding of telemetry values (uniform, ulp / sqrt 12)."""
    x = np.abs(np.asarray(obs_values, dtype=np.float32))
    return np.spacing(x).astype(np.float64) / math.sqrt(12.0)


@dataclasses.dataclass
class VerticalData:
    """The replayable episodes of a set of captures.

    Attributes:
        cfg: The captures' (nominal) config.
        params: :func:`nominal_params` of ``cfg``.
        episodes: One entry per replayable episode.
        n_episodes: Episodes read.
        dropped: Episodes left out, by reason.
    """

    cfg: BalloonConfig
    params: np.ndarray
    episodes: list[VerticalEpisode]
    n_episodes: int
    dropped: dict[str, int]

    @property
    def n_observations(self) -> int:
        """Observations compared, pressure and superpressure counted once."""
        return int(sum(e.n_fit for e in self.episodes))


def read_vertical(datasets: Sequence[Any], max_episodes: int | None = None) -> VerticalData:
    """The replayable episodes of the captures (see the module doc).

    Raises:
        ValueError: Not balloon captures, or captures of different nominal configs.
    """
    from twinloop.sim.balloon.env import BalloonSimBackend

    episodes: list[VerticalEpisode] = []
    dropped: dict[str, int] = {}
    n_ep = 0
    cfg0: BalloonConfig | None = None
    for ds in datasets:
        cfg = config_of(ds)
        if cfg0 is None:
            cfg0 = cfg
        elif cfg != cfg0:
            raise ValueError(
                f"{ds.path}: recorded with a different nominal config than the first capture; "
                "fit captures of one configuration together"
            )
        layout = ds.metadata["twinloop"]["env_metadata"]["observation_layout"]
        shadow = BalloonSimBackend(cfg)
        cap_wh = float(shadow.params.physics[K.P_CAP_WH])
        for ep in ds.iterate_episodes():
            if max_episodes is not None and n_ep >= max_episodes:
                break
            n_ep += 1
            seed = (getattr(ep, "metadata", None) or {}).get("seed")
            infos = ep.infos
            if seed is None or "applied_command" not in infos:
                dropped["no_seed_or_command"] = dropped.get("no_seed_or_command", 0) + 1
                continue
            obs = np.asarray(ep.observations)
            applied = np.asarray(infos["applied_command"], dtype=np.float64).reshape(-1)[1:]
            n_fit = obs.shape[0] - (1 if bool(np.asarray(ep.terminations).any()) else 0)
            if applied.size + 1 != obs.shape[0] or n_fit < 3:
                dropped["under_2_steps"] = dropped.get("under_2_steps", 0) + 1
                continue
            shadow.reset(seed=int(seed))
            f = shadow.kernel_args()[0][0]
            p = _field(obs, layout, "pressure_pa")[:, 0]
            el = _field(obs, layout, "solar_elevation_deg")[:, 0]
            soc = _field(obs, layout, "battery_soc")[:, 0]
            # the seed's start, unless reset(options=...) moved it (captures do not record
            # options): the start pressure, the sun and the charge must match the telemetry
            el0 = math.degrees(math.asin(f[K.F_SIN_EL]))
            soc0 = f[K.F_BATT] / cap_wh
            if (
                abs(f[K.F_P] - p[0]) > 4.0 * rounding_sd(p[:1])[0] + 1e-9
                or abs(el0 - el[0]) > START_ELEVATION_TOL_DEG
                or abs(soc0 - soc[0]) > START_SOC_TOL
            ):
                dropped["start_options"] = dropped.get("start_options", 0) + 1
                continue
            start = np.array(
                [
                    f[K.F_LAT0], f[K.F_LON0], f[K.F_JD0], f[K.F_X], f[K.F_Y], f[K.F_P],
                    f[K.F_IR], f[K.F_ALPHA], soc0,
                ]
            )  # fmt: skip
            ratio = _field(obs, layout, "pressure_ratio")[:, 0]
            wind = _field(obs, layout, "wind_measured_m_per_s")
            dist = _field(obs, layout, "distance_km")[:, 0] * 1000.0
            toward = _field(obs, layout, "station_direction")  # unit vector to the station
            positions = np.column_stack([-dist * toward[:, 0], -dist * toward[:, 1]])
            sd_p = rounding_sd(p)
            sd_sp = np.hypot(p * rounding_sd(ratio), (ratio - 1.0) * sd_p)
            episodes.append(
                VerticalEpisode(
                    start=start,
                    commands=np.round(applied).astype(np.int64),
                    winds=wind[1:].copy(),
                    positions=positions,
                    pressure=p,
                    superpressure=(ratio - 1.0) * p,
                    sd=np.column_stack([sd_p, sd_sp]),
                    n_fit=n_fit,
                )
            )
    if cfg0 is None:
        raise ValueError("no captures given")
    return VerticalData(cfg0, nominal_params(cfg0), episodes, n_ep, dropped)


def residuals(
    nominal: np.ndarray,
    episodes: Sequence[VerticalEpisode],
    log_multipliers: np.ndarray,
    horizon: int | None = None,
) -> np.ndarray:
    """Replayed minus observed pressure and superpressure over their rounding sd, stacked.

    Args:
        nominal: :func:`nominal_params` of the captures' config.
        episodes: The episodes to replay.
        log_multipliers: ``ln`` of each :data:`VERTICAL_PATHS` parameter over its nominal.
        horizon: Compare only the first ``horizon`` steps of each episode (all if None).
    """
    params = replay_params(nominal, np.exp(log_multipliers))
    fstate = np.zeros((1, K.N_F))
    istate = np.zeros((1, K.N_I), dtype=np.int64)
    parts = []
    for ep in episodes:
        n = ep.n_fit if horizon is None else min(ep.n_fit, horizon + 1)
        out = np.empty((n, 2))
        replay(
            ep.start, ep.commands[: n - 1], ep.winds[: n - 1], ep.positions, params, fstate,
            istate, out,
        )  # fmt: skip
        r = (out - np.column_stack([ep.pressure[:n], ep.superpressure[:n]])) / ep.sd[:n]
        parts.append(np.where(np.isfinite(r), r, FAILED_RESIDUAL).ravel())
    return np.concatenate(parts)


def _bounds() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``ln`` of each parameter's prior bounds, and its prior's sd (``ln`` units)."""
    pri = {p.path: p for p in PRIORS}
    lo = np.log([pri[p].low for p in VERTICAL_PATHS])
    hi = np.log([pri[p].high for p in VERTICAL_PATHS])
    sd = np.array([pri[p].sd for p in VERTICAL_PATHS])
    return lo, hi, sd


@dataclasses.dataclass
class VerticalFit:
    """The replay fit: ``ln`` multipliers, their covariance and how the search went.

    Attributes:
        z: ``ln`` multiplier of each :data:`VERTICAL_PATHS` parameter.
        cov: Laplace covariance of ``z`` (rounding noise, scaled by the residual variance).
        rms: Root mean square of the normalised residuals at ``z`` (1 = the rounding).
        converged: Whether ``rms`` reached :data:`ACCEPT_RMS`.
        starts: Starts tried.
        evaluations: Replays of all episodes run.
    """

    z: np.ndarray
    cov: np.ndarray
    rms: float
    converged: bool
    starts: int
    evaluations: int


def _scan(
    data: VerticalData, z: np.ndarray, q: int, horizon: int | None, lo: np.ndarray, hi: np.ndarray
) -> tuple[np.ndarray, int]:
    """``z`` with parameter ``q`` set to the best of a grid over its prior range."""
    grid = np.linspace(lo[q], hi[q], SCAN_POINTS)
    best, best_cost = z, float(np.sum(residuals(data.params, data.episodes, z, horizon) ** 2))
    for v in grid:
        u = z.copy()
        u[q] = v
        cost = float(np.sum(residuals(data.params, data.episodes, u, horizon) ** 2))
        if cost < best_cost:
            best, best_cost = u, cost
    return best, SCAN_POINTS + 1


def fit_vertical(
    data: VerticalData, rng: np.random.Generator, progress: Progress | None = None
) -> VerticalFit:
    """Least squares of the replays on the telemetry (see the module doc).

    Raises:
        ValueError: No replayable episode.
    """
    from scipy.optimize import least_squares

    if not data.episodes:
        raise ValueError(
            "no replayable episode (each needs its recorded seed and a start drawn from it, "
            f"not set by reset options; left out: {data.dropped})"
        )
    lo, hi, sd0 = _bounds()
    longest = max(e.n_fit for e in data.episodes)
    horizons: list[int | None] = [h for h in HORIZONS if h < longest - 1] + [None]
    best: tuple[float, np.ndarray] | None = None
    n_eval = 0
    starts = 0
    for k in range(MAX_STARTS):
        starts += 1
        z = np.zeros(len(VERTICAL_PATHS)) if k == 0 else np.clip(rng.normal(0.0, sd0), lo, hi)
        for j, hz in enumerate(horizons):
            last = j == len(horizons) - 1
            for _ in range(2):
                sol = least_squares(
                    lambda u, hz=hz: residuals(data.params, data.episodes, u, hz),
                    z,
                    bounds=(lo, hi),
                    diff_step=1e-6,
                    x_scale=0.05,
                    xtol=1e-10,
                    ftol=1e-10,
                    gtol=1e-10,
                    max_nfev=POLISH_EVALUATIONS if last else STAGE_EVALUATIONS,
                )
                z = sol.x
                n_eval += int(sol.nfev) * (1 + len(VERTICAL_PATHS))
                if math.sqrt(float(np.mean(sol.fun**2))) <= ACCEPT_RMS:
                    break
                # the drag acts through the sub-steps' chatter about the float level, and
                # the residuals jump with it: search it on a grid, the others held
                z, n = _scan(data, z, DRAG_INDEX, hz, lo, hi)
                n_eval += n
        rms = math.sqrt(float(np.mean(sol.fun**2)))
        if best is None or rms < best[0]:
            best = (rms, z)
        if progress:
            progress("vertical", k + 1, MAX_STARTS)
        if rms <= ACCEPT_RMS:
            break
    assert best is not None
    rms, z = best
    # Laplace: central differences (the residuals are smooth on this scale)
    r0 = residuals(data.params, data.episodes, z)
    jac = np.empty((r0.size, z.size))
    for q in range(z.size):
        dz = np.zeros_like(z)
        dz[q] = JACOBIAN_STEP
        jac[:, q] = (
            residuals(data.params, data.episodes, z + dz)
            - residuals(data.params, data.episodes, z - dz)
        ) / (2.0 * JACOBIAN_STEP)
    n_eval += 2 * z.size + 1
    s2 = max(float(np.mean(r0**2)), 1.0)
    cov = s2 * np.linalg.pinv(jac.T @ jac)
    return VerticalFit(z, cov, rms, rms <= ACCEPT_RMS, starts, n_eval)


def estimates(
    fit: VerticalFit, cfg: BalloonConfig, rng: np.random.Generator, n_samples: int
) -> tuple[dict[str, tuple[float, float, float, str]], dict[str, str], np.ndarray, list[str]]:
    """Estimates, reasons, samples and their paths of a converged or failed vertical fit.

    A table's (the compressor's efficiency) estimate, interval and samples are of its mean.
    """
    lo, hi, _ = _bounds()
    fitted: dict[str, tuple[float, float, float, str]] = {}
    reasons: dict[str, str] = {}
    if not fit.converged:
        why = (
            f"not identified: the replay did not reach the telemetry's float32 rounding "
            f"(normalised residual RMS {fit.rms:.3g} > {ACCEPT_RMS:g} after {fit.starts} "
            "starts): a local minimum of the free replay, see the module doc"
        )
        return fitted, {p: why for p in VERTICAL_PATHS}, np.zeros((n_samples, 0)), []
    floor = (CONVERGENCE_LOG / _Z975) ** 2
    cov = fit.cov + floor * np.eye(fit.z.size)
    sd = np.sqrt(np.diag(cov))
    draws = rng.multivariate_normal(fit.z, cov, size=n_samples, method="eigh")
    columns, paths = [], []
    for q, path in enumerate(VERTICAL_PATHS):
        nominal = float(np.mean(getattr(cfg.vehicle, path.split(".")[1])))
        half = _Z975 * sd[q]
        if half > IDENTIFIED_FRACTION * (hi[q] - lo[q]):
            reasons[path] = (
                f"not identified: its 95 % interval spans {2 * half / (hi[q] - lo[q]):.0%} of "
                "the prior's range (it trades off with the other lift and envelope parameters "
                "in these captures)"
            )
            continue
        est = nominal * math.exp(fit.z[q])
        fitted[path] = (
            est,
            est * math.exp(-half),
            est * math.exp(half),
            "laplace: replay of each episode from its seed under the recorded commands and "
            "winds, least squares on pressure and superpressure over their float32 rounding",
        )
        columns.append(nominal * np.exp(draws[:, q]))
        paths.append(path)
    samples = np.column_stack(columns) if columns else np.zeros((n_samples, 0))
    return fitted, reasons, samples, paths


def fitted_table(cfg: BalloonConfig, fit: VerticalFit) -> list[float]:
    """The compressor's efficiency table of the fit (the nominal table times its multiplier)."""
    m = math.exp(fit.z[VERTICAL_PATHS.index(ACS_PATH)])
    return [float(v) * m for v in cfg.vehicle.acs_efficiency_kg_per_wh]
