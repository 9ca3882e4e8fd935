"""STEM physics kernel: a substitutional Si in graphene, moved by the electron beam.

Batch-first numba functions over a state of arrays whose first axis is the environment index.
Each function works on one row ``i``; the single env, the vector env and the microscope twin
all call these same functions (the vector env inside one ``prange`` loop).

Model (``shared/reference/stem.md``; Schwarzer et al., arXiv:2311.17894):

* Graphene: lattice constant a = 2.46 A, bond a/sqrt(3) = 1.42 A; site ``(i, j, s)`` sits at
  ``i a1 + j a2 + s (a1 + a2) / 3`` with a1 = a(1, 0), a2 = a(1/2, sqrt(3)/2), rotated by the
  episode's lattice angle. The Si is substitutional and 3-fold; a jump swaps it with one of its
  three C neighbours (it changes sublattice).
* Dynamics: a continuous-time Markov process. With the beam parked at ``b``, neighbour k has
  rate ``lambda_k = A exp(-|b - c_k|^2 / (2 sigma^2))`` with ``c_k`` on the Si->C_k bond
  direction at the optimum distance; waiting times ~ Exp(sum of rates); after a hop the rates
  are recomputed (the beam stays put), so several hops per dwell are possible. Competing
  channels: knock-out of a C neighbour (the Si becomes 4-fold, immobile) at ``ratio x`` the
  inversion rate, and loss of the Si (replaced by a C adatom).
* Drift moves the sample under the parked beam; the dwell is split into pieces over which the
  beam-to-sample shift stays below ``drift_resolution_angstrom`` (exact for piecewise-constant
  rates by memorylessness). Imaging spreads the same dose uniformly over the field of view.
* Terminal states: 4-fold (knock-out), lost, edge (a neighbour is missing: lattice border or a
  hole), out of view (the Si left the frame before it could be re-centred).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from twinloop.core.bundle import Rows, allocate
from twinloop.core.jit import njit
from twinloop.core.layout import Field, Layout
from twinloop.core.rng import (
    STREAM_BACKEND,
    normal,
    normal_pair,
    standard_exponential,
    uniform,
    uniform_range,
)
from twinloop.sim.stem.config import (
    BARN_ANGSTROM2,
    BOND_ANGSTROM,
    ELEMENTARY_CHARGE_C,
    LATTICE_CONSTANT_ANGSTROM,
    MAX_HOLES,
    StemConfig,
)

A_LAT = LATTICE_CONSTANT_ANGSTROM
BOND = BOND_ANGSTROM
SQ3_2 = math.sqrt(3.0) / 2.0
TWO_PI = 2.0 * math.pi
# site_xy constants, folded here (numba does not fold sqrt or checked divisions in the kernel)
_HALF_A = 0.5 * A_LAT
_A_Y = A_LAT * SQ3_2
_B_Y = A_LAT / (2.0 * math.sqrt(3.0))

# --- status codes (measurement "status") --------------------------------------------------------
OK = 0
KNOCKOUT = 1  # a C neighbour was knocked out: the Si is 4-fold and immobile
LOST = 2  # the Si was replaced by a C adatom
EDGE = 3  # the Si reached a site next to a missing atom (lattice border or hole)
OUT_OF_VIEW = 4  # the Si left the field of view before re-centring
AMBIGUOUS = 5  # (image backends) two Si-like atoms persisted through re-imaging
#: Human-readable names of the status / failure codes, by code.
STATUS_NAMES = ("none", "knockout", "lost", "edge", "out_of_view", "ambiguous")

# --- measurement layout (what a real pipeline extracts from a frame) ----------------------------
MEASUREMENT = Layout(
    [
        Field("si_position_angstrom", (2,), doc="Si in the field of view, relative to its centre"),
        Field("neighbor_offsets_angstrom", (3, 2), doc="C neighbours relative to the Si"),
        Field("fov_center_angstrom", (2,), doc="field-of-view centre in the sample frame"),
        Field("status", (), doc="0 ok, 1 four-fold, 2 lost, 3 edge, 4 out of view, 5 ambiguous"),
        Field("elapsed_s", (), doc="microscope time of the last command"),
        Field("fov_angstrom", (), doc="field-of-view width"),
        Field("holes_angstrom", (MAX_HOLES, 3), doc="known holes: x, y (sample frame), radius"),
    ]
)
M_SI = 0
M_NBR = 2
M_FOV_C = 8
M_STATUS = 10
M_ELAPSED = 11
M_FOV = 12
M_HOLES = 13
N_MEAS = MEASUREMENT.size

# --- float state columns ------------------------------------------------------------------------
F_COS = 0  # lattice rotation
F_SIN = 1
F_FOV_X = 2  # true field-of-view centre in the sample frame (A)
F_FOV_Y = 3
F_VX = 4  # drift of the view over the sample (A/s)
F_VY = 5
F_RATE_A = 6  # peak inversion rate per neighbour (1/s)
F_INV2S2 = 7  # 1 / (2 sigma^2) of the rate profile (1/A^2)
F_REACH = 8  # distance from the Si to the rate optimum along the bond (A)
F_KO = 9  # knock-out / inversion ratio
F_LOSS = 10  # loss / inversion ratio
F_IMG_RATE = 11  # per-neighbour rate while imaging (1/s)
F_RATE0 = 12  # rates when the last dwell started (privileged), 3 columns
F_TIME = 15  # total microscope time of the episode (s)
N_F = 16

# --- int state columns --------------------------------------------------------------------------
I_SI_I = 0
I_SI_J = 1
I_SI_S = 2
I_STATUS = 3
I_HOPS = 4  # hops during the last command
I_NHOLES = 5
I_FIRST_HOP = 6  # neighbour index (0-2) of the first hop of the last command, -1 if none
I_KO_NEIGHBOR = 7  # neighbour index (0-2) knocked out, when the status is KNOCKOUT
N_I = 8

# --- parameter vector (from the config, shared by all envs) -------------------------------------
P_PRIOR = 0  # 1.0 for the hand-set prior rate model
P_HALF_CELLS = 1
P_RATE_A = 2
P_SIGMA = 3
P_REACH = 4
P_KO = 5
P_LOSS = 6
P_XS_LOG_SD = 7
P_FWHM_REL_SD = 8
P_OPT_SD = 9
P_FOV = 10
P_RECENTRE = 11
P_FRAME = 12
P_SETTLE = 13
P_RECENTRE_TIME = 14
P_DRIFT_VMAX = 15
P_DRIFT_D = 16
P_DRIFT_RES = 17
P_DET_NOISE = 18
P_ANGLE = 19
P_RANDOM_ANGLE = 20
P_N_HOLES = 21
P_HOLE_R = 22
P_HOLE_DMIN = 23
P_HOLE_DMAX = 24
P_IMG_RATE_A = 25  # peak rate per neighbour at the imaging current (1/s)
N_P = 26

# Unit bond vectors Si->C_k of an s=0 site before rotation (s=1 sites use the negatives).
_U0 = np.array(
    [[SQ3_2, 0.5], [-SQ3_2, 0.5], [0.0, -1.0]],
    dtype=np.float64,
)


def physics_params(cfg: StemConfig) -> np.ndarray:
    """Pack the config into the kernel's parameter vector (derived values computed here)."""
    ph, mi = cfg.physics, cfg.microscope
    p = np.zeros(N_P, dtype=np.float64)
    # rates are linear in the current: the peak rate per nA, then at the parking and imaging
    # currents
    if ph.rate_model == "prior":
        energy_scale = ph.cross_section_barn / ph.cross_section_barn_60kv
        p[P_PRIOR] = 1.0
        per_na = ph.prior_peak_rate_per_s / ph.prior_current_na * energy_scale
        p[P_SIGMA] = ph.prior_sigma_angstrom
        p[P_REACH] = ph.prior_optimum_bond_fraction * BOND
    else:
        sigma = ph.probe_sigma_angstrom
        electrons_per_s_per_na = 1e-9 / ELEMENTARY_CHARGE_C
        per_na = (
            electrons_per_s_per_na * ph.cross_section_barn * BARN_ANGSTROM2 / (TWO_PI * sigma**2)
        )
        p[P_SIGMA] = sigma
        p[P_REACH] = BOND + ph.optimum_offset_angstrom
    p[P_RATE_A] = per_na * ph.beam_current_na
    p[P_IMG_RATE_A] = per_na * cfg.imaging.imaging_current_na
    p[P_HALF_CELLS] = ph.lattice_size_cells // 2
    p[P_KO] = ph.knockout_ratio
    p[P_LOSS] = ph.loss_ratio
    p[P_XS_LOG_SD] = ph.cross_section_log_sd
    p[P_FWHM_REL_SD] = ph.probe_fwhm_rel_sd
    p[P_OPT_SD] = ph.optimum_offset_sd_angstrom
    p[P_FOV] = mi.fov_angstrom
    p[P_RECENTRE] = mi.recentre_fraction
    p[P_FRAME] = mi.frame_time_s
    p[P_SETTLE] = mi.beam_settle_s
    p[P_RECENTRE_TIME] = mi.recentre_time_s
    p[P_DRIFT_VMAX] = mi.drift_speed_max_angstrom_per_s
    p[P_DRIFT_D] = mi.drift_diffusion_angstrom2_per_s
    p[P_DRIFT_RES] = mi.drift_resolution_angstrom
    p[P_DET_NOISE] = mi.detection_noise_angstrom
    p[P_ANGLE] = math.radians(mi.lattice_angle_deg)
    p[P_RANDOM_ANGLE] = 1.0 if mi.randomize_lattice_angle else 0.0
    p[P_N_HOLES] = ph.n_holes
    p[P_HOLE_R] = ph.hole_radius_angstrom
    p[P_HOLE_DMIN] = ph.hole_min_distance_angstrom
    p[P_HOLE_DMAX] = ph.hole_max_distance_angstrom
    return p


