"""Wind fields of the balloon system: a generative, divergence-free forecast and its error.

A field is evaluated as a *profile*: the wind at one horizontal position and time on all of
its native pressure levels; a point or a column then interpolates the profile linearly in
pressure. A profile costs one ``sin``/``cos`` pair per wave plus a few multiply-adds per level
and wave, so the truth at the balloon and a 181-level forecast column cost well under a
microsecond each.

Generative field (one per env and per role, drawn at every reset): on ``L`` levels and ``T``
time knots, ``u = U(p, t) - d(psi)/dy`` and ``v = V(p, t) + d(psi)/dx`` with the stream function
``psi = sum_k a_k(p, t) cos(k.x) + b_k(p, t) sin(k.x)`` (see ``BalloonWindConfig``). A uniform
flow and the curl of a stream function are both horizontally divergence-free, and linear
interpolation in pressure and time keeps them so.

Flat layout of one field inside a row of the ``wind`` array (offsets from :func:`field_size`):
``mean[T][L][2]`` (u, v), ``modes[T][L][K][2]`` (a, b), ``wavevector[K][2]`` (rad/m).
Row ``i`` holds the forecast field at offset 0 and the error field right after it.

Gridded field (ERA5-style, shared by all envs): ``grid[role, time, level, y, x, 2]`` on
regular time and horizontal axes, levels in Pa (ascending); see :mod:`~.era5`.
"""

from __future__ import annotations

import math

import numpy as np

from twinloop.core.jit import njit
from twinloop.core.rng import normal, uniform

TWO_PI = 2.0 * math.pi

# --- wind parameter vector (shared by all envs) ---------------------------------------------
W_L = 0  # native levels of the generative field
W_T = 1  # time knots
W_K = 2  # waves
W_PMIN = 3  # pressure range (Pa)
W_PMAX = 4
W_HORIZON = 5  # time span of the knots (s)
W_BOX = 6  # half width of the box (m); positions clamp to it
W_MEAN_SD = 7  # forecast mean flow sd per component (m/s)
W_WAVE_SD = 8  # forecast waves sd per component (m/s)
W_LAMBDA_MIN = 9  # wavelengths (m)
W_LAMBDA_MAX = 10
W_RHO_L = 11  # forecast AR(1) correlation between levels
W_RHO_T = 12  # ... and between time knots
W_ERR_SD = 13  # error sd per component (m/s)
W_ERR_RHO_L = 14
W_ERR_RHO_T = 15
W_SOURCE = 16  # 0 generative, 1 grid
W_GRID_TRUTH = 17  # 1: the grid holds a truth field (role 1); 0: truth = forecast + error
W_GRID_X0 = 18  # first x of the grid (m, east of the station)
W_GRID_DX = 19
W_GRID_Y0 = 20
W_GRID_DY = 21
W_GRID_DT = 22  # time step of the grid (s)
W_GRID_SPAN = 23  # time span of the grid (s)
W_GRID_LAT = 24  # station latitude and longitude of the grid (deg)
W_GRID_LON = 25
W_GRID_JD0 = 26  # Julian date of the grid's first time
N_W = 27

SOURCE_GENERATIVE = 0
SOURCE_GRID = 1


@njit
def field_size(n_levels: int, n_times: int, n_modes: int) -> int:
    """Number of floats of one generative field."""
    return n_times * n_levels * 2 + n_times * n_levels * n_modes * 2 + n_modes * 2


@njit(inline="always")
def _sizes(wp: np.ndarray) -> tuple[int, int, int, int, int]:
    nl, nt, nk = int(wp[W_L]), int(wp[W_T]), int(wp[W_K])
    mean = nt * nl * 2
    modes = nt * nl * nk * 2
    return nl, nt, nk, mean, mean + modes + nk * 2


