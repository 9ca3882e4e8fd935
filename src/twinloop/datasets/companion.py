"""The capture companion: a second process that turns a vector env's steps into HDF5.

Encoding episodes costs about as much CPU as stepping a small vector env, so a vector capture
can hand that work to a companion process on another core::

    controller process                       companion process (a fresh interpreter)
    env.step -> copy the step's output  -->  journal slot  -->  StepBuffer -> DatasetWriter
    block and actions into a journal slot    (shared memory)    (the in-process machinery)

The journal is a ring of fixed-size slots in shared memory (``/dev/shm``). A slot holds a
whole step: the kernel vector env's output block as is (``BLOCK``; the companion scatters
it) or rows already laid out (``ROW``, for other vector envs), or a reset or a change of
the recording mask. ``step()`` returns once its slot is published, and the companion commits
the ended episodes with the in-process recorder's machinery
(:class:`~twinloop.datasets._commit.RowCommitter`), several steps per commit (the files hold
the same episodes and values as an inline capture). The recorder
(:mod:`twinloop.datasets.record`) uses this module; this module never imports the recorder.

Durability: the journal is shared memory, so a controller killed with SIGKILL loses nothing
it published. The companion notices that its parent is gone (its stdin reaches end of file,
or its parent pid changes),
commits every published step, closes the dataset and exits; it holds the dataset's lock until
then (:func:`~twinloop.datasets.writer.writer_alive`). Killing the companion itself loses the
steps it had not yet committed (the journal's backlog, normally well under a millisecond);
captures that must survive power loss use ``fsync=True``, which records in process.

The companion starts at the capture's first step (~0.7 s: a fresh interpreter that loads
the cached kernels). Publishing relies on stores becoming visible in program order (x86-64);
elsewhere the recorder writes in process.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import platform
import secrets
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from twinloop.datasets import errors as errors_mod
from twinloop.datasets.errors import DatasetError, DatasetWriteError

# journal header (int64 words)
H_MAGIC = 0
H_SLOTS = 1
H_SLOT_BYTES = 2
H_WRITE = 3  # slots published by the controller
H_READ = 4  # slots consumed by the companion
H_STATUS = 5
H_EPISODES = 6
H_STEPS = 7
HEADER_BYTES = 4096
ERROR_AT = 512  # error message (UTF-8, NUL-terminated) in the header
MAGIC = 0x314C4E524A4C5754  # "TWLJRNL1"

S_RUNNING = 1
S_CLOSED = 2
S_FAILED = 3

# record kinds (slot word 0)
K_BLOCK = 1
K_ROW = 2
K_RESET = 3
K_RECORDING = 4
K_CLOSE = 5

_ENTRY = "import sys; from twinloop.datasets.companion import main; sys.exit(main())"
#: Shared-memory budget of one journal.
JOURNAL_BYTES = 8 << 20
MAX_SLOTS = 256
MIN_SLOTS = 4
#: At most this many slots are applied before their episodes are written in one commit ...
BATCH = 32
#: ... and fewer than this wait up to 0.2 ms for more.
MIN_BATCH = 8


def supported() -> bool:
    """Whether the companion can run here (x86-64 store ordering, POSIX shared memory)."""
    return platform.machine().lower() in ("x86_64", "amd64") and os.name == "posix"


def _align64(n: int) -> int:
    return (n + 63) & ~63


def slot_layout(n_envs: int, row_bytes: int, act_bytes: Sequence[int], block_bytes: int) -> dict:
    """Byte offsets of a slot's regions and the slot size."""
    out: dict[str, Any] = {"head": 0}
    at = 64
    out["act"] = []
    for nb in act_bytes:
        out["act"].append(at)
        at = _align64(at + n_envs * nb)
    for name, size in (
        ("mask", n_envs),
        ("seeds", 8 * n_envs),
        ("recs", n_envs),
        ("row", n_envs * row_bytes),
        ("final", n_envs * row_bytes),
        ("block", block_bytes),
    ):
        out[name] = at
        at = _align64(at + size)
    out["slot_bytes"] = at
    return out


