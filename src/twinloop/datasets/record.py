"""Capture wrappers: every episode of an env or of each row of a vector env, written durably.

Data flow of one vector step::

    env.step(actions) -> obs, rewards, terminated, truncated, info
        --> StepBuffer row t (one numpy assignment per field, for all rows at once):
            actions, rewards, flags (step-aligned); obs, infos, wall clock (obs-aligned)
        --> rows that ended: final_obs / final_info into the buffer's final slot,
            then ONE writer.commit for all of them (durable when step() returns)

In a same-step auto-reset vector env, row ``t`` of an ended env already holds the first
observation of its next episode, so the recorder needs no per-row bookkeeping beyond each
row's episode start. The single-env wrapper is the same machinery with one row.

With ``capture="companion"`` (the default for twinloop's kernel vector envs) the vector
recorder only copies each step into a shared-memory journal; the capture companion process
(:mod:`twinloop.datasets.companion`) runs the buffer and the commits above, through the same
:class:`~twinloop.datasets._commit.RowCommitter`. This module uses the companion's journal;
the companion never imports this module.
"""

from __future__ import annotations

import logging
import os
import platform
import time
from collections.abc import Mapping
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode

from twinloop.datasets import _episode as E
from twinloop.datasets import companion as C
from twinloop.datasets._commit import RowCommitter
from twinloop.datasets._episode import StepBuffer
from twinloop.datasets.companion import K_BLOCK, K_RECORDING, K_RESET, K_ROW
from twinloop.datasets.errors import DatasetError
from twinloop.datasets.schema import (
    SOURCE_ACTION,
    SOURCE_INFO,
    SOURCE_OBS,
    SOURCE_REWARD,
    SOURCE_TERMINATED,
    SOURCE_TRUNCATED,
    SOURCE_WALL,
    FieldSpec,
    episode_fields,
    info_fields,
)
from twinloop.datasets.writer import DatasetWriter, Mode, ProgressFn, _encode_text, describe_env

log = logging.getLogger(__name__)


def _get(value: Any, key: tuple) -> Any:
    for k in key:
        value = value[k]
    return value


_MISSING = object()
_ONE_ROW = np.ones(1, dtype=np.bool_)


def _lookup(info: Mapping[str, Any], name: str) -> Any:
    """``info[name]``, or the nested ``info[a][b]`` for ``name == "a/b"``; None if absent."""
    if name in info:
        return info[name]
    node: Any = info
    for part in name.split("/"):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


