"""``twinloop serve skills``: the mobile-manipulator twin behind the robot-skill protocol.

The twin runs the ``twinloop/LangRearrange-v0`` world (the rearrangement kernel and renderer),
warms up (saying so on stderr), and only then prints ``skills twin listening on
tcp://HOST:PORT`` on stdout. Its imperfections are configuration: skill failure rates per
skill kind (``--failure-rate pick=0.1``, ``all=P`` for every kind), hidden perception errors
(``--perception-error P``: a reported object's category is wrong with probability P) and
reply latency; the failure and perception draws come from a hidden seed that is never
printed. With none of them a run equals the ``sim`` backend's. The shared secret comes from
``--token-file`` or ``$TWINLOOP_TOKEN`` (or ``--token``, visible in the process list).
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys

from twinloop.core.profile import PROFILE_HELP

ENV_ID = "twinloop/LangRearrange-v0"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``twinloop serve skills``."""
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default: loopback)")
    p.add_argument("--port", type=int, default=5557, help="TCP port (0: any free port)")
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
        "--failure-rate",
        action="append",
        default=[],
        metavar="SKILL=P",
        help="probability that a skill of this kind (nav, pick, place, open, close, noop; all: "
        "every kind) fails although its preconditions hold (repeatable)",
    )
    p.add_argument(
        "--perception-error",
        type=float,
        default=0.0,
        metavar="P",
        help="probability that a reported object's category is wrong, per report",
    )
    p.add_argument(
        "--hidden-seed",
        type=int,
        default=None,
        help="seed of the failure and perception draws (default: fresh entropy, never printed)",
    )
    p.add_argument("--profile", default=None, metavar="random:SEED|FILE", help=PROFILE_HELP)
    p.add_argument("--latency-s", type=float, default=0.0, help="added to every reply (s)")
    p.add_argument("--jitter-s", type=float, default=0.0, help="plus U(0, this) per reply (s)")
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
        help="world config override (repeatable), e.g. task.split=novel_objects",
    )


def parse_failure_rates(items: list[str]) -> dict[str, float]:
    """``["pick=0.1", "all=0.05"]`` -> rate per skill kind (later items override earlier).

    Raises:
        ValueError: An item that is not ``SKILL=P`` with a number P.
    """
    from twinloop.hardware.skills.protocol import SKILLS

    rates: dict[str, float] = {}
    for item in items:
        kind, sep, value = item.partition("=")
        try:
            p = float(value)
        except ValueError:
            p = None
        if not sep or p is None:
            raise ValueError(f"--failure-rate takes SKILL=P (e.g. pick=0.1), got {item!r}")
        for k in SKILLS if kind == "all" else (kind,):
            rates[k] = p
    return rates


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def main(args: argparse.Namespace) -> int:
    """Bind, warm up, print the bound address on stdout, then serve until SIGINT/SIGTERM."""
    import twinloop
    from twinloop.cli import read_token
    from twinloop.core.config import parse_assignment
    from twinloop.hardware.ready import compiling
    from twinloop.hardware.serve import serve_until_signalled
    from twinloop.hardware.skills.fake import SimSkillsRobot
    from twinloop.hardware.skills.server import SkillsServer

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        token = read_token(args.token, args.token_file)
        cfg = twinloop.make_config(ENV_ID)
        cfg = twinloop.make_config(ENV_ID, **dict(parse_assignment(cfg, a) for a in args.set))
        if args.hidden_seed is not None and not 0 <= args.hidden_seed < 2**63:
            raise ValueError(f"--hidden-seed must be in [0, 2^63), got {args.hidden_seed}")
        rates = parse_failure_rates(args.failure_rate)
        profile = None
        if args.profile:
            from twinloop.core.profile import parse_profile
            from twinloop.hardware.skills.fake import SkillsDeviceConfig
            from twinloop.sim.rearrange.profile import PRIORS

            nominal = SkillsDeviceConfig.of(rates, args.perception_error)
            profile = parse_profile(args.profile, nominal, PRIORS)
            _say(f"device profile {profile.name!r} in force (its values stay hidden from clients)")
        with compiling("skills twin", report=_say):
            server = SkillsServer(
                SimSkillsRobot(
                    cfg,
                    hidden_seed=args.hidden_seed,
                    failure_rates=rates,
                    perception_error=args.perception_error,
                    profile=profile,
                ),
                host=args.host,
                port=args.port,
                token=token,
                latency_s=args.latency_s,
                jitter_s=args.jitter_s,
                max_connections=args.max_connections,
                idle_timeout_s=args.idle_timeout_s,
            )
            server.warm_up()
    except (ValueError, OSError) as exc:
        _say(f"twinloop serve skills: error: {exc}")
        return 2
    except KeyboardInterrupt:  # Ctrl-C while compiling: nothing was served
        return 130
    announce = functools.partial(print, flush=True)  # stdout, at once: a parent waits on it
    return serve_until_signalled(server, "skills twin", args.host, token, announce, _say)
