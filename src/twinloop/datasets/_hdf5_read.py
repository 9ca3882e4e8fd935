"""Reading every form of group and attribute storage that an HDF5 writer may leave in a file.

twinloop writes one narrow subset of HDF5 (:mod:`twinloop.datasets._hdf5`), but its files are
open to every other HDF5 writer: Minari and h5py add episodes, groups and attributes to them,
and libhdf5 then stores what it adds in whatever form it chooses. A reader that assumes only
its own writer touched a file hides data (a root group converted to dense storage reads as
empty). This module reads all of them:

* object headers of version 1 and version 2, with their continuation chunks;
* links stored compactly (link messages in the header), densely (a fractal heap indexed by a
  version 2 B-tree) and in old-style symbol tables (a version 1 B-tree of symbol table nodes
  with names in a local heap);
* attributes stored compactly or densely, including variable-length strings kept in the
  global heap (what h5py writes for a Python ``str``).

Source: the HDF5 File Format Specification, version 3.0 (The HDF Group): sections III.A.1
(version 1 B-trees), III.A.2 (version 2 B-trees), III.C (symbol table nodes), III.D (local
heaps), III.E (global heap), III.G (fractal heaps), IV.A.1 (object headers), IV.A.2 (messages:
link info 0x02, datatype 0x03, symbol table 0x11, attribute info 0x15). Structures with a
checksum are verified; a structure that does not parse raises :class:`FormatError` naming its
offset.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from twinloop.datasets import _hdf5 as H
from twinloop.datasets._hdf5 import UNDEF, FormatError

#: ``read(address, n) -> bytes`` (fewer bytes at the end of the file).
ReadFn = Callable[[int, int], bytes]

MSG_SYMBOL_TABLE = 0x11
MSG_ATTRIBUTE_INFO = 0x15
#: Guard against cycles and absurd sizes in damaged files.
_MAX_NODES = 10_000_000


@dataclasses.dataclass
class Msg:
    """One header message, NIL messages included.

    Attributes:
        kind: Message type.
        flags: Message flags.
        body: The message body.
        at: Absolute address of the message's first (prefix) byte.
        body_at: Absolute address of the body.
        order: Creation order (v2 headers that track it), else -1.
    """

    kind: int
    flags: int
    body: bytes
    at: int
    body_at: int
    order: int = -1


@dataclasses.dataclass
class Chunk:
    """One chunk of an object header: chunk 0 or a continuation block.

    Attributes:
        address: Where the chunk starts (the ``OHDR``/``OCHK`` signature for version 2).
        length: Bytes from ``address`` to the end of the chunk (checksum included).
        raw: The chunk's bytes.
        messages: Its messages in order, NIL messages included.
        gap: Unused bytes between the last message and the checksum (version 2).
    """

    address: int
    length: int
    raw: bytes
    messages: list[Msg]
    gap: int = 0


@dataclasses.dataclass
class ObjectHeader:
    """An object header with every chunk, in the order libhdf5 reads them.

    Attributes:
        address: The header's address.
        version: 1 or 2.
        flags: Version 2 header flags (0 for version 1).
        prefix: Version 2 optional prefix fields: times (16 bytes) and attribute phase change
            values (4 bytes), as stored; empty when absent.
        chunks: Chunk 0 first, then continuation blocks.
    """

    address: int
    version: int
    flags: int
    prefix: bytes
    chunks: list[Chunk]

    def messages(self, kind: int | None = None) -> list[Msg]:
        """Messages other than NIL and continuation (of one ``kind`` if given), in order."""
        return [
            m
            for c in self.chunks
            for m in c.messages
            if m.kind not in (H.MSG_NIL, H.MSG_CONTINUATION) and (kind is None or m.kind == kind)
        ]

    @property
    def tracks_order(self) -> bool:
        """Whether messages carry a creation order field."""
        return self.version == 2 and bool(self.flags & 0x04)


def _check(raw: bytes, what: str, address: int) -> None:
    if len(raw) < 4 or struct.unpack_from("<I", raw, len(raw) - 4)[0] != H.checksum(raw[:-4]):
        raise FormatError(f"{what} at offset {address}: checksum mismatch")


def _read_exact(read: ReadFn, address: int, n: int, limit: int, what: str) -> bytes:
    if address < 0 or address == UNDEF or n < 0 or address + n > limit:
        raise FormatError(f"{what} at offset {address} ({n} bytes) lies outside the file ({limit})")
    raw = read(address, n)
    if len(raw) < n:
        raise FormatError(f"{what} at offset {address} is truncated")
    return raw


class BlockError(FormatError):
    """A continuation block that does not parse; ``address`` and ``length`` say which."""

    def __init__(self, message: str, address: int, length: int) -> None:
        """Record where the block was expected."""
        super().__init__(message)
        self.address = address
        self.length = length


def lenient_messages(raw: bytes, start: int) -> list[tuple[int, int, bytes]]:
    """``(kind, offset, body)`` of the version 2 messages in ``raw`` from ``start``, unchecked.

    For salvaging a block whose checksum failed: messages are taken as long as their sizes
    stay inside the block; nothing is trusted until the caller validates what they point to.
    """
    out = []
    p = start
    end = len(raw) - 4
    while p + 4 <= end:
        kind, size = raw[p], struct.unpack_from("<H", raw, p + 1)[0]
        if p + 4 + size > end:
            break
        out.append((kind, p, raw[p + 4 : p + 4 + size]))
        p += 4 + size
    return out


# --- object headers -------------------------------------------------------------------------
def _parse_v2_messages(
    raw: bytes, start: int, end: int, base: int, order: bool
) -> tuple[list[Msg], int]:
    hdr = 4 + (2 if order else 0)
    out = []
    p = start
    while p + hdr <= end:
        kind, size, flags = raw[p], struct.unpack_from("<H", raw, p + 1)[0], raw[p + 3]
        co = struct.unpack_from("<H", raw, p + 4)[0] if order else -1
        if p + hdr + size > end:
            raise FormatError(f"header message at offset {base + p} runs past its chunk")
        out.append(Msg(kind, flags, raw[p + hdr : p + hdr + size], base + p, base + p + hdr, co))
        p += hdr + size
    return out, end - p


def _parse_v1_messages(raw: bytes, base: int, budget: int) -> list[Msg]:
    out = []
    p = 0
    while p + 8 <= len(raw) and len(out) < budget:
        kind, size, flags = struct.unpack_from("<HHB", raw, p)
        if p + 8 + size > len(raw):
            raise FormatError(f"header message at offset {base + p} runs past its chunk")
        out.append(Msg(kind, flags, raw[p + 8 : p + 8 + size], base + p, base + p + 8))
        p += 8 + size
    return out


def read_object_header(
    read: ReadFn, address: int, limit: int, partial: list[FormatError] | None = None
) -> ObjectHeader:
    """Parse the object header at ``address`` (version 1 or 2) with all its chunks.

    Args:
        read: ``read(address, n) -> bytes``.
        address: The header's address.
        limit: The file's usable size.
        partial: If given, a continuation block that does not parse ends the header there
            (its error is appended to this list) instead of failing the whole header.

    Raises:
        FormatError: A signature, checksum, size or address is wrong (chunk 0 always).
    """
    head = _read_exact(read, address, min(16, max(0, limit - address)), limit, "object header")
    if head[:4] == b"OHDR":
        return _read_v2(read, address, head, limit, partial)
    if len(head) >= 16 and head[0] == 1:
        return _read_v1(read, address, head, limit, partial)
    raise FormatError(f"no object header at offset {address}")


def _read_v2(
    read: ReadFn, address: int, head: bytes, limit: int, partial: list | None
) -> ObjectHeader:
    if head[4] != 2:
        raise FormatError(f"object header at offset {address} has version {head[4]}")
    flags = head[5]
    pre = 6 + (16 if flags & 0x20 else 0) + (4 if flags & 0x10 else 0)
    width = 1 << (flags & 0x03)
    lead = _read_exact(read, address, pre + width, limit, "object header")
    size = int.from_bytes(lead[pre : pre + width], "little")
    start = pre + width
    raw = _read_exact(read, address, start + size + 4, limit, "object header")
    _check(raw, "object header", address)
    order = bool(flags & 0x04)
    msgs, gap = _parse_v2_messages(raw, start, start + size, address, order)
    chunks = [Chunk(address, len(raw), raw, msgs, gap)]
    follow_chunks(chunks, lambda a, n: read_block(read, a, n, limit, order), partial)
    return ObjectHeader(address, 2, flags, bytes(raw[6:pre]), chunks)


def read_block(read: ReadFn, address: int, length: int, limit: int, order: bool) -> Chunk:
    """Parse the version 2 continuation block (``OCHK``) at ``address``."""
    raw = _read_exact(read, address, length, limit, "header continuation block")
    if raw[:4] != b"OCHK":
        raise FormatError(f"no continuation block at offset {address}")
    _check(raw, "header continuation block", address)
    msgs, gap = _parse_v2_messages(raw, 4, length - 4, address, order)
    return Chunk(address, length, raw, msgs, gap)


def _read_v1(
    read: ReadFn, address: int, head: bytes, limit: int, partial: list | None
) -> ObjectHeader:
    n_msgs, _refs, size = struct.unpack_from("<HII", head, 2)
    raw = _read_exact(read, address + 16, size, limit, "object header")
    msgs = _parse_v1_messages(raw, address + 16, n_msgs)
    chunks = [Chunk(address, 16 + size, raw, msgs)]
    seen = len(msgs)

    def block(a: int, n: int) -> Chunk:
        nonlocal seen
        data = _read_exact(read, a, n, limit, "header continuation block")
        found = _parse_v1_messages(data, a, n_msgs - seen)
        seen += len(found)
        return Chunk(a, n, data, found)

    follow_chunks(chunks, block, partial)
    return ObjectHeader(address, 1, 0, b"", chunks)


def follow_chunks(chunks: list[Chunk], load: Callable, partial: list | None) -> None:
    """Append the continuation blocks of ``chunks`` in the order libhdf5 reads them."""
    pending = [m for m in chunks[0].messages if m.kind == H.MSG_CONTINUATION]
    seen = {chunks[0].address}
    while pending:
        if len(chunks) > _MAX_NODES:
            raise FormatError(f"object header at offset {chunks[0].address} does not end")
        m = pending.pop(0)
        addr, length = struct.unpack_from("<QQ", m.body)
        if addr in seen:
            raise FormatError(f"continuation loop at offset {addr}")
        seen.add(addr)
        try:
            chunk = load(addr, length)
        except (FormatError, struct.error, IndexError) as exc:
            if partial is None:
                raise
            partial.append(BlockError(f"block at offset {addr}: {exc}", addr, length))
            return
        chunks.append(chunk)
        pending = [c for c in chunk.messages if c.kind == H.MSG_CONTINUATION] + pending


# --- version 2 B-trees ------------------------------------------------------------------------
def _enc_size(n: int) -> int:
    """Bytes libhdf5 uses to encode counts up to ``n`` (H5VM_limit_enc_size)."""
    return (max(1, int(n)).bit_length() - 1) // 8 + 1


def btree2_records(read: ReadFn, address: int, limit: int) -> tuple[int, list[bytes]]:
    """``(B-tree type, every record as raw bytes)`` of the version 2 B-tree at ``address``."""
    raw = _read_exact(read, address, 38, limit, "v2 B-tree header")
    if raw[:4] != b"BTHD":
        raise FormatError(f"no v2 B-tree header at offset {address}")
    _check(raw, "v2 B-tree header", address)
    _v, kind, node_size, rec_size, depth, _s, _m, root, root_n, _total = struct.unpack_from(
        "<BBIHHBBQHQ", raw, 4
    )
    if rec_size == 0 or node_size < 10:
        raise FormatError(f"v2 B-tree at offset {address} has record size {rec_size}")
    # per depth: max records in a node, cumulative max records below it, and their byte widths
    max_nrec = [(node_size - 10) // rec_size]
    cum = [max_nrec[0]]
    cum_size = [0]
    nrec_size = _enc_size(max_nrec[0])
    for d in range(1, depth + 1):
        ptr = 8 + nrec_size + (cum_size[d - 1] if d > 1 else 0)
        max_nrec.append((node_size - (10 + ptr)) // (rec_size + ptr))
        cum.append((max_nrec[d] + 1) * cum[d - 1] + max_nrec[d])
        cum_size.append(_enc_size(cum[d]))
    out: list[bytes] = []
    stack = [(root, root_n, depth)]
    visited = 0
    while stack:
        node, n, d = stack.pop()
        visited += 1
        if visited > _MAX_NODES or n > max_nrec[d]:
            raise FormatError(f"v2 B-tree node at offset {node} is malformed")
        if root == UNDEF or n == 0:
            continue
        raw = _read_exact(read, node, node_size, limit, "v2 B-tree node")
        sig = b"BTLF" if d == 0 else b"BTIN"
        if raw[:4] != sig:
            raise FormatError(f"no v2 B-tree {'leaf' if d == 0 else 'internal'} node at {node}")
        used = 6 + n * rec_size
        children: list[tuple[int, int, int]] = []
        if d > 0:
            p = used
            width = 8 + nrec_size + (cum_size[d - 1] if d > 1 else 0)
            for _ in range(n + 1):
                child = struct.unpack_from("<Q", raw, p)[0]
                count = int.from_bytes(raw[p + 8 : p + 8 + nrec_size], "little")
                children.append((child, count, d - 1))
                p += width
            used = p
        if struct.unpack_from("<I", raw, used)[0] != H.checksum(raw[:used]):
            raise FormatError(f"v2 B-tree node at offset {node}: checksum mismatch")
        out.extend(raw[6 + k * rec_size : 6 + (k + 1) * rec_size] for k in range(n))
        stack.extend(reversed(children))
    return kind, out


# --- fractal heaps ----------------------------------------------------------------------------
class FractalHeap:
    """Objects of the fractal heap at ``address``, looked up by heap ID.

    Managed objects are found through the doubling table (root direct block or a tree of
    indirect blocks); tiny objects live in the ID itself; huge objects in their own v2 B-tree.
    """

    def __init__(self, read: ReadFn, address: int, limit: int) -> None:
        """Parse the heap header (``FRHP``)."""
        self.read, self.address, self.limit = read, address, limit
        head = _read_exact(read, address, 22, limit, "fractal heap header")
        if head[:4] != b"FRHP":
            raise FormatError(f"no fractal heap header at offset {address}")
        self.id_len, self.filter_len, self.flags, self.max_managed = struct.unpack_from(
            "<HHBI", head, 5
        )
        size = 142 + (12 + self.filter_len if self.filter_len else 0) + 4
        raw = _read_exact(read, address, size, limit, "fractal heap header")
        _check(raw, "fractal heap header", address)
        if self.filter_len:
            raise FormatError(f"fractal heap at offset {address} is filtered (not supported)")
        (self.huge_btree,) = struct.unpack_from("<Q", raw, 22)
        self.width, self.start_block, self.max_direct, self.max_heap_bits, _rows0 = (
            struct.unpack_from("<HQQHH", raw, 110)
        )
        self.root, self.root_rows = struct.unpack_from("<QH", raw, 132)
        if self.width == 0 or self.start_block == 0 or self.max_direct < self.start_block:
            raise FormatError(f"fractal heap at offset {address} has an invalid doubling table")
        self.off_size = (self.max_heap_bits + 7) // 8
        direct_bits = (self.max_direct.bit_length() - 1 + 7) // 8
        self.len_size = min(direct_bits, _enc_size(self.max_managed))
        self.checksummed = bool(self.flags & 0x02)
        self.first_row_bits = (self.start_block.bit_length() - 1) + (self.width.bit_length() - 1)
        self.max_direct_rows = (
            (self.max_direct.bit_length() - 1) - (self.start_block.bit_length() - 1) + 2
        )
        self._huge: dict[int, tuple[int, int]] | None = None

    def _row_size(self, row: int) -> int:
        return self.start_block if row == 0 else self.start_block << (row - 1)

    def _row_offset(self, row: int) -> int:
        return 0 if row == 0 else (self.start_block * self.width) << (row - 1)

    def _lookup(self, off: int) -> tuple[int, int]:
        if off < self.start_block * self.width:
            return 0, off // self.start_block
        row = (off.bit_length() - 1) - self.first_row_bits + 1
        return row, (off - self._row_offset(row)) // self._row_size(row)

    def _direct(self, address: int, block_size: int, off: int, length: int) -> bytes:
        prefix = 5 + 8 + self.off_size
        if not prefix <= off < block_size:
            raise FormatError(f"heap offset {off} outside its direct block at {address}")
        raw = _read_exact(self.read, address, block_size, self.limit, "fractal heap block")
        if raw[:4] != b"FHDB":
            raise FormatError(f"no fractal heap direct block at offset {address}")
        if self.checksummed:
            stored = struct.unpack_from("<I", raw, prefix)[0]
            zeroed = raw[:prefix] + b"\0\0\0\0" + raw[prefix + 4 :]
            if stored != H.checksum(zeroed):
                raise FormatError(f"fractal heap direct block at offset {address}: bad checksum")
        if off + length > block_size:
            raise FormatError(f"heap object at {address}+{off} runs past its block")
        return raw[off : off + length]

    def _managed(self, off: int, length: int) -> bytes:
        if self.root == UNDEF:
            raise FormatError(f"fractal heap at offset {self.address} is empty")
        if self.root_rows == 0:
            return self._direct(self.root, self.start_block, off, length)
        block, rows, base = self.root, self.root_rows, 0
        for _ in range(64):
            row, col = self._lookup(off - base)
            if row >= rows:
                raise FormatError(f"heap offset {off} beyond the heap's indirect block at {block}")
            entry = self._indirect_entry(block, rows, row * self.width + col)
            child_base = base + self._row_offset(row) + col * self._row_size(row)
            if row < self.max_direct_rows:
                return self._direct(entry, self._row_size(row), off - child_base, length)
            size = self._row_size(row)
            block, base = entry, child_base
            rows = (size.bit_length() - 1) - self.first_row_bits + 1
        raise FormatError(f"fractal heap at offset {self.address} nests too deep")

    def _indirect_entry(self, address: int, rows: int, k: int) -> int:
        n = rows * self.width
        size = 5 + 8 + self.off_size + 8 * n + 4
        raw = _read_exact(self.read, address, size, self.limit, "fractal heap indirect block")
        if raw[:4] != b"FHIB":
            raise FormatError(f"no fractal heap indirect block at offset {address}")
        _check(raw, "fractal heap indirect block", address)
        (entry,) = struct.unpack_from("<Q", raw, 5 + 8 + self.off_size + 8 * k)
        if entry == UNDEF:
            raise FormatError(f"heap indirect block at {address} has no block {k}")
        return entry

    def get(self, heap_id: bytes) -> bytes:
        """The object with ID ``heap_id``."""
        kind = (heap_id[0] >> 4) & 0x03
        if kind == 0:
            p = 1
            off = int.from_bytes(heap_id[p : p + self.off_size], "little")
            length = int.from_bytes(
                heap_id[p + self.off_size : p + self.off_size + self.len_size], "little"
            )
            return self._managed(off, length)
        if kind == 2:
            n = (heap_id[0] & 0x0F) + 1
            return bytes(heap_id[1 : 1 + n])
        if kind == 1:
            return self._huge_object(heap_id)
        raise FormatError(f"heap ID of unknown type {kind} in heap at {self.address}")

    def _huge_object(self, heap_id: bytes) -> bytes:
        if len(heap_id) >= 17:  # address and length in the ID itself
            address, length = struct.unpack_from("<QQ", heap_id, 1)
        else:
            if self._huge is None:
                _, records = btree2_records(self.read, self.huge_btree, self.limit)
                self._huge = {}
                for rec in records:
                    addr, length, ident = struct.unpack_from("<QQQ", rec)
                    self._huge[ident] = (addr, length)
            ident = int.from_bytes(heap_id[1:], "little")
            if ident not in self._huge:
                raise FormatError(f"huge object {ident} missing from heap at {self.address}")
            address, length = self._huge[ident]
        return _read_exact(self.read, address, length, self.limit, "huge heap object")


# --- groups -----------------------------------------------------------------------------------
@dataclasses.dataclass
class Link:
    """A link of a group.

    Attributes:
        name: The link name.
        address: The target's object header (hard links), or None (soft/external).
        body: The link message body (None for symbol-table entries).
    """

    name: str
    address: int | None
    body: bytes | None = None


def parse_link_info(body: bytes) -> tuple[int, int]:
    """``(fractal heap address, name index address)`` of a link or attribute info message."""
    flags = body[1]
    p = 2 + (8 if flags & 0x01 else 0)
    return struct.unpack_from("<QQ", body, p)


def parse_attribute_info(body: bytes) -> tuple[int, int]:
    """``(fractal heap address, name index address)`` of an attribute info message."""
    flags = body[1]
    p = 2 + (2 if flags & 0x01 else 0)
    return struct.unpack_from("<QQ", body, p)


def link_storage(header: ObjectHeader) -> str:
    """``compact``, ``dense`` or ``symbol-table``: how the group keeps its links."""
    if header.messages(MSG_SYMBOL_TABLE):
        return "symbol-table"
    for m in header.messages(H.MSG_LINK_INFO):
        if parse_link_info(m.body)[0] != UNDEF:
            return "dense"
    return "compact"


def group_links(read: ReadFn, header: ObjectHeader, limit: int) -> list[Link]:
    """Every link of the group whose header is ``header``, whatever its storage."""
    links = []
    for m in header.messages(H.MSG_LINK):
        name, address = H.parse_link(m.body)
        links.append(Link(name, address, m.body))
    storage = link_storage(header)
    if storage == "dense":
        info = header.messages(H.MSG_LINK_INFO)[0]
        heap_at, index_at = parse_link_info(info.body)
        heap = FractalHeap(read, heap_at, limit)
        _kind, records = btree2_records(read, index_at, limit)
        for rec in records:  # type 5: name hash (4), heap ID
            body = heap.get(rec[4 : 4 + heap.id_len])
            name, address = H.parse_link(body)
            links.append(Link(name, address, body))
    elif storage == "symbol-table":
        btree, heap = struct.unpack_from("<QQ", header.messages(MSG_SYMBOL_TABLE)[0].body)
        links.extend(_symbol_table(read, btree, heap, limit))
    return links


def _local_heap(read: ReadFn, address: int, limit: int) -> bytes:
    raw = _read_exact(read, address, 32, limit, "local heap")
    if raw[:4] != b"HEAP":
        raise FormatError(f"no local heap at offset {address}")
    size, _free, data_at = struct.unpack_from("<QQQ", raw, 8)
    return _read_exact(read, data_at, size, limit, "local heap data")


def _symbol_table(read: ReadFn, btree: int, heap_at: int, limit: int) -> list[Link]:
    names = _local_heap(read, heap_at, limit)
    out = []
    stack = [btree]
    visited = 0
    while stack:
        node = stack.pop()
        visited += 1
        if visited > _MAX_NODES:
            raise FormatError(f"symbol table B-tree at offset {btree} does not end")
        head = _read_exact(read, node, 24, limit, "v1 B-tree node")
        if head[:4] != b"TREE" or head[4] != 0:
            raise FormatError(f"no group B-tree node at offset {node}")
        level, used = head[5], struct.unpack_from("<H", head, 6)[0]
        body = _read_exact(read, node + 24, 8 + used * 16, limit, "v1 B-tree node")
        children = [struct.unpack_from("<Q", body, 8 + 16 * k)[0] for k in range(used)]
        if level > 0:
            stack.extend(reversed(children))
            continue
        for snod in children:
            head = _read_exact(read, snod, 8, limit, "symbol table node")
            if head[:4] != b"SNOD":
                raise FormatError(f"no symbol table node at offset {snod}")
            n = struct.unpack_from("<H", head, 6)[0]
            entries = _read_exact(read, snod + 8, 40 * n, limit, "symbol table node")
            for k in range(n):
                name_off, address, cache = struct.unpack_from("<QQI", entries, 40 * k)
                end = names.find(b"\0", name_off)
                if not 0 <= name_off < len(names) or end < 0:
                    raise FormatError(f"symbol table node at {snod}: bad name offset {name_off}")
                target = None if cache == 2 or address == UNDEF else address  # 2: soft link
                out.append(Link(names[name_off:end].decode("utf-8", "replace"), target))
    return out


# --- attributes -------------------------------------------------------------------------------
def attribute_messages(read: ReadFn, header: ObjectHeader, limit: int) -> list[bytes]:
    """Bodies of every attribute message of an object, compact and dense."""
    bodies = [m.body for m in header.messages(H.MSG_ATTRIBUTE)]
    for m in header.messages(MSG_ATTRIBUTE_INFO):
        heap_at, index_at = parse_attribute_info(m.body)
        if heap_at == UNDEF or index_at == UNDEF:
            continue
        heap = FractalHeap(read, heap_at, limit)
        _kind, records = btree2_records(read, index_at, limit)
        for rec in records:  # type 8: heap ID (8), flags (1), creation order (4), hash (4)
            bodies.append(heap.get(rec[:8]))
    return bodies


class GlobalHeap:
    """Objects of global heap collections (variable-length data), cached per collection."""

    def __init__(self, read: ReadFn, limit: int) -> None:
        """Nothing is read until an object is asked for."""
        self.read, self.limit = read, limit
        self._collections: dict[int, dict[int, bytes]] = {}

    def get(self, collection: int, index: int) -> bytes:
        """Object ``index`` of the collection at ``collection``."""
        objects = self._collections.get(collection)
        if objects is None:
            objects = self._collections[collection] = self._load(collection)
        if index not in objects:
            raise FormatError(f"global heap collection at {collection} has no object {index}")
        return objects[index]

    def _load(self, address: int) -> dict[int, bytes]:
        head = _read_exact(self.read, address, 16, self.limit, "global heap collection")
        if head[:4] != b"GCOL":
            raise FormatError(f"no global heap collection at offset {address}")
        size = struct.unpack_from("<Q", head, 8)[0]
        raw = _read_exact(self.read, address, size, self.limit, "global heap collection")
        objects = {}
        p = 16
        while p + 16 <= size:
            index, _refs, _r, n = struct.unpack_from("<HHIQ", raw, p)
            if index == 0:
                break  # free space: the rest of the collection
            objects[index] = raw[p + 16 : p + 16 + n]
            p += 16 + ((n + 7) & ~7)
        return objects


def _vlen_string_type(data: bytes, pos: int) -> bool:
    return data[pos] & 0x0F == 9 and (data[pos + 1] & 0x0F) == 1


def decode_attribute(body: bytes, gheap: GlobalHeap) -> tuple[str, Any]:
    """``(name, value)`` of an attribute message, variable-length strings included.

    Numbers come back as numpy arrays (0-d for scalars), fixed-length strings as ``bytes``
    arrays, variable-length strings as ``str`` (or a list of them).

    Raises:
        ValueError: A datatype this reader does not decode (the caller keeps the episode).
    """
    name, dt_at, dims, p = H.attribute_parts(body)
    if _vlen_string_type(body, dt_at):
        count = int(np.prod(dims, dtype=np.int64)) if dims else 1
        values = []
        for k in range(count):
            n, coll, index = struct.unpack_from("<IQI", body, p + 16 * k)
            raw = gheap.get(coll, index)[:n] if coll not in (0, UNDEF) else b""
            values.append(raw.decode("utf-8", "replace"))
        return name, values[0] if not dims else values
    return H.parse_attribute(body)


def object_attributes(
    read: ReadFn, header: ObjectHeader, limit: int, gheap: GlobalHeap | None = None
) -> tuple[dict[str, Any], list[str]]:
    """``({name: value}, [notes on attributes that could not be decoded])`` of an object."""
    gheap = gheap or GlobalHeap(read, limit)
    attrs: dict[str, Any] = {}
    notes = []
    for body in attribute_messages(read, header, limit):
        try:
            name, value = decode_attribute(body, gheap)
        except (ValueError, IndexError, struct.error, UnicodeDecodeError) as exc:
            notes.append(f"attribute at {header.address} not decoded ({exc})")
            continue
        attrs[name] = value
    return attrs, notes


def walk(
    read: ReadFn, address: int, limit: int, path: str = ""
) -> Iterator[tuple[str, ObjectHeader]]:
    """``(path, header)`` of the object at ``address`` and of every object below it."""
    seen: set[int] = set()
    stack = [(path, address)]
    while stack:
        p, a = stack.pop()
        if a in seen:
            continue
        seen.add(a)
        header = read_object_header(read, a, limit)
        yield p, header
        if header.messages(H.MSG_LINK_INFO) or header.messages(MSG_SYMBOL_TABLE):
            for link in group_links(read, header, limit):
                if link.address is not None:
                    stack.append((f"{p}/{link.name}" if p else link.name, link.address))