class _Recorder:
    """State shared by the single and the vector wrapper."""

    def _setup(
        self,
        env: Any,
        directory: str | os.PathLike,
        n_envs: int,
        single_obs: gym.Space,
        single_act: gym.Space,
        dataset_id: str | None,
        mode: Mode,
        tags: Mapping[str, Any] | None,
        info_exclude: tuple[str, ...],
        writer_options: Mapping[str, Any],
    ) -> None:
        self.writer = DatasetWriter(
            directory,
            observation_space=single_obs,
            action_space=single_act,
            dataset_id=dataset_id,
            mode=mode,
            env_info=describe_env(env),
            tags=tags,
            **{"watch": True, **writer_options},
        )
        self.n_rows = n_envs
        self.info_exclude = tuple(info_exclude)
        self.recording = np.ones(n_envs, dtype=np.bool_)
        self._rec_cur = np.ones(n_envs, dtype=np.bool_)
        self._seed_cur = np.full(n_envs, -1, dtype=np.int64)
        self._buf: StepBuffer | None = None
        self._pending: tuple[Any, dict[str, Any], np.ndarray, float] | None = None

    # schema ------------------------------------------------------------------------------------
    def _begin(self, step_info: Mapping[str, Any], batch: int | None) -> None:
        infos = info_fields(step_info, batch, exclude=self.info_exclude)
        # a device backend connects at its first reset: describe it again now that it has
        # said what it is (a twin's identity, and the name of its device profile)
        self.writer.env_info.update(describe_env(self.env))
        self.writer.begin(infos)
        self._index_fields(self.writer.buffer(self.n_rows))

    def _index_fields(self, buf: StepBuffer) -> None:
        """Keep the schema's step buffer and where each source's fields are."""
        self._buf = buf
        f = buf.fields
        self._obs_w = [(j, x.key, x.text) for j, x in enumerate(f) if x.source == SOURCE_OBS]
        self._act_w = [(j, x.key, x.text) for j, x in enumerate(f) if x.source == SOURCE_ACTION]
        self._info_w = [(j, x.key[0]) for j, x in enumerate(f) if x.source == SOURCE_INFO]
        self._j_rew = self._index(f, SOURCE_REWARD)
        self._j_term = self._index(f, SOURCE_TERMINATED)
        self._j_trunc = self._index(f, SOURCE_TRUNCATED)
        self._j_wall = self._index(f, SOURCE_WALL)
        self._text = any(x.text for x in f)

    @staticmethod
    def _index(fields: list[FieldSpec], source: str) -> int:
        return next(j for j, x in enumerate(fields) if x.source == source)

    def set_recording(self, mask: Any) -> None:
        """Record episodes only in rows where ``mask`` is True.

        A row switched off drops its current episode; a row switched on records from its next
        episode on.
        """
        mask = np.broadcast_to(np.asarray(mask, dtype=np.bool_), (self.n_rows,))
        self.recording[:] = mask
        self._rec_cur &= mask

    def _counts(self) -> tuple[int, int]:
        return self.writer.n_episodes, self.writer.n_steps

    @property
    def n_episodes(self) -> int:
        """Episodes committed so far."""
        return self._counts()[0]

    @property
    def n_steps(self) -> int:
        """Steps committed so far."""
        return self._counts()[1]


