"""Sim-to-real effects of QuadrupedVelocity-v0.

Draws per reset and per env, distributions, off-switches, and delays that shift the response
by exactly k steps.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("mujoco")

import twinloop
from twinloop.core.config import override
from twinloop.core.rng import STREAM_BACKEND, new_streams, seed_streams
from twinloop.sim.locomotion import effects as E
from twinloop.sim.locomotion import velocity as V
from twinloop.sim.locomotion.velocity_config import QuadrupedVelocityConfig, RandomizationConfig

ENV_ID = "twinloop/QuadrupedVelocity-v0"
#: Every effect off: a nominal plant, exact observations.
_SWITCHES = (
    "friction_enabled",
    "mass_scale_enabled",
    "added_mass_enabled",
    "com_enabled",
    "motor_strength_enabled",
    "motor_offset_enabled",
    "joint_friction_enabled",
    "gains_enabled",
    "push_enabled",
)
OFF = {
    "randomization": dict.fromkeys(_SWITCHES, False),
    "noise": {"enabled": False},
    "latency": {"action_enabled": False, "observation_enabled": False},
}


def _ks_uniform(x: np.ndarray, lo: float, hi: float) -> float:
    """Kolmogorov-Smirnov statistic of ``x`` against U(lo, hi)."""
    u = np.sort((x - lo) / (hi - lo))
    n = u.size
    k = np.arange(1, n + 1)
    return float(max(np.max(k / n - u), np.max(u - (k - 1) / n)))


def test_values_change_across_resets() -> None:
    env = twinloop.make(ENV_ID)
    _, a = env.reset(seed=3)
    _, b = env.reset()
    for name in ("floor_friction", "added_base_mass_kg", "kp_scale", "motor_strength"):
        assert not np.array_equal(a[f"true/{name}"], b[f"true/{name}"]), name
    # ... and the model really carries them
    model = env.backend.physics.model
    assert model.geom_friction[0, 0] == b["true/floor_friction"]


def test_values_differ_across_envs_of_a_vector_env() -> None:
    vec = twinloop.make_vec(ENV_ID, 6)
    _, info = vec.reset(seed=0)
    for name in ("floor_friction", "added_base_mass_kg", "kp_scale"):
        assert len(set(info[f"true/{name}"].tolist())) == 6, name
    assert len({tuple(r) for r in info["true/com_offset_m"]}) == 6
    vec.close()


def test_draws_follow_their_distributions() -> None:
    cfg = RandomizationConfig()
    p = E.randomization_params(cfg)
    n, n_links = 4000, 17
    layout = E.randomization_layout(n_links, 12, 1.0)
    rng = new_streams(1)
    seed_streams(rng, 0, 123)
    out = np.empty((n, layout.size))
    for t in range(n):
        E.draw_randomization(rng, 0, STREAM_BACKEND, p, n_links, out[t])
    g = layout.get
    crit = 1.95 / math.sqrt(n)  # KS critical value at 0.1 %
    cases = [
        (g(out, "floor_friction"), cfg.friction_min, cfg.friction_max),
        (g(out, "added_base_mass_kg"), cfg.added_mass_min_kg, cfg.added_mass_max_kg),
        (g(out, "com_offset_m")[:, 1], -cfg.com_offset_m, cfg.com_offset_m),
        (g(out, "link_mass_scale")[:, 5], cfg.mass_scale_min, cfg.mass_scale_max),
        (g(out, "motor_strength")[:, 11], cfg.motor_strength_min, cfg.motor_strength_max),
        (g(out, "motor_offset_rad")[:, 0], -cfg.motor_offset_rad, cfg.motor_offset_rad),
        (g(out, "joint_friction_scale")[:, 3], cfg.joint_friction_min, cfg.joint_friction_max),
        (g(out, "kd_scale"), cfg.kd_scale_min, cfg.kd_scale_max),
    ]
    for x, lo, hi in cases:
        assert _ks_uniform(x, lo, hi) < crit, (lo, hi)
        assert abs(x.mean() - (lo + hi) / 2) < 4 * (hi - lo) / math.sqrt(12 * n)
    # per-link and per-motor draws are independent of each other
    strength = g(out, "motor_strength")
    assert abs(np.corrcoef(strength[:, 0], strength[:, 1])[0, 1]) < 0.06


def test_integer_delays_are_uniform_over_their_range() -> None:
    rng = new_streams(1)
    seed_streams(rng, 0, 5)
    draws = np.array([E.draw_int(rng, 0, 0, 1, 3) for _ in range(6000)])
    counts = np.bincount(draws, minlength=5)
    assert counts[0] == 0 and counts[4] == 0
    np.testing.assert_allclose(counts[1:4] / 6000, 1 / 3, atol=0.025)


def test_env_resets_follow_the_configured_range() -> None:
    backend = V.QuadrupedSimBackend(
        QuadrupedVelocityConfig(
            randomization=RandomizationConfig(friction_min=0.2, friction_max=0.3)
        )
    )
    backend.reset(seed=0)
    f = [backend.privileged()["floor_friction"]] + [
        (backend.reset(), backend.privileged()["floor_friction"])[1] for _ in range(300)
    ]
    f = np.array(f)
    assert f.min() >= 0.2 and f.max() <= 0.3
    assert _ks_uniform(f, 0.2, 0.3) < 1.95 / math.sqrt(f.size)


def test_off_switches_give_nominal_values() -> None:
    env = twinloop.make(ENV_ID, **OFF)
    _, info = env.reset(seed=9)
    assert info["true/floor_friction"] == 1.0
    np.testing.assert_array_equal(info["true/link_mass_scale"], 1.0)
    np.testing.assert_array_equal(info["true/motor_strength"], 1.0)
    np.testing.assert_array_equal(info["true/motor_offset_rad"], 0.0)
    np.testing.assert_array_equal(info["true/com_offset_m"], 0.0)
    assert info["true/added_base_mass_kg"] == 0.0 and info["true/kp_scale"] == 1.0
    assert info["true/action_delay_steps"] == 0 and info["true/observation_delay_steps"] == 0
    nominal = V.load_model(env.config)
    model = env.backend.physics.model
    np.testing.assert_array_equal(model.body_mass, nominal.body_mass)
    np.testing.assert_array_equal(model.body_ipos, nominal.body_ipos)
    np.testing.assert_array_equal(model.dof_frictionloss, nominal.dof_frictionloss)
    np.testing.assert_array_equal(model.actuator_gainprm[:, 0], env.config.control.kp_nm_per_rad)
    # no noise: the observation's frame is the true measurement
    meas = env.backend.reset(seed=9)
    obs, _ = env.task.reset(meas, 9, None)
    np.testing.assert_allclose(obs[9:21], (meas[:12] - V.DEFAULT_POSE).astype(np.float32))


def test_switching_one_effect_off_leaves_the_other_draws() -> None:
    a = twinloop.make(ENV_ID).reset(seed=4)[1]
    b = twinloop.make(ENV_ID, friction_enabled=False).reset(seed=4)[1]
    assert a["true/floor_friction"] != b["true/floor_friction"] == 1.0
    for name in ("added_base_mass_kg", "motor_strength", "kd_scale", "com_offset_m"):
        np.testing.assert_array_equal(a[f"true/{name}"], b[f"true/{name}"])


def _measurements(env: object, actions: list[np.ndarray], seed: int) -> list[np.ndarray]:
    env.reset(seed=seed)
    out = []
    for act in actions:
        _, _, term, trunc, _ = env.step(act)
        out.append(env.last_measurement.copy())
        assert not (term or trunc)
    return out


@pytest.mark.parametrize("k", [1, 3])
def test_action_delay_shifts_the_response_by_exactly_k_steps(k: int) -> None:
    """Delayed by k == undelayed with the actions shifted k steps (zero action first)."""
    rng = np.random.default_rng(0)
    acts = [rng.uniform(-0.3, 0.3, 12).astype(np.float32) for _ in range(30)]
    zero = np.zeros(12, dtype=np.float32)
    lat = {"action_delay_min_steps": k, "action_delay_max_steps": k, "observation_enabled": False}
    delayed = _measurements(twinloop.make(ENV_ID, latency=lat), acts, seed=1)
    undelayed = twinloop.make(ENV_ID, latency={**lat, "action_enabled": False})
    shifted = _measurements(undelayed, [zero] * k + acts[:-k], seed=1)
    np.testing.assert_array_equal(np.array(delayed), np.array(shifted))
    off_by_one = _measurements(undelayed, [zero] * (k - 1) + acts[: len(acts) - k + 1], seed=1)
    assert not np.array_equal(np.array(delayed), np.array(off_by_one))


def test_observation_delay_shifts_the_observation_by_exactly_k_steps() -> None:
    k = 2
    rng = np.random.default_rng(1)
    acts = [rng.uniform(-0.3, 0.3, 12).astype(np.float32) for _ in range(20)]

    def frames(delay: int) -> np.ndarray:
        lat = {"observation_delay_min_steps": delay, "observation_delay_max_steps": delay}
        env = twinloop.make(ENV_ID, noise={"enabled": False}, latency=lat)
        out = [env.reset(seed=2)[0][: V.FRAME]]
        out += [env.step(a)[0][: V.FRAME] for a in acts]
        return np.array(out)

    plain, late = frames(0), frames(k)
    np.testing.assert_array_equal(late[k:], plain[:-k])
    for t in range(k):
        np.testing.assert_array_equal(late[t], plain[0])  # before: the first frame


def test_history_stacks_previous_entries() -> None:
    env = twinloop.make(ENV_ID, history_steps=3)
    obs = [env.reset(seed=0)[0]]
    act = np.full(12, 0.1, dtype=np.float32)
    for _ in range(3):
        obs.append(env.step(act)[0])
    e = V.ENTRY
    for t in range(1, 4):
        np.testing.assert_array_equal(obs[t][e : 2 * e], obs[t - 1][:e])
        np.testing.assert_array_equal(obs[t][2 * e : 3 * e], obs[t - 1][e : 2 * e])
    np.testing.assert_array_equal(obs[2][V.FRAME : e], act)  # previous action, exact


def test_observation_noise_is_uniform_with_the_channel_scales() -> None:
    env = twinloop.make(ENV_ID, latency={"observation_enabled": False}, level=2.0)
    meas = env.backend.reset(seed=0)
    diffs = []
    for s in range(300):
        obs, _ = env.task.reset(meas, s, None)
        diffs.append(obs[V.FRAME - 12 : V.FRAME] - meas[12:24])  # joint velocities
    d = np.array(diffs, dtype=np.float64).ravel()
    half = 2.0 * 1.5  # level x joint_vel_rad_per_s
    assert np.abs(d).max() <= half * (1 + 1e-6)
    assert _ks_uniform(d, -half, half) < 1.95 / math.sqrt(d.size)


def test_pushes_change_the_trunk_velocity_when_due() -> None:
    push = {"push_interval_s": 0.1, "push_max_m_per_s": 1.0}  # every 5 control steps
    zero = np.zeros(12, dtype=np.float32)
    a = twinloop.make(ENV_ID, randomization=push)
    b = twinloop.make(ENV_ID, randomization={**push, "push_enabled": False})
    ma, mb = _measurements(a, [zero] * 5, 0), _measurements(b, [zero] * 5, 0)
    np.testing.assert_array_equal(np.array(ma[:4]), np.array(mb[:4]))
    jump = np.abs(ma[4][V.M_LINVEL : V.M_LINVEL + 2] - mb[4][V.M_LINVEL : V.M_LINVEL + 2])
    assert jump.max() > 0.05


def _plant(cfg: QuadrupedVelocityConfig, seed: int) -> V.QuadrupedPhysics:
    p = V.QuadrupedPhysics(cfg)
    rng = new_streams(1)
    seed_streams(rng, 0, seed)
    p.reset(rng, 0)
    return p


@pytest.mark.parametrize(("steps", "ms"), [(0, 5.0), (0, 30.0), (1, 10.0), (2, 0.0)])
def test_millisecond_action_delay_switches_the_target_at_the_right_physics_step(
    steps: int, ms: float
) -> None:
    """Control step t's target reaches the motors at physics step ``t n + D``.

    ``D = steps n + ms / sim_dt``: the plant equals a plain loop of ``mj_step`` that switches
    ``ctrl`` at exactly those physics steps, bit for bit.
    """
    lat = {
        "action_delay_min_steps": steps,
        "action_delay_max_steps": steps,
        "action_delay_min_ms": ms,
        "action_delay_max_ms": ms,
        "observation_enabled": False,
    }
    cfg = override(QuadrupedVelocityConfig(), **{**OFF, "latency": lat})
    delayed = _plant(cfg, seed=5)
    n = cfg.control.decimation
    d_sub = steps * n + round(ms / (1000 * cfg.control.sim_dt_s))
    assert delayed.truth()["action_delay_ms"] == pytest.approx(d_sub * 5.0)
    ref = _plant(override(QuadrupedVelocityConfig(), **OFF), seed=5)
    mj = ref._mj
    np.testing.assert_array_equal(ref.data.qpos, delayed.data.qpos)
    rng = np.random.default_rng(3)
    targets = [V.DEFAULT_POSE + rng.uniform(-0.3, 0.3, 12) for _ in range(12)]
    for t, target in enumerate(targets):
        delayed.step(target)
        for k in range(n):
            src = (t * n + k - d_sub) // n  # the control step whose target is on the motors
            ref.data.ctrl[:] = targets[src] if src >= 0 else V.DEFAULT_POSE
            mj.mj_step(ref.model, ref.data)
        mj.mj_forward(ref.model, ref.data)
        np.testing.assert_array_equal(delayed.data.qpos, ref.data.qpos, err_msg=f"step {t}")
        np.testing.assert_array_equal(delayed.data.qvel, ref.data.qvel, err_msg=f"step {t}")


def test_millisecond_delay_is_drawn_per_reset_in_physics_steps_and_reported() -> None:
    lat = {"action_delay_min_ms": 0.0, "action_delay_max_ms": 40.0}
    env = twinloop.make(ENV_ID, latency=lat)
    seen = set()
    for seed in range(40):
        info = env.reset(seed=seed)[1]
        extra = info["true/action_delay_ms"] - 20.0 * info["true/action_delay_steps"]
        assert extra in {0.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0, 35.0, 40.0}
        seen.add(extra)
    assert len(seen) >= 6  # uniform over 9 values: 40 draws miss 4 of them with p < 1e-4
    vec = twinloop.make_vec(ENV_ID, 3, latency=lat)
    _, info = vec.reset(seed=0)
    for i in range(3):
        single = twinloop.make(ENV_ID, latency=lat).reset(seed=i)[1]
        assert info["true/action_delay_ms"][i] == single["true/action_delay_ms"]
    vec.close()


def test_vector_env_equals_single_envs_with_every_effect_and_sub_step_delays() -> None:
    """The batched plant (mujoco.batch) equals N single envs bit for bit.

    With jitter in control steps and physics steps, millisecond delays that split control
    steps, frequent pushes, and resets mid-run.
    """
    over = {
        "latency": {
            "action_delay_min_steps": 0,
            "action_delay_max_steps": 1,
            "action_jitter_steps": 1,
            "action_delay_min_ms": 0.0,
            "action_delay_max_ms": 15.0,
            "action_jitter_ms": 10.0,
        },
        "randomization": {"push_interval_s": 0.06, "push_max_m_per_s": 0.5},
        "max_steps": 25,
    }
    n, steps = 4, 60
    rng = np.random.default_rng(7)
    acts = rng.uniform(-0.5, 0.5, (steps, n, 12)).astype(np.float32)
    vec = twinloop.make_vec(ENV_ID, n, threads=2, **over)
    obs_v = [vec.reset(seed=11)[0]]
    rew_v = []
    for t in range(steps):
        o, r, _, _, _ = vec.step(acts[t])
        obs_v.append(o)
        rew_v.append(r)
    vec.close()
    for i in range(n):
        env = twinloop.make(ENV_ID, **over)
        o, _ = env.reset(seed=11 + i)
        np.testing.assert_array_equal(o, obs_v[0][i])
        for t in range(steps):
            o, r, term, trunc, _ = env.step(acts[t, i])
            assert r == rew_v[t][i], (i, t)
            if term or trunc:
                o, _ = env.reset()
            np.testing.assert_array_equal(o, obs_v[t + 1][i], err_msg=f"env {i} step {t}")