class Journal:
    """The shared-memory ring: a header page, then ``n_slots`` slots of ``slot_bytes``."""

    def __init__(self, path: str, n_slots: int, slot_bytes: int, create: bool) -> None:
        """Create (controller side) or open (companion side) the journal file and map it."""
        self.path = path
        size = HEADER_BYTES + n_slots * slot_bytes
        if create:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            try:  # real pages now: a full /dev/shm fails here, not as SIGBUS mid-capture
                os.posix_fallocate(fd, 0, size)
            except OSError:
                os.close(fd)
                with contextlib.suppress(OSError):
                    os.unlink(path)
                raise
        else:
            fd = os.open(path, os.O_RDWR)
        try:
            self.map = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self.bytes = np.frombuffer(self.map, dtype=np.uint8)
        self.header = self.bytes[:HEADER_BYTES].view(np.int64)
        if create:
            self.header[H_SLOTS] = n_slots
            self.header[H_SLOT_BYTES] = slot_bytes
            self.header[H_MAGIC] = MAGIC
        elif self.header[H_MAGIC] != MAGIC:
            raise DatasetError(f"{path} is not a twinloop capture journal")
        self.n_slots = n_slots
        self.slot_bytes = slot_bytes

    def slot(self, k: int) -> np.ndarray:
        """The bytes of slot ``k`` (modulo the ring)."""
        at = HEADER_BYTES + (k % self.n_slots) * self.slot_bytes
        return self.bytes[at : at + self.slot_bytes]

    def set_error(self, message: str) -> None:
        """Store an error message for the controller and mark the capture failed."""
        raw = message.encode("utf-8", "replace")[: HEADER_BYTES - ERROR_AT - 1]
        self.bytes[ERROR_AT : ERROR_AT + len(raw)] = np.frombuffer(raw, np.uint8)
        self.bytes[ERROR_AT + len(raw)] = 0
        self.header[H_STATUS] = S_FAILED

    def error(self) -> str:
        """The stored error message."""
        raw = self.bytes[ERROR_AT:HEADER_BYTES].tobytes()
        return raw.split(b"\0", 1)[0].decode("utf-8", "replace")

    def close(self) -> None:
        """Unmap (views into the map must be gone)."""
        self.header = self.bytes = None  # type: ignore[assignment]
        with contextlib.suppress(BufferError):
            self.map.close()


def _create_journal(n_slots: int, slot_bytes: int) -> Journal:
    """A new journal in ``/dev/shm`` (memory), else in the temporary folder (disk)."""
    dirs = [d for d in ("/dev/shm", tempfile.gettempdir()) if os.path.isdir(d)]
    errors: list[str] = []
    for d in dirs:
        path = os.path.join(d, f"twinloop-capture-{os.getpid()}-{secrets.token_hex(6)}")
        try:
            return Journal(path, n_slots, slot_bytes, create=True)
        except OSError as exc:
            errors.append(f"{path}: {exc.strerror or exc}")
    size_mb = (HEADER_BYTES + n_slots * slot_bytes) / 1e6
    raise DatasetWriteError(
        f"cannot create the capture journal ({size_mb:.0f} MB): {'; '.join(errors)}; "
        "free shared memory or record with capture='inline'"
    )


def slot_views(
    raw: np.ndarray,
    layout: Mapping[str, Any],
    buf: Any,
    act_fields: Sequence[int],
    block_layout: Sequence[Any] | None,
) -> dict[str, Any]:
    """Typed views of one slot's regions (``raw``: its bytes) for a schema's ``buf``."""
    n = buf.n_envs
    fields = buf.fields
    rb = buf.row_bytes
    v: dict[str, Any] = {
        "head": raw[:64].view(np.int64),
        "headf": raw[:64].view(np.float64),
        "act": [
            _typed(raw, at, n, fields[j].np_dtype, fields[j].shape)
            for j, at in zip(act_fields, layout["act"], strict=True)
        ],
        "mask": raw[layout["mask"] : layout["mask"] + n].view(np.bool_),
        "seeds": raw[layout["seeds"] : layout["seeds"] + 8 * n].view(np.int64),
        "recs": raw[layout["recs"] : layout["recs"] + n].view(np.bool_),
        "row": raw[layout["row"] : layout["row"] + n * rb].reshape(n, rb),
        "final": raw[layout["final"] : layout["final"] + n * rb].reshape(n, rb),
        "block": raw[layout["block"] : layout["slot_bytes"]],
    }
    v["act_pairs"] = list(zip(act_fields, v["act"], strict=True))
    if block_layout is not None:
        size, (to, ts), (uo, us) = block_layout
        block = v["block"] = v["block"][:size]
        v["terminated"] = np.ndarray((n,), np.bool_, buffer=block, offset=to, strides=(ts,))
        v["truncated"] = np.ndarray((n,), np.bool_, buffer=block, offset=uo, strides=(us,))
    return v


