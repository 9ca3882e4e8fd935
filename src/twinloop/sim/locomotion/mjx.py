"""The control-suite tasks on MuJoCo XLA (MJX): pure JAX ``reset``/``step``, and a Brax env.

The same tasks as ``twinloop/dmc-<domain>-<task>-v0`` (:mod:`.env`), for accelerators and JAX
trainers: :class:`DmcMjxEnv` has pure functions ``reset(key) -> state`` and
``step(state, action) -> state`` that ``jax.jit`` and ``jax.vmap`` take as they are, and
:func:`brax_env` wraps them as a :class:`brax.envs.base.Env`, so that Brax's PPO
(``brax.training.agents.ppo.train.train``) trains on them as MuJoCo Playground's envs do.
Install with ``pip install 'twinloop[mjx]'`` (``mujoco-mjx`` of MuJoCo's exact version, and
``brax`` for the adapter); nothing else in ``twinloop`` imports JAX, MJX or Brax.

What is the same as the C path (:mod:`.kernel`, :mod:`.task`):

* **Model**: the same MJCF (:func:`~.kernel.load_model`, dm_control's files), put on the device
  with ``mjx.put_model``; the same control timestep and ``n_sub_steps``.
* **Step**: dm_control's legacy step as :class:`~.kernel.Physics` runs it. The state between
  control steps is one whose position and velocity stages are those of its ``qpos``/``qvel``
  (after C's ``mj_step1``); a control step is ``mj_step2`` (actuation, acceleration, constraint
  solver, acceleration sensors, Euler), ``n_sub_steps - 1`` full ``mjx.step`` and ``mj_step1``
  (position and velocity stages and sensors). So touch, accelerometer and force sensors are those
  of the last substep's start, as in dm_control, and the cost is exactly ``n_sub_steps`` steps.
* **Measurement, observation, reward**: the measurement gathers the same ``mjx.Data`` fields at
  the same flat indices as the C path (:attr:`~.kernel.ModelFacts.gather`); the observation and
  reward are :func:`~.mjx_task.observe`, the ``jax.numpy`` twin of :func:`~.task.observe_batch`
  (tested on the same rows in float64: rewards to 1e-9 relative, float32 observations to 1e-6).
* **Actions**: the actuators' control ranges; an action outside is clipped to them (a jitted
  function cannot raise; the C path raises unless ``clip_actions``). The safety layer's rate
  limits (``safety.max_command_step``) are not applied here: a config that sets them is refused.
* **Episodes**: ``truncated`` after ``max_steps`` control steps (the config's), never
  ``terminated``. :meth:`DmcMjxEnv.step` does not reset; the caller (or Brax's wrappers) does.
* **Initial state**: the C path's rules (:func:`~.kernel.randomize_joints`'s: limited joints
  uniform in range, unlimited hinges uniform in [-pi, pi], free-joint quaternions from a
  normalised uniform [0, 1)^4; cheetah settles 200 physics steps with zero control, the first of
  them on the pre-draw position stage as in dm_control, time back to 0; the humanoid redraws
  until no contact; the quadruped takes a random root orientation at the lowest contact-free
  height on a 1 cm grid from z = 0), drawn with ``jax.random`` from the key: the same
  distribution as the C path, not the same numbers. Where the C path raises after
  :data:`~.kernel.MAX_PLACEMENT_TRIES` tries, a jitted reset cannot: it keeps the last try.

What differs:

* **Numerics**: MJX runs in float32 (unless ``jax_enable_x64``) and its constraint solver is
  not C MuJoCo's line for line; trajectories agree over a short horizon only. From the same
  states with the same actions, on CPU: qpos within 1e-4 and rewards within 2e-6 for 10-20
  control steps (:data:`AGREEMENT`, per domain, measured and tested), after which chaos and
  contact events make them part (walker qpos 0.04 apart at 50 steps).
* **Unstable physics**: C MuJoCo checks every substep and resets the data mid-step; here the
  check (a non-finite or > 1e10 ``qpos``, ``qvel`` or ``qacc``) runs once per control step, and
  a failing state is replaced by the model's default state (``mj_resetData`` then a forward
  without actuation, which is what the C path's measurement then shows): ``truncated``, reward
  0, the measurement's ``physics_unstable`` entry 1.
* **Brax on JAX >= 0.10**: brax 0.14.2's trainers call ``jax.device_put_replicated``, which
  JAX 0.10 removed; run them inside :func:`brax_jax_compat` (or install JAX < 0.10).
* **Auto-reset under Brax**: Brax's ``AutoResetWrapper`` restarts an ended episode from the
  state its env's first ``reset`` drew (a jitted batch cannot redraw only the ended rows without
  paying a reset every step); the C vector env redraws every time.

[MJX] MuJoCo XLA, ``mujoco.mjx`` 3.17 (``forward.py``: ``forward``, ``step``, ``euler``);
[DMC] dm_control 1.0.50 ``mujoco/engine.py`` (``Physics.step``, the legacy step).
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import math
import re
from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np

from twinloop.sim.locomotion import kernel as K
from twinloop.sim.locomotion.config import TASK_CONFIGS, DmcConfig

log = logging.getLogger(__name__)

try:
    import jax
    import jax.numpy as jnp

    # mujoco.mjx prints "Failed to import warp" to stdout when the optional Warp backend is
    # absent; a library must not print, so that goes to the log
    with contextlib.redirect_stdout(io.StringIO()) as _printed:
        from mujoco import mjx
    from twinloop.sim.locomotion.mjx_task import TaskSpec, observe

    if _printed.getvalue().strip():
        log.debug("mujoco.mjx on import: %s", _printed.getvalue().strip())
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        f"twinloop.sim.locomotion.mjx needs JAX and MuJoCo MJX ({exc}); "
        "install them with: pip install 'twinloop[mjx]'"
    ) from exc

#: Agreement with the C path on CPU (float32 MJX against float64 C MuJoCo), from the same states
#: with the same random actions: ``domain -> (control steps, qpos atol, observation atol, reward
#: atol)``, asserted by ``tests/sim/locomotion/test_mjx.py``. Each bound is about 10x the largest
#: difference measured over 8 starts (cheetah: 7e-7 / 3e-5 / 3e-7 over 20 steps; walker 3e-5 /
#: 8e-4 / 2e-6; hopper 5e-5 / 2e-4 / 2e-7; humanoid 9e-5 / 4e-3 / 1e-6 over 10 steps; quadruped
#: 1.3e-6 / 1.1e-3 / 2.3e-6). The test lets one start of 8 exceed them: a foot that strikes the
#: floor fast can part the two in one control step (a quadruped start moved 6e-3 apart at step
#: 10; of 32 other starts none by 10 steps, 4 by 20). Beyond these horizons the two part: at 50
#: steps the walker's qpos differ by 0.04 and the humanoid's by 1.3 (chaos and contact events
#: amplify float32 rounding).
AGREEMENT = {
    "cheetah": (20, 1e-5, 5e-4, 1e-5),
    "walker": (20, 5e-4, 1e-2, 5e-5),
    "hopper": (20, 5e-4, 5e-3, 1e-5),
    "humanoid": (10, 1e-3, 5e-2, 2e-5),
    "quadruped": (10, 2e-5, 1e-2, 5e-5),
}
#: A state whose ``qpos``, ``qvel`` or ``qacc`` exceed this is unstable (MuJoCo's ``mjMAXVAL``).
MAX_VALUE = 1e10
#: Registered ids this module serves: ``twinloop/dmc-<domain>-<task>-v0``.
ENV_IDS = tuple(f"twinloop/dmc-{d}-{t}-v0" for d, t in TASK_CONFIGS)
_ID = re.compile(r"^twinloop/dmc-(?P<domain>[a-z]+)-(?P<task>[a-z]+)-v0$")


class MjxState(NamedTuple):
    """One env's state between control steps (a JAX pytree; a batch when vmapped).

    Attributes:
        data: The ``mjx.Data``: position and velocity stages of its ``qpos``/``qvel``,
            acceleration-stage sensors of the last substep's start.
        meas: The measurement (:func:`~.kernel.measurement_layout`; last entry: unstable).
        obs: The observation, float32 (:func:`~.task.observation_layout`).
        reward: The last step's reward (``reward/dmc``; 0 after a reset), float32.
        terminated: Always False (no control-suite task ends early).
        truncated: Whether the episode ended by its time limit or unstable physics.
        steps: Control steps taken in this episode (int32).
    """

    data: Any
    meas: Any
    obs: Any
    reward: Any
    terminated: Any
    truncated: Any
    steps: Any


def _default_data(model: Any) -> Any:
    """C MuJoCo's ``mj_resetData`` and a forward without actuation (as ``Physics.reset``)."""
    mj = K.mujoco_module()
    d = mj.MjData(model)
    flags = int(model.opt.disableflags)
    model.opt.disableflags = flags | int(mj.mjtDisableBit.mjDSBL_ACTUATION)
    try:
        mj.mj_forward(model, d)
    finally:
        model.opt.disableflags = flags
    return d


