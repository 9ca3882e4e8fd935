"""A start set by hand: ``reset(options={"backend": {...}})`` for replay, sysid and physics checks.

The single env (``TwinEnv`` hands ``options["backend"]`` to the backend) and the vector env
read the same keys, check them here and pass one float row per env to the same kernel
(:func:`~.kernel.reset_episode`); what is not set is drawn as usual, from the same stream
draws, so setting one value leaves the others as the seed gives them. The start applies to
the episode it begins only: a vector env's automatic resets draw afresh.

=========================  ==============================================================
key                        value (units)
=========================  ==============================================================
``time_utc``               start, ISO 8601 string or ``datetime`` (naive = UTC); any date
                           in 1800-2200
``station_latitude_deg``   station latitude, -60..60 (day and night every day)
``station_longitude_deg``  station longitude, -180..180
``position_m``             (east, north) of the balloon from the station, each within 1000 km
``pressure_pa``            ambient pressure, 1000..50000 Pa
``ballonet_air_mol``       ballonet air 0..1e5 mol and gas temperature 150..350 K: the
``gas_temperature_k``      envelope state (both or neither); without them the start solves
                           neutral buoyancy in thermal equilibrium
``battery_soc``            state of charge, (0, 1]
``lapse_rate_mix``         alpha of the atmosphere's lapse rates, 0..1
``upwelling_ir_w_per_m2``  upwelling infrared, (0, 1000] W/m^2
``wind_m_per_s``           a constant (u, v) wind, |u|, |v| <= 200 m/s, or
``wind_levels_pa``         a per-level wind: up to 64 increasing pressure levels (Pa) and
``wind_u_m_per_s``         u and v on them (m/s); linear in pressure between levels and
``wind_v_m_per_s``         constant beyond the end ones
=========================  ==============================================================

A set wind is both the truth and the forecast for the episode, and replaces the wind source.
With gridded winds (``source="grid"``) the place is the grid's and ``time_utc`` chooses the
start within the file. In a vector env each scalar may also be an array of ``n_envs`` values
and each vector an array with a leading ``n_envs`` axis.
"""

from __future__ import annotations

import datetime
from typing import Any

import numpy as np

from twinloop.sim.balloon import kernel as K
from twinloop.sim.balloon import wind as W
from twinloop.sim.balloon.config import (
    JD_MAX_SUPPORTED,
    JD_MIN_SUPPORTED,
    YEARS_SUPPORTED,
    BalloonConfig,
    julian_date_utc,
)

#: Scalar keys: (start-row column, low, high, low inclusive, units).
_SCALARS = {
    "station_latitude_deg": (K.S_LAT, -60.0, 60.0, True, "deg"),
    "station_longitude_deg": (K.S_LON, -180.0, 180.0, True, "deg"),
    "pressure_pa": (K.S_P, 1000.0, 50000.0, True, "Pa"),
    "ballonet_air_mol": (K.S_N_AIR, 0.0, 1e5, True, "mol"),
    "gas_temperature_k": (K.S_T_GAS, 150.0, 350.0, True, "K"),
    "battery_soc": (K.S_SOC, 0.0, 1.0, False, ""),
    "lapse_rate_mix": (K.S_ALPHA, 0.0, 1.0, True, ""),
    "upwelling_ir_w_per_m2": (K.S_IR, 0.0, 1000.0, False, "W/m^2"),
}
_WIND_TABLE = ("wind_levels_pa", "wind_u_m_per_s", "wind_v_m_per_s")
#: Every key :func:`start_rows` accepts.
KEYS = (
    "time_utc",
    *_SCALARS,
    "position_m",
    "wind_m_per_s",
    *_WIND_TABLE,
)
MAX_POSITION_M = 1e6
MAX_WIND_M_PER_S = 200.0


def _fail(where: str, key: str, message: str) -> ValueError:
    return ValueError(f"{where}: reset option {key!r} {message}")


