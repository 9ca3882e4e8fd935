"""STEM envs: the simulated backend, the single env and the kernel-batched vector env.

``twinloop/StemSteer-v0`` = :class:`~twinloop.sim.stem.task.StemTask` x a backend x safety.
The single env runs the kernel on a batch of one through :class:`StemSimBackend`; the vector
env runs the same row functions of :mod:`~twinloop.sim.stem.kernel` and
:mod:`~twinloop.sim.stem.task` inside one parallel loop, auto-resetting ended episodes.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np
from numba import prange

from twinloop.core.backend import BaseBackend
from twinloop.core.bundle import Rows, allocate, bundle
from twinloop.core.env import TwinEnv
from twinloop.core.jit import njit
from twinloop.core.layout import Field, Layout
from twinloop.core.rng import seed_streams
from twinloop.core.safety import clip_command_row
from twinloop.core.vector import (
    Actions,
    KernelVectorEnv,
    ResetOut,
    StepOut,
    command_limits,
    core_rows,
    zero_row,
)
from twinloop.sim.stem import frames as F
from twinloop.sim.stem import kernel as K
from twinloop.sim.stem import task as T
from twinloop.sim.stem.config import StemConfig

ENV_ID = "twinloop/StemSteer-v0"


def command_space(cfg: StemConfig) -> gym.spaces.Box:
    """The microscope's command limits: probe inside the view, dwell within bounds."""
    mi = cfg.microscope
    h = 0.5 * mi.fov_angstrom
    return gym.spaces.Box(
        np.array([-h, -h, mi.dwell_min_s]),
        np.array([h, h, mi.dwell_max_s]),
        dtype=np.float64,
    )


COMMAND_LABELS = ("probe x in view (A)", "probe y in view (A)", "dwell (s)")


# --- the state, parameters and reset options, declared once -----------------------------------
#: Every env's state, one row each, allocated by core for the vector env and the backend.
StemState = bundle(
    "StemState",
    __name__,
    K.PhysicsState,  # f, i, holes, meas: the kernel's physics state
    task=Rows((T.N_T,)),  # goal, step count, previous distance (T.T_* columns)
    cmd=Rows((6,)),  # scratch: the command, then the safe command
    **core_rows(3),  # rng, prev_cmd, has_prev
    doc="Every STEM env's state: physics (kernel.PhysicsState), task, command scratch, core rows.",
)


class StemParams(NamedTuple):
    """Parameters shared by every row: physics, task and the command limits."""

    physics: np.ndarray
    task: np.ndarray
    cmd_low: np.ndarray
    cmd_high: np.ndarray
    max_step: np.ndarray


def params_of(cfg: StemConfig) -> StemParams:
    """The parameters bundle of a config."""
    limits = command_limits(command_space(cfg), cfg.safety)
    return StemParams(K.physics_params(cfg), T.task_params(cfg), *limits)


class GoalOptions(NamedTuple):
    """A reset's goal per row: ``mode`` (``T.GOAL_MODE_*``) and the offset from the Si (A)."""

    mode: np.ndarray
    goal: np.ndarray


