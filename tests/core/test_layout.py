from __future__ import annotations

import numpy as np
import pytest

from twinloop.core.layout import Field, Layout

L = Layout([Field("a", (2,), -1, 1), Field("b"), Field("c", (2, 2), 0, 5)])


def test_offsets_views_and_labels() -> None:
    assert L.size == 7
    flat = np.arange(7.0)
    np.testing.assert_array_equal(L.get(flat, "c"), [[3, 4], [5, 6]])
    batch = np.stack([flat, flat + 10])
    assert L.get(batch, "c").shape == (2, 2, 2)
    assert L.get(batch, "b").shape == (2,)
    assert L.get(flat, "b").shape == () and L.get(flat, "b") == 2.0
    assert L.labels()[0] == "a[0]" and L.labels()[2] == "b" and L.labels()[4] == "c[0, 1]"
    d = L.row_dict(flat)
    assert d["b"] == 2.0 and isinstance(d["b"], float)
    space = L.space()
    assert space.shape == (7,) and space.low[2] == -np.inf and space.high[3] == 5


def test_errors() -> None:
    with pytest.raises(KeyError, match="no field 'z'; fields: a, b, c"):
        L.get(np.zeros(7), "z")
    with pytest.raises(ValueError, match="duplicate"):
        Layout([Field("a"), Field("a")])