class SlotViews:
    """Typed views of each slot of a journal, built on first use and kept."""

    def __init__(
        self,
        journal: Journal,
        layout: Mapping[str, Any],
        buf: Any,
        act_fields: Sequence[int],
        block_layout: Sequence[Any] | None,
    ) -> None:
        """Remember the slot layout and the schema (``buf``) the views are typed by."""
        self.journal = journal
        self.args = (layout, buf, list(act_fields), block_layout)
        self._cache: dict[int, dict[str, Any]] = {}

    def __getitem__(self, k: int) -> dict[str, Any]:
        """The views of slot ``k % n_slots`` (see :func:`slot_views`)."""
        s = k % self.journal.n_slots
        v = self._cache.get(s)
        if v is None:
            v = self._cache[s] = slot_views(self.journal.slot(s), *self.args)
        return v

    def clear(self) -> None:
        """Drop every view (before the journal is unmapped)."""
        self._cache.clear()


def row_views(v: dict[str, Any], buf: Any) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per-field views of a slot's row (``(1, n, ...)``) and final rows (``(n, ...)``)."""
    views = v.get("row_views")
    if views is None:
        views = v["row_views"] = buf._views(v["row"][None])
        v["final_views"] = [x[0] for x in buf._views(v["final"][None])]
    return views, v["final_views"]


def _typed(raw: np.ndarray, at: int, n_envs: int, dtype: np.dtype, shape: tuple) -> np.ndarray:
    count = n_envs * int(np.prod(shape, dtype=np.int64))
    return raw[at : at + count * dtype.itemsize].view(dtype).reshape((n_envs, *shape))


