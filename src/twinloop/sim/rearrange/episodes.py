"""Episode specs from ``(split, index)``: apartments, object placement, instruction and goal.

Every episode of every split is generated on demand, deterministically, from the split's id
and the episode's index (nothing is stored or downloaded): the pair seeds a SplitMix64
stream (the generator of :mod:`twinloop.core.rng`) and a numba function draws the episode
from it, so the vector env's kernel can draw a fresh training episode at each auto-reset.

Splits follow LLaRP's evaluation design [LLaRP, arXiv 2310.17722]: a training distribution of
150,000 episodes and evaluation splits of 100 episodes. Each split is one rule function
(``_rule_<split>``) that chooses the instruction type, the phrasing set, the scene and the
category pool; everything else is drawn by the same :func:`build` for every split, so an
evaluation split differs from training only in what its rule changes:

========================  ==================================================================
split                     rule (what differs from training)
========================  ==================================================================
train                     the training mixture (:data:`TRAINING_MIX`: single, no_source,
                          remove, two_objects, swap 4 parts each; close, open, go_to, find
                          1 part each, LLaRP's training types and weights), training
                          phrasings, training categories, training scenes 0-49, no
                          held-out combination
rephrasing                the training mixture in held-out phrasings only
referring_expressions     single rearrangement whose object is named by its attributes
                          ("the yellow curved fruit"), never by its name
spatial_relationships     single rearrangement whose target is named by its kind and a
                          relation to another receptacle ("the counter left of the sink"),
                          true and unique in the episode's apartment
context                   single rearrangement whose object is implied by a context sentence
                          ("I want to play a sport." for ball)
irrelevant_text           a training single-rearrangement phrasing with an irrelevant sentence
                          before or after it
novel_objects             single rearrangement of held-out categories only
multiple_rearrangements   "all the X" (2-3 instances; ``all_of``, or ``all_from`` a named
                          source), types training never has
multiple_objects          three objects in one instruction (training has one or two)
conditional               "if the A is open/closed, ... otherwise ...", a type training
                          never has; the condition is read at the episode's start
new_scenes                the training mixture in the 10 held-out scenes 50-59
compositional             (beyond the benchmark) the training mixture's single and
                          two-object types, but every episode holds one of
                          :data:`HELD_OUT_COMBINATIONS`: a (type, category, target) whose
                          every part and every pair of parts training has
========================  ==================================================================

Goals are up to 3 atoms ``(category, place, count)`` (columns ``SP_ATOMS``), one of:

- ``(c, r, n)``, ``n >= 1``: at least ``n`` objects of category ``c`` on receptacle ``r``;
- ``(c, r, 0)``: no object of ``c`` on ``r`` (``remove``);
- ``(c, GOAL_HERE, 1)``: an object of ``c`` on the receptacle the robot is at (``find``);
- ``(GOAL_ARTICULATED, a, s)``: articulated object ``a`` open (``s = 1``) or closed (0);
- ``(GOAL_AT, t, 0)``: the robot at navigation target ``t`` (``go_to``);
- ``(-1, -1, -1)``: unused.

Success is every atom holding with the hand empty (:mod:`~twinloop.sim.rearrange.task`).

Scenes (apartments) are generated from fixed seeds too (:func:`scene_rooms`): 3-5 rooms and
the room of each receptacle (kitchen furniture in the kitchen, sofa and TV stand in the living
room, chair and tables anywhere), with positions in decimetres for the renderer to come.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import numpy as np

from twinloop.core.jit import njit
from twinloop.core.rng import mix64, uniform
from twinloop.sim.rearrange import catalog as C
from twinloop.sim.rearrange import language as L

# --- splits ---------------------------------------------------------------------------------
SPLITS = (
    "train",
    # paraphrastic robustness [LLaRP]: the same behaviour, new language
    "rephrasing",
    "referring_expressions",
    "spatial_relationships",
    "context",
    "irrelevant_text",
    # behaviour generalisation [LLaRP]: a new optimal behaviour
    "multiple_rearrangements",
    "novel_objects",
    "multiple_objects",
    "conditional",
    # unseen apartments [LLaRP]
    "new_scenes",
    # beyond the benchmark: held-out combinations of seen parts
    "compositional",
)
(
    SPLIT_TRAIN,
    SPLIT_REPHRASING,
    SPLIT_REFERRING,
    SPLIT_SPATIAL,
    SPLIT_CONTEXT,
    SPLIT_IRRELEVANT,
    SPLIT_MULTI_REARRANGE,
    SPLIT_NOVEL,
    SPLIT_MULTI_OBJECTS,
    SPLIT_CONDITIONAL,
    SPLIT_NEW_SCENES,
    SPLIT_COMPOSITIONAL,
) = range(len(SPLITS))
#: Episodes per split: 150,000 training episodes and 100 per evaluation split [LLaRP].
N_TRAIN_EPISODES = 150_000
N_EVAL_EPISODES = 100
EVAL_SPLITS = SPLITS[1:]
#: LLaRP's 10 evaluation splits (its results table's rows, before ``overall``).
BENCHMARK_SPLITS = SPLITS[1:11]
#: LLaRP's evaluation splits not built yet (none left).
SPLITS_NOT_BUILT: tuple[str, ...] = ()


def split_size(split: str) -> int:
    """Episodes in ``split``."""
    return N_TRAIN_EPISODES if split == "train" else N_EVAL_EPISODES


def split_id(split: str, where: str = "rearrange") -> int:
    """The id of split ``split``; ``ValueError`` listing the valid names if unknown."""
    if split not in SPLITS:
        raise ValueError(f"{where}: unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    return SPLITS.index(split)


# --- scenes -----------------------------------------------------------------------------------
N_SCENES = 60
N_TRAIN_SCENES = 50  # scenes 50-59 are held out (new_scenes split)
_SCENE_SALT = 0x5CE4E5

#: Receptacles whose room is fixed: kitchen (0) and living room (1); the rest move.
_FIXED_ROOM = {"tv stand": 1, "sink": 0, "right counter": 0, "left counter": 0, "sofa": 1}


class _Stream:
    """SplitMix64 in Python integers (the same sequence as :func:`twinloop.core.rng.uniform`)."""

    def __init__(self, seed: int) -> None:
        self.state = seed & (2**64 - 1)

    def randint(self, n: int) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & (2**64 - 1)
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & (2**64 - 1)
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & (2**64 - 1)
        z ^= z >> 31
        return min(int(((z >> 11) + 1) * n / 2.0**53), n - 1)


def _room_widths(rs: _Stream) -> list[int]:
    """The first draws of a scene's stream: 3-5 rooms, each 30-60 dm wide."""
    n = 3 + rs.randint(3)
    return [30 + rs.randint(31) for _ in range(n)]


