"""Rearrangement envs: the simulated skills backend, the single env and the vector env.

``twinloop/LangRearrange-v0`` = :class:`~twinloop.sim.rearrange.task.RearrangeTask` x a
backend x safety. The single env runs the skills kernel on a batch of one through
:class:`RearrangeSimBackend`; the vector env runs the same row functions of
:mod:`~twinloop.sim.rearrange.kernel` and :mod:`~twinloop.sim.rearrange.task` inside one
parallel loop, auto-resetting ended episodes with a fresh episode of the configured split.

Reset options (single env: ``options={"backend": {...}}``; vector env: the same): ``split``
(a split name) and ``episode`` (an index in it; for the vector env an int, the same for every
reset row, or one per env). Without ``episode`` a reset draws the episode from the row's
stream; auto-resets always draw from the configured split (``task.split``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import gymnasium as gym
import numba
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
    swap_num_threads,
    zero_row,
)
from twinloop.sim.rearrange import catalog as C
from twinloop.sim.rearrange import episodes as E
from twinloop.sim.rearrange import kernel as K
from twinloop.sim.rearrange import language as L
from twinloop.sim.rearrange import render as R
from twinloop.sim.rearrange import task as T
from twinloop.sim.rearrange.config import RearrangeConfig

ENV_ID = "twinloop/LangRearrange-v0"

#: The skills interface takes the grounded action's index (see ``catalog``).
COMMAND_SPACE = gym.spaces.Box(
    np.array([0.0]), np.array([float(C.N_ACTIONS - 1)]), dtype=np.float64
)

# --- the state, parameters and reset options, declared once -----------------------------------
RearrangeState = bundle(
    "RearrangeState",
    __name__,
    K.PhysicsState,  # w, art, ocat, orec, spec, gen, meas: the apartment
    task=Rows((T.N_T,), np.int64),  # the episode's spec (instruction, goal), then T_* columns
    cmd=Rows((2,)),  # scratch: the command, then the safe command
    **core_rows(1),  # rng, prev_cmd, has_prev
    doc="Every rearrangement env's state: the world (kernel.PhysicsState), task, core rows.",
)


#: Parameters shared by every row: the world's tables, the task, the command limits.
RearrangeParams = E.WorldTables


def params_of(cfg: RearrangeConfig) -> RearrangeParams:
    """The parameters bundle of a config."""
    low, high, max_step = command_limits(COMMAND_SPACE, cfg.safety)
    return E.world_tables(cfg.world.n_clutter, cfg.task.split)._replace(
        task=T.task_params(cfg), cmd_low=low, cmd_high=high, max_step=max_step
    )


class EpisodeOptions(NamedTuple):
    """A reset's episode per row: split id (-1: the configured one), index (-1: drawn)."""

    split: np.ndarray
    episode: np.ndarray


def episode_options(options: dict[str, Any] | None, n: int, where: str) -> EpisodeOptions:
    """Checked ``{"split": name, "episode": int or (n,) ints}`` reset options for ``n`` rows.

    Raises:
        ValueError: An unknown key or split, or an episode index outside the split.
    """
    options = dict(options or {})
    unknown = sorted(set(options) - {"split", "episode"})
    if unknown:
        raise ValueError(f"{where}: unknown reset option(s) {unknown}; valid: 'split', 'episode'")
    split = np.full(n, -1, dtype=np.int64)
    episode = np.full(n, K.NO_EPISODE, dtype=np.int64)
    size = None
    if options.get("split") is not None:
        split[:] = E.split_id(options["split"], where)
        size = E.split_size(options["split"])
    if options.get("episode") is not None:
        ep = np.asarray(options["episode"])
        if ep.dtype.kind not in "iu" or ep.shape not in ((), (n,)):
            raise ValueError(
                f"{where}: reset option 'episode' must be an int or {n} ints, got {ep!r}"
            )
        if size is None:
            raise ValueError(f"{where}: reset option 'episode' needs a 'split' beside it")
        if (ep < 0).any() or (ep >= size).any():
            bad = int(np.ravel(ep)[(np.ravel(ep) < 0) | (np.ravel(ep) >= size)][0])
            raise ValueError(
                f"{where}: episode {bad} is outside split {options['split']!r} of {size} episodes"
            )
        episode[:] = ep
    return EpisodeOptions(split, episode)