class PhysicsState(NamedTuple):
    """The physics state of ``n`` environments, one row each (the ``F_*``/``I_*`` columns)."""

    f: np.ndarray = Rows((N_F,))  # lattice angle, view, drift, rates, microscope time
    i: np.ndarray = Rows((N_I,), np.int64)  # Si site, status, hops, holes, first hop
    holes: np.ndarray = Rows((MAX_HOLES, 3))  # x, y (sample frame, A), radius (A)
    meas: np.ndarray = Rows((N_MEAS,))  # the last measurement (MEASUREMENT)


def new_state(n_envs: int) -> PhysicsState:
    """Allocate ``(fstate, istate, holes, measurement)`` for ``n_envs`` environments."""
    return allocate(PhysicsState, n_envs)


# --- lattice geometry --------------------------------------------------------------------------
@njit(inline="always")
def site_xy(i: int, j: int, s: int, c: float, sn: float) -> tuple[float, float]:
    """Position (A, sample frame) of lattice site ``(i, j, s)`` for rotation ``(cos, sin)``."""
    x0 = A_LAT * i + _HALF_A * (j + s)
    y0 = _A_Y * j + _B_Y * s
    return c * x0 - sn * y0, sn * x0 + c * y0


@njit(inline="always")
def neighbor_site(i: int, j: int, s: int, k: int) -> tuple[int, int, int]:
    """Lattice index of neighbour ``k`` (0, 1, 2) of site ``(i, j, s)``."""
    if s == 0:
        if k == 0:
            return i, j, 1
        if k == 1:
            return i - 1, j, 1
        return i, j - 1, 1
    if k == 0:
        return i, j, 0
    if k == 1:
        return i + 1, j, 0
    return i, j + 1, 0


