"""Configuration of the stratospheric balloon system (frozen, units in every field name).

Sources (see ``shared/reference/balloon.md``):

* [B20] Bellemare et al., "Autonomous navigation of stratospheric balloons using reinforcement
  learning", Nature 588, 77-82 (2020), and the Balloon Learning Environment (BLE, Apache-2.0,
  google/balloon-learning-environment, v1.0.1): vehicle constants, ACS tables, solar-panel
  geometry, film properties, safety thresholds, episode initialisation, reward.
* [US76] U.S. Standard Atmosphere 1976 (NOAA/NASA/USAF): layered, piecewise-linear temperature
  and hydrostatic pressure; BLE's tropical variant of the lower layers mixes two lapse-rate sets.
* [NOAA] NOAA Global Monitoring Laboratory solar calculator (after Meeus, "Astronomical
  Algorithms", 1991): solar declination, equation of time, hour angle.
* [CODATA] g = 9.80665 m/s^2 (standard gravity), R = 8.3144621 J/(mol K) (as used by [B20]).
"""

from __future__ import annotations

import dataclasses
import itertools

from twinloop.core.config import ConfigError, check_choice, check_range
from twinloop.core.safety import SafetyConfig

#: Standard gravity (m/s^2) [CODATA].
GRAVITY_M_PER_S2 = 9.80665
#: Universal gas constant (J/(mol K)), the value [B20] uses.
GAS_CONSTANT_J_PER_MOL_K = 8.3144621
#: Molar mass of dry air (kg/mol) [B20].
AIR_MOLAR_MASS_KG_PER_MOL = 0.028964922481160
#: Molar mass of helium (kg/mol) [B20].
HELIUM_MOLAR_MASS_KG_PER_MOL = 0.004002602
#: Stefan-Boltzmann constant (W/(m^2 K^4)).
STEFAN_BOLTZMANN_W_PER_M2_K4 = 5.6704e-8
#: Mean Earth radius (m), for small offsets from the station in latitude/longitude.
EARTH_RADIUS_M = 6_371_000.0
#: One foot in metres.
FOOT_M = 0.3048
#: Julian date of 2000-01-01 12:00 TT (J2000.0), the epoch of [NOAA]'s series.
JD_J2000 = 2451545.0
#: Julian date of 1970-01-01 00:00 UTC.
JD_UNIX_EPOCH = 2440587.5


def julian_date_of_year(year: float) -> float:
    """Julian date of 00:00 UTC on 1 January of ``year`` (Gregorian, integer years)."""
    y = int(year) - 1
    days = 365 * y + y // 4 - y // 100 + y // 400  # days from 0001-01-01 to year-01-01
    return 1721425.5 + days