class RearrangeSimBackend(BaseBackend):
    """The simulated robot's skills in the apartment: the kernel on a batch of one.

    Args:
        cfg: The system config.
    """

    kind = "sim"
    deterministic = True

    def __init__(self, cfg: RearrangeConfig) -> None:
        """Allocate the state; nothing is drawn until :meth:`reset`."""
        super().__init__()
        self.cfg = cfg
        self.command_space = COMMAND_SPACE
        self.measurement_space = K.MEASUREMENT.space(np.float64)
        self.tables = params_of(cfg)
        self.state = allocate(RearrangeState, 1)

    def reset(self, seed: int | None = None, options: dict[str, Any] | None = None) -> np.ndarray:
        """New episode; ``seed`` re-seeds the stream, ``None`` continues it.

        Raises:
            ValueError: ``options`` is not a valid ``{"split", "episode"}``.
        """
        opts = episode_options(options, 1, ENV_ID)
        if seed is not None:
            seed_streams(self.state.rng, 0, int(seed))
        st = self.state
        K.reset(
            0, opts.split[0], opts.episode[0], st.w, st.art, st.ocat, st.orec, st.spec,
            st.gen, self.tables, st.rng, st.meas,
        )  # fmt: skip
        return st.meas[0].copy()

    def apply(self, command: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Execute one skill; return ``(measurement, applied_command)``."""
        st = self.state
        K.apply(0, int(command[0]), st.w, st.art, st.ocat, st.orec, self.tables, st.meas)
        return st.meas[0].copy(), np.asarray(command, dtype=np.float64)

    def identity(self) -> dict[str, Any]:
        """Kind and split."""
        return {"kind": self.kind, "split": self.cfg.task.split}


def make_sim_backend(cfg: RearrangeConfig) -> RearrangeSimBackend:
    """Backend factory for ``backend="sim"``."""
    return RearrangeSimBackend(cfg)


def metadata(cfg: RearrangeConfig, layout: Layout) -> dict[str, Any]:
    """Env metadata shared by the single and vector envs (controllers read it)."""
    return {
        "render_modes": [],
        "system": "rearrange",
        "observation_mode": cfg.task.observation_mode,
        "resolution": cfg.task.resolution if cfg.task.observation_mode == "rgb" else None,
        "observation_layout": layout.describe(),
        "reward_terms": T.REWARD_TERMS,
        "split": cfg.task.split,
        "splits": E.SPLITS,
        "evaluation_splits": E.BENCHMARK_SPLITS,
        "extra_evaluation_splits": tuple(s for s in E.EVAL_SPLITS if s not in E.BENCHMARK_SPLITS),
        "split_sizes": {s: E.split_size(s) for s in E.SPLITS},
        "instruction_types": L.INSTRUCTION_TYPES,
        "vocabulary": L.vocabulary(),
        "grammar": L.grammar(),
        "action_names": C.action_names(),
        "action_table": C.action_table(),
        "n_receptacles": C.N_RECEPTACLES,
        "articulated_nav": C.ARTICULATED_NAV,
        "articulated_receptacle": C.ARTICULATED_RECEPTACLE,
    }


def make_env(cfg: RearrangeConfig, *, backend: Any, env_id: str = ENV_ID) -> TwinEnv:
    """Single-env factory: the rearrangement task on ``backend`` behind the safety layer."""
    task: T.RearrangeTask | R.RgbViewTask = T.RearrangeTask(cfg, params_of(cfg))
    if cfg.task.observation_mode == "rgb":
        source = None
        request_frames = getattr(backend, "request_frames", None)
        if request_frames is not None:  # a device with a camera: its frames, not ours
            request_frames(cfg.task.resolution)

            def source() -> np.ndarray | None:
                return backend.last_frame

        task = R.RgbViewTask(task, cfg.task.resolution, frame_source=source)
    return TwinEnv(
        task, backend, cfg.safety, env_id=env_id, config=cfg, metadata=metadata(cfg, task.layout)
    )


# --- info layouts shared by the vector env (and matching TwinEnv's info keys) ------------------
IF_R = 0  # reward/<term>, 3 columns in REWARD_TERMS order
IF_CMD = 3
II_SPLIT = 0
II_EPISODE = 1
II_TYPE = 2
II_SUBGOALS = 3
II_ACTION = 4
IB_SUCCESS = 0
IB_INVALID = 1
IB_ACT_CLIP = 2
IB_CMD_CLIP = 3


def info_layouts() -> tuple[Layout, Layout, Layout]:
    """Float, int and bool info fields, in kernel column order."""
    floats = Layout(
        [*(Field(f"reward/{term}") for term in T.REWARD_TERMS), Field("applied_command", (1,))]
    )
    ints = Layout(
        [
            Field("split"),
            Field("episode"),
            Field("instruction_type"),
            Field("subgoals_done"),
            Field("applied_action"),
        ]
    )
    bools = Layout(
        [
            Field("is_success"),
            Field("invalid_action"),
            Field("action_clipped"),
            Field("command_clipped"),
        ]
    )
    return floats, ints, bools


RESET_INFO = ("split", "episode", "instruction_type")


@njit
def _reset_row(
    i: int,
    split: int,
    episode: int,
    state: RearrangeState,
    params: RearrangeParams,
    obs: np.ndarray,
    ini: np.ndarray,
) -> None:
    """New episode in row ``i``: world, task, reset infos; the safety layer forgets."""
    w, gen, meas, tstate = state.w, state.gen, state.meas, state.task
    tables, tparams = params, params.task
    K.reset(
        i, split, episode, w, state.art, state.ocat, state.orec, state.spec, gen, tables,
        state.rng, meas,
    )  # fmt: skip
    T.task_reset(meas[i], tstate[i], tparams, tables, gen, i, obs[i])
    ini[i, II_SPLIT] = tstate[i, E.SP_SPLIT]
    ini[i, II_EPISODE] = tstate[i, E.SP_INDEX]
    ini[i, II_TYPE] = tstate[i, E.SP_TYPE]
    state.has_prev[i] = False


@njit(parallel=True)
def reset_batch(
    state: RearrangeState,
    params: RearrangeParams,
    mask: np.ndarray,
    options: EpisodeOptions,
    out: ResetOut,
) -> None:
    """Reset the rows where ``mask`` (the others only write their observation)."""
    meas, tstate, tparams = state.meas, state.task, params.task
    split, episode = options.split, options.episode
    obs, ini = out.obs, out.info_i
    for i in prange(mask.shape[0]):
        if mask[i]:
            _reset_row(i, split[i], episode[i], state, params, obs, ini)
        else:
            T.write_observation(meas[i], tstate[i], tparams, obs[i])


@njit(parallel=True)
def step_batch(
    state: RearrangeState, params: RearrangeParams, actions: Actions, out: StepOut
) -> None:
    """Step every row (action, safety, skill, task) and auto-reset the ended ones."""
    w, art, ocat, orec, meas = state.w, state.art, state.ocat, state.orec, state.meas
    tstate, scratch = state.task, state.cmd
    prev_cmd, has_prev = state.prev_cmd, state.has_prev
    tparams = params.task
    cmd_low, cmd_high, max_step = params.cmd_low, params.cmd_high, params.max_step
    acts, action_clipped = actions.values, actions.clipped
    obs, reward, terminated, truncated, final_obs, top_f, top_i, top_b, fin_f, fin_i, fin_b = out
    r_succ = tparams[T.TP_R_SUCCESS]
    r_sub = tparams[T.TP_R_SUBGOAL]
    r_inv = tparams[T.TP_R_INVALID]
    for i in prange(acts.shape[0]):
        # action -> command -> safety -> skill -> task: the same row functions as TwinEnv
        cmd = scratch[i, 0:1]
        safe = scratch[i, 1:2]
        cmd[0] = T.task_command(acts[i])
        cmd_clipped = clip_command_row(
            cmd, cmd_low, cmd_high, prev_cmd[i], max_step, has_prev[i], safe
        )
        prev_cmd[i, 0] = safe[0]
        has_prev[i] = True
        K.apply(i, int(safe[0]), w, art, ocat, orec, params, meas)
        row_obs = obs[i]
        (term, trunc, success, invalid, n_sub, t_s, t_g, t_i) = T.task_step(
            meas[i], tstate[i], tparams, row_obs
        )
        c_s = r_succ * t_s
        c_g = r_sub * t_g
        c_i = r_inv * t_i
        total = 0.0
        total += c_s
        total += c_g
        total += c_i
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
        inf[i, IF_R + 1] = c_g
        inf[i, IF_R + 2] = c_i
        inf[i, IF_CMD] = safe[0]
        ini[i, II_SPLIT] = tstate[i, E.SP_SPLIT]
        ini[i, II_EPISODE] = tstate[i, E.SP_INDEX]
        ini[i, II_TYPE] = tstate[i, E.SP_TYPE]
        ini[i, II_SUBGOALS] = n_sub
        ini[i, II_ACTION] = acts[i]
        inb[i, IB_SUCCESS] = success
        inb[i, IB_INVALID] = invalid
        inb[i, IB_ACT_CLIP] = action_clipped[i]
        inb[i, IB_CMD_CLIP] = cmd_clipped
        if ended:
            for q in range(row_obs.shape[0]):
                final_obs[i, q] = row_obs[q]
            _reset_row(i, -1, K.NO_EPISODE, state, params, obs, top_i)


class RearrangeVectorEnv(KernelVectorEnv):
    """``n_envs`` apartments stepped by one parallel numba kernel (``SAME_STEP`` autoreset).

    Args:
        cfg: The system config.
        n_envs: Batch size.
        env_id: Registered id.
    """

    State = RearrangeState
    reset_kernel = reset_batch
    step_kernel = step_batch

    def __init__(self, cfg: RearrangeConfig, n_envs: int, env_id: str = ENV_ID) -> None:
        """Allocate the batched state."""
        layout = T.observation_layout(cfg)
        fl, il, bl = info_layouts()
        super().__init__(
            n_envs,
            layout,
            gym.spaces.Discrete(C.N_ACTIONS),
            fl,
            il,
            bl,
            RESET_INFO,
            params=params_of(cfg),
            config=cfg,
            env_id=env_id,
            clip_actions=cfg.safety.clip_actions,
            action_labels=T.RearrangeTask.action_labels,
        )
        self.cfg = cfg
        self.metadata = {**self.metadata, **metadata(cfg, layout)}
        self.rgb = cfg.task.observation_mode == "rgb"
        if self.rgb:
            res = cfg.task.resolution
            self.render_tables = R.render_tables(res)
            self.single_observation_space = R.rgb_space(res, layout)
            self.observation_space = gym.vector.utils.batch_space(
                self.single_observation_space, self.num_envs
            )
            # the kernel's step block holds symbolic rows only: recorders take the generic path
            self.step_record_layout = None  # type: ignore[assignment]

    def _frames(self, symbolic: np.ndarray) -> np.ndarray:
        """Frames of symbolic rows, rendered in parallel (one thread per 2 frames at most)."""
        res = self.cfg.task.resolution
        images = np.empty((symbolic.shape[0], res, res, 3), dtype=np.uint8)
        if symbolic.shape[0] == 1:
            R.render_rows(symbolic, self.render_tables, images)
            return images
        cap = max(1, symbolic.shape[0] // 2)
        prev = swap_num_threads(cap) if cap < numba.get_num_threads() else 0
        try:
            R.render_batch(symbolic, self.render_tables, images)
        finally:
            if prev:
                swap_num_threads(prev)
        return images

    def _views(self, symbolic: np.ndarray) -> dict[str, np.ndarray]:
        return R.rgb_views(symbolic, self._frames(symbolic))

    def reset(
        self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Reset (see :class:`~twinloop.core.vector.KernelVectorEnv`); rgb mode adds frames."""
        obs, info = super().reset(seed=seed, options=options)
        return (self._views(obs) if self.rgb else obs), info

    def step(self, actions: Any) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Step (see :class:`~twinloop.core.vector.KernelVectorEnv`); rgb mode adds frames.

        In rgb mode each ended env's ``final_obs`` is its rgb observation, a dict whose frame
        is rendered from its final symbolic row.
        """
        obs, reward, terminated, truncated, info = super().step(actions)
        if not self.rgb:
            return obs, reward, terminated, truncated, info
        if "final_obs" in info:
            rows = np.flatnonzero(info["_final_obs"])
            final = np.stack(list(info["final_obs"][rows])).astype(np.float32)
            views = self._views(final)
            fobs = np.empty(self.num_envs, dtype=object)
            for k, row in enumerate(rows):
                fobs[row] = {key: v[k] for key, v in views.items()}
            info["final_obs"] = fobs
        return self._views(obs), reward, terminated, truncated, info

    def reset_options(self, options: dict[str, Any]) -> EpisodeOptions:
        """``options["backend"]``: ``{"split": name, "episode": int or (n_envs,) ints}``.

        Raises:
            ValueError: An unknown option, split or an episode outside its split.
        """
        unknown = sorted(set(options) - {"backend"})
        if unknown:
            raise ValueError(
                f"{self.env_id}: unknown reset option(s) {unknown}; rearrange takes "
                "'reset_mask' and 'backend' ({'split': name, 'episode': index})"
            )
        return episode_options(options.get("backend"), self.num_envs, self.env_id)


def make_vec_env(cfg: RearrangeConfig, *, n_envs: int, env_id: str = ENV_ID) -> RearrangeVectorEnv:
    """Vector-env factory."""
    return RearrangeVectorEnv(cfg, n_envs, env_id=env_id)