@njit(inline="always")
def bond_unit(k: int, s: int, c: float, sn: float) -> tuple[float, float]:
    """Unit vector from a site on sublattice ``s`` to its neighbour ``k``, rotated."""
    sign = 1.0 if s == 0 else -1.0
    ux = sign * _U0[k, 0]
    uy = sign * _U0[k, 1]
    return c * ux - sn * uy, sn * ux + c * uy


@njit(inline="always")
def site_missing(
    i: int, j: int, s: int, half: int, c: float, sn: float, holes: np.ndarray, n_holes: int
) -> bool:
    """Whether site ``(i, j, s)`` has no atom (outside the lattice patch or inside a hole)."""
    if i < -half or i >= half or j < -half or j >= half:
        return True
    if n_holes > 0:
        x, y = site_xy(i, j, s, c, sn)
        for h in range(n_holes):
            dx = x - holes[h, 0]
            dy = y - holes[h, 1]
            if dx * dx + dy * dy < holes[h, 2] * holes[h, 2]:
                return True
    return False


@njit(inline="always")
def at_edge(
    i: int, j: int, s: int, half: int, c: float, sn: float, holes: np.ndarray, n_holes: int
) -> bool:
    """Whether a site has a missing neighbour (an Si there is not 3-fold in the lattice)."""
    for k in range(3):
        ni, nj, ns = neighbor_site(i, j, s, k)
        if site_missing(ni, nj, ns, half, c, sn, holes, n_holes):
            return True
    return False