class StemSimBackend(BaseBackend):
    """The simulated microscope: the STEM kernel on a batch of one.

    Args:
        cfg: The system config.
    """

    kind = "sim"
    deterministic = True

    def __init__(self, cfg: StemConfig) -> None:
        """Allocate the state; nothing is drawn until :meth:`reset`."""
        super().__init__()
        self.cfg = cfg
        self.command_space = command_space(cfg)
        self.measurement_space = K.MEASUREMENT.space(np.float64)
        self._params = K.physics_params(cfg)
        self.state = allocate(StemState, 1)

    def reset(self, seed: int | None = None, options: dict[str, Any] | None = None) -> np.ndarray:
        """New episode; ``seed`` re-seeds the physics stream, ``None`` continues it."""
        if seed is not None:
            seed_streams(self.state.rng, 0, int(seed))
        st = self.state
        K.reset(0, st.f, st.i, st.holes, self._params, st.rng, st.meas)
        return st.meas[0].copy()

    def apply(self, command: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Park the beam, dwell, image; return ``(measurement, applied_command)``."""
        x, y, dwell = float(command[0]), float(command[1]), float(command[2])
        st = self.state
        K.apply(0, x, y, dwell, st.f, st.i, st.holes, self._params, st.rng, st.meas)
        return st.meas[0].copy(), np.asarray(command, dtype=np.float64)

    def privileged(self) -> dict[str, Any]:
        """True Si position and site, hops and rates of the last command."""
        f, i = self.state.f, self.state.i
        return {
            "si_position_angstrom": K.true_position(f, i, 0),
            "rates_per_s": f[0, K.F_RATE0 : K.F_RATE0 + 3].copy(),
            "n_hops": int(i[0, K.I_HOPS]),
            "si_site": i[0, K.I_SI_I : K.I_SI_S + 1].copy(),
        }

    def identity(self) -> dict[str, Any]:
        """Kind and rate model."""
        return {"kind": self.kind, "rate_model": self.cfg.physics.rate_model}


def make_sim_backend(cfg: StemConfig) -> StemSimBackend:
    """Backend factory for ``backend="sim"``."""
    return StemSimBackend(cfg)


def make_env(cfg: StemConfig, *, backend: Any, env_id: str = ENV_ID) -> TwinEnv:
    """Single-env factory: the STEM task on ``backend`` behind the safety layer.

    With ``observation_mode="frame"`` the task adds a HAADF crop around the Si
    (:mod:`~twinloop.sim.stem.frames`).
    """
    task: T.StemTask | F.FrameViewTask = (
        F.frame_task(cfg, backend) if cfg.task.observation_mode == "frame" else T.StemTask(cfg)
    )
    return TwinEnv(
        task,
        backend,
        cfg.safety,
        env_id=env_id,
        config=cfg,
        metadata=_metadata(cfg, task.layout),
    )


def _metadata(cfg: StemConfig, layout: Layout) -> dict[str, Any]:
    return {
        "render_modes": [],
        "system": "stem",
        "action_mode": cfg.task.action_mode,
        "action_dwell": cfg.task.action_dwell,
        "observation_mode": cfg.task.observation_mode,
        "observation_layout": layout.describe(),
        "failure_names": T.FAILURE_NAMES,
        "reward_terms": T.REWARD_TERMS,
        # what a controller may know about the instrument's settings (not the sample's state)
        "beam": {
            "current_na": cfg.physics.beam_current_na,
            "voltage_kv": cfg.physics.beam_energy_kev,
        },
        "timing": {
            "settle_s": cfg.microscope.beam_settle_s,
            "frame_s": cfg.microscope.frame_time_s,
            "dwell_s": cfg.microscope.dwell_s,
        },
    }


# --- info layouts shared by the vector env (and matching TwinEnv's info keys) ------------------
IF_R = 0  # reward/<term>, 4 columns in REWARD_TERMS order
IF_ELAPSED = 4
IF_TIME = 5
IF_DIST = 6
IF_CMD = 7  # 3 columns
IF_TRUE_POS = 10  # 2 columns
IF_TRUE_RATES = 12  # 3 columns
IF_ACTION = 15  # 2 or 3 columns (last, its size depends on the config)
II_FAILURE = 0
II_HOPS = 1
II_SITE = 2  # 3 columns
IB_SUCCESS = 0
IB_ACT_CLIP = 1
IB_CMD_CLIP = 2


def info_layouts(cfg: StemConfig) -> tuple[Layout, Layout, Layout]:
    """Float, int and bool info fields, in kernel column order."""
    n_act = 3 if cfg.task.action_dwell else 2
    floats = Layout(
        [
            *(Field(f"reward/{term}") for term in T.REWARD_TERMS),
            Field("elapsed_s"),
            Field("time_s"),
            Field("distance_to_goal_angstrom"),
            Field("applied_command", (3,)),
            Field("true/si_position_angstrom", (2,)),
            Field("true/rates_per_s", (3,)),
            Field("applied_action", (n_act,)),
        ]
    )
    ints = Layout([Field("failure"), Field("true/n_hops"), Field("true/si_site", (3,))])
    bools = Layout([Field("is_success"), Field("action_clipped"), Field("command_clipped")])
    return floats, ints, bools


RESET_INFO = (
    "time_s",
    "distance_to_goal_angstrom",
    "true/si_position_angstrom",
    "true/rates_per_s",
    "true/n_hops",
    "true/si_site",
)


@njit
def _write_reset_info(
    i: int, dist: float, fstate: np.ndarray, istate: np.ndarray, inf: np.ndarray, ini: np.ndarray
) -> None:
    f = fstate[i]
    x, y = K.site_xy(
        istate[i, K.I_SI_I], istate[i, K.I_SI_J], istate[i, K.I_SI_S], f[K.F_COS], f[K.F_SIN]
    )
    inf[i, IF_TIME] = 0.0
    inf[i, IF_DIST] = dist
    inf[i, IF_TRUE_POS] = x
    inf[i, IF_TRUE_POS + 1] = y
    for k in range(3):
        inf[i, IF_TRUE_RATES + k] = f[K.F_RATE0 + k]
        ini[i, II_SITE + k] = istate[i, K.I_SI_I + k]
    ini[i, II_HOPS] = istate[i, K.I_HOPS]


@njit
def _reset_row(
    i: int,
    goal_mode: int,
    goal_dx: float,
    goal_dy: float,
    state: StemState,
    params: StemParams,
    obs: np.ndarray,
    inf: np.ndarray,
    ini: np.ndarray,
) -> None:
    """New episode in row ``i``: physics, task, reset infos; the safety layer forgets."""
    f, istate, holes, meas = state.f, state.i, state.holes, state.meas
    K.reset(i, f, istate, holes, params.physics, state.rng, meas)
    dist = T.task_reset(
        i, meas[i], state.task[i], params.task, state.rng, goal_mode, goal_dx, goal_dy, obs[i]
    )
    _write_reset_info(i, dist, f, istate, inf, ini)
    state.has_prev[i] = False


@njit(parallel=True)
def reset_batch(
    state: StemState, params: StemParams, mask: np.ndarray, options: GoalOptions, out: ResetOut
) -> None:
    """Reset the rows where ``mask`` (the others only write their observation)."""
    meas, tstate, tparams = state.meas, state.task, params.task
    goal_mode, goal = options.mode, options.goal
    obs, inf, ini = out.obs, out.info_f, out.info_i
    for i in prange(mask.shape[0]):
        if mask[i]:
            _reset_row(i, goal_mode[i], goal[i, 0], goal[i, 1], state, params, obs, inf, ini)
        else:
            T.write_observation(meas[i], tstate[i], tparams, obs[i])


@njit(parallel=True)
def step_batch(state: StemState, params: StemParams, actions: Actions, out: StepOut) -> None:
    """Step every row (action, safety, physics, task) and auto-reset the ended ones."""
    fstate, istate, holes, meas = state.f, state.i, state.holes, state.meas
    tstate, rng, scratch = state.task, state.rng, state.cmd
    prev_cmd, has_prev = state.prev_cmd, state.has_prev
    physics, tparams = params.physics, params.task
    cmd_low, cmd_high, max_step = params.cmd_low, params.cmd_high, params.max_step
    acts, action_clipped = actions.values, actions.clipped
    obs, reward, terminated, truncated, final_obs, top_f, top_i, top_b, fin_f, fin_i, fin_b = out
    n_act = acts.shape[1]
    for i in prange(acts.shape[0]):
        # action -> command -> safety -> physics -> task: the same row functions as TwinEnv
        px, py, dwell = T.task_command(acts[i], meas[i], tparams)
        cmd = scratch[i, 0:3]
        safe = scratch[i, 3:6]
        cmd[0], cmd[1], cmd[2] = px, py, dwell
        cmd_clipped = clip_command_row(
            cmd, cmd_low, cmd_high, prev_cmd[i], max_step, has_prev[i], safe
        )
        for q in range(3):
            prev_cmd[i, q] = safe[q]
        has_prev[i] = True
        K.apply(i, safe[0], safe[1], safe[2], fstate, istate, holes, physics, rng, meas)
        row_obs = obs[i]
        (term, trunc, success, failure, dist, elapsed, time_s, r_s, r_f, r_t, r_p) = T.task_step(
            meas[i], tstate[i], tparams, row_obs
        )
        c_s = tparams[T.TP_R_SUCCESS] * r_s
        c_f = tparams[T.TP_R_FAILURE] * r_f
        c_t = tparams[T.TP_R_TIME] * r_t
        c_p = tparams[T.TP_R_PROGRESS] * r_p
        total = 0.0
        total += c_s
        total += c_f
        total += c_t
        total += c_p
        reward[i] = total
        terminated[i] = term
        truncated[i] = trunc
        ended = term or trunc
        inf = fin_f if ended else top_f
        ini = fin_i if ended else top_i
        inb = fin_b if ended else top_b
        # every element of the outputs is written: the unused side of this row is zero
        zero_row(top_f if ended else fin_f, i)
        zero_row(top_i if ended else fin_i, i)
        zero_row(top_b if ended else fin_b, i)
        inf[i, IF_R] = c_s
        inf[i, IF_R + 1] = c_f
        inf[i, IF_R + 2] = c_t
        inf[i, IF_R + 3] = c_p
        inf[i, IF_ELAPSED] = elapsed
        inf[i, IF_TIME] = time_s
        inf[i, IF_DIST] = dist
        for q in range(3):
            inf[i, IF_CMD + q] = safe[q]
        for q in range(n_act):
            inf[i, IF_ACTION + q] = acts[i, q]
        f = fstate[i]
        x, y = K.site_xy(
            istate[i, K.I_SI_I], istate[i, K.I_SI_J], istate[i, K.I_SI_S], f[K.F_COS], f[K.F_SIN]
        )
        inf[i, IF_TRUE_POS] = x
        inf[i, IF_TRUE_POS + 1] = y
        for k in range(3):
            inf[i, IF_TRUE_RATES + k] = f[K.F_RATE0 + k]
            ini[i, II_SITE + k] = istate[i, K.I_SI_I + k]
        ini[i, II_FAILURE] = failure
        ini[i, II_HOPS] = istate[i, K.I_HOPS]
        inb[i, IB_SUCCESS] = success
        inb[i, IB_ACT_CLIP] = action_clipped[i]
        inb[i, IB_CMD_CLIP] = cmd_clipped
        if ended:
            for q in range(row_obs.shape[0]):
                final_obs[i, q] = row_obs[q]
            _reset_row(i, T.GOAL_MODE_RANDOM, 0.0, 0.0, state, params, obs, top_f, top_i)


class StemVectorEnv(KernelVectorEnv):
    """``n_envs`` STEM envs stepped by one parallel numba kernel (``SAME_STEP`` autoreset).

    Args:
        cfg: The system config (shared by all envs; randomised values are drawn per env).
        n_envs: Batch size.
        env_id: Registered id.
    """

    State = StemState
    reset_kernel = reset_batch
    step_kernel = step_batch

    def __init__(self, cfg: StemConfig, n_envs: int, env_id: str = ENV_ID) -> None:
        """Allocate the batched state."""
        layout = T.observation_layout(cfg)
        act_space, labels = T.action_space(cfg)
        fl, il, bl = info_layouts(cfg)
        super().__init__(
            n_envs,
            layout,
            act_space,
            fl,
            il,
            bl,
            RESET_INFO,
            params=params_of(cfg),
            config=cfg,
            env_id=env_id,
            clip_actions=cfg.safety.clip_actions,
            action_labels=labels,
        )
        self.cfg = cfg
        self.metadata = {**self.metadata, **_metadata(cfg, layout)}

    def reset_options(self, options: dict[str, Any]) -> GoalOptions:
        """``options["goal_offset_angstrom"]``: (2,) or (n_envs, 2) goal offsets from the Si."""
        n = self.num_envs
        mode = np.zeros(n, dtype=np.int64)
        goal = np.zeros((n, 2), dtype=np.float64)
        if options.get("goal_offset_angstrom") is not None:
            g = np.asarray(options["goal_offset_angstrom"], dtype=np.float64)
            g = np.broadcast_to(g, (n, 2)) if g.shape == (2,) else g
            if g.shape != (n, 2) or not np.isfinite(g).all():
                raise ValueError(
                    f"{self.env_id}: options['goal_offset_angstrom'] must be finite with shape "
                    f"(2,) or ({n}, 2), got {g.shape}"
                )
            goal[:] = g
            mode[:] = T.GOAL_MODE_OFFSET
        return GoalOptions(mode, goal)


def make_vec_env(
    cfg: StemConfig, *, n_envs: int, env_id: str = ENV_ID
) -> StemVectorEnv | gym.vector.SyncVectorEnv:
    """Vector-env factory (frame mode: single envs in a ``SyncVectorEnv``, see frames.py)."""
    if cfg.task.observation_mode == "frame":
        return _frame_vec_env(cfg, n_envs, env_id)
    return StemVectorEnv(cfg, n_envs, env_id=env_id)


def _frame_vec_env(cfg: StemConfig, n_envs: int, env_id: str) -> gym.vector.SyncVectorEnv:
    """``n_envs`` single simulator envs in frame mode, ``SAME_STEP`` autoreset (frames.py)."""

    def one() -> gym.Env:
        return make_env(cfg, backend=StemSimBackend(cfg), env_id=env_id)

    vec = gym.vector.SyncVectorEnv(
        [one] * n_envs, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP
    )
    vec.metadata = {**vec.metadata, **_metadata(cfg, T.observation_layout(cfg))}
    return vec
