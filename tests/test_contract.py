"""Contracts every registered env id must meet (Gymnasium API, determinism, vector = singles).

Modelled on Gymnasium's own env tests (``utils/env_checker.py`` and the two-instance
determinism check): they run over every id in ``twinloop.registry``.
"""

from __future__ import annotations

import gymnasium as gym
import numba
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from gymnasium.vector import AutoresetMode, SyncVectorEnv

import twinloop
from tests.conftest import assert_same

N_STEPS = 300
#: Config overrides of systems whose episodes outlast N_STEPS and never end early (the control
#: suite's 1000 steps), so that the vector-vs-singles comparison covers auto-resets.
SHORT_EPISODES = {"locomotion": {"max_steps": 100}}


def _actions(space: gym.Space, n_steps: int, seed: int) -> list:
    space.seed(seed)
    return [space.sample() for _ in range(n_steps)]


def test_check_env(env_id: str) -> None:
    env = twinloop.make(env_id)
    check_env(env, skip_render_check=True)
    env.close()


def test_gymnasium_make_and_make_vec(env_id: str) -> None:
    env = gym.make(env_id)
    obs, _ = env.reset(seed=1)
    assert env.observation_space.contains(obs)
    env.close()
    venv = gym.make_vec(env_id, num_envs=3)
    assert venv.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP
    obs, _ = venv.reset(seed=1)
    assert obs.shape == (3, *venv.single_observation_space.shape)
    venv.close()


def test_two_instances_are_deterministic(env_id: str) -> None:
    a, b = twinloop.make(env_id), twinloop.make(env_id)
    actions = _actions(a.action_space, N_STEPS, seed=3)
    oa, ia = a.reset(seed=42)
    ob, ib = b.reset(seed=42)
    assert_same((oa, ia), (ob, ib))
    for act in actions:
        ra = a.step(act)
        rb = b.step(act)
        assert_same(list(ra[:4]), list(rb[:4]))
        assert_same(ra[4], rb[4])
        if ra[2] or ra[3]:
            assert_same(a.reset(), b.reset())  # continuing streams agree as well


def test_different_seeds_differ(env_id: str) -> None:
    env = twinloop.make(env_id)
    first = [env.reset(seed=s)[0] for s in range(5)]
    assert len({o.tobytes() for o in first}) == 5


def test_vector_equals_n_single_envs(env_id: str) -> None:
    """One kernel vector env of N == Gymnasium's SyncVectorEnv over N single envs, bit for bit.

    This compares observations, rewards, terminations, truncations and every info (including
    ``final_obs`` and ``final_info`` of auto-reset episodes) step for step.
    """
    n = 5
    short = SHORT_EPISODES.get(twinloop.registry[env_id].system, {})
    vec = twinloop.make_vec(env_id, n, **short)
    ref = SyncVectorEnv(
        [lambda: twinloop.make(env_id, **short) for _ in range(n)],
        autoreset_mode=AutoresetMode.SAME_STEP,
    )
    vec.action_space.seed(7)
    assert_same(vec.reset(seed=11), ref.reset(seed=11))
    ended_total = 0
    for _ in range(N_STEPS):
        act = vec.action_space.sample()
        got = vec.step(act)
        want = ref.step(act)
        for k in range(4):
            assert_same(got[k], want[k], path=f"output {k}")
        assert_same(got[4], want[4], path="info")
        ended_total += int((got[2] | got[3]).sum())
    assert ended_total > 0, "the comparison must cover auto-resets"


def test_vector_autoreset_semantics(env_id: str) -> None:
    """Ended envs report final_obs/final_info; the returned obs is a fresh episode's."""
    n = 8
    vec = twinloop.make_vec(env_id, n)
    vec.action_space.seed(0)
    obs, _ = vec.reset(seed=0)
    seen_end = False
    for t in range(3000):  # until auto-resets have been seen (how soon depends on the system)
        if seen_end and t >= N_STEPS:
            break
        obs, _, term, trunc, info = vec.step(vec.action_space.sample())
        ended = term | trunc
        assert not (term & trunc).any(), "terminated and truncated are exclusive"
        if ended.any():
            seen_end = True
            np.testing.assert_array_equal(info["_final_obs"], ended)
            for i in np.flatnonzero(ended):
                assert vec.single_observation_space.contains(info["final_obs"][i])
            assert all(info["final_obs"][i] is None for i in np.flatnonzero(~ended))
            np.testing.assert_array_equal(info["_final_info"], ended)
        else:
            assert "final_obs" not in info
        assert vec.observation_space.contains(obs)
    assert seen_end


def test_results_do_not_depend_on_thread_count(env_id: str) -> None:
    def run() -> list:
        vec = twinloop.make_vec(env_id, 16)
        vec.action_space.seed(5)
        out = [vec.reset(seed=3)[0]]
        for _ in range(60):
            out.append(vec.step(vec.action_space.sample())[:4])
        return out

    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = run()
        numba.set_num_threads(max(threads, 2) if numba.config.NUMBA_NUM_THREADS > 1 else 1)
        many = run()
    finally:
        numba.set_num_threads(threads)
    assert_same(one, many)


def test_bad_actions_raise_precise_errors(env_id: str) -> None:
    env = twinloop.make(env_id)
    env.reset(seed=0)
    space = env.action_space
    if isinstance(space, gym.spaces.Box):
        bad_shape = np.zeros(space.shape[0] + 1, dtype=space.dtype)
        with pytest.raises(ValueError, match=rf"{env_id}: action has shape"):
            env.step(bad_shape)
        nan = space.sample()
        nan[0] = np.nan
        with pytest.raises(ValueError, match=r"action\[0\].*is not finite"):
            env.step(nan)
        big = space.high.astype(np.float64) + 1.0
        with pytest.raises(ValueError, match=r"above the upper bound"):
            env.step(big)
    # the env is unharmed: a valid step still works
    env.step(space.sample())
    vec = twinloop.make_vec(env_id, 4)
    vec.reset(seed=0)
    acts = vec.action_space.sample()
    if isinstance(space, gym.spaces.Box):
        acts = acts.astype(np.float64)
        acts[2, 0] = space.high[0] + 5.0
        with pytest.raises(ValueError, match=r"env index 2 of 4"):
            vec.step(acts)
        with pytest.raises(ValueError, match=r"expected \(4,"):
            vec.step(acts[:3])
    vec.step(vec.action_space.sample())


def test_step_before_reset_raises(env_id: str) -> None:
    with pytest.raises(RuntimeError, match="reset"):
        twinloop.make(env_id).step(None)
    with pytest.raises(RuntimeError, match="reset"):
        twinloop.make_vec(env_id, 2).step(None)


def test_all_envs_ending_together_matches_sync_vector_env(env_id: str) -> None:
    """When every env ends in the same step, step-only info keys are absent (as in Gymnasium).

    Episodes are cut at 3 steps, so every env is truncated together (or ends earlier).
    """
    n = 3
    vec = twinloop.make_vec(env_id, n, max_steps=3)
    ref = SyncVectorEnv(
        [lambda: twinloop.make(env_id, max_steps=3) for _ in range(n)],
        autoreset_mode=AutoresetMode.SAME_STEP,
    )
    assert_same(vec.reset(seed=2), ref.reset(seed=2))
    vec.action_space.seed(1)
    together = 0
    for _ in range(30):
        act = vec.action_space.sample()
        got, want = vec.step(act), ref.step(act)
        assert_same(list(got[:4]), list(want[:4]))
        assert_same(got[4], want[4], path="info")
        together += bool((got[2] | got[3]).all())
    assert together > 0
