"""Running observation normalisation (NumPy; saved with the agent, applied when it acts).

Mean and variance are merged batch by batch with Chan et al.'s parallel update (1979,
"Updating Formulae and a Pairwise Algorithm for Computing Sample Variances"), in float64 so
that long runs do not drift. Normalised observations are clipped to ``[-clip, clip]``
(Andrychowicz et al. 2021 find normalisation among PPO's most important choices).
"""

from __future__ import annotations

from typing import Any

import numpy as np


class RunningNorm:
    """Mean and variance of every observation feature seen so far.

    Args:
        dim: Number of features.
        clip: Bound on the normalised values.
        eps: Added to the variance before the square root.
    """

    def __init__(self, dim: int, clip: float = 10.0, eps: float = 1e-8) -> None:
        """Start from zero observations (identity scaling until the first update)."""
        self.mean = np.zeros(dim, np.float64)
        self.var = np.ones(dim, np.float64)
        self.count = np.float64(0.0)
        self.clip, self.eps = float(clip), float(eps)

    def update(self, batch: np.ndarray) -> None:
        """Merge a batch ``(n, dim)`` into the statistics."""
        batch = np.asarray(batch, np.float64)
        n = batch.shape[0]
        if n == 0:
            return
        b_mean = batch.mean(axis=0)
        b_var = batch.var(axis=0)
        total = self.count + n
        delta = b_mean - self.mean
        m2 = self.var * self.count + b_var * n + delta**2 * self.count * n / total
        self.mean = self.mean + delta * n / total
        self.var = m2 / total
        self.count = np.float64(total)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """The normalised batch (float32)."""
        z = (np.asarray(batch, np.float64) - self.mean) / np.sqrt(self.var + self.eps)
        return np.clip(z, -self.clip, self.clip).astype(np.float32)

    def arrays(self) -> dict[str, Any]:
        """The statistics as arrays."""
        return {"mean": self.mean, "var": self.var, "count": self.count}

    def load_arrays(self, arrays: dict[str, Any]) -> None:
        """Restore :meth:`arrays` output."""
        mean = np.asarray(arrays["mean"], np.float64)
        if mean.shape != self.mean.shape:
            raise ValueError(f"normaliser of width {self.mean.size} given {mean.size} means")
        self.mean = mean.copy()
        self.var = np.asarray(arrays["var"], np.float64).copy()
        self.count = np.float64(arrays["count"])
