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
(obs and next_obs). Actor and critic each have their own encoder (CNN included), unless
``shared_encoder=true``: then one encoder (and GRU) feeds both heads, the usual choice for
Atari PPO (Huang et al. 2022, the Atari details: one Nature CNN, a policy and a value head),
which halves the convolutions' cost and parameters.

A rollout of ``n_steps`` vector steps is collected, then :func:`make_update` runs all epochs
and minibatches in one jitted call. Truncated episodes (time limits, or the trainer's reset at
a checkpoint, which always falls on a rollout boundary) bootstrap from the value of their
final observation.

Recurrent PPO (``recurrent=gru``, for partially observed tasks): a GRU core of width
``rnn_hidden`` between the encoder and the heads (in each of actor and critic, or once when
shared), its state carried per env row from one vector step to the next and zeroed in the
rows whose episode starts (after ``observe`` saw it end, and in every row after
:meth:`PPOAgent.end_segment`). A rollout stores the state that entered its first step and
each step's *start* flag, and the update re-runs the GRU over each row's whole rollout,
zeroing where an episode starts, so the first epoch sees exactly the probabilities the rollout
acted with; minibatches split the env rows, never the time axis, so sequences stay whole
(as CleanRL's ppo_atari_lstm; gradients flow back through the whole rollout).
Bootstrapping is as above: ``V(s'_t)`` of the step's next observation (the final one where the
episode ended) is evaluated with the critic's state *after* step ``t``, before any reset, which
is the state that observation would have been read with had the episode gone on; so a
truncated episode bootstraps from its own history, and a row still running at the rollout's
end bootstraps with the state the next rollout continues from.
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
from twinloop.controllers.rl.encoders import IMAGE, assign, gru_cell
from twinloop.controllers.rl.networks import Params, dense_apply, dense_init, encoder_apply
from twinloop.controllers.rl.policy import (
    PolicySpec,
    initial_state,
    policy_init,
    rnn_step,
    to_env_action,
)
from twinloop.controllers.rl.returns import gae
from twinloop.core.config import param

_LOG_2PI = math.log(2.0 * math.pi)
#: Values of the ``recurrent`` setting.
RECURRENT = ("none", "gru")

#: A GRU state per parameter group with a torso (``actor``/``critic``, or ``shared``).
States = dict[str, Any]
Dist = tuple[jax.Array, jax.Array]


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
    minibatches: int = param(
        4, ge=1, le=100_000, doc="minibatches per epoch (recurrent: groups of env rows)"
    )
    gae_lambda: float = param(0.95, ge=0.0, le=1.0, doc="GAE lambda")
    clip: float = param(0.2, gt=0.0, le=10.0, doc="clipping range epsilon of the surrogate")
    ent_coef: float = param(0.0, ge=0.0, doc="entropy bonus coefficient")
    vf_coef: float = param(0.5, ge=0.0, doc="value loss coefficient")
    init_log_std: float = param(0.0, ge=-20.0, le=5.0, doc="initial log std (Box actions)")
    recurrent: str = param(
        "none",
        choices=RECURRENT,
        doc="gru: a GRU core after the encoder torso, its state carried per env row "
        "(partially observed tasks)",
    )
    rnn_hidden: int = param(64, ge=1, le=4096, doc="recurrent: width of the GRU's state")
    shared_encoder: bool = param(
        False, doc="one encoder (CNN, GRU) feeds the actor and critic heads (Atari PPO)"
    )


def groups(cfg: PPOConfig) -> dict[str, str]:
    """Head (``actor``, ``critic``) -> the parameter group holding its encoder (and GRU)."""
    if cfg.shared_encoder:
        return {"actor": "shared", "critic": "shared"}
    return {"actor": "actor", "critic": "critic"}


def torsos(cfg: PPOConfig) -> tuple[str, ...]:
    """The parameter groups that hold an encoder: ``(actor, critic)`` or ``(shared,)``."""
    return tuple(dict.fromkeys(groups(cfg).values()))


def torso_step(p: Params, spec: PolicySpec, obs: Any, h: Any) -> tuple[jax.Array, Any]:
    """Features for the heads and the next GRU state of one step (any leading axes).

    ``h`` is the state entering the step (None without a GRU); the features are the GRU's
    new state, or the encoder's output.
    """
    z = encoder_apply(jnp, p["encoder"], spec.encoder, obs)
    if not spec.recurrent:
        return z, None
    h = rnn_step(jnp, p["rnn"], z, h)
    return h, h


def torso_sequence(
    p: Params, spec: PolicySpec, obs: Any, h0: jax.Array, start: jax.Array
) -> jax.Array:
    """The GRU's state after each step of time-major sequences (the heads' features).

    Args:
        p: A group's encoder and ``rnn`` parameters.
        spec: The policy's shape (recurrent).
        obs: Encoder inputs ``(T, B, ...)``.
        h0: The state entering step 0 ``(B, H)``.
        start: ``(T, B)``: an episode starts at this step, so the state entering it is zeroed.

    Returns:
        ``(T, B, H)``.
    """
    z = encoder_apply(jnp, p["encoder"], spec.encoder, obs)  # every step at once
    g = p["rnn"]
    gx = z @ g["wx"] + g["bx"]

    def step(h: jax.Array, x: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        gx_t, start_t = x
        h = gru_cell(jnp, g, gx_t, jnp.where(start_t[:, None], 0.0, h))
        return h, h

    _, hs = jax.lax.scan(step, h0, (gx, start))
    return hs


def _dist(actor: Params, spec: PolicySpec, z: jax.Array) -> Dist:
    """The policy's logits (discrete), or its means and log stds (continuous), from features."""
    out = dense_apply(actor["head"], z)
    if spec.head == "gaussian":
        return out, jnp.broadcast_to(actor["log_std"], out.shape)
    return out, jnp.zeros(())


def _value(critic: Params, z: jax.Array) -> jax.Array:
    """The critic's ``V(s)`` from features."""
    return dense_apply(critic["head"], z)[..., 0]


def log_prob(spec: PolicySpec, dist: Dist, action: jax.Array) -> jax.Array:
    """Log-probability of a batch of actions (agent units; any leading axes)."""
    a, b = dist
    if spec.head == "gaussian":
        z = (action - a) * jnp.exp(-b)
        return (-0.5 * z * z - b - 0.5 * _LOG_2PI).sum(axis=-1)
    logp = jax.nn.log_softmax(a)
    return jnp.take_along_axis(logp, action[..., None], axis=-1)[..., 0]


def entropy(spec: PolicySpec, dist: Dist) -> jax.Array:
    """Entropy of each row's action distribution."""
    a, b = dist
    if spec.head == "gaussian":
        return (b + 0.5 * (_LOG_2PI + 1.0)).sum(axis=-1)
    logp = jax.nn.log_softmax(a)
    return -(jnp.exp(logp) * logp).sum(axis=-1)


def forward_step(
    params: dict[str, Params], spec: PolicySpec, cfg: PPOConfig, obs: Any, h: States
) -> tuple[Dist, jax.Array, States]:
    """Action distribution, value and next states of one step (``h``: {} without a GRU)."""
    heads = groups(cfg)
    z, h2 = {}, {}
    for g in torsos(cfg):
        z[g], h2[g] = torso_step(params[g], spec, obs, h.get(g))
    dist = _dist(params["actor"], spec, z[heads["actor"]])
    v = _value(params["critic"], z[heads["critic"]])
    return dist, v, (h2 if spec.recurrent else {})


def forward_sequence(
    params: dict[str, Params],
    spec: PolicySpec,
    cfg: PPOConfig,
    obs: Any,
    h0: States,
    start: jax.Array,
) -> tuple[Dist, jax.Array, States]:
    """:func:`forward_step` over time-major sequences ``(T, B, ...)`` of a recurrent policy.

    Returns:
        The distribution and values ``(T, B, ...)`` and each group's states after every
        step ``(T, B, H)`` (see :func:`torso_sequence`).
    """
    heads = groups(cfg)
    hs = {g: torso_sequence(params[g], spec, obs, h0[g], start) for g in torsos(cfg)}
    return (
        _dist(params["actor"], spec, hs[heads["actor"]]),
        _value(params["critic"], hs[heads["critic"]]),
        hs,
    )


def sample(
    params: dict[str, Params],
    spec: PolicySpec,
    cfg: PPOConfig,
    obs: Any,
    h: States,
    start: jax.Array,
    key: jax.Array,
) -> tuple[jax.Array, jax.Array, jax.Array, States]:
    """Actions drawn from the policy, their log-probabilities, the values and next states.

    ``h`` holds each group's state from the previous step; rows where ``start`` is set begin
    an episode, so their state is zeroed first (``h`` and ``start`` are unused without a GRU).
    """
    h = {g: jnp.where(start[:, None], 0.0, v) for g, v in h.items()}
    dist, v, h2 = forward_step(params, spec, cfg, obs, h)
    if spec.head == "gaussian":
        action = dist[0] + jnp.exp(dist[1]) * jax.random.normal(key, dist[0].shape)
    else:
        action = jax.random.categorical(key, dist[0])
    return action, log_prob(spec, dist, action), v, h2


def ppo_loss(
    params: dict[str, Params], batch: dict[str, Any], spec: PolicySpec, cfg: PPOConfig
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Clipped surrogate + value loss - entropy bonus of one minibatch.

    A recurrent minibatch holds whole sequences: ``(T, B, ...)`` arrays, the states ``h0``
    entering them and the ``start`` flags; a feed-forward one holds ``(B, ...)`` rows.
    """
    if spec.recurrent:
        obs, h0, start = batch["obs"], batch["h0"], batch["start"]
        dist, v, _ = forward_sequence(params, spec, cfg, obs, h0, start)
    else:
        dist, v, _ = forward_step(params, spec, cfg, batch["obs"], {})
    logp = log_prob(spec, dist, batch["action"])
    ratio = jnp.exp(logp - batch["logp"])
    adv = batch["adv"]
    adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    surrogate = jnp.minimum(ratio * adv, jnp.clip(ratio, 1 - cfg.clip, 1 + cfg.clip) * adv)
    policy_loss = -surrogate.mean()
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


def next_values(
    params: dict[str, Params], spec: PolicySpec, cfg: PPOConfig, rollout: dict[str, Any]
) -> jax.Array:
    """``V(s'_t)`` of every step's next observation ``(T, N)`` (see the module docstring).

    With a GRU, the critic's torso first re-runs over the rollout; each next observation is
    then read with the state after its step (before any reset at an episode's start).
    """
    g = groups(cfg)["critic"]
    h = None
    if spec.recurrent:
        h = torso_sequence(params[g], spec, rollout["obs"], rollout["h0"][g], rollout["start"])
    z, _ = torso_step(params[g], spec, rollout["next_obs"], h)
    return _value(params["critic"], z)


def make_update(
    spec: PolicySpec, cfg: PPOConfig, optimizer: optax.GradientTransformation
) -> Callable[[dict[str, Any], dict[str, Any], jax.Array], tuple[dict[str, Any], dict]]:
    """The jitted update ``(state, rollout, key) -> (state, mean stats)`` of one rollout.

    ``rollout`` holds ``(T, N, ...)`` arrays ``obs``, ``action``, ``logp``, ``value``,
    ``reward``, ``terminated``, ``truncated`` and ``next_obs`` (encoder inputs: arrays, or
    dicts of them for structured observations); a recurrent one also ``start`` ``(T, N)``
    and ``h0``, each group's state ``(N, H)`` entering the rollout. Feed-forward minibatches
    are random transitions; recurrent ones random groups of env rows, whole in time.

    With image inputs the epochs and minibatches are unrolled: XLA:CPU runs a convolution's
    gradient inside a ``scan`` about 20x slower than at the top level (measured on JAX 0.10:
    16 minibatches of the Nature CNN at 48 px, 5.0 s in a scan, 0.26 s unrolled); the price is
    a longer compile (epochs x minibatches copies).
    """
    unroll = any(i.kind == IMAGE for i in spec.encoder.inputs)

    def update(
        state: dict[str, Any], rollout: dict[str, Any], key: jax.Array
    ) -> tuple[dict[str, Any], dict]:
        v_next = next_values(state["params"], spec, cfg, rollout)
        adv, ret = gae(
            rollout["reward"], rollout["value"], v_next, rollout["terminated"],
            rollout["truncated"], cfg.gamma, cfg.gae_lambda,
        )  # fmt: skip
        data = {
            "obs": rollout["obs"],
            "action": rollout["action"],
            "logp": rollout["logp"],
            "adv": adv,
            "ret": ret,
        }
        t, n = adv.shape
        if spec.recurrent:
            data["start"] = rollout["start"]
            size, per = n, n // cfg.minibatches  # env rows

            def take(idx: jax.Array) -> dict[str, Any]:
                batch = jax.tree_util.tree_map(lambda v: v[:, idx], data)
                batch["h0"] = jax.tree_util.tree_map(lambda v: v[idx], rollout["h0"])
                return batch
        else:
            size = t * n
            flat = jax.tree_util.tree_map(lambda v: v.reshape(size, *v.shape[2:]), data)
            per = size // cfg.minibatches

            def take(idx: jax.Array) -> dict[str, Any]:
                return jax.tree_util.tree_map(lambda v: v[idx], flat)

        def minibatch(carry: Any, idx: jax.Array) -> tuple[Any, dict]:
            params, opt = carry
            grads, stats = jax.grad(ppo_loss, has_aux=True)(params, take(idx), spec, cfg)
            changes, opt = optimizer.update(grads, opt, params)
            return (optax.apply_updates(params, changes), opt), stats

        def epoch(carry: Any, k: jax.Array) -> tuple[Any, dict]:
            perm = jax.random.permutation(k, size)[: per * cfg.minibatches]
            return jax.lax.scan(minibatch, carry, perm.reshape(cfg.minibatches, per), unroll=unroll)

        (params, opt), stats = jax.lax.scan(
            epoch, (state["params"], state["opt"]), jax.random.split(key, cfg.epochs),
            unroll=unroll,
        )  # fmt: skip
        return {"params": params, "opt": opt}, jax.tree_util.tree_map(jnp.mean, stats)

    return jax.jit(update)


@functools.lru_cache(maxsize=16)
def _compiled(spec: PolicySpec, cfg: PPOConfig) -> tuple[Any, Callable, Callable]:
    """Optimiser, jitted update and jitted sampler, shared by agents of one config."""
    optimizer = make_optimizer(cfg)
    draw = jax.jit(lambda p, o, h, s, k: sample(p, spec, cfg, o, h, s, k))
    return optimizer, make_update(spec, cfg, optimizer), draw


class PPOAgent(Agent):
    """PPO (see the module docstring); ``Discrete`` or ``Box`` actions, optionally recurrent."""

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
        recurrent = cfg.recurrent == "gru"
        size = cfg.n_steps * self.n_envs
        if size < cfg.minibatches:
            raise ValueError(
                f"a rollout of n_steps={cfg.n_steps} x n_envs={self.n_envs} = {size} "
                f"transitions cannot fill minibatches={cfg.minibatches}"
            )
        if recurrent and self.n_envs < cfg.minibatches:
            raise ValueError(
                f"recurrent PPO splits minibatches over env rows (whole sequences): "
                f"n_envs={self.n_envs} must be >= minibatches={cfg.minibatches}"
            )
        discrete = self.action["kind"] == "discrete"
        n_out = int(self.action["n"]) if discrete else int(np.prod(self.action["shape"]))
        rnn = cfg.rnn_hidden if recurrent else 0
        head = "logits" if discrete else "gaussian"
        self._spec = PolicySpec(self.encoder, head, n_out, rnn_hidden=rnn)
        self._vspec = PolicySpec(self.encoder, "q", 1, rnn_hidden=rnn)
        if cfg.shared_encoder:
            shared = policy_init(self.rng, self.obs_dim, self._spec, gain=0.01)
            actor = {"head": shared.pop("head")}
            critic = {"head": dense_init(self.rng, self._spec.features_dim, 1, 1.0)}
            tree = {"shared": shared, "actor": actor, "critic": critic}
        else:
            actor = policy_init(self.rng, self.obs_dim, self._spec, gain=0.01)
            critic = policy_init(self.rng, self.obs_dim, self._vspec, gain=1.0)
            tree = {"actor": actor, "critic": critic}
        if not discrete:
            actor["log_std"] = np.full(n_out, cfg.init_log_std, np.float32)
        params = jax.tree_util.tree_map(jnp.asarray, tree)
        optimizer, self._update, self._sample = _compiled(self._spec, cfg)
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
        #: Each group's GRU state per env row ({} without a GRU).
        self._h: States = {g: initial_state(self._spec, n) for g in torsos(cfg)} if rnn else {}
        self._h0: States = dict(self._h)
        #: Rows whose episode starts at the next act (their state is zeroed there).
        self._start = np.ones(n, bool)
        if rnn:
            self._rollout["start"] = np.zeros((t, n), bool)

    @property
    def spec(self) -> PolicySpec:
        """The actor's shape."""
        return self._spec

    @property
    def rollout_steps(self) -> int:
        """Env steps per rollout (checkpoints fall on multiples of it)."""
        return self.config.n_steps * self.n_envs

    def policy_params(self) -> Params:
        """The actor (with the shared encoder and GRU, when shared)."""
        params = self._state["params"]
        if self.config.shared_encoder:
            return {**params["shared"], **params["actor"]}
        return params["actor"]

    def learner_state(self) -> Any:
        """Actor, critic, optimiser state and the sampling key."""
        return {"train": self._state, "key": self._key}

    def set_learner_state(self, tree: Any) -> None:
        """Restore :meth:`learner_state` output."""
        tree = jax.tree_util.tree_map(jnp.asarray, tree)
        self._state, self._key = tree["train"], tree["key"]

    def extra_state(self) -> tuple[Json, Arrays]:
        """The GRU states and start flags (recurrent); checkpoints fall between rollouts."""
        if self._t:
            raise RuntimeError(
                f"PPO checkpoint {self._t} steps into a rollout of {self.config.n_steps}"
            )
        if not self._spec.recurrent:
            return {}, {}
        arrays = {f"h/{g}": np.asarray(v) for g, v in self._h.items()}
        return {}, {**arrays, "start": self._start.copy()}

    def load_extra_state(self, meta: Json, arrays: Arrays) -> None:
        """Restore :meth:`extra_state` output.

        Raises:
            ValueError: A recurrent state of another shape than this agent's.
        """
        if not self._spec.recurrent:
            return
        for g in self._h:
            h = np.asarray(arrays[f"h/{g}"], np.float32)
            if h.shape != np.shape(self._h[g]):
                raise ValueError(f"saved GRU state {g} of shape {h.shape}, not {self._h[g].shape}")
            self._h[g] = h
        self._start = np.asarray(arrays["start"], bool).copy()

    def act(self, obs: np.ndarray) -> np.ndarray:
        """Actions sampled from the policy (env units); a GRU's state advances."""
        flat = self.flat(obs)
        self.update_norm(flat)
        o = self.normalized(flat)
        self._key, k = jax.random.split(self._key)
        r, t = self._rollout, self._t
        if self._spec.recurrent:
            if t == 0:
                self._h0 = dict(self._h)
            r["start"][t] = self._start
        action, logp, v, self._h = self._sample(self._state["params"], o, self._h, self._start, k)
        self._start = np.zeros_like(self._start)
        action = np.asarray(action)
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
        self._start = np.asarray(terminated, bool) | np.asarray(truncated, bool)
        self._t += 1
        self.env_steps += self.n_envs
        if self._t < self.config.n_steps:
            return {}
        self._t = 0
        self._key, k = jax.random.split(self._key)
        rollout = {**r, "h0": self._h0} if self._spec.recurrent else r
        self._state, stats = self._update(self._state, rollout, k)
        self.updates += self.config.epochs * self.config.minibatches
        return {k: float(v) for k, v in stats.items()}

    def end_segment(self) -> None:
        """The trainer resets every env next: every row's episode starts (GRU states zeroed)."""
        self._start = np.ones_like(self._start)
