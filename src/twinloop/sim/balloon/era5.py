"""Gridded winds (ERA5-style u, v on pressure levels) from NetCDF or Zarr, for the balloon kernel.

Set ``BalloonConfig.wind.source = "grid"`` and ``forecast_path`` (and optionally
``truth_path``). The files hold ``u`` and ``v`` (m/s) on dimensions time x pressure level x
latitude x longitude, with ERA5's names (``time`` or ``valid_time``; ``level`` or
``pressure_level`` in hPa; ``latitude``; ``longitude``) on a regular grid. The region's centre
becomes the station; positions become metres east and north of it (an equirectangular
projection, fine over +-500 km near the equator); each episode starts at a random time that
leaves ``horizon_h`` of data. Without ``truth_path`` the truth is forecast + the generative
error field. xarray (and h5netcdf or netCDF4, or zarr) are optional dependencies: install
``twinloop[balloon]``.

Real data: ERA5 hourly data on pressure levels (Hersbach et al., QJRMS 146, 2020), e.g.
u, v at 50-150 hPa for a 10 x 10 degree box.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from twinloop.sim.balloon.config import EARTH_RADIUS_M, JD_UNIX_EPOCH, BalloonConfig

#: Most pressure levels a grid may have (kernel scratch size).
MAX_GRID_LEVELS = 64

_TIME_NAMES = ("time", "valid_time")
_LEVEL_NAMES = ("level", "pressure_level", "isobaricInhPa", "plev")
_LAT_NAMES = ("latitude", "lat")
_LON_NAMES = ("longitude", "lon")


def _open(path: str) -> Any:
    try:
        import xarray as xr
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "gridded winds need xarray; install it with: pip install 'twinloop[balloon]'"
        ) from exc
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"wind file {path!r} does not exist")
    zarr_markers = (".zmetadata", ".zgroup", "zarr.json")  # zarr v2 / v3 stores
    if p.suffix == ".zarr" or (p.is_dir() and any((p / m).exists() for m in zarr_markers)):
        return xr.open_zarr(p)
    return xr.open_dataset(p)


def _name(ds: Any, names: tuple[str, ...], what: str, path: str) -> str:
    for n in names:
        if n in ds.coords or n in ds.dims:
            return n
    raise ValueError(f"{path}: no {what} coordinate (looked for {', '.join(names)})")


def _regular(values: np.ndarray, what: str, path: str) -> float:
    if values.size < 2:
        raise ValueError(f"{path}: {what} needs at least 2 points, got {values.size}")
    step = np.diff(values)
    if not np.allclose(step, step[0], rtol=1e-6, atol=1e-9):
        raise ValueError(f"{path}: {what} must be regularly spaced, got steps {np.unique(step)}")
    return float(step[0])


def read_uv(path: str) -> dict[str, np.ndarray]:
    """Read u, v and their axes from one file, sorted ascending (levels in Pa, time in s)."""
    ds = _open(path)
    try:
        t_name = _name(ds, _TIME_NAMES, "time", path)
        l_name = _name(ds, _LEVEL_NAMES, "pressure level", path)
        y_name = _name(ds, _LAT_NAMES, "latitude", path)
        x_name = _name(ds, _LON_NAMES, "longitude", path)
        for var in ("u", "v"):
            if var not in ds:
                raise ValueError(f"{path}: no variable {var!r}; variables: {list(ds.data_vars)}")
        ds = ds.sortby([l_name, y_name, x_name])
        order = (t_name, l_name, y_name, x_name)
        u = ds["u"].transpose(*order).values.astype(np.float64)
        v = ds["v"].transpose(*order).values.astype(np.float64)
        times = ds[t_name].values
        levels_hpa = ds[l_name].values.astype(np.float64)
        lat = ds[y_name].values.astype(np.float64)
        lon = ds[x_name].values.astype(np.float64)
    finally:
        ds.close()
    t_s = (times.astype("datetime64[ns]").astype(np.int64) / 1e9).astype(np.float64)
    if not (np.isfinite(u).all() and np.isfinite(v).all()):
        raise ValueError(f"{path}: u and v must be finite everywhere")
    return {"u": u, "v": v, "t_s": t_s, "levels_pa": levels_hpa * 100.0, "lat": lat, "lon": lon}


def load_grid(cfg: BalloonConfig) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Load the configured files into ``(grid, levels_pa, meta)`` for the kernel.

    ``grid`` has shape ``(2, time, level, y, x, 2)``: role 0 the forecast, role 1 the truth
    (zeros when the truth is forecast + the generative error).

    Raises:
        ValueError: Missing variables or coordinates, an irregular grid, too many levels,
            mismatching forecast and truth grids, or less data than one episode needs.
    """
    w = cfg.wind
    fc = read_uv(w.forecast_path)
    n_levels = fc["levels_pa"].size
    if n_levels > MAX_GRID_LEVELS:
        raise ValueError(
            f"{w.forecast_path}: {n_levels} pressure levels; at most {MAX_GRID_LEVELS} are "
            "supported (select the flight range, e.g. 50-150 hPa)"
        )
    dt = _regular(fc["t_s"], "time", w.forecast_path)
    dlat = _regular(fc["lat"], "latitude", w.forecast_path)
    dlon = _regular(fc["lon"], "longitude", w.forecast_path)
    span = float(fc["t_s"][-1] - fc["t_s"][0])
    if span < w.horizon_h * 3600.0:
        raise ValueError(
            f"{w.forecast_path}: covers {span / 3600:.1f} h; an episode needs horizon_h = "
            f"{w.horizon_h} h"
        )
    grid = np.zeros((2, *fc["u"].shape, 2), dtype=np.float64)
    grid[0, ..., 0] = fc["u"]
    grid[0, ..., 1] = fc["v"]
    has_truth = bool(w.truth_path)
    if has_truth:
        tr = read_uv(w.truth_path)
        for key in ("t_s", "levels_pa", "lat", "lon"):
            if tr[key].shape != fc[key].shape or not np.allclose(tr[key], fc[key]):
                raise ValueError(
                    f"{w.truth_path}: its {key} axis differs from {w.forecast_path}'s; "
                    "truth and forecast must share one grid"
                )
        grid[1, ..., 0] = tr["u"]
        grid[1, ..., 1] = tr["v"]
    lat0 = float(0.5 * (fc["lat"][0] + fc["lat"][-1]))
    lon0 = float(0.5 * (fc["lon"][0] + fc["lon"][-1]))
    m_per_deg = EARTH_RADIUS_M * math.pi / 180.0
    meta = {
        "has_truth": has_truth,
        "x0_m": (fc["lon"][0] - lon0) * m_per_deg * math.cos(math.radians(lat0)),
        "dx_m": dlon * m_per_deg * math.cos(math.radians(lat0)),
        "y0_m": (fc["lat"][0] - lat0) * m_per_deg,
        "dy_m": dlat * m_per_deg,
        "dt_s": dt,
        "span_s": span,
        "latitude_deg": lat0,
        "longitude_deg": lon0,
        "jd0": JD_UNIX_EPOCH + fc["t_s"][0] / 86400.0,
    }
    return grid, np.ascontiguousarray(fc["levels_pa"]), meta
