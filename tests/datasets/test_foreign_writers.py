"""Other HDF5 writers touch our files: nothing may vanish, be truncated or read back wrong.

Each test does to a twinloop capture exactly what a user's other tool does (Minari's
``update_dataset_from_buffer`` and ``update_episode_metadata``, plain h5py ``create_group``,
``del``, attributes, datasets), then reads it with twinloop, h5py and Minari, and appends to
it with twinloop. The failures these tests guard against were seen in an audit: a root group
that libhdf5 moved to dense storage read as 0 episodes, and the next ``--append`` truncated
the file to the new episodes only.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct

import h5py
import numpy as np
import pytest

import twinloop
from tests.datasets.conftest import STEM, run_episodes, stem_env
from twinloop.datasets import (
    DatasetError,
    DatasetWriter,
    RecordEpisodes,
    open_dataset,
)
from twinloop.datasets import _episode as E
from twinloop.datasets import _hdf5 as H
from twinloop.datasets import _hdf5_read as R

minari = pytest.importorskip("minari")


def _capture(path, n: int, seed: int = 0, mode: str = "create") -> list[dict]:
    env = RecordEpisodes(stem_env(), path, mode=mode)
    produced = run_episodes(env, n, seed=seed)
    env.close()
    return produced


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A 12-episode STEM capture, copied by each test that changes it."""
    root = tmp_path_factory.mktemp("foreign")
    produced = _capture(root / "ns" / "base-v0", 12)
    return root / "ns" / "base-v0", produced


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst / "data" / "main_data.hdf5"


def _digest(path) -> dict[str, str]:
    """sha256 of every dataset's values, as h5py reads them."""
    out = {}
    with h5py.File(path, "r") as f:

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                out[name] = hashlib.sha256(np.ascontiguousarray(obj[()]).tobytes()).hexdigest()

        f.visititems(visit)
    return out


def _root(path) -> tuple[R.ObjectHeader, int]:
    data = path.read_bytes()
    sb = H.read_superblock(data[:48])
    return R.read_object_header(lambda a, n: data[a : a + n], sb.root, len(data)), len(data)


def _assert_episodes_equal(ds, produced, ids=None):
    ids = range(len(produced)) if ids is None else ids
    by_id = {int(m["id"]): k for k, m in enumerate(ds.episode_metadata)}
    for i, want in zip(ids, produced, strict=True):
        ep = ds[by_id[i]]
        np.testing.assert_array_equal(ep.observations, np.stack(want["obs"]))
        np.testing.assert_array_equal(ep.actions, np.stack(want["actions"]))
        np.testing.assert_array_equal(ep.rewards, want["rewards"])


def test_h5py_create_group_keeps_every_episode_and_append_keeps_them(base, tmp_path):
    src, produced = base
    path = _copy(src, tmp_path / "ns" / "base-v0")
    with h5py.File(path, "a") as f:
        f.create_group("extra").attrs["note"] = "added by h5py"
    header, _ = _root(path)
    assert R.link_storage(header) == "compact"  # our group info keeps libhdf5 from converting
    ds = open_dataset(tmp_path / "ns" / "base-v0")
    assert len(ds) == 12 and not ds.problems
    assert ds._store.chain.other_links == ["extra"]
    _assert_episodes_equal(ds, produced)
    ds.close()
    size = os.path.getsize(path)
    before = _digest(path)
    more = _capture(tmp_path / "ns" / "base-v0", 3, seed=50, mode="append")
    assert os.path.getsize(path) > size
    after = _digest(path)
    assert {k: after[k] for k in before} == before  # nothing written before was touched
    ds = open_dataset(tmp_path / "ns" / "base-v0")
    assert len(ds) == 15 and not ds.problems
    _assert_episodes_equal(ds, produced + more)
    with h5py.File(path, "r") as f:
        assert set(f) == {f"episode_{i}" for i in range(15)} | {"extra"}
        assert f["extra"].attrs["note"] == "added by h5py"


def _old_style_capture(path, monkeypatch, n: int) -> list[dict]:
    """A capture as twinloop wrote it before it stated the link phase change values."""
    with monkeypatch.context() as m:
        m.setattr(H, "GROUP_INFO", struct.pack("<BB", 0, 0))
        return _capture(path, n)


def test_a_root_that_libhdf5_moved_to_dense_storage_reads_and_appends(tmp_path, monkeypatch):
    """The audit's case: 51 episodes, a ``create_group``, then ``--append`` lost all 51."""
    produced = _old_style_capture(tmp_path / "ns" / "d-v0", monkeypatch, 20)
    path = tmp_path / "ns" / "d-v0" / "data" / "main_data.hdf5"
    with h5py.File(path, "a") as f:
        f.create_group("extra")
    header, _ = _root(path)
    assert R.link_storage(header) == "dense"  # what libhdf5 does with the old group info
    ds = open_dataset(tmp_path / "ns" / "d-v0")
    assert len(ds) == 20 and not ds.problems
    _assert_episodes_equal(ds, produced)
    ds.close()
    size = os.path.getsize(path)
    before = _digest(path)
    more = _capture(tmp_path / "ns" / "d-v0", 4, seed=70, mode="append")
    assert os.path.getsize(path) > size
    assert {k: v for k, v in _digest(path).items() if k in before} == before
    header, _ = _root(path)
    assert R.link_storage(header) == "compact"  # relinked into the append form
    ds = open_dataset(tmp_path / "ns" / "d-v0")
    assert len(ds) == 24 and not ds.problems
    _assert_episodes_equal(ds, produced + more)
    with h5py.File(path, "r") as f:
        assert len(f) == 25 and "extra" in f
    assert minari.MinariDataset(tmp_path / "ns" / "d-v0" / "data").total_episodes == 24


