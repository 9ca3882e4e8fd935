"""Pretraining an agent's encoder on unlabeled captures, then fine-tuning from it (SGI).

Schwarzer et al. 2021, "Pretraining Representations for Data-Efficient Reinforcement
Learning" (SGI, NeurIPS 2021), pretrain a value-based agent's encoder on reward-free
offline data with three self-supervised objectives, then fine-tune the whole agent on a
small budget of env steps with the encoder at a lower learning rate. Here the data are
captured episodes (what ``twinloop run --record`` writes; observations and actions only,
rewards ignored) and the three objectives are weighted by :class:`PretrainConfig` (a
weight of 0 switches one off):

* **SPR** (self-predictive representations, Schwarzer et al. 2021a): from the encoding of
  ``s_t`` a latent dynamics model rolls ``K`` steps forward with the actions taken; each
  predicted latent is projected and passed through a prediction head and compared by
  cosine with the projection of ``s_{t+k}`` encoded by the EMA target network (no
  gradient), steps after an episode's end masked out. The pieces (dynamics model,
  projection, prediction, cosine loss) are those of BBF's SPR
  (:mod:`~twinloop.controllers.rl.bbf`), so a pretrained encoder meets the same modules.
* **Goal-conditioned RL** with hindsight goals: the goal ``g`` of a transition
  ``(s_t, a_t, s_{t+1})`` is the target network's projection of a state ``s_{t+j}`` of the
  same episode, ``j`` uniform in ``1 .. min(goal_window, steps left)``, mixed with noise
  ``g <- normalize(w n + (1 - w) normalize(g))`` with ``n`` a random unit vector and
  ``w ~ U(0, goal_noise)``, and swapped for another row's goal with probability
  ``goal_permute``. The reward is the decrease of a latent distance to the goal,
  ``r = goal_reward_scale * (d(z_t, g) - d(z_{t+1}, g))`` with
  ``d(x, g) = 1 - exp(-goal_distance_scale * ||x / |x| - g / |g| ||^2)`` and ``z`` the
  target network's projections (a potential-based reward: it never ends an episode). A
  goal-conditioned Q head ``Q(s, a, g)`` (the encoder's features modulated by the goal,
  :func:`goal_q`) learns it by one-step Q-learning against the target network (Huber
  loss). Checked against the authors' code
  (mila-iqia/SGI, ``src/scrl.py``: ``exp_distance``, ``calculate_returns``, ``add_noise``,
  ``permute_goals``; ``src/algos.py``: ``goal_window=50``, ``goal_noise_weight=0.5``,
  ``goal_permute_prob=0.2``, ``goal_reward_scale=5``, ``distance_scale=5``), whose
  defaults these are. Differences: their Q head is distributional (C51) and dueling,
  ours expected-value; their goals may also be convolutional feature maps. The reward
  is defined by the target encoder and projection, which the other objectives move, so
  this TD loss is not stationary: on CartPole captures it falls by about a third over
  the first hundred updates and then drifts up slowly while SPR and inverse dynamics
  keep falling.
* **Inverse dynamics**: a small MLP predicts ``a_{t+k}`` from the online projection of
  the ``k``-th latent (``k = 0``: the encoding of ``s_t``; then the dynamics model's
  predictions) and the target projection of ``s_{t+k+1}`` (cross-entropy, masked as SPR);
  SGI's ``InverseModelHead`` on the same pair.

The encoder is built exactly as an agent of the given config builds its own (the same
:class:`~twinloop.controllers.rl.encoders.ObsLayout`, the same
:class:`~twinloop.controllers.rl.networks.EncoderConfig` with ``width_scale`` applied), so
the pretrained parameters replace a fresh agent's ``params["encoder"]``
(:func:`install_encoder`). Vector observations are normalised by their mean and standard
deviation over the captures, which travel with the encoder and seed the agent's running
normaliser. Fine-tuning at a lower encoder learning rate is :func:`encoder_lr_scaled`
wrapped around the agent's optimiser.

Files (:func:`save_pretrained`, :func:`load_pretrained`): ``pretrained.json`` (the encoder's
shape, the observation layout, the action space, both configs) and ``pretrained.npz`` (the
encoder and normaliser arrays, leaf by leaf as in
:mod:`~twinloop.controllers.rl.checkpoint`), written atomically, no pickle.

This layer reads no files of captures: callers pass the episodes
(``list(twinloop.datasets.open_dataset(path))``; ``twinloop agent pretrain`` does).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from twinloop.controllers.rl.checkpoint import flatten, unflatten
from twinloop.controllers.rl.encoders import ObsLayout, parse_keys
from twinloop.controllers.rl.networks import (
    EncoderConfig,
    Params,
    dense_apply,
    dense_init,
    encoder_apply,
    encoder_init,
)
from twinloop.controllers.rl.normalize import RunningNorm
from twinloop.controllers.rl.policy import action_spec
from twinloop.core.config import ConfigSection, cross_check, param, to_dict

#: The objectives, by the names ``twinloop agent pretrain --objectives`` takes.
OBJECTIVES = ("spr", "goal", "inverse")
#: Version of the files :func:`save_pretrained` writes.
FORMAT = 1
_JSON, _NPZ = "pretrained.json", "pretrained.npz"
#: Called with each history row (``step``, ``steps``, ``updates_per_s`` and the losses).
ProgressFn = Callable[[dict[str, Any]], None]


@dataclasses.dataclass(frozen=True, kw_only=True)
class PretrainConfig(ConfigSection):
    """Settings of SGI-style pretraining (defaults: SGI's where they apply, see the module)."""

    spr_weight: float = param(1.0, ge=0.0, doc="weight of the SPR loss (0: off)")
    goal_weight: float = param(1.0, ge=0.0, doc="weight of the goal-conditioned TD loss (0: off)")
    inverse_weight: float = param(
        1.0, ge=0.0, doc="weight of the inverse-dynamics cross-entropy (0: off)"
    )
    spr_steps: int = param(
        5, ge=1, le=100, doc="steps K of latent prediction (SPR and inverse dynamics)"
    )
    proj_dim: int = param(64, ge=1, le=8192, doc="width of the SPR projection (and of goals)")
    inverse_hidden: int = param(128, ge=1, le=8192, doc="hidden width of the inverse model")
    goal_hidden: int = param(128, ge=1, le=8192, doc="hidden width of the goal-conditioned Q")
    goal_window: int = param(
        50, ge=1, le=100_000, doc="goals are states 1..goal_window steps ahead (SGI: 50)"
    )
    goal_noise: float = param(
        0.5, ge=0.0, le=1.0, doc="goal mixed with a random unit vector at weight U(0, this)"
    )
    goal_permute: float = param(
        0.2, ge=0.0, le=1.0, doc="probability that a row takes another row's goal"
    )
    goal_distance_scale: float = param(
        5.0, gt=0.0, doc="d(x, g) = 1 - exp(-this * |x/|x| - g/|g||^2)"
    )
    goal_reward_scale: float = param(5.0, gt=0.0, doc="reward = this * (d(z_t, g) - d(z_t+1, g))")
    goal_gamma: float = param(0.99, ge=0.0, lt=1.0, doc="discount of the goal-conditioned Q")
    kappa: float = param(1.0, gt=0.0, doc="Huber threshold of the goal TD loss")
    batch_size: int = param(32, ge=1, le=65536, doc="transitions per update")
    lr: float = param(3e-4, gt=0.0, le=1.0, doc="Adam learning rate")
    adam_eps: float = param(1.5e-4, gt=0.0, le=1.0, doc="Adam epsilon")
    max_grad_norm: float = param(10.0, gt=0.0, doc="gradients clipped to this global norm")
    target_ema_tau: float = param(
        0.01, gt=0.0, le=1.0, doc="EMA rate of the target network per update (1: no lag)"
    )

    @cross_check
    def _one_objective_is_on(self) -> str | None:
        if not (self.spr_weight > 0 or self.goal_weight > 0 or self.inverse_weight > 0):
            return (
                "spr_weight, goal_weight and inverse_weight are all 0: switch at least one "
                "objective on"
            )
        return None

    @property
    def objectives(self) -> tuple[str, ...]:
        """The objectives with a weight above 0, in :data:`OBJECTIVES` order."""
        weights = (self.spr_weight, self.goal_weight, self.inverse_weight)
        return tuple(name for name, w in zip(OBJECTIVES, weights, strict=True) if w > 0)


def with_objectives(config: PretrainConfig, names: Iterable[str]) -> PretrainConfig:
    """``config`` with the weight of every objective not in ``names`` set to 0.

    Raises:
        ValueError: An unknown name (the message lists the valid ones) or none at all.
    """
    names = [n.strip() for n in names if n.strip()]
    bad = [n for n in names if n not in OBJECTIVES]
    if bad:
        raise ValueError(f"unknown objective(s) {', '.join(bad)}; valid: {', '.join(OBJECTIVES)}")
    if not names:
        raise ValueError(f"name at least one objective of {', '.join(OBJECTIVES)}")
    off = {f"{n}_weight": 0.0 for n in OBJECTIVES if n not in names}
    return dataclasses.replace(config, **off)


# --- captured episodes as sampleable windows -------------------------------------------------
class EpisodeWindows:
    """The steps of captured episodes, sampled as SPR windows with hindsight goals (NumPy).

    Every episode's ``L + 1`` observations are packed into the agent's stored rows (its
    :class:`~twinloop.controllers.rl.encoders.ObsLayout`) and kept in one array, episode
    after episode; a step ``t`` of an episode is drawn uniformly over all steps of all
    episodes.

    Args:
        episodes: :class:`twinloop.datasets.EpisodeData` (or anything with their
            ``observations``, ``actions`` and ``terminations``), from one or more captures.
        layout: The agent's observation layout.
        action: The agent's action spec (:func:`~twinloop.controllers.rl.policy.action_spec`,
            ``Discrete``).

    Raises:
        ValueError: No step at all, or observations or actions that do not fit the agent.
    """

    def __init__(self, episodes: Iterable[Any], layout: ObsLayout, action: dict[str, Any]) -> None:
        """Pack the episodes (see the class docstring)."""
        from twinloop.controllers.rl.reincarnate import pack_episode_observations

        rows, acts, remaining, ends_terminal = [], [], [], []
        n_act = int(action["n"])
        start = int(action["start"])
        for i, ep in enumerate(episodes):
            length = len(ep.terminations)
            if length == 0:
                continue
            name = f"of captured episode {getattr(ep, 'id', i)}"
            obs = pack_episode_observations(ep.observations, layout, name)
            if obs.shape[0] != length + 1:
                raise ValueError(
                    f"data {name} has {length} steps and {obs.shape[0]} observations; "
                    f"expected {length + 1}"
                )
            a = np.asarray(ep.actions)
            if a.shape[0] != length or a.size != length:
                raise ValueError(
                    f"data {name} has actions of shape {a.shape}; expected {length} "
                    "discrete actions"
                )
            a = a.astype(np.int64).reshape(-1) - start
            if a.min() < 0 or a.max() >= n_act:
                raise ValueError(
                    f"data {name} has actions {a.min() + start}..{a.max() + start}, outside "
                    f"the agent's {start}..{start + n_act - 1}"
                )
            rows.append(obs)
            acts.append(a)
            remaining.append(length - np.arange(length))
            ends_terminal.append(np.full(length, bool(np.asarray(ep.terminations)[-1])))
        if not acts:
            raise ValueError("the captures hold no step to pretrain on")
        self.layout = layout
        self.rows = np.concatenate(rows)
        self.actions = np.concatenate(acts)
        #: Steps left in the episode from each step (1 at its last step).
        self.remaining = np.concatenate(remaining)
        self._terminal = np.concatenate(ends_terminal)
        # row of s_t for each step: steps before it plus one extra row per earlier episode
        episode_of_step = np.repeat(np.arange(len(acts)), [len(a) for a in acts])
        self._obs_row = np.arange(self.actions.size) + episode_of_step
        self.episodes = len(acts)

    @property
    def steps(self) -> int:
        """Transitions held."""
        return int(self.actions.size)

    def sample(
        self, rng: np.random.Generator, batch_size: int, steps: int, goal_window: int
    ) -> dict[str, np.ndarray]:
        """A batch of stored rows: windows of ``steps`` future steps and a goal per row.

        Returns:
            ``obs`` ``(B, width)``, ``seq_action`` ``(B, K)`` (actions of steps
            ``t .. t+K-1``), ``seq_next_obs`` ``(B, K, width)`` (their next observations),
            ``seq_mask`` ``(B, K)`` (0 past the episode's end), ``goal_obs`` ``(B, width)``
            (a state ``1 .. min(goal_window, steps left)`` ahead) and ``nonterminal``
            ``(B,)`` (0 where ``s_{t+1}`` is terminal).
        """
        i = rng.integers(0, self.steps, size=batch_size)
        rem = self.remaining[i]
        k = np.arange(steps)
        valid = k[None, :] < rem[:, None]
        ahead = np.minimum(k[None, :], rem[:, None] - 1)  # clamped inside the episode
        row = self._obs_row[i]
        j = 1 + (rng.random(batch_size) * np.minimum(goal_window, rem)).astype(np.int64)
        return {
            "obs": self.rows[row],
            "seq_action": np.where(valid, self.actions[i[:, None] + ahead], 0),
            "seq_next_obs": self.rows[row[:, None] + 1 + ahead],
            "seq_mask": valid.astype(np.float32),
            "goal_obs": self.rows[row + j],
            "nonterminal": (~((rem == 1) & self._terminal[i])).astype(np.float32),
        }


# --- networks and losses (pure JAX) ----------------------------------------------------------
def heads_init(
    rng: np.random.Generator, latent_dim: int, n_actions: int, spr_hidden: int, cfg: PretrainConfig
) -> Params:
    """Parameters of the pretraining heads: SPR's modules, the goal Q and the inverse model."""
    from twinloop.controllers.rl.bbf import spr_init

    gain = math.sqrt(2.0)
    p = cfg.proj_dim
    return {
        "spr": spr_init(rng, latent_dim, n_actions, spr_hidden, p),
        "goal": {
            "state": dense_init(rng, latent_dim, cfg.goal_hidden, gain),
            "film": dense_init(rng, p, 2 * cfg.goal_hidden, 1.0),
            "out": dense_init(rng, cfg.goal_hidden, n_actions, 1.0),
        },
        "inverse": [
            dense_init(rng, 2 * p, cfg.inverse_hidden, gain),
            dense_init(rng, cfg.inverse_hidden, n_actions, 1.0),
        ],
    }


def _mlp(xp: Any, layers: list[Params], x: Any) -> Any:
    for layer in layers[:-1]:
        x = xp.maximum(dense_apply(layer, x), 0.0)
    return dense_apply(layers[-1], x)


def goal_q(params: Params, latent: Any, goal: Any) -> Any:
    """``Q(s, ., g)``: the state's hidden features modulated by the goal (FiLM), then linear.

    ``h = relu(W_s latent + b_s)``; ``(gamma, beta) = W_g g + b_g``;
    ``Q = W_o relu(h (1 + gamma) + beta) + b_o`` (Perez et al. 2018, "FiLM"). The product
    lets the head compare state and goal, which a plain MLP over their concatenation does
    poorly (its TD loss hardly fell on CartPole captures).
    """
    import jax.numpy as jnp

    h = jnp.maximum(dense_apply(params["state"], latent), 0.0)
    scale, shift = jnp.split(dense_apply(params["film"], goal), 2, axis=-1)
    return dense_apply(params["out"], jnp.maximum(h * (1.0 + scale) + shift, 0.0))


def _unit(x: Any) -> Any:
    import jax.numpy as jnp

    return x / jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True) + 1e-12)


