"""Control-suite envs: the MuJoCo backend, the single env and the threaded vector env.

``twinloop/dmc-<domain>-<task>-v0`` = :class:`~.task.DmcTask` x a backend x safety. The single
env drives one :class:`~.kernel.Physics` through :class:`DmcSimBackend`; the vector env
(:class:`DmcVectorEnv`) steps all its envs with one :class:`~.kernel.BatchPhysics`
(``mujoco.batch``: one ``MjData`` per env, stepped on MuJoCo's own thread pool with the GIL
released, so there is no Python per env on the step path and the physics throughput is that
of ``mujoco.rollout``). The task math (:func:`~.task.observe_batch`) and the safety clipping
run batched in numba over all rows. Results do not depend on the thread count and equal N
single envs bit for bit: each env's physics is a separate ``MjData`` and its draws come from
its own :mod:`twinloop.core.rng` streams.

Data flow of one vector step::

    actions --validate--> clip_batch (safety) --mujoco.batch: ctrl, mj_step x n, the
        position and velocity stages; gather--> observe_batch (obs, reward) --> truncation --> infos
        --> ended rows: final obs/infos, Physics.reset from the row's stream, first obs
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np

from twinloop.core.backend import BaseBackend
from twinloop.core.bundle import Rows, bundle
from twinloop.core.env import TwinEnv
from twinloop.core.jit import njit
from twinloop.core.layout import Field, Layout
from twinloop.core.rng import new_streams, seed_streams
from twinloop.core.safety import clip_command_row
from twinloop.core.vector import (
    STREAMS,
    Actions,
    KernelVectorEnv,
    ResetOut,
    StepOut,
    command_limits,
)
from twinloop.sim.locomotion import task as T
from twinloop.sim.locomotion.config import DmcConfig
from twinloop.sim.locomotion.kernel import BatchPhysics, Physics, model_facts


def env_id_of(cfg: DmcConfig) -> str:
    """The registered id of a config's task."""
    return f"twinloop/dmc-{cfg.DOMAIN}-{cfg.TASK}-v0"


def command_space(cfg: DmcConfig) -> gym.spaces.Box:
    """The actuators' controls (float64, their control ranges)."""
    f = model_facts(cfg.DOMAIN)
    return gym.spaces.Box(f.ctrl_low, f.ctrl_high, dtype=np.float64)


