"""What the wrappers write is what the env produced: single envs, dict/image/text observations."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from tests.datasets.conftest import STEM, ToyEnv, run_episodes, stem_env
from twinloop.datasets import RecordEpisodes, open_dataset


def test_stem_single_env_round_trip(tmp_path):
    env = RecordEpisodes(stem_env(), tmp_path / "ns" / "stem-v0", tags={"operator": "test"})
    produced = run_episodes(env, 4, seed=10)
    env.close()
    ds = open_dataset(tmp_path / "ns" / "stem-v0")
    assert len(ds) == 4 and ds.problems == []
    assert ds.total_steps == sum(len(p["rewards"]) for p in produced)
    for k, (got, want) in enumerate(zip(ds.iterate_episodes(), produced, strict=True)):
        np.testing.assert_array_equal(got.observations, np.stack(want["obs"]))
        np.testing.assert_array_equal(got.actions, np.stack(want["actions"]))
        np.testing.assert_array_equal(got.rewards, want["rewards"])
        np.testing.assert_array_equal(got.terminations, want["term"])
        np.testing.assert_array_equal(got.truncations, want["trunc"])
        # the applied command and the simulated clock, row 0 being the reset
        cmds = np.stack([i["applied_command"] for i in want["infos"][1:]])
        np.testing.assert_array_equal(got.infos["applied_command"][1:], cmds)
        np.testing.assert_array_equal(got.infos["time_s"], [i["time_s"] for i in want["infos"]])
        np.testing.assert_array_equal(
            got.infos["reward/progress"][1:], [i["reward/progress"] for i in want["infos"][1:]]
        )
        wall = got.infos["wall_time_s"]
        assert wall.shape == (len(got) + 1,) and np.all(np.diff(wall) >= 0)
        assert got.metadata["seed"] == 10 + k
        assert got.metadata["episode_return"] == pytest.approx(sum(want["rewards"]))
    tl = ds.metadata["twinloop"]
    assert tl["env_id"] == STEM
    assert tl["backend"]["kind"] == "sim"
    assert tl["env_config"]["__class__"].endswith("StemConfig")
    assert tl["tags"] == {"operator": "test"}
    assert tl["writer"]["state"] == "closed"
    assert tl["twinloop_version"]


def test_dict_image_text_round_trip(tmp_path):
    env = RecordEpisodes(ToyEnv(), tmp_path / "toy-v0")
    produced = run_episodes(env, 5, seed=3)
    env.close()
    ds = open_dataset(tmp_path / "toy-v0")
    assert len(ds) == 5
    assert "infos/label" not in [f.path for f in ds.fields]  # strings are not recorded
    image = next(f for f in ds.fields if f.path == "observations/image")
    assert image.image
    for got, want in zip(ds.iterate_episodes(), produced, strict=True):
        np.testing.assert_array_equal(
            got.observations["image"], np.stack([o["image"] for o in want["obs"]])
        )
        np.testing.assert_array_equal(
            got.observations["state"], np.stack([o["state"] for o in want["obs"]])
        )
        assert got.observations["note"] == [o["note"] for o in want["obs"]]
        np.testing.assert_array_equal(got.actions, want["actions"])
        np.testing.assert_array_equal(
            got.infos["reward/a"], [i["reward"]["a"] for i in want["infos"]]
        )
        np.testing.assert_array_equal(got.infos["flag"], [i["flag"] for i in want["infos"]])
        assert got.infos["flag"].dtype == np.bool_
    # images are chunked one frame per chunk and compressed, as HDF5 tools see them
    with h5py.File(ds.path, "r") as f:
        d = f["episode_0/observations/image"]
        assert d.chunks == (1, 32, 32, 3)
        assert d.compression == "gzip"
        np.testing.assert_array_equal(d[2], produced[0]["obs"][2]["image"])
        assert f["episode_0/observations/note"][0].decode() == produced[0]["obs"][0]["note"]
        assert f["episode_0/terminations"].dtype == np.bool_


def test_text_longer_than_space_limit_is_rejected(tmp_path):
    from twinloop.datasets.schema import FieldSpec
    from twinloop.datasets.writer import _encode_text

    f = FieldSpec(path="observations/note", source="obs", dtype="|S4", text=True)
    with pytest.raises(ValueError, match=r"6 UTF-8 bytes exceeds the space's limit of 4"):
        _encode_text(np.array(["abcdef"]), f)


def test_reset_before_the_end_drops_the_partial_episode(tmp_path):
    env = RecordEpisodes(stem_env(), tmp_path / "p-v0")
    env.reset(seed=1)
    for _ in range(3):
        env.step(env.action_space.sample())
    run_episodes(env, 1, seed=5)
    env.close()
    ds = open_dataset(tmp_path / "p-v0")
    assert len(ds) == 1 and ds.episode_metadata[0]["seed"] == 5


def test_set_recording_skips_episodes(tmp_path):
    env = RecordEpisodes(stem_env(), tmp_path / "s-v0")
    run_episodes(env, 1, seed=0)
    env.set_recording(False)
    run_episodes(env, 2, seed=1)
    env.set_recording(True)
    run_episodes(env, 1, seed=7)
    env.close()
    assert [m["seed"] for m in open_dataset(tmp_path / "s-v0").episode_metadata] == [0, 7]


def _image_episode(frames: np.ndarray) -> list:
    steps = frames.shape[0] - 1
    return [
        frames,
        np.zeros((steps, 2), np.float32),
        np.zeros(steps),
        np.r_[np.zeros(steps - 1, bool), True],
        np.zeros(steps, bool),
        np.linspace(0.0, 1.0, steps + 1),
    ]


@pytest.mark.parametrize("strategy", ["auto", "deflate", "huffman"])
def test_image_compression_strategies_round_trip_through_h5py(tmp_path, strategy):
    """Every strategy writes standard deflate chunks: h5py and our reader get the frames back.

    ``auto`` chooses Huffman-only for shot-noise frames (LZ77 finds nothing to match) and
    deflate for frames with flat regions (where LZ77 compresses far better).
    """
    import gymnasium as gym

    from twinloop.datasets import DatasetWriter

    rng = np.random.default_rng(0)
    noisy = rng.poisson(20.0, size=(9, 48, 48)).clip(0, 255).astype(np.uint8)
    flat = np.zeros((9, 48, 48), np.uint8)
    flat[:, 10:30, 5:40] = 200
    obs = gym.spaces.Dict(
        {
            "noisy": gym.spaces.Box(0, 255, (48, 48), np.uint8),
            "flat": gym.spaces.Box(0, 255, (48, 48), np.uint8),
        }
    )
    w = DatasetWriter(
        tmp_path / "ns" / "img-v0",
        observation_space=obs,
        action_space=gym.spaces.Box(-1, 1, (2,), np.float32),
        compression_strategy=strategy,
    )
    w.begin([])
    w.write_fields([flat, noisy, *_image_episode(noisy)[1:]])
    w.close()
    want = {"auto": (True, False), "deflate": (False, False), "huffman": (True, True)}[strategy]
    assert (w.huffman["observations/noisy"], w.huffman["observations/flat"]) == want
    ds = open_dataset(tmp_path / "ns" / "img-v0")
    ep = ds[0]
    np.testing.assert_array_equal(ep.observations["noisy"], noisy)
    np.testing.assert_array_equal(ep.observations["flat"], flat)
    with h5py.File(ds.path, "r") as f:
        np.testing.assert_array_equal(f["episode_0/observations/noisy"][()], noisy)
        np.testing.assert_array_equal(f["episode_0/observations/flat"][()], flat)
    assert ds.metadata["twinloop"]["image_compression"]["observations/noisy"] == (
        "huffman" if want[0] else "deflate"
    )


def test_unknown_compression_strategy_is_refused(tmp_path):
    """A bad strategy names the value and the choices, and creates nothing."""
    import gymnasium as gym

    from twinloop.datasets import DatasetWriter

    with pytest.raises(ValueError, match="auto, deflate, huffman, got 'lz4'"):
        DatasetWriter(
            tmp_path / "ns" / "x-v0",
            observation_space=gym.spaces.Box(0, 1, (2,)),
            action_space=gym.spaces.Box(0, 1, (2,)),
            compression_strategy="lz4",
        )
    assert not (tmp_path / "ns").exists()
