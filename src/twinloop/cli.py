"""The ``twinloop`` command line.

Verbs that mean the same for every env id: ``list``, ``info``, ``run``, ``eval`` (controllers
compared on the same seeds), ``serve``, ``data``, ``sysid`` (fit a device's hidden physics to
its captures), ``agent`` and ``transfer`` (the sim-to-real gap and how far identification
closes it). Stages particular to one system
live under a name that says what they do (``twinloop stem-rates capture | train | eval``, the
STEM demo's stages: learn the Si transition rates and evaluate steering with them), so a new
system adds one group instead of claiming top-level verbs. ``twinloop demo`` is the main job.
The CLI parses, renders progress and prints; the work is in the library.

The command table of README.md is rendered from this parser (:func:`render_command_table`):
``twinloop --readme-table README.md`` rewrites it. Spellings of the previous release
(``twinloop capture``, ``train``, and ``eval DATASET...``, which ``eval ID --controller``
now tells apart by its arguments) still work, with a notice on stderr
(:data:`DEPRECATED_COMMANDS`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from twinloop.core.cliargs import non_negative_int, positive_int
from twinloop.core.text import table


def _space_text(space: Any) -> str:
    import gymnasium as gym

    if isinstance(space, gym.spaces.Box):
        return f"Box{tuple(space.shape)}"
    if isinstance(space, gym.spaces.Discrete):
        return f"Discrete({space.n})"
    return type(space).__name__


def _parse_overrides(
    env_id: str, assignments: Sequence[str], config_file: str | None = None
) -> dict[str, Any]:
    """Config overrides from ``--config FILE`` (a JSON object), then ``--set`` (which wins).

    The file has the format of a twin's ``--profile FILE`` and of what ``twinloop sysid``
    writes: field names or dotted paths (or sections as objects) -> values.
    """
    import twinloop
    from twinloop.core.config import parse_assignment

    cfg = twinloop.make_config(env_id)
    out: dict[str, Any] = {}
    if config_file is not None:
        from twinloop.core.profile import load_profile

        out.update(load_profile(config_file, cfg, option="--config").values)
    out.update(parse_assignment(cfg, a) for a in assignments)
    return out


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
    print(table(rows, ("id", "backends", "observation -> action", "description")))
    return 0


#: The environment variable a shared secret may come from (not the process list).
TOKEN_ENV = "TWINLOOP_TOKEN"


#: Episodes of ``twinloop run`` when ``--episodes`` is not given.
DEFAULT_EPISODES = 20


def read_token(token: str | None, token_file: str | None) -> str | None:
    """The secret: ``--token``, else ``--token-file``'s first line, else ``$TWINLOOP_TOKEN``.

    Raises:
        ValueError: Both ``--token`` and ``--token-file`` are given, or the file is unreadable
            or empty.
    """
    if token and token_file:
        raise ValueError("give --token or --token-file, not both")
    if token_file:
        try:
            lines = Path(token_file).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"--token-file {token_file}: cannot read it ({exc})") from exc
        if not lines or not lines[0].strip():
            raise ValueError(
                f"--token-file {token_file} is empty: put the secret on its first line"
            )
        return lines[0].strip()
    return token or os.environ.get(TOKEN_ENV) or None


def cmd_info(args: argparse.Namespace) -> int:
    """Describe one env: backends, spaces, observation fields and the default config."""
    import twinloop
    from twinloop.core.config import describe

    s = twinloop.spec(args.env_id)
    overrides = _parse_overrides(args.env_id, args.set)
    if args.backend not in (None, s.backend_names[0]):
        return _info_device(args, overrides)
    env = twinloop.make(args.env_id, **overrides)
    print(f"{s.id}: {s.description}\n")
    rows = [
        (b.name, "yes" if b.deterministic else "no", b.extra or "-", b.description)
        for b in s.backends
    ]
    print(table(rows, ("backend", "deterministic", "extra", "description")))
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
        print(table(rows, ("index", "field", "shape", "meaning")))
    print("\nconfig (override with --set name=value or twinloop.make(id, name=value)):")
    rows = [
        (
            r.path,
            f"({len(r.value)} values)"
            if isinstance(r.value, tuple) and len(r.value) > 5
            else r.value,
            r.units or "-",
            r.limits or "-",
            r.doc,
        )
        for r in describe(env.unwrapped.config)
    ]
    print(table(rows, ("field", "value", "units", "limits", "meaning / source")))
    env.close()
    return 0


def _info_device(args: argparse.Namespace, overrides: dict[str, Any]) -> int:
    """``twinloop info ID --backend B``: connect to the device and say what it is.

    A twin running hidden physics (``--profile``) says only that a profile is in force and
    its name; its values are never sent to a client.
    """
    import twinloop
    from twinloop.datasets.writer import profile_name

    env = twinloop.make(args.env_id, backend=args.backend, **_backend_options(args), **overrides)
    try:
        backend = env.unwrapped.backend
        if not backend.connected:
            backend.connect()
        identity = backend.identity()
    finally:
        env.close()
    print(f"{args.env_id} on backend {args.backend}:")

    def rows(d: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, str]]:
        for k, v in d.items():
            if isinstance(v, dict) and v:
                yield from rows(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}", json.dumps(v, default=str)

    print(table(list(rows(identity)), ("identity", "value")))
    name = profile_name(identity)
    if name is None:
        print("device profile: none announced (nominal physics, or a real device)")
    else:
        print(
            f"device profile: {name!r} is in force: the device's physics differ from the "
            "simulator's nominal values, which stay hidden (identify them with 'twinloop sysid' "
            "from a capture)"
        )
    return 0


def _backend_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword options of ``--backend``'s constructor from the device options given."""
    import twinloop

    backend_spec = twinloop.spec(args.env_id).backend(
        args.backend or twinloop.spec(args.env_id).backend_names[0]
    )
    backend_opts: dict[str, Any] = {}
    if args.address:
        backend_opts["address"] = args.address
    elif args.port is not None or args.host:
        if args.port is None:
            raise ValueError("--host needs --port (or give the whole --address)")
        backend_opts["address"] = backend_spec.address(args.host or "127.0.0.1", args.port)
    token = read_token(args.token, args.token_file)
    if token:
        backend_opts["token"] = token
    if args.timeout is not None:  # a network backend's wait for an answer, by its own name
        names = backend_spec.options
        timeouts = [n for n in ("timeout_s", "connect_timeout_s", "ack_timeout_s") if n in names]
        if not timeouts:
            raise ValueError(f"--timeout: backend {args.backend or 'sim'!r} takes no timeout")
        backend_opts.update(dict.fromkeys(timeouts, float(args.timeout)))
    for name in ("robot", "mapping", "reset_hook"):  # objects a backend builds from module:attr
        value = getattr(args, name, None)
        if value is not None:
            if name not in backend_spec.options:
                raise ValueError(
                    f"--{name.replace('_', '-')}: backend {backend_spec.name!r} takes no "
                    f"{name}; it is an option of backend 'lerobot'"
                )
            backend_opts[name] = value
    return backend_opts


