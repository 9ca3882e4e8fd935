"""twinloop.datasets: HDF5 capture that Minari reads, crash-safe and fast.

Write with :class:`RecordEpisodes` (a single env), :class:`RecordVectorEpisodes` (every row
of a vector env) or :class:`DatasetWriter` directly; read with :func:`open_dataset`; combine
shards with :func:`merge_datasets`. The layout is Minari's
(``<root>/<namespace>/<name>-v<N>/data/{metadata.json, main_data.hdf5}``), so
``minari.load_dataset`` opens what twinloop writes. This package knows nothing of any system.
"""

from __future__ import annotations

from twinloop.datasets._scan import writer_alive
from twinloop.datasets.errors import (
    DatasetCorruptError,
    DatasetError,
    DatasetExistsError,
    DatasetFormatError,
    DatasetLockedError,
    DatasetNotFoundError,
    DatasetWriteError,
    SchemaMismatchError,
)
from twinloop.datasets.merge import merge_datasets
from twinloop.datasets.reader import (
    Dataset,
    EpisodeData,
    TransitionBatch,
    open_dataset,
    summarize,
)
from twinloop.datasets.record import RecordEpisodes, RecordVectorEpisodes, record
from twinloop.datasets.writer import (
    DatasetWriter,
    dataset_dir,
    describe_env,
    recover_dataset,
)

__all__ = [
    "Dataset",
    "DatasetCorruptError",
    "DatasetError",
    "DatasetExistsError",
    "DatasetFormatError",
    "DatasetLockedError",
    "DatasetNotFoundError",
    "DatasetWriteError",
    "DatasetWriter",
    "EpisodeData",
    "RecordEpisodes",
    "RecordVectorEpisodes",
    "SchemaMismatchError",
    "TransitionBatch",
    "dataset_dir",
    "describe_env",
    "merge_datasets",
    "open_dataset",
    "record",
    "recover_dataset",
    "summarize",
    "writer_alive",
]