#: Room depth (y) and height (z) in dm, the same for every room (ours).
ROOM_DEPTH_DM = 40
ROOM_HEIGHT_DM = 25


@functools.cache
def room_edges() -> np.ndarray:
    """``(60, 6)`` x edges (dm) of each scene's rooms: room k spans ``[e[k], e[k + 1]]``.

    Scenes with fewer than 5 rooms repeat their last edge.
    """
    edges = np.zeros((N_SCENES, 6), dtype=np.int64)
    for s in range(N_SCENES):
        widths = _room_widths(_Stream(_SCENE_SALT * 1_000_003 + s))
        e = np.concatenate([[0], np.cumsum(widths)])
        edges[s, : len(e)] = e
        edges[s, len(e) :] = e[-1]
    return edges


@functools.cache
def scene_layouts() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(n_rooms (60,), receptacle room (60, 11), receptacle position dm (60, 11, 2))``.

    Rooms lie side by side along x, each 30-60 dm wide and 40 dm deep; a receptacle sits at a
    random spot inside its room. Kitchen furniture (fridge, sink, counters, the drawers) is in
    room 0, the sofa and TV stand in room 1; chair and tables in any room.
    """
    n_rooms = np.zeros(N_SCENES, dtype=np.int64)
    rooms = np.zeros((N_SCENES, C.N_RECEPTACLES), dtype=np.int64)
    xy = np.zeros((N_SCENES, C.N_RECEPTACLES, 2), dtype=np.int64)
    for s in range(N_SCENES):
        rs = _Stream(_SCENE_SALT * 1_000_003 + s)
        widths = _room_widths(rs)
        n = len(widths)
        n_rooms[s] = n
        x0 = np.concatenate([[0], np.cumsum(widths)])
        for r, name in enumerate(C.RECEPTACLES):
            if name in _FIXED_ROOM:
                room = _FIXED_ROOM[name]
            elif r >= C.N_OPEN_RECEPTACLES:
                room = 0  # fridge and drawers: kitchen
            else:
                room = rs.randint(n)
            rooms[s, r] = room
            xy[s, r, 0] = x0[room] + 2 + rs.randint(widths[room] - 4)
            xy[s, r, 1] = 2 + rs.randint(36)
    return n_rooms, rooms, xy


@functools.cache
def scene_relations() -> np.ndarray:
    """``(60, 11, 11)``: how receptacle ``r`` relates to anchor ``a`` in each scene.

    ``language.REL_LEFT`` when ``r`` is left of ``a`` (smaller x) and no other receptacle of
    ``r``'s kind (``language.KINDS``) except ``a`` is, so "the {kind} left of the {a}" names
    ``r`` alone; ``REL_RIGHT`` likewise; 0 when neither holds.

    Raises:
        RuntimeError: A scene has no receptacle that a relation names (never with the seeds).
    """
    xy = scene_layouts()[2]
    rel = np.zeros((N_SCENES, C.N_RECEPTACLES, C.N_RECEPTACLES), dtype=np.int64)
    for s in range(N_SCENES):
        x = xy[s, :, 0]
        for r in range(C.N_RECEPTACLES):
            for a in range(C.N_RECEPTACLES):
                if a == r:
                    continue
                others = [
                    m for m in range(C.N_RECEPTACLES)
                    if L.KINDS[m] == L.KINDS[r] and m not in (r, a)
                ]  # fmt: skip
                if x[r] < x[a] and all(x[m] > x[a] for m in others):
                    rel[s, r, a] = L.REL_LEFT
                elif x[r] > x[a] and all(x[m] < x[a] for m in others):
                    rel[s, r, a] = L.REL_RIGHT
        if not (rel[s] > 0).any():
            raise RuntimeError(f"scene {s}: no spatial relationship names a receptacle")
    return rel


# --- compositional hold-out -------------------------------------------------------------------
N_HELD_OUT_COMBINATIONS = 48
_COMBO_SALT = 0xC0DB05
#: Instruction types whose (type, category, target) combinations can be held out.
COMBINATION_TYPES = (L.TYPE_SINGLE, L.TYPE_TWO)


@functools.cache
def held_out_combinations() -> np.ndarray:
    """``(48, 3)`` (type, category, target receptacle) held out of all splits but one.

    Drawn from a fixed seed; only ``compositional`` episodes hold them.
    Each (type, category) loses at most one target, each (category, target) pair at most one
    type, and each (type, target) at most 3 categories, so every part and every pair of parts
    of a held-out combination stays in training.
    """
    rs = _Stream(_COMBO_SALT)
    out: list[tuple[int, int, int]] = []
    type_cat: set[tuple[int, int]] = set()
    cat_rec: set[tuple[int, int]] = set()
    type_rec: dict[tuple[int, int], int] = {}
    while len(out) < N_HELD_OUT_COMBINATIONS:
        typ = COMBINATION_TYPES[rs.randint(len(COMBINATION_TYPES))]
        cat = rs.randint(C.N_TRAIN_CATEGORIES)
        rec = rs.randint(C.N_RECEPTACLES)
        if (typ, cat) in type_cat or (cat, rec) in cat_rec or type_rec.get((typ, rec), 0) >= 3:
            continue
        out.append((typ, cat, rec))
        type_cat.add((typ, cat))
        cat_rec.add((cat, rec))
        type_rec[(typ, rec)] = type_rec.get((typ, rec), 0) + 1
    return np.array(out, dtype=np.int64)


def _combination_mask() -> np.ndarray:
    mask = np.zeros((len(L.INSTRUCTION_TYPES), C.N_CATEGORIES, C.N_RECEPTACLES), dtype=np.int64)
    for typ, cat, rec in held_out_combinations():
        mask[typ, cat, rec] = 1
    return mask


def held_out_combination_names() -> tuple[tuple[str, str, str], ...]:
    """:func:`held_out_combinations` as (type, category, receptacle) names."""
    return tuple(
        (L.INSTRUCTION_TYPES[t], C.CATEGORIES[c], C.RECEPTACLES[r])
        for t, c, r in held_out_combinations()
    )


# --- the spec row ---------------------------------------------------------------------------
MAX_OBJECTS = 36
MAX_ATOMS = 3
#: Goal-atom codes (module docstring): in the category column, an articulated object's state
#: or the robot's location; in the place column, the receptacle the robot is at.
GOAL_ARTICULATED = -2
GOAL_AT = -3
GOAL_HERE = -2
#: The kinds of goal atom, as :class:`GoalAtom` names them.
GOAL_KINDS = ("on", "none_on", "on_here", "articulated", "at")
SP_SPLIT = 0
SP_INDEX = 1
SP_SCENE = 2
SP_TYPE = 3
SP_TEMPLATE = 4
SP_HELD_OUT = 5  # 1: a held-out phrasing
SP_N_OBJ = 6
SP_ART = 7  # 5 open flags at the start
SP_N_ATOMS = SP_ART + C.N_ARTICULATED
SP_ATOMS = SP_N_ATOMS + 1  # MAX_ATOMS x (category, receptacle, count)
SP_SLOTS = SP_ATOMS + 3 * MAX_ATOMS  # the slot values, in language.SLOTS order
SP_N_TOK = SP_SLOTS + len(L.SLOTS)
SP_TOKENS = SP_N_TOK + 1
SP_OBJ_CAT = SP_TOKENS + L.MAX_TOKENS
SP_OBJ_REC = SP_OBJ_CAT + MAX_OBJECTS
N_SPEC = SP_OBJ_REC + MAX_OBJECTS

#: Most task objects one episode places (three objects; "all the X" places 2-3).
MAX_TASK_OBJECTS = 3
#: Upper bound of clutter objects, so that every task object finds a slot.
MAX_CLUTTER = MAX_OBJECTS - MAX_TASK_OBJECTS


class WorldTables(NamedTuple):
    """Everything the generator, the skills and the task read: the env's parameters bundle.

    One flat bundle (numba passes a flat bundle into a parallel loop, not a nested one), so
    the vector env's parameters are this class too (``env.params_of``) and numba compiles
    every function that takes it once.

    Attributes:
        templates: ``(n_templates, width)`` token ids and slot codes (language.tables()).
        template_range: ``(n_types, 2, 2)`` template rows by type and phrasing set.
        fillers: ``(n_slots, rows, width)`` token ids of each slot's filler per value.
        capacity: ``(11,)`` objects each receptacle holds.
        scene_rooms: ``(60, 11)`` room of each receptacle in each scene.
        relations: ``(60, 11, 11)`` spatial relation codes (:func:`scene_relations`).
        combinations: ``(n, 3)`` held-out (type, category, receptacle) combinations.
        combination_mask: ``(n_types, 33, 11)`` 1 where a combination is held out.
        world: ``(2,)`` clutter objects per episode, the default split's id.
        task: The task's float parameters (``task.TP_*``; zeros until the env sets them).
        cmd_low: The skill command's lower limit (the safety layer's).
        cmd_high: Its upper limit.
        max_step: Its rate limit (``inf``: none).
    """

    templates: np.ndarray
    template_range: np.ndarray
    fillers: np.ndarray
    capacity: np.ndarray
    scene_rooms: np.ndarray
    relations: np.ndarray
    combinations: np.ndarray
    combination_mask: np.ndarray
    world: np.ndarray
    task: np.ndarray
    cmd_low: np.ndarray
    cmd_high: np.ndarray
    max_step: np.ndarray


WT_N_CLUTTER = 0
WT_SPLIT = 1


def world_tables(n_clutter: int = 30, split: str = "train") -> WorldTables:
    """The generator's tables for ``n_clutter`` clutter objects and default split ``split``."""
    if not 0 <= n_clutter <= MAX_CLUTTER:
        raise ValueError(f"n_clutter = {n_clutter} must be in [0, {MAX_CLUTTER}]")
    t = L.tables()
    return WorldTables(
        t["templates"],
        t["template_range"],
        t["fillers"],
        np.array(C.CAPACITY, dtype=np.int64),
        scene_layouts()[1],
        scene_relations(),
        held_out_combinations(),
        _combination_mask(),
        np.array([n_clutter, split_id(split)], dtype=np.int64),
        np.zeros(4, dtype=np.float64),
        np.array([0.0]),
        np.array([float(C.N_ACTIONS - 1)]),
        np.array([np.inf]),
    )