def _run_here(
    args: argparse.Namespace, overrides: dict[str, Any], split: str | None = None
) -> list[Any]:
    """``twinloop run`` in this process: one env (or one vector env) runs every episode.

    With ``split``, episode ``e`` is episode ``e`` of that split (its reset options pin it).
    """
    from tqdm import tqdm

    import twinloop
    from twinloop.controllers import make_controller
    from twinloop.eval.rollout import run_single, run_vector

    backend_opts = _backend_options(args)
    if args.n_envs > 1:
        if args.backend not in (None, twinloop.spec(args.env_id).backend_names[0]):
            raise SystemExit("--n-envs > 1 runs on the simulator kernel only; drop --backend")
        env = twinloop.make_vec(args.env_id, args.n_envs, **overrides)
    else:
        env = twinloop.make(args.env_id, backend=args.backend, **backend_opts, **overrides)
    # closed whatever happens: a device backend releases the device (a MAVLink station
    # releases command) and stops its threads, and a capture is finalised
    try:
        if args.record:
            from twinloop.datasets.cli import wrap_for_recording

            env = wrap_for_recording(env, args)
        controller = make_controller(
            args.controller, env, **({"model": args.model} if args.model else {})
        )
        with tqdm(
            total=args.episodes,
            desc=f"{args.controller} on {args.env_id}" + (f" ({split})" if split else ""),
            unit="ep",
            file=sys.stderr,
            disable=args.quiet,
        ) as bar:

            def progress(done: int, total: int) -> None:
                bar.update(done - bar.n)

            single_opts, vector_opts = (None, None)
            if split is not None:
                from twinloop.eval.splits import reset_options

                single_opts, vector_opts = reset_options(split)
            if args.n_envs > 1:
                on_idle = (lambda idle: env.set_recording(~idle)) if args.record else None
                results = run_vector(
                    env, controller, args.episodes, args.seed, progress, on_idle, vector_opts
                )
            else:
                results = run_single(
                    env, controller, args.episodes, args.seed, progress, single_opts
                )
    finally:
        env.close()
    if args.record:
        from twinloop.datasets.cli import report_recording

        report_recording(env)
    return results


