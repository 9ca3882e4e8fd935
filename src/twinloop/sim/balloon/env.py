"""Balloon envs: the simulated backend, the single env and the kernel-batched vector env.

``twinloop/BalloonStationKeeping-v0`` = :class:`~twinloop.sim.balloon.task.BalloonTask` x a
backend x safety. The single env runs the kernel on a batch of one through
:class:`BalloonSimBackend`; the vector env runs the same row functions of
:mod:`~twinloop.sim.balloon.kernel` and :mod:`~twinloop.sim.balloon.task` inside one parallel
loop, auto-resetting ended episodes.
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
from twinloop.sim.balloon import blevae
from twinloop.sim.balloon import kernel as K
from twinloop.sim.balloon import start as S
from twinloop.sim.balloon import task as T
from twinloop.sim.balloon import wind as W
from twinloop.sim.balloon.config import BalloonConfig

ENV_ID = "twinloop/BalloonStationKeeping-v0"

#: The flight controller's command: 0 down, 1 stay, 2 up.
COMMAND_SPACE = gym.spaces.Box(np.array([0.0]), np.array([2.0]), dtype=np.float64)


def wind_inputs(cfg: BalloonConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(wind params, grid, grid levels)`` for the kernel; loads gridded winds if configured."""
    if cfg.wind.source == "grid":
        from twinloop.sim.balloon.era5 import load_grid

        grid, levels, meta = load_grid(cfg)
        return K.wind_params(cfg, meta), grid, levels
    grid, levels = K.empty_grid()
    return K.wind_params(cfg), grid, levels


def vae_weights(cfg: BalloonConfig) -> np.ndarray:
    """BLE's decoder weights for ``source="ble-vae"`` (from the installed wheel), else a stub.

    Raises:
        blevae.BleWheelNotFound: ``source="ble-vae"`` without the BLE wheel installed.
    """
    if cfg.wind.source == "ble-vae":
        return blevae.load_weights()
    return blevae.no_weights()


# --- the state and parameters, declared once ----------------------------------------------------
#: Every balloon's state, one row each, allocated by core (shapes follow the config).
BalloonState = bundle(
    "BalloonState",
    __name__,
    K.PhysicsState,  # f, i, wind, work, meas: the kernel's physics state
    task=Rows(lambda cfg: (T.state_size(cfg),)),  # the task's columns (T.T_*)
    cmd=Rows((2,)),  # scratch: the command, then the safe command
    **core_rows(1),  # rng, prev_cmd, has_prev
    doc="Every balloon's state: physics (kernel.PhysicsState), task, command scratch, core rows.",
)


class BalloonParams(NamedTuple):
    """Parameters shared by every balloon: physics, winds, task and the command limits."""

    physics: np.ndarray
    wind: np.ndarray
    grid: np.ndarray
    levels: np.ndarray
    vae: np.ndarray  # BLE's decoder weights (float32) for source="ble-vae", else a stub
    no_start: np.ndarray  # the start row of automatic resets (everything drawn)
    task: np.ndarray
    cmd_low: np.ndarray
    cmd_high: np.ndarray
    max_step: np.ndarray


def params_of(cfg: BalloonConfig) -> BalloonParams:
    """The parameters bundle of a config (loads gridded winds or BLE's decoder if configured)."""
    wp, grid, levels = wind_inputs(cfg)
    return BalloonParams(
        K.physics_params(cfg),
        wp,
        grid,
        levels,
        vae_weights(cfg),
        K.no_start(),
        T.task_params(cfg),
        *command_limits(COMMAND_SPACE, cfg.safety),
    )


class StartOptions(NamedTuple):
    """The vector env's reset options: one start row per env (:mod:`~.start`)."""

    start: np.ndarray


def start_of(
    options: dict[str, Any] | None, cfg: BalloonConfig, params: BalloonParams, n: int, where: str
) -> np.ndarray:
    """Checked start rows of ``options["backend"]`` for ``n`` envs (see :mod:`~.start`)."""
    rows = S.start_rows(options, cfg, n, where)
    wp = params.wind
    if wp[W.W_SOURCE] == W.SOURCE_GRID and not np.isnan(rows[:, K.S_JD]).all():
        offset_s = (rows[:, K.S_JD] - wp[W.W_GRID_JD0]) * 86400.0
        if (offset_s < 0.0).any() or (offset_s > wp[W.W_GRID_SPAN]).any():
            raise ValueError(
                f"{where}: reset option 'time_utc' lies outside the gridded wind's "
                f"{wp[W.W_GRID_SPAN] / 3600.0:g} h from Julian date {wp[W.W_GRID_JD0]:.4f}"
            )
    return rows