class DmcSimBackend(BaseBackend):
    """One MuJoCo model of a control-suite domain, stepped as dm_control steps it.

    Args:
        cfg: The task's config.
    """

    kind = "sim"
    deterministic = True

    def __init__(self, cfg: DmcConfig) -> None:
        """Load the model; nothing is drawn until :meth:`reset`."""
        super().__init__()
        self.cfg = cfg
        self.physics = Physics(cfg.DOMAIN, cfg.TASK)
        self.command_space = command_space(cfg)
        self.measurement_layout = self.physics.facts.layout
        self.measurement_space = self.measurement_layout.space(np.float64)
        self._rng = new_streams(1)

    def reset(self, seed: int | None = None, options: dict[str, Any] | None = None) -> np.ndarray:
        """New episode; ``seed`` re-seeds the physics stream, ``None`` continues it.

        Raises:
            ValueError: ``options`` were given (the control suite takes none).
        """
        if options:
            raise ValueError(f"{env_id_of(self.cfg)}: reset takes no backend options")
        if seed is not None:
            seed_streams(self._rng, 0, int(seed))
        self.physics.reset(self._rng, 0)
        return self.physics.measurement()

    def apply(self, command: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One control step; return ``(measurement, applied controls)``.

        The controls applied are the command itself (the safety layer has clipped it to the
        actuators' ranges, so MuJoCo uses it unchanged); the measurement's last entry flags
        unstable physics (:attr:`~.kernel.Physics.unstable`).
        """
        physics = self.physics
        physics.step(command)
        return physics.measurement(), command

    def identity(self) -> dict[str, Any]:
        """Kind, domain and the MuJoCo version."""
        return {
            "kind": self.kind,
            "domain": self.cfg.DOMAIN,
            "mujoco": str(self.physics._mj.__version__),
        }


def make_sim_backend(cfg: DmcConfig) -> DmcSimBackend:
    """Backend factory for ``backend="sim"``."""
    return DmcSimBackend(cfg)


def metadata(cfg: DmcConfig, layout: Layout) -> dict[str, Any]:
    """Env metadata shared by the single and vector envs (controllers read it)."""
    f = model_facts(cfg.DOMAIN)
    return {
        "render_modes": [],
        "system": "locomotion",
        "observation_layout": layout.describe(),
        "control_timestep_s": f.timestep_s * f.n_sub_steps,
        "n_sub_steps": f.n_sub_steps,
        "reward_terms": T.REWARD_TERMS,
    }


def make_env(cfg: DmcConfig, *, backend: Any, env_id: str | None = None) -> TwinEnv:
    """Single-env factory: the control-suite task on ``backend`` behind the safety layer."""
    task = T.DmcTask(cfg)
    return TwinEnv(
        task,
        backend,
        cfg.safety,
        env_id=env_id or env_id_of(cfg),
        config=cfg,
        metadata=metadata(cfg, task.layout),
    )


# --- the vector env -----------------------------------------------------------------------------
def _nu(cfg: DmcConfig) -> tuple[int]:
    return (model_facts(cfg.DOMAIN).nu,)


def _n_meas(cfg: DmcConfig) -> tuple[int]:
    return (model_facts(cfg.DOMAIN).layout.size,)


#: Every env's state but its MuJoCo data: measurement, step count, command scratch, core rows.
DmcState = bundle(
    "DmcState",
    __name__,
    meas=Rows(_n_meas),  # the last measurement (kernel.measurement_layout)
    steps=Rows((), np.int64),  # control steps in this episode
    cmd=Rows(_nu),  # the safe command of this step
    rng=STREAMS,  # the row's random streams, seeded by reset(seed=...)
    prev_cmd=Rows(_nu),  # the safety layer's last command
    has_prev=Rows((), np.bool_),  # whether it has one (rate limits apply)
    doc="Every env's state but its MuJoCo data, which the vector env holds as objects.",
)


class DmcParams(NamedTuple):
    """Parameters shared by every env: the task and the command limits."""

    task: np.ndarray
    offsets: np.ndarray
    cmd_low: np.ndarray
    cmd_high: np.ndarray
    max_step: np.ndarray


def info_layouts(cfg: DmcConfig) -> tuple[Layout, Layout, Layout]:
    """Float, int and bool info fields (the keys :class:`TwinEnv` reports)."""
    nu = model_facts(cfg.DOMAIN).nu
    floats = Layout(
        [Field("reward/dmc"), Field("applied_action", (nu,)), Field("applied_command", (nu,))]
    )
    bools = Layout([Field("physics_unstable"), Field("action_clipped"), Field("command_clipped")])
    return floats, Layout([]), bools


@njit
def clip_batch(
    acts: np.ndarray,
    low: np.ndarray,
    high: np.ndarray,
    max_step: np.ndarray,
    prev_cmd: np.ndarray,
    has_prev: np.ndarray,
    out: np.ndarray,
    clipped: np.ndarray,
) -> None:
    """The safety layer on every row: clip to the limits and rates, remember the command."""
    for i in range(acts.shape[0]):
        clipped[i] = clip_command_row(
            acts[i], low, high, prev_cmd[i], max_step, has_prev[i], out[i]
        )
        for j in range(out.shape[1]):
            prev_cmd[i, j] = out[i, j]
        has_prev[i] = True


class DmcVectorEnv(KernelVectorEnv):
    """``n_envs`` control-suite envs stepped on MuJoCo's thread pool (``SAME_STEP`` autoreset).

    The base class seeds the rows, validates actions and builds Gymnasium's infos; this
    class has no numba kernels: :meth:`reset_rows` and :meth:`step_rows` drive one
    :class:`~.kernel.BatchPhysics` (``mujoco.batch``) for all envs.

    Args:
        cfg: The task's config (shared by all envs).
        n_envs: Batch size.
        env_id: Registered id.
    """

    State = DmcState
    reset_kernel = None
    step_kernel = None

    def __init__(self, cfg: DmcConfig, n_envs: int, env_id: str | None = None) -> None:
        """Load one model and data per env and start the thread pool."""
        layout = T.observation_layout(cfg)
        fl, il, bl = info_layouts(cfg)
        env_id = env_id or env_id_of(cfg)
        facts = model_facts(cfg.DOMAIN)
        space, labels = T.action_space(facts)
        super().__init__(
            n_envs,
            layout,
            space,
            fl,
            il,
            bl,
            (),
            params=DmcParams(
                T.task_params(cfg),
                T.measurement_offsets(cfg),
                *command_limits(command_space(cfg), cfg.safety),
            ),
            config=cfg,
            env_id=env_id,
            clip_actions=cfg.safety.clip_actions,
            action_labels=labels,
        )
        self.cfg = cfg
        self.metadata = {**self.metadata, **metadata(cfg, layout)}
        threads = cfg.threads or os.cpu_count() or 1
        self.threads = max(1, min(threads, self.num_envs))
        self.physics = BatchPhysics(cfg.DOMAIN, cfg.TASK, self.num_envs, self.threads)

    # the kernels' replacements -----------------------------------------------------------------
    def reset_rows(
        self, state: Any, params: DmcParams, mask: np.ndarray, options: Any, out: ResetOut
    ) -> None:
        """Reset the masked rows on the batch (a scratch physics draws each), then observe."""
        self._reset_physics(np.flatnonzero(mask))
        reward = np.empty(self.num_envs)
        T.observe_batch(state.meas, params.offsets, params.task, out.obs, reward)

    def _reset_physics(self, rows: np.ndarray) -> None:
        st = self.state
        self.physics.reset(rows, st.rng, st.meas)
        st.steps[rows] = 0
        st.has_prev[rows] = False

    def step_rows(self, state: Any, params: DmcParams, actions: Actions, out: StepOut) -> None:
        """Clip, step every env on the batch, observe, score, auto-reset ended rows."""
        n = self.num_envs
        acts, action_clipped = actions.values, actions.clipped
        cmd_clipped = np.empty(n, dtype=np.bool_)
        clip_batch(
            acts, params.cmd_low, params.cmd_high, params.max_step,
            state.prev_cmd, state.has_prev, state.cmd, cmd_clipped,
        )  # fmt: skip
        self.physics.step(state.cmd, state.meas)
        T.observe_batch(state.meas, params.offsets, params.task, out.obs, out.reward)
        state.steps[:] += 1
        out.terminated[:] = False
        unstable = state.meas[:, -1] > 0.0  # kernel.Physics.measure's stability flag
        np.greater_equal(state.steps, self.cfg.max_steps, out=out.truncated)
        np.logical_or(out.truncated, unstable, out=out.truncated)
        ended = out.truncated | out.terminated
        fl = self.info_float
        for top, fin in ((out.top_f, out.fin_f), (out.top_i, out.fin_i), (out.top_b, out.fin_b)):
            top[:] = 0
            fin[:] = 0
        rows_f = np.where(ended[:, None], out.fin_f, out.top_f)
        rows_f[:, fl.slice("reward/dmc")] = out.reward[:, None]
        rows_f[:, fl.slice("applied_action")] = acts
        rows_f[:, fl.slice("applied_command")] = self.physics.ctrl
        rows_b = np.stack([unstable, action_clipped, cmd_clipped], axis=1)
        live = ~ended
        out.top_f[live] = rows_f[live]
        out.fin_f[ended] = rows_f[ended]
        out.top_b[live] = rows_b[live]
        out.fin_b[ended] = rows_b[ended]
        rows = np.flatnonzero(ended)
        if rows.size:
            out.final_obs[rows] = out.obs[rows]
            self._reset_physics(rows)
            scratch = np.empty(rows.size)
            obs_rows = np.empty((rows.size, out.obs.shape[1]), dtype=np.float32)
            T.observe_batch(state.meas[rows], params.offsets, params.task, obs_rows, scratch)
            out.obs[rows] = obs_rows

    def close_extras(self, **kwargs: Any) -> None:
        """Release the batch (its thread pool and data)."""
        self.physics = None  # type: ignore[assignment]


def make_vec_env(cfg: DmcConfig, *, n_envs: int, env_id: str | None = None) -> DmcVectorEnv:
    """Vector-env factory."""
    return DmcVectorEnv(cfg, n_envs, env_id=env_id)
