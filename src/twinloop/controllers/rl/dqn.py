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
* BBF's further ingredients (Schwarzer et al. 2023; the pure pieces in
  :mod:`~twinloop.controllers.rl.bbf`): ``width_scale``, ``n_step_start`` (n annealed to
  ``n_step`` after every reset), ``gamma_start`` (gamma annealed to ``gamma`` over the same
  updates), ``weight_decay`` (AdamW, Loshchilov & Hutter 2019),
  ``spr_steps`` (the self-predictive loss) and ``reset_interval`` (shrink-and-perturb plus
  last-layer resets). The ``bbf`` preset turns them all on.
* Reincarnation (QDagger, Agarwal et al. 2022): with a teacher, ``pretrain`` runs offline
  updates on the teacher's captured transitions, then online updates add the distillation
  term :func:`~twinloop.controllers.rl.losses.distillation_loss` with a weight that decays
  to 0 (:meth:`DQNAgent.distill_weight`): linearly over ``distill_updates`` online updates
  (``distill_decay="linear"``), or with the student's return relative to the teacher's
  (``"performance"``, QDagger's own, cut off after ``distill_updates``).

The discount enters the update only through the sampled batch (``returns`` and ``discount``
are computed by :meth:`ReplayBuffer.sample` with :meth:`DQNAgent.gamma`), so an annealed
gamma never retraces the jitted update.

The math is :func:`total_loss` and :func:`make_update` (pure, jitted); :class:`DQNAgent`
holds the arrays and the replay buffer between calls.
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
from twinloop.controllers.rl.bbf import (
    fresh_params,
    gamma_at,
    n_step_at,
    reset_params,
    spr_loss,
)
from twinloop.controllers.rl.encoders import ObsLayout
from twinloop.controllers.rl.losses import (
    distillation_loss,
    ema_update,
    huber,
    quantile_fractions,
    quantile_huber_loss,
)
from twinloop.controllers.rl.networks import EncoderConfig, Params
from twinloop.controllers.rl.policy import PolicySpec, greedy, head_apply
from twinloop.controllers.rl.replay import ReplayBuffer
from twinloop.core.config import cross_check, param

#: How the distillation weight decays during the online phase (:meth:`DQNAgent.distill_weight`).
DISTILL_DECAYS = ("linear", "performance")


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

    width_scale: int = param(
        1, ge=1, le=16, doc="multiplies the encoder's hidden widths and CNN channels (BBF)"
    )
    n_step_start: int = param(
        0, ge=0, le=100, doc="n-step annealed from this to n_step after each reset (0: fixed)"
    )
    n_step_anneal: int = param(
        10_000, ge=1, doc="updates over which n anneals exponentially (BBF: 10k)"
    )
    weight_decay: float = param(0.0, ge=0.0, le=10.0, doc="AdamW weight decay (BBF: 0.1)")
    spr_steps: int = param(0, ge=0, le=100, doc="SPR: steps K of latent prediction (0: no SPR)")
    spr_weight: float = param(5.0, ge=0.0, doc="SPR: weight of its loss (BBF: 5)")
    spr_dim: int = param(64, ge=1, le=8192, doc="SPR: width of the projection")
    reset_interval: int = param(
        0, ge=0, doc="updates between shrink-and-perturb + last-layer resets (0: none)"
    )
    shrink_alpha: float = param(
        0.5, ge=0.0, le=1.0, doc="reset: encoder becomes alpha*theta + (1-alpha)*fresh"
    )
    pretrain_updates: int = param(
        2000, ge=0, doc="reincarnation: offline updates on the teacher's data"
    )
    distill_weight: float = param(1.0, ge=0.0, doc="reincarnation: initial distillation weight")
    distill_updates: int = param(
        5000, ge=1, doc="reincarnation: online updates over which that weight decays to 0"
    )
    distill_temperature: float = param(
        0.1, gt=0.0, doc="reincarnation: temperature T of the student's softmax(Q / T)"
    )
    distill_decay: str = param(
        "linear",
        choices=DISTILL_DECAYS,
        doc="reincarnation: the weight decays linearly over distill_updates (linear) or as "
        "max(0, 1 - student return / teacher return) until distill_updates (performance; "
        "QDagger's, Agarwal et al. 2022)",
    )
    gamma_start: float = param(
        0.0,
        ge=0.0,
        lt=1.0,
        doc="gamma annealed from this to gamma over n_step_anneal updates after each reset, "
        "exponentially in 1/(1-gamma) (BBF: 0.97 -> 0.997; 0: fixed gamma)",
    )
    init_encoder: str = param(
        "",
        doc="folder of 'twinloop agent pretrain': its encoder (and the captures' observation "
        "normaliser) replaces the fresh one at the start of a run (empty: none)",
    )
    encoder_lr_scale: float = param(
        1.0,
        ge=0.0,
        le=1.0,
        doc="multiplies the encoder's learning rate (SGI fine-tunes a pretrained encoder more "
        "slowly; x0.3 hurt DQN on CartPole here)",
    )

    @property
    def encoder(self) -> EncoderConfig:
        """The encoder's shape, hidden widths and CNN channels multiplied by ``width_scale``.

        BBF scales the width of its IMPALA CNN by 4; the channels of both image encoders
        scale here, so ``width_scale`` means the same for image and vector observations.
        """
        base = super().encoder
        k = self.width_scale
        return dataclasses.replace(
            base,
            hidden=tuple(h * k for h in base.hidden),
            cnn_channels=tuple(c * k for c in base.cnn_channels),
            impala_channels=tuple(c * k for c in base.impala_channels),
        )

    @property
    def window(self) -> int:
        """Longest window the replay must sample: n-step returns and SPR sequences."""
        return max(self.n_step, self.n_step_start, self.spr_steps)

    @cross_check
    def _annealed_gamma_is_below_one(self) -> str | None:
        if self.gamma_start > 0 and self.gamma >= 1.0:
            return (
                f"gamma_start={self.gamma_start} anneals towards gamma={self.gamma}: an "
                "annealed gamma must be below 1 (a finite horizon 1/(1-gamma))"
            )
        return None

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


def total_loss(
    params: Params,
    target: Params,
    batch: dict[str, jax.Array],
    spec: PolicySpec,
    cfg: DQNConfig,
    distill_weight: jax.Array,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The learner's loss: TD, SPR and distillation terms.

    TD loss, plus ``spr_weight`` x SPR loss (when ``spr_steps > 0``), plus
    ``distill_weight`` x the distillation term on rows with a teacher action.
    """
    loss, stats = td_loss(params, target, batch, spec, cfg.double_q, cfg.kappa)
    if cfg.spr_steps:
        spr = spr_loss(params, target, batch, spec)
        loss = loss + cfg.spr_weight * spr
        stats["spr_loss"] = spr
    q = q_values(params, spec, batch["obs"])
    if spec.quantiles:
        q = q.mean(axis=-1)
    distill = distillation_loss(q, batch["teacher_action"], cfg.distill_temperature)
    loss = loss + distill_weight * distill
    stats["distill_loss"] = distill
    return loss, stats


def make_update(
    spec: PolicySpec, cfg: DQNConfig, optimizer: optax.GradientTransformation
) -> Callable[..., tuple[dict[str, Any], dict]]:
    """The jitted update ``(state, batch, update_index, distill_weight) -> (state, stats)``.

    ``state`` holds ``params``, ``target`` and ``opt``. The target follows by EMA after every
    update when ``cfg.target_ema_tau > 0``, else it is copied when ``update_index + 1`` is a
    multiple of ``cfg.target_update_period``.
    """

    def update(
        state: dict[str, Any], batch: dict[str, jax.Array], index: jax.Array, weight: jax.Array
    ) -> tuple[dict[str, Any], dict]:
        grads, stats = jax.grad(total_loss, has_aux=True)(
            state["params"], state["target"], batch, spec, cfg, weight
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
    """Adam (AdamW when ``cfg.weight_decay > 0``) after clipping the gradients' global norm.

    AdamW's decay is decoupled from the gradient: each step multiplies every weight by
    ``1 - lr * weight_decay`` besides Adam's change (Loshchilov & Hutter 2019).
    """
    decay = float(getattr(cfg, "weight_decay", 0.0))
    if decay > 0:
        opt = optax.adamw(cfg.lr, eps=cfg.adam_eps, weight_decay=decay)
    else:
        opt = optax.adam(cfg.lr, eps=cfg.adam_eps)
    opt = optax.chain(optax.clip_by_global_norm(cfg.max_grad_norm), opt)
    scale = float(getattr(cfg, "encoder_lr_scale", 1.0))
    if scale != 1.0:
        from twinloop.controllers.rl.pretrain import encoder_lr_scaled

        opt = encoder_lr_scaled(opt, scale)
    return opt


def replay_buffer(capacity: int, n_envs: int, layout: ObsLayout, window: int) -> ReplayBuffer:
    """A replay buffer whose observations are ``layout``'s stored rows.

    Float32 rows for a vector Box; uint8 rows (every part's bytes) otherwise, so a 64-px
    RGB frame takes 12,288 bytes per observation. Each transition stores its observation
    and its next one: with LangRearrange's rgb observation at 64 px (image, instruction,
    is_holding: 12,349 bytes), 100k transitions take 2.47 GB (float32 rows: 9.9 GB).
    """
    return ReplayBuffer(capacity, n_envs, layout.width, window, layout.dtype)


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
        self._spec = PolicySpec(self.encoder, head, int(self.action["n"]), cfg.quantiles)
        self._spr = (self.encoder.hidden[-1], cfg.spr_dim) if cfg.spr_steps else None
        params = self._fresh()
        optimizer, self._update, self._greedy = _compiled(self._spec, cfg)
        self._optimizer = optimizer
        self._state = {"params": params, "target": params, "opt": optimizer.init(params)}
        capacity = max(cfg.window, cfg.buffer_size // self.n_envs)
        self.replay = replay_buffer(capacity, self.n_envs, self.layout, cfg.window)
        self._update_credit = 0.0  # fractional updates owed by the replay ratio
        self.teacher = False  # set by a trainer that reincarnates this agent from a teacher
        #: Mean return of the teacher's episodes (``distill_decay="performance"``).
        self.teacher_return: float | None = None
        #: The student's recent mean return, as last reported by :meth:`record_return`.
        self.student_return: float | None = None
        self._distill_factor = 1.0  # QDagger's max(0, 1 - G_S / G_T), latched at 0

    def _fresh(self) -> Params:
        """A new initialisation of the learner network (JAX arrays)."""
        params = fresh_params(self.rng, self.obs_dim, self._spec, self._spr)
        return jax.tree_util.tree_map(jnp.asarray, params)

    @property
    def spec(self) -> PolicySpec:
        """The Q network's shape."""
        return self._spec

    def policy_params(self) -> Params:
        """The online Q network (without the SPR modules)."""
        return {k: self._state["params"][k] for k in ("encoder", "head")}

    def learner_state(self) -> Any:
        """Online and target networks and the optimiser state."""
        return self._state

    def set_learner_state(self, tree: Any) -> None:
        """Restore :meth:`learner_state` output."""
        self._state = jax.tree_util.tree_map(jnp.asarray, tree)

    def extra_state(self) -> tuple[Json, Arrays]:
        """The replay buffer, the owed updates, the teacher and the distillation decay."""
        meta = {
            "update_credit": self._update_credit,
            "teacher": self.teacher,
            "teacher_return": self.teacher_return,
            "student_return": self.student_return,
            "distill_factor": self._distill_factor,
        }
        return meta, self.replay.arrays()

    def load_extra_state(self, meta: Json, arrays: Arrays) -> None:
        """Restore :meth:`extra_state` output (older checkpoints lack the decay's state)."""
        self.replay.load_arrays(arrays)
        self._update_credit = float(meta["update_credit"])
        self.teacher = bool(meta.get("teacher", False))
        teacher_return = meta.get("teacher_return")
        student_return = meta.get("student_return")
        self.teacher_return = None if teacher_return is None else float(teacher_return)
        self.student_return = None if student_return is None else float(student_return)
        self._distill_factor = float(meta.get("distill_factor", 1.0))

    def n_step(self) -> int:
        """The update horizon now: annealed after each reset when ``n_step_start > 0``."""
        cfg = self.config
        since = self.updates % cfg.reset_interval if cfg.reset_interval else self.updates
        return n_step_at(since, cfg.n_step_start, cfg.n_step, cfg.n_step_anneal)

    def gamma(self) -> float:
        """The discount now: annealed after each reset when ``gamma_start > 0`` (BBF)."""
        cfg = self.config
        since = self.updates % cfg.reset_interval if cfg.reset_interval else self.updates
        return gamma_at(since, cfg.gamma_start, cfg.gamma, cfg.n_step_anneal)

    def distill_weight(self) -> float:
        """Weight ``lambda_t`` of the distillation term now (0 without a teacher).

        With ``t`` the online updates so far and ``lambda_0 = distill_weight``:

        * ``distill_decay="linear"``: ``lambda_0 * max(0, 1 - t / distill_updates)``.
        * ``"performance"``: ``lambda_0 * max(0, 1 - G_S / G_T)`` while
          ``t < distill_updates``, then 0, where ``G_T`` is the teacher's mean episode return
          (:meth:`set_teacher_return`) and ``G_S`` the student's recent mean return
          (:meth:`record_return`; ``G_S`` counts as 0 until the first report). This is
          QDagger's decay (Agarwal et al. 2022; checked against their code,
          google-research/reincarnating_rl ``QDaggerDQNAgent.record_score``, which latches
          the factor at 0 once it gets there, as here, and cuts it after
          ``distill_decay_period`` online steps). Differences: their ``G`` are evaluation
          returns scored against a random policy's (Atari), ours the trainer's recent
          training returns (:data:`~twinloop.controllers.rl.train.RECENT` episodes, with
          exploration) against 0; the factor is clipped to ``[0, 1]`` so a negative
          student return cannot raise the weight above ``lambda_0``; and their learning
          rate, which they also decay with the factor, stays fixed here.

        ``linear`` stays the default: the ratio needs a positive teacher return, which tasks
        whose rewards are costs (negative) never give, and a noisy training return can latch
        the weight at 0 on one lucky window; ``performance`` is the choice where returns are
        positive and the teacher's is a fair bar.
        """
        cfg = self.config
        if not self.teacher:
            return 0.0
        if cfg.distill_decay == "performance":
            if self.updates >= cfg.distill_updates:
                return 0.0
            return cfg.distill_weight * self._distill_factor
        return cfg.distill_weight * max(0.0, 1.0 - self.updates / cfg.distill_updates)

    def set_teacher_return(self, value: float) -> None:
        """The teacher's mean episode return ``G_T`` (from its captured episodes).

        Raises:
            ValueError: ``value`` is not finite, or not positive while
                ``distill_decay="performance"`` (the ratio ``G_S / G_T`` needs ``G_T > 0``).
        """
        value = float(value)
        if not np.isfinite(value):
            raise ValueError(f"the teacher's return must be finite, got {value}")
        if self.config.distill_decay == "performance" and value <= 0:
            raise ValueError(
                f"distill_decay=performance needs a teacher whose mean episode return is "
                f"> 0, got {value:.6g}; use --set distill_decay=linear"
            )
        self.teacher_return = value

    def record_return(self, recent: float) -> None:
        """Report the student's recent mean episode return ``G_S`` (NaN: none yet, ignored).

        The trainer calls this after each vector step in which episodes ended. With
        ``distill_decay="performance"`` and a teacher it updates the decay factor
        ``max(0, 1 - G_S / G_T)``, which stays 0 once it reaches 0.
        """
        recent = float(recent)
        if np.isnan(recent):
            return
        self.student_return = recent
        if (
            self.teacher
            and self.teacher_return is not None
            and self.config.distill_decay == "performance"
            and self._distill_factor > 0
        ):
            self._distill_factor = min(1.0, max(0.0, 1.0 - recent / self.teacher_return))

    def reset_network(self) -> None:
        """BBF's reset (:func:`~twinloop.controllers.rl.bbf.reset_params`), fresh optimiser.

        The target network is kept (it follows by EMA or periodic copies as before), so the
        TD targets stay meaningful while the reset head relearns.
        """
        params = reset_params(self._state["params"], self._fresh(), self.config.shrink_alpha)
        self._state = {
            "params": params,
            "target": self._state["target"],
            "opt": self._optimizer.init(params),
        }

    def _learn(self, replay: ReplayBuffer, weight: float, index: int) -> dict:
        """One update on a batch from ``replay``."""
        cfg = self.config
        batch = replay.sample(self.rng, cfg.batch_size, self.gamma(), self.n_step(), cfg.spr_steps)
        for key in ("obs", "next_obs", "seq_next_obs"):
            if key in batch:
                batch[key] = self.normalized(batch[key])
        self._state, stats = self._update(self._state, batch, jnp.int32(index), jnp.float32(weight))
        return stats

    def pretrain(self, data: ReplayBuffer, updates: int) -> dict[str, float]:
        """QDagger's offline phase on the teacher's transitions ``data``.

        ``updates`` updates of TD plus distillation at weight ``distill_weight`` (the
        teacher actions of ``data`` are its own actions).

        The observation normaliser is first fitted to the teacher's observations. These
        updates do not count in :attr:`updates` (schedules start at the online phase).
        """
        if data.sampleable == 0:
            raise ValueError("the teacher's data holds no transition to pretrain on")
        written = min(data.written, data.capacity)
        self.update_norm(data.obs[:written].reshape(-1, data.obs.shape[-1]))
        self.teacher = True
        stats: list[dict] = []
        for i in range(updates):
            stats.append(self._learn(data, self.config.distill_weight, i))
        if not stats:
            return {}
        return {k: float(np.mean([float(s[k]) for s in stats])) for k in stats[0]}

    def epsilon(self) -> float:
        """Exploration rate at the current env step (linear decay)."""
        cfg = self.config
        frac = min(1.0, self.env_steps / (cfg.eps_decay_fraction * self.total_steps))
        return cfg.eps_start + frac * (cfg.eps_end - cfg.eps_start)

    def act(self, obs: np.ndarray) -> np.ndarray:
        """Epsilon-greedy actions."""
        flat = self.flat(obs)
        self.update_norm(flat)
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
        teacher_action: np.ndarray | None = None,
    ) -> dict[str, float]:
        """Store the step; make the updates the replay ratio owes.

        ``teacher_action`` holds the teacher's actions (agent units) when reincarnating.
        """
        self.replay.add(
            self.flat(obs), self._last_action, reward, terminated, truncated,
            self.flat(next_obs), teacher_action,
        )  # fmt: skip
        self.env_steps += self.n_envs
        cfg = self.config
        if self.env_steps < cfg.learning_starts or self.replay.sampleable == 0:
            return {}
        self._update_credit += cfg.replay_ratio * self.n_envs
        stats: list[dict] = []
        while self._update_credit >= 1.0:
            self._update_credit -= 1.0
            stats.append(self._learn(self.replay, self.distill_weight(), self.updates))
            self.updates += 1
            if cfg.reset_interval and self.updates % cfg.reset_interval == 0:
                self.reset_network()
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


@dataclasses.dataclass(frozen=True, kw_only=True)
class BBFConfig(QRDQNConfig):
    """Settings of ``bbf``: every BBF ingredient on, at BBF's values unless noted.

    BBF (Schwarzer et al. 2023) on Atari: width scale 4, n 10 -> 3 and gamma 0.97 -> 0.997
    over 10k updates after each reset, EMA target tau 0.005, AdamW lr 1e-4 and weight decay
    0.1, SPR with K = 5 and weight 5, replay ratio 8, resets every 40k updates with alpha
    0.5, batch 32, C51 as its distributional head (the official ``BBF.gin``:
    ``min_gamma = 0.97``, ``gamma = 0.997``, ``cycle_steps = 10_000`` for both schedules).
    Here: the same n and gamma schedules (:mod:`~twinloop.controllers.rl.bbf`), quantile
    regression as the distributional head (our family's), width scale 2 over the 128x128
    MLP and replay ratio 2 to fit a CPU.
    """

    width_scale: int = param(
        2, ge=1, le=16, doc="multiplies the encoder's hidden widths and CNN channels (BBF)"
    )
    n_step: int = param(3, ge=1, le=100, doc="n-step at the end of each anneal")
    n_step_start: int = param(
        10, ge=0, le=100, doc="n-step annealed from this to n_step after each reset (0: fixed)"
    )
    gamma: float = param(0.997, ge=0.0, le=1.0, doc="discount (at the end of each anneal)")
    gamma_start: float = param(
        0.97,
        ge=0.0,
        lt=1.0,
        doc="gamma annealed from this to gamma over n_step_anneal updates after each reset, "
        "exponentially in 1/(1-gamma) (BBF: 0.97 -> 0.997; 0: fixed gamma)",
    )
    double_q: bool = param(True, doc="double Q-learning: the online net picks the next action")
    target_ema_tau: float = param(
        0.005, ge=0.0, le=1.0, doc="EMA rate of the target net per update (0: hard copies)"
    )
    lr: float = param(1e-4, gt=0.0, le=1.0, doc="AdamW learning rate")
    weight_decay: float = param(0.1, ge=0.0, le=10.0, doc="AdamW weight decay (BBF: 0.1)")
    spr_steps: int = param(5, ge=0, le=100, doc="SPR: steps K of latent prediction (0: no SPR)")
    replay_ratio: float = param(2.0, gt=0.0, le=64.0, doc="gradient updates per env step")
    batch_size: int = param(32, ge=1, le=65536, doc="transitions per gradient update")
    reset_interval: int = param(
        40_000, ge=0, doc="updates between shrink-and-perturb + last-layer resets (0: none)"
    )


class BBFAgent(DQNAgent):
    """The ``bbf`` preset: :class:`DQNAgent` with every BBF ingredient (see :class:`BBFConfig`)."""

    name = "bbf"
    Config = BBFConfig