# --- rates -------------------------------------------------------------------------------------
@njit(inline="always")
def neighbor_rate(k: int, x: float, y: float, s: int, bx: float, by: float, f: np.ndarray) -> float:
    """Inversion rate (1/s) towards neighbour ``k`` of an Si at ``(x, y)``, beam at ``b``."""
    ux, uy = bond_unit(k, s, f[F_COS], f[F_SIN])
    dx = bx - (x + f[F_REACH] * ux)
    dy = by - (y + f[F_REACH] * uy)
    return f[F_RATE_A] * math.exp(-(dx * dx + dy * dy) * f[F_INV2S2])


@njit
def rates_at(
    i: int, bx: float, by: float, fstate: np.ndarray, istate: np.ndarray, out: np.ndarray
) -> None:
    """Write the three inversion rates of env ``i`` with the beam at ``(bx, by)`` into ``out``."""
    f = fstate[i]
    si, sj, ss = istate[i, I_SI_I], istate[i, I_SI_J], istate[i, I_SI_S]
    x, y = site_xy(si, sj, ss, f[F_COS], f[F_SIN])
    for k in range(3):
        out[k] = neighbor_rate(k, x, y, ss, bx, by, f)


@njit(inline="always")
def evolve(
    i: int,
    duration_s: float,
    bx: float,
    by: float,
    uniform_rate: float,
    fstate: np.ndarray,
    istate: np.ndarray,
    holes: np.ndarray,
    params: np.ndarray,
    rng: np.ndarray,
    known: bool = False,
    l0: float = 0.0,
    l1: float = 0.0,
    l2: float = 0.0,
) -> None:
    """Run env ``i``'s Markov process for ``duration_s`` with the beam fixed at ``(bx, by)``.

    With ``uniform_rate > 0`` every neighbour has that rate instead (a scanning beam spreading
    its dose uniformly). ``known`` passes the three rates of the current Si position already
    evaluated at this beam (``l0, l1, l2``), saving their recomputation before the first hop.
    Stops early at a terminal state.
    """
    f = fstate[i]
    half = int(params[P_HALF_CELLS])
    n_holes = istate[i, I_NHOLES]
    c, sn = f[F_COS], f[F_SIN]
    extra = 1.0 + f[F_KO] + f[F_LOSS]
    t = 0.0
    fresh = known
    while True:
        si, sj, ss = istate[i, I_SI_I], istate[i, I_SI_J], istate[i, I_SI_S]
        if uniform_rate > 0.0:
            l0 = l1 = l2 = uniform_rate
        elif fresh:
            fresh = False  # l0, l1, l2 as given
        else:
            x, y = site_xy(si, sj, ss, c, sn)
            l0 = neighbor_rate(0, x, y, ss, bx, by, f)
            l1 = neighbor_rate(1, x, y, ss, bx, by, f)
            l2 = neighbor_rate(2, x, y, ss, bx, by, f)
        total = l0 + l1 + l2
        every = total * extra
        if every <= 0.0:
            return
        t += standard_exponential(rng, i, STREAM_BACKEND) / every
        if t > duration_s:
            return
        v = uniform(rng, i, STREAM_BACKEND) * every
        if v >= total:
            ko = v < total * (1.0 + f[F_KO])
            istate[i, I_STATUS] = KNOCKOUT if ko else LOST
            if ko:  # the C knocked out is neighbour k with probability lambda_k / total
                w = (v - total) / f[F_KO]
                istate[i, I_KO_NEIGHBOR] = 0 if w < l0 else (1 if w < l0 + l1 else 2)
            return
        k = 0 if v < l0 else (1 if v < l0 + l1 else 2)
        if istate[i, I_HOPS] == 0:
            istate[i, I_FIRST_HOP] = k
        ni, nj, ns = neighbor_site(si, sj, ss, k)
        istate[i, I_SI_I] = ni
        istate[i, I_SI_J] = nj
        istate[i, I_SI_S] = ns
        istate[i, I_HOPS] += 1
        if at_edge(ni, nj, ns, half, c, sn, holes[i], n_holes):
            istate[i, I_STATUS] = EDGE
            return


