"""A twin is ready when it says so: compile (or load) its kernels before announcing its address.

A network twin runs numba kernels, which are compiled on their first call or loaded from the
on-disk cache (:mod:`twinloop.core.jit` keys that cache on the package's source, so a fresh
install or any edit starts it empty). A twin that announced its address first would compile
inside its first request (about two minutes for the STEM kernels on a cold cache) and its
client would time out. So every twin server has a ``warm_up()`` that runs the code paths of its
requests on a throwaway copy of its simulator, and its command line builds and warms the
server inside :func:`compiling`, which reports that the twin is compiling and how long it took,
before it prints its "listening on" line. Clients name that line in their timeout errors
(:func:`slow_answer_hint`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator

log = logging.getLogger(__name__)


def numba_cache_dir() -> str:
    """Where numba reads and writes its compiled kernels (as configured by ``core.jit``)."""
    import numba

    import twinloop.core.jit  # noqa: F401  (sets numba's cache folder unless NUMBA_CACHE_DIR is)

    return str(numba.config.CACHE_DIR or "next to the sources")


@contextlib.contextmanager
def compiling(name: str, report: Callable[[str], None] | None = None) -> Iterator[None]:
    """Report that ``name`` compiles its kernels, then how long the block took.

    Wrap the construction and the ``warm_up()`` of a twin server in it: both run kernels (a
    simulator often draws its first state when it is made). Nothing is reported after the
    block if it raises.

    Args:
        name: What to call the twin in the reports, e.g. ``"microscope twin"``.
        report: Receives one line before and one after the block (default: the log).
    """
    say = report or log.info
    say(
        f"{name}: compiling its kernels, or loading them from the numba cache in "
        f"{numba_cache_dir()} (minutes on the first start after installing or editing "
        "twinloop, seconds after that)"
    )
    t0 = time.perf_counter()
    yield
    say(f"{name}: kernels ready in {time.perf_counter() - t0:.1f} s")


def slow_answer_hint(serve_command: str, timeout_option: str, timeout_s: float) -> str:
    """What to do when a twin's answer is late: the sentence clients append to the timeout error.

    Args:
        serve_command: The command that starts the twin, e.g. ``"twinloop serve microscope"``.
        timeout_option: The client option that sets the wait, e.g. ``"timeout_s"``.
        timeout_s: Its current value (s).
    """
    return (
        f"Is `{serve_command}` running at that address? A twin compiles its kernels before it "
        "prints its 'listening on' line (minutes on the first start after installing or "
        "editing twinloop): start the client after that line; on a slow or busy machine, "
        f"raise the backend option {timeout_option} (now {timeout_s:g} s)."
    )
