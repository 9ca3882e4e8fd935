"""Sampling, filtering and damage handling of the reader."""

from __future__ import annotations

import os

import numpy as np
import pytest

import twinloop
from tests.datasets.conftest import STEM, ToyEnv, run_episodes
from twinloop.datasets import (
    DatasetCorruptError,
    RecordEpisodes,
    RecordVectorEpisodes,
    open_dataset,
)


@pytest.fixture(scope="module")
def stem_ds(tmp_path_factory):
    path = tmp_path_factory.mktemp("reader") / "ns" / "stem-v0"
    vec = twinloop.make_vec(STEM, 8)
    rec = RecordVectorEpisodes(vec, path)
    rec.reset(seed=0)
    rec.action_space.seed(0)
    for _ in range(400):
        rec.step(rec.action_space.sample())
    rec.close()
    return path


def test_sampled_transitions_match_their_episodes(stem_ds):
    ds = open_dataset(stem_ds)
    episodes = {ep.id: ep for ep in ds.iterate_episodes()}
    batch = ds.sample(512, np.random.default_rng(0), with_infos=True)
    assert len(batch) == 512
    for k in range(len(batch)):
        ep = episodes[int(batch.episode_ids[k])]
        t = int(batch.steps[k])
        np.testing.assert_array_equal(batch.observations[k], ep.observations[t])
        np.testing.assert_array_equal(batch.next_observations[k], ep.observations[t + 1])
        np.testing.assert_array_equal(batch.actions[k], ep.actions[t])
        assert batch.rewards[k] == ep.rewards[t]
        assert batch.terminations[k] == ep.terminations[t]
        assert batch.truncations[k] == ep.truncations[t]
        assert batch.infos["time_s"][k] == ep.infos["time_s"][t + 1]
    # episode ends are sampled too, with the final observation as next observation
    assert (batch.terminations | batch.truncations).any()


def test_sampling_is_uniform_over_steps(stem_ds):
    ds = open_dataset(stem_ds)
    steps = np.array([m["total_steps"] for m in ds.episode_metadata])
    n = 40_000
    batch = ds.sample(n, np.random.default_rng(1))
    counts = np.bincount(batch.episode_ids, minlength=len(ds))
    expected = n * steps / steps.sum()
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    dof = len(ds) - 1
    assert chi2 < dof + 6 * np.sqrt(2 * dof), (chi2, dof)
    # within an episode, every step index occurs
    ep0 = int(np.argmax(steps))
    assert set(batch.steps[batch.episode_ids == ep0].tolist()) == set(range(steps[ep0]))


def test_filter_by_metadata(stem_ds):
    ds = open_dataset(stem_ds)
    good = ds.filter(lambda m: m["episode_return"] > -3, terminated=True)
    assert 0 < len(good) < len(ds)
    for ep in good:
        assert ep.rewards.sum() == pytest.approx(ep.metadata["episode_return"])
        assert ep.rewards.sum() > -3 and ep.terminations[-1]
    row3 = ds.filter(env_index=3)
    assert {m["env_index"] for m in row3.episode_metadata} == {3}
    batch = row3.sample(200, np.random.default_rng(0))
    assert set(batch.episode_ids.tolist()) <= {m["id"] for m in row3.episode_metadata}
    with pytest.raises(KeyError, match="no episode metadata 'colour'"):
        ds.filter(colour="red")


def test_sample_episodes_and_indexing(stem_ds):
    ds = open_dataset(stem_ds)
    eps = ds.sample_episodes(3, np.random.default_rng(0))
    assert len({e.id for e in eps}) == 3
    assert ds[-1].id == ds.episode_metadata[-1]["id"]
    with pytest.raises(IndexError, match="out of range"):
        ds[len(ds)]
    with pytest.raises(ValueError, match="cannot sample 1000 episodes"):
        ds.sample_episodes(1000)


def test_image_fields_sample(tmp_path):
    env = RecordEpisodes(ToyEnv(), tmp_path / "toy-v0")
    run_episodes(env, 6, seed=0)
    env.close()
    ds = open_dataset(tmp_path / "toy-v0")
    episodes = {ep.id: ep for ep in ds}
    batch = ds.sample(50, np.random.default_rng(2))
    for k in range(50):
        ep, t = episodes[int(batch.episode_ids[k])], int(batch.steps[k])
        np.testing.assert_array_equal(batch.observations["image"][k], ep.observations["image"][t])
        np.testing.assert_array_equal(
            batch.next_observations["image"][k], ep.observations["image"][t + 1]
        )
        assert batch.observations["note"][k] == ep.observations["note"][t]


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst / "data" / "main_data.hdf5"


