"""Evidence that the agents learn: clearly better than random on tiny tasks, on CPU.

CartPole (Gymnasium's classic-control task) checks the value-based agents, and a point that
must be steered to the origin through a Box action with bounds [-0.2, 0.2] checks PPO's
continuous policy. Each trained agent is judged greedily through its saved checkpoint
(:class:`AgentController`, NumPy only) against the random controller on the same seeds.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("jax", reason="the 'learn' extra (jax, optax) trains agents")

from twinloop.controllers.classical.random import RandomController
from twinloop.controllers.rl.controller import AgentController
from twinloop.controllers.rl.train import train
from twinloop.eval.rollout import run_single

from .tasks import CartPoleTeacher, PointToOrigin, cartpole_vec, point_vec

#: Settings for CartPole within 10k env steps (a small net, fast target copies, n = 3).
CARTPOLE = {
    "hidden": (64, 64),
    "lr": 1e-3,
    "replay_ratio": 0.5,
    "learning_starts": 500,
    "target_update_period": 100,
    "eps_decay_fraction": 0.2,
    "n_step": 3,
}


def _greedy_and_random(run_dir, env, episodes: int = 10) -> tuple[float, float]:
    agent = AgentController(env.observation_space, env.action_space, {}, path=run_dir)
    rand = RandomController(env.observation_space, env.action_space, {})
    mean = [
        np.mean([r.episode_return for r in run_single(env, c, episodes, 1000)])
        for c in (agent, rand)
    ]
    return float(mean[0]), float(mean[1])


def _cartpole():
    import gymnasium as gym

    return gym.make("CartPole-v1")


@pytest.mark.parametrize(
    ("agent", "extra", "factor"),
    [("dqn", {}, 2.5), ("qr-dqn", {"double_q": True}, 4.0)],
)
def test_value_agents_learn_cartpole(tmp_path, agent, extra, factor) -> None:
    train(cartpole_vec(4), agent, 10_000, 0, tmp_path, overrides={**CARTPOLE, **extra},
          checkpoint_every=10_000)  # fmt: skip
    learned, random = _greedy_and_random(tmp_path, _cartpole())
    assert learned > factor * random, (learned, random)


def test_ppo_learns_a_continuous_box_task(tmp_path) -> None:
    train(point_vec(8), "ppo", 6_000, 0, tmp_path, overrides={"n_steps": 32},
          checkpoint_every=10_000)  # fmt: skip
    learned, random = _greedy_and_random(tmp_path, PointToOrigin(), episodes=20)
    # returns are negative: the agent loses under half what random actions lose
    assert learned > 0.5 * random, (learned, random)


@pytest.mark.slow
def test_ppo_learns_cartpole_with_discrete_actions(tmp_path) -> None:
    train(cartpole_vec(8), "ppo", 60_000, 0, tmp_path, overrides={"ent_coef": 0.01},
          checkpoint_every=60_000)  # fmt: skip
    learned, random = _greedy_and_random(tmp_path, _cartpole())
    assert learned > 5 * random, (learned, random)


@pytest.mark.slow
def test_qr_dqn_with_an_ema_target_learns_cartpole(tmp_path) -> None:
    overrides = {**CARTPOLE, "double_q": True, "target_ema_tau": 0.01}
    train(cartpole_vec(4), "qr-dqn", 10_000, 0, tmp_path, overrides=overrides,
          checkpoint_every=10_000)  # fmt: skip
    learned, random = _greedy_and_random(tmp_path, _cartpole())
    assert learned > 4 * random, (learned, random)


@pytest.mark.slow
@pytest.mark.parametrize("agent", ["dqn", "qr-dqn"])
def test_value_agents_with_a_simplicial_embedding_learn_cartpole(tmp_path, agent) -> None:
    """16 simplices of 8 (tau 1): the first slice's SEM collapsed to a constant action here."""
    overrides = {**CARTPOLE, "double_q": True, "sem_simplices": 16, "sem_dim": 8}
    train(cartpole_vec(4), agent, 10_000, 0, tmp_path, overrides=overrides,
          checkpoint_every=10_000)  # fmt: skip
    learned, random = _greedy_and_random(tmp_path, _cartpole())
    assert learned > 3 * random, (learned, random)


@pytest.mark.slow
def test_a_reincarnated_student_beats_tabula_rasa_at_equal_env_steps(tmp_path) -> None:
    """QDagger on CartPole: 5 captured teacher episodes, 1000 offline updates, 2000 env steps.

    What it shows: at the same small number of env steps the student started from the
    teacher acts far better than the same agent from scratch. It does not show that the
    student outgrows the teacher (this teacher already holds the pole for 500 steps).
    """
    from twinloop.controllers.rl.cli import capture_teacher
    from twinloop.datasets import open_dataset

    env = _cartpole()
    path = capture_teacher(env, CartPoleTeacher(env.observation_space, env.action_space),
                           tmp_path / "data", 5, 100)  # fmt: skip
    with open_dataset(path) as dataset:
        data = list(dataset)
    assert len(data) == 5
    overrides = {**CARTPOLE, "double_q": True, "learning_starts": 200,
                 "pretrain_updates": 1000, "distill_updates": 1000}  # fmt: skip
    env = _cartpole()
    teacher = CartPoleTeacher(env.observation_space, env.action_space)
    train(cartpole_vec(4), "qr-dqn", 2000, 0, tmp_path / "student", overrides=overrides,
          checkpoint_every=2000, teacher=teacher, teacher_data=data)  # fmt: skip
    train(cartpole_vec(4), "qr-dqn", 2000, 0, tmp_path / "scratch", overrides=overrides,
          checkpoint_every=2000)  # fmt: skip
    student, random = _greedy_and_random(tmp_path / "student", _cartpole())
    scratch, _ = _greedy_and_random(tmp_path / "scratch", _cartpole())
    assert student > 2 * scratch and student > 10 * random, (student, scratch, random)
