"""Export a dataset for other learning stacks: LeRobot (format v3.0) and robomimic (HDF5).

Data flow of both exports::

    Dataset --iterate_episodes--> EpisodeData --columns--> Parquet (LeRobot) | HDF5 (robomimic)
        written under a hidden temporary name beside OUT --rename--> OUT

Nothing is left at OUT unless the export finished: a failed export removes its temporary
files, and ``overwrite=True`` swaps the new export in only once it is complete.

**Frames and transitions.** An episode of ``L`` steps has ``L + 1`` observations and ``L``
actions. LeRobot frame ``t`` (``t = 0 .. L-1``) holds the observation before step ``t``, the
action of step ``t`` and, under ``next.*``, what the step returned (reward, terminated,
truncated, success); the final observation is not a frame (LeRobot's convention: every frame
has an action). robomimic transition ``t`` holds ``obs`` (row ``t``) and ``next_obs`` (row
``t + 1``), so nothing is dropped.

**Requested and applied actions.** ``action`` (LeRobot) and ``actions`` (robomimic) are what
the controller asked for, our ``actions``. What the device executed after safety clipping, the
info ``applied_command`` of the step (row ``t + 1``; it may live in another space, e.g. a probe
position and dwell for an offset action), is exported beside it as ``applied_command``
(LeRobot) and ``applied_commands`` (robomimic). Both exports say which is which: LeRobot in
``meta/info.json`` under ``twinloop``, robomimic in the ``kind`` attribute of each dataset
and in the ``twinloop`` attribute of the ``data`` group.

The LeRobot layout follows what lerobot 0.4.4's ``LeRobotDataset`` reads (``meta/info.json``,
``meta/stats.json``, ``meta/tasks.parquet``, ``meta/episodes/chunk-000/file-000.parquet``,
``data/chunk-XXX/file-YYY.parquet``); images are PNG bytes inside the Parquet files (feature
dtype ``image``), so loading needs no video decoder. Writing needs only ``pyarrow``
(``pip install 'twinloop[lerobot]'``). The robomimic layout follows its documented HDF5
structure (``data/demo_<i>``, ``env_args``, ``mask/<filter key>``) and is written with h5py.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import shutil
import struct
import uuid
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from twinloop.datasets.errors import DatasetExistsError
from twinloop.datasets.reader import Dataset, EpisodeData, open_dataset
from twinloop.datasets.schema import SOURCE_ACTION, SOURCE_INFO, SOURCE_OBS, FieldSpec

log = logging.getLogger(__name__)

#: Called as ``progress(episodes_done, episodes_total)`` after each exported episode.
ExportProgressFn = Callable[[int, int], None]

#: The info key holding what the device executed (see ``core.env.TwinEnv.step``).
APPLIED_COMMAND_KEY = "applied_command"
#: Info keys that say whether an episode succeeded, in order of preference (read at its end).
SUCCESS_KEYS = ("is_success", "success")

#: LeRobot dataset format version written (what lerobot 0.4.x reads).
LEROBOT_CODEBASE_VERSION = "v3.0"
#: LeRobot's per-feature quantiles (``q01`` ... ``q99``).
LEROBOT_QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)
_LEROBOT_CHUNKS_SIZE = 1000  # files per chunk folder, LeRobot's default
_LEROBOT_VIDEO_FILE_SIZE_MB = 200  # unused (no videos), recorded as LeRobot does

#: robomimic's environment type for Gym-style envs (``EnvType.GYM_TYPE``).
ROBOMIMIC_GYM_TYPE = 2

REQUESTED_DOC = "requested: the controller's action (twinloop 'actions')"
APPLIED_DOC = (
    "applied: what the device executed after safety clipping (twinloop info "
    f"'{APPLIED_COMMAND_KEY}' of the step; may be in the device's command space)"
)


# --- shared helpers ----------------------------------------------------------------------------
@contextlib.contextmanager
def _opened(dataset: Dataset | str | os.PathLike) -> Iterator[Dataset]:
    """The dataset itself, or one opened from a path (and closed afterwards)."""
    if isinstance(dataset, Dataset):
        yield dataset
        return
    ds = open_dataset(dataset)
    try:
        yield ds
    finally:
        ds.close()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def _atomic_output(out: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary path beside ``out``; move it to ``out`` only if the block succeeds."""
    if (out.exists() or out.is_symlink()) and not overwrite:
        raise DatasetExistsError(
            f"{out} already exists; choose another output path or pass overwrite=True "
            "(--overwrite) to replace it"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    tmp = out.parent / f".{out.name}.partial-{tag}"
    try:
        yield tmp
        if out.exists() or out.is_symlink():
            if not overwrite:
                raise DatasetExistsError(f"{out} appeared while exporting; nothing was replaced")
            old = out.parent / f".{out.name}.replaced-{tag}"
            os.rename(out, old)
            os.rename(tmp, out)
            _remove(old)
        else:
            os.rename(tmp, out)
    except BaseException:
        _remove(tmp)
        raise


def _leaf(value: Any, key: Sequence[str | int]) -> Any:
    for part in key:
        value = value[part]
    return value


def _obs_fields(ds: Dataset) -> list[FieldSpec]:
    return [f for f in ds.fields if f.source == SOURCE_OBS]


def _has_info(ds: Dataset, key: str) -> bool:
    return any(f.source == SOURCE_INFO and f.key == (key,) for f in ds.fields)


def _success_key(ds: Dataset) -> str | None:
    return next((k for k in SUCCESS_KEYS if _has_info(ds, k)), None)


def _action_layout(ds: Dataset) -> list[dict[str, Any]]:
    """How the action leaves are laid out in one flat action row."""
    layout, start = [], 0
    for f in ds.fields:
        if f.source != SOURCE_ACTION:
            continue
        if f.text:
            raise ValueError(
                f"{ds.path}: action leaf {f.path!r} is text; only numeric actions can be exported"
            )
        size = math.prod(f.shape)
        name = ".".join(str(k) for k in f.key) or "action"
        layout.append(
            {
                "name": name,
                "start": start,
                "stop": start + size,
                "shape": list(f.shape),
                "dtype": f.np_dtype.name,
            }
        )
        start += size
    return layout


def _action_dtype(ds: Dataset) -> np.dtype:
    return np.result_type(*[f.np_dtype for f in ds.fields if f.source == SOURCE_ACTION])


def _action_matrix(ds: Dataset, ep: EpisodeData) -> np.ndarray:
    """The requested actions of an episode as one ``(L, D)`` array (leaves concatenated)."""
    n = len(ep)
    fields = [f for f in ds.fields if f.source == SOURCE_ACTION]
    cols = [np.asarray(_leaf(ep.actions, f.key)).reshape(n, -1) for f in fields]
    if len(cols) == 1:
        return cols[0]
    return np.concatenate(cols, axis=1).astype(_action_dtype(ds), copy=False)


def _episode_success(ep: EpisodeData, key: str | None) -> bool | None:
    if key is None or key not in ep.infos:
        return None
    return bool(np.asarray(ep.infos[key])[-1])


def _provenance(ds: Dataset) -> dict[str, Any]:
    tl = ds.metadata.get("twinloop", {})
    backends = list(tl.get("backends", [tl["backend"]] if tl.get("backend") else []))
    return {
        "dataset_id": ds.id,
        "source": str(ds.path.parent),
        "env_id": tl.get("env_id"),
        "backends": backends,
        "tags": tl.get("tags", {}),
        "twinloop_version": tl.get("twinloop_version"),
        "git_revision": tl.get("git_revision"),
    }


def _check_nonempty(ds: Dataset) -> None:
    if len(ds) == 0:
        raise ValueError(
            f"{ds.path.parent} has no readable episodes to export"
            + (f" ({ds.problems[0]})" if ds.problems else "")
        )


# --- LeRobot ----------------------------------------------------------------------------------
_LEROBOT_DEFAULT_FEATURES = ("timestamp", "frame_index", "episode_index", "index", "task_index")
_FEATURE_NAME_BAD = re.compile(r"[/\s]")


def _png(image: np.ndarray, level: int = 6) -> bytes:
    """Encode an ``(H, W, C)`` uint8 image (C = 3 or 4) as PNG (rows filtered with 'Up')."""
    h, w, c = image.shape
    rows = image.reshape(h, w * c)
    up = rows.copy()
    up[1:] -= rows[:-1]  # uint8 wrap-around is the PNG 'Up' filter (type 2)
    raw = np.empty((h, 1 + w * c), np.uint8)
    raw[:, 0] = 2
    raw[:, 1:] = up

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    color_type = {3: 2, 4: 6}[c]
    header = struct.pack(">IIBBBBB", w, h, 8, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw.tobytes(), level))
        + chunk(b"IEND", b"")
    )


