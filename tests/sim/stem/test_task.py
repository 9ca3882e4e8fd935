"""The STEM task: goals, success, reward terms, truncation and action modes."""

from __future__ import annotations

import math

import numpy as np
import pytest

import twinloop
from twinloop.sim.stem import kernel as K
from twinloop.sim.stem.task import snap_to_site

ID = "twinloop/StemSteer-v0"


def _field(env, obs, name):
    return env.unwrapped.task.layout.get(obs, name)


def test_goals_are_lattice_sites_within_the_configured_annulus() -> None:
    env = twinloop.make(
        ID, goal_min_angstrom=4.0, goal_max_angstrom=6.0, detection_noise_angstrom=0.0
    )
    for seed in range(40):
        obs, info = env.reset(seed=seed)
        goal = _field(env, obs, "goal_offset_angstrom").astype(np.float64)
        assert 4.0 - 1e-6 <= np.hypot(*goal) <= 6.0 + 1e-6
        assert info["distance_to_goal_angstrom"] == pytest.approx(np.hypot(*goal), abs=1e-5)
        # the goal is a lattice site: the true goal position is one of the lattice sites
        task = env.unwrapped.task
        gx, gy = task.goal_angstrom
        c, s = (
            env.unwrapped.backend.state.f[0, K.F_COS],
            env.unwrapped.backend.state.f[0, K.F_SIN],
        )
        best = min(
            math.hypot(*(np.array(K.site_xy(i, j, sub, c, s)) - (gx, gy)))
            for i in range(-5, 6)
            for j in range(-5, 6)
            for sub in (0, 1)
        )
        assert best < 1e-9


def test_goal_option_snaps_to_the_nearest_site() -> None:
    env = twinloop.make(ID, detection_noise_angstrom=0.0, randomize_lattice_angle=False)
    obs, _ = env.reset(seed=0, options={"goal_offset_angstrom": (2.40, 0.1)})
    goal = _field(env, obs, "goal_offset_angstrom")
    np.testing.assert_allclose(goal, [2.46, 0.0], atol=1e-5)  # second-shell site along +x
    with pytest.raises(ValueError, match="goal_offset_angstrom"):
        env.reset(seed=0, options={"goal_offset_angstrom": (np.nan, 0.0)})


def test_snap_to_site_finds_both_sublattices() -> None:
    m = np.zeros(K.N_MEAS)
    for k in range(3):
        ux, uy = K.bond_unit(k, 0, 1.0, 0.0)
        m[K.M_NBR + 2 * k], m[K.M_NBR + 2 * k + 1] = K.BOND * ux, K.BOND * uy
    for i in range(-3, 4):
        for j in range(-3, 4):
            for sub in (0, 1):
                x, y = K.site_xy(i, j, sub, 1.0, 0.0)
                sx, sy = snap_to_site(x + 0.3, y - 0.2, 0.0, 0.0, m)
                assert (sx, sy) == pytest.approx((x, y), abs=1e-9)


def test_success_ends_the_episode_with_the_success_reward() -> None:
    """Steer with privileged knowledge (test only): the Si must reach the goal and succeed."""
    env = twinloop.make(
        ID,
        beam_current_na=1.0,
        knockout_ratio_60kv=0.0,
        loss_ratio=0.0,
        goal_min_angstrom=1.4,
        goal_max_angstrom=1.5,
    )
    obs, _ = env.reset(seed=3)
    for _ in range(100):
        nbrs = _field(env, obs, "neighbor_offsets_angstrom")
        goal = _field(env, obs, "goal_offset_angstrom")
        k = np.argmin(((nbrs - goal) ** 2).sum(1))
        target = nbrs[k] * (1 + 0.6 / 1.42)  # the physical optimum, past the C
        obs, reward, term, trunc, info = env.step(np.clip(target, -3, 3))
        if term or trunc:
            break
    assert term and info["is_success"] and info["failure"] == 0
    assert info["reward/success"] == 1.0
    assert reward == pytest.approx(1.0 - 0.01 * info["elapsed_s"] + info["reward/progress"])
    assert info["distance_to_goal_angstrom"] <= 0.71


def test_reward_is_the_sum_of_scaled_terms_and_time_is_microscope_time() -> None:
    env = twinloop.make(ID, reward_progress_per_angstrom=0.5, reward_time_per_s=0.02)
    env.reset(seed=1)
    total_time = 0.0
    for _ in range(20):
        _, reward, term, trunc, info = env.step(env.action_space.sample())
        parts = [info[f"reward/{k}"] for k in ("success", "failure", "time", "progress")]
        assert reward == pytest.approx(sum(parts), abs=1e-12)
        assert info["reward/time"] == pytest.approx(-0.02 * info["elapsed_s"])
        assert info["elapsed_s"] >= 2.0 + 3.0 + 3.0  # settle + dwell + frame
        total_time += info["elapsed_s"]
        assert info["time_s"] == pytest.approx(total_time)
        if term or trunc:
            break


