"""Reference figures from BLE 1.0.1 for the balloon parity tests (run under BLE's Python 3.10).

BLE does not import on Python >= 3.11, so this script runs in a separate venv that has
``balloon-learning-environment==1.0.1`` and its dependencies (recipe: ``benchmarks/README.md``,
"Balloon") and writes what BLE computes, as data, to an ``.npz`` file::

    /work/ble-venv/bin/python tests/sim/balloon/ble_reference.py OUT.npz

``tests/sim/balloon/data/ble_reference.npz`` was written this way once; the fast tests read
it (no BLE needed) and the slow parity test writes a fresh one and compares. Nothing of BLE's
code is copied: the script imports BLE and records its outputs.

What it records (keys of the file):

* ``flight_<case>_*`` for the wind cases ``zero``, ``constant`` and ``sheared``: one 48 h
  flight of the command sequence :data:`COMMANDS` from the start :data:`START`, BLE's
  ``Balloon.simulate_step`` with the wind at the balloon sampled once per 3-min step (as BLE's
  arena does). Per step: pressure, altitude, battery charge, cumulated ACS energy, position,
  superpressure, gas temperature, ballonet air and the command BLE applied after its safety
  layers; ``flight_<case>_init`` is the state after BLE's stable initialisation.
* ``sun_*``: BLE's refracted solar elevation and its next sunrise/sunset search (3-min grid)
  at random places and times.
* ``acs_*``: BLE's compressor power and efficiency on a grid of pressure ratios and powers.
* ``vae_*``: BLE's wind decoder on fixed latents: values at sampled grid nodes, and its
  forecast lookup at off-grid points (clamping and the time "boomerang" past 48 h).
* ``noise_*``: statistics of BLE's simplex wind noise (sd per component, correlation at lags).
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import warnings

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
warnings.simplefilter("ignore")

UTC = dt.timezone.utc  # noqa: UP017 (this script runs on Python 3.10)

#: The start of every parity flight (our ``reset(options={"backend": START})`` spelling).
START = {
    "time_utc": "2012-03-20T00:00:00",
    "station_latitude_deg": 5.0,
    "station_longitude_deg": -120.0,
    "position_m": (30_000.0, -20_000.0),
    "pressure_pa": 7500.0,
    "battery_soc": 0.5,
    "lapse_rate_mix": 0.5,
    "upwelling_ir_w_per_m2": 250.0,
}

#: Blocks of (command, steps): 0 DOWN, 1 STAY, 2 UP; 960 steps = 48 h, two nights.
BLOCKS = (
    (0, 40), (1, 30), (2, 20), (1, 20), (0, 100), (1, 40), (2, 40), (0, 150),
    (1, 60), (2, 30), (0, 120), (1, 80), (2, 50), (0, 100), (1, 80),
)  # fmt: skip
COMMANDS = np.concatenate([np.full(n, c, dtype=np.int8) for c, n in BLOCKS])

#: Per-level wind of the "sheared" case: levels (Pa), u and v (m/s), linear in pressure and
#: constant beyond the end levels.
SHEAR_LEVELS_PA = (5000.0, 8000.0, 11000.0, 14000.0)
SHEAR_U = (12.0, 4.0, -6.0, -10.0)
SHEAR_V = (-3.0, 6.0, 2.0, -5.0)
WIND_CASES = {
    "zero": ((5000.0,), (0.0,), (0.0,)),
    "constant": ((5000.0,), (5.0,), (-3.0,)),
    "sheared": (SHEAR_LEVELS_PA, SHEAR_U, SHEAR_V),
}


def _fly(case: str) -> dict[str, np.ndarray]:
    import jax
    import s2sphere as s2
    from balloon_learning_environment.env import wind_field
    from balloon_learning_environment.env.balloon import balloon, control, stable_init
    from balloon_learning_environment.env.balloon import standard_atmosphere as sa
    from balloon_learning_environment.utils import units

    levels, us, vs = (np.asarray(a, dtype=np.float64) for a in WIND_CASES[case])
    atmosphere = sa.Atmosphere(jax.random.PRNGKey(0))
    a = START["lapse_rate_mix"]
    atmosphere._lapse_rates = (1 - a) * atmosphere._LAPSE_RATES_LOW + a * (
        atmosphere._LAPSE_RATES_HIGH
    )
    atmosphere._initialize_temperature_transitions()
    atmosphere._initialize_pressure_transitions()
    t0 = dt.datetime.fromisoformat(START["time_utc"]).replace(tzinfo=UTC)
    x0, y0 = START["position_m"]
    state = balloon.BalloonState(
        center_latlng=s2.LatLng.from_degrees(
            START["station_latitude_deg"], START["station_longitude_deg"]
        ),
        x=units.Distance(m=x0),
        y=units.Distance(m=y0),
        pressure=START["pressure_pa"],
        date_time=t0,
        upwelling_infrared=START["upwelling_ir_w_per_m2"],
        battery_charge=units.Energy(watt_hours=START["battery_soc"] * 3058.56),
    )
    stable_init.cold_start_to_stable_params(state, atmosphere)
    init = np.array(
        [
            state.mols_air,
            state.internal_temperature,
            state.envelope_volume,
            state.superpressure,
            state.ambient_temperature,
        ]
    )
    b = balloon.Balloon(state)
    record = {"acs_wh": 0.0, "cmd": -1}
    inner = balloon.Balloon._simulate_step_internal

    def recording(st, wind, atm, action, stride):
        changes = inner(st, wind, atm, action, stride)
        record["acs_wh"] += changes["acs_power"].watts * stride.total_seconds() / 3600.0
        record["cmd"] = int(action.value)
        return changes

    balloon.Balloon._simulate_step_internal = staticmethod(recording)
    n = len(COMMANDS)
    names = ("pressure_pa", "altitude_m", "battery_wh", "acs_wh", "x_m", "y_m")
    names += ("superpressure_pa", "gas_temperature_k", "ballonet_air_mol")
    out = {k: np.full(n, np.nan) for k in names}
    applied = np.full(n, -1, dtype=np.int8)
    try:
        for k, c in enumerate(COMMANDS):
            p = state.pressure
            wind = wind_field.WindVector(
                units.Velocity(mps=float(np.interp(p, levels, us))),
                units.Velocity(mps=float(np.interp(p, levels, vs))),
            )
            b.simulate_step(
                wind, atmosphere, control.AltitudeControlCommand(int(c)), dt.timedelta(minutes=3)
            )
            out["pressure_pa"][k] = state.pressure
            out["altitude_m"][k] = atmosphere.at_pressure(state.pressure).height.meters
            out["battery_wh"][k] = state.battery_charge.watt_hours
            out["acs_wh"][k] = record["acs_wh"]
            out["x_m"][k] = state.x.meters
            out["y_m"][k] = state.y.meters
            out["superpressure_pa"][k] = state.superpressure
            out["gas_temperature_k"][k] = state.internal_temperature
            out["ballonet_air_mol"][k] = state.mols_air
            applied[k] = record["cmd"]
            if state.status != balloon.BalloonStatus.OK:
                break
    finally:
        balloon.Balloon._simulate_step_internal = staticmethod(inner)
    res = {f"flight_{case}_{k}": v.astype(np.float32) for k, v in out.items()}
    res[f"flight_{case}_applied"] = applied
    res[f"flight_{case}_init"] = init
    return res


def _sun(n: int = 60) -> dict[str, np.ndarray]:
    import s2sphere as s2
    from balloon_learning_environment.env.balloon import solar

    rng = np.random.default_rng(1401)
    lat = np.concatenate([rng.uniform(-10, 10, n - 10), rng.uniform(-55, 55, 10)])
    lon = rng.uniform(-175, 175, n)
    t_unix = rng.integers(1293840000, 1420070400, n)  # 2011-01-01 .. 2015-01-01 UTC
    el = np.zeros(n)
    sunrise = np.zeros(n)
    sunset = np.zeros(n)
    for k in range(n):
        ll = s2.LatLng.from_degrees(float(lat[k]), float(lon[k]))
        t = dt.datetime.fromtimestamp(int(t_unix[k]), tz=UTC)
        el[k] = solar.solar_calculator(ll, t)[0]
        rise, sset = solar.get_next_sunrise_sunset(ll, t)
        sunrise[k] = (rise - t).total_seconds()
        sunset[k] = (sset - t).total_seconds()
    # elevations near the horizon, where refraction is largest: one place, every 2 min
    ll = s2.LatLng.from_degrees(3.0, 40.0)
    t0 = dt.datetime(2013, 7, 1, 1, 0, tzinfo=UTC)
    near_t = np.arange(0, 3 * 3600, 120)
    near_el = np.array(
        [solar.solar_calculator(ll, t0 + dt.timedelta(seconds=int(s)))[0] for s in near_t]
    )
    return {
        "sun_lat": lat,
        "sun_lon": lon,
        "sun_unix": t_unix.astype(np.float64),
        "sun_el": el,
        "sun_sunrise_s": sunrise,
        "sun_sunset_s": sunset,
        "sun_near_unix": t0.timestamp() + near_t.astype(np.float64),
        "sun_near_el": near_el,
    }


def _acs() -> dict[str, np.ndarray]:
    from balloon_learning_environment.env.balloon import acs
    from balloon_learning_environment.utils import units

    ratios = np.linspace(0.98, 1.45, 48)
    powers = np.array([80.0, 100.0, 150.0, 200.0, 266.0, 300.0, 350.0, 400.0, 450.0])
    eff = np.array(
        [[acs.get_fan_efficiency(r, units.Power(watts=w)) for w in powers] for r in ratios]
    )
    power = np.array([acs.get_most_efficient_power(r).watts for r in ratios])
    return {"acs_ratios": ratios, "acs_powers": powers, "acs_eff": eff, "acs_power": power}


def _vae() -> dict[str, np.ndarray]:
    import datetime as _dt

    from balloon_learning_environment.env import generative_wind_field
    from balloon_learning_environment.generative import vae
    from balloon_learning_environment.utils import units

    rng = np.random.default_rng(1402)
    z = rng.standard_normal((2, 64)).astype(np.float32)
    wf = generative_wind_field.GenerativeWindField()
    fields = [np.asarray(vae.Decoder().apply(wf.params, zk)) for zk in z]
    shape = fields[0].shape
    idx = np.stack([rng.integers(0, s, 300) for s in shape], axis=1)
    values = np.stack([f[tuple(idx.T)] for f in fields])
    wf.field = fields[0]
    pts = np.column_stack(
        [
            rng.uniform(-650, 650, 40),  # km (beyond +-500: clamped)
            rng.uniform(-650, 650, 40),
            rng.uniform(4000, 15000, 40),  # Pa (beyond 5000-14000: clamped)
            rng.uniform(0, 130, 40),  # hours (beyond 48: the "boomerang")
        ]
    )
    fc = np.array(
        [
            [
                float(w.meters_per_second)
                for w in wf.get_forecast(
                    units.Distance(km=p[0]),
                    units.Distance(km=p[1]),
                    float(p[2]),
                    _dt.timedelta(hours=float(p[3])),
                )
            ]
            for p in pts
        ]
    )
    return {
        "vae_z": z,
        "vae_idx": idx.astype(np.int16),
        "vae_values": values,
        "vae_points": pts,
        "vae_forecast": fc,
        "vae_shape": np.array(shape),
    }


def _noise_at(noise: object, where: tuple[float, float, float, float]) -> tuple[float, float]:
    """BLE's noise (u, v) in m/s at (x km, y km, p Pa, t h)."""
    from balloon_learning_environment.utils import units

    x, y, p, t = where
    w = noise.get_wind_noise(  # type: ignore[attr-defined]
        units.Distance(km=x), units.Distance(km=y), p, dt.timedelta(hours=t)
    )
    return float(w.u.meters_per_second), float(w.v.meters_per_second)


