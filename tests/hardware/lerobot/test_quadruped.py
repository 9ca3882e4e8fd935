"""``QuadrupedVelocity-v0`` through the LeRobot bridge, on the simulator behind LeRobot's interface.

Parity with ``sim``, NaN for what a robot lacks, the robot's clipping in the captures, faults
mid-episode, and ``make(backend="lerobot")``.

The robot is :class:`~twinloop.hardware.lerobot.fake.SimQuadrupedRobot`: the ``sim`` backend's
physics behind LeRobot's interface, so with every quantity mapped an episode through the bridge
must equal the ``sim`` backend's from the same seed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

pytest.importorskip("mujoco", reason="the 'locomotion' extra is needed")

import twinloop
from twinloop.core.backend import BackendFault
from twinloop.hardware.lerobot import make_lerobot_backend
from twinloop.hardware.lerobot.backend import LeRobotBackend, LeRobotConfig
from twinloop.hardware.lerobot.fake import Fault, SimQuadrupedRobot
from twinloop.hardware.lerobot.protocol import MappingError
from twinloop.hardware.lerobot.quadruped import quadruped_mapping
from twinloop.sim.locomotion.velocity import ENV_ID, make_env, observation_layout

FAST = {"pace": False, "timeout_s": 2.0}


def _start(robot: Any, seed: int | None) -> None:
    robot.start_episode(seed)


def _bridge(robot: SimQuadrupedRobot, mapping: Any = None, **config: Any) -> LeRobotBackend:
    cfg = LeRobotConfig(control_dt_s=robot.cfg.control_dt_s, **{**FAST, **config})
    return LeRobotBackend(robot, config=cfg, mapping=mapping or robot.mapping(), reset_hook=_start)


def _actions(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-0.35, 0.35, (n, 12)).astype(np.float32)


@pytest.mark.parametrize("degrees", [False, True])
def test_an_episode_through_the_bridge_equals_the_sim_backend(degrees: bool) -> None:
    cfg = twinloop.make_config(ENV_ID)
    sim = twinloop.make(ENV_ID)
    robot = SimQuadrupedRobot(cfg, degrees=degrees)
    env = make_env(cfg, backend=_bridge(robot))
    try:
        o_sim, _ = sim.reset(seed=5)
        o_bri, _ = env.reset(seed=5)
        np.testing.assert_array_equal(o_bri, o_sim)
        steps = 0
        for a in _actions(120, 5):
            s, r = sim.step(a), env.step(a)
            steps += 1
            if degrees:  # the measurement goes through degrees and back: equal to rounding
                np.testing.assert_allclose(r[0], s[0], rtol=0, atol=1e-6)
                assert r[1] == pytest.approx(s[1], abs=1e-9)
            else:
                np.testing.assert_array_equal(r[0], s[0])
                assert r[1] == s[1]
            np.testing.assert_array_equal(r[4]["applied_command"], s[4]["applied_command"])
            assert not r[4]["command_clipped"]
            assert (r[2], r[3]) == (s[2], s[3])
            if s[2] or s[3]:
                break
        assert steps >= 20
        assert robot.episodes == 2  # constructed in episode 0, then the reset hook's
    finally:
        env.close()
        sim.close()
    assert not robot.is_connected


def test_the_default_mapping_leaves_unmeasured_quantities_nan_never_zero() -> None:
    cfg = twinloop.make_config(ENV_ID)
    robot = SimQuadrupedRobot(cfg)
    read = {f"{j}.pos" for j in robot.joint_names}
    mapping = quadruped_mapping(ignore=tuple(sorted(set(robot.observation_features) - read)))
    env = make_env(cfg, backend=_bridge(robot, mapping))
    layout = observation_layout(cfg)
    try:
        obs, _ = env.reset(seed=2)
        m0 = env.unwrapped.last_measurement
        assert np.isnan(layout.get(obs, "lin_vel_m_per_s")).all()
        assert np.isnan(layout.get(obs, "gravity")).all()
        np.testing.assert_array_equal(m0[12:24], 0.0)  # declared: at rest at reset
        obs, _reward, term, _trunc, info = env.step(_actions(1, 0)[0])
        m1 = env.unwrapped.last_measurement
        # joint velocities: the finite difference of what the robot reported
        np.testing.assert_allclose(m1[12:24], (m1[0:12] - m0[0:12]) / cfg.control_dt_s)
        assert np.isfinite(layout.get(obs, "joint_pos_rad")).all()
        assert np.isnan(info["reward/tracking_lin_vel"])  # it reads the unmeasured velocity
        assert np.isfinite(info["reward/action_rate"])
        assert not term
    finally:
        env.close()
    text = "\n".join(mapping.describe())
    assert "foot_contact <- unavailable, filled with nan (no foot contact sensors)" in text
    assert "joint_vel_rad_per_s <- finite difference of joint_pos_rad (at reset: 0)" in text


def test_the_robots_clipping_shows_in_the_applied_command() -> None:
    cfg = twinloop.make_config(ENV_ID)
    cap = 0.01  # rad per action, around the present position (LeRobot's max_relative_target)
    robot = SimQuadrupedRobot(cfg, max_relative_target=cap)
    env = make_env(cfg, backend=_bridge(robot))
    try:
        env.reset(seed=1)
        q_before = env.unwrapped.last_measurement[0:12].copy()
        _, _, _, _, info = env.step(np.ones(12, dtype=np.float32))
        applied = info["applied_command"]
        requested, sent = robot.actions[-1]
        assert info["command_clipped"]
        np.testing.assert_array_equal(applied, [sent[k] for k in robot.keys])
        assert np.abs(applied - q_before).max() <= cap + 1e-12
        assert np.abs(np.array([requested[k] for k in robot.keys]) - q_before).max() > 0.1
        assert set(env.unwrapped.backend.last_clipped) == set(robot.keys)
    finally:
        env.close()


def test_a_fault_mid_episode_ends_it_in_the_hold_pose_and_close_disconnects() -> None:
    cfg = twinloop.make_config(ENV_ID)
    robot = SimQuadrupedRobot(cfg)
    env = make_env(cfg, backend=_bridge(robot))
    env.reset(seed=3)
    for a in _actions(5, 3):
        env.step(a)
    q_last = env.unwrapped.last_measurement[0:12].copy()
    robot.inject(Fault("send_action", "raise", error=OSError("Incorrect status packet")))
    with pytest.raises(BackendFault, match="send_action failed: OSError: Incorrect status"):
        env.step(_actions(1, 9)[0])
    hold, _sent = robot.actions[-1]
    np.testing.assert_array_equal([hold[k] for k in robot.keys], q_last)
    with pytest.raises(RuntimeError, match="call reset"):
        env.step(_actions(1, 9)[0])
    env.close()
    assert not robot.is_connected
    assert robot.calls[-1] == "disconnect"


# --- make(..., backend="lerobot") ----------------------------------------------------------------
def test_make_routes_the_robot_and_its_mapping_by_name_or_object() -> None:
    env = twinloop.make(
        ENV_ID,
        backend="lerobot",
        robot="twinloop.hardware.lerobot.fake:sim_quadruped",
        mapping="twinloop.hardware.lerobot.fake:sim_quadruped_mapping",
        reset_hook="twinloop.hardware.lerobot.fake:start_sim_episode",
        pace=False,
        timeout_s=2.0,
    )
    try:
        sim = twinloop.make(ENV_ID)
        np.testing.assert_array_equal(env.reset(seed=4)[0], sim.reset(seed=4)[0])
        a = _actions(1, 4)[0]
        np.testing.assert_array_equal(env.step(a)[0], sim.step(a)[0])
        sim.close()
        assert env.unwrapped.backend.identity()["robot_type"] == "twinloop_sim_quadruped"
        assert env.unwrapped.backend.config.control_dt_s == env.unwrapped.config.control_dt_s
    finally:
        env.close()
    with pytest.raises(ValueError, match="needs robot="):
        twinloop.make(ENV_ID, backend="lerobot")


def test_the_factory_refuses_a_safe_pose_of_the_wrong_size() -> None:
    cfg = twinloop.make_config(ENV_ID)
    with pytest.raises(MappingError, match="safe_pose has 2 entries; the command has 12"):
        make_lerobot_backend(cfg, robot=object(), safe_pose=(0.0, 0.0))
