"""Errors of :mod:`twinloop.datasets`; each message names the file and what to do about it."""

from __future__ import annotations


class DatasetError(Exception):
    """Base class of every dataset error."""


class DatasetExistsError(DatasetError, FileExistsError):
    """A dataset with that id already exists and neither overwrite nor append was asked for."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """No dataset at that path."""


class DatasetLockedError(DatasetError):
    """Another process is writing the dataset."""


class DatasetWriteError(DatasetError, OSError):
    """Writing failed (disk full, permission denied, I/O error); committed episodes are intact."""


class SchemaMismatchError(DatasetError, ValueError):
    """Episodes to append or merge do not have the dataset's spaces and fields."""


class DatasetCorruptError(DatasetError):
    """A dataset file is damaged; the message names the file and the first bad episode."""


class DatasetFormatError(DatasetError, ValueError):
    """A dataset stored in a format or layout twinloop does not read (Minari's arrow ...)."""
