"""The Language Rearrangement task: instruction, goal predicates and reward, from measurements.

Everything here reads the skill interface's measurement (:data:`~.kernel.MEASUREMENT`), never
the simulator's state, so the same functions would score a real robot's skills. The episode's
instruction and goal are regenerated from the split and episode index that the measurement
reports (:mod:`~twinloop.sim.rearrange.episodes`).

Goal: up to 3 atoms ``(category, place, count)`` (kinds in
:mod:`~twinloop.sim.rearrange.episodes`): at least ``count`` objects of a category on a
receptacle; none of a category on a receptacle (``count`` 0); one of a category on the
receptacle the robot is at (place ``episodes.GOAL_HERE``); an articulated object open or
closed (category ``episodes.GOAL_ARTICULATED``); the robot at a navigation target (category
``episodes.GOAL_AT``). Success when every atom holds and the hand is empty [LLaRP]. The episode
ends on success; it is truncated after ``max_steps`` (32) high-level actions.

Reward terms (scales from the config; LLaRP's values): ``success`` 10 on success; ``subgoal``
5 per completed subgoal; ``invalid`` -0.05 per action whose preconditions failed. Our reading
of "subgoal", each paid once per episode: for an atom "at least n of c on r", the first time
an object of c is held, and each time the number of its objects on r first reaches 1, 2, ...
up to n; for "none of c on r", the first time an object of c is held and the first time one
lies on another receptacle; the atoms of the robot's location, of an articulated object's
state and "one of c where the robot is" have none (one or two skills reach them: success pays
them). A single rearrangement thus pays 5 + 5 + 10, a swap 4 x 5 + 10, a removal 5 + 5 + 10,
"go to", "find", "open" and "close" 10.

Observation (``observation_mode="symbolic"``, flat ``float32``; read fields by name through
``metadata["observation_layout"]``):

=======  ===========================  =================================================
index    field                        meaning
=======  ===========================  =================================================
0-29     instruction                  token ids (``language.vocabulary()``), 0 = pad
30       is_holding                   1 if the hand holds an object
31       last_skill_ok                0 if the last action's preconditions failed
32       time_fraction                actions used / max_steps
33       true/robot_location          navigation target, -1 at the start
34       true/held_category           category in the hand, -1 none
35-39    true/articulated_open        fridge, left, right, top, bottom drawer
40-75    true/object_category         per object slot, -1 empty
76-111   true/object_receptacle       per object slot, -1 held or empty
112      true/scene                   apartment (0-49 train, 50-59 held out)
113-123  true/receptacle_room         room of each receptacle in this apartment
124-132  true/goal                    (3, 3): category, place, count; -1 unused
=======  ===========================  =================================================

The ``true/`` fields are the privileged symbolic world state (and the goal) that LLaRP's
policies do not see; the oracle plans over them. Action: ``Discrete(71)``, see
:mod:`~twinloop.sim.rearrange.catalog`.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from twinloop.core.jit import njit
from twinloop.core.layout import Field, Layout
from twinloop.core.task import TaskStep
from twinloop.sim.rearrange import catalog as C
from twinloop.sim.rearrange import episodes as E
from twinloop.sim.rearrange import kernel as K
from twinloop.sim.rearrange import language as L
from twinloop.sim.rearrange.config import RearrangeConfig

# --- task state columns (after the episode's spec row) -----------------------------------------
T_STEP = E.N_SPEC
T_PICKED = T_STEP + 1  # MAX_ATOMS flags
T_PLACED = T_PICKED + E.MAX_ATOMS  # MAX_ATOMS: most objects of the atom seen on its receptacle
T_SUBGOALS = T_PLACED + E.MAX_ATOMS
N_T = T_SUBGOALS + 1

# --- task parameters ----------------------------------------------------------------------------
TP_MAX_STEPS = 0
TP_R_SUCCESS = 1
TP_R_SUBGOAL = 2
TP_R_INVALID = 3
N_TP = 4

#: Reward terms in summation order.
REWARD_TERMS = ("success", "subgoal", "invalid")


def observation_layout(cfg: RearrangeConfig) -> Layout:
    """The observation's named fields and bounds (symbolic mode)."""
    n_vocab = len(L.vocabulary())
    return Layout(
        [
            Field("instruction", (L.MAX_TOKENS,), 0.0, n_vocab - 1, "token ids, 0 = pad"),
            Field("is_holding", (), 0.0, 1.0, "the hand holds an object"),
            Field("last_skill_ok", (), 0.0, 1.0, "the last action's preconditions held"),
            Field("time_fraction", (), 0.0, 1.0, "actions used / max_steps"),
            Field("true/robot_location", (), -1.0, C.N_NAV - 1, "navigation target"),
            Field("true/held_category", (), -1.0, C.N_CATEGORIES - 1, "-1: none"),
            Field("true/articulated_open", (C.N_ARTICULATED,), 0.0, 1.0, "open flags"),
            Field("true/object_category", (E.MAX_OBJECTS,), -1.0, C.N_CATEGORIES - 1, ""),
            Field("true/object_receptacle", (E.MAX_OBJECTS,), -1.0, C.N_RECEPTACLES - 1, ""),
            Field("true/scene", (), 0.0, E.N_SCENES - 1, "apartment"),
            Field("true/receptacle_room", (C.N_RECEPTACLES,), 0.0, len(C.ROOMS) - 1, ""),
            Field(
                "true/goal",
                (E.MAX_ATOMS, 3),
                float(min(E.GOAL_AT, E.GOAL_ARTICULATED, E.GOAL_HERE)),
                float(E.MAX_OBJECTS),
                "category, place, count (codes: episodes module)",
            ),
        ]
    )