def config_of(env_id: str, **overrides: Any) -> DmcConfig:
    """The config of a registered control-suite id, with field overrides.

    Raises:
        ValueError: ``env_id`` is not a control-suite id (lists them).
    """
    match = _ID.match(env_id)
    key = (match["domain"], match["task"]) if match else None
    if key not in TASK_CONFIGS:
        raise ValueError(f"no MJX env for {env_id!r}; known: {', '.join(ENV_IDS)}")
    return TASK_CONFIGS[key](**overrides)


class DmcMjxEnv:
    """A control-suite task on MJX: pure, jittable, vmappable ``reset`` and ``step``.

    ``reset(key)`` draws an initial state; ``step(state, action)`` runs one control step and
    never resets (a state with ``truncated`` set must be reset by the caller). Both act on one
    env; ``jax.vmap`` them for a batch. Observations are float32 (the C path's layout and
    order); the action is clipped to the actuators' control ranges.

    Args:
        cfg: The task's config (``max_steps`` is the time limit; ``threads`` is ignored).

    Raises:
        TypeError: ``cfg`` is not a control-suite task config.
        ValueError: ``cfg.safety`` sets rate limits (not applied on this path).
    """

    def __init__(self, cfg: DmcConfig) -> None:
        """Load the model, put it on the default device and prepare the default state."""
        if not isinstance(cfg, DmcConfig) or not cfg.DOMAIN:
            raise TypeError(f"DmcMjxEnv needs a control-suite task config, got {cfg!r}")
        if cfg.safety.max_command_step:
            raise ValueError(
                f"dmc-{cfg.DOMAIN}-{cfg.TASK} on MJX: safety.max_command_step="
                f"{cfg.safety.max_command_step} is not applied on this path; leave it empty"
            )
        self.cfg = cfg
        self.domain = cfg.DOMAIN
        self.facts = K.model_facts(cfg.DOMAIN)
        self.spec = TaskSpec.of(cfg)
        self.mj_model = K.load_model(cfg.DOMAIN, cfg.TASK)
        m = self.mj_model
        self.model = mjx.put_model(m)
        no_act = int(m.opt.disableflags) | int(mjx.DisableBit.ACTUATION)
        self._model_no_actuation = self.model.replace(
            opt=self.model.opt.replace(disableflags=mjx.DisableBit(no_act))
        )
        self._gather = tuple((attr, np.asarray(idx)) for _, attr, idx in self.facts.gather)
        self._ctrl_low = np.asarray(self.facts.ctrl_low)
        self._ctrl_high = np.asarray(self.facts.ctrl_high)
        self._joints = [
            (
                int(m.jnt_type[j]),
                bool(m.jnt_limited[j]),
                tuple(m.jnt_range[j]),
                int(m.jnt_qposadr[j]),
            )
            for j in range(int(m.njnt))
        ]
        self._root = int(m.jnt_qposadr[0]) if int(m.njnt) and m.jnt_type[0] == K.JNT_FREE else -1
        # MuJoCo's reset state (mj_resetData + a forward without actuation, computed by C
        # MuJoCo: no compile): the start of every reset and what an unstable state becomes
        self._default = mjx.put_data(m, _default_data(m))

    # --- sizes ---------------------------------------------------------------------------------
    @property
    def observation_size(self) -> int:
        """Length of the observation vector."""
        return self.spec.obs_size

    @property
    def action_size(self) -> int:
        """Length of the action vector (the actuators)."""
        return self.facts.nu

    @property
    def measurement_size(self) -> int:
        """Length of the measurement vector (stability flag included)."""
        return self.facts.layout.size

    @property
    def control_timestep_s(self) -> float:
        """Seconds of simulated time per control step."""
        return self.facts.timestep_s * self.facts.n_sub_steps

    # --- physics stages (C MuJoCo's mj_step1 / mj_step2 as MJX functions) ----------------------
    @staticmethod
    def _step1(m: Any, d: Any) -> Any:
        """Position and velocity stages and their sensors (C's ``mj_step1``)."""
        d = mjx.fwd_position(m, d)
        d = mjx.sensor_pos(m, d)
        d = mjx.fwd_velocity(m, d)
        return mjx.sensor_vel(m, d)

    @staticmethod
    def _step2(m: Any, d: Any) -> Any:
        """Actuation, acceleration, constraints, acceleration sensors, Euler (C's ``mj_step2``)."""
        d = mjx.fwd_actuation(m, d)
        d = mjx.fwd_acceleration(m, d)
        if d._impl.efc_J.size == 0:  # no constraint rows: mjx.forward's own shortcut
            d = d.replace(qacc=d.qacc_smooth)
        else:
            d = mjx.solve(m, d)
            d = mjx.sensor_acc(m, d)
        return mjx.euler(m, d)

    def _legacy_step(self, d: Any, n: int) -> Any:
        """dm_control's legacy step: ``mj_step2``, ``mj_step`` x (n - 1), ``mj_step1``.

        As ``mj_step`` is ``mj_step1`` then ``mj_step2``, that is ``n`` x (``mj_step2`` then
        ``mj_step1``): one loop body, so XLA compiles one pipeline, not three.
        """
        m = self.model

        def substep(_: Any, x: Any) -> Any:
            return self._step1(m, self._step2(m, x))

        return substep(0, d) if n == 1 else jax.lax.fori_loop(0, n, substep, d)

    def _forward_without_actuation(self, d: Any) -> Any:
        return mjx.forward(self._model_no_actuation, d)

    def _touching(self, qpos: Any) -> Any:
        """Whether any geoms touch at ``qpos`` (C's ``ncon > 0``; every margin here is 0)."""
        d = self._default.replace(qpos=qpos)
        d = mjx.kinematics(self.model, d)
        d = mjx.collision(self.model, d)
        return jnp.any(d._impl.contact.dist < 0.0)

    # --- initial state -------------------------------------------------------------------------
    def _draw_joints(self, key: Any, qpos: Any) -> Any:
        """:func:`~.kernel.randomize_joints`'s rules with ``jax.random``."""
        keys = jax.random.split(key, max(1, len(self._joints)))
        dtype = qpos.dtype
        for (t, limited, (lo, hi), a), k in zip(self._joints, keys, strict=False):
            if limited and t in (K.JNT_HINGE, K.JNT_SLIDE):
                qpos = qpos.at[a].set(jax.random.uniform(k, (), dtype, lo, hi))
            elif limited and t == K.JNT_BALL:
                k_axis, k_angle = jax.random.split(k)
                axis = jax.random.normal(k_axis, (3,), dtype)
                angle = jax.random.uniform(k_angle, (), dtype) * hi
                quat = jnp.concatenate(
                    [
                        jnp.cos(0.5 * angle)[None],
                        jnp.sin(0.5 * angle) * axis / jnp.linalg.norm(axis),
                    ]
                )
                qpos = qpos.at[a : a + 4].set(quat)
            elif not limited and t == K.JNT_HINGE:
                qpos = qpos.at[a].set(jax.random.uniform(k, (), dtype, -math.pi, math.pi))
            elif not limited and t == K.JNT_BALL:
                q = jax.random.normal(k, (4,), dtype)
                qpos = qpos.at[a : a + 4].set(q / jnp.linalg.norm(q))
            elif not limited and t == K.JNT_FREE:
                q = jax.random.uniform(k, (4,), dtype)
                qpos = qpos.at[a + 3 : a + 7].set(q / jnp.linalg.norm(q))
        return qpos

    def _initial_qpos(self, key: Any) -> Any:
        qpos0 = self._default.qpos
        rule = K.INIT_RULE[self.domain]
        if rule == K.INIT_JOINTS:
            return self._draw_joints(key, qpos0)
        if rule == K.INIT_JOINTS_FREE_OF_CONTACT:

            def redraw(c: tuple[Any, ...]) -> tuple[Any, ...]:
                k, key, _, _ = c
                key, sub = jax.random.split(key)
                q = self._draw_joints(sub, qpos0)
                return k + 1, key, q, self._touching(q)

            first = redraw((jnp.int32(0), key, qpos0, jnp.bool_(True)))
            last = jax.lax.while_loop(
                lambda c: c[3] & (c[0] < K.MAX_PLACEMENT_TRIES), redraw, first
            )
            return last[2]
        # the quadruped: random root orientation, lowest contact-free height on a 1 cm grid
        quat = jax.random.normal(key, (4,), qpos0.dtype)
        quat = quat / jnp.linalg.norm(quat)
        a = self._root

        def placed(k: Any) -> Any:
            pos = jnp.stack([0.0, 0.0, k * K.QUADRUPED_LIFT_M]).astype(qpos0.dtype)
            return qpos0.at[a : a + 3].set(pos).at[a + 3 : a + 7].set(quat)

        def lift(c: tuple[Any, Any]) -> tuple[Any, Any]:
            return c[0] + 1, self._touching(placed(c[0] + 1))

        k, _ = jax.lax.while_loop(
            lambda c: c[1] & (c[0] < K.MAX_PLACEMENT_TRIES - 1),
            lift,
            (jnp.int32(0), self._touching(placed(0))),
        )
        return placed(k)

    # --- measurement and task ------------------------------------------------------------------
    def measure(self, d: Any, unstable: Any) -> Any:
        """The measurement of ``d`` (the C path's layout; last entry the stability flag)."""
        parts = [getattr(d, attr).ravel()[idx] for attr, idx in self._gather]
        flag = jnp.asarray(unstable, d.qpos.dtype)[None]
        return jnp.concatenate([*parts, flag])

    def _finish(self, d: Any, unstable: Any, steps: Any) -> MjxState:
        meas = self.measure(d, unstable)
        obs, reward = observe(meas, self.spec)
        truncated = unstable | (steps >= self.cfg.max_steps)
        return MjxState(
            data=d,
            meas=meas,
            obs=obs.astype(jnp.float32),
            reward=reward.astype(jnp.float32),
            terminated=jnp.zeros((), bool),
            truncated=truncated,
            steps=steps,
        )

    # --- the pure API --------------------------------------------------------------------------
    def reset_data(self, key: Any) -> Any:
        """An initial ``mjx.Data`` drawn by the domain's rule (see the module docstring)."""
        d = self._default.replace(qpos=self._initial_qpos(key))
        settle = K.SETTLE_STEPS[self.domain]
        if settle:
            # C's settle starts with mj_step2 on the position stage of the pre-draw state
            d = self._legacy_step(d.replace(ctrl=jnp.zeros_like(d.ctrl)), settle)
            d = d.replace(time=jnp.zeros_like(d.time))
        return self._forward_without_actuation(d)

    def reset(self, key: Any) -> MjxState:
        """A new episode's state from a JAX PRNG ``key`` (jittable, vmappable over keys)."""
        d = self.reset_data(key)
        return self._finish(d, jnp.zeros((), bool), jnp.zeros((), jnp.int32))

    def physics_step(self, d: Any, action: Any) -> tuple[Any, Any]:
        """One control step of the physics: ``(data, unstable)``.

        The action is clipped to the control ranges; an unstable result is replaced by the
        default state (see the module docstring).

        Raises:
            ValueError: ``action`` is not one env's action (shape ``(action_size,)``; vmap
                for a batch).
        """
        if np.shape(action) != (self.facts.nu,):
            raise ValueError(
                f"dmc-{self.cfg.DOMAIN}-{self.cfg.TASK}: an action has shape "
                f"({self.facts.nu},) (vmap step over a batch); got {np.shape(action)}"
            )
        dtype = d.ctrl.dtype
        ctrl = jnp.clip(jnp.asarray(action, dtype), self._ctrl_low, self._ctrl_high)
        d = self._legacy_step(d.replace(ctrl=ctrl), self.facts.n_sub_steps)
        unstable = jnp.zeros((), bool)
        for x in (d.qpos, d.qvel, d.qacc):
            unstable = unstable | ~jnp.all(jnp.isfinite(x) & (jnp.abs(x) <= MAX_VALUE))
        d = jax.tree_util.tree_map(lambda bad, x: jnp.where(unstable, bad, x), self._default, d)
        return d, unstable

    def step(self, state: MjxState, action: Any) -> MjxState:
        """One control step (jittable, vmappable); never resets (see :class:`DmcMjxEnv`)."""
        d, unstable = self.physics_step(state.data, action)
        return self._finish(d, unstable, state.steps + 1)

    def observe(self, d: Any) -> tuple[Any, Any]:
        """Observation (float32) and reward of the state ``d`` (stable)."""
        obs, reward = observe(self.measure(d, False), self.spec)
        return obs.astype(jnp.float32), reward.astype(jnp.float32)

    def data_from_state(self, qpos: Any, qvel: Any, act: Any = None, ctrl: Any = None) -> Any:
        """An ``mjx.Data`` at a given physical state, forwarded (as ``Physics.set_state``)."""
        d = self._default.replace(qpos=jnp.asarray(qpos, self._default.qpos.dtype))
        d = d.replace(qvel=jnp.asarray(qvel, d.qvel.dtype))
        if act is not None:
            d = d.replace(act=jnp.asarray(act, d.act.dtype))
        if ctrl is not None:
            d = d.replace(ctrl=jnp.asarray(ctrl, d.ctrl.dtype))
        return mjx.forward(self.model, d)