def _run_on_workers(
    args: argparse.Namespace, overrides: dict[str, Any]
) -> tuple[list[Any], dict[str, Any]]:
    """``twinloop run --workers N [--ray ADDRESS]``: chunks of seeds on a pool or on Ray.

    Returns:
        The episodes in order, and what the workers did: ``{"engine", "workers", "chunks",
        "retried": [{"chunk", "seeds", "attempts"}], "report": [lines to print]}``.
    """
    from tqdm import tqdm

    import twinloop
    from twinloop.eval.workers import RunSpec, load_fleet, merge_shards, run_workers, seed_ranges

    sim = twinloop.spec(args.env_id).backend_names[0]
    fleet: tuple[dict[str, Any], ...] = ()
    if args.fleet is not None:
        if args.backend in (None, sim):
            raise ValueError("--fleet lists devices: give their --backend (e.g. robot, remote)")
        spec_b = twinloop.spec(args.env_id).backend(args.backend)
        if "address" not in spec_b.options:
            raise ValueError(f"--fleet: backend {args.backend!r} is not reached at an address")
        one = (args.address, args.host, args.port, args.robot, args.mapping, args.reset_hook)
        if any(v is not None for v in one):
            raise ValueError("--fleet gives each device its address: drop --address/--host/--port")
        token = read_token(args.token, args.token_file)
        timeouts = [n for n in ("timeout_s", "connect_timeout_s") if n in spec_b.options]
        extra: dict[str, Any] = {"token": token} if token else {}
        if args.timeout is not None:
            extra.update(dict.fromkeys(timeouts, float(args.timeout)))
        fleet = tuple({**extra, **d} for d in load_fleet(args.fleet))
        if args.workers is None:
            args.workers = len(fleet)
    else:
        if args.workers is None:
            raise ValueError("--ray needs --workers N (tasks in flight at once)")
        device = (args.address, args.host, args.port, args.token, args.token_file, args.timeout)
        device += (args.robot, args.mapping, args.reset_hook)
        if args.backend not in (None, sim) or any(v is not None for v in device):
            raise ValueError(
                "--workers runs the simulator, or a fleet of devices (--fleet FILE, one "
                "device per worker); drop --backend and the device options, or give --fleet"
            )
    if getattr(args, "device_profile", None):
        raise ValueError("--device-profile describes a device: run it without --workers")
    spec = RunSpec(
        env_id=args.env_id,
        controller=args.controller,
        seed=args.seed,
        episodes=args.episodes,
        overrides=overrides,
        controller_options={"model": args.model} if args.model else {},
        n_envs=args.n_envs,
        backend=args.backend if fleet else None,
        devices=fleet,
    )
    shards = target = dataset_id = None
    tags: dict[str, Any] = {}
    mode = "overwrite" if args.overwrite else "append" if args.append else "create"
    if args.record:
        from twinloop.datasets.cli import default_dataset_id, parse_tags
        from twinloop.datasets.writer import dataset_dir

        dataset_id = args.dataset_id or default_dataset_id(args.env_id, args.controller)
        target = dataset_dir(args.record, dataset_id)
        if mode == "create" and (target / "data" / "metadata.json").exists():
            raise ValueError(
                f"dataset {dataset_id!r} already exists at {target}; pass --overwrite to "
                "replace it or --append to add episodes"
            )
        tags = {"controller": args.controller, "seed": args.seed, **parse_tags(args.tag)}
        shards = target.parent / f"{target.name}.shards"
    with tqdm(
        total=args.episodes,
        desc=f"{args.controller} on {args.env_id} ({args.workers} workers)",
        unit="ep",
        file=sys.stderr,
        disable=args.quiet,
    ) as bar:

        def progress(done: int, total: int) -> None:
            bar.update(done - bar.n)

        run = run_workers(
            spec,
            args.workers,
            chunk_episodes=args.chunk_episodes,
            shards=shards,
            tags=tags,
            ray_address=args.ray,
            max_retries=args.max_retries,
            progress=progress,
        )
    engine = f"Ray ({args.ray})" if run.engine == "ray" else "process pool"
    report = [
        f"workers: {run.workers} ({engine}), {len(run.chunks)} chunks of up to "
        f"{run.chunks[0].episodes} episodes"
    ]
    retried = [
        {"chunk": c.index, "seeds": seed_ranges(c.seeds), "attempts": n} for c, n in run.retried
    ]
    for r in retried:
        report.append(
            f"retried: chunk {r['chunk']} (seeds {r['seeds']}) ran {r['attempts']} times "
            "after a worker died; its shard was rewritten from scratch"
        )
    if not retried:
        report.append("retried: none")
    if fleet:
        for c, dev in zip(run.chunks, fleet, strict=True):
            report.append(f"device {dev['name']} ({dev['address']}): seeds {seed_ranges(c.seeds)}")
    if target is not None:
        merged = merge_shards(run, target, dataset_id=dataset_id, mode=mode, tags=tags)
        report.append(
            f"recorded {merged['added']} episodes as {dataset_id} in {target} (merged from "
            f"{len(run.shards)} shards; the dataset holds {merged['episodes']} episodes, "
            f"{merged['steps']} steps)"
        )
    info = {
        "engine": run.engine,
        "workers": run.workers,
        "chunks": len(run.chunks),
        "retried": retried,
        "report": report,
    }
    return run.results, info