class _Column:
    """One LeRobot feature: its ``info.json`` entry, its Arrow type and how to fill it."""

    def __init__(
        self,
        name: str,
        kind: str,
        dtype: str,
        shape: tuple[int, ...],
        names: Any = None,
        get: Callable[[EpisodeData], Any] | None = None,
    ) -> None:
        self.name = name
        self.kind = kind  # "value" | "image" | "string"
        self.dtype = dtype
        self.shape = shape
        self.names = names
        self.get = get

    @property
    def feature(self) -> dict[str, Any]:
        """The entry of ``meta/info.json`` ``features``."""
        dtype = {"image": "image", "string": "string"}.get(self.kind, self.dtype)
        return {"dtype": dtype, "shape": list(self.shape), "names": self.names}

    @property
    def hf_feature(self) -> dict[str, Any]:
        """The Hugging Face ``datasets`` feature (as it serialises in Parquet metadata)."""
        if self.kind == "image":
            return {"_type": "Image"}
        if self.kind == "string" or self.shape == (1,):
            return {"dtype": self.dtype, "_type": "Value"}
        if len(self.shape) == 1:
            return {
                "feature": {"dtype": self.dtype, "_type": "Value"},
                "length": self.shape[0],
                "_type": "List",
            }
        return {"shape": list(self.shape), "dtype": self.dtype, "_type": f"Array{len(self.shape)}D"}

    def arrow_field(self, pa: Any) -> Any:
        """The Arrow field this column is written as (the types ``datasets`` reads back)."""
        if self.kind == "image":
            return pa.field(self.name, pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
        if self.kind == "string":
            return pa.field(self.name, pa.string())
        value = pa.from_numpy_dtype(np.dtype(self.dtype))
        if self.shape == (1,):
            return pa.field(self.name, value)
        if len(self.shape) == 1:
            return pa.field(self.name, pa.list_(value, self.shape[0]))
        storage = value
        for _ in self.shape:
            storage = pa.list_(storage)
        ext = f"datasets.features.features.Array{len(self.shape)}DExtensionType"
        meta = json.dumps([list(self.shape), self.dtype])
        return pa.field(
            self.name,
            storage,
            metadata={b"ARROW:extension:name": ext.encode(), b"ARROW:extension:metadata": meta},
        )

    def arrow_array(self, pa: Any, values: Any, field: Any) -> Any:
        """``values`` (``L`` rows) as an Arrow array of this column's type."""
        if self.kind == "image":
            frames = np.asarray(values)
            items = [
                {"bytes": _png(_rgb(frame)), "path": f"frame-{t:06d}.png"}
                for t, frame in enumerate(frames)
            ]
            return pa.array(items, type=field.type)
        if self.kind == "string":
            return pa.array(list(values), type=pa.string())
        arr = np.ascontiguousarray(np.asarray(values, dtype=self.dtype))
        n = arr.shape[0]
        if self.shape == (1,):
            return pa.array(arr.reshape(n))
        flat = pa.array(arr.reshape(-1))
        if len(self.shape) == 1:
            return pa.FixedSizeListArray.from_arrays(flat, self.shape[0])
        out = flat
        count = arr.size
        for dim in reversed(self.shape):
            count //= dim
            offsets = pa.array(np.arange(count + 1, dtype=np.int32) * dim)
            out = pa.ListArray.from_arrays(offsets, out)
        return out


def _rgb(frame: np.ndarray) -> np.ndarray:
    """An image as ``(H, W, 3|4)``: grey (``(H, W)`` or one channel) repeated into RGB."""
    if frame.ndim == 2:
        frame = frame[:, :, None]
    if frame.shape[2] == 1:
        frame = np.repeat(frame, 3, axis=2)
    return frame


def _is_png_image(f: FieldSpec) -> bool:
    return f.image and (len(f.shape) == 2 or f.shape[2] in (1, 3, 4))


def _feature_name(ds: Dataset, f: FieldSpec, prefix: str) -> str:
    parts = [str(k) for k in f.key]
    name = ".".join([prefix, *parts])
    if any(_FEATURE_NAME_BAD.search(p) for p in parts):
        raise ValueError(
            f"{ds.path}: observation leaf {f.path!r} has a key with '/' or whitespace, which "
            "LeRobot feature names cannot hold; rename that key in the env's observation space"
        )
    return name


def _layout_names(ds: Dataset, size: int) -> list[str] | None:
    """Per-element names of a flat observation from the env's observation layout, if any."""
    layout = ds.metadata.get("twinloop", {}).get("env_metadata", {}).get("observation_layout")
    if not isinstance(layout, Mapping):
        return None
    names: list[str | None] = [None] * size
    for name, spec in layout.items():
        try:
            start, stop = int(spec["start"]), int(spec["stop"])
        except (KeyError, TypeError, ValueError):
            return None
        if not 0 <= start <= stop <= size:
            return None
        if stop - start == 1 and not spec.get("shape"):
            names[start] = name
        else:
            for i in range(start, stop):
                names[i] = f"{name}.{i - start}"
    return None if any(n is None for n in names) else [str(n) for n in names]


def _lerobot_columns(
    ds: Dataset, task_field: str | None
) -> tuple[list[_Column], Callable[[EpisodeData], list[str]] | None]:
    """The exported features of ``ds`` and, if ``task_field`` is set, the per-frame task."""
    cols: list[_Column] = []
    obs = _obs_fields(ds)
    task_get = None
    single = len(obs) == 1 and obs[0].key == ()
    for f in obs:
        key = f.key

        def get(ep: EpisodeData, key: tuple = key) -> Any:
            value = _leaf(ep.observations, key)
            return value[: len(ep)]

        leaf = ".".join(str(k) for k in key)
        if task_field is not None and leaf == task_field:
            if not f.text:
                raise ValueError(
                    f"{ds.path}: task_field {task_field!r} is not a text observation leaf"
                )
            task_get = get
            continue
        if f.text:
            # strings as observation.* would become policy state features; keep them apart
            name = "text" if single else _feature_name(ds, f, "text")
            cols.append(_Column(name, "string", "string", (1,), None, get))
        elif _is_png_image(f):
            name = "observation.image" if single else _feature_name(ds, f, "observation.images")
            h, w = f.shape[:2]
            c = 4 if len(f.shape) == 3 and f.shape[2] == 4 else 3
            names = ["height", "width", "channels"]
            cols.append(_Column(name, "image", "uint8", (h, w, c), names, get))
        else:
            name = "observation.state" if single else _feature_name(ds, f, "observation")
            shape = f.shape or (1,)
            names = _layout_names(ds, shape[0]) if single and len(shape) == 1 else None
            cols.append(_Column(name, "value", f.np_dtype.name, shape, names, get))
    if task_field is not None and task_get is None:
        leaves = [".".join(str(k) for k in f.key) for f in obs if f.text]
        raise ValueError(
            f"{ds.path}: no text observation leaf {task_field!r} for task_field; text leaves: "
            f"{', '.join(leaves) or 'none'}"
        )
    layout = _action_layout(ds)
    width = layout[-1]["stop"]
    a_names = (
        None
        if len(layout) == 1
        else [f"{e['name']}.{i}" for e in layout for i in range(e["stop"] - e["start"])]
    )
    cols.append(
        _Column(
            "action",
            "value",
            _action_dtype(ds).name,
            (width,),
            a_names,
            lambda ep: _action_matrix(ds, ep),
        )
    )
    if _has_info(ds, APPLIED_COMMAND_KEY):
        spec = next(
            f for f in ds.fields if f.source == SOURCE_INFO and f.key == (APPLIED_COMMAND_KEY,)
        )
        cols.append(
            _Column(
                "applied_command",
                "value",
                spec.np_dtype.name,
                (math.prod(spec.shape),),
                None,
                lambda ep: np.asarray(ep.infos[APPLIED_COMMAND_KEY])[1:].reshape(len(ep), -1),
            )
        )
    cols.append(_Column("next.reward", "value", "float64", (1,), None, lambda ep: ep.rewards))
    cols.append(
        _Column(
            "next.done",
            "value",
            "bool",
            (1,),
            None,
            lambda ep: np.logical_or(ep.terminations, ep.truncations),
        )
    )
    cols.append(_Column("next.terminated", "value", "bool", (1,), None, lambda ep: ep.terminations))
    cols.append(_Column("next.truncated", "value", "bool", (1,), None, lambda ep: ep.truncations))
    success = _success_key(ds)
    if success is not None:
        cols.append(
            _Column(
                "next.success",
                "value",
                "bool",
                (1,),
                None,
                lambda ep: np.asarray(ep.infos[success])[1:].astype(bool),
            )
        )
    names = [c.name for c in cols]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"{ds.path}: two observation leaves map to LeRobot feature(s) {dupes}")
    for n in (*_LEROBOT_DEFAULT_FEATURES, "task"):
        if n in names:
            raise ValueError(f"{ds.path}: observation leaf maps to LeRobot's reserved name {n!r}")
    cols += [
        _Column("timestamp", "value", "float32", (1,)),
        _Column("frame_index", "value", "int64", (1,)),
        _Column("episode_index", "value", "int64", (1,)),
        _Column("index", "value", "int64", (1,)),
        _Column("task_index", "value", "int64", (1,)),
    ]
    return cols, task_get


