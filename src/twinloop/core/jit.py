"""numba settings shared by every twinloop kernel.

``njit`` here is numba's, with twinloop's defaults: on-disk caching and numpy's error model
(no Python-style zero-division checks in hot loops; inputs are validated at the boundary).

Caching is keyed on the whole package's source. numba invalidates a cached function only
when *its own* file changes, so a kernel in one file that calls a function edited in another
would silently keep the old code. Unless ``NUMBA_CACHE_DIR`` is set, twinloop therefore
caches under ``~/.cache/twinloop/numba/<stamp>``, where the stamp hashes the path, size and
modification time of every module in the package: any edit starts a fresh cache.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numba

_KEEP = 4  # stamps to keep; older cache folders are removed


def source_stamp() -> str:
    """A short hash of every twinloop module's relative path, size and modification time."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha1()
    for path in sorted(root.rglob("*.py")):
        st = path.stat()
        digest.update(f"{path.relative_to(root)}:{st.st_size}:{st.st_mtime_ns};".encode())
    return digest.hexdigest()[:16]


def _private_fallback() -> Path:
    """A cache folder under the temp dir that only this user can have written.

    numba unpickles what it finds in its cache, so a folder another local user could have
    created or written (the temp dir is shared) must never be used. The per-user folder is
    created 0700; if it exists but belongs to someone else or is writable by others, a fresh
    private folder (random name) serves this process only.
    """
    folder = Path(tempfile.gettempdir()) / f"twinloop-numba-{os.getuid()}"
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        st = os.lstat(folder)
        if stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o022:
            return folder
    except OSError:
        pass
    return Path(tempfile.mkdtemp(prefix="twinloop-numba-"))


def _configure_cache() -> None:
    if os.environ.get("NUMBA_CACHE_DIR"):
        return  # the user chose a cache folder
    home = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    base = Path(home) / "twinloop" / "numba"
    target = base / source_stamp()
    try:
        target.mkdir(parents=True, exist_ok=True)
        probe = target / ".writable"
        probe.touch()
    except OSError:
        target = _private_fallback() / target.name
        target.mkdir(mode=0o700, parents=True, exist_ok=True)
    numba.config.CACHE_DIR = str(target)
    try:  # keep the cache folder from growing with every edit
        old = sorted(
            (p for p in target.parent.iterdir() if p.is_dir() and p != target),
            key=lambda p: p.stat().st_mtime,
        )
        for p in old[: max(0, len(old) - (_KEEP - 1))]:
            shutil.rmtree(p, ignore_errors=True)
    except OSError:
        pass


_configure_cache()


def njit(*args: Any, **kwargs: Any) -> Callable[..., Any]:
    """``numba.njit`` with ``cache=True`` and ``error_model="numpy"`` unless given."""
    kwargs.setdefault("cache", True)
    kwargs.setdefault("error_model", "numpy")
    if args and callable(args[0]):
        return numba.njit(**kwargs)(args[0])
    return numba.njit(*args, **kwargs)