@dataclasses.dataclass(frozen=True, kw_only=True)
class BalloonVehicleConfig:
    """The flight system: envelope, ballonet, altitude-control system (ACS), power [B20].

    The ACS efficiency table is ``efficiency[power][pressure_ratio]``: one row of 13 values
    (pressure ratio 1.05, 1.075, ..., 1.35) for each power level 100, 200, 300, 400 W. [B20]
    lists the same 52 numbers and reshapes them pressure-ratio-major; read that way the 200 W
    efficiency would jump 0.4, 0, 0, 0.4 over four neighbouring ratios, which no compressor
    does, so we read them power-major (efficiency then falls with back-pressure at each power).
    """

    envelope_volume_base_m3: float = 1804.0  # [B20]
    envelope_dv_dp_m3_per_pa: float = 0.0199  # volume gained per Pa of superpressure [B20]
    envelope_mass_kg: float = 68.5  # [B20]
    max_superpressure_pa: float = 2380.0  # above: burst [B20]
    drag_coefficient: float = 0.25  # on the area V^(2/3) [B20]
    payload_mass_kg: float = 92.5  # 78.5 kg payload + 14 kg ballast [B20]
    helium_mol: float = 6830.0  # lift gas [B20]
    night_load_w: float = 183.7  # hotel load at night [B20]
    day_load_w: float = 120.4  # hotel load by day [B20]
    valve_diameter_m: float = 0.04  # ACS vent orifice [B20]
    valve_discharge_coefficient: float = 0.62  # measured orifice Cd [B20]
    battery_capacity_wh: float = 3058.56  # [B20]
    battery_initial_soc: float = 0.95  # [B20]
    acs_power_ratio_knots: tuple[float, ...] = (1.0, 1.05, 1.2, 1.25, 1.35)  # [B20]
    acs_power_knots_w: tuple[float, ...] = (100.0, 100.0, 300.0, 400.0, 400.0)  # [B20]
    acs_efficiency_ratio_min: float = 1.05  # first pressure ratio of the table [B20]
    acs_efficiency_ratio_max: float = 1.35  # last pressure ratio of the table [B20]
    acs_efficiency_power_min_w: float = 100.0  # [B20]
    acs_efficiency_power_max_w: float = 400.0  # [B20]
    # kg of air per Wh at (power, pressure ratio); 4 powers x 13 ratios, power-major [B20]
    acs_efficiency_kg_per_wh: tuple[float, ...] = (
        *(0.4, 0.4, 0.3, 0.2, 0.2, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0),  # 100 W
        *(0.4, 0.3, 0.3, 0.3, 0.25, 0.23, 0.2, 0.15, 0.12, 0.1, 0.0, 0.0, 0.0),  # 200 W
        *(0.0, 0.3, 0.25, 0.25, 0.25, 0.2, 0.2, 0.2, 0.2, 0.15, 0.13, 0.12, 0.11),  # 300 W
        *(0.0, 0.23, 0.23, 0.23, 0.23, 0.23, 0.2, 0.2, 0.2, 0.18, 0.16, 0.15, 0.13),  # 400 W
    )
    # Solar panels: 4 at 35 deg tilt hanging 3.3 m below, 2 at 65 deg hanging 2.7 m [B20]
    panel_peak_w: float = 210.0  # per panel [B20]
    panel_main_count: float = 4.0
    panel_main_tilt_deg: float = 35.0
    panel_main_drop_m: float = 3.3
    panel_side_count: float = 2.0
    panel_side_tilt_deg: float = 65.0
    panel_side_drop_m: float = 2.7
    shadow_balloon_radius_m: float = 8.69275  # envelope seen from the panels [B20]
    shadow_balloon_height_m: float = 10.41603
    shadow_factor: float = 0.4392  # panel output under the envelope's shadow [B20]

    def __post_init__(self) -> None:  # noqa: D105
        for name in (
            "envelope_volume_base_m3",
            "envelope_mass_kg",
            "max_superpressure_pa",
            "drag_coefficient",
            "payload_mass_kg",
            "helium_mol",
            "valve_diameter_m",
            "battery_capacity_wh",
        ):
            check_range(self, name, 0.0, 1e7, lo_open=True)
        check_range(self, "envelope_dv_dp_m3_per_pa", 0.0, 10.0)
        check_range(self, "night_load_w", 0.0, 1e4)
        check_range(self, "day_load_w", 0.0, 1e4)
        check_range(self, "valve_discharge_coefficient", 0.0, 1.0)
        check_range(self, "battery_initial_soc", 0.0, 1.0, lo_open=True)
        check_range(self, "panel_peak_w", 0.0, 1e4)
        check_range(self, "shadow_factor", 0.0, 1.0)
        if len(self.acs_power_ratio_knots) != len(self.acs_power_knots_w) or (
            len(self.acs_power_knots_w) != N_ACS_POWER_KNOTS
        ):
            raise ConfigError(
                "BalloonVehicleConfig.acs_power_ratio_knots and acs_power_knots_w must both "
                f"have {N_ACS_POWER_KNOTS} entries, got {len(self.acs_power_ratio_knots)} and "
                f"{len(self.acs_power_knots_w)}"
            )
        if any(b <= a for a, b in itertools.pairwise(self.acs_power_ratio_knots)):
            raise ConfigError("BalloonVehicleConfig.acs_power_ratio_knots must increase strictly")
        n = N_ACS_EFF_POWERS * N_ACS_EFF_RATIOS
        if len(self.acs_efficiency_kg_per_wh) != n:
            raise ConfigError(
                f"BalloonVehicleConfig.acs_efficiency_kg_per_wh has "
                f"{len(self.acs_efficiency_kg_per_wh)} entries, expected {n} "
                f"({N_ACS_EFF_POWERS} powers x {N_ACS_EFF_RATIOS} pressure ratios)"
            )
        if self.acs_efficiency_ratio_max <= self.acs_efficiency_ratio_min:
            raise ConfigError("BalloonVehicleConfig: acs_efficiency_ratio_max <= ratio_min")
        if self.acs_efficiency_power_max_w <= self.acs_efficiency_power_min_w:
            raise ConfigError("BalloonVehicleConfig: acs_efficiency_power_max_w <= power_min_w")


