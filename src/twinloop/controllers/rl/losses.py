"""Loss functions and target-network updates shared by the agents (pure JAX).

* Huber loss (Huber 1964), the TD loss of DQN (Mnih et al. 2015 clip the TD error's
  gradient to [-1, 1], which is the Huber loss with ``kappa = 1``).
* Quantile Huber loss (Dabney et al. 2018, "Distributional RL with Quantile Regression",
  eq. 10): for predicted quantiles ``theta_i`` at fractions ``tau_i = (2i + 1) / 2N`` and
  target samples ``T_j``, ``rho_tau(u) = |tau - 1{u < 0}| L_kappa(u) / kappa`` with
  ``u = T_j - theta_i``, averaged over ``j`` and summed over ``i``. With ``kappa -> 0`` it is
  the quantile regression (pinball) loss, whose minimiser is the ``tau``-quantile.
* Target networks: a hard copy every ``period`` updates (Mnih et al. 2015) or an
  exponential moving average ``target <- (1 - tau) target + tau online`` (Lillicrap et al.
  2016; BBF, Schwarzer et al. 2023, uses it for value-based agents).
"""

from __future__ import annotations

from typing import Any


def huber(u: Any, kappa: float = 1.0) -> Any:
    """Elementwise Huber loss: ``u^2 / 2`` inside ``|u| <= kappa``, linear outside."""
    import jax.numpy as jnp

    a = jnp.abs(u)
    return jnp.where(a <= kappa, 0.5 * u * u, kappa * (a - 0.5 * kappa))


def quantile_fractions(n: int) -> Any:
    """The midpoints ``tau_i = (2i + 1) / (2n)`` of ``n`` equal quantile bins."""
    import jax.numpy as jnp

    if n < 1:
        raise ValueError(f"number of quantiles must be >= 1, got {n}")
    return (2.0 * jnp.arange(n, dtype=jnp.float32) + 1.0) / (2.0 * n)


def quantile_huber_loss(pred: Any, target: Any, taus: Any, kappa: float = 1.0) -> Any:
    """Quantile Huber loss of predicted quantiles against target samples, batch mean.

    Args:
        pred: ``(B, N)`` predicted quantiles ``theta_i``.
        target: ``(B, M)`` target samples (not differentiated through by callers).
        taus: ``(N,)`` quantile fractions of ``pred``.
        kappa: Huber threshold (> 0).

    Returns:
        Scalar loss.
    """
    import jax.numpy as jnp

    u = target[:, None, :] - pred[:, :, None]  # (B, N, M)
    weight = jnp.abs(taus[None, :, None] - (u < 0).astype(pred.dtype))
    rho = weight * huber(u, kappa) / kappa
    return rho.mean(axis=2).sum(axis=1).mean()


def ema_update(target: Any, online: Any, tau: float) -> Any:
    """``(1 - tau) * target + tau * online`` leaf by leaf (``tau = 1``: a hard copy)."""
    import jax

    return jax.tree_util.tree_map(lambda t, o: (1.0 - tau) * t + tau * o, target, online)


def normalized_l2(pred: Any, target: Any) -> Any:
    """``|| p / |p| - t / |t| ||^2 = 2 - 2 cos(p, t)`` over the last axis (0 where equal).

    The self-predictive loss of SPR (Schwarzer et al. 2021, "Data-Efficient RL with
    Self-Predictive Representations"), used by BBF: a cosine similarity, shifted so that a
    perfect prediction costs nothing.
    """
    import jax.numpy as jnp

    p = pred / jnp.sqrt(jnp.sum(pred * pred, axis=-1, keepdims=True) + 1e-12)
    t = target / jnp.sqrt(jnp.sum(target * target, axis=-1, keepdims=True) + 1e-12)
    return jnp.sum((p - t) ** 2, axis=-1)


def distillation_loss(q: Any, teacher_action: Any, temperature: float) -> Any:
    """QDagger's distillation term: cross-entropy of the teacher's policy and softmax(Q / T).

    Agarwal et al. 2022 ("Reincarnating RL", eq. 2) distil ``pi_T`` into the student's
    ``softmax(Q_S / T)``. Our teachers may be classical controllers that give an action and
    no probabilities, so ``pi_T`` is the teacher's action as a one-hot (a greedy teacher);
    the term is then ``-log softmax(Q_S / T)[a_T]``, averaged over rows that have a teacher
    action (``teacher_action >= 0``; 0 when none has).

    Args:
        q: ``(B, A)`` the student's action values.
        teacher_action: ``(B,)`` the teacher's action index, ``-1`` where there is none.
        temperature: ``T`` (> 0).
    """
    import jax
    import jax.numpy as jnp

    logp = jax.nn.log_softmax(q / temperature, axis=-1)
    has = teacher_action >= 0
    picked = jnp.take_along_axis(logp, jnp.maximum(teacher_action, 0)[:, None], axis=-1)[:, 0]
    return -jnp.sum(jnp.where(has, picked, 0.0)) / jnp.maximum(jnp.sum(has), 1)
