"""Merge dataset shards (one per worker, say) into one dataset with episode ids 0..N-1."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from twinloop.datasets.errors import SchemaMismatchError
from twinloop.datasets.reader import Dataset
from twinloop.datasets.schema import SOURCE_INFO
from twinloop.datasets.writer import DatasetWriter, Mode

log = logging.getLogger(__name__)

#: Called as ``progress(episodes_done, episodes_total)``.
MergeProgressFn = Callable[[int, int], None]

_ENV_KEYS = ("env_id", "env_config", "backend", "n_envs", "env_metadata")


def merge_datasets(
    directory: str | os.PathLike,
    shards: Sequence[str | os.PathLike],
    *,
    dataset_id: str | None = None,
    mode: Mode = "create",
    tags: Mapping[str, Any] | None = None,
    progress: MergeProgressFn | None = None,
) -> dict[str, Any]:
    """Copy every readable episode of ``shards``, in order, into the dataset ``directory``.

    Args:
        directory: Output dataset folder.
        shards: Input datasets; all must have the same spaces and fields.
        dataset_id: Output id (default: derived from ``directory``).
        mode: ``"create"``, ``"overwrite"`` or ``"append"``.
        tags: Extra tags for the output (shard tags are merged in, later shards win).
        progress: Called after each episode.

    Returns:
        ``{"episodes": n, "steps": n, "skipped": [problems of damaged shard episodes]}``.

    Raises:
        SchemaMismatchError: A shard's spaces or fields differ from the first shard's.
    """
    if not shards:
        raise ValueError("merge needs at least one shard")
    opened = [Dataset(s) for s in shards]
    try:
        first = opened[0]
        for ds in opened[1:]:
            for what in ("observation_space", "action_space"):
                if ds.metadata[what] != first.metadata[what]:
                    raise SchemaMismatchError(
                        f"cannot merge {ds.path.parent} into {first.path.parent}: their "
                        f"{what.replace('_', ' ')}s differ"
                    )
            if ds.fields != first.fields:
                diff = sorted({f.path for f in ds.fields} ^ {f.path for f in first.fields})
                raise SchemaMismatchError(
                    f"cannot merge {ds.path.parent} into {first.path.parent}: their fields "
                    f"differ ({', '.join(diff[:5]) or 'same names, different types'})"
                )
        tl0 = first.metadata.get("twinloop", {})
        env_info = {k: tl0[k] for k in _ENV_KEYS if k in tl0}
        backends = []
        merged_tags: dict[str, Any] = {}
        for ds in opened:
            tl = ds.metadata.get("twinloop", {})
            for b in tl.get("backends", [tl.get("backend")] if tl.get("backend") else []):
                if b not in backends:
                    backends.append(b)
            merged_tags.update(tl.get("tags", {}))
            if tl.get("env_config") != tl0.get("env_config"):
                log.warning("%s was recorded with a different env config", ds.path.parent)
        merged_tags.update(tags or {})
        env_info["backends"] = backends
        env_info["shards"] = [
            {
                "dataset_id": ds.id,
                "path": str(ds.path.parent),
                "episodes": len(ds),
                "env_id": ds.metadata.get("twinloop", {}).get("env_id"),
                "env_config": ds.metadata.get("twinloop", {}).get("env_config"),
                # the device that recorded it (a fleet's member): its identity and address
                "backend": ds.metadata.get("twinloop", {}).get("backend"),
            }
            for ds in opened
        ]
        writer = DatasetWriter(
            directory,
            observation_space=first.observation_space,
            action_space=first.action_space,
            dataset_id=dataset_id,
            mode=mode,
            env_info=env_info,
            tags=merged_tags,
        )
        with writer:
            writer.begin([f for f in first.fields if f.source == SOURCE_INFO])
            total = sum(len(ds) for ds in opened)
            done = 0
            for ds in opened:
                store = ds._store
                # by path: a dataset another tool wrote may lack fields ours have (wall clock)
                pos = {f.path: j for j, f in enumerate(store.fields)}
                assert writer.fields is not None
                for e in ds.indices.tolist():
                    values = [
                        store.field(pos[f.path], e) if f.path in pos else None
                        for f in writer.fields
                    ]
                    meta = store.meta_rows[e]
                    writer.write_fields(
                        values,
                        seed=int(meta.get("seed", -1)),
                        env_index=int(meta.get("env_index", 0)),
                    )
                    done += 1
                    if progress is not None:
                        progress(done, total)
            writer.extra_metadata["combined_datasets"] = [ds.id for ds in opened]
            skipped = [p for ds in opened for p in ds.problems]
            return {"episodes": writer.n_episodes, "steps": writer.n_steps, "skipped": skipped}
    finally:
        for ds in opened:
            ds.close()
