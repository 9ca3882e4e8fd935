"""STEM task: steer the Si to a goal site, from measurements only.

Everything here reads the backend's measurement (:data:`twinloop.sim.stem.kernel.MEASUREMENT`)
and never the simulator's state, so the same functions score a simulated run and a run on a
microscope. They are numba functions over one row, called by the single env (through
:class:`StemTask`) and inside the vector env's kernel.

Observation (flat ``float32``; read fields by name with ``observation_layout(cfg)``):

=====  ===========================  =====================================================
index  field                        meaning (units)
=====  ===========================  =====================================================
0-1    si_position_angstrom         Si in the field of view, relative to its centre (A)
2-7    neighbor_offsets_angstrom    the 3 C neighbours relative to the Si, (3, 2) (A)
8-9    goal_offset_angstrom         goal site relative to the Si (A)
10     fov_angstrom                 field-of-view width (A)
11     time_fraction                steps used / max_steps
12-    hole_offsets_angstrom        (only if n_holes > 0) (n_holes, 3): dx, dy, radius (A)
=====  ===========================  =====================================================

Actions (``Box``, float32): ``action_mode="offset"``: the beam relative to the measured Si,
``[dx, dy]`` in +-``offset_max_angstrom``; ``"absolute"``: the beam in the view,
``[x, y]`` in +-fov/2. With ``action_dwell`` a last element gives the dwell (s).

Success: the measured Si within ``success_radius_angstrom`` (0.71 A, half a bond) of the goal.
"""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np

from twinloop.core.jit import njit
from twinloop.core.layout import Field, Layout
from twinloop.core.rng import STREAM_TASK, new_streams, seed_streams, uniform, uniform_range
from twinloop.core.task import TaskStep
from twinloop.sim.stem.config import BOND_ANGSTROM, LATTICE_CONSTANT_ANGSTROM, StemConfig
from twinloop.sim.stem.kernel import (
    M_ELAPSED,
    M_FOV,
    M_FOV_C,
    M_HOLES,
    M_NBR,
    M_SI,
    M_STATUS,
    OK,
    STATUS_NAMES,
)

# --- observation indices ------------------------------------------------------------------------
O_SI = 0
O_NBR = 2
O_GOAL = 8
O_FOV = 10
O_TIME = 11
O_HOLES = 12

# --- task state columns -------------------------------------------------------------------------
T_GOAL_X = 0  # goal site in the sample frame (A)
T_GOAL_Y = 1
T_STEP = 2
T_PREV_DIST = 3
T_TIME = 4
N_T = 5

# --- task parameters ----------------------------------------------------------------------------
TP_ABSOLUTE = 0
TP_DWELL_ACTION = 1
TP_DWELL = 2
TP_SUCCESS_R = 3
TP_GOAL_MIN = 4
TP_GOAL_MAX = 5
TP_MAX_STEPS = 6
TP_R_SUCCESS = 7
TP_R_FAILURE = 8
TP_R_TIME = 9
TP_R_PROGRESS = 10
TP_N_HOLES = 11
TP_FOV = 12
TP_BOUND = 13
TP_GOAL_HOPS = 14
N_TP = 15

#: Reward terms in summation order.
REWARD_TERMS = ("success", "failure", "time", "progress")
#: Failure names by code (0 = none).
FAILURE_NAMES = STATUS_NAMES

GOAL_MODE_RANDOM = 0
GOAL_MODE_OFFSET = 1


def goal_bound_angstrom(cfg: StemConfig) -> float:
    """Bound of goal and hole offsets in the observation: the lattice patch's width."""
    return float(cfg.physics.lattice_size_cells * LATTICE_CONSTANT_ANGSTROM)


