"""The subset of the HDF5 file format that twinloop writes and reads, byte for byte.

Source: the HDF5 File Format Specification, version 3.0 (The HDF Group), sections II.A
(superblock version 2), III.A.1 (version 1 B-trees), IV.A.1.b (version 2 object headers and
continuation blocks), IV.A.2 (header messages: dataspace, link info, datatype, fill value,
link, data layout, filter pipeline, attribute, object header continuation, group info) and
VII.B (fixed array index, read in files of format 1).
Checksums are Bob Jenkins' ``lookup3`` ``hashlittle`` with seed 0, as the spec requires.

Why write bytes by hand instead of calling libhdf5 through h5py:

* speed: libhdf5 spends 25-70 µs on every object it creates, and Minari's layout needs about
  thirty objects per episode (a group, its datasets, the infos group ...). A STEM vector env of
  64 rows ends about one episode per step of ~55 µs, so libhdf5 alone would cost several times
  the simulation. Here an episode is a template of pre-encoded object headers in which only
  lengths and addresses change, patched and checksummed by one numba call.
* durability: libhdf5 rewrites metadata in place (B-tree nodes, heaps, the superblock), so a
  process killed mid-write can leave a file that no longer opens. This writer only appends.
  New data and headers go past every committed byte; an episode becomes visible when a
  24-byte tail of the previous root-link block is rewritten in one ``pwrite`` that never
  crosses a page, which a SIGKILL cannot tear. A crash therefore leaves the last committed
  state plus unreferenced bytes, which every HDF5 reader ignores.

What is written: superblock v2; version 2 object headers (``OHDR``) whose chunk 0 and every
continuation block (``OCHK``) end in a reserved NIL message; groups in compact ("new style")
link storage; contiguous datasets; chunked datasets with the deflate filter in a version 3
layout indexed by a version 1 B-tree (``TREE``), which HDF5 1.8 and pure-Python readers such as
pyfive read (format 1 files used a version 4 layout with a fixed array, ``FAHD``/``FADB``, which
needs HDF5 1.10); scalar and 1-D numeric attributes. Every structure is HDF5 1.8's. The reader
below parses exactly this subset; :mod:`twinloop.datasets._hdf5_read` reads what other writers
add.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

from twinloop.core.jit import njit

SIGNATURE = b"\x89HDF\r\n\x1a\n"
UNDEF = 0xFFFFFFFFFFFFFFFF
SUPERBLOCK_SIZE = 48
PAGE_BYTES = 4096

# message types
MSG_NIL = 0x00
MSG_DATASPACE = 0x01
MSG_LINK_INFO = 0x02
MSG_DATATYPE = 0x03
MSG_FILL = 0x05
MSG_LINK = 0x06
MSG_LAYOUT = 0x08
MSG_GROUP_INFO = 0x0A
MSG_FILTERS = 0x0B
MSG_ATTRIBUTE = 0x0C
MSG_CONTINUATION = 0x10

#: A reserved NIL message (4-byte header + 16 bytes) and the 4-byte checksum after it: the
#: tail of every header chunk, later rewritten into a continuation message.
TAIL_BYTES = 24
_MSG_HEADER = 4  # type (1), size (2), flags (1); creation order is never tracked


# --- checksum ---------------------------------------------------------------------------------
M32 = 0xFFFFFFFF


@njit(inline="always", error_model="python")
def _rot(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & M32


@njit(inline="always", error_model="python")
def _word(buf: np.ndarray, k: int) -> int:
    return (
        np.int64(buf[k])
        | (np.int64(buf[k + 1]) << 8)
        | (np.int64(buf[k + 2]) << 16)
        | (np.int64(buf[k + 3]) << 24)
    )


@njit(error_model="python")
def lookup3(buf: np.ndarray, start: int, length: int) -> int:
    """Jenkins ``hashlittle`` (lookup3.c, 2006) over ``buf[start:start+length]``, seed 0.

    Arithmetic is done in 64-bit integers and masked to 32 bits after every step (numba
    promotes 32-bit integers, so wrapping must be explicit).
    """
    a = np.int64((0xDEADBEEF + length) & M32)
    b = a
    c = a
    k = start
    n = length
    while n > 12:
        a = (a + _word(buf, k)) & M32
        b = (b + _word(buf, k + 4)) & M32
        c = (c + _word(buf, k + 8)) & M32
        a = ((a - c) & M32) ^ _rot(c, 4)
        c = (c + b) & M32
        b = ((b - a) & M32) ^ _rot(a, 6)
        a = (a + c) & M32
        c = ((c - b) & M32) ^ _rot(b, 8)
        b = (b + a) & M32
        a = ((a - c) & M32) ^ _rot(c, 16)
        c = (c + b) & M32
        b = ((b - a) & M32) ^ _rot(a, 19)
        a = (a + c) & M32
        c = ((c - b) & M32) ^ _rot(b, 4)
        b = (b + a) & M32
        n -= 12
        k += 12
    if n == 0:
        return c
    # the last block (1-12 bytes) affects all 32 bits of c
    tail = np.zeros(12, dtype=np.int64)
    for q in range(n):
        tail[q] = buf[k + q]
    a = (a + (tail[0] | (tail[1] << 8) | (tail[2] << 16) | (tail[3] << 24))) & M32
    b = (b + (tail[4] | (tail[5] << 8) | (tail[6] << 16) | (tail[7] << 24))) & M32
    c = (c + (tail[8] | (tail[9] << 8) | (tail[10] << 16) | (tail[11] << 24))) & M32
    c = (c ^ b) & M32
    c = (c - _rot(b, 14)) & M32
    a = (a ^ c) & M32
    a = (a - _rot(c, 11)) & M32
    b = (b ^ a) & M32
    b = (b - _rot(a, 25)) & M32
    c = (c ^ b) & M32
    c = (c - _rot(b, 16)) & M32
    a = (a ^ c) & M32
    a = (a - _rot(c, 4)) & M32
    b = (b ^ a) & M32
    b = (b - _rot(a, 14)) & M32
    c = (c ^ b) & M32
    c = (c - _rot(b, 24)) & M32
    return c


def checksum(data: bytes | bytearray | memoryview | np.ndarray) -> int:
    """The HDF5 metadata checksum of ``data``."""
    arr = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data
    return int(lookup3(arr, 0, arr.size))


@njit(error_model="python")
def seal(buf: np.ndarray, start: int, length: int) -> None:
    """Write the checksum of ``buf[start:start+length]`` into the 4 bytes that follow."""
    c = lookup3(buf, start, length)
    p = start + length
    buf[p] = c & 0xFF
    buf[p + 1] = (c >> 8) & 0xFF
    buf[p + 2] = (c >> 16) & 0xFF
    buf[p + 3] = (c >> 24) & 0xFF


# --- superblock -------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Superblock:
    """The fields of a version 2/3 superblock that a writer must keep when rewriting it.

    Attributes:
        version: 2 or 3.
        flags: File consistency flags (version 3: SWMR write access).
        base: Base address (0 for files twinloop writes).
        extension: Superblock extension's object header, or ``UNDEF``.
        eoa: End-of-file address: every structure of the file lies before it.
        root: The root group's object header.
    """

    version: int
    flags: int
    base: int
    extension: int
    eoa: int
    root: int


def superblock(eoa: int, root_address: int, extension: int = UNDEF, version: int = 2) -> bytes:
    """A version 2 (or 3) superblock (48 bytes) with 8-byte offsets and lengths."""
    body = (
        SIGNATURE
        + struct.pack("<BBBB", version, 8, 8, 0)
        + struct.pack("<QQQQ", 0, extension, eoa, root_address)
    )
    return body + struct.pack("<I", checksum(body))


def read_superblock(data: bytes) -> Superblock:
    """Decode a version 2/3 superblock; ``ValueError`` if it is not one."""
    if len(data) < SUPERBLOCK_SIZE or data[:8] != SIGNATURE:
        raise ValueError("no HDF5 signature at offset 0")
    version, size_off, size_len, flags = data[8], data[9], data[10], data[11]
    if version not in (2, 3) or size_off != 8 or size_len != 8:
        raise ValueError(f"unsupported superblock (version {version}, offsets {size_off} bytes)")
    if struct.unpack_from("<I", data, 44)[0] != checksum(data[:44]):
        raise ValueError("superblock checksum mismatch")
    base, ext, eof, root = struct.unpack_from("<QQQQ", data, 12)
    return Superblock(version, flags, base, ext, eof, root)


def parse_superblock(data: bytes) -> tuple[int, int]:
    """``(eof, root_address)`` of a version 2/3 superblock; ``ValueError`` if it is not one."""
    sb = read_superblock(data)
    return sb.eoa, sb.root


#: Bytes of the mark that ends a writer's preallocated space (see :func:`prealloc_mark`).
PREALLOC_MARK_BYTES = 32


def prealloc_mark(eoa: int) -> bytes:
    """The 32 bytes twinloop's writer leaves at the end of space it preallocated up to ``eoa``.

    Not an HDF5 structure: unreferenced bytes every HDF5 reader ignores. A signature, the end
    address and a checksum, so that a stray match is practically impossible.
    """
    body = b"TWINLOOP-PREALLOC" + bytes(3) + struct.pack("<Q", eoa)
    return body + struct.pack("<I", checksum(body))


# --- datatypes --------------------------------------------------------------------------------
def datatype(dtype: np.dtype) -> bytes:
    """The datatype message body for a little-endian numpy dtype (bool as h5py's enum)."""
    dtype = np.dtype(dtype)
    if dtype.kind == "b":
        base = datatype(np.dtype(np.int8))
        names = b"FALSE\0\0\0" + b"TRUE\0\0\0\0"  # version 1: names padded to 8 bytes
        return struct.pack("<B3sI", 0x18, (2).to_bytes(3, "little"), 1) + base + names + b"\0\1"
    if dtype.kind in "iu":
        bits = 0x08 if dtype.kind == "i" else 0x00
        return struct.pack("<BBBBIHH", 0x10, bits, 0, 0, dtype.itemsize, 0, 8 * dtype.itemsize)
    if dtype.kind == "f":
        layout = {2: (15, 10, 5, 10, 15), 4: (31, 23, 8, 23, 127), 8: (63, 52, 11, 52, 1023)}
        sign, exp_loc, exp_size, mant_size, bias = layout[dtype.itemsize]
        return struct.pack(
            "<BBBBIHHBBBBI",
            0x11,
            0x20,
            sign,
            0,
            dtype.itemsize,
            0,
            8 * dtype.itemsize,
            exp_loc,
            exp_size,
            0,
            mant_size,
            bias,
        )
    if dtype.kind == "S":
        # fixed-length, null-padded, UTF-8
        return struct.pack("<BBBBI", 0x13, 0x11, 0, 0, dtype.itemsize)
    raise TypeError(f"no HDF5 datatype for numpy dtype {dtype}")


def parse_datatype(data: bytes, pos: int = 0) -> tuple[np.dtype, int]:
    """Decode a datatype message at ``pos``; return ``(numpy dtype, bytes consumed)``."""
    cls = data[pos] & 0x0F
    version = data[pos] >> 4
    bits = data[pos + 1] | (data[pos + 2] << 8) | (data[pos + 3] << 16)
    size = struct.unpack_from("<I", data, pos + 4)[0]
    if cls == 0:
        if bits & 0x01:
            raise ValueError("big-endian integers are not supported")
        return np.dtype(f"<{'i' if bits & 0x08 else 'u'}{size}"), 12
    if cls == 1:
        if bits & 0x01:
            raise ValueError("big-endian floats are not supported")
        return np.dtype(f"<f{size}"), 20
    if cls == 3:
        return np.dtype(f"S{size}"), 8
    if cls == 8:
        base, used = parse_datatype(data, pos + 8)
        n = bits & 0xFFFF
        p = pos + 8 + used
        names = []
        for _ in range(n):
            end = data.index(b"\0", p)
            names.append(data[p:end])
            p = end + 1
            if version < 3:
                p = pos + 8 + used + ((p - (pos + 8 + used) + 7) // 8) * 8
        p += n * base.itemsize
        if sorted(names) == [b"FALSE", b"TRUE"] and base.itemsize == 1:
            return np.dtype(np.bool_), p - pos
        return base, p - pos
    raise ValueError(f"unsupported HDF5 datatype class {cls}")


# --- messages ---------------------------------------------------------------------------------
def dataspace(dims: Sequence[int]) -> bytes:
    """Dataspace message (version 2): scalar for ``()``, simple otherwise, no max dims."""
    if not dims:
        return struct.pack("<BBBB", 2, 0, 0, 0)
    return struct.pack("<BBBB", 2, len(dims), 0, 1) + struct.pack(f"<{len(dims)}Q", *dims)


def parse_dataspace(data: bytes, pos: int = 0) -> tuple[tuple[int, ...], int]:
    """Decode a dataspace message; return ``(dims, bytes consumed)``."""
    version, rank, flags = data[pos], data[pos + 1], data[pos + 2]
    p = pos + (4 if version == 2 else 8)
    dims = struct.unpack_from(f"<{rank}Q", data, p)
    used = p - pos + 8 * rank * (2 if flags & 1 else 1)
    return tuple(int(d) for d in dims), used


FILL_LATE = struct.pack("<BB", 3, 0x0A)  # allocated late, fill written if set (h5py's default)
FILL_INCREMENTAL = struct.pack("<BB", 3, 0x0B)  # chunked datasets


def layout_contiguous(address: int, size: int) -> bytes:
    """Data layout message (version 3), contiguous storage."""
    return struct.pack("<BBQQ", 3, 1, address, size)


def filter_deflate(level: int) -> bytes:
    """Filter pipeline message (version 2): deflate at ``level``, marked optional."""
    return struct.pack("<BBHHHI", 2, 1, 1, 1, 1, level)


LINK_INFO = struct.pack("<BBQQ", 0, 0, UNDEF, UNDEF)
#: Most links a group may keep in its header before libhdf5 moves them all into dense
#: storage. Without a stated value libhdf5 assumes 8, so the first link another writer added
#: to a root of thousands of compact links converted it.
MAX_COMPACT = 0xFFFF
#: Group info message (version 0) stating the link phase change values: compact up to
#: MAX_COMPACT links; libhdf5 never converts such a group back and forth for fewer. (The
#: attribute phase change values are not stated: pure-Python readers such as pyfive refuse
#: object headers that carry them; libhdf5's dense attributes are read in any case.)
GROUP_INFO = struct.pack("<BBHH", 0, 0x01, MAX_COMPACT, MAX_COMPACT)


def link(name: str, address: int) -> bytes:
    """Link message (version 1): a hard link called ``name`` to the header at ``address``."""
    raw = name.encode("utf-8")
    if not 0 < len(raw) < 256:
        raise ValueError(f"link name {name!r} must be 1-255 bytes long")
    return struct.pack("<BBB", 1, 0, len(raw)) + raw + struct.pack("<Q", address)


def attribute(name: str, value: np.ndarray) -> tuple[bytes, int]:
    """Attribute message (version 3); returns ``(body, offset of the data within it)``."""
    raw = name.encode("utf-8") + b"\0"
    dt = datatype(value.dtype)
    ds = dataspace(value.shape)
    head = struct.pack("<BBHHHB", 3, 0, len(raw), len(dt), len(ds), 1) + raw + dt + ds
    return head + np.ascontiguousarray(value).tobytes(), len(head)


def continuation(address: int, length: int) -> bytes:
    """Object header continuation message body."""
    return struct.pack("<QQ", address, length)


def message(kind: int, body: bytes, flags: int = 0) -> bytes:
    """One header message (4-byte prefix + body)."""
    return struct.pack("<BHB", kind, len(body), flags) + body


RESERVED_TAIL = message(MSG_NIL, bytes(16))


# --- header assembly with patch points ---------------------------------------------------------
@dataclasses.dataclass
class Patch:
    """An 8-byte field of a template to fill per episode.

    Attributes:
        offset: Byte offset within the template.
        kind: One of the ``P_*`` codes of :mod:`twinloop.datasets._episode`.
        arg: The kind's argument (a dataset index, a header offset, a value index).
    """

    offset: int
    kind: int
    arg: int


class HeaderBuilder:
    """Assemble a version 2 object header (chunk 0) from messages, tracking patch points.

    A reserved NIL message plus the checksum always end the chunk, so the header can later be
    continued by rewriting its last 24 bytes.
    """

    def __init__(self) -> None:
        """Start with no messages."""
        self._parts: list[bytes] = []
        self._patches: list[tuple[int, int, int]] = []  # (offset within messages, kind, arg)
        self._size = 0

    def add(self, kind: int, body: bytes, flags: int = 0, patches: Sequence[tuple] = ()) -> None:
        """Append a message; ``patches`` are ``(offset in body, kind, arg)``."""
        for off, pk, arg in patches:
            self._patches.append((self._size + _MSG_HEADER + off, pk, arg))
        msg = message(kind, body, flags)
        self._parts.append(msg)
        self._size += len(msg)

    def build(self, reserve_tail: bool = True) -> tuple[bytes, list[Patch], int]:
        """Return ``(bytes, patches relative to the header start, checksummed length)``."""
        body = b"".join(self._parts) + (RESERVED_TAIL if reserve_tail else b"")
        prefix = b"OHDR" + struct.pack("<BBI", 2, 0x02, len(body))  # 4-byte chunk 0 size
        raw = prefix + body
        patches = [Patch(len(prefix) + off, kind, arg) for off, kind, arg in self._patches]
        return raw + b"\0\0\0\0", patches, len(raw)


def continuation_block(messages: Sequence[bytes]) -> bytes:
    """An ``OCHK`` block holding ``messages`` and a reserved tail, checksummed."""
    raw = b"OCHK" + b"".join(messages) + RESERVED_TAIL
    return raw + struct.pack("<I", checksum(raw))


def continued_tail(chunk: bytes | bytearray, address: int, length: int) -> bytes:
    """The last 24 bytes of ``chunk`` once its reserved NIL points at a new block."""
    body = bytearray(chunk[:-4])
    body[-20:] = message(MSG_CONTINUATION, continuation(address, length))
    return bytes(body[-20:]) + struct.pack("<I", checksum(body))


# --- version 1 B-tree chunk index (chunked, filtered; readable by HDF5 1.8 and pyfive) ---------
#: Entries per node of a chunk B-tree: 2K with K = 32, libhdf5's "indexed storage internal
#: node K" for files whose superblock (version 2) does not store it (spec II.A, III.A.1).
BTREE_TWO_K = 64


def layout_btree(chunk_dims: Sequence[int], itemsize: int, address: int) -> bytes:
    """Data layout message (version 3), chunked, indexed by a version 1 B-tree at ``address``.

    Version 3 layouts are what HDF5 1.8 writes and what every reader reads (the version 4
    layout with a fixed array index needs HDF5 1.10; pyfive reads no version 4 layout).
    """
    dims = [*chunk_dims, itemsize]
    return struct.pack("<BBBQ", 3, 2, len(dims), address) + struct.pack(f"<{len(dims)}I", *dims)


def btree_node_bytes(rank: int) -> int:
    """Size of one chunk B-tree node of a dataset of ``rank`` dimensions (allocated in full)."""
    key = 8 + 8 * (rank + 1)
    return 24 + (BTREE_TWO_K + 1) * key + BTREE_TWO_K * 8


def chunk_btree(
    addresses: np.ndarray, sizes: np.ndarray, rank: int, chunk_rows: int, at: int
) -> tuple[bytes, int]:
    """Version 1 B-tree (node type 1) over chunks ``k`` at row ``k * chunk_rows``; at ``at``.

    Each key holds the chunk's stored size, its filter mask (0) and its offset (row, then 0
    for the other dimensions and for the element "dimension"); the last key of a node is the
    first offset past its chunks. Leaves come first, each level after the one below, the root
    last; nodes are padded to the full node size libhdf5 reads.

    Returns:
        ``(bytes of every node, address of the root)``.
    """
    node_bytes = btree_node_bytes(rank)
    n_off = rank + 1

    def key(nbytes: int, row: int) -> bytes:
        return struct.pack("<II", nbytes, 0) + struct.pack(f"<{n_off}Q", row, *([0] * rank))

    # (left key, child address, first row, end row) per entry of the level being built
    level_entries = [
        (
            key(int(sizes[k]), k * chunk_rows),
            int(addresses[k]),
            k * chunk_rows,
            (k + 1) * chunk_rows,
        )
        for k in range(addresses.size)
    ]
    out = bytearray()
    level = 0
    while True:
        groups = [
            level_entries[i : i + BTREE_TWO_K] for i in range(0, len(level_entries), BTREE_TWO_K)
        ]
        first_at = at + len(out)
        parents = []
        for g, entries in enumerate(groups):
            node_at = first_at + g * node_bytes
            left = first_at + (g - 1) * node_bytes if g > 0 else UNDEF
            right = first_at + (g + 1) * node_bytes if g + 1 < len(groups) else UNDEF
            raw = b"TREE" + struct.pack("<BBHQQ", 1, level, len(entries), left, right)
            for k_bytes, child, _, _ in entries:
                raw += k_bytes + struct.pack("<Q", child)
            end_row = entries[-1][3]
            raw += key(0, end_row)
            out += raw + bytes(node_bytes - len(raw))
            parents.append((entries[0][0], node_at, entries[0][2], end_row))
        if len(parents) == 1:
            return bytes(out), parents[0][1]
        level_entries = parents
        level += 1


def read_chunk_btree(read: Any, address: int, rank: int, limit: int) -> np.ndarray:
    """``(n_chunks, 2)`` array of (address, stored size) of a chunk B-tree, by chunk offset."""
    key_bytes = 8 + 8 * (rank + 1)
    rows: list[tuple[int, int, int]] = []
    stack = [address]
    seen = 0
    while stack:
        node = stack.pop()
        seen += 1
        if seen > 1_000_000 or not 0 <= node < limit:
            raise FormatError(f"chunk B-tree node at offset {node} is out of range")
        head = read(node, 24)
        if len(head) < 24 or head[:4] != b"TREE" or head[4] != 1:
            raise FormatError(f"no chunk B-tree node at offset {node}")
        level, used = head[5], struct.unpack_from("<H", head, 6)[0]
        if used > BTREE_TWO_K:
            raise FormatError(f"chunk B-tree node at offset {node} holds {used} entries")
        body = read(node + 24, used * (key_bytes + 8) + key_bytes)
        if len(body) < used * (key_bytes + 8) + key_bytes:
            raise FormatError(f"chunk B-tree node at offset {node} is truncated")
        children = []
        for k in range(used):
            p = k * (key_bytes + 8)
            nbytes = struct.unpack_from("<I", body, p)[0]
            row = struct.unpack_from("<Q", body, p + 8)[0]
            child = struct.unpack_from("<Q", body, p + key_bytes)[0]
            if child >= limit or (level == 0 and child + nbytes > limit):
                raise FormatError(f"chunk B-tree node at offset {node} points past the file")
            children.append((row, child, nbytes))
        if level == 0:
            rows.extend((row, child, nbytes) for row, child, nbytes in children)
        else:
            stack.extend(child for _, child, _ in reversed(children))
    rows.sort()
    out = np.zeros((len(rows), 2), dtype=np.int64)
    for k, (_, child, nbytes) in enumerate(rows):
        out[k] = child, nbytes
    return out


# --- parsing ----------------------------------------------------------------------------------
@dataclasses.dataclass
class Message:
    """A decoded header message: its type, body and absolute body address."""

    kind: int
    body: bytes
    address: int


class FormatError(ValueError):
    """Bytes that should hold an HDF5 structure do not (bad signature, checksum or range)."""


def read_chunk(
    read: Any, address: int, length: int | None, limit: int
) -> tuple[list[Message], list[tuple[int, int]], bytes]:
    """Parse an ``OHDR`` chunk 0 (``length`` None) or an ``OCHK`` block.

    Args:
        read: ``read(address, n) -> bytes``.
        address: Where the chunk starts.
        length: Block length for ``OCHK`` (from the continuation message).
        limit: The file's usable size; structures past it are truncated.

    Returns:
        ``(messages, continuations [(address, length)], raw chunk bytes)``.

    Raises:
        FormatError: Signature, checksum or bounds are wrong.
    """
    if length is None:
        head = read(address, 12)
        if len(head) < 6 or head[:4] != b"OHDR" or head[4] != 2:
            raise FormatError(f"no object header at offset {address}")
        flags = head[5]
        width = 1 << (flags & 0x03)
        pos = 6 + (16 if flags & 0x20 else 0) + (4 if flags & 0x10 else 0)
        size = int.from_bytes(head[pos : pos + width], "little") if len(head) >= pos + width else 0
        if len(head) < pos + width:
            head = read(address, pos + width)
            size = int.from_bytes(head[pos : pos + width], "little")
        start = pos + width
        total = start + size + 4
        creation_order = bool(flags & 0x04)
    else:
        start, total, creation_order = 4, length, False
    if address + total > limit:
        raise FormatError(f"header at offset {address} ({total} bytes) runs past the end {limit}")
    raw = read(address, total)
    if len(raw) < total:
        raise FormatError(f"header at offset {address} is truncated")
    if length is not None and raw[:4] != b"OCHK":
        raise FormatError(f"no continuation block at offset {address}")
    if struct.unpack_from("<I", raw, total - 4)[0] != checksum(raw[: total - 4]):
        raise FormatError(f"header checksum mismatch at offset {address}")
    messages: list[Message] = []
    conts: list[tuple[int, int]] = []
    p = start
    end = total - 4
    hdr = _MSG_HEADER + (2 if creation_order else 0)
    while p + hdr <= end:
        kind, size = raw[p], struct.unpack_from("<H", raw, p + 1)[0]
        body = raw[p + hdr : p + hdr + size]
        if kind == MSG_CONTINUATION:
            conts.append(struct.unpack_from("<QQ", body))
        elif kind != MSG_NIL:
            messages.append(Message(kind, body, address + p + hdr))
        p += hdr + size
    return messages, conts, raw


def read_header(read: Any, address: int, limit: int) -> list[Message]:
    """All messages of the object header at ``address``, following continuations."""
    out: list[Message] = []
    msgs, pending, _ = read_chunk(read, address, None, limit)
    out.extend(msgs)
    seen = 0
    while pending:
        seen += 1
        if seen > 10_000_000:
            raise FormatError(f"continuation loop in header at offset {address}")
        addr, length = pending.pop(0)
        msgs, more, _ = read_chunk(read, addr, length, limit)
        out.extend(msgs)
        pending = more + pending
    return out


def parse_link(body: bytes) -> tuple[str, int | None]:
    """``(name, hard link address or None)`` of a link message."""
    flags = body[1]
    p = 2
    link_type = 0
    if flags & 0x08:
        link_type = body[p]
        p += 1
    if flags & 0x04:
        p += 8
    if flags & 0x10:
        p += 1
    width = 1 << (flags & 0x03)
    n = int.from_bytes(body[p : p + width], "little")
    p += width
    name = body[p : p + n].decode("utf-8")
    p += n
    if link_type != 0:
        return name, None
    return name, struct.unpack_from("<Q", body, p)[0]


def attribute_parts(body: bytes) -> tuple[str, int, tuple[int, ...], int]:
    """``(name, datatype offset, dims, data offset)`` of an attribute message (versions 1-3).

    Version 1 pads the name, datatype and dataspace to 8 bytes; versions 2 and 3 do not
    (version 3 adds a name character set byte).
    """
    version = body[0]
    name_size, dt_size, ds_size = struct.unpack_from("<HHH", body, 2)
    pad = (lambda n: (n + 7) // 8 * 8) if version == 1 else (lambda n: n)
    p = 8 if version in (1, 2) else 9
    name = body[p : p + name_size - 1].decode("utf-8")
    dt_at = p + pad(name_size)
    ds_at = dt_at + pad(dt_size)
    dims, _ = parse_dataspace(body, ds_at)
    return name, dt_at, dims, ds_at + pad(ds_size)


def parse_attribute(body: bytes) -> tuple[str, np.ndarray]:
    """``(name, value)`` of an attribute message (versions 1-3, numeric or string)."""
    name, dt_at, dims, p = attribute_parts(body)
    dtype, _ = parse_datatype(body, dt_at)
    count = int(np.prod(dims, dtype=np.int64)) if dims else 1
    value = np.frombuffer(body, dtype=dtype, count=count, offset=p).reshape(dims)
    return name, value


@dataclasses.dataclass
class DatasetInfo:
    """Where a dataset's bytes are and how to read them.

    Attributes:
        dtype: Element type.
        shape: Dataset shape.
        address: Contiguous data address, or the chunk index's address if chunked.
        nbytes: Contiguous data size (0 for chunked).
        chunked: Chunked + deflate (a B-tree or, in format 1 files, a fixed array index).
        chunk_dims: Chunk shape (chunked only).
    """

    dtype: np.dtype
    shape: tuple[int, ...]
    address: int
    nbytes: int
    chunked: bool = False
    chunk_dims: tuple[int, ...] = ()


def parse_dataset(messages: Sequence[Message]) -> DatasetInfo:
    """Describe a dataset from its header messages."""
    dtype = shape = None
    address, nbytes, chunked, chunk_dims = UNDEF, 0, False, ()
    for m in messages:
        if m.kind == MSG_DATATYPE:
            dtype, _ = parse_datatype(m.body)
        elif m.kind == MSG_DATASPACE:
            shape, _ = parse_dataspace(m.body)
        elif m.kind == MSG_LAYOUT:
            version, cls = m.body[0], m.body[1]
            if cls == 1 and version == 3:
                address, nbytes = struct.unpack_from("<QQ", m.body, 2)
            elif cls == 2 and version == 3:
                ndims = m.body[2]
                address = struct.unpack_from("<Q", m.body, 3)[0]
                dims = struct.unpack_from(f"<{ndims}I", m.body, 11)
                chunked, chunk_dims = True, tuple(int(d) for d in dims[:-1])
            elif cls == 2 and version >= 4:
                ndims, width = m.body[3], m.body[4]
                dims = [
                    int.from_bytes(m.body[5 + k * width : 5 + (k + 1) * width], "little")
                    for k in range(ndims)
                ]
                p = 5 + ndims * width
                if m.body[p] != 3:
                    raise FormatError(f"chunk index type {m.body[p]} is not a fixed array")
                address = struct.unpack_from("<Q", m.body, p + 2)[0]
                chunked, chunk_dims = True, tuple(dims[:-1])
            else:
                raise FormatError(f"unsupported layout (version {version}, class {cls})")
    if dtype is None or shape is None:
        raise FormatError("dataset header lacks a datatype or dataspace")
    return DatasetInfo(dtype, shape, int(address), int(nbytes), chunked, chunk_dims)


def read_fixed_array(read: Any, address: int, chunk_bytes: int, limit: int) -> np.ndarray:
    """``(n_chunks, 2)`` array of (address, stored size) from the fixed array at ``address``."""
    head = read(address, 28)
    if len(head) < 28 or head[:4] != b"FAHD":
        raise FormatError(f"no fixed array header at offset {address}")
    if struct.unpack_from("<I", head, 24)[0] != checksum(head[:24]):
        raise FormatError(f"fixed array header checksum mismatch at offset {address}")
    _v, _client, entry, bits, n, dblk = struct.unpack_from("<BBBBQQ", head, 4)
    if n > (1 << bits):
        raise FormatError(f"paged fixed array at offset {address} is not supported")
    size = 14 + n * entry + 4
    if dblk + size > limit:
        raise FormatError(f"fixed array data block at offset {dblk} runs past the end {limit}")
    raw = read(dblk, size)
    if raw[:4] != b"FADB" or struct.unpack_from("<I", raw, size - 4)[0] != checksum(raw[:-4]):
        raise FormatError(f"fixed array data block at offset {dblk} is corrupt")
    rows = np.frombuffer(raw, dtype=np.uint8, count=n * entry, offset=14).reshape(n, entry)
    width = entry - 12
    out = np.zeros((n, 2), dtype=np.int64)
    out[:, 0] = rows[:, :8].copy().view("<u8").ravel().astype(np.int64)
    sizes = np.zeros((n, 8), dtype=np.uint8)
    sizes[:, :width] = rows[:, 8 : 8 + width]
    out[:, 1] = sizes.view("<u8").ravel().astype(np.int64)
    return out
