"""Keeps a capture's metadata.json true when the process writing it dies.

Minari reads a dataset's episode count from metadata.json, which a writer rewrites at most
once per ``metadata_interval_s`` (rewriting it at every commit would cost more than the
commit). A writer started with ``watch=True`` therefore starts this small process beside it,
run as a script so that it imports nothing heavy while it waits. It holds the read end of a
pipe whose write end only the writer has:

* the writer closes normally: it sends ``closed`` and the watcher exits;
* the writer dies (SIGKILL, a crash, an exit without ``close``): the pipe reaches end of file
  (or the watcher's parent changes), the watcher waits for the dead writer's lock to be free,
  then runs :func:`twinloop.datasets.recover_dataset`, which brings metadata.json up to date
  with the data file and marks the capture closed.

If another writer has taken the dataset meanwhile (a restarted capture), that writer keeps
metadata.json right itself, and the watcher leaves.
"""

from __future__ import annotations

import fcntl
import os
import select
import sys
import time

#: How long the watcher waits for the dead writer's lock before leaving it to whoever holds it.
LOCK_WAIT_S = 30.0


def _writer_gone() -> bool:
    """Block until the writer says ``closed`` (False) or disappears (True)."""
    parent = os.getppid()
    said = b""
    while True:
        ready, _, _ = select.select([0], [], [], 1.0)
        if ready:
            chunk = os.read(0, 64)
            if not chunk:
                return b"closed" not in said
            said += chunk
            if b"closed" in said:
                return False
        elif os.getppid() != parent:
            return True


def _lock_free(lock_path: str) -> bool:
    """Wait (up to LOCK_WAIT_S) until nobody holds the dataset's lock."""
    try:
        fd = os.open(lock_path, os.O_RDONLY)
    except OSError:
        return True
    try:
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.1)
                continue
            fcntl.flock(fd, fcntl.LOCK_UN)
            return True
    finally:
        os.close(fd)


def main(argv: list[str]) -> int:
    """``_watch.py DATA_DIR LOCK_FILE``: recover the dataset if its writer dies."""
    data_dir, lock_name = argv[1], argv[2]
    if not _writer_gone() or not _lock_free(os.path.join(data_dir, lock_name)):
        return 0
    from twinloop.datasets import DatasetError, recover_dataset

    try:
        counts = recover_dataset(data_dir)
    except DatasetError as exc:  # e.g. a restarted capture took the lock in between
        print(
            f"twinloop: could not update {data_dir} after its writer died: {exc}", file=sys.stderr
        )
        return 1
    print(
        f"twinloop: the capture writing {data_dir} stopped without closing; metadata.json now "
        f"counts its {counts['episodes']} committed episodes ({counts['steps']} steps)",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