def _noise(n_keys: int = 120, n_points: int = 12) -> dict[str, np.ndarray]:
    import jax
    from balloon_learning_environment.env import wind_field

    lags = {  # (dx km, dy km, dp Pa, dt h)
        "x50km": (50.0, 0.0, 0.0, 0.0),
        "x200km": (200.0, 0.0, 0.0, 0.0),
        "y200km": (0.0, 200.0, 0.0, 0.0),
        "p300pa": (0.0, 0.0, 300.0, 0.0),
        "p1000pa": (0.0, 0.0, 1000.0, 0.0),
        "t3h": (0.0, 0.0, 0.0, 3.0),
        "t12h": (0.0, 0.0, 0.0, 12.0),
    }
    rng = np.random.default_rng(1403)
    base = []
    lagged = {k: [] for k in lags}
    for key in range(n_keys):
        noise = wind_field.SimplexWindNoise()
        noise.reset_wind_noise(jax.random.PRNGKey(key), None)
        for _ in range(n_points):
            x, y = rng.uniform(-400, 400, 2)
            p, t = rng.uniform(5000, 13000), rng.uniform(0, 36)

            base.append(_noise_at(noise, (x, y, p, t)))
            for name, (dx, dy, dp, dh) in lags.items():
                lagged[name].append(_noise_at(noise, (x + dx, y + dy, p + dp, t + dh)))
    b = np.array(base)
    out = {"noise_sd": b.std(axis=0), "noise_lag_names": np.array(list(lags))}
    out["noise_lags"] = np.array(list(lags.values()))
    out["noise_corr"] = np.array(
        [
            [np.corrcoef(b[:, c], np.array(lagged[name])[:, c])[0, 1] for c in range(2)]
            for name in lags
        ]
    )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="the .npz file to write")
    parser.add_argument(
        "--parts", nargs="+", default=["flight", "sun", "acs", "vae", "noise"], help="what to run"
    )
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    data: dict[str, np.ndarray] = {"commands": COMMANDS}
    if "flight" in args.parts:
        for case in WIND_CASES:
            data.update(_fly(case))
    if "sun" in args.parts:
        data.update(_sun())
    if "acs" in args.parts:
        data.update(_acs())
    if "vae" in args.parts:
        data.update(_vae())
    if "noise" in args.parts:
        data.update(_noise())
    np.savez_compressed(args.out, **data)
    print(f"wrote {args.out}: {len(data)} arrays")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
