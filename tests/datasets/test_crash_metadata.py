"""metadata.json tells the truth after a crash, without a manual ``recover``.

Minari counts a dataset's episodes from metadata.json. An audit killed single-env captures
and Minari then saw 0 of 175 or 344 of 548 episodes until ``twinloop data recover`` ran; a
capture killed before its first episode left a folder that ``data info`` and ``recover``
called "no dataset". Captures here are real processes killed with SIGKILL.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from twinloop.datasets import open_dataset, writer_alive

minari = pytest.importorskip("minari")

_CAPTURE = textwrap.dedent(
    """
    import sys, time
    import twinloop
    from twinloop.datasets import RecordEpisodes
    env = RecordEpisodes(twinloop.make("twinloop/StemSteer-v0"), sys.argv[1],
                         metadata_interval_s=3600.0)
    print("ready", flush=True)
    if sys.argv[2] == "idle":
        time.sleep(600)
    env.action_space.seed(0)
    k = 0
    while True:
        env.reset(seed=k)
        k += 1
        while True:
            _, _, term, trunc, _ = env.step(env.action_space.sample())
            if term or trunc:
                break
        if k == 3:
            print("episodes", flush=True)
    """
)


def _start(path, what: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", _CAPTURE, str(path), what],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready", proc.stderr.read() if proc.stderr else ""
    return proc


def _metadata(path) -> dict:
    return json.loads((path / "data" / "metadata.json").read_text())


def _wait_closed(path, timeout_s: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        meta = _metadata(path)
        if meta["twinloop"]["writer"]["state"] == "closed" and not writer_alive(path / "data"):
            return meta
        time.sleep(0.1)
    raise AssertionError(f"metadata.json never caught up: {_metadata(path)['twinloop']}")


def test_killed_single_env_capture_counts_right_without_recover(tmp_path, monkeypatch):
    path = tmp_path / "ns" / "killed-v0"
    proc = _start(path, "run")
    assert proc.stdout.readline().strip() == "episodes"
    time.sleep(0.5)
    # a long metadata interval: without the watcher metadata.json would still count 0 or so
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    meta = _wait_closed(path)
    ds = open_dataset(path)
    assert meta["total_episodes"] == len(ds) >= 3
    assert meta["total_steps"] == ds.total_steps
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    assert minari.load_dataset("ns/killed-v0").total_episodes == len(ds)


def test_capture_killed_before_its_first_episode(tmp_path):
    path = tmp_path / "ns" / "early-v0"
    proc = _start(path, "idle")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert _metadata(path)["total_episodes"] == 0
    info = subprocess.run(
        [sys.executable, "-m", "twinloop.cli", "data", "info", str(path), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert info.returncode == 0, info.stderr
    summary = json.loads(info.stdout)
    assert summary["episodes"] == 0 and summary["writer_state"] == "interrupted"
    rec = subprocess.run(
        [sys.executable, "-m", "twinloop.cli", "data", "recover", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert rec.returncode == 0, rec.stderr
    assert "0 episodes" in rec.stdout
    assert _metadata(path)["twinloop"]["writer"]["state"] == "closed"
    # the empty capture does not block a new one under the same id
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "twinloop.cli",
            "run",
            "twinloop/StemSteer-v0",
            "--controller",
            "random",
            "--episodes",
            "2",
            "--record",
            str(tmp_path),
            "--dataset-id",
            "ns/early-v0",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert len(open_dataset(path)) == 2


def test_a_clean_close_leaves_the_watcher_nothing_to_do(tmp_path):
    from tests.datasets.conftest import run_episodes, stem_env
    from twinloop.datasets import RecordEpisodes

    rec = RecordEpisodes(stem_env(), tmp_path / "ns" / "clean-v0")
    run_episodes(rec, 2, seed=0)
    watcher = rec.writer._watcher
    assert watcher is not None and watcher.poll() is None
    rec.close()
    assert watcher.wait(timeout=30) == 0
    assert _metadata(tmp_path / "ns" / "clean-v0")["total_episodes"] == 2
