"""The committed state of a data file: its episodes, found whatever other writers did to it.

twinloop's writer links each committed episode from the root group by appending a checksummed
block of link messages (see :mod:`twinloop.datasets._hdf5`). Other HDF5 writers may change
that structure: libhdf5 moves the root's links into dense storage when it adds one more
link than the group info allows, adds its own continuation chunks, or frees and condenses
ours. The scan here therefore reads the root group in every form HDF5 allows
(:mod:`twinloop.datasets._hdf5_read`) and only then, when the root is still in twinloop's
append form, remembers its last block so that a follower (or an appending writer) can pick
up where it stopped.

Both the reader and the writer use this module; it imports neither.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from twinloop.datasets import _episode as E
from twinloop.datasets import _hdf5 as H
from twinloop.datasets import _hdf5_read as R
from twinloop.datasets.errors import DatasetCorruptError, DatasetNotFoundError
from twinloop.datasets.schema import FieldSpec

METADATA_FILE = "metadata.json"
DATA_FILE = "main_data.hdf5"
LOCK_FILE = ".twinloop.lock"
EPISODE_RE = re.compile(r"episode_(\d+)")

_PARSE_ERRORS = (H.FormatError, ValueError, IndexError, KeyError, OverflowError)


# --- paths ------------------------------------------------------------------------------------
def find_data_dir(path: str | os.PathLike) -> Path:
    """The ``data`` folder of a dataset given it, its dataset folder or its data file."""
    p = Path(path)
    if p.is_file() and p.name in (DATA_FILE, METADATA_FILE):
        p = p.parent
    if (p / METADATA_FILE).exists() or (p / DATA_FILE).exists():
        return p
    if (p / "data" / METADATA_FILE).exists() or (p / "data" / DATA_FILE).exists():
        return p / "data"
    raise DatasetNotFoundError(
        f"no dataset at {p}: expected {p / 'data' / METADATA_FILE} (a dataset folder) "
        f"or {p / METADATA_FILE} (its data folder)"
    )


def writer_alive(data_dir: str | os.PathLike) -> bool:
    """Whether a live process holds the dataset's write lock."""
    try:
        fd = os.open(Path(data_dir) / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def load_metadata(data_dir: Path) -> tuple[dict[str, Any], list[FieldSpec] | None]:
    """``(metadata.json, twinloop's field list or None)``; ``({}, None)`` if it is missing."""
    meta_path = data_dir / METADATA_FILE
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        return {}, None
    except ValueError as exc:
        raise DatasetCorruptError(f"{meta_path}: not valid JSON ({exc})") from exc
    tl = meta.get("twinloop") or {}
    if not tl.get("fields"):
        return meta, None
    return meta, [FieldSpec.from_json(f) for f in tl["fields"]]


# --- the file ---------------------------------------------------------------------------------
class DataFile:
    """Positional reads of a file, clipped to its size when opened (or at the last refresh)."""

    def __init__(self, path: Path) -> None:
        """Open ``path`` read-only."""
        self.path = path
        self.fd = os.open(path, os.O_RDONLY)
        self.size = os.fstat(self.fd).st_size

    def refresh(self) -> None:
        """Look at the file's size again (a writer may have grown or trimmed it)."""
        self.size = os.fstat(self.fd).st_size

    def read(self, address: int, n: int) -> bytes:
        """Up to ``n`` bytes at ``address``."""
        return os.pread(self.fd, n, address)

    def close(self) -> None:
        """Close the descriptor."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


# --- episodes ---------------------------------------------------------------------------------
@dataclasses.dataclass
class EpisodeEntry:
    """What the index knows about one episode (from its group header).

    Attributes:
        name: Link name (``episode_<id>``).
        header: Address of the episode group's object header.
        attrs: Decoded attributes other than twinloop's index.
        addresses: Per field, its data (or chunk index) address; empty for foreign episodes.
        sizes: Per field, its stored bytes.
        foreign: Written by another tool (no twinloop index): read through h5py.
    """

    name: str
    header: int
    attrs: dict[str, Any]
    addresses: np.ndarray
    sizes: np.ndarray
    foreign: bool = False


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        if value.dtype.kind == "S":
            value = np.char.decode(value, "utf-8", "replace")
        return value.item() if value.ndim == 0 else value.tolist()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def parse_episode(
    f: DataFile, name: str, address: int, n_fields: int, gheap: R.GlobalHeap | None = None
) -> EpisodeEntry:
    """Index the episode group at ``address`` (twinloop's, or one another tool wrote)."""
    header = R.read_object_header(f.read, address, f.size)
    raw, _notes = R.object_attributes(f.read, header, f.size, gheap)
    index = raw.pop(E.INDEX_ATTR, None)
    attrs = {k: _plain(v) for k, v in raw.items()}
    if index is None:
        empty = np.zeros(0, dtype=np.int64)
        return EpisodeEntry(name, address, attrs, empty, empty, foreign=True)
    index = np.asarray(index, dtype=np.int64).reshape(-1)
    if index.size != 1 + 2 * n_fields or index[0] != n_fields:
        raise H.FormatError(f"{name} has no valid {E.INDEX_ATTR} attribute for {n_fields} fields")
    pairs = index[1:].reshape(n_fields, 2)
    return EpisodeEntry(name, address, attrs, pairs[:, 0].copy(), pairs[:, 1].copy())


def check_ranges(entry: EpisodeEntry, fields: list[FieldSpec], size: int) -> None:
    """Raise ``FormatError`` if an episode's index points outside the file or disagrees."""
    steps = int(entry.attrs.get("total_steps", -1))
    if steps < 1:
        raise H.FormatError(f"total_steps = {steps}")
    if entry.foreign:
        return
    for j, fs in enumerate(fields):
        addr, nbytes = int(entry.addresses[j]), int(entry.sizes[j])
        rows = steps + int(fs.obs_aligned)
        if not fs.image and nbytes != rows * fs.row_bytes:
            raise H.FormatError(f"{fs.path} holds {nbytes} bytes, expected {rows * fs.row_bytes}")
        if addr < 0 or addr + (28 if fs.image else nbytes) > size:
            raise H.FormatError(
                f"{fs.path} (bytes {addr}-{addr + nbytes}) lies past the end of the file ({size} "
                "bytes): the file is truncated"
            )


def episode_id(name: str) -> int | None:
    """The id in a link name ``episode_<id>``, else None."""
    m = EPISODE_RE.fullmatch(name)
    return int(m.group(1)) if m else None


# --- the root group ---------------------------------------------------------------------------
class RootChain:
    """The root group's episode links, read in any storage form, then followed as they grow.

    Attributes:
        links: ``(name, header address)`` of every episode link found, in discovery order
            (sorted by id within one walk).
        other_links: Names of root links that are not episodes (another tool's groups).
        entries: Indexed readable episodes (when ``fields`` is given).
        problems: Damage found, each naming the file and the first episode it affects.
        storage: How the root keeps its links: ``compact``, ``dense`` or ``symbol-table``.
        appendable: The root is in twinloop's append form: compact links and a last chunk
            that ends with a reserved 16-byte NIL message (``tail_*`` describe that chunk).
    """

    def __init__(self, f: DataFile, fields: list[FieldSpec] | None) -> None:
        """Read the superblock (nothing else until :meth:`walk`)."""
        self.f = f
        self.fields = fields
        self.problems: list[str] = []
        self.links: list[tuple[str, int]] = []
        self.other_links: list[str] = []
        self.entries: list[EpisodeEntry] = []
        self.bad: list[str] = []
        self.broken = False
        self.storage = "compact"
        self.appendable = False
        self.tail_address = -1
        self.tail_length: int | None = None
        self.tail_chunk = b""
        self._known: set[str] = set()
        self.superblock: H.Superblock | None = None
        self.eoa, self.root = 0, H.SUPERBLOCK_SIZE
        self._read_superblock(note=True)

    def _read_superblock(self, note: bool) -> None:
        try:
            self.superblock = H.read_superblock(self.f.read(0, H.SUPERBLOCK_SIZE))
        except ValueError as exc:
            self.superblock = None
            if note:
                self.problems.append(
                    f"{self.f.path}: superblock unreadable ({exc}); reading from the root group "
                    f"at offset {self.root} (other HDF5 tools will not open this file)"
                )
            return
        self.eoa, self.root = self.superblock.eoa, self.superblock.root

    @property
    def n_linked(self) -> int:
        """Episode links found."""
        return len(self.links)

    @property
    def next_id(self) -> int:
        """One more than the largest episode id linked."""
        ids = [episode_id(n) for n, _ in self.links]
        return 1 + max((i for i in ids if i is not None), default=-1)

    def walk(self) -> int:
        """Find new episode links and index their episodes; return how many were added."""
        if self.broken:
            return 0
        before = len(self.entries)
        root = self.root
        if self.tail_address >= 0:
            self._read_superblock(note=False)
        try:
            if self.appendable and self.root == root and self._follow_tail():
                pass
            else:
                self._full_walk()
        except _PARSE_ERRORS as exc:
            self.problems.append(
                f"{self.f.path}: the root group (header at offset {self.root}) is unreadable "
                f"({exc}); episode_{self.next_id} and later episodes cannot be located"
            )
            self.broken = True
        self._parse_new()
        return len(self.entries) - before

    def _read_header(self) -> tuple[R.ObjectHeader, list[H.FormatError]]:
        errors: list[H.FormatError] = []
        header = R.read_object_header(self.f.read, self.root, self.f.size, errors)
        if errors:  # a live writer may have grown the file since our last fstat: look again
            self.f.refresh()
            errors = []
            header = R.read_object_header(self.f.read, self.root, self.f.size, errors)
        return header, errors

    def _full_walk(self) -> None:
        header, errors = self._read_header()
        self.storage = R.link_storage(header)
        found = []
        for link in R.group_links(self.f.read, header, self.f.size):
            if link.name in self._known:
                continue
            if episode_id(link.name) is None or link.address is None:
                self.other_links.append(link.name)
                self._known.add(link.name)
                continue
            found.append((episode_id(link.name), link.name, link.address))
        for _, name, address in sorted(found):
            self.links.append((name, address))
            self._known.add(name)
        if errors:
            self.problems.append(
                f"{self.f.path}: root link {errors[0]}; episode_{self.next_id} and every later "
                "episode cannot be located"
            )
            self.broken = True
            self.appendable = False
            return
        last = header.chunks[-1]
        tail = last.messages[-1] if last.messages else None
        self.appendable = (
            self.storage == "compact"
            and header.version == 2
            and tail is not None
            and tail.kind == H.MSG_NIL
            and len(tail.body) == 16
            and last.gap == 0
        )
        self.tail_address = last.address
        self.tail_length = None if last is header.chunks[0] else last.length
        self.tail_chunk = last.raw

    def _chunk(self, address: int, length: int | None) -> tuple:
        try:
            return H.read_chunk(self.f.read, address, length, self.f.size)
        except _PARSE_ERRORS:
            self.f.refresh()  # the writer may have grown the file since our last fstat
            return H.read_chunk(self.f.read, address, length, self.f.size)

    def _follow_tail(self) -> bool:
        """Read the blocks appended after the known tail; False if the root changed otherwise."""
        try:
            _msgs, conts, raw = self._chunk(self.tail_address, self.tail_length)
        except _PARSE_ERRORS:
            return False
        if raw[: -H.TAIL_BYTES] != self.tail_chunk[: -H.TAIL_BYTES]:
            return False  # another writer rewrote the block: read the root afresh
        pending = [(int(a), int(n)) for a, n in conts]
        while pending:
            address, length = pending.pop(0)
            msgs, more, raw = self._chunk(address, length)
            for m in msgs:
                if m.kind != H.MSG_LINK:
                    continue
                name, target = H.parse_link(m.body)
                if name in self._known:
                    continue
                self._known.add(name)
                if episode_id(name) is None or target is None:
                    self.other_links.append(name)
                else:
                    self.links.append((name, target))
            self.tail_address, self.tail_length, self.tail_chunk = address, length, raw
            pending = [(int(a), int(n)) for a, n in more] + pending
        return True

    def _read_episode(self, name: str, address: int, gheap: R.GlobalHeap) -> EpisodeEntry:
        n_fields = len(self.fields or ())
        for attempt in range(2):
            try:
                entry = parse_episode(self.f, name, address, n_fields, gheap)
                check_ranges(entry, self.fields or [], self.f.size)
                return entry
            except _PARSE_ERRORS:
                if attempt:
                    raise
                self.f.refresh()  # as in _read_header: the file may have grown meanwhile
        raise AssertionError("unreachable")

    def _parse_new(self) -> None:
        if self.fields is None:
            return
        seen = len(self.entries) + len(self.bad)
        gheap = R.GlobalHeap(self.f.read, self.f.size)
        for name, address in self.links[seen:]:
            try:
                entry = self._read_episode(name, address, gheap)
            except _PARSE_ERRORS as exc:
                self.bad.append(name)
                self.problems.append(
                    f"{self.f.path}: {name} (header at offset {address}) is unreadable: {exc}"
                )
                continue
            self.entries.append(entry)


@dataclasses.dataclass
class FileScan:
    """The committed state of a data file.

    Attributes:
        path: The data file.
        file_size: Its size when scanned.
        superblock: Its superblock, or None if unreadable.
        chain: The root chain after a full walk.
    """

    path: Path
    file_size: int
    superblock: H.Superblock | None
    chain: RootChain

    @property
    def episodes(self) -> list[EpisodeEntry]:
        """Readable episodes."""
        return self.chain.entries

    @property
    def problems(self) -> list[str]:
        """Damage found."""
        return self.chain.problems

    @property
    def n_episodes(self) -> int:
        """Episodes linked from the root group."""
        return self.chain.n_linked

    @property
    def n_steps(self) -> int:
        """Steps of the readable episodes."""
        return int(sum(int(e.attrs.get("total_steps", 0)) for e in self.episodes))

    @property
    def wall_span(self) -> tuple[float, float] | None:
        """Earliest start and latest end wall time (Unix s) of the readable episodes."""
        walls = [e for e in self.episodes if "wall_time_start_s" in e.attrs]
        if not walls:
            return None
        lo = min(float(e.attrs["wall_time_start_s"]) for e in walls)
        hi = max(float(e.attrs.get("wall_time_end_s", np.nan)) for e in walls)
        return lo, hi


def scan_file(path: str | os.PathLike, fields: list[FieldSpec] | None = None) -> FileScan:
    """Walk a data file's committed episodes (used to append and to check files)."""
    path = Path(path)
    if fields is None:
        _, fields = load_metadata(path.parent)
    f = DataFile(path)
    try:
        chain = RootChain(f, fields)
        chain.walk()
        return FileScan(path=path, file_size=f.size, superblock=chain.superblock, chain=chain)
    finally:
        f.close()
