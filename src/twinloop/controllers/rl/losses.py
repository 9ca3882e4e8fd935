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
