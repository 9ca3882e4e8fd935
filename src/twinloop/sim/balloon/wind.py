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
from twinloop.core.rng import mix64, normal, uniform

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
W_VAE_SWAP = 27  # BLE's VAE: 1 puts y on the decoder's first axis (physics_variant="corrected")
W_BLE_NOISE_SD = 28  # BLE's VAE: truth - forecast noise sd per component (m/s)
N_W = 29

SOURCE_GENERATIVE = 0
SOURCE_GRID = 1
SOURCE_BLE_VAE = 2


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


# --- a per-level wind table that overrides the field for one episode ---------------------------
# (``reset(options=...)``: a constant wind or u, v on pressure levels). It lives at the start
# of every row of the ``wind`` array: ``[n, p[MAX], u[MAX], v[MAX]]``; ``n = 0``: no table.
#: Most levels of a start wind table.
MAX_TABLE_LEVELS = 64
#: Floats of the table at the start of every wind row; the source's own draws follow it.
TABLE_SIZE = 1 + 3 * MAX_TABLE_LEVELS


@njit(inline="always")
def table_levels(row: np.ndarray) -> int:
    """Levels of the start wind table in ``row`` (0: the episode flies its wind source)."""
    return int(row[0])


@njit
def table_wind(row: np.ndarray, p: float) -> tuple[float, float]:
    """Wind of the table at pressure ``p``: linear between levels, constant beyond the ends."""
    n = int(row[0])
    ps = row[1 : 1 + n]
    if n == 1 or p <= ps[0]:
        return row[1 + MAX_TABLE_LEVELS], row[1 + 2 * MAX_TABLE_LEVELS]
    if p >= ps[n - 1]:
        return row[MAX_TABLE_LEVELS + n], row[2 * MAX_TABLE_LEVELS + n]
    j = 0
    while ps[j + 1] < p:
        j += 1
    w = (p - ps[j]) / (ps[j + 1] - ps[j])
    ju = 1 + MAX_TABLE_LEVELS + j
    jv = 1 + 2 * MAX_TABLE_LEVELS + j
    return (1.0 - w) * row[ju] + w * row[ju + 1], (1.0 - w) * row[jv] + w * row[jv + 1]


# --- BLE's wind model: the VAE decoder's stream function and BLE's noise [B20] ---------------
# The decoder (see :mod:`~.blevae`) ends in a 7 x 7 grid of a stream function psi for each of
# 90 (pressure, time) slices. BLE resizes it linearly to 23 x 23 (half-pixel centres, edges
# clamped, as ``jax.image.resize(..., "linear")``), takes central differences and keeps the
# inner 21 x 21 nodes: with A the first grid axis and B the second,
#     u[a, b, k] = (Psi[a+2, b+1, k] - Psi[a, b+1, k]) / 2,
#     v[a, b, k] = -(Psi[a+1, b+2, k] - Psi[a+1, b, k]) / 2,
# and slice k = 9 * level + time. Each row keeps the 4410 psi values (7 x 7 x 90, the
# decoder's order) and evaluates nodes on demand: the 21 x 21 x 10 x 9 x 2 field would be
# 79 380 floats per env. Grid: +-500 km every 50 km on both axes, 10 levels 5000-14000 Pa, 9
# times 0-48 h; lookups clamp in space and reflect in time past 48 h ("boomerang").
VAE_NODES = 21
VAE_PSI = 7
VAE_LEVELS = 10
VAE_TIMES = 9
VAE_SLICES = VAE_LEVELS * VAE_TIMES
VAE_PSI_SIZE = VAE_PSI * VAE_PSI * VAE_SLICES
VAE_HALF_WIDTH_KM = 500.0
VAE_SPACING_KM = 50.0
VAE_PMIN_PA = 5000.0
VAE_PMAX_PA = 14000.0
VAE_HORIZON_H = 48.0
VAE_STEP_H = 6.0


