"""Minari (installed from the test extra) loads what twinloop writes."""

from __future__ import annotations

import numpy as np
import pytest

import twinloop
from tests.datasets.conftest import STEM, ToyEnv, run_episodes, stem_env
from twinloop.datasets import RecordEpisodes, RecordVectorEpisodes, open_dataset

minari = pytest.importorskip("minari")


@pytest.fixture
def minari_root(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    return tmp_path


def test_load_dataset_by_id(minari_root):
    env = RecordEpisodes(stem_env(), minari_root / "twinloop" / "stem-random-v0")
    produced = run_episodes(env, 3, seed=0)
    env.close()
    assert "twinloop/stem-random-v0" in minari.list_local_datasets()
    ds = minari.load_dataset("twinloop/stem-random-v0")
    assert ds.total_episodes == 3
    assert ds.total_steps == sum(len(p["rewards"]) for p in produced)
    assert ds.observation_space == twinloop.make(STEM).observation_space
    episodes = list(ds.iterate_episodes())
    for ep, want in zip(episodes, produced, strict=True):
        np.testing.assert_array_equal(ep.observations, np.stack(want["obs"]))
        np.testing.assert_array_equal(ep.actions, np.stack(want["actions"]))
        np.testing.assert_array_equal(ep.rewards, want["rewards"])
        np.testing.assert_array_equal(ep.terminations, want["term"])
        np.testing.assert_array_equal(ep.truncations, want["trunc"])
        assert ep.terminations.dtype == np.bool_
        # "reward/progress" is the nested group infos/reward/progress for Minari
        assert ep.infos["reward"]["progress"].shape == (len(ep) + 1,)
        np.testing.assert_array_equal(
            ep.infos["applied_command"][1:], [i["applied_command"] for i in want["infos"][1:]]
        )
    sampled = ds.sample_episodes(2)
    assert {e.id for e in sampled} <= {0, 1, 2} and len(sampled) == 2
    meta = list(ds.storage.get_episode_metadata([0, 1, 2]))
    assert [m["seed"] for m in meta] == [0, 1, 2]
    assert [int(m["total_steps"]) for m in meta] == [len(p["rewards"]) for p in produced]


def test_minari_dataset_from_path_vector_capture(minari_root):
    vec = twinloop.make_vec(STEM, 6)
    rec = RecordVectorEpisodes(vec, minari_root / "twinloop" / "vec-v1")
    rec.reset(seed=5)
    rec.action_space.seed(5)
    for _ in range(200):
        rec.step(rec.action_space.sample())
    rec.close()
    ours = open_dataset(minari_root / "twinloop" / "vec-v1")
    ds = minari.MinariDataset(minari_root / "twinloop" / "vec-v1" / "data")
    assert ds.total_episodes == len(ours) > 6
    assert ds.total_steps == ours.total_steps
    for a, b in zip(ds.iterate_episodes(), ours.iterate_episodes(), strict=True):
        np.testing.assert_array_equal(a.observations, b.observations)
        np.testing.assert_array_equal(a.actions, b.actions)
        np.testing.assert_array_equal(a.rewards, b.rewards)
    filtered = ds.filter_episodes(lambda ep: bool(ep.terminations[-1]))
    assert filtered.total_episodes == len(ours.filter(terminated=True))


def test_dict_image_text_through_minari(minari_root):
    env = RecordEpisodes(ToyEnv(image_shape=(40, 36)), minari_root / "toys" / "toy-v2")
    produced = run_episodes(env, 3, seed=11)
    env.close()
    ds = minari.load_dataset("toys/toy-v2")
    assert isinstance(ds.observation_space["note"], type(env.observation_space["note"]))
    for ep, want in zip(ds.iterate_episodes(), produced, strict=True):
        np.testing.assert_array_equal(
            ep.observations["image"], np.stack([o["image"] for o in want["obs"]])
        )
        assert ep.observations["note"] == [o["note"] for o in want["obs"]]
        np.testing.assert_array_equal(ep.actions, want["actions"])
