"""The structure reader against files libhdf5 (through h5py) wrote in every storage form.

Source of the forms: the HDF5 File Format Specification 3.0 (symbol tables III.C with v1
B-trees III.A.1 and local heaps III.D; dense storage in fractal heaps III.G indexed by v2
B-trees III.A.2; variable-length data in the global heap III.E). h5py's ``libver`` picks the
form: ``earliest`` writes version 1 object headers and symbol tables, ``latest`` version 2
headers with compact or dense links and attributes.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from twinloop.datasets import _hdf5 as H
from twinloop.datasets import _hdf5_read as R


def _objects(path) -> dict[str, tuple[R.ObjectHeader, dict]]:
    data = path.read_bytes()

    def read(a: int, n: int) -> bytes:
        return data[a : a + n]

    if data[8] == 0:  # superblock v0: the root's symbol table entry follows 56 bytes
        root = int.from_bytes(data[64:72], "little")
    else:
        root = H.read_superblock(data[:48]).root
    out = {}
    for p, header in R.walk(read, root, len(data)):
        attrs, notes = R.object_attributes(read, header, len(data))
        assert not notes
        out[p] = (header, attrs)
    return out


@pytest.mark.parametrize("libver", ["earliest", "latest"])
def test_every_group_and_attribute_form_reads_as_h5py_sees_it(tmp_path, libver):
    path = tmp_path / "f.h5"
    rng = np.random.default_rng(1)
    big = rng.normal(size=40_000)  # 320 kB: a "huge" object in dense attribute storage
    with h5py.File(path, "w", libver=libver) as f:
        many = f.create_group("many")
        for i in range(3000):  # dense storage with indirect heap blocks and a deep B-tree
            many[f"episode_{i}"] = np.int8(i % 100)
        many["soft"] = h5py.SoftLink("/few")
        f.create_group("few").create_group("inner")
        d = f.create_dataset("d", data=np.arange(5))
        for i in range(20):
            d.attrs[f"a{i}"] = i * 1.5
        d.attrs["text"] = "hello"
        d.attrs["texts"] = ["a", "bb", "ccc"]
        if libver == "latest":  # version 1 headers cannot hold a message over 64 kB
            d.attrs["big"] = big
        f.attrs["root_note"] = "r"
    objs = _objects(path)
    header, _ = objs["many"]
    expected = {"earliest": "symbol-table", "latest": "dense"}[libver]
    assert R.link_storage(header) == expected
    assert header.version == (1 if libver == "earliest" else 2)
    data = path.read_bytes()
    links = R.group_links(lambda a, n: data[a : a + n], header, len(data))
    names = {link.name for link in links}
    assert names == {f"episode_{i}" for i in range(3000)} | {"soft"}
    assert [link.address for link in links if link.name == "soft"] == [None]
    assert {p for p in objs if not p.startswith("many/")} == {"", "many", "few", "few/inner", "d"}
    _, attrs = objs["d"]
    with h5py.File(path, "r") as f:
        for i in range(20):
            assert float(attrs[f"a{i}"]) == f["d"].attrs[f"a{i}"]
        if libver == "latest":
            np.testing.assert_array_equal(attrs["big"], f["d"].attrs["big"])
    assert attrs["text"] == "hello"
    assert attrs["texts"] == ["a", "bb", "ccc"]
    assert objs[""][1]["root_note"] == "r"


def test_a_damaged_heap_block_is_an_error_not_data(tmp_path):
    path = tmp_path / "f.h5"
    with h5py.File(path, "w", libver="latest") as f:
        g = f.create_group("g")
        for i in range(200):
            g[f"x{i}"] = np.int8(1)
    data = bytearray(path.read_bytes())
    at = data.find(b"BTLF")
    assert at > 0
    data[at + 10] ^= 0xFF  # a record of the link name index
    objs = bytes(data)
    root = H.read_superblock(objs[:48]).root
    header = next(h for p, h in R.walk(lambda a, n: objs[a : a + n], root, len(objs)) if p == "")
    links = R.group_links(lambda a, n: objs[a : a + n], header, len(objs))
    g = next(link for link in links if link.name == "g")
    g_header = R.read_object_header(lambda a, n: objs[a : a + n], g.address, len(objs))
    with pytest.raises(H.FormatError, match="checksum"):
        R.group_links(lambda a, n: objs[a : a + n], g_header, len(objs))


def test_partial_header_keeps_the_chunks_before_a_bad_one():
    """A continuation block that fails its checksum ends the header; earlier links remain."""
    base = 0
    block_b = bytearray(H.continuation_block([H.message(H.MSG_LINK, H.link("c", 8))]))
    hb = H.HeaderBuilder()
    hb.add(H.MSG_LINK, H.link("a", 8))
    chunk0, _, n = hb.build(reserve_tail=False)
    at_a = base + len(chunk0) + 64  # chunk 0 reserves room for a continuation below
    block_a = H.continuation_block(
        [
            H.message(H.MSG_LINK, H.link("b", 8)),
            H.message(H.MSG_CONTINUATION, H.continuation(at_a + 200, len(block_b))),
        ]
    )
    hb = H.HeaderBuilder()
    hb.add(H.MSG_LINK, H.link("a", 8))
    hb.add(H.MSG_CONTINUATION, H.continuation(at_a, len(block_a)))
    chunk0, _, n = hb.build(reserve_tail=False)
    sealed = np.frombuffer(chunk0, dtype=np.uint8).copy()
    H.seal(sealed, 0, n)
    blob = bytearray(at_a + 200 + len(block_b))
    blob[: len(chunk0)] = sealed.tobytes()
    blob[at_a : at_a + len(block_a)] = block_a
    block_b[6] ^= 0x01  # one flipped bit in the last block
    blob[at_a + 200 :] = block_b
    data = bytes(blob)

    def read(a: int, k: int) -> bytes:
        return data[a : a + k]

    with pytest.raises(H.FormatError, match="checksum"):
        R.read_object_header(read, 0, len(data))
    errors: list = []
    header = R.read_object_header(read, 0, len(data), errors)
    assert len(header.chunks) == 2 and len(errors) == 1
    assert [link.name for link in R.group_links(read, header, len(data))] == ["a", "b"]