def observation_layout(cfg: StemConfig) -> Layout:
    """The observation's named fields and bounds for this config."""
    half = 0.5 * cfg.microscope.fov_angstrom
    bound = goal_bound_angstrom(cfg)
    fields = [
        Field("si_position_angstrom", (2,), -half, half, "Si in the view (A)"),
        Field("neighbor_offsets_angstrom", (3, 2), -1.5, 1.5, "C neighbours rel. to Si (A)"),
        Field("goal_offset_angstrom", (2,), -bound, bound, "goal site rel. to Si (A)"),
        Field("fov_angstrom", (), 0.0, 1000.0, "field-of-view width (A)"),
        Field("time_fraction", (), 0.0, 1.0, "steps used / max_steps"),
    ]
    if cfg.physics.n_holes:
        fields.append(
            Field(
                "hole_offsets_angstrom",
                (cfg.physics.n_holes, 3),
                -bound,
                bound,
                "holes rel. to Si: dx, dy, radius (A)",
            )
        )
    return Layout(fields)


def action_space(cfg: StemConfig) -> tuple[gym.spaces.Box, tuple[str, ...]]:
    """The action space and a label per element."""
    t, mi = cfg.task, cfg.microscope
    r = t.offset_max_angstrom if t.action_mode == "offset" else 0.5 * mi.fov_angstrom
    name = "beam offset from Si" if t.action_mode == "offset" else "beam position in view"
    low, high = [-r, -r], [r, r]
    labels = [f"{name} x (A)", f"{name} y (A)"]
    if t.action_dwell:
        low.append(mi.dwell_min_s)
        high.append(mi.dwell_max_s)
        labels.append("dwell (s)")
    space = gym.spaces.Box(np.array(low, np.float32), np.array(high, np.float32), dtype=np.float32)
    return space, tuple(labels)


def task_params(cfg: StemConfig) -> np.ndarray:
    """Pack the task config into the parameter vector of the numba functions."""
    t = cfg.task
    p = np.zeros(N_TP, dtype=np.float64)
    p[TP_ABSOLUTE] = 1.0 if t.action_mode == "absolute" else 0.0
    p[TP_DWELL_ACTION] = 1.0 if t.action_dwell else 0.0
    p[TP_DWELL] = cfg.microscope.dwell_s
    p[TP_SUCCESS_R] = t.success_radius_angstrom
    p[TP_GOAL_MIN] = t.goal_min_angstrom
    p[TP_GOAL_MAX] = t.goal_max_angstrom
    p[TP_MAX_STEPS] = t.max_steps
    p[TP_R_SUCCESS] = t.reward_success
    p[TP_R_FAILURE] = t.reward_failure
    p[TP_R_TIME] = t.reward_time_per_s
    p[TP_R_PROGRESS] = t.reward_progress_per_angstrom
    p[TP_N_HOLES] = cfg.physics.n_holes
    p[TP_FOV] = cfg.microscope.fov_angstrom
    p[TP_BOUND] = goal_bound_angstrom(cfg)
    p[TP_GOAL_HOPS] = t.goal_hops
    return p


def reward_scales(cfg: StemConfig) -> dict[str, float]:
    """Scale of each reward term, in summation order."""
    t = cfg.task
    return {
        "success": t.reward_success,
        "failure": t.reward_failure,
        "time": t.reward_time_per_s,
        "progress": t.reward_progress_per_angstrom,
    }


# --- numba row functions -----------------------------------------------------------------------
@njit
def snap_to_site(qx: float, qy: float, sx: float, sy: float, m: np.ndarray) -> tuple[float, float]:
    """Nearest lattice site to ``(qx, qy)``, from an Si at ``(sx, sy)`` and its neighbours."""
    n0x, n0y = m[M_NBR], m[M_NBR + 1]
    ux, uy = n0x - m[M_NBR + 2], n0y - m[M_NBR + 3]  # Bravais vectors (length a)
    wx, wy = n0x - m[M_NBR + 4], n0y - m[M_NBR + 5]
    det = ux * wy - uy * wx
    best = 1e300
    bx = by = 0.0
    for sub in range(2):
        ox = sx + (n0x if sub == 1 else 0.0)
        oy = sy + (n0y if sub == 1 else 0.0)
        rx, ry = qx - ox, qy - oy
        alpha = (rx * wy - ry * wx) / det
        beta = (ux * ry - uy * rx) / det
        a0, b0 = math.floor(alpha), math.floor(beta)
        for da in range(2):
            for db in range(2):
                cx = ox + (a0 + da) * ux + (b0 + db) * wx
                cy = oy + (a0 + da) * uy + (b0 + db) * wy
                d2 = (cx - qx) ** 2 + (cy - qy) ** 2
                if d2 < best:
                    best = d2
                    bx, by = cx, cy
    return bx, by


