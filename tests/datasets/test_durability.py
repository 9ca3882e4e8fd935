"""Crash safety: a writer killed with SIGKILL at random points keeps every committed episode.

The file still opens (with h5py and with Minari), and appending resumes after the crash.

Writers are real processes (started from a fork server) killed with SIGKILL at random
times; the slow variant runs many more kills. A subprocess test kills a real
``twinloop run --record``.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time

import gymnasium as gym
import h5py
import numpy as np
import pytest

from twinloop.datasets import DatasetWriter, open_dataset, recover_dataset, writer_alive
from twinloop.datasets.schema import FieldSpec

OBS = gym.spaces.Dict(
    {
        "image": gym.spaces.Box(0, 255, (24, 24), np.uint8),
        "state": gym.spaces.Box(-np.inf, np.inf, (4,), np.float32),
    }
)
ACT = gym.spaces.Box(-1, 1, (2,), np.float32)
INFOS = [FieldSpec(path="infos/step", source="info", key=("step",), dtype="<i8", obs_aligned=True)]


def _content(eid: int, steps: int) -> list:
    t = np.arange(steps + 1)
    image = ((eid * 7 + t[:, None, None] + np.arange(24)[None, None, :]) % 256).astype(np.uint8)
    image = np.broadcast_to(image, (steps + 1, 24, 24)).copy()
    state = (eid + t[:, None] / 100 + np.arange(4)).astype(np.float32)
    actions = np.full((steps, 2), (eid % 200) / 200, np.float32)
    rewards = eid * 1000.0 + t[1:]
    term = np.zeros(steps, bool)
    term[-1] = True
    wall = np.linspace(0, 1, steps + 1)
    # field order: observations/image, observations/state, actions, rewards, terminations,
    # truncations, infos/wall_time_s, infos/step
    return [image, state, actions, rewards, term, np.zeros(steps, bool), wall, t]


def _check(ep, eid: int) -> None:
    want = _content(eid, len(ep))
    np.testing.assert_array_equal(ep.observations["image"], want[0])
    np.testing.assert_array_equal(ep.observations["state"], want[1])
    np.testing.assert_array_equal(ep.actions, want[2])
    np.testing.assert_array_equal(ep.rewards, want[3])
    np.testing.assert_array_equal(ep.terminations, want[4])
    np.testing.assert_array_equal(ep.infos["step"], want[7])


def _writer_loop(path: str, seed: int, counter: str) -> None:
    """Append episodes forever; after each commit, store the count in ``counter`` (8 bytes)."""
    fd = os.open(counter, os.O_RDWR | os.O_CREAT, 0o644)
    w = DatasetWriter(
        path, observation_space=OBS, action_space=ACT, mode="append", metadata_interval_s=0.01
    )
    w.begin(INFOS)
    rng = np.random.default_rng(seed)
    while True:
        eid = w.n_episodes
        w.write_fields(_content(eid, int(rng.integers(1, 120))), seed=eid)
        os.pwrite(fd, w.n_episodes.to_bytes(8, "little"), 0)


def _context() -> mp.context.BaseContext:
    # a fork server: children fork from a clean single-threaded process that has imported
    # the writer, so they start in milliseconds and cannot inherit a lock held by a thread
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["twinloop.datasets", __name__])
    return ctx


def _kill_rounds(path, rounds: int, seed: int) -> int:
    ctx = _context()
    rng = np.random.default_rng(seed)
    committed = 0
    counter = path.parent / f".counter-{seed}"
    counter.parent.mkdir(parents=True, exist_ok=True)
    for k in range(rounds):
        counter.write_bytes(bytes(8))
        proc = ctx.Process(target=_writer_loop, args=(str(path), seed * 1000 + k, str(counter)))
        proc.start()
        deadline = time.monotonic() + 60
        while int.from_bytes(counter.read_bytes()[:8], "little") == 0:
            assert proc.is_alive(), f"writer exited with {proc.exitcode} before committing"
            assert time.monotonic() < deadline, "writer made no commit in 60 s"
            time.sleep(0.002)
        time.sleep(float(rng.uniform(0, 0.08)))
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        reported = int.from_bytes(counter.read_bytes()[:8], "little")
        ds = open_dataset(path)
        assert ds.problems == [], ds.problems
        assert len(ds) >= reported >= committed
        committed = len(ds)
        # libhdf5 opens the crashed file and sees the same episodes
        with h5py.File(ds.path, "r") as f:
            assert len([n for n in f if n.startswith("episode_")]) == committed
        ds.close()
    return committed


def _verify_all(path, committed: int) -> None:
    ds = open_dataset(path)
    assert len(ds) == committed and [m["id"] for m in ds.episode_metadata] == list(range(committed))
    for ep in ds:
        _check(ep, ep.id)
    assert ds.writer_state == "interrupted"
    counts = recover_dataset(path)
    assert counts["episodes"] == committed
    meta = json.loads((ds.path.parent / "metadata.json").read_text())
    assert meta["total_episodes"] == committed
    assert meta["total_steps"] == ds.total_steps
    assert open_dataset(path).writer_state == "closed"


def test_sigkill_at_random_points_keeps_every_committed_episode(tmp_path):
    path = tmp_path / "crash" / "kill-v0"
    committed = _kill_rounds(path, rounds=40, seed=1)
    assert committed > 40
    _verify_all(path, committed)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_sigkill_many_rounds(tmp_path):
    path = tmp_path / "crash" / "kill-v1"
    committed = _kill_rounds(path, rounds=150, seed=2)
    _verify_all(path, committed)


def test_minari_reads_a_crashed_capture(tmp_path, monkeypatch):
    minari = pytest.importorskip("minari")
    path = tmp_path / "crash" / "kill-v2"
    committed = _kill_rounds(path, rounds=3, seed=3)
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    ds = minari.load_dataset("crash/kill-v2")  # counts from metadata.json, which may lag
    assert 0 < ds.total_episodes <= committed
    for ep in ds.iterate_episodes():
        np.testing.assert_array_equal(ep.rewards, _content(ep.id, len(ep))[3])
    recover_dataset(path)
    assert minari.load_dataset("crash/kill-v2").total_episodes == committed


def test_killed_cli_capture_opens(tmp_path):
    """A real ``twinloop run --record`` process, killed mid-run."""
    out = tmp_path / "runs"
    cmd = [
        sys.executable,
        "-m",
        "twinloop.cli",
        "run",
        "twinloop/StemSteer-v0",
        "--controller",
        "random",
        "--episodes",
        "100000",
        "--n-envs",
        "8",
        "--record",
        str(out),
        "--dataset-id",
        "cli/killed-v0",
        "--quiet",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    meta = out / "cli" / "killed-v0" / "data" / "metadata.json"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if meta.exists() and len(open_dataset(meta.parent)) >= 30:
            break
        if proc.poll() is not None:
            pytest.fail(proc.stderr.read().decode())
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # the capture companion commits what the run had stepped, then lets go of the dataset
    deadline = time.monotonic() + 60
    while writer_alive(meta.parent) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not writer_alive(meta.parent), "the capture companion did not finish"
    ds = open_dataset(out / "cli" / "killed-v0")
    assert ds.problems == [] and len(ds) > 0
    for ep in ds:
        assert ep.rewards.sum() == pytest.approx(ep.metadata["episode_return"])
        assert ep.terminations[-1] or ep.truncations[-1]
    with h5py.File(ds.path, "r") as f:
        assert len(f) == len(ds)
