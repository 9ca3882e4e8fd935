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

import contextlib
import dataclasses
import fcntl
import json
import os
import re
import struct
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

_PARSE_ERRORS = (H.FormatError, ValueError, IndexError, KeyError, OverflowError, struct.error)


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
        checksums: XXH64 per field, then of the dataset headers (format 2), else None.
        header_bytes: Length of the dataset headers that end at ``header``.
    """

    name: str
    header: int
    attrs: dict[str, Any]
    addresses: np.ndarray
    sizes: np.ndarray
    foreign: bool = False
    checksums: np.ndarray | None = None
    header_bytes: int = 0


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
    raw = _own_attributes(f, address)
    if raw is None:  # another writer changed it (or wrote it): read every form
        header = R.read_object_header(f.read, address, f.size)
        raw, _notes = R.object_attributes(f.read, header, f.size, gheap)
    index = raw.pop(E.INDEX_ATTR, None)
    sums = raw.pop(E.CHECKSUM_ATTR, None)
    attrs = {k: _plain(v) for k, v in raw.items()}
    if index is None:
        empty = np.zeros(0, dtype=np.int64)
        return EpisodeEntry(name, address, attrs, empty, empty, foreign=True)
    index = np.asarray(index, dtype=np.int64).reshape(-1)
    if index.size != 1 + 2 * n_fields or index[0] != n_fields:
        raise H.FormatError(f"{name} has no valid {E.INDEX_ATTR} attribute for {n_fields} fields")
    pairs = index[1:].reshape(n_fields, 2)
    entry = EpisodeEntry(name, address, attrs, pairs[:, 0].copy(), pairs[:, 1].copy())
    if sums is not None:
        sums = np.asarray(sums, dtype=np.int64).reshape(-1)
        if sums.size != n_fields + 2 or not 0 < sums[-1] <= address:
            raise H.FormatError(f"{name} has no valid {E.CHECKSUM_ATTR} attribute")
        entry.checksums = sums[:-1].view(np.uint64).copy()
        entry.header_bytes = int(sums[-1])
    return entry


def _own_attributes(f: DataFile, address: int) -> dict[str, Any] | None:
    """The attributes of an episode header exactly as twinloop writes it, else None.

    The fast path of :func:`parse_episode` (one read, no continuation, numeric attributes
    only), tens of microseconds cheaper per episode than the general reader.
    """
    if f.read(address, 4) != b"OHDR":
        return None  # a version 1 header: another tool's
    msgs, conts, _ = H.read_chunk(f.read, address, None, f.size)
    if conts:
        return None
    attrs = {}
    for m in msgs:
        if m.kind == H.MSG_ATTRIBUTE:
            try:
                name, value = H.parse_attribute(m.body)
            except ValueError:  # e.g. a variable-length string another tool added
                return None
            attrs[name] = value
        elif m.kind == R.MSG_ATTRIBUTE_INFO:
            return None
    return attrs


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
        if addr < 0 or addr + (24 if fs.image else nbytes) > size:
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

    def __init__(self, f: DataFile, fields: list[FieldSpec] | None, expected: int = 0) -> None:
        """Read the superblock (nothing else until :meth:`walk`).

        ``expected``: episodes metadata.json counts (names losses after damage).
        """
        self.f = f
        self.fields = fields
        self.expected = int(expected or 0)
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
            self.broken = True
            self.appendable = False
            self._salvage_root(exc)
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
            self.broken = True
            self.appendable = False
            last = header.chunks[-1]
            self._salvage(errors[0], last.address + last.length)
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

    # --- salvage: episodes past a damaged root block -------------------------------------
    def _salvage_root(self, exc: Exception) -> None:
        """Chunk 0 of the root header is damaged: salvage it and the blocks after it."""
        head = self.f.read(self.root, 10)
        if head[:4] != b"OHDR" or len(head) < 10:
            self._note_loss(f"the root group (header at offset {self.root}) is unreadable ({exc})")
            return
        flags = head[5]
        pre = 6 + (16 if flags & 0x20 else 0) + (4 if flags & 0x10 else 0)
        width = 1 << (flags & 0x03)
        lead = self.f.read(self.root, pre + width)
        size = int.from_bytes(lead[pre : pre + width], "little")
        length = min(pre + width + size + 4, max(0, self.f.size - self.root))
        error = R.BlockError(f"root header at offset {self.root}: {exc}", self.root, length)
        self._salvage(error, self.root, start=pre + width)

    def _note_loss(self, what: str) -> None:
        self.problems.append(
            f"{self.f.path}: {what}; episode_{self.next_id} and every later episode cannot be "
            "located"
        )

    def _salvage(self, error: R.BlockError, prev_end: int, start: int = 4) -> None:
        """Read on past a damaged root block: what it links, and the blocks after it.

        Each commit writes its episodes and then their link block, so the episodes a damaged
        block linked lie between the previous block and it. Its link messages are read
        without trusting them: a link counts when its target is an intact episode header
        (named by that header's ``id``), or when an intact header with the link's id lies in
        that commit's region. The chain goes on at the block's continuation if that target
        is intact, else at the next intact link block found further on.
        """
        n0 = len(self.links)
        damaged = []
        while True:
            damaged.append(error.address)
            raw = self.f.read(error.address, error.length)
            region = self._episode_headers(_align8(prev_end), error.address)
            for kind, _, body in R.lenient_messages(raw, start):
                if kind == H.MSG_LINK:
                    with contextlib.suppress(*_PARSE_ERRORS, UnicodeDecodeError):
                        self._salvage_link(*H.parse_link(body), region)
            for ident, address in sorted(region.items()):  # links destroyed outright
                self._add_link(f"episode_{ident}", address)
            nxt = None
            for kind, _, body in R.lenient_messages(raw, start):
                if kind == H.MSG_CONTINUATION and len(body) == 16:
                    a, n = struct.unpack("<QQ", body)
                    if self._intact_block(a, n):
                        nxt = (a, n)
                        break
            if nxt is None:
                nxt = self._find_block(error.address + max(error.length, 4))
            if nxt is None:
                break
            chunks = [self._block(*nxt)]
            errors: list[H.FormatError] = []
            R.follow_chunks(chunks, self._block, errors)
            for chunk in chunks:
                for m in chunk.messages:
                    if m.kind == H.MSG_LINK:
                        name, target = H.parse_link(m.body)
                        if target is not None:
                            self._add_link(name, target)
            if not errors:
                break
            error = errors[0]
            prev_end = chunks[-1].address + chunks[-1].length
            start = 4
        found = len(self.links) - n0
        where = ", ".join(str(a) for a in damaged)
        # ids are given in sequence, so the ids between those found are the episodes lost
        ids = {episode_id(n) for n, _ in self.links}
        # (metadata.json's count, when it says more, names episodes lost at the very end)
        lost = sorted(set(range(max(self.next_id, self.expected))) - ids)
        gone = (
            f"; lost (headers damaged too): {', '.join(f'episode_{i}' for i in lost[:20])}"
            + (f" and {len(lost) - 20} more" if len(lost) > 20 else "")
            if lost
            else ""
        )
        self.problems.append(
            f"{self.f.path}: root link block(s) at offset {where} damaged ({error}); "
            f"{found} episode(s) after the damage were found by their intact headers "
            "(`twinloop data recover` rewrites the root so that every HDF5 reader sees them)"
            f"{gone}"
        )

    def _add_link(self, name: str, address: int) -> None:
        if name in self._known:
            return
        self._known.add(name)
        if episode_id(name) is None:
            self.other_links.append(name)
        else:
            self.links.append((name, address))

    def _salvage_link(self, name: str, target: int | None, region: dict[int, int]) -> None:
        if target is not None:
            ident = self._episode_id_at(target)
            if ident is not None:
                self._add_link(f"episode_{ident}", target)
                return
        ident = episode_id(name)
        if ident is not None and ident in region:
            self._add_link(name, region[ident])

    def _episode_id_at(self, address: int) -> int | None:
        """The ``id`` of the intact twinloop episode header at ``address``, else None."""
        try:
            entry = parse_episode(self.f, "?", address, len(self.fields or ()))
        except (*_PARSE_ERRORS, UnicodeDecodeError):
            return None
        if entry.foreign or "id" not in entry.attrs:
            return None
        return int(entry.attrs["id"])

    def _episode_headers(self, lo: int, hi: int) -> dict[int, int]:
        """``{id: address}`` of intact episode headers in ``[lo, hi)`` (the last of an id)."""
        out: dict[int, int] = {}
        if hi <= lo:
            return out
        data = self.f.read(lo, hi - lo)
        at = data.find(b"OHDR")
        while at >= 0:
            ident = self._episode_id_at(lo + at)
            if ident is not None:
                out[ident] = lo + at
            at = data.find(b"OHDR", at + 4)
        return out

    def _block(self, address: int, length: int) -> R.Chunk:
        return R.read_block(self.f.read, address, length, self.f.size, False)

    def _intact_block(self, address: int, length: int) -> bool:
        try:
            chunk = self._block(address, length)
        except (*_PARSE_ERRORS, struct.error):
            return False
        kinds = {m.kind for m in chunk.messages}
        return H.MSG_LINK in kinds and kinds <= {H.MSG_LINK, H.MSG_NIL, H.MSG_CONTINUATION}

    def _find_block(self, start: int) -> tuple[int, int] | None:
        """The first intact root link block at or after ``start`` (its address and length)."""
        step = 1 << 24
        pos = start
        while pos < self.f.size:
            data = self.f.read(pos, step + 4096)
            at = data.find(b"OCHK")
            while 0 <= at < step:
                length = _block_length(data, at)
                if length and self._intact_block(pos + at, length):
                    return pos + at, length
                at = data.find(b"OCHK", at + 4)
            pos += step
        return None

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


def _align8(n: int) -> int:
    return (n + 7) & ~7


def _block_length(data: bytes, at: int) -> int:
    """Length of the link block that would start at ``at`` (0 if its messages do not fit).

    A link block holds link messages and ends with a 16-byte NIL or continuation message,
    then its checksum; block length is not stored anywhere else but in the (lost) pointer.
    """
    p = at + 4
    while p + 4 <= len(data):
        kind, size = data[p], struct.unpack_from("<H", data, p + 1)[0]
        if kind in (H.MSG_NIL, H.MSG_CONTINUATION):
            return p + 4 + size + 4 - at if size == 16 else 0
        if kind != H.MSG_LINK or size == 0:
            return 0
        p += 4 + size
    return 0


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
