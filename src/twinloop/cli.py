"""The ``twinloop`` command line: list envs, describe one, run a controller on it.

``twinloop list`` · ``twinloop info ID`` ·
``twinloop run ID --controller NAME --episodes N --seed S [--n-envs N] [--backend B]``
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[k]) for r in cells) for k in range(len(header))]
    line = "  ".join("-" * w for w in widths)
    out = ["  ".join(c.ljust(w) for c, w in zip(cells[0], widths, strict=True)), line]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells[1:]]
    return "\n".join(out)


def _space_text(space: Any) -> str:
    import gymnasium as gym

    if isinstance(space, gym.spaces.Box):
        return f"Box{tuple(space.shape)}"
    if isinstance(space, gym.spaces.Discrete):
        return f"Discrete({space.n})"
    return type(space).__name__


def _parse_overrides(env_id: str, assignments: Sequence[str]) -> dict[str, Any]:
    import twinloop
    from twinloop.core.config import parse_assignment

    cfg = twinloop.make_config(env_id)
    return dict(parse_assignment(cfg, a) for a in assignments)


def cmd_list(args: argparse.Namespace) -> int:
    """Print every registered env id with its backends and spaces."""
    import twinloop

    rows = []
    for env_id, s in twinloop.registry.items():
        spaces = "-"
        if args.spaces:
            env = twinloop.make(env_id)
            spaces = f"{_space_text(env.observation_space)} -> {_space_text(env.action_space)}"
            env.close()
        rows.append((env_id, ", ".join(s.backend_names), spaces, s.description))
    print(_table(rows, ("id", "backends", "observation -> action", "description")))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    """Describe one env: backends, spaces, observation fields and the default config."""
    import twinloop
    from twinloop.core.config import to_dict

    s = twinloop.spec(args.env_id)
    overrides = _parse_overrides(args.env_id, args.set)
    env = twinloop.make(args.env_id, **overrides)
    print(f"{s.id}: {s.description}\n")
    rows = [
        (b.name, "yes" if b.deterministic else "no", b.extra or "-", b.description)
        for b in s.backends
    ]
    print(_table(rows, ("backend", "deterministic", "extra", "description")))
    print(f"\naction space: {env.action_space}")
    labels = getattr(getattr(env.unwrapped, "task", None), "action_labels", ())
    for k, label in enumerate(labels):
        print(f"  [{k}] {label}")
    print(f"observation space: {_space_text(env.observation_space)}")
    layout = env.metadata.get("observation_layout", {})
    if layout:
        rows = [
            (f"{v['start']}-{v['stop'] - 1}", k, tuple(v["shape"]), v["doc"])
            for k, v in layout.items()
        ]
        print(_table(rows, ("index", "field", "shape", "meaning")))
    print("\nconfig (override with --set name=value or twinloop.make(id, name=value)):")
    print(json.dumps(to_dict(env.unwrapped.config), indent=2))
    env.close()
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Run a controller for N episodes and print a summary table."""
    from tqdm import tqdm

    import twinloop
    from twinloop.controllers import make_controller
    from twinloop.eval.rollout import run_single, run_vector, summarize

    overrides = _parse_overrides(args.env_id, args.set)
    backend_opts: dict[str, Any] = {}
    if args.address or args.port is not None:
        backend_opts["address"] = args.address or f"tcp://{args.host or '127.0.0.1'}:{args.port}"
    if args.token:
        backend_opts["token"] = args.token
    if args.n_envs > 1:
        if args.backend not in (None, twinloop.spec(args.env_id).backend_names[0]):
            raise SystemExit("--n-envs > 1 runs on the simulator kernel only; drop --backend")
        env = twinloop.make_vec(args.env_id, args.n_envs, **overrides)
    else:
        env = twinloop.make(args.env_id, backend=args.backend, **backend_opts, **overrides)
    if args.record:
        from twinloop.datasets.cli import wrap_for_recording

        env = wrap_for_recording(env, args)
    controller = make_controller(
        args.controller, env, **({"model": args.model} if args.model else {})
    )
    with tqdm(
        total=args.episodes,
        desc=f"{args.controller} on {args.env_id}",
        unit="ep",
        file=sys.stderr,
        disable=args.quiet,
    ) as bar:

        def progress(done: int, total: int) -> None:
            bar.update(done - bar.n)

        if args.n_envs > 1:
            on_idle = (lambda idle: env.set_recording(~idle)) if args.record else None
            results = run_vector(env, controller, args.episodes, args.seed, progress, on_idle)
        else:
            results = run_single(env, controller, args.episodes, args.seed, progress)
    env.close()
    if args.record:
        from twinloop.datasets.cli import report_recording

        report_recording(env)
    summary = summarize(results)
    lo, hi = summary["success_rate_ci95"]
    failures = ", ".join(f"{k}: {v}" for k, v in summary["failures"].items()) or "none"
    rows = [
        ("episodes", summary["episodes"]),
        ("success rate", f"{summary['success_rate']:.3f}  (95% CI {lo:.3f}-{hi:.3f})"),
        ("mean return", f"{summary['mean_return']:.3f}"),
        ("mean steps", f"{summary['mean_steps']:.1f}"),
        ("median time to success (s)", f"{summary['median_time_to_success_s']:.1f}"),
        ("truncated (step limit)", summary["truncated"]),
        ("failures by kind", failures),
    ]
    for key in sorted(k[: -len("_ci95")] for k in summary if k.endswith("_ci95")):
        if key == "success_rate":
            continue
        m_lo, m_hi = summary[f"{key}_ci95"]
        rows.append((key, f"{summary[key]:.3f}  (95% bootstrap CI {m_lo:.3f}-{m_hi:.3f})"))
    print(
        f"{args.env_id}  controller={args.controller}  backend={args.backend or 'sim'}  "
        f"seed={args.seed}  n_envs={args.n_envs}"
    )
    print(_table(rows, ("metric", "value")))
    if args.json:
        payload = {
            "env_id": args.env_id,
            "controller": args.controller,
            "backend": args.backend or "sim",
            "seed": args.seed,
            "n_envs": args.n_envs,
            "overrides": overrides,
            "summary": summary,
            "episodes": [r.__dict__ for r in results],
        }
        with open(args.json, "w") as fh:
            json.dump(payload, fh, indent=2, default=_json_default)
    return 0


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


