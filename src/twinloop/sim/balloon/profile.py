"""The prior of a balloon's hidden physics around the simulator's nominal vehicle and winds.

``twinloop serve balloon --profile random:SEED`` draws these (see :mod:`twinloop.core.profile`):
envelope, lift gas and drag, the altitude-control system (vent and compressor), solar panels,
loads and battery, and the forecast error of the winds. ``log`` priors multiply the nominal
value (every entry of a table alike) by ``m``, ``ln m ~ N(0, sd^2)`` truncated to
``[low, high]``. [B20] gives one vehicle, not a spread; where no range is published the
spread is a stated guess at flight-to-flight variation. Tags as in
:mod:`twinloop.sim.balloon.config`.
"""

from __future__ import annotations

from twinloop.core.profile import Prior

#: The balloon prior, drawn in this order.
PRIORS: tuple[Prior, ...] = (
    # envelope, lift gas, drag
    Prior(
        "vehicle.envelope_volume_base_m3",
        "log",
        0.02,
        0.95,
        1.05,
        "[B20] 1804 m^3; film cut and seam tolerance, a few percent (guess)",
    ),
    Prior(
        "vehicle.envelope_dv_dp_m3_per_pa",
        "log",
        0.1,
        0.8,
        1.25,
        "[B20] 0.0199 m^3/Pa; film stiffness varies with temperature and age (guess)",
    ),
    Prior(
        "vehicle.envelope_mass_kg",
        "log",
        0.03,
        0.94,
        1.06,
        "[B20] 68.5 kg; fabrication tolerance (guess)",
    ),
    Prior(
        "vehicle.helium_mol",
        "log",
        0.02,
        0.95,
        1.05,
        "[B20] 6830 mol; fill metering tolerance (guess)",
    ),
    Prior(
        "vehicle.drag_coefficient",
        "log",
        0.2,
        0.7,
        1.4,
        "[B20] 0.25 on V^(2/3): a sphere's Cd is 0.1-0.5 over the Reynolds numbers of ascent",
    ),
    # altitude-control system
    Prior(
        "vehicle.valve_discharge_coefficient",
        "log",
        0.1,
        0.8,
        1.2,
        "[B20] measured orifice Cd 0.62; sharp-edged orifices 0.6-0.7",
    ),
    Prior(
        "vehicle.acs_efficiency_kg_per_wh",
        "log",
        0.15,
        0.7,
        1.3,
        "[B20] compressor table; compressors wear and vary unit to unit (guess, whole table)",
    ),
    # power
    Prior(
        "vehicle.panel_peak_w",
        "log",
        0.07,
        0.8,
        1.15,
        "[B20] 210 W per panel: solar efficiency, soiling and degradation (guess)",
    ),
    Prior(
        "vehicle.night_load_w",
        "log",
        0.08,
        0.8,
        1.25,
        "[B20] 183.7 W at night; payload duty cycle and heater use (guess)",
    ),
    Prior(
        "vehicle.day_load_w",
        "log",
        0.08,
        0.8,
        1.25,
        "[B20] 120.4 W by day (guess, as the night load)",
    ),
    Prior(
        "vehicle.battery_capacity_wh",
        "log",
        0.07,
        0.8,
        1.05,
        "[B20] 3058.56 Wh: battery efficiency; cold and ageing cells lose capacity (guess)",
    ),
    # winds
    Prior(
        "wind.forecast_error_rms_m_per_s",
        "log",
        0.1,
        0.875,
        1.125,
        "real 12-h forecast errors 3.5-4.5 m/s [B20] around the nominal 4 m/s",
    ),
    Prior(
        "wind.ble_noise_variance_m2_per_s2",
        "log",
        0.3,
        0.5,
        2.0,
        "BLE's truth noise (source='ble-vae') is ~1 m/s; real errors are larger [B20] (guess)",
    ),
)
