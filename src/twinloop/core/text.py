"""Plain-text tables for every command line, and values made ready for strict JSON.

It sits in core, below every command-line module, so that two CLIs share it without one
importing the other (an upward import that used to close a circle between ``twinloop.cli`` and
``twinloop.datasets.cli``). It formats strings and prints nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    """Left-aligned columns, a dashed rule under the header, two spaces between columns.

    Args:
        rows: Rows of cells (anything with a ``str``); every row has ``len(header)`` cells.
        header: Column titles.

    Returns:
        The table, one line per row, without a trailing newline.

    Raises:
        ValueError: A row whose cell count differs from the header's.
    """
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    for k, row in enumerate(cells[1:]):
        if len(row) != len(header):
            raise ValueError(
                f"row {k} has {len(row)} cells, the header {len(header)}: {row!r}; "
                "give every row one cell per column"
            )
    widths = [max(len(r[k]) for r in cells) for k in range(len(header))]
    out = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def json_ready(value: Any) -> Any:
    """``value`` as strict JSON takes it: NaN and infinities as None, NumPy scalars as Python.

    Mappings (keys as strings), lists and tuples are converted recursively; anything else is
    returned as it is (``json.dumps`` raises on what it cannot write).
    """
    if isinstance(value, Mapping):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
