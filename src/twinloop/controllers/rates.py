"""A learned model of beam-driven Si transition rates (JAX + optax to train, numpy to use).

Schwarzer et al., arXiv:2311.17894 (``shared/reference/stem.md``): inputs are the current (nA),
the voltage (kV) and the beam offset in bond lengths in the canonical frame; an MLP gives three
neighbour logits and a total rate (softplus); the rate towards neighbour k is
``softmax(logits)_k x total``. The loss of one dwell of length dt with total rate L is the
survival term ``-log(1 - exp(-L dt))`` if the Si hopped (plus the cross-entropy of which
neighbour) and ``L dt`` if it did not. Training data are C3v-augmented; an ensemble of members
trained on bootstrap resamples gives an uncertainty.

Training imports JAX lazily; a trained model evaluates in plain numpy, so controllers that use
it start fast and need no JAX. Models are saved as ``.npz`` (arrays only, no pickle) with their
metadata as JSON.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from twinloop.controllers.transitions import _ROT120, BOND_ANGSTROM, Transitions, augment_c3v

#: Input normalisation: (current / 0.1 nA, (voltage - 60 kV) / 10 kV).
CURRENT_SCALE_NA = 0.1
VOLTAGE_CENTRE_KV = 60.0
VOLTAGE_SCALE_KV = 10.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class RateTrainingConfig:
    """How the rate model is trained."""

    hidden: tuple[int, ...] = (64, 64)
    ensemble: int = 5  # members, each on a bootstrap resample of the transitions
    steps: int = 3000
    batch_size: int = 512
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    augment: bool = True  # C3v augmentation (x 6)
    seed: int = 0


def _features(beam: np.ndarray, current_na: np.ndarray, voltage_kv: np.ndarray) -> np.ndarray:
    return np.column_stack(
        [
            beam[:, 0],
            beam[:, 1],
            np.asarray(current_na) / CURRENT_SCALE_NA,
            (np.asarray(voltage_kv) - VOLTAGE_CENTRE_KV) / VOLTAGE_SCALE_KV,
        ]
    ).astype(np.float32)


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, x)


@dataclasses.dataclass
class RateModel:
    """A trained ensemble.

    Attributes:
        weights: Per layer, ``(members, in, out)`` arrays.
        biases: Per layer, ``(members, out)`` arrays.
        info: Training metadata (config, data counts, final loss).
    """

    weights: list[np.ndarray]
    biases: list[np.ndarray]
    info: dict[str, Any]

    @property
    def members(self) -> int:
        """Ensemble size."""
        return int(self.weights[0].shape[0])

    def rates(
        self,
        beam: np.ndarray,
        current_na: float | np.ndarray,
        voltage_kv: float | np.ndarray,
        symmetrize: bool = True,
    ) -> np.ndarray:
        """Per-member rates (1/s) towards the three canonical neighbours.

        Args:
            beam: ``(n, 2)`` beam offsets in bond lengths, canonical frame.
            current_na: Current(s).
            voltage_kv: Voltage(s).
            symmetrize: Average over the six C3v images of the input (group averaging), so
                the prediction is exactly C3v-equivariant like the physics.

        Returns:
            ``(members, n, 3)``.
        """
        beam = np.atleast_2d(np.asarray(beam, dtype=np.float64))
        if not symmetrize:
            return self._raw_rates(beam, current_na, voltage_kv)
        total = np.zeros((self.members, beam.shape[0], 3))
        for mirror in (False, True):
            b = beam * np.array([1.0, -1.0]) if mirror else beam
            perm_m = np.array([0, 2, 1]) if mirror else np.arange(3)
            for r in range(3):
                rot = np.linalg.matrix_power(_ROT120, r)
                out = self._raw_rates(b @ rot.T, current_na, voltage_kv)
                # equivariance: lambda_k(b) = lambda_{(m(k) + r) % 3}(R^r M b)
                total += out[..., (perm_m + r) % 3]
        return total / 6.0

    def _raw_rates(
        self, beam: np.ndarray, current_na: float | np.ndarray, voltage_kv: float | np.ndarray
    ) -> np.ndarray:
        n = beam.shape[0]
        x = _features(beam, np.broadcast_to(current_na, n), np.broadcast_to(voltage_kv, n))
        h = np.broadcast_to(x, (self.members, *x.shape)).astype(np.float64)
        for layer, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            h = np.einsum("mni,mio->mno", h, w) + b[:, None, :]
            if layer < len(self.weights) - 1:
                h = np.tanh(h)
        logits, raw_total = h[..., :3], h[..., 3]
        p = np.exp(logits - logits.max(axis=-1, keepdims=True))
        p /= p.sum(axis=-1, keepdims=True)
        return p * _softplus(raw_total)[..., None]

    def mean_rates(self, beam: np.ndarray, current_na: float, voltage_kv: float) -> np.ndarray:
        """Ensemble-mean rates, ``(n, 3)``."""
        return self.rates(beam, current_na, voltage_kv).mean(axis=0)

    def optimum(
        self, current_na: float, voltage_kv: float, reach_bonds: float = 2.5, n_grid: int = 121
    ) -> tuple[np.ndarray, float]:
        """The beam offset (A, canonical frame) maximising the rate towards neighbour 0."""
        g = np.linspace(-reach_bonds, reach_bonds, n_grid)
        xx, yy = np.meshgrid(g, g)
        beam = np.column_stack([xx.ravel(), yy.ravel()])
        r0 = self.mean_rates(beam, current_na, voltage_kv)[:, 0]
        k = int(np.argmax(r0))
        return beam[k] * BOND_ANGSTROM, float(r0[k])

    # persistence ---------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write ``.npz`` arrays plus JSON metadata (no pickle)."""
        arrays = {f"w{k}": w for k, w in enumerate(self.weights)}
        arrays.update({f"b{k}": b for k, b in enumerate(self.biases)})
        arrays["info"] = np.array(json.dumps(self.info))
        with open(path, "wb") as fh:
            np.savez(fh, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> RateModel:
        """Read a model written by :meth:`save`."""
        with np.load(path, allow_pickle=False) as data:
            n = sum(1 for k in data.files if k.startswith("w"))
            if n == 0 or "info" not in data.files:
                raise ValueError(f"{path} is not a twinloop rate model")
            weights = [data[f"w{k}"] for k in range(n)]
            biases = [data[f"b{k}"] for k in range(n)]
            info = json.loads(str(data["info"]))
        return cls(weights, biases, info)


def survival_loss(total: np.ndarray, dwell: np.ndarray, hopped: np.ndarray) -> np.ndarray:
    """Per-transition survival term: ``-log(1 - exp(-L dt))`` if hopped, else ``L dt``."""
    x = np.asarray(total) * np.asarray(dwell)
    return np.where(hopped, -np.log(-np.expm1(-np.maximum(x, 1e-12))), x)


def train(
    data: Transitions,
    cfg: RateTrainingConfig | None = None,
    progress: Callable[[int, int, float], None] | None = None,
) -> RateModel:
    """Fit the ensemble by Adam on the survival + which-neighbour likelihood.

    Args:
        data: Canonicalised transitions (not yet augmented).
        cfg: Training settings.
        progress: Called as ``progress(step, steps, loss)`` every 100 steps.
    """
    import jax
    import jax.numpy as jnp
    import optax

    cfg = cfg or RateTrainingConfig()
    if len(data) < 10:
        raise ValueError(f"need at least 10 transitions to train, got {len(data)}")
    train_data = augment_c3v(data) if cfg.augment else data
    x = jnp.asarray(_features(train_data.beam, train_data.current_na, train_data.voltage_kv))
    dt = jnp.asarray(train_data.dwell_s, dtype=jnp.float32)
    label = jnp.asarray(train_data.label, dtype=jnp.int32)
    n = x.shape[0]
    sizes = [x.shape[1], *cfg.hidden, 4]
    key = jax.random.PRNGKey(cfg.seed)

    def init(key: Any) -> dict:
        params = {"w": [], "b": []}
        for fan_in, fan_out in itertools.pairwise(sizes):
            key, sub = jax.random.split(key)
            params["w"].append(jax.random.normal(sub, (fan_in, fan_out)) / math.sqrt(fan_in))
            params["b"].append(jnp.zeros(fan_out))
        params["b"][-1] = params["b"][-1].at[3].set(-3.0)  # start from slow rates
        return params

    def forward(params: dict, xb: Any) -> tuple[Any, Any]:
        h = xb
        for layer, (w, b) in enumerate(zip(params["w"], params["b"], strict=True)):
            h = h @ w + b
            if layer < len(params["w"]) - 1:
                h = jnp.tanh(h)
        return h[:, :3], jax.nn.softplus(h[:, 3])

    def loss_fn(params: dict, xb: Any, dtb: Any, yb: Any, wb: Any) -> Any:
        logits, total = forward(params, xb)
        hopped = yb >= 0
        lam_dt = jnp.maximum(total * dtb, 1e-6)
        survival = jnp.where(hopped, -jnp.log(-jnp.expm1(-lam_dt)), lam_dt)
        ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), jnp.maximum(yb, 0)[:, None], axis=1)[
            :, 0
        ]
        per = survival + jnp.where(hopped, ce, 0.0)
        return jnp.sum(per * wb) / jnp.sum(wb)

    opt = optax.adamw(cfg.learning_rate, weight_decay=cfg.weight_decay)

    def member_init(key: Any) -> tuple[dict, Any, Any]:
        k_init, k_boot = jax.random.split(key)
        params = init(k_init)
        # bootstrap weights: how often each original transition is drawn (augmented copies share)
        base = len(data)
        counts = jnp.bincount(jax.random.randint(k_boot, (base,), 0, base), length=base)
        copies = n // base
        weights = jnp.tile(counts, copies).astype(jnp.float32)
        return params, opt.init(params), weights

    keys = jax.random.split(key, cfg.ensemble)
    params, opt_state, boot_w = jax.vmap(member_init)(keys)

    @jax.jit
    def step(params: dict, opt_state: Any, boot_w: Any, key: Any) -> tuple:
        idx = jax.random.randint(key, (cfg.ensemble, cfg.batch_size), 0, n)

        def one(p: dict, s: Any, w: Any, i: Any) -> tuple:
            loss, grads = jax.value_and_grad(loss_fn)(p, x[i], dt[i], label[i], w[i] + 1e-9)
            updates, s = opt.update(grads, s, p)
            return optax.apply_updates(p, updates), s, loss

        return jax.vmap(one)(params, opt_state, boot_w, idx)

    loss = jnp.zeros(cfg.ensemble)
    for t in range(cfg.steps):
        key, sub = jax.random.split(key)
        params, opt_state, loss = step(params, opt_state, boot_w, sub)
        if progress and (t % 100 == 0 or t == cfg.steps - 1):
            progress(t + 1, cfg.steps, float(jnp.mean(loss)))
    return RateModel(
        weights=[np.asarray(w, dtype=np.float64) for w in params["w"]],
        biases=[np.asarray(b, dtype=np.float64) for b in params["b"]],
        info={
            "config": dataclasses.asdict(cfg),
            "transitions": len(data),
            "hop_fraction": data.hop_fraction(),
            "final_loss": float(jnp.mean(loss)),
            "current_na": sorted({float(c) for c in np.unique(data.current_na)}),
            "voltage_kv": sorted({float(v) for v in np.unique(data.voltage_kv)}),
        },
    )