def make_mjx_env(env_id: str, **overrides: Any) -> DmcMjxEnv:
    """The MJX env of a registered control-suite id (config fields as keyword overrides).

    Raises:
        ValueError: Unknown id, or an invalid override.
    """
    return DmcMjxEnv(config_of(env_id, **overrides))


@functools.cache
def _brax_env_class() -> type:
    """Brax's ``Env`` subclass (built on first use: Brax loads only when an adapter is made)."""
    try:
        from brax.envs.base import Env, State
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        raise ImportError(
            f"the Brax adapter needs brax ({exc}); install it with: pip install 'twinloop[mjx]'"
        ) from exc

    class DmcBraxEnv(Env):
        """A control-suite task as a Brax env (``pipeline_state`` is the ``mjx.Data``).

        ``done`` is 1 only when the physics went unstable (the state is replaced); the time
        limit belongs to Brax's ``EpisodeWrapper`` (pass :attr:`episode_length` to
        ``ppo.train``), which reports it as ``info["truncation"]``. ``metrics`` hold the reward
        term ``reward/dmc``; ``info["physics_unstable"]`` the flag.

        Args:
            env: The MJX env.
        """

        def __init__(self, env: DmcMjxEnv) -> None:
            """Wrap ``env``."""
            self.env = env

        @property
        def episode_length(self) -> int:
            """The config's ``max_steps`` (for ``ppo.train(episode_length=...)``)."""
            return self.env.cfg.max_steps

        @property
        def observation_size(self) -> int:
            """Length of the observation vector."""
            return self.env.observation_size

        @property
        def action_size(self) -> int:
            """Length of the action vector."""
            return self.env.action_size

        @property
        def backend(self) -> str:
            """``"mjx"``."""
            return "mjx"

        @property
        def dt(self) -> float:
            """Seconds per control step."""
            return self.env.control_timestep_s

        def reset(self, rng: Any) -> Any:
            """A new episode's state from ``rng``."""
            s = self.env.reset(rng)
            zero = jnp.zeros((), jnp.float32)
            return State(
                pipeline_state=s.data,
                obs=s.obs,
                reward=zero,
                done=zero,
                metrics={"reward/dmc": zero},
                info={"physics_unstable": zero},
            )

        def step(self, state: Any, action: Any) -> Any:
            """One control step."""
            d, unstable = self.env.physics_step(state.pipeline_state, action)
            meas = self.env.measure(d, unstable)
            obs, reward = observe(meas, self.env.spec)
            reward = reward.astype(jnp.float32)
            flag = unstable.astype(jnp.float32)
            info = {**state.info, "physics_unstable": flag}
            metrics = {**state.metrics, "reward/dmc": reward}
            return state.replace(
                pipeline_state=d,
                obs=obs.astype(jnp.float32),
                reward=reward,
                done=flag,
                metrics=metrics,
                info=info,
            )

    DmcBraxEnv.__module__ = __name__
    DmcBraxEnv.__qualname__ = "DmcBraxEnv"
    return DmcBraxEnv


