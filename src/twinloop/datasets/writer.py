"""DatasetWriter: append episodes to a Minari-layout HDF5 dataset, durably, at memory speed.

Layout (Minari's)::

    <root>/<namespace>/<name>-v<N>/data/metadata.json     spaces, counts, twinloop provenance
    <root>/<namespace>/<name>-v<N>/data/main_data.hdf5    /episode_<id>/{observations, actions,
                                                           rewards, terminations, truncations,
                                                           infos/...} + attrs id, seed, ...

Commit protocol (see :mod:`twinloop.datasets._hdf5` for why it survives SIGKILL): the bytes
of the new episodes and an ``OCHK`` block linking them from the root group are written past
everything committed (1 ``pwrite``); then the 24-byte tail of the previous root block is
rewritten to point at the new block (1 ``pwrite`` inside one page). The superblock's end of
file is moved ahead in steps of at least 1 MiB (the file is extended sparsely), so it is
rewritten rarely. ``metadata.json`` is replaced atomically at most once per
``metadata_interval_s`` and on close; readers count episodes from the HDF5 file itself.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import logging
import os
import re
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import gymnasium as gym
import numpy as np

from twinloop.datasets import _episode as E
from twinloop.datasets import _hdf5 as H
from twinloop.datasets import _hdf5_read as R
from twinloop.datasets._hash import digest
from twinloop.datasets._scan import (  # noqa: F401 (paths re-exported for older imports)
    DATA_FILE,
    LOCK_FILE,
    METADATA_FILE,
    RootChain,
    find_data_dir,
    scan_file,
    writer_alive,
)
from twinloop.datasets.errors import (
    DatasetError,
    DatasetExistsError,
    DatasetLockedError,
    DatasetNotFoundError,
    DatasetWriteError,
    SchemaMismatchError,
)
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
    space_to_json,
)

log = logging.getLogger(__name__)

#: 1: twinloop 0.1 captures; 2: episodes carry XXH64 checksums of their datasets and headers,
#: image chunks are indexed by a version 1 B-tree (every structure is HDF5 1.8's).
FORMAT_VERSION = 2
#: What readers the files are tested with (tests/datasets/test_reader_matrix.py), in metadata.
READERS = {
    "hdf5": ">=1.8 (h5py 2.7-3.16, PyTables 3.11, h5dump 1.10)",
    "pyfive": ">=1.3",
    "text_fields": "h5py>=2.10 (older h5py cannot convert fixed-length UTF-8 strings)",
}
#: The Minari dataset format this layout follows (read by minari 0.5.0 and later).
MINARI_FORMAT = "0.5.0"
_ID_RE = re.compile(r"^(?:(?P<ns>[-_\w][-_\w/]*[-_\w]+)/)?(?P<name>[-_\w]+?)-v(?P<version>\d+)$")

Mode = Literal["create", "overwrite", "append"]
#: Called as ``progress(episodes_committed, steps_committed)`` after every commit.
ProgressFn = Callable[[int, int], None]


# --- paths ------------------------------------------------------------------------------------
#: Accepted ``compression_strategy`` values.
STRATEGIES = ("auto", "deflate", "huffman")


def check_dataset_id(dataset_id: str) -> str:
    """Return ``dataset_id`` if it reads ``[namespace/]name-v<N>``; else ``ValueError``."""
    if not _ID_RE.fullmatch(dataset_id):
        raise ValueError(
            f"dataset id {dataset_id!r} must look like 'namespace/name-v0' (letters, digits, "
            "'-' and '_'; the -v<N> version suffix is required)"
        )
    return dataset_id


def dataset_dir(root: str | os.PathLike, dataset_id: str) -> Path:
    """Where dataset ``dataset_id`` lives under ``root`` (Minari's MINARI_DATASETS_PATH rule)."""
    return Path(root) / check_dataset_id(dataset_id)


def default_dataset_id(directory: str | os.PathLike) -> str:
    """``<parent>/<name>`` for ``.../<parent>/<name>-v<N>``, else ``<name>-v0``."""
    d = Path(directory).resolve()
    if re.fullmatch(r"[-_\w]+?-v\d+", d.name):
        with_ns = f"{d.parent.name}/{d.name}"
        return with_ns if _ID_RE.fullmatch(with_ns) else d.name
    name = re.sub(r"[^-_\w]", "_", d.name) or "dataset"
    return f"{name}-v0"


def find_datasets(root: str | os.PathLike) -> list[Path]:
    """Every dataset ``data`` folder under ``root`` (``root`` itself included), sorted."""
    try:
        return [find_data_dir(root)]
    except DatasetNotFoundError:
        pass
    return sorted({m.parent for m in Path(root).rglob(f"data/{METADATA_FILE}")})


def recover_dataset(path: str | os.PathLike) -> dict[str, int]:
    """Make an interrupted or damaged capture whole again; return what it now holds.

    * A writer killed mid-capture leaves every committed episode in the data file, but
      metadata.json (which Minari reads for the episode count) may lag by up to
      ``metadata_interval_s``: it is brought up to date.
    * A capture killed before its first episode is marked closed with 0 episodes.
    * A file whose root group or link blocks are damaged gets a new root that links every
      episode whose header is intact (found past the damage), so that every HDF5 reader
      sees them again; a damaged superblock is rewritten.

    Returns:
        ``{"episodes": n, "steps": n}`` now recorded in metadata.json.

    Raises:
        DatasetNotFoundError: No metadata.json (nothing says what the spaces are).
        DatasetLockedError: A live writer holds the dataset.
    """
    from twinloop.datasets._scan import load_metadata
    from twinloop.datasets.schema import space_from_json

    data_dir = find_data_dir(path)
    meta, fields = load_metadata(data_dir)
    if not meta:
        raise DatasetNotFoundError(
            f"{data_dir / METADATA_FILE} is missing, so the dataset's spaces are unknown; "
            "nothing was changed"
        )
    writer = DatasetWriter(
        data_dir.parent,
        observation_space=space_from_json(meta["observation_space"]),
        action_space=space_from_json(meta["action_space"]),
        dataset_id=meta["dataset_id"],
        mode="append",
        repair=True,
    )
    with writer:
        if fields is None:
            if (data_dir / DATA_FILE).exists():
                raise DatasetError(
                    f"{data_dir / METADATA_FILE} lists no fields but {DATA_FILE} exists: "
                    "this is not a twinloop capture; nothing was changed"
                )
            return {"episodes": 0, "steps": 0}
        writer.begin([f for f in fields if f.source == SOURCE_INFO])
        return {"episodes": writer.n_episodes, "steps": writer.n_steps}


# --- provenance -------------------------------------------------------------------------------
def git_revision() -> str | None:
    """The git commit of the twinloop source tree, or None outside a git checkout."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / ".git").exists():
            try:
                out = subprocess.run(
                    ["git", "-C", str(parent), "rev-parse", "HEAD"],
                    capture_output=True,
                    text=True,
                    timeout=5,
                    check=True,
                )
            except (OSError, subprocess.SubprocessError):
                return None
            return out.stdout.strip() or None
    return None


def _json_safe(value: Any, depth: int = 0) -> Any:
    if depth > 8:
        return repr(value)
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v, depth + 1) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist() if value.size <= 4096 else f"<array {value.shape} {value.dtype}>"
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def describe_env(env: gym.Env | gym.vector.VectorEnv) -> dict[str, Any]:
    """Provenance of an env: id, full config (JSON), backend identity, batch size, metadata."""
    from twinloop.core.config import to_json

    u = env.unwrapped if hasattr(env, "unwrapped") else env
    out: dict[str, Any] = {}
    spec = getattr(env, "spec", None)
    out["env_id"] = getattr(u, "env_id", None) or (spec.id if spec is not None else None)
    cfg = getattr(u, "config", None)
    if cfg is None:
        cfg = getattr(u, "cfg", None)
    if cfg is not None:
        try:
            out["env_config"] = json.loads(to_json(cfg))
        except (TypeError, ValueError):
            out["env_config"] = _json_safe(repr(cfg))
    backend = getattr(u, "backend", None)
    if backend is not None and hasattr(backend, "identity"):
        out["backend"] = _json_safe(backend.identity())
        name = profile_name(out["backend"])
        if name is not None:  # a twin with hidden physics says only its profile's name
            out["device_profile"] = {"name": name}
    elif isinstance(u, gym.vector.VectorEnv):
        out["backend"] = {"kind": "sim", "vector_env": type(u).__name__}
    out["n_envs"] = int(getattr(env, "num_envs", 1))
    meta = dict(getattr(env, "metadata", {}) or {})
    meta.pop("autoreset_mode", None)
    out["env_metadata"] = _json_safe(meta)
    return out


def profile_name(identity: Any) -> str | None:
    """The ``"profile"`` a backend's identity (or a server's, nested in it) names, or None."""
    if not isinstance(identity, dict):
        return None
    if isinstance(identity.get("profile"), str):
        return identity["profile"]
    for value in identity.values():
        name = profile_name(value)
        if name is not None:
            return name
    return None


def _now_utc() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _write_error(exc: OSError, path: Path, what: str, committed: int) -> DatasetWriteError:
    reason = {
        errno.ENOSPC: "no space left on device",
        errno.EDQUOT: "disk quota exceeded",
        errno.EACCES: "permission denied",
        errno.EPERM: "operation not permitted",
        errno.EROFS: "read-only file system",
        errno.EFBIG: "file too large",
    }.get(exc.errno or 0, exc.strerror or str(exc))
    err = DatasetWriteError(
        f"{path}: {reason} while {what}; the {committed} episodes committed before are intact"
    )
    err.errno = exc.errno
    return err


# --- the writer -------------------------------------------------------------------------------
class DatasetWriter:
    """Write episodes into one dataset folder.

    The folder, lock and mode checks happen at construction (so a bad path fails before any
    stepping); the HDF5 file is created by :meth:`begin`, once the info fields are known.

    Args:
        directory: The dataset folder (``<root>/<namespace>/<name>-v<N>``); its ``data``
            subfolder holds the files.
        observation_space: Single-env observation space.
        action_space: Single-env action space.
        dataset_id: ``namespace/name-v<N>``; default :func:`default_dataset_id`.
        mode: ``"create"`` (fail if it exists), ``"overwrite"`` (replace it) or ``"append"``
            (add episodes; created if missing).
        env_info: Provenance (see :func:`describe_env`).
        tags: User tags, stored in metadata.json (JSON values).
        fsync: Also survive power loss: fsync the data before and after each commit.
        compression_level: zlib level of image fields (1 is fastest).
        compression_strategy: ``"deflate"`` (LZ77 + Huffman), ``"huffman"`` (entropy coding
            only: ~2x faster, for noisy images) or ``"auto"``: per image field, Huffman-only
            when, on the field's first frame, it is within 5 % of deflate's size. Every
            choice writes standard deflate chunks.
        metadata_interval_s: Rewrite metadata.json at most this often while writing.
        progress: Called as ``progress(episodes, steps)`` after every commit.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        observation_space: gym.Space,
        action_space: gym.Space,
        dataset_id: str | None = None,
        mode: Mode = "create",
        env_info: Mapping[str, Any] | None = None,
        tags: Mapping[str, Any] | None = None,
        fsync: bool = False,
        compression_level: int = 1,
        compression_strategy: str = "auto",
        metadata_interval_s: float = 1.0,
        progress: ProgressFn | None = None,
        lock_fd: int | None = None,
        repair: bool = False,
        watch: bool = False,
    ) -> None:
        """Check the target, take the lock and, for ``append``, read what exists.

        ``lock_fd``: the dataset's lock, already held (inherited from :meth:`handoff`).
        ``repair``: append to a file whose root is damaged, after rewriting the root with
        every episode found (see :func:`recover_dataset`).
        ``watch``: from :meth:`begin` on, a watcher process (:mod:`~twinloop.datasets._watch`)
        brings metadata.json up to date if this process dies without closing the writer, so
        that Minari counts every committed episode without a manual ``recover``.
        """
        if mode not in ("create", "overwrite", "append"):
            raise ValueError(f"mode must be 'create', 'overwrite' or 'append', got {mode!r}")
        if not 0 <= compression_level <= 9:
            raise ValueError(f"compression_level must be in [0, 9], got {compression_level}")
        if compression_strategy not in STRATEGIES:
            raise ValueError(
                f"compression_strategy must be one of {', '.join(STRATEGIES)}, "
                f"got {compression_strategy!r}"
            )
        self.directory = Path(directory)
        self.dataset_id = check_dataset_id(dataset_id or default_dataset_id(self.directory))
        self.data_dir = self.directory / "data"
        self.path = self.data_dir / DATA_FILE
        self.metadata_path = self.data_dir / METADATA_FILE
        self.observation_space = observation_space
        self.action_space = action_space
        self.mode = mode
        self.env_info = dict(env_info or {})
        self.tags = _json_safe(dict(tags or {}))
        self.fsync = bool(fsync)
        self.compression_level = int(compression_level)
        self.compression_strategy = compression_strategy
        #: Per image field path: whether its chunks are Huffman-only (decided on first use).
        self.huffman: dict[str, bool] = {}
        self.metadata_interval_s = float(metadata_interval_s)
        self.progress = progress
        self.fields: list[FieldSpec] | None = None
        #: Extra top-level metadata.json keys (e.g. Minari's ``combined_datasets``).
        self.extra_metadata: dict[str, Any] = {}
        self.n_episodes = 0
        self.n_steps = 0
        self._next_id = 0  # ids continue after the largest one linked (another tool's too)
        self._superblock: H.Superblock | None = None
        self._fd: int | None = None
        self._lock_fd: int | None = None
        self._failed: DatasetWriteError | None = None
        self._closed = False
        self._existing: dict[str, Any] | None = None
        self._last_meta = 0.0
        self._created = _now_utc()
        self._wall_span: list[float] = []
        self._out = np.zeros(1 << 16, dtype=np.uint8)
        self._inherited_lock = lock_fd
        self._repair = bool(repair)
        self.watch = bool(watch)
        self._watcher: subprocess.Popen | None = None
        self._prepare()

    # setup -----------------------------------------------------------------------------------
    def _prepare(self) -> None:
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        except PermissionError as exc:
            raise DatasetWriteError(
                f"cannot create {self.data_dir}: permission denied ({exc.strerror})"
            ) from exc
        except OSError as exc:
            raise _write_error(exc, self.data_dir, "creating the dataset folder", 0) from exc
        self._lock()
        exists = self.metadata_path.exists() or self.path.exists()
        if exists and self.mode == "create" and self._empty_capture():
            exists = False  # a capture that died before its first episode: start afresh
        if exists and self.mode == "create":
            n = self._count_hint()
            self._unlock()
            raise DatasetExistsError(
                f"dataset {self.dataset_id!r} already exists at {self.directory}{n}; "
                "pass overwrite (--overwrite) to replace it or append (--append) to add episodes"
            )
        if exists and self.mode == "overwrite":
            for p in (self.path, self.metadata_path):
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
        if exists and self.mode == "append":
            if not self.metadata_path.exists():
                self._unlock()
                raise DatasetError(
                    f"cannot append to {self.directory}: {self.metadata_path.name} is missing "
                    "(a capture that never got its first episode?); use overwrite instead"
                )
            self._existing = json.loads(self.metadata_path.read_text())
            if self._existing.get("dataset_id") != self.dataset_id:
                self._unlock()
                raise SchemaMismatchError(
                    f"cannot append: {self.directory} holds dataset "
                    f"{self._existing.get('dataset_id')!r}, not {self.dataset_id!r}"
                )
            want_obs = space_to_json(self.observation_space)
            want_act = space_to_json(self.action_space)
            if self._existing.get("observation_space") != want_obs:
                self._unlock()
                raise SchemaMismatchError(
                    f"cannot append to {self.directory}: its observation space differs "
                    f"from the env's ({self.observation_space})"
                )
            if self._existing.get("action_space") != want_act:
                self._unlock()
                raise SchemaMismatchError(
                    f"cannot append to {self.directory}: its action space differs from the "
                    f"env's ({self.action_space})"
                )
        if not (exists and self.mode == "append"):
            # say at once that a capture is under way: one killed before its first episode
            # then leaves a dataset of 0 episodes that `data info` and `recover` understand
            try:
                self._write_metadata(state="open")
            except DatasetWriteError:
                self._unlock()
                raise

    def _empty_capture(self) -> bool:
        """Whether the folder holds only the metadata of a capture with no episode."""
        if self.path.exists():
            return False
        try:
            meta = json.loads(self.metadata_path.read_text())
        except (OSError, ValueError):
            return False
        return not (meta.get("twinloop") or {}).get("fields") and meta.get("total_episodes") == 0

    def _count_hint(self) -> str:
        try:
            meta = json.loads(self.metadata_path.read_text())
            return f" with {meta.get('total_episodes', '?')} episodes"
        except (OSError, ValueError):
            return ""

    def _lock(self) -> None:
        if self._inherited_lock is not None:
            fd, self._inherited_lock = self._inherited_lock, None
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # ours already: cannot block
        else:
            fd = self._take_lock()
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self._lock_fd = fd

    def _take_lock(self) -> int:
        """Open the lock file and lock it, or raise naming the process that holds it."""
        lock_path = self.data_dir / LOCK_FILE
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except PermissionError as exc:
            raise DatasetWriteError(
                f"cannot write to {self.data_dir}: permission denied ({exc.strerror})"
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            finally:
                os.close(fd)
            raise DatasetLockedError(
                f"dataset {self.directory} is being written by another process ({holder}); "
                "wait for it to finish or write a separate shard and merge"
            ) from None
        return fd

    def handoff(self, info_fields: Sequence[FieldSpec]) -> tuple[dict[str, Any], int]:
        """Give the dataset to another process, before :meth:`begin`.

        Returns the JSON state that :meth:`adopt` continues from (the dataset, the schema's
        info fields, the options) and the lock's file descriptor, still held: the receiving
        process inherits it, so no other writer can slip in between. This writer is closed.
        """
        if self.started or self._closed:
            raise RuntimeError(f"{self.path}: handoff() needs a writer that has not begun")
        fd = self._lock_fd
        if fd is None:
            raise RuntimeError(f"{self.path}: the writer holds no lock")
        state = {
            "directory": str(self.directory),
            "dataset_id": self.dataset_id,
            "observation_space": space_to_json(self.observation_space),
            "action_space": space_to_json(self.action_space),
            "env_info": _json_safe(self.env_info),
            "tags": self.tags,
            "fsync": self.fsync,
            "compression_level": self.compression_level,
            "compression_strategy": self.compression_strategy,
            "metadata_interval_s": self.metadata_interval_s,
            "watch": self.watch,
            "info_fields": [f.to_json() for f in info_fields],
        }
        self._lock_fd = None
        self._closed = True
        return state, fd

    @classmethod
    def adopt(cls, state: Mapping[str, Any], lock_fd: int) -> DatasetWriter:
        """Continue a :meth:`handoff` in this process: open the dataset and begin."""
        from twinloop.datasets.schema import space_from_json

        writer = cls(
            state["directory"],
            observation_space=space_from_json(state["observation_space"]),
            action_space=space_from_json(state["action_space"]),
            dataset_id=state["dataset_id"],
            mode="append",
            env_info=state["env_info"],
            tags=state["tags"],
            fsync=state["fsync"],
            compression_level=state["compression_level"],
            compression_strategy=state["compression_strategy"],
            metadata_interval_s=state["metadata_interval_s"],
            lock_fd=lock_fd,
            watch=bool(state.get("watch", False)),
        )
        try:
            writer.begin([FieldSpec.from_json(f) for f in state["info_fields"]])
        except BaseException:
            writer.close()
            raise
        return writer

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    @property
    def started(self) -> bool:
        """Whether :meth:`begin` has fixed the schema and opened the file."""
        return self.fields is not None

    def note_device_profile(self, profile: Any) -> None:
        """Record the device profile the captured twin ran (a ``core.profile.DeviceProfile``).

        Its name goes with the provenance; its values go only to the privileged section
        (``twinloop.privileged``, strip it before sharing), so that identification from the
        capture can be scored.
        """
        self.env_info["device_profile"] = {"name": profile.name}
        self.env_info["privileged"] = {"device_profile": profile.privileged()}

    def begin(self, info_fields: Sequence[FieldSpec]) -> None:
        """Fix the schema (spaces + ``info_fields``) and create or reopen the HDF5 file.

        Raises:
            SchemaMismatchError: Appending with fields that differ from the dataset's.
            DatasetWriteError: The file cannot be created (the message names it and why).
        """
        if self.started:
            raise RuntimeError(f"{self.path}: begin() was already called")
        fields = episode_fields(self.observation_space, self.action_space, list(info_fields))
        if self._existing is not None and self.path.exists():
            have = [FieldSpec.from_json(f) for f in self._existing["twinloop"]["fields"]]
            if have != fields:
                diff = sorted({f.path for f in have} ^ {f.path for f in fields}) or [
                    f.path for f, g in zip(have, fields, strict=False) if f != g
                ]
                raise SchemaMismatchError(
                    f"cannot append to {self.path}: its fields differ from this env's "
                    f"(first differences: {', '.join(diff[:5])})"
                )
        self.fields = fields
        self._template = E.build_template(fields)
        probe = E.StepBuffer(fields, 1, capacity=2)
        self._static = E.pack_schema(probe, self._template, np.array([f.image for f in fields]))
        self._f_ext = np.array([f.image for f in fields], dtype=np.bool_)
        self._has_images = bool(self._f_ext.any())
        self._no_ext = np.zeros((1, 3 * len(fields) + 1), dtype=np.int64)
        self._eps = np.zeros((E.N_EP, 1), dtype=np.int64)
        self._result = np.zeros((4, 4), dtype=np.int64)
        if self._existing is not None and self.path.exists():
            self._reopen()
        else:
            self._create()
        self._write_metadata(state="open")
        if self.watch:
            self._start_watcher()

    def _start_watcher(self) -> None:
        # a script beside this module, run by path: the writer never imports it (the watcher
        # imports this package once its writer has died)
        watch_script = Path(__file__).with_name("_watch.py")
        try:
            self._watcher = subprocess.Popen(
                [sys.executable, str(watch_script), str(self.data_dir), LOCK_FILE],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                start_new_session=True,  # a Ctrl-C to the capture must not stop its watcher
            )
        except OSError as exc:  # no process to spare: metadata.json may then lag after a crash
            log.warning(
                "%s: no crash watcher (%s); run `twinloop data recover` after a crash",
                self.path,
                exc,
            )

    def _stop_watcher(self) -> None:
        proc, self._watcher = self._watcher, None
        if proc is None or proc.stdin is None:
            return
        with contextlib.suppress(OSError, ValueError):
            proc.stdin.write(b"closed\n")
            proc.stdin.close()
        # not waited for (a close stays cheap): it exits at once; subprocess reaps it later

    def _create(self) -> None:
        root = H.HeaderBuilder()
        root.add(H.MSG_LINK_INFO, H.LINK_INFO)
        root.add(H.MSG_GROUP_INFO, H.GROUP_INFO)
        body, _ = H.attribute("twinloop_format_version", np.array(FORMAT_VERSION, np.int64))
        root.add(H.MSG_ATTRIBUTE, body)
        raw, _, n = root.build(reserve_tail=True)
        chunk = bytearray(raw)
        struct.pack_into("<I", chunk, n, H.checksum(chunk[:n]))
        root_at = H.SUPERBLOCK_SIZE
        end = root_at + len(chunk)
        eoa = max(1 << 20, end + H.PREALLOC_MARK_BYTES)
        tmp = self.path.with_name(f".{DATA_FILE}.{os.getpid()}.tmp")
        try:
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            os.pwrite(fd, H.superblock(eoa, root_at) + bytes(chunk), 0)
            os.ftruncate(fd, eoa)
            mark = H.prealloc_mark(eoa)
            os.pwrite(fd, mark, eoa - len(mark))
            os.replace(tmp, self.path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise _write_error(exc, self.path, "creating the file", 0) from exc
        self._fd = fd
        self._superblock = None
        self._root_at = root_at
        self._eoa = eoa
        self._cursor = _align8(end)
        self._tail_chunk = np.frombuffer(bytes(chunk), dtype=np.uint8).copy()
        self._tail_at = root_at

    def _reopen(self) -> None:
        scan = scan_file(self.path)
        repair = self._repair and bool(scan.problems)
        if scan.problems and not self._repair:
            raise DatasetError(
                f"cannot append to {self.path}: it is damaged ({scan.problems[0]}); "
                "run `twinloop data recover` on it, or read the good episodes with "
                "twinloop.datasets.open_dataset and merge them into a new dataset"
            )
        sb = scan.superblock
        if sb is None and repair:  # twinloop's root starts right after the superblock
            size = self.path.stat().st_size
            sb = H.Superblock(2, 0, 0, H.UNDEF, size, H.SUPERBLOCK_SIZE)
        if sb is None or sb.base != 0 or sb.flags:
            raise DatasetError(
                f"cannot append to {self.path}: its superblock is unreadable or marks the file "
                "as open by another HDF5 writer (SWMR); nothing was changed. Close that "
                "writer, or run `twinloop data recover` on the dataset"
            )
        try:
            fd = os.open(self.path, os.O_RDWR)
        except OSError as exc:
            raise _write_error(exc, self.path, "opening for append", 0) from exc
        self._fd = fd
        self._superblock = sb
        self._root_at = sb.root
        self._eoa = sb.eoa
        chain = scan.chain
        size = os.fstat(fd).st_size
        tail_end = chain.tail_address + len(chain.tail_chunk)
        if (
            chain.appendable
            and not repair
            and size == sb.eoa
            and tail_end <= sb.eoa - H.PREALLOC_MARK_BYTES
            and os.pread(fd, H.PREALLOC_MARK_BYTES, size - H.PREALLOC_MARK_BYTES)
            == H.prealloc_mark(sb.eoa)
        ):
            # a twinloop writer died here and nobody has allocated since (its preallocation
            # mark is still last): the space after its last commit is unreferenced: reuse it
            self._cursor = _align8(tail_end)
        else:
            # new bytes go past everything any writer may have put in the file: past the end
            # of file address libhdf5 keeps in the superblock and past the file's actual size
            self._cursor = _align8(max(sb.eoa, size))
        if chain.appendable and not repair:
            self._tail_chunk = np.frombuffer(chain.tail_chunk, dtype=np.uint8).copy()
            self._tail_at = chain.tail_address
        else:
            self._relink(chain, repair)
        self.n_episodes = chain.n_linked
        self._next_id = chain.next_id
        self.n_steps = int(scan.n_steps)
        if scan.wall_span:
            self._wall_span = list(scan.wall_span)
        created = (self._existing or {}).get("twinloop", {}).get("created_utc")
        self._created = created or self._created

    def _relink(self, chain: RootChain, repair: bool = False) -> None:
        """Give the root group a new header in twinloop's append form, then switch to it.

        Another writer left the root in a form this writer cannot append to (links in dense
        storage or a symbol table, or a last chunk without a reserved tail). The new header
        holds every link (copied as stored) and every other root message (attributes ...)
        unchanged; it is written past the end of the file, and one 48-byte superblock write
        then makes it the root. Until that write the old root stays in force, so a crash
        leaves the file as it was.

        ``repair``: the root is damaged; links in its readable blocks are kept, and the
        episodes the scan found past the damage are linked again.
        """
        assert self._fd is not None
        fd = self._fd

        def read(address: int, n: int) -> bytes:
            return os.pread(fd, n, address)

        size = os.fstat(fd).st_size
        errors: list[H.FormatError] = []
        try:
            header = R.read_object_header(read, self._root_at, size, errors)
            links = R.group_links(read, header, size)
            messages = header.messages()
        except (H.FormatError, ValueError, IndexError, struct.error):
            if not repair:
                raise
            header, links = None, []
            body, _ = H.attribute("twinloop_format_version", np.array(FORMAT_VERSION, np.int64))
            messages = [R.Msg(H.MSG_ATTRIBUTE, 0, body, 0, 0)]
        if errors and not repair:
            raise errors[0]
        have = {link.name for link in links}
        # episodes found past damaged blocks (repair): linked again, in id order
        links += [R.Link(n, a) for n, a in chain.links if n not in have]
        if header is not None and header.tracks_order:
            raise DatasetError(
                f"cannot append to {self.path}: another writer made its root group track "
                "creation order, which this writer does not keep; nothing was changed. "
                "Merge it into a new dataset with `twinloop data merge`"
            )
        root = H.HeaderBuilder()
        root.add(H.MSG_LINK_INFO, H.LINK_INFO)
        root.add(H.MSG_GROUP_INFO, H.GROUP_INFO)
        skip = {
            H.MSG_LINK_INFO,
            H.MSG_GROUP_INFO,
            H.MSG_LINK,
            R.MSG_SYMBOL_TABLE,
        }
        for m in messages:
            if m.kind not in skip:
                root.add(m.kind, m.body, flags=m.flags)
        for link in links:
            body = link.body if link.body is not None else H.link(link.name, link.address or 0)
            root.add(H.MSG_LINK, body)
        raw, _, n = root.build(reserve_tail=True)
        chunk = bytearray(raw)
        struct.pack_into("<I", chunk, n, H.checksum(chunk[:n]))
        at = self._cursor
        end = at + len(chunk)
        try:
            if end > self._eoa - H.PREALLOC_MARK_BYTES:
                self._grow(end)
            self._pwrite_all(self._fd, np.frombuffer(bytes(chunk), dtype=np.uint8), at)
            os.fdatasync(self._fd)  # the new root is on disk before anything points at it
            self._write_superblock(self._eoa, at)
            os.fdatasync(self._fd)
        except OSError as exc:
            raise _write_error(exc, self.path, "relinking the root group", 0) from exc
        log.info(
            "%s: root group rewritten in append form (%s links, %s storage before)",
            self.path,
            chain.n_linked + len(chain.other_links),
            chain.storage,
        )
        self._root_at = at
        self._tail_chunk = np.frombuffer(bytes(chunk), dtype=np.uint8).copy()
        self._tail_at = at
        self._cursor = _align8(end)

    def _write_superblock(self, eoa: int, root: int) -> None:
        sb = self._superblock
        ext = sb.extension if sb is not None else H.UNDEF
        if os.pwrite(self._fd, H.superblock(eoa, root, ext), 0) != H.SUPERBLOCK_SIZE:
            raise OSError(errno.EIO, "short write of the superblock")

    # buffers -----------------------------------------------------------------------------------
    def buffer(self, n_envs: int, capacity: int = 256) -> E.StepBuffer:
        """A step buffer laid out for this writer's schema."""
        if self.fields is None:
            raise RuntimeError(f"{self.path}: call begin() before buffer()")
        return E.StepBuffer(self.fields, n_envs, capacity)

    # commits -------------------------------------------------------------------------------------
    def commit(
        self,
        buf: E.StepBuffer,
        envs: np.ndarray,
        starts: np.ndarray,
        ends: np.ndarray,
        seeds: np.ndarray,
        labels: np.ndarray | None = None,
        final: np.ndarray | None = None,
        final_rows: np.ndarray | None = None,
    ) -> None:
        """Durably append the episodes ``(envs[e], starts[e]..ends[e])`` of ``buf``.

        Each episode's last observation-aligned values are ``final[final_rows[e]]``
        (default: ``buf.final[envs[e]]``; other rows only for schemas without images).

        ``seeds[e]`` is the episode's reset seed (-1: it continued a random stream) and
        ``labels[e]`` the env index recorded for it (default ``envs[e]``). When this returns
        the episodes survive the process being killed (and, with ``fsync``, a power cut).

        Raises:
            DatasetWriteError: The write failed; earlier episodes stay intact and the writer
                refuses further commits.
        """
        if self._failed is not None:
            raise self._failed
        if self._closed or self._fd is None:
            raise RuntimeError(f"{self.path}: the writer is closed")
        envs = np.asarray(envs, dtype=np.int64)
        n = int(envs.size)
        if n == 0:
            return
        starts = np.asarray(starts, dtype=np.int64)
        ends = np.asarray(ends, dtype=np.int64)
        seeds = np.asarray(seeds, dtype=np.int64)
        labels = envs if labels is None else np.asarray(labels, dtype=np.int64)
        if np.any(ends <= starts):
            raise ValueError(f"{self.path}: an episode needs at least one step")
        tpl = self._template
        nf = len(self.fields or ())
        eps = np.empty((E.N_EP, n), dtype=np.int64)
        eps[E.EP_ENV] = envs
        eps[E.EP_START] = starts
        eps[E.EP_END] = ends
        eps[E.EP_ID] = np.arange(self._next_id, self._next_id + n)
        eps[E.EP_SEED] = seeds
        eps[E.EP_LABEL] = envs if labels is None else labels
        eps[E.EP_FINAL] = envs if final_rows is None else final_rows
        if final is None:
            final = buf.final
        elif self._has_images:
            raise ValueError(f"{self.path}: separate final rows need a schema without images")
        n_rows = int((ends - starts).sum())
        bound = (n_rows + n) * buf.row_bytes + n * (8 * nf + tpl.data.size + 40)
        regions: list[tuple[int, bytes]] = []
        if self._has_images:
            ext = np.zeros((n, 3 * nf + 1), dtype=np.int64)
            pos = self._cursor
            for e in range(n):
                steps_e = int(ends[e] - starts[e])
                at = pos + E.plain_bytes(buf, steps_e)
                first = at
                env = int(envs[e])
                for j in np.flatnonzero(self._f_ext):
                    frames = np.concatenate(
                        [buf.views[j][starts[e] : ends[e], env], buf.final_views[j][env][None]]
                    )
                    region, fa_at = E.image_region(
                        frames, at, self.compression_level, self._huffman_for(j, frames[0])
                    )
                    regions.append((at, region))
                    ext[e, j] = fa_at
                    ext[e, nf + j] = len(region)
                    ext[e, 2 * nf + 1 + j] = _signed(digest(region))
                    at += _align8(len(region))
                ext[e, 2 * nf] = at - first
                pos = at + tpl.data.size
            bound += int(ext[:, 2 * nf].sum())
        else:
            if self._no_ext.shape[0] < n:
                self._no_ext = np.zeros((2 * n, 3 * nf + 1), dtype=np.int64)
            ext = self._no_ext
        bound += 4 * H.PAGE_BYTES
        if self._out.size < bound:
            self._out = np.zeros(_align8(max(bound, 2 * self._out.size)), dtype=np.uint8)
        out = self._out
        result = np.zeros((4, max(n, 4)), dtype=np.int64)
        total = E.fill_episodes(
            buf.data,
            final,
            eps,
            ext,
            self._static,
            nf,
            tpl.patch_pos.size,
            tpl.cks_len.size,
            buf.reward_word,
            buf.wall_word,
            tpl.data,
            tpl.group_rel,
            out,
            self._cursor,
            result,
        )
        for at, region in regions:
            rel = at - self._cursor
            out[rel : rel + len(region)] = np.frombuffer(region, dtype=np.uint8)
        self._finish_commit(out, total, result)

    def commit_ended(
        self,
        buf: E.StepBuffer,
        t: int,
        ended: np.ndarray,
        record: np.ndarray,
        seeds: np.ndarray,
    ) -> None:
        """Commit the episodes of the rows that ``ended`` at row ``t`` (where ``record``).

        The vector recorder's fast path: the selection happens inside the numba call.
        """
        if self._has_images:
            rows = np.flatnonzero(ended & record)
            self.commit(buf, rows, buf.start[rows], np.full(rows.size, t), seeds[rows])
            return
        if self._failed is not None:
            raise self._failed
        if self._closed or self._fd is None:
            raise RuntimeError(f"{self.path}: the writer is closed")
        need = buf.data.nbytes + buf.n_envs * (self._template.data.size + 300) + 4 * H.PAGE_BYTES
        if self._out.size < need:
            self._out = np.zeros(_align8(need), dtype=np.uint8)
        if self._eps.shape[1] < buf.n_envs:
            self._eps = np.zeros((E.N_EP, buf.n_envs), dtype=np.int64)
            self._result = np.zeros((4, max(buf.n_envs, 4)), dtype=np.int64)
            self._no_ext = np.zeros((buf.n_envs, 3 * len(buf.fields) + 1), dtype=np.int64)
        tpl = self._template
        total = E.fill_ended(
            buf.data,
            buf.final,
            ended,
            record,
            buf.start,
            seeds,
            t,
            self._next_id,
            self._eps,
            self._no_ext,
            self._static,
            len(buf.fields),
            tpl.patch_pos.size,
            tpl.cks_len.size,
            buf.reward_word,
            buf.wall_word,
            tpl.data,
            tpl.group_rel,
            self._out,
            self._cursor,
            self._result,
        )
        if total:
            self._finish_commit(self._out, total, self._result)

    def _huffman_for(self, j: int, frame: np.ndarray) -> bool:
        """Whether image field ``j`` is written Huffman-only (decided once, on ``frame``)."""
        assert self.fields is not None
        path = self.fields[j].path
        choice = self.huffman.get(path)
        if choice is None:
            if self.compression_strategy == "auto":
                raw = np.ascontiguousarray(frame).tobytes()
                lz = len(E.deflate(raw, self.compression_level))
                choice = len(E.deflate(raw, self.compression_level, True)) <= 1.05 * lz
            else:
                choice = self.compression_strategy == "huffman"
            self.huffman[path] = choice
        return choice

    def _finish_commit(self, out: np.ndarray, total: int, result: np.ndarray) -> None:
        block_rel = int(result[2, 0])
        n = int(result[2, 2])
        self._write_commit(out[:total], self._cursor + block_rel, out[block_rel:total], n)
        self.n_episodes += n
        self._next_id += n
        self.n_steps += int(result[2, 3])
        lo, hi = result[3, :2].view(np.float64)
        self._note_wall(float(lo), float(hi))
        if self.progress is not None:
            self.progress(self.n_episodes, self.n_steps)
        if time.monotonic() - self._last_meta >= self.metadata_interval_s:
            self._write_metadata(state="open")

    def _note_wall(self, lo: float, hi: float) -> None:
        if not self._wall_span:
            self._wall_span = [lo, hi]
        else:
            self._wall_span = [min(self._wall_span[0], lo), max(self._wall_span[1], hi)]

    def _write_commit(self, data: np.ndarray, block_at: int, block: np.ndarray, n: int) -> None:
        fd = self._fd
        assert fd is not None
        try:
            self._pwrite_all(fd, data, self._cursor)
            end = self._cursor + data.size
            if end > self._eoa - H.PREALLOC_MARK_BYTES:
                self._grow(end)
            if self.fsync:
                os.fdatasync(fd)
            tail = E.continued_tail(self._tail_chunk, block_at, block.size)
            written = os.pwrite(fd, tail, self._tail_at + self._tail_chunk.size - H.TAIL_BYTES)
            if written != len(tail):
                raise OSError(errno.EIO, "short write of the commit record")
            if self.fsync:
                os.fdatasync(fd)
        except OSError as exc:
            self._failed = _write_error(
                exc, self.path, f"committing {n} episode(s)", self.n_episodes
            )
            raise self._failed from exc
        self._tail_chunk = block.copy()
        self._tail_at = block_at
        self._cursor = _align8(block_at + block.size)

    @staticmethod
    def _pwrite_all(fd: int, data: np.ndarray, offset: int) -> None:
        view = memoryview(data)
        done = 0
        while done < len(view):
            n = os.pwrite(fd, view[done:], offset + done)
            if n <= 0:
                raise OSError(errno.EIO, "pwrite wrote nothing")
            done += n

    def _grow(self, end: int) -> None:
        """Preallocate past ``end`` and move the superblock's end of file there.

        The preallocated space ends with a marker naming its end (:func:`_hdf5.prealloc_mark`):
        after a crash, a writer that finds it still last in the file, at the superblock's end
        of file, knows nobody else has allocated since and reuses the space after the last
        commit instead of skipping it.
        """
        step = min(max(1 << 20, self._eoa // 8), 16 << 20)
        eoa = (end + H.PREALLOC_MARK_BYTES + step + (1 << 20) - 1) // (1 << 20) * (1 << 20)
        assert self._fd is not None
        try:  # real blocks: writing into them later is cheaper than into sparse holes
            os.posix_fallocate(self._fd, self._cursor, eoa - self._cursor)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise
            os.ftruncate(self._fd, eoa)
        mark = H.prealloc_mark(eoa)
        if os.pwrite(self._fd, mark, eoa - len(mark)) != len(mark):
            raise OSError(errno.EIO, "short write of the preallocation mark")
        self._write_superblock(eoa, self._root_at)
        self._eoa = eoa

    def write_episode(
        self,
        *,
        observations: Any,
        actions: Any,
        rewards: Any,
        terminations: Any,
        truncations: Any,
        infos: Mapping[str, Any] | None = None,
        seed: int | None = None,
        env_index: int = 0,
    ) -> int:
        """Append one complete episode given as arrays (``L + 1`` observations, ``L`` steps).

        ``infos`` maps info keys (``reward/progress``, ``wall_time_s`` ...) to ``L + 1`` rows;
        missing keys are written as zeros. Returns the new episode's id.
        """
        if self.fields is None:
            raise RuntimeError(f"{self.path}: call begin() before write_episode()")
        rewards = np.asarray(rewards, dtype=np.float64)
        infos = dict(infos or {})
        values = [
            _source_value(f, observations, actions, rewards, terminations, truncations, infos)
            for f in self.fields
        ]
        return self.write_fields(values, seed=seed, env_index=env_index)

    def write_fields(
        self, values: Sequence[Any], *, seed: int | None = None, env_index: int = 0
    ) -> int:
        """Append one episode given one array (or None for zeros) per field of the schema."""
        if self.fields is None:
            raise RuntimeError(f"{self.path}: call begin() before writing episodes")
        if len(values) != len(self.fields):
            raise ValueError(f"expected {len(self.fields)} field arrays, got {len(values)}")
        j_rew = next(j for j, f in enumerate(self.fields) if f.source == SOURCE_REWARD)
        steps = int(np.shape(values[j_rew])[0])
        if steps < 1:
            raise ValueError("an episode needs at least one step")
        buf = E.StepBuffer(self.fields, 1, capacity=steps + 2)
        for j, f in enumerate(self.fields):
            view, final = buf.views[j], buf.final_views[j]
            if values[j] is None:
                continue
            arr = np.asarray(values[j])
            want = steps + 1 if f.obs_aligned else steps
            if arr.shape[:1] != (want,):
                raise ValueError(
                    f"{f.path}: expected {want} rows for an episode of {steps} steps, "
                    f"got shape {arr.shape}"
                )
            if f.text:
                arr = _encode_text(arr, f)
            if f.obs_aligned:
                view[0:steps, 0] = arr[:steps]
                final[0] = arr[steps]
            else:
                view[1 : steps + 1, 0] = arr
        buf.t = steps
        self.commit(
            buf,
            np.array([0]),
            np.array([0]),
            np.array([steps]),
            np.array([-1 if seed is None else int(seed)]),
            labels=np.array([env_index]),
        )
        return self._next_id - 1

    # metadata --------------------------------------------------------------------------------
    def metadata(self, state: str) -> dict[str, Any]:
        """The metadata.json content (Minari's keys plus a ``twinloop`` section)."""
        from twinloop import __version__

        existing = self._existing or {}
        size_mb = 0.0
        with contextlib.suppress(OSError):
            size_mb = round(os.stat(self.path).st_blocks * 512 / 1e6, 3)
        tl_prev = existing.get("twinloop", {})
        tags = {**tl_prev.get("tags", {}), **self.tags}
        return {
            **{k: v for k, v in existing.items() if k != "twinloop"},
            **self.extra_metadata,
            "dataset_id": self.dataset_id,
            "total_episodes": int(self.n_episodes),
            "total_steps": int(self.n_steps),
            "data_format": "hdf5",
            "jpeg_encoding": False,
            "observation_space": space_to_json(self.observation_space),
            "action_space": space_to_json(self.action_space),
            "minari_version": MINARI_FORMAT,
            "dataset_size": size_mb,
            "requirements": [f"twinloop=={__version__}"],
            "twinloop": {
                **tl_prev,
                "format_version": FORMAT_VERSION,
                "readers": READERS,
                "twinloop_version": __version__,
                "git_revision": tl_prev.get("git_revision") or git_revision(),
                "created_utc": self._created,
                "updated_utc": _now_utc(),
                **{k: v for k, v in self.env_info.items()},
                "tags": tags,
                "fields": [f.to_json() for f in self.fields or []],
                "image_compression": {
                    path: "huffman" if h else "deflate" for path, h in self.huffman.items()
                }
                or tl_prev.get("image_compression"),
                "wall_time_span_s": self._wall_span or None,
                "writer": {"state": state, "pid": os.getpid(), "host": socket.gethostname()},
            },
        }

    def _write_metadata(self, state: str) -> None:
        try:
            _atomic_write(self.metadata_path, json.dumps(self.metadata(state), indent=1))
        except OSError as exc:
            raise _write_error(
                exc, self.metadata_path, "writing metadata", self.n_episodes
            ) from exc
        self._last_meta = time.monotonic()

    # closing ---------------------------------------------------------------------------------
    def close(self) -> None:
        """Write the final metadata, trim the preallocated tail and release the lock."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._fd is not None:
                if self._failed is None:
                    with contextlib.suppress(OSError):
                        end = self._cursor
                        self._write_superblock(end, self._root_at)
                        os.ftruncate(self._fd, end)
                        if self.fsync:
                            os.fsync(self._fd)
                os.close(self._fd)
                self._fd = None
                try:
                    self._write_metadata(state="closed" if self._failed is None else "failed")
                except DatasetWriteError:
                    if self._failed is None:
                        raise
            elif not self.path.exists() and self.metadata_path.exists():
                self._write_metadata(state="closed")  # closed before its first episode
        finally:
            self._unlock()
            self._stop_watcher()

    def __enter__(self) -> DatasetWriter:
        """Return self."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Close."""
        self.close()

    def __del__(self) -> None:  # noqa: D105 (a writer dropped unclosed releases its lock)
        with contextlib.suppress(Exception):
            if not self._closed:
                self.close()


def _align8(n: int) -> int:
    return (n + 7) & ~7


def _signed(h: int) -> int:
    """A 64-bit hash as the int64 with the same bits."""
    return h - (1 << 64) if h >= 1 << 63 else h


def _get_key(value: Any, key: tuple) -> Any:
    for k in key:
        value = value[k]
    return value


def _source_value(
    f: FieldSpec,
    observations: Any,
    actions: Any,
    rewards: Any,
    terminations: Any,
    truncations: Any,
    infos: Mapping[str, Any],
) -> Any:
    if f.source == SOURCE_OBS:
        return _get_key(observations, f.key)
    if f.source == SOURCE_ACTION:
        return _get_key(actions, f.key)
    if f.source == SOURCE_REWARD:
        return rewards
    if f.source == SOURCE_TERMINATED:
        return terminations
    if f.source == SOURCE_TRUNCATED:
        return truncations
    if f.source in (SOURCE_INFO, SOURCE_WALL):
        return infos.get(f.key[0])
    raise ValueError(f"unknown field source {f.source!r}")


def _encode_text(values: Any, f: FieldSpec) -> np.ndarray:
    """UTF-8 encode strings into the field's fixed width; raise naming the limit if too long."""
    width = f.np_dtype.itemsize
    arr = np.asarray(values)
    if arr.dtype.kind == "S":
        return arr.astype(f.np_dtype)
    flat = arr.reshape(-1)
    out = np.zeros(flat.shape, dtype=f.np_dtype)
    for i, s in enumerate(flat):
        raw = str(s).encode("utf-8")
        if len(raw) > width:
            raise ValueError(
                f"{f.path}: text of {len(raw)} UTF-8 bytes exceeds the space's limit of {width}"
            )
        out[i] = raw
    return out.reshape(arr.shape)