def test_truncated_file_keeps_the_episodes_before_the_cut(stem_ds, tmp_path):
    full = open_dataset(stem_ds)
    n = len(full)
    path = _copy(stem_ds, tmp_path / "cut-v0")
    cut_ep = n // 2
    # cut inside the data of episode cut_ep
    os.truncate(path, int(full._store.addr[cut_ep, 0]) + 10)
    ds = open_dataset(tmp_path / "cut-v0")
    assert 0 < len(ds) < n
    assert ds.problems and str(path) in ds.problems[0]
    assert f"episode_{cut_ep}" in ds.problems[0] or "root link block" in ds.problems[0]
    for a, b in zip(ds.iterate_episodes(), full.iterate_episodes(), strict=False):
        np.testing.assert_array_equal(a.observations, b.observations)
    with pytest.raises(DatasetCorruptError, match=str(path)):
        open_dataset(tmp_path / "cut-v0", strict=True)


def test_corrupted_header_is_named_and_skipped(stem_ds, tmp_path):
    full = open_dataset(stem_ds)
    path = _copy(stem_ds, tmp_path / "bad-v0")
    bad = 3
    header = full._store.chain.entries[bad].header
    with open(path, "r+b") as fh:
        fh.seek(header + 20)
        fh.write(b"\xff\xfe\xfd\xfc")
    ds = open_dataset(tmp_path / "bad-v0")
    assert len(ds) == len(full) - 1
    assert ds.problems == [p for p in ds.problems if f"episode_{bad} " in p]
    assert "checksum" in ds.problems[0]
    assert bad not in [m["id"] for m in ds.episode_metadata]
    later = ds.filter(id=bad + 1)[0]
    np.testing.assert_array_equal(later.rewards, full[bad + 1].rewards)


def test_garbage_file_is_reported(tmp_path, stem_ds):
    path = _copy(stem_ds, tmp_path / "g-v0")
    path.write_bytes(b"not an hdf5 file at all" * 10)
    ds = open_dataset(tmp_path / "g-v0")
    assert len(ds) == 0
    assert "superblock unreadable" in ds.problems[0] and str(path) in ds.problems[0]


def test_step_lookup_matches_a_binary_search_for_any_mix_of_episode_lengths():
    """The O(1) guide-table lookup returns the same (episode, step) as a binary search.

    Lengths mix 1-step episodes with long ones, so that buckets hold many episode ends.
    """
    from twinloop.datasets.reader import _locate, _StepIndex

    rng = np.random.default_rng(3)
    for steps in (
        np.array([1, 1, 1, 500, 1, 2, 3, 1000, 1, 1]),
        rng.integers(1, 200, size=300),
        np.array([7]),
    ):
        index = _StepIndex.build((0, steps.size), steps)
        g = np.arange(index.total)
        local, t = _locate(g, index.bounds, index.guide, index.shift)
        bounds = np.cumsum(steps)
        want = np.searchsorted(bounds, g, side="right")
        np.testing.assert_array_equal(local, want)
        np.testing.assert_array_equal(t, g - (bounds[want] - steps[want]))
        assert (t >= 0).all() and (t < steps[local]).all()


def test_sampling_sees_episodes_committed_after_a_refresh(tmp_path):
    """The cached step index is rebuilt when a followed dataset grows."""
    env = twinloop.make("twinloop/StemSteer-v0")
    rec = RecordEpisodes(env, tmp_path / "twinloop" / "grow-v0", mode="create")
    rec.reset(seed=0)
    done = 0
    ds = None
    while done < 4:
        _, _, term, trunc, _ = rec.step(rec.action_space.sample())
        if term or trunc:
            done += 1
            rec.reset()
            if done == 1:
                ds = open_dataset(tmp_path / "twinloop" / "grow-v0")
                first = ds.sample(64, np.random.default_rng(0))
                assert set(first.episode_ids.tolist()) == {0}
    assert ds is not None
    ds.refresh()
    batch = ds.sample(4096, np.random.default_rng(1))
    assert set(batch.episode_ids.tolist()) == {0, 1, 2, 3}
    rec.close()
