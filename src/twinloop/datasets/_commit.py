"""Per-row episode bookkeeping of a vector capture, shared by both of its writers.

The in-process vector recorder (:mod:`twinloop.datasets.record`) and the capture companion
process (:mod:`twinloop.datasets.companion`) both turn steps into committed episodes through
one :class:`RowCommitter`, so a companion capture writes the same episodes and values as an
inline one. It lives below both modules: the recorder uses the companion, and neither side
imports the other back.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from twinloop.datasets import _episode as E
from twinloop.datasets._episode import StepBuffer
from twinloop.datasets.writer import DatasetWriter


class RowCommitter:
    """Per-row episode bookkeeping of a vector capture: one step buffer, one writer.

    The vector recorder uses it in process, where each step's ended episodes are committed
    in that step; the capture companion (:mod:`twinloop.datasets.companion`) applies journal
    slots to it with :attr:`defer` set and commits a batch of steps at a time.

    Args:
        writer: The open writer (its schema begun).
        buf: The step buffer of the writer's schema.
        plan: The scatter plan of ``BLOCK`` steps (see ``_episode.scatter_step``), or None.
        seed_cur: Per row, the seed of its current episode (-1: none); shared, not copied.
        rec_cur: Per row, whether its current episode is recorded; shared.
        recording: Per row, whether its next episodes are recorded; shared.
    """

    def __init__(
        self,
        writer: DatasetWriter,
        buf: StepBuffer,
        plan: np.ndarray | None,
        seed_cur: np.ndarray | None = None,
        rec_cur: np.ndarray | None = None,
        recording: np.ndarray | None = None,
    ) -> None:
        """Keep references; missing row states start as unseeded and recorded."""
        n = buf.n_envs
        self.writer = writer
        self.buf = buf
        self.plan = plan
        self.seed_cur = np.full(n, -1, np.int64) if seed_cur is None else seed_cur
        self.rec_cur = np.ones(n, np.bool_) if rec_cur is None else rec_cur
        self.recording = np.ones(n, np.bool_) if recording is None else recording
        self.ended = np.zeros(n, dtype=np.bool_)
        #: Collect ended episodes and write them at :meth:`flush` (the companion does, per
        #: batch of steps) instead of in the step they end.
        self.defer = False
        self._pend = np.zeros((E.N_EP, 4 * n), dtype=np.int64)
        self._pend_final = np.zeros((4 * n, buf.row_bytes), dtype=np.uint8)
        self._n_pend = 0

    def reset_rows(
        self,
        row_views: list[np.ndarray],
        mask: np.ndarray,
        seeds: np.ndarray,
        recs: np.ndarray,
        obs_fields: list[int],
    ) -> None:
        """Start new episodes in the ``mask`` rows from a row of reset observations."""
        buf = self.buf
        t = buf.t
        for j in obs_fields:
            buf.views[j][t, mask] = row_views[j][0, mask]
        self.seed_cur[mask] = seeds[mask]
        self.rec_cur[mask] = recs[mask]
        buf.start[mask] = t

    def set_recording(self, mask: np.ndarray) -> None:
        """Record the rows' next episodes where ``mask``; drop current ones where not."""
        self.recording[:] = mask
        self.rec_cur &= mask

    def block_step(
        self,
        actions: list[tuple[int, Any]],
        block: np.ndarray,
        terminated: np.ndarray,
        truncated: np.ndarray,
        now: float,
    ) -> None:
        """One step given as a kernel vector env's output block and the actions."""
        buf = self.buf
        if self._n_pend and buf.t + 1 >= buf.capacity:
            self.flush()  # advance() may drop the rows of pending episodes
        t = buf.advance()
        views = buf.views
        for j, value in actions:
            views[j][t] = value
        if E.scatter_step(
            block, self.plan, buf.data[t], buf.final, terminated, truncated, now, self.ended
        ):
            self.commit(t, self.ended)

    def row_step(self, row: np.ndarray, final: np.ndarray, ended: np.ndarray) -> None:
        """One step given as a laid-out row and, for the rows that ``ended``, final rows."""
        buf = self.buf
        if self._n_pend and buf.t + 1 >= buf.capacity:
            self.flush()
        t = buf.advance()
        buf.data[t] = row
        if ended.any():
            buf.final[ended] = final[ended]
            self.commit(t, ended)

    def commit(self, t: int, ended: np.ndarray) -> None:
        """Commit the recorded episodes that ended at row ``t``; start the rows' next ones."""
        if self.defer and not self.writer._has_images:
            self._stash(t, ended)
        else:
            self.writer.commit_ended(self.buf, t, ended, self.rec_cur, self.seed_cur)
        self.buf.start[ended] = t
        self.seed_cur[ended] = -1
        self.rec_cur[ended] = self.recording[ended]

    def _stash(self, t: int, ended: np.ndarray) -> None:
        rows = np.flatnonzero(ended & self.rec_cur)
        m = rows.size
        if self._n_pend + m > self._pend.shape[1]:
            self.flush()
        k = self._n_pend
        p = self._pend[:, k : k + m]
        p[E.EP_ENV] = rows
        p[E.EP_START] = self.buf.start[rows]
        p[E.EP_END] = t
        p[E.EP_SEED] = self.seed_cur[rows]
        p[E.EP_LABEL] = rows
        p[E.EP_FINAL] = np.arange(k, k + m)
        self._pend_final[k : k + m] = self.buf.final[rows]
        self._n_pend = k + m

    def flush(self) -> None:
        """Write the episodes collected while :attr:`defer` (one commit for all of them)."""
        k = self._n_pend
        if k:
            p = self._pend[:, :k]
            self.writer.commit(
                self.buf,
                p[E.EP_ENV],
                p[E.EP_START],
                p[E.EP_END],
                p[E.EP_SEED],
                final=self._pend_final,
                final_rows=p[E.EP_FINAL],
            )
            self._n_pend = 0
