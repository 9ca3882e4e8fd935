"""The vector recorder writes the same episodes as N single-env recorders given the same seeds."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode, SyncVectorEnv

import twinloop
from tests.datasets.conftest import STEM, ToyEnv
from twinloop.datasets import RecordEpisodes, RecordVectorEpisodes, open_dataset

WALL = "wall_time_s"


def _by_env(ds):
    out: dict[int, list] = {}
    for ep in ds.iterate_episodes():
        out.setdefault(ep.metadata["env_index"], []).append(ep)
    return out


def _same_episode(a, b):
    assert len(a) == len(b)
    for name in ("rewards", "terminations", "truncations"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    _same_tree(a.observations, b.observations)
    _same_tree(a.actions, b.actions)
    assert set(a.infos) == set(b.infos)
    for k in a.infos:
        if k != WALL:
            np.testing.assert_array_equal(a.infos[k], b.infos[k], err_msg=k)
    assert a.metadata["seed"] == b.metadata["seed"]


def _same_tree(a, b):
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _same_tree(a[k], b[k])
    elif isinstance(a, list):
        assert a == b
    else:
        np.testing.assert_array_equal(a, b)


def _record_vector(vec, path, actions, seed, capture="auto"):
    rec = RecordVectorEpisodes(vec, path, capture=capture)
    rec.reset(seed=seed)
    for act in actions:
        rec.step(act)
    rec.close()
    return open_dataset(path)


def _record_singles(make, n, path_root, actions, seed):
    """Row i of the vector env == a single env seeded seed+i, then continuing its stream."""
    out = {}
    for i in range(n):
        rec = RecordEpisodes(make(), path_root / f"single{i}-v0")
        rec.reset(seed=seed + i)
        for act in actions:
            _, _, term, trunc, _ = rec.step(act[i])
            if term or trunc:
                rec.reset()
        rec.close()
        out[i] = list(open_dataset(path_root / f"single{i}-v0").iterate_episodes())
    return out


@pytest.mark.parametrize(("n_envs", "capture"), [(1, "inline"), (5, "inline"), (5, "companion")])
def test_stem_vector_recorder_equals_single_recorders(tmp_path, n_envs, capture):
    vec = twinloop.make_vec(STEM, n_envs)
    vec.action_space.seed(2)
    actions = [vec.action_space.sample() for _ in range(250)]
    ds = _record_vector(vec, tmp_path / "vec-v0", actions, seed=40, capture=capture)
    singles = _record_singles(lambda: twinloop.make(STEM), n_envs, tmp_path, actions, seed=40)
    by_env = _by_env(ds)
    assert sum(len(v) for v in singles.values()) == len(ds) > n_envs  # auto-resets covered
    for i in range(n_envs):
        assert len(by_env[i]) == len(singles[i])
        for a, b in zip(by_env[i], singles[i], strict=True):
            _same_episode(a, b)
    # the first episode of row i has seed 40 + i; later ones continue the stream (-1)
    firsts = {i: by_env[i][0].metadata["seed"] for i in by_env}
    assert firsts == {i: 40 + i for i in range(n_envs)}
    assert all(ep.metadata["seed"] == -1 for i in by_env for ep in by_env[i][1:])


@pytest.mark.parametrize("capture", ["auto", "companion"])
def test_sync_vector_env_with_dict_image_text(tmp_path, capture):
    """Any SAME_STEP vector env; through the companion its steps travel as laid-out rows."""
    n = 3
    vec = SyncVectorEnv([ToyEnv for _ in range(n)], autoreset_mode=AutoresetMode.SAME_STEP)
    vec.action_space.seed(0)
    actions = [vec.action_space.sample() for _ in range(40)]
    ds = _record_vector(vec, tmp_path / "toyvec-v0", actions, seed=7, capture=capture)
    singles = _record_singles(ToyEnv, n, tmp_path, actions, seed=7)
    by_env = _by_env(ds)
    for i in range(n):
        assert len(by_env[i]) == len(singles[i]) > 1
        for a, b in zip(by_env[i], singles[i], strict=True):
            _same_episode(a, b)


@pytest.mark.parametrize("capture", ["inline", "companion"])
def test_masked_resets_record_their_seeds(tmp_path, capture):
    """The rollout pattern: each ended row is re-seeded by a masked reset."""
    vec = twinloop.make_vec(STEM, 4)
    rec = RecordVectorEpisodes(vec, tmp_path / "m-v0", capture=capture)
    rec.reset(seed=[100, 101, 102, 103])
    running = [100, 101, 102, 103]  # the seed of each row's current episode
    rec.action_space.seed(1)
    next_seed = 104
    for _ in range(300):
        _, _, term, trunc, _ = rec.step(rec.action_space.sample())
        ended = term | trunc
        if ended.any():
            seeds = [None] * 4
            for i in np.flatnonzero(ended):
                seeds[i] = running[i] = next_seed
                next_seed += 1
            rec.reset(seed=seeds, options={"reset_mask": ended})
    rec.close()
    ds = open_dataset(tmp_path / "m-v0")
    seeds = sorted(m["seed"] for m in ds.episode_metadata)
    # every finished episode is recorded under its seed; the 4 still running at close are not
    assert len(seeds) > 4
    assert seeds == sorted(set(range(100, next_seed)) - set(running))
    # the episode recorded under seed s is exactly what a single env seeded s produces
    meta = ds.episode_metadata
    k = next(i for i, m in enumerate(meta) if m["seed"] >= 104)
    ep = ds[k]
    env = twinloop.make(STEM)
    obs, _ = env.reset(seed=meta[k]["seed"])
    np.testing.assert_array_equal(ep.observations[0], obs)
    for t, a in enumerate(ep.actions):
        obs, r, *_ = env.step(a)
        np.testing.assert_array_equal(ep.observations[t + 1], obs)
        assert ep.rewards[t] == r


@pytest.mark.parametrize("capture", ["inline", "companion"])
def test_set_recording_rows(tmp_path, capture):
    vec = twinloop.make_vec(STEM, 4)
    rec = RecordVectorEpisodes(vec, tmp_path / "r-v0", capture=capture)
    rec.set_recording([True, False, True, False])
    rec.reset(seed=0)
    rec.action_space.seed(0)
    for _ in range(200):
        rec.step(rec.action_space.sample())
    rec.sync()
    before = rec.n_episodes
    rec.set_recording([False, True, True, True])  # row 0's running episode is dropped
    for _ in range(200):
        rec.step(rec.action_space.sample())
    rec.close()
    meta = open_dataset(tmp_path / "r-v0").episode_metadata
    assert {m["env_index"] for m in meta[:before]} == {0, 2}
    assert {m["env_index"] for m in meta[before:]} == {1, 2, 3}


def test_next_step_autoreset_is_refused(tmp_path):
    vec = SyncVectorEnv([ToyEnv, ToyEnv], autoreset_mode=AutoresetMode.NEXT_STEP)
    with pytest.raises(ValueError, match="autoreset_mode SAME_STEP"):
        RecordVectorEpisodes(vec, tmp_path / "x-v0")


def test_gymnasium_vector_env_of_twinloop_ids(tmp_path):
    vec = gym.make_vec(STEM, num_envs=2)
    rec = RecordVectorEpisodes(vec, tmp_path / "g-v0")
    rec.reset(seed=0)
    rec.action_space.seed(0)
    for _ in range(120):
        rec.step(rec.action_space.sample())
    rec.close()
    assert len(open_dataset(tmp_path / "g-v0")) >= 2


@pytest.mark.parametrize("capture", ["inline", "companion"])
def test_kernel_env_fast_path_records_what_the_generic_path_records(tmp_path, monkeypatch, capture):
    """The one-block copy of a kernel vector env's step equals the field-by-field copy.

    The same actions are recorded twice, once with the fast path (in process or through the
    companion) and once inline with it switched off; every field of every episode (all
    infos, final observations) must agree.
    """
    vec = twinloop.make_vec(STEM, 7)
    vec.action_space.seed(5)
    actions = [vec.action_space.sample() for _ in range(300)]
    rec = RecordVectorEpisodes(twinloop.make_vec(STEM, 7), tmp_path / "fast-v0", capture=capture)
    rec.reset(seed=9)
    for act in actions:
        rec.step(act)
    assert rec._scatter is not None  # the fast path was taken
    rec.close()
    monkeypatch.setattr(RecordVectorEpisodes, "_scatter_plan", lambda self: None)
    slow = _record_vector(
        twinloop.make_vec(STEM, 7), tmp_path / "slow-v0", actions, seed=9, capture="inline"
    )
    fast = open_dataset(tmp_path / "fast-v0")
    assert len(fast) == len(slow) > 7
    for a, b in zip(fast.iterate_episodes(), slow.iterate_episodes(), strict=True):
        assert a.metadata["env_index"] == b.metadata["env_index"]
        _same_episode(a, b)


def test_fast_path_steps_aside_when_a_wrapper_changes_the_outputs(tmp_path):
    """A wrapper that returns other arrays turns the fast path off for its steps.

    The recorder must record what it was given (observations doubled here), not the kernel's
    output block.
    """

    class Double(gym.vector.VectorWrapper):
        def reset(self, **kwargs):
            obs, info = self.env.reset(**kwargs)
            return 2.0 * obs, info

        def step(self, actions):
            obs, r, te, tr, info = self.env.step(actions)
            if "final_obs" in info:
                info = dict(info)
                info["final_obs"] = np.array(
                    [None if o is None else 2.0 * o for o in info["final_obs"]], dtype=object
                )
            return 2.0 * obs, r, te, tr, info

    base = twinloop.make_vec(STEM, 3)
    base.action_space.seed(0)
    actions = [base.action_space.sample() for _ in range(120)]
    ds = _record_vector(Double(base), tmp_path / "wrapped-v0", actions, 1)
    ref = _record_vector(twinloop.make_vec(STEM, 3), tmp_path / "plain-v0", actions, 1)
    assert len(ds) == len(ref) > 3
    for a, b in zip(ds.iterate_episodes(), ref.iterate_episodes(), strict=True):
        np.testing.assert_array_equal(a.observations, 2.0 * b.observations)
        np.testing.assert_array_equal(a.rewards, b.rewards)
