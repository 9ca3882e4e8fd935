"""The apartment and the robot's kinematic high-level skills, as numba row functions.

As in LLaRP's Language Rearrangement [LLaRP, arXiv 2310.17722], skills execute symbolically
(no rigid-body stepping): ``nav(target)`` puts the robot at one of 16 targets; ``pick(c)``
takes an object of category ``c`` from the receptacle the robot is at, if the hand is empty
and the receptacle is reachable (an articulated one must be open); ``place(r)`` puts the held
object on receptacle ``r`` if the robot is at it, it is open and has room; ``open(a)`` and
``close(a)`` change an articulated object the robot is at; ``noop`` does nothing. An action
whose preconditions fail changes nothing and is reported as failed (the task charges it).
Which object of a category ``pick`` takes when several lie there: the lowest slot.

State (one row per env, integers): ``w`` (location, held slot, scene, split, episode,
object count, last skill's success), ``art`` (open flags of the 5 articulated objects),
``ocat``/``orec`` (category and receptacle of each object slot; -1 empty, receptacle -1 while
held). The measurement (:data:`MEASUREMENT`) is what a robot's skill interface reports: the
skill's success and the symbolic world state.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from twinloop.core.bundle import Rows
from twinloop.core.jit import njit
from twinloop.core.layout import Field, Layout
from twinloop.core.rng import STREAM_BACKEND, uniform
from twinloop.sim.rearrange import catalog as C
from twinloop.sim.rearrange import episodes as E

MAX_OBJECTS = E.MAX_OBJECTS

# --- world state columns ------------------------------------------------------------------------
W_LOC = 0  # navigation target the robot is at; -1 at the episode's start
W_HELD = 1  # object slot in the hand, -1 none
W_SCENE = 2
W_SPLIT = 3
W_EPISODE = 4
W_N_OBJ = 5
W_OK = 6  # the last skill's preconditions held
N_W = 7

NO_EPISODE = -1  # reset option: draw the episode from the row's stream

#: The measurement: what the robot's skill interface reports after each skill.
MEASUREMENT = Layout(
    [
        Field("skill_ok", (), 0.0, 1.0, "the last skill's preconditions held"),
        Field("robot_location", (), -1.0, C.N_NAV - 1, "navigation target; -1 at the start"),
        Field("held_category", (), -1.0, C.N_CATEGORIES - 1, "category in the hand; -1 none"),
        Field("articulated_open", (C.N_ARTICULATED,), 0.0, 1.0, "fridge, drawers: open"),
        Field("scene", (), 0.0, E.N_SCENES - 1, "apartment"),
        Field("split", (), 0.0, len(E.SPLITS) - 1, "split id of the episode"),
        Field("episode", (), 0.0, E.N_TRAIN_EPISODES - 1, "episode index in its split"),
        Field("receptacle_room", (C.N_RECEPTACLES,), 0.0, len(C.ROOMS) - 1, "room per receptacle"),
        Field("object_category", (MAX_OBJECTS,), -1.0, C.N_CATEGORIES - 1, "-1: empty slot"),
        Field("object_receptacle", (MAX_OBJECTS,), -1.0, C.N_RECEPTACLES - 1, "-1: held/empty"),
    ]
)
M_OK = MEASUREMENT.index("skill_ok")
M_LOC = MEASUREMENT.index("robot_location")
M_HELD = MEASUREMENT.index("held_category")
M_ART = MEASUREMENT.index("articulated_open")
M_SCENE = MEASUREMENT.index("scene")
M_SPLIT = MEASUREMENT.index("split")
M_EPISODE = MEASUREMENT.index("episode")
M_ROOMS = MEASUREMENT.index("receptacle_room")
M_OBJ_CAT = MEASUREMENT.index("object_category")
M_OBJ_REC = MEASUREMENT.index("object_receptacle")
N_MEAS = MEASUREMENT.size


class PhysicsState(NamedTuple):
    """The world of every env, one row each (allocated by ``core.bundle.allocate``)."""

    w: np.ndarray = Rows((N_W,), np.int64)  # W_* columns
    art: np.ndarray = Rows((C.N_ARTICULATED,), np.int64)  # open flags
    ocat: np.ndarray = Rows((MAX_OBJECTS,), np.int64)  # category per slot, -1 empty
    orec: np.ndarray = Rows((MAX_OBJECTS,), np.int64)  # receptacle per slot, -1 held/empty
    spec: np.ndarray = Rows((E.N_SPEC,), np.int64)  # scratch: the episode's spec row
    gen: np.ndarray = Rows((1, 2), np.uint64)  # scratch: the episode generator's stream
    meas: np.ndarray = Rows((N_MEAS,))  # the measurement (MEASUREMENT layout)


_ART_NAV = np.array(C.ARTICULATED_NAV, dtype=np.int64)


@njit
def write_measurement(
    i: int,
    w: np.ndarray,
    art: np.ndarray,
    ocat: np.ndarray,
    orec: np.ndarray,
    t: E.WorldTables,
    meas: np.ndarray,
) -> None:
    """Report row ``i``'s world as its measurement."""
    m = meas[i]
    m[M_OK] = w[i, W_OK]
    m[M_LOC] = w[i, W_LOC]
    held = w[i, W_HELD]
    m[M_HELD] = ocat[i, held] if held >= 0 else -1
    for a in range(C.N_ARTICULATED):
        m[M_ART + a] = art[i, a]
    m[M_SCENE] = w[i, W_SCENE]
    m[M_SPLIT] = w[i, W_SPLIT]
    m[M_EPISODE] = w[i, W_EPISODE]
    scene = w[i, W_SCENE]
    for r in range(C.N_RECEPTACLES):
        m[M_ROOMS + r] = t.scene_rooms[scene, r]
    for j in range(MAX_OBJECTS):
        m[M_OBJ_CAT + j] = ocat[i, j]
        m[M_OBJ_REC + j] = orec[i, j]


