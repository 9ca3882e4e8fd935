"""open_dataset reads datasets that minari.DataCollector wrote, as Minari itself reads them."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import warnings
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

from tests.conftest import assert_same
from tests.datasets.conftest import ToyEnv
from twinloop.datasets import DatasetCorruptError, DatasetError, DatasetLockedError, open_dataset
from twinloop.datasets.h5read import H5Store, episode_attrs, read_episode
from twinloop.datasets.schema import SOURCE_INFO, SOURCE_WALL, FieldSpec

minari = pytest.importorskip("minari")
h5py = pytest.importorskip("h5py")
pytest.importorskip("PIL")


# --- envs -----------------------------------------------------------------------------------
class DictObsEnv(gym.Env):
    """Dict observations of every leaf kind, Tuple actions, nested infos with a string."""

    metadata = {"render_modes": []}  # noqa: RUF012

    def __init__(self) -> None:  # noqa: D107
        self.observation_space = gym.spaces.Dict(
            {
                "pos": gym.spaces.Box(-5.0, 5.0, (2,), np.float32),
                "mode": gym.spaces.Discrete(3),
                "bits": gym.spaces.MultiBinary(4),
                "grid": gym.spaces.MultiDiscrete([3, 4]),
                "tag": gym.spaces.Text(max_length=6),
            }
        )
        self.action_space = gym.spaces.Tuple(
            (gym.spaces.Discrete(3), gym.spaces.Box(-1.0, 1.0, (2,), np.float32))
        )
        self._t = 0
        self._len = 0
        self._pos = np.zeros(2, np.float32)

    def _obs(self) -> dict[str, Any]:
        return {
            "pos": self._pos.copy(),
            "mode": np.int64(self._t % 3),
            "bits": np.array([self._t & 1, self._t & 2 > 0, 1, 0], dtype=np.int8),
            "grid": np.array([self._t % 3, self._t % 4], dtype=np.int64),
            "tag": f"s{self._t}" if self._t % 2 else "even",
        }

    def _info(self) -> dict[str, Any]:
        return {
            "step": self._t,
            "dist": float(np.linalg.norm(self._pos)),
            "nested": {"xy": self._pos.astype(np.float64), "ok": bool(self._t % 2)},
            "msg": "hello",
        }

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._t = 0
        self._len = int(self.np_random.integers(3, 10)) + int((options or {}).get("level", 0))
        self._pos = self.np_random.uniform(-1, 1, 2).astype(np.float32)
        return self._obs(), self._info()

    def step(self, action):
        self._t += 1
        self._pos = np.clip(self._pos + action[1] + 0.5 * (int(action[0]) - 1), -5, 5)
        self._pos = self._pos.astype(np.float32)
        terminated = bool(np.abs(self._pos).max() >= 5.0)
        truncated = self._t >= self._len and not terminated
        return self._obs(), float(self._pos.sum()), terminated, truncated, self._info()


class TupleObsEnv(gym.Env):
    """Tuple observations (a Box and a nested Dict), Dict actions, flat infos."""

    metadata = {"render_modes": []}  # noqa: RUF012

    def __init__(self) -> None:  # noqa: D107
        self.observation_space = gym.spaces.Tuple(
            (
                gym.spaces.Box(-np.inf, np.inf, (3,), np.float64),
                gym.spaces.Dict(
                    {"n": gym.spaces.Discrete(5, start=1), "v": gym.spaces.Box(0, 1, (2,))}
                ),
            )
        )
        self.action_space = gym.spaces.Dict(
            {"go": gym.spaces.Discrete(2), "force": gym.spaces.Box(-2.0, 2.0, (1,), np.float32)}
        )
        self._t = 0
        self._x = np.zeros(3)

    def _obs(self) -> tuple:
        v = np.array([self._t / 10 % 1, 0.5], dtype=np.float32)
        return (self._x.copy(), {"n": np.int64(1 + self._t % 5), "v": v})

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._t = 0
        self._x = self.np_random.normal(size=3)
        return self._obs(), {"energy": 0.0}

    def step(self, action):
        self._t += 1
        self._x = self._x + float(action["force"][0]) * int(action["go"])
        terminated = bool(self._x[0] > 3.0)
        truncated = self._t >= 6 and not terminated
        info = {"energy": float(self._x @ self._x)}
        return self._obs(), -abs(float(self._x[0])), terminated, truncated, info


def collect(env: gym.Env, dataset_id: str, n: int, *, seed: int = 0, **kwargs: Any):
    """Run ``n`` random episodes through minari.DataCollector; return the Minari dataset."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Minari warns about missing author, permalink ...
        col = minari.DataCollector(env, **kwargs)
        col.action_space.seed(seed)
        for k in range(n):
            col.reset(seed=seed + k, options={"level": k % 3})
            while True:
                _, _, terminated, truncated, _ = col.step(col.action_space.sample())
                if terminated or truncated:
                    break
        ds = col.create_dataset(dataset_id=dataset_id, algorithm_name="random")
        col.close()
    return ds