#: ``twinloop serve <device>``: device -> module with ``add_arguments(parser)`` and ``main(args)``.
SERVE_DEVICES: dict[str, str] = {
    "microscope": "twinloop.hardware.microscope.cli",
    "balloon": "twinloop.hardware.balloon.server",
}


def _add_serve(sub: Any) -> None:
    import importlib

    s = sub.add_parser("serve", help="run a device's network twin (simulator behind its protocol)")
    devices = s.add_subparsers(dest="device", required=True)
    for name, module_name in SERVE_DEVICES.items():
        module = importlib.import_module(module_name)
        d = devices.add_parser(name, help=(module.__doc__ or "").splitlines()[0])
        module.add_arguments(d)
        d.set_defaults(func=module.main)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``twinloop``."""
    p = argparse.ArgumentParser(prog="twinloop", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("list", help="list registered env ids")
    s.add_argument("--spaces", action="store_true", help="also build each env to show spaces")
    s.set_defaults(func=cmd_list)

    s = sub.add_parser("info", help="describe one env")
    s.add_argument("env_id")
    s.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("run", help="run a controller for N episodes and summarise")
    s.add_argument("env_id")
    s.add_argument("--controller", required=True)
    s.add_argument("--episodes", type=_positive_int, default=20)
    s.add_argument("--seed", type=_non_negative_int, default=0)
    s.add_argument(
        "--n-envs",
        type=_positive_int,
        default=1,
        help="run episodes in a kernel-batched vector env of this size",
    )
    s.add_argument("--backend", default=None, help="backend name (default: the simulator)")
    s.add_argument(
        "--address",
        default=None,
        help="device address for network backends, e.g. tcp://127.0.0.1:5555",
    )
    s.add_argument("--host", default=None, help="device host (with --port; default 127.0.0.1)")
    s.add_argument("--port", type=int, default=None, help="device port (network backends)")
    s.add_argument("--token", default=None, help="shared secret of the device's twin")
    s.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="config override, e.g. --set beam_current_na=0.2 (repeatable)",
    )
    s.add_argument(
        "--model",
        default=None,
        help="trained model for learned controllers (greedy-learned, planner)",
    )
    s.add_argument("--json", default=None, help="also write the results to this JSON file")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    from twinloop.datasets.cli import add_data_parser, add_record_arguments

    add_record_arguments(s)
    s.set_defaults(func=cmd_run)

    _add_serve(sub)
    from twinloop.demo_cli import add_parsers

    add_parsers(sub)
    add_data_parser(sub)
    return p


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``twinloop`` command."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ValueError, KeyError, ImportError, FileNotFoundError, FileExistsError) as exc:
        print(f"twinloop: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