@njit
def hop_distance(gx: float, gy: float, sx: float, sy: float, m: np.ndarray) -> int:
    """Lattice hops from the Si at ``(sx, sy)`` to the site at ``(gx, gy)`` (a lattice site).

    Two hops move the Si along the triangular lattice of its own sublattice (basis
    ``u = n0 - n1``, ``w = n0 - n2``), where the distance of ``m u + l w`` is
    ``max(|m|, |l|, |m + l|)``; a site of the other sublattice is one hop plus that distance
    from the best first neighbour.
    """
    n0x, n0y = m[M_NBR], m[M_NBR + 1]
    ux, uy = n0x - m[M_NBR + 2], n0y - m[M_NBR + 3]
    wx, wy = n0x - m[M_NBR + 4], n0y - m[M_NBR + 5]
    det = ux * wy - uy * wx
    best = 1 << 30
    for sub in range(2):
        rx = gx - sx - (n0x if sub == 1 else 0.0)
        ry = gy - sy - (n0y if sub == 1 else 0.0)
        a = (rx * wy - ry * wx) / det
        b = (ux * ry - uy * rx) / det
        ia, ib = int(round(a)), int(round(b))
        if abs(a - ia) > 0.1 or abs(b - ib) > 0.1:
            continue  # not a site of this sublattice
        if sub == 0:
            d = max(abs(ia), abs(ib), abs(ia + ib))
            best = min(best, 2 * d)
        else:
            # first hop to n0 (0, 0), n1 = n0 - u (a + 1, b) or n2 = n0 - w (a, b + 1)
            for da, db in ((0, 0), (1, 0), (0, 1)):
                d = max(abs(ia + da), abs(ib + db), abs(ia + da + ib + db))
                best = min(best, 1 + 2 * d)
    return best


@njit
def _blocked(gx: float, gy: float, m: np.ndarray, n_holes: int) -> bool:
    """Whether a goal site lies in or next to a known hole (the Si could not sit there)."""
    for h in range(n_holes):
        if m[M_HOLES + 3 * h + 2] <= 0.0:
            continue  # an unused row (an image backend that has seen fewer holes)
        r = m[M_HOLES + 3 * h + 2] + BOND_ANGSTROM
        if (gx - m[M_HOLES + 3 * h]) ** 2 + (gy - m[M_HOLES + 3 * h + 1]) ** 2 < r * r:
            return True
    return False


@njit(inline="always")
def write_observation(m: np.ndarray, t: np.ndarray, tp: np.ndarray, obs: np.ndarray) -> float:
    """Fill one observation row from a measurement; return the Si-goal distance (A)."""
    half = 0.5 * tp[TP_FOV]
    bound = tp[TP_BOUND]
    sx = m[M_FOV_C] + m[M_SI]
    sy = m[M_FOV_C + 1] + m[M_SI + 1]
    obs[O_SI] = min(max(m[M_SI], -half), half)
    obs[O_SI + 1] = min(max(m[M_SI + 1], -half), half)
    for q in range(6):
        obs[O_NBR + q] = m[M_NBR + q]
    gx = t[T_GOAL_X] - sx
    gy = t[T_GOAL_Y] - sy
    obs[O_GOAL] = min(max(gx, -bound), bound)
    obs[O_GOAL + 1] = min(max(gy, -bound), bound)
    obs[O_FOV] = m[M_FOV]
    obs[O_TIME] = min(t[T_STEP] / tp[TP_MAX_STEPS], 1.0)
    for h in range(int(tp[TP_N_HOLES])):
        if m[M_HOLES + 3 * h + 2] <= 0.0:  # an unused row: all zeros (radius 0 = no hole)
            obs[O_HOLES + 3 * h] = 0.0
            obs[O_HOLES + 3 * h + 1] = 0.0
            obs[O_HOLES + 3 * h + 2] = 0.0
            continue
        obs[O_HOLES + 3 * h] = min(max(m[M_HOLES + 3 * h] - sx, -bound), bound)
        obs[O_HOLES + 3 * h + 1] = min(max(m[M_HOLES + 3 * h + 1] - sy, -bound), bound)
        obs[O_HOLES + 3 * h + 2] = m[M_HOLES + 3 * h + 2]
    return math.sqrt(gx * gx + gy * gy)


