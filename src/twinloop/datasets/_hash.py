"""XXH64: the per-dataset checksum of twinloop episodes (HDF5 keeps none on raw data).

HDF5 checksums its metadata but not the bytes of contiguous datasets, so a flipped bit in an
episode's data reads back as a wrong value in every HDF5 reader. Each episode therefore
records the XXH64 of every dataset's stored bytes (and of its dataset headers), and the
reader checks them before it returns data.

XXH64 (Yann Collet, xxHash, specification ``doc/xxhash_spec.md`` v0.1.1) is chosen for speed
(one multiply per 8 bytes on four independent lanes) and because it is a published, widely
implemented function: ``xxhash.xxh64(data).intdigest()`` in Python gives the same number.
Words are read little-endian; twinloop's writer and reader run on little-endian machines
(x86-64, arm64), as the HDF5 encoder already assumes.
"""

from __future__ import annotations

import numpy as np

from twinloop.core.jit import njit

P1 = np.uint64(0x9E3779B185EBCA87)
P2 = np.uint64(0xC2B2AE3D27D4EB4F)
P3 = np.uint64(0x165667B19E3779F9)
P4 = np.uint64(0x85EBCA77C2B2AE63)
P5 = np.uint64(0x27D4EB2F165667C5)


@njit(inline="always")
def _rotl(x: np.uint64, r: int) -> np.uint64:
    return (x << np.uint64(r)) | (x >> np.uint64(64 - r))


@njit(inline="always")
def _u64(buf: np.ndarray, p: int) -> np.uint64:
    v = np.uint64(0)
    for k in range(8):
        v |= np.uint64(buf[p + k]) << np.uint64(8 * k)
    return v


@njit(inline="always")
def _round(acc: np.uint64, lane: np.uint64) -> np.uint64:
    acc = acc + lane * P2
    acc = _rotl(acc, 31)
    return acc * P1


@njit(inline="always")
def _merge(acc: np.uint64, v: np.uint64) -> np.uint64:
    acc = acc ^ _round(np.uint64(0), v)
    return acc * P1 + P4


@njit
def xxh64(buf: np.ndarray, start: int, length: int) -> np.uint64:
    """XXH64 (seed 0) of ``buf[start:start+length]`` (``buf`` is uint8)."""
    p = start
    end = start + length
    if length >= 32:
        v1 = P1 + P2
        v2 = P2
        v3 = np.uint64(0)
        v4 = np.uint64(0) - P1
        limit = end - 32
        if (p & 7) == 0:  # aligned: read the lanes as words (little-endian machines)
            words = buf[: (end >> 3) << 3].view(np.uint64)
            while p <= limit:
                q = p >> 3
                v1 = _round(v1, words[q])
                v2 = _round(v2, words[q + 1])
                v3 = _round(v3, words[q + 2])
                v4 = _round(v4, words[q + 3])
                p += 32
        while p <= limit:
            v1 = _round(v1, _u64(buf, p))
            v2 = _round(v2, _u64(buf, p + 8))
            v3 = _round(v3, _u64(buf, p + 16))
            v4 = _round(v4, _u64(buf, p + 24))
            p += 32
        h = _rotl(v1, 1) + _rotl(v2, 7) + _rotl(v3, 12) + _rotl(v4, 18)
        h = _merge(h, v1)
        h = _merge(h, v2)
        h = _merge(h, v3)
        h = _merge(h, v4)
    else:
        h = P5
    h = h + np.uint64(length)
    while p + 8 <= end:
        h = h ^ _round(np.uint64(0), _u64(buf, p))
        h = _rotl(h, 27) * P1 + P4
        p += 8
    if p + 4 <= end:
        w = np.uint64(0)
        for k in range(4):
            w |= np.uint64(buf[p + k]) << np.uint64(8 * k)
        h = h ^ (w * P1)
        h = _rotl(h, 23) * P2 + P3
        p += 4
    while p < end:
        h = h ^ (np.uint64(buf[p]) * P5)
        h = _rotl(h, 11) * P1
        p += 1
    h = h ^ (h >> np.uint64(33))
    h = h * P2
    h = h ^ (h >> np.uint64(29))
    h = h * P3
    return h ^ (h >> np.uint64(32))


@njit
def xxh64_ranges(buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """XXH64 of each range ``buf[starts[k]:starts[k] + lengths[k]]``."""
    out = np.empty(starts.size, dtype=np.uint64)
    for k in range(starts.size):
        out[k] = xxh64(buf, starts[k], lengths[k])
    return out


def digest(data: bytes | bytearray | memoryview | np.ndarray) -> int:
    """XXH64 of ``data`` as a Python int."""
    arr = data if isinstance(data, np.ndarray) else np.frombuffer(data, dtype=np.uint8)
    return int(xxh64(arr, 0, arr.size))
