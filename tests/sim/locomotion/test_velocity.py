"""QuadrupedVelocity-v0: the Go1 model's published facts, the PD loop, commands, rewards, falls."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("mujoco")

import twinloop
from twinloop.sim.locomotion import velocity as V
from twinloop.sim.locomotion.velocity_config import QuadrupedVelocityConfig

ENV_ID = "twinloop/QuadrupedVelocity-v0"


def test_model_has_go1_published_dimensions_and_limits() -> None:
    m = V.load_model(QuadrupedVelocityConfig())
    assert m.nu == 12 and m.nv == 18
    assert sum(m.body_mass) == pytest.approx(12.01, abs=0.02)  # unitree_ros go1.urdf
    trunk = m.geom("trunk")
    np.testing.assert_allclose(2 * trunk.size, [0.3762, 0.0935, 0.114])
    np.testing.assert_allclose(np.abs(m.body("FL_thigh").pos), [0, 0.08, 0])
    np.testing.assert_allclose(m.body("FL_calf").pos, [0, 0, -0.213])
    np.testing.assert_allclose(m.body("FL_foot").pos, [0, 0, -0.213])
    limits = m.actuator_forcerange[:, 1].reshape(4, 3)
    np.testing.assert_array_equal(limits, [[23.7, 23.7, 35.55]] * 4)
    low, high = V.joint_limits()
    np.testing.assert_allclose(low[:3], [-1.0472, -0.6632, -2.7227])
    np.testing.assert_allclose(high[:3], [1.0472, 2.9671, -0.8378])


def test_policy_runs_at_50_hz_over_a_200_hz_pd_loop() -> None:
    env = twinloop.make(ENV_ID)
    assert env.metadata["control_timestep_s"] == pytest.approx(0.02)
    assert env.metadata["n_sub_steps"] == 4
    env.reset(seed=0)
    data = env.backend.physics.data
    assert env.backend.physics.model.opt.timestep == 0.005
    env.step(np.zeros(12, dtype=np.float32))
    assert data.time == pytest.approx(0.02)


def test_actions_are_clipped_joint_targets_around_the_default_pose() -> None:
    env = twinloop.make(ENV_ID, action_scale_rad=1.0)
    env.reset(seed=0)
    act = np.zeros(12, dtype=np.float32)
    act[0], act[2] = 0.5, 1.0  # hip: inside its range; calf: -1.5 + 1.0 > -0.8378, clipped
    info = env.step(act)[4]
    want = V.DEFAULT_POSE.copy()
    want[0] += 0.5
    want[2] = -0.8378
    np.testing.assert_allclose(info["applied_command"], want)
    assert not info["command_clipped"]


def test_standing_with_zero_action_keeps_the_robot_up() -> None:
    env = twinloop.make(ENV_ID)  # every sim-to-real effect on (defaults)
    for seed in range(3):
        env.reset(seed=seed)
        for _ in range(150):
            _, _, term, _, _ = env.step(np.zeros(12, dtype=np.float32))
            assert not term
        height = env.last_measurement[V.M_HEIGHT]
        assert 0.22 < height < 0.35


def test_commands_are_drawn_per_episode_within_the_ranges() -> None:
    env = twinloop.make(ENV_ID)
    cmds = np.array([env.reset(seed=s)[0][-3:] for s in range(50)])
    assert len({tuple(c) for c in cmds}) == 50
    assert np.all(np.abs(cmds) <= 1.0)
    fixed = twinloop.make(
        ENV_ID,
        command={
            "lin_vel_x_min_m_per_s": 0.5,
            "lin_vel_x_max_m_per_s": 0.5,
            "lin_vel_y_min_m_per_s": 0.0,
            "lin_vel_y_max_m_per_s": 0.0,
            "yaw_rate_min_rad_per_s": -0.2,
            "yaw_rate_max_rad_per_s": -0.2,
        },
    )
    np.testing.assert_array_equal(fixed.reset(seed=1)[0][-3:], np.float32([0.5, 0.0, -0.2]))


def test_reward_is_the_sum_of_logged_weighted_terms() -> None:
    env = twinloop.make(ENV_ID)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(20):
        _, reward, _, _, info = env.step(rng.uniform(-0.2, 0.2, 12).astype(np.float32))
        parts = {k: v for k, v in info.items() if k.startswith("reward/")}
        assert set(parts) == {f"reward/{k}" for k in V.REWARD_TERMS}
        assert reward == pytest.approx(sum(parts.values()), rel=1e-12, abs=1e-15)
    assert env.task.reward_scales["tracking_lin_vel"] == pytest.approx(1.0 * 0.02)
    assert env.task.reward_scales["torques"] == pytest.approx(-2e-4 * 0.02)


def _one_step(meas: np.ndarray, cmd: tuple[float, float, float], act: np.ndarray) -> tuple:
    cfg = QuadrupedVelocityConfig()
    ta = V.task_arrays(cfg, 1)
    ta.ts[0, V.TS_CMD : V.TS_CMD + 3] = cmd
    rng = np.zeros((1, 3, 2), dtype=np.uint64)
    obs = np.zeros((1, V.observation_layout(cfg).size), dtype=np.float32)
    terms, reward, term = np.zeros((1, V.N_TERMS)), np.zeros(1), np.zeros(1, dtype=np.bool_)
    V.task_step_batch(meas[None], act[None], ta, rng, obs, terms, reward, term)
    return dict(zip(V.REWARD_TERMS, terms[0], strict=True)), bool(term[0])


def _upright(**values: float) -> np.ndarray:
    m = np.zeros(V.N_MEAS)
    m[V.M_GRAV + 2] = -1.0
    m[V.M_HEIGHT] = 0.28
    for k, v in values.items():
        m[getattr(V, k)] = v
    return m


def test_reward_terms_from_a_known_state() -> None:
    m = _upright(M_LINVEL=0.5, M_GYRO=0.1)  # v_x 0.5 m/s, w_x 0.1 rad/s
    m[V.M_TAU : V.M_TAU + 12] = 2.0
    terms, fell = _one_step(m, (0.5, 0.0, 0.0), np.full(12, 0.5))
    assert not fell
    assert terms["tracking_lin_vel"] == 1.0  # exactly on the command
    assert terms["tracking_ang_vel"] == 1.0
    assert terms["ang_vel_xy"] == pytest.approx(0.01)
    assert terms["torques"] == pytest.approx(48.0)
    assert terms["action_rate"] == pytest.approx(3.0)
    off, _ = _one_step(_upright(), (0.5, 0.0, 0.0), np.zeros(12))
    assert off["tracking_lin_vel"] == pytest.approx(np.exp(-0.25 / 0.25))


def test_tracking_errors_are_the_episode_mean_distance_from_the_command() -> None:
    """The episode metrics: mean |v_cmd - v| in the plane and mean |w_cmd - w_z|, true values."""
    cfg = QuadrupedVelocityConfig()
    ta = V.task_arrays(cfg, 1)
    ta.ts[0, V.TS_CMD : V.TS_CMD + 3] = (0.5, 0.0, 0.2)
    rng = np.zeros((1, 3, 2), dtype=np.uint64)
    obs = np.zeros((1, V.observation_layout(cfg).size), dtype=np.float32)
    terms, reward, term = np.zeros((1, V.N_TERMS)), np.zeros(1), np.zeros(1, dtype=np.bool_)
    for vx, vy, wz in ((0.5, 0.0, 0.2), (0.2, 0.4, 0.0)):  # on the command, then off by 0.5
        m = _upright(M_LINVEL=vx)
        m[V.M_LINVEL + 1], m[V.M_GYRO + 2] = vy, wz
        V.task_step_batch(m[None], np.zeros((1, 12)), ta, rng, obs, terms, reward, term)
    np.testing.assert_allclose(V.tracking_errors(ta.ts)[0], [0.25, 0.1])


def test_tracking_errors_reach_run_results_and_agree_between_single_and_vector_envs() -> None:
    from twinloop.controllers import make_controller
    from twinloop.eval.rollout import run_single, run_vector

    single = twinloop.make(ENV_ID, max_steps=30)
    vec = twinloop.make_vec(ENV_ID, 2, max_steps=30)
    try:
        a = run_single(single, make_controller("stand", single), 2, 4)
        b = run_vector(vec, make_controller("stand", vec), 2, 4)
    finally:
        single.close()
        vec.close()
    for ra, rb in zip(a, sorted(b, key=lambda r: r.episode), strict=True):
        assert set(ra.metrics) == set(V.TRACKING_METRICS)
        assert ra.metrics == pytest.approx(rb.metrics, rel=1e-9)
        assert ra.metrics["lin_vel_error_m_per_s"] > 0.0  # a standing robot misses the command


def test_falls_terminate() -> None:
    on_side = _upright()
    on_side[V.M_GRAV + 1], on_side[V.M_GRAV + 2] = -1.0, 0.0
    assert _one_step(on_side, (0, 0, 0), np.zeros(12))[1]
    trunk_down = _upright(M_TRUNK=1.0)
    assert _one_step(trunk_down, (0, 0, 0), np.zeros(12))[1]
    assert not _one_step(_upright(), (0, 0, 0), np.zeros(12))[1]


def test_a_collapse_terminates_the_episode() -> None:
    env = twinloop.make(ENV_ID)
    env.reset(seed=0)
    act = np.tile(np.float32([0.0, 1.0, 1.0]), 4)  # thighs forward, knees straight: it falls
    act[0::3] = np.float32([-1.0, 1.0, -1.0, 1.0])
    for t in range(200):
        _, _, term, trunc, _ = env.step(act if t % 10 < 5 else -act)
        if term:
            break
    assert term and not trunc