@njit
def task_reset(
    i: int,
    m: np.ndarray,
    t: np.ndarray,
    tp: np.ndarray,
    rng: np.ndarray,
    goal_mode: int,
    goal_dx: float,
    goal_dy: float,
    obs: np.ndarray,
) -> float:
    """Choose the goal site and write the first observation; return the goal distance (A).

    ``goal_mode`` 0 draws a site uniformly over the annulus ``[goal_min, goal_max]`` (away
    from known holes) from the task stream, or, with ``goal_hops > 0``, a site exactly that
    many lattice hops away; 1 snaps ``(goal_dx, goal_dy)`` relative to the Si.
    """
    sx = m[M_FOV_C] + m[M_SI]
    sy = m[M_FOV_C + 1] + m[M_SI + 1]
    n_holes = int(tp[TP_N_HOLES])
    if goal_mode == GOAL_MODE_OFFSET:
        gx, gy = snap_to_site(sx + goal_dx, sy + goal_dy, sx, sy, m)
    else:
        hops = int(tp[TP_GOAL_HOPS])
        rmin, rmax = tp[TP_GOAL_MIN], tp[TP_GOAL_MAX]
        if hops > 0:  # every site h hops away lies within h bonds, and beyond ~h/2 bonds
            rmin, rmax = 0.45 * hops * BOND_ANGSTROM, hops * BOND_ANGSTROM + 1e-6
        gx, gy = sx, sy
        worst = 1e300
        for _ in range(256):
            r = math.sqrt(uniform_range(rng, i, STREAM_TASK, rmin * rmin, rmax * rmax))
            a = 2.0 * math.pi * uniform(rng, i, STREAM_TASK)
            cx, cy = snap_to_site(sx + r * math.cos(a), sy + r * math.sin(a), sx, sy, m)
            d = math.sqrt((cx - sx) ** 2 + (cy - sy) ** 2)
            miss = max(rmin - d, 0.0) + max(d - rmax, 0.0)
            if hops > 0:
                miss += abs(hop_distance(cx, cy, sx, sy, m) - hops)
            if d < 0.5 * BOND_ANGSTROM or _blocked(cx, cy, m, n_holes):
                miss += 1e6
            if miss < worst:
                worst = miss
                gx, gy = cx, cy
            if miss == 0.0:
                break
    t[T_GOAL_X] = gx
    t[T_GOAL_Y] = gy
    t[T_STEP] = 0.0
    t[T_TIME] = 0.0
    dist = write_observation(m, t, tp, obs)
    t[T_PREV_DIST] = dist
    return dist


@njit(inline="always")
def task_command(a: np.ndarray, m: np.ndarray, tp: np.ndarray) -> tuple[float, float, float]:
    """Turn an action into ``(probe_x, probe_y, dwell_s)`` in the view frame."""
    if tp[TP_ABSOLUTE] > 0.0:
        px, py = a[0], a[1]
    else:
        px = m[M_SI] + a[0]
        py = m[M_SI + 1] + a[1]
    dwell = a[2] if tp[TP_DWELL_ACTION] > 0.0 else tp[TP_DWELL]
    return px, py, dwell