# --- measurement -------------------------------------------------------------------------------
@njit(inline="always")
def measure(
    i: int,
    fstate: np.ndarray,
    istate: np.ndarray,
    holes: np.ndarray,
    params: np.ndarray,
    rng: np.ndarray,
    meas: np.ndarray,
) -> None:
    """Write what an image pipeline would extract into row ``i`` of ``meas``.

    The Si position carries Gaussian localisation noise; the neighbours come from the fitted
    lattice (exact bond vectors); the view centre from frame alignment (exact here). The
    known holes, which do not move, are written once by :func:`reset`.
    """
    f = fstate[i]
    m = meas[i]
    c, sn = f[F_COS], f[F_SIN]
    ss = istate[i, I_SI_S]
    x, y = site_xy(istate[i, I_SI_I], istate[i, I_SI_J], ss, c, sn)
    nx = ny = 0.0
    if params[P_DET_NOISE] > 0.0:
        g1, g2 = normal_pair(rng, i, STREAM_BACKEND)
        nx = params[P_DET_NOISE] * g1
        ny = params[P_DET_NOISE] * g2
    m[M_SI] = x - f[F_FOV_X] + nx
    m[M_SI + 1] = y - f[F_FOV_Y] + ny
    for k in range(3):
        ux, uy = bond_unit(k, ss, c, sn)
        m[M_NBR + 2 * k] = BOND * ux
        m[M_NBR + 2 * k + 1] = BOND * uy
    m[M_FOV_C] = f[F_FOV_X]
    m[M_FOV_C + 1] = f[F_FOV_Y]
    m[M_STATUS] = istate[i, I_STATUS]
    m[M_FOV] = params[P_FOV]


# --- reset and apply ---------------------------------------------------------------------------
@njit
def reset(
    i: int,
    fstate: np.ndarray,
    istate: np.ndarray,
    holes: np.ndarray,
    params: np.ndarray,
    rng: np.ndarray,
    meas: np.ndarray,
) -> None:
    """Start a new episode in env ``i``; domain randomisation is re-drawn from its stream."""
    f = fstate[i]
    k = STREAM_BACKEND
    angle = uniform_range(rng, i, k, 0.0, TWO_PI) if params[P_RANDOM_ANGLE] > 0 else params[P_ANGLE]
    f[F_COS] = math.cos(angle)
    f[F_SIN] = math.sin(angle)
    speed = uniform_range(rng, i, k, 0.0, params[P_DRIFT_VMAX])
    heading = uniform_range(rng, i, k, 0.0, TWO_PI)
    f[F_VX] = speed * math.cos(heading)
    f[F_VY] = speed * math.sin(heading)
    xs_mult = 1.0
    fwhm_mult = 1.0
    reach = params[P_REACH]
    if params[P_XS_LOG_SD] > 0.0:
        xs_mult = math.exp(params[P_XS_LOG_SD] * normal(rng, i, k))
    if params[P_FWHM_REL_SD] > 0.0:
        fwhm_mult = min(max(1.0 + params[P_FWHM_REL_SD] * normal(rng, i, k), 0.5), 1.5)
    if params[P_OPT_SD] > 0.0:
        reach = max(reach + params[P_OPT_SD] * normal(rng, i, k), 0.0)
    sigma = params[P_SIGMA] * fwhm_mult
    # the prior's peak does not depend on the probe; the physical one is a normalised probe
    scale = xs_mult if params[P_PRIOR] > 0 else xs_mult / (fwhm_mult * fwhm_mult)
    peak = params[P_RATE_A] * scale
    f[F_RATE_A] = peak
    f[F_INV2S2] = 1.0 / (2.0 * sigma * sigma)
    f[F_REACH] = reach
    f[F_KO] = params[P_KO]
    f[F_LOSS] = params[P_LOSS]
    # A scanning beam at the imaging current spreads its dose over the field of view: the
    # Gaussian's integral 2 pi sigma^2 divided by the frame area.
    img_peak = params[P_IMG_RATE_A] * scale
    f[F_IMG_RATE] = img_peak * TWO_PI * sigma * sigma / (params[P_FOV] * params[P_FOV])
    f[F_RATE0] = f[F_RATE0 + 1] = f[F_RATE0 + 2] = 0.0
    f[F_TIME] = 0.0
    istate[i, I_SI_I] = 0
    istate[i, I_SI_J] = 0
    istate[i, I_SI_S] = 0
    istate[i, I_STATUS] = OK
    istate[i, I_HOPS] = 0
    istate[i, I_FIRST_HOP] = -1
    n_holes = int(params[P_N_HOLES])
    istate[i, I_NHOLES] = n_holes
    for h in range(MAX_HOLES):
        holes[i, h, 0] = holes[i, h, 1] = holes[i, h, 2] = 0.0
    for h in range(n_holes):
        d = uniform_range(rng, i, k, params[P_HOLE_DMIN], params[P_HOLE_DMAX])
        a = uniform_range(rng, i, k, 0.0, TWO_PI)
        holes[i, h, 0] = d * math.cos(a)
        holes[i, h, 1] = d * math.sin(a)
        holes[i, h, 2] = params[P_HOLE_R]
    eighth = params[P_FOV] / 8.0
    f[F_FOV_X] = uniform_range(rng, i, k, -eighth, eighth)
    f[F_FOV_Y] = uniform_range(rng, i, k, -eighth, eighth)
    # holes do not move: the measurement carries them from the first frame of the episode
    for h in range(MAX_HOLES):
        for q in range(3):
            meas[i, M_HOLES + 3 * h + q] = holes[i, h, q]
    measure(i, fstate, istate, holes, params, rng, meas)
    meas[i, M_ELAPSED] = 0.0


