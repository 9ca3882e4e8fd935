"""The control-suite task math in ``jax.numpy``: :mod:`.task`'s row functions, once more for JAX.

:func:`observe` maps one measurement row (:func:`~.kernel.measurement_layout`) to the task's
observation and reward exactly as :func:`~.task.observe_batch` does for a row in numba: the same
fields in the same order, the same ``tolerance`` sigmoids, reward 0 when the row flags unstable
physics. It is written for one row and mapped over a batch with ``jax.vmap``; the measurement
offsets and the task parameters are static (Python numbers from :func:`~.task.measurement_offsets`
and :func:`~.task.task_params`), so the branches on domain and task vanish when it is traced.
``tests/sim/locomotion/test_mjx.py`` checks it against ``observe_batch`` on random and real
measurement rows of every task, in float64: rewards to 1e-9 relative, observations (float32 in
both envs) to 1e-6 relative.

The computation follows the dtype of ``meas`` (float32 by default in JAX, float64 with
``jax_enable_x64``). Only :mod:`jax.numpy` is imported; the module is loaded by
:mod:`twinloop.sim.locomotion.mjx`, never by ``import twinloop``.

[DMC] Tassa et al., arXiv:1801.00690 (2018); ``dm_control/suite/*.py`` and
``dm_control/utils/rewards.py`` 1.0.50 (see :mod:`.task` for the table of observations and
rewards).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax.numpy as jnp
import numpy as np

from twinloop.sim.locomotion import task as T
from twinloop.sim.locomotion.config import DmcConfig


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """The static description of a task that :func:`observe` reads (hashable).

    Attributes:
        domain: Domain code (:data:`~.task.DOMAIN_CODES`).
        speed: The task's speed (m/s; 0 for the stand tasks).
        nq: Generalised positions.
        nv: Degrees of freedom.
        nu: Actuators.
        offsets: Where each measurement field starts, in layout order.
        obs_size: Observation length.
    """

    domain: int
    speed: float
    nq: int
    nv: int
    nu: int
    offsets: tuple[int, ...]
    obs_size: int

    @classmethod
    def of(cls, cfg: DmcConfig) -> TaskSpec:
        """The spec of ``cfg``'s task (from :func:`~.task.task_params` and its offsets)."""
        tp = T.task_params(cfg)
        return cls(
            domain=int(tp[T.TP_DOMAIN]),
            speed=float(tp[T.TP_SPEED]),
            nq=int(tp[T.TP_NQ]),
            nv=int(tp[T.TP_NV]),
            nu=int(tp[T.TP_NU]),
            offsets=tuple(int(o) for o in T.measurement_offsets(cfg)),
            obs_size=T.observation_layout(cfg).size,
        )


def tolerance(
    x: Any, lower: float, upper: float, margin: float, sigmoid: int, value_at_margin: float
) -> Any:
    """:func:`~.task.tolerance` elementwise: 1 in ``[lower, upper]``, a sigmoid outside.

    The bounds, margin, sigmoid and value at the margin are Python numbers (static).
    """
    inside = (x >= lower) & (x <= upper)
    if margin == 0.0:
        return jnp.where(inside, 1.0, 0.0).astype(x.dtype)
    # the distance to the nearest bound; the side that is never used may be inf, never NaN
    d = jnp.where(x < lower, lower - x, x - upper) / margin
    if sigmoid == T.SIGMOID_GAUSSIAN:
        scale = math.sqrt(-2.0 * math.log(value_at_margin))
        value = jnp.exp(-0.5 * (d * scale) ** 2)
    elif sigmoid == T.SIGMOID_LINEAR:
        scaled = d * (1.0 - value_at_margin)
        value = jnp.where(jnp.abs(scaled) < 1.0, 1.0 - scaled, 0.0)
    else:
        scaled = d * math.sqrt(1.0 - value_at_margin)
        value = jnp.where(jnp.abs(scaled) < 1.0, 1.0 - scaled**2, 0.0)
    return jnp.where(inside, 1.0, value).astype(x.dtype)


def _small_control(ctrl: Any) -> Any:
    """(4 + mean_k tol(u_k, 0, 0, 1, quadratic, 0)) / 5: dm_control's small-control term."""
    return (4.0 + jnp.mean(tolerance(ctrl, 0.0, 0.0, 1.0, T.SIGMOID_QUADRATIC, 0.0))) / 5.0


def _cheetah(m: Any, s: TaskSpec) -> tuple[Any, Any]:
    mo = s.offsets
    obs = jnp.concatenate([m[mo[0] + 1 : mo[0] + s.nq], m[mo[1] : mo[1] + s.nv]])
    return obs, tolerance(m[mo[3]], s.speed, math.inf, s.speed, T.SIGMOID_LINEAR, 0.0)


def _walker(m: Any, s: TaskSpec) -> tuple[Any, Any]:
    mo = s.offsets
    height = m[mo[5]]
    obs = jnp.concatenate([m[mo[4] : mo[5]], m[mo[5] : mo[5] + 1], m[mo[1] : mo[1] + s.nv]])
    h = T.WALKER_STAND_HEIGHT_M
    standing = tolerance(height, h, math.inf, h / 2, T.SIGMOID_GAUSSIAN, 0.1)
    upright = (1.0 + m[mo[6]]) / 2.0
    stand = (3.0 * standing + upright) / 4.0
    if s.speed == 0.0:
        return obs, stand
    move = tolerance(m[mo[3]], s.speed, math.inf, s.speed / 2.0, T.SIGMOID_LINEAR, 0.5)
    return obs, stand * (5.0 * move + 1.0) / 6.0