def _quantiles_from_histogram(hist: np.ndarray, qs: Sequence[float]) -> np.ndarray:
    """Quantiles (linear interpolation, as ``np.quantile``) of values 0..255 given counts."""
    cum = np.cumsum(hist)
    n = int(cum[-1])
    out = np.empty(len(qs))
    for i, q in enumerate(qs):
        pos = q * (n - 1)
        lo, hi = math.floor(pos), math.ceil(pos)
        v_lo = int(np.searchsorted(cum, lo, side="right"))
        v_hi = int(np.searchsorted(cum, hi, side="right"))
        out[i] = v_lo + (pos - lo) * (v_hi - v_lo)
    return out


def _feature_stats(col: _Column, values: Any) -> dict[str, np.ndarray] | None:
    """LeRobot's per-episode statistics of one feature (None for strings)."""
    if col.kind == "string":
        return None
    qkeys = [f"q{round(q * 100):02d}" for q in LEROBOT_QUANTILES]
    if col.kind == "image":
        frames = np.asarray(values)
        frames = frames.reshape(*frames.shape[:3], -1)  # (L, H, W, C)
        if frames.shape[3] == 1:
            frames = np.repeat(frames, 3, axis=3)
        chans = frames.shape[3]
        stats: dict[str, Any] = {k: np.empty((chans, 1, 1)) for k in ("min", "max", "mean", "std")}
        for k in qkeys:
            stats[k] = np.empty((chans, 1, 1))
        for c in range(chans):
            hist = np.bincount(frames[..., c].reshape(-1), minlength=256).astype(np.float64)
            v = np.arange(256.0)
            total = hist.sum()
            mean = (hist * v).sum() / total
            stats["min"][c] = np.flatnonzero(hist)[0] / 255.0
            stats["max"][c] = np.flatnonzero(hist)[-1] / 255.0
            stats["mean"][c] = mean / 255.0
            stats["std"][c] = math.sqrt(max(0.0, (hist * (v - mean) ** 2).sum() / total)) / 255.0
            for k, q in zip(qkeys, _quantiles_from_histogram(hist, LEROBOT_QUANTILES), strict=True):
                stats[k][c] = q / 255.0
        stats["count"] = np.array([frames.shape[0]])
        return stats
    arr = np.asarray(values)
    arr = arr.reshape(arr.shape[0], *col.shape)
    num = arr.astype(np.float64)
    stats = {
        "min": arr.min(axis=0),
        "max": arr.max(axis=0),
        "mean": num.mean(axis=0),
        "std": num.std(axis=0),
        "count": np.array([arr.shape[0]]),
    }
    for k, q in zip(qkeys, np.quantile(num, LEROBOT_QUANTILES, axis=0), strict=True):
        stats[k] = q
    return stats


