"""Balloon physics kernel: a superpressure balloon with a ballonet in a stratospheric wind field.

Batch-first numba functions over arrays whose first axis is the environment index. Each
function works on one row ``i``; the single env, the vector env and the MAVLink vehicle twin
call these same functions (the vector env inside one ``prange`` loop).

Model (``shared/reference/balloon.md``; sources in :mod:`.config`). One control step (3 min) =
the flight controller's safety layers (power, envelope, altitude) on the command, the true wind
sampled once at the balloon, then 18 explicit-Euler sub-steps of 10 s. Each sub-step takes
every derivative from the state at its start, then updates the algebraic variables:

1. position += wind * dt;
2. quasi-static vertical motion: ``dh/dt = sign(rho V - m) sqrt(2 |rho V - m| g /
   (rho C_d V^(2/3)))``, ``dp/dt = -rho g dh/dt`` (hydrostatic);
3. lumped gas temperature: solar and upwelling-IR absorption, grey-body emission and free
   convection of the film (PE01), ``dT/dt = sum(q) / (c_film m_envelope)``;
4. altitude control: UP vents ballonet air through the orifice,
   ``mdot = -C_d A sqrt(2 dP rho_gas)``; DOWN runs the compressor at the power of the
   pressure-ratio table with the efficiency of the (ratio x power) table,
   ``mdot = eff * P / 3600`` kg/s;
5. battery += (solar - hotel load - ACS) dt, clipped to [0, capacity];
6. envelope: free volume ``V_f = n R T / p``; slack (``V_f <= V0``) is ZEROPRESSURE, else
   ``V = V0 + dV/dP (P_gas - p)`` with ``P_gas = n R T / V`` (a quadratic in V); superpressure
   above the limit is BURST; an empty battery is OUT_OF_POWER.

The sun's position (declination, equation of time, flux) follows the NOAA solar calculator
(Meeus): the slowly varying terms once per control step, the hour angle at every sub-step.
Atmospheric refraction is left out (at 50-140 hPa it is under 0.06 degrees).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from twinloop.core.bundle import Rows, allocate
from twinloop.core.jit import njit
from twinloop.core.layout import Field, Layout
from twinloop.core.rng import STREAM_BACKEND, next_u64, normal, uniform, uniform_range
from twinloop.sim.balloon import blevae as B
from twinloop.sim.balloon import wind as W
from twinloop.sim.balloon.config import (
    AIR_MOLAR_MASS_KG_PER_MOL,
    EARTH_RADIUS_M,
    FOOT_M,
    GAS_CONSTANT_J_PER_MOL_K,
    GRAVITY_M_PER_S2,
    HELIUM_MOLAR_MASS_KG_PER_MOL,
    JD_J2000,
    JD_UNIX_EPOCH,
    N_ACS_EFF_POWERS,
    N_ACS_EFF_RATIOS,
    N_ACS_POWER_KNOTS,
    N_ATMOSPHERE_LAYERS,
    STEFAN_BOLTZMANN_W_PER_M2_K4,
    BalloonConfig,
    julian_date_utc,
)

G = GRAVITY_M_PER_S2
R_GAS = GAS_CONSTANT_J_PER_MOL_K
M_AIR = AIR_MOLAR_MASS_KG_PER_MOL
M_HE = HELIUM_MOLAR_MASS_KG_PER_MOL
R_AIR = R_GAS / M_AIR  # specific gas constant of dry air (J/(kg K))
SIGMA_SB = STEFAN_BOLTZMANN_W_PER_M2_K4
DEG = math.pi / 180.0
TWO_PI = 2.0 * math.pi
NL = N_ATMOSPHERE_LAYERS

# --- commands and status codes ----------------------------------------------------------------
DOWN = 0
STAY = 1
UP = 2
#: Command names by code.
COMMAND_NAMES = ("down", "stay", "up")
OK = 0
OUT_OF_POWER = 1
BURST = 2
ZEROPRESSURE = 3
#: Status / failure names by code.
STATUS_NAMES = ("none", "out_of_power", "burst", "zeropressure")

# --- float state columns -------------------------------------------------------------------------
F_X = 0  # east of the station (m)
F_Y = 1  # north of the station (m)
F_P = 2  # ambient pressure (Pa)
F_T_AMB = 3  # ambient temperature (K)
F_T_GAS = 4  # lumped gas temperature (K)
F_N_AIR = 5  # ballonet air (mol)
F_VOL = 6  # envelope volume (m^3)
F_SP = 7  # superpressure (Pa)
F_BATT = 8  # battery charge (Wh)
F_ACS_W = 9  # ACS power of the last sub-step (W)
F_MDOT = 10  # ACS mass flow of the last sub-step (kg/s)
F_SOLAR_W = 11  # solar power of the last sub-step (W)
F_LOAD_W = 12  # hotel load of the last sub-step (W)
F_ELAPSED = 13  # time since the episode started (s)
F_JD0 = 14  # Julian date (UTC) at the episode start
F_LAT0 = 15  # station latitude (deg)
F_LON0 = 16  # station longitude (deg)
F_IR = 17  # upwelling infrared (W/m^2)
F_EARTH_ABS = 18  # total IR absorptivity of the film for the Earth's flux
F_ALPHA = 19  # lapse-rate mixing of this episode
F_SIN_DECL = 20  # solar declination terms of the current control step
F_COS_DECL = 21
F_EOT_MIN = 22  # equation of time (min)
F_FLUX = 23  # solar flux at the top of the atmosphere (W/m^2)
F_SIN_EL = 24  # sine of the solar elevation at the last update
F_HOUR_DEG = 25  # solar hour angle (deg, 0 at local noon)
F_WU = 26  # true wind at the balloon during the last control step (m/s)
F_WV = 27
F_WFU = 28  # forecast at the same point and time (m/s)
F_WFV = 29
F_WP = 30  # pressure where that wind was met (Pa)
F_E_SOLAR = 31  # energy bookkeeping since the episode start (Wh)
F_E_LOAD = 32
F_E_ACS = 33
F_E_SPILL = 34  # solar energy lost to a full battery
F_E_UNMET = 35  # demand not met by an empty battery
F_T_OFFSET = 36  # episode start within a gridded wind (s)
F_SUNRISE_H = 37  # power safety: next sunrise + margin (s since the episode start)
F_SUNSET = 38  # power safety: next sunset (s since the episode start)
F_LAPSE = 39  # 7 lapse rates (K/m)
F_TB = F_LAPSE + NL  # 8 transition temperatures (K)
F_PB = F_TB + NL + 1  # 8 transition pressures (Pa)
N_F = F_PB + NL + 1

# --- int state columns ---------------------------------------------------------------------------
I_STATUS = 0
I_CMD = 1  # command applied during the last control step
I_ENV_STATE = 2  # envelope safety: 0 nominal, 1 low critical, 2 low, 3 high, 4 high critical
I_ALT_STATE = 3  # altitude safety: 0 nominal, 1 low, 2 very low
I_POWER_PAUSED = 4  # power safety holds DOWN
I_STEPS = 5
N_I = 6

ENV_NOMINAL, ENV_LOW_CRIT, ENV_LOW, ENV_HIGH, ENV_HIGH_CRIT = 0, 1, 2, 3, 4
ALT_NOMINAL, ALT_LOW, ALT_VERY_LOW = 0, 1, 2

# --- parameter vector --------------------------------------------------------------------------
P_V0 = 0
P_DVDP = 1
P_M_ENV = 2
P_SP_MAX = 3
P_CD = 4
P_M_PAY = 5
P_N_HE = 6
P_NIGHT_W = 7
P_DAY_W = 8
P_VALVE = 9  # discharge coefficient x orifice area (m^2)
P_CAP_WH = 10
P_SOC0 = 11
P_EFF_RMIN = 12
P_EFF_RMAX = 13
P_EFF_WMIN = 14
P_EFF_WMAX = 15
P_PANEL_W = 16
P_MAIN_N = 17
P_MAIN_COS = 18
P_MAIN_SIN = 19
P_SIDE_N = 20
P_SIDE_COS = 21
P_SIDE_SIN = 22
P_SIN_SHADOW_MAIN = 23
P_SIN_SHADOW_SIDE = 24
P_SHADOW = 25
P_DT = 26
P_NSUB = 27
P_T_BASE = 28
P_P_BASE = 29
P_SIN_NIGHT = 30
P_SOLAR_CONST = 31
P_REFL = 32
P_ABS_SOLAR = 33
P_ABS_IR0 = 34
P_ABS_IR_DT = 35
P_ABS_IR_TREF = 36
P_FILM_C = 37
P_VF_SUN = 38
P_VF_EARTH = 39
P_IR_LOC = 40
P_IR_SPREAD = 41
P_IR_SCALE = 42
P_IR_MIN = 43
P_LAT_MIN = 44
P_LAT_MAX = 45
P_LON_MIN = 46
P_LON_MAX = 47
P_JD_MIN = 48
P_JD_MAX = 49
P_R0_M = 50
P_BETA_A = 51
P_BETA_B = 52
P_P0_MIN = 53
P_POWER_SAFETY = 54
P_RESERVE = 55
P_RESUME = 56
P_SUNRISE_MARGIN = 57
P_ENV_CRIT = 58
P_ENV_BUF = 59
P_ENV_HYST = 60
P_ALT_MIN_M = 61
P_ALT_BUF_M = 62
P_ALT_HYST_M = 63
P_NCOL = 64  # levels of the forecast column in the measurement
P_COL_PMIN = 65
P_COL_PMAX = 66
# physics_variant: 1.0 where the variant does it ("ble" or "corrected"; see BalloonPhysicsConfig)
P_EFF_POWER_MAJOR = 67  # corrected: ACS efficiency table read power-major, extrapolated in ratio
P_REFRACTION = 68  # ble: NOAA's atmospheric refraction in the sun's elevation
P_ENV_BEFORE = 69  # ble: volume, superpressure and ambient T from the state before the sub-step
P_FLOAT_LIMIT = 70  # corrected: the vertical step stops at the linearised float level
P_INIT_BASE_VOLUME = 71  # ble: the start-up solve with the base envelope volume
P_SUN_LOCAL = 72  # corrected: power safety's sunrise/sunset at the current position every step
P_SIN_NIGHT_GEO = 73  # sine of the geometric elevation whose apparent one is the night threshold
P_SUN_GRID_S = 74  # ble: sunrise/sunset searched on this grid from the start time (s)
P_ACS_R = 75  # 5 pressure-ratio knots
P_ACS_W = P_ACS_R + N_ACS_POWER_KNOTS  # 5 power knots (W)
P_EFF = P_ACS_W + N_ACS_POWER_KNOTS  # the 52 efficiencies (kg/Wh) in [B20]'s order
P_H = P_EFF + N_ACS_EFF_POWERS * N_ACS_EFF_RATIOS  # 8 transition heights (m)
P_LOW = P_H + NL + 1  # 7 lapse rates of the "low" set (K/m)
P_HIGH = P_LOW + NL  # 7 of the "high" set
N_P = P_HIGH + NL


def physics_params(cfg: BalloonConfig) -> np.ndarray:
    """Pack the config into the kernel's parameter vector (derived values computed here)."""
    ve, ph, ep, fs = cfg.vehicle, cfg.physics, cfg.episode, cfg.flight_safety
    p = np.zeros(N_P, dtype=np.float64)
    p[P_V0] = ve.envelope_volume_base_m3
    p[P_DVDP] = ve.envelope_dv_dp_m3_per_pa
    p[P_M_ENV] = ve.envelope_mass_kg
    p[P_SP_MAX] = ve.max_superpressure_pa
    p[P_CD] = ve.drag_coefficient
    p[P_M_PAY] = ve.payload_mass_kg
    p[P_N_HE] = ve.helium_mol
    p[P_NIGHT_W] = ve.night_load_w
    p[P_DAY_W] = ve.day_load_w
    p[P_VALVE] = ve.valve_discharge_coefficient * math.pi * ve.valve_diameter_m**2 / 4.0
    p[P_CAP_WH] = ve.battery_capacity_wh
    p[P_SOC0] = ve.battery_initial_soc
    p[P_EFF_RMIN] = ve.acs_efficiency_ratio_min
    p[P_EFF_RMAX] = ve.acs_efficiency_ratio_max
    p[P_EFF_WMIN] = ve.acs_efficiency_power_min_w
    p[P_EFF_WMAX] = ve.acs_efficiency_power_max_w
    p[P_ACS_R : P_ACS_R + N_ACS_POWER_KNOTS] = ve.acs_power_ratio_knots
    p[P_ACS_W : P_ACS_W + N_ACS_POWER_KNOTS] = ve.acs_power_knots_w
    p[P_EFF : P_EFF + N_ACS_EFF_POWERS * N_ACS_EFF_RATIOS] = ve.acs_efficiency_kg_per_wh
    p[P_PANEL_W] = ve.panel_peak_w
    p[P_MAIN_N] = ve.panel_main_count
    p[P_MAIN_COS] = math.cos(math.radians(ve.panel_main_tilt_deg))
    p[P_MAIN_SIN] = math.sin(math.radians(ve.panel_main_tilt_deg))
    p[P_SIDE_N] = ve.panel_side_count
    p[P_SIDE_COS] = math.cos(math.radians(ve.panel_side_tilt_deg))
    p[P_SIDE_SIN] = math.sin(math.radians(ve.panel_side_tilt_deg))
    rb, hb = ve.shadow_balloon_radius_m, ve.shadow_balloon_height_m
    for idx, drop in (
        (P_SIN_SHADOW_MAIN, ve.panel_main_drop_m),
        (P_SIN_SHADOW_SIDE, ve.panel_side_drop_m),
    ):
        # the envelope shades a panel when the sun is above this elevation [B20]
        p[idx] = math.sin(math.atan2(math.sqrt(drop * (hb + drop)), rb))
    p[P_SHADOW] = ve.shadow_factor
    p[P_DT] = ph.sub_step_s
    p[P_NSUB] = ph.sub_steps
    p[P_H : P_H + NL + 1] = ph.atmosphere_heights_m
    p[P_LOW : P_LOW + NL] = ph.lapse_rates_low_k_per_m
    p[P_HIGH : P_HIGH + NL] = ph.lapse_rates_high_k_per_m
    p[P_T_BASE] = ph.atmosphere_base_temperature_k
    p[P_P_BASE] = ph.atmosphere_base_pressure_pa
    p[P_SIN_NIGHT] = math.sin(math.radians(ph.night_elevation_deg))
    p[P_SOLAR_CONST] = ph.solar_constant_w_per_m2
    p[P_REFL] = ph.film_reflectivity
    p[P_ABS_SOLAR] = ph.film_solar_absorptivity
    p[P_ABS_IR0] = ph.film_ir_absorptivity_base
    p[P_ABS_IR_DT] = ph.film_ir_absorptivity_per_k
    p[P_ABS_IR_TREF] = ph.film_ir_reference_k
    p[P_FILM_C] = ph.film_specific_heat_j_per_kg_k
    p[P_VF_SUN] = ph.solar_view_factor
    p[P_VF_EARTH] = ph.earth_view_factor
    p[P_IR_LOC] = ph.upwelling_ir_logit_loc
    p[P_IR_SPREAD] = ph.upwelling_ir_logit_spread
    p[P_IR_SCALE] = ph.upwelling_ir_scale_w_per_m2
    p[P_IR_MIN] = ph.upwelling_ir_min_w_per_m2
    p[P_LAT_MIN] = ep.station_latitude_min_deg
    p[P_LAT_MAX] = ep.station_latitude_max_deg
    p[P_LON_MIN] = ep.station_longitude_min_deg
    p[P_LON_MAX] = ep.station_longitude_max_deg
    p[P_JD_MIN] = julian_date_utc(ep.start_date_min)
    p[P_JD_MAX] = julian_date_utc(ep.start_date_max)
    p[P_R0_M] = ep.start_radius_km * 1000.0
    p[P_BETA_A] = ep.start_radius_beta_a
    p[P_BETA_B] = ep.start_radius_beta_b
    p[P_P0_MIN] = ep.start_pressure_min_pa
    p[P_POWER_SAFETY] = 1.0 if fs.power_safety else 0.0
    p[P_RESERVE] = fs.power_reserve_soc
    p[P_RESUME] = fs.power_resume_soc
    p[P_SUNRISE_MARGIN] = fs.power_sunrise_margin_s
    p[P_ENV_CRIT] = fs.envelope_critical_pa
    p[P_ENV_BUF] = fs.envelope_buffer_pa
    p[P_ENV_HYST] = fs.envelope_hysteresis_pa
    p[P_ALT_MIN_M] = fs.min_altitude_ft * FOOT_M
    p[P_ALT_BUF_M] = fs.altitude_buffer_ft * FOOT_M
    p[P_ALT_HYST_M] = fs.altitude_hysteresis_ft * FOOT_M
    p[P_NCOL] = cfg.task.n_column_levels
    p[P_COL_PMIN] = cfg.wind.min_pressure_pa
    p[P_COL_PMAX] = cfg.wind.max_pressure_pa
    ble = ph.physics_variant == "ble"
    p[P_EFF_POWER_MAJOR] = 0.0 if ble else 1.0
    p[P_REFRACTION] = 1.0 if ble else 0.0
    p[P_ENV_BEFORE] = 1.0 if ble else 0.0
    p[P_FLOAT_LIMIT] = 0.0 if ble else 1.0
    p[P_INIT_BASE_VOLUME] = 1.0 if ble else 0.0
    p[P_SUN_LOCAL] = 0.0 if ble else 1.0
    threshold = ph.night_elevation_deg
    if ble:  # the geometric elevation whose refracted one is the threshold (bisection)
        lo, hi = threshold - 2.0, threshold
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if apparent_elevation_deg(mid) < threshold else (lo, mid)
        threshold = 0.5 * (lo + hi)
    p[P_SIN_NIGHT_GEO] = math.sin(math.radians(threshold))
    p[P_SUN_GRID_S] = 180.0  # [B20] searches sunrise and sunset on a 3-min grid
    return p


