"""``twinloop serve microscope``: run the microscope twin in this process until interrupted.

The twin compiles or loads its kernels while it makes its simulated instrument, binds its port
and warms up (saying so on stderr), and only then prints ``microscope twin listening on
tcp://HOST:PORT`` on stdout: a client started after that line gets its first answer at once.

The shared secret comes from ``--token-file`` (its first line) or ``$TWINLOOP_TOKEN``, or from
``--token``, which every local user can read in the process list.
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
from typing import Any

from twinloop.core.profile import PROFILE_HELP

ENV_ID = "twinloop/StemSteer-v0"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``twinloop serve microscope``."""
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default: loopback)")
    p.add_argument("--port", type=int, default=5555, help="TCP port (0: any free port)")
    p.add_argument(
        "--token",
        default=None,
        help="shared secret every request must carry (visible to other local users in the "
        "process list: prefer --token-file or the TWINLOOP_TOKEN environment variable)",
    )
    p.add_argument(
        "--token-file",
        default=None,
        metavar="PATH",
        help="read the shared secret from this file (its first line); default: $TWINLOOP_TOKEN",
    )
    p.add_argument(
        "--watchdog-s",
        type=float,
        default=5.0,
        help="blank the beam after this long without an accepted request",
    )
    p.add_argument(
        "--max-connections",
        type=int,
        default=16,
        help="open connections at most; a new one closes the least recently active",
    )
    p.add_argument(
        "--idle-timeout-s",
        type=float,
        default=300.0,
        help="close a connection without an accepted request for this long (clients reconnect)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help=(
            "STEM config override for the simulated sample (repeatable), e.g. n_holes=2; "
            "clients refuse a twin whose holes differ from their config"
        ),
    )
    p.add_argument("--profile", default=None, metavar="random:SEED|FILE", help=PROFILE_HELP)


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def main(args: argparse.Namespace) -> int:
    """Bind, warm up, print the bound address on stdout, then serve until SIGINT/SIGTERM."""
    import twinloop
    from twinloop.cli import read_token
    from twinloop.core.config import parse_assignment
    from twinloop.hardware.microscope.fake import SimMicroscope
    from twinloop.hardware.microscope.server import MicroscopeServer
    from twinloop.hardware.ready import compiling
    from twinloop.hardware.serve import serve_until_signalled

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        token = read_token(args.token, args.token_file)
    except ValueError as exc:
        _say(f"twinloop serve microscope: error: {exc}")
        return 2
    cfg = twinloop.make_config(ENV_ID)
    overrides: dict[str, Any] = dict(parse_assignment(cfg, a) for a in args.set)
    cfg = twinloop.make_config(ENV_ID, **overrides)
    profile = None
    if args.profile:
        from twinloop.core.profile import parse_profile
        from twinloop.sim.stem.profile import PRIORS

        try:
            profile = parse_profile(args.profile, cfg, PRIORS)
        except ValueError as exc:  # ConfigError is a ValueError: it names field and limits
            _say(f"twinloop serve microscope: error: {exc}")
            return 2
        _say(f"device profile {profile.name!r} in force (its values stay hidden from clients)")
    try:
        with compiling("microscope twin", report=_say):
            server = MicroscopeServer(
                SimMicroscope(cfg, profile),
                host=args.host,
                port=args.port,
                token=token,
                watchdog_s=args.watchdog_s,
                max_connections=args.max_connections,
                idle_timeout_s=args.idle_timeout_s,
            )
            server.warm_up()
    except KeyboardInterrupt:  # Ctrl-C while compiling: nothing was served
        return 130
    announce = functools.partial(print, flush=True)  # stdout, at once: a parent waits on it
    return serve_until_signalled(server, "microscope twin", args.host, token, announce, _say)