def _per_env(where: str, key: str, value: Any, n: int, shape: tuple[int, ...]) -> np.ndarray:
    """``value`` as float64 of shape ``(n, *shape)`` (a single value is broadcast)."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise _fail(where, key, f"must be numbers, got {value!r}") from None
    if arr.shape == shape:
        arr = np.broadcast_to(arr, (n, *shape))
    elif arr.shape != (n, *shape):
        want = f"{shape or 'a number'}" + (f" or ({n}, {', '.join(map(str, shape))})" if n else "")
        raise _fail(where, key, f"has shape {arr.shape}, expected {want}")
    if not np.isfinite(arr).all():
        raise _fail(where, key, f"must be finite, got {value!r}")
    return arr


def _julian_dates(where: str, value: Any, n: int) -> np.ndarray:
    values = value if isinstance(value, list | tuple | np.ndarray) else [value] * n
    if len(values) != n:
        raise _fail(where, "time_utc", f"has {len(values)} values for {n} envs")
    out = np.empty(n)
    for k, v in enumerate(values):
        if isinstance(v, np.datetime64):
            v = str(np.datetime_as_string(v, unit="s"))
        if not isinstance(v, str | datetime.datetime):
            raise _fail(where, "time_utc", f"must be an ISO 8601 string or datetime, got {v!r}")
        try:
            jd = julian_date_utc(v)
        except ValueError as exc:
            raise _fail(where, "time_utc", str(exc)) from None
        if not JD_MIN_SUPPORTED <= jd < JD_MAX_SUPPORTED:
            raise _fail(where, "time_utc", f"= {v!r} is outside {YEARS_SUPPORTED}")
        out[k] = jd
    return out


def start_rows(
    options: dict[str, Any] | None, cfg: BalloonConfig, n: int, where: str = "balloon"
) -> np.ndarray:
    """Check a start and return its rows for the kernel, shape ``(n, N_S)`` (NaN: drawn).

    Args:
        options: The start (keys in the module docstring), or None for none.
        cfg: The system config (gridded winds fix the place).
        n: Number of envs.
        where: Names the env in error messages.

    Raises:
        ValueError: An unknown key, a value of the wrong type, shape or range, or keys that
            go together given apart; the message names the key and the limits.
    """
    rows = np.tile(K.no_start(), (n, 1))
    if not options:
        return rows
    if not isinstance(options, dict):
        raise ValueError(f"{where}: reset options['backend'] must be a dict, got {options!r}")
    unknown = sorted(set(options) - set(KEYS))
    if unknown:
        raise ValueError(
            f"{where}: unknown reset option(s) {unknown}; the start takes {', '.join(KEYS)}"
        )
    grid = cfg.wind.source == "grid"
    if grid:
        fixed = [k for k in ("station_latitude_deg", "station_longitude_deg") if k in options]
        if fixed:
            raise ValueError(
                f"{where}: reset option(s) {fixed} cannot be set with gridded winds "
                '(source="grid"): the station is the grid\'s'
            )
    if ("ballonet_air_mol" in options) != ("gas_temperature_k" in options):
        raise ValueError(
            f"{where}: reset options 'ballonet_air_mol' and 'gas_temperature_k' set the "
            "envelope state together (give both, or neither to solve neutral buoyancy)"
        )
    for key, (col, lo, hi, lo_incl, units) in _SCALARS.items():
        if key not in options:
            continue
        arr = _per_env(where, key, options[key], n, ())
        bad = (arr < lo) | (arr > hi) if lo_incl else (arr <= lo) | (arr > hi)
        if bad.any():
            left = "[" if lo_incl else "("
            raise _fail(
                where, key, f"= {arr[bad][0]:g} is outside {left}{lo:g}, {hi:g}] {units}".rstrip()
            )
        rows[:, col] = arr
    if "time_utc" in options:
        rows[:, K.S_JD] = _julian_dates(where, options["time_utc"], n)
    if "position_m" in options:
        pos = _per_env(where, "position_m", options["position_m"], n, (2,))
        if (np.abs(pos) > MAX_POSITION_M).any():
            raise _fail(where, "position_m", f"must be within +-{MAX_POSITION_M:g} m per axis")
        rows[:, K.S_X], rows[:, K.S_Y] = pos[:, 0], pos[:, 1]
    table = [k for k in _WIND_TABLE if k in options]
    if "wind_m_per_s" in options and table:
        raise ValueError(
            f"{where}: reset options 'wind_m_per_s' (a constant wind) and {table} (a "
            "per-level wind) exclude each other"
        )
    if table and len(table) != len(_WIND_TABLE):
        missing = [k for k in _WIND_TABLE if k not in options]
        raise ValueError(f"{where}: a per-level wind needs {list(_WIND_TABLE)}; missing {missing}")
    t0 = K.S_TABLE
    mx = W.MAX_TABLE_LEVELS
    if "wind_m_per_s" in options:
        uv = _per_env(where, "wind_m_per_s", options["wind_m_per_s"], n, (2,))
        _check_speed(where, "wind_m_per_s", uv)
        rows[:, t0] = 1.0
        rows[:, t0 + 1] = 1.0e4
        rows[:, t0 + 1 + mx] = uv[:, 0]
        rows[:, t0 + 1 + 2 * mx] = uv[:, 1]
    elif table:
        levels = np.asarray(options["wind_levels_pa"], dtype=np.float64)
        m = levels.shape[-1] if levels.ndim else 0
        if not 1 <= m <= mx:
            raise _fail(where, "wind_levels_pa", f"must hold 1 to {mx} levels, got {m}")
        lv = _per_env(where, "wind_levels_pa", levels, n, (m,))
        if (np.diff(lv, axis=1) <= 0.0).any():
            raise _fail(where, "wind_levels_pa", "must increase strictly")
        if (lv < 100.0).any() or (lv > 1e5).any():
            raise _fail(where, "wind_levels_pa", "must lie within [100, 100000] Pa")
        u = _per_env(where, "wind_u_m_per_s", options["wind_u_m_per_s"], n, (m,))
        v = _per_env(where, "wind_v_m_per_s", options["wind_v_m_per_s"], n, (m,))
        _check_speed(where, "wind_u_m_per_s", u)
        _check_speed(where, "wind_v_m_per_s", v)
        rows[:, t0] = m
        rows[:, t0 + 1 : t0 + 1 + m] = lv
        rows[:, t0 + 1 + mx : t0 + 1 + mx + m] = u
        rows[:, t0 + 1 + 2 * mx : t0 + 1 + 2 * mx + m] = v
    return rows


def _check_speed(where: str, key: str, arr: np.ndarray) -> None:
    if (np.abs(arr) > MAX_WIND_M_PER_S).any():
        raise _fail(where, key, f"must be within +-{MAX_WIND_M_PER_S:g} m/s")


def check_started(
    status: np.ndarray, rows: np.ndarray, fstate: np.ndarray, where: str = "balloon"
) -> None:
    """Raise if a start set by hand left a balloon in a terminal state at once.

    Args:
        status: The rows' status codes after the reset.
        rows: The start rows (:func:`start_rows`).
        fstate: The rows' float state after the reset.
        where: Names the env in error messages.

    Raises:
        ValueError: A set start is slack (zero pressure) or burst.
    """
    for k in range(status.shape[0]):
        if status[k] == K.OK or np.isnan(rows[k, : K.S_TABLE]).all():
            continue
        f = fstate[k]
        what = K.STATUS_NAMES[int(status[k])]
        raise ValueError(
            f"{where}: the start set in reset(options=...) is already '{what}' (env {k}): "
            f"superpressure {f[K.F_SP]:.1f} Pa with {f[K.F_N_AIR]:.1f} mol of ballonet air "
            f"and gas at {f[K.F_T_GAS]:.1f} K at {f[K.F_P]:.1f} Pa; choose a pressure or "
            "envelope state the balloon can float in"
        )