def _put_replicated(x: Any, devices: Any) -> Any:
    """``jax.device_put_replicated``: ``x`` stacked once per device and sharded over them."""
    devices = list(devices)
    mesh = jax.sharding.Mesh(np.array(devices), ("devices",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("devices"))

    def put(v: Any) -> Any:
        return jax.device_put(jnp.stack([jnp.asarray(v)] * len(devices)), sharding)

    return jax.tree_util.tree_map(put, x)


@contextlib.contextmanager
def brax_jax_compat() -> Iterator[None]:
    """Let Brax 0.14's trainers run on JAX >= 0.10 inside the block (a no-op on older JAX).

    brax 0.14.2 (the newest) calls ``jax.device_put_replicated`` in ``ppo.train`` (also SAC,
    APG and ``brax.training.pmap``), which JAX 0.10 removed: it raises ``AttributeError``.
    Inside the block that name is an equivalent (the value stacked once per device and put
    sharded over them, the replacement JAX's pmap migration guide gives); on exit it is
    removed again. Nothing is changed where JAX still has it. Not thread-safe: it sets a
    module attribute of ``jax`` for the block's duration.

    Example::

        with brax_jax_compat():
            make_policy, params, metrics = ppo.train(environment=brax_env(...), ...)
    """
    try:
        jax.device_put_replicated  # noqa: B018 - present (maybe deprecated): leave it
    except AttributeError:
        pass
    else:
        yield
        return
    jax.device_put_replicated = _put_replicated
    try:
        yield
    finally:
        del jax.device_put_replicated


def brax_env(env_id: str, **overrides: Any) -> Any:
    """A control-suite task as a :class:`brax.envs.base.Env` for Brax's trainers.

    Example::

        env = brax_env("twinloop/dmc-cheetah-run-v0")
        make_policy, params, metrics = ppo.train(
            environment=env, episode_length=env.episode_length, num_timesteps=..., ...)

    Args:
        env_id: A registered control-suite id (``twinloop/dmc-<domain>-<task>-v0``).
        **overrides: Config fields (e.g. ``max_steps``).

    Raises:
        ValueError: Unknown id, or an invalid override.
        ImportError: brax is not installed (names the extra).
    """
    return _brax_env_class()(make_mjx_env(env_id, **overrides))


__all__ = [
    "AGREEMENT",
    "ENV_IDS",
    "DmcMjxEnv",
    "MjxState",
    "brax_env",
    "brax_jax_compat",
    "config_of",
    "make_mjx_env",
]
