"""The robot's egocentric RGB view, ray cast on the CPU in numba (no OpenGL, no GPU).

LLaRP's policies see a 224x224 egocentric RGB frame [LLaRP, arXiv 2310.17722] rendered by
habitat-sim; ours is a small ray caster over axis-aligned boxes, ellipsoids and vertical
cylinders, so a frame is a pure function of the symbolic world state (the observation's
``true/`` fields) and the resolution: the same row function renders the single env and,
inside one ``prange`` loop, the vector env. MM1 found the image encoder's resolution to
matter most for visual policies, so the resolution is one config field (64-224 px).

What a frame shows (units dm, x along the row of rooms, y into the room, z up):

* the room the robot is in: floor (kitchen tiles, wooden planks elsewhere), walls tinted by
  room type, ceiling; walls block the view of other rooms;
* the room's receptacles as coloured boxes against the walls (:data:`FURNITURE`): chair
  (seat, back, legs), black and brown tables, TV stand with a TV, sink with basin and
  faucet, left and right counters (different colours), red sofa, a tall white fridge whose
  door is shut or swung open (the shelf and its objects visible), left and right drawer
  cabinets whose tray slides out when open, and a two-drawer chest (top, bottom drawer);
* the objects on the receptacles, each category a primitive of its own shape, size and
  colour (:data:`CATEGORY_LOOK`), drawn about 2x life size so that they read at 64 px;
  objects in a closed container are hidden by its walls;
* the held object, in front of the camera at the lower right, on a grey gripper.

The camera: at a receptacle or drawer, 17 dm in front of it at 13 dm height, looking at
it; at a room marker, at the room's centre looking at the back wall; at the episode's
start (no navigation yet), in the kitchen's centre looking at the front wall. Horizontal
and vertical field of view 70 degrees; each pixel's ray is cast through its centre.

Furniture layout (ours): each receptacle keeps the room the scene gives it
(:func:`~twinloop.sim.rearrange.episodes.scene_layouts`) and stands against the front
(y = 0) or back (y = 40) wall by its scene position; items along a wall are ordered by
their scene x, spaced evenly, and shrunk together if a wall is too short, so that nothing
overlaps and every camera sees its target.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np
from numba import prange

from twinloop.core.jit import njit
from twinloop.core.layout import Layout
from twinloop.core.task import TaskStep
from twinloop.sim.rearrange import catalog as C
from twinloop.sim.rearrange import episodes as E
from twinloop.sim.rearrange import language as L
from twinloop.sim.rearrange import task as T

MIN_RESOLUTION = 64
MAX_RESOLUTION = 224
FOV_DEG = 70.0
CAMERA_HEIGHT_DM = 13.0
CAMERA_DISTANCE_DM = 17.0
#: Objects are drawn this much larger than :data:`CATEGORY_LOOK` (about 2x life size), so
#: that an apple on a table 20 dm away is 4 px wide at 64 px.
OBJECT_SCALE = 1.4
#: Furniture items: the 11 receptacles, then the chest of the top and bottom drawers.
N_ITEMS = C.N_RECEPTACLES + 1
CHEST = C.N_RECEPTACLES

# colours (RGB 0-1)
_WOOD = (0.55, 0.36, 0.2)
_DARK = (0.12, 0.12, 0.14)
_WHITE = (0.92, 0.93, 0.95)
_STEEL = (0.62, 0.64, 0.68)

#: Part of a furniture item, in the item's frame (u along the wall, v out of it, z up):
#: ``(u0, u1, v0, v1, z0, z1, (r, g, b), articulated index or -1, shown when open (1),
#: closed (0) or always (-1))``.
Part = tuple[float, float, float, float, float, float, tuple[float, float, float], int, int]


def _legs(w: float, d: float, h: float, rgb: tuple[float, float, float]) -> list[Part]:
    """Four legs under a top of half-width ``w`` and depth ``d``, height ``h``."""
    return [
        (su * (w - 0.3) - 0.25, su * (w - 0.3) + 0.25, v, v + 0.5, 0.0, h, rgb, -1, -1)
        for su in (-1, 1)
        for v in (0.3, d - 0.8)
    ]


def _drawer(
    w: float, z0: float, z1: float, depth: float, art: int, rgb: tuple[float, float, float]
) -> list[Part]:
    """A drawer front (closed) or a pulled-out tray with its front (open)."""
    out = 5.0
    return [
        (-w, w, depth, depth + 0.3, z0, z1, rgb, art, 0),
        (-0.8, 0.8, depth + 0.3, depth + 0.6, z1 - 1.2, z1 - 0.8, _STEEL, art, 0),
        (-w, w, depth, depth + out, z0, z0 + 0.3, rgb, art, 1),
        (-w, -w + 0.3, depth, depth + out, z0, z1 - 0.5, rgb, art, 1),
        (w - 0.3, w, depth, depth + out, z0, z1 - 0.5, rgb, art, 1),
        (-w, w, depth + out - 0.3, depth + out, z0, z1, rgb, art, 1),
        (-0.8, 0.8, depth + out, depth + out + 0.3, z1 - 1.2, z1 - 0.8, _STEEL, art, 1),
    ]


#: Each item's parts, footprint half-width (dm) and look-at height (dm).
FURNITURE: tuple[tuple[list[Part], float, float], ...] = (
    (  # chair
        [
            *_legs(2.0, 4.5, 4.2, _WOOD),
            (-2.2, 2.2, 0.0, 4.5, 4.2, 4.8, _WOOD, -1, -1),
            (-2.2, 2.2, 0.0, 0.6, 4.8, 10.0, _WOOD, -1, -1),
        ],
        2.4,
        5.0,
    ),
    (  # black table
        [*_legs(4.8, 6.0, 7.0, _DARK), (-5.0, 5.0, 0.0, 6.0, 7.0, 7.6, _DARK, -1, -1)],
        5.0,
        6.0,
    ),
    (  # brown table
        [
            *_legs(3.8, 7.5, 7.0, (0.35, 0.2, 0.1)),
            (-4.0, 4.0, 0.0, 7.5, 7.0, 7.6, (0.6, 0.33, 0.15), -1, -1),
        ],
        4.0,
        6.0,
    ),
    (  # tv stand
        [
            (-5.0, 5.0, 0.0, 4.0, 0.0, 5.0, (0.3, 0.3, 0.33), -1, -1),
            (-0.4, 0.4, 0.5, 1.0, 5.0, 7.0, _DARK, -1, -1),
            (-4.5, 4.5, 0.4, 0.9, 7.0, 12.5, (0.05, 0.05, 0.08), -1, -1),
        ],
        5.0,
        6.0,
    ),
    (  # sink
        [
            (-3.0, 3.0, 0.0, 6.0, 0.0, 8.5, (0.85, 0.85, 0.88), -1, -1),
            (-2.4, 2.4, 1.5, 5.5, 8.5, 8.7, _STEEL, -1, -1),
            (-0.3, 0.3, 0.4, 1.2, 8.5, 11.0, _STEEL, -1, -1),
        ],
        3.0,
        7.0,
    ),
    (  # right counter: blue-grey doors, marble top
        [
            (-5.0, 5.0, 0.0, 5.6, 0.0, 8.5, (0.35, 0.45, 0.62), -1, -1),
            (-5.0, 5.0, 0.0, 6.0, 8.5, 9.2, (0.9, 0.88, 0.8), -1, -1),
        ],
        5.0,
        7.0,
    ),
    (  # left counter: wooden doors, dark granite top
        [
            (-5.0, 5.0, 0.0, 5.6, 0.0, 8.5, (0.6, 0.42, 0.28), -1, -1),
            (-5.0, 5.0, 0.0, 6.0, 8.5, 9.2, (0.25, 0.25, 0.27), -1, -1),
        ],
        5.0,
        7.0,
    ),
    (  # sofa
        [
            (-7.0, 7.0, 0.0, 7.0, 0.0, 4.5, (0.62, 0.14, 0.14), -1, -1),
            (-7.0, 7.0, 0.0, 2.0, 4.5, 8.5, (0.55, 0.12, 0.12), -1, -1),
            (-7.0, -5.8, 2.0, 7.0, 4.5, 6.5, (0.55, 0.12, 0.12), -1, -1),
            (5.8, 7.0, 2.0, 7.0, 4.5, 6.5, (0.55, 0.12, 0.12), -1, -1),
        ],
        7.0,
        5.0,
    ),
    (  # fridge: a hollow shell with a shelf; the door shut, or swung open on its left hinge
        [
            (-3.5, 3.5, 0.0, 0.5, 0.0, 19.0, _WHITE, -1, -1),
            (-3.5, -3.0, 0.0, 7.0, 0.0, 19.0, _WHITE, -1, -1),
            (3.0, 3.5, 0.0, 7.0, 0.0, 19.0, _WHITE, -1, -1),
            (-3.5, 3.5, 0.0, 7.0, 18.5, 19.0, _WHITE, -1, -1),
            (-3.5, 3.5, 0.0, 7.0, 0.0, 1.5, _WHITE, -1, -1),
            (-3.0, 3.0, 0.5, 6.8, 6.9, 7.2, (0.7, 0.85, 0.92), -1, -1),
            (-3.0, 3.0, 0.5, 6.8, 12.9, 13.2, (0.7, 0.85, 0.92), -1, -1),
            (-3.5, 3.5, 7.0, 7.5, 0.0, 19.0, _WHITE, 0, 0),
            (2.4, 2.8, 7.5, 7.9, 8.0, 13.0, _STEEL, 0, 0),
            (-4.0, -3.5, 7.0, 14.0, 0.0, 19.0, _WHITE, 0, 1),
            (-3.9, -3.6, 12.5, 13.5, 8.0, 13.0, _STEEL, 0, 1),
        ],
        3.5,
        9.0,
    ),
    (  # left drawer: light wooden cabinet
        [
            (-2.5, 2.5, 0.0, 6.0, 0.0, 8.5, (0.78, 0.62, 0.42), -1, -1),
            *_drawer(2.3, 5.0, 8.2, 6.0, 1, (0.7, 0.55, 0.36)),
        ],
        2.5,
        6.0,
    ),
    (  # right drawer: white cabinet
        [
            (-2.5, 2.5, 0.0, 6.0, 0.0, 8.5, (0.86, 0.86, 0.84), -1, -1),
            *_drawer(2.3, 5.0, 8.2, 6.0, 2, (0.8, 0.8, 0.78)),
        ],
        2.5,
        6.0,
    ),
    (  # chest of the top and bottom drawers
        [
            (-2.5, 2.5, 0.0, 5.0, 0.0, 9.0, (0.45, 0.3, 0.5)),
            *_drawer(2.3, 5.0, 8.6, 5.0, 3, (0.55, 0.38, 0.6)),
            *_drawer(2.3, 0.6, 4.4, 5.0, 4, (0.55, 0.38, 0.6)),
        ],
        2.5,
        6.0,
    ),
)
# the chest's body carries no articulation flags: complete it
FURNITURE = tuple(
    ([p if len(p) == 9 else (*p, -1, -1) for p in parts], w, z) for parts, w, z in FURNITURE
)
assert len(FURNITURE) == N_ITEMS

#: Where objects lie on each receptacle (item frame): ``(u0, u1, v0, v1, z, columns, v
#: shift when its container is open, articulated index or -1)``.
SURFACES = (
    (-1.8, 1.8, 0.8, 4.3, 4.8, 2, 0.0, -1),  # chair seat
    (-4.5, 4.5, 0.5, 5.5, 7.6, 3, 0.0, -1),
    (-3.5, 3.5, 0.5, 7.0, 7.6, 3, 0.0, -1),
    (-4.5, 4.5, 1.2, 3.8, 5.0, 3, 0.0, -1),  # tv stand, in front of the TV
    (-2.2, 2.2, 1.8, 5.2, 8.7, 2, 0.0, -1),  # in the basin
    (-4.5, 4.5, 0.5, 5.5, 9.2, 4, 0.0, -1),
    (-4.5, 4.5, 0.5, 5.5, 9.2, 4, 0.0, -1),
    (-5.5, 5.5, 2.5, 6.5, 4.5, 3, 0.0, -1),  # sofa seat
    (-2.7, 2.7, 1.0, 6.5, 7.2, 3, 0.0, 0),  # fridge shelf
    (-1.9, 1.9, 1.0, 5.0, 5.3, 2, 5.0, 1),  # drawer tray: slides out by 5 dm when open
    (-1.9, 1.9, 1.0, 5.0, 5.3, 2, 5.0, 2),
)

#: Each category's look: ``(shape, half-sizes x, y, z in dm, (r, g, b))``; shapes 0 box,
#: 1 ellipsoid, 2 vertical cylinder. About 1.5x life size, drawn :data:`OBJECT_SCALE` larger.
_BOX, _ELL, _CYL = 0, 1, 2
CATEGORY_LOOK = {
    "ball": (_ELL, 0.9, 0.9, 0.9, (0.95, 0.45, 0.1)),
    "clamp": (_BOX, 0.9, 0.3, 0.6, (0.9, 0.2, 0.55)),
    "hammer": (_BOX, 1.4, 0.25, 0.25, (0.5, 0.3, 0.15)),
    "screwdriver": (_CYL, 0.2, 0.2, 1.2, (0.95, 0.85, 0.1)),
    "padlock": (_BOX, 0.5, 0.3, 0.6, (0.75, 0.65, 0.2)),
    "scissors": (_BOX, 0.9, 0.4, 0.12, (0.2, 0.45, 0.95)),
    "block": (_BOX, 0.6, 0.6, 0.6, (0.95, 0.1, 0.1)),
    "drill": (_BOX, 1.0, 0.35, 0.9, (0.15, 0.65, 0.3)),
    "spatula": (_BOX, 1.3, 0.35, 0.08, (0.1, 0.1, 0.1)),
    "knife": (_BOX, 1.3, 0.15, 0.08, (0.8, 0.8, 0.85)),
    "spoon": (_BOX, 1.1, 0.2, 0.08, (0.7, 0.7, 0.75)),
    "plate": (_CYL, 1.2, 1.2, 0.12, (0.97, 0.97, 0.97)),
    "sponge": (_BOX, 0.7, 0.45, 0.3, (0.95, 0.9, 0.2)),
    "cleanser": (_CYL, 0.45, 0.45, 1.2, (0.2, 0.5, 0.95)),
    "plum": (_ELL, 0.5, 0.5, 0.5, (0.45, 0.1, 0.45)),
    "pear": (_ELL, 0.5, 0.5, 0.75, (0.65, 0.8, 0.2)),
    "peach": (_ELL, 0.6, 0.6, 0.6, (1.0, 0.65, 0.45)),
    "apple": (_ELL, 0.6, 0.6, 0.6, (0.85, 0.08, 0.1)),
    "lemon": (_ELL, 0.65, 0.45, 0.45, (1.0, 0.95, 0.2)),
    "can": (_CYL, 0.45, 0.45, 0.8, (0.8, 0.1, 0.1)),
    "box": (_BOX, 0.9, 0.7, 0.7, (0.75, 0.55, 0.3)),
    "banana": (_ELL, 1.2, 0.3, 0.3, (1.0, 0.88, 0.1)),
    "strawberry": (_ELL, 0.35, 0.35, 0.45, (0.95, 0.1, 0.2)),
    "lego": (_BOX, 0.5, 0.35, 0.3, (0.1, 0.35, 0.95)),
    "rubik's cube": (_BOX, 0.5, 0.5, 0.5, (0.2, 0.85, 0.2)),
    "book": (_BOX, 1.0, 0.75, 0.25, (0.2, 0.3, 0.7)),
    "bowl": (_CYL, 0.9, 0.9, 0.4, (0.95, 0.95, 0.9)),
    "cup": (_CYL, 0.45, 0.45, 0.6, (0.2, 0.75, 0.85)),
    "mug": (_CYL, 0.55, 0.55, 0.65, (0.55, 0.3, 0.2)),
    "orange": (_ELL, 0.6, 0.6, 0.6, (1.0, 0.5, 0.0)),
    "lid": (_CYL, 0.8, 0.8, 0.1, (0.3, 0.3, 0.3)),
    "toy airplane": (_BOX, 1.2, 1.0, 0.3, (0.95, 0.3, 0.75)),
    "wrench": (_BOX, 1.2, 0.2, 0.1, (0.5, 0.5, 0.55)),
}
assert tuple(CATEGORY_LOOK) == C.CATEGORIES

#: Wall colour per room type (kitchen, living room, bedroom, bathroom, hallway).
WALL_COLOURS = (
    (0.93, 0.9, 0.72),
    (0.78, 0.86, 0.74),
    (0.72, 0.8, 0.9),
    (0.9, 0.9, 0.92),
    (0.86, 0.78, 0.68),
)


class RenderTables(NamedTuple):
    """Everything a frame reads besides the world state (built once per resolution).

    Attributes:
        items: ``(60, 12, 5)`` per scene and furniture item: x centre, wall y, facing (+1
            at the front wall, -1 at the back wall), footprint scale, room.
        edges: ``(60, 6)`` x edges of the rooms (dm).
        parts: ``(n, 12)`` furniture parts: u0, u1, v0, v1, z0, z1, r, g, b, articulated
            index, shown-when flag, item.
        part_range: ``(12, 2)`` rows of each item's parts.
        look: ``(12, 2)`` look-at height and half-width per item.
        surfaces: ``(11, 8)`` :data:`SURFACES`.
        capacity: ``(11,)`` objects per receptacle.
        cats: ``(33, 7)`` shape, half-sizes, colour of each category.
        walls: ``(5, 3)`` wall colours.
        camera: ``(3,)`` resolution (px), tan of half the field of view, camera distance.
    """

    items: np.ndarray
    edges: np.ndarray
    parts: np.ndarray
    part_range: np.ndarray
    look: np.ndarray
    surfaces: np.ndarray
    capacity: np.ndarray
    cats: np.ndarray
    walls: np.ndarray
    camera: np.ndarray


def check_resolution(resolution: int, where: str = "rearrange") -> int:
    """``resolution`` as an int in ``[64, 224]``; ``ValueError`` naming the value otherwise."""
    if (
        isinstance(resolution, bool)
        or not isinstance(resolution, int | np.integer)
        or not MIN_RESOLUTION <= resolution <= MAX_RESOLUTION
    ):
        raise ValueError(
            f"{where}: resolution = {resolution!r} px must be an int in "
            f"[{MIN_RESOLUTION}, {MAX_RESOLUTION}]"
        )
    return int(resolution)


def _item_rooms() -> np.ndarray:
    """``(60, 12)`` room of each item (the chest stands in the kitchen)."""
    rooms = E.scene_layouts()[1]
    return np.concatenate([rooms, np.zeros((E.N_SCENES, 1), dtype=np.int64)], axis=1)


@functools.cache
def furniture_layout() -> np.ndarray:
    """``(60, 12, 5)``: x centre, wall y, facing, scale and room of every item (see module)."""
    _, _, xy = E.scene_layouts()
    rooms = _item_rooms()
    edges = E.room_edges()
    half = np.array([w for _, w, _ in FURNITURE])
    out = np.zeros((E.N_SCENES, N_ITEMS, 5))
    for s in range(E.N_SCENES):
        for room in range(int(rooms[s].max()) + 1):
            members = [k for k in range(N_ITEMS) if rooms[s, k] == room]
            x_of = {k: float(xy[s, k, 0]) if k < CHEST else float(edges[s, 0]) for k in members}
            y_of = {k: float(xy[s, k, 1]) if k < CHEST else 0.0 for k in members}
            length = float(edges[s, room + 1] - edges[s, room]) - 2.0
            walls: list[list[int]] = [
                [k for k in members if y_of[k] < E.ROOM_DEPTH_DM / 2],
                [k for k in members if y_of[k] >= E.ROOM_DEPTH_DM / 2],
            ]
            for a, b in ((0, 1), (1, 0)):  # move items off a wall that is too short
                while walls[a] and 2 * half[walls[a]].sum() + len(walls[a]) > length:
                    if 2 * half[walls[b]].sum() + len(walls[b]) + 2 * half[walls[a][-1]] > length:
                        break
                    walls[b].append(walls[a].pop())
            for w, ks in enumerate(walls):
                ks = sorted(ks, key=lambda k: x_of[k])
                need = 2 * half[ks].sum() if ks else 0.0
                scale = min(1.0, (length - len(ks)) / need) if ks else 1.0
                gap = (length - need * scale) / (len(ks) + 1)
                x = float(edges[s, room]) + 1.0 + gap
                for k in ks:
                    hw = half[k] * scale
                    out[s, k] = (x + hw, 0.0 if w == 0 else E.ROOM_DEPTH_DM,
                                 1.0 if w == 0 else -1.0, scale, room)  # fmt: skip
                    x += 2 * hw + gap
    return out


@functools.cache
def render_tables(resolution: int) -> RenderTables:
    """The tables of frames of ``resolution`` px.

    Raises:
        ValueError: ``resolution`` outside ``[64, 224]``.
    """
    resolution = check_resolution(resolution)
    rows, ranges, look = [], np.zeros((N_ITEMS, 2), dtype=np.int64), np.zeros((N_ITEMS, 2))
    for k, (parts, half, z_look) in enumerate(FURNITURE):
        ranges[k, 0] = len(rows)
        for u0, u1, v0, v1, z0, z1, rgb, art, when in parts:
            rows.append([u0, u1, v0, v1, z0, z1, *rgb, art, when, k])
        ranges[k, 1] = len(rows)
        look[k] = (z_look, half)
    g = OBJECT_SCALE
    cats = np.array([[s, g * x, g * y, g * z, *rgb] for s, x, y, z, rgb in CATEGORY_LOOK.values()])
    return RenderTables(
        furniture_layout(),
        E.room_edges().astype(np.float64),
        np.array(rows, dtype=np.float64),
        ranges,
        look,
        np.array(SURFACES, dtype=np.float64),
        np.array(C.CAPACITY, dtype=np.int64),
        cats,
        np.array(WALL_COLOURS),
        np.array([resolution, math.tan(math.radians(FOV_DEG / 2)), CAMERA_DISTANCE_DM]),
    )


# --- numba --------------------------------------------------------------------------------------
MAX_PRIMS = 160
P_SHAPE, P_X0, P_X1, P_Y0, P_Y1, P_Z0, P_Z1, P_R, P_G, P_B = range(10)
N_P = 10
_LIGHT = np.array([0.35, -0.55, 0.76])


@njit(inline="always")
def _add(
    prims: np.ndarray, n: int, shape: float, x0: float, x1: float, y0: float, y1: float,
    z0: float, z1: float, r: float, g: float, b: float,
) -> int:  # fmt: skip
    if n >= MAX_PRIMS:
        return n
    p = prims[n]
    p[P_SHAPE] = shape
    p[P_X0], p[P_X1] = min(x0, x1), max(x0, x1)
    p[P_Y0], p[P_Y1] = min(y0, y1), max(y0, y1)
    p[P_Z0], p[P_Z1] = z0, z1
    p[P_R], p[P_G], p[P_B] = r, g, b
    return n + 1


@njit(inline="always")
def _world(item: np.ndarray, u: float, v: float) -> tuple[float, float]:
    """Item frame (u, v) to world (x, y)."""
    return item[0] + item[2] * item[3] * u, item[1] + item[2] * item[3] * v


@njit
def _camera(
    scene: int, loc: int, t: RenderTables
) -> tuple[int, float, float, float, float, float, float]:
    """Room, camera position and look-at point of robot location ``loc`` (-1: the start)."""
    edges = t.edges[scene]
    if 0 <= loc < C.N_RECEPTACLES + 2:
        k = loc if loc < C.N_RECEPTACLES else CHEST
        item = t.items[scene, k]
        cx, cy = _world(item, 0.0, 0.0)
        cy = item[1] + item[2] * (3.0 + t.camera[2])
        lx, ly = _world(item, 0.0, 3.0)
        return int(item[4]), cx, cy, CAMERA_HEIGHT_DM, lx, ly, t.look[k, 0]
    room = 0 if loc < 0 else loc - (C.N_RECEPTACLES + 2)
    mx = 0.5 * (edges[room] + edges[room + 1])
    mid = 0.5 * E.ROOM_DEPTH_DM
    if loc < 0:  # the start: facing the kitchen's front wall
        return room, mx, mid, CAMERA_HEIGHT_DM, mx, 0.0, 6.0
    return room, mx, mid, CAMERA_HEIGHT_DM, mx, float(E.ROOM_DEPTH_DM), 6.0


@njit
def _build(
    o: np.ndarray,
    room: int,
    fwd: np.ndarray,
    right: np.ndarray,
    up: np.ndarray,
    cam: np.ndarray,
    t: RenderTables,
    prims: np.ndarray,
) -> int:
    """Write the primitives of the robot's room (furniture, objects, held object)."""
    scene = int(o[T.O_SCENE])
    n = 0
    for k in range(N_ITEMS):
        item = t.items[scene, k]
        if int(item[4]) != room:
            continue
        for q in range(t.part_range[k, 0], t.part_range[k, 1]):
            p = t.parts[q]
            art = int(p[9])
            if art >= 0 and p[10] >= 0 and int(o[T.O_WORLD + 2 + art]) != int(p[10]):
                continue
            x0, y0 = _world(item, p[0], p[2])
            x1, y1 = _world(item, p[1], p[3])
            n = _add(prims, n, 0.0, x0, x1, y0, y1, p[4], p[5], p[6], p[7], p[8])
    # objects: the k-th object (slot order) on receptacle r takes grid cell k of its surface
    count = np.zeros(C.N_RECEPTACLES, dtype=np.int64)
    base_cat = T.O_WORLD + 2 + C.N_ARTICULATED
    base_rec = base_cat + E.MAX_OBJECTS
    for j in range(E.MAX_OBJECTS):
        c = int(o[base_cat + j])
        r = int(o[base_rec + j])
        if c < 0 or r < 0:
            continue
        k = count[r]
        count[r] += 1
        item = t.items[scene, r]
        if int(item[4]) != room:
            continue
        s = t.surfaces[r]
        cols = int(s[5])
        nrows = (t.capacity[r] + cols - 1) // cols
        dv = s[6] if s[7] >= 0 and o[T.O_WORLD + 2 + int(s[7])] == 1.0 else 0.0
        u = s[0] + (k % cols + 0.5) * (s[1] - s[0]) / cols
        v = s[2] + dv + (k // cols + 0.5) * (s[3] - s[2]) / nrows
        x, y = _world(item, u, v)
        g = t.cats[c]
        n = _add(prims, n, g[0], x - g[1], x + g[1], y - g[2], y + g[2], s[4], s[4] + 2 * g[3],
                 g[4], g[5], g[6])  # fmt: skip
    held = int(o[T.O_WORLD + 1])
    if held >= 0:  # in front of the camera, lower right, on a grey gripper (0.7x size)
        g = t.cats[held]
        hx, hy, hz = 0.7 * g[1], 0.7 * g[2], 0.7 * g[3]
        px = cam[0] + 5.0 * fwd[0] + 1.9 * right[0] - 1.7 * up[0]
        py = cam[1] + 5.0 * fwd[1] + 1.9 * right[1] - 1.7 * up[1]
        pz = cam[2] + 5.0 * fwd[2] + 1.9 * right[2] - 1.7 * up[2]
        n = _add(prims, n, g[0], px - hx, px + hx, py - hy, py + hy, pz - hz, pz + hz,
                 g[4], g[5], g[6])  # fmt: skip
        n = _add(prims, n, 0.0, px - 0.3, px + 0.3, py - 0.3, py + 0.3, pz - hz - 0.6,
                 pz - hz, 0.45, 0.45, 0.5)  # fmt: skip
    return n


@njit(inline="always")
def _hit(
    p: np.ndarray, ox: float, oy: float, oz: float, dx: float, dy: float, dz: float
) -> tuple[float, float, float, float]:
    """Entry distance of a ray into primitive ``p`` (inf: a miss) and the surface normal."""
    inf = np.inf
    shape = int(p[P_SHAPE])
    if shape == _BOX:
        tmin, tmax, axis = -inf, inf, 0
        for a in range(3):
            o = ox if a == 0 else (oy if a == 1 else oz)
            d = dx if a == 0 else (dy if a == 1 else dz)
            lo, hi = p[P_X0 + 2 * a], p[P_X1 + 2 * a]
            if d == 0.0:
                if o < lo or o > hi:
                    return inf, 0.0, 0.0, 0.0
                continue
            t0, t1 = (lo - o) / d, (hi - o) / d
            if t0 > t1:
                t0, t1 = t1, t0
            if t0 > tmin:
                tmin, axis = t0, a
            tmax = min(tmax, t1)
        if tmax < tmin or tmin <= 1e-6:
            return inf, 0.0, 0.0, 0.0
        d = dx if axis == 0 else (dy if axis == 1 else dz)
        sgn = -1.0 if d > 0 else 1.0
        return tmin, sgn if axis == 0 else 0.0, sgn if axis == 1 else 0.0, sgn if axis == 2 else 0.0
    cx, cy = 0.5 * (p[P_X0] + p[P_X1]), 0.5 * (p[P_Y0] + p[P_Y1])
    rx, ry, rz = 0.5 * (p[P_X1] - p[P_X0]), 0.5 * (p[P_Y1] - p[P_Y0]), 0.5 * (p[P_Z1] - p[P_Z0])
    cz = 0.5 * (p[P_Z0] + p[P_Z1])
    if shape == _ELL:
        qx, qy, qz = (ox - cx) / rx, (oy - cy) / ry, (oz - cz) / rz
        ex, ey, ez = dx / rx, dy / ry, dz / rz
        a = ex * ex + ey * ey + ez * ez
        b = qx * ex + qy * ey + qz * ez
        c = qx * qx + qy * qy + qz * qz - 1.0
        disc = b * b - a * c
        if disc < 0.0:
            return inf, 0.0, 0.0, 0.0
        tt = (-b - math.sqrt(disc)) / a
        if tt <= 1e-6:
            return inf, 0.0, 0.0, 0.0
        nx, ny, nz = (qx + tt * ex) / rx, (qy + tt * ey) / ry, (qz + tt * ez) / rz
        norm = math.sqrt(nx * nx + ny * ny + nz * nz)
        return tt, nx / norm, ny / norm, nz / norm
    # vertical cylinder: side, then the caps
    best, nx, ny, nz = inf, 0.0, 0.0, 0.0
    qx, qy = ox - cx, oy - cy
    a = dx * dx + dy * dy
    if a > 0.0:
        b = qx * dx + qy * dy
        c = qx * qx + qy * qy - rx * rx
        disc = b * b - a * c
        if disc >= 0.0:
            tt = (-b - math.sqrt(disc)) / a
            z = oz + tt * dz
            if tt > 1e-6 and p[P_Z0] <= z <= p[P_Z1]:
                best, nx, ny = tt, (qx + tt * dx) / rx, (qy + tt * dy) / rx
    if dz != 0.0:
        for zc in (p[P_Z0], p[P_Z1]):
            tt = (zc - oz) / dz
            if 1e-6 < tt < best:
                hx, hy = qx + tt * dx, qy + tt * dy
                if hx * hx + hy * hy <= rx * rx:
                    best, nx, ny, nz = tt, 0.0, 0.0, (1.0 if zc == p[P_Z1] else -1.0)
    return best, nx, ny, nz


@njit(inline="always")
def _shade(nx: float, ny: float, nz: float) -> float:
    lam = nx * _LIGHT[0] + ny * _LIGHT[1] + nz * _LIGHT[2]
    return 0.55 + 0.45 * abs(lam)


@njit(inline="always")
def _put(img: np.ndarray, py: int, px: int, r: float, g: float, b: float, s: float) -> None:
    img[py, px, 0] = np.uint8(min(255.0, r * s * 255.0))
    img[py, px, 1] = np.uint8(min(255.0, g * s * 255.0))
    img[py, px, 2] = np.uint8(min(255.0, b * s * 255.0))


@njit
def render_row(
    o: np.ndarray, t: RenderTables, img: np.ndarray, depth: np.ndarray, prims: np.ndarray
) -> None:
    """Render the frame of one symbolic observation row ``o`` into ``img`` ``(H, W, 3)``."""
    res = img.shape[0]
    tan_half = t.camera[1]
    scene = int(o[T.O_SCENE])
    room, cx, cy, cz, lx, ly, lz = _camera(scene, int(o[T.O_WORLD]), t)
    cam = np.array([cx, cy, cz])
    fwd = np.array([lx - cx, ly - cy, lz - cz])
    fwd /= math.sqrt(fwd[0] ** 2 + fwd[1] ** 2 + fwd[2] ** 2)
    right = np.array([fwd[1], -fwd[0], 0.0])
    right /= math.sqrt(right[0] ** 2 + right[1] ** 2)
    up = np.array([
        right[1] * fwd[2] - right[2] * fwd[1],
        right[2] * fwd[0] - right[0] * fwd[2],
        right[0] * fwd[1] - right[1] * fwd[0],
    ])  # fmt: skip
    rx0, rx1 = t.edges[scene, room], t.edges[scene, room + 1]
    wall = t.walls[room]
    step = 2.0 * tan_half / res
    # the room: floor, walls, ceiling (the ray leaves the room's box)
    for py in range(res):
        sy = tan_half - (py + 0.5) * step
        for px in range(res):
            sx = -tan_half + (px + 0.5) * step
            dx = fwd[0] + sx * right[0] + sy * up[0]
            dy = fwd[1] + sx * right[1] + sy * up[1]
            dz = fwd[2] + sx * right[2] + sy * up[2]
            tx = ((rx1 if dx > 0 else rx0) - cx) / dx if dx != 0.0 else np.inf
            ty = ((E.ROOM_DEPTH_DM if dy > 0 else 0.0) - cy) / dy if dy != 0.0 else np.inf
            tz = ((E.ROOM_HEIGHT_DM if dz > 0 else 0.0) - cz) / dz if dz != 0.0 else np.inf
            tt = min(tx, ty, tz)
            depth[py, px] = tt
            if tt == tz and dz < 0:  # floor: kitchen tiles, planks elsewhere
                hx, hy = cx + tt * dx, cy + tt * dy
                if room == 0:
                    odd = (int(math.floor(hx / 4.0)) + int(math.floor(hy / 4.0))) % 2
                    s = 0.8 if odd else 0.95
                    _put(img, py, px, 0.85, 0.85, 0.82, s)
                else:
                    odd = int(math.floor(hy / 2.5)) % 2
                    _put(img, py, px, 0.62, 0.45, 0.3, 0.85 if odd else 0.95)
            elif tt == tz:
                _put(img, py, px, 0.97, 0.97, 0.97, 1.0)
            else:
                s = 0.9 if tt == tx else 1.0
                hz = cz + tt * dz
                if hz < 1.0:  # skirting board
                    _put(img, py, px, 0.45, 0.4, 0.35, 1.0)
                else:
                    _put(img, py, px, wall[0], wall[1], wall[2], s)
    n = _build(o, room, fwd, right, up, cam, t, prims)
    for q in range(n):
        p = prims[q]
        # the primitive's pixel box from its projected corners (whole frame if one is behind)
        lo_x, hi_x, lo_y, hi_y = res, -1, res, -1
        for corner in range(8):
            wx = p[P_X1] if corner & 1 else p[P_X0]
            wy = p[P_Y1] if corner & 2 else p[P_Y0]
            wz = p[P_Z1] if corner & 4 else p[P_Z0]
            vx, vy, vz = wx - cx, wy - cy, wz - cz
            zc = vx * fwd[0] + vy * fwd[1] + vz * fwd[2]
            if zc <= 0.1:
                lo_x, hi_x, lo_y, hi_y = 0, res - 1, 0, res - 1
                break
            xc = (vx * right[0] + vy * right[1] + vz * right[2]) / zc
            yc = (vx * up[0] + vy * up[1] + vz * up[2]) / zc
            fx = (xc + tan_half) / step
            fy = (tan_half - yc) / step
            lo_x = min(lo_x, int(math.floor(fx)) - 1)
            hi_x = max(hi_x, int(math.ceil(fx)) + 1)
            lo_y = min(lo_y, int(math.floor(fy)) - 1)
            hi_y = max(hi_y, int(math.ceil(fy)) + 1)
        lo_x, lo_y = max(lo_x, 0), max(lo_y, 0)
        hi_x, hi_y = min(hi_x, res - 1), min(hi_y, res - 1)
        for py in range(lo_y, hi_y + 1):
            sy = tan_half - (py + 0.5) * step
            for px in range(lo_x, hi_x + 1):
                sx = -tan_half + (px + 0.5) * step
                dx = fwd[0] + sx * right[0] + sy * up[0]
                dy = fwd[1] + sx * right[1] + sy * up[1]
                dz = fwd[2] + sx * right[2] + sy * up[2]
                tt, nx, ny, nz = _hit(p, cx, cy, cz, dx, dy, dz)
                if tt < depth[py, px]:
                    depth[py, px] = tt
                    _put(img, py, px, p[P_R], p[P_G], p[P_B], _shade(nx, ny, nz))


@njit
def render_rows(obs: np.ndarray, t: RenderTables, images: np.ndarray) -> None:
    """Render one frame per symbolic observation row, in this thread (a single env)."""
    res = images.shape[1]
    depth = np.empty((res, res))
    prims = np.empty((MAX_PRIMS, N_P))
    for i in range(obs.shape[0]):
        render_row(obs[i], t, images[i], depth, prims)


@njit(parallel=True)
def render_batch(obs: np.ndarray, t: RenderTables, images: np.ndarray) -> None:
    """Render one frame per symbolic observation row, rows in parallel (the vector env).

    The same :func:`render_row` as :func:`render_rows`, so frames are equal bit for bit.
    """
    res = images.shape[1]
    for i in prange(obs.shape[0]):
        depth = np.empty((res, res))
        prims = np.empty((MAX_PRIMS, N_P))
        render_row(obs[i], t, images[i], depth, prims)


def render(obs: np.ndarray, resolution: int) -> np.ndarray:
    """Frames of symbolic observations ``obs`` (``(d,)`` or ``(n, d)``), uint8 ``(..., H, W, 3)``.

    Raises:
        ValueError: ``resolution`` outside ``[64, 224]``.
    """
    tables = render_tables(resolution)
    flat = np.ascontiguousarray(np.atleast_2d(obs), dtype=np.float32)
    images = np.empty((flat.shape[0], resolution, resolution, 3), dtype=np.uint8)
    (render_rows if flat.shape[0] == 1 else render_batch)(flat, tables, images)
    return images[0] if np.ndim(obs) == 1 else images


# --- the rgb observation (observation_mode="rgb") -------------------------------------------
def rgb_space(resolution: int, layout: Layout) -> gym.spaces.Dict:
    """One env's observation in ``rgb`` mode (see the system README).

    ``image`` ``(H, W, 3)`` uint8; ``instruction`` ``(30,)`` int64 token ids; ``is_holding``
    ``MultiBinary(1)``; ``symbolic``: the symbolic mode's flat vector (privileged ``true/``
    fields included; its layout is ``metadata["observation_layout"]``).
    """
    n_vocab = len(L.vocabulary())
    return gym.spaces.Dict(
        {
            "image": gym.spaces.Box(0, 255, (resolution, resolution, 3), dtype=np.uint8),
            "instruction": gym.spaces.Box(0, n_vocab - 1, (L.MAX_TOKENS,), dtype=np.int64),
            "is_holding": gym.spaces.MultiBinary(1),
            "symbolic": layout.space(np.float32),
        }
    )


def rgb_views(symbolic: np.ndarray, images: np.ndarray) -> dict[str, np.ndarray]:
    """The ``rgb`` observation of symbolic rows ``(..., d)`` and their frames ``(..., H, W, 3)``."""
    tokens = symbolic[..., T.O_TOKENS : T.O_TOKENS + L.MAX_TOKENS].astype(np.int64)
    holding = symbolic[..., T.O_HOLDING : T.O_HOLDING + 1].astype(np.int8)
    return {"image": images, "instruction": tokens, "is_holding": holding, "symbolic": symbolic}


class RgbViewTask:
    """The rearrangement task with the rendered view: the symbolic task, then a frame.

    Rewards, termination and infos are the symbolic task's; only the observation changes.
    On a device that has a camera (``--backend skills``), the frame is the device's own
    (``frame_source``): it shows the world as it is, while the symbolic fields are what the
    robot reports (with its perception errors); the simulator renders it from the state.

    Args:
        task: The symbolic task.
        resolution: Frame side in px (64-224).
        frame_source: Returns the device's latest frame (``(R, R, 3)`` uint8, validated by
            the backend), or None to render one from the symbolic observation.
    """

    def __init__(
        self,
        task: T.RearrangeTask,
        resolution: int,
        frame_source: Callable[[], np.ndarray | None] | None = None,
    ) -> None:
        """Wrap ``task``; frames of ``resolution`` px."""
        self.task = task
        self.frame_source = frame_source
        self.resolution = check_resolution(resolution)
        self.tables = render_tables(self.resolution)
        self.layout = task.layout
        self.action_space = task.action_space
        self.action_labels = task.action_labels
        self.reward_scales = task.reward_scales
        self.observation_space = rgb_space(self.resolution, task.layout)

    def _view(self, symbolic: np.ndarray) -> dict[str, np.ndarray]:
        frame = self.frame_source() if self.frame_source is not None else None
        if frame is not None:
            return rgb_views(symbolic, frame)
        image = np.empty((1, self.resolution, self.resolution, 3), dtype=np.uint8)
        render_rows(symbolic[None], self.tables, image)
        return rgb_views(symbolic, image[0])

    def reset(
        self, measurement: np.ndarray, seed: int | None, options: dict[str, Any] | None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """First observation (with its frame) of the episode the measurement reports."""
        obs, info = self.task.reset(measurement, seed, options)
        return self._view(obs), info

    def command(self, action: Any, measurement: np.ndarray) -> np.ndarray:
        """The symbolic task's command."""
        return self.task.command(action, measurement)

    def step(self, measurement: np.ndarray, applied_command: np.ndarray) -> TaskStep:
        """The symbolic task's step, its observation with the frame."""
        result = self.task.step(measurement, applied_command)
        return dataclasses.replace(result, observation=self._view(result.observation))

    @property
    def instruction(self) -> str:
        """The current episode's instruction as text."""
        return self.task.instruction