def wind_params(cfg: BalloonConfig, grid_meta: dict | None = None) -> np.ndarray:
    """Pack the wind config (and a loaded grid's axes) into the wind parameter vector."""
    w = cfg.wind
    p = np.zeros(W.N_W, dtype=np.float64)
    p[W.W_L] = w.n_wind_levels
    p[W.W_T] = w.n_wind_times
    p[W.W_K] = w.n_wind_modes
    p[W.W_PMIN] = w.min_pressure_pa
    p[W.W_PMAX] = w.max_pressure_pa
    p[W.W_HORIZON] = w.horizon_h * 3600.0
    p[W.W_BOX] = w.box_half_width_km * 1000.0
    p[W.W_MEAN_SD] = w.mean_wind_sd_m_per_s
    p[W.W_WAVE_SD] = w.wave_wind_sd_m_per_s
    p[W.W_LAMBDA_MIN] = w.wavelength_min_km * 1000.0
    p[W.W_LAMBDA_MAX] = w.wavelength_max_km * 1000.0
    p[W.W_RHO_L] = w.level_correlation
    p[W.W_RHO_T] = w.time_correlation
    p[W.W_ERR_SD] = w.forecast_error_rms_m_per_s / math.sqrt(2.0)
    p[W.W_ERR_RHO_L] = w.error_level_correlation
    p[W.W_ERR_RHO_T] = w.error_time_correlation
    p[W.W_SOURCE] = {
        "generative": W.SOURCE_GENERATIVE,
        "grid": W.SOURCE_GRID,
        "ble-vae": W.SOURCE_BLE_VAE,
    }[w.source]
    p[W.W_VAE_SWAP] = 1.0 if cfg.physics.physics_variant == "corrected" else 0.0
    p[W.W_BLE_NOISE_SD] = math.sqrt(w.ble_noise_variance_m2_per_s2)
    if grid_meta is not None:
        p[W.W_GRID_TRUTH] = 1.0 if grid_meta["has_truth"] else 0.0
        p[W.W_GRID_X0] = grid_meta["x0_m"]
        p[W.W_GRID_DX] = grid_meta["dx_m"]
        p[W.W_GRID_Y0] = grid_meta["y0_m"]
        p[W.W_GRID_DY] = grid_meta["dy_m"]
        p[W.W_GRID_DT] = grid_meta["dt_s"]
        p[W.W_GRID_SPAN] = grid_meta["span_s"]
        p[W.W_GRID_LAT] = grid_meta["latitude_deg"]
        p[W.W_GRID_LON] = grid_meta["longitude_deg"]
        p[W.W_GRID_JD0] = grid_meta["jd0"]
    return p


