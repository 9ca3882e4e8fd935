"""Quadruped controllers: ``stand`` holds the robot up, ``trot`` walks it forward.

Every sim-to-real effect is on (the env's defaults: randomised plant, pushes, noise, latency).
Forward progress is measured on the simulator's true state: the trunk's displacement along its
heading at the episode's start.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

pytest.importorskip("mujoco")

import twinloop
from twinloop.cli import main
from twinloop.controllers import CONTROLLERS, make_controller
from twinloop.controllers.classical.locomotion import JOINT_NAMES, Trot
from twinloop.eval.rollout import run_single, run_vector
from twinloop.sim.locomotion import velocity as V

ID = "twinloop/QuadrupedVelocity-v0"
STEPS = 250  # 5 s at 50 Hz
#: A fixed forward command of 0.5 m/s (no lateral velocity, no yaw rate).
FORWARD = {
    "lin_vel_x_min_m_per_s": 0.5,
    "lin_vel_x_max_m_per_s": 0.5,
    "lin_vel_y_min_m_per_s": 0.0,
    "lin_vel_y_max_m_per_s": 0.0,
    "yaw_rate_min_rad_per_s": 0.0,
    "yaw_rate_max_rad_per_s": 0.0,
}


def _episode(env, name: str, seed: int) -> dict[str, float]:
    """One episode of ``STEPS`` steps: forward distance (m), tracking reward, fall, height."""
    obs, _ = env.reset(seed=seed)
    ctrl = make_controller(name, env)
    ctrl.reset(1, np.array([seed]))
    data = env.backend.physics.data
    w, x, y, z = data.qpos[3:7]
    yaw = math.atan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z))
    heading = np.array([math.cos(yaw), math.sin(yaw)])
    start = data.qpos[:2].copy()
    tracking, fell = 0.0, False
    for _ in range(STEPS):
        obs, _, term, trunc, info = env.step(ctrl.act_one(obs))
        tracking += info["reward/tracking_lin_vel"]
        if term or trunc:
            fell = bool(term)
            break
    return {
        "forward_m": float(heading @ (data.qpos[:2] - start)),
        "tracking": tracking,
        "fell": fell,
        "height_m": float(env.last_measurement[V.M_HEIGHT]),
    }


def test_registered() -> None:
    assert {"stand", "trot"} <= set(CONTROLLERS)


def test_stand_keeps_the_robot_up_with_every_effect_on() -> None:
    env = twinloop.make(ID)
    for seed in range(3):
        r = _episode(env, "stand", seed)
        assert not r["fell"], f"seed {seed}: the robot fell while standing"
        assert 0.22 < r["height_m"] < 0.35, f"seed {seed}: trunk height {r['height_m']:.3f} m"
        assert abs(r["forward_m"]) < 0.2, f"seed {seed}: stand drifted {r['forward_m']:.3f} m"


def test_trot_walks_forward_and_tracks_a_forward_command_better_than_stand_and_random() -> None:
    env = twinloop.make(ID, command=FORWARD)
    for seed in range(3):
        trot = _episode(env, "trot", seed)
        stand = _episode(env, "stand", seed)
        rand = _episode(env, "random", seed)
        assert not trot["fell"], f"seed {seed}: the robot fell while trotting"
        assert trot["forward_m"] > 1.0, f"seed {seed}: trot went {trot['forward_m']:.3f} m in 5 s"
        assert trot["forward_m"] > stand["forward_m"] + 1.0
        assert trot["tracking"] > stand["tracking"] + 0.5, (seed, trot, stand)
        assert trot["tracking"] > rand["tracking"] + 0.5, (seed, trot, rand)


def test_trot_moves_diagonal_pairs_in_anti_phase_at_its_frequency() -> None:
    env = twinloop.make(ID)
    ctrl = make_controller("trot", env, frequency_hz=2.0)
    ctrl.reset(1, np.array([0]))
    obs = np.zeros((1, *env.observation_space.shape), dtype=np.float32)
    acts = np.stack([ctrl.act(obs)[0] for _ in range(50)])  # 1 s = 2 strides
    legs = acts.reshape(50, 4, 3)  # FR, FL, RR, RL x hip, thigh, calf
    np.testing.assert_array_equal(legs[:, :, 0], 0.0)  # hips hold the default pose
    np.testing.assert_allclose(legs[:, 0, 1:], legs[:, 3, 1:], atol=1e-6)  # FR = RL
    np.testing.assert_allclose(legs[:, 1, 1:], legs[:, 2, 1:], atol=1e-6)  # FL = RR
    np.testing.assert_allclose(legs[:, 0, 1:], -legs[:, 1, 1:], atol=1e-6)  # anti-phase
    np.testing.assert_allclose(acts[25:], acts[:25], atol=1e-6)  # period 0.5 s = 25 steps
    assert np.abs(legs[:, 0, 1]).max() == pytest.approx(0.25, abs=0.01)  # default amplitude


def test_trot_reset_mask_restarts_only_those_rows() -> None:
    vec = twinloop.make_vec(ID, 2, threads=1)
    ctrl = make_controller("trot", vec)
    assert isinstance(ctrl, Trot)
    obs = np.zeros((2, *vec.single_observation_space.shape), dtype=np.float32)
    ctrl.reset(2, np.array([0, 1]))
    first = ctrl.act(obs)
    for _ in range(6):
        ctrl.act(obs)
    ctrl.reset(2, np.array([0, 5]), np.array([False, True]))
    again = ctrl.act(obs)
    np.testing.assert_array_equal(again[1], first[1])
    assert not np.allclose(again[0], first[0])
    with pytest.raises(ValueError, match="reset for 2 rows, got 3"):
        ctrl.act(np.zeros((3, obs.shape[1]), dtype=np.float32))
    vec.close()


@pytest.mark.parametrize("name", ["stand", "trot"])
def test_single_and_vector_runs_agree(name: str) -> None:
    env = twinloop.make(ID, max_steps=30)
    single = run_single(env, make_controller(name, env), 3, seed=4)
    vec = twinloop.make_vec(ID, 2, max_steps=30, threads=1)
    batched = run_vector(vec, make_controller(name, vec), 3, seed=4)
    vec.close()
    assert single == batched


@pytest.mark.parametrize(
    ("env_id", "message"),
    [
        ("twinloop/dmc-quadruped-walk-v0", "metadata\\['joint_names'\\] == FR_hip"),
        ("twinloop/StemSteer-v0", "works on systems locomotion, not on 'stem'"),
    ],
)
@pytest.mark.parametrize("name", ["stand", "trot"])
def test_controllers_refuse_other_envs(name: str, env_id: str, message: str) -> None:
    env = twinloop.make(env_id)
    with pytest.raises(ValueError, match=message):
        make_controller(name, env)


def test_refuses_an_action_space_that_is_not_the_quadrupeds() -> None:
    import gymnasium as gym

    env = twinloop.make(ID)
    wrong = gym.spaces.Box(-2.0, 2.0, (12,), dtype=np.float32)
    with pytest.raises(ValueError, match=r"shape \(12,\) bounded by \[-1, 1\].*got Box\(-2.0"):
        Trot(env.observation_space, wrong, env.metadata)
    assert tuple(env.metadata["joint_names"]) == JOINT_NAMES


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"frequency_hz": 30.0}, r"frequency_hz = 30.0 must be in \(0, 25\]"),
        ({"frequency_hz": 0.0}, r"frequency_hz = 0.0 must be in \(0, 25\]"),
        ({"thigh_amplitude": 1.5}, r"thigh_amplitude = 1.5 must be in \[0, 1\]"),
        ({"calf_amplitude": -0.1}, r"calf_amplitude = -0.1 must be in \[0, 1\]"),
    ],
)
def test_trot_rejects_bad_gait_parameters(kwargs: dict[str, float], message: str) -> None:
    env = twinloop.make(ID)
    with pytest.raises(ValueError, match=message):
        make_controller("trot", env, **kwargs)


def test_trot_parameters_save_and_load(tmp_path) -> None:
    env = twinloop.make(ID)
    a = make_controller("trot", env, thigh_amplitude=0.3, calf_phase_rad=0.4)
    a.save(tmp_path / "trot.json")
    b = make_controller("trot", env)
    b.load(tmp_path / "trot.json")
    assert b.state_dict() == a.state_dict()
    with pytest.raises(ValueError, match="must be frequency_hz"):
        b.load_state_dict({"frequency_hz": 2.0})


@pytest.mark.parametrize("name", ["stand", "trot"])
def test_cli_runs_both(name: str, tmp_path, capsys) -> None:
    out = tmp_path / "run.json"
    args = ["run", ID, "--controller", name, "--episodes", "2", "--quiet", "--json", str(out)]
    assert main(args) == 0
    result = json.loads(out.read_text())
    assert result["summary"]["episodes"] == 2