def _resize_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Lower input index and its weight of each output pixel of a linear resize."""
    lo = np.zeros(n_out, dtype=np.int64)
    w_lo = np.ones(n_out, dtype=np.float64)
    for a in range(n_out):
        s = (a + 0.5) * n_in / n_out - 0.5  # output pixel centre in input coordinates
        if s <= 0.0:
            lo[a], w_lo[a] = 0, 1.0
        elif s >= n_in - 1:
            lo[a], w_lo[a] = n_in - 2, 0.0
        else:
            lo[a] = int(math.floor(s))
            w_lo[a] = 1.0 - (s - lo[a])
    return lo, w_lo


_RZ_LO, _RZ_W = _resize_weights(VAE_PSI, VAE_NODES + 2)


@njit(inline="always")
def _psi_big(row: np.ndarray, base: int, a: int, b: int, k: int) -> float:
    """The resized stream function at node (a, b) of the 23 x 23 grid, slice ``k``."""
    ia, wa = _RZ_LO[a], _RZ_W[a]
    ib, wb = _RZ_LO[b], _RZ_W[b]
    s = VAE_PSI * VAE_SLICES
    p00 = row[base + ia * s + ib * VAE_SLICES + k]
    p01 = row[base + ia * s + (ib + 1) * VAE_SLICES + k]
    p10 = row[base + (ia + 1) * s + ib * VAE_SLICES + k]
    p11 = row[base + (ia + 1) * s + (ib + 1) * VAE_SLICES + k]
    return wa * (wb * p00 + (1.0 - wb) * p01) + (1.0 - wa) * (wb * p10 + (1.0 - wb) * p11)


@njit(inline="always")
def vae_node(row: np.ndarray, base: int, a: int, b: int, k: int) -> tuple[float, float]:
    """Decoder output (u, v) at node (a, b) of the 21 x 21 grid, slice ``k`` (9 level + time)."""
    u = 0.5 * (_psi_big(row, base, a + 2, b + 1, k) - _psi_big(row, base, a, b + 1, k))
    v = -0.5 * (_psi_big(row, base, a + 1, b + 2, k) - _psi_big(row, base, a + 1, b, k))
    return u, v


@njit(inline="always")
def _grid_coord(km: float) -> tuple[int, float]:
    f = (min(max(km, -VAE_HALF_WIDTH_KM), VAE_HALF_WIDTH_KM) + VAE_HALF_WIDTH_KM) / VAE_SPACING_KM
    j = min(int(f), VAE_NODES - 2)
    return j, f - j


@njit(inline="always")
def vae_time_h(t_h: float) -> float:
    """BLE's time on the field's axis: as is up to 48 h, then reflected back and forth."""
    if t_h < VAE_HORIZON_H:
        return max(t_h, 0.0)
    cycle = int(t_h / VAE_HORIZON_H) % 2
    rem = t_h % VAE_HORIZON_H
    return rem if cycle == 0 else VAE_HORIZON_H - rem


@njit
def vae_profile(
    row: np.ndarray,
    base: int,
    x_m: float,
    y_m: float,
    t_s: float,
    swap_axes: bool,
    out_u: np.ndarray,
    out_v: np.ndarray,
) -> None:
    """The decoder's wind on its 10 levels at ``(x, y, t)``: bilinear in space, linear in time.

    BLE looks the field up with x on the first grid axis; ``swap_axes`` puts y there instead
    (the decoder's field is divergence-free only that way round; ``physics_variant``).
    """
    if swap_axes:
        ja, wa = _grid_coord(y_m / 1000.0)
        jb, wb = _grid_coord(x_m / 1000.0)
    else:
        ja, wa = _grid_coord(x_m / 1000.0)
        jb, wb = _grid_coord(y_m / 1000.0)
    ft = vae_time_h(t_s / 3600.0) / VAE_STEP_H
    jt = min(int(ft), VAE_TIMES - 2)
    wt = ft - jt
    for lev in range(VAE_LEVELS):
        u = 0.0
        v = 0.0
        for dt_ in range(2):
            k = lev * VAE_TIMES + jt + dt_
            w_t = wt if dt_ == 1 else 1.0 - wt
            for da in range(2):
                w_a = wa if da == 1 else 1.0 - wa
                for db in range(2):
                    w = w_t * w_a * (wb if db == 1 else 1.0 - wb)
                    nu, nv = vae_node(row, base, ja + da, jb + db, k)
                    u += w * nu
                    v += w * nv
        out_u[lev] = u
        out_v[lev] = v


# BLE's truth noise: per component, 5 harmonics of 4-D noise at (x / sx, y / sy, p / sp,
# t / st) + a random offset in [-1, 1)^4, weighted, then rescaled so that the sum keeps the
# per-harmonic variance [B20]. Spacings in km, km, Pa, h.
#: (weight, x, y, pressure, time spacing) of the u harmonics [B20].
NOISE_U_HARMONICS = (
    (0.1445, 702.269, 2116.987, 2587.802, 245.0),
    (0.2766, 1483.570, 752.124, 646.208, 16.39),
    (0.2627, 276.810, 147.040, 587.702, 3.836),
    (0.2137, 10214.525, 1512.216, 965.629, 41.780),
    (0.1025, 181.286, 420.942, 8500.0, 245.0),
)
#: (weight, x, y, pressure, time spacing) of the v harmonics [B20].
NOISE_V_HARMONICS = (
    (0.2716, 1974.228, 2028.814, 713.697, 26.435),
    (0.2684, 699.738, 541.845, 632.116, 9.530),
    (0.2348, 217.750, 196.522, 686.825, 3.546),
    (0.1186, 47.500, 43.048, 66.553, 8.424),
    (0.1066, 3663.291, 232.023, 7499.741, 225.0),
)
N_HARMONICS = 5
_NOISE_TABLE = np.array([NOISE_U_HARMONICS, NOISE_V_HARMONICS], dtype=np.float64)
#: Floats per env of the noise draws: 2 components x 5 harmonics x (seed, 4 offsets).
NOISE_SIZE = 2 * N_HARMONICS * 5
#: Floats per env of BLE's wind model after the table: psi, then the noise draws.
VAE_ROW_SIZE = VAE_PSI_SIZE + NOISE_SIZE

# 4-D simplex noise (Perlin 2001, in the formulation of Gustavson, "Simplex noise demystified",
# 2005): the lattice is skewed so that each unit cell splits into 24 simplices, each corner
# contributes (0.6 - r^2)^4 (g . d) with g one of the 32 edge midpoints of the tesseract,
# picked here by hashing the corner's lattice coordinates with the harmonic's seed (no
# permutation table to store). BLE uses OpenSimplex (Spencer 2014), whose kernel is wider; we
# scale our coordinates so that its correlation at the lags of ``ble_reference.npz`` match
# (``NOISE_COORD_SCALE``) and its variance to BLE's (``SIMPLEX4_VARIANCE``).
_F4 = (math.sqrt(5.0) - 1.0) / 4.0
_G4 = (5.0 - math.sqrt(5.0)) / 20.0
#: Variance of :func:`simplex4` over random points and seeds (0.08840 and 0.08847 in two
#: runs of 10^7 samples, computed once).
SIMPLEX4_VARIANCE = 0.0884
#: Coordinates are multiplied by this before the lattice: fitted (scan 0.50-0.80 in steps of
#: 0.02) so that the correlations at the 7 lags of ``ble_reference.npz`` match BLE's (rms
#: error 0.021; a scale of 1 gives 0.14).
NOISE_COORD_SCALE = 0.55


@njit(inline="always")
def _corner(h: np.uint64, d0: float, d1: float, d2: float, d3: float) -> float:
    t = 0.6 - d0 * d0 - d1 * d1 - d2 * d2 - d3 * d3
    if t <= 0.0:
        return 0.0
    g = int(h >> np.uint64(59))  # 0..31: which coordinate is 0 (g // 8), signs of the others
    zero = g >> 3
    s0 = 1.0 if g & 1 else -1.0
    s1 = 1.0 if g & 2 else -1.0
    s2 = 1.0 if g & 4 else -1.0
    if zero == 0:
        dot = s0 * d1 + s1 * d2 + s2 * d3
    elif zero == 1:
        dot = s0 * d0 + s1 * d2 + s2 * d3
    elif zero == 2:
        dot = s0 * d0 + s1 * d1 + s2 * d3
    else:
        dot = s0 * d0 + s1 * d1 + s2 * d2
    t *= t
    return t * t * dot


@njit(inline="always")
def _lattice_hash(seed: np.uint64, i: int, j: int, k: int, l_: int) -> np.uint64:
    h = mix64(seed ^ np.uint64(i & 0xFFFFFFFF))
    h = mix64(h ^ (np.uint64(j & 0xFFFFFFFF) << np.uint64(32)))
    h = mix64(h ^ np.uint64(k & 0xFFFFFFFF))
    return mix64(h ^ (np.uint64(l_ & 0xFFFFFFFF) << np.uint64(32)))


@njit
def simplex4(x: float, y: float, z: float, w: float, seed: np.uint64) -> float:
    """4-D simplex noise in about [-1, 1] with gradients hashed from ``seed``."""
    s = (x + y + z + w) * _F4
    i = int(math.floor(x + s))
    j = int(math.floor(y + s))
    k = int(math.floor(z + s))
    l_ = int(math.floor(w + s))
    t = (i + j + k + l_) * _G4
    x0 = x - (i - t)
    y0 = y - (j - t)
    z0 = z - (k - t)
    w0 = w - (l_ - t)
    # rank the offsets: the simplex is traversed from the largest coordinate down
    rx = (x0 > y0) + (x0 > z0) + (x0 > w0)
    ry = (y0 >= x0) + (y0 > z0) + (y0 > w0)
    rz = (z0 >= x0) + (z0 >= y0) + (z0 > w0)
    rw = (w0 >= x0) + (w0 >= y0) + (w0 >= z0)
    total = _corner(_lattice_hash(seed, i, j, k, l_), x0, y0, z0, w0)
    for step in range(1, 4):
        a, b, c, d = (
            int(rx >= 4 - step),
            int(ry >= 4 - step),
            int(rz >= 4 - step),
            int(rw >= 4 - step),
        )
        g = step * _G4
        total += _corner(
            _lattice_hash(seed, i + a, j + b, k + c, l_ + d),
            x0 - a + g,
            y0 - b + g,
            z0 - c + g,
            w0 - d + g,
        )
    g = 4.0 * _G4
    total += _corner(
        _lattice_hash(seed, i + 1, j + 1, k + 1, l_ + 1),
        x0 - 1.0 + g,
        y0 - 1.0 + g,
        z0 - 1.0 + g,
        w0 - 1.0 + g,
    )
    return 27.0 * total


@njit
def ble_noise(
    row: np.ndarray, base: int, x_m: float, y_m: float, p: float, t_s: float, sd: float
) -> tuple[float, float]:
    """BLE's truth - forecast noise (u, v) at ``(x, y, p, t)`` (m/s) [B20].

    ``row[base:]`` holds per component and harmonic (seed, 4 offsets); ``sd`` the noise's
    standard deviation per component.
    """
    x_km = x_m / 1000.0
    y_km = y_m / 1000.0
    t_h = t_s / 3600.0
    mag = sd / math.sqrt(SIMPLEX4_VARIANCE)
    out0 = 0.0
    out1 = 0.0
    for c in range(2):
        acc = 0.0
        w_sum = 0.0
        w_sq = 0.0
        for h in range(N_HARMONICS):
            q = base + (c * N_HARMONICS + h) * 5
            hp = _NOISE_TABLE[c, h]
            n = simplex4(
                NOISE_COORD_SCALE * (x_km / hp[1] + row[q + 1]),
                NOISE_COORD_SCALE * (y_km / hp[2] + row[q + 2]),
                NOISE_COORD_SCALE * (p / hp[3] + row[q + 3]),
                NOISE_COORD_SCALE * (t_h / hp[4] + row[q + 4]),
                np.uint64(row[q]),
            )
            acc += hp[0] * mag * n
            w_sum += hp[0]
            w_sq += hp[0] * hp[0]
        value = acc / w_sum * math.sqrt(w_sum / w_sq)
        if c == 0:
            out0 = value
        else:
            out1 = value
    return out0, out1