def goal_distance(x: Any, goal: Any, scale: float) -> Any:
    """SGI's ``d(x, g) = 1 - exp(-scale * ||x / |x| - g / |g| ||^2)`` over the last axis."""
    import jax.numpy as jnp

    return 1.0 - jnp.exp(-scale * jnp.sum((_unit(x) - _unit(goal)) ** 2, axis=-1))


def pretrain_loss(
    params: Params,
    target: Params,
    batch: dict[str, Any],
    key: Any,
    encoder: EncoderConfig,
    n_actions: int,
    cfg: PretrainConfig,
) -> tuple[Any, dict[str, Any]]:
    """The weighted sum of the objectives switched on (see the module docstring).

    Args:
        params: Online ``encoder`` and heads (:func:`heads_init`).
        target: The EMA target of ``params``.
        batch: :meth:`EpisodeWindows.sample` output with every observation turned into
            encoder inputs (normalised vectors).
        key: Draws the goals' noise and permutation.
        encoder: The encoder's shape.
        n_actions: Number of discrete actions.
        cfg: Weights and goal settings.

    Returns:
        ``(loss, stats)``: ``spr_loss``, ``goal_loss``, ``goal_reward``, ``inverse_loss`` and
        ``inverse_accuracy`` (of ``a_t`` from ``(s_t, s_{t+1})``) for the objectives on.
    """
    import jax
    import jax.numpy as jnp

    from twinloop.controllers.rl.bbf import dynamics_apply
    from twinloop.controllers.rl.losses import huber, normalized_l2

    sg = jax.lax.stop_gradient
    latent = encoder_apply(jnp, params["encoder"], encoder, batch["obs"])
    mask = batch["seq_mask"]
    actions = batch["seq_action"]
    b, k_steps = actions.shape
    # the target network encodes s_t, s_t+1..s_t+K and the goal states in one pass
    rows = jax.tree_util.tree_map(
        lambda now, seq, goal: jnp.concatenate(
            [now, seq.reshape(b * k_steps, *now.shape[1:]), goal]
        ),
        batch["obs"], batch["seq_next_obs"], batch["goal_obs"],
    )  # fmt: skip
    encoded = sg(encoder_apply(jnp, target["encoder"], encoder, rows))
    projected = sg(dense_apply(target["spr"]["projection"], encoded))
    seq_target = encoded[b : b + b * k_steps].reshape(b, k_steps, -1)
    seq_proj = projected[b : b + b * k_steps].reshape(b, k_steps, -1)  # (B, K, P)
    total = jnp.zeros((), jnp.float32)
    stats: dict[str, Any] = {}

    if cfg.spr_weight > 0 or cfg.inverse_weight > 0:
        z = latent
        spr = jnp.zeros((), jnp.float32)
        ce_sum = jnp.zeros((), jnp.float32)
        for k in range(k_steps):
            if cfg.inverse_weight > 0:
                pair = jnp.concatenate([dense_apply(params["spr"]["projection"], z),
                                        seq_proj[:, k]], axis=-1)  # fmt: skip
                logp = jax.nn.log_softmax(_mlp(jnp, params["inverse"], pair), axis=-1)
                picked = jnp.take_along_axis(logp, actions[:, k : k + 1], axis=-1)[:, 0]
                ce_sum = ce_sum - jnp.sum(mask[:, k] * picked)
                if k == 0:
                    hit = (jnp.argmax(logp, axis=-1) == actions[:, 0]).astype(jnp.float32)
                    stats["inverse_accuracy"] = jnp.mean(hit)
            onehot = jax.nn.one_hot(actions[:, k], n_actions, dtype=z.dtype)
            z = dynamics_apply(jnp, params["spr"], z, onehot)
            if cfg.spr_weight > 0:
                pred = dense_apply(
                    params["spr"]["prediction"], dense_apply(params["spr"]["projection"], z)
                )
                spr = spr + jnp.mean(mask[:, k] * normalized_l2(pred, seq_proj[:, k]))
        if cfg.spr_weight > 0:
            total = total + cfg.spr_weight * spr
            stats["spr_loss"] = spr
        if cfg.inverse_weight > 0:
            inverse = ce_sum / jnp.maximum(jnp.sum(mask), 1.0)
            total = total + cfg.inverse_weight * inverse
            stats["inverse_loss"] = inverse

    if cfg.goal_weight > 0:
        k_noise, k_weight, k_swap, k_other = jax.random.split(key, 4)
        goal = _unit(projected[b + b * k_steps :])
        noise = _unit(jax.random.normal(k_noise, goal.shape, goal.dtype))
        w = jax.random.uniform(k_weight, (goal.shape[0], 1), goal.dtype) * cfg.goal_noise
        goal = _unit(w * noise + (1.0 - w) * goal)
        own = jnp.arange(b)
        swap = jax.random.uniform(k_swap, (b,)) < cfg.goal_permute
        goal = goal[jnp.where(swap, jax.random.randint(k_other, (b,), 0, b), own)]
        z_now = projected[:b]
        scale = cfg.goal_distance_scale
        reward = cfg.goal_reward_scale * (
            goal_distance(z_now, goal, scale) - goal_distance(seq_proj[:, 0], goal, scale)
        )
        q = goal_q(params["goal"], latent, goal)
        q_next = goal_q(target["goal"], seq_target[:, 0], goal)
        y = sg(reward + cfg.goal_gamma * batch["nonterminal"] * q_next.max(axis=-1))
        q_taken = jnp.take_along_axis(q, actions[:, :1], axis=-1)[:, 0]
        goal_loss = huber(q_taken - y, cfg.kappa).mean()
        total = total + cfg.goal_weight * goal_loss
        stats["goal_loss"] = goal_loss
        stats["goal_reward"] = reward.mean()
    stats["loss"] = total
    return total, stats