@pytest.fixture
def minari_root(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    return tmp_path


def data_dir(dataset_id: str, root) -> Any:
    return root / dataset_id / "data"


# --- comparisons ----------------------------------------------------------------------------
def numeric_infos(infos: dict, prefix: str = "") -> dict[str, np.ndarray]:
    out = {}
    for k, v in infos.items():
        if isinstance(v, dict):
            out.update(numeric_infos(v, f"{prefix}{k}/"))
        elif np.asarray(v).dtype.kind in "biuf":
            out[f"{prefix}{k}"] = np.asarray(v)
    return out


def pick(tree: Any, i: int) -> Any:
    """Row ``i`` of every leaf of a nested (dict / tuple / list / array) value."""
    if isinstance(tree, dict):
        return {k: pick(v, i) for k, v in tree.items()}
    if isinstance(tree, tuple):
        return tuple(pick(v, i) for v in tree)
    return tree[i]


def assert_matches_minari(dataset_id: str, root) -> Any:
    """Every episode open_dataset returns equals the one minari.load_dataset returns."""
    ours = open_dataset(data_dir(dataset_id, root))
    theirs = list(minari.load_dataset(dataset_id).iterate_episodes())
    assert len(ours) == len(theirs) > 0
    assert ours.total_steps == sum(len(e) for e in theirs)
    for a, b in zip(ours, theirs, strict=True):
        assert a.id == b.id
        assert_same(a.observations, b.observations, f"episode {a.id} observations")
        assert_same(a.actions, b.actions, f"episode {a.id} actions")
        np.testing.assert_array_equal(a.rewards, b.rewards)
        np.testing.assert_array_equal(a.terminations, b.terminations)
        np.testing.assert_array_equal(a.truncations, b.truncations)
        assert a.rewards.dtype == np.float64 and a.terminations.dtype == np.bool_
        assert_same(a.infos, numeric_infos(b.infos or {}), f"episode {a.id} infos")
        assert a.metadata["total_steps"] == len(b)
        assert a.metadata["terminated"] == bool(b.terminations[-1])
        assert a.metadata["truncated"] == bool(b.truncations[-1])
    return ours


def assert_dtypes_follow_spaces(ds) -> None:
    ep = ds[0]
    for f in ds.fields:
        if f.text:
            continue
        value = ep.observations if f.source == "obs" else ep.actions
        if f.source not in ("obs", "action"):
            continue
        for part in f.key:
            value = value[part]
        assert value.dtype == f.np_dtype, f.path
        assert value.shape[1:] == f.shape, f.path


def assert_sample_consistent(ds, batch_size: int = 64) -> None:
    episodes = {ep.id: ep for ep in ds}
    batch = ds.sample(batch_size, np.random.default_rng(7), with_infos=True)
    assert len(batch) == batch_size
    for k in range(batch_size):
        ep = episodes[int(batch.episode_ids[k])]
        t = int(batch.steps[k])
        assert 0 <= t < len(ep)
        assert_same(pick(batch.observations, k), pick(ep.observations, t), f"obs {k}")
        assert_same(pick(batch.next_observations, k), pick(ep.observations, t + 1), f"next {k}")
        assert_same(pick(batch.actions, k), pick(ep.actions, t), f"action {k}")
        assert batch.rewards[k] == ep.rewards[t]
        assert batch.terminations[k] == ep.terminations[t]
        assert batch.truncations[k] == ep.truncations[t]
        assert_same({n: v[k] for n, v in batch.infos.items()}, pick(ep.infos, t + 1), f"info {k}")


# --- datasets Minari wrote ------------------------------------------------------------------
def test_box_discrete_without_infos(minari_root):
    collect(gym.make("CartPole-v1"), "cartpole/random-v0", 6, record_infos=False)
    ds = assert_matches_minari("cartpole/random-v0", minari_root)
    assert [f.path for f in ds.fields] == [
        "observations",
        "actions",
        "rewards",
        "terminations",
        "truncations",
    ]
    assert ds.observation_space == gym.make("CartPole-v1").observation_space
    assert ds.problems == [] and ds.id == "cartpole/random-v0"
    assert ds[0].infos == {}
    assert_dtypes_follow_spaces(ds)
    assert_sample_consistent(ds)


def test_box_box_with_infos(minari_root):
    env = gym.make("Pendulum-v1", max_episode_steps=15)
    collect(env, "pendulum/random-v0", 4, record_infos=True)
    ds = assert_matches_minari("pendulum/random-v0", minari_root)
    assert {len(ep) for ep in ds} == {15}
    assert all(m["truncated"] and not m["terminated"] for m in ds.episode_metadata)
    assert_dtypes_follow_spaces(ds)
    assert_sample_consistent(ds)


@pytest.mark.parametrize("record_infos", [True, False])
def test_dict_observations_tuple_actions(minari_root, record_infos, caplog):
    collect(DictObsEnv(), "toy/dict-v0", 8, record_infos=record_infos)
    with caplog.at_level(logging.WARNING, logger="twinloop.datasets.h5read"):
        ds = assert_matches_minari("toy/dict-v0", minari_root)
    info_paths = [f.path for f in ds.fields if f.source == SOURCE_INFO]
    if record_infos:
        assert info_paths == [
            "infos/dist",
            "infos/nested/ok",
            "infos/nested/xy",
            "infos/step",
        ]
        assert ds.fields[-3].dtype == "|b1" and ds.fields[-2].shape == (2,)
        # the string info is skipped with a warning and a note naming it
        assert any("infos/msg" in n for n in ds._store.notes)
        assert "infos/msg" in caplog.text
    else:
        assert info_paths == [] and ds._store.notes == []
    assert [f.path for f in ds.fields[:7]] == [
        "observations/bits",
        "observations/grid",
        "observations/mode",
        "observations/pos",
        "observations/tag",
        "actions/_index_0",
        "actions/_index_1",
    ]
    assert ds.fields[4].text and ds.fields[4].dtype == "|S6"
    assert isinstance(ds[0].observations["tag"][0], str)
    assert_dtypes_follow_spaces(ds)
    assert_sample_consistent(ds)


@pytest.mark.parametrize("record_infos", [True, False])
def test_tuple_observations_dict_actions(minari_root, record_infos):
    collect(TupleObsEnv(), "toy/tuple-v0", 7, record_infos=record_infos, seed=3)
    ds = assert_matches_minari("toy/tuple-v0", minari_root)
    assert [f.path for f in ds.fields[:5]] == [
        "observations/_index_0",
        "observations/_index_1/n",
        "observations/_index_1/v",
        "actions/force",
        "actions/go",
    ]
    assert [f.path for f in ds.fields[8:]] == (["infos/energy"] if record_infos else [])
    ep = ds[0]
    assert isinstance(ep.observations, tuple) and set(ep.observations[1]) == {"n", "v"}
    assert ep.observations[1]["n"].min() >= 1  # Discrete(5, start=1) values as stored
    assert_dtypes_follow_spaces(ds)
    assert_sample_consistent(ds)


@pytest.mark.parametrize("jpeg", [True, False])
def test_image_observations(minari_root, jpeg):
    env = ToyEnv(image_shape=(40, 48, 3))
    collect(env, "toy/image-v0", 4, record_infos=True, jpeg_encoding=jpeg)
    with h5py.File(data_dir("toy/image-v0", minari_root) / "main_data.hdf5") as h5:
        stored = h5["episode_0/observations/image"]
        assert (stored.ndim < 4) == jpeg  # encoded bytes, or raw frames
    ds = assert_matches_minari("toy/image-v0", minari_root)
    image = ds[1].observations["image"]
    assert image.shape[1:] == (40, 48, 3) and image.dtype == np.uint8
    if not jpeg:  # lossless: the frames the env produced
        replay = ToyEnv(image_shape=(40, 48, 3))
        obs, _ = replay.reset(seed=1, options={"level": 1})
        np.testing.assert_array_equal(image[0], obs["image"])
    assert_sample_consistent(ds, batch_size=32)


# --- filtering, caching, following ----------------------------------------------------------
def test_filter_by_episode_metadata(minari_root):
    collect(DictObsEnv(), "toy/filter-v0", 9, record_infos=False, seed=10)
    ds = open_dataset(data_dir("toy/filter-v0", minari_root))
    meta = ds.episode_metadata
    assert [m["seed"] for m in meta] == list(range(10, 19))
    assert [m["options/level"] for m in meta] == [k % 3 for k in range(9)]
    level2 = ds.filter(**{"options/level": 2})
    assert [ep.id for ep in level2] == [2, 5, 8]
    assert level2.total_steps == sum(meta[i]["total_steps"] for i in (2, 5, 8))
    long = ds.filter(lambda m: m["total_steps"] >= 8, truncated=True)
    want = [m["id"] for m in meta if m["total_steps"] >= 8 and m["truncated"]]
    assert [ep.id for ep in long] == want
    # Minari's own episode metadata agrees
    rows = list(minari.load_dataset("toy/filter-v0").storage.get_episode_metadata(range(9)))
    assert [r["rewards_sum"] for r in rows] == [m["rewards_sum"] for m in meta]
    np.testing.assert_allclose(
        [m["episode_return"] for m in meta], [r["rewards_sum"] for r in rows]
    )
    with pytest.raises(KeyError, match="no episode metadata 'colour'"):
        ds.filter(colour="red")
    batch = level2.sample(50, np.random.default_rng(0))
    assert set(batch.episode_ids.tolist()) <= {2, 5, 8}


def test_sampling_reads_each_episode_once(minari_root, monkeypatch):
    collect(ToyEnv(), "toy/cache-v0", 5, record_infos=True)
    ds = open_dataset(data_dir("toy/cache-v0", minari_root))
    store = ds._store
    assert store._encoded[0]  # the JPEG image field stays encoded in the cache
    loads = []
    real = store._load

    def counting_load(j, e, rows=None):
        loads.append((j, e))
        return real(j, e, rows)

    monkeypatch.setattr(store, "_load", counting_load)
    first = ds.sample(200, np.random.default_rng(0))
    n_first = len(loads)
    assert n_first <= len(ds.fields) * len(ds)
    again = ds.sample(200, np.random.default_rng(0))
    assert len(loads) == n_first  # everything came from the caches
    assert_same(first.observations, again.observations)


def test_small_cache_reads_rows_directly(minari_root):
    collect(ToyEnv(), "toy/small-v0", 3, record_infos=True, jpeg_encoding=False)
    store = H5Store(data_dir("toy/small-v0", minari_root), cache_bytes=4096)
    eps = np.array([2, 0, 2, 1, 0], dtype=np.int64)
    rows = np.array([3, 0, 1, 2, 3], dtype=np.int64) % store.steps[eps]  # within every field
    got = [store.rows(j, eps, rows) for j in range(len(store.fields))]
    assert 0 not in store._flats and 0 in store._no_flat  # images exceed the 2 KiB flat budget
    for j in range(len(store.fields)):
        whole = [store.field(j, e) for e in range(3)]
        want = np.stack([whole[e][r] for e, r in zip(eps, rows, strict=True)])
        np.testing.assert_array_equal(got[j], want)
    store.close()


def test_refresh_sees_episodes_minari_appends(minari_root):
    theirs = collect(TupleObsEnv(), "toy/follow-v0", 3, record_infos=True)
    ours = open_dataset(data_dir("toy/follow-v0", minari_root))
    assert len(ours) == 3 and ours.refresh() == 0
    ours.sample(8, np.random.default_rng(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        col = minari.DataCollector(TupleObsEnv(), record_infos=True)
        for k in range(2):
            col.reset(seed=100 + k)
            while not any(col.step(col.action_space.sample())[2:4]):
                pass
        col.add_to_dataset(theirs)  # appends to main_data.hdf5 while we have it open
        col.close()
    assert ours.refresh() == 2
    assert len(ours) == 5
    # Minari's add_to_dataset drops the seeds: a missing seed reads as -1, as twinloop writes it
    assert [(m["id"], m["seed"]) for m in ours.episode_metadata[3:]] == [(3, -1), (4, -1)]
    assert_matches_minari("toy/follow-v0", minari_root)
    assert_sample_consistent(ours)


# --- damage and unsupported layouts ---------------------------------------------------------
@pytest.fixture
def damaged(minari_root):
    """A 6-episode Minari dataset with infos; returns (data folder, main_data.hdf5 path)."""
    collect(DictObsEnv(), "toy/damaged-v0", 6, record_infos=True)
    folder = data_dir("toy/damaged-v0", minari_root)
    return folder, folder / "main_data.hdf5"


def _replace(h5, path: str, data: np.ndarray) -> None:
    del h5[path]
    h5.create_dataset(path, data=data)


def test_episodes_whose_fields_disagree_are_reported_and_skipped(damaged):
    folder, path = damaged
    with h5py.File(path, "a") as h5:
        _replace(h5, "episode_1/rewards", h5["episode_1/rewards"][:-1])  # one row short
        del h5["episode_2/actions/_index_1"]  # a missing action leaf
        _replace(h5, "episode_3/observations/pos", h5["episode_3/observations/pos"][:-1])
        _replace(h5, "episode_4/infos/dist", h5["episode_4/infos/dist"][:-2])
        del h5["episode_5/actions"]  # the whole actions group
    ds = open_dataset(folder)
    assert [ep.id for ep in ds] == [0]
    problems = ds.problems
    assert len(problems) == 5
    assert all(str(path) in p and "skipped" in p for p in problems)
    assert "episode_1: rewards has" in problems[0] and "total_steps attribute" in problems[0]
    assert "episode_2: actions/_index_1 is missing" in problems[1]
    assert "episode_3: observations/pos has" in problems[2]
    assert "expected" in problems[2] and "L + 1" in problems[2]
    assert "episode_4: infos/dist has" in problems[3]
    assert "episode_5: actions/_index_0 is missing" in problems[4]
    with pytest.raises(DatasetCorruptError, match="episode_1: rewards"):
        open_dataset(folder, strict=True)
    # sampling never touches a skipped episode
    assert set(ds.sample(64, np.random.default_rng(0)).episode_ids.tolist()) == {0}


def test_wrong_dtype_and_shape_are_named(damaged):
    folder, path = damaged
    with h5py.File(path, "a") as h5:
        n = [h5[f"episode_{e}/rewards"].shape[0] + 1 for e in range(3)]
        _replace(h5, "episode_0/observations/mode", np.linspace(0, 1, n[0]))  # float: Discrete
        _replace(h5, "episode_1/observations/pos", np.zeros((n[1], 3), np.float32))
        _replace(h5, "episode_2/observations/tag", np.arange(n[2]))
    problems = open_dataset(folder).problems
    assert "episode_0: observations/mode holds float64 values" in problems[0]
    assert "rows of shape (3,), expected (2,)" in problems[1]
    assert "episode_2: observations/tag holds int64 values" in problems[2]


def test_damaged_jpeg_frame_is_named_when_read(minari_root):
    collect(ToyEnv(), "toy/badjpeg-v0", 2, record_infos=False)
    folder = data_dir("toy/badjpeg-v0", minari_root)
    with h5py.File(folder / "main_data.hdf5", "a") as h5:
        frames = list(h5["episode_1/observations/image"][()])
        bad = len(frames) - 1
        frames[bad] = np.frombuffer(b"not a jpeg at all", dtype=np.uint8)
        del h5["episode_1/observations/image"]
        h5.create_dataset(
            "episode_1/observations/image", data=frames, dtype=h5py.vlen_dtype(np.uint8)
        )
    ds = open_dataset(folder)
    assert len(ds) == 2 and ds.problems == []  # frames are decoded when read, not at open
    ds[0]
    with pytest.raises(
        DatasetCorruptError, match=rf"episode_1: observations/image row {bad} is not"
    ):
        ds[1]


def test_arrow_and_other_formats_are_refused(damaged):
    folder, path = damaged
    meta = json.loads((folder / "metadata.json").read_text())
    (folder / "metadata.json").write_text(json.dumps({**meta, "data_format": "arrow"}))
    path.unlink()
    with pytest.raises(DatasetError, match=r"stored in the 'arrow' format.*'hdf5' storage only"):
        open_dataset(folder)


def test_unreadable_files_and_metadata(damaged):
    folder, path = damaged
    meta = json.loads((folder / "metadata.json").read_text())
    (folder / "metadata.json").write_text(json.dumps({**meta, "action_space": None}))
    with pytest.raises(DatasetError, match="no action_space in the dataset's metadata"):
        open_dataset(folder)
    bad = {**meta, "observation_space": json.dumps({"type": "Graph"})}
    (folder / "metadata.json").write_text(json.dumps(bad))
    with pytest.raises(DatasetError, match=r"observation_space .*Graph.* is unreadable"):
        open_dataset(folder)
    (folder / "metadata.json").write_text(json.dumps(meta))
    path.write_bytes(b"\0" * 4096)
    with pytest.raises(DatasetCorruptError, match="not a readable HDF5 file"):
        open_dataset(folder)


def test_foreign_info_layouts(damaged, caplog):
    folder, path = damaged
    with h5py.File(path, "a") as h5:
        for e in range(6):
            g = h5[f"episode_{e}"]
            n = g["rewards"].shape[0]
            g.create_dataset("infos/per_step", data=np.arange(n))  # L rows, not L + 1
            g.create_dataset("infos/constant", data=3.5)  # one value per episode
            g.create_dataset("infos/ragged", data=np.zeros((n + 1, 1 + e % 2)))
            g.create_dataset("infos/wall_time_s", data=1e9 + np.arange(n + 1, dtype=float))
            if e != 4:
                g.create_dataset("infos/sometimes", data=np.full(n + 1, e, np.int32))
    with caplog.at_level(logging.WARNING, logger="twinloop.datasets.h5read"):
        ds = open_dataset(folder)
    notes = "\n".join(ds._store.notes)
    assert "infos/per_step has" in notes and "L + 1 rows expected" in notes
    assert "infos/constant is a single value" in notes
    assert "infos/ragged has rows of different shapes" in notes
    assert "infos/sometimes is missing in 1 of 6 episodes (first: episode_4)" in notes
    assert "infos/msg holds" in notes
    assert "infos/per_step" in caplog.text
    by_path = {f.path: f for f in ds.fields}
    assert by_path["infos/wall_time_s"].source == SOURCE_WALL
    assert not {"infos/per_step", "infos/constant", "infos/ragged"} & set(by_path)
    assert len(ds) == 6 and ds.problems == []
    np.testing.assert_array_equal(ds[4].infos["sometimes"], 0)
    np.testing.assert_array_equal(ds[5].infos["sometimes"], 5)
    assert ds[2].infos["wall_time_s"][0] == 1e9
    batch = ds.sample(16, np.random.default_rng(0), with_infos=True)
    np.testing.assert_array_equal(batch.infos["wall_time_s"], 1e9 + batch.steps + 1)


def test_minari_04_layout_metadata_in_root_attributes(damaged):
    folder, path = damaged
    meta = json.loads((folder / "metadata.json").read_text())
    (folder / "metadata.json").unlink()
    with h5py.File(path, "a") as h5:
        for key in ("observation_space", "action_space", "dataset_id", "total_episodes"):
            h5.attrs[key] = meta[key]
    store = H5Store(folder)
    assert store.meta["dataset_id"] == "toy/damaged-v0" and store.jpeg is False
    assert store.ids.tolist() == list(range(6))
    with h5py.File(path) as h5:
        np.testing.assert_array_equal(store.field(3, 2), h5["episode_2/observations/pos"][()])
    store.close()


def test_a_writer_holding_the_file_lock_is_named(damaged):
    folder, path = damaged
    if os.environ.get("HDF5_USE_FILE_LOCKING", "").upper() == "FALSE":
        pytest.skip("HDF5 file locking is disabled in this environment")
    ds = open_dataset(folder)
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(DatasetLockedError, match="open for writing in another process"):
            open_dataset(folder)
        assert ds.refresh() == 0  # a follower looks again later instead of failing
    finally:
        holder.kill()
        holder.wait()
    assert len(open_dataset(folder)) == 6


LOCK_HOLDER = """
import sys, time, h5py
f = h5py.File(sys.argv[1], "a")
print("ready", flush=True)
time.sleep(60)
"""


# --- the helpers for mixed files ------------------------------------------------------------
def test_read_episode_and_episode_attrs(damaged):
    folder, path = damaged
    ds = open_dataset(folder)
    extra = FieldSpec(
        path="infos/absent",
        source=SOURCE_INFO,
        key=("absent",),
        dtype="<f4",
        shape=(2,),
        obs_aligned=True,
    )
    fields = [*ds.fields, extra]
    with h5py.File(path, "a") as h5:
        h5["episode_3"].attrs["label"] = np.bytes_(b"bytes label")
        group = h5["episode_3"]
        values = read_episode(group, fields, jpeg=True, file_label="shard.hdf5")
        attrs = episode_attrs(group)
        want = ds[3]
        steps = len(want)
        assert values[0].dtype == np.int8 and values[0].shape == (steps + 1, 4)
        np.testing.assert_array_equal(values[3], want.observations["pos"])
        assert (
            values[4].dtype == np.dtype("S6")
            and values[4][0] == want.observations["tag"][0].encode()
        )
        step = next(j for j, f in enumerate(fields) if f.path == "infos/step")
        np.testing.assert_array_equal(values[step], want.infos["step"])
        assert values[-1].shape == (steps + 1, 2) and not values[-1].any()
        assert attrs["label"] == "bytes label" and attrs["seed"] == 3 and attrs["id"] == 3
        assert type(attrs["total_steps"]) is int and type(attrs["rewards_sum"]) is float
        assert attrs["options/level"] == 0
        _replace(h5, "episode_3/truncations", h5["episode_3/truncations"][:-1])
        with pytest.raises(DatasetCorruptError, match=r"^shard.hdf5: episode_3: truncations has"):
            read_episode(h5["episode_3"], fields, jpeg=True, file_label="shard.hdf5")
        tags = h5["episode_1/observations/tag"].shape[0]
        _replace(h5, "episode_1/observations/tag", np.array(["x" * 7] * tags, dtype=object))
        with pytest.raises(DatasetCorruptError, match="holds a 7-byte string; the Text space"):
            read_episode(h5["episode_1"], fields, jpeg=True, file_label="shard.hdf5")
        del h5["episode_2/observations"]
        with pytest.raises(DatasetCorruptError, match="episode_2: observations/bits is missing"):
            read_episode(h5["episode_2"], fields, jpeg=True, file_label="shard.hdf5")
