"""The control-suite envs: episode ends, action bounds, seeding, threads, lazy imports."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import twinloop
from tests.conftest import assert_same

pytest.importorskip("mujoco")

CHEETAH = "twinloop/dmc-cheetah-run-v0"
WALKER = "twinloop/dmc-walker-walk-v0"


def test_truncated_after_dm_controls_1000_steps_never_terminated() -> None:
    env = twinloop.make(CHEETAH)
    env.reset(seed=0)
    env.action_space.seed(0)
    for t in range(1, 1001):
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        assert not terminated
        assert truncated == (t == 1000), f"step {t}"
    with pytest.raises(RuntimeError, match="reset"):
        env.step(env.action_space.sample())


def test_vector_env_truncates_every_env_at_the_limit_and_resets_it() -> None:
    vec = twinloop.make_vec(WALKER, 3, max_steps=7)
    obs, _ = vec.reset(seed=4)
    first = obs.copy()
    for t in range(1, 8):
        obs, _, terminated, truncated, info = vec.step(np.zeros((3, 6)))
        assert not terminated.any()
        assert truncated.all() == (t == 7)
    assert (info["final_obs"][0] != obs[0]).any()  # the returned obs is a new episode's
    assert (obs != first).any()  # drawn from the continuing stream, not the first state


def test_action_outside_the_control_range_names_env_element_value_and_bound() -> None:
    env = twinloop.make(WALKER)
    env.reset(seed=0)
    action = np.zeros(6, dtype=np.float32)
    action[4] = 1.5
    with pytest.raises(ValueError, match=r"dmc-walker-walk-v0.*action\[4\].*left_knee.*1\.5.*1"):
        env.step(action)
    clipped = twinloop.make(WALKER, clip_actions=True)
    clipped.reset(seed=0)
    _, _, _, _, info = clipped.step(action)
    assert info["action_clipped"]
    assert info["applied_command"][4] == 1.0


def test_same_seed_same_episode_other_seed_other_start() -> None:
    def run(seed: int) -> list:
        env = twinloop.make(WALKER)
        out = [env.reset(seed=seed)]
        rng = np.random.default_rng(1)
        for _ in range(20):
            out.append(env.step(rng.uniform(-1, 1, 6).astype(np.float32))[:2])
        return out

    assert_same(run(5), run(5))
    assert not np.array_equal(run(5)[0][0], run(6)[0][0])


def test_vector_env_results_do_not_depend_on_its_thread_count() -> None:
    def run(threads: int) -> list:
        vec = twinloop.make_vec(WALKER, 6, threads=threads, max_steps=15)
        out = [vec.reset(seed=3)[0]]
        rng = np.random.default_rng(2)
        for _ in range(20):
            out.append(vec.step(rng.uniform(-1, 1, (6, 6)))[:4])
        vec.close()
        return out

    assert_same(run(1), run(3))


def test_importing_twinloop_loads_neither_mujoco_nor_dm_control() -> None:
    code = (
        "import sys, twinloop, twinloop.envs; "
        "print(sorted(m for m in ('mujoco', 'dm_control') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_unstable_physics_truncates_with_zero_reward_and_says_so(caplog, capfd) -> None:
    """A bad state (qvel 1e20: MuJoCo warns and resets the data) ends the episode visibly."""
    env = twinloop.make(WALKER)
    env.reset(seed=0)
    _, reward, terminated, truncated, info = env.step(np.zeros(6, dtype=np.float32))
    assert not truncated and not info["physics_unstable"] and reward > 0.0
    env.unwrapped.backend.physics.data.qvel[:] = 1e20
    with caplog.at_level("WARNING", logger="twinloop.sim.locomotion.kernel"):
        obs, reward, terminated, truncated, info = env.step(np.zeros(6, dtype=np.float32))
    assert truncated and not terminated
    assert info["physics_unstable"] is True
    assert reward == 0.0 and info["reward/dmc"] == 0.0
    assert np.isfinite(obs).all()
    assert "simulation is unstable" in caplog.text  # MuJoCo's words, through our logger
    assert "unstable" not in capfd.readouterr().out  # and never printed
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(6, dtype=np.float32))
    env.reset(seed=1)  # a fresh episode is stable again
    assert not env.step(np.zeros(6, dtype=np.float32))[4]["physics_unstable"]


def test_vector_env_truncates_only_the_unstable_row_and_resets_it() -> None:
    vec = twinloop.make_vec(CHEETAH, 3, threads=1)
    vec.reset(seed=0)
    vec.physics.batch.qvel[1] = np.inf
    obs, reward, terminated, truncated, info = vec.step(np.zeros((3, 6)))
    assert truncated.tolist() == [False, True, False] and not terminated.any()
    assert reward[1] == 0.0 and reward[0] != 0.0
    assert info["physics_unstable"].tolist() == [False, False, False]  # live rows' infos
    assert info["final_info"]["physics_unstable"][1]
    assert np.isfinite(obs).all() and np.isfinite(info["final_obs"][1]).all()
    _, _, _, truncated, _ = vec.step(np.zeros((3, 6)))
    assert not truncated.any()  # the row was reset and steps on
    vec.close()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_humanoid_and_quadruped_start_without_contact_as_dm_control_places_them(seed) -> None:
    humanoid = twinloop.make("twinloop/dmc-humanoid-run-v0")
    humanoid.reset(seed=seed)
    assert humanoid.unwrapped.backend.physics.data.ncon == 0
    quadruped = twinloop.make("twinloop/dmc-quadruped-walk-v0")
    quadruped.reset(seed=seed)
    physics = quadruped.unwrapped.backend.physics
    d, mj = physics.data, physics._mj
    quat = d.qpos[3:7].copy()
    assert np.linalg.norm(quat) == pytest.approx(1.0)
    z = d.qpos[2]
    assert d.qpos[0] == d.qpos[1] == 0.0 and d.ncon == 0
    assert z / 0.01 == pytest.approx(round(z / 0.01), abs=1e-9)  # on dm_control's 1 cm grid
    d.qpos[2] = z - 0.01  # the lowest such height: one step down touches the floor
    mj.mj_forward(physics.model, d)
    assert d.ncon > 0
    other = twinloop.make("twinloop/dmc-quadruped-walk-v0")
    other.reset(seed=seed + 10)
    assert not np.allclose(other.unwrapped.backend.physics.data.qpos[3:7], quat)


def test_quadruped_floor_is_sized_per_task_and_unknown_tasks_are_refused() -> None:
    from twinloop.sim.locomotion.kernel import load_model

    walk, run = load_model("quadruped", "walk"), load_model("quadruped", "run")
    assert walk.geom_size[0, 0] == 10.0 and run.geom_size[0, 0] == 100.0
    assert walk.nsensor == run.nsensor and walk.nbody == run.nbody
    with pytest.raises(ValueError, match=r"'escape'.*walk, run"):
        load_model("quadruped", "escape")