def make_optimizer(cfg: PretrainConfig) -> Any:
    """Adam after clipping the gradients' global norm."""
    import optax

    return optax.chain(
        optax.clip_by_global_norm(cfg.max_grad_norm), optax.adam(cfg.lr, eps=cfg.adam_eps)
    )


def make_update(encoder: EncoderConfig, n_actions: int, cfg: PretrainConfig) -> Any:
    """The jitted ``update(state, batch) -> (state, stats)``.

    One Adam step on :func:`pretrain_loss`, then the target follows by EMA at
    ``cfg.target_ema_tau``. ``state`` holds ``params``, ``target``, ``opt`` and ``key`` (split
    at every update for the goals' noise); ``stats`` are those of the parameters before the
    step, so an update whose new state is dropped is an evaluation.
    """
    import jax
    import optax

    from twinloop.controllers.rl.losses import ema_update

    optimizer = make_optimizer(cfg)

    def update(state: dict[str, Any], batch: dict[str, Any]) -> tuple[dict[str, Any], dict]:
        key, sub = jax.random.split(state["key"])
        grads, stats = jax.grad(pretrain_loss, has_aux=True)(
            state["params"], state["target"], batch, sub, encoder, n_actions, cfg
        )
        changes, opt = optimizer.update(grads, state["opt"], state["params"])
        params = optax.apply_updates(state["params"], changes)
        target = ema_update(state["target"], params, cfg.target_ema_tau)
        return {"params": params, "target": target, "opt": opt, "key": key}, stats

    return jax.jit(update)