# --- numba: drawing ---------------------------------------------------------------------------
_SPLIT_MUL = np.uint64(0xD1B54A32D192ED03)
_INDEX_MUL = np.uint64(0x8CB92BA72F3D8DD7)
_GAMMA = np.uint64(0x9E3779B97F4A7C15)


@njit(inline="always")
def _seed(gen: np.ndarray, g: int, split: int, index: int) -> None:
    gen[g, 0, 0] = mix64(np.uint64(split + 1) * _SPLIT_MUL + np.uint64(index) * _INDEX_MUL)
    gen[g, 0, 1] = _GAMMA


@njit(inline="always")
def _randint(gen: np.ndarray, g: int, n: int) -> int:
    return min(int(uniform(gen, g, 0) * n), n - 1)


# The spec columns of the template's slots (language.SLOTS order).
S_OBJ, S_OBJ2, S_OBJ3, S_OBJS, S_SRC, S_TGT, S_TGT2, S_ART, S_STATE = range(SP_SLOTS, SP_SLOTS + 9)
S_REF, S_CTX, S_DIS, S_KIND, S_REL, S_ANCHOR = range(SP_SLOTS + 9, SP_SLOTS + 15)
assert L.SLOTS.index("anchor") == S_ANCHOR - SP_SLOTS
N_DISTRACTORS = len(L.DISTRACTORS)


