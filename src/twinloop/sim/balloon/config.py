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
import datetime

from twinloop.core.config import ConfigSection, cross_check, param
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
#: Years where the solar series is used: [NOAA] gives it for 1901-2099; we accept 1800-2200.
YEARS_SUPPORTED = "1800-2200"
JD_MIN_SUPPORTED = 2378496.5  # 1800-01-01
JD_MAX_SUPPORTED = 2524958.5  # 2201-01-01


def julian_date_of_year(year: float) -> float:
    """Julian date of 00:00 UTC on 1 January of ``year`` (Gregorian, integer years)."""
    y = int(year) - 1
    days = 365 * y + y // 4 - y // 100 + y // 400  # days from 0001-01-01 to year-01-01
    return 1721425.5 + days


def julian_date_utc(when: str | datetime.datetime) -> float:
    """Julian date (UTC) of an ISO 8601 date or date-time, or of a ``datetime``.

    A naive value is read as UTC; an aware one is converted to UTC.

    Raises:
        ValueError: ``when`` is not a date or date-time.
    """
    if isinstance(when, str):
        try:
            when = datetime.datetime.fromisoformat(when)
        except ValueError as exc:
            raise ValueError(
                f"{when!r} is not an ISO 8601 date or date-time (e.g. '2013-06-01T12:00:00')"
            ) from exc
    if not isinstance(when, datetime.datetime):
        raise ValueError(f"expected an ISO 8601 string or a datetime, got {when!r}")
    if when.tzinfo is not None:
        when = when.astimezone(datetime.UTC).replace(tzinfo=None)
    epoch = datetime.datetime(1970, 1, 1)
    return JD_UNIX_EPOCH + (when - epoch).total_seconds() / 86400.0


#: Knots of the pressure-ratio -> ACS power table [B20].
N_ACS_POWER_KNOTS = 5
#: Shape of the ACS efficiency table: power levels x pressure ratios [B20].
N_ACS_EFF_POWERS = 4
N_ACS_EFF_RATIOS = 13
#: Layers of the atmosphere model [US76].
N_ATMOSPHERE_LAYERS = 7
#: Largest wind column (array sizes).
MAX_COLUMN_LEVELS = 1024