#: Knots of the pressure-ratio -> ACS power table [B20].
N_ACS_POWER_KNOTS = 5
#: Shape of the ACS efficiency table: power levels x pressure ratios [B20].
N_ACS_EFF_POWERS = 4
N_ACS_EFF_RATIOS = 13


@dataclasses.dataclass(frozen=True, kw_only=True)
class BalloonPhysicsConfig:
    """Integration, atmosphere, sun, film thermal properties and upwelling infrared.

    The atmosphere has the [US76] layer structure with BLE's tropical lower layers: transition
    heights ``atmosphere_heights_m``; the lapse rate of each layer (K/m) is
    ``(1 - alpha) * low + alpha * high`` with alpha ~ U(0, 1) re-drawn at every reset [B20].
    """

    control_step_s: float = 180.0  # agent step 3 min [B20]
    sub_step_s: float = 10.0  # explicit Euler physics step [B20]
    atmosphere_heights_m: tuple[float, ...] = (
        -610.0,
        17000.0,
        21000.0,
        32000.0,
        47000.0,
        51000.0,
        71000.0,
        85000.0,
    )  # layer transitions [US76] with a tropical tropopause [B20]
    lapse_rates_low_k_per_m: tuple[float, ...] = (
        -0.007,
        0.006,
        0.001,
        0.0028,
        0.0,
        -0.0028,
        -0.002,
    )
    lapse_rates_high_k_per_m: tuple[float, ...] = (
        -0.0058,
        0.005,
        0.001,
        0.0028,
        0.0,
        -0.0028,
        -0.002,
    )
    atmosphere_base_temperature_k: float = 300.0  # at the lowest transition [B20]
    atmosphere_base_pressure_pa: float = 108870.8213  # at the lowest transition [B20]
    night_elevation_deg: float = -4.242  # sun below the horizon seen from ~17.5 km [B20]
    solar_constant_w_per_m2: float = 1366.0  # [NOAA], [B20]
    # PE01 film [B20]
    film_reflectivity: float = 0.0291
    film_solar_absorptivity: float = 0.01435
    film_ir_absorptivity_base: float = 0.04587
    film_ir_absorptivity_per_k: float = 0.000232
    film_ir_reference_k: float = 210.0
    film_specific_heat_j_per_kg_k: float = 1500.0
    solar_view_factor: float = 0.25  # a sphere seen from a distant point source [B20]
    earth_view_factor: float = 0.4605  # lower hemisphere facing a large sphere [B20]
    # Upwelling infrared (W/m^2), re-drawn at every reset:
    # scale * sigmoid(loc + spread * N(0, 1)) (a LogitNormal(loc, spread) draw times scale),
    # re-drawn while below min [B20].
    upwelling_ir_logit_loc: float = 2.0
    upwelling_ir_logit_spread: float = 315.0
    upwelling_ir_scale_w_per_m2: float = 315.0
    upwelling_ir_min_w_per_m2: float = 225.0

    def __post_init__(self) -> None:  # noqa: D105
        check_range(self, "sub_step_s", 0.01, 600.0)
        check_range(self, "control_step_s", self.sub_step_s, 86400.0)
        ratio = self.control_step_s / self.sub_step_s
        if abs(ratio - round(ratio)) > 1e-9:
            raise ConfigError(
                f"BalloonPhysicsConfig.control_step_s = {self.control_step_s} must be a multiple "
                f"of sub_step_s = {self.sub_step_s}"
            )
        n = len(self.atmosphere_heights_m)
        if n != N_ATMOSPHERE_LAYERS + 1:
            raise ConfigError(
                f"BalloonPhysicsConfig.atmosphere_heights_m has {n} entries, expected "
                f"{N_ATMOSPHERE_LAYERS + 1}"
            )
        for name in ("lapse_rates_low_k_per_m", "lapse_rates_high_k_per_m"):
            if len(getattr(self, name)) != N_ATMOSPHERE_LAYERS:
                raise ConfigError(
                    f"BalloonPhysicsConfig.{name} has {len(getattr(self, name))} entries, "
                    f"expected {N_ATMOSPHERE_LAYERS}"
                )
        h = self.atmosphere_heights_m
        if any(b <= a for a, b in itertools.pairwise(h)):
            raise ConfigError("BalloonPhysicsConfig.atmosphere_heights_m must increase strictly")
        check_range(self, "atmosphere_base_temperature_k", 100.0, 400.0)
        check_range(self, "atmosphere_base_pressure_pa", 1e4, 2e5)
        check_range(self, "night_elevation_deg", -20.0, 10.0)
        check_range(self, "solar_constant_w_per_m2", 0.0, 5000.0)
        for name in (
            "film_reflectivity",
            "film_solar_absorptivity",
            "film_ir_absorptivity_base",
            "solar_view_factor",
            "earth_view_factor",
        ):
            check_range(self, name, 0.0, 1.0)
        check_range(self, "film_specific_heat_j_per_kg_k", 1.0, 1e5)
        check_range(self, "upwelling_ir_logit_spread", 0.0, 1e4)
        check_range(self, "upwelling_ir_scale_w_per_m2", 1.0, 2000.0)
        check_range(self, "upwelling_ir_min_w_per_m2", 0.0, self.upwelling_ir_scale_w_per_m2)

    @property
    def sub_steps(self) -> int:
        """Physics sub-steps per control step (18 by default)."""
        return round(self.control_step_s / self.sub_step_s)