@njit(inline="always")
def begin_command(i: int, istate: np.ndarray) -> None:
    """Clear the per-command counters (hops, first hop) before a new command."""
    istate[i, I_HOPS] = 0
    istate[i, I_FIRST_HOP] = -1


@njit(inline="always")
def drift(i: int, duration_s: float, fstate: np.ndarray) -> None:
    """Move the view over the sample at the episode's drift velocity for ``duration_s``."""
    fstate[i, F_FOV_X] += fstate[i, F_VX] * duration_s
    fstate[i, F_FOV_Y] += fstate[i, F_VY] * duration_s


@njit(inline="always")
def diffuse(
    i: int, duration_s: float, fstate: np.ndarray, params: np.ndarray, rng: np.ndarray
) -> None:
    """Random-walk part of the drift over ``duration_s`` (variance 2 D t per axis)."""
    if params[P_DRIFT_D] > 0.0 and duration_s > 0.0:
        g1, g2 = normal_pair(rng, i, STREAM_BACKEND)
        scale = math.sqrt(2.0 * params[P_DRIFT_D] * duration_s)
        fstate[i, F_FOV_X] += scale * g1
        fstate[i, F_FOV_Y] += scale * g2


@njit(inline="always")
def dwell(
    i: int,
    probe_x: float,
    probe_y: float,
    dwell_s: float,
    fstate: np.ndarray,
    istate: np.ndarray,
    holes: np.ndarray,
    params: np.ndarray,
    rng: np.ndarray,
) -> None:
    """Park the beam at ``(probe_x, probe_y)`` (A, view frame) for ``dwell_s``.

    The Markov process runs with a piecewise-constant beam over the drifting sample; the view
    moves on with the drift.
    """
    f = fstate[i]
    vx, vy = f[F_VX], f[F_VY]
    speed = math.sqrt(vx * vx + vy * vy)
    n_pieces = 1 + int(min(speed * dwell_s / params[P_DRIFT_RES], 1000.0))
    dt = dwell_s / n_pieces
    fx0, fy0 = f[F_FOV_X], f[F_FOV_Y]
    for p in range(n_pieces):
        if istate[i, I_STATUS] != OK:
            break
        bx = fx0 + vx * (p + 0.5) * dt + probe_x
        by = fy0 + vy * (p + 0.5) * dt + probe_y
        if p == 0:
            # the rates when the dwell starts (beam over the first drift piece), reported as
            # privileged information and handed to the Markov process
            x, y = site_xy(
                istate[i, I_SI_I], istate[i, I_SI_J], istate[i, I_SI_S], f[F_COS], f[F_SIN]
            )
            ss = istate[i, I_SI_S]
            r0 = neighbor_rate(0, x, y, ss, bx, by, f)
            r1 = neighbor_rate(1, x, y, ss, bx, by, f)
            r2 = neighbor_rate(2, x, y, ss, bx, by, f)
            f[F_RATE0], f[F_RATE0 + 1], f[F_RATE0 + 2] = r0, r1, r2
            evolve(i, dt, bx, by, 0.0, fstate, istate, holes, params, rng, True, r0, r1, r2)
        else:
            evolve(i, dt, bx, by, 0.0, fstate, istate, holes, params, rng)
    # the sample drifts through the whole dwell, whatever happened to the Si
    f[F_FOV_X] = fx0 + vx * dwell_s
    f[F_FOV_Y] = fy0 + vy * dwell_s