class Rule(NamedTuple):
    """What a split's rule chooses; :func:`build` draws everything else the same way."""

    typ: int  # instruction type (language.TYPE_*)
    held_out: int  # 1: a held-out phrasing
    scene: int
    novel: int  # 1: the task's categories are the held-out ones
    combination: int  # row of WorldTables.combinations the episode holds; -1: none


#: The training mixture: LLaRP's training instruction types (``v2_train`` tags) with their
#: sampling weights (``overweight_freq``: 4 for the rearrangements, 1 otherwise).
TRAINING_MIX = {
    "single": 4,
    "no_source": 4,
    "remove": 4,
    "two_objects": 4,
    "swap": 4,
    "close": 1,
    "open": 1,
    "go_to": 1,
    "find": 1,
}
_MIX_TYPES = np.array([L.INSTRUCTION_TYPES.index(k) for k in TRAINING_MIX], dtype=np.int64)
_MIX_CUM = np.cumsum(np.array(list(TRAINING_MIX.values()), dtype=np.float64))
_MIX_CUM /= _MIX_CUM[-1]


@njit
def _training_mix(gen: np.ndarray, g: int) -> int:
    u = uniform(gen, g, 0)
    for k in range(_MIX_CUM.shape[0] - 1):
        if u <= _MIX_CUM[k]:
            return _MIX_TYPES[k]
    return _MIX_TYPES[_MIX_CUM.shape[0] - 1]


@njit
def _train_scene(gen: np.ndarray, g: int) -> int:
    return _randint(gen, g, N_TRAIN_SCENES)


@njit
def _rule_train(gen: np.ndarray, g: int, t: WorldTables) -> Rule:
    typ = _training_mix(gen, g)
    return Rule(typ, 0, _train_scene(gen, g), 0, -1)


@njit
def _rule_rephrasing(gen: np.ndarray, g: int, t: WorldTables) -> Rule:
    typ = _training_mix(gen, g)
    return Rule(typ, 1, _train_scene(gen, g), 0, -1)


@njit
def _rule_referring_expressions(gen: np.ndarray, g: int, t: WorldTables) -> Rule:
    return Rule(L.TYPE_REFERRING, 0, _train_scene(gen, g), 0, -1)


