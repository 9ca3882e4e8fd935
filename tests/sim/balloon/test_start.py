"""A start set through ``reset(options={"backend": {...}})`` (:mod:`twinloop.sim.balloon.start`).

Each key sets what it names and nothing else (the other values stay as the seed draws them),
bad values raise errors that name the key, the value and the limit, and the single and the
vector env start the same balloon from the same options (issue 14).
"""

from __future__ import annotations

import datetime

import numpy as np
import pytest

import twinloop
from twinloop.core.config import override
from twinloop.sim.balloon import kernel as K
from twinloop.sim.balloon import wind as W
from twinloop.sim.balloon.config import BalloonConfig, julian_date_utc
from twinloop.sim.balloon.start import start_rows

ENV_ID = "twinloop/BalloonStationKeeping-v0"
CFG = BalloonConfig()


def _single(options: dict | None, seed: int = 4) -> np.ndarray:
    """Float state of a single env after ``reset(seed, options={"backend": options})``."""
    env = twinloop.make(ENV_ID)
    env.reset(seed=seed, options={"backend": options} if options is not None else None)
    return env.unwrapped.backend.state["f"][0].copy()


@pytest.fixture(scope="module")
def drawn() -> np.ndarray:
    return _single(None)


# --- each key -------------------------------------------------------------------------------
def test_time_sets_the_start_on_any_date(drawn: np.ndarray) -> None:
    """Any date, not only 1 January; an aware datetime is read in UTC."""
    f = _single({"time_utc": "1999-07-04T05:06:07"})
    assert f[K.F_JD0] == pytest.approx(2451363.712581, abs=1e-6)  # 1999-07-04 05:06:07 UTC
    tz = datetime.timezone(datetime.timedelta(hours=2))
    f2 = _single({"time_utc": datetime.datetime(1999, 7, 4, 7, 6, 7, tzinfo=tz)})
    assert f2[K.F_JD0] == f[K.F_JD0]
    assert f[K.F_LAT0] == drawn[K.F_LAT0]  # the rest as drawn
    assert f[K.F_P] == drawn[K.F_P]


def test_place_position_pressure_charge_atmosphere_and_ir(drawn: np.ndarray) -> None:
    opts = {
        "station_latitude_deg": -7.5,
        "station_longitude_deg": 101.0,
        "position_m": (12_000.0, -34_000.0),
        "pressure_pa": 9100.0,
        "battery_soc": 0.42,
        "lapse_rate_mix": 0.25,
        "upwelling_ir_w_per_m2": 280.0,
    }
    f = _single(opts)
    assert (f[K.F_LAT0], f[K.F_LON0]) == (-7.5, 101.0)
    assert (f[K.F_X], f[K.F_Y]) == (12_000.0, -34_000.0)
    assert f[K.F_P] == 9100.0
    assert f[K.F_BATT] == pytest.approx(0.42 * CFG.vehicle.battery_capacity_wh, rel=1e-12)
    assert f[K.F_ALPHA] == 0.25
    ph = CFG.physics
    lapse0 = 0.75 * ph.lapse_rates_low_k_per_m[0] + 0.25 * ph.lapse_rates_high_k_per_m[0]
    assert f[K.F_LAPSE] == pytest.approx(lapse0, rel=1e-12)
    assert f[K.F_IR] == 280.0
    assert f[K.F_JD0] == drawn[K.F_JD0]  # time as drawn


def test_envelope_state_is_taken_as_given_or_solved() -> None:
    """Given air and gas temperature are kept; without them the start-up solve runs."""
    solved = _single({"pressure_pa": 8000.0})
    f = _single({"pressure_pa": 8000.0, "ballonet_air_mol": 1500.0, "gas_temperature_k": 215.0})
    assert (f[K.F_N_AIR], f[K.F_T_GAS]) == (1500.0, 215.0)
    assert solved[K.F_N_AIR] != 1500.0
    vol, sp = K.envelope(K.physics_params(CFG)[K.P_N_HE] + 1500.0, 215.0, 8000.0,
                         K.physics_params(CFG))  # fmt: skip
    assert (f[K.F_VOL], f[K.F_SP]) == (vol, sp)


def test_constant_wind_carries_the_balloon() -> None:
    """A constant (u, v) wind moves the balloon u dt, v dt per 180 s step at any level."""
    env = twinloop.make(ENV_ID)
    env.reset(seed=1, options={"backend": {"wind_m_per_s": (7.0, -2.5), "position_m": (0, 0)}})
    env.step(K.STAY)
    f = env.unwrapped.backend.state["f"][0]
    assert f[K.F_X] == pytest.approx(7.0 * 180.0, rel=1e-12)
    assert f[K.F_Y] == pytest.approx(-2.5 * 180.0, rel=1e-12)
    assert (f[K.F_WFU], f[K.F_WFV]) == (7.0, -2.5)  # the set wind is also the forecast


def test_per_level_wind_is_linear_in_pressure_and_constant_beyond() -> None:
    levels, u, v = [6000.0, 9000.0, 12000.0], [10.0, 0.0, -5.0], [1.0, 2.0, 3.0]
    opts = {"wind_levels_pa": levels, "wind_u_m_per_s": u, "wind_v_m_per_s": v}
    rows = start_rows(opts, CFG, 1)
    row = rows[0, K.S_TABLE :]
    for p in (5000.0, 6000.0, 7500.0, 10_000.0, 12000.0, 13500.0):
        got = W.table_wind(row, p)
        assert got == pytest.approx((np.interp(p, levels, u), np.interp(p, levels, v)))
    env = twinloop.make(ENV_ID)
    env.reset(seed=2, options={"backend": {**opts, "pressure_pa": 7500.0, "position_m": (0, 0)}})
    env.step(K.STAY)
    f = env.unwrapped.backend.state["f"][0]
    assert f[K.F_X] == pytest.approx(np.interp(7500.0, levels, u) * 180.0, rel=1e-9)