O_TOKENS = 0
O_HOLDING = L.MAX_TOKENS
O_OK = O_HOLDING + 1
O_TIME = O_OK + 1
O_WORLD = O_TIME + 1  # robot_location .. object_receptacle: measurement columns M_LOC..
O_SCENE = O_WORLD + 2 + C.N_ARTICULATED + 2 * E.MAX_OBJECTS
O_ROOMS = O_SCENE + 1
O_GOAL = O_ROOMS + C.N_RECEPTACLES
N_OBS = O_GOAL + 3 * E.MAX_ATOMS


def task_params(cfg: RearrangeConfig) -> np.ndarray:
    """Pack the task config into the parameter vector of the numba functions."""
    t = cfg.task
    p = np.zeros(N_TP, dtype=np.float64)
    p[TP_MAX_STEPS] = t.max_steps
    p[TP_R_SUCCESS] = t.reward_success
    p[TP_R_SUBGOAL] = t.reward_subgoal
    p[TP_R_INVALID] = t.reward_invalid
    return p


def reward_scales(cfg: RearrangeConfig) -> dict[str, float]:
    """Scale of each reward term, in summation order."""
    t = cfg.task
    return {"success": t.reward_success, "subgoal": t.reward_subgoal, "invalid": t.reward_invalid}


# --- numba row functions -----------------------------------------------------------------------
@njit(inline="always")
def write_observation(m: np.ndarray, ti: np.ndarray, tp: np.ndarray, obs: np.ndarray) -> None:
    """Fill one observation row from a measurement and the task state."""
    for k in range(L.MAX_TOKENS):
        obs[O_TOKENS + k] = ti[E.SP_TOKENS + k]
    obs[O_HOLDING] = 1.0 if m[K.M_HELD] >= 0 else 0.0
    obs[O_OK] = m[K.M_OK]
    obs[O_TIME] = min(ti[T_STEP] / tp[TP_MAX_STEPS], 1.0)
    obs[O_WORLD] = m[K.M_LOC]
    obs[O_WORLD + 1] = m[K.M_HELD]
    for a in range(C.N_ARTICULATED):
        obs[O_WORLD + 2 + a] = m[K.M_ART + a]
    base = O_WORLD + 2 + C.N_ARTICULATED
    for j in range(2 * E.MAX_OBJECTS):  # categories then receptacles, as in the measurement
        obs[base + j] = m[K.M_OBJ_CAT + j]
    obs[O_SCENE] = m[K.M_SCENE]
    for r in range(C.N_RECEPTACLES):
        obs[O_ROOMS + r] = m[K.M_ROOMS + r]
    for k in range(3 * E.MAX_ATOMS):
        obs[O_GOAL + k] = ti[E.SP_ATOMS + k]


@njit
def task_reset(
    m: np.ndarray,
    ti: np.ndarray,
    tp: np.ndarray,
    t: E.WorldTables,
    gen: np.ndarray,
    g: int,
    obs: np.ndarray,
) -> None:
    """Start the episode the measurement reports: its instruction and goal; first obs."""
    E.generate(int(m[K.M_SPLIT]), int(m[K.M_EPISODE]), t, gen, g, ti[: E.N_SPEC])
    ti[T_STEP] = 0
    for a in range(E.MAX_ATOMS):
        ti[T_PICKED + a] = 0
        ti[T_PLACED + a] = 0
    ti[T_SUBGOALS] = 0
    write_observation(m, ti, tp, obs)


@njit(inline="always")
def _count_on(m: np.ndarray, c: int, r: int) -> int:
    n = 0
    for j in range(E.MAX_OBJECTS):
        if m[K.M_OBJ_CAT + j] == c and m[K.M_OBJ_REC + j] == r:
            n += 1
    return n


@njit(inline="always")
def _count_off(m: np.ndarray, c: int, r: int) -> int:
    """Objects of category ``c`` on receptacles other than ``r`` (not the held one)."""
    n = 0
    for j in range(E.MAX_OBJECTS):
        rec = m[K.M_OBJ_REC + j]
        if m[K.M_OBJ_CAT + j] == c and rec >= 0 and rec != r:
            n += 1
    return n


