"""The capture companion: a vector capture written by a second process through shared memory.

What it must keep: every episode that ended before the controller process died (SIGKILL
included), the same bytes of data as an in-process capture, and errors that reach the
controller instead of vanishing with the companion.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import twinloop
from tests.datasets.conftest import STEM
from twinloop.datasets import (
    DatasetError,
    DatasetWriteError,
    RecordVectorEpisodes,
    SchemaMismatchError,
    open_dataset,
    writer_alive,
)
from twinloop.datasets.companion import supported

pytestmark = pytest.mark.skipif(not supported(), reason="the companion needs x86-64 POSIX")

# a controller that records through the companion and, after every step, stores how many
# recorded episodes have ended so far (8 bytes at offset 0 of COUNTER)
CHILD = textwrap.dedent(
    """
    import os, sys
    import numpy as np
    import twinloop
    from twinloop.datasets import RecordVectorEpisodes

    path, counter, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    fd = os.open(counter, os.O_RDWR | os.O_CREAT, 0o644)
    rec = RecordVectorEpisodes(
        twinloop.make_vec("twinloop/StemSteer-v0", 16), path, capture="companion"
    )
    rec.reset(seed=seed)
    rec.action_space.seed(seed)
    ended = 0
    while True:
        _, _, term, trunc, _ = rec.step(rec.action_space.sample())
        ended += int(np.count_nonzero(term | trunc))
        os.pwrite(fd, ended.to_bytes(8, "little"), 0)
    """
)


def test_sigkill_of_the_controller_keeps_every_ended_episode(tmp_path):
    """Kill the controller at random points; the companion then commits all it was given.

    After the kill the companion notices its parent is gone, commits every published step,
    closes the dataset (trimmed, metadata final) and releases the lock.
    """
    rng = np.random.default_rng(0)
    for k in range(3):
        path = tmp_path / f"kill{k}-v0"
        counter = tmp_path / f"counter{k}"
        counter.write_bytes(bytes(8))
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(path), str(counter), str(k)],
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 120
        while int.from_bytes(counter.read_bytes()[:8], "little") < 20:
            assert proc.poll() is None, proc.stderr.read().decode()  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "no episode ended in 120 s"
            time.sleep(0.01)
        time.sleep(float(rng.uniform(0, 0.3)))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        ended = int.from_bytes(counter.read_bytes()[:8], "little")
        deadline = time.monotonic() + 60
        while writer_alive(path / "data") and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not writer_alive(path / "data"), "the companion did not finish"
        ds = open_dataset(path)
        assert ds.problems == []
        assert len(ds) >= ended > 0  # the kill may land after a step, before its count
        assert ds.writer_state == "closed"
        assert [m["id"] for m in ds.episode_metadata] == list(range(len(ds)))
        for ep in ds:
            assert ep.rewards.sum() == pytest.approx(ep.metadata["episode_return"])
            assert ep.terminations[-1] or ep.truncations[-1]
        ds.close()


def test_a_dead_companion_is_reported_to_the_controller(tmp_path):
    rec = RecordVectorEpisodes(
        twinloop.make_vec(STEM, 4), tmp_path / "dead-v0", capture="companion"
    )
    rec.reset(seed=0)
    rec.action_space.seed(0)
    for _ in range(50):
        rec.step(rec.action_space.sample())
    rec.sync()
    committed = rec.n_episodes
    rec._link.proc.kill()
    rec._link.proc.wait()
    with pytest.raises(DatasetWriteError, match=r"companion \(pid \d+\) died"):
        for _ in range(5000):  # the ring fills, or the periodic check notices
            rec.step(rec.action_space.sample())
    with pytest.raises(DatasetWriteError, match="companion"):
        rec.close()
    ds = open_dataset(tmp_path / "dead-v0")
    assert len(ds) >= committed and ds.problems == []


def test_a_schema_mismatch_found_by_the_companion_is_raised_at_the_first_step(tmp_path):
    path = tmp_path / "mix-v0"
    rec = RecordVectorEpisodes(
        twinloop.make_vec(STEM, 2), path, capture="companion", info_exclude=("true/",)
    )
    rec.reset(seed=0)
    for _ in range(80):
        rec.step(rec.action_space.sample())
    rec.close()
    again = RecordVectorEpisodes(
        twinloop.make_vec(STEM, 2), path, mode="append", capture="companion"
    )
    again.reset(seed=1)
    with pytest.raises(SchemaMismatchError, match="fields differ"):
        again.step(again.action_space.sample())
    with pytest.raises(DatasetError, match="could not start"):  # and it stays refused
        again.step(again.action_space.sample())
    again.close()
    # the dataset is untouched and free for the next writer
    assert not writer_alive(path / "data")
    assert len(open_dataset(path)) == rec.n_episodes


def test_capture_option_is_checked(tmp_path):
    vec = twinloop.make_vec(STEM, 2)
    with pytest.raises(ValueError, match="capture must be one of"):
        RecordVectorEpisodes(vec, tmp_path / "a-v0", capture="thread")
    with pytest.raises(ValueError, match="fsync"):
        RecordVectorEpisodes(vec, tmp_path / "b-v0", capture="companion", fsync=True)
    # auto: the companion for kernel envs, in process when fsync asks for power-loss safety
    assert RecordVectorEpisodes(vec, tmp_path / "c-v0", fsync=True).capture == "inline"
    assert RecordVectorEpisodes(vec, tmp_path / "d-v0").capture == "companion"


def test_progress_and_counts_follow_the_companion(tmp_path):
    seen = []
    rec = RecordVectorEpisodes(
        twinloop.make_vec(STEM, 8),
        tmp_path / "p-v0",
        capture="companion",
        progress=lambda e, s: seen.append((e, s)),
    )
    rec.reset(seed=0)
    rec.action_space.seed(0)
    for _ in range(400):
        rec.step(rec.action_space.sample())
    rec.close()
    ds = open_dataset(tmp_path / "p-v0")
    assert (rec.n_episodes, rec.n_steps) == (len(ds), ds.total_steps)
    assert seen and seen == sorted(seen) and seen[-1][0] <= len(ds)
    # the shared-memory journal is unlinked as soon as both ends have mapped it
    if os.path.isdir("/dev/shm"):
        mine = f"twinloop-capture-{os.getpid()}-"
        assert not [p for p in os.listdir("/dev/shm") if p.startswith(mine)]