class BalloonSimBackend(BaseBackend):
    """The simulated balloon and its forecast service: the kernel on a batch of one.

    Args:
        cfg: The system config.
    """

    kind = "sim"
    deterministic = True

    def __init__(self, cfg: BalloonConfig) -> None:
        """Allocate the state; nothing is drawn until :meth:`reset`."""
        super().__init__()
        self.cfg = cfg
        self.command_space = COMMAND_SPACE
        self.measurement_layout = K.measurement_layout(cfg)
        self.measurement_space = self.measurement_layout.space(np.float64)
        self.params = params_of(cfg)
        self._state = allocate(BalloonState, 1, cfg)

    def reset(self, seed: int | None = None, options: dict[str, Any] | None = None) -> np.ndarray:
        """New episode; ``seed`` re-seeds the physics stream, ``None`` continues it.

        ``options`` may set the start (time, place, pressure, envelope, charge, atmosphere,
        wind; see :mod:`twinloop.sim.balloon.start`); what it does not set is drawn.

        Raises:
            ValueError: ``options`` is not a valid start.
        """
        st, p = self._state, self.params
        rows = start_of(options, self.cfg, p, 1, ENV_ID)
        if seed is not None:
            seed_streams(st.rng, 0, int(seed))
        K.reset_episode(
            0, st.f, st.i, st.wind, st.work, p.physics, p.wind, p.grid, p.levels, st.rng,
            st.meas, rows[0], p.vae,
        )  # fmt: skip
        S.check_started(st.i[:, K.I_STATUS], rows, st.f, ENV_ID)
        return st.meas[0].copy()

    def apply(self, command: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Fly one control step; return ``(measurement, applied_command)``."""
        st, p = self._state, self.params
        applied = K.apply(
            0,
            float(command[0]),
            st.f,
            st.i,
            st.wind,
            st.work,
            p.physics,
            p.wind,
            p.grid,
            p.levels,
            st.meas,
        )
        return st.meas[0].copy(), np.array([float(applied)])

    def privileged(self) -> dict[str, Any]:
        """Superpressure, gas temperature, ballonet air and the true wind at the balloon."""
        f = self._state.f[0]
        return {
            "superpressure_pa": float(f[K.F_SP]),
            "gas_temperature_k": float(f[K.F_T_GAS]),
            "ballonet_air_mol": float(f[K.F_N_AIR]),
            "wind_m_per_s": np.array([f[K.F_WU], f[K.F_WV]]),
        }

    def identity(self) -> dict[str, Any]:
        """Kind and wind source."""
        return {"kind": self.kind, "wind_source": self.cfg.wind.source}

    @property
    def state(self) -> dict[str, np.ndarray]:
        """Views of the raw kernel state (for tests and the vehicle twin)."""
        st = self._state
        return {"f": st.f, "i": st.i, "wind": st.wind, "meas": st.meas}

    def kernel_args(self) -> tuple[np.ndarray, ...]:
        """``(fstate, istate, wind, work, params, wind params, grid, levels)`` of row 0."""
        st, p = self._state, self.params
        return (st.f, st.i, st.wind, st.work, p.physics, p.wind, p.grid, p.levels)


def make_sim_backend(cfg: BalloonConfig) -> BalloonSimBackend:
    """Backend factory for ``backend="sim"``."""
    return BalloonSimBackend(cfg)


def metadata(cfg: BalloonConfig, layout: Layout) -> dict[str, Any]:
    """Env metadata shared by the single and vector envs (controllers read it)."""
    return {
        "render_modes": [],
        "system": "balloon",
        "observation_layout": layout.describe(),
        "column_levels_pa": list(cfg.column_levels_pa),
        "station_radius_km": cfg.task.station_radius_km,
        "control_step_s": cfg.physics.control_step_s,
        "min_altitude_ft": cfg.flight_safety.min_altitude_ft,
        "failure_names": T.FAILURE_NAMES,
        "reward_terms": T.REWARD_TERMS,
        "episode_metrics": ("twr50",),
        "commands": K.COMMAND_NAMES,
    }


def make_env(cfg: BalloonConfig, *, backend: Any, env_id: str = ENV_ID) -> TwinEnv:
    """Single-env factory: the station-keeping task on ``backend`` behind the safety layer."""
    task = T.BalloonTask(cfg)
    return TwinEnv(
        task,
        backend,
        cfg.safety,
        env_id=env_id,
        config=cfg,
        metadata=metadata(cfg, task.layout),
    )


# --- info layouts shared by the vector env (and matching TwinEnv's info keys) ------------------
IF_R = 0  # reward/<term>, 2 columns in REWARD_TERMS order
IF_DIST = 2
IF_TWR = 3
IF_TIME = 4
IF_CMD = 5
IF_SP = 6
IF_TGAS = 7
IF_NAIR = 8
IF_WIND = 9  # 2 columns
II_FAILURE = 0
II_ACTION = 1
IB_WITHIN = 0
IB_ACT_CLIP = 1
IB_CMD_CLIP = 2


def info_layouts() -> tuple[Layout, Layout, Layout]:
    """Float, int and bool info fields, in kernel column order."""
    floats = Layout(
        [
            *(Field(f"reward/{term}") for term in T.REWARD_TERMS),
            Field("distance_km"),
            Field("twr50"),
            Field("time_s"),
            Field("applied_command", (1,)),
            Field("true/superpressure_pa"),
            Field("true/gas_temperature_k"),
            Field("true/ballonet_air_mol"),
            Field("true/wind_m_per_s", (2,)),
        ]
    )
    ints = Layout([Field("failure"), Field("applied_action")])
    bools = Layout([Field("within_station"), Field("action_clipped"), Field("command_clipped")])
    return floats, ints, bools


RESET_INFO = (
    "time_s",
    "distance_km",
    "true/superpressure_pa",
    "true/gas_temperature_k",
    "true/ballonet_air_mol",
    "true/wind_m_per_s",
)


@njit
def _write_true(i: int, fstate: np.ndarray, inf: np.ndarray) -> None:
    f = fstate[i]
    inf[i, IF_SP] = f[K.F_SP]
    inf[i, IF_TGAS] = f[K.F_T_GAS]
    inf[i, IF_NAIR] = f[K.F_N_AIR]
    inf[i, IF_WIND] = f[K.F_WU]
    inf[i, IF_WIND + 1] = f[K.F_WV]


@njit
def _reset_row(
    i: int,
    state: BalloonState,
    params: BalloonParams,
    obs: np.ndarray,
    inf: np.ndarray,
    start: np.ndarray,
) -> None:
    """New episode in row ``i`` from ``start``: physics, task, reset infos; safety forgets."""
    f, istate, wind, work, meas = state.f, state.i, state.wind, state.work, state.meas
    p = params
    K.reset_episode(
        i, f, istate, wind, work, p.physics, p.wind, p.grid, p.levels, state.rng, meas, start,
        p.vae,
    )  # fmt: skip
    dist = T.task_reset(meas[i], state.task[i], p.task, obs[i])
    inf[i, IF_TIME] = meas[i, K.M_ELAPSED]
    inf[i, IF_DIST] = dist
    _write_true(i, f, inf)
    state.has_prev[i] = False


@njit(parallel=True)
def reset_batch(
    state: BalloonState,
    params: BalloonParams,
    mask: np.ndarray,
    options: StartOptions,
    out: ResetOut,
) -> None:
    """Reset the rows where ``mask`` from their start rows (the others write their obs)."""
    meas, tstate, tparams = state.meas, state.task, params.task
    obs, inf = out.obs, out.info_f
    start = options.start
    for i in prange(mask.shape[0]):
        if mask[i]:
            _reset_row(i, state, params, obs, inf, start[i])
        else:
            T.write_observation(meas[i], tstate[i], tparams, obs[i])


@njit(parallel=True)
def step_batch(state: BalloonState, params: BalloonParams, actions: Actions, out: StepOut) -> None:
    """Step every row (action, safety, physics, task) and auto-reset the ended ones."""
    fstate, istate, wind, work, meas = state.f, state.i, state.wind, state.work, state.meas
    tstate, scratch = state.task, state.cmd
    prev_cmd, has_prev = state.prev_cmd, state.has_prev
    physics, wp, grid, levels, tparams = (
        params.physics,
        params.wind,
        params.grid,
        params.levels,
        params.task,
    )
    cmd_low, cmd_high, max_step = params.cmd_low, params.cmd_high, params.max_step
    acts, action_clipped = actions.values, actions.clipped
    obs, reward, terminated, truncated, final_obs, top_f, top_i, top_b, fin_f, fin_i, fin_b = out
    for i in prange(acts.shape[0]):
        # action -> command -> safety -> physics -> task: the same row functions as TwinEnv
        cmd = scratch[i, 0:1]
        safe = scratch[i, 1:2]
        cmd[0] = T.task_command(acts[i], tstate[i])
        cmd_clipped = clip_command_row(
            cmd, cmd_low, cmd_high, prev_cmd[i], max_step, has_prev[i], safe
        )
        prev_cmd[i, 0] = safe[0]
        has_prev[i] = True
        applied = K.apply(i, safe[0], fstate, istate, wind, work, physics, wp, grid, levels, meas)
        row_obs = obs[i]
        (term, trunc, within, failure, dist, twr, time_s, r_s, r_p) = T.task_step(
            meas[i], tstate[i], tparams, row_obs
        )
        c_s = tparams[T.TP_R_STATION] * r_s
        c_p = tparams[T.TP_R_POWER] * r_p
        total = 0.0
        total += c_s
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
        inf[i, IF_R + 1] = c_p
        inf[i, IF_DIST] = dist
        inf[i, IF_TWR] = twr
        inf[i, IF_TIME] = time_s
        inf[i, IF_CMD] = float(applied)
        _write_true(i, fstate, inf)
        ini[i, II_FAILURE] = failure
        ini[i, II_ACTION] = acts[i]
        inb[i, IB_WITHIN] = within
        inb[i, IB_ACT_CLIP] = action_clipped[i]
        inb[i, IB_CMD_CLIP] = cmd_clipped or float(applied) != safe[0]
        if ended:
            for q in range(row_obs.shape[0]):
                final_obs[i, q] = row_obs[q]
            _reset_row(i, state, params, obs, top_f, params.no_start)


class BalloonVectorEnv(KernelVectorEnv):
    """``n_envs`` balloons stepped by one parallel numba kernel (``SAME_STEP`` autoreset).

    Args:
        cfg: The system config (shared by all envs; randomised values are drawn per env).
        n_envs: Batch size.
        env_id: Registered id.
    """

    State = BalloonState
    reset_kernel = reset_batch
    step_kernel = step_batch

    def __init__(self, cfg: BalloonConfig, n_envs: int, env_id: str = ENV_ID) -> None:
        """Allocate the batched state."""
        layout = T.observation_layout(cfg)
        fl, il, bl = info_layouts()
        super().__init__(
            n_envs,
            layout,
            gym.spaces.Discrete(3),
            fl,
            il,
            bl,
            RESET_INFO,
            params=params_of(cfg),
            config=cfg,
            env_id=env_id,
            clip_actions=cfg.safety.clip_actions,
            action_labels=T.BalloonTask.action_labels,
        )
        self.cfg = cfg
        self.metadata = {**self.metadata, **metadata(cfg, layout)}
        self._start_rows = K.no_start()[None, :]

    def reset_options(self, options: dict[str, Any]) -> StartOptions:
        """``options["backend"]``: the start of every reset env (see :mod:`~.start`).

        Raises:
            ValueError: An unknown option, or ``options["backend"]`` is not a valid start.
        """
        unknown = sorted(set(options) - {"backend"})
        if unknown:
            raise ValueError(
                f"{self.env_id}: unknown reset option(s) {unknown}; the balloon takes "
                "'reset_mask' and 'backend' (the start, see twinloop.sim.balloon.start)"
            )
        rows = start_of(options.get("backend"), self.cfg, self.params, self.num_envs, self.env_id)
        self._start_rows = rows
        return StartOptions(rows)

    def reset(
        self,
        *,
        seed: int | list[int | None] | None = None,
        options: dict[str, Any] | None = None,
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Reset all envs, or those in ``options["reset_mask"]``, from a start if given.

        Raises:
            ValueError: The options are not a valid start, or a start set by hand is
                already a failure (slack or burst).
        """
        obs, infos = super().reset(seed=seed, options=options)
        mask = (options or {}).get("reset_mask")
        rows = np.flatnonzero(np.ones(self.num_envs, bool) if mask is None else np.asarray(mask))
        st = self.state
        S.check_started(st.i[rows, K.I_STATUS], self._start_rows[rows], st.f[rows], self.env_id)
        return obs, infos


def make_vec_env(cfg: BalloonConfig, *, n_envs: int, env_id: str = ENV_ID) -> BalloonVectorEnv:
    """Vector-env factory."""
    return BalloonVectorEnv(cfg, n_envs, env_id=env_id)