class RecordEpisodes(gym.Wrapper, _Recorder):
    """Record every episode of a single env into a dataset.

    Args:
        env: The env (any ``gymnasium.Env``; twinloop envs also record config and backend).
        directory: Dataset folder, ``<root>/<namespace>/<name>-v<N>``.
        dataset_id: Default: derived from ``directory``.
        mode: ``"create"``, ``"overwrite"`` or ``"append"``.
        tags: User tags stored in metadata.json.
        info_exclude: Info keys (or ``prefix/``) not to record.
        **writer_options: ``fsync``, ``compression_level``, ``compression_strategy``, ``watch``
            (default True: metadata.json is brought up to date if the process dies),
            ``metadata_interval_s``, ``progress`` (see :class:`DatasetWriter`).

    An episode reset before it ended is not recorded (its steps have no end flag).
    """

    def __init__(
        self,
        env: gym.Env,
        directory: str | os.PathLike,
        *,
        dataset_id: str | None = None,
        mode: Mode = "create",
        tags: Mapping[str, Any] | None = None,
        info_exclude: tuple[str, ...] = (),
        progress: ProgressFn | None = None,
        **writer_options: Any,
    ) -> None:
        """Open the dataset (fails here if it exists, is locked or cannot be written)."""
        gym.Wrapper.__init__(self, env)
        self._setup(
            env,
            directory,
            1,
            env.observation_space,
            env.action_space,
            dataset_id,
            mode,
            tags,
            info_exclude,
            {**writer_options, "progress": progress},
        )
        self._in_episode = False
        self._rows_of: np.ndarray | None = None
        self._rows: list[np.ndarray] = []

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Reset the env and start recording a new episode."""
        obs, info = self.env.reset(seed=seed, options=options)
        now = time.time()
        self._seed_cur[0] = -1 if seed is None else int(seed)
        self._rec_cur[0] = self.recording[0]
        self._in_episode = True
        buf = self._buf
        if buf is None:
            self._pending = (obs, dict(info), np.ones(1, np.bool_), now)
            return obs, info
        self._write_reset_row(buf, obs, info, now)
        return obs, info

    def _write_reset_row(
        self, buf: StepBuffer, obs: Any, info: Mapping[str, Any], now: float
    ) -> None:
        t = buf.t
        views = buf.views
        fields = buf.fields
        for j, key, text in self._obs_w:
            value = _get(obs, key)
            views[j][t, 0] = _encode_text(value, fields[j]) if text else value
        for j, key in self._info_w:
            value = _lookup(info, key)
            views[j][t, 0] = 0 if value is None else value
        views[self._j_wall][t, 0] = now
        buf.start[0] = t

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        """Step the env and record the transition; commit the episode if it ended."""
        obs, reward, terminated, truncated, info = self.env.step(action)
        now = time.time()
        if not self._in_episode:
            return obs, reward, terminated, truncated, info
        if self._buf is None:
            self._begin(info, None)
            assert self._pending is not None
            p_obs, p_info, _, p_now = self._pending
            self._pending = None
            self._write_reset_row(self._buf, p_obs, p_info, p_now)
        buf = self._buf
        assert buf is not None
        t = buf.advance()
        if buf.data is not self._rows_of:  # (re)allocated: per-field (rows, ...) views of env 0
            self._rows_of = buf.data
            self._rows = [v[:, 0] for v in buf.views]
        rows = self._rows
        fields = buf.fields
        for j, key, text in self._act_w:
            value = _get(action, key)
            rows[j][t] = _encode_text(value, fields[j]) if text else value
        rows[self._j_rew][t] = reward
        rows[self._j_term][t] = terminated
        rows[self._j_trunc][t] = truncated
        ended = bool(terminated or truncated)
        # the last observation goes to the final slot (see StepBuffer); others to row t
        if ended:
            target, row = buf.final_views, 0
        else:
            target, row = rows, t
        for j, key, text in self._obs_w:
            value = _get(obs, key)
            target[j][row] = _encode_text(value, fields[j]) if text else value
        for j, key in self._info_w:
            value = info.get(key, _MISSING)
            if value is _MISSING:
                value = _lookup(info, key)
            target[j][row] = 0 if value is None else value
        target[self._j_wall][row] = now
        if ended:
            self._in_episode = False
            self.writer.commit_ended(buf, t, _ONE_ROW, self._rec_cur, self._seed_cur)
            buf.start[0] = t
        return obs, reward, terminated, truncated, info

    def close(self) -> None:
        """Finish the dataset, then close the env."""
        try:
            self.writer.close()
        finally:
            self.env.close()


#: ``capture=`` values of :class:`RecordVectorEpisodes`.
CAPTURES = ("auto", "inline", "companion")


class RecordVectorEpisodes(gym.vector.VectorWrapper, _Recorder):
    """Record every episode of every row of a same-step auto-reset vector env.

    Each row's episodes are written as separate episodes (attribute ``env_index``), in the
    order they end. Masked resets (``options={"reset_mask": m}``) with per-row seeds are
    recorded with those seeds; an episode cut short by such a reset is not recorded.

    Args:
        env: A vector env with ``metadata["autoreset_mode"] == AutoresetMode.SAME_STEP``
            (twinloop's kernel vector envs, or Gymnasium's SyncVectorEnv/AsyncVectorEnv
            created with that mode).
        directory: Dataset folder, ``<root>/<namespace>/<name>-v<N>``.
        dataset_id: Default: derived from ``directory``.
        mode: ``"create"``, ``"overwrite"`` or ``"append"``.
        tags: User tags stored in metadata.json.
        info_exclude: Info keys (or ``prefix/``) not to record.
        progress: Called as ``progress(episodes, steps)`` when the committed count changes.
        capture: ``"inline"``: encode and write in this process, in ``step()``.
            ``"companion"``: hand each step to a companion process through shared memory and
            let it encode and write on another core (see :mod:`twinloop.datasets.companion`;
            a SIGKILL of this process loses nothing published). ``"auto"`` (default): the
            companion for twinloop's kernel vector envs where it is supported (x86-64, no
            ``fsync``), else inline.
        **writer_options: ``fsync``, ``compression_level``, ``compression_strategy``, ``watch``
            (default True: metadata.json is brought up to date if the process dies),
            ``metadata_interval_s``.
    """

    def __init__(
        self,
        env: gym.vector.VectorEnv,
        directory: str | os.PathLike,
        *,
        dataset_id: str | None = None,
        mode: Mode = "create",
        tags: Mapping[str, Any] | None = None,
        info_exclude: tuple[str, ...] = (),
        progress: ProgressFn | None = None,
        capture: str = "auto",
        **writer_options: Any,
    ) -> None:
        """Check the auto-reset mode and the capture choice, and open the dataset."""
        gym.vector.VectorWrapper.__init__(self, env)
        mode_ = env.metadata.get("autoreset_mode")
        if mode_ != AutoresetMode.SAME_STEP:
            raise ValueError(
                f"RecordVectorEpisodes needs a vector env with autoreset_mode SAME_STEP (which "
                f"reports final observations), got {mode_!r}; build Gymnasium vector envs "
                "with autoreset_mode=AutoresetMode.SAME_STEP"
            )
        if capture not in CAPTURES:
            raise ValueError(f"capture must be one of {', '.join(CAPTURES)}, got {capture!r}")
        fsync = bool(writer_options.get("fsync", False))
        if capture == "companion" and fsync:
            raise ValueError(
                "capture='companion' cannot honour fsync=True (a step returns before its "
                "episode reaches the disk); use capture='inline' for power-loss durability"
            )
        if capture == "companion" and not C.supported():
            raise ValueError(
                f"capture='companion' needs x86-64 POSIX (this is {platform.machine()} "
                f"{os.name}); use capture='inline'"
            )
        if capture == "auto":
            kernel = getattr(env, "step_record_layout", None) is not None
            capture = "companion" if kernel and not fsync and C.supported() else "inline"
        self.capture = capture
        self._scatter: np.ndarray | None = None
        self._link: C.CompanionLink | None = None
        self._final_counts: tuple[int, int] | None = None
        self._start_error: Exception | None = None
        self._seen = (0, 0)
        self._setup(
            env,
            directory,
            env.num_envs,
            env.single_observation_space,
            env.single_action_space,
            dataset_id,
            mode,
            tags,
            info_exclude,
            {**writer_options, "progress": progress},
        )
        self._progress = progress
        self._sink: RowCommitter | None = None

    # helpers -----------------------------------------------------------------------------------
    def sync(self) -> None:
        """Return once every step taken so far is committed (at once, when inline)."""
        if self._link is not None:
            self._link.sync()

    def _counts(self) -> tuple[int, int]:
        if self._final_counts is not None:
            return self._final_counts
        if self._link is not None:
            return self._link.counts
        return super()._counts()

    def set_recording(self, mask: Any) -> None:
        """As :meth:`_Recorder.set_recording`; a companion receives the new mask in order."""
        super().set_recording(mask)
        if self._link is not None:
            slot = self._link.acquire()
            slot["mask"][:] = self.recording
            self._link.publish(slot, K_RECORDING, time.time())

    def _seeds(self, seed: Any) -> np.ndarray:
        n = self.num_envs
        if seed is None:
            return np.full(n, -1, dtype=np.int64)
        if isinstance(seed, int | np.integer):
            return np.arange(int(seed), int(seed) + n, dtype=np.int64)
        return np.array([-1 if s is None else int(s) for s in seed], dtype=np.int64)

    def _write_rows(
        self,
        views: list[np.ndarray],
        t: int,
        obs: Any,
        info: Mapping[str, Any],
        rows: np.ndarray,
        now: float,
    ) -> None:
        """The observation-aligned fields of ``rows`` into row ``t`` of ``views``."""
        assert self._buf is not None
        fields = self._buf.fields
        for j, key, text in self._obs_w:
            value = (
                np.asarray(_get(obs, key)) if not text else _encode_text(_get(obs, key), fields[j])
            )
            views[j][t, rows] = value[rows]
        for j, key in self._info_w:
            value = _lookup(info, key)
            mask = info.get(f"_{key}")
            if value is None:
                views[j][t, rows] = 0
            else:
                value = np.asarray(value)
                if mask is not None:
                    value = np.where(
                        np.asarray(mask).reshape((-1,) + (1,) * (value.ndim - 1)), value, 0
                    )
                views[j][t, rows] = value[rows]
        views[self._j_wall][t, rows] = now

    def _publish_reset(
        self, obs: Any, info: Mapping[str, Any], mask: np.ndarray, now: float
    ) -> None:
        link = self._link
        assert link is not None
        slot = link.acquire()
        self._write_rows(C.row_views(slot, self._buf)[0], 0, obs, info, np.flatnonzero(mask), now)
        slot["mask"][:] = mask
        slot["seeds"][:] = self._seed_cur
        slot["recs"][:] = self._rec_cur
        link.publish(slot, K_RESET, now)

    # gymnasium API -----------------------------------------------------------------------------
    def reset(
        self,
        *,
        seed: int | list[int | None] | None = None,
        options: dict[str, Any] | None = None,
    ) -> tuple[Any, dict[str, Any]]:
        """Reset (all rows or the masked ones) and start their episodes."""
        obs, info = self.env.reset(seed=seed, options=options)
        now = time.time()
        mask = (options or {}).get("reset_mask")
        mask = np.ones(self.num_envs, np.bool_) if mask is None else np.asarray(mask, np.bool_)
        rows = np.flatnonzero(mask)
        seeds = self._seeds(seed)
        self._seed_cur[rows] = seeds[rows]
        self._rec_cur[rows] = self.recording[rows]
        buf = self._buf
        if buf is None:
            if self._pending is None or mask.all():
                self._pending = (_copy_tree(obs), _copy_tree(dict(info)), mask.copy(), now)
            else:
                p_obs, p_info, p_mask, _ = self._pending
                self._pending = (
                    _merge_rows(p_obs, obs, mask),
                    _merge_info(p_info, info, mask),
                    p_mask | mask,
                    now,
                )
            return obs, info
        if self._link is not None:
            self._publish_reset(obs, info, mask, now)
            return obs, info
        self._write_rows(buf.views, buf.t, obs, info, rows, now)
        buf.start[rows] = buf.t
        return obs, info

    def _start(self, info: Mapping[str, Any]) -> None:
        """First step: fix the schema; start the companion or the in-process sink."""
        if self._pending is None:
            raise RuntimeError("call reset() before step()")
        p_obs, p_info, _, p_now = self._pending
        self._pending = None
        n = self.num_envs
        if self.capture == "companion":
            infos = info_fields(info, n, exclude=self.info_exclude)
            fields = episode_fields(self.writer.observation_space, self.writer.action_space, infos)
            self._index_fields(StepBuffer(fields, n, capacity=2))
            self._scatter = self._scatter_plan()
            block_layout = None
            if self._scatter is not None:
                lay = self.env.step_record_layout()
                block_layout = (
                    int(self.env.last_step_block.size),
                    (lay["terminated"][0], lay["terminated"][2]),
                    (lay["truncated"][0], lay["truncated"][2]),
                )
            act = [j for j, _, _ in self._act_w]
            self._link = C.CompanionLink(
                self.writer.handoff(infos), self._buf, self._scatter, block_layout, act
            )
            slot = self._link.acquire()
            slot["mask"][:] = self.recording
            self._link.publish(slot, K_RECORDING, p_now)
            self._publish_reset(p_obs, p_info, np.ones(n, np.bool_), p_now)
            return
        self._begin(info, n)
        buf = self._buf
        assert buf is not None
        self._scatter = self._scatter_plan()
        self._sink = RowCommitter(
            self.writer, buf, self._scatter, self._seed_cur, self._rec_cur, self.recording
        )
        self._write_rows(buf.views, 0, p_obs, p_info, np.arange(n), p_now)

    def step(self, actions: Any) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        """Step every row; commit (or hand over) the episodes that ended."""
        out = self.env.step(actions)
        obs, _, terminated, truncated, info = out
        now = time.time()
        if self._buf is None or self._start_error is not None:
            if self._start_error is not None:
                raise DatasetError(
                    f"this capture could not start ({self._start_error}); open a new recorder"
                ) from self._start_error
            try:
                self._start(info)
            except Exception as exc:
                self._start_error = exc  # the dataset may be handed off: no second attempt
                raise
        link = self._link
        fast = self._scatter is not None and obs is getattr(
            self.env, "last_step_observations", None
        )
        if link is not None:
            slot = link.acquire()
            if fast:
                for (_, key, _), dst in zip(self._act_w, slot["act"], strict=True):
                    dst[...] = _get(actions, key)
                slot["block"][:] = self.env.last_step_block
                link.publish(slot, K_BLOCK, now)
            else:
                views, final = C.row_views(slot, self._buf)
                ended = self._write_step(views, 0, final, actions, out, now)
                slot["mask"][:] = ended
                link.publish(slot, K_ROW, now)
            if self._progress is not None:
                counts = link.counts
                if counts != self._seen:
                    self._seen = counts
                    self._progress(*counts)
            return out
        sink = self._sink
        assert sink is not None
        if fast:
            sink.block_step(
                [(j, _get(actions, key)) for j, key, _ in self._act_w],
                self.env.last_step_block,
                terminated,
                truncated,
                now,
            )
            return out
        buf = sink.buf
        t = buf.advance()
        ended = self._write_step(buf.views, t, buf.final_views, actions, out, now)
        if ended.any():
            sink.commit(t, ended)
        return out

    def _write_step(
        self,
        views: list[np.ndarray],
        t: int,
        final: list[np.ndarray],
        actions: Any,
        out: tuple[Any, Any, Any, Any, dict[str, Any]],
        now: float,
    ) -> np.ndarray:
        """Every field of a step into row ``t`` of ``views``, final values into ``final``.

        ``out`` is what the env's ``step`` returned. Returns which rows ended.
        """
        obs, rewards, terminated, truncated, info = out
        assert self._buf is not None
        fields = self._buf.fields
        for j, key, text in self._act_w:
            value = _get(actions, key)
            views[j][t] = _encode_text(value, fields[j]) if text else value
        views[self._j_rew][t] = rewards
        views[self._j_term][t] = terminated
        views[self._j_trunc][t] = truncated
        for j, key, text in self._obs_w:
            value = _get(obs, key)
            views[j][t] = _encode_text(value, fields[j]) if text else value
        for j, key in self._info_w:
            value = info.get(key)
            if value is None:
                value = _lookup(info, key)
            views[j][t] = 0 if value is None else value
        views[self._j_wall][t] = now
        ended = np.logical_or(terminated, truncated)
        if not ended.any():
            return ended
        rows = np.flatnonzero(ended)
        final_obs = info["final_obs"]
        final_info = info.get("final_info", {})
        for j, key, text in self._obs_w:
            for i in rows.tolist():
                value = _get(final_obs[i], key)
                final[j][i] = _encode_text(value, fields[j]) if text else value
        for j, key in self._info_w:
            value = final_info.get(key)
            if value is None:
                value = _lookup(final_info, key)
            final[j][:] = 0 if value is None else value
        final[self._j_wall][:] = now
        return ended

    def _scatter_plan(self) -> np.ndarray | None:
        """The fast path's copy plan, or None when the fast path does not apply.

        It applies when the wrapped env is a kernel vector env whose output block holds every
        recorded field except the actions (observations, reward, flags, every info).
        """
        layout_of = getattr(self.env, "step_record_layout", None)
        buf = self._buf
        if layout_of is None or buf is None or self._text or buf.image.any():
            return None
        layout = layout_of()
        rows = []
        for j, f in enumerate(buf.fields):
            if f.source == SOURCE_ACTION:
                continue  # the controller's actions: one assignment per step
            if f.source == SOURCE_WALL:
                rows.append((buf.offsets[j], 0, -1, 0, f.row_bytes, E.SCATTER_WALL))
                continue
            name = {
                SOURCE_OBS: "obs" if f.key == () else None,
                SOURCE_REWARD: "reward",
                SOURCE_TERMINATED: "terminated",
                SOURCE_TRUNCATED: "truncated",
                SOURCE_INFO: f.key[0] if len(f.key) == 1 else None,
            }.get(f.source)
            entry = layout.get(name) if name is not None else None
            if entry is None:
                return None
            off, fin, stride, nbytes, dtype, shape = entry
            if nbytes != f.row_bytes or np.dtype(dtype) != f.np_dtype or tuple(shape) != f.shape:
                return None
            kind = (
                E.SCATTER_STEP
                if f.source in (SOURCE_REWARD, SOURCE_TERMINATED, SOURCE_TRUNCATED)
                else E.SCATTER_OBS
            )
            if kind == E.SCATTER_OBS and fin < 0:
                return None
            rows.append((buf.offsets[j], off, fin, stride, nbytes, kind))
        return np.array(rows, dtype=np.int64).reshape(-1, E.N_SC)

    def close(self, **kwargs: Any) -> None:
        """Finish the dataset (waiting for the companion to commit everything), close the env."""
        try:
            if self._link is not None:
                link, self._link = self._link, None
                self._final_counts = link.close()
            else:
                self.writer.close()
        finally:
            self.env.close(**kwargs)


def _copy_tree(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _copy_tree(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(_copy_tree(v) for v in value)
    if isinstance(value, np.ndarray):
        return value.copy()
    return value


def _merge_rows(old: Any, new: Any, mask: np.ndarray) -> Any:
    if isinstance(old, Mapping):
        return {k: _merge_rows(old[k], new[k], mask) for k in old}
    if isinstance(old, tuple) and not isinstance(old, np.ndarray):
        if all(isinstance(v, str) for v in old):
            return tuple(n if m else o for o, n, m in zip(old, new, mask, strict=True))
        return tuple(_merge_rows(o, n, mask) for o, n in zip(old, new, strict=True))
    old = np.array(old, copy=True)
    new = np.asarray(new)
    old[mask] = new[mask]
    return old


def _merge_info(old: Mapping[str, Any], new: Mapping[str, Any], mask: np.ndarray) -> dict[str, Any]:
    out = dict(old)
    for k, v in new.items():
        if k.startswith("_") or isinstance(v, Mapping):
            continue
        v = np.asarray(v)
        if v.ndim == 0 or v.shape[0] != mask.size:
            continue
        prev = np.asarray(out.get(k, np.zeros_like(v)))
        prev = prev.copy() if prev.shape == v.shape else np.zeros_like(v)
        prev[mask] = v[mask]
        out[k] = prev
        was = np.asarray(out.get(f"_{k}", np.zeros(mask.size, np.bool_)), dtype=np.bool_)
        out[f"_{k}"] = was | (mask & np.asarray(new.get(f"_{k}", mask), dtype=np.bool_))
    return out


def record(
    env: gym.Env | gym.vector.VectorEnv, directory: str | os.PathLike, **options: Any
) -> RecordEpisodes | RecordVectorEpisodes:
    """Wrap ``env`` (single or vector) so that every episode is recorded into ``directory``."""
    if isinstance(env, gym.vector.VectorEnv):
        return RecordVectorEpisodes(env, directory, **options)
    return RecordEpisodes(env, directory, **options)