@njit
def _rule_spatial_relationships(gen: np.ndarray, g: int, t: WorldTables) -> Rule:
    return Rule(L.TYPE_SPATIAL, 0, _train_scene(gen, g), 0, -1)


@njit
def _rule_context(gen: np.ndarray, g: int, t: WorldTables) -> Rule:
    return Rule(L.TYPE_CONTEXT, 0, _train_scene(gen, g), 0, -1)


@njit
def _rule_irrelevant_text(gen: np.ndarray, g: int, t: WorldTables) -> Rule:
    return Rule(L.TYPE_IRRELEVANT, 0, _train_scene(gen, g), 0, -1)


@njit
def _rule_novel_objects(gen: np.ndarray, g: int, t: WorldTables) -> Rule:
    return Rule(L.TYPE_SINGLE, 0, _train_scene(gen, g), 1, -1)


@njit
def _rule_multiple_rearrangements(gen: np.ndarray, g: int, t: WorldTables) -> Rule:
    typ = L.TYPE_ALL if uniform(gen, g, 0) <= 0.5 else L.TYPE_ALL_FROM
    return Rule(typ, 0, _train_scene(gen, g), 0, -1)


@njit
def _rule_multiple_objects(gen: np.ndarray, g: int, t: WorldTables) -> Rule:
    return Rule(L.TYPE_THREE, 0, _train_scene(gen, g), 0, -1)


@njit
def _rule_conditional(gen: np.ndarray, g: int, t: WorldTables) -> Rule:
    return Rule(L.TYPE_CONDITIONAL, 0, _train_scene(gen, g), 0, -1)


@njit
def _rule_new_scenes(gen: np.ndarray, g: int, t: WorldTables) -> Rule:
    typ = _training_mix(gen, g)
    return Rule(typ, 0, N_TRAIN_SCENES + _randint(gen, g, N_SCENES - N_TRAIN_SCENES), 0, -1)


@njit
def _rule_compositional(gen: np.ndarray, g: int, t: WorldTables) -> Rule:
    combination = _randint(gen, g, t.combinations.shape[0])
    typ = t.combinations[combination, 0]
    return Rule(typ, 0, _train_scene(gen, g), 0, combination)


@njit
def _rule(split: int, gen: np.ndarray, g: int, t: WorldTables) -> Rule:
    if split == SPLIT_REPHRASING:
        return _rule_rephrasing(gen, g, t)
    if split == SPLIT_REFERRING:
        return _rule_referring_expressions(gen, g, t)
    if split == SPLIT_SPATIAL:
        return _rule_spatial_relationships(gen, g, t)
    if split == SPLIT_CONTEXT:
        return _rule_context(gen, g, t)
    if split == SPLIT_IRRELEVANT:
        return _rule_irrelevant_text(gen, g, t)
    if split == SPLIT_NOVEL:
        return _rule_novel_objects(gen, g, t)
    if split == SPLIT_MULTI_REARRANGE:
        return _rule_multiple_rearrangements(gen, g, t)
    if split == SPLIT_MULTI_OBJECTS:
        return _rule_multiple_objects(gen, g, t)
    if split == SPLIT_CONDITIONAL:
        return _rule_conditional(gen, g, t)
    if split == SPLIT_NEW_SCENES:
        return _rule_new_scenes(gen, g, t)
    if split == SPLIT_COMPOSITIONAL:
        return _rule_compositional(gen, g, t)
    return _rule_train(gen, g, t)


@njit
def _write_tokens(spec: np.ndarray, t: WorldTables) -> None:
    """Fill the template's slots with the fillers of the spec's slot values."""
    row = spec[SP_TEMPLATE]
    n = 0
    for j in range(t.templates.shape[1]):
        code = t.templates[row, j]
        if code == L.END:
            break
        if code >= 0:
            if n < L.MAX_TOKENS:
                spec[SP_TOKENS + n] = code
            n += 1
            continue
        slot = -2 - code  # language.SLOTS order
        v = spec[SP_SLOTS + slot]
        for k in range(t.fillers.shape[2]):
            tok = t.fillers[slot, v, k]
            if tok < 0:
                break
            if n < L.MAX_TOKENS:
                spec[SP_TOKENS + n] = tok
            n += 1
    spec[SP_N_TOK] = n  # never > MAX_TOKENS: language.tables() checks every template's longest


@njit(inline="always")
def _has(cats: np.ndarray, n: int, c: int) -> bool:
    for k in range(n):  # noqa: SIM110 (a plain loop for numba)
        if cats[k] == c:
            return True
    return False


@njit(inline="always")
def _holds_combination(t: WorldTables, typ: int, cats: np.ndarray, n: int, tgt: int) -> bool:
    for k in range(n):  # noqa: SIM110 (a plain loop for numba)
        if t.combination_mask[typ, cats[k], tgt] == 1:
            return True
    return False