def wind_size(cfg: BalloonConfig) -> int:
    """Floats per env of the wind row: the start table, then the source's own draws.

    Generative and gridded sources: the generative forecast field, then the error field.
    BLE's VAE: the decoder's stream function, then the noise draws.
    """
    w = cfg.wind
    if w.source == "ble-vae":
        return W.TABLE_SIZE + W.VAE_ROW_SIZE
    return W.TABLE_SIZE + 2 * W.field_size(w.n_wind_levels, w.n_wind_times, w.n_wind_modes)


def empty_grid() -> tuple[np.ndarray, np.ndarray]:
    """Placeholder grid arrays for the generative source (the kernel never reads them)."""
    return np.zeros((2, 1, 1, 1, 1, 2), dtype=np.float64), np.zeros(1, dtype=np.float64)


def measurement_layout(cfg: BalloonConfig) -> Layout:
    """What the flight controller and the forecast service report after each control step."""
    n = cfg.task.n_column_levels
    return Layout(
        [
            Field("position_m", (2,), doc="east and north of the station (m)"),
            Field("pressure_pa", (), doc="ambient pressure (Pa)"),
            Field("altitude_m", (), doc="altitude (m)"),
            Field("battery_soc", (), doc="battery state of charge (0-1)"),
            Field("solar_elevation_deg", (), doc="sun above the horizon (deg)"),
            Field("solar_hour_angle_deg", (), doc="solar hour angle, 0 at local noon (deg)"),
            Field("acs_power_w", (), doc="altitude-control power (W)"),
            Field("superpressure_pa", (), doc="envelope superpressure (Pa)"),
            Field("applied_command", (), doc="0 down, 1 stay, 2 up (after safety layers)"),
            Field("status", (), doc="0 ok, 1 out of power, 2 burst, 3 zero pressure"),
            Field("elapsed_s", (), doc="time since the episode started (s)"),
            Field("excess_energy", (), doc="1 when solar > day load and battery > 99 %"),
            Field("navigation_paused", (), doc="1 when a safety layer overrode or holds"),
            Field("wind_measured_m_per_s", (2,), doc="in-situ wind over the last step (m/s)"),
            Field("wind_forecast_at_measurement_m_per_s", (2,), doc="forecast there (m/s)"),
            Field("wind_measurement_pressure_pa", (), doc="pressure of that measurement (Pa)"),
            Field("station_lat_lon_deg", (2,), doc="station latitude, longitude (deg)"),
            Field("unix_time_s", (), doc="UTC time (s since 1970)"),
            Field("forecast_u_m_per_s", (n,), doc="forecast u on the column levels (m/s)"),
            Field("forecast_v_m_per_s", (n,), doc="forecast v on the column levels (m/s)"),
        ]
    )


M_POS = 0
M_P = 2
M_ALT = 3
M_SOC = 4
M_EL = 5
M_HOUR = 6
M_ACS_W = 7
M_SP = 8
M_CMD = 9
M_STATUS = 10
M_ELAPSED = 11
M_EXCESS = 12
M_PAUSED = 13
M_WIND = 14
M_WIND_FC = 16
M_WIND_P = 18
M_STATION = 19
M_UNIX = 21
M_COLUMN = 22  # u on the column levels, then v


def measurement_size(cfg: BalloonConfig) -> int:
    """Length of one measurement row."""
    return M_COLUMN + 2 * cfg.task.n_column_levels


def _work_size(cfg: BalloonConfig) -> tuple[int]:
    w = cfg.wind
    return (4 * max(w.n_wind_levels, 64) + 2 * max(w.n_wind_modes, 1),)


class PhysicsState(NamedTuple):
    """The physics state of ``n`` balloons, one row each (shapes depend on the config)."""

    f: np.ndarray = Rows((N_F,))  # gas, envelope, battery, position, time (F_* columns)
    i: np.ndarray = Rows((N_I,), np.int64)  # integer state (I_* columns)
    wind: np.ndarray = Rows(lambda cfg: (wind_size(cfg),))  # start table + the wind draws
    work: np.ndarray = Rows(_work_size)  # scratch of the wind evaluation
    meas: np.ndarray = Rows(lambda cfg: (measurement_size(cfg),))  # the last measurement


def new_state(cfg: BalloonConfig, n_envs: int) -> PhysicsState:
    """Allocate ``(fstate, istate, wind, work, measurement)`` for ``n_envs`` environments."""
    return allocate(PhysicsState, n_envs, cfg)


# --- atmosphere --------------------------------------------------------------------------------
@njit
def init_atmosphere(f: np.ndarray, alpha: float, params: np.ndarray) -> None:
    """Mix the two lapse-rate sets by ``alpha`` and tabulate each layer's base T and p."""
    f[F_ALPHA] = alpha
    f[F_TB] = params[P_T_BASE]
    f[F_PB] = params[P_P_BASE]
    for k in range(NL):
        lapse = (1.0 - alpha) * params[P_LOW + k] + alpha * params[P_HIGH + k]
        f[F_LAPSE + k] = lapse
        dh = params[P_H + k + 1] - params[P_H + k]
        t0 = f[F_TB + k]
        t1 = t0 + lapse * dh
        f[F_TB + k + 1] = t1
        if lapse == 0.0:
            f[F_PB + k + 1] = f[F_PB + k] * math.exp(-G * dh / (R_AIR * t0))
        else:
            f[F_PB + k + 1] = f[F_PB + k] * (t1 / t0) ** (-G / (R_AIR * lapse))


@njit(inline="always")
def _layer_of_pressure(f: np.ndarray, p: float) -> int:
    for k in range(NL - 1):
        if p > f[F_PB + k + 1]:
            return k
    return NL - 1


@njit
def temperature_at(f: np.ndarray, p: float) -> float:
    """Ambient temperature (K) at pressure ``p`` (Pa) in this episode's atmosphere."""
    k = _layer_of_pressure(f, p)
    lapse = f[F_LAPSE + k]
    if lapse == 0.0:
        return f[F_TB + k]
    return f[F_TB + k] * math.exp(-lapse * R_AIR / G * math.log(p / f[F_PB + k]))


@njit
def height_at(f: np.ndarray, p: float, params: np.ndarray) -> float:
    """Geopotential height (m) at pressure ``p`` (Pa)."""
    k = _layer_of_pressure(f, p)
    lapse = f[F_LAPSE + k]
    if lapse == 0.0:
        return params[P_H + k] - R_AIR * f[F_TB + k] / G * math.log(p / f[F_PB + k])
    t = f[F_TB + k] * math.exp(-lapse * R_AIR / G * math.log(p / f[F_PB + k]))
    return params[P_H + k] + (t - f[F_TB + k]) / lapse


@njit
def pressure_at_height(f: np.ndarray, h: float, params: np.ndarray) -> float:
    """Pressure (Pa) at geopotential height ``h`` (m)."""
    k = 0
    while k < NL - 1 and h >= params[P_H + k + 1]:
        k += 1
    lapse = f[F_LAPSE + k]
    dh = h - params[P_H + k]
    if lapse == 0.0:
        return f[F_PB + k] * math.exp(-G * dh / (R_AIR * f[F_TB + k]))
    return f[F_PB + k] * ((f[F_TB + k] + lapse * dh) / f[F_TB + k]) ** (-G / (R_AIR * lapse))


# --- sun ---------------------------------------------------------------------------------------
@njit
def solar_slow_terms(jd: float) -> tuple[float, float, float, float]:
    """``(sin decl, cos decl, equation of time (min), flux (W/m^2) / S0)`` at Julian date ``jd``.

    NOAA solar calculator series in Julian centuries from J2000.0 (Meeus 1991, ch. 24/27).
    """
    tc = (jd - JD_J2000) / 36525.0
    l0 = (280.46646 + tc * (36000.76983 + tc * 0.0003032)) % 360.0
    m = 357.52911 + tc * (35999.05029 - 0.0001537 * tc)
    e = 0.016708634 - tc * (0.000042037 + 0.0000001267 * tc)
    mr = m * DEG
    c = (
        math.sin(mr) * (1.914602 - tc * (0.004817 + 0.000014 * tc))
        + math.sin(2.0 * mr) * (0.019993 - 0.000101 * tc)
        + math.sin(3.0 * mr) * 0.000289
    )
    omega = (125.04 - 1934.136 * tc) * DEG
    lam = (l0 + c - 0.00569 - 0.00478 * math.sin(omega)) * DEG
    eps0 = 23.0 + (26.0 + (21.448 - tc * (46.815 + tc * (0.00059 - tc * 0.001813))) / 60.0) / 60.0
    eps = (eps0 + 0.00256 * math.cos(omega)) * DEG
    sin_decl = math.sin(eps) * math.sin(lam)
    cos_decl = math.sqrt(1.0 - sin_decl * sin_decl)
    y = math.tan(eps / 2.0) ** 2
    l0r = l0 * DEG
    eot = (
        4.0
        * (
            y * math.sin(2.0 * l0r)
            - 2.0 * e * math.sin(mr)
            + 4.0 * e * y * math.sin(mr) * math.cos(2.0 * l0r)
            - 0.5 * y * y * math.sin(4.0 * l0r)
            - 1.25 * e * e * math.sin(2.0 * mr)
        )
        / DEG
    )
    flux_ratio = 1.0 + 0.5 * (((1.0 + e) / (1.0 - e)) ** 2 - 1.0) * math.cos(mr)
    return sin_decl, cos_decl, eot, flux_ratio


@njit(inline="always")
def hour_angle_deg(jd: float, lon_deg: float, eot_min: float) -> float:
    """Solar hour angle (deg in [-180, 180), 0 at local solar noon)."""
    minutes = ((jd + 0.5) % 1.0) * 1440.0
    tst = (minutes + eot_min + 4.0 * lon_deg) % 1440.0
    return tst / 4.0 - 180.0


