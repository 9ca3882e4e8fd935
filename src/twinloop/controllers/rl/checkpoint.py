"""Checkpoints as named arrays (``.npz``) plus JSON, written atomically; never pickle.

A checkpoint is a folder ``checkpoint-<step>`` inside a run's folder holding:

* ``policy.json`` + ``policy.npz``: what a deployed controller needs (the acting network,
  the observation normaliser, the action and observation spaces, the agent's config);
* ``state.json`` + ``state.npz``: everything else training needs to continue exactly (the
  learner's parameters and optimiser state, target network, replay buffer, random states,
  counters, the metrics so far).

The folder is written under a temporary name and renamed into place, so a kill at any
moment leaves either the complete new checkpoint or none (POSIX ``rename`` is atomic); the
newest complete one is what :func:`latest_checkpoint` finds. Arrays are read back with
``allow_pickle=False``.

Nested parameters (dicts, lists, tuples, named tuples such as optax's states) are stored
leaf by leaf under ``/``-joined paths (``encoder/layers/0/w``) and read back into a
template of the same structure, which also checks every shape and dtype.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

#: Checkpoint folders: ``checkpoint-<env step, 12 digits>``.
_NAME = re.compile(r"^checkpoint-(\d{12})$")
#: Complete checkpoints kept in a run folder (the newest ones).
KEEP = 2


def flatten(tree: Any, prefix: str = "") -> dict[str, np.ndarray]:
    """Leaves of a nested structure as ``{"a/b/0": array}`` (host NumPy copies)."""
    out: dict[str, np.ndarray] = {}
    if isinstance(tree, dict):
        for k in sorted(tree):
            if "/" in str(k):
                raise ValueError(f"key {k!r} under {prefix or 'the root'} contains '/'")
            out.update(flatten(tree[k], f"{prefix}{k}/"))
    elif isinstance(tree, list | tuple):
        for i, v in enumerate(tree):
            out.update(flatten(v, f"{prefix}{i}/"))
    elif tree is None:
        pass
    else:
        out[prefix.rstrip("/")] = np.array(tree)
    return out


def unflatten(template: Any, arrays: dict[str, np.ndarray], prefix: str = "") -> Any:
    """Rebuild ``template``'s structure with leaves from ``arrays`` (as :func:`flatten` names).

    Raises:
        ValueError: A leaf is missing or its shape or dtype differs from the template's.
    """
    if isinstance(template, dict):
        return {k: unflatten(v, arrays, f"{prefix}{k}/") for k, v in template.items()}
    if isinstance(template, list | tuple):
        items = [unflatten(v, arrays, f"{prefix}{i}/") for i, v in enumerate(template)]
        if isinstance(template, list):
            return items
        return type(template)(*items) if hasattr(template, "_fields") else tuple(items)
    if template is None:
        return None
    name = prefix.rstrip("/")
    if name not in arrays:
        raise ValueError(f"checkpoint lacks array {name!r}")
    value = np.asarray(arrays[name])
    want = np.asarray(template)
    if value.shape != want.shape or value.dtype != want.dtype:
        raise ValueError(
            f"checkpoint array {name!r} is {value.dtype}{value.shape}, "
            f"expected {want.dtype}{want.shape}"
        )
    return value


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)
        fh.flush()
        os.fsync(fh.fileno())


def _write_json(path: Path, data: Any) -> None:
    with open(path, "w") as fh:
        json.dump(data, fh, indent=1, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    policy: tuple[dict[str, Any], dict[str, np.ndarray]],
    state: tuple[dict[str, Any], dict[str, np.ndarray]],
) -> Path:
    """Write ``checkpoint-<step>`` atomically and keep the newest :data:`KEEP` checkpoints.

    Args:
        run_dir: The run's folder (created if missing).
        step: Env steps done.
        policy: ``(json, arrays)`` of the deployable policy.
        state: ``(json, arrays)`` of the rest of the training state.

    Returns:
        The checkpoint's folder.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    final = run_dir / f"checkpoint-{int(step):012d}"
    tmp = Path(tempfile.mkdtemp(prefix=".checkpoint-tmp-", dir=run_dir))
    try:
        for name, (meta, arrays) in (("policy", policy), ("state", state)):
            _write_npz(tmp / f"{name}.npz", arrays)
            _write_json(tmp / f"{name}.json", {**meta, "step": int(step)})
        if final.exists():  # the same step written again (a resumed run): replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in checkpoints(run_dir)[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoint folders of a run, oldest first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [p for p in run_dir.iterdir() if _NAME.match(p.name) and p.is_dir()]
    done = [p for p in found if all((p / f).is_file() for f in _FILES)]
    return sorted(done, key=lambda p: p.name)


_FILES = ("policy.json", "policy.npz", "state.json", "state.npz")


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    found = checkpoints(run_dir)
    return found[-1] if found else None


def read_part(checkpoint: str | Path, name: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``(json, arrays)`` of ``policy`` or ``state`` in a checkpoint folder."""
    checkpoint = Path(checkpoint)
    meta = json.loads((checkpoint / f"{name}.json").read_text())
    with np.load(checkpoint / f"{name}.npz", allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    return meta, arrays
