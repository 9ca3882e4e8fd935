"""``twinloop run --backend lerobot --robot MODULE:FACTORY`` reaches the bridge."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("mujoco")

from twinloop.cli import main

ENV_ID = "twinloop/QuadrupedVelocity-v0"
FAKE = "twinloop.hardware.lerobot.fake"


def _args(tmp_path, *extra: str) -> list[str]:
    args = ["run", ENV_ID, "--controller", "stand", "--episodes", "1", "--seed", "5", "--quiet"]
    return [*args, "--set", "max_steps=30", "--json", str(tmp_path / "run.json"), *extra]


def _run(tmp_path, *extra: str) -> dict:
    assert main(_args(tmp_path, *extra)) == 0
    return json.loads((tmp_path / "run.json").read_text())


def test_run_over_the_simulated_lerobot_robot_equals_the_simulator(tmp_path) -> None:
    """The fake runs the sim's own plant behind LeRobot's interface: same seed, same episode."""
    robot = _run(
        tmp_path,
        "--backend", "lerobot",
        "--robot", f"{FAKE}:sim_quadruped",
        "--mapping", f"{FAKE}:sim_quadruped_mapping",
        "--reset-hook", f"{FAKE}:start_sim_episode",
        "--timeout", "2",
    )  # fmt: skip
    sim = _run(tmp_path)
    assert robot["episodes"][0]["steps"] == sim["episodes"][0]["steps"] == 30
    ours, theirs = robot["episodes"][0]["episode_return"], sim["episodes"][0]["episode_return"]
    assert ours == pytest.approx(theirs, rel=1e-9)


def test_robot_options_are_refused_by_a_backend_without_them(tmp_path, capsys) -> None:
    assert main(_args(tmp_path, "--robot", f"{FAKE}:sim_quadruped")) == 2
    assert "--robot: backend 'sim' takes no robot" in capsys.readouterr().err
    assert not (tmp_path / "run.json").exists()
