"""The MJX path of the control-suite tasks against the C path, and its Brax adapter.

* The task math in ``jax.numpy`` (``mjx_task.observe``) equals the numba ``observe_batch`` on
  the same measurement rows (random and real) of every task, in float64.
* MJX trajectories agree with C MuJoCo's over a short horizon from the same states with the
  same actions, to the tolerances the module states (``mjx.AGREEMENT``, measured).
* The Brax adapter satisfies Brax's ``Env`` contract under its training wrappers, and Brax's
  PPO trains on it (slow).

XLA compile time dominates on CPU (5-30 s per function and domain at the default optimisation
level), so the fast tests jit with the backend's optimisation level 0 (about half the compile
time; the numbers do not change beyond float32 rounding), and what needs more is marked slow.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("mujoco")
pytest.importorskip("jax")
M = pytest.importorskip("twinloop.sim.locomotion.mjx")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from twinloop.core.rng import new_streams, seed_streams  # noqa: E402
from twinloop.core.safety import SafetyConfig  # noqa: E402
from twinloop.sim.locomotion import task as T  # noqa: E402
from twinloop.sim.locomotion.config import TASK_CONFIGS, CheetahRunConfig  # noqa: E402
from twinloop.sim.locomotion.kernel import Physics, model_facts  # noqa: E402
from twinloop.sim.locomotion.mjx_task import TaskSpec, observe, tolerance  # noqa: E402

TASKS = list(TASK_CONFIGS)
#: brax imports jaxopt, which warns on import that it is no longer maintained.
QUIET_JAXOPT = pytest.mark.filterwarnings("ignore:JAXopt is no longer maintained")
#: Compile fast: XLA's CPU backend at optimisation level 0 (per function, no global flag).
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _jit(fn, **kw):
    return jax.jit(fn, compiler_options=FAST_COMPILE, **kw)


def _numba_rows(cfg, meas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    obs = np.empty((meas.shape[0], T.observation_layout(cfg).size), dtype=np.float32)
    reward = np.empty(meas.shape[0])
    T.observe_batch(meas, T.measurement_offsets(cfg), T.task_params(cfg), obs, reward)
    return obs, reward


def _random_rows(cfg, n: int, seed: int) -> np.ndarray:
    """Rows over many scales (velocities reach the run speeds), some flagged unstable."""
    rng = np.random.default_rng(seed)
    layout = model_facts(cfg.DOMAIN).layout
    scale = np.exp(rng.uniform(np.log(0.05), np.log(30.0), size=(n, 1)))
    meas = rng.uniform(-1.0, 1.0, size=(n, layout.size)) * scale
    for name in ("touch_n",):  # touch sensors are forces >= 0 (log1p of them is observed)
        if name in layout:
            meas[:, layout.slice(name)] = np.abs(meas[:, layout.slice(name)])
    meas[:, -1] = rng.uniform(size=n) < 0.1
    return meas


def _real_rows(cfg, n: int, seed: int) -> np.ndarray:
    """Measurements of C MuJoCo stepped with random actions (a fresh episode every 50 steps)."""
    physics = Physics(cfg.DOMAIN, cfg.TASK)
    streams = new_streams(1)
    seed_streams(streams, 0, seed)
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(n):
        if k % 50 == 0:
            physics.reset(streams, 0)
        physics.step(rng.uniform(-1.0, 1.0, physics.facts.nu))
        rows.append(physics.measurement())
    return np.array(rows)


# --- the task math ------------------------------------------------------------------------------
@pytest.mark.parametrize("key", TASKS, ids=[f"{d}-{t}" for d, t in TASKS])
def test_jnp_task_math_equals_numba(key: tuple[str, str]) -> None:
    cfg = TASK_CONFIGS[key]()
    meas = np.concatenate([_random_rows(cfg, 300, 1), _real_rows(cfg, 150, 2)])
    obs_nb, reward_nb = _numba_rows(cfg, meas)
    spec = TaskSpec.of(cfg)
    with jax.enable_x64(True):
        obs, reward = jax.jit(jax.vmap(lambda m: observe(m, spec)))(jnp.asarray(meas))
        assert obs.dtype == jnp.float64
        obs, reward = np.asarray(obs), np.asarray(reward)
    assert obs.shape == obs_nb.shape == (meas.shape[0], spec.obs_size)
    # numba's observation is float32 (the env's dtype): compare after the same rounding
    np.testing.assert_allclose(obs.astype(np.float32), obs_nb, rtol=1e-6, atol=1e-30)
    np.testing.assert_allclose(reward, reward_nb, rtol=1e-9, atol=1e-12)
    assert (reward[meas[:, -1] > 0] == 0).all()
    assert np.ptp(reward_nb[meas[:, -1] == 0]) > 0  # the rows exercise the reward


def test_tolerance_equals_numba_on_every_sigmoid() -> None:
    x = np.linspace(-25.0, 25.0, 2001)
    cases = [
        (1.2, np.inf, 0.6, T.SIGMOID_GAUSSIAN, 0.1),
        (10.0, np.inf, 10.0, T.SIGMOID_LINEAR, 0.0),
        (1.0, np.inf, 0.5, T.SIGMOID_LINEAR, 0.5),
        (0.0, 0.0, 1.0, T.SIGMOID_QUADRATIC, 0.0),
        (0.6, 2.0, 0.0, T.SIGMOID_GAUSSIAN, 0.1),
        (-1.0, 2.0, 3.0, T.SIGMOID_GAUSSIAN, 0.3),
    ]
    with jax.enable_x64(True):
        for args in cases:
            ours = np.asarray(tolerance(jnp.asarray(x), *args))
            theirs = np.array([T.tolerance(v, *args) for v in x])
            np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-15, err_msg=str(args))


def test_observe_refuses_a_batch_or_a_short_row() -> None:
    spec = TaskSpec.of(CheetahRunConfig())
    with pytest.raises(ValueError, match="vmap"):
        observe(jnp.zeros((2, 40)), spec)
    with pytest.raises(ValueError, match="at least"):
        observe(jnp.zeros(3), spec)


# --- construction and imports -------------------------------------------------------------------
def test_config_of_and_its_errors() -> None:
    cfg = M.config_of("twinloop/dmc-walker-walk-v0", max_steps=7)
    assert (cfg.DOMAIN, cfg.TASK, cfg.max_steps) == ("walker", "walk", 7)
    assert len(M.ENV_IDS) == len(TASK_CONFIGS)
    with pytest.raises(ValueError, match="dmc-cheetah-run-v0"):
        M.config_of("twinloop/dmc-cheetah-fly-v0")
    with pytest.raises(ValueError, match="max_steps"):
        M.config_of("twinloop/dmc-cheetah-run-v0", max_steps=0)
    with pytest.raises(TypeError, match="control-suite"):
        M.DmcMjxEnv(SafetyConfig())
    env = M.make_mjx_env("twinloop/dmc-cheetah-run-v0")
    with pytest.raises(ValueError, match=r"shape \(6,\)"):
        env.physics_step(None, jnp.zeros(5))  # refused before the data is read
    limited = CheetahRunConfig(safety=SafetyConfig(max_command_step=(0.1,) * 6))
    with pytest.raises(ValueError, match="max_command_step"):
        M.DmcMjxEnv(limited)


def test_sizes_equal_the_c_path() -> None:
    for key in TASKS:
        cfg = TASK_CONFIGS[key]()
        env = M.DmcMjxEnv(cfg)
        facts = model_facts(cfg.DOMAIN)
        assert env.observation_size == T.observation_layout(cfg).size
        assert env.action_size == facts.nu
        assert env.measurement_size == facts.layout.size
        assert env.control_timestep_s == pytest.approx(facts.timestep_s * facts.n_sub_steps)


def test_twinloop_does_not_import_jax_and_a_missing_extra_names_it() -> None:
    code = textwrap.dedent(
        """
        import sys
        import twinloop
        import twinloop.sim.locomotion.env, twinloop.sim.locomotion.task
        heavy = sorted(m for m in ("jax", "brax", "mujoco.mjx", "flax") if m in sys.modules)
        assert not heavy, heavy

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == "jax" or name.startswith("jax."):
                    raise ImportError("No module named 'jax' (blocked by the test)")

        sys.meta_path.insert(0, Block())
        try:
            import twinloop.sim.locomotion.mjx
        except ImportError as exc:
            assert "pip install 'twinloop[mjx]'" in str(exc), exc
        else:
            raise AssertionError("imported without jax")
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