def cmd_run(args: argparse.Namespace) -> int:
    """Run a controller for N episodes and print a summary table."""
    from twinloop.eval.rollout import summarize

    overrides = _parse_overrides(args.env_id, args.set, args.config)
    if args.split is not None:
        return _run_splits(args, overrides)
    if args.episodes is None:
        args.episodes = DEFAULT_EPISODES
    if args.plot is not None:
        raise ValueError("--plot draws the per-split figure: give it with --split")
    workers: dict[str, Any] | None = None
    if args.workers is None and args.ray is None and args.fleet is None:
        results = _run_here(args, overrides)
    else:
        from twinloop.eval.workers import WorkersFailed

        try:
            results, workers = _run_on_workers(args, overrides)
        except WorkersFailed as exc:
            print(f"twinloop: error: {exc}", file=sys.stderr)
            return 2
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
    print(table(rows, ("metric", "value")))
    if workers is not None:
        for line in workers["report"]:
            print(line)
    if args.json:
        payload = {
            **_run_payload(args, overrides),
            "n_envs": args.n_envs,
            "summary": summary,
            "episodes": [r.__dict__ for r in results],
        }
        if workers is not None:
            payload["workers"] = {k: v for k, v in workers.items() if k != "report"}
        with open(args.json, "w") as fh:
            json.dump(payload, fh, indent=2, default=_json_default)
    return 0


def _takes_model(controller: str) -> bool:
    """Whether controller ``controller``'s constructor takes a ``model`` (the rate model)."""
    import inspect

    from twinloop.controllers import CONTROLLERS
    from twinloop.core.registry import load

    if controller not in CONTROLLERS:
        return False
    return "model" in inspect.signature(load(CONTROLLERS[controller])).parameters


def cmd_eval(args: argparse.Namespace) -> int:
    """Run every controller on the same seeds and print the paired comparison."""
    import copy

    from twinloop.eval.compare import compare_controllers, format_comparison, plot_comparison

    if len(set(args.controller)) != len(args.controller):
        dup = sorted({c for c in args.controller if args.controller.count(c) > 1})
        raise ValueError(f"--controller {', '.join(dup)} given twice: name each once")
    if args.episodes is None:
        args.episodes = DEFAULT_EPISODES
    overrides = _parse_overrides(args.env_id, args.set, args.config)
    results: dict[str, list[Any]] = {}
    workers: dict[str, Any] = {}
    for name in args.controller:
        run_args = copy.copy(args)
        run_args.controller = name
        run_args.model = args.model if args.model and _takes_model(name) else None
        if args.workers is None and args.ray is None and args.fleet is None:
            results[name] = _run_here(run_args, overrides)
        else:
            from twinloop.eval.workers import WorkersFailed

            try:
                results[name], workers[name] = _run_on_workers(run_args, overrides)
            except WorkersFailed as exc:
                print(f"twinloop: error: {name}: {exc}", file=sys.stderr)
                return 2
    report = compare_controllers(results, n_resamples=args.resamples)
    print(
        f"{args.env_id}  backend={args.backend or 'sim'}  seeds {args.seed}..."
        f"{args.seed + args.episodes - 1}  n_envs={args.n_envs}"
    )
    print(format_comparison(report))
    for name, info in workers.items():
        for line in info["report"]:
            print(f"{name}: {line}")
    if args.plot:
        title = f"{args.env_id} on {args.backend or 'sim'}, {args.episodes} paired episodes"
        print(f"figure: {plot_comparison(report, args.plot, title)}")
    if args.json:
        payload = {
            "env_id": args.env_id,
            "backend": args.backend or "sim",
            "seed": args.seed,
            "overrides": overrides,
            "comparison": report,
            "episodes": {k: [r.__dict__ for r in v] for k, v in results.items()},
        }
        with open(args.json, "w") as fh:
            json.dump(payload, fh, indent=2, default=_json_default)
    return 0


