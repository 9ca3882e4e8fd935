"""The value-based family, built up by flags in the order the papers added them.

* DQN (Mnih et al. 2015, Nature): epsilon-greedy exploration, uniform replay, a target
  network copied every ``target_update_period`` updates, Huber TD loss.
* n-step returns (``n_step``; Sutton 1988, used by Rainbow, Hessel et al. 2018).
* Double Q-learning (``double_q``; van Hasselt et al. 2016): the online network picks the
  next action, the target network values it.
* Distributional RL by quantile regression (``quantiles > 0``; QR-DQN, Dabney et al. 2018):
  ``N`` quantiles per action at fractions ``(2i + 1) / 2N`` trained with the quantile Huber
  loss; the agent acts on their mean. The paper uses ``N = 200``; the ``qr-dqn`` preset uses
  32 to fit a CPU. The Balloon Learning Environment's published agent (Bellemare et al.
  2020) is of this family.
* Target network by EMA (``target_ema_tau > 0``, replacing the periodic copy; BBF,
  Schwarzer et al. 2023).
* Replay ratio (``replay_ratio``): gradient updates per env step (DQN's 1 update per 4
  steps is 0.25), across all rows of the vector env.

The math is :func:`td_loss` and :func:`make_update` (pure, jitted); :class:`DQNAgent` holds
the arrays and the replay buffer between calls.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import optax

from twinloop.controllers.rl.agent import Agent, AgentConfig, Arrays, Json
from twinloop.controllers.rl.losses import (
    ema_update,
    huber,
    quantile_fractions,
    quantile_huber_loss,
)
from twinloop.controllers.rl.networks import Params
from twinloop.controllers.rl.policy import PolicySpec, greedy, head_apply, policy_init
from twinloop.controllers.rl.replay import ReplayBuffer
from twinloop.core.config import cross_check, param


@dataclasses.dataclass(frozen=True, kw_only=True)
class DQNConfig(AgentConfig):
    """Settings of the value-based agents (the defaults are ``dqn``'s)."""

    lr: float = param(5e-4, gt=0.0, le=1.0, doc="Adam learning rate")
    adam_eps: float = param(
        1.5e-4, gt=0.0, le=1.0, doc="Adam epsilon (1.5e-4 as in Rainbow, Hessel et al. 2018)"
    )
    quantiles: int = param(0, ge=0, le=1024, doc="quantiles per action (0: expected-value DQN)")
    kappa: float = param(1.0, gt=0.0, doc="Huber threshold of the (quantile) TD loss")
    n_step: int = param(1, ge=1, le=100, doc="steps of the n-step return")
    double_q: bool = param(False, doc="double Q-learning: the online net picks the next action")
    target_update_period: int = param(
        500, ge=1, doc="updates between hard copies to the target net (unless target_ema_tau > 0)"
    )
    target_ema_tau: float = param(
        0.0, ge=0.0, le=1.0, doc="EMA rate of the target net per update (0: hard copies)"
    )
    replay_ratio: float = param(0.25, gt=0.0, le=64.0, doc="gradient updates per env step")
    buffer_size: int = param(50_000, ge=1, doc="replay capacity in transitions (all rows)")
    batch_size: int = param(64, ge=1, le=65536, doc="transitions per gradient update")
    learning_starts: int = param(1000, ge=0, doc="env steps of pure exploration before learning")
    eps_start: float = param(1.0, ge=0.0, le=1.0, doc="initial exploration epsilon")
    eps_end: float = param(0.05, ge=0.0, le=1.0, doc="final exploration epsilon")
    eps_decay_fraction: float = param(
        0.25, gt=0.0, le=1.0, doc="fraction of the run over which epsilon decays linearly"
    )

    @cross_check
    def _buffer_holds_a_batch(self) -> str | None:
        if self.buffer_size < self.batch_size:
            return f"buffer_size={self.buffer_size} is below batch_size={self.batch_size}"
        return None


def q_values(params: Params, spec: PolicySpec, obs: jax.Array) -> jax.Array:
    """``(B, A)`` action values, or ``(B, A, N)`` quantiles when ``spec.quantiles``."""
    out = head_apply(jnp, params, spec, obs)
    if spec.quantiles:
        return out.reshape(out.shape[0], spec.n_actions, spec.quantiles)
    return out


def td_loss(
    params: Params,
    target: Params,
    batch: dict[str, jax.Array],
    spec: PolicySpec,
    double_q: bool,
    kappa: float,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """TD loss of a batch of n-step transitions (see the module docstring).

    ``batch`` holds ``obs``, ``action``, ``returns``, ``discount`` and ``next_obs`` (as
    :meth:`ReplayBuffer.sample` gives them, observations normalised).
    """
    rows = jnp.arange(batch["action"].shape[0])
    q = q_values(params, spec, batch["obs"])[rows, batch["action"]]  # (B,) or (B, N)
    q_next_target = q_values(target, spec, batch["next_obs"])
    chooser = q_values(params, spec, batch["next_obs"]) if double_q else q_next_target
    if spec.quantiles:
        a_next = jnp.argmax(chooser.mean(axis=-1), axis=-1)
        z_next = q_next_target[rows, a_next]  # (B, N)
        z = batch["returns"][:, None] + batch["discount"][:, None] * z_next
        z = jax.lax.stop_gradient(z)
        loss = quantile_huber_loss(q, z, quantile_fractions(spec.quantiles), kappa)
        q_mean = q.mean()
    else:
        a_next = jnp.argmax(chooser, axis=-1)
        y = batch["returns"] + batch["discount"] * q_next_target[rows, a_next]
        loss = huber(q - jax.lax.stop_gradient(y), kappa).mean()
        q_mean = q.mean()
    return loss, {"loss": loss, "q_mean": q_mean}


def make_update(
    spec: PolicySpec, cfg: DQNConfig, optimizer: optax.GradientTransformation
) -> Callable[[dict[str, Any], dict[str, jax.Array], jax.Array], tuple[dict[str, Any], dict]]:
    """The jitted update ``(state, batch, update_index) -> (state, stats)``.

    ``state`` holds ``params``, ``target`` and ``opt``. The target follows by EMA after every
    update when ``cfg.target_ema_tau > 0``, else it is copied when ``update_index + 1`` is a
    multiple of ``cfg.target_update_period``.
    """

    def update(
        state: dict[str, Any], batch: dict[str, jax.Array], index: jax.Array
    ) -> tuple[dict[str, Any], dict]:
        grads, stats = jax.grad(td_loss, has_aux=True)(
            state["params"], state["target"], batch, spec, cfg.double_q, cfg.kappa
        )
        changes, opt = optimizer.update(grads, state["opt"], state["params"])
        params = optax.apply_updates(state["params"], changes)
        if cfg.target_ema_tau > 0:
            target = ema_update(state["target"], params, cfg.target_ema_tau)
        else:
            copy = (index + 1) % cfg.target_update_period == 0
            target = jax.tree_util.tree_map(
                lambda t, p: jnp.where(copy, p, t), state["target"], params
            )
        return {"params": params, "target": target, "opt": opt}, stats

    return jax.jit(update)


def make_optimizer(cfg: AgentConfig) -> optax.GradientTransformation:
    """Adam after clipping the gradients' global norm."""
    return optax.chain(
        optax.clip_by_global_norm(cfg.max_grad_norm), optax.adam(cfg.lr, eps=cfg.adam_eps)
    )


@functools.lru_cache(maxsize=16)
def _compiled(spec: PolicySpec, cfg: DQNConfig) -> tuple[Any, Callable, Callable]:
    """Optimiser, jitted update and jitted greedy policy, shared by agents of one config."""
    optimizer = make_optimizer(cfg)
    act = jax.jit(lambda p, o: greedy(jnp, p, spec, o))
    return optimizer, make_update(spec, cfg, optimizer), act


class DQNAgent(Agent):
    """DQN and its flags (see the module docstring); ``Discrete`` actions only."""

    name = "dqn"
    Config = DQNConfig

    def __init__(
        self,
        observation_space: gym.Space,
        action_space: gym.Space,
        n_envs: int,
        total_steps: int,
        config: DQNConfig,
        seed: int,
    ) -> None:
        """Build the networks, optimiser and replay buffer."""
        super().__init__(observation_space, action_space, n_envs, total_steps, config, seed)
        if self.action["kind"] != "discrete":
            raise ValueError(
                f"{self.name} needs a Discrete action space, not {action_space}; "
                "use --agent ppo for continuous actions"
            )
        cfg = config
        head = "quantiles" if cfg.quantiles else "q"
        self._spec = PolicySpec(cfg.encoder, head, int(self.action["n"]), cfg.quantiles)
        params = jax.tree_util.tree_map(
            jnp.asarray, policy_init(self.rng, self.obs_dim, self._spec, gain=1.0)
        )
        optimizer, self._update, self._greedy = _compiled(self._spec, cfg)
        self._state = {"params": params, "target": params, "opt": optimizer.init(params)}
        capacity = max(cfg.n_step, cfg.buffer_size // self.n_envs)
        self.replay = ReplayBuffer(capacity, self.n_envs, self.obs_dim, cfg.n_step)
        self._update_credit = 0.0  # fractional updates owed by the replay ratio

    @property
    def spec(self) -> PolicySpec:
        """The Q network's shape."""
        return self._spec

    def policy_params(self) -> Params:
        """The online Q network."""
        return self._state["params"]

    def learner_state(self) -> Any:
        """Online and target networks and the optimiser state."""
        return self._state

    def set_learner_state(self, tree: Any) -> None:
        """Restore :meth:`learner_state` output."""
        self._state = jax.tree_util.tree_map(jnp.asarray, tree)

    def extra_state(self) -> tuple[Json, Arrays]:
        """The replay buffer and the owed updates."""
        return {"update_credit": self._update_credit}, self.replay.arrays()

    def load_extra_state(self, meta: Json, arrays: Arrays) -> None:
        """Restore :meth:`extra_state` output."""
        self.replay.load_arrays(arrays)
        self._update_credit = float(meta["update_credit"])

    def epsilon(self) -> float:
        """Exploration rate at the current env step (linear decay)."""
        cfg = self.config
        frac = min(1.0, self.env_steps / (cfg.eps_decay_fraction * self.total_steps))
        return cfg.eps_start + frac * (cfg.eps_end - cfg.eps_start)

    def act(self, obs: np.ndarray) -> np.ndarray:
        """Epsilon-greedy actions."""
        flat = self.flat(obs)
        if self.config.normalize_obs:
            self.norm.update(flat)
        best = np.asarray(self._greedy(self._state["params"], self.normalized(flat)))
        explore = self.rng.random(flat.shape[0]) < self.epsilon()
        random = self.rng.integers(0, self.action["n"], size=flat.shape[0])
        self._last_action = np.where(explore, random, best)
        return self._last_action + self.action["start"]

    def observe(
        self,
        obs: np.ndarray,
        reward: np.ndarray,
        terminated: np.ndarray,
        truncated: np.ndarray,
        next_obs: np.ndarray,
    ) -> dict[str, float]:
        """Store the step; make the updates the replay ratio owes."""
        self.replay.add(
            self.flat(obs), self._last_action, reward, terminated, truncated, self.flat(next_obs)
        )
        self.env_steps += self.n_envs
        cfg = self.config
        if self.env_steps < cfg.learning_starts or self.replay.sampleable == 0:
            return {}
        self._update_credit += cfg.replay_ratio * self.n_envs
        stats: list[dict] = []
        while self._update_credit >= 1.0:
            self._update_credit -= 1.0
            batch = self.replay.sample(self.rng, cfg.batch_size, cfg.gamma)
            batch["obs"] = self.normalized(batch["obs"])
            batch["next_obs"] = self.normalized(batch["next_obs"])
            self._state, s = self._update(self._state, batch, jnp.int32(self.updates))
            self.updates += 1
            stats.append(s)
        if not stats:
            return {}
        return {k: float(np.mean([float(s[k]) for s in stats])) for k in stats[0]}

    def end_segment(self) -> None:
        """Episodes cut by the coming reset end as truncated in the replay buffer."""
        self.replay.truncate_all()


@dataclasses.dataclass(frozen=True, kw_only=True)
class QRDQNConfig(DQNConfig):
    """Settings of ``qr-dqn``: ``dqn``'s with 32 quantiles per action."""

    quantiles: int = param(32, ge=1, le=1024, doc="quantiles per action")


class QRDQNAgent(DQNAgent):
    """The ``qr-dqn`` preset: :class:`DQNAgent` with quantile regression."""

    name = "qr-dqn"
    Config = QRDQNConfig