@dataclasses.dataclass(frozen=True, kw_only=True)
class BalloonVehicleConfig(ConfigSection):
    """The flight system: envelope, ballonet, altitude-control system (ACS), power [B20].

    The ACS efficiency table holds [B20]'s 52 numbers in [B20]'s order. [B20] hands them to
    ``scipy.interpolate.interp2d`` with 13 pressure ratios (1.05, 1.075, ..., 1.35) on x and
    4 powers (100, 200, 300, 400 W) on y, which reads a flat list ratio-major:
    ``efficiency(ratio k, power j) = table[4 k + j]``, bilinear, clamped at the table's edges.
    That is what ``physics_variant="ble"`` (the default) flies. Read that way the efficiency
    at 200 W jumps 0.4, 0, 0, 0.4 over neighbouring ratios and is 0 at ratios 1.10 and 1.20,
    which no compressor does; the numbers make sense power-major
    (``table[13 j + k]``: efficiency falls with back-pressure at every power), which is what
    ``physics_variant="corrected"`` reads (linear beyond the last ratio, clipped at 0).
    """

    envelope_volume_base_m3: float = param(1804.0, units="m^3", gt=0.0, le=1e7, doc="[B20]")
    envelope_dv_dp_m3_per_pa: float = param(
        0.0199, units="m^3/Pa", ge=0.0, le=10.0, doc="volume gained per Pa of superpressure [B20]"
    )
    envelope_mass_kg: float = param(68.5, units="kg", gt=0.0, le=1e7, doc="[B20]")
    max_superpressure_pa: float = param(
        2380.0, units="Pa", gt=0.0, le=1e7, doc="above: burst [B20]"
    )
    drag_coefficient: float = param(0.25, gt=0.0, le=1e7, doc="on the area V^(2/3) [B20]")
    payload_mass_kg: float = param(
        92.5, units="kg", gt=0.0, le=1e7, doc="78.5 kg payload + 14 kg ballast [B20]"
    )
    helium_mol: float = param(6830.0, units="mol", gt=0.0, le=1e7, doc="lift gas [B20]")
    night_load_w: float = param(183.7, units="W", ge=0.0, le=1e4, doc="hotel load at night [B20]")
    day_load_w: float = param(120.4, units="W", ge=0.0, le=1e4, doc="hotel load by day [B20]")
    valve_diameter_m: float = param(0.04, units="m", gt=0.0, le=1e7, doc="ACS vent orifice [B20]")
    valve_discharge_coefficient: float = param(
        0.62, ge=0.0, le=1.0, doc="measured orifice Cd [B20]"
    )
    battery_capacity_wh: float = param(3058.56, units="Wh", gt=0.0, le=1e7, doc="[B20]")
    battery_initial_soc: float = param(0.95, gt=0.0, le=1.0, doc="[B20]")
    acs_power_ratio_knots: tuple[float, ...] = param(
        (1.0, 1.05, 1.2, 1.25, 1.35), length=N_ACS_POWER_KNOTS, increasing=True, doc="[B20]"
    )
    acs_power_knots_w: tuple[float, ...] = param(
        (100.0, 100.0, 300.0, 400.0, 400.0), units="W", length=N_ACS_POWER_KNOTS, doc="[B20]"
    )
    acs_efficiency_ratio_min: float = param(1.05, doc="first pressure ratio of the table [B20]")
    acs_efficiency_ratio_max: float = param(
        1.35, gt="acs_efficiency_ratio_min", doc="last pressure ratio of the table [B20]"
    )
    acs_efficiency_power_min_w: float = param(100.0, units="W", doc="[B20]")
    acs_efficiency_power_max_w: float = param(
        400.0, units="W", gt="acs_efficiency_power_min_w", doc="[B20]"
    )
    acs_efficiency_kg_per_wh: tuple[float, ...] = param(
        (
            # rows of 13: the 100, 200, 300, 400 W rows when read power-major ("corrected")
            *(0.4, 0.4, 0.3, 0.2, 0.2, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
            *(0.4, 0.3, 0.3, 0.3, 0.25, 0.23, 0.2, 0.15, 0.12, 0.1, 0.0, 0.0, 0.0),
            *(0.0, 0.3, 0.25, 0.25, 0.25, 0.2, 0.2, 0.2, 0.2, 0.15, 0.13, 0.12, 0.11),
            *(0.0, 0.23, 0.23, 0.23, 0.23, 0.23, 0.2, 0.2, 0.2, 0.18, 0.16, 0.15, 0.13),
        ),
        units="kg/Wh",
        length=N_ACS_EFF_POWERS * N_ACS_EFF_RATIOS,
        doc="kg of air per Wh at (pressure ratio, power), [B20]'s order (see the class doc)",
    )
    # Solar panels: 4 at 35 deg tilt hanging 3.3 m below, 2 at 65 deg hanging 2.7 m [B20]
    panel_peak_w: float = param(210.0, units="W", ge=0.0, le=1e4, doc="per panel [B20]")
    panel_main_count: float = param(4.0)
    panel_main_tilt_deg: float = param(35.0, units="deg")
    panel_main_drop_m: float = param(3.3, units="m")
    panel_side_count: float = param(2.0)
    panel_side_tilt_deg: float = param(65.0, units="deg")
    panel_side_drop_m: float = param(2.7, units="m")
    shadow_balloon_radius_m: float = param(
        8.69275, units="m", doc="envelope seen from the panels [B20]"
    )
    shadow_balloon_height_m: float = param(10.41603, units="m")
    shadow_factor: float = param(
        0.4392, ge=0.0, le=1.0, doc="panel output under the envelope's shadow [B20]"
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class BalloonPhysicsConfig(ConfigSection):
    """Integration, atmosphere, sun, film thermal properties and upwelling infrared.

    The atmosphere has the [US76] layer structure with BLE's tropical lower layers: transition
    heights ``atmosphere_heights_m``; the lapse rate of each layer (K/m) is
    ``(1 - alpha) * low + alpha * high`` with alpha ~ U(0, 1) re-drawn at every reset [B20].

    ``physics_variant="ble"`` (the default) flies BLE 1.0.1's simulator step for step: the
    ACS table read ratio-major, the power-safety layer resuming at sunrise + 30 min with
    sunrise found once at the episode's start position, the sun's elevation with NOAA's
    atmospheric refraction, each sub-step's volume and superpressure from the state before it
    and the ambient temperature one sub-step behind, no limit on the vertical step (BLE's
    +-9.5 Pa chatter around the float level), the start-up solve with the base envelope
    volume, and BLE's VAE winds looked up with x on the decoder's first axis.
    ``"corrected"`` keeps our better model of each; the system README says what each changes
    and by how much.
    """

    physics_variant: str = param(
        "ble",
        choices=("ble", "corrected"),
        doc='"ble": BLE 1.0.1 step for step; "corrected": our better model (see the doc)',
    )
    control_step_s: float = param(
        180.0, units="s", ge="sub_step_s", le=86400.0, doc="agent step 3 min [B20]"
    )
    sub_step_s: float = param(
        10.0, units="s", ge=0.01, le=600.0, doc="explicit Euler physics step [B20]"
    )
    atmosphere_heights_m: tuple[float, ...] = param(
        (-610.0, 17000.0, 21000.0, 32000.0, 47000.0, 51000.0, 71000.0, 85000.0),
        units="m",
        length=N_ATMOSPHERE_LAYERS + 1,
        increasing=True,
        doc="layer transitions [US76] with a tropical tropopause [B20]",
    )
    lapse_rates_low_k_per_m: tuple[float, ...] = param(
        (-0.007, 0.006, 0.001, 0.0028, 0.0, -0.0028, -0.002),
        units="K/m",
        length=N_ATMOSPHERE_LAYERS,
    )
    lapse_rates_high_k_per_m: tuple[float, ...] = param(
        (-0.0058, 0.005, 0.001, 0.0028, 0.0, -0.0028, -0.002),
        units="K/m",
        length=N_ATMOSPHERE_LAYERS,
    )
    atmosphere_base_temperature_k: float = param(
        300.0, units="K", ge=100.0, le=400.0, doc="at the lowest transition [B20]"
    )
    atmosphere_base_pressure_pa: float = param(
        108870.8213, units="Pa", ge=1e4, le=2e5, doc="at the lowest transition [B20]"
    )
    night_elevation_deg: float = param(
        -4.242,
        units="deg",
        ge=-20.0,
        le=10.0,
        doc="sun (refracted, as [B20] computes it) below the horizon seen from ~17.5 km [B20]",
    )
    solar_constant_w_per_m2: float = param(
        1366.0, units="W/m^2", ge=0.0, le=5000.0, doc="[NOAA], [B20]"
    )
    # PE01 film [B20]
    film_reflectivity: float = param(0.0291, ge=0.0, le=1.0)
    film_solar_absorptivity: float = param(0.01435, ge=0.0, le=1.0)
    film_ir_absorptivity_base: float = param(0.04587, ge=0.0, le=1.0)
    film_ir_absorptivity_per_k: float = param(0.000232, units="1/K")
    film_ir_reference_k: float = param(210.0, units="K")
    film_specific_heat_j_per_kg_k: float = param(1500.0, units="J/(kg K)", ge=1.0, le=1e5)
    solar_view_factor: float = param(
        0.25, ge=0.0, le=1.0, doc="a sphere seen from a distant point source [B20]"
    )
    earth_view_factor: float = param(
        0.4605, ge=0.0, le=1.0, doc="lower hemisphere facing a large sphere [B20]"
    )
    # Upwelling infrared (W/m^2), re-drawn at every reset:
    # scale * sigmoid(loc + spread * N(0, 1)) (a LogitNormal(loc, spread) draw times scale),
    # re-drawn while below min [B20].
    upwelling_ir_logit_loc: float = param(2.0)
    upwelling_ir_logit_spread: float = param(315.0, ge=0.0, le=1e4)
    upwelling_ir_scale_w_per_m2: float = param(315.0, units="W/m^2", ge=1.0, le=2000.0)
    upwelling_ir_min_w_per_m2: float = param(
        225.0, units="W/m^2", ge=0.0, le="upwelling_ir_scale_w_per_m2"
    )

    @cross_check
    def _control_step_is_whole_sub_steps(self) -> str | None:
        ratio = self.control_step_s / self.sub_step_s
        if abs(ratio - round(ratio)) > 1e-9:
            return (
                f"BalloonPhysicsConfig.control_step_s = {self.control_step_s} must be a multiple "
                f"of sub_step_s = {self.sub_step_s}"
            )
        return None

    @property
    def sub_steps(self) -> int:
        """Physics sub-steps per control step (18 by default)."""
        return round(self.control_step_s / self.sub_step_s)


@dataclasses.dataclass(frozen=True, kw_only=True)
class BalloonWindConfig(ConfigSection):
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

    BLE's winds (``source="ble-vae"``, :mod:`twinloop.sim.balloon.blevae`): the forecast is
    BLE's ERA5-trained VAE decoder (weights read from the installed
    ``balloon-learning-environment`` 1.0.1 wheel) at latents z ~ N(0, I_64) drawn at every
    reset, on its fixed grid (+-500 km at 50 km, 10 levels 5000-14000 Pa, 9 times over 48 h,
    clamped in space, reflected in time past 48 h); the truth adds BLE's noise: per component
    5 harmonics of 4-D simplex noise with BLE's weights and spacings, variance
    ``ble_noise_variance_m2_per_s2`` [B20]. The geometry fields above do not apply to it.
    """

    source: str = param("generative", choices=("generative", "grid", "ble-vae"))
    box_half_width_km: float = param(
        500.0,
        units="km",
        ge=1.0,
        le=20000.0,
        doc="field defined over +-500 km; positions clamp [B20]",
    )
    min_pressure_pa: float = param(
        5000.0, units="Pa", ge=100.0, le=1e5, doc="flight range 5000-14000 Pa [B20]"
    )
    max_pressure_pa: float = param(14000.0, units="Pa", gt="min_pressure_pa", le=1e5)
    horizon_h: float = param(
        48.0, units="h", ge=0.1, le=24.0 * 365, doc="the field evolves over 48 h, then holds [B20]"
    )
    n_wind_levels: int = param(10, ge=2, le=64, doc="native pressure levels [B20: 10 levels]")
    n_wind_times: int = param(9, ge=2, le=256, doc="time knots over the horizon [B20: 9 times]")
    n_wind_modes: int = param(8, ge=0, le=64, doc="plane waves of the stream function")
    mean_wind_sd_m_per_s: float = param(
        7.0, units="m/s", ge=0.0, le=100.0, doc="per component; tropical stratosphere 5-15 m/s"
    )
    wave_wind_sd_m_per_s: float = param(3.0, units="m/s", ge=0.0, le=100.0, doc="per component")
    wavelength_min_km: float = param(300.0, units="km", ge=1.0, le=1e5)
    wavelength_max_km: float = param(3000.0, units="km", ge="wavelength_min_km", le=1e5)
    level_correlation: float = param(
        0.6, ge=0.0, lt=1.0, doc="between neighbouring native levels (1000 Pa apart)"
    )
    time_correlation: float = param(
        0.8, ge=0.0, lt=1.0, doc="between neighbouring knots (6 h apart)"
    )
    forecast_error_rms_m_per_s: float = param(
        4.0, units="m/s", ge=0.0, le=100.0, doc="vector RMS of truth - forecast [B20: 3.5-4.5]"
    )
    error_level_correlation: float = param(0.5, ge=0.0, lt=1.0)
    error_time_correlation: float = param(0.6, ge=0.0, lt=1.0)
    ble_noise_variance_m2_per_s2: float = param(
        1.02,
        units="m^2/s^2",
        ge=0.0,
        le=1e4,
        doc='truth - forecast variance per component of source="ble-vae" [B20]',
    )
    forecast_path: str = param("")
    truth_path: str = param("")

    @cross_check
    def _grid_has_forecast(self) -> str | None:
        if self.source == "grid" and not self.forecast_path:
            return 'BalloonWindConfig: source="grid" needs forecast_path'
        return None


@dataclasses.dataclass(frozen=True, kw_only=True)
class BalloonEpisodeConfig(ConfigSection):
    """How an episode starts; every value below is re-drawn at every reset [B20].

    Station latitude ~ U(lat_min, lat_max) deg, longitude ~ U(lon_min, lon_max) deg; start time
    ~ U(start_date_min, start_date_max) (UTC, uniform in seconds; [B20] draws from 2011-01-01
    to 2014-12-31); start offset from the station: radius ``start_radius_km * Beta(a, b)`` km,
    angle ~ U(0, 2 pi); start pressure ~ U(min, p(50 000 ft)) Pa; ballonet air and gas
    temperature then give neutral buoyancy in thermal equilibrium. ``reset(options=...)`` can
    set any of these for one episode (see :mod:`twinloop.sim.balloon.start`).
    """

    station_latitude_min_deg: float = param(-10.0, units="deg", ge=-60.0, le=60.0)
    station_latitude_max_deg: float = param(
        10.0, units="deg", ge="station_latitude_min_deg", le=60.0
    )
    station_longitude_min_deg: float = param(-175.0, units="deg", ge=-180.0, le=180.0)
    station_longitude_max_deg: float = param(
        175.0, units="deg", ge="station_longitude_min_deg", le=180.0
    )
    start_date_min: str = param("2011-01-01", doc="earliest start, ISO 8601 UTC [B20]")
    start_date_max: str = param("2014-12-31", doc="latest start, ISO 8601 UTC [B20]")
    start_radius_km: float = param(200.0, units="km", ge=0.0, le=1000.0)
    start_radius_beta_a: float = param(1.2, ge=0.05, le=100.0)
    start_radius_beta_b: float = param(2.0, ge=0.05, le=100.0)
    start_pressure_min_pa: float = param(
        6500.0,
        units="Pa",
        ge=1000.0,
        le=50000.0,
        doc="just above the empty-ballonet float level [B20]",
    )

    @cross_check
    def _start_dates(self) -> str | None:
        try:
            lo = julian_date_utc(self.start_date_min)
            hi = julian_date_utc(self.start_date_max)
        except ValueError as exc:
            return f"BalloonEpisodeConfig: {exc}"
        if not JD_MIN_SUPPORTED <= lo <= hi <= JD_MAX_SUPPORTED:
            return (
                f"BalloonEpisodeConfig: start_date_min = {self.start_date_min!r} must not be "
                f"after start_date_max = {self.start_date_max!r}, both within {YEARS_SUPPORTED}"
            )
        return None


@dataclasses.dataclass(frozen=True, kw_only=True)
class FlightSafetyConfig(ConfigSection):
    """The flight controller's own safety layers, applied in order power, envelope, altitude.

    Power: at night, if the battery would fall below ``power_reserve_soc`` before sunrise plus
    ``power_sunrise_margin_s`` at the night load, DOWN becomes STAY until it is day and the state
    of charge is at least ``power_resume_soc``. Envelope: superpressure below ``critical`` or
    above max - ``critical`` forces UP; within ``buffer`` of a limit DOWN becomes STAY; control
    resumes ``hysteresis`` beyond the buffer. Altitude: below ``min_altitude_ft`` forces UP;
    within ``altitude_buffer_ft`` above it DOWN becomes STAY, with ``altitude_hysteresis_ft``.
    """

    power_safety: bool = param(True)
    power_reserve_soc: float = param(0.025, ge=0.0, le=1.0)
    power_resume_soc: float = param(0.05, ge="power_reserve_soc", le=1.0)
    power_sunrise_margin_s: float = param(1800.0, units="s", ge=0.0, le=86400.0)
    envelope_critical_pa: float = param(150.0, units="Pa", ge=0.0, le=10000.0)
    envelope_buffer_pa: float = param(250.0, units="Pa", ge="envelope_critical_pa", le=10000.0)
    envelope_hysteresis_pa: float = param(50.0, units="Pa", ge=0.0, le=10000.0)
    min_altitude_ft: float = param(50000.0, units="ft", ge=0.0, le=200000.0)
    altitude_buffer_ft: float = param(500.0, units="ft", ge=0.0, le=100000.0)
    altitude_hysteresis_ft: float = param(500.0, units="ft", ge=0.0, le=100000.0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class BalloonTaskConfig(ConfigSection):
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

    max_steps: int = param(960, ge=1, le=10_000_000, doc="48 h of 3-min steps [B20]")
    station_radius_km: float = param(50.0, units="km", gt=0.0, le=10000.0, doc="[B20]")
    reward_far: float = param(0.4, ge=0.0, le=1.0, doc="[B20]")
    reward_half_distance_km: float = param(100.0, units="km", gt=0.0, le=1e5, doc="[B20]")
    power_penalty_base: float = param(0.95, ge=0.0, le=1.0, doc="[B20]")
    power_penalty_slope: float = param(0.3, ge=0.0, le=1.0, doc="[B20]")
    reward_station: float = param(1.0, ge=-1e6, le=1e6, doc='scale of the "station" term')
    reward_power: float = param(1.0, ge=-1e6, le=1e6, doc='scale of the "power" term')
    n_column_levels: int = param(
        181, ge=2, le=MAX_COLUMN_LEVELS, doc="50 Pa spacing over 5000-14000 Pa [B20]"
    )
    error_length_km: float = param(
        357.0, units="km", gt=0.0, le=1e5, doc="Matern-1/2 length scales [B20]"
    )
    error_length_pa: float = param(326.0, units="Pa", gt=0.0, le=1e6)
    error_length_s: float = param(34560.0, units="s", gt=0.0, le=1e8)
    error_prior_sd_m_per_s: float = param(
        2.83, units="m/s", gt=0.0, le=100.0, doc="per component; 4 m/s vector RMS / sqrt(2)"
    )
    measurement_noise_sd_m_per_s: float = param(
        0.5, units="m/s", gt=0.0, le=100.0, doc="in-situ wind from GPS drift"
    )
    speed_scale_m_per_s: float = param(
        30.0, units="m/s", gt=0.0, le=1000.0, doc="speed feature = s / (s + scale) [B20]"
    )
    max_distance_km: float = param(
        2000.0, units="km", ge=1.0, le=1e5, doc="bound of the distance feature"
    )
    region_radius_km: float = param(
        500.0,
        units="km",
        ge="station_radius_km",
        le=1e5,
        doc="farther from the station ends the episode (the wind box)",
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class BalloonConfig(ConfigSection):
    """The whole balloon system: vehicle, physics, wind, episode start, safety layers, task."""

    vehicle: BalloonVehicleConfig = dataclasses.field(default_factory=BalloonVehicleConfig)
    physics: BalloonPhysicsConfig = dataclasses.field(default_factory=BalloonPhysicsConfig)
    wind: BalloonWindConfig = dataclasses.field(default_factory=BalloonWindConfig)
    episode: BalloonEpisodeConfig = dataclasses.field(default_factory=BalloonEpisodeConfig)
    flight_safety: FlightSafetyConfig = dataclasses.field(default_factory=FlightSafetyConfig)
    task: BalloonTaskConfig = dataclasses.field(default_factory=BalloonTaskConfig)
    safety: SafetyConfig = dataclasses.field(default_factory=SafetyConfig)

    @cross_check
    def _start_inside_wind_field(self) -> str | None:
        if self.episode.start_pressure_min_pa < self.wind.min_pressure_pa:
            return (
                f"BalloonEpisodeConfig.start_pressure_min_pa = "
                f"{self.episode.start_pressure_min_pa} is below the wind field's "
                f"min_pressure_pa = {self.wind.min_pressure_pa}"
            )
        return None

    @property
    def column_levels_pa(self) -> tuple[float, ...]:
        """Pressure levels (Pa) of the observation's wind column, low pressure first."""
        n = self.task.n_column_levels
        lo, hi = self.wind.min_pressure_pa, self.wind.max_pressure_pa
        return tuple(lo + (hi - lo) * k / (n - 1) for k in range(n))
