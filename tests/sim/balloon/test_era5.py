"""Gridded (ERA5-style) winds from a small NetCDF file that the test writes."""

from __future__ import annotations

import math

import numpy as np
import pytest

import twinloop
from twinloop.sim.balloon import kernel as K
from twinloop.sim.balloon.config import EARTH_RADIUS_M

xr = pytest.importorskip(
    "xarray", reason="gridded winds need xarray (pip install twinloop[balloon])"
)
pytest.importorskip("h5netcdf", reason="writing the test file needs h5netcdf")

ENV_ID = "twinloop/BalloonStationKeeping-v0"
LEVELS_HPA = np.array([150.0, 125.0, 100.0, 70.0, 50.0])  # ERA5 order: descending


def _write(path, du: float = 0.0, zarr: bool = False) -> None:
    times = np.datetime64("2012-05-01T00:00") + np.arange(61) * np.timedelta64(1, "h")
    lat = np.arange(5.0, -5.5, -1.0)  # ERA5 order: descending
    lon = np.arange(100.0, 110.5, 1.0)
    shape = (times.size, LEVELS_HPA.size, lat.size, lon.size)
    # u linear in pressure, v linear in latitude: bilinear interpolation is exact
    u = np.broadcast_to((5.0 + 0.1 * LEVELS_HPA + du)[None, :, None, None], shape)
    v = np.broadcast_to((0.2 * lat)[None, None, :, None], shape)
    ds = xr.Dataset(
        {
            "u": (("time", "level", "latitude", "longitude"), u.astype(np.float32)),
            "v": (("time", "level", "latitude", "longitude"), v.astype(np.float32)),
        },
        coords={"time": times, "level": LEVELS_HPA, "latitude": lat, "longitude": lon},
    )
    if zarr:
        ds.to_zarr(path)
    else:
        ds.to_netcdf(path, engine="h5netcdf")


def test_zarr_and_netcdf_files_give_the_same_winds(tmp_path) -> None:
    pytest.importorskip("zarr", reason="Zarr stores need zarr (pip install twinloop[balloon])")
    nc, zr = tmp_path / "forecast.nc", tmp_path / "forecast.zarr"
    _write(nc)
    _write(zr, zarr=True)
    runs = []
    for path in (nc, zr):
        env = twinloop.make(ENV_ID, source="grid", forecast_path=str(path), truth_path=str(path))
        env.reset(seed=3)
        runs.append([env.step(1)[4]["true/wind_m_per_s"] for _ in range(5)])
    np.testing.assert_allclose(runs[0], runs[1], rtol=1e-6)


def test_grid_winds_drive_the_balloon(tmp_path) -> None:
    fc, tr = tmp_path / "forecast.nc", tmp_path / "truth.nc"
    _write(fc)
    _write(tr, du=1.0)
    env = twinloop.make(ENV_ID, source="grid", forecast_path=str(fc), truth_path=str(tr))
    _, info = env.reset(seed=0)
    m = env.unwrapped.last_measurement
    assert m[K.M_STATION] == pytest.approx(0.0)
    assert m[K.M_STATION + 1] == pytest.approx(105.0)
    *_, info = env.step(1)
    m = env.unwrapped.last_measurement
    p = m[K.M_WIND_P]
    # the wind was met at the start of the step: y there = end y - v * 180 s
    lat = (m[K.M_POS + 1] - 180.0 * info["true/wind_m_per_s"][1]) / (EARTH_RADIUS_M * math.pi / 180)
    u_true, v_true = info["true/wind_m_per_s"]
    assert u_true == pytest.approx(5.0 + 0.1 * p / 100.0 + 1.0, abs=1e-4)
    assert v_true == pytest.approx(0.2 * lat, abs=1e-3)
    fu = m[K.M_WIND_FC]
    assert fu == pytest.approx(5.0 + 0.1 * p / 100.0, abs=1e-4)
    n = env.unwrapped.config.task.n_column_levels
    levels = np.array(env.unwrapped.config.column_levels_pa)
    col_u = m[K.M_COLUMN : K.M_COLUMN + n]
    inside = (levels >= 5000) & (levels <= 15000)
    assert np.allclose(col_u[inside], 5.0 + 0.1 * levels[inside] / 100.0, atol=1e-4)


def test_grid_without_truth_adds_the_error_field(tmp_path) -> None:
    fc = tmp_path / "forecast.nc"
    _write(fc)
    env = twinloop.make(ENV_ID, source="grid", forecast_path=str(fc))
    env.reset(seed=1)
    _, _, _, _, info = env.step(1)
    m = env.unwrapped.last_measurement
    err = np.hypot(*(info["true/wind_m_per_s"] - m[K.M_WIND_FC : K.M_WIND_FC + 2]))
    assert 0.0 < err < 20.0


def test_bad_files_raise_precise_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        twinloop.make(ENV_ID, source="grid", forecast_path=str(tmp_path / "missing.nc"))
    ds = xr.Dataset({"t": (("x",), np.zeros(3))})
    ds.to_netcdf(tmp_path / "bad.nc", engine="h5netcdf")
    with pytest.raises(ValueError, match="no time coordinate"):
        twinloop.make(ENV_ID, source="grid", forecast_path=str(tmp_path / "bad.nc"))