def _aggregate_stats(per_episode: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Dataset statistics from episode statistics, by LeRobot's rule.

    min/max over episodes; mean and quantiles weighted by frame count; the variance by the
    parallel-variance formula (exact for mean and std).
    """
    counts = np.array([int(s["count"][0]) for s in per_episode], dtype=np.float64)
    total = counts.sum()

    def weighted(key: str) -> np.ndarray:
        stack = np.stack([np.asarray(s[key], dtype=np.float64) for s in per_episode])
        w = counts.reshape(-1, *([1] * (stack.ndim - 1)))
        return (stack * w).sum(axis=0) / total

    mean = weighted("mean")
    means = np.stack([np.asarray(s["mean"], dtype=np.float64) for s in per_episode])
    var = np.stack([np.asarray(s["std"], dtype=np.float64) ** 2 for s in per_episode])
    w = counts.reshape(-1, *([1] * (means.ndim - 1)))
    variance = ((var + (means - mean) ** 2) * w).sum(axis=0) / total
    out = {
        "min": np.min(np.stack([s["min"] for s in per_episode]), axis=0),
        "max": np.max(np.stack([s["max"] for s in per_episode]), axis=0),
        "mean": mean,
        "std": np.sqrt(variance),
        "count": np.array([int(total)]),
    }
    for key in per_episode[0]:
        if key.startswith("q"):
            out[key] = weighted(key)
    return out


def _json_stats(stats: Mapping[str, np.ndarray]) -> dict[str, Any]:
    return {k: np.asarray(v).tolist() for k, v in stats.items()}


def _pandas_index_metadata(pa: Any) -> bytes:
    """The Parquet metadata pandas writes for a frame of task indices indexed by task.

    lerobot reads ``meta/tasks.parquet`` with ``pandas.read_parquet`` and looks tasks up by the
    frame's index, so the index must round-trip; this is the metadata pandas itself writes.
    """
    meta = {
        "index_columns": ["__index_level_0__"],
        "column_indexes": [
            {
                "name": None,
                "field_name": None,
                "pandas_type": "unicode",
                "numpy_type": "object",
                "metadata": {"encoding": "UTF-8"},
            }
        ],
        "columns": [
            {
                "name": "task_index",
                "field_name": "task_index",
                "pandas_type": "int64",
                "numpy_type": "int64",
                "metadata": None,
            },
            {
                "name": None,
                "field_name": "__index_level_0__",
                "pandas_type": "unicode",
                "numpy_type": "object",
                "metadata": None,
            },
        ],
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.2.0",
    }
    return json.dumps(meta).encode()


def _import_pyarrow() -> tuple[Any, Any]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ImportError(
            "exporting to LeRobot needs pyarrow: pip install 'twinloop[lerobot]'"
        ) from exc
    return pa, pq


def _default_fps(ds: Dataset) -> int:
    meta = ds.metadata.get("twinloop", {}).get("env_metadata", {})
    fps = meta.get("render_fps") if isinstance(meta, Mapping) else None
    if isinstance(fps, int | float) and fps >= 1:
        return round(fps)
    return 1


def export_lerobot(
    dataset: Dataset | str | os.PathLike,
    out: str | os.PathLike,
    *,
    fps: int | None = None,
    task: str | None = None,
    task_field: str | None = None,
    robot_type: str | None = None,
    data_file_size_mb: float = 100.0,
    overwrite: bool = False,
    progress: ExportProgressFn | None = None,
) -> dict[str, Any]:
    """Write a dataset (or a filtered view of one) as a LeRobot v3.0 dataset folder ``out``.

    Features: observation leaves as ``observation.state`` (a flat Box), ``observation.image``
    (an image) or ``observation.<leaf>`` / ``observation.images.<leaf>`` (Dict and Tuple
    leaves; images as PNG, grey images repeated into RGB); text leaves as strings
    ``text.<leaf>`` (kept out of ``observation.*`` so that LeRobot policies do not take them
    for state); ``action`` (requested; several action leaves are concatenated, named
    ``<leaf>.<i>``); ``applied_command`` (applied, when recorded); ``next.reward``,
    ``next.done`` (terminated or truncated), ``next.terminated``, ``next.truncated`` and
    ``next.success`` (when the infos hold ``is_success``/``success``). Statistics
    (``meta/stats.json`` and per episode) are computed exactly per episode and combined by
    LeRobot's rule.

    Args:
        dataset: A :class:`Dataset` (a filtered view exports only its episodes) or its path.
        out: Output folder; load it with ``LeRobotDataset(repo_id, root=out)``.
        fps: Frames per second recorded in ``info.json`` (timestamps are ``frame / fps``).
            Default: the env's ``render_fps`` metadata, else 1.
        task: The task string of every frame (default: the env id, else the dataset id).
        task_field: A text observation leaf whose value at each frame is that frame's task
            (LeRobot's language instruction) instead of ``task``; it is not exported twice.
        robot_type: ``robot_type`` in ``info.json`` (default: the env id).
        data_file_size_mb: Start a new data file once one holds this many MB (Arrow size).
        overwrite: Replace ``out`` if it exists.
        progress: Called as ``progress(episodes_done, episodes_total)``.

    Returns:
        ``{"episodes", "frames", "tasks", "path", "features", "skipped"}``; ``skipped`` lists
        the problems of damaged source episodes that were left out.

    Raises:
        DatasetExistsError: ``out`` exists and ``overwrite`` is false.
        ValueError: Nothing to export, a text action, or a name LeRobot cannot hold.
        ImportError: pyarrow is not installed.
    """
    pa, pq = _import_pyarrow()
    out = Path(out)
    if fps is not None and (not isinstance(fps, int) or fps < 1):
        raise ValueError(f"fps must be a positive integer (LeRobot stores an int), got {fps!r}")
    with _opened(dataset) as ds:
        _check_nonempty(ds)
        columns, task_get = _lerobot_columns(ds, task_field)
        fps = fps or _default_fps(ds)
        prov = _provenance(ds)
        default_task = task or prov["env_id"] or ds.id or "twinloop"
        with _atomic_output(out, overwrite) as tmp:
            result = _write_lerobot(
                ds,
                tmp,
                pa,
                pq,
                columns,
                fps=fps,
                task_get=task_get,
                default_task=default_task,
                robot_type=robot_type or prov["env_id"],
                provenance=prov,
                file_limit_bytes=data_file_size_mb * 1024 * 1024,
                progress=progress,
            )
        result["path"] = str(out)
        return result


def _write_lerobot(
    ds: Dataset,
    root: Path,
    pa: Any,
    pq: Any,
    columns: list[_Column],
    *,
    fps: int,
    task_get: Callable[[EpisodeData], Any] | None,
    default_task: str,
    robot_type: str | None,
    provenance: dict[str, Any],
    file_limit_bytes: float,
    progress: ExportProgressFn | None,
) -> dict[str, Any]:
    fields = [c.arrow_field(pa) for c in columns]
    hf_meta = {"info": {"features": {c.name: c.hf_feature for c in columns}}}
    schema = pa.schema(fields, metadata={b"huggingface": json.dumps(hf_meta).encode()})
    tasks: dict[str, int] = {}
    episode_rows: list[dict[str, Any]] = []
    all_stats: dict[str, list[dict[str, np.ndarray]]] = {}
    chunk_idx = file_idx = 0
    writer = None
    file_bytes = 0.0
    frame = 0
    total = len(ds)
    try:
        for e, ep in enumerate(ds.iterate_episodes()):
            n = len(ep)
            frame_tasks = list(task_get(ep)) if task_get is not None else [default_task] * n
            for t in frame_tasks:
                tasks.setdefault(t, len(tasks))
            values: dict[str, Any] = {c.name: c.get(ep) for c in columns if c.get is not None}
            values["timestamp"] = (np.arange(n) / fps).astype(np.float32)
            values["frame_index"] = np.arange(n, dtype=np.int64)
            values["episode_index"] = np.full(n, e, dtype=np.int64)
            values["index"] = np.arange(frame, frame + n, dtype=np.int64)
            values["task_index"] = np.array([tasks[t] for t in frame_tasks], dtype=np.int64)
            arrays = [
                c.arrow_array(pa, values[c.name], fld)
                for c, fld in zip(columns, fields, strict=True)
            ]
            table = pa.Table.from_arrays(arrays, schema=schema)
            if writer is not None and file_bytes + table.nbytes > file_limit_bytes:
                writer.close()
                writer = None
                file_idx += 1
                if file_idx == _LEROBOT_CHUNKS_SIZE:
                    chunk_idx, file_idx = chunk_idx + 1, 0
            if writer is None:
                path = root / "data" / f"chunk-{chunk_idx:03d}" / f"file-{file_idx:03d}.parquet"
                path.parent.mkdir(parents=True, exist_ok=True)
                writer = pq.ParquetWriter(path, schema, compression="snappy")
                file_bytes = 0.0
            writer.write_table(table)
            file_bytes += table.nbytes
            row: dict[str, Any] = {
                "episode_index": e,
                "tasks": list(dict.fromkeys(frame_tasks)),
                "length": n,
                "data/chunk_index": chunk_idx,
                "data/file_index": file_idx,
                "dataset_from_index": frame,
                "dataset_to_index": frame + n,
            }
            for c in columns:
                stats = _feature_stats(c, values[c.name])
                if stats is None:
                    continue
                all_stats.setdefault(c.name, []).append(stats)
                for k, v in stats.items():
                    row[f"stats/{c.name}/{k}"] = np.asarray(v).tolist()
            row["meta/episodes/chunk_index"] = 0
            row["meta/episodes/file_index"] = 0
            row["twinloop/episode_id"] = ep.id
            episode_rows.append(row)
            frame += n
            if progress is not None:
                progress(e + 1, total)
    finally:
        if writer is not None:
            writer.close()
    meta = root / "meta"
    (meta / "episodes" / "chunk-000").mkdir(parents=True, exist_ok=True)
    pq.write_table(
        pa.Table.from_pylist(episode_rows),
        meta / "episodes" / "chunk-000" / "file-000.parquet",
        compression="snappy",
    )
    task_table = pa.table(
        {
            "task_index": pa.array(list(tasks.values()), pa.int64()),
            "__index_level_0__": pa.array(list(tasks), pa.string()),
        }
    ).replace_schema_metadata({b"pandas": _pandas_index_metadata(pa)})
    pq.write_table(task_table, meta / "tasks.parquet")
    stats = {name: _json_stats(_aggregate_stats(s)) for name, s in all_stats.items()}
    (meta / "stats.json").write_text(json.dumps(stats, indent=4))
    info = {
        "codebase_version": LEROBOT_CODEBASE_VERSION,
        "robot_type": robot_type,
        "total_episodes": len(episode_rows),
        "total_frames": frame,
        "total_tasks": len(tasks),
        "chunks_size": _LEROBOT_CHUNKS_SIZE,
        "data_files_size_in_mb": max(1, round(file_limit_bytes / 2**20)),
        "video_files_size_in_mb": _LEROBOT_VIDEO_FILE_SIZE_MB,
        "fps": fps,
        "splits": {"train": f"0:{len(episode_rows)}"},
        "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
        "video_path": None,
        "features": {c.name: c.feature for c in columns},
        "twinloop": {
            **provenance,
            "action": REQUESTED_DOC,
            "applied_command": APPLIED_DOC,
            "frames": "frame t: observation before step t, action of step t, next.* = what "
            "step t returned; the final observation of an episode is not a frame",
            "episode_ids": "meta/episodes column twinloop/episode_id",
        },
    }
    (meta / "info.json").write_text(json.dumps(info, indent=4))
    return {
        "episodes": len(episode_rows),
        "frames": frame,
        "tasks": len(tasks),
        "features": [c.name for c in columns],
        "skipped": ds.problems,
    }


# --- robomimic --------------------------------------------------------------------------------
_MASK_BAD = re.compile(r"[^A-Za-z0-9_.=+-]+")


def _mask_name(text: str) -> str:
    return _MASK_BAD.sub("_", text).strip("_") or "_"


def _obs_key(f: FieldSpec) -> str:
    """The robomimic obs key of an observation leaf: its key path joined by ``_``."""
    return "_".join(str(k) for k in f.key) or "observations"


def _valid_split(ids: Sequence[int], fraction: float, seed: int) -> set[int]:
    """Episode ids of the validation split: the ``round(fraction * N)`` smallest hashes.

    An episode's place depends only on its id and ``seed``, so the split of a dataset that
    grows keeps its old assignments as far as the counts allow.
    """
    n = len(ids)
    if fraction <= 0 or n < 2:
        return set()
    k = min(max(1, round(fraction * n)), n - 1)

    def h(i: int) -> bytes:
        return hashlib.blake2b(f"{seed}:{i}".encode(), digest_size=8).digest()

    return set(sorted(ids, key=h)[:k])


def _episode_labels(ds: Dataset) -> tuple[list[str | None], list[dict[str, Any] | None]]:
    """Backend kind and tags of each episode, where the metadata says so."""
    prov = _provenance(ds)
    rows = ds.episode_metadata
    merged = bool(ds.metadata.get("combined_datasets")) or "shards" in ds.metadata.get(
        "twinloop", {}
    )
    kinds = {str(b.get("kind", "")) for b in prov["backends"] if isinstance(b, Mapping)}
    backend = kinds.pop() if len(kinds) == 1 else None
    if backend is None and len(prov["backends"]) > 1:
        log.info("%s: several backends and no per-episode backend; no backend masks", ds.path)
    tags = None if merged else dict(prov["tags"])
    out_b, out_t = [], []
    for r in rows:
        b = r.get("backend")
        out_b.append(str(b.get("kind", b)) if isinstance(b, Mapping) else b or backend)
        t = r.get("tags")
        out_t.append(dict(t) if isinstance(t, Mapping) else tags)
    return out_b, out_t


def _env_args(ds: Dataset) -> dict[str, Any]:
    tl = ds.metadata.get("twinloop", {})
    config = tl.get("env_config")
    kwargs = (
        {k: v for k, v in config.items() if k != "__class__"} if isinstance(config, dict) else {}
    )
    return {
        "env_name": tl.get("env_id") or ds.id,
        "type": ROBOMIMIC_GYM_TYPE,
        "env_kwargs": kwargs,
    }


def export_robomimic(
    dataset: Dataset | str | os.PathLike,
    out: str | os.PathLike,
    *,
    valid_fraction: float = 0.1,
    split_seed: int = 0,
    compress_images: bool = True,
    overwrite: bool = False,
    progress: ExportProgressFn | None = None,
) -> dict[str, Any]:
    """Write a dataset (or a filtered view of one) as a robomimic HDF5 file ``out``.

    Layout: ``data`` (attributes ``total``, the number of transitions, and ``env_args``, JSON
    ``{"env_name": env id, "type": 2 (Gym), "env_kwargs": the recorded config sections}``, so
    ``gymnasium.make(env_name, **env_kwargs)`` rebuilds the env) holds ``demo_0 ..
    demo_<N-1>`` in export order, each with attribute ``num_samples`` (and ``episode_id``,
    ``seed``, ``episode_return``) and datasets ``actions`` (requested; ``(L, D)``, several
    action leaves concatenated as listed in the ``layout`` attribute), ``applied_commands``
    (applied, when recorded), ``rewards``, ``dones`` (= terminations: robomimic's offline RL
    masks bootstrapping with it, and a time limit is no terminal state), ``terminations``,
    ``truncations``, ``obs/<key>`` (rows ``0..L-1``) and ``next_obs/<key>`` (rows ``1..L``).
    Each Dict/Tuple observation leaf is one key (its key path joined by ``_``: ``image``,
    ``arm_pos``, ``pair_0``); a flat observation is the key ``observations`` (its field path);
    scalars get a trailing axis of 1; text leaves are variable-length UTF-8 strings.

    Filter keys under ``mask``: ``terminated``, ``truncated``, ``success`` (infos with
    ``is_success``/``success``), ``backend_<kind>`` and ``tag_<key>_<value>`` (where the
    metadata ties them to episodes: not for merged datasets, whose tags were combined) and a
    deterministic ``train``/``valid`` split (see ``valid_fraction``).

    Args:
        dataset: A :class:`Dataset` (a filtered view exports only its episodes) or its path.
        out: Output file (``.hdf5``).
        valid_fraction: Share of episodes in the ``valid`` mask (at least one when positive and
            there are two or more episodes); chosen by a hash of the episode id and
            ``split_seed``, so repeated exports agree.
        split_seed: Changes which episodes are ``valid``.
        compress_images: gzip image observations, one frame per chunk.
        overwrite: Replace ``out`` if it exists.
        progress: Called as ``progress(episodes_done, episodes_total)``.

    Returns:
        ``{"episodes", "steps", "path", "obs_keys", "filter_keys": {name: count}, "skipped"}``.

    Raises:
        DatasetExistsError: ``out`` exists and ``overwrite`` is false.
        ValueError: Nothing to export, a text action, or a bad ``valid_fraction``.
    """
    import h5py

    if not 0.0 <= valid_fraction < 1.0:
        raise ValueError(f"valid_fraction must be in [0, 1), got {valid_fraction}")
    out = Path(out)
    with _opened(dataset) as ds:
        _check_nonempty(ds)
        layout = _action_layout(ds)
        obs = _obs_fields(ds)
        keys = [_obs_key(f) for f in obs]
        dupes = sorted({k for k in keys if keys.count(k) > 1})
        if dupes:
            raise ValueError(f"{ds.path}: observation leaves map to the same obs key(s) {dupes}")
        applied = _has_info(ds, APPLIED_COMMAND_KEY)
        success_key = _success_key(ds)
        backends, tags = _episode_labels(ds)
        rows = ds.episode_metadata
        valid = _valid_split([int(r["id"]) for r in rows], valid_fraction, split_seed)
        masks: dict[str, list[str]] = {"terminated": [], "truncated": []}
        if success_key is not None:
            masks["success"] = []
        masks["train"] = []
        if valid:
            masks["valid"] = []
        total_steps = 0
        with _atomic_output(out, overwrite) as tmp, h5py.File(tmp, "w") as h5:
            data = h5.create_group("data")
            n_eps = len(ds)
            for i, ep in enumerate(ds.iterate_episodes()):
                name = f"demo_{i}"
                n = len(ep)
                g = data.create_group(name)
                g.attrs["num_samples"] = n
                g.attrs["episode_id"] = ep.id
                for attr in ("seed", "episode_return"):
                    if ep.metadata.get(attr) is not None:
                        g.attrs[attr] = ep.metadata[attr]
                act = g.create_dataset("actions", data=_action_matrix(ds, ep))
                act.attrs["kind"] = "requested"
                act.attrs["source"] = "actions"
                act.attrs["layout"] = json.dumps(layout)
                if applied:
                    cmd = np.asarray(ep.infos[APPLIED_COMMAND_KEY])[1:].reshape(n, -1)
                    d = g.create_dataset("applied_commands", data=cmd)
                    d.attrs["kind"] = "applied"
                    d.attrs["source"] = f"infos/{APPLIED_COMMAND_KEY} (row t + 1)"
                g.create_dataset("rewards", data=np.asarray(ep.rewards, dtype=np.float64))
                g.create_dataset("dones", data=np.asarray(ep.terminations).astype(np.int64))
                g.create_dataset("terminations", data=np.asarray(ep.terminations, dtype=bool))
                g.create_dataset("truncations", data=np.asarray(ep.truncations, dtype=bool))
                for f, key in zip(obs, keys, strict=True):
                    value = _leaf(ep.observations, f.key)
                    _write_obs(h5py, g, key, f, value, n, compress_images)
                if bool(np.asarray(ep.terminations)[-1]):
                    masks["terminated"].append(name)
                if bool(np.asarray(ep.truncations)[-1]):
                    masks["truncated"].append(name)
                if success_key is not None and _episode_success(ep, success_key):
                    masks["success"].append(name)
                if backends[i]:
                    masks.setdefault(f"backend_{_mask_name(backends[i])}", []).append(name)
                for k, v in sorted((tags[i] or {}).items()):
                    masks.setdefault(f"tag_{_mask_name(f'{k}_{v}')}", []).append(name)
                masks["valid" if ep.id in valid else "train"].append(name)
                total_steps += n
                if progress is not None:
                    progress(i + 1, n_eps)
            data.attrs["total"] = total_steps
            data.attrs["env_args"] = json.dumps(_env_args(ds))
            data.attrs["twinloop"] = json.dumps(
                {
                    **_provenance(ds),
                    "actions": REQUESTED_DOC,
                    "applied_commands": APPLIED_DOC if applied else None,
                    "dones": "terminations (not truncations)",
                    "valid_fraction": valid_fraction,
                    "split_seed": split_seed,
                }
            )
            mask = h5.create_group("mask")
            for key, names in masks.items():
                width = max([len(s) for s in names], default=1)
                mask.create_dataset(key, data=np.array(names, dtype=f"S{width}"))
        return {
            "episodes": len(ds),
            "steps": total_steps,
            "path": str(out),
            "obs_keys": keys,
            "filter_keys": {k: len(v) for k, v in masks.items()},
            "skipped": ds.problems,
        }


def _write_obs(
    h5py: Any, g: Any, key: str, f: FieldSpec, value: Any, n: int, compress: bool
) -> None:
    """``obs/<key>`` = rows ``0..n-1`` and ``next_obs/<key>`` = rows ``1..n`` of a leaf."""
    for group, rows in (("obs", slice(0, n)), ("next_obs", slice(1, n + 1))):
        if f.text:
            g.create_dataset(
                f"{group}/{key}", data=list(value[rows]), dtype=h5py.string_dtype("utf-8")
            )
            continue
        arr = np.asarray(value)[rows]
        if arr.ndim == 1:
            arr = arr[:, None]
        opts: dict[str, Any] = {}
        if f.image and compress:
            opts = {"chunks": (1, *arr.shape[1:]), "compression": "gzip", "compression_opts": 4}
        g.create_dataset(f"{group}/{key}", data=arr, **opts)