# --- controller side --------------------------------------------------------------------------
class CompanionLink:
    """The controller's end: spawn the companion, publish steps, surface its errors.

    Args:
        handoff: ``(state, lock_fd)`` from :meth:`DatasetWriter.handoff` (the dataset, its
            schema and writer options; the still-held lock).
        buf: A :class:`~twinloop.datasets._episode.StepBuffer` of the schema (layout only).
        plan: The scatter plan for ``BLOCK`` steps, or None (``ROW`` steps only).
        block_layout: ``(bytes, terminated (offset, stride), truncated (offset, stride))`` of
            the env's output block, when ``plan`` is given.
        act_fields: Indices of the action fields.
    """

    def __init__(
        self,
        handoff: tuple[dict[str, Any], int],
        buf: Any,
        plan: np.ndarray | None,
        block_layout: tuple[int, tuple[int, int], tuple[int, int]] | None,
        act_fields: Sequence[int],
    ) -> None:
        """Create the journal, start the companion and wait until it holds the dataset."""
        state, lock_fd = handoff
        n = buf.n_envs
        act_fields = list(act_fields)
        block_bytes = block_layout[0] if block_layout is not None else 0
        layout = slot_layout(
            n, buf.row_bytes, [buf.fields[j].row_bytes for j in act_fields], block_bytes
        )
        slot_bytes = layout["slot_bytes"]
        n_slots = int(np.clip(JOURNAL_BYTES // slot_bytes, MIN_SLOTS, MAX_SLOTS))
        try:
            self.journal = _create_journal(n_slots, slot_bytes)
        except BaseException:
            os.close(lock_fd)  # the dataset is free again
            raise
        path = self.journal.path
        self.header = self.journal.header
        self._w = 0
        self._slots = SlotViews(self.journal, layout, buf, act_fields, block_layout)
        init = {
            "journal": path,
            "n_slots": n_slots,
            "layout": layout,
            "state": state,
            "n_envs": n,
            "plan": None if plan is None else plan.tolist(),
            "block_layout": block_layout,
            "act_fields": act_fields,
        }
        env = dict(os.environ, NUMBA_NUM_THREADS="1")
        try:
            try:
                self.proc = subprocess.Popen(
                    [sys.executable, "-c", _ENTRY, str(lock_fd)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    pass_fds=(lock_fd,),
                    env=env,
                )
            finally:
                os.close(lock_fd)  # the companion's copy keeps the lock
            assert self.proc.stdin is not None and self.proc.stdout is not None
            try:
                self.proc.stdin.write((json.dumps(init) + "\n").encode())
                self.proc.stdin.flush()
                reply = self.proc.stdout.readline()
            except BrokenPipeError:
                reply = b""
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)  # both ends have it mapped; nothing to clean up after a crash
        if not reply:
            self.proc.wait()
            raise DatasetWriteError(
                f"the capture companion for {state['directory']} exited with status "
                f"{self.proc.returncode} before starting (see its messages above)"
            )
        msg = json.loads(reply)
        if "error" in msg:
            self.proc.wait()
            raise _error_from(msg["error"], msg["message"])
        self._next_poll = 1024

    # slots -------------------------------------------------------------------------------------
    def acquire(self) -> dict[str, Any]:
        """The next free slot's views, waiting while the companion is a full ring behind."""
        header = self.header
        if header[H_STATUS] == S_FAILED:
            raise self._stored_error()
        while self._w - header[H_READ] >= self.journal.n_slots:
            self._check_alive()
            time.sleep(0.0001)
        self._next_poll -= 1
        if self._next_poll <= 0:
            self._next_poll = 1024
            self._check_alive()
        return self._slots[self._w]

    def publish(self, slot: dict[str, Any], kind: int, now: float) -> None:
        """Make the acquired slot visible to the companion."""
        slot["headf"][1] = now
        slot["head"][0] = kind
        self._w += 1
        self.header[H_WRITE] = self._w  # after every store of the slot (x86-64 order)

    def sync(self) -> None:
        """Wait until the companion has committed every published slot."""
        while self.header[H_READ] < self._w:
            self._check_alive()
            time.sleep(0.0002)

    @property
    def counts(self) -> tuple[int, int]:
        """``(episodes, steps)`` committed so far."""
        return int(self.header[H_EPISODES]), int(self.header[H_STEPS])

    def close(self, timeout_s: float | None = None) -> tuple[int, int]:
        """Publish the end, wait for the companion to commit everything and exit."""
        if self.proc.poll() is None and self.header[H_STATUS] != S_FAILED:
            slot = self.acquire()
            self.publish(slot, K_CLOSE, time.time())
        with contextlib.suppress(OSError, ValueError):
            self.proc.stdin.close()  # type: ignore[union-attr]
        self.proc.wait(timeout_s)
        counts = self.counts
        status = int(self.header[H_STATUS])
        error = self._stored_error() if status == S_FAILED else None
        self._slots.clear()
        self.header = None  # type: ignore[assignment]
        self.journal.close()
        if error is not None:
            raise error
        if status != S_CLOSED:
            raise DatasetWriteError(
                f"the capture companion exited with status {self.proc.returncode} without "
                "closing the dataset; the episodes it committed are intact "
                "(twinloop data info shows them)"
            )
        return counts

    def _stored_error(self) -> Exception:
        """The companion's error (``"ClassName: message"`` in the journal) as an exception."""
        message = self.journal.error()
        return _error_from(*message.split(": ", 1)) if ": " in message else DatasetError(message)

    def _check_alive(self) -> None:
        """Raise the companion's error, or that it died, if either happened."""
        if self.header[H_STATUS] == S_FAILED:
            raise self._stored_error()
        if self.proc.poll() is not None:
            raise DatasetWriteError(
                f"the capture companion (pid {self.proc.pid}) died with status "
                f"{self.proc.returncode}; the {self.counts[0]} episodes it committed are intact"
            )


def _error_from(name: str, message: str) -> Exception:
    cls = getattr(errors_mod, name, None)
    if isinstance(cls, type) and issubclass(cls, DatasetError):
        return cls(message)
    return DatasetWriteError(f"{name}: {message}")


# --- companion side ---------------------------------------------------------------------------
class _Stop:
    requested = False


def _parent_gone(stdin_fd: int, timeout_s: float) -> bool:
    ready, _, _ = select.select([stdin_fd], [], [], timeout_s)
    if not ready:
        return False
    return os.read(stdin_fd, 4096) == b""


def serve(lock_fd: int) -> int:
    """Run the companion: read the init line, then commit journal slots until the end."""
    from twinloop.datasets._commit import RowCommitter
    from twinloop.datasets._episode import StepBuffer
    from twinloop.datasets.writer import DatasetWriter

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the controller; we finish
    signal.signal(signal.SIGTERM, lambda *_: setattr(_Stop, "requested", True))
    stdin_fd = sys.stdin.fileno()
    line = b""
    while not line.endswith(b"\n"):
        chunk = os.read(stdin_fd, 1 << 16)
        if not chunk:
            return 1
        line += chunk
    init = json.loads(line)
    out = sys.stdout
    try:
        writer = DatasetWriter.adopt(init["state"], lock_fd)
        journal = Journal(init["journal"], init["n_slots"], init["layout"]["slot_bytes"], False)
    except Exception as exc:
        out.write(json.dumps({"error": type(exc).__name__, "message": str(exc)}) + "\n")
        out.flush()
        return 1
    n = int(init["n_envs"])
    assert writer.fields is not None
    buf = StepBuffer(writer.fields, n)
    plan = None if init["plan"] is None else np.array(init["plan"], dtype=np.int64)
    sink = RowCommitter(writer, buf, plan)
    sink.defer = True
    reader = _SlotReader(journal, init, buf)
    header = journal.header
    header[H_EPISODES], header[H_STEPS] = writer.n_episodes, writer.n_steps
    header[H_STATUS] = S_RUNNING
    out.write(json.dumps({"ok": True}) + "\n")
    out.flush()
    r = 0
    idle = 0.0001
    parent_gone = False
    parent = os.getppid()
    try:
        while True:
            w = min(int(header[H_WRITE]), r + BATCH)
            if 0 < w - r < MIN_BATCH and not (parent_gone or _Stop.requested):
                # a few more steps share the commit's fixed cost (two writes, the glue)
                parent_gone = _parent_gone(stdin_fd, 0.0002)
                w = min(int(header[H_WRITE]), r + BATCH)
            if w > r:
                closing = False
                for k in range(r, w):
                    if reader.apply(k, sink) == K_CLOSE:
                        closing = True
                        break
                sink.flush()
                header[H_EPISODES], header[H_STEPS] = writer.n_episodes, writer.n_steps
                header[H_READ] = r = w  # after the commit: the controller may reuse the slots
                if closing:
                    break
                idle = 0.0001
                continue
            if parent_gone or _Stop.requested:
                break  # everything published is committed
            # EOF on stdin, or (if a forked child of the controller keeps the pipe open)
            # adoption by another parent
            parent_gone = _parent_gone(stdin_fd, idle) or os.getppid() != parent
            idle = min(2 * idle, 0.002)
        writer.close()
    except Exception as exc:
        journal.set_error(f"{type(exc).__name__}: {exc}")
        with contextlib.suppress(Exception):
            writer.close()
        return 1
    header[H_EPISODES], header[H_STEPS] = writer.n_episodes, writer.n_steps
    header[H_STATUS] = S_CLOSED
    return 0


class _SlotReader:
    """Companion-side views of the journal's slots, and how each kind of slot is applied."""

    def __init__(self, journal: Journal, init: Mapping[str, Any], buf: Any) -> None:
        self.buf = buf
        self.obs_fields = [j for j, f in enumerate(buf.fields) if f.obs_aligned]
        self.slots = SlotViews(
            journal, init["layout"], buf, init["act_fields"], init["block_layout"]
        )

    def apply(self, k: int, sink: Any) -> int:
        """Apply slot ``k`` to ``sink`` (a :class:`RowCommitter`); return its kind."""
        v = self.slots[k]
        kind = int(v["head"][0])
        now = float(v["headf"][1])
        if kind == K_BLOCK:
            sink.block_step(
                v["act_pairs"],
                v["block"],
                v["terminated"],
                v["truncated"],
                now,
            )
        elif kind == K_ROW:
            sink.row_step(v["row"], v["final"], v["mask"])
        elif kind == K_RESET:
            sink.reset_rows(
                row_views(v, self.buf)[0], v["mask"], v["seeds"], v["recs"], self.obs_fields
            )
        elif kind == K_RECORDING:
            sink.set_recording(v["mask"])
        elif kind != K_CLOSE:
            raise DatasetError(f"capture journal slot {k}: unknown record kind {kind}")
        return kind


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the companion process (argument: the inherited lock's descriptor)."""
    args = list(sys.argv[1:] if argv is None else argv)
    return serve(int(args[0]))


__all__ = ["CompanionLink", "Journal", "SlotViews", "serve", "slot_views", "supported"]
