"""Replay: a simulator replays its own capture bit for bit; a profiled twin diverges."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import twinloop
from twinloop.cli import main
from twinloop.datasets import open_dataset, record
from twinloop.datasets.replay import difference, replay_dataset
from twinloop.datasets.writer import dataset_dir

ID = "twinloop/StemSteer-v0"
FAST = dict(frame_pixels=64, frame_time_s=0.5, max_steps=6)


def _capture(root, env, dataset_id: str, seeds: range) -> object:
    directory = dataset_dir(root, dataset_id)
    env = record(env, directory, dataset_id=dataset_id)
    env.action_space.seed(0)
    for seed in seeds:
        env.reset(seed=seed)
        while True:
            *_, terminated, truncated, _ = env.step(env.action_space.sample())
            if terminated or truncated:
                break
    env.close()
    return directory


def test_difference_is_exact_and_structural() -> None:
    assert difference(np.array([1.0, np.nan]), np.array([1.0, np.nan])) == 0.0
    assert difference(np.array([1.0, 2.0]), np.array([1.0, 2.5])) == 0.5
    assert difference(np.zeros(2), np.zeros(3)) == math.inf
    assert difference({"a": np.ones(2)}, {"a": np.ones(2), "b": 1.0}) == math.inf
    assert difference(np.array([1.0]), np.array([np.nan])) == math.inf


@pytest.mark.parametrize("env_id", [ID, "twinloop/BalloonStationKeeping-v0"])
def test_a_sim_capture_replays_bit_exact_on_sim(tmp_path, env_id: str) -> None:
    directory = _capture(tmp_path, twinloop.make(env_id, max_steps=6), "tt/replay-v0", range(3))
    with open_dataset(directory) as ds:
        results = replay_dataset(ds, lambda: twinloop.make(env_id, max_steps=6))
    assert len(results) == 3
    for r in results:
        assert r.exact, r.to_json()
        assert r.replayed_steps == r.captured_steps > 0
        for q in ("observation", "reward", "applied_command"):
            assert r.max(q) == 0.0


def test_a_replay_on_other_physics_diverges(tmp_path) -> None:
    from twinloop.core.profile import parse_profile

    cfg = twinloop.make_config(ID, max_steps=6)
    directory = _capture(tmp_path, twinloop.make(ID, config=cfg), "tt/replay-v0", range(3))
    profiled = parse_profile("random:2", cfg).apply(cfg)
    with open_dataset(directory) as ds:
        results = replay_dataset(ds, lambda: twinloop.make(ID, config=profiled))
    assert not any(r.exact for r in results)
    assert max(r.max("observation") for r in results) > 0.0


def test_a_replay_on_a_profiled_twin_diverges_and_on_a_nominal_twin_does_not(tmp_path) -> None:
    pytest.importorskip("zmq", reason="the 'microscope' extra is needed")
    from twinloop.core.profile import parse_profile
    from twinloop.hardware.microscope.fake import SimMicroscope
    from twinloop.hardware.microscope.server import MicroscopeServer

    cfg = twinloop.make_config(ID, **FAST)
    twins = {
        name: MicroscopeServer(SimMicroscope(cfg, profile), port=0).start()
        for name, profile in (("nominal", None), ("profiled", parse_profile("random:5", cfg)))
    }
    try:

        def on(name: str):
            return lambda: twinloop.make(ID, backend="remote", address=twins[name].address, **FAST)

        directory = _capture(tmp_path, on("nominal")(), "tt/twin-v0", range(2))
        with open_dataset(directory) as ds:
            again = replay_dataset(ds, on("nominal"))
            other = replay_dataset(ds, on("profiled"))
    finally:
        for twin in twins.values():
            twin.stop()
    assert all(r.exact for r in again), [r.to_json() for r in again]
    assert not any(r.exact for r in other)


def test_the_command_prints_a_table_and_writes_json(tmp_path, capsys) -> None:
    directory = _capture(tmp_path, twinloop.make(ID, max_steps=4), "tt/cli-v0", range(2))
    out = tmp_path / "replay.json"
    args = ["data", "replay", str(directory), "--quiet", "--steps", "--json", str(out)]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "replayed on backend=sim" in text and "first diverges" in text and "step" in text
    payload = json.loads(out.read_text())
    assert payload["env_id"] == ID and len(payload["episodes"]) == 2
    for ep in payload["episodes"]:
        assert ep["exact"] is True
        assert ep["per_step"]["observation"] == [0.0] * ep["captured_steps"]
    assert main(["data", "replay", str(directory), "--quiet", "--episode", "9"]) == 2
    assert "--episode 9 is outside [0, 1]" in capsys.readouterr().err


def test_run_records_a_device_profile_only_when_told(tmp_path) -> None:
    root = tmp_path / "root"
    base = ["run", ID, "--controller", "random", "--episodes", "1", "--quiet"]
    base += ["--set", "max_steps=3", "--record", str(root)]
    assert main([*base, "--dataset-id", "tt/plain-v0"]) == 0
    assert main([*base, "--dataset-id", "tt/told-v0", "--device-profile", "random:4"]) == 0
    plain = json.loads((root / "tt/plain-v0/data/metadata.json").read_text())["twinloop"]
    told = json.loads((root / "tt/told-v0/data/metadata.json").read_text())["twinloop"]
    assert "device_profile" not in plain and "privileged" not in plain
    assert told["device_profile"] == {"name": "random:4"}
    secret = told["privileged"]["device_profile"]
    assert secret["name"] == "random:4"
    from twinloop.core.profile import draw_profile

    want = draw_profile(twinloop.make_config(ID, max_steps=3), 4).values
    assert secret["values"] == pytest.approx(dict(want))
