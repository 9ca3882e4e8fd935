"""BBF's ingredients as pure functions: the n-step schedule, SPR, shrink-and-perturb, resets.

Schwarzer et al. 2023, "Bigger, Better, Faster: Human-level Atari with human-level
efficiency", put these on a value-based agent (the flags live in
:class:`~twinloop.controllers.rl.dqn.DQNConfig`, the ``bbf`` preset there):

* a wider network (``width_scale`` multiplies the encoder's hidden widths; BBF scales its
  Impala CNN by 4);
* the update horizon ``n`` annealed from 10 to 3 over the first updates after every reset,
  exponentially (:func:`n_step_at`), and over the same updates the discount ``gamma`` from
  0.97 to 0.997, exponentially in the horizon ``1 / (1 - gamma)`` (:func:`gamma_at`; the
  official code, google-research/bigger_better_faster ``BBF.gin``: ``min_gamma = 0.97``,
  ``gamma = 0.997``, ``cycle_steps = 10_000``, one clock for both schedules);
* a target network by EMA and AdamW weight decay (in :mod:`~twinloop.controllers.rl.dqn`);
* self-predictive representations (SPR; Schwarzer et al. 2021): from the encoding of
  ``s_t`` a latent dynamics model rolls ``K`` steps forward with the actions taken; each
  predicted latent is projected and passed through a prediction head, and compared by
  cosine (:func:`~twinloop.controllers.rl.losses.normalized_l2`) with the projection of the
  encoding of ``s_{t+k}`` by the EMA target network (no gradient), steps after an episode's
  end masked out (:func:`spr_loss`);
* the primacy-bias fix (Nikishin et al. 2022, "The Primacy Bias in Deep RL"; BBF's form):
  at a fixed interval of updates the encoder and the dynamics model are shrunk and
  perturbed, ``theta <- alpha theta + (1 - alpha) phi`` with ``phi`` a fresh initialisation
  (Ash & Adams 2020), and the last layers (Q head, SPR projection and prediction) are
  re-initialised in full (:func:`reset_params`).

The dynamics model acts on the encoder's output (after the torso, for image observations
too), so it is a two-layer MLP over ``[latent, one-hot action]`` rather than BBF's
convolutional one over the CNN's feature map.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from twinloop.controllers.rl.networks import (
    Params,
    dense_apply,
    dense_init,
    encoder_apply,
)
from twinloop.controllers.rl.policy import PolicySpec, policy_init

#: Leaves shrunk and perturbed at a reset; every other top-level part is re-initialised.
SHRUNK = ("encoder", "spr/dynamics")


def n_step_at(updates_since_reset: int, n_start: int, n_end: int, anneal_updates: int) -> int:
    """The update horizon ``n`` after ``updates_since_reset`` updates.

    Exponential interpolation from ``n_start`` to ``n_end`` over ``anneal_updates`` updates,
    rounded to the nearest integer, then ``n_end`` (BBF: 10 to 3 over 10k updates). With
    ``n_start == 0`` or ``anneal_updates == 0`` it is ``n_end`` throughout.
    """
    if n_start <= 0 or anneal_updates <= 0:
        return int(n_end)
    frac = min(1.0, max(0, updates_since_reset) / anneal_updates)
    return int(round(n_start * math.exp(frac * math.log(n_end / n_start))))


def gamma_at(
    updates_since_reset: int, gamma_start: float, gamma_end: float, anneal_updates: int
) -> float:
    """The discount ``gamma`` after ``updates_since_reset`` updates.

    ``1 - gamma`` is interpolated geometrically from ``1 - gamma_start`` to ``1 - gamma_end``
    over ``anneal_updates`` updates, then ``gamma_end``: the horizon ``1 / (1 - gamma)``
    grows exponentially, from 33 to 333 steps for BBF's 0.97 -> 0.997 (Schwarzer et al.
    2023; their ``exponential_decay_scheduler(..., reverse=True)``). With
    ``gamma_start == 0`` or ``anneal_updates == 0`` it is ``gamma_end`` throughout.

    Raises:
        ValueError: An annealed gamma outside ``[0, 1)`` (a horizon must be finite).
    """
    if gamma_start <= 0 or anneal_updates <= 0:
        return float(gamma_end)
    for name, g in (("gamma_start", gamma_start), ("gamma", gamma_end)):
        if not 0.0 <= g < 1.0:
            raise ValueError(f"an annealed discount needs 0 <= {name} < 1, got {g}")
    frac = min(1.0, max(0, updates_since_reset) / anneal_updates)
    lo, hi = math.log(1.0 - gamma_start), math.log(1.0 - gamma_end)
    return float(1.0 - math.exp(lo + frac * (hi - lo)))


def spr_init(
    rng: np.random.Generator, latent_dim: int, n_actions: int, hidden: int, proj_dim: int
) -> Params:
    """Parameters of the dynamics model, the projection and the prediction head."""
    gain = math.sqrt(2.0)
    return {
        "dynamics": [
            dense_init(rng, latent_dim + n_actions, hidden, gain),
            dense_init(rng, hidden, latent_dim, gain),
        ],
        "projection": dense_init(rng, latent_dim, proj_dim, gain),
        "prediction": dense_init(rng, proj_dim, proj_dim, 1.0),
    }


def dynamics_apply(xp: Any, params: Params, latent: Any, action_onehot: Any) -> Any:
    """The next latent predicted from a latent and a one-hot action (a ReLU MLP)."""
    x = xp.concatenate([latent, action_onehot], axis=-1)
    x = xp.maximum(dense_apply(params["dynamics"][0], x), 0.0)
    return xp.maximum(dense_apply(params["dynamics"][1], x), 0.0)


def spr_loss(params: Params, target: Params, batch: dict[str, Any], spec: PolicySpec) -> Any:
    """SPR's loss of a batch (see the module docstring).

    The sum over ``K`` steps of the masked batch mean of
    ``normalized_l2(prediction, target projection)``.

    ``params`` and ``target`` hold ``encoder`` and ``spr``; ``batch`` holds ``obs``
    (encoder inputs of ``B`` rows) and, from :meth:`ReplayBuffer.sample` with
    ``sequence=K``, ``seq_action``, ``seq_next_obs`` (encoder inputs, ``(B, K, ...)``
    leaves) and ``seq_mask``.
    """
    import jax
    import jax.numpy as jnp

    from twinloop.controllers.rl.losses import normalized_l2

    latent = encoder_apply(jnp, params["encoder"], spec.encoder, batch["obs"])
    steps = batch["seq_action"].shape[1]
    total = jnp.zeros((), jnp.float32)
    for k in range(steps):
        onehot = jax.nn.one_hot(batch["seq_action"][:, k], spec.n_actions, dtype=latent.dtype)
        latent = dynamics_apply(jnp, params["spr"], latent, onehot)
        pred = dense_apply(
            params["spr"]["prediction"], dense_apply(params["spr"]["projection"], latent)
        )
        nxt = jax.tree_util.tree_map(lambda a, k=k: a[:, k], batch["seq_next_obs"])
        goal = encoder_apply(jnp, target["encoder"], spec.encoder, nxt)
        goal = jax.lax.stop_gradient(dense_apply(target["spr"]["projection"], goal))
        total = total + jnp.mean(batch["seq_mask"][:, k] * normalized_l2(pred, goal))
    return total


def shrink_perturb(params: Any, fresh: Any, alpha: float) -> Any:
    """``alpha * theta + (1 - alpha) * phi`` leaf by leaf (``alpha = 1``: unchanged)."""
    import jax

    return jax.tree_util.tree_map(lambda p, f: alpha * p + (1.0 - alpha) * f, params, fresh)


def fresh_params(
    rng: np.random.Generator, obs_dim: int, spec: PolicySpec, spr: tuple[int, int] | None
) -> Params:
    """A new initialisation of the whole learner network (policy, and SPR if ``spr``).

    Args:
        rng: Draws the weights.
        obs_dim: Width of the encoder's vector input (a flat observation's).
        spec: The Q network's shape.
        spr: ``(hidden, proj_dim)`` of the SPR modules, or None without SPR.
    """
    params = policy_init(rng, obs_dim, spec, gain=1.0)
    if spr is not None:
        params["spr"] = spr_init(rng, spec.encoder.out_dim, spec.n_actions, *spr)
    return params


def reset_params(params: Params, fresh: Params, alpha: float) -> Params:
    """BBF's reset of the learner network towards a fresh initialisation ``fresh``.

    :data:`SHRUNK` parts are shrunk and perturbed (:func:`shrink_perturb`); the rest (Q
    head, SPR projection and prediction) are replaced by ``fresh``.
    """
    out: Params = {"encoder": shrink_perturb(params["encoder"], fresh["encoder"], alpha)}
    out["head"] = fresh["head"]
    if "spr" in params:
        out["spr"] = {
            "dynamics": shrink_perturb(params["spr"]["dynamics"], fresh["spr"]["dynamics"], alpha),
            "projection": fresh["spr"]["projection"],
            "prediction": fresh["spr"]["prediction"],
        }
    return out