# --- errors ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"altitude_m": 1.0}, r"unknown reset option\(s\) \['altitude_m'\]"),
        ({"pressure_pa": 60000.0}, r"'pressure_pa' = 60000 is outside \[1000, 50000\] Pa"),
        ({"battery_soc": 0.0}, r"'battery_soc' = 0 is outside \(0, 1\]"),
        ({"station_latitude_deg": 75.0}, r"'station_latitude_deg' = 75 is outside \[-60, 60\]"),
        ({"lapse_rate_mix": float("nan")}, r"'lapse_rate_mix' must be finite"),
        ({"position_m": (1.0, 2.0, 3.0)}, r"'position_m' has shape \(3,\)"),
        ({"position_m": (2e6, 0.0)}, r"'position_m' must be within \+-1e\+06 m"),
        ({"ballonet_air_mol": 100.0}, r"'ballonet_air_mol' and 'gas_temperature_k'"),
        ({"time_utc": "yesterday"}, r"'time_utc' 'yesterday' is not an ISO 8601"),
        ({"time_utc": "2300-01-01"}, r"'time_utc' = '2300-01-01' is outside 1800-2200"),
        ({"time_utc": 5}, r"'time_utc' must be an ISO 8601 string or datetime, got 5"),
        ({"wind_m_per_s": (300.0, 0.0)}, r"'wind_m_per_s' must be within \+-200 m/s"),
        (
            {"wind_m_per_s": (1, 1), "wind_levels_pa": [7000.0]},
            r"'wind_m_per_s' .* exclude each other",
        ),
        ({"wind_levels_pa": [7000.0]}, r"missing \['wind_u_m_per_s', 'wind_v_m_per_s'\]"),
        (
            {
                "wind_levels_pa": [7000.0, 6000.0],
                "wind_u_m_per_s": [0, 0],
                "wind_v_m_per_s": [0, 0],
            },
            r"'wind_levels_pa' must increase strictly",
        ),
    ],
)
def test_bad_starts_raise_precise_errors(options: dict, match: str) -> None:
    env = twinloop.make(ENV_ID)
    with pytest.raises(ValueError, match=match):
        env.reset(seed=0, options={"backend": options})


def test_a_start_that_is_already_slack_is_refused() -> None:
    """Far too little gas heat for the envelope: zero pressure at once names the state."""
    env = twinloop.make(ENV_ID)
    opts = {"pressure_pa": 12000.0, "ballonet_air_mol": 0.0, "gas_temperature_k": 160.0}
    with pytest.raises(ValueError, match=r"already 'zeropressure' .* superpressure 0.0 Pa"):
        env.reset(seed=0, options={"backend": opts})


def test_gridded_winds_fix_the_place() -> None:
    """The station of a gridded wind is the grid's (start_rows needs no file to say so)."""
    cfg = override(CFG, **{"wind.source": "grid", "wind.forecast_path": "winds.nc"})
    with pytest.raises(ValueError, match=r"cannot be set with gridded winds"):
        start_rows({"station_latitude_deg": 1.0}, cfg, 1)


# --- single and vector env agree ---------------------------------------------------------------
def test_single_and_vector_envs_start_and_fly_alike() -> None:
    """Per-env arrays in the vector env = the same scalars in N single envs, step for step."""
    n = 3
    per_env = {
        "time_utc": ["2012-05-01T03:00:00", "2013-11-20T18:30:00", "2011-02-02T12:00:00"],
        "pressure_pa": np.array([7000.0, 8500.0, 10_000.0]),
        "position_m": np.array([[0.0, 0.0], [50e3, -20e3], [-80e3, 10e3]]),
        "battery_soc": 0.8,  # one value for all
        "wind_m_per_s": np.array([[3.0, 1.0], [-4.0, 2.0], [0.0, -6.0]]),
    }
    venv = twinloop.make_vec(ENV_ID, n)
    obs_v, _ = venv.reset(seed=10, options={"backend": per_env})
    singles, obs_s = [], []
    for i in range(n):
        opts = {k: (v if np.ndim(v) == 0 else v[i]) for k, v in per_env.items()}
        env = twinloop.make(ENV_ID)
        o, _ = env.reset(seed=10 + i, options={"backend": opts})
        singles.append(env)
        obs_s.append(o)
    np.testing.assert_array_equal(obs_v, np.stack(obs_s))
    actions = np.array([K.DOWN, K.UP, K.STAY])
    for _ in range(5):
        obs_v, r_v, *_ = venv.step(actions)
        for i, env in enumerate(singles):
            o, r, *_ = env.step(int(actions[i]))
            np.testing.assert_array_equal(obs_v[i], o)
            assert r_v[i] == r
    jd = [julian_date_utc(t) for t in per_env["time_utc"]]
    np.testing.assert_array_equal(venv.unwrapped.state.f[:, K.F_JD0], jd)


def test_vector_env_start_applies_to_the_reset_it_is_given_only() -> None:
    """A later reset without options draws afresh, in the masked rows only."""
    venv = twinloop.make_vec(ENV_ID, 2)
    venv.reset(seed=0, options={"backend": {"pressure_pa": 9000.0}})
    f = venv.unwrapped.state.f
    assert (f[:, K.F_P] == 9000.0).all()
    venv.reset(seed=[None, 5], options={"reset_mask": np.array([False, True])})
    assert f[0, K.F_P] == 9000.0  # not reset
    assert f[1, K.F_P] != 9000.0  # drawn