# --- agreement with C MuJoCo --------------------------------------------------------------------
def _agreement(domain: str, task: str, n_starts: int = 8) -> dict[str, np.ndarray]:
    """Each start's largest |MJX - C| over the stated control steps (``n_starts`` C resets)."""
    steps, *_ = M.AGREEMENT[domain]
    env = M.make_mjx_env(f"twinloop/dmc-{domain}-{task}-v0", max_steps=steps)
    cfg = env.cfg
    rng = np.random.default_rng(5)
    actions = rng.uniform(-1.0, 1.0, size=(steps, n_starts, env.action_size))
    physics, starts = [], []
    for k in range(n_starts):
        p = Physics(domain, task)
        streams = new_streams(1)
        seed_streams(streams, 0, 100 + k)
        p.reset(streams, 0)
        physics.append(p)
        starts.append(M.mjx.put_data(p.model, p.data))  # the same state, bit for bit
    data = jax.tree_util.tree_map(lambda *x: jnp.stack(x), *starts)
    zeros = jnp.zeros(n_starts, jnp.int32)
    state = M.MjxState(data, None, None, None, None, None, zeros)
    step = _jit(jax.vmap(env.step))
    worst = {k: np.zeros(n_starts) for k in ("qpos", "obs", "reward")}
    for t in range(steps):
        state = step(state, jnp.asarray(actions[t], jnp.float32))
        for k, p in enumerate(physics):
            p.step(actions[t, k])
        meas = np.array([p.measurement() for p in physics])
        obs_c, reward_c = _numba_rows(cfg, meas)
        qpos_c = np.array([p.data.qpos for p in physics])
        diffs = {
            "qpos": np.abs(np.asarray(state.data.qpos) - qpos_c).max(axis=1),
            "obs": np.abs(np.asarray(state.obs) - obs_c).max(axis=1),
            "reward": np.abs(np.asarray(state.reward) - reward_c),
        }
        for key, d in diffs.items():
            worst[key] = np.maximum(worst[key], d)
        # the time limit (max_steps = the horizon here) truncates the last step only
        np.testing.assert_array_equal(np.asarray(state.truncated), t == steps - 1)
        assert not np.asarray(state.terminated).any()
        np.testing.assert_array_equal(np.asarray(state.steps), t + 1)
        times = [p.data.time for p in physics]
        np.testing.assert_allclose(np.asarray(state.data.time), times, rtol=1e-6)
    return worst