# --- the pretrainer ---------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class PretrainedEncoder:
    """A pretrained encoder and what an agent needs to take it.

    Attributes:
        params: The encoder's parameters (NumPy), as an agent's ``params["encoder"]``.
        encoder: Its shape (with the observation's image and token inputs).
        layout: The observation layout's JSON (:meth:`ObsLayout.to_json`).
        obs_dim: Width of the encoder's vector input.
        normalize_obs: Whether vector inputs were normalised.
        norm: The normaliser's arrays (``mean``, ``var``, ``count``) over the captures.
        action: The action spec the heads were trained for.
        meta: Provenance: both configs, steps, seed, objectives.
    """

    params: Params
    encoder: EncoderConfig
    layout: dict[str, Any]
    obs_dim: int
    normalize_obs: bool
    norm: dict[str, np.ndarray]
    action: dict[str, Any]
    meta: dict[str, Any]


class Pretrainer:
    """Holds the pretraining state between jitted updates (see the module docstring).

    Args:
        observation_space: The env's single observation space.
        action_space: The env's single action space (``Discrete``).
        config: Objectives and their settings.
        agent_config: The config of the agent that will take the encoder (its encoder's
            shape, ``obs_keys`` and ``normalize_obs``; any agent's config class).
        seed: Seeds the initialisation, the batches and the goals.

    Raises:
        ValueError: A non-``Discrete`` action space.
    """

    def __init__(
        self,
        observation_space: gym.Space,
        action_space: gym.Space,
        config: PretrainConfig,
        agent_config: Any,
        seed: int,
    ) -> None:
        """Build the layout, the networks and the optimiser."""
        import jax
        import jax.numpy as jnp

        self.action = action_spec(action_space)
        if self.action["kind"] != "discrete":
            raise ValueError(
                f"pretraining needs a Discrete action space (inverse dynamics and the goal Q "
                f"are over discrete actions), not {action_space}"
            )
        self.config, self.agent_config, self.seed = config, agent_config, int(seed)
        self.layout = ObsLayout(observation_space, parse_keys(agent_config.obs_keys))
        self.encoder = dataclasses.replace(agent_config.encoder, inputs=self.layout.inputs)
        self.norm = RunningNorm(self.layout.in_dim)
        self.rng = np.random.default_rng(seed)
        n = int(self.action["n"])
        params = {"encoder": encoder_init(self.rng, self.layout.in_dim, self.encoder)}
        params.update(
            heads_init(self.rng, self.encoder.out_dim, n, self.encoder.hidden[-1], config)
        )
        params = jax.tree_util.tree_map(jnp.asarray, params)
        self._update = _compiled(self.encoder, n, config)
        self.state = {
            "params": params,
            "target": params,
            "opt": make_optimizer(config).init(params),
            "key": jax.random.PRNGKey(self.seed),
        }
        self.updates = 0

    def windows(self, episodes: Iterable[Any]) -> EpisodeWindows:
        """Captured episodes packed for sampling (:class:`EpisodeWindows`)."""
        return EpisodeWindows(episodes, self.layout, self.action)

    def fit_norm(self, data: EpisodeWindows) -> None:
        """Set the vector normaliser to the captures' statistics (if ``normalize_obs``)."""
        if self.agent_config.normalize_obs and self.layout.in_dim:
            self.norm = RunningNorm(self.layout.in_dim)
            self.norm.update(self.layout.vector(data.rows))

    def inputs(self, rows: np.ndarray) -> Any:
        """Stored rows ``(..., width)`` as the encoder's inputs (normalised vectors)."""
        vec = self.layout.vector(rows)
        if self.agent_config.normalize_obs:
            vec = self.norm(vec)
        return self.layout.net_inputs(rows, vec)

    def batch(self, data: EpisodeWindows, rng: np.random.Generator | None = None) -> dict:
        """A sampled batch with its observations as encoder inputs."""
        cfg = self.config
        raw = data.sample(rng or self.rng, cfg.batch_size, cfg.spr_steps, cfg.goal_window)
        for key in ("obs", "seq_next_obs", "goal_obs"):
            raw[key] = self.inputs(raw[key])
        return raw

    def update(self, batch: dict) -> dict[str, float]:
        """One pretraining update; its statistics."""
        self.state, stats = self._update(self.state, batch)
        self.updates += 1
        return {k: float(v) for k, v in stats.items()}

    def evaluate(self, batch: dict, seed: int = 0) -> dict[str, float]:
        """The statistics of a batch without learning from it (goal noise drawn from ``seed``)."""
        import jax

        _, stats = self._update({**self.state, "key": jax.random.PRNGKey(seed)}, batch)
        return {k: float(v) for k, v in stats.items()}  # the new state is dropped

    def result(self, meta: dict[str, Any] | None = None) -> PretrainedEncoder:
        """The encoder as it stands (host NumPy copies)."""
        import jax

        params = jax.tree_util.tree_map(np.asarray, self.state["params"]["encoder"])
        norm = {k: np.asarray(v) for k, v in self.norm.arrays().items()}
        info = {
            "agent_config": to_dict(self.agent_config),
            "agent_config_class": type(self.agent_config).__name__,
            "pretrain_config": to_dict(self.config),
            "objectives": list(self.config.objectives),
            "updates": self.updates,
            "seed": self.seed,
            **(meta or {}),
        }
        return PretrainedEncoder(
            params=params,
            encoder=self.encoder,
            layout=self.layout.to_json(),
            obs_dim=int(self.layout.in_dim),
            normalize_obs=bool(self.agent_config.normalize_obs),
            norm=norm,
            action=dict(self.action),
            meta=info,
        )


