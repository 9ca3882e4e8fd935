"""Return targets: n-step returns for replay, generalised advantage estimation for PPO.

Both keep ``terminated`` and ``truncated`` apart: a terminated episode has no future value,
a truncated one (a time limit, or the trainer cutting episodes at a checkpoint) is
bootstrapped from the value of its final observation (Pardo et al. 2018, "Time Limits in
Reinforcement Learning").

* n-step return (Sutton 1988; Hessel et al. 2018, Rainbow):
  ``G = sum_{k<m} gamma^k r_{t+k} + gamma^m (1 - term_{t+m-1}) Q(s'_{t+m-1})`` where ``m <= n``
  stops at the first step that ends the episode.
* GAE (Schulman et al. 2016): ``delta_t = r_t + gamma (1 - term_t) V(s'_t) - V(s_t)`` and
  ``A_t = delta_t + gamma lambda (1 - ended_t) A_{t+1}``, with ``s'_t`` the step's next
  observation (the final one where the episode ended).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def nstep_targets(
    rewards: np.ndarray, terminated: np.ndarray, truncated: np.ndarray, gamma: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Discounted sums over windows of ``n`` steps that stop where an episode ends.

    Args:
        rewards: ``(B, n)`` rewards of steps ``t .. t+n-1`` of each sampled window.
        terminated: ``(B, n)`` whether each step ended its episode in a terminal state.
        truncated: ``(B, n)`` whether each step ended its episode by truncation.
        gamma: Discount in ``[0, 1]``.

    Returns:
        ``(returns, bootstrap_discount, last)``: the discounted reward sum ``(B,)``, the factor
        ``gamma^m (1 - term)`` that multiplies the bootstrap value ``(B,)``, and the index
        ``m - 1`` of the step whose next observation is bootstrapped from ``(B,)``.
    """
    rewards = np.asarray(rewards, dtype=np.float64)
    b, n = rewards.shape
    ended = np.asarray(terminated, bool) | np.asarray(truncated, bool)
    # a step counts when no earlier step of the window ended the episode
    ended_before = np.zeros((b, n), dtype=bool)
    ended_before[:, 1:] = np.cumsum(ended[:, :-1], axis=1) > 0
    live = ~ended_before
    powers = gamma ** np.arange(n, dtype=np.float64)
    returns = (rewards * powers * live).sum(axis=1)
    m = live.sum(axis=1)  # steps used, >= 1
    last = m - 1
    term_last = np.asarray(terminated, bool)[np.arange(b), last]
    discount = gamma ** m.astype(np.float64) * (~term_last)
    return returns, discount, last


def gae(
    rewards: Any,
    values: Any,
    next_values: Any,
    terminated: Any,
    truncated: Any,
    gamma: float,
    lam: float,
) -> tuple[Any, Any]:
    """Generalised advantage estimates and value targets of a rollout (pure, jittable).

    Args:
        rewards: ``(T, N)`` rewards.
        values: ``(T, N)`` ``V(s_t)``.
        next_values: ``(T, N)`` ``V(s'_t)``: of the next observation, or of the final
            observation where the episode ended at step ``t``.
        terminated: ``(T, N)`` terminal flags.
        truncated: ``(T, N)`` truncation flags.
        gamma: Discount.
        lam: GAE's ``lambda``.

    Returns:
        ``(advantages, returns)``, each ``(T, N)``; ``returns = advantages + values``.
    """
    import jax
    import jax.numpy as jnp

    term = jnp.asarray(terminated, jnp.float32)
    ended = jnp.maximum(term, jnp.asarray(truncated, jnp.float32))
    deltas = rewards + gamma * (1.0 - term) * next_values - values

    def back(carry: Any, x: Any) -> tuple[Any, Any]:
        delta, end = x
        adv = delta + gamma * lam * (1.0 - end) * carry
        return adv, adv

    _, adv = jax.lax.scan(back, jnp.zeros_like(deltas[0]), (deltas, ended), reverse=True)
    return adv, adv + values