def test_minari_episode_metadata_with_text_keeps_the_episode(base, tmp_path, monkeypatch):
    src, produced = base
    _copy(src, tmp_path / "ns" / "base-v0")
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    md = minari.load_dataset("ns/base-v0")
    md.storage.update_episode_metadata(
        [{"operator": "ana", "quality": 0.5, "tags": ["a", "bb"]}] * 3, episode_indices=[0, 1, 2]
    )
    ds = open_dataset(tmp_path / "ns" / "base-v0")
    assert len(ds) == 12 and not ds.problems
    meta = ds.episode_metadata
    assert [m.get("operator") for m in meta[:4]] == ["ana", "ana", "ana", None]
    assert meta[0]["quality"] == 0.5 and meta[0]["tags"] == ["a", "bb"]
    assert len(ds.filter(operator="ana")) == 3
    _assert_episodes_equal(ds, produced)


def test_many_foreign_attributes_moved_to_dense_storage_are_read(tmp_path, monkeypatch):
    """libhdf5 moves every attribute of an episode to dense storage past its phase change."""
    produced = _old_style_capture(tmp_path / "ns" / "a-v0", monkeypatch, 3)
    path = tmp_path / "ns" / "a-v0" / "data" / "main_data.hdf5"
    with h5py.File(path, "a") as f:
        for k in range(12):
            f["episode_1"].attrs[f"extra_{k}"] = k
    with h5py.File(path, "r") as f:
        assert f["episode_1"].attrs["extra_11"] == 11
    ds = open_dataset(tmp_path / "ns" / "a-v0")
    assert len(ds) == 3 and not ds.problems
    assert ds.episode_metadata[1]["extra_11"] == 11
    _assert_episodes_equal(ds, produced)


def test_h5py_deletes_an_episode(base, tmp_path):
    src, produced = base
    path = _copy(src, tmp_path / "ns" / "base-v0")
    with h5py.File(path, "a") as f:
        del f["episode_3"]
    ds = open_dataset(tmp_path / "ns" / "base-v0")
    assert len(ds) == 11 and 3 not in set(ds._store.ids.tolist())
    ds.close()
    _capture(tmp_path / "ns" / "base-v0", 2, seed=90, mode="append")
    ds = open_dataset(tmp_path / "ns" / "base-v0")
    ids = sorted(int(m["id"]) for m in ds.episode_metadata)
    assert ids == [0, 1, 2, *range(4, 14)]  # new ids follow the largest, never reuse one
    _assert_episodes_equal(ds, produced[:3], ids=[0, 1, 2])


def test_append_never_writes_over_data_another_writer_added(base, tmp_path):
    """h5py allocates past the end-of-file address; twinloop must start past it too."""
    src, _ = base
    path = _copy(src, tmp_path / "ns" / "base-v0")
    blob = np.random.default_rng(0).integers(0, 255, 300_000, dtype=np.uint8)
    with h5py.File(path, "a") as f:
        f["episode_0"].attrs["reviewed"] = True
        f.create_dataset("calibration/blob", data=blob)
    _capture(tmp_path / "ns" / "base-v0", 3, seed=40, mode="append")
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["calibration/blob"][()], blob)
        assert bool(f["episode_0"].attrs["reviewed"])
        assert len([k for k in f if k.startswith("episode_")]) == 15
    assert len(open_dataset(tmp_path / "ns" / "base-v0")) == 15


def test_minari_update_dataset_from_buffer_then_append(base, tmp_path, monkeypatch):
    src, produced = base
    _copy(src, tmp_path / "ns" / "base-v0")
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    ours = open_dataset(tmp_path / "ns" / "base-v0")
    buffers = []
    for k in range(2):
        ep = ours[k]
        buffers.append(
            minari.data_collector.EpisodeBuffer(
                seed=1000 + k,
                observations=ep.observations,
                actions=ep.actions,
                rewards=list(ep.rewards),
                terminations=list(ep.terminations),
                truncations=list(ep.truncations),
                infos={"applied_command": ep.infos["applied_command"]},
            )
        )
    ours.close()
    md = minari.load_dataset("ns/base-v0")
    md.update_dataset_from_buffer(buffers)
    ds = open_dataset(tmp_path / "ns" / "base-v0")
    assert len(ds) == 14 and not ds.problems
    assert [bool(m.get("written_by")) for m in ds.episode_metadata] == [False] * 12 + [True] * 2
    np.testing.assert_array_equal(ds[12].observations, ds[0].observations)
    np.testing.assert_array_equal(ds[13].rewards, ds[1].rewards)
    np.testing.assert_array_equal(ds[12].infos["applied_command"], ds[0].infos["applied_command"])
    batch = ds.sample(512, np.random.default_rng(0))
    assert {12, 13} & set(batch.episode_ids.tolist())
    ds.close()
    more = _capture(tmp_path / "ns" / "base-v0", 2, seed=60, mode="append")
    ds = open_dataset(tmp_path / "ns" / "base-v0")
    assert len(ds) == 16
    _assert_episodes_equal(ds, produced + more, ids=[*range(12), 14, 15])
    md = minari.load_dataset("ns/base-v0")
    assert md.total_episodes == 16