def _run_splits(args: argparse.Namespace, overrides: dict[str, Any]) -> int:
    """``twinloop run ID --split NAME|all``: success per evaluation split, LLaRP's table."""
    import copy

    import twinloop
    from twinloop.eval.splits import plot_split_rows, split_rows, split_size, splits_of

    if args.workers is not None or args.ray is not None:
        raise ValueError("--split runs in this process: drop --workers/--ray")
    if args.record:
        raise ValueError("--split does not record: capture one split at a time without it")
    probe = twinloop.make(args.env_id, **overrides)
    meta = dict(probe.metadata)
    probe.close()
    splits = splits_of(meta, args.split, args.env_id)
    results: dict[str, list[Any]] = {}
    for split in splits:
        size = split_size(meta, split)
        n = size if args.episodes is None else args.episodes
        if n > size:
            raise ValueError(f"--episodes {n}: split {split!r} has {size} episodes (0..{size - 1})")
        run_args = copy.copy(args)
        run_args.episodes = n
        results[split] = _run_here(run_args, overrides, split=split)
    rows = split_rows(results, meta.get("evaluation_splits", ()))
    print(
        f"{args.env_id}  controller={args.controller}  backend={args.backend or 'sim'}  "
        f"seed={args.seed}  n_envs={args.n_envs}  episodes 0..n-1 of each split"
    )
    print(
        table(
            [
                (
                    r["split"],
                    r["episodes"],
                    f"{100 * r['success_rate']:.1f}",
                    f"{100 * r['success_rate_ci95'][0]:.1f}-{100 * r['success_rate_ci95'][1]:.1f}",
                    f"{r['mean_return']:.2f}",
                )
                for r in rows
            ],
            ("split", "episodes", "success %", "95% CI (Wilson)", "mean return"),
        )
    )
    if args.plot:
        title = f"{args.env_id}: {args.controller} on {args.backend or 'sim'}"
        print(f"figure: {plot_split_rows(rows, title, args.plot)}")
    if args.json:
        payload = {
            **_run_payload(args, overrides),
            "splits": rows,
            "episodes": {k: [r.__dict__ for r in v] for k, v in results.items()},
        }
        with open(args.json, "w") as fh:
            json.dump(payload, fh, indent=2, default=_json_default)
    return 0


def _run_payload(args: argparse.Namespace, overrides: dict[str, Any]) -> dict[str, Any]:
    """What every ``twinloop run --json`` file starts with: the run's settings."""
    return {
        "env_id": args.env_id,
        "controller": args.controller,
        "backend": args.backend or "sim",
        "seed": args.seed,
        "overrides": overrides,
    }


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


#: ``twinloop serve <device>``: device -> module with ``add_arguments(parser)`` and ``main(args)``.
SERVE_DEVICES: dict[str, str] = {
    "microscope": "twinloop.hardware.microscope.cli",
    "balloon": "twinloop.hardware.balloon.server",
    "robot": "twinloop.hardware.robot.cli",
    "skills": "twinloop.hardware.skills.cli",
}


def _first_line(doc: str | None) -> str:
    """The first line of a module docstring, less a leading title such as ``twinloop serve x``."""
    lines = (doc or "").strip().splitlines()
    line = lines[0] if lines else ""
    if line.startswith("``") and "``: " in line:
        line = line.split("``: ", 1)[1]
    return line.rstrip(".")


def _add_serve(sub: Any) -> None:
    import importlib

    s = sub.add_parser(
        "serve",
        help="run a device's network twin (the simulator behind the device's protocol)",
        description="Run a device's network twin in this process until interrupted: the "
        "simulator behind the device's own protocol, on loopback unless told otherwise.",
    )
    devices = s.add_subparsers(dest="device", required=True)
    for name, module_name in SERVE_DEVICES.items():
        module = importlib.import_module(module_name)
        help_text = _first_line(module.__doc__) or f"the {name} twin"
        d = devices.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(d)
        d.set_defaults(func=module.main)


class _ReadmeTableAction(argparse.Action):
    """``--readme-table [README]``: print the command table, or rewrite it in README, and exit."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(
            option_strings, dest, nargs="?", default=argparse.SUPPRESS, metavar="README", **kwargs
        )

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        if values is None:
            print(render_command_table(parser))
        else:
            try:
                changed = write_command_table(values, parser)
            except (OSError, ValueError) as exc:
                parser.exit(2, f"twinloop: error: {exc}\n")
            print(f"{values}: command table {'rewritten' if changed else 'already up to date'}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``twinloop``."""
    p = argparse.ArgumentParser(
        prog="twinloop",
        description="twinloop: simulators and real devices behind one Gymnasium API. "
        "Run 'twinloop COMMAND -h' for a command's options.",
    )
    p.add_argument(
        "--readme-table",
        action=_ReadmeTableAction,
        help="print README.md's command table (markdown, rendered from this parser) and exit; "
        "given a file, rewrite the table between its markers in that file instead",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser(
        "list",
        help="list the registered env ids, their backends and (--spaces) their spaces",
        description="List every registered env id with its backends and description.",
    )
    s.add_argument(
        "--spaces", action="store_true", help="also build each env to show its spaces (slower)"
    )
    s.set_defaults(func=cmd_list)

    s = sub.add_parser(
        "info",
        help="describe one env: backends, spaces, observation fields and the default config",
        description="Describe one env: its backends, action and observation spaces, the named "
        "fields of its observation, and its default config.",
    )
    s.add_argument("env_id", metavar="ID", help="registered env id, e.g. twinloop/StemSteer-v0")
    s.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="config override to show, e.g. --set beam_current_na=0.2 (repeatable)",
    )
    _add_device_options(s, lerobot=False)
    s.set_defaults(func=cmd_info)

    _add_run(sub)
    _add_eval(sub)
    _add_serve(sub)
    from twinloop.controllers.rl.cli import add_agent_parser
    from twinloop.datasets.cli import add_data_parser
    from twinloop.demo_cli import add_parsers
    from twinloop.sysid.commands import add_sysid_parser

    add_data_parser(sub)
    add_sysid_parser(sub)
    add_agent_parser(sub)
    add_parsers(sub)
    return p