@njit
def _ar_field(
    rng: np.ndarray,
    i: int,
    k: int,
    row: np.ndarray,
    start: int,
    stride: int,
    nt: int,
    nl: int,
    sd: float,
    rho_l: float,
    rho_t: float,
) -> None:
    """Fill ``row[start + (t * nl + l) * stride]`` with sd * z, z AR(1) over levels and times.

    z[t, l] has unit variance and correlation rho_l^|dl| rho_t^|dt| (separable).
    """
    sl = math.sqrt(1.0 - rho_l * rho_l)
    st = math.sqrt(1.0 - rho_t * rho_t)
    for t in range(nt):
        e = 0.0
        for lev in range(nl):
            g = normal(rng, i, k)
            e = g if lev == 0 else rho_l * e + sl * g
            idx = start + (t * nl + lev) * stride
            if t == 0:
                row[idx] = sd * e
            else:
                prev = row[start + ((t - 1) * nl + lev) * stride]
                row[idx] = rho_t * prev + st * sd * e


@njit
def draw_field(
    rng: np.ndarray,
    i: int,
    k: int,
    row: np.ndarray,
    base: int,
    wp: np.ndarray,
    mean_sd: float,
    wave_sd: float,
    rho_l: float,
    rho_t: float,
) -> None:
    """Draw one generative field into ``row[base:]`` from stream ``k`` of env ``i``."""
    nl, nt, nk, n_mean, _ = _sizes(wp)
    n_modes = nt * nl * nk * 2
    kv = base + n_mean + n_modes
    log_lo = math.log(wp[W_LAMBDA_MIN])
    log_hi = math.log(wp[W_LAMBDA_MAX])
    for m in range(nk):
        # wavelength ~ log-uniform [min, max] (m); direction ~ U(0, 2 pi)
        lam = math.exp(log_lo + (log_hi - log_lo) * uniform(rng, i, k))
        phi = TWO_PI * uniform(rng, i, k)
        kk = TWO_PI / lam
        row[kv + 2 * m] = kk * math.cos(phi)
        row[kv + 2 * m + 1] = kk * math.sin(phi)
    for c in range(2):
        # mean flow component c ~ mean_sd * AR(1) field (m/s)
        _ar_field(rng, i, k, row, base + c, 2, nt, nl, mean_sd, rho_l, rho_t)
    for m in range(nk):
        kk = math.hypot(row[kv + 2 * m], row[kv + 2 * m + 1])
        # a, b ~ s_k * AR(1) field (m^2/s); E[u^2] = sum_k |k|^2 s_k^2 / 2 = wave_sd^2
        s_k = wave_sd * math.sqrt(2.0 / nk) / kk
        for j in range(2):
            _ar_field(rng, i, k, row, base + n_mean + 2 * m + j, 2 * nk, nt, nl, s_k, rho_l, rho_t)


@njit
def generative_profile(
    row: np.ndarray,
    base: int,
    wp: np.ndarray,
    x_m: float,
    y_m: float,
    t_s: float,
    sc: np.ndarray,
    out_u: np.ndarray,
    out_v: np.ndarray,
) -> None:
    """Write the field's wind on its native levels at ``(x, y, t)`` into ``out_u``/``out_v``.

    ``sc`` is scratch of length >= 2 K (sin and cos of each wave's phase).
    """
    nl, nt, nk, n_mean, _ = _sizes(wp)
    box = wp[W_BOX]
    x = min(max(x_m, -box), box)
    y = min(max(y_m, -box), box)
    tf = min(max(t_s / wp[W_HORIZON], 0.0), 1.0) * (nt - 1)
    j0 = min(int(tf), nt - 2)
    w1 = tf - j0
    w0 = 1.0 - w1
    kv = base + n_mean + nt * nl * nk * 2
    for m in range(nk):
        ph = row[kv + 2 * m] * x + row[kv + 2 * m + 1] * y
        sc[2 * m] = math.sin(ph)
        sc[2 * m + 1] = math.cos(ph)
    for lev in range(nl):
        a0 = base + (j0 * nl + lev) * 2
        a1 = base + ((j0 + 1) * nl + lev) * 2
        u = w0 * row[a0] + w1 * row[a1]
        v = w0 * row[a0 + 1] + w1 * row[a1 + 1]
        m0 = base + n_mean + (j0 * nl + lev) * nk * 2
        m1 = base + n_mean + ((j0 + 1) * nl + lev) * nk * 2
        for m in range(nk):
            a = w0 * row[m0 + 2 * m] + w1 * row[m1 + 2 * m]
            b = w0 * row[m0 + 2 * m + 1] + w1 * row[m1 + 2 * m + 1]
            g = a * sc[2 * m] - b * sc[2 * m + 1]  # -(d psi / d phase)
            u += row[kv + 2 * m + 1] * g  # -d(psi)/dy = ky (a sin - b cos)
            v -= row[kv + 2 * m] * g  # d(psi)/dx = -kx (a sin - b cos)
        out_u[lev] = u
        out_v[lev] = v


