"""Proximal policy optimisation for discrete and continuous actions, over a vector env.

PPO (Schulman et al. 2017) with the choices Andrychowicz et al. 2021 ("What Matters in
On-Policy RL") and Huang et al. 2022 ("The 37 Implementation Details of PPO") find to matter:
separate actor and critic networks with tanh activations, a small final layer for the
policy (gain 0.01), observation normalisation, GAE (Schulman et al. 2016) with ``lambda =
0.95``, advantages normalised per minibatch, a clipped surrogate with ``epsilon = 0.2``,
Adam with ``eps = 1e-5`` and gradients clipped to norm 0.5.

* ``Discrete`` actions: a categorical policy over logits.
* ``Box`` actions: a diagonal Gaussian with a state-independent log standard deviation, in
  ``[-1, 1]`` units that :func:`~twinloop.controllers.rl.policy.to_env_action` clips and maps
  onto the Box's bounds; the log-probability is of the unclipped sample.

Observations are stored in the rollout as the networks take them (normalised vectors;
images as uint8, token ids as int32: :meth:`~twinloop.controllers.rl.encoders.ObsLayout.
zeros_inputs`), so a rollout of 128 x 8 steps of 64-px frames holds 25 MB of observations
(obs and next_obs). Actor and critic each have their own encoder (CNN included).

A rollout of ``n_steps`` vector steps is collected, then :func:`make_update` runs all epochs
and minibatches in one jitted call. Truncated episodes (time limits, or the trainer's reset at
a checkpoint, which always falls on a rollout boundary) bootstrap from the value of their
final observation.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import optax

from twinloop.controllers.rl.agent import Agent, AgentConfig, Arrays, Json
from twinloop.controllers.rl.dqn import make_optimizer
from twinloop.controllers.rl.encoders import assign
from twinloop.controllers.rl.networks import Params
from twinloop.controllers.rl.policy import PolicySpec, head_apply, policy_init, to_env_action
from twinloop.controllers.rl.returns import gae
from twinloop.core.config import param

_LOG_2PI = math.log(2.0 * math.pi)


@dataclasses.dataclass(frozen=True, kw_only=True)
class PPOConfig(AgentConfig):
    """Settings of PPO (defaults from the papers in the module docstring)."""

    hidden: tuple[int, ...] = param((64, 64), doc="widths of the hidden layers (actor, critic)")
    activation: str = param("tanh", choices=("relu", "tanh"), doc="hidden activation")
    lr: float = param(3e-4, gt=0.0, le=1.0, doc="Adam learning rate")
    adam_eps: float = param(1e-5, gt=0.0, le=1.0, doc="Adam epsilon")
    max_grad_norm: float = param(0.5, gt=0.0, doc="gradients clipped to this global norm")
    n_steps: int = param(128, ge=1, le=100_000, doc="vector steps per rollout")
    epochs: int = param(4, ge=1, le=1000, doc="passes over each rollout")
    minibatches: int = param(4, ge=1, le=100_000, doc="minibatches per epoch")
    gae_lambda: float = param(0.95, ge=0.0, le=1.0, doc="GAE lambda")
    clip: float = param(0.2, gt=0.0, le=10.0, doc="clipping range epsilon of the surrogate")
    ent_coef: float = param(0.0, ge=0.0, doc="entropy bonus coefficient")
    vf_coef: float = param(0.5, ge=0.0, doc="value loss coefficient")
    init_log_std: float = param(0.0, ge=-20.0, le=5.0, doc="initial log std (Box actions)")


def _dist(params: Params, spec: PolicySpec, obs: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The policy's logits (discrete), or its means and log stds (continuous)."""
    out = head_apply(jnp, params, spec, obs)
    if spec.head == "gaussian":
        return out, jnp.broadcast_to(params["log_std"], out.shape)
    return out, jnp.zeros(())


def log_prob(spec: PolicySpec, dist: tuple[jax.Array, jax.Array], action: jax.Array) -> jax.Array:
    """Log-probability of a batch of actions (agent units)."""
    a, b = dist
    if spec.head == "gaussian":
        z = (action - a) * jnp.exp(-b)
        return (-0.5 * z * z - b - 0.5 * _LOG_2PI).sum(axis=-1)
    logp = jax.nn.log_softmax(a)
    return jnp.take_along_axis(logp, action[:, None], axis=-1)[:, 0]


def entropy(spec: PolicySpec, dist: tuple[jax.Array, jax.Array]) -> jax.Array:
    """Entropy of each row's action distribution."""
    a, b = dist
    if spec.head == "gaussian":
        return (b + 0.5 * (_LOG_2PI + 1.0)).sum(axis=-1)
    logp = jax.nn.log_softmax(a)
    return -(jnp.exp(logp) * logp).sum(axis=-1)


