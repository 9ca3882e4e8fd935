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

from .tasks import PointToOrigin, cartpole_vec, point_vec

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