@njit
def draw_episode(i: int, split: int, episode: int, t: E.WorldTables, rng: np.ndarray) -> int:
    """The episode a reset of row ``i`` starts: ``episode``, or one drawn from the stream."""
    if episode != NO_EPISODE:
        return episode
    n = E.N_TRAIN_EPISODES if split == E.SPLIT_TRAIN else E.N_EVAL_EPISODES
    return min(int(uniform(rng, i, STREAM_BACKEND) * n), n - 1)


@njit
def reset(
    i: int,
    split: int,
    episode: int,
    w: np.ndarray,
    art: np.ndarray,
    ocat: np.ndarray,
    orec: np.ndarray,
    spec: np.ndarray,
    gen: np.ndarray,
    t: E.WorldTables,
    rng: np.ndarray,
    meas: np.ndarray,
) -> None:
    """Set up row ``i``'s apartment for episode ``episode`` of ``split`` (-1: drawn)."""
    if split < 0:
        split = t.world[E.WT_SPLIT]
    episode = draw_episode(i, split, episode, t, rng)
    s = spec[i]
    E.generate(split, episode, t, gen, i, s)
    w[i, W_LOC] = -1
    w[i, W_HELD] = -1
    w[i, W_SCENE] = s[E.SP_SCENE]
    w[i, W_SPLIT] = split
    w[i, W_EPISODE] = episode
    w[i, W_N_OBJ] = s[E.SP_N_OBJ]
    w[i, W_OK] = 1
    for a in range(C.N_ARTICULATED):
        art[i, a] = s[E.SP_ART + a]
    for j in range(MAX_OBJECTS):
        ocat[i, j] = s[E.SP_OBJ_CAT + j]
        orec[i, j] = s[E.SP_OBJ_REC + j]
    write_measurement(i, w, art, ocat, orec, t, meas)


@njit(inline="always")
def _reachable(r: int, art: np.ndarray, i: int) -> bool:
    """Whether the robot can reach into receptacle ``r`` (an articulated one must be open)."""
    if r < C.N_OPEN_RECEPTACLES:
        return True
    return art[i, r - C.N_OPEN_RECEPTACLES] == 1


@njit
def apply(
    i: int,
    skill: int,
    w: np.ndarray,
    art: np.ndarray,
    ocat: np.ndarray,
    orec: np.ndarray,
    t: E.WorldTables,
    meas: np.ndarray,
) -> bool:
    """Execute grounded action ``skill`` in row ``i``; return whether its preconditions held."""
    loc = w[i, W_LOC]
    held = w[i, W_HELD]
    ok = False
    if skill < C.A_PICK:  # nav: always possible
        w[i, W_LOC] = skill - C.A_NAV
        ok = True
    elif skill < C.A_PLACE:  # pick(category) at the receptacle the robot is at
        c = skill - C.A_PICK
        if held < 0 and 0 <= loc < C.N_RECEPTACLES and _reachable(loc, art, i):
            for j in range(MAX_OBJECTS):
                if ocat[i, j] == c and orec[i, j] == loc:
                    w[i, W_HELD] = j
                    orec[i, j] = -1
                    ok = True
                    break
    elif skill < C.A_OPEN:  # place(receptacle)
        r = skill - C.A_PLACE
        if held >= 0 and loc == r and _reachable(r, art, i):
            n = 0
            for j in range(MAX_OBJECTS):
                if orec[i, j] == r:
                    n += 1
            if n < t.capacity[r]:
                orec[i, held] = r
                w[i, W_HELD] = -1
                ok = True
    elif skill < C.A_CLOSE:  # open(articulated)
        a = skill - C.A_OPEN
        if loc == _ART_NAV[a] and art[i, a] == 0:
            art[i, a] = 1
            ok = True
    elif skill < C.A_NOOP:  # close(articulated)
        a = skill - C.A_CLOSE
        if loc == _ART_NAV[a] and art[i, a] == 1:
            art[i, a] = 0
            ok = True
    else:
        ok = True  # noop
    w[i, W_OK] = 1 if ok else 0
    write_measurement(i, w, art, ocat, orec, t, meas)
    return ok
