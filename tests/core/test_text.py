from __future__ import annotations

import pytest

from twinloop.core.text import table


def test_columns_are_aligned_under_a_rule() -> None:
    out = table([("a", 1), ("longer", 22.5)], ("name", "value"))
    assert out.splitlines() == [
        "name    value",
        "------  -----",
        "a       1    ",
        "longer  22.5 ",
    ]


def test_header_only_and_wide_header() -> None:
    assert table([], ("metric", "v")) == "metric  v\n------  -"


def test_a_row_of_the_wrong_width_is_named() -> None:
    with pytest.raises(ValueError, match=r"row 1 has 3 cells, the header 2"):
        table([("a", "b"), ("a", "b", "c")], ("x", "y"))
