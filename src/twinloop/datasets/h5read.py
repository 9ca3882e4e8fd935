"""Datasets that other tools wrote (``minari.DataCollector`` ...), read through h5py.

The layout Minari 0.4 and 0.5 write with their HDF5 storage::

    data/metadata.json       spaces as JSON strings, data_format, jpeg_encoding (0.5; in 0.4
                             the same keys are attributes of main_data.hdf5's root group)
    data/main_data.hdf5      /episode_<id>/ attrs id, seed, total_steps, options/..., rewards_*
                               observations   L + 1 rows (Dict: a group per key; Tuple: a
                                              group of _index_<k>; Text: variable-length UTF-8;
                                              image leaves JPEG-encoded when jpeg_encoding)
                               actions        L rows, nested like observations
                               rewards, terminations, truncations    L rows
                               infos/...      L + 1 rows (row 0: the reset's info); nested
                                              dicts are groups; absent or empty without infos

:class:`H5Store` gives :class:`twinloop.datasets.Dataset` that layout through the same store
protocol as twinloop's own reader (see ``reader._Store``), so iterating, sampling and filtering
work alike. The index is checked when the dataset is opened (every field's row count, shape
and dtype; no data beyond rewards, terminations and truncations is read): an episode whose
fields disagree is named in :attr:`H5Store.problems` and never returned. Infos are flattened
to ``a/b`` keys; infos that are not numbers or booleans, or whose shape varies, are skipped
with a warning and listed in :attr:`H5Store.notes`.

Reading goes through two caches: fields small enough (in total) are concatenated over all
episodes once, so a sampled batch is one gather per field; other fields keep decoded episodes
in an LRU cache, and JPEG-encoded frames stay encoded there and are decoded per sampled row.

:func:`read_episode` and :func:`episode_attrs` read one episode group that Minari appended to
a file twinloop wrote.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import io
import json
import logging
import math
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from twinloop.datasets._scan import DATA_FILE, METADATA_FILE
from twinloop.datasets.errors import (
    DatasetCorruptError,
    DatasetFormatError,
    DatasetLockedError,
    DatasetNotFoundError,
)
from twinloop.datasets.schema import (
    SOURCE_ACTION,
    SOURCE_INFO,
    SOURCE_OBS,
    SOURCE_REWARD,
    SOURCE_TERMINATED,
    SOURCE_TRUNCATED,
    SOURCE_WALL,
    WALL_TIME_KEY,
    FieldSpec,
    space_fields,
    space_from_json,
)

log = logging.getLogger(__name__)

#: Memory for cached episode data (bytes): half for fields concatenated over all episodes,
#: half for an LRU cache of single episodes' fields.
DEFAULT_CACHE_BYTES = 512 * 2**20

_EPISODE_NAME = re.compile(r"episode_(\d+)\Z")
_FILLED = (SOURCE_INFO, SOURCE_WALL)  # fields read as zeros when an episode lacks them
_STEP_FLAGS = (SOURCE_REWARD, SOURCE_TERMINATED, SOURCE_TRUNCATED)


class _Misfit(Exception):
    """One field of one episode does not fit its spec."""

    def __init__(self, path: str, what: str) -> None:
        super().__init__(f"{path} {what}")
        self.path = path


# --- attributes -----------------------------------------------------------------------------
def _py(value: Any) -> Any:
    """An HDF5 attribute value as plain Python (str, int, float, bool, list, None)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray):
        if value.ndim == 0:
            return _py(value[()])
        return [_py(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return _py(value.item())
    if isinstance(value, list | tuple):
        return [_py(v) for v in value]
    if type(value).__name__ == "Empty":  # h5py.Empty: an attribute without a value
        return None
    return value


def episode_attrs(group: Any) -> dict[str, Any]:
    """The attributes of an HDF5 group as plain Python values.

    Args:
        group: An ``h5py.Group`` (an episode group, or a file's root group).

    Returns:
        Attribute name -> value; bytes become ``str``, numpy scalars Python numbers and
        arrays lists. Attributes h5py cannot read are skipped with a warning.
    """
    out: dict[str, Any] = {}
    for key in group.attrs:
        try:
            out[str(key)] = _py(group.attrs[key])
        except (OSError, TypeError, ValueError) as exc:
            log.warning(
                "%s: attribute %r of %s is unreadable: %s", group.file, key, group.name, exc
            )
    return out


# --- one field of one episode ---------------------------------------------------------------
@dataclasses.dataclass
class _Frames:
    """JPEG-encoded image rows of one episode field; rows are decoded when first asked for.

    Decoded rows are kept (``kept_bytes`` says how much they hold), so sampling the same
    frames again costs a copy, not a decode.
    """

    path: str
    shape: tuple[int, ...]
    buffers: list[np.ndarray]
    decoded: dict[int, np.ndarray] = dataclasses.field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in self.buffers) + 100 * len(self.buffers)

    def __len__(self) -> int:
        return len(self.buffers)

    def decode(self, r: int) -> np.ndarray:
        frame = self.decoded.get(r)
        if frame is not None:
            return frame
        image_module = _pil()
        try:
            with image_module.open(io.BytesIO(self.buffers[r].tobytes())) as im:
                frame = np.asarray(im, dtype=np.uint8)
        except (OSError, ValueError, SyntaxError) as exc:  # PIL's errors for damaged images
            raise _Misfit(self.path, f"row {r} is not a decodable JPEG frame ({exc})") from None
        if frame.shape != self.shape:
            if frame.size != math.prod(self.shape):
                raise _Misfit(
                    self.path,
                    f"row {r} decodes to an image of shape {frame.shape}, expected {self.shape}",
                )
            frame = frame.reshape(self.shape)
        frame.setflags(write=False)
        self.decoded[r] = frame
        return frame

    def decode_rows(self, rows: Sequence[int]) -> np.ndarray:
        out = np.empty((len(rows), *self.shape), dtype=np.uint8)
        for k, r in enumerate(rows):
            out[k] = self.decode(int(r))
        return out

    def decode_all(self) -> np.ndarray:
        return self.decode_rows(range(len(self.buffers)))

    @property
    def kept_bytes(self) -> int:
        return len(self.decoded) * math.prod(self.shape)


def _pil() -> Any:
    try:
        from PIL import Image
    except ImportError:
        raise ImportError(
            "this dataset stores JPEG-encoded frames (Minari's jpeg_encoding); decoding them "
            "needs Pillow: pip install pillow"
        ) from None
    return Image


class _Leaf:
    """A dataset opened through h5py's low-level API.

    Opening an ``h5py.Dataset`` also reads its creation properties and filters, which costs
    about three times the open itself; a field check needs only the shape and the type.
    """

    __slots__ = ("dtype", "id", "shape")

    def __init__(self, dsid: Any) -> None:
        self.id = dsid
        self.shape: tuple[int, ...] = dsid.shape
        self.dtype: np.dtype = dsid.dtype

    def __getitem__(self, sel: Any) -> Any:
        import h5py

        return h5py.Dataset(self.id)[sel]


def _node(group: Any, path: str) -> Any:
    """The dataset (a :class:`_Leaf`) or group at ``path`` under ``group``; None if absent."""
    import h5py
    from h5py import h5d, h5g, h5o

    try:
        oid = h5o.open(group.id, path.encode("utf-8"))  # the common case, in one lookup
    except (KeyError, OSError, ValueError, TypeError):
        oid = None  # absent or unreadable: walk the path below to say which
    if isinstance(oid, h5d.DatasetID):
        return _Leaf(oid)
    if isinstance(oid, h5g.GroupID):
        return h5py.Group(oid)
    node = group
    parts = path.split("/")
    for k, part in enumerate(parts):
        if not isinstance(node, h5py.Group):
            where = "/".join(parts[:k])
            raise _Misfit(path, f"cannot be found: {where} is a dataset, not a group")
        try:
            node = node.get(part)
        except (KeyError, OSError, ValueError) as exc:
            raise _Misfit(path, f"cannot be opened ({exc})") from None
        if node is None:
            return None
    return _Leaf(node.id) if isinstance(node, h5py.Dataset) else node


def _is_image_leaf(f: FieldSpec) -> bool:
    return f.source in (SOURCE_OBS, SOURCE_ACTION) and f.dtype == "|u1" and len(f.shape) in (2, 3)


def _check(node: Any, f: FieldSpec, steps: int, jpeg: bool) -> str:
    """How ``f`` is stored in ``node`` (``raw``, ``text`` or ``jpeg``); raise if it does not fit."""
    import h5py

    if node is None:
        raise _Misfit(f.path, "is missing")
    if isinstance(node, h5py.Dataset):
        node = _Leaf(node.id)
    if not isinstance(node, _Leaf):
        kind = "a group" if isinstance(node, h5py.Group) else f"a {type(node).__name__}"
        raise _Misfit(f.path, f"is {kind}, expected a dataset")
    want = steps + int(f.obs_aligned)
    shape, dt = node.shape, node.dtype
    if not shape:
        raise _Misfit(f.path, "is a single value, expected one row per step")
    if shape[0] != want:
        rule = "L + 1" if f.obs_aligned else "L"
        raise _Misfit(
            f.path,
            f"has {shape[0]} rows, expected {want} ({rule} for an episode of L = {steps} steps)",
        )
    if f.text:
        if h5py.check_string_dtype(dt) is None or len(shape) != 1:
            raise _Misfit(f.path, f"holds {dt} values of shape {shape[1:]}, expected text")
        return "text"
    if _is_image_leaf(f):
        vlen = h5py.check_vlen_dtype(dt)
        encoded = (vlen is not None and np.dtype(vlen) == np.uint8 and len(shape) == 1) or (
            dt == np.uint8 and len(shape) == 2
        )
        if encoded:
            if not jpeg:
                raise _Misfit(
                    f.path,
                    "holds encoded image bytes but the dataset's metadata says "
                    "jpeg_encoding is false",
                )
            return "jpeg"
    if dt.kind not in "biuf":
        raise _Misfit(f.path, f"holds {dt} values, expected numbers ({f.dtype})")
    if tuple(shape[1:]) != tuple(f.shape):
        raise _Misfit(f.path, f"has rows of shape {tuple(shape[1:])}, expected {f.shape}")
    flags = f.np_dtype.kind == "b" and dt.kind in "iu"  # 0/1 flags stored as integers
    if dt != f.np_dtype and not flags and not np.can_cast(dt, f.np_dtype, "same_kind"):
        raise _Misfit(f.path, f"holds {dt} values, which do not convert to {f.dtype}")
    return "raw"


def _read(node: Any, f: FieldSpec, mode: str, rows: np.ndarray | None = None) -> Any:
    """Read a checked field (all rows, or the sorted unique ``rows``) in the field's dtype."""
    sel: Any = () if rows is None else rows
    try:
        if mode == "raw" and rows is None and node.dtype == f.np_dtype:
            # whole rows of the stored type: HDF5's own read, without h5py's selection layer
            # (3x faster on the short datasets of an episode)
            from h5py import h5s

            out = np.empty(node.shape, dtype=f.np_dtype)
            if out.size:
                node.id.read(h5s.ALL, h5s.ALL, out)
            return out
        raw = node[sel]
    except (OSError, ValueError, TypeError) as exc:
        raise _Misfit(f.path, f"cannot be read ({exc})") from None
    if mode == "jpeg":
        return _Frames(f.path, tuple(f.shape), [np.asarray(b, dtype=np.uint8) for b in raw])
    if mode == "text":
        items = [v if isinstance(v, bytes) else str(v).encode("utf-8") for v in raw.tolist()]
        width = f.np_dtype.itemsize
        longest = max((len(b) for b in items), default=0)
        if longest > width:
            raise _Misfit(f.path, f"holds a {longest}-byte string; the Text space allows {width}")
        return np.array(items, dtype=f.np_dtype)
    return np.asarray(raw, dtype=f.np_dtype)


def _episode_steps(group: Any, attrs: dict[str, Any]) -> int:
    """Steps of an episode: the rows of ``rewards``, checked against ``total_steps``."""
    node = _node(group, "rewards")
    if node is None:
        raise _Misfit("rewards", "is missing")
    if not isinstance(node, _Leaf):
        raise _Misfit("rewards", "is a group, expected a dataset")
    if len(node.shape) != 1:
        raise _Misfit("rewards", f"has shape {node.shape}, expected one value per step")
    steps = int(node.shape[0])
    declared = attrs.get("total_steps")
    if declared is not None and int(declared) != steps:
        raise _Misfit("rewards", f"has {steps} rows but the total_steps attribute says {declared}")
    if steps < 1:
        raise _Misfit("rewards", "has no rows: the episode has no steps")
    return steps


def _zeros(f: FieldSpec, steps: int) -> np.ndarray:
    return np.zeros((steps + int(f.obs_aligned), *f.shape), dtype=f.np_dtype)


def read_episode(
    group: Any, fields: Sequence[FieldSpec], *, jpeg: bool, file_label: str
) -> list[np.ndarray]:
    """Read one episode group that Minari (or another h5py writer) wrote.

    Args:
        group: The ``h5py.Group`` of the episode.
        fields: The fields to read, in the order to return them.
        jpeg: The dataset stores image leaves JPEG-encoded (Minari's ``jpeg_encoding``); raw
            image rows are read either way.
        file_label: How to name the file in error messages.

    Returns:
        One array per field in the field's dtype and row shape: ``L + 1`` rows for
        observation-aligned fields, ``L`` for the others. Info (and wall clock) fields the
        episode lacks are zeros; text leaves are fixed-width UTF-8 bytes.

    Raises:
        DatasetCorruptError: A field is missing, has the wrong number of rows, a shape or
            dtype that does not convert, or undecodable frames; the message names the file,
            the episode and the field.
    """
    name = str(group.name).lstrip("/")
    try:
        steps = _episode_steps(group, episode_attrs(group))
        out = []
        for f in fields:
            node = _node(group, f.path)
            if node is None and f.source in _FILLED:
                out.append(_zeros(f, steps))
                continue
            value = _read(node, f, _check(node, f, steps, jpeg))
            out.append(value.decode_all() if isinstance(value, _Frames) else value)
        return out
    except _Misfit as exc:
        raise DatasetCorruptError(
            f"{file_label}: {name}: {exc}; the episode cannot be read"
        ) from None


# --- metadata -------------------------------------------------------------------------------
def root_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The dataset description Minari 0.4 keeps in the root attributes of its data file.

    Returns:
        The decoded root attributes when they name an ``observation_space`` (a Minari 0.4
        dataset), else an empty dict (also when the file is missing or not HDF5).
    """
    import h5py

    try:
        with h5py.File(path, "r") as h5:
            if "observation_space" not in h5.attrs:
                return {}
            return episode_attrs(h5)
    except OSError:
        return {}


def _load_meta(data_dir: Path, data_file: Path) -> dict[str, Any]:
    meta_path = data_dir / METADATA_FILE
    if meta_path.exists():
        try:
            meta = json.loads(meta_path.read_text())
        except ValueError as exc:
            raise DatasetCorruptError(f"{meta_path}: not valid JSON ({exc})") from exc
        if not isinstance(meta, dict):
            raise DatasetCorruptError(f"{meta_path}: expected a JSON object, got {type(meta)}")
        return meta
    if not data_file.exists():
        raise DatasetNotFoundError(f"{data_dir}: neither {METADATA_FILE} nor {DATA_FILE} exists")
    meta = root_metadata(data_file)
    if not meta:
        raise DatasetNotFoundError(
            f"{meta_path} is missing and the root attributes of {data_file} do not describe a "
            "dataset (no observation_space): not a Minari dataset"
        )
    if meta.get("flatten_observation") or meta.get("flatten_action"):
        raise DatasetFormatError(
            f"{data_file}: written by Minari < 0.4 with flattened observations/actions, which "
            "twinloop does not read; load it with that Minari version and save it again with "
            "Minari >= 0.4"
        )
    return meta


def _space(meta: dict[str, Any], key: str, where: Path) -> Any:
    text = meta.get(key)
    if text is None:
        raise DatasetFormatError(
            f"{where}: no {key} in the dataset's metadata (Minari rebuilds it by making the env "
            "from env_spec; twinloop reads spaces only from metadata); add it with "
            "minari.serialization.serialize_space"
        )
    try:
        return space_from_json(text if isinstance(text, str) else json.dumps(text))
    except (KeyError, TypeError, ValueError) as exc:
        raise DatasetFormatError(
            f"{where}: {key} {str(text)[:120]!r} is unreadable ({exc})"
        ) from exc


# --- the store ----------------------------------------------------------------------------
@dataclasses.dataclass
class _Scan:
    """What opening learnt about one episode group."""

    name: str
    number: int
    attrs: dict[str, Any] = dataclasses.field(default_factory=dict)
    steps: int = 0
    problem: str | None = None
    encoded: list[int] = dataclasses.field(default_factory=list)
    #: info key -> (dtype, rows (-1: a single value), row shape)
    infos: dict[str, tuple[np.dtype, int, tuple[int, ...]]] = dataclasses.field(
        default_factory=dict
    )
    summary: dict[str, Any] = dataclasses.field(default_factory=dict)
    arrays: dict[int, np.ndarray] = dataclasses.field(default_factory=dict)


class _LRU:
    """Least recently used values up to a total size in bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._items: collections.OrderedDict[Any, tuple[Any, int]] = collections.OrderedDict()

    def get(self, key: Any) -> Any:
        item = self._items.get(key)
        if item is None:
            return None
        self._items.move_to_end(key)
        return item[0]

    def put(self, key: Any, value: Any, size: int) -> None:
        if size > self.max_bytes or key in self._items:
            return
        self._items[key] = (value, size)
        self.nbytes += size
        while self.nbytes > self.max_bytes:
            _, (_, s) = self._items.popitem(last=False)
            self.nbytes -= s

    def grow(self, key: Any, size: int) -> None:
        """Count ``size`` more bytes for ``key`` (a value that filled a cache of its own)."""
        item = self._items.get(key)
        if item is None or size <= 0:
            return
        self._items[key] = (item[0], item[1] + size)
        self.nbytes += size
        while self.nbytes > self.max_bytes and self._items:
            _, (_, s) = self._items.popitem(last=False)
            self.nbytes -= s

    def clear(self) -> None:
        self._items.clear()
        self.nbytes = 0


def _info_leaves(group: Any) -> tuple[dict[str, Any], list[str]]:
    """Every dataset under the episode's ``infos`` group by flattened key, and oddities."""
    import h5py
    from h5py import h5d, h5g, h5o

    out: dict[str, Any] = {}
    odd: list[str] = []
    infos = _node(group, "infos")
    if infos is None:
        return out, odd
    if not isinstance(infos, h5py.Group):
        return out, ["infos is a dataset, not a group of info keys"]

    def walk(g: Any, prefix: str) -> None:
        for key in g:
            try:
                oid = h5o.open(g.id, key.encode("utf-8"))
            except (KeyError, OSError, ValueError):
                odd.append(f"infos/{prefix}{key} is a broken link")
                continue
            if isinstance(oid, h5g.GroupID):
                walk(h5py.Group(oid), f"{prefix}{key}/")
            elif isinstance(oid, h5d.DatasetID):
                out[f"{prefix}{key}"] = _Leaf(oid)
            else:
                odd.append(f"infos/{prefix}{key} is neither a dataset nor a group")

    walk(infos, "")
    return out, odd


class H5Store:
    """The store protocol of :class:`twinloop.datasets.Dataset` over h5py.

    Reads a dataset that Minari 0.4/0.5 (HDF5 storage) or another h5py writer produced in
    Minari's layout (see the module docstring). The data file is opened for each read that
    misses the caches and closed again, so Minari can append to it while it is being read
    (:meth:`refresh` then indexes the new episodes).

    Besides the protocol (``path``, ``data_dir``, ``meta``, ``fields``, ``observation_space``,
    ``action_space``, ``ids``, ``steps``, ``meta_rows``, ``generation``, ``problems``,
    ``rows()``, ``field()``, ``refresh()``, ``close()``) it has ``notes`` (what is read
    differently from how it is stored) and ``jpeg`` (image leaves may be JPEG-encoded).
    ``meta_rows`` hold every episode attribute plus ``terminated``/``truncated`` (of the last
    step) and ``episode_return``; an episode without a ``seed`` attribute has seed -1.

    Args:
        data_dir: The dataset's ``data`` folder.
        cache_bytes: Memory for cached episode data.

    Raises:
        DatasetFormatError: The dataset uses another storage (Minari's ``arrow``/``parquet``)
            or its metadata has no readable spaces.
        DatasetNotFoundError: The data file is missing.
        DatasetLockedError: Another process has the file open for writing.
        DatasetCorruptError: The metadata or the data file cannot be parsed.
    """

    def __init__(self, data_dir: Path, *, cache_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        """Open the file and index (and check) its episodes."""
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / DATA_FILE
        self.meta = _load_meta(self.data_dir, self.path)
        fmt = str(self.meta.get("data_format", "hdf5"))
        if fmt != "hdf5":
            raise DatasetFormatError(
                f"{self.data_dir}: this Minari dataset is stored in the {fmt!r} format; twinloop "
                "reads Minari's 'hdf5' storage only. Load it with minari.load_dataset, or save "
                "its episodes again with data_format='hdf5' (e.g. minari.DataCollector("
                "..., data_format='hdf5'))"
            )
        if not self.path.exists():
            raise DatasetNotFoundError(f"{self.path} is missing (its metadata.json is there)")
        where = self.data_dir / METADATA_FILE
        self.observation_space = _space(self.meta, "observation_space", where)
        self.action_space = _space(self.meta, "action_space", where)
        # Minari 0.5 encodes image leaves unless told not to (its default when the key is
        # absent); Minari 0.4 never did. Raw image rows are accepted either way.
        self.jpeg = bool(self.meta.get("jpeg_encoding", "data_format" in self.meta))
        self._base_fields = [
            *space_fields(self.observation_space, "observations", SOURCE_OBS, obs_aligned=True),
            *space_fields(self.action_space, "actions", SOURCE_ACTION, obs_aligned=False),
            FieldSpec(path="rewards", source=SOURCE_REWARD, dtype="<f8"),
            FieldSpec(path="terminations", source=SOURCE_TERMINATED, dtype="|b1"),
            FieldSpec(path="truncations", source=SOURCE_TRUNCATED, dtype="|b1"),
        ]
        self.problems: list[str] = []
        #: Things read differently from how they are stored (skipped infos, zero-filled keys).
        self.notes: list[str] = []
        self._lru = _LRU(cache_bytes // 2)
        self._flat_budget = cache_bytes // 2
        self._flats: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._no_flat: set[int] = set()
        self._names: list[str] = []
        self._seen: set[str] = set()
        self._id_set: set[int] = set()
        self.ids = np.zeros(0, dtype=np.int64)
        self.steps = np.zeros(0, dtype=np.int64)
        self.meta_rows: list[dict[str, Any]] = []
        self.generation = -1
        self.bad = np.zeros(0, dtype=np.bool_)  # damaged episodes found while reading
        self.damage: dict[int, str] = {}
        self._file: Any = None
        self._last: tuple[int, list[Any]] | None = None
        self._inode = os.stat(self.path).st_ino
        with self._h5():
            scans = self._scan_new()
        self.fields = self._base_fields + self._info_fields(scans)
        self._encoded = np.zeros(len(self.fields), dtype=bool)
        self._rebuild(self._accept(scans))

    # opening ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _h5(self) -> Iterator[Any]:
        """The open data file, for one call: the file is never held open between calls.

        Holding it would keep HDF5's file lock, so Minari (in this process or another) could
        not append episodes while a reader is open.
        """
        if self._file is not None:
            yield self._file
            return
        import h5py

        try:
            self._file = h5py.File(self.path, "r")
        except OSError as exc:
            if "lock" in str(exc).lower():
                raise DatasetLockedError(
                    f"{self.path} is open for writing in another process (HDF5 file lock: "
                    f"{exc}); read it when the writer is done, or set HDF5_USE_FILE_LOCKING=FALSE "
                    "to read it while it is written"
                ) from exc
            raise DatasetCorruptError(
                f"{self.path}: not a readable HDF5 file ({exc}); if a copy was interrupted, copy "
                "it again"
            ) from exc
        try:
            yield self._file
        finally:
            self._file.close()
            self._file = None

    def _episode_names(self) -> list[tuple[int, str]]:
        found = []
        for name in self._file:
            m = _EPISODE_NAME.match(name)
            if m is None:
                if name not in self._seen:
                    self._seen.add(name)
                    self._note(f"{self.path}: /{name} is not an episode group (ignored)")
                continue
            found.append((int(m.group(1)), name))
        return sorted(found)

    def _scan_new(self) -> list[_Scan]:
        scans = []
        for number, name in self._episode_names():
            if name not in self._seen:
                self._seen.add(name)
                scans.append(self._scan(number, name))
        return scans

    def _scan(self, number: int, name: str) -> _Scan:
        import h5py

        scan = _Scan(name=name, number=number)
        try:
            group = self._file[name]
            if not isinstance(group, h5py.Group):
                raise _Misfit(name, "is a dataset, expected an episode group")
            scan.attrs = episode_attrs(group)
            scan.steps = steps = _episode_steps(group, scan.attrs)
            for j, f in enumerate(self._base_fields):
                node = _node(group, f.path)
                mode = _check(node, f, steps, self.jpeg)
                if mode == "jpeg":
                    scan.encoded.append(j)
                if f.source in _STEP_FLAGS:
                    # read now for the episode metadata; they seed the sampling cache too
                    scan.arrays[j] = _read(node, f, mode)
            by_source = {self._base_fields[j].source: a for j, a in scan.arrays.items()}
            scan.summary = {
                "episode_return": float(by_source[SOURCE_REWARD].sum()),
                "terminated": bool(by_source[SOURCE_TERMINATED][-1]),
                "truncated": bool(by_source[SOURCE_TRUNCATED][-1]),
            }
            leaves, odd = _info_leaves(group)
            for what in odd:
                self._note(f"{self.path}: {name}: {what} (not read)")
            for key, node in leaves.items():
                rows = int(node.shape[0]) if node.shape else -1  # -1: a single value
                scan.infos[key] = (node.dtype, rows, tuple(int(s) for s in node.shape[1:]))
        except (_Misfit, OSError, KeyError, ValueError) as exc:
            scan.problem = f"{self.path}: {name}: {exc} (episode skipped)"
        return scan

    def _note(self, text: str) -> None:
        self.notes.append(text)
        log.warning("%s", text)

    def _info_fields(self, scans: list[_Scan]) -> list[FieldSpec]:
        """Fields for the info keys of the readable episodes (fixed once the store is open)."""
        import h5py

        good = [s for s in scans if s.problem is None]
        keys = sorted({k for s in good for k in s.infos})
        wall: list[FieldSpec] = []
        out: list[FieldSpec] = []
        for key in keys:
            where = f"{self.path}: infos/{key}"
            if any(k.startswith(key + "/") for k in keys):
                self._note(
                    f"{where} is a dataset in some episodes and a group in others (not read)"
                )
                continue
            seen = [(s, *s.infos[key]) for s in good if key in s.infos]
            kinds = {dt for _, dt, _, _ in seen}
            bad = [dt for dt in kinds if dt.kind not in "biuf" or h5py.check_vlen_dtype(dt)]
            if bad:
                self._note(
                    f"{where} holds {bad[0]} values (not read: only numbers and booleans are)"
                )
                continue
            if any(rows < 0 for _, _, rows, _ in seen):
                self._note(f"{where} is a single value, not one row per step (not read)")
                continue
            fitting = [(s, shape) for s, _, rows, shape in seen if rows == s.steps + 1]
            if not fitting:
                s, _, rows, _ = seen[0]
                self._note(
                    f"{where} has {rows} rows in {s.name}, an episode of {s.steps} steps (L + 1 "
                    "rows expected; not read)"
                )
                continue
            shapes = {shape for _, shape in fitting}
            if len(shapes) > 1:
                self._note(f"{where} has rows of different shapes {sorted(shapes)} (not read)")
                continue
            if len(seen) < len(good):
                missing = next(s.name for s in good if key not in s.infos)
                self._note(
                    f"{where} is missing in {len(good) - len(seen)} of {len(good)} episodes "
                    f"(first: {missing}); read as zeros there"
                )
            dtype = np.result_type(*kinds)
            dtype = np.dtype(np.bool_) if dtype.kind == "b" else dtype.newbyteorder("<")
            spec = FieldSpec(
                path=f"infos/{key}",
                source=SOURCE_WALL if key == WALL_TIME_KEY else SOURCE_INFO,
                key=(key,),
                dtype=dtype.str,
                shape=shapes.pop(),
                obs_aligned=True,
            )
            (wall if spec.source == SOURCE_WALL else out).append(spec)
        return wall + out

    def _accept(self, scans: list[_Scan]) -> list[tuple[int, _Scan]]:
        """Add the episodes whose infos fit the info fields; return them with their positions."""
        n_base = len(self._base_fields)
        info_keys = {f.key[0]: j for j, f in enumerate(self.fields) if j >= n_base}
        added = []
        for scan in scans:
            problem = scan.problem
            if problem is None:
                problem = self._info_problem(scan, info_keys)
            if problem is None:
                number = int(scan.attrs.get("id", scan.number))
                if number in self._id_set:
                    problem = f"{self.path}: {scan.name}: its id {number} is used twice (skipped)"
            if problem is not None:
                self.problems.append(problem)
                log.debug("%s", problem)
                continue
            self._id_set.add(number)
            row = dict(scan.attrs)
            row["id"] = number
            seed = row.get("seed")
            row["seed"] = int(seed) if isinstance(seed, int | float) else -1
            row["total_steps"] = scan.steps
            row.setdefault("episode_return", scan.summary["episode_return"])
            row["terminated"] = scan.summary["terminated"]
            row["truncated"] = scan.summary["truncated"]
            self._names.append(scan.name)
            self.meta_rows.append(row)
            self._encoded[scan.encoded] = True
            added.append((len(self._names) - 1, scan))
        return added

    def _info_problem(self, scan: _Scan, info_keys: dict[str, int]) -> str | None:
        for key, j in info_keys.items():
            if key not in scan.infos:
                continue
            f = self.fields[j]
            dt, rows, shape = scan.infos[key]
            what = None
            if dt.kind not in "biuf" or not np.can_cast(dt, f.np_dtype, "same_kind"):
                what = f"holds {dt} values, which do not convert to {f.dtype}"
            elif rows < 0:
                what = "is a single value, expected one row per step"
            elif rows != scan.steps + 1:
                what = (
                    f"has {rows} rows, expected {scan.steps + 1} (L + 1 for an episode of "
                    f"L = {scan.steps} steps)"
                )
            elif shape != f.shape:
                what = f"has rows of shape {shape}, expected {f.shape}"
            if what is not None:
                return f"{self.path}: {scan.name}: {f.path} {what} (episode skipped)"
        return None

    def _rebuild(self, added: list[tuple[int, _Scan]]) -> None:
        """Re-index after episodes were added (positions of earlier episodes do not move)."""
        self.generation += 1  # bumped on every re-index (sampling caches key on it)
        self.ids = np.array([r["id"] for r in self.meta_rows], dtype=np.int64)
        self.bad = np.concatenate([self.bad, np.zeros(self.ids.size - self.bad.size, np.bool_)])
        self.steps = np.array([r["total_steps"] for r in self.meta_rows], dtype=np.int64)
        self._flats.clear()
        self._no_flat.clear()
        self._flat_left = self._flat_budget
        self._last = None
        for e, scan in added:
            for j, value in scan.arrays.items():
                value.setflags(write=False)
                self._lru.put((e, j), value, value.nbytes)
            scan.arrays = {}

    # integrity -------------------------------------------------------------------------------
    def ensure_intact(self, eps: np.ndarray) -> bool:
        """Nothing to check beyond the shapes checked at open (no checksums): False."""
        return False

    def check_episode(self, e: int, deep: bool = False) -> str | None:
        """What is wrong with episode ``e`` (None if nothing); ``deep`` reads every field."""
        if not deep:
            return None
        try:
            for j in range(len(self.fields)):
                self.field(j, e)
        except DatasetCorruptError as exc:
            return str(exc)
        return None

    def mark_bad(self, e: int, message: str) -> None:
        """Record episode ``e`` as damaged (found while reading it); views drop it."""
        if not self.bad[e]:
            self.bad[e] = True
            self.damage[e] = message
            self.problems.append(message)
            self.generation += 1

    # following -------------------------------------------------------------------------------
    def refresh(self) -> int:
        """Index episodes added to the file since opening (or the last refresh).

        Info fields stay those found when the store was opened: info keys that only new
        episodes have are not read; keys they lack are zeros.

        Returns:
            Number of episodes added to the index.

        Raises:
            DatasetNotFoundError: The data file was deleted.
            DatasetCorruptError: The data file was replaced by another file.
        """
        try:
            inode = os.stat(self.path).st_ino
        except FileNotFoundError:
            raise DatasetNotFoundError(f"{self.path} was deleted while being read") from None
        if inode != self._inode:
            raise DatasetCorruptError(
                f"{self.path} was replaced while being read (overwritten); open it again"
            )
        try:
            with self._h5():
                added = self._accept(self._scan_new())
        except DatasetLockedError as exc:  # a writer is appending right now: look again later
            log.debug("%s", exc)
            return 0
        if added:
            self._rebuild(added)
        meta_path = self.data_dir / METADATA_FILE
        if meta_path.exists():
            # a copy being rewritten fails to parse: keep the last good one
            with contextlib.suppress(ValueError):
                self.meta = json.loads(meta_path.read_text())
        return len(added)

    def close(self) -> None:
        """Release the file and the caches."""
        self._lru.clear()
        self._flats.clear()
        self._last = None

    # reading ---------------------------------------------------------------------------------
    def _fail(self, e: int, exc: Exception) -> DatasetCorruptError:
        return DatasetCorruptError(f"{self.path}: {self._names[e]}: {exc}")

    def _load(self, j: int, e: int, rows: np.ndarray | None = None) -> Any:
        """Field ``j`` of episode ``e`` from the file: an array, or encoded frames."""
        f = self.fields[j]
        steps = int(self.steps[e])
        try:
            with self._h5() as h5:
                node = _node(h5[self._names[e]], f.path)
                if node is None and f.source in _FILLED:
                    value = _zeros(f, steps)
                    return value if rows is None else value[rows]
                return _read(node, f, _check(node, f, steps, self.jpeg), rows)
        except (_Misfit, OSError, KeyError) as exc:
            raise self._fail(e, exc) from None

    def _cached(self, j: int, e: int) -> Any:
        """Field ``j`` of episode ``e`` through the LRU cache (arrays are read-only)."""
        value = self._lru.get((e, j))
        if value is None:
            value = self._load(j, e)
            if isinstance(value, np.ndarray):
                value.setflags(write=False)
            self._lru.put((e, j), value, value.nbytes)
        return value

    def _flat(self, j: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Field ``j`` of every episode concatenated, and each episode's first row."""
        flat = self._flats.get(j)
        if flat is not None or j in self._no_flat:
            return flat
        f = self.fields[j]
        counts = self.steps + int(f.obs_aligned)
        nbytes = int(counts.sum()) * f.row_bytes
        if self._encoded[j] or nbytes > self._flat_left:
            self._no_flat.add(j)
            return None
        data = np.empty((int(counts.sum()), *f.shape), dtype=f.np_dtype)
        starts = np.zeros(counts.size, dtype=np.int64)
        np.cumsum(counts[:-1], out=starts[1:])
        with self._h5():
            for e in range(counts.size):
                cached = self._lru.get((e, j))
                data[starts[e] : starts[e] + counts[e]] = (
                    cached if cached is not None else self._load(j, e)
                )
        data.setflags(write=False)
        self._flat_left -= nbytes
        self._flats[j] = (data, starts)
        return data, starts

    def rows(self, j: int, eps: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Rows ``rows[k]`` of field ``j`` in episodes ``eps[k]`` (indices into the index)."""
        f = self.fields[j]
        eps = np.asarray(eps, dtype=np.int64).reshape(-1)
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        flat = self._flat(j)
        if flat is not None:
            data, starts = flat
            return data[starts[eps] + rows]
        out = np.empty((eps.size, *f.shape), dtype=f.np_dtype)
        order = np.argsort(eps, kind="stable")
        groups = np.split(order, np.flatnonzero(np.diff(eps[order])) + 1)
        whole_limit = self._lru.max_bytes // 16
        with contextlib.ExitStack() as stack:
            for idx in groups:
                if idx.size == 0:
                    continue
                e, r = int(eps[idx[0]]), rows[idx]
                value = self._lru.get((e, j))
                if value is None:
                    stack.enter_context(self._h5())  # opened once per call, on the first miss
                    size = (int(self.steps[e]) + int(f.obs_aligned)) * f.row_bytes
                    if self._encoded[j] or size <= whole_limit:
                        value = self._cached(j, e)
                    else:  # a large episode field: read just the rows asked for
                        wanted, inverse = np.unique(r, return_inverse=True)
                        out[idx] = self._load(j, e, wanted)[inverse]
                        continue
                if isinstance(value, _Frames):
                    out[idx] = self._decode(value, e, j, r.tolist())
                else:
                    out[idx] = value[r]
        return out

    def field(self, j: int, e: int) -> np.ndarray:
        """All rows of field ``j`` of episode ``e`` (a new array).

        The first call for an episode reads all its fields (one opening of the file), as
        :class:`twinloop.datasets.Dataset` asks for every field of an episode in turn.
        """
        flat = self._flats.get(j)
        if flat is not None:
            data, starts = flat
            n = int(self.steps[e]) + int(self.fields[j].obs_aligned)
            return data[starts[e] : starts[e] + n].copy()
        if self._last is None or self._last[0] != e:
            self._last = None
            with self._h5():
                values = [
                    None if k in self._flats else self._cached(k, e)
                    for k in range(len(self.fields))
                ]
            self._last = (e, values)
        value = self._last[1][j]
        if isinstance(value, _Frames):
            return self._decode(value, e, j, range(len(value)))
        return np.array(value)

    def _decode(self, frames: _Frames, e: int, j: int, rows: Sequence[int]) -> np.ndarray:
        before = frames.kept_bytes
        try:
            out = frames.decode_rows(rows)
        except _Misfit as exc:
            raise self._fail(e, exc) from None
        self._lru.grow((e, j), frames.kept_bytes - before)
        return out