def test_refused_append_changes_nothing(base, tmp_path):
    src, _ = base
    path = _copy(src, tmp_path / "ns" / "base-v0")
    raw = bytearray(path.read_bytes())
    raw[11] = 0x01  # version 2 superblock flags: "open for writing" (SWMR)
    body = bytes(raw[:44])
    raw[44:48] = struct.pack("<I", H.checksum(body))
    path.write_bytes(bytes(raw))
    env = twinloop.make(STEM)
    with pytest.raises(DatasetError, match="nothing was changed"):
        w = DatasetWriter(
            tmp_path / "ns" / "base-v0",
            observation_space=env.observation_space,
            action_space=env.action_space,
            mode="append",
        )
        w.begin([f for f in open_dataset(src).fields if f.source == "info"])
    assert path.read_bytes() == bytes(raw)


def test_template_states_phase_change_values():
    """Every group we write states its link phase change values (and nothing pyfive refuses)."""
    from twinloop.datasets.schema import episode_fields

    env = twinloop.make(STEM)
    tpl = E.build_template(episode_fields(env.observation_space, env.action_space, []))
    sealed = tpl.data.copy()
    for start, n in zip(tpl.cks_start, tpl.cks_len, strict=True):
        H.seal(sealed, int(start), int(n))
    data = sealed.tobytes()
    header = R.read_object_header(lambda a, n: data[a : a + n], tpl.group_rel, len(data))
    assert not header.flags & 0x10  # pyfive refuses headers with attribute phase values
    (ginfo,) = header.messages(H.MSG_GROUP_INFO)
    assert struct.unpack("<BBHH", ginfo.body)[2] == H.MAX_COMPACT


def _crash(writer: DatasetWriter) -> None:
    """Leave the file as a SIGKILL would: no trim, no final metadata, the lock released."""
    os.close(writer._fd)
    os.close(writer._lock_fd)
    writer._fd = writer._lock_fd = None
    writer._closed = True


def _toy_writer(path, mode: str = "create") -> DatasetWriter:
    env = twinloop.make(STEM)
    w = DatasetWriter(
        path, observation_space=env.observation_space, action_space=env.action_space, mode=mode
    )
    w.begin([])
    return w


def _toy_episode(w: DatasetWriter, steps: int, k: int) -> None:
    obs = np.full((steps + 1, 12), k, np.float32)
    w.write_episode(
        observations=obs,
        actions=np.zeros((steps, 2), np.float32),
        rewards=np.full(steps, float(k)),
        terminations=np.eye(1, steps, steps - 1, dtype=bool)[0],
        truncations=np.zeros(steps, bool),
    )


def test_after_a_crash_the_writer_reuses_its_own_preallocated_space(tmp_path):
    path = tmp_path / "ns" / "pre-v0"
    w = _toy_writer(path)
    for k in range(5):
        _toy_episode(w, 20, k)
    committed_end = w._cursor
    _crash(w)
    data = path / "data" / "main_data.hdf5"
    assert data.stat().st_size >= 1 << 20  # the preallocated space is there
    w = _toy_writer(path, mode="append")
    assert w._cursor == committed_end  # not past the preallocated megabyte
    _toy_episode(w, 20, 5)
    w.close()
    assert data.stat().st_size < committed_end + 16_384
    ds = open_dataset(path)
    assert [int(e.rewards[0]) for e in ds] == list(range(6)) and not ds.problems


def test_after_a_crash_and_another_writer_nothing_is_reused(tmp_path):
    path = tmp_path / "ns" / "pre-v1"
    w = _toy_writer(path)
    for k in range(3):
        _toy_episode(w, 20, k)
    _crash(w)
    data = path / "data" / "main_data.hdf5"
    blob = np.arange(50_000, dtype=np.float64)
    with h5py.File(data, "a") as f:  # allocates at the superblock's end of file
        f["notes"] = blob
    w = _toy_writer(path, mode="append")
    _toy_episode(w, 20, 3)
    w.close()
    with h5py.File(data, "r") as f:
        np.testing.assert_array_equal(f["notes"][()], blob)
    assert [int(e.rewards[0]) for e in open_dataset(path)] == list(range(4))
