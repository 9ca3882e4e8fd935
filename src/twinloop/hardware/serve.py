"""The end of every ``twinloop serve <twin>`` command: announce the warm twin, serve, stop.

A twin's command line builds its server and warms it up inside
:func:`twinloop.hardware.ready.compiling`, then hands it to :func:`serve_until_signalled`,
which announces its address (the "listening on" line a client waits for), warns when the
twin is reachable from other machines, and serves until SIGINT or SIGTERM. It lives here, not
beside a command line, because a module named ``cli.py`` is the top layer, and its three users
are such modules. Like :func:`~twinloop.hardware.ready.compiling`, it writes nothing itself: its
lines go to the callbacks the command line passes.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any, Protocol

#: Hosts that only this machine reaches (binding to any other one earns a warning).
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


class Servable(Protocol):
    """What :func:`serve_until_signalled` needs of a twin server."""

    #: Where it is bound, e.g. ``"tcp://127.0.0.1:5556"``.
    address: str

    def serve_forever(self) -> None:
        """Serve until :meth:`stop`."""

    def stop(self, timeout_s: float = ...) -> None:
        """Stop serving, waiting at most ``timeout_s`` for the loop to end."""


def serve_until_signalled(
    server: Servable,
    name: str,
    host: str,
    token: str | None,
    announce: Callable[[str], None],
    say: Callable[[str], None],
) -> int:
    """Announce ``server``'s address, serve until SIGINT/SIGTERM, restore the handlers; 0.

    Args:
        server: A bound, warmed-up twin server.
        name: The twin in the announcement, e.g. ``"robot twin"`` ("robot twin listening on
            tcp://...").
        host: The interface it is bound to; any but loopback is warned about.
        token: Its shared secret (the warning says when there is none).
        announce: Receives the "listening on" line (stdout, flushed, for whoever waits on it).
        say: Receives the warning (stderr).
    """

    def stop(*_: Any) -> None:
        server.stop(timeout_s=0)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        announce(f"{name} listening on {server.address}")
        if host not in LOOPBACK_HOSTS:
            say(
                f"warning: bound to {host}, reachable from other machines"
                + ("" if token else " without a token")
            )
        server.serve_forever()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