def _add_run(sub: Any) -> None:
    from twinloop.controllers import CONTROLLERS
    from twinloop.datasets.cli import add_record_arguments

    s = sub.add_parser(
        "run",
        help="run a controller for N episodes; print success, return and failures with "
        "intervals (episode e uses seed S+e, so results do not depend on --n-envs); --record "
        "captures every episode",
        description="Run a controller on an env for N episodes and print success, return and "
        "failures with 95% intervals. Episode e always uses seed S+e, so the results do not "
        "depend on --n-envs.",
    )
    s.add_argument("env_id", metavar="ID", help="registered env id, e.g. twinloop/StemSteer-v0")
    s.add_argument(
        "--controller",
        required=True,
        metavar="NAME",
        help=f"controller name: {', '.join(CONTROLLERS)}; or agent:DIR, an agent saved by "
        "'twinloop agent train'",
    )
    _add_episode_options(
        s, f"number of episodes (default: {DEFAULT_EPISODES}; with --split, the whole split)"
    )
    s.add_argument("--json", default=None, help="also write the results to this JSON file")
    s.add_argument(
        "--split",
        default=None,
        metavar="NAME|all",
        help="run episodes 0..N-1 of an evaluation split (default N: the whole split) and print "
        "success per split with 95%% intervals; 'all': every evaluation split, an 'overall' row "
        "over the benchmark's, as in LLaRP's table (envs with splits: LangRearrange-v0)",
    )
    s.add_argument(
        "--plot",
        default=None,
        metavar="PNG",
        help="with --split: write the figure of success and return per split here",
    )
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_worker_arguments(s)
    add_record_arguments(s)
    s.set_defaults(func=cmd_run)


def _add_device_options(s: argparse.ArgumentParser, lerobot: bool) -> None:
    """``--backend`` and how to reach the device: address, token, timeout (and LeRobot's)."""
    s.add_argument("--backend", default=None, help="backend name (default: the simulator)")
    s.add_argument(
        "--address",
        default=None,
        help="device address for network backends, e.g. tcp://127.0.0.1:5555",
    )
    s.add_argument("--host", default=None, help="device host (with --port; default 127.0.0.1)")
    s.add_argument("--port", type=int, default=None, help="device port (network backends)")
    s.add_argument(
        "--token",
        default=None,
        help="shared secret of the device's twin (visible to other local users in the process "
        f"list: prefer --token-file or the {TOKEN_ENV} environment variable)",
    )
    s.add_argument(
        "--token-file",
        default=None,
        metavar="PATH",
        help=f"read the shared secret from this file (its first line); default: ${TOKEN_ENV}",
    )
    s.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="S",
        help="seconds a network backend waits for the device's answer (its timeout_s, or "
        "connect_timeout_s and ack_timeout_s); raise it for a twin that is still starting",
    )
    if lerobot:
        s.add_argument(
            "--robot",
            default=None,
            metavar="MODULE:FACTORY",
            help="backend 'lerobot': a function returning the robot object (LeRobot's Robot "
            "interface), called with no arguments",
        )
        s.add_argument(
            "--mapping",
            default=None,
            metavar="MODULE:ATTR",
            help="backend 'lerobot': its LeRobotMapping, or a function returning one (default: "
            "'<joint>.pos' keys in radians)",
        )
        s.add_argument(
            "--reset-hook",
            default=None,
            metavar="MODULE:ATTR",
            help="backend 'lerobot': hook(robot, seed) run at every reset (e.g. a scripted "
            "stand-up)",
        )