@njit(inline="always")
def task_step(
    m: np.ndarray, ti: np.ndarray, tp: np.ndarray, obs: np.ndarray
) -> tuple[bool, bool, bool, bool, int, float, float, float]:
    """Score the measurement after a skill; write the observation.

    Returns:
        ``(terminated, truncated, success, invalid, subgoals done, success term, subgoal
        term, invalid term)``.
    """
    ti[T_STEP] += 1
    held = m[K.M_HELD]
    new = 0
    done = True
    for a in range(ti[E.SP_N_ATOMS]):
        c = ti[E.SP_ATOMS + 3 * a]
        r = ti[E.SP_ATOMS + 3 * a + 1]
        need = ti[E.SP_ATOMS + 3 * a + 2]
        if c == E.GOAL_ARTICULATED:
            if m[K.M_ART + r] != need:
                done = False
            continue
        if c == E.GOAL_AT:
            if m[K.M_LOC] != r:
                done = False
            continue
        if r == E.GOAL_HERE:
            loc = int(m[K.M_LOC])
            if not (0 <= loc < C.N_RECEPTACLES and _count_on(m, c, loc) >= need):
                done = False
            continue
        if held == c and ti[T_PICKED + a] == 0:
            ti[T_PICKED + a] = 1
            new += 1
        if need == 0:  # none of c on r: the subgoal is one of c put somewhere else
            if _count_off(m, c, r) > 0 and ti[T_PLACED + a] == 0:
                ti[T_PLACED + a] = 1
                new += 1
            if _count_on(m, c, r) > 0:
                done = False
            continue
        n = min(_count_on(m, c, r), need)
        if n > ti[T_PLACED + a]:
            new += n - ti[T_PLACED + a]
            ti[T_PLACED + a] = n
        if n < need:
            done = False
    success = done and held < 0
    ti[T_SUBGOALS] += new
    invalid = m[K.M_OK] == 0.0
    term = success
    trunc = (not term) and ti[T_STEP] >= tp[TP_MAX_STEPS]
    write_observation(m, ti, tp, obs)
    return (
        term,
        trunc,
        success,
        invalid,
        ti[T_SUBGOALS],
        1.0 if success else 0.0,
        float(new),
        1.0 if invalid else 0.0,
    )


@njit
def task_command(action: int) -> float:
    """The skill command of an action (the grounded action's index)."""
    return float(action)


class RearrangeTask:
    """The task for one env (a batch of one over the numba row functions).

    Args:
        cfg: The system config.
        tables: The episode generator's tables (``episodes.world_tables``).
    """

    action_labels = ("grounded skill (catalog.action_names())",)

    def __init__(self, cfg: RearrangeConfig, tables: E.WorldTables) -> None:
        """Build spaces and the task state."""
        self.cfg = cfg
        self.tables = tables
        self.layout = observation_layout(cfg)
        self.observation_space = self.layout.space(np.float32)
        self.action_space = gym.spaces.Discrete(C.N_ACTIONS)
        self.reward_scales = reward_scales(cfg)
        self._tp = task_params(cfg)
        self._t = np.zeros(N_T, dtype=np.int64)
        self._gen = np.zeros((1, 1, 2), dtype=np.uint64)
        self._obs = np.zeros(self.layout.size, dtype=np.float32)

    def _ids(self) -> dict[str, int]:
        return {
            "split": int(self._t[E.SP_SPLIT]),
            "episode": int(self._t[E.SP_INDEX]),
            "instruction_type": int(self._t[E.SP_TYPE]),
        }

    def reset(
        self, measurement: np.ndarray, seed: int | None, options: dict[str, Any] | None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """First observation of the episode the measurement reports."""
        task_reset(measurement, self._t, self._tp, self.tables, self._gen, 0, self._obs)
        return self._obs.copy(), self._ids()

    def command(self, action: Any, measurement: np.ndarray) -> np.ndarray:
        """The skill command for this action."""
        return np.array([task_command(int(action))], dtype=np.float64)

    def step(self, measurement: np.ndarray, applied_command: np.ndarray) -> TaskStep:
        """Reward terms and termination for the measurement after a skill."""
        (term, trunc, success, invalid, n_sub, r_s, r_g, r_i) = task_step(
            measurement, self._t, self._tp, self._obs
        )
        info = {
            **self._ids(),
            "subgoals_done": int(n_sub),
            "is_success": bool(success),
            "invalid_action": bool(invalid),
        }
        terms = {"success": r_s, "subgoal": r_g, "invalid": r_i}
        return TaskStep(self._obs.copy(), terms, bool(term), bool(trunc), info)

    @property
    def instruction(self) -> str:
        """The current episode's instruction as text."""
        return L.detokenize(self._t[E.SP_TOKENS : E.SP_TOKENS + L.MAX_TOKENS])