@njit
def _draw_relation(
    spec: np.ndarray, scene: int, tgt: int, gen: np.ndarray, g: int, t: WorldTables
) -> None:
    """Name target ``tgt`` by its kind and a relation to an anchor that singles it out."""
    n = 0
    for a in range(C.N_RECEPTACLES):
        if t.relations[scene, tgt, a] > 0:
            n += 1
    q = _randint(gen, g, n)
    for a in range(C.N_RECEPTACLES):
        if t.relations[scene, tgt, a] > 0:
            if q == 0:
                spec[S_KIND] = tgt
                spec[S_REL] = t.relations[scene, tgt, a]
                spec[S_ANCHOR] = a
                return
            q -= 1


@njit(inline="always")
def _has_relation(t: WorldTables, scene: int, r: int) -> bool:
    for a in range(C.N_RECEPTACLES):  # noqa: SIM110 (a plain loop for numba)
        if t.relations[scene, r, a] > 0:
            return True
    return False


@njit(inline="always")
def _n_categories(typ: int) -> int:
    """How many distinct categories an instruction of type ``typ`` names."""
    if typ == L.TYPE_TWO or typ == L.TYPE_SWAP:
        return 2
    if typ == L.TYPE_THREE:
        return 3
    if typ == L.TYPE_CLOSE or typ == L.TYPE_OPEN or typ == L.TYPE_GO_TO:
        return 0
    return 1


@njit(inline="always")
def _names_target(typ: int) -> bool:
    """Whether type ``typ`` names a target receptacle (``{tgt}``)."""
    return not (
        typ == L.TYPE_REMOVE or typ == L.TYPE_FIND or typ == L.TYPE_CLOSE or typ == L.TYPE_OPEN
    )