@njit
def grid_profile(
    grid: np.ndarray,
    role: int,
    wp: np.ndarray,
    x_m: float,
    y_m: float,
    t_s: float,
    out_u: np.ndarray,
    out_v: np.ndarray,
) -> None:
    """Wind of a gridded field on its levels at ``(x, y, t)``: bilinear in space, linear in time.

    Positions and times outside the grid clamp to its edges.
    """
    nt, nlev, ny, nx = grid.shape[1], grid.shape[2], grid.shape[3], grid.shape[4]
    fx = min(max((x_m - wp[W_GRID_X0]) / wp[W_GRID_DX], 0.0), nx - 1.0)
    fy = min(max((y_m - wp[W_GRID_Y0]) / wp[W_GRID_DY], 0.0), ny - 1.0)
    ft = min(max(t_s / wp[W_GRID_DT], 0.0), nt - 1.0)
    ix = min(int(fx), max(nx - 2, 0))
    iy = min(int(fy), max(ny - 2, 0))
    it = min(int(ft), max(nt - 2, 0))
    wx, wy, wt = fx - ix, fy - iy, ft - it
    ix1, iy1, it1 = min(ix + 1, nx - 1), min(iy + 1, ny - 1), min(it + 1, nt - 1)
    for lev in range(nlev):
        for c in range(2):
            a = _bilinear(grid, role, it, lev, iy, ix, iy1, ix1, c, wx, wy)
            b = _bilinear(grid, role, it1, lev, iy, ix, iy1, ix1, c, wx, wy)
            if c == 0:
                out_u[lev] = (1.0 - wt) * a + wt * b
            else:
                out_v[lev] = (1.0 - wt) * a + wt * b


@njit(inline="always")
def _bilinear(
    grid: np.ndarray,
    role: int,
    t: int,
    lev: int,
    iy: int,
    ix: int,
    iy1: int,
    ix1: int,
    c: int,
    wx: float,
    wy: float,
) -> float:
    v00 = grid[role, t, lev, iy, ix, c]
    v01 = grid[role, t, lev, iy, ix1, c]
    v10 = grid[role, t, lev, iy1, ix, c]
    v11 = grid[role, t, lev, iy1, ix1, c]
    return (1.0 - wy) * ((1.0 - wx) * v00 + wx * v01) + wy * ((1.0 - wx) * v10 + wx * v11)


@njit(inline="always")
def uniform_level(p: float, pmin: float, pmax: float, n: int) -> tuple[int, float]:
    """Lower index and weight of ``p`` on ``n`` evenly spaced levels over [pmin, pmax]."""
    f = min(max((p - pmin) / (pmax - pmin), 0.0), 1.0) * (n - 1)
    j = min(int(f), n - 2)
    return j, f - j


@njit(inline="always")
def table_level(p: float, levels: np.ndarray) -> tuple[int, float]:
    """Lower index and weight of ``p`` on ascending ``levels`` (clamped at both ends)."""
    n = levels.shape[0]
    if n == 1 or p <= levels[0]:
        return 0, 0.0
    if p >= levels[n - 1]:
        return n - 2, 1.0
    j = 0
    while levels[j + 1] < p:
        j += 1
    return j, (p - levels[j]) / (levels[j + 1] - levels[j])