def _add_episode_options(s: argparse.ArgumentParser, episodes_help: str) -> None:
    """The options ``run`` and ``eval`` share: episodes and seeds, backend and device, config."""
    s.add_argument(
        "--episodes",
        type=positive_int,
        default=None,
        metavar="N",
        help=episodes_help,
    )
    s.add_argument(
        "--seed",
        type=non_negative_int,
        default=0,
        metavar="S",
        help="seed of the first episode; episode e uses S+e (default: %(default)s)",
    )
    s.add_argument(
        "--n-envs",
        type=positive_int,
        default=1,
        metavar="N",
        help="run episodes in a kernel-batched vector env of this size (default: %(default)s)",
    )
    _add_device_options(s, lerobot=True)
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
        help="trained model for learned controllers (greedy-learned, planner), from "
        "'twinloop stem-rates train'",
    )
    s.add_argument(
        "--config",
        default=None,
        metavar="FILE",
        help="JSON object of config overrides (field names or dotted paths -> values), e.g. "
        "what 'twinloop sysid' writes or a twin's --profile file; --set wins over it",
    )


def _add_eval(sub: Any) -> None:
    from twinloop.controllers import CONTROLLERS

    s = sub.add_parser(
        "eval",
        help="compare controllers on the same seeds: success, mean and IQM return with 95%% "
        "intervals, and paired differences from the first controller",
        description="Run every --controller on the same episodes (episode e uses seed S+e for "
        "each) and compare them: success rate (Wilson interval), mean and IQM return "
        "(bootstrap), the env's episode metrics, and each controller minus the first with a "
        "paired bootstrap interval and the probability of improvement. Runs in this process, "
        "on --workers, on Ray or on a device backend, as 'twinloop run' does.",
    )
    s.add_argument("env_id", metavar="ID", help="registered env id, e.g. twinloop/StemSteer-v0")
    s.add_argument(
        "--controller",
        action="append",
        required=True,
        metavar="NAME",
        help=f"a controller to compare (repeat it; the first is the baseline): "
        f"{', '.join(CONTROLLERS)}, or agent:DIR (an agent saved by 'twinloop agent train')",
    )
    _add_episode_options(
        s, f"episodes per controller (default: {DEFAULT_EPISODES}); the same seeds for each"
    )
    s.add_argument(
        "--json", default=None, metavar="FILE", help="also write the comparison to this JSON file"
    )
    s.add_argument(
        "--plot",
        default=None,
        metavar="PNG",
        help="write a figure: success and IQM return per controller, differences from the "
        "first, with intervals",
    )
    s.add_argument(
        "--resamples",
        type=positive_int,
        default=5000,
        metavar="B",
        help="bootstrap resamples of every interval (default: %(default)s)",
    )
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_worker_arguments(s)
    s.set_defaults(func=cmd_eval, record=None, split=None, overwrite=False, append=False)


def _add_worker_arguments(s: argparse.ArgumentParser) -> None:
    g = s.add_argument_group("workers (episodes split by seed: same results for any count)")
    g.add_argument(
        "--workers",
        type=positive_int,
        default=None,
        metavar="N",
        help="run chunks of seeds on N worker processes (a local pool; with --ray, N Ray "
        "tasks at once); with --record each worker writes a shard, merged at the end "
        "(default: everything in this process)",
    )
    g.add_argument(
        "--ray",
        default=None,
        metavar="ADDRESS",
        help="run the workers as Ray tasks: 'auto' or host:port joins a cluster started with "
        "'ray start', 'local' starts Ray here; needs the ray extra (pip install 'twinloop[ray]')",
    )
    g.add_argument(
        "--fleet",
        default=None,
        metavar="FILE",
        help="a fleet of devices (JSON list of {name, address[, token_file, ...]}): one worker "
        "per device, each running a contiguous share of the seeds on its own device with "
        "--backend; results and captures say which device ran each episode",
    )
    g.add_argument(
        "--chunk-episodes",
        type=positive_int,
        default=None,
        metavar="K",
        help="episodes per chunk of seeds (default: about 4 chunks per worker)",
    )
    g.add_argument(
        "--max-retries",
        type=non_negative_int,
        default=3,
        metavar="R",
        help="with --ray, how often a chunk whose worker died runs again (default: %(default)s)",
    )


# --- the README's command table ---------------------------------------------------------------
#: The generated table sits between these two lines of README.md.
TABLE_BEGIN = (
    "<!-- command table: generated from the parser by `twinloop --readme-table README.md`; "
    "edit the help texts in src/twinloop, not this table -->"
)
TABLE_END = "<!-- end of the generated command table -->"


def iter_commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser, str]]:
    """Every command of ``parser``, depth first in the order they were added.

    Yields:
        ``(path, parser, help)`` of each subcommand at any depth, e.g.
        ``(("data", "info"), <parser>, "summarise ...")``; groups come before their members.
    """
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        helps = {a.dest: a.help or "" for a in action._choices_actions}
        for name, child in action.choices.items():
            yield (*path, name), child, helps.get(name, "")
            yield from iter_commands(child, (*path, name))


def _is_group(parser: argparse.ArgumentParser) -> bool:
    return any(isinstance(a, argparse._SubParsersAction) for a in parser._actions)


