"""Our control-suite tasks against dm_control's own, on the same physics states.

Facts (rewards, observation keys and order, control timestep, step semantics) were carried
over from dm_control; these tests prove that the carried-over code computes the same numbers:
published DMC returns then mean the same thing here.
"""

from __future__ import annotations

from collections.abc import Iterator

import mujoco
import numpy as np
import pytest

from twinloop.sim.locomotion import task as T
from twinloop.sim.locomotion.config import TASK_CONFIGS
from twinloop.sim.locomotion.kernel import Physics

suite = pytest.importorskip("dm_control.suite")

TASKS = list(TASK_CONFIGS)
#: States per task drawn by stepping dm_control with random actions (11 tasks: 5500 states).
N_STATES = 500
RTOL = 1e-6
#: Observations are float32: values below float32's normal range may round to zero.
ATOL = 1e-30


@pytest.fixture(autouse=True)
def _quiet_mujoco_warnings() -> Iterator[list[str]]:
    """Collect MuJoCo's warnings (dm_control loads cheetah with a deprecated attribute).

    Without a handler MuJoCo prints them and appends them to ``MUJOCO_LOG.TXT`` in the
    working directory.
    """
    seen: list[str] = []
    previous = mujoco.get_mju_user_warning()
    mujoco.set_mju_user_warning(seen.append)
    yield seen
    mujoco.set_mju_user_warning(previous)


def _dm_env(domain: str, task: str, seed: int):
    return suite.load(domain, task, task_kwargs={"random": seed})


def _flat(observation: dict) -> np.ndarray:
    return np.concatenate([np.atleast_1d(np.asarray(v, dtype=np.float64)).ravel()
                           for v in observation.values()])  # fmt: skip


def _ours(cfg_cls: type) -> tuple[Physics, np.ndarray, np.ndarray, np.ndarray, int]:
    cfg = cfg_cls()
    physics = Physics(cfg.DOMAIN, cfg.TASK)
    return (
        physics,
        T.task_params(cfg),
        T.measurement_offsets(cfg),
        np.zeros(physics.facts.layout.size),
        T.observation_layout(cfg).size,
    )


def _score(physics: Physics, tp: np.ndarray, mo: np.ndarray, meas: np.ndarray, size: int):
    physics.measure(meas)
    obs = np.empty((1, size), dtype=np.float32)
    reward = np.empty(1)
    T.observe_batch(meas[None, :], mo, tp, obs, reward)
    return obs[0].astype(np.float64), float(reward[0])


@pytest.mark.parametrize(("domain", "task"), TASKS, ids=[f"{d}-{t}" for d, t in TASKS])
def test_reward_and_observation_equal_dm_control_on_the_same_states(domain: str, task: str) -> None:
    """qpos, qvel, act and ctrl set into both; dm_control's task and ours score them."""
    env = _dm_env(domain, task, seed=1)
    spec = env.action_spec()
    rng = np.random.default_rng(0)
    states = []
    env.reset()
    for t in range(N_STATES):
        # random actions, and every 50 steps a fresh episode, so states span the task's range
        if t % 50 == 0 and t:
            env.reset()
        env.step(rng.uniform(spec.minimum, spec.maximum))
        d = env.physics.data
        states.append((d.qpos.copy(), d.qvel.copy(), d.act.copy(), d.ctrl.copy()))
    physics, tp, mo, meas, size = _ours(TASK_CONFIGS[(domain, task)])
    dm_physics = env.physics
    rewards = []
    for qpos, qvel, act, ctrl in states:
        dm_physics.data.qpos[:] = qpos
        dm_physics.data.qvel[:] = qvel
        dm_physics.data.act[:] = act
        dm_physics.data.ctrl[:] = ctrl
        dm_physics.forward()
        want_obs = _flat(env.task.get_observation(dm_physics))
        want_reward = env.task.get_reward(dm_physics)
        physics.set_state(qpos, qvel, act, ctrl)
        obs, reward = _score(physics, tp, mo, meas, size)
        np.testing.assert_allclose(obs, want_obs, rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(reward, want_reward, rtol=RTOL, atol=ATOL)
        rewards.append(reward)
    if (domain, task) != ("hopper", "hop"):  # random actions rarely hop; zero is right there
        assert np.ptp(rewards) > 0.0, "the states must exercise the reward, not one value"


@pytest.mark.parametrize(("domain", "task"), TASKS, ids=[f"{d}-{t}" for d, t in TASKS])
def test_control_steps_equal_dm_control_from_the_same_state(domain: str, task: str) -> None:
    """From dm_control's first state, our control steps give its observations and rewards.

    This covers what the state test cannot: n_sub_steps, the order of mj_step2 / mj_step /
    mj_step1 (touch sensors come from the last substep's start) and the control timestep.
    """
    env = _dm_env(domain, task, seed=2)
    spec = env.action_spec()
    env.reset()
    physics, tp, mo, meas, size = _ours(TASK_CONFIGS[(domain, task)])
    sig = mujoco.mjtState.mjSTATE_INTEGRATION
    state = np.empty(mujoco.mj_stateSize(physics.model, sig))
    mujoco.mj_getState(env.physics.model.ptr, env.physics.data.ptr, state, sig)
    mujoco.mj_setState(physics.model, physics.data, state, sig)
    mujoco.mj_forward(physics.model, physics.data)
    rng = np.random.default_rng(3)
    for _ in range(200):
        action = rng.uniform(spec.minimum, spec.maximum)
        ts = env.step(action)
        physics.step(action)
        obs, reward = _score(physics, tp, mo, meas, size)
        np.testing.assert_allclose(obs, _flat(ts.observation), rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(reward, ts.reward, rtol=RTOL, atol=ATOL)
    np.testing.assert_array_equal(physics.data.qpos, env.physics.data.qpos)
    assert physics.data.time == pytest.approx(env.physics.data.time)


@pytest.mark.parametrize(("domain", "task"), TASKS, ids=[f"{d}-{t}" for d, t in TASKS])
def test_episode_length_and_control_timestep_equal_dm_control(domain: str, task: str) -> None:
    env = _dm_env(domain, task, seed=0)
    cfg = TASK_CONFIGS[(domain, task)]()
    physics = Physics(domain, task)
    assert physics.facts.n_sub_steps == env._n_sub_steps
    assert cfg.max_steps == env._step_limit
    assert T.observation_layout(cfg).size == _flat(env.reset().observation).size