def _check_agreement(domain: str, task: str) -> None:
    """All but at most one of 8 starts agree to the stated bounds (see ``mjx.AGREEMENT``)."""
    _, *tols = M.AGREEMENT[domain]
    worst = _agreement(domain, task)
    for (key, per_start), tol in zip(worst.items(), tols, strict=True):
        assert (per_start > tol).sum() <= 1, (key, tol, per_start)


def test_cheetah_agrees_with_c_mujoco() -> None:
    _check_agreement("cheetah", "run")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("domain", "task"),
    [("walker", "walk"), ("hopper", "hop"), ("humanoid", "run"), ("quadruped", "walk")],
)
def test_agrees_with_c_mujoco(domain: str, task: str) -> None:
    _check_agreement(domain, task)


# --- initial states -----------------------------------------------------------------------------
def _c_contacts(physics: Physics, qpos: np.ndarray) -> int:
    mj = M.K.mujoco_module()
    mj.mj_resetData(physics.model, physics.data)
    physics.data.qpos[:] = qpos
    mj.mj_forward(physics.model, physics.data)
    return int(physics.data.ncon)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("domain", "task"),
    [("cheetah", "run"), ("walker", "walk"), ("hopper", "hop"), ("humanoid", "run"),
     ("quadruped", "walk")],
)  # fmt: skip
def test_reset_follows_the_c_rules(domain: str, task: str) -> None:
    env = M.make_mjx_env(f"twinloop/dmc-{domain}-{task}-v0")
    n = 6
    states = jax.jit(jax.vmap(env.reset))(jax.random.split(jax.random.PRNGKey(3), n))
    qpos = np.asarray(states.data.qpos, dtype=np.float64)
    assert np.isfinite(np.asarray(states.obs)).all()
    assert (np.asarray(states.steps) == 0).all() and not np.asarray(states.truncated).any()
    np.testing.assert_array_equal(np.asarray(states.data.time), 0.0)
    assert np.unique(np.round(qpos, 5), axis=0).shape[0] == n  # every key its own start
    m = env.mj_model
    physics = Physics(domain, task)
    for row in qpos:
        if domain == "cheetah":  # settled 200 steps: the joints stay within their limits
            limited = np.flatnonzero(m.jnt_limited)
        else:
            limited = np.flatnonzero(m.jnt_limited & (m.jnt_type >= 2))
        adr = m.jnt_qposadr[limited]
        lo, hi = m.jnt_range[limited].T
        assert ((row[adr] >= lo - 1e-3) & (row[adr] <= hi + 1e-3)).all()
        if domain == "humanoid":
            assert _c_contacts(physics, row) == 0
            np.testing.assert_allclose(np.linalg.norm(row[3:7]), 1.0, rtol=1e-5)
        if domain == "quadruped":
            z = row[2]
            assert abs(z / 0.01 - round(z / 0.01)) < 1e-3  # on the 1 cm grid
            assert _c_contacts(physics, row) == 0
            lower = row.copy()
            lower[2] -= 0.01
            assert z < 0.005 or _c_contacts(physics, lower) > 0  # the lowest such height
    if domain in ("walker", "hopper"):
        # the reset's measurement is the forwarded state's: observation of C's forward there
        for k in range(n):
            physics.set_state(qpos[k], np.zeros(m.nv), np.zeros(m.na), np.zeros(m.nu))
            obs_c, _ = _numba_rows(env.cfg, physics.measurement()[None])
            np.testing.assert_allclose(np.asarray(states.obs[k]), obs_c[0], atol=1e-4)