@njit
def solar_elevation_deg(jd: float, lat_deg: float, lon_deg: float) -> float:
    """Geometric solar elevation (deg) at ``(lat, lon)`` and Julian date ``jd`` (UTC)."""
    sd, cd, eot, _ = solar_slow_terms(jd)
    h = hour_angle_deg(jd, lon_deg, eot) * DEG
    la = lat_deg * DEG
    s = math.sin(la) * sd + math.cos(la) * cd * math.cos(h)
    return math.asin(min(max(s, -1.0), 1.0)) / DEG


@njit
def apparent_elevation_deg(el_deg: float) -> float:
    """Solar elevation (deg) seen through the atmosphere: geometric + refraction [NOAA].

    NOAA's piecewise refraction (arcseconds), as [B20] applies it at the balloon: 0 above
    85 deg; ``58.1/t - 0.07/t^3 + 0.000086/t^5`` (t = tan el) above 5 deg; a quartic in el
    above -0.575 deg; ``-20.772 / t`` below ([B20]'s constant; NOAA's is 20.774). It is the
    sea-level refraction: 0.48 deg at the horizon, 0.077 deg at the night threshold.
    """
    if el_deg > 85.0:
        r = 0.0
    elif el_deg > 5.0:
        t = math.tan(el_deg * DEG)
        r = 58.1 / t - 0.07 / (t * t * t) + 0.000086 / (t * t * t * t * t)
    elif el_deg > -0.575:
        r = 1735.0 + el_deg * (-518.2 + el_deg * (103.4 + el_deg * (-12.79 + el_deg * 0.711)))
    else:
        r = -20.772 / math.tan(el_deg * DEG)
    return el_deg + r / 3600.0


@njit(inline="always")
def balloon_lat_lon(f: np.ndarray) -> tuple[float, float]:
    """Latitude and longitude (deg) of the balloon (small offsets from the station)."""
    lat = f[F_LAT0] + f[F_Y] / EARTH_RADIUS_M / DEG
    lon = f[F_LON0] + f[F_X] / (EARTH_RADIUS_M * math.cos(f[F_LAT0] * DEG)) / DEG
    return lat, lon


@njit
def update_sun(f: np.ndarray, params: np.ndarray, slow: bool) -> None:
    """Refresh the sun at the current time and place (``slow``: also the daily terms)."""
    jd = f[F_JD0] + f[F_ELAPSED] / 86400.0
    if slow:
        sd, cd, eot, flux = solar_slow_terms(jd)
        f[F_SIN_DECL] = sd
        f[F_COS_DECL] = cd
        f[F_EOT_MIN] = eot
        f[F_FLUX] = params[P_SOLAR_CONST] * flux
    lat, lon = balloon_lat_lon(f)
    h = hour_angle_deg(jd, lon, f[F_EOT_MIN])
    f[F_HOUR_DEG] = h
    la = lat * DEG
    s = math.sin(la) * f[F_SIN_DECL] + math.cos(la) * f[F_COS_DECL] * math.cos(h * DEG)
    s = min(max(s, -1.0), 1.0)
    if params[P_REFRACTION] > 0.0:
        s = math.sin(apparent_elevation_deg(math.asin(s) / DEG) * DEG)
    f[F_SIN_EL] = s


@njit
def sun_crossing_s(
    jd0: float, t_s: float, lat: float, lon: float, sin_el: float, rising: bool
) -> float:
    """Seconds after ``jd0`` when the sun next rises (or sets) through ``sin_el``, from ``t_s``.

    The geometric elevation crosses ``asin(sin_el)`` where the hour angle is -h0 (rising) or
    +h0 (setting), ``cos h0 = (sin_el - sin(lat) sin(decl)) / (cos(lat) cos(decl))``; the
    declination and equation of time are refined at the estimate twice. NaN when the sun
    never crosses that elevation that day (polar day or night).
    """
    la = lat * DEG
    t = t_s
    ahead = -1.0
    for _ in range(3):
        sd, cd, eot, _flux = solar_slow_terms(jd0 + t / 86400.0)
        cos_h0 = (sin_el - math.sin(la) * sd) / (math.cos(la) * cd)
        if cos_h0 >= 1.0 or cos_h0 <= -1.0:
            return math.nan
        h0 = math.acos(cos_h0) / DEG
        target = -h0 if rising else h0
        d = (target - hour_angle_deg(jd0 + t_s / 86400.0, lon, eot)) % 360.0
        if ahead < 0.0:
            ahead = d
        else:  # keep the first estimate's day: follow the refinement, never jump a day
            ahead += (d - ahead + 180.0) % 360.0 - 180.0
        t = t_s + ahead / 360.0 * 86400.0
    return t


@njit
def seconds_to_sunrise(f: np.ndarray, params: np.ndarray) -> float:
    """Time (s) until the sun next rises above the night threshold at the balloon (0 by day)."""
    if f[F_SIN_EL] > params[P_SIN_NIGHT]:
        return 0.0
    lat, lon = balloon_lat_lon(f)
    t = sun_crossing_s(f[F_JD0], f[F_ELAPSED], lat, lon, params[P_SIN_NIGHT_GEO], True)
    if math.isnan(t):
        return 86400.0  # polar night: no sunrise within a day
    return t - f[F_ELAPSED]


@njit
def _apparent_elevation_at(jd0: float, t_s: float, lat: float, lon: float) -> float:
    """The refracted solar elevation (deg) ``t_s`` seconds after ``jd0`` [NOAA, B20]."""
    return apparent_elevation_deg(solar_elevation_deg(jd0 + t_s / 86400.0, lat, lon))