#: Layers of the atmosphere model [US76].
N_ATMOSPHERE_LAYERS = 7


@dataclasses.dataclass(frozen=True, kw_only=True)
class BalloonWindConfig:
    """The wind: a generative forecast, the truth around it, or gridded (ERA5-style) files.

    Generative field (``source="generative"``): on ``n_wind_levels`` pressure levels spanning
    the flight range and ``n_wind_times`` knots over the episode, the wind is a level- and
    time-varying mean flow plus ``n_wind_modes`` plane waves of a stream function psi,
    u = -d(psi)/dy, v = d(psi)/dx, so it is horizontally divergence-free. Coefficients are drawn
    at every reset: mean components ~ N(0, mean_wind_sd^2) per component, wave coefficients
    ~ N(0, s_k^2) with s_k chosen so the waves add ``wave_wind_sd`` per component, wavelengths
    log-uniform in [min, max] km and directions U(0, 2 pi); both are AR(1)-correlated across
    neighbouring levels (``level_correlation``) and time knots (``time_correlation``). The
    mean's direction therefore turns with altitude (the shear station-keeping exploits [B20]).

    Truth = forecast + an error field of the same form (its own draws) whose vector RMS is
    ``forecast_error_rms_m_per_s``: real 12-h forecast errors are 3.5-4.5 m/s [B20].

    Gridded winds (``source="grid"``) read u, v on pressure levels from ``forecast_path``
    (NetCDF or Zarr, ERA5 names, see :mod:`twinloop.sim.balloon.era5`); the truth comes from
    ``truth_path`` if given, else forecast + the generative error field.
    """

    source: str = "generative"
    box_half_width_km: float = 500.0  # field defined over +-500 km; positions clamp [B20]
    min_pressure_pa: float = 5000.0  # flight range 5000-14000 Pa [B20]
    max_pressure_pa: float = 14000.0
    horizon_h: float = 48.0  # the field evolves over 48 h, then holds [B20]
    n_wind_levels: int = 10  # native pressure levels [B20: 10 levels]
    n_wind_times: int = 9  # time knots over the horizon [B20: 9 times]
    n_wind_modes: int = 8  # plane waves of the stream function
    mean_wind_sd_m_per_s: float = 7.0  # per component; tropical stratosphere 5-15 m/s
    wave_wind_sd_m_per_s: float = 3.0  # per component
    wavelength_min_km: float = 300.0
    wavelength_max_km: float = 3000.0
    level_correlation: float = 0.6  # between neighbouring native levels (1000 Pa apart)
    time_correlation: float = 0.8  # between neighbouring knots (6 h apart)
    forecast_error_rms_m_per_s: float = 4.0  # vector RMS of truth - forecast [B20: 3.5-4.5]
    error_level_correlation: float = 0.5
    error_time_correlation: float = 0.6
    forecast_path: str = ""
    truth_path: str = ""

    def __post_init__(self) -> None:  # noqa: D105
        check_choice(self, "source", ("generative", "grid"))
        check_range(self, "box_half_width_km", 1.0, 20000.0)
        check_range(self, "min_pressure_pa", 100.0, 1e5)
        check_range(self, "max_pressure_pa", self.min_pressure_pa, 1e5, lo_open=True)
        check_range(self, "horizon_h", 0.1, 24.0 * 365)
        check_range(self, "n_wind_levels", 2, 64)
        check_range(self, "n_wind_times", 2, 256)
        check_range(self, "n_wind_modes", 0, 64)
        check_range(self, "mean_wind_sd_m_per_s", 0.0, 100.0)
        check_range(self, "wave_wind_sd_m_per_s", 0.0, 100.0)
        check_range(self, "wavelength_min_km", 1.0, 1e5)
        check_range(self, "wavelength_max_km", self.wavelength_min_km, 1e5)
        for name in (
            "level_correlation",
            "time_correlation",
            "error_level_correlation",
            "error_time_correlation",
        ):
            check_range(self, name, 0.0, 1.0, hi_open=True)
        check_range(self, "forecast_error_rms_m_per_s", 0.0, 100.0)
        if self.source == "grid" and not self.forecast_path:
            raise ConfigError('BalloonWindConfig: source="grid" needs forecast_path')