# --- the Brax adapter ---------------------------------------------------------------------------
@QUIET_JAXOPT
def test_brax_adapter_contract_under_the_training_wrappers() -> None:
    pytest.importorskip("brax")
    from brax.envs.base import Env
    from brax.envs.wrappers import training

    env = M.brax_env("twinloop/dmc-walker-walk-v0", max_steps=3)
    assert isinstance(env, Env)
    assert (env.backend, env.action_size, env.observation_size) == ("mjx", 6, 24)
    assert env.episode_length == 3
    assert env.dt == pytest.approx(0.025)
    wrapped = training.wrap(env, episode_length=env.episode_length)
    reset, step = _jit(wrapped.reset), _jit(wrapped.step)
    n = 2
    state = reset(jax.random.split(jax.random.PRNGKey(0), n))
    assert state.obs.shape == (n, 24) and state.obs.dtype == jnp.float32
    first = np.asarray(state.obs)
    assert not np.allclose(first[0], first[1])  # each row drew its own start
    actions = jnp.asarray(np.random.default_rng(0).uniform(-2.0, 2.0, (n, 6)), jnp.float32)
    dones, truncations = [], []
    for _ in range(4):
        state = step(state, actions)
        assert np.isfinite(np.asarray(state.obs)).all()
        assert np.isfinite(np.asarray(state.reward)).all()
        assert state.reward.shape == (n,)
        dones.append(np.asarray(state.done))
        truncations.append(np.asarray(state.info["truncation"]))
        if not dones[-1].any():  # (an ended row holds its next episode's first state)
            ctrl = np.asarray(state.pipeline_state.ctrl)
            np.testing.assert_array_equal(ctrl, np.clip(np.asarray(actions), -1.0, 1.0))
    # the episode ends after max_steps control steps, as a truncation; then it starts again
    np.testing.assert_array_equal(np.array(dones), [[0, 0], [0, 0], [1, 1], [0, 0]])
    np.testing.assert_array_equal(np.array(truncations)[2], [1, 1])
    np.testing.assert_array_equal(np.asarray(state.info["steps"]), [1, 1])
    assert set(state.metrics) == {"reward/dmc"}
    np.testing.assert_array_equal(np.asarray(state.metrics["reward/dmc"]), np.asarray(state.reward))
    assert not np.asarray(state.info["physics_unstable"]).any()


@pytest.mark.slow
@QUIET_JAXOPT
def test_brax_ppo_trains_on_the_adapter() -> None:
    pytest.importorskip("brax")
    from brax.training.agents.ppo import train as ppo

    env = M.brax_env("twinloop/dmc-walker-walk-v0", max_steps=20)
    progress: list[dict] = []
    with M.brax_jax_compat():  # brax 0.14.2 on JAX >= 0.10
        make_policy, params, metrics = ppo.train(
            environment=env,
            num_timesteps=400,
            episode_length=env.episode_length,
            num_envs=4,
            batch_size=4,
            num_minibatches=2,
            unroll_length=5,
            num_updates_per_batch=1,
            num_evals=2,
            num_eval_envs=4,
            seed=0,
            progress_fn=lambda step, m: progress.append(dict(m)),
        )
    assert progress, "PPO never evaluated"
    reward = float(metrics["eval/episode_reward"])
    assert np.isfinite(reward) and 0.0 <= reward <= env.episode_length  # rewards lie in [0, 1]
    policy = make_policy(params, deterministic=True)
    obs = jnp.zeros((3, env.observation_size))
    action, _ = policy(obs, jax.random.PRNGKey(0))
    assert action.shape == (3, env.action_size)
    assert np.isfinite(np.asarray(action)).all()
    assert (np.abs(np.asarray(action)) <= 1.0).all()  # tanh-squashed into the control range


def test_brax_jax_compat_provides_device_put_replicated_inside_the_block_only() -> None:
    had = hasattr(jax, "device_put_replicated")
    devices = jax.local_devices()
    tree = {"a": jnp.arange(3.0), "b": jnp.ones((2, 2))}
    with M.brax_jax_compat():
        out = jax.device_put_replicated(tree, devices)
    assert out["a"].shape == (len(devices), 3) and out["b"].shape == (len(devices), 2, 2)
    np.testing.assert_array_equal(np.asarray(out["a"])[0], [0.0, 1.0, 2.0])
    assert hasattr(jax, "device_put_replicated") == had  # restored as it was
