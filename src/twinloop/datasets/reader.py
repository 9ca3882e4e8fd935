"""Read datasets for training: iterate episodes, sample transitions, filter, follow a capture.

Nothing is loaded up front but an index: one parsed header per episode (its attributes list
every dataset's address). Episodes and transitions are then read straight from a memory map
of the file; a batch of transitions is one vectorised gather per field, so sampling costs
the same per transition however large the dataset (plus a binary search over episode
boundaries). Compressed image fields are decompressed one frame at a time.

Damage is contained: the reader walks the same chain of checksummed blocks the writer
appends, so a truncated or corrupted file yields every episode before the damage, and
:attr:`Dataset.problems` names the file and the first bad episode.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import mmap
import os
import time
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from twinloop.core.jit import njit
from twinloop.datasets import _hdf5 as H
from twinloop.datasets import _hdf5_read as R
from twinloop.datasets._hash import xxh64, xxh64_ranges
from twinloop.datasets._scan import (
    DATA_FILE,
    METADATA_FILE,
    DataFile,
    EpisodeEntry,
    RootChain,
    episode_id,
    find_data_dir,
    load_metadata,
    writer_alive,
)
from twinloop.datasets.errors import DatasetCorruptError, DatasetNotFoundError
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
    space_from_json,
)

log = logging.getLogger(__name__)


# --- the public reader ---------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class EpisodeData:
    """One episode, read in full.

    Attributes:
        id: Episode id in the dataset.
        observations: ``L + 1`` rows (an array, or a dict/tuple of arrays; text as ``str``).
        actions: ``L`` rows.
        rewards: ``(L,)`` float64.
        terminations: ``(L,)`` bool.
        truncations: ``(L,)`` bool.
        infos: Info key (``reward/progress``, ``wall_time_s`` ...) -> ``L + 1`` rows; row 0
            is the reset's info.
        metadata: Episode attributes (``seed``, ``env_index``, ``episode_return`` ...).
    """

    id: int
    observations: Any
    actions: Any
    rewards: np.ndarray
    terminations: np.ndarray
    truncations: np.ndarray
    infos: dict[str, np.ndarray]
    metadata: dict[str, Any]

    def __len__(self) -> int:
        """Number of steps."""
        return int(self.rewards.shape[0])


@dataclasses.dataclass(frozen=True)
class TransitionBatch:
    """Transitions ``(s, a, r, s', terminated, truncated)`` sampled uniformly over all steps.

    Attributes:
        observations: Observation before the step (batched like the observation space).
        actions: Controller action.
        rewards: Reward.
        next_observations: Observation after the step (the final one at an episode end).
        terminations: The step ended the episode in a terminal state.
        truncations: The step ended the episode by a time limit.
        episode_ids: Dataset id of each transition's episode.
        steps: Step index of each transition within its episode.
        infos: Info of the step (row ``t + 1``), if requested.
    """

    observations: Any
    actions: Any
    rewards: np.ndarray
    next_observations: Any
    terminations: np.ndarray
    truncations: np.ndarray
    episode_ids: np.ndarray
    steps: np.ndarray
    infos: dict[str, np.ndarray] | None = None

    def __len__(self) -> int:
        """Batch size."""
        return int(self.rewards.shape[0])


def _nest(items: Sequence[tuple[tuple, Any]], space: gym.Space) -> Any:
    if isinstance(space, gym.spaces.Dict):
        return {
            k: _nest([(key[1:], v) for key, v in items if key and key[0] == k], sub)
            for k, sub in space.spaces.items()
        }
    if isinstance(space, gym.spaces.Tuple):
        return tuple(
            _nest([(key[1:], v) for key, v in items if key and key[0] == k], sub)
            for k, sub in enumerate(space.spaces)
        )
    return items[0][1]


class _Store:
    """The shared state of a twinloop dataset: file, fields and index (grows while following).

    The store protocol that :class:`Dataset` reads through (also implemented by
    :class:`twinloop.datasets.h5read.H5Store` for datasets other tools wrote): ``path``,
    ``data_dir``, ``meta``, ``fields``, ``observation_space``, ``action_space``, ``ids``,
    ``steps``, ``meta_rows``, ``generation``, ``problems``, ``rows()``, ``field()``,
    ``refresh()``, ``close()``.
    """

    def __init__(self, data_dir: Path, verify: bool = True) -> None:
        self.data_dir = data_dir
        self.path = data_dir / DATA_FILE
        self.meta, fields = load_metadata(data_dir)
        if fields is None:
            raise DatasetNotFoundError(
                f"{data_dir / METADATA_FILE} is missing: not a dataset (or a capture that "
                "has not committed its first episode yet)"
            )
        if not self.path.exists():
            raise DatasetNotFoundError(f"{self.path} is missing")
        self.fields = fields
        self.observation_space = space_from_json(self.meta["observation_space"])
        self.action_space = space_from_json(self.meta["action_space"])
        self.file = DataFile(self.path)
        self.inode = os.fstat(self.file.fd).st_ino
        self.chain = RootChain(self.file, fields, int(self.meta.get("total_episodes") or 0))
        self.chain.walk()
        self._map: np.ndarray | None = None
        self._mmap: mmap.mmap | None = None
        self._chunks: dict[tuple[int, int], np.ndarray] = {}
        self._foreign: collections.OrderedDict[int, list[np.ndarray]] = collections.OrderedDict()
        self.generation = -1
        self.checked = np.zeros(0, dtype=np.bool_)  # integrity checked (see verify)
        self.bad = np.zeros(0, dtype=np.bool_)  # found damaged: never returned
        self.damage: dict[int, str] = {}
        self.verify_reads = verify
        self._has_images = any(f.image for f in fields)
        self._rebuild()

    @property
    def problems(self) -> list[str]:
        """Damage found so far: each names the file and the first episode it affects."""
        return self.chain.problems

    def _rebuild(self) -> None:
        self.generation += 1  # bumped on every re-index (sampling caches key on it)
        entries = self.chain.entries
        n_f = len(self.fields)
        self.entries = entries
        self.ids = np.array(
            [int(e.attrs.get("id", episode_id(e.name) or 0)) for e in entries], dtype=np.int64
        )
        self.steps = np.array([int(e.attrs["total_steps"]) for e in entries], dtype=np.int64)
        self.foreign = np.array([e.foreign for e in entries], dtype=np.bool_)
        n_old = self.checked.size if hasattr(self, "checked") else 0
        self.checked = np.concatenate([self.checked, np.zeros(len(entries) - n_old, np.bool_)])
        self.bad = np.concatenate([self.bad, np.zeros(len(entries) - n_old, np.bool_)])
        self.addr = np.full((len(entries), n_f), -1, dtype=np.int64)
        self.sizes = np.zeros((len(entries), n_f), dtype=np.int64)
        self.sums = np.zeros((len(entries), n_f + 1), dtype=np.uint64)
        self.summed = np.zeros(len(entries), dtype=np.bool_)
        self.header = np.array([e.header for e in entries], dtype=np.int64)
        self.header_bytes = np.array([e.header_bytes for e in entries], dtype=np.int64)
        for k, e in enumerate(entries):
            if not e.foreign:
                self.addr[k] = e.addresses
                self.sizes[k] = e.sizes
            if e.checksums is not None:
                self.sums[k] = e.checksums
                self.summed[k] = True
        rows = []
        for k, e in enumerate(entries):
            try:
                rows.append(self._episode_meta(k, e))
            except DatasetCorruptError as exc:
                rows.append({**e.attrs, "problem": str(exc)})
                self.chain.problems.append(str(exc))
        self.meta_rows = rows

    def _episode_meta(self, k: int, e: EpisodeEntry) -> dict[str, Any]:
        m = dict(e.attrs)
        m.setdefault("id", int(self.ids[k]))
        steps = int(m["total_steps"])
        for j, f in enumerate(self.fields):
            if f.source in (SOURCE_TERMINATED, SOURCE_TRUNCATED):
                if e.foreign:
                    m[f.source] = bool(self._foreign_episode(k)[j][steps - 1])
                else:
                    m[f.source] = bool(self.map()[int(e.addresses[j]) + steps - 1])
        if e.foreign:
            m["written_by"] = "another tool (read through h5py)"
        return m

    def map(self) -> np.ndarray:
        """The data file, memory-mapped up to its size at the last refresh."""
        if self._map is None or self._map.size < self.file.size:
            # map what the descriptor holds now: a writer closing its capture trims the
            # preallocated tail, so the file may be shorter than at our last fstat
            size = min(self.file.size, os.fstat(self.file.fd).st_size)
            self._map = None
            if self._mmap is not None:
                with contextlib.suppress(BufferError):
                    self._mmap.close()
                self._mmap = None
            if size:
                self._mmap = mmap.mmap(self.file.fd, size, prot=mmap.PROT_READ)
                self._map = np.frombuffer(self._mmap, dtype=np.uint8)
            else:
                self._map = np.zeros(0, np.uint8)
        return self._map

    def refresh(self) -> int:
        try:
            if os.stat(self.path).st_ino != self.inode:
                raise DatasetCorruptError(
                    f"{self.path} was replaced while being read (overwritten); open it again"
                )
        except FileNotFoundError:
            raise DatasetNotFoundError(f"{self.path} was deleted while being read") from None
        self.file.refresh()
        n = self.chain.walk()
        if n:
            self._rebuild()
        new_meta, _ = load_metadata(self.data_dir)
        if new_meta:
            self.meta = new_meta
        return n

    # integrity -------------------------------------------------------------------------------
    def ensure_intact(self, eps: np.ndarray) -> bool:
        """Check the episodes ``eps`` not checked yet; return whether new damage was found.

        A damaged episode is marked (:attr:`bad`), named in :attr:`problems` and never
        returned again. Does nothing when the store was opened with ``verify=False``.
        """
        if not self.verify_reads:
            return False
        todo = eps[~self.checked[eps]]
        if todo.size == 0:
            return False
        todo = np.unique(todo)
        if not self._has_images:  # one hashing call for every plain dataset and header
            todo = self._check_batch(todo)
        found = False
        for e in todo.tolist():
            message = self.check_episode(e)
            self.checked[e] = True
            if message is not None:
                self.mark_bad(e, message)
                found = True
        return found

    def _check_batch(self, todo: np.ndarray) -> np.ndarray:
        """Hash the episodes ``todo`` at once; return those that need a closer look."""
        fast = todo[self.summed[todo]]
        if fast.size:
            mm = self.map()
            starts = np.concatenate(
                [self.addr[fast], (self.header[fast] - self.header_bytes[fast])[:, None]], axis=1
            )
            lengths = np.concatenate([self.sizes[fast], self.header_bytes[fast][:, None]], axis=1)
            inside = ((starts >= 0) & (starts + lengths <= mm.size)).all(axis=1)
            fast = fast[inside]
            got = xxh64_ranges(mm, starts[inside].ravel(), lengths[inside].ravel())
            ok = (got.reshape(fast.size, -1) == self.sums[fast]).all(axis=1)
            self.checked[fast[ok]] = True
        return todo[~self.checked[todo]]

    def mark_bad(self, e: int, message: str) -> None:
        """Record episode ``e`` as damaged (views drop it; its data are never returned)."""
        if self.bad[e]:
            return
        self.bad[e] = True
        self.damage[e] = message
        self.chain.problems.append(message)
        self.generation += 1
        log.warning("%s", message)

    def check_episode(self, e: int, deep: bool = False) -> str | None:
        """What is wrong with episode ``e`` (None if nothing): checksums, then headers.

        Every dataset's stored bytes are hashed and compared with the episode's checksum
        attribute. The dataset headers are hashed too; if they differ (another writer may
        have added an attribute to a dataset) or ``deep`` is set, each header is parsed and
        compared with what the episode index says.
        """
        entry = self.entries[e]
        if entry.foreign:  # no checksums: read it (its shapes are checked) when asked to
            try:
                if deep:
                    self._foreign_episode(e)
            except DatasetCorruptError as exc:
                return str(exc)
            return None
        where = f"{self.path}: {entry.name}"
        try:
            if entry.checksums is not None:
                message = self._check_sums(e, where)
                if message is not None:
                    return message
                if not deep:
                    got = int(
                        xxh64(self.map(), entry.header - entry.header_bytes, entry.header_bytes)
                    )
                    if got == int(entry.checksums[-1]):
                        return None
            elif not deep:
                return None  # format 1: no checksums; its headers are checked by verify()
            return self._check_headers(e, where)
        except (H.FormatError, ValueError, IndexError, KeyError, OverflowError, zlib.error) as exc:
            return f"{where} is damaged: {exc}"

    def _check_sums(self, e: int, where: str) -> str | None:
        entry = self.entries[e]
        assert entry.checksums is not None
        starts = entry.addresses.copy()
        for j, f in enumerate(self.fields):
            if f.image:  # the region starts at its first chunk and ends with its index
                starts[j] = int(self._chunk_table(e, j)[0, 0])
        mm = self.map()
        if np.any(starts + entry.sizes > mm.size) or np.any(starts < 0):
            return f"{where}: its data lie past the end of the file (truncated)"
        got = xxh64_ranges(mm, starts, entry.sizes)
        for j in np.flatnonzero(got != entry.checksums[:-1]).tolist():
            f = self.fields[j]
            return (
                f"{where}, field {f.path}: checksum mismatch over bytes {starts[j]}-"
                f"{starts[j] + entry.sizes[j]} (stored {int(entry.checksums[j]):#018x}, read "
                f"{int(got[j]):#018x}): the data are damaged; the episode is not returned"
            )
        return None

    def _check_headers(self, e: int, where: str) -> str | None:
        entry = self.entries[e]
        size = self.file.size
        found = dict(R.walk(self.file.read, entry.header, size))
        steps = int(self.steps[e])
        for j, f in enumerate(self.fields):
            header = found.get(f.path)
            if header is None:
                return f"{where}: field {f.path} has no dataset in the episode group"
            info = H.parse_dataset(
                [H.Message(m.kind, m.body, m.body_at) for m in header.messages()]
            )
            rows = steps + int(f.obs_aligned)
            want_dtype = np.dtype(np.bool_) if f.np_dtype.kind == "b" else f.np_dtype
            problems = []
            if info.dtype != want_dtype:
                problems.append(f"dtype {info.dtype} instead of {want_dtype}")
            if info.shape != (rows, *f.shape):
                problems.append(f"shape {info.shape} instead of {(rows, *f.shape)}")
            if info.chunked != f.image or int(info.address) != int(entry.addresses[j]):
                problems.append(f"data at offset {info.address} instead of {entry.addresses[j]}")
            if not f.image and info.nbytes != int(entry.sizes[j]):
                problems.append(f"{info.nbytes} bytes instead of {entry.sizes[j]}")
            if problems:
                return (
                    f"{where}, field {f.path}: its dataset header disagrees with the episode "
                    f"index ({'; '.join(problems)}): HDF5 readers would read other data"
                )
        return None

    # reading ---------------------------------------------------------------------------------
    def _foreign_episode(self, e: int) -> list[np.ndarray]:
        """Every field of an episode another tool wrote into this file (LRU-cached)."""
        cached = self._foreign.get(e)
        if cached is not None:
            self._foreign.move_to_end(e)
            return cached
        import h5py

        from twinloop.datasets.h5read import read_episode

        name = self.entries[e].name
        try:
            with h5py.File(self.path, "r") as h5:
                arrays = read_episode(
                    h5[name],
                    self.fields,
                    # Minari JPEG-encodes images it appends unless told otherwise; raw rows
                    # are accepted either way
                    jpeg=bool(self.meta.get("jpeg_encoding", True)),
                    file_label=str(self.path),
                )
        except (OSError, KeyError) as exc:
            raise DatasetCorruptError(f"{self.path}: {name} cannot be read ({exc})") from exc
        self._foreign[e] = arrays
        while len(self._foreign) > 64:
            self._foreign.popitem(last=False)
        return arrays

    def rows(self, j: int, eps: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Rows ``rows[k]`` of field ``j`` in episodes ``eps[k]`` (indices into the index)."""
        f = self.fields[j]
        foreign = self.foreign[eps]
        if foreign.any():
            out = np.empty((eps.size, *f.shape), dtype=f.np_dtype)
            mine = ~foreign
            if mine.any():
                out[mine] = self.rows(j, eps[mine], rows[mine])
            for k in np.flatnonzero(foreign).tolist():
                out[k] = self._foreign_episode(int(eps[k]))[j][int(rows[k])]
            return out
        if f.image:
            out = np.empty((eps.size, *f.shape), dtype=f.np_dtype)
            for k, (e, r) in enumerate(zip(eps.tolist(), rows.tolist(), strict=True)):
                out[k] = self.frame(j, e, r)
            return out
        nb = f.row_bytes
        start = self.addr[eps, j] + rows * nb
        raw = self.map()[start[:, None] + np.arange(nb)]
        return np.ascontiguousarray(raw).view(f.np_dtype).reshape(eps.size, *f.shape)

    def field(self, j: int, e: int) -> np.ndarray:
        """All rows of field ``j`` of episode ``e``."""
        f = self.fields[j]
        if self.foreign[e]:
            return self._foreign_episode(e)[j].copy()
        n = int(self.steps[e]) + int(f.obs_aligned)
        if f.image:
            return np.stack([self.frame(j, e, r) for r in range(n)])
        count = n * int(np.prod(f.shape, dtype=np.int64))
        arr = np.frombuffer(self.map(), dtype=f.np_dtype, count=count, offset=int(self.addr[e, j]))
        return arr.reshape(n, *f.shape).copy()

    def _chunk_table(self, e: int, j: int) -> np.ndarray:
        table = self._chunks.get((e, j))
        if table is None:
            f = self.fields[j]
            at = int(self.addr[e, j])
            if self.file.read(at, 4) == b"FAHD":  # format 1 files: a fixed array index
                table = H.read_fixed_array(self.file.read, at, f.row_bytes, self.file.size)
            else:
                table = H.read_chunk_btree(self.file.read, at, 1 + len(f.shape), self.file.size)
            if table.shape[0] != int(self.steps[e]) + int(f.obs_aligned):
                raise H.FormatError(
                    f"{self.entries[e].name}, field {f.path}: its chunk index lists "
                    f"{table.shape[0]} frames, expected {int(self.steps[e]) + int(f.obs_aligned)}"
                )
            self._chunks[(e, j)] = table
        return table

    def frame(self, j: int, e: int, r: int) -> np.ndarray:
        f = self.fields[j]
        table = self._chunk_table(e, j)
        addr, size = int(table[r, 0]), int(table[r, 1])
        try:
            raw = zlib.decompress(self.file.read(addr, size))
        except zlib.error as exc:
            raise DatasetCorruptError(
                f"{self.path}: {self.entries[e].name}, field {f.path}, frame {r} (chunk at "
                f"offset {addr}) does not decompress: {exc}"
            ) from exc
        if len(raw) != f.row_bytes:
            raise DatasetCorruptError(
                f"{self.path}: {self.entries[e].name}, field {f.path}, frame {r} holds "
                f"{len(raw)} bytes, expected {f.row_bytes}"
            )
        return np.frombuffer(raw, dtype=f.np_dtype).reshape(f.shape)

    def close(self) -> None:
        self._map = None
        if self._mmap is not None:
            with contextlib.suppress(BufferError):  # views still alive: unmapped with them
                self._mmap.close()
            self._mmap = None
        self.file.close()


def _decode_text(arr: np.ndarray) -> np.ndarray:
    out = np.empty(arr.shape, dtype=object)
    flat = arr.reshape(-1)
    out_flat = out.reshape(-1)
    for i, b in enumerate(flat):
        out_flat[i] = bytes(b).decode("utf-8")
    return out


@njit
def _locate(
    g: np.ndarray, bounds: np.ndarray, guide: np.ndarray, shift: int
) -> tuple[np.ndarray, np.ndarray]:
    """Episode (position in the view) and step of each global step index in ``g``.

    ``bounds`` are the cumulative step counts of the view's episodes; ``guide[b]`` is the
    episode holding step ``b << shift``. A lookup starts there and moves past the episodes that
    end inside the bucket: with buckets no longer than the mean episode, at most one move is
    expected per sample, whatever the mix of episode lengths.
    """
    local = np.empty(g.size, dtype=np.int64)
    t = np.empty(g.size, dtype=np.int64)
    for k in range(g.size):
        x = g[k]
        e = guide[x >> shift]
        while bounds[e] <= x:
            e += 1
        local[k] = e
        t[k] = x - (bounds[e - 1] if e > 0 else 0)
    return local, t


@dataclasses.dataclass(frozen=True)
class _StepIndex:
    """Guide table over a view's steps: O(1) expected work to locate a sampled step."""

    key: tuple[int, int]
    bounds: np.ndarray
    guide: np.ndarray
    shift: int

    @property
    def total(self) -> int:
        return int(self.bounds[-1]) if self.bounds.size else 0

    @classmethod
    def build(cls, key: tuple[int, int], steps: np.ndarray) -> _StepIndex:
        bounds = np.cumsum(steps, dtype=np.int64)
        total = int(bounds[-1]) if bounds.size else 0
        mean = total / max(1, steps.size)
        shift = max(0, int(np.floor(np.log2(max(1.0, mean)))))
        starts = np.arange((total >> shift) + 1, dtype=np.int64) << shift
        guide = np.searchsorted(bounds, starts, side="right").astype(np.int64)
        return cls(key, bounds, guide, shift)


class Dataset:
    """A twinloop dataset (or a filtered view of one).

    Args:
        path: The dataset folder, its ``data`` folder or its data file.
        strict: Raise :class:`DatasetCorruptError` on the first damaged episode instead of
            skipping it and listing it in :attr:`problems`.
        verify: Check each episode's checksums (and, where they differ, its dataset headers)
            the first time any of its data is read; a damaged episode is never returned. The
            check hashes every byte once (several GB/s); ``False`` skips it.
    """

    def __init__(
        self, path: str | os.PathLike, *, strict: bool = False, verify: bool = True
    ) -> None:
        """Open the file and index its committed episodes."""
        self._store = _open_store(find_data_dir(path), verify)
        self._store_verify = verify
        self._sel: np.ndarray | None = None
        self._idx: tuple[tuple[int, int], np.ndarray] | None = None
        self._step_index: _StepIndex | None = None
        self.strict = strict
        self._report()

    @classmethod
    def _view(cls, store: _Store, sel: np.ndarray, strict: bool) -> Dataset:
        obj = cls.__new__(cls)
        obj._store = store
        obj._sel = sel
        obj._idx = None
        obj._step_index = None
        obj.strict = strict
        obj._store_verify = True
        return obj

    def _report(self) -> None:
        if self.problems:
            if self.strict:
                raise DatasetCorruptError(self.problems[0])
            log.warning("%s", self.problems[0])

    # description -------------------------------------------------------------------------------
    @property
    def path(self) -> Path:
        """The data file."""
        return self._store.path

    @property
    def metadata(self) -> dict[str, Any]:
        """The content of metadata.json."""
        return self._store.meta

    @property
    def id(self) -> str:
        """The dataset id."""
        return str(self._store.meta.get("dataset_id", ""))

    @property
    def fields(self) -> list[FieldSpec]:
        """Stored fields."""
        return self._store.fields

    @property
    def observation_space(self) -> gym.Space:
        """Single-env observation space."""
        return self._store.observation_space

    @property
    def action_space(self) -> gym.Space:
        """Single-env action space."""
        return self._store.action_space

    @property
    def problems(self) -> list[str]:
        """Damage found so far: each names the file and the first episode it affects."""
        return list(self._store.problems)

    @property
    def writer_state(self) -> str:
        """``open`` (being written), ``interrupted`` (its writer died), ``closed`` or ``failed``.

        An interrupted capture holds every episode committed before its writer died; its
        metadata.json counts may lag (``twinloop data recover`` updates them).
        """
        state = str(self._store.meta.get("twinloop", {}).get("writer", {}).get("state", "closed"))
        if state == "open" and not writer_alive(self._store.data_dir):
            return "interrupted"
        return state

    @property
    def indices(self) -> np.ndarray:
        """Index positions of this view's episodes (damaged ones left out)."""
        store = self._store
        key = (store.generation, store.ids.size)
        cached = self._idx
        if cached is not None and cached[0] == key:
            return cached[1]
        base = np.arange(store.ids.size) if self._sel is None else self._sel
        if store.bad.any():
            base = base[~store.bad[base]]
        self._idx = (key, base)
        return base

    def __len__(self) -> int:
        """Number of (readable) episodes in this view."""
        return int(self.indices.size)

    @property
    def total_steps(self) -> int:
        """Number of steps in this view."""
        return int(self._store.steps[self.indices].sum())

    @property
    def episode_metadata(self) -> list[dict[str, Any]]:
        """Attributes of each episode of this view (plus ``terminated`` / ``truncated``)."""
        rows = self._store.meta_rows
        return [rows[i] for i in self.indices.tolist()]

    # episodes --------------------------------------------------------------------------------
    def _episode(self, e: int) -> EpisodeData:
        store = self._store
        store.ensure_intact(np.array([e]))
        if store.bad[e]:
            raise DatasetCorruptError(store.damage[e])
        try:
            return self._read_episode(e)
        except DatasetCorruptError as exc:
            store.mark_bad(e, str(exc))
            raise

    def _read_episode(self, e: int) -> EpisodeData:
        store = self._store
        obs, act = [], []
        out: dict[str, Any] = {"infos": {}}
        for j, f in enumerate(store.fields):
            value = store.field(j, e)
            if f.text:
                value = list(_decode_text(value))
            if f.source == SOURCE_OBS:
                obs.append((f.key, value))
            elif f.source == SOURCE_ACTION:
                act.append((f.key, value))
            elif f.source == SOURCE_REWARD:
                out["rewards"] = value
            elif f.source == SOURCE_TERMINATED:
                out["terminations"] = value
            elif f.source == SOURCE_TRUNCATED:
                out["truncations"] = value
            else:
                out["infos"][f.key[0]] = value
        return EpisodeData(
            id=int(store.ids[e]),
            observations=_nest(obs, store.observation_space),
            actions=_nest(act, store.action_space),
            rewards=out["rewards"],
            terminations=out["terminations"],
            truncations=out["truncations"],
            infos=out["infos"],
            metadata=dict(store.meta_rows[e]),
        )

    def __getitem__(self, i: int) -> EpisodeData:
        """The ``i``-th episode of this view.

        Raises:
            DatasetCorruptError: The episode is damaged (the message names the file, the
                episode and the field); it then leaves the view.
        """
        idx = self.indices
        if not -idx.size <= i < idx.size:
            raise IndexError(f"episode {i} out of range for a dataset of {idx.size} episodes")
        return self._episode(int(idx[i]))

    def iterate_episodes(self, indices: Sequence[int] | None = None) -> Iterator[EpisodeData]:
        """Yield episodes of this view (all, or the view positions in ``indices``).

        A damaged episode is skipped and named in :attr:`problems` (raised if ``strict``).
        """
        idx = self.indices
        for i in range(idx.size) if indices is None else indices:
            try:
                episode = self._episode(int(idx[i]))
            except DatasetCorruptError:
                if self.strict:
                    raise
                continue
            yield episode

    def __iter__(self) -> Iterator[EpisodeData]:
        """Iterate over episodes."""
        return self.iterate_episodes()

    def sample_episodes(self, n: int, rng: np.random.Generator | None = None) -> list[EpisodeData]:
        """``n`` distinct episodes chosen uniformly."""
        rng = rng or np.random.default_rng()
        while True:
            if n > len(self):
                raise ValueError(f"cannot sample {n} episodes from a dataset of {len(self)}")
            pick = rng.choice(len(self), size=n, replace=False)
            if not self._store.ensure_intact(self.indices[pick]):
                return [self[int(i)] for i in pick]

    def filter(
        self, predicate: Callable[[dict[str, Any]], bool] | None = None, **equals: Any
    ) -> Dataset:
        """A view of the episodes whose metadata satisfies ``predicate`` and ``equals``.

        Example: ``ds.filter(lambda m: m["episode_return"] > 0, terminated=True)``.
        Metadata keys: ``id``, ``seed``, ``total_steps``, ``env_index``, ``episode_return``,
        ``wall_time_start_s``, ``wall_time_end_s``, ``terminated``, ``truncated``.
        """
        rows = self._store.meta_rows
        for key in equals:
            if rows and key not in rows[0]:
                raise KeyError(f"no episode metadata {key!r}; keys: {', '.join(sorted(rows[0]))}")
        keep = [
            i
            for i in self.indices.tolist()
            if all(rows[i].get(k) == v for k, v in equals.items())
            and (predicate is None or predicate(rows[i]))
        ]
        return Dataset._view(self._store, np.array(keep, dtype=np.int64), self.strict)

    # transitions -------------------------------------------------------------------------------
    def sample(
        self,
        batch_size: int,
        rng: np.random.Generator | None = None,
        *,
        with_infos: bool = False,
    ) -> TransitionBatch:
        """Sample ``batch_size`` transitions uniformly over every step of this view.

        Locating a sampled step costs O(1) expected time whatever the number of episodes (a
        guide table over the view's steps, built once per view and episode count); reading its
        rows is one gather per field from the memory-mapped file.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        store = self._store
        rng = rng or np.random.default_rng()
        while True:
            idx = self.indices
            # the index is rebuilt when the view or the store's episode list changes (refresh,
            # or damage found)
            key = (store.generation, idx.size)
            index = self._step_index
            if index is None or index.key != key:
                index = self._step_index = _StepIndex.build(key, store.steps[idx])
            if index.total == 0:
                raise ValueError("cannot sample transitions from an empty dataset")
            g = rng.integers(0, index.total, size=batch_size)
            local, t = _locate(g, index.bounds, index.guide, index.shift)
            eps = idx[local]
            if not store.ensure_intact(eps):
                break  # (a damaged episode leaves the view: draw again without it)
        obs, nxt, act = [], [], []
        out: dict[str, Any] = {}
        infos: dict[str, np.ndarray] = {}
        for j, f in enumerate(store.fields):
            if f.source == SOURCE_OBS:
                a, b = store.rows(j, eps, t), store.rows(j, eps, t + 1)
                if f.text:
                    a, b = _decode_text(a), _decode_text(b)
                obs.append((f.key, a))
                nxt.append((f.key, b))
            elif f.source == SOURCE_ACTION:
                v = store.rows(j, eps, t)
                act.append((f.key, _decode_text(v) if f.text else v))
            elif f.source in (SOURCE_REWARD, SOURCE_TERMINATED, SOURCE_TRUNCATED):
                out[f.source] = store.rows(j, eps, t)
            elif with_infos and f.source in (SOURCE_INFO, SOURCE_WALL):
                infos[f.key[0]] = store.rows(j, eps, t + 1)
        return TransitionBatch(
            observations=_nest(obs, store.observation_space),
            actions=_nest(act, store.action_space),
            rewards=out[SOURCE_REWARD],
            next_observations=_nest(nxt, store.observation_space),
            terminations=out[SOURCE_TERMINATED],
            truncations=out[SOURCE_TRUNCATED],
            episode_ids=store.ids[eps],
            steps=t,
            infos=infos if with_infos else None,
        )

    # integrity ---------------------------------------------------------------------------------
    def verify(self, progress: Callable[[int, int], None] | None = None) -> list[str]:
        """Check every episode of this view in full; return the problems found (none: intact).

        Twinloop's episodes: every dataset's checksum, and every dataset header against the
        episode index. Episodes another tool wrote: every field is read and its shape
        checked. Damaged episodes leave the view. ``progress(done, total)`` after each.
        """
        store = self._store
        idx = self.indices
        for k, e in enumerate(idx.tolist()):
            message = store.check_episode(e, deep=True)
            if message is not None:
                store.mark_bad(e, message)
            if progress is not None:
                progress(k + 1, idx.size)
        return list(store.problems)

    # following ---------------------------------------------------------------------------------
    def refresh(self) -> int:
        """Index episodes committed since opening (or the last refresh); return how many.

        A filtered view keeps its selection; refresh the full dataset to see new episodes.
        """
        if isinstance(self._store, _EmptyStore) and self._sel is None:
            # the capture has committed its first episode since: read it as a dataset now
            store = _open_store(self._store.data_dir, self._store_verify)
            if not isinstance(store, _EmptyStore):
                self._store.close()
                self._store = store
                self._idx = self._step_index = None
                self._report()
                return len(store.ids)
        before = len(self._store.problems)
        n = self._store.refresh()
        if len(self._store.problems) > before:
            self._report()
        return n

    def follow(self, poll_s: float = 0.5, timeout_s: float | None = None) -> Iterator[int]:
        """Poll a capture being written; yield the number of new episodes after each poll.

        Ends when the writer has closed (``writer_state != "open"``) or after ``timeout_s``.
        """
        t0 = time.monotonic()
        while True:
            n = self.refresh()
            yield n
            if self.writer_state != "open":
                n = self.refresh()
                if n:
                    yield n
                return
            if timeout_s is not None and time.monotonic() - t0 > timeout_s:
                return
            time.sleep(poll_s)

    def close(self) -> None:
        """Release the file."""
        self._store.close()

    def __enter__(self) -> Dataset:
        """Return self."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Close."""
        self.close()


class _EmptyStore:
    """A twinloop capture that has not committed its first episode (or never will)."""

    def __init__(self, data_dir: Path, meta: dict[str, Any]) -> None:
        self.data_dir = data_dir
        self.path = data_dir / DATA_FILE
        self.meta = meta
        self.observation_space = space_from_json(meta["observation_space"])
        self.action_space = space_from_json(meta["action_space"])
        self.fields = episode_fields(self.observation_space, self.action_space, [])
        self.ids = np.zeros(0, dtype=np.int64)
        self.steps = np.zeros(0, dtype=np.int64)
        self.bad = np.zeros(0, dtype=np.bool_)
        self.meta_rows: list[dict[str, Any]] = []
        self.damage: dict[int, str] = {}
        self.problems: list[str] = []
        self.generation = 0

    def ensure_intact(self, eps: np.ndarray) -> bool:
        return False

    def refresh(self) -> int:
        self.meta = load_metadata(self.data_dir)[0] or self.meta
        return 0

    def close(self) -> None:
        pass


def _open_store(data_dir: Path, verify: bool = True) -> Any:
    """The store of a dataset: twinloop's fast path, or h5py for datasets others wrote."""
    meta, fields = load_metadata(data_dir)
    if fields is None:
        if "twinloop" in meta and not (data_dir / DATA_FILE).exists():
            return _EmptyStore(data_dir, meta)
        from twinloop.datasets import h5read

        if meta or h5read.root_metadata(data_dir / DATA_FILE):
            return h5read.H5Store(data_dir)
    return _Store(data_dir, verify)


def open_dataset(path: str | os.PathLike, *, strict: bool = False, verify: bool = True) -> Dataset:
    """Open a dataset for reading (see :class:`Dataset`)."""
    return Dataset(path, strict=strict, verify=verify)


def summarize(ds: Dataset) -> dict[str, Any]:
    """Episodes, steps, size, returns, backends, tags and time span of a dataset."""
    meta = ds.metadata
    tl: Mapping[str, Any] = meta.get("twinloop", {})
    rows = ds.episode_metadata
    returns = np.array([r.get("episode_return", np.nan) for r in rows], dtype=np.float64)
    starts = [r["wall_time_start_s"] for r in rows if "wall_time_start_s" in r]
    ends = [r["wall_time_end_s"] for r in rows if "wall_time_end_s" in r]
    size = 0
    for p in ds.path.parent.iterdir():
        if p.is_file():
            size += p.stat().st_blocks * 512
    return {
        "dataset_id": ds.id,
        "path": str(ds.path.parent),
        "episodes": len(ds),
        "steps": ds.total_steps,
        "size_bytes": int(size),
        "bytes_per_step": size / ds.total_steps if ds.total_steps else float("nan"),
        "return_mean": float(np.mean(returns)) if returns.size else float("nan"),
        "return_min": float(np.min(returns)) if returns.size else float("nan"),
        "return_max": float(np.max(returns)) if returns.size else float("nan"),
        "terminated": int(sum(bool(r.get("terminated")) for r in rows)),
        "truncated": int(sum(bool(r.get("truncated")) for r in rows)),
        "env_id": tl.get("env_id"),
        "backends": _backends(tl),
        "tags": tl.get("tags", {}),
        "twinloop_version": tl.get("twinloop_version"),
        "git_revision": tl.get("git_revision"),
        "wall_time_start_s": min(starts) if starts else None,
        "wall_time_end_s": max(ends) if ends else None,
        "writer_state": ds.writer_state,
        "problems": ds.problems,
        "combined_datasets": meta.get("combined_datasets", []),
    }


def _backends(tl: Mapping[str, Any]) -> list[dict[str, Any]]:
    if "backends" in tl:
        return list(tl["backends"])
    return [tl["backend"]] if tl.get("backend") else []