def test_failures_are_terminations_with_the_failure_term() -> None:
    env = twinloop.make(ID, knockout_ratio_60kv=5.0, beam_current_na=2.0)
    env.reset(seed=2)
    for _ in range(100):
        _, _, term, trunc, info = env.step(np.array([1.9, 0.0], np.float32))
        if term or trunc:
            break
    assert term and not trunc
    names = env.metadata["failure_names"]
    assert names[info["failure"]] in ("knockout", "lost", "edge", "out_of_view")
    assert info["reward/failure"] == -1.0 and not info["is_success"]


def test_truncation_at_the_step_limit() -> None:
    env = twinloop.make(ID, max_steps=5, beam_current_na=0.0)
    obs, _ = env.reset(seed=0)
    for t in range(5):
        obs, _, term, trunc, _ = env.step(env.action_space.sample())
        assert _field(env, obs, "time_fraction") == pytest.approx((t + 1) / 5)
    assert trunc and not term
    with pytest.raises(RuntimeError, match="reset"):
        env.step(env.action_space.sample())


def test_absolute_mode_and_dwell_action() -> None:
    env = twinloop.make(ID, action_mode="absolute", action_dwell=True, beam_current_na=0.0)
    assert env.action_space.shape == (3,)
    np.testing.assert_allclose(env.action_space.high, [10, 10, 20])
    env.reset(seed=0)
    _, _, _, _, info = env.step(np.array([4.0, -3.0, 7.5], np.float32))
    np.testing.assert_allclose(info["applied_command"], [4.0, -3.0, 7.5])
    assert info["elapsed_s"] == pytest.approx(2.0 + 7.5 + 3.0)


def test_offset_mode_commands_relative_to_the_measured_si() -> None:
    env = twinloop.make(ID, beam_current_na=0.0)
    obs, _ = env.reset(seed=0)
    si = _field(env, obs, "si_position_angstrom")
    _, _, _, _, info = env.step(np.array([1.0, -2.0], np.float32))
    np.testing.assert_allclose(info["applied_command"][:2], si + np.array([1.0, -2.0]), atol=1e-5)


def test_clip_actions_reports_the_applied_action() -> None:
    env = twinloop.make(ID, clip_actions=True)
    env.reset(seed=0)
    _, _, _, _, info = env.step(np.array([9.0, -9.0], np.float32))
    assert info["action_clipped"]
    np.testing.assert_array_equal(info["applied_action"], [3.0, -3.0])


def test_observations_stay_in_the_space_over_long_random_runs() -> None:
    env = twinloop.make(ID, drift_speed_max_angstrom_per_s=0.5, beam_current_na=0.5, n_holes=2)
    assert "hole_offsets_angstrom" in env.unwrapped.task.layout
    for seed in range(5):
        obs, _ = env.reset(seed=seed)
        assert env.observation_space.contains(obs)
        for _ in range(100):
            obs, _, term, trunc, _ = env.step(env.action_space.sample())
            assert env.observation_space.contains(obs)
            if term or trunc:
                break


def test_goals_exactly_n_hops_away() -> None:
    """goal_hops=h: the goal is h lattice hops away (checked by breadth-first search)."""
    from collections import deque

    env = twinloop.make(ID, goal_hops=5, detection_noise_angstrom=0.0)
    for seed in range(15):
        env.reset(seed=seed)
        b = env.unwrapped.backend
        c, s = b.state.f[0, K.F_COS], b.state.f[0, K.F_SIN]
        goal = env.unwrapped.task.goal_angstrom
        start = (0, 0, 0)
        seen, queue = {start: 0}, deque([start])
        found = None
        while queue:
            site = queue.popleft()
            if np.hypot(*(np.array(K.site_xy(*site, c, s)) - goal)) < 1e-6:
                found = seen[site]
                break
            for k in range(3):
                nxt = K.neighbor_site(*site, k)
                if nxt not in seen and seen[site] < 8:
                    seen[nxt] = seen[site] + 1
                    queue.append(nxt)
        assert found == 5


def test_unused_hole_rows_neither_block_goals_nor_show_offsets() -> None:
    """A hole row with radius 0 (an image backend that has seen fewer holes) is no hole.

    It must not block goals near its (0, 0) placeholder and its observation row stays zero;
    a real hole blocks the sites within its radius plus a bond.
    """
    from twinloop.core.config import override
    from twinloop.sim.stem import task as T
    from twinloop.sim.stem.config import StemConfig

    cfg = override(StemConfig(), n_holes=2)
    tp = T.task_params(cfg)
    m = np.zeros(K.N_MEAS)
    m[K.M_SI : K.M_SI + 2] = (1.0, -2.0)
    m[K.M_FOV] = cfg.microscope.fov_angstrom
    assert not T._blocked(0.5, 0.0, m, 2)
    m[K.M_HOLES : K.M_HOLES + 3] = (8.0, 0.0, 2.5)
    assert T._blocked(8.0 + 2.5 + 1.0, 0.0, m, 2)
    assert not T._blocked(8.0 + 2.5 + 1.6, 0.0, m, 2)
    layout = T.observation_layout(cfg)
    obs = np.zeros(layout.size, dtype=np.float32)
    T.write_observation(m, np.zeros(T.N_T), tp, obs)
    holes = layout.get(obs, "hole_offsets_angstrom")
    np.testing.assert_allclose(holes[0], (7.0, 2.0, 2.5))
    np.testing.assert_array_equal(holes[1], 0.0)