@njit(inline="always")
def task_step(
    m: np.ndarray, t: np.ndarray, tp: np.ndarray, obs: np.ndarray
) -> tuple[bool, bool, bool, int, float, float, float, float, float, float, float]:
    """Score a measurement and write the next observation.

    Returns:
        ``(terminated, truncated, is_success, failure, distance_A, elapsed_s, time_s,
        term_success, term_failure, term_time, term_progress)``.
    """
    t[T_STEP] += 1.0
    elapsed = m[M_ELAPSED]
    t[T_TIME] += elapsed
    dist = write_observation(m, t, tp, obs)
    status = int(m[M_STATUS])
    failure = status  # every non-OK status is a terminal failure
    success = status == OK and dist <= tp[TP_SUCCESS_R]
    terminated = success or failure != 0
    truncated = (not terminated) and t[T_STEP] >= tp[TP_MAX_STEPS]
    progress = t[T_PREV_DIST] - dist
    t[T_PREV_DIST] = dist
    return (
        terminated,
        truncated,
        success,
        failure,
        dist,
        elapsed,
        t[T_TIME],
        1.0 if success else 0.0,
        -1.0 if failure != 0 else 0.0,
        -elapsed,
        progress,
    )


class StemTask:
    """The STEM task for one env (a batch of one over the numba row functions).

    Args:
        cfg: The system config.
    """

    def __init__(self, cfg: StemConfig) -> None:
        """Build spaces and the task's own random stream (goal choice)."""
        self.cfg = cfg
        self.layout = observation_layout(cfg)
        self.observation_space = self.layout.space(np.float32)
        self.action_space, self.action_labels = action_space(cfg)
        self.reward_scales = reward_scales(cfg)
        self._tp = task_params(cfg)
        self._t = np.zeros((1, N_T), dtype=np.float64)
        self._rng = new_streams(1)
        self._obs = np.zeros(self.layout.size, dtype=np.float32)

    @property
    def goal_angstrom(self) -> np.ndarray:
        """The current goal site in the sample frame (A)."""
        return self._t[0, T_GOAL_X : T_GOAL_Y + 1].copy()

    def reset(
        self, measurement: np.ndarray, seed: int | None, options: dict[str, Any] | None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Choose a goal (random, or ``options["goal_offset_angstrom"]``); first observation."""
        if seed is not None:
            seed_streams(self._rng, 0, int(seed))
        mode, dx, dy = goal_option(options)
        dist = task_reset(0, measurement, self._t[0], self._tp, self._rng, mode, dx, dy, self._obs)
        return self._obs.copy(), {"time_s": 0.0, "distance_to_goal_angstrom": dist}

    def command(self, action: np.ndarray, measurement: np.ndarray) -> np.ndarray:
        """Beam position in the view and dwell for this action."""
        return np.array(task_command(action, measurement, self._tp), dtype=np.float64)

    def step(self, measurement: np.ndarray, applied_command: np.ndarray) -> TaskStep:
        """Reward terms and termination for the measurement after a command."""
        (term, trunc, success, failure, dist, elapsed, time_s, r_s, r_f, r_t, r_p) = task_step(
            measurement, self._t[0], self._tp, self._obs
        )
        info = {
            "elapsed_s": elapsed,
            "time_s": time_s,
            "distance_to_goal_angstrom": dist,
            "failure": int(failure),
            "is_success": bool(success),
        }
        terms = {"success": r_s, "failure": r_f, "time": r_t, "progress": r_p}
        return TaskStep(self._obs.copy(), terms, bool(term), bool(trunc), info)


def goal_option(options: dict[str, Any] | None) -> tuple[int, float, float]:
    """Read ``options["goal_offset_angstrom"]`` (a 2-vector relative to the Si), if given."""
    if not options or options.get("goal_offset_angstrom") is None:
        return GOAL_MODE_RANDOM, 0.0, 0.0
    goal = np.asarray(options["goal_offset_angstrom"], dtype=np.float64)
    if goal.shape != (2,) or not np.isfinite(goal).all():
        raise ValueError(f"options['goal_offset_angstrom'] must be 2 finite numbers, got {goal!r}")
    return GOAL_MODE_OFFSET, float(goal[0]), float(goal[1])