def _hopper(m: Any, s: TaskSpec) -> tuple[Any, Any]:
    mo = s.offsets
    obs = jnp.concatenate(
        [m[mo[0] + 1 : mo[0] + s.nq], m[mo[1] : mo[1] + s.nv], jnp.log1p(m[mo[4] : mo[4] + 2])]
    )
    height = m[mo[5]] - m[mo[5] + 1]
    standing = tolerance(height, T.HOPPER_STAND_HEIGHT_M, T.HOPPER_MAX_HEIGHT_M, 0.0, 0, 0.1)
    if s.speed > 0.0:
        move = tolerance(m[mo[3]], s.speed, math.inf, s.speed / 2.0, T.SIGMOID_LINEAR, 0.5)
        return obs, standing * move
    ctrl = m[mo[2] : mo[2] + s.nu]
    small = jnp.mean(tolerance(ctrl, 0.0, 0.0, 1.0, T.SIGMOID_QUADRATIC, 0.0))
    return obs, standing * (small + 4.0) / 5.0


def _humanoid(m: Any, s: TaskSpec) -> tuple[Any, Any]:
    mo = s.offsets
    head = m[mo[4]]
    torso = m[mo[5] : mo[5] + 9].reshape(3, 3)  # row-major frame: rows are x, y, z of world
    limbs = m[mo[7] : mo[7] + 12].reshape(4, 3) - m[mo[6] : mo[6] + 3]
    extremities = (limbs @ torso).ravel()  # (x_limb - x_torso) . R: the limb in the torso frame
    obs = jnp.concatenate(
        [
            m[mo[0] + 7 : mo[0] + s.nq],  # joint angles: the free root's 7 entries skipped
            m[mo[4] : mo[4] + 1],
            extremities,
            torso[2],  # zx, zy, zz
            m[mo[3] : mo[3] + 3],
            m[mo[1] : mo[1] + s.nv],
        ]
    )
    h = T.HUMANOID_STAND_HEIGHT_M
    standing = tolerance(head, h, math.inf, h / 4.0, T.SIGMOID_GAUSSIAN, 0.1)
    upright = tolerance(torso[2, 2], 0.9, math.inf, 1.9, T.SIGMOID_LINEAR, 0.0)
    control = _small_control(m[mo[2] : mo[2] + s.nu])
    vx, vy = m[mo[3]], m[mo[3] + 1]
    if s.speed == 0.0:
        dont_move = (
            tolerance(vx, 0.0, 0.0, 2.0, T.SIGMOID_GAUSSIAN, 0.1)
            + tolerance(vy, 0.0, 0.0, 2.0, T.SIGMOID_GAUSSIAN, 0.1)
        ) / 2.0
        return obs, control * (standing * upright) * dont_move
    move = tolerance(jnp.sqrt(vx * vx + vy * vy), s.speed, math.inf, s.speed, T.SIGMOID_LINEAR, 0.0)
    return obs, control * (standing * upright) * ((5.0 * move + 1.0) / 6.0)


def _quadruped(m: Any, s: TaskSpec) -> tuple[Any, Any]:
    mo = s.offsets  # fields 4..9: hinge qpos, hinge qvel, act, torso zz, imu, force/torque
    upright = m[mo[7]]
    obs = jnp.concatenate(
        [
            m[mo[4] : mo[7]],
            m[mo[3] : mo[3] + 3],
            m[mo[7] : mo[7] + 1],
            m[mo[8] : mo[9]],
            jnp.arcsinh(m[mo[9] : mo[10]]),
        ]
    )
    move = tolerance(m[mo[3]], s.speed, math.inf, s.speed, T.SIGMOID_LINEAR, 0.5)
    return obs, tolerance(upright, 1.0, math.inf, 2.0, T.SIGMOID_LINEAR, 0.0) * move


_ROWS = {0: _cheetah, 1: _walker, 2: _hopper, 3: _humanoid, 4: _quadruped}


def observe(meas: Any, spec: TaskSpec) -> tuple[Any, Any]:
    """Observation and reward of one measurement row (reward 0 if it flags unstable physics).

    Args:
        meas: One measurement row, shape ``(n_meas,)`` (any float dtype; ``vmap`` for a batch).
        spec: The task (:meth:`TaskSpec.of`).

    Returns:
        ``(obs, reward)``: shape ``(obs_size,)`` and ``()``, in ``meas``'s dtype.

    Raises:
        ValueError: ``meas`` is not one row of this domain's measurement.
    """
    n_meas = int(np.shape(meas)[-1]) if np.ndim(meas) else 0
    if np.ndim(meas) != 1 or n_meas <= spec.offsets[-1]:
        raise ValueError(
            f"observe takes one measurement row of at least {spec.offsets[-1] + 1} entries "
            f"(vmap it over a batch); got shape {np.shape(meas)}"
        )
    obs, reward = _ROWS[spec.domain](meas, spec)
    return obs, jnp.where(meas[-1] > 0.0, jnp.zeros_like(reward), reward)
