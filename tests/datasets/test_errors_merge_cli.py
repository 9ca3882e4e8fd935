"""Existing ids, append, locks, disk full, permissions, merge and the ``twinloop data`` CLI."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

import twinloop
from tests.datasets.conftest import STEM, ToyEnv, run_episodes, stem_env
from twinloop.cli import main
from twinloop.datasets import (
    DatasetExistsError,
    DatasetLockedError,
    DatasetWriteError,
    RecordEpisodes,
    SchemaMismatchError,
    merge_datasets,
    open_dataset,
)


def _capture(path, n=2, seed=0, **kw):
    env = RecordEpisodes(stem_env(), path, **kw)
    run_episodes(env, n, seed=seed)
    env.close()
    return open_dataset(path)


def test_existing_dataset_is_not_overwritten(tmp_path):
    path = tmp_path / "ns" / "x-v0"
    first = _capture(path, 2, seed=0)
    before = (path / "data" / "main_data.hdf5").read_bytes()
    with pytest.raises(DatasetExistsError, match=r"'ns/x-v0' already exists .* with 2 episodes"):
        RecordEpisodes(stem_env(), path)
    assert (path / "data" / "main_data.hdf5").read_bytes() == before
    assert len(open_dataset(path)) == len(first) == 2


def test_append_and_overwrite(tmp_path):
    path = tmp_path / "ns" / "x-v0"
    a = _capture(path, 2, seed=0)
    b = _capture(path, 3, seed=10, mode="append")
    assert len(b) == 5 and [m["seed"] for m in b.episode_metadata] == [0, 1, 10, 11, 12]
    np.testing.assert_array_equal(b[0].rewards, a[0].rewards)
    c = _capture(path, 1, seed=20, mode="overwrite")
    assert [m["seed"] for m in c.episode_metadata] == [20]


def test_append_with_other_spaces_is_refused(tmp_path):
    path = tmp_path / "ns" / "x-v0"
    _capture(path, 1)
    with pytest.raises(SchemaMismatchError, match="observation space differs"):
        RecordEpisodes(ToyEnv(), path, mode="append")


def test_second_writer_is_locked_out(tmp_path):
    path = tmp_path / "ns" / "x-v0"
    env = RecordEpisodes(stem_env(), path)
    try:
        with pytest.raises(
            DatasetLockedError, match=rf"{path} is being written by another process"
        ):
            RecordEpisodes(stem_env(), path, mode="append")
    finally:
        env.close()


def test_disk_full_keeps_committed_episodes(tmp_path, monkeypatch):
    path = tmp_path / "ns" / "full-v0"
    env = RecordEpisodes(stem_env(), path)
    run_episodes(env, 2, seed=0)
    real = os.pwrite

    def full(fd, data, offset):
        if len(data) > 100:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", full)
    with pytest.raises(
        DatasetWriteError,
        match=r"no space left on device while committing 1 "
        r"episode\(s\); the 2 episodes committed before are intact",
    ) as info:
        run_episodes(env, 1, seed=5)
    assert info.value.errno == errno.ENOSPC
    with pytest.raises(DatasetWriteError, match="no space left"):
        run_episodes(env, 1, seed=6)  # the writer stays failed
    monkeypatch.setattr(os, "pwrite", real)
    env.close()
    ds = open_dataset(path)
    assert len(ds) == 2 and ds.problems == []
    assert ds.writer_state == "failed"


def test_permission_denied(tmp_path, monkeypatch):
    target = tmp_path / "ro" / "ns" / "x-v0"
    if os.geteuid() != 0:
        (tmp_path / "ro").mkdir()
        os.chmod(tmp_path / "ro", 0o500)
    else:  # root may write anywhere: simulate what the kernel would answer
        real = os.mkdir

        def deny(p, *a, **k):
            if str(p).startswith(str(tmp_path / "ro")):
                raise PermissionError(errno.EACCES, "Permission denied", str(p))
            return real(p, *a, **k)

        monkeypatch.setattr(os, "mkdir", deny)
    with pytest.raises(
        DatasetWriteError, match=rf"cannot create {target / 'data'}: permission denied"
    ):
        RecordEpisodes(stem_env(), target)


def test_bad_dataset_id(tmp_path):
    with pytest.raises(ValueError, match=r"dataset id 'x' must look like 'namespace/name-v0'"):
        RecordEpisodes(stem_env(), tmp_path / "x-v0", dataset_id="x")


def test_merge_shards(tmp_path):
    a = _capture(tmp_path / "shards" / "a-v0", 2, seed=0, tags={"worker": 0})
    b = _capture(tmp_path / "shards" / "b-v0", 3, seed=100, tags={"worker": 1, "site": "lab"})
    out = tmp_path / "merged" / "all-v0"
    result = merge_datasets(out, [a.path.parent.parent, b.path.parent.parent])
    assert result["episodes"] == 5
    m = open_dataset(out)
    assert [x["id"] for x in m.episode_metadata] == list(range(5))
    assert [x["seed"] for x in m.episode_metadata] == [0, 1, 100, 101, 102]
    for got, want in zip(m, [*a, *b], strict=True):
        np.testing.assert_array_equal(got.observations, want.observations)
        for k in want.infos:
            np.testing.assert_array_equal(got.infos[k], want.infos[k])
    assert m.metadata["combined_datasets"] == ["shards/a-v0", "shards/b-v0"]
    assert m.metadata["twinloop"]["tags"] == {"worker": 1, "site": "lab"}
    assert len(m.metadata["twinloop"]["shards"]) == 2


def test_merge_refuses_different_fields(tmp_path):
    a = _capture(tmp_path / "s" / "a-v0", 1)
    env = RecordEpisodes(ToyEnv(), tmp_path / "s" / "b-v0")
    run_episodes(env, 1, seed=0)
    env.close()
    with pytest.raises(SchemaMismatchError, match="observation spaces differ"):
        merge_datasets(tmp_path / "m" / "c-v0", [a.path.parent.parent, tmp_path / "s" / "b-v0"])


def test_cli_run_record_info_merge(tmp_path, capsys):
    root = tmp_path / "runs"
    base = ["run", STEM, "--controller", "random", "--quiet", "--record", str(root)]
    assert (
        main(
            [
                *base,
                "--episodes",
                "7",
                "--n-envs",
                "3",
                "--dataset-id",
                "wk/a-v0",
                "--tag",
                "operator=ana",
            ]
        )
        == 0
    )
    assert main([*base, "--episodes", "4", "--seed", "50", "--dataset-id", "wk/b-v0"]) == 0
    out = capsys.readouterr().out
    assert "recorded 7 episodes" in out and "recorded 4 episodes" in out
    a = open_dataset(root / "wk" / "a-v0")
    # exactly the run's episodes: seeds 0..6, none from idle rows
    assert sorted(m["seed"] for m in a.episode_metadata) == list(range(7))
    assert a.metadata["twinloop"]["tags"] == {"controller": "random", "seed": 0, "operator": "ana"}
    # the same id again is refused, with exit status 2
    assert main([*base, "--episodes", "1", "--dataset-id", "wk/a-v0"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["data", "info", str(root / "wk" / "a-v0"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["episodes"] == 7 and summary["steps"] == a.total_steps
    assert summary["backends"] == [{"kind": "sim", "vector_env": "StemVectorEnv"}]
    assert (
        main(
            [
                "data",
                "merge",
                str(root / "wk" / "all-v0"),
                str(root / "wk" / "a-v0"),
                str(root / "wk" / "b-v0"),
                "--quiet",
            ]
        )
        == 0
    )
    assert "merged 11 episodes" in capsys.readouterr().out
    assert main(["data", "info", str(root)]) == 0
    text = capsys.readouterr().out
    assert text.count("episodes") >= 3 and "wk/all-v0" in text


def test_cli_follow_ends_when_the_writer_closes(tmp_path):
    root = tmp_path / "runs"
    writer = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "twinloop.cli",
            "run",
            STEM,
            "--controller",
            "random",
            "--episodes",
            "400",
            "--n-envs",
            "4",
            "--record",
            str(root),
            "--dataset-id",
            "fo/live-v0",
            "--quiet",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    meta = root / "fo" / "live-v0" / "data" / "metadata.json"
    deadline = time.monotonic() + 60
    while not meta.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    follower = subprocess.run(
        [
            sys.executable,
            "-m",
            "twinloop.cli",
            "data",
            "info",
            str(root / "fo" / "live-v0"),
            "--follow",
            "--interval",
            "0.1",
            "--timeout",
            "120",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert writer.wait(timeout=120) == 0, writer.stderr.read().decode()
    assert follower.returncode == 0, follower.stderr
    summary = json.loads(follower.stdout)
    assert summary["episodes"] == 400 and summary["writer_state"] == "closed"
    # it really followed: the progress bar started below the final count
    assert "ep" in follower.stderr


def test_reader_follows_a_capture_in_process(tmp_path):
    vec = twinloop.make_vec(STEM, 4)
    from twinloop.datasets import RecordVectorEpisodes

    rec = RecordVectorEpisodes(vec, tmp_path / "live-v0", metadata_interval_s=0)
    rec.reset(seed=0)
    rec.action_space.seed(0)
    while rec.n_episodes == 0:
        rec.step(rec.action_space.sample())
    ds = open_dataset(tmp_path / "live-v0")
    seen = [len(ds)]
    for _ in range(5):
        for _ in range(60):
            rec.step(rec.action_space.sample())
        rec.sync()  # a capture companion may still be writing the last steps
        ds.refresh()
        seen.append(len(ds))
        assert len(ds) == rec.n_episodes
    assert seen == sorted(seen) and seen[-1] > seen[0]
    assert ds.writer_state == "open"
    rec.close()
    ds.refresh()
    assert ds.writer_state == "closed"
    last = ds[-1]
    assert last.rewards.sum() == pytest.approx(last.metadata["episode_return"])


def test_follow_survives_a_file_that_grew_after_the_readers_last_look(tmp_path):
    """Regression: a stale file size must not break a follower.

    The writer can grow the file and link new blocks past the old end between the reader's
    fstat and its walk; the reader must look at the size again instead of declaring the
    chain broken.
    """
    vec = twinloop.make_vec(STEM, 4)
    from twinloop.datasets import RecordVectorEpisodes

    rec = RecordVectorEpisodes(vec, tmp_path / "grow-v0", metadata_interval_s=0)
    rec.reset(seed=0)
    rec.action_space.seed(0)
    while rec.n_episodes == 0:
        rec.step(rec.action_space.sample())
    ds = open_dataset(tmp_path / "grow-v0")
    f = ds._store.file
    stale_size = f.size
    real_refresh = f.refresh
    calls = {"n": 0}

    def stale_once() -> None:  # the first refresh "misses" the growth, as in the race
        calls["n"] += 1
        if calls["n"] == 1:
            f.size = stale_size
        else:
            real_refresh()

    f.refresh = stale_once
    while (tmp_path / "grow-v0" / "data" / "main_data.hdf5").stat().st_size <= stale_size:
        rec.step(rec.action_space.sample())
    rec.sync()
    ds.refresh()
    assert calls["n"] >= 2, "the walk must look at the file size again"
    assert not ds.problems
    assert len(ds) == rec.n_episodes
    rec.close()