def value(params: Params, spec: PolicySpec, obs: jax.Array) -> jax.Array:
    """The critic's ``V(s)`` of a batch."""
    return head_apply(jnp, params, spec, obs)[..., 0]


def sample(
    params: dict[str, Params], spec: PolicySpec, vspec: PolicySpec, obs: jax.Array, key: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Actions drawn from the policy, their log-probabilities and the states' values."""
    dist = _dist(params["actor"], spec, obs)
    if spec.head == "gaussian":
        action = dist[0] + jnp.exp(dist[1]) * jax.random.normal(key, dist[0].shape)
    else:
        action = jax.random.categorical(key, dist[0])
    return action, log_prob(spec, dist, action), value(params["critic"], vspec, obs)


def ppo_loss(
    params: dict[str, Params],
    batch: dict[str, jax.Array],
    spec: PolicySpec,
    vspec: PolicySpec,
    cfg: PPOConfig,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Clipped surrogate + value loss - entropy bonus of one minibatch."""
    dist = _dist(params["actor"], spec, batch["obs"])
    logp = log_prob(spec, dist, batch["action"])
    ratio = jnp.exp(logp - batch["logp"])
    adv = batch["adv"]
    adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    surrogate = jnp.minimum(ratio * adv, jnp.clip(ratio, 1 - cfg.clip, 1 + cfg.clip) * adv)
    policy_loss = -surrogate.mean()
    v = value(params["critic"], vspec, batch["obs"])
    value_loss = 0.5 * ((v - batch["ret"]) ** 2).mean()
    ent = entropy(spec, dist).mean()
    loss = policy_loss + cfg.vf_coef * value_loss - cfg.ent_coef * ent
    stats = {
        "loss": loss,
        "policy_loss": policy_loss,
        "value_loss": value_loss,
        "entropy": ent,
        "approx_kl": ((ratio - 1.0) - jnp.log(ratio)).mean(),  # Schulman's low-variance k3
        "clip_fraction": (jnp.abs(ratio - 1.0) > cfg.clip).mean(),
    }
    return loss, stats


def make_update(
    spec: PolicySpec, vspec: PolicySpec, cfg: PPOConfig, optimizer: optax.GradientTransformation
) -> Callable[[dict[str, Any], dict[str, jax.Array], jax.Array], tuple[dict[str, Any], dict]]:
    """The jitted update ``(state, rollout, key) -> (state, mean stats)`` of one rollout.

    ``rollout`` holds ``(T, N, ...)`` arrays ``obs``, ``action``, ``logp``, ``value``,
    ``reward``, ``terminated``, ``truncated`` and ``next_obs`` (encoder inputs: arrays, or
    dicts of them for structured observations).
    """

    def update(
        state: dict[str, Any], rollout: dict[str, jax.Array], key: jax.Array
    ) -> tuple[dict[str, Any], dict]:
        next_values = value(state["params"]["critic"], vspec, rollout["next_obs"])
        adv, ret = gae(
            rollout["reward"], rollout["value"], next_values, rollout["terminated"],
            rollout["truncated"], cfg.gamma, cfg.gae_lambda,
        )  # fmt: skip
        flat = {
            "obs": rollout["obs"],
            "action": rollout["action"],
            "logp": rollout["logp"],
            "adv": adv,
            "ret": ret,
        }
        t, n = adv.shape
        size = t * n
        flat = jax.tree_util.tree_map(lambda v: v.reshape(size, *v.shape[2:]), flat)
        mb = size // cfg.minibatches

        def minibatch(carry: Any, idx: jax.Array) -> tuple[Any, dict]:
            params, opt = carry
            batch = jax.tree_util.tree_map(lambda v: v[idx], flat)
            grads, stats = jax.grad(ppo_loss, has_aux=True)(params, batch, spec, vspec, cfg)
            changes, opt = optimizer.update(grads, opt, params)
            return (optax.apply_updates(params, changes), opt), stats

        def epoch(carry: Any, k: jax.Array) -> tuple[Any, dict]:
            perm = jax.random.permutation(k, size)[: mb * cfg.minibatches]
            return jax.lax.scan(minibatch, carry, perm.reshape(cfg.minibatches, mb))

        (params, opt), stats = jax.lax.scan(
            epoch, (state["params"], state["opt"]), jax.random.split(key, cfg.epochs)
        )
        return {"params": params, "opt": opt}, jax.tree_util.tree_map(jnp.mean, stats)

    return jax.jit(update)


@functools.lru_cache(maxsize=16)
def _compiled(
    spec: PolicySpec, vspec: PolicySpec, cfg: PPOConfig
) -> tuple[Any, Callable, Callable]:
    """Optimiser, jitted update and jitted sampler, shared by agents of one config."""
    optimizer = make_optimizer(cfg)
    draw = jax.jit(lambda p, o, k: sample(p, spec, vspec, o, k))
    return optimizer, make_update(spec, vspec, cfg, optimizer), draw


class PPOAgent(Agent):
    """PPO (see the module docstring); ``Discrete`` or ``Box`` actions."""

    name = "ppo"
    Config = PPOConfig

    def __init__(
        self,
        observation_space: gym.Space,
        action_space: gym.Space,
        n_envs: int,
        total_steps: int,
        config: PPOConfig,
        seed: int,
    ) -> None:
        """Build the actor, critic, optimiser and rollout storage."""
        super().__init__(observation_space, action_space, n_envs, total_steps, config, seed)
        cfg = config
        size = cfg.n_steps * self.n_envs
        if size < cfg.minibatches:
            raise ValueError(
                f"a rollout of n_steps={cfg.n_steps} x n_envs={self.n_envs} = {size} "
                f"transitions cannot fill minibatches={cfg.minibatches}"
            )
        discrete = self.action["kind"] == "discrete"
        n_out = int(self.action["n"]) if discrete else int(np.prod(self.action["shape"]))
        self._spec = PolicySpec(self.encoder, "logits" if discrete else "gaussian", n_out)
        self._vspec = PolicySpec(self.encoder, "q", 1)
        actor = policy_init(self.rng, self.obs_dim, self._spec, gain=0.01)
        if not discrete:
            actor["log_std"] = np.full(n_out, cfg.init_log_std, np.float32)
        critic = policy_init(self.rng, self.obs_dim, self._vspec, gain=1.0)
        params = jax.tree_util.tree_map(jnp.asarray, {"actor": actor, "critic": critic})
        optimizer, self._update, self._sample = _compiled(self._spec, self._vspec, cfg)
        self._state = {"params": params, "opt": optimizer.init(params)}
        self._key = jax.random.PRNGKey(seed)
        t, n = cfg.n_steps, self.n_envs
        action_shape = () if discrete else (n_out,)
        self._rollout = {
            "obs": self.layout.zeros_inputs((t, n)),
            "next_obs": self.layout.zeros_inputs((t, n)),
            "action": np.zeros((t, n, *action_shape), np.int32 if discrete else np.float32),
            "logp": np.zeros((t, n), np.float32),
            "value": np.zeros((t, n), np.float32),
            "reward": np.zeros((t, n), np.float32),
            "terminated": np.zeros((t, n), bool),
            "truncated": np.zeros((t, n), bool),
        }
        self._t = 0

    @property
    def spec(self) -> PolicySpec:
        """The actor's shape."""
        return self._spec

    @property
    def rollout_steps(self) -> int:
        """Env steps per rollout (checkpoints fall on multiples of it)."""
        return self.config.n_steps * self.n_envs

    def policy_params(self) -> Params:
        """The actor."""
        return self._state["params"]["actor"]

    def learner_state(self) -> Any:
        """Actor, critic, optimiser state and the sampling key."""
        return {"train": self._state, "key": self._key}

    def set_learner_state(self, tree: Any) -> None:
        """Restore :meth:`learner_state` output."""
        tree = jax.tree_util.tree_map(jnp.asarray, tree)
        self._state, self._key = tree["train"], tree["key"]

    def extra_state(self) -> tuple[Json, Arrays]:
        """Nothing: checkpoints fall between rollouts (a partial rollout is an error)."""
        if self._t:
            raise RuntimeError(
                f"PPO checkpoint {self._t} steps into a rollout of {self.config.n_steps}"
            )
        return {}, {}

    def act(self, obs: np.ndarray) -> np.ndarray:
        """Actions sampled from the policy (env units)."""
        flat = self.flat(obs)
        self.update_norm(flat)
        o = self.normalized(flat)
        self._key, k = jax.random.split(self._key)
        action, logp, v = self._sample(self._state["params"], o, k)
        action = np.asarray(action)
        r, t = self._rollout, self._t
        assign(r["obs"], t, o)
        r["action"][t], r["logp"][t], r["value"][t] = action, logp, v
        return to_env_action(self.action, action)

    def observe(
        self,
        obs: np.ndarray,
        reward: np.ndarray,
        terminated: np.ndarray,
        truncated: np.ndarray,
        next_obs: np.ndarray,
    ) -> dict[str, float]:
        """Store the step; update after every ``n_steps`` vector steps."""
        r, t = self._rollout, self._t
        r["reward"][t], r["terminated"][t], r["truncated"][t] = reward, terminated, truncated
        assign(r["next_obs"], t, self.normalized(self.flat(next_obs)))
        self._t += 1
        self.env_steps += self.n_envs
        if self._t < self.config.n_steps:
            return {}
        self._t = 0
        self._key, k = jax.random.split(self._key)
        self._state, stats = self._update(self._state, r, k)
        self.updates += self.config.epochs * self.config.minibatches
        return {k: float(v) for k, v in stats.items()}
