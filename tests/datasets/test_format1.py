"""Files of format 1 (twinloop before checksums and B-tree image chunks) still read and append.

The fixture ``fixtures/format1-toy-v0`` was recorded by twinloop at commit 9a4962f (ToyEnv:
an 8x8x3 uint8 image chunked under a version 4 layout with a fixed array index, a Box, Text,
Discrete actions, nested infos; 3 episodes, 10.5 kB).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np

from tests.datasets.conftest import ToyEnv, run_episodes
from twinloop.datasets import RecordEpisodes, open_dataset

FIXTURE = Path(__file__).parent / "fixtures" / "format1-toy-v0"


def _h5py_fields(path: Path, episode: int, fields) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        return {fs.path: f[f"episode_{episode}/{fs.path}"][()] for fs in fields}


def _ours(ep, fs) -> np.ndarray:
    value = {"obs": ep.observations, "action": ep.actions}.get(fs.source)
    if value is not None:
        for k in fs.key:
            value = value[k]
    elif fs.source == "reward":
        value = ep.rewards
    elif fs.source in ("terminated", "truncated"):
        value = ep.terminations if fs.source == "terminated" else ep.truncations
    else:
        value = ep.infos[fs.key[0]]
    if fs.text:
        return np.array([s.encode() for s in value], dtype=fs.np_dtype)
    return np.asarray(value)


def test_format1_reads_as_h5py_reads_it():
    meta = json.loads((FIXTURE / "data" / "metadata.json").read_text())
    assert meta["twinloop"]["format_version"] == 1
    ds = open_dataset(FIXTURE)
    assert len(ds) == 3 and not ds.problems
    with h5py.File(ds.path, "r") as f:
        layout = f["episode_0/observations/image"].id.get_create_plist().get_layout()
        assert layout == h5py.h5d.CHUNKED
    for k, ep in enumerate(ds):
        want = _h5py_fields(ds.path, k, ds.fields)
        for fs in ds.fields:
            np.testing.assert_array_equal(_ours(ep, fs), want[fs.path], err_msg=fs.path)
    assert ds._store.entries[0].checksums is None  # format 1 kept none
    assert ds.verify() == []  # headers checked against the index instead


def test_format2_episodes_append_to_a_format1_file(tmp_path):
    dst = tmp_path / "fixtures" / "format1-toy-v0"
    shutil.copytree(FIXTURE, dst)
    before = open_dataset(dst)
    old = [before[k] for k in range(3)]
    before.close()
    rec = RecordEpisodes(ToyEnv(image_shape=(8, 8)), dst, mode="append")
    produced = run_episodes(rec, 2, seed=77)
    rec.close()
    ds = open_dataset(dst)
    assert len(ds) == 5 and ds.verify() == []
    for k in range(3):
        np.testing.assert_array_equal(ds[k].observations["image"], old[k].observations["image"])
    assert ds._store.entries[3].checksums is not None
    for ep, want in zip([ds[3], ds[4]], produced, strict=True):
        np.testing.assert_array_equal(
            ep.observations["image"], np.stack([o["image"] for o in want["obs"]])
        )
    with h5py.File(ds.path, "r") as f:
        assert len(f) == 5
        np.testing.assert_array_equal(
            f["episode_4/observations/image"][()], ds[4].observations["image"]
        )