@njit
def _ble_search(
    jd0: float, t0: float, t1: float, lat: float, lon: float, mode: int, target: float, grid: float
) -> float:
    """[B20]'s search for an extreme or a crossing of the elevation on a grid from ``t0``.

    BLE bisects the index range of the grid ``t0 + k grid`` (k up to ``(t1 - t0) // grid``)
    by comparing the objective at the two ends and keeping the half on the lower end's side
    (exact when the objective is symmetric about its minimum); the objective is the
    elevation (mode 0, a minimum), minus it (1, a maximum) or ``|el - target|`` (2). An
    asymmetric objective puts its crossings up to ~15 min from the true ones; we reproduce
    the search, not the true crossing, so that the power safety layer acts when BLE's does.
    """
    n = int((t1 - t0) // grid)
    low, high = 0, n
    o_low = _ble_objective(jd0, t0, lat, lon, mode, target)
    o_high = _ble_objective(jd0, t0 + n * grid, lat, lon, mode, target)
    while high > low + 1:
        mid = low + (high - low) / 2.0
        if o_low < o_high:
            high = math.ceil(mid)
            o_high = _ble_objective(jd0, t0 + high * grid, lat, lon, mode, target)
        else:
            low = math.floor(mid)
            o_low = _ble_objective(jd0, t0 + low * grid, lat, lon, mode, target)
    return t0 + (low if o_low < o_high else high) * grid


@njit(inline="always")
def _ble_objective(jd0: float, t: float, lat: float, lon: float, mode: int, target: float) -> float:
    el = _apparent_elevation_at(jd0, t, lat, lon)
    if mode == 0:
        return el
    if mode == 1:
        return -el
    return abs(el - target)


@njit
def ble_sunrise_sunset(
    jd0: float, t_s: float, lat: float, lon: float, threshold_deg: float, grid: float
) -> tuple[float, float]:
    """Next sunrise and sunset (s after ``jd0``) as [B20]'s power safety layer finds them.

    In the solar afternoon (elevation falling) the next midnight is the elevation's minimum
    within 12 h and the next noon its maximum 12-24 h ahead, otherwise the other way round;
    sunrise is the threshold crossing between a midnight and the following noon, sunset
    between a noon and the following midnight, each found by :func:`_ble_search` on a
    ``grid``-second grid, and a crossing already past moves on by a day.
    """
    day = 86400.0
    half = 0.5 * day
    afternoon = _apparent_elevation_at(jd0, t_s + 1.0, lat, lon) < _apparent_elevation_at(
        jd0, t_s, lat, lon
    )
    if afternoon:
        noon = _ble_search(jd0, t_s + half, t_s + day, lat, lon, 1, 0.0, grid)
        midnight = _ble_search(jd0, t_s, t_s + half, lat, lon, 0, 0.0, grid)
        rise = _ble_search(jd0, midnight, noon, lat, lon, 2, threshold_deg, grid)
        sset = _ble_search(jd0, noon - day, midnight, lat, lon, 2, threshold_deg, grid)
    else:
        noon = _ble_search(jd0, t_s, t_s + half, lat, lon, 1, 0.0, grid)
        midnight = _ble_search(jd0, t_s + half, t_s + day, lat, lon, 0, 0.0, grid)
        rise = _ble_search(jd0, midnight - day, noon, lat, lon, 2, threshold_deg, grid)
        sset = _ble_search(jd0, noon, midnight, lat, lon, 2, threshold_deg, grid)
    if rise < t_s:
        rise += day
    if sset < t_s:
        sset += day
    return rise, sset


@njit
def update_sun_events(f: np.ndarray, params: np.ndarray, start: bool) -> None:
    """Power safety's next sunrise + margin and next sunset (s since the episode start).

    ``physics_variant="ble"`` ([B20]'s power safety layer): found once, at the start, at the
    balloon's start position, by BLE's grid search (:func:`ble_sunrise_sunset`), then
    advanced by whole days as time passes. ``"corrected"``: the true threshold crossings,
    found at every control step at the balloon's current position.
    """
    e = f[F_ELAPSED]
    margin = params[P_SUNRISE_MARGIN]
    if start or params[P_SUN_LOCAL] > 0.0:
        lat, lon = balloon_lat_lon(f)
        if params[P_SUN_LOCAL] > 0.0:  # the sunrise whose margin has not yet passed
            sin_el = params[P_SIN_NIGHT_GEO]
            rise = sun_crossing_s(f[F_JD0], e - margin, lat, lon, sin_el, True)
            sset = sun_crossing_s(f[F_JD0], e, lat, lon, sin_el, False)
            if math.isnan(rise) or math.isnan(sset):  # polar night or day
                night = f[F_SIN_EL] <= params[P_SIN_NIGHT]
                rise = e + (2.0 * 86400.0 if night else 0.5 * 86400.0)
                sset = e + (0.5 * 86400.0 if night else 2.0 * 86400.0)
        else:
            threshold = math.asin(params[P_SIN_NIGHT]) / DEG
            rise, sset = ble_sunrise_sunset(f[F_JD0], e, lat, lon, threshold, params[P_SUN_GRID_S])
        f[F_SUNRISE_H] = rise + margin
        f[F_SUNSET] = sset
    while e > f[F_SUNRISE_H]:
        f[F_SUNRISE_H] += 86400.0
    while e > f[F_SUNSET]:
        f[F_SUNSET] += 86400.0


@njit(inline="always")
def attenuation(sin_el: float, p: float, params: np.ndarray) -> float:
    """Atmospheric transmission of sunlight above pressure ``p`` (0 at night) [B20]."""
    if sin_el < params[P_SIN_NIGHT]:
        return 0.0
    s = 614.0 * sin_el
    airmass = 0.34764 * (p / 101325.0) * (math.sqrt(1229.0 + s * s) - s)
    return 0.5 * (math.exp(-0.65 * airmass) + math.exp(-0.95 * airmass))


@njit
def solar_power_w(sin_el: float, p: float, params: np.ndarray) -> float:
    """Electric power of the panels (W): tilted panels, envelope shadow, attenuation [B20]."""
    att = attenuation(sin_el, p, params)
    if att <= 0.0:
        return 0.0
    cos_el = math.sqrt(max(1.0 - sin_el * sin_el, 0.0))
    main = cos_el * params[P_MAIN_COS] + sin_el * params[P_MAIN_SIN]  # cos(el - tilt)
    side = cos_el * params[P_SIDE_COS] + sin_el * params[P_SIDE_SIN]
    if sin_el >= params[P_SIN_SHADOW_MAIN]:
        main *= params[P_SHADOW]
    if sin_el >= params[P_SIN_SHADOW_SIDE]:
        side *= params[P_SHADOW]
    return params[P_PANEL_W] * att * (params[P_MAIN_N] * main + params[P_SIDE_N] * side)


# --- thermal -----------------------------------------------------------------------------------
@njit(inline="always")
def total_absorptivity(a: float, refl: float) -> float:
    """Absorbed (= emitted) fraction of a film, counting internal reflections: A(1 + T/(1-R))."""
    return a * (1.0 + (1.0 - a - refl) / (1.0 - refl))


@njit(inline="always")
def ir_absorptivity(t_k: float, params: np.ndarray) -> float:
    """PE01 infrared absorptivity at black-body temperature ``t_k``, linear around 210 K."""
    return params[P_ABS_IR0] + params[P_ABS_IR_DT] * (t_k - params[P_ABS_IR_TREF])


@njit
def gas_temperature_rate(
    vol: float,
    t_gas: float,
    t_amb: float,
    p: float,
    sin_el: float,
    flux: float,
    ir: float,
    earth_abs: float,
    params: np.ndarray,
) -> float:
    """d(T_gas)/dt (K/s) of the lumped film-and-gas model [B20]."""
    radius = (3.0 * vol / (4.0 * math.pi)) ** (1.0 / 3.0)
    area = 4.0 * math.pi * radius * radius
    refl = params[P_REFL]
    q_sun = (
        flux
        * attenuation(sin_el, p, params)
        * params[P_VF_SUN]
        * area
        * total_absorptivity(params[P_ABS_SOLAR], refl)
    )
    q_earth = ir * params[P_VF_EARTH] * area * earth_abs
    t2 = t_gas * t_gas
    q_emit = SIGMA_SB * t2 * t2 * area * total_absorptivity(ir_absorptivity(t_gas, params), refl)
    # free convection of a sphere (Sutherland viscosity, conductivity and Prandtl of air)
    mu = 1.458e-6 * t_amb * math.sqrt(t_amb) / (t_amb + 110.4)
    k_air = 0.0241 * (t_amb / 273.15) ** 0.9
    prandtl = 0.804 - 3.25e-4 * t_amb
    rho = p / (R_AIR * t_amb)
    d = 2.0 * radius
    grashof = G * rho * rho * d * d * d / (t_amb * mu * mu) * abs(t_amb - t_gas)
    ra = prandtl * grashof
    nusselt = 2.0 + 0.457 * math.sqrt(math.sqrt(ra)) + (1.0 + 2.69e-8 * ra) ** (1.0 / 12.0)
    q_conv = area * nusselt * k_air / d * (t_amb - t_gas)
    return (q_sun + q_earth + q_conv - q_emit) / (params[P_FILM_C] * params[P_M_ENV])


# --- envelope and ACS --------------------------------------------------------------------------
@njit
def envelope(n_mol: float, t_gas: float, p: float, params: np.ndarray) -> tuple[float, float]:
    """``(volume m^3, superpressure Pa)``; superpressure 0 when the envelope is slack."""
    v_free = n_mol * R_GAS * t_gas / p
    v0 = params[P_V0]
    if v_free <= v0:
        return v_free, 0.0
    k = params[P_DVDP]
    b = -(v0 - k * p)
    c = -(k * v_free * p)
    vol = 0.5 * (-b + math.sqrt(b * b - 4.0 * c))
    return vol, p * v_free / vol - p


@njit
def acs_power_w(ratio: float, params: np.ndarray) -> float:
    """Compressor power (W) at a pressure ratio: piecewise linear, flat beyond the knots [B20]."""
    n = N_ACS_POWER_KNOTS
    if ratio <= params[P_ACS_R]:
        return params[P_ACS_W]
    for k in range(n - 1):
        r0, r1 = params[P_ACS_R + k], params[P_ACS_R + k + 1]
        if ratio <= r1:
            w0, w1 = params[P_ACS_W + k], params[P_ACS_W + k + 1]
            return w0 + (w1 - w0) * (ratio - r0) / (r1 - r0)
    return params[P_ACS_W + n - 1]


@njit
def acs_efficiency(ratio: float, power: float, params: np.ndarray) -> float:
    """Compressor efficiency (kg/Wh), bilinear in (pressure ratio, power) [B20].

    ``physics_variant="ble"``: the table read ratio-major (``table[4 k + j]`` at ratio k,
    power j, as BLE's ``interp2d`` reads it), clamped at the table's edges.
    ``"corrected"``: read power-major (``table[13 j + k]``), linear beyond the edges, >= 0.
    """
    nr, npow = N_ACS_EFF_RATIOS, N_ACS_EFF_POWERS
    fr = (ratio - params[P_EFF_RMIN]) / (params[P_EFF_RMAX] - params[P_EFF_RMIN]) * (nr - 1)
    fp = (power - params[P_EFF_WMIN]) / (params[P_EFF_WMAX] - params[P_EFF_WMIN]) * (npow - 1)
    if params[P_EFF_POWER_MAJOR] > 0.0:
        stride_r, stride_p = 1, nr
    else:
        stride_r, stride_p = npow, 1
        fr = min(max(fr, 0.0), nr - 1.0)
        fp = min(max(fp, 0.0), npow - 1.0)
    jr = min(max(int(fr), 0), nr - 2)
    jp = min(max(int(fp), 0), npow - 2)
    wr = fr - jr
    wp = fp - jp
    e00 = params[P_EFF + jp * stride_p + jr * stride_r]
    e01 = params[P_EFF + jp * stride_p + (jr + 1) * stride_r]
    e10 = params[P_EFF + (jp + 1) * stride_p + jr * stride_r]
    e11 = params[P_EFF + (jp + 1) * stride_p + (jr + 1) * stride_r]
    eff = (1.0 - wp) * ((1.0 - wr) * e00 + wr * e01) + wp * ((1.0 - wr) * e10 + wr * e11)
    return max(eff, 0.0)


@njit
def acs_flow(cmd: int, f: np.ndarray, params: np.ndarray) -> tuple[float, float]:
    """``(power W, mass flow kg/s into the ballonet)`` of a command in the current state."""
    p, sp = f[F_P], f[F_SP]
    if cmd == UP:
        if f[F_N_AIR] <= 0.0 or sp <= 0.0:
            return 0.0, 0.0
        rho_gas = (sp + p) * M_AIR / (R_GAS * f[F_T_GAS])
        return 0.0, -params[P_VALVE] * math.sqrt(2.0 * sp * rho_gas)
    if cmd == DOWN:
        ratio = (p + max(sp, 0.0)) / p
        power = acs_power_w(ratio, params)
        return power, acs_efficiency(ratio, power, params) * power / 3600.0
    return 0.0, 0.0


# --- safety layers -----------------------------------------------------------------------------
@njit
def safety_filter(
    i: int, cmd: int, fstate: np.ndarray, istate: np.ndarray, params: np.ndarray
) -> int:
    """The flight controller's safety layers (power, envelope, altitude); return the command."""
    f = fstate[i]
    out = cmd
    # power: keep enough charge for the night at the hotel load. "Day" runs from sunrise +
    # margin to sunset (the next sunset comes before the next sunrise + margin) [B20].
    if params[P_POWER_SAFETY] > 0.0:
        update_sun_events(f, params, False)
        soc = f[F_BATT] / params[P_CAP_WH]
        if f[F_SUNSET] < f[F_SUNRISE_H]:
            if istate[i, I_POWER_PAUSED] == 1 and soc >= params[P_RESUME]:
                istate[i, I_POWER_PAUSED] = 0
        elif istate[i, I_POWER_PAUSED] == 0:
            need_wh = params[P_NIGHT_W] * (f[F_SUNRISE_H] - f[F_ELAPSED]) / 3600.0
            if (f[F_BATT] - need_wh) / params[P_CAP_WH] < params[P_RESERVE]:
                istate[i, I_POWER_PAUSED] = 1
        if istate[i, I_POWER_PAUSED] == 1 and out == DOWN:
            out = STAY
    # envelope: stay clear of zero pressure and burst
    sp, smax = f[F_SP], params[P_SP_MAX]
    crit, buf, hyst = params[P_ENV_CRIT], params[P_ENV_BUF], params[P_ENV_HYST]
    st = istate[i, I_ENV_STATE]
    if sp < crit:
        st = ENV_LOW_CRIT
    elif sp < buf:
        st = ENV_LOW
    elif sp < buf + hyst:
        st = ENV_LOW if st in (ENV_LOW_CRIT, ENV_LOW) else ENV_NOMINAL
    elif sp < smax - buf - hyst:
        st = ENV_NOMINAL
    elif sp < smax - buf:
        st = ENV_HIGH if st in (ENV_HIGH, ENV_HIGH_CRIT) else ENV_NOMINAL
    elif sp < smax - crit:
        st = ENV_HIGH
    else:
        st = ENV_HIGH_CRIT
    istate[i, I_ENV_STATE] = st
    if st in (ENV_LOW_CRIT, ENV_HIGH_CRIT):
        out = UP
    elif st in (ENV_LOW, ENV_HIGH) and out == DOWN:
        out = STAY
    # altitude: stay above the floor
    h = height_at(f, f[F_P], params)
    hmin, hbuf, hhyst = params[P_ALT_MIN_M], params[P_ALT_BUF_M], params[P_ALT_HYST_M]
    a = istate[i, I_ALT_STATE]
    if h < hmin:
        a = ALT_VERY_LOW
    elif h < hmin + hbuf:
        a = ALT_LOW
    elif h < hmin + hbuf + hhyst:
        a = ALT_LOW if a in (ALT_LOW, ALT_VERY_LOW) else ALT_NOMINAL
    else:
        a = ALT_NOMINAL
    istate[i, I_ALT_STATE] = a
    if a == ALT_VERY_LOW:
        out = UP
    elif a == ALT_LOW and out == DOWN:
        out = STAY
    return out


# --- wind at the balloon -----------------------------------------------------------------------
@njit
def winds_at(
    i: int,
    x: float,
    y: float,
    p: float,
    t: float,
    t_local: float,
    wind: np.ndarray,
    work: np.ndarray,
    wp: np.ndarray,
    grid: np.ndarray,
    grid_levels: np.ndarray,
) -> tuple[float, float, float, float]:
    """True and forecast wind ``(u, v, u_fc, v_fc)`` (m/s) of env ``i`` at ``(x, y, p, t)``.

    ``t`` is the time on the wind's own axis (a gridded wind's start is offset into the file);
    ``t_local`` the time since the episode started (the generative and VAE fields' axis). A
    start wind table (``reset(options=...)``) is both truth and forecast.
    """
    row = wind[i]
    if W.table_levels(row) > 0:
        u, v = W.table_wind(row, p)
        return u, v, u, v
    nl, nk = int(wp[W.W_L]), int(wp[W.W_K])
    wk = work[i]
    pu = wk[0:64]
    pv = wk[64:128]
    sc = wk[256 : 256 + 2 * max(nk, 1)]
    base = W.TABLE_SIZE
    source = wp[W.W_SOURCE]
    if source == W.SOURCE_BLE_VAE:
        W.vae_profile(row, base, x, y, t_local, wp[W.W_VAE_SWAP] > 0.0, pu, pv)
        j, w = W.uniform_level(p, W.VAE_PMIN_PA, W.VAE_PMAX_PA, W.VAE_LEVELS)
        fu = (1.0 - w) * pu[j] + w * pu[j + 1]
        fv = (1.0 - w) * pv[j] + w * pv[j + 1]
        nu, nv = W.ble_noise(row, base + W.VAE_PSI_SIZE, x, y, p, t_local, wp[W.W_BLE_NOISE_SD])
        return fu + nu, fv + nv, fu, fv
    if source == W.SOURCE_GRID:
        W.grid_profile(grid, 0, wp, x, y, t, pu, pv)
        j, w = W.table_level(p, grid_levels)
        j1 = min(j + 1, grid_levels.shape[0] - 1)
        fu = (1.0 - w) * pu[j] + w * pu[j1]
        fv = (1.0 - w) * pv[j] + w * pv[j1]
        if wp[W.W_GRID_TRUTH] > 0.0:
            W.grid_profile(grid, 1, wp, x, y, t, pu, pv)
            return (1.0 - w) * pu[j] + w * pu[j1], (1.0 - w) * pv[j] + w * pv[j1], fu, fv
    else:
        W.generative_profile(row, base, wp, x, y, t_local, sc, pu, pv)
        j, w = W.uniform_level(p, wp[W.W_PMIN], wp[W.W_PMAX], nl)
        fu = (1.0 - w) * pu[j] + w * pu[j + 1]
        fv = (1.0 - w) * pv[j] + w * pv[j + 1]
    size = W.field_size(nl, int(wp[W.W_T]), nk)
    W.generative_profile(row, base + size, wp, x, y, t_local, sc, pu, pv)
    j, w = W.uniform_level(p, wp[W.W_PMIN], wp[W.W_PMAX], nl)
    return fu + (1.0 - w) * pu[j] + w * pu[j + 1], fv + (1.0 - w) * pv[j] + w * pv[j + 1], fu, fv


@njit
def wind_at(
    i: int,
    x: float,
    y: float,
    p: float,
    t: float,
    t_local: float,
    truth: bool,
    wind: np.ndarray,
    work: np.ndarray,
    wp: np.ndarray,
    grid: np.ndarray,
    grid_levels: np.ndarray,
) -> tuple[float, float]:
    """Forecast (``truth=False``) or true wind (m/s) of env ``i`` at ``(x, y, p, t)``."""
    u, v, fu, fv = winds_at(i, x, y, p, t, t_local, wind, work, wp, grid, grid_levels)
    return (u, v) if truth else (fu, fv)


@njit
def forecast_column(
    i: int,
    x: float,
    y: float,
    t: float,
    wind: np.ndarray,
    work: np.ndarray,
    wp: np.ndarray,
    grid: np.ndarray,
    grid_levels: np.ndarray,
    params: np.ndarray,
    out: np.ndarray,
) -> None:
    """Write the forecast u then v on the column levels at ``(x, y, t)`` into ``out``.

    ``t`` is the time on the wind's own axis; the generative and VAE fields read it from the
    episode start (their ``t_local``), which is ``t`` less the row's gridded-wind offset (0).
    """
    nl, nk = int(wp[W.W_L]), int(wp[W.W_K])
    ncol = int(params[P_NCOL])
    row = wind[i]
    wk = work[i]
    pu = wk[0:64]
    pv = wk[64:128]
    sc = wk[256 : 256 + 2 * max(nk, 1)]
    pmin, pmax = params[P_COL_PMIN], params[P_COL_PMAX]
    table = W.table_levels(row) > 0
    source = wp[W.W_SOURCE]
    if table:
        pass
    elif source == W.SOURCE_GRID:
        W.grid_profile(grid, 0, wp, x, y, t, pu, pv)
    elif source == W.SOURCE_BLE_VAE:
        W.vae_profile(row, W.TABLE_SIZE, x, y, t, wp[W.W_VAE_SWAP] > 0.0, pu, pv)
    else:
        W.generative_profile(row, W.TABLE_SIZE, wp, x, y, t, sc, pu, pv)
    for c in range(ncol):
        p = pmin + (pmax - pmin) * c / (ncol - 1)
        if table:
            out[c], out[ncol + c] = W.table_wind(row, p)
            continue
        if source == W.SOURCE_GRID:
            j, w = W.table_level(p, grid_levels)
            j1 = min(j + 1, grid_levels.shape[0] - 1)
        elif source == W.SOURCE_BLE_VAE:
            j, w = W.uniform_level(p, W.VAE_PMIN_PA, W.VAE_PMAX_PA, W.VAE_LEVELS)
            j1 = j + 1
        else:
            j, w = W.uniform_level(p, wp[W.W_PMIN], wp[W.W_PMAX], nl)
            j1 = j + 1
        out[c] = (1.0 - w) * pu[j] + w * pu[j1]
        out[ncol + c] = (1.0 - w) * pv[j] + w * pv[j1]


# --- one physics sub-step ----------------------------------------------------------------------
@njit
def sub_step(
    i: int,
    cmd: int,
    wu: float,
    wv: float,
    fstate: np.ndarray,
    istate: np.ndarray,
    params: np.ndarray,
) -> None:
    """Advance env ``i`` by one explicit-Euler sub-step under command ``cmd`` and wind (wu, wv).

    Every rate comes from the state at the start of the sub-step (position and time of the
    sun included). ``physics_variant="ble"`` then also takes the new volume and superpressure
    from the state before the step (ballonet air, gas temperature, pressure) and the ambient
    temperature at the old pressure, as [B20] does, and does not limit the vertical step;
    ``"corrected"`` evaluates them at the new state and stops the step at the float level.
    """
    f = fstate[i]
    dt = params[P_DT]
    p, t_amb, t_gas, vol, n_air = f[F_P], f[F_T_AMB], f[F_T_GAS], f[F_VOL], f[F_N_AIR]
    before = params[P_ENV_BEFORE] > 0.0
    vol_new, sp_new = vol, f[F_SP]
    update_sun(f, params, False)
    # 1. horizontal drift
    f[F_X] += wu * dt
    f[F_Y] += wv * dt
    # 2. quasi-static vertical motion (terminal velocity of buoyancy against drag)
    rho = p / (R_AIR * t_amb)
    mass = M_HE * params[P_N_HE] + M_AIR * n_air + params[P_M_ENV] + params[P_M_PAY]
    lift = rho * vol - mass
    drag_area = params[P_CD] * vol ** (2.0 / 3.0)
    dh_dt = math.sqrt(2.0 * abs(lift) * G / (rho * drag_area))
    if lift < 0.0:
        dh_dt = -dh_dt
    # dp/dh: BLE's from the atmosphere's T at p (it differences its height map over 1 Pa),
    # ours hydrostatic with the ambient density (the same but for the lagged ambient T)
    t_dp = temperature_at(f, p) if before else t_amb
    dp = -p * G / (R_AIR * t_dp) * dh_dt * dt
    if params[P_FLOAT_LIMIT] > 0.0:
        # Without inertia the balloon cannot overshoot its float level: limit the explicit
        # step to the linearised distance to neutral buoyancy, lift + d(rho V)/dp dp = 0
        # (explicit Euler on the square-root law otherwise chatters around it by ~10 Pa).
        k_lapse = f[F_LAPSE + _layer_of_pressure(f, p)] * R_AIR / G  # d ln T / d ln p
        p_gas = p + f[F_SP]
        dv_dp = -params[P_DVDP] / (1.0 + params[P_DVDP] * p_gas / vol) if f[F_SP] > 0.0 else 0.0
        d_lift_dp = rho * vol / p * (1.0 + k_lapse) + rho * dv_dp
        if d_lift_dp > 0.0:
            to_float = -lift / d_lift_dp
            if abs(dp) > abs(to_float):
                dp = to_float
    # 3. gas temperature
    dtg = gas_temperature_rate(
        vol, t_gas, t_amb, p, f[F_SIN_EL], f[F_FLUX], f[F_IR], f[F_EARTH_ABS], params
    )
    # 4. altitude control
    acs_w, mdot = acs_flow(cmd, f, params)
    # 5. power
    solar = solar_power_w(f[F_SIN_EL], p, params)
    load = params[P_DAY_W] if f[F_SIN_EL] > params[P_SIN_NIGHT] else params[P_NIGHT_W]
    # algebraic variables from the state before the step ([B20])
    if before:
        vol_new, sp_new = envelope(params[P_N_HE] + n_air, t_gas, p, params)
        f[F_T_AMB] = t_dp  # the ambient T at the old pressure
    # Euler updates
    f[F_P] = p + dp
    f[F_T_GAS] = t_gas + dtg * dt
    f[F_N_AIR] = max(n_air + mdot / M_AIR * dt, 0.0)
    f[F_ACS_W] = acs_w
    f[F_MDOT] = mdot
    f[F_SOLAR_W] = solar
    f[F_LOAD_W] = load
    h = dt / 3600.0
    batt = f[F_BATT] + (solar - load - acs_w) * h
    cap = params[P_CAP_WH]
    f[F_E_SOLAR] += solar * h
    f[F_E_LOAD] += load * h
    f[F_E_ACS] += acs_w * h
    if batt > cap:
        f[F_E_SPILL] += batt - cap
        batt = cap
    elif batt < 0.0:
        f[F_E_UNMET] -= batt
        batt = 0.0
    f[F_BATT] = batt
    f[F_ELAPSED] += dt
    # algebraic variables at the new state
    if not before:
        f[F_T_AMB] = temperature_at(f, f[F_P])
        vol_new, sp_new = envelope(params[P_N_HE] + f[F_N_AIR], f[F_T_GAS], f[F_P], params)
    f[F_VOL] = vol_new
    f[F_SP] = sp_new
    # terminal states; an empty battery takes precedence, as in [B20]
    if batt <= 0.0:
        istate[i, I_STATUS] = OUT_OF_POWER
    elif sp_new <= 0.0:
        istate[i, I_STATUS] = ZEROPRESSURE
    elif sp_new > params[P_SP_MAX]:
        istate[i, I_STATUS] = BURST


# --- initialisation ----------------------------------------------------------------------------
@njit
def _gamma(rng: np.ndarray, i: int, k: int, shape: float) -> float:
    """Gamma(shape, 1) draw (Marsaglia & Tsang 2000; shape < 1 boosted by U^(1/shape))."""
    boost = 1.0
    a = shape
    if a < 1.0:
        boost = uniform(rng, i, k) ** (1.0 / a)
        a += 1.0
    d = a - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    for _ in range(1000):
        x = normal(rng, i, k)
        v = 1.0 + c * x
        if v <= 0.0:
            continue
        v = v * v * v
        u = uniform(rng, i, k)
        if math.log(u) < 0.5 * x * x + d - d * v + d * math.log(v):
            return d * v * boost
    return d * boost


@njit
def beta_draw(rng: np.ndarray, i: int, k: int, a: float, b: float) -> float:
    """Beta(a, b) draw as X / (X + Y) with X ~ Gamma(a), Y ~ Gamma(b)."""
    x = _gamma(rng, i, k, a)
    y = _gamma(rng, i, k, b)
    return x / (x + y)


@njit
def initialize(
    i: int,
    lat0: float,
    lon0: float,
    jd0: float,
    x: float,
    y: float,
    p0: float,
    ir: float,
    alpha: float,
    fstate: np.ndarray,
    istate: np.ndarray,
    params: np.ndarray,
) -> None:
    """Set env ``i`` floating at ``p0`` in thermal equilibrium (the neutral-buoyancy start)."""
    start_state(
        i, lat0, lon0, jd0, x, y, p0, ir, alpha, params[P_SOC0], math.nan, math.nan,
        fstate, istate, params,
    )  # fmt: skip


@njit
def _equilibrium_gas_temperature(
    f: np.ndarray, vol: float, t_gas: float, p0: float, params: np.ndarray
) -> float:
    """Newton on dT/dt = 0 with a central-difference slope (0.01 K), from ``t_gas``."""
    ble = params[P_INIT_BASE_VOLUME] > 0.0
    for _ in range(10 if ble else 12):
        r1 = gas_temperature_rate(
            vol, t_gas - 0.005, f[F_T_AMB], p0, f[F_SIN_EL], f[F_FLUX], f[F_IR],
            f[F_EARTH_ABS], params,
        )  # fmt: skip
        r2 = gas_temperature_rate(
            vol, t_gas + 0.005, f[F_T_AMB], p0, f[F_SIN_EL], f[F_FLUX], f[F_IR],
            f[F_EARTH_ABS], params,
        )  # fmt: skip
        slope = (r2 - r1) / 0.01
        mean = 0.5 * (r1 + r2)
        if slope != 0.0:
            t_gas -= mean / slope
        if abs(mean) < (1e-5 if ble else 1e-9):  # [B20] stops at 1e-5 K/s
            break
    return t_gas


@njit
def start_state(
    i: int,
    lat0: float,
    lon0: float,
    jd0: float,
    x: float,
    y: float,
    p0: float,
    ir: float,
    alpha: float,
    soc: float,
    n_air: float,
    t_gas: float,
    fstate: np.ndarray,
    istate: np.ndarray,
    params: np.ndarray,
) -> None:
    """Set env ``i`` at ``p0`` with charge ``soc``; NaN ``n_air``/``t_gas``: solve for them.

    The solve puts the balloon in neutral buoyancy, ``rho(p0) V = m``, with the gas in
    thermal equilibrium (dT/dt = 0). ``physics_variant="ble"`` solves as [B20] does: the air
    with the base envelope volume V0 (the real volume is larger by dV/dP x superpressure, so
    the balloon starts a little light), then the temperature with V0, from 206 K.
    ``"corrected"`` iterates air, temperature and the volume they give to a fixed point, so
    a balloon left on STAY with unchanging heating does not move.
    """
    f = fstate[i]
    for q in range(N_F):
        f[q] = 0.0
    for q in range(N_I):
        istate[i, q] = 0
    istate[i, I_CMD] = STAY
    f[F_LAT0] = lat0
    f[F_LON0] = lon0
    f[F_JD0] = jd0
    f[F_X] = x
    f[F_Y] = y
    f[F_P] = p0
    f[F_IR] = ir
    t_earth = (ir / SIGMA_SB) ** 0.25  # black-body temperature of the upwelling flux
    f[F_EARTH_ABS] = total_absorptivity(ir_absorptivity(t_earth, params), params[P_REFL])
    init_atmosphere(f, alpha, params)
    f[F_T_AMB] = temperature_at(f, p0)
    f[F_BATT] = soc * params[P_CAP_WH]
    update_sun(f, params, True)
    update_sun_events(f, params, True)
    rho = p0 / (R_AIR * f[F_T_AMB])
    fixed_mass = M_HE * params[P_N_HE] + params[P_M_ENV] + params[P_M_PAY]
    v0 = params[P_V0]
    if math.isnan(n_air) or math.isnan(t_gas):
        if params[P_INIT_BASE_VOLUME] > 0.0:
            n_air = max((rho * v0 - fixed_mass) / M_AIR, 0.0)
            t_gas = _equilibrium_gas_temperature(f, v0, 206.0, p0, params)
        else:
            vol = v0
            t_gas = f[F_T_AMB]
            for _ in range(4):
                t_gas = _equilibrium_gas_temperature(f, vol, t_gas, p0, params)
                for _ in range(8):  # ballonet air: rho V(n) = m(n)
                    n_air = max((rho * vol - fixed_mass) / M_AIR, 0.0)
                    vol = envelope(params[P_N_HE] + n_air, t_gas, p0, params)[0]
    f[F_T_GAS] = t_gas
    f[F_N_AIR] = n_air
    vol, sp = envelope(params[P_N_HE] + n_air, t_gas, p0, params)
    f[F_VOL] = vol
    f[F_SP] = sp
    if sp <= 0.0:
        istate[i, I_STATUS] = ZEROPRESSURE
    elif sp > params[P_SP_MAX]:
        istate[i, I_STATUS] = BURST


# --- a start set through reset(options=...) ----------------------------------------------------
# One float row per env (see :mod:`~.start`); NaN: draw the value as usual. The wind table
# has the layout of the start of a wind row (:data:`~.wind.TABLE_SIZE`); 0 levels: no table.
S_JD = 0  # Julian date (UTC) of the start
S_LAT = 1  # station latitude, longitude (deg)
S_LON = 2
S_X = 3  # balloon east, north of the station (m)
S_Y = 4
S_P = 5  # pressure (Pa)
S_N_AIR = 6  # ballonet air (mol); NaN with S_T_GAS: solve neutral buoyancy
S_T_GAS = 7  # gas temperature (K)
S_SOC = 8  # battery state of charge
S_ALPHA = 9  # lapse-rate mix
S_IR = 10  # upwelling infrared (W/m^2)
S_TABLE = 11  # wind table: levels, then p, u, v
N_S = S_TABLE + W.TABLE_SIZE


def no_start() -> np.ndarray:
    """A start row that sets nothing (every value drawn)."""
    row = np.full(N_S, np.nan)
    row[S_TABLE] = 0.0
    return row


@njit(inline="always")
def _or(value: float, default: float) -> float:
    return default if math.isnan(value) else value


@njit
def reset(
    i: int,
    fstate: np.ndarray,
    istate: np.ndarray,
    wind: np.ndarray,
    work: np.ndarray,
    params: np.ndarray,
    wp: np.ndarray,
    grid: np.ndarray,
    grid_levels: np.ndarray,
    rng: np.ndarray,
    meas: np.ndarray,
) -> None:
    """Start a new episode in env ``i`` with every value drawn (generative or gridded winds)."""
    start = np.full(N_S, np.nan)
    start[S_TABLE] = 0.0
    reset_episode(
        i, fstate, istate, wind, work, params, wp, grid, grid_levels, rng, meas, start,
        np.zeros(1, dtype=np.float32),
    )  # fmt: skip


@njit
def reset_episode(
    i: int,
    fstate: np.ndarray,
    istate: np.ndarray,
    wind: np.ndarray,
    work: np.ndarray,
    params: np.ndarray,
    wp: np.ndarray,
    grid: np.ndarray,
    grid_levels: np.ndarray,
    rng: np.ndarray,
    meas: np.ndarray,
    start: np.ndarray,
    vae: np.ndarray,
) -> None:
    """Start a new episode in env ``i``: draw every random value, then apply ``start``.

    Every value is drawn from the row's stream in the same order whatever ``start`` sets, so
    setting one value leaves the others as the seed gives them. ``vae`` holds BLE's decoder
    weights (:mod:`~.blevae`) for ``source="ble-vae"``.
    """
    k = STREAM_BACKEND
    lat0 = uniform_range(rng, i, k, params[P_LAT_MIN], params[P_LAT_MAX])  # U(-10, 10) deg
    lon0 = uniform_range(rng, i, k, params[P_LON_MIN], params[P_LON_MAX])  # U(-175, 175) deg
    jd0 = uniform_range(rng, i, k, params[P_JD_MIN], params[P_JD_MAX])  # U(2011, 2015) UTC
    radius = params[P_R0_M] * beta_draw(rng, i, k, params[P_BETA_A], params[P_BETA_B])  # m
    angle = uniform_range(rng, i, k, 0.0, TWO_PI)  # U(0, 2 pi)
    alpha = uniform(rng, i, k)  # lapse-rate mixing ~ U(0, 1)
    # upwelling IR ~ scale * LogitNormal(loc, spread), re-drawn below the minimum (W/m^2)
    ir = params[P_IR_SCALE]
    for _ in range(200):
        z = params[P_IR_LOC] + params[P_IR_SPREAD] * normal(rng, i, k)
        cand = params[P_IR_SCALE] / (1.0 + math.exp(-min(max(z, -700.0), 700.0)))
        if cand >= params[P_IR_MIN]:
            ir = cand
            break
    u_p = uniform(rng, i, k)  # start pressure ~ U(min, p(50 000 ft)) Pa, drawn below
    t_offset = uniform(rng, i, k)  # start within a gridded wind ~ U(0, span - horizon) s
    row = wind[i]
    base = W.TABLE_SIZE
    if wp[W.W_SOURCE] == W.SOURCE_BLE_VAE:
        # BLE's forecast: the decoder at z ~ N(0, I_64); the truth noise: per component and
        # harmonic a seed and an offset ~ U(-1, 1)^4 [B20]
        latent = np.empty(B.N_LATENT)
        for q in range(B.N_LATENT):
            latent[q] = normal(rng, i, k)
        B.decode(latent, vae, row[base : base + W.VAE_PSI_SIZE])
        nb = base + W.VAE_PSI_SIZE
        for h in range(W.NOISE_SIZE // 5):
            row[nb + 5 * h] = float(next_u64(rng, i, k) >> np.uint64(11))  # 53-bit seed
            for c in range(4):
                row[nb + 5 * h + 1 + c] = uniform_range(rng, i, k, -1.0, 1.0)
    else:
        # winds: the forecast field, then the error field (normals, see wind.draw_field)
        nl, nt, nk = int(wp[W.W_L]), int(wp[W.W_T]), int(wp[W.W_K])
        size = W.field_size(nl, nt, nk)
        W.draw_field(
            rng, i, k, row, base, wp, wp[W.W_MEAN_SD], wp[W.W_WAVE_SD], wp[W.W_RHO_L],
            wp[W.W_RHO_T],
        )  # fmt: skip
        err_sd = wp[W.W_ERR_SD] / math.sqrt(2.0)  # half the error variance in each part
        W.draw_field(
            rng, i, k, row, base + size, wp, err_sd, err_sd, wp[W.W_ERR_RHO_L],
            wp[W.W_ERR_RHO_T],
        )  # fmt: skip
    # the start: what reset(options=...) set, else the draws
    x = _or(start[S_X], radius * math.cos(angle))
    y = _or(start[S_Y], radius * math.sin(angle))
    alpha = _or(start[S_ALPHA], alpha)
    ir = _or(start[S_IR], ir)
    if wp[W.W_SOURCE] == W.SOURCE_GRID:
        lat0 = wp[W.W_GRID_LAT]
        lon0 = wp[W.W_GRID_LON]
        if math.isnan(start[S_JD]):
            t_offset *= max(wp[W.W_GRID_SPAN] - wp[W.W_HORIZON], 0.0)
        else:
            t_offset = (start[S_JD] - wp[W.W_GRID_JD0]) * 86400.0
        jd0 = wp[W.W_GRID_JD0] + t_offset / 86400.0
    else:
        t_offset = 0.0
        lat0 = _or(start[S_LAT], lat0)
        lon0 = _or(start[S_LON], lon0)
        jd0 = _or(start[S_JD], jd0)
    for q in range(W.TABLE_SIZE):
        row[q] = start[S_TABLE + q]
    f = fstate[i]
    init_atmosphere(f, alpha, params)
    p_floor = pressure_at_height(f, params[P_ALT_MIN_M], params)
    p0 = params[P_P0_MIN] + (max(p_floor, params[P_P0_MIN]) - params[P_P0_MIN]) * u_p
    p0 = _or(start[S_P], p0)
    start_state(
        i, lat0, lon0, jd0, x, y, p0, ir, alpha, _or(start[S_SOC], params[P_SOC0]),
        start[S_N_AIR], start[S_T_GAS], fstate, istate, params,
    )  # fmt: skip
    f[F_T_OFFSET] = t_offset
    f[F_WP] = p0
    measure(i, fstate, istate, wind, work, params, wp, grid, grid_levels, meas)


# --- control step ------------------------------------------------------------------------------
@njit
def apply(
    i: int,
    command: float,
    fstate: np.ndarray,
    istate: np.ndarray,
    wind: np.ndarray,
    work: np.ndarray,
    params: np.ndarray,
    wp: np.ndarray,
    grid: np.ndarray,
    grid_levels: np.ndarray,
    meas: np.ndarray,
) -> int:
    """Run one control step of env ``i`` under ``command`` (0 down, 1 stay, 2 up).

    Returns:
        The command applied after the safety layers.
    """
    f = fstate[i]
    cmd = int(min(max(command, 0.0), 2.0) + 0.5)
    if istate[i, I_STATUS] != OK:
        measure(i, fstate, istate, wind, work, params, wp, grid, grid_levels, meas)
        return cmd
    update_sun(f, params, True)
    cmd = safety_filter(i, cmd, fstate, istate, params)
    istate[i, I_CMD] = cmd
    tl = f[F_ELAPSED]
    t = tl + f[F_T_OFFSET]
    x, y, p = f[F_X], f[F_Y], f[F_P]
    wu, wv, fu, fv = winds_at(i, x, y, p, t, tl, wind, work, wp, grid, grid_levels)
    f[F_WU], f[F_WV], f[F_WFU], f[F_WFV], f[F_WP] = wu, wv, fu, fv, p
    for _ in range(int(params[P_NSUB])):
        sub_step(i, cmd, wu, wv, fstate, istate, params)
        if istate[i, I_STATUS] != OK:
            break
    istate[i, I_STEPS] += 1
    update_sun(f, params, False)
    measure(i, fstate, istate, wind, work, params, wp, grid, grid_levels, meas)
    return cmd


@njit
def measure(
    i: int,
    fstate: np.ndarray,
    istate: np.ndarray,
    wind: np.ndarray,
    work: np.ndarray,
    params: np.ndarray,
    wp: np.ndarray,
    grid: np.ndarray,
    grid_levels: np.ndarray,
    meas: np.ndarray,
) -> None:
    """Write the telemetry and the forecast column of env ``i`` into row ``i`` of ``meas``."""
    f = fstate[i]
    m = meas[i]
    m[M_POS] = f[F_X]
    m[M_POS + 1] = f[F_Y]
    m[M_P] = f[F_P]
    m[M_ALT] = height_at(f, f[F_P], params)
    m[M_SOC] = f[F_BATT] / params[P_CAP_WH]
    m[M_EL] = math.asin(f[F_SIN_EL]) / DEG
    m[M_HOUR] = f[F_HOUR_DEG]
    m[M_ACS_W] = f[F_ACS_W]
    m[M_SP] = f[F_SP]
    m[M_CMD] = istate[i, I_CMD]
    m[M_STATUS] = istate[i, I_STATUS]
    m[M_ELAPSED] = f[F_ELAPSED]
    solar = solar_power_w(f[F_SIN_EL], f[F_P], params)
    m[M_EXCESS] = 1.0 if (solar > params[P_DAY_W] and m[M_SOC] > 0.99) else 0.0
    paused = (
        istate[i, I_POWER_PAUSED] != 0
        or istate[i, I_ENV_STATE] != ENV_NOMINAL
        or istate[i, I_ALT_STATE] != ALT_NOMINAL
    )
    m[M_PAUSED] = 1.0 if paused else 0.0
    m[M_WIND] = f[F_WU]
    m[M_WIND + 1] = f[F_WV]
    m[M_WIND_FC] = f[F_WFU]
    m[M_WIND_FC + 1] = f[F_WFV]
    m[M_WIND_P] = f[F_WP]
    m[M_STATION] = f[F_LAT0]
    m[M_STATION + 1] = f[F_LON0]
    m[M_UNIX] = (f[F_JD0] - JD_UNIX_EPOCH) * 86400.0 + f[F_ELAPSED]
    t = f[F_ELAPSED] + f[F_T_OFFSET]
    forecast_column(i, f[F_X], f[F_Y], t, wind, work, wp, grid, grid_levels, params, m[M_COLUMN:])
