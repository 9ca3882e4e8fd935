"""``twinloop serve robot``: the quadruped twin behind the joint-level robot protocol.

The twin loads the ``twinloop/QuadrupedVelocity-v0`` MuJoCo model, warms up (saying so on
stderr), and only then prints ``robot twin listening on tcp://HOST:PORT`` on stdout. Its
hidden physical parameters (the config's domain randomisation, action delay and pushes; change
them with ``--set``) are drawn at every reset from a seed mixed with a hidden seed that is
never printed; ``--no-hidden-effects`` turns them off (a run then equals the ``sim``
backend's). The shared secret comes from ``--token-file`` or ``$TWINLOOP_TOKEN`` (or
``--token``, which every local user can read in the process list).

One controller owns the robot at a time (protocol version 2, :mod:`.protocol` points 9-13):
its lease lasts ``--watchdog-s`` after each of its requests; other clients may read the state,
damp and e-stop. ``--latency-s`` and ``--jitter-s`` delay each reply on its own connection,
so one peer's delay never holds another's reply. ``--profile random:SEED|FILE`` gives the
robot fixed physics of its own (``plant``: floor friction, mass, payload, motor strength,
joint friction, actuation delay; :mod:`twinloop.sim.locomotion.profile`), never shown: the
twin's hello names the profile only.
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
from typing import Any

from twinloop.core.profile import PROFILE_HELP
from twinloop.sim.locomotion.velocity_config import RANDOM_EFFECT_SWITCHES

ENV_ID = "twinloop/QuadrupedVelocity-v0"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``twinloop serve robot``."""
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default: loopback)")
    p.add_argument("--port", type=int, default=5556, help="TCP port (0: any free port)")
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
        default=0.5,
        help="the owner's lease: it ends, and the joints are damped, after this long without "
        "an accepted request from the owning controller",
    )
    p.add_argument(
        "--latency-s",
        type=float,
        default=0.0,
        help="added to every reply, per connection (s); latency + jitter < --watchdog-s",
    )
    p.add_argument("--jitter-s", type=float, default=0.0, help="plus U(0, this) per reply (s)")
    p.add_argument(
        "--loss", type=float, default=0.0, help="probability that a reply is dropped, in [0, 1)"
    )
    p.add_argument(
        "--hidden-seed",
        type=int,
        default=None,
        help="seed of the hidden physical parameters (default: fresh entropy, never printed)",
    )
    p.add_argument(
        "--no-hidden-effects",
        action="store_true",
        help="no domain randomisation, action delay or pushes (runs equal the sim backend's)",
    )
    p.add_argument("--profile", default=None, metavar="random:SEED|FILE", help=PROFILE_HELP)
    p.add_argument("--max-connections", type=int, default=16, help="open connections at most")
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
        help="plant config override (repeatable), e.g. randomization.friction_min=0.2",
    )


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def main(args: argparse.Namespace) -> int:
    """Bind, warm up, print the bound address on stdout, then serve until SIGINT/SIGTERM."""
    import twinloop
    from twinloop.cli import read_token
    from twinloop.core.config import parse_assignment
    from twinloop.core.rng import new_entropy
    from twinloop.hardware.ready import compiling
    from twinloop.hardware.robot.fake import SimRobot
    from twinloop.hardware.robot.server import RobotServer
    from twinloop.hardware.serve import serve_until_signalled

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        token = read_token(args.token, args.token_file)
        cfg = twinloop.make_config(ENV_ID)
        overrides: dict[str, Any] = (
            dict.fromkeys(RANDOM_EFFECT_SWITCHES, False) if args.no_hidden_effects else {}
        )
        overrides.update(dict(parse_assignment(cfg, a) for a in args.set))
        cfg = twinloop.make_config(ENV_ID, **overrides)
        profile = None
        if args.profile:
            from twinloop.core.profile import parse_profile
            from twinloop.sim.locomotion.profile import PRIORS

            profile = parse_profile(args.profile, cfg, PRIORS)
            _say(f"device profile {profile.name!r} in force (its values stay hidden from clients)")
        hidden = None
        if not args.no_hidden_effects:
            hidden = new_entropy() if args.hidden_seed is None else args.hidden_seed
        with compiling("robot twin", report=_say):
            server = RobotServer(
                SimRobot(cfg, hidden_seed=hidden, watchdog_s=args.watchdog_s, profile=profile),
                host=args.host,
                port=args.port,
                token=token,
                watchdog_s=args.watchdog_s,
                latency_s=args.latency_s,
                jitter_s=args.jitter_s,
                loss=args.loss,
                max_connections=args.max_connections,
                idle_timeout_s=args.idle_timeout_s,
            )
            server.warm_up()
    except (ValueError, OSError) as exc:
        _say(f"twinloop serve robot: error: {exc}")
        return 2
    except KeyboardInterrupt:  # Ctrl-C while compiling: nothing was served
        return 130
    announce = functools.partial(print, flush=True)  # stdout, at once: a parent waits on it
    return serve_until_signalled(server, "robot twin", args.host, token, announce, _say)