@functools.lru_cache(maxsize=8)
def _compiled(encoder: EncoderConfig, n_actions: int, cfg: PretrainConfig) -> Any:
    """The jitted update, shared by pretrainers of one shape and config."""
    return make_update(encoder, n_actions, cfg)


def pretrain_encoder(
    datasets: Sequence[Iterable[Any]],
    observation_space: gym.Space,
    action_space: gym.Space,
    config: PretrainConfig,
    agent_config: Any,
    steps: int,
    seed: int,
    progress: ProgressFn | None = None,
    log_every: int | None = None,
) -> tuple[PretrainedEncoder, list[dict[str, Any]]]:
    """Pretrain an encoder for an agent of ``agent_config`` on captured episodes.

    Args:
        datasets: One sequence of captured episodes per capture (e.g.
            ``[list(open_dataset(p)) for p in paths]``); rewards are not read.
        observation_space: The env's single observation space.
        action_space: The env's single action space (``Discrete``).
        config: Objectives and their settings.
        agent_config: Config of the agent that will take the encoder.
        steps: Updates to make (>= 1).
        seed: Seeds everything random.
        progress: Called with each history row.
        log_every: Updates between history rows (default: about 1 % of ``steps``).

    Returns:
        ``(encoder, history)``: the :class:`PretrainedEncoder` and one row per log interval
        (``step``, ``steps``, ``updates_per_s``, ``wall_s`` and the mean statistics of the
        interval's updates).

    Raises:
        ValueError: ``steps < 1``, no step in the captures, or captures that do not fit the
            agent's observation layout or action space.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    episodes = [ep for data in datasets for ep in data]
    trainer = Pretrainer(observation_space, action_space, config, agent_config, seed)
    data = trainer.windows(episodes)
    trainer.fit_norm(data)
    log_every = max(1, log_every or steps // 100)
    history: list[dict[str, Any]] = []
    sums: dict[str, float] = {}
    count = 0
    t0 = last = time.perf_counter()
    last_step = 0
    for step in range(1, steps + 1):
        stats = trainer.update(trainer.batch(data))
        for k, v in stats.items():
            sums[k] = sums.get(k, 0.0) + v
        count += 1
        if step % log_every == 0 or step == steps:
            now = time.perf_counter()
            row = {
                "step": step,
                "steps": steps,
                "updates_per_s": (step - last_step) / max(now - last, 1e-9),
                "wall_s": now - t0,
                **{k: v / count for k, v in sums.items()},
            }
            history.append(row)
            sums, count, last, last_step = {}, 0, now, step
            if progress is not None:
                progress(row)
    meta = {"episodes": data.episodes, "transitions": data.steps, "steps": steps}
    return trainer.result(meta), history


# --- files ------------------------------------------------------------------------------------
def save_pretrained(
    directory: str | os.PathLike, encoder: PretrainedEncoder, extra: dict[str, Any] | None = None
) -> Path:
    """Write ``pretrained.json`` and ``pretrained.npz`` into ``directory`` atomically.

    Both files are written under temporary names and renamed into place, ``npz`` first, so a
    reader never sees a ``json`` without its arrays. ``extra`` is stored in the JSON's
    ``meta`` (e.g. the capture paths).

    Returns:
        The folder.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": FORMAT,
        "encoder": dataclasses.asdict(encoder.encoder),
        "observation": encoder.layout,
        "obs_dim": encoder.obs_dim,
        "normalize_obs": encoder.normalize_obs,
        "action": encoder.action,
        "meta": {**encoder.meta, **(extra or {})},
    }
    arrays = flatten({"encoder": encoder.params, "norm": encoder.norm})
    tmp = Path(tempfile.mkdtemp(prefix=".pretrained-tmp-", dir=directory))
    try:
        with open(tmp / _NPZ, "wb") as fh:
            np.savez(fh, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        (tmp / _JSON).write_text(json.dumps(_no_nan(meta), indent=1, sort_keys=True))
        os.replace(tmp / _NPZ, directory / _NPZ)
        os.replace(tmp / _JSON, directory / _JSON)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def load_pretrained(directory: str | os.PathLike) -> PretrainedEncoder:
    """Read what :func:`save_pretrained` wrote (arrays with ``allow_pickle=False``).

    Raises:
        FileNotFoundError: The folder lacks ``pretrained.json`` or ``pretrained.npz``.
        ValueError: Another format version, or arrays that do not fit the recorded shape.
    """
    directory = Path(directory)
    missing = [f for f in (_JSON, _NPZ) if not (directory / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{directory} lacks {', '.join(missing)}: not a folder written by "
            "'twinloop agent pretrain'"
        )
    meta = json.loads((directory / _JSON).read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(
            f"{directory / _JSON} has format {meta.get('format')!r}; this twinloop reads {FORMAT}"
        )
    encoder = EncoderConfig.from_json(meta["encoder"])
    obs_dim = int(meta["obs_dim"])
    with np.load(directory / _NPZ, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    template = encoder_init(np.random.default_rng(0), obs_dim, encoder)
    params = unflatten(template, arrays, "encoder/")
    norm = {k: np.asarray(arrays[f"norm/{k}"]) for k in ("mean", "var", "count")}
    return PretrainedEncoder(
        params=params,
        encoder=encoder,
        layout=meta["observation"],
        obs_dim=obs_dim,
        normalize_obs=bool(meta["normalize_obs"]),
        norm=norm,
        action=meta["action"],
        meta=meta.get("meta", {}),
    )


def _no_nan(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_no_nan(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# --- fine-tuning ------------------------------------------------------------------------------
def encoder_mismatch(encoder: PretrainedEncoder, agent: Any) -> list[str]:
    """How ``agent``'s encoder differs from ``encoder``'s (empty: it fits).

    One ``"field: pretrained X, agent Y"`` line per differing field of the encoder's shape,
    the vector input's width, the observation layout and ``normalize_obs``.
    """
    out = []
    saved, now = dataclasses.asdict(encoder.encoder), dataclasses.asdict(agent.encoder)
    for name in saved:
        if saved[name] != now.get(name):
            out.append(f"{name}: pretrained {saved[name]}, agent {now.get(name)}")
    if encoder.obs_dim != agent.obs_dim:
        out.append(f"vector input width: pretrained {encoder.obs_dim}, agent {agent.obs_dim}")
    layout = agent.layout.to_json()
    if json.loads(json.dumps(encoder.layout)) != json.loads(json.dumps(layout)):
        out.append(f"observation layout: pretrained {encoder.layout}, agent {layout}")
    if encoder.normalize_obs != bool(agent.config.normalize_obs):
        out.append(
            f"normalize_obs: pretrained {encoder.normalize_obs}, agent "
            f"{bool(agent.config.normalize_obs)}"
        )
    return out


def install_encoder(agent: Any, encoder: PretrainedEncoder) -> None:
    """Replace a fresh value-based agent's encoder (online and target) by ``encoder``.

    The agent's vector normaliser starts from the captures' statistics (when the agent
    normalises), so the encoder sees inputs scaled as in pretraining; the heads, the SPR
    modules and the optimiser state (zero moments before the first update) stay fresh.
    Wire it where the agent is built (``init_encoder``, see the report in DESIGN.md).

    Raises:
        TypeError: An agent whose learner has no ``params["encoder"]`` (not DQN's family).
        ValueError: The agent has already learned, or its encoder differs in shape; the
            message names every differing field with both values.
    """
    import jax
    import jax.numpy as jnp

    state = agent.learner_state()
    if not (isinstance(state, dict) and "encoder" in state.get("params", {})):
        raise TypeError(
            f"a pretrained encoder goes into a value-based agent (dqn, qr-dqn, bbf), whose "
            f"learner holds params['encoder']; {agent.name!r} does not"
        )
    if agent.updates:
        raise ValueError(
            f"install a pretrained encoder into a fresh agent; this one made {agent.updates} "
            "updates already"
        )
    problems = encoder_mismatch(encoder, agent)
    if problems:
        raise ValueError(
            f"the pretrained encoder does not fit this {agent.name} agent's encoder; "
            "differences: " + "; ".join(problems)
        )
    arrays = flatten(encoder.params)
    params = unflatten(jax.tree_util.tree_map(np.asarray, state["params"]["encoder"]), arrays)
    params = jax.tree_util.tree_map(jnp.asarray, params)
    new = dict(state)
    new["params"] = {**state["params"], "encoder": params}
    if "target" in state:
        new["target"] = {**state["target"], "encoder": params}
    agent.set_learner_state(new)
    if agent.config.normalize_obs and agent.obs_dim:
        agent.norm.load_arrays(encoder.norm)


def encoder_lr_scaled(optimizer: Any, scale: float) -> Any:
    """``optimizer`` whose updates of the ``encoder`` subtree are multiplied by ``scale``.

    With Adam (or AdamW) this is the encoder's learning rate times ``scale`` while every
    other part learns at the full rate: SGI fine-tunes a pretrained encoder more slowly
    than the freshly initialised heads (their ``encoder_lr``). ``scale == 1`` returns
    ``optimizer`` itself.

    Raises:
        ValueError: ``scale`` outside ``[0, 1]``.
    """
    import optax

    if not 0.0 <= scale <= 1.0:
        raise ValueError(f"encoder_lr_scale must lie in [0, 1], got {scale}")
    if scale == 1.0:
        return optimizer

    def is_encoder(params: Any) -> Any:
        return {k: _all(v, k == "encoder") for k, v in params.items()}

    return optax.chain(optimizer, optax.masked(optax.scale(scale), is_encoder))


def _all(tree: Any, value: bool) -> Any:
    import jax

    return jax.tree_util.tree_map(lambda _: value, tree)
