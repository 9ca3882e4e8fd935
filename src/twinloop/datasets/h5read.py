"""Datasets that other tools wrote (``minari.DataCollector`` ...), read through h5py.

Being written in this session (not finished): :class:`H5Store` refuses every dataset for now.
"""

from __future__ import annotations

from pathlib import Path

from twinloop.datasets.errors import DatasetCorruptError


class H5Store:
    """The store protocol of :class:`twinloop.datasets.Dataset` over h5py (not finished)."""

    def __init__(self, data_dir: Path) -> None:
        """Refuse: reading datasets other tools wrote is not implemented yet."""
        raise DatasetCorruptError(
            f"{data_dir}: this dataset was not written by twinloop and reading other tools' "
            "datasets is not implemented yet (open it with minari.MinariDataset instead)"
        )
