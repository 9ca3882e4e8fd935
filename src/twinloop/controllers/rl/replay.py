"""A replay buffer for vector envs that samples n-step windows (NumPy, checkpointable).

Rows are written in lockstep, one per env per vector step, into a ring of ``capacity``
vector steps: slot ``t % capacity`` holds step ``t`` of every env. Each transition keeps its
own next observation (the final observation where the episode ended, as a ``SAME_STEP``
vector env reports it), so n-step windows never read across an auto-reset. A window that
starts at step ``t`` needs steps ``t .. t+n-1`` to be written; the newest ``n - 1`` steps
become sampleable as later steps arrive. A buffer built for windows of ``n_step`` serves any
shorter n-step return (BBF's annealed ``n``) and sequences of up to ``n_step`` future
observations and actions (the SPR loss).

Each transition may also carry a teacher's action (reincarnation: QDagger's distillation
term), ``-1`` where there is none.

Everything is in :meth:`ReplayBuffer.arrays`, so a checkpoint restores the buffer exactly.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from twinloop.controllers.rl.returns import nstep_targets


class ReplayBuffer:
    """Ring buffer of ``capacity`` vector steps of ``n_envs`` transitions.

    Args:
        capacity: Vector steps kept (>= ``n_step``).
        n_envs: Transitions per vector step.
        obs_dim: Width of a flat observation.
        n_step: Window length of the sampled returns.
    """

    def __init__(
        self, capacity: int, n_envs: int, obs_dim: int, n_step: int, obs_dtype: Any = np.float32
    ) -> None:
        """Allocate the ring (observations as ``obs_dtype`` rows: uint8 for packed images)."""
        if n_step < 1:
            raise ValueError(f"n_step must be >= 1, got {n_step}")
        if capacity < n_step:
            raise ValueError(f"replay capacity {capacity} vector steps is below n_step={n_step}")
        self.capacity, self.n_envs, self.n_step = int(capacity), int(n_envs), int(n_step)
        c, n = self.capacity, self.n_envs
        self.obs = np.zeros((c, n, obs_dim), obs_dtype)
        self.next_obs = np.zeros((c, n, obs_dim), obs_dtype)
        self.action = np.zeros((c, n), np.int64)
        self.reward = np.zeros((c, n), np.float32)
        self.terminated = np.zeros((c, n), bool)
        self.truncated = np.zeros((c, n), bool)
        self.teacher_action = np.full((c, n), -1, np.int64)
        self.written = 0  # vector steps written in all

    def add(
        self,
        obs: np.ndarray,
        action: np.ndarray,
        reward: np.ndarray,
        terminated: np.ndarray,
        truncated: np.ndarray,
        next_obs: np.ndarray,
        teacher_action: np.ndarray | None = None,
    ) -> None:
        """Write one vector step (``next_obs`` holds final observations where episodes ended)."""
        i = self.written % self.capacity
        self.obs[i] = obs
        self.next_obs[i] = next_obs
        self.action[i] = action
        self.reward[i] = reward
        self.terminated[i] = terminated
        self.truncated[i] = truncated
        self.teacher_action[i] = -1 if teacher_action is None else teacher_action
        self.written += 1

    def truncate_all(self) -> None:
        """Mark the newest step of every env truncated (the trainer reset the envs)."""
        if self.written:
            self.truncated[(self.written - 1) % self.capacity] = True

    @property
    def sampleable(self) -> int:
        """Number of vector steps a window may start at."""
        oldest = max(0, self.written - self.capacity)
        return max(0, self.written - self.n_step + 1 - oldest)

    def sample(
        self,
        rng: np.random.Generator,
        batch_size: int,
        gamma: float,
        n: int | None = None,
        sequence: int = 0,
    ) -> dict[str, np.ndarray]:
        """A batch of n-step transitions, uniform over windows and envs.

        Args:
            rng: Draws the windows.
            batch_size: Transitions in the batch.
            gamma: Discount of the returns.
            n: Steps of the returns (default and at most the buffer's ``n_step``).
            sequence: Also return this many (<= ``n_step``) future observations and actions.

        Returns:
            ``obs``, ``action``, ``teacher_action``, ``returns`` (discounted sums),
            ``discount`` (the bootstrap factor, 0 after a terminal step) and ``next_obs`` (to
            bootstrap from); with ``sequence = K``, also ``seq_action`` ``(B, K)`` (actions of
            steps ``t .. t+K-1``), ``seq_next_obs`` ``(B, K, D)`` (their next observations)
            and ``seq_mask`` ``(B, K)`` (0 from the step after an episode ends).
        """
        n = self.n_step if n is None else int(n)
        if not 1 <= n <= self.n_step or not 0 <= sequence <= self.n_step:
            raise ValueError(
                f"n={n} and sequence={sequence} must lie within the buffer's {self.n_step}"
            )
        count = self.sampleable
        if count == 0:
            raise ValueError(f"replay holds {self.written} vector steps; need {self.n_step}")
        oldest = max(0, self.written - self.capacity)
        start = oldest + rng.integers(0, count, size=batch_size)
        env = rng.integers(0, self.n_envs, size=batch_size)
        steps = (start[:, None] + np.arange(self.n_step)) % self.capacity
        cols = env[:, None]
        short = steps[:, :n]
        returns, discount, last = nstep_targets(
            self.reward[short, cols], self.terminated[short, cols], self.truncated[short, cols],
            gamma,
        )  # fmt: skip
        first = steps[:, 0]
        final = steps[np.arange(batch_size), last]
        batch = {
            "obs": self.obs[first, env],
            "action": self.action[first, env],
            "teacher_action": self.teacher_action[first, env],
            "returns": returns.astype(np.float32),
            "discount": discount.astype(np.float32),
            "next_obs": self.next_obs[final, env],
        }
        if sequence:
            seq = steps[:, :sequence]
            ended = self.terminated[seq, cols] | self.truncated[seq, cols]
            mask = np.ones(ended.shape, bool)
            mask[:, 1:] = np.cumsum(ended[:, :-1], axis=1) == 0
            batch["seq_action"] = self.action[seq, cols]
            batch["seq_next_obs"] = self.next_obs[seq, cols]
            batch["seq_mask"] = mask.astype(np.float32)
        return batch

    def arrays(self) -> dict[str, Any]:
        """Everything needed to restore the buffer exactly."""
        return {
            "obs": self.obs,
            "next_obs": self.next_obs,
            "action": self.action,
            "reward": self.reward,
            "terminated": self.terminated,
            "truncated": self.truncated,
            "teacher_action": self.teacher_action,
            "written": np.int64(self.written),
        }

    def load_arrays(self, arrays: dict[str, Any]) -> None:
        """Restore :meth:`arrays` output (shapes must match this buffer's)."""
        names = ("obs", "next_obs", "action", "reward", "terminated", "truncated")
        for name in (*names, "teacher_action"):
            src = np.asarray(arrays[name])
            dst = getattr(self, name)
            if src.shape != dst.shape:
                raise ValueError(f"replay {name}: checkpoint shape {src.shape}, buffer {dst.shape}")
            dst[...] = src
        self.written = int(arrays["written"])