@dataclasses.dataclass(frozen=True, kw_only=True)
class BalloonEpisodeConfig:
    """How an episode starts; every value below is re-drawn at every reset [B20].

    Station latitude ~ U(lat_min, lat_max) deg, longitude ~ U(lon_min, lon_max) deg; start time
    ~ U(year_min, year_max) (UTC, uniform in seconds); start offset from the station: radius
    ``start_radius_km * Beta(a, b)`` km, angle ~ U(0, 2 pi); start pressure ~ U(min, p(50 000 ft))
    Pa; ballonet air and gas temperature then give neutral buoyancy in thermal equilibrium.
    """

    station_latitude_min_deg: float = -10.0
    station_latitude_max_deg: float = 10.0
    station_longitude_min_deg: float = -175.0
    station_longitude_max_deg: float = 175.0
    start_year_min: float = 2011.0
    start_year_max: float = 2014.0
    start_radius_km: float = 200.0
    start_radius_beta_a: float = 1.2
    start_radius_beta_b: float = 2.0
    start_pressure_min_pa: float = 6500.0  # just above the empty-ballonet float level [B20]

    def __post_init__(self) -> None:  # noqa: D105
        check_range(self, "station_latitude_min_deg", -60.0, 60.0)
        check_range(self, "station_latitude_max_deg", self.station_latitude_min_deg, 60.0)
        check_range(self, "station_longitude_min_deg", -180.0, 180.0)
        check_range(self, "station_longitude_max_deg", self.station_longitude_min_deg, 180.0)
        check_range(self, "start_year_min", 1900.0, 2200.0)
        check_range(self, "start_year_max", self.start_year_min, 2200.0)
        check_range(self, "start_radius_km", 0.0, 1000.0)
        check_range(self, "start_radius_beta_a", 0.05, 100.0)
        check_range(self, "start_radius_beta_b", 0.05, 100.0)
        check_range(self, "start_pressure_min_pa", 1000.0, 50000.0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class FlightSafetyConfig:
    """The flight controller's own safety layers, applied in order power, envelope, altitude.

    Power: at night, if the battery would fall below ``power_reserve_soc`` before sunrise plus
    ``power_sunrise_margin_s`` at the night load, DOWN becomes STAY until it is day and the state
    of charge is at least ``power_resume_soc``. Envelope: superpressure below ``critical`` or
    above max - ``critical`` forces UP; within ``buffer`` of a limit DOWN becomes STAY; control
    resumes ``hysteresis`` beyond the buffer. Altitude: below ``min_altitude_ft`` forces UP;
    within ``altitude_buffer_ft`` above it DOWN becomes STAY, with ``altitude_hysteresis_ft``.
    """

    power_safety: bool = True
    power_reserve_soc: float = 0.025
    power_resume_soc: float = 0.05
    power_sunrise_margin_s: float = 1800.0
    envelope_critical_pa: float = 150.0
    envelope_buffer_pa: float = 250.0
    envelope_hysteresis_pa: float = 50.0
    min_altitude_ft: float = 50000.0
    altitude_buffer_ft: float = 500.0
    altitude_hysteresis_ft: float = 500.0

    def __post_init__(self) -> None:  # noqa: D105
        check_range(self, "power_reserve_soc", 0.0, 1.0)
        check_range(self, "power_resume_soc", self.power_reserve_soc, 1.0)
        check_range(self, "power_sunrise_margin_s", 0.0, 86400.0)
        check_range(self, "envelope_critical_pa", 0.0, 10000.0)
        check_range(self, "envelope_buffer_pa", self.envelope_critical_pa, 10000.0)
        check_range(self, "envelope_hysteresis_pa", 0.0, 10000.0)
        check_range(self, "min_altitude_ft", 0.0, 200000.0)
        check_range(self, "altitude_buffer_ft", 0.0, 100000.0)
        check_range(self, "altitude_hysteresis_ft", 0.0, 100000.0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class BalloonTaskConfig:
    """Station keeping: the observation's wind column, reward and episode length [B20].

    The episode ends (terminated, failure ``out_of_region``) when the balloon is farther than
    ``region_radius_km`` from the station: the forecast covers +-500 km [B20] and beyond it the
    reward is below 2 % of its maximum.

    Reward: 1 within ``station_radius_km``; outside ``reward_far * 2^(-(d - r) / half_km)``; a
    DOWN command without excess energy multiplies it by
    ``power_penalty_base - power_penalty_slope * clip((P_acs - 100 W) / 200 W, 0, 1)``.
    Terms: ``station`` (the distance part) and ``power`` (what the multiplier takes away).

    Wind column: ``n_column_levels`` levels over [min, max] pressure of the wind config; each
    level gives the forecast corrected by recent in-situ measurements and an uncertainty in
    [0, 1]. The correction is a per-level Kalman filter of the forecast error with Matern-1/2
    (exponential) correlations in distance, pressure and time (length scales as BLE's Gaussian
    process [B20]), O(levels) per step instead of a GP refit.
    """

    max_steps: int = 960  # 48 h of 3-min steps [B20]
    station_radius_km: float = 50.0  # [B20]
    reward_far: float = 0.4  # [B20]
    reward_half_distance_km: float = 100.0  # [B20]
    power_penalty_base: float = 0.95  # [B20]
    power_penalty_slope: float = 0.3  # [B20]
    reward_station: float = 1.0  # scale of the "station" term
    reward_power: float = 1.0  # scale of the "power" term
    n_column_levels: int = 181  # 50 Pa spacing over 5000-14000 Pa [B20]
    error_length_km: float = 357.0  # Matern-1/2 length scales [B20]
    error_length_pa: float = 326.0
    error_length_s: float = 34560.0
    error_prior_sd_m_per_s: float = 2.83  # per component; 4 m/s vector RMS / sqrt(2)
    measurement_noise_sd_m_per_s: float = 0.5  # in-situ wind from GPS drift
    speed_scale_m_per_s: float = 30.0  # speed feature = s / (s + scale) [B20]
    max_distance_km: float = 2000.0  # bound of the distance feature
    region_radius_km: float = 500.0  # farther from the station ends the episode (the wind box)

    def __post_init__(self) -> None:  # noqa: D105
        check_range(self, "max_steps", 1, 10_000_000)
        check_range(self, "station_radius_km", 0.0, 10000.0, lo_open=True)
        check_range(self, "reward_far", 0.0, 1.0)
        check_range(self, "reward_half_distance_km", 0.0, 1e5, lo_open=True)
        check_range(self, "power_penalty_base", 0.0, 1.0)
        check_range(self, "power_penalty_slope", 0.0, 1.0)
        check_range(self, "reward_station", -1e6, 1e6)
        check_range(self, "reward_power", -1e6, 1e6)
        check_range(self, "n_column_levels", 2, MAX_COLUMN_LEVELS)
        check_range(self, "error_length_km", 0.0, 1e5, lo_open=True)
        check_range(self, "error_length_pa", 0.0, 1e6, lo_open=True)
        check_range(self, "error_length_s", 0.0, 1e8, lo_open=True)
        check_range(self, "error_prior_sd_m_per_s", 0.0, 100.0, lo_open=True)
        check_range(self, "measurement_noise_sd_m_per_s", 0.0, 100.0, lo_open=True)
        check_range(self, "speed_scale_m_per_s", 0.0, 1000.0, lo_open=True)
        check_range(self, "max_distance_km", 1.0, 1e5)
        check_range(self, "region_radius_km", self.station_radius_km, 1e5)


#: Largest wind column (array sizes).
MAX_COLUMN_LEVELS = 1024


@dataclasses.dataclass(frozen=True, kw_only=True)
class BalloonConfig:
    """The whole balloon system: vehicle, physics, wind, episode start, safety layers, task."""

    vehicle: BalloonVehicleConfig = dataclasses.field(default_factory=BalloonVehicleConfig)
    physics: BalloonPhysicsConfig = dataclasses.field(default_factory=BalloonPhysicsConfig)
    wind: BalloonWindConfig = dataclasses.field(default_factory=BalloonWindConfig)
    episode: BalloonEpisodeConfig = dataclasses.field(default_factory=BalloonEpisodeConfig)
    flight_safety: FlightSafetyConfig = dataclasses.field(default_factory=FlightSafetyConfig)
    task: BalloonTaskConfig = dataclasses.field(default_factory=BalloonTaskConfig)
    safety: SafetyConfig = dataclasses.field(default_factory=SafetyConfig)

    def __post_init__(self) -> None:  # noqa: D105
        if self.episode.start_pressure_min_pa < self.wind.min_pressure_pa:
            raise ConfigError(
                f"BalloonEpisodeConfig.start_pressure_min_pa = "
                f"{self.episode.start_pressure_min_pa} is below the wind field's "
                f"min_pressure_pa = {self.wind.min_pressure_pa}"
            )

    @property
    def column_levels_pa(self) -> tuple[float, ...]:
        """Pressure levels (Pa) of the observation's wind column, low pressure first."""
        n = self.task.n_column_levels
        lo, hi = self.wind.min_pressure_pa, self.wind.max_pressure_pa
        return tuple(lo + (hi - lo) * k / (n - 1) for k in range(n))