@njit
def build(
    split: int,
    index: int,
    rule: Rule,
    gen: np.ndarray,
    g: int,
    t: WorldTables,
    spec: np.ndarray,
) -> None:
    """Draw the rest of an episode (the same for every split) into the spec row."""
    typ, held_out, scene, novel, combination = rule
    for k in range(N_SPEC):
        spec[k] = -1
    spec[SP_SPLIT] = split
    spec[SP_INDEX] = index
    spec[SP_SCENE] = scene
    spec[SP_TYPE] = typ
    spec[SP_HELD_OUT] = held_out
    lo = t.template_range[typ, held_out, 0]
    spec[SP_TEMPLATE] = lo + _randint(gen, g, t.template_range[typ, held_out, 1] - lo)
    for a in range(C.N_ARTICULATED):  # doors and drawers may start open [LLaRP]
        spec[SP_ART + a] = 1 if uniform(gen, g, 0) <= 0.5 else 0
    all_of = typ == L.TYPE_ALL or typ == L.TYPE_ALL_FROM
    # the task's categories: distinct, from the training or the held-out pool
    n_cats = _n_categories(typ)
    cat_lo = C.N_TRAIN_CATEGORIES if novel else 0
    cat_n = (C.N_CATEGORIES - C.N_TRAIN_CATEGORIES) if novel else C.N_TRAIN_CATEGORIES
    cats = spec[S_OBJ : S_OBJ + 3]  # obj, obj2, obj3
    k = 0
    if combination >= 0:  # the held-out combination's category, in a random position
        cats[0] = t.combinations[combination, 1]
        k = 1
    while k < n_cats:
        c = cat_lo + _randint(gen, g, cat_n)
        if not _has(cats, k, c):
            cats[k] = c
            k += 1
    if combination >= 0:
        q = _randint(gen, g, n_cats)
        cats[0], cats[q] = cats[q], cats[0]
        tgt = t.combinations[combination, 2]
    elif _names_target(typ):  # every other split leaves the held-out combinations out
        tgt = _randint(gen, g, C.N_RECEPTACLES)
        while _holds_combination(t, typ, cats, n_cats, tgt) or (
            typ == L.TYPE_SPATIAL and not _has_relation(t, scene, tgt)
        ):
            tgt = _randint(gen, g, C.N_RECEPTACLES)
    else:
        tgt = -1
    spec[S_OBJS] = cats[0]  # objs: the plural of obj
    tgt2 = -1
    if typ == L.TYPE_CONDITIONAL:
        tgt2 = _randint(gen, g, C.N_RECEPTACLES - 1)
        tgt2 += 1 if tgt2 >= tgt else 0
        spec[S_ART] = _randint(gen, g, C.N_ARTICULATED)
        spec[S_STATE] = _randint(gen, g, 2)  # state word: 0 closed, 1 open
    elif typ == L.TYPE_REFERRING:
        spec[S_REF] = cats[0]
    elif typ == L.TYPE_CONTEXT:
        spec[S_CTX] = cats[0]
    elif typ == L.TYPE_IRRELEVANT:
        spec[S_DIS] = _randint(gen, g, N_DISTRACTORS)
    elif typ == L.TYPE_SPATIAL:
        _draw_relation(spec, scene, tgt, gen, g, t)
    elif typ == L.TYPE_CLOSE or typ == L.TYPE_OPEN:  # it starts in the other state
        a = _randint(gen, g, C.N_ARTICULATED)
        spec[S_ART] = a
        spec[SP_ART + a] = 1 if typ == L.TYPE_CLOSE else 0
    spec[S_TGT] = tgt
    spec[S_TGT2] = tgt2
    # task objects, each on a receptacle that is not a target ("find": an open one; "all
    # from": all on the first one's; "swap": the second on the target)
    n_inst = n_cats
    if all_of:
        n_inst = 2 + _randint(gen, g, 2)
    count = np.zeros(C.N_RECEPTACLES, dtype=np.int64)
    ocat = spec[SP_OBJ_CAT : SP_OBJ_CAT + MAX_OBJECTS]
    orec = spec[SP_OBJ_REC : SP_OBJ_REC + MAX_OBJECTS]
    n_src = C.N_OPEN_RECEPTACLES if typ == L.TYPE_FIND else C.N_RECEPTACLES
    for j in range(n_inst):
        if typ == L.TYPE_ALL_FROM and j > 0:
            src = spec[S_SRC]  # capacities are at least 4, all_from places at most 3
        elif typ == L.TYPE_SWAP and j == 1:
            src = tgt
        else:
            while True:
                src = _randint(gen, g, n_src)
                if src != tgt and src != tgt2 and count[src] < t.capacity[src]:
                    break
        ocat[j] = cats[0] if all_of else cats[j]
        orec[j] = src
        count[src] += 1
        if j == 0:
            spec[S_SRC] = src
    src = spec[S_SRC]
    # the goal: atoms (category, place, count), see the module docstring
    n_atoms = 1 if (all_of or n_cats == 0) else n_cats
    spec[SP_N_ATOMS] = n_atoms
    for a in range(n_atoms):
        spec[SP_ATOMS + 3 * a] = cats[a]
        spec[SP_ATOMS + 3 * a + 1] = tgt
        spec[SP_ATOMS + 3 * a + 2] = n_inst if all_of else 1
    if typ == L.TYPE_CONDITIONAL:
        holds = spec[SP_ART + spec[S_ART]] == spec[S_STATE]
        spec[SP_ATOMS + 1] = tgt if holds else tgt2
    elif typ == L.TYPE_SWAP:  # the second object goes where the first one was
        spec[SP_ATOMS + 3 + 1] = src
    elif typ == L.TYPE_REMOVE:
        spec[SP_ATOMS + 1] = src
        spec[SP_ATOMS + 2] = 0
    elif typ == L.TYPE_FIND:
        spec[SP_ATOMS + 1] = GOAL_HERE
    elif typ == L.TYPE_CLOSE or typ == L.TYPE_OPEN:
        spec[SP_ATOMS] = GOAL_ARTICULATED
        spec[SP_ATOMS + 1] = spec[S_ART]
        spec[SP_ATOMS + 2] = 1 if typ == L.TYPE_OPEN else 0
    elif typ == L.TYPE_GO_TO:
        spec[SP_ATOMS] = GOAL_AT
        spec[SP_ATOMS + 2] = 0
    # clutter on open receptacles, leaving room for the goal's objects on the targets
    reserve = np.zeros(C.N_RECEPTACLES, dtype=np.int64)
    if typ == L.TYPE_SWAP:  # room for one more on each side, whichever moves first
        reserve[tgt] = 1
        reserve[src] = 1
    elif tgt >= 0:
        reserve[tgt] = n_inst
    if tgt2 >= 0:
        reserve[tgt2] = n_inst
    n_obj = n_inst
    for _ in range(t.world[WT_N_CLUTTER]):
        c = _randint(gen, g, C.N_TRAIN_CATEGORIES)
        while _has(cats, n_cats, c):
            c = _randint(gen, g, C.N_TRAIN_CATEGORIES)
        r = _randint(gen, g, C.N_OPEN_RECEPTACLES)
        tries = 0
        while count[r] + reserve[r] >= t.capacity[r]:
            r = (r + 1) % C.N_OPEN_RECEPTACLES  # next open receptacle with room
            tries += 1
            if tries > C.N_OPEN_RECEPTACLES:
                break
        if tries > C.N_OPEN_RECEPTACLES:
            break  # no room left (n_clutter is bounded so that this never happens)
        ocat[n_obj] = c
        orec[n_obj] = r
        count[r] += 1
        n_obj += 1
    spec[SP_N_OBJ] = n_obj
    for j in range(n_obj - 1, 0, -1):  # shuffle the slots: a slot says nothing of its role
        q = _randint(gen, g, j + 1)
        ocat[j], ocat[q] = ocat[q], ocat[j]
        orec[j], orec[q] = orec[q], orec[j]
    _write_tokens(spec, t)
    for n in range(spec[SP_N_TOK], L.MAX_TOKENS):
        spec[SP_TOKENS + n] = L.PAD


@njit
def generate(
    split: int, index: int, t: WorldTables, gen: np.ndarray, g: int, spec: np.ndarray
) -> None:
    """Episode ``index`` of split ``split`` into ``spec`` (row ``g`` of ``gen`` is scratch)."""
    _seed(gen, g, split, index)
    build(split, index, _rule(split, gen, g, t), gen, g, t, spec)


