"""Episode encoding: a per-schema template of HDF5 headers, a step buffer, one numba fill call.

Data flow of a commit::

    StepBuffer rows (uint8, time x env x row bytes; typed views per field)
        --fill_episodes (numba)--> for each ended episode: every field's rows gathered into one
        contiguous block, then the schema's header template copied, its lengths, addresses and
        attribute values patched, and every header checksummed
        --writer--> one pwrite of the blocks + a root link block, then the 24-byte tail rewrite
        that makes them visible

Everything that differs between two episodes of one schema is an 8-byte field of the
template (``Patch``), so the per-episode cost is a memory copy and a few checksums.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from twinloop.core.jit import njit
from twinloop.datasets import _hdf5 as H
from twinloop.datasets._hash import xxh64
from twinloop.datasets.schema import (
    SOURCE_REWARD,
    SOURCE_WALL,
    FieldSpec,
)

# patch kinds
P_DIM0 = 0  # rows of dataset arg
P_ADDR = 1  # data (or fixed array) address of dataset arg
P_SIZE = 2  # data bytes of dataset arg
P_HDR = 3  # absolute address of the header at template offset arg
P_VALUE = 4  # per-episode value arg (int64, or float64 bits)
P_HASH = 5  # XXH64 of dataset arg's stored bytes (arg = n_fields: the dataset headers)

# per-episode values
V_ID = 0
V_SEED = 1
V_STEPS = 2
V_ENV = 3
V_RETURN = 4
V_WALL0 = 5
V_WALL1 = 6
N_VALUES = 7

#: Episode attributes: (name, value index, dtype). ``id``, ``seed`` and ``total_steps`` are
#: Minari's; the others serve filters and ``twinloop data info``.
EPISODE_ATTRS = (
    ("id", V_ID, np.int64),
    ("seed", V_SEED, np.int64),
    ("total_steps", V_STEPS, np.int64),
    ("env_index", V_ENV, np.int64),
    ("episode_return", V_RETURN, np.float64),
    ("wall_time_start_s", V_WALL0, np.float64),
    ("wall_time_end_s", V_WALL1, np.float64),
)
#: Attribute listing every dataset's (address, bytes): lets a reader index an episode from
#: one header instead of thirty.
INDEX_ATTR = "twinloop_index"
#: Attribute holding the XXH64 (:mod:`twinloop.datasets._hash`) of every dataset's stored bytes
#: in field order, then of the episode's dataset and subgroup headers, then those headers'
#: length in bytes (they end where the episode group's header starts). Format version 2.
CHECKSUM_ATTR = "twinloop_checksums"


def _align8(n: int) -> int:
    return (n + 7) & ~7


@dataclasses.dataclass
class Template:
    """Pre-encoded headers of one episode of a schema.

    Attributes:
        data: The header region (all object headers, 8-byte aligned).
        patch_pos: Byte offsets of 8-byte fields to fill.
        patch_kind: ``P_*`` of each patch.
        patch_arg: Argument of each patch.
        cks_start: Start of each header (checksummed from here ...).
        cks_len: ... for this many bytes; the checksum follows.
        group_rel: Offset of the episode group's header within ``data``.
    """

    data: np.ndarray
    patch_pos: np.ndarray
    patch_kind: np.ndarray
    patch_arg: np.ndarray
    cks_start: np.ndarray
    cks_len: np.ndarray
    group_rel: int


def build_template(fields: Sequence[FieldSpec]) -> Template:
    """Encode every object header of an episode with placeholders where episodes differ."""
    region = bytearray()
    patches: list[H.Patch] = []
    cks: list[tuple[int, int]] = []
    where: dict[str, int] = {}  # path -> header offset in region

    def place(raw: bytes, ps: list[H.Patch], n_cks: int) -> int:
        at = len(region)
        region.extend(raw)
        region.extend(b"\0" * (_align8(len(region)) - len(region)))
        patches.extend(H.Patch(at + p.offset, p.kind, p.arg) for p in ps)
        cks.append((at, n_cks))
        return at

    for j, f in enumerate(fields):
        hb = H.HeaderBuilder()
        hb.add(H.MSG_DATASPACE, H.dataspace((0, *f.shape)), patches=[(4, P_DIM0, j)])
        hb.add(H.MSG_DATATYPE, H.datatype(f.np_dtype), flags=1)
        if f.image:
            hb.add(H.MSG_FILL, H.FILL_INCREMENTAL, flags=1)
            hb.add(H.MSG_FILTERS, H.filter_deflate(1), flags=1)
            lay = H.layout_btree((1, *f.shape), f.np_dtype.itemsize, 0)
            hb.add(H.MSG_LAYOUT, lay, patches=[(3, P_ADDR, j)])
        else:
            hb.add(H.MSG_FILL, H.FILL_LATE, flags=1)
            hb.add(
                H.MSG_LAYOUT,
                H.layout_contiguous(0, 0),
                patches=[(2, P_ADDR, j), (10, P_SIZE, j)],
            )
        raw, ps, n = hb.build(reserve_tail=False)
        where[f.path] = place(raw, ps, n)

    # groups, deepest first, so that every child's offset is known when its parent is encoded
    groups: dict[str, list[str]] = {"": []}
    for f in fields:
        parts = f.path.split("/")
        for depth in range(len(parts)):
            parent = "/".join(parts[:depth])
            child = "/".join(parts[: depth + 1])
            groups.setdefault(parent, [])
            if child not in groups[parent]:
                groups[parent].append(child)
    for path in sorted(groups, key=lambda p: (-p.count("/") if p else 1, p)):
        hb = H.HeaderBuilder()
        hb.add(H.MSG_LINK_INFO, H.LINK_INFO)
        hb.add(H.MSG_GROUP_INFO, H.GROUP_INFO)
        for child in groups[path]:
            body = H.link(child.rsplit("/", 1)[-1], 0)
            hb.add(H.MSG_LINK, body, patches=[(len(body) - 8, P_HDR, where[child])])
        if path == "":
            for name, v, dtype in EPISODE_ATTRS:
                body, off = H.attribute(name, np.zeros((), dtype=dtype))
                hb.add(H.MSG_ATTRIBUTE, body, patches=[(off, P_VALUE, v)])
            index = np.zeros(1 + 2 * len(fields), dtype=np.int64)
            index[0] = len(fields)
            body, off = H.attribute(INDEX_ATTR, index)
            ps = []
            for j in range(len(fields)):
                ps.append((off + 8 * (1 + 2 * j), P_ADDR, j))
                ps.append((off + 8 * (2 + 2 * j), P_SIZE, j))
            hb.add(H.MSG_ATTRIBUTE, body, patches=ps)
            sums = np.zeros(len(fields) + 2, dtype=np.int64)
            sums[-1] = len(region)  # the headers before this one: where it will be placed
            body, off = H.attribute(CHECKSUM_ATTR, sums)
            ps = [(off + 8 * j, P_HASH, j) for j in range(len(fields) + 1)]
            hb.add(H.MSG_ATTRIBUTE, body, patches=ps)
        raw, ps, n = hb.build(reserve_tail=False)
        where[path] = place(raw, ps, n)
    return Template(
        data=np.frombuffer(bytes(region), dtype=np.uint8).copy(),
        patch_pos=np.array([p.offset for p in patches], dtype=np.int64),
        patch_kind=np.array([p.kind for p in patches], dtype=np.int64),
        patch_arg=np.array([p.arg for p in patches], dtype=np.int64),
        cks_start=np.array([c[0] for c in cks], dtype=np.int64),
        cks_len=np.array([c[1] for c in cks], dtype=np.int64),
        group_rel=where[""],
    )


# --- the step buffer --------------------------------------------------------------------------
class StepBuffer:
    """Rows of every field for ``n_envs`` envs, as bytes with a typed view per field.

    Row ``t`` holds, for each env, the observation-aligned fields of the observation returned
    at ``t`` (the reset's, or the step's) and the step-aligned fields of step ``t``. The
    observation of an episode's last step goes to :attr:`final` instead, because in a
    same-step auto-reset vector env row ``t`` already holds the next episode's first
    observation. When full, rows no open episode needs are dropped, or the buffer grows.

    Args:
        fields: The schema.
        n_envs: Number of envs.
        capacity: Initial number of rows.
    """

    def __init__(self, fields: Sequence[FieldSpec], n_envs: int, capacity: int = 256) -> None:
        """Lay the fields out (widest alignment first) and allocate."""
        self.fields = list(fields)
        self.n_envs = int(n_envs)
        order = sorted(range(len(fields)), key=lambda j: -min(8, fields[j].np_dtype.alignment or 1))
        self.offsets = np.zeros(len(fields), dtype=np.int64)
        off = 0
        for j in order:
            a = max(1, min(8, fields[j].np_dtype.alignment))
            off = (off + a - 1) // a * a
            self.offsets[j] = off
            off += fields[j].row_bytes
        self.row_bytes = max(8, _align8(off))
        self.nbytes_field = np.array([f.row_bytes for f in fields], dtype=np.int64)
        self.obs_aligned = np.array([f.obs_aligned for f in fields], dtype=np.bool_)
        self.image = np.array([f.image for f in fields], dtype=np.bool_)
        self.reward_word = self._word(SOURCE_REWARD)
        self.wall_word = self._word(SOURCE_WALL)
        self.t = 0
        self.start = np.zeros(self.n_envs, dtype=np.int64)
        self.final = np.zeros((self.n_envs, self.row_bytes), dtype=np.uint8)
        self.final_views = self._views(self.final[None])
        self.final_views = [v[0] for v in self.final_views]
        self._alloc(capacity)

    def _word(self, source: str) -> int:
        for j, f in enumerate(self.fields):
            if f.source == source:
                return int(self.offsets[j] // 8)
        raise ValueError(f"schema has no {source} field")

    def _views(self, data: np.ndarray) -> list[np.ndarray]:
        rows, n, rb = data.shape
        out = []
        for j, f in enumerate(self.fields):
            dt = f.np_dtype
            inner = []
            stride = dt.itemsize
            for s in reversed(f.shape):
                inner.insert(0, stride)
                stride *= s
            out.append(
                np.ndarray(
                    shape=(rows, n, *f.shape),
                    dtype=dt,
                    buffer=data,
                    offset=int(self.offsets[j]),
                    strides=(n * rb, rb, *inner),
                )
            )
        return out

    def _alloc(self, capacity: int) -> None:
        self.data = np.zeros((capacity, self.n_envs, self.row_bytes), dtype=np.uint8)
        self.views = self._views(self.data)
        self.words = self.data.view(np.float64)

    @property
    def capacity(self) -> int:
        """Rows allocated."""
        return int(self.data.shape[0])

    def advance(self) -> int:
        """Move to the next row (making room if needed) and return its index."""
        if self.t + 1 >= self.capacity:
            keep_from = int(self.start.min())
            if keep_from > self.capacity // 4:
                n = self.t + 1 - keep_from
                self.data[:n] = self.data[keep_from : self.t + 1]
                self.start -= keep_from
                self.t -= keep_from
            else:
                old = self.data
                self._alloc(2 * self.capacity)
                self.data[: old.shape[0]] = old
        self.t += 1
        return self.t


# --- the fill kernel --------------------------------------------------------------------------
@njit(error_model="python")
def _put_u64(out: np.ndarray, pos: int, value: int) -> None:
    v = np.int64(value)
    for k in range(8):
        out[pos + k] = (v >> (8 * k)) & 0xFF


# rows of the ``eps`` argument of fill_episodes
EP_ENV = 0
EP_START = 1
EP_END = 2
EP_ID = 3
EP_SEED = 4
EP_LABEL = 5
EP_FINAL = 6  # row of ``final`` holding the episode's last observation-aligned values
N_EP = 7


def pack_schema(buf: StepBuffer, tpl: Template, ext: np.ndarray) -> np.ndarray:
    """The static arrays of a schema, concatenated for one fill_episodes argument."""
    return np.concatenate(
        [
            buf.offsets,
            buf.nbytes_field,
            buf.obs_aligned.astype(np.int64),
            ext.astype(np.int64),
            tpl.patch_pos,
            tpl.patch_kind,
            tpl.patch_arg,
            tpl.cks_start,
            tpl.cks_len,
        ]
    ).astype(np.int64)


@njit(error_model="python")
def _link_block(out: np.ndarray, pos: int, ids: np.ndarray, addrs: np.ndarray) -> int:
    """Write an OCHK block linking ``episode_<ids[e]>`` -> ``addrs[e]``; return its length."""
    p = pos
    out[p : p + 4] = np.array([79, 67, 72, 75], dtype=np.uint8)  # b"OCHK"
    p += 4
    digits = np.zeros(20, dtype=np.uint8)
    for e in range(ids.shape[0]):
        v = ids[e]
        nd = 0
        while True:
            digits[nd] = 48 + v % 10
            v //= 10
            nd += 1
            if v == 0:
                break
        name_len = 8 + nd  # "episode_" + digits
        body = 3 + name_len + 8
        out[p] = H.MSG_LINK
        out[p + 1] = body & 0xFF
        out[p + 2] = body >> 8
        out[p + 3] = 0
        out[p + 4] = 1  # link message version
        out[p + 5] = 0  # flags: 1-byte name length, hard link
        out[p + 6] = name_len
        q = p + 7
        for c in (101, 112, 105, 115, 111, 100, 101, 95):  # "episode_"
            out[q] = c
            q += 1
        for k in range(nd):
            out[q] = digits[nd - 1 - k]
            q += 1
        _put_u64(out, q, addrs[e])
        p = q + 8
    # reserved tail: a NIL message of 16 bytes, then the checksum
    out[p] = H.MSG_NIL
    out[p + 1] = 16
    out[p + 2] = 0
    out[p + 3] = 0
    for k in range(16):
        out[p + 4 + k] = 0
    p += 20
    H.seal(out, pos, p - pos)
    return p + 4 - pos


@njit(error_model="python")
def continued_tail(block: np.ndarray, address: int, length: int) -> np.ndarray:
    """The new last 24 bytes of ``block`` once its reserved NIL points at ``(address, length)``."""
    n = block.shape[0]
    tmp = block.copy()
    p = n - 24
    tmp[p] = H.MSG_CONTINUATION
    tmp[p + 1] = 16
    tmp[p + 2] = 0
    tmp[p + 3] = 0
    _put_u64(tmp, p + 4, address)
    _put_u64(tmp, p + 12, length)
    H.seal(tmp, 0, n - 4)
    return tmp[p:].copy()


@njit(error_model="python")
def fill_episodes(
    ring: np.ndarray,
    final: np.ndarray,
    eps: np.ndarray,
    ext: np.ndarray,
    static: np.ndarray,
    n_fields: int,
    n_patches: int,
    n_cks: int,
    reward_word: int,
    wall_word: int,
    template: np.ndarray,
    group_rel: int,
    out: np.ndarray,
    base: int,
    result: np.ndarray,
) -> int:
    """Encode the episodes described by ``eps`` (rows ``EP_*``) into ``out``.

    Episode ``e`` reads its steps from ``ring[:, eps[EP_ENV, e]]`` and its last
    observation-aligned values from ``final[eps[EP_FINAL, e]]``. Each episode is laid out
    as: plain datasets (8-aligned), ``ext[e, 2F]`` bytes reserved
    for image regions the caller fills (their fixed-array address, size and XXH64 in
    ``ext[e, j]`` / ``ext[e, F + j]`` / ``ext[e, 2F + 1 + j]``), then the patched header
    template, whose checksum attribute receives the XXH64 of every dataset's bytes and of the
    headers before the episode group's. A root link block for all of them follows.
    ``out[0]`` is file address ``base``.

    Returns the total bytes used; ``result`` receives, per episode, the group header address
    and steps (rows 0, 1), then the block's offset and length (``result[2, 0:2]``) and the
    wall-clock span as float64 bits (``result[3, 0:2]``).
    """
    nf = n_fields
    f_off = static[0:nf]
    f_nb = static[nf : 2 * nf]
    f_obs = static[2 * nf : 3 * nf]
    f_ext = static[3 * nf : 4 * nf]
    q0 = 4 * nf
    p_pos = static[q0 : q0 + n_patches]
    p_kind = static[q0 + n_patches : q0 + 2 * n_patches]
    p_arg = static[q0 + 2 * n_patches : q0 + 3 * n_patches]
    c0 = q0 + 3 * n_patches
    c_start = static[c0 : c0 + n_cks]
    c_len = static[c0 + n_cks : c0 + 2 * n_cks]
    words = ring.view(np.int64)
    fwords = final.view(np.int64)
    fwords_f = final.view(np.float64)
    words_f = ring.view(np.float64)
    out_w = out.view(np.int64)
    n_eps = eps.shape[1]
    addr = np.zeros(nf, dtype=np.int64)
    size = np.zeros(nf, dtype=np.int64)
    values = np.zeros(N_VALUES, dtype=np.int64)
    hashes = np.zeros(nf + 1, dtype=np.uint64)
    hash_bits = hashes.view(np.int64)
    fbits = np.zeros(1, dtype=np.float64)
    ibits = fbits.view(np.int64)
    wall_lo = np.inf
    wall_hi = -np.inf
    pos = 0
    h = template.shape[0]
    for e in range(n_eps):
        env = eps[EP_ENV, e]
        fe = eps[EP_FINAL, e]
        s = eps[EP_START, e]
        t_end = eps[EP_END, e]
        n_steps = t_end - s
        for j in range(nf):
            if f_ext[j]:
                addr[j] = ext[e, j]
                size[j] = ext[e, nf + j]
                hash_bits[j] = ext[e, 2 * nf + 1 + j]
                continue
            nb = f_nb[j]
            off = f_off[j]
            addr[j] = base + pos
            r0 = s if f_obs[j] else s + 1
            if (nb & 7) == 0 and (off & 7) == 0:
                nw = nb >> 3
                ow = off >> 3
                pw = pos >> 3
                for r in range(r0, t_end + (0 if f_obs[j] else 1)):
                    for k in range(nw):
                        out_w[pw + k] = words[r, env, ow + k]
                    pw += nw
                if f_obs[j]:
                    for k in range(nw):
                        out_w[pw + k] = fwords[fe, ow + k]
                    pw += nw
                pos = pw << 3
            else:
                for r in range(r0, t_end + (0 if f_obs[j] else 1)):
                    for k in range(nb):
                        out[pos + k] = ring[r, env, off + k]
                    pos += nb
                if f_obs[j]:
                    for k in range(nb):
                        out[pos + k] = final[fe, off + k]
                    pos += nb
            size[j] = (n_steps + f_obs[j]) * nb
            hashes[j] = xxh64(out, addr[j] - base, size[j])
            pos = (pos + 7) & ~7
        pos += ext[e, 2 * nf]
        ret = 0.0
        for r in range(s + 1, t_end + 1):
            ret += words_f[r, env, reward_word]
        values[V_ID] = eps[EP_ID, e]
        values[V_SEED] = eps[EP_SEED, e]
        values[V_STEPS] = n_steps
        values[V_ENV] = eps[EP_LABEL, e]
        fbits[0] = ret
        values[V_RETURN] = ibits[0]
        w0 = words_f[s, env, wall_word]
        w1 = fwords_f[fe, wall_word]
        wall_lo = min(wall_lo, w0)
        wall_hi = max(wall_hi, w1)
        fbits[0] = w0
        values[V_WALL0] = ibits[0]
        fbits[0] = w1
        values[V_WALL1] = ibits[0]
        hdr = pos
        out[hdr : hdr + h] = template
        for q in range(n_patches):
            kind = p_kind[q]
            arg = p_arg[q]
            if kind == P_DIM0:
                v = n_steps + f_obs[arg]
            elif kind == P_ADDR:
                v = addr[arg]
            elif kind == P_SIZE:
                v = size[arg]
            elif kind == P_HDR:
                v = base + hdr + arg
            elif kind == P_HASH:
                continue  # once the headers they cover are final, below
            else:
                v = values[arg]
            _put_u64(out, hdr + p_pos[q], v)
        for q in range(n_cks):
            if c_start[q] != group_rel:
                H.seal(out, hdr + c_start[q], c_len[q])
        hashes[nf] = xxh64(out, hdr, group_rel)
        for q in range(n_patches):
            if p_kind[q] == P_HASH:
                _put_u64(out, hdr + p_pos[q], hash_bits[p_arg[q]])
        for q in range(n_cks):
            if c_start[q] == group_rel:
                H.seal(out, hdr + c_start[q], c_len[q])
        result[0, e] = base + hdr + group_rel
        result[1, e] = n_steps
        pos = hdr + h
    # the root link block, placed so that its 24-byte tail never straddles a page
    block_len = 4 + 24 + 4
    for e in range(n_eps):
        v = eps[EP_ID, e]
        nd = 1
        while v >= 10:
            v //= 10
            nd += 1
        block_len += 4 + 3 + 8 + nd + 8
    r = (base + pos + block_len) % H.PAGE_BYTES
    if 0 < r < H.TAIL_BYTES:
        for k in range(H.TAIL_BYTES - r):
            out[pos + k] = 0
        pos += H.TAIL_BYTES - r
    ids = eps[EP_ID].copy()
    n = _link_block(out, pos, ids, result[0, :n_eps].copy())
    result[2, 0] = pos
    result[2, 1] = n
    total_steps = 0
    for e in range(n_eps):
        total_steps += result[1, e]
    result[2, 2] = n_eps
    result[2, 3] = total_steps
    fbits[0] = wall_lo
    result[3, 0] = ibits[0]
    fbits[0] = wall_hi
    result[3, 1] = ibits[0]
    return pos + n


@njit(error_model="python")
def fill_ended(
    ring: np.ndarray,
    final: np.ndarray,
    ended: np.ndarray,
    record: np.ndarray,
    start: np.ndarray,
    seed: np.ndarray,
    t: int,
    next_id: int,
    eps: np.ndarray,
    ext: np.ndarray,
    static: np.ndarray,
    n_fields: int,
    n_patches: int,
    n_cks: int,
    reward_word: int,
    wall_word: int,
    template: np.ndarray,
    group_rel: int,
    out: np.ndarray,
    base: int,
    result: np.ndarray,
) -> int:
    """:func:`fill_episodes` for the rows that ``ended`` at row ``t`` and are ``record``-ed.

    Selecting the rows here saves the vector recorder a handful of numpy calls per step.
    Returns 0 (and writes nothing) when no recorded row ended.
    """
    n = 0
    for i in range(ended.shape[0]):
        if ended[i] and record[i]:
            eps[EP_ENV, n] = i
            eps[EP_START, n] = start[i]
            eps[EP_END, n] = t
            eps[EP_ID, n] = next_id + n
            eps[EP_SEED, n] = seed[i]
            eps[EP_LABEL, n] = i
            eps[EP_FINAL, n] = i
            n += 1
    if n == 0:
        result[2, 2] = 0
        return 0
    return fill_episodes(
        ring,
        final,
        eps[:, :n],
        ext,
        static,
        n_fields,
        n_patches,
        n_cks,
        reward_word,
        wall_word,
        template,
        group_rel,
        out,
        base,
        result,
    )


def plain_bytes(buf: StepBuffer, n_steps: int) -> int:
    """Bytes of the plain (non-image) datasets of an episode of ``n_steps`` steps."""
    total = 0
    for f in buf.fields:
        if not f.image:
            total += _align8((n_steps + int(f.obs_aligned)) * f.row_bytes)
    return total


_POOL_WORKERS = min(8, os.cpu_count() or 1)
_POOL: concurrent.futures.ThreadPoolExecutor | None = None


def _pool() -> concurrent.futures.ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = concurrent.futures.ThreadPoolExecutor(_POOL_WORKERS, "twinloop-deflate")
    return _POOL


def deflate(data: Any, level: int, huffman: bool = False) -> bytes:
    """One zlib stream of ``data``; ``huffman``: entropy coding only (no LZ77 matching).

    Huffman-only streams are ordinary deflate streams (every reader decodes them) and are ~2x
    faster to write; on shot-noise images they compress almost as well (1.30x vs 1.33x on
    the HAADF-like benchmark frames), on images with flat regions much worse.
    """
    if not huffman:
        return zlib.compress(data, level)
    c = zlib.compressobj(level, zlib.DEFLATED, 15, 9, zlib.Z_HUFFMAN_ONLY)
    return c.compress(data) + c.flush()


def image_region(
    frames: np.ndarray, at: int, level: int, huffman: bool = False
) -> tuple[bytes, int]:
    """Deflate each frame into its own chunk, followed by the chunks' B-tree index.

    Args:
        frames: ``(rows, *frame_shape)`` uint8.
        at: Absolute address where the region will be written.
        level: zlib level.
        huffman: Entropy coding only (see :func:`deflate`).

    Returns:
        ``(region bytes, address of the B-tree's root node)``.
    """
    n = frames.shape[0]
    flat = np.ascontiguousarray(frames).reshape(n, -1)
    if flat.nbytes >= 1 << 18 and _POOL_WORKERS > 1:
        # zlib releases the GIL: compress frames on every core
        blobs = list(_pool().map(lambda row: deflate(row, level, huffman), flat))
    else:
        blobs = [deflate(flat[i], level, huffman) for i in range(n)]
    sizes = np.array([len(b) for b in blobs], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    data = b"".join(blobs)
    tree_at = at + _align8(len(data))
    index, root = H.chunk_btree(at + offsets, sizes, frames.ndim, 1, tree_at)
    return data + b"\0" * (_align8(len(data)) - len(data)) + index, root


# --- the vector recorder's fast path: one step's output block into a ring row -----------------
#: Columns of a scatter plan row.
SC_DST = 0  # byte offset of the field in a ring row
SC_SRC = 1  # byte offset of the field's first env in the step block
SC_FIN = 2  # byte offset of its final value (final_obs / final_info), -1: none
SC_STRIDE = 3  # bytes from one env to the next in the step block
SC_BYTES = 4  # bytes per env
SC_KIND = 5  # SCATTER_* below
N_SC = 6
SCATTER_STEP = 0  # step-aligned (reward, flags): the block's value
SCATTER_OBS = 1  # observation-aligned (observations, infos): the block's value, final on ends
SCATTER_WALL = 2  # the wall clock, written by the recorder


@njit
def _scatter_field(
    dst: np.ndarray,
    dst_w: np.ndarray,
    rb: int,
    dst_off: int,
    src: np.ndarray,
    src_w: np.ndarray,
    src_off: int,
    stride: int,
    nb: int,
    rows: np.ndarray,
    all_rows: bool,
) -> None:
    """Copy ``nb`` bytes per env from ``src_off + i * stride`` to ``i * rb + dst_off``.

    Every env when ``all_rows``, else those with ``rows[i]``; by 8-byte words when offsets,
    stride and size allow.
    """
    n = rows.shape[0]
    if (dst_off & 7) == 0 and (src_off & 7) == 0 and (nb & 7) == 0 and (stride & 7) == 0:
        nw = nb >> 3
        for i in range(n):
            if all_rows or rows[i]:
                d = (i * rb + dst_off) >> 3
                s = (src_off + i * stride) >> 3
                for k in range(nw):
                    dst_w[d + k] = src_w[s + k]
    else:
        for i in range(n):
            if all_rows or rows[i]:
                d = i * rb + dst_off
                s = src_off + i * stride
                for k in range(nb):
                    dst[d + k] = src[s + k]


@njit
def scatter_step(
    block: np.ndarray,
    plan: np.ndarray,
    ring_row: np.ndarray,
    final: np.ndarray,
    terminated: np.ndarray,
    truncated: np.ndarray,
    now: float,
    ended: np.ndarray,
) -> bool:
    """Copy one vector step's outputs from the env's output ``block`` into a ring row.

    ``ring_row`` is ``(n_envs, row_bytes)`` (row ``t`` of a :class:`StepBuffer`), ``final``
    the buffer's final rows. Observation-aligned fields take the step's value (for an ended
    env: the next episode's first observation and reset info) and, for ended envs, the final
    value into ``final``. Returns whether any env ended (``ended`` receives the mask).
    """
    n = ring_row.shape[0]
    rb = ring_row.shape[1]
    flat = ring_row.reshape(n * rb)
    flat_w = flat.view(np.int64)
    fin = final.reshape(final.shape[0] * final.shape[1])
    fin_w = fin.view(np.int64)
    block_w = block.view(np.int64)
    wall = np.zeros(1, dtype=np.float64)
    wall[0] = now
    wall_w = wall.view(np.int64)
    wall_b = wall.view(np.uint8)
    any_end = False
    for i in range(n):
        e = terminated[i] or truncated[i]
        ended[i] = e
        any_end = any_end or e
    for j in range(plan.shape[0]):
        dst = plan[j, SC_DST]
        nb = plan[j, SC_BYTES]
        kind = plan[j, SC_KIND]
        if kind == SCATTER_WALL:  # one value for every env: stride 0
            _scatter_field(flat, flat_w, rb, dst, wall_b, wall_w, 0, 0, nb, ended, True)
            if any_end:
                _scatter_field(fin, fin_w, rb, dst, wall_b, wall_w, 0, 0, nb, ended, False)
            continue
        stride = plan[j, SC_STRIDE]
        src, fsrc = plan[j, SC_SRC], plan[j, SC_FIN]
        _scatter_field(flat, flat_w, rb, dst, block, block_w, src, stride, nb, ended, True)
        if kind == SCATTER_OBS and any_end:
            _scatter_field(fin, fin_w, rb, dst, block, block_w, fsrc, stride, nb, ended, False)
    return any_end