@njit(inline="always")
def scan_dose(
    i: int,
    frame_s: float,
    fstate: np.ndarray,
    istate: np.ndarray,
    holes: np.ndarray,
    params: np.ndarray,
    rng: np.ndarray,
) -> None:
    """The dose of one frame, spread uniformly over the view, then the view drifts on."""
    if istate[i, I_STATUS] == OK and frame_s > 0.0:
        rate = fstate[i, F_IMG_RATE]
        evolve(i, frame_s, 0.0, 0.0, rate, fstate, istate, holes, params, rng)
    drift(i, frame_s, fstate)


@njit(inline="always")
def shift_view(i: int, dx: float, dy: float, fstate: np.ndarray) -> None:
    """Move the scan field by ``(dx, dy)`` A (re-centring)."""
    fstate[i, F_FOV_X] += dx
    fstate[i, F_FOV_Y] += dy


@njit(inline="always")
def apply(
    i: int,
    probe_x: float,
    probe_y: float,
    dwell_s: float,
    fstate: np.ndarray,
    istate: np.ndarray,
    holes: np.ndarray,
    params: np.ndarray,
    rng: np.ndarray,
    meas: np.ndarray,
) -> None:
    """Park the beam at ``(probe_x, probe_y)`` (A, view frame) for ``dwell_s``, then image.

    Sequence: beam settle (drift only), dwell (piecewise-constant beam over the drifting
    sample), one frame (uniform imaging dose), random-walk drift, measurement; if the Si left
    the central part of the view, the view is re-centred on it at the cost of one more frame.
    """
    begin_command(i, istate)
    settle, frame = params[P_SETTLE], params[P_FRAME]
    drift(i, settle, fstate)
    dwell(i, probe_x, probe_y, dwell_s, fstate, istate, holes, params, rng)
    scan_dose(i, frame, fstate, istate, holes, params, rng)
    elapsed = settle + dwell_s + frame
    diffuse(i, elapsed, fstate, params, rng)
    _check_in_view(i, fstate, istate, params)
    measure(i, fstate, istate, holes, params, rng, meas)
    limit = 0.5 * params[P_RECENTRE] * params[P_FOV]
    m = meas[i]
    if istate[i, I_STATUS] == OK and (abs(m[M_SI]) > limit or abs(m[M_SI + 1]) > limit):
        # re-centre the view on the measured Si; the sample keeps drifting meanwhile
        shift_view(i, m[M_SI], m[M_SI + 1], fstate)
        drift(i, params[P_RECENTRE_TIME], fstate)
        elapsed += params[P_RECENTRE_TIME]
        measure(i, fstate, istate, holes, params, rng, meas)
    fstate[i, F_TIME] += elapsed
    meas[i, M_ELAPSED] = elapsed


@njit(inline="always")
def _check_in_view(i: int, fstate: np.ndarray, istate: np.ndarray, params: np.ndarray) -> None:
    """Mark the Si out of view if it is outside the frame (it cannot be found in the image)."""
    if istate[i, I_STATUS] != OK:
        return
    f = fstate[i]
    x, y = site_xy(istate[i, I_SI_I], istate[i, I_SI_J], istate[i, I_SI_S], f[F_COS], f[F_SIN])
    half = 0.5 * params[P_FOV]
    if abs(x - f[F_FOV_X]) > half or abs(y - f[F_FOV_Y]) > half:
        istate[i, I_STATUS] = OUT_OF_VIEW


@njit
def true_position(fstate: np.ndarray, istate: np.ndarray, i: int) -> np.ndarray:
    """True Si position (A, sample frame) of env ``i`` (privileged)."""
    x, y = site_xy(
        istate[i, I_SI_I], istate[i, I_SI_J], istate[i, I_SI_S], fstate[i, F_COS], fstate[i, F_SIN]
    )
    out = np.empty(2)
    out[0] = x
    out[1] = y
    return out