# --- Python view ------------------------------------------------------------------------------
class GoalAtom(NamedTuple):
    """One goal atom, readable.

    Attributes:
        kind: One of :data:`GOAL_KINDS`: ``on`` (at least ``count`` objects of ``category``
            on ``place``), ``none_on`` (no object of ``category`` on ``place``), ``on_here``
            (an object of ``category`` on the receptacle the robot is at; ``place`` is
            ``""``), ``articulated`` (``place``, an articulated object, is open if ``count``
            is 1, closed if 0; ``category`` is ``""``), ``at`` (the robot at navigation
            target ``place``; ``category`` is ``""``).
        category: A category name, or ``""``.
        place: A receptacle, articulated object or navigation target name, or ``""``.
        count: See ``kind``.
    """

    kind: str
    category: str
    place: str
    count: int


def goal_atom(c: int, p: int, n: int) -> GoalAtom:
    """The readable form of the goal atom ``(c, p, n)`` of a spec row (module docstring)."""
    if c == GOAL_ARTICULATED:
        return GoalAtom("articulated", "", C.ARTICULATED[p], n)
    if c == GOAL_AT:
        return GoalAtom("at", "", C.NAV_TARGETS[p], n)
    if p == GOAL_HERE:
        return GoalAtom("on_here", C.CATEGORIES[c], "", n)
    return GoalAtom("on" if n > 0 else "none_on", C.CATEGORIES[c], C.RECEPTACLES[p], n)


@dataclasses.dataclass(frozen=True)
class EpisodeSpec:
    """One episode, readable (see :func:`episode_spec`).

    Attributes:
        split: Split name.
        index: Episode index in the split.
        scene: Apartment (0-49 training, 50-59 held out).
        instruction_type: One of ``language.INSTRUCTION_TYPES``.
        template: Template row (``language.template_text``).
        held_out_phrasing: The template is a held-out phrasing.
        instruction: The instruction text.
        tokens: Token ids (padded to 30 with 0).
        goal: The goal's atoms (:class:`GoalAtom`): success when every atom holds and the
            robot's hand is empty.
        articulated_open: Start state of fridge, left, right, top and bottom drawer.
        objects: ``(category, receptacle)`` of every object at the start.
        slots: The template's slot values by slot name (-1: unused).
        row: The raw spec row (``SP_*`` columns).
    """

    split: str
    index: int
    scene: int
    instruction_type: str
    template: int
    held_out_phrasing: bool
    instruction: str
    tokens: np.ndarray
    goal: tuple[GoalAtom, ...]
    articulated_open: tuple[bool, ...]
    objects: tuple[tuple[str, str], ...]
    slots: dict[str, int]
    row: np.ndarray

    @property
    def goal_categories(self) -> tuple[str, ...]:
        """The categories the goal's atoms name, in atom order."""
        return tuple(a.category for a in self.goal if a.category)


def generate_row(split: str, index: int, tables: WorldTables | None = None) -> np.ndarray:
    """The raw spec row of episode ``index`` of ``split``.

    Raises:
        ValueError: Unknown split, or ``index`` outside ``[0, split_size)``.
    """
    sid = split_id(split)
    size = split_size(split)
    if (
        isinstance(index, bool)
        or not isinstance(index, int | np.integer)
        or not (0 <= index < size)
    ):
        raise ValueError(f"episode index {index!r} of split {split!r} must be in [0, {size})")
    spec = np.empty(N_SPEC, dtype=np.int64)
    gen = np.zeros((1, 1, 2), dtype=np.uint64)
    generate(sid, int(index), tables or world_tables(), gen, 0, spec)
    return spec


def episode_spec(split: str, index: int, tables: WorldTables | None = None) -> EpisodeSpec:
    """Episode ``index`` of ``split``, as the env would reset to it (default clutter)."""
    row = generate_row(split, index, tables)
    n_tok = int(row[SP_N_TOK])
    tokens = row[SP_TOKENS : SP_TOKENS + L.MAX_TOKENS].copy()
    goal = tuple(
        goal_atom(*(int(v) for v in row[SP_ATOMS + 3 * a : SP_ATOMS + 3 * a + 3]))
        for a in range(int(row[SP_N_ATOMS]))
    )
    n_obj = int(row[SP_N_OBJ])
    objects = tuple(
        (C.CATEGORIES[row[SP_OBJ_CAT + j]], C.RECEPTACLES[row[SP_OBJ_REC + j]])
        for j in range(n_obj)
    )
    if n_tok > L.MAX_TOKENS:
        raise RuntimeError(f"episode {index} of {split!r}: instruction of {n_tok} tokens")
    return EpisodeSpec(
        split=split,
        index=int(index),
        scene=int(row[SP_SCENE]),
        instruction_type=L.INSTRUCTION_TYPES[row[SP_TYPE]],
        template=int(row[SP_TEMPLATE]),
        held_out_phrasing=bool(row[SP_HELD_OUT]),
        instruction=L.detokenize(tokens),
        tokens=tokens,
        goal=goal,
        articulated_open=tuple(bool(v) for v in row[SP_ART : SP_ART + C.N_ARTICULATED]),
        objects=objects,
        slots={name: int(row[SP_SLOTS + k]) for k, name in enumerate(L.SLOTS)},
        row=row,
    )


def describe_splits() -> dict[str, dict[str, Any]]:
    """Each split's size and its rule's docstring line (for docs and ``twinloop info``)."""
    return {s: {"episodes": split_size(s)} for s in SPLITS}