def _argument_text(action: argparse.Action) -> str:
    if action.metavar is not None:
        name = str(action.metavar)
    elif action.choices is not None:
        name = "|".join(str(c) for c in action.choices)
    else:
        name = action.dest.upper()
    if action.nargs == "?":
        return f"[{name}]"
    if action.nargs == "*":
        return f"[{name}...]"
    if action.nargs == "+":
        return f"{name}..."
    return name


def _synopsis(path: tuple[str, ...], parser: argparse.ArgumentParser) -> str:
    """``twinloop PATH POSITIONALS REQUIRED-OPTIONS [options]``."""
    words = ["twinloop", *path]
    optional = False
    for a in parser._actions:
        if isinstance(a, argparse._HelpAction):
            continue
        if not a.option_strings:
            words.append(_argument_text(a))
    for a in parser._actions:
        if isinstance(a, argparse._HelpAction) or not a.option_strings:
            continue
        if a.required:
            flag = a.option_strings[-1]
            words.append(flag if a.nargs == 0 else f"{flag} {_argument_text(a)}")
        else:
            optional = True
    if optional:
        words.append("[options]")
    return " ".join(words)


def _cell(text: str) -> str:
    return " ".join(text.replace("%%", "%").split()).replace("|", "\\|")


def render_command_table(parser: argparse.ArgumentParser | None = None) -> str:
    """README.md's command table (markdown): one row per command that runs, with its help.

    Args:
        parser: The ``twinloop`` parser (default: :func:`build_parser`).

    Returns:
        The table, without the marker lines and without a trailing newline.
    """
    parser = parser or build_parser()
    lines = ["| command | what |", "|---|---|"]
    for path, child, help_text in iter_commands(parser):
        if not _is_group(child):
            lines.append(f"| `{_cell(_synopsis(path, child))}` | {_cell(help_text)} |")
    return "\n".join(lines)


def write_command_table(path: str | Path, parser: argparse.ArgumentParser | None = None) -> bool:
    """Rewrite the command table between :data:`TABLE_BEGIN` and :data:`TABLE_END` in ``path``.

    Returns:
        True when the file changed, False when its table was already up to date.

    Raises:
        ValueError: The file lacks one of the marker lines (the message names them).
    """
    path = Path(path)
    text = path.read_text()
    if TABLE_BEGIN not in text or TABLE_END not in text:
        raise ValueError(
            f"{path} has no generated command table; put the lines\n{TABLE_BEGIN}\n"
            f"{TABLE_END}\nwhere it belongs and run again"
        )
    head, rest = text.split(TABLE_BEGIN, 1)
    _, tail = rest.split(TABLE_END, 1)
    new = f"{head}{TABLE_BEGIN}\n{render_command_table(parser)}\n{TABLE_END}{tail}"
    if new == text:
        return False
    path.write_text(new)
    return True


# --- entry point -------------------------------------------------------------------------------
#: Spellings of the previous release -> today's. They work for one more release, with a
#: notice on stderr; then they go.
DEPRECATED_COMMANDS: dict[str, tuple[str, ...]] = {
    "capture": ("stem-rates", "capture"),
    "train": ("stem-rates", "train"),
    "eval": ("stem-rates", "eval"),
}


def _is_controller_eval(rest: Sequence[str]) -> bool:
    """Whether ``twinloop eval REST`` is today's controller comparison (or asks for its help).

    The previous release's ``twinloop eval DATASET...`` (now ``stem-rates eval``) takes dataset
    folders; today's takes a registered env id and ``--controller`` options.
    """
    import twinloop

    if not rest or rest[0] in ("-h", "--help") or "--controller" in rest:
        return True
    return rest[0] in twinloop.registry


def modernize(argv: Sequence[str]) -> list[str]:
    """``argv`` with a deprecated command spelled today's way (a notice goes to stderr)."""
    argv = list(argv)
    if argv[:1] == ["eval"] and _is_controller_eval(argv[1:]):
        return argv  # today's 'twinloop eval ID --controller ...', not the old dataset form
    if argv and argv[0] in DEPRECATED_COMMANDS:
        new = DEPRECATED_COMMANDS[argv[0]]
        print(
            f"twinloop: 'twinloop {argv[0]}' is deprecated and goes in the next release; "
            f"use 'twinloop {' '.join(new)}' (same arguments)",
            file=sys.stderr,
        )
        argv[:1] = new
    return argv


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``twinloop`` command."""
    from twinloop.core.backend import BackendFault
    from twinloop.datasets.errors import DatasetError

    args = build_parser().parse_args(modernize(sys.argv[1:] if argv is None else argv))
    try:
        return int(args.func(args))
    except (ValueError, KeyError, ImportError, OSError, DatasetError, BackendFault) as exc:
        print(f"twinloop: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
