"""``twinloop data ...`` and the ``--record`` option of ``twinloop run``.

``twinloop data info DIR [--follow]`` · ``twinloop data merge OUT SHARD...`` ·
``twinloop data verify DIR`` · ``twinloop data recover DIR`` · ``twinloop data show DIR`` ·
``twinloop data export DIR --format lerobot|robomimic OUT`` ·
``twinloop data replay DIR --backend B``. There is no ``export-minari``:
the native layout is Minari's (``MINARI_DATASETS_PATH=ROOT python -c "import minari;
minari.load_dataset('ns/name-v0')"``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import sys
from typing import Any

import gymnasium as gym


def add_record_arguments(parser: argparse.ArgumentParser) -> None:
    """The capture options of ``twinloop run``."""
    g = parser.add_argument_group("recording (twinloop.datasets)")
    g.add_argument(
        "--record",
        default=None,
        metavar="ROOT",
        help="record every episode into ROOT/<namespace>/<name>-v<N> (Minari's layout; "
        "MINARI_DATASETS_PATH=ROOT lets minari.load_dataset find it)",
    )
    g.add_argument(
        "--dataset-id",
        default=None,
        help="dataset id 'namespace/name-v<N>' (default: twinloop/<env>-<controller>-v0)",
    )
    mode = g.add_mutually_exclusive_group()
    mode.add_argument("--overwrite", action="store_true", help="replace a dataset of that id")
    mode.add_argument("--append", action="store_true", help="add episodes to that dataset")
    g.add_argument(
        "--tag",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="user tag stored with the dataset (repeatable), e.g. --tag operator=ana",
    )
    g.add_argument(
        "--device-profile",
        default=None,
        metavar="random:SEED|FILE",
        help="the profile the device twin was started with (as its --profile): recorded with "
        "its values under metadata twinloop.privileged (strip that before sharing), so that "
        "identification can be scored; a twin's profile name is recorded without this",
    )


def default_dataset_id(env_id: str, controller: str) -> str:
    """``twinloop/<env name>-<controller>-v0``, e.g. ``twinloop/stemsteer-greedy-v0``."""
    name = re.sub(r"-v\d+$", "", env_id.split("/")[-1]).lower()
    slug = re.sub(r"[^-_\w]+", "_", f"{name}-{controller}")
    return f"twinloop/{slug}-v0"


def parse_tags(items: list[str]) -> dict[str, Any]:
    """``["k=v", ...]`` -> dict; values that parse as JSON become numbers/bools."""
    tags: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"tag {item!r} must look like key=value")
        key, raw = (s.strip() for s in item.split("=", 1))
        try:
            tags[key] = json.loads(raw)
        except ValueError:
            tags[key] = raw
    return tags


def wrap_for_recording(
    env: gym.Env | gym.vector.VectorEnv, args: argparse.Namespace
) -> gym.Env | gym.vector.VectorEnv:
    """Wrap the env of ``twinloop run`` in a recorder as ``--record`` asks (or return it)."""
    if not getattr(args, "record", None):
        return env
    from twinloop.datasets import DatasetError, record
    from twinloop.datasets.writer import dataset_dir

    dataset_id = args.dataset_id or default_dataset_id(args.env_id, args.controller)
    tags = {"controller": args.controller, "seed": args.seed, **parse_tags(args.tag)}
    mode = "overwrite" if args.overwrite else "append" if args.append else "create"
    profile = _device_profile(env, getattr(args, "device_profile", None))
    try:
        wrapped = record(
            env, dataset_dir(args.record, dataset_id), dataset_id=dataset_id, mode=mode, tags=tags
        )
    except DatasetError as exc:
        raise ValueError(str(exc)) from exc
    if profile is not None:
        wrapped.writer.note_device_profile(profile)
    return wrapped


def _device_profile(env: Any, spec: str | None) -> Any:
    """The :class:`~twinloop.core.profile.DeviceProfile` ``--device-profile`` names, or None.

    ``random:SEED`` is drawn around the run's own config, as the twin drew it around its own.
    """
    if not spec:
        return None
    if isinstance(env, gym.vector.VectorEnv):
        raise ValueError("--device-profile describes a device: run it with --n-envs 1")
    from twinloop.core.profile import parse_profile

    cfg = getattr(env.unwrapped, "config", None)
    if cfg is None:
        raise ValueError(f"--device-profile: {type(env.unwrapped).__name__} has no config")
    return parse_profile(spec, cfg)


def report_recording(env: Any) -> None:
    """One line saying where the episodes went (after the env was closed)."""
    writer = getattr(env, "writer", None)
    if writer is not None:
        print(
            f"recorded {env.n_episodes} episodes ({env.n_steps} steps) as "
            f"{writer.dataset_id} in {writer.directory}"
        )


# --- twinloop data ----------------------------------------------------------------------------
def add_data_parser(sub: Any) -> None:
    """Register ``twinloop data`` and its subcommands on the top-level subparsers."""
    p = sub.add_parser(
        "data",
        help="recorded datasets: summarise, follow, verify, recover, show, export, merge",
        description="Work with datasets recorded by 'twinloop run --record' or "
        "twinloop.datasets (Minari's layout; other tools' Minari datasets read too).",
    )
    dsub = p.add_subparsers(dest="data_command", required=True)

    s = dsub.add_parser(
        "info",
        help="summarise the dataset(s) in DIR; --follow reports a capture while it is written",
    )
    s.add_argument("path", metavar="DIR", help="a dataset folder, its data folder, or a root")
    s.add_argument("--follow", action="store_true", help="keep reporting while it is written")
    s.add_argument("--interval", type=float, default=1.0, help="follow poll interval (s)")
    s.add_argument("--timeout", type=float, default=None, help="stop following after (s)")
    s.add_argument("--json", action="store_true", help="print the summary as JSON")
    s.set_defaults(func=cmd_info)

    s = dsub.add_parser("merge", help="merge shards into one dataset (episode ids 0..N-1)")
    s.add_argument("out", metavar="OUT", help="output dataset folder <root>/<ns>/<name>-v<N>")
    s.add_argument("shards", metavar="SHARD", nargs="+", help="input datasets")
    s.add_argument("--dataset-id", default=None, help="output id (default: from OUT)")
    mode = s.add_mutually_exclusive_group()
    mode.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    mode.add_argument("--append", action="store_true", help="add to OUT if it exists")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_merge)

    s = dsub.add_parser(
        "verify",
        help="check every episode's checksums and headers; name what is damaged",
        description="Hash every dataset of every episode and compare with the checksums "
        "recorded when it was written, parse every dataset header and compare it with the "
        "episode index, and read every episode another tool added. Exit status 1 if "
        "anything is damaged (each problem names the file, the episode and the field).",
    )
    s.add_argument("path", metavar="DIR", help="a dataset folder, its data folder, or a root")
    s.add_argument("--json", action="store_true", help="print the results as JSON")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_verify)

    s = dsub.add_parser(
        "recover",
        help="make an interrupted or damaged capture whole: relink its intact episodes, "
        "bring metadata.json up to date",
    )
    s.add_argument("path", metavar="DIR", help="a dataset folder (or its data folder)")
    s.set_defaults(func=cmd_recover)

    from twinloop.datasets.export_cli import add_export_parser
    from twinloop.datasets.show_cli import add_show_parser

    add_show_parser(dsub)
    add_export_parser(dsub)
    _add_replay_parser(dsub)


def _add_replay_parser(dsub: Any) -> None:
    s = dsub.add_parser(
        "replay",
        help="re-issue a capture's applied actions on a backend from each episode's seed; "
        "report the per-step divergence of observation, reward and applied command",
        description="Replay captured episodes on a backend: reset with each episode's seed "
        "(the captured initial state where the backend can make it), step with the actions "
        "the device applied, and compare every step with the capture. A simulator replays "
        "its own captures exactly (divergence 0); a twin whose hidden physics differ does not.",
    )
    s.add_argument("path", metavar="DIR", help="a dataset folder (or its data folder)")
    s.add_argument("--backend", default=None, help="backend name (default: the simulator)")
    s.add_argument("--address", default=None, help="device address for network backends")
    s.add_argument(
        "--token-file",
        default=None,
        metavar="PATH",
        help="read the twin's shared secret from this file (default: $TWINLOOP_TOKEN)",
    )
    s.add_argument(
        "--episode",
        type=int,
        action="append",
        default=None,
        metavar="I",
        help="replay only this episode (position in the dataset; repeatable; default: all)",
    )
    s.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="config override over the recorded config (repeatable)",
    )
    s.add_argument("--steps", action="store_true", help="also print every step's divergence")
    s.add_argument("--json", default=None, metavar="FILE", help="write the report as JSON")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_replay)


def _fail(exc: Exception) -> int:
    print(f"twinloop: error: {exc}", file=sys.stderr)
    return 2


def _utc(t: float | None) -> str:
    if t is None:
        return "-"
    return datetime.datetime.fromtimestamp(t, datetime.UTC).isoformat(timespec="seconds")


def _describe(summary: dict[str, Any]) -> list[tuple[str, Any]]:
    start, end = summary["wall_time_start_s"], summary["wall_time_end_s"]
    span = f"{_utc(start)} .. {_utc(end)}"
    if start is not None and end is not None:
        span += f"  ({end - start:.1f} s)"
    backends = (
        ", ".join(" ".join(f"{k}={v}" for k, v in b.items()) for b in summary["backends"]) or "-"
    )
    rows = [
        ("id", summary["dataset_id"]),
        ("path", summary["path"]),
        ("writer", summary["writer_state"]),
        ("episodes", summary["episodes"]),
        ("steps", summary["steps"]),
        ("size on disk", f"{summary['size_bytes'] / 1e6:.2f} MB"),
        ("bytes per step", f"{summary['bytes_per_step']:.1f}"),
        (
            "return mean [min, max]",
            f"{summary['return_mean']:.3f} [{summary['return_min']:.3f}, "
            f"{summary['return_max']:.3f}]",
        ),
        ("terminated / truncated", f"{summary['terminated']} / {summary['truncated']}"),
        ("env", summary["env_id"] or "-"),
        ("backends", backends),
        ("time span (UTC)", span),
        ("twinloop", f"{summary['twinloop_version']} (git {summary['git_revision'] or '-'})"),
        ("tags", json.dumps(summary["tags"]) if summary["tags"] else "-"),
    ]
    if summary["combined_datasets"]:
        rows.append(("merged from", ", ".join(summary["combined_datasets"])))
    return rows


def cmd_info(args: argparse.Namespace) -> int:
    """Summarise every dataset under ``DIR`` (or follow one while it is written)."""
    from twinloop.core.text import table
    from twinloop.datasets import DatasetError, open_dataset, summarize
    from twinloop.datasets.writer import find_datasets

    found = find_datasets(args.path)
    if not found:
        return _fail(ValueError(f"no dataset under {args.path} (no */data/metadata.json)"))
    if args.follow and len(found) > 1:
        return _fail(ValueError(f"--follow needs one dataset; {args.path} holds {len(found)}"))
    summaries = []
    for data_dir in found:
        try:
            ds = open_dataset(data_dir)
        except DatasetError as exc:
            return _fail(exc)
        with ds:
            if args.follow:
                _follow(ds, args)
            summaries.append(summarize(ds))
    if args.json:
        print(json.dumps(summaries if len(summaries) > 1 else summaries[0], indent=2))
        return 0
    for k, summary in enumerate(summaries):
        if k:
            print()
        print(table(_describe(summary), ("dataset", "value")))
        for problem in summary["problems"]:
            print(f"problem: {problem}")
    return 1 if any(s["problems"] for s in summaries) else 0


def _follow(ds: Any, args: argparse.Namespace) -> None:
    from tqdm import tqdm

    with tqdm(desc=ds.id, unit="ep", file=sys.stderr, initial=len(ds)) as bar:
        for new in ds.follow(poll_s=args.interval, timeout_s=args.timeout):
            bar.update(new)
            bar.set_postfix(steps=ds.total_steps, writer=ds.writer_state, refresh=False)


def cmd_merge(args: argparse.Namespace) -> int:
    """Merge shards into one dataset."""
    from tqdm import tqdm

    from twinloop.datasets import DatasetError, merge_datasets

    mode = "overwrite" if args.overwrite else "append" if args.append else "create"
    with tqdm(desc="merge", unit="ep", file=sys.stderr, disable=args.quiet) as bar:

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        try:
            result = merge_datasets(
                args.out, args.shards, dataset_id=args.dataset_id, mode=mode, progress=progress
            )
        except DatasetError as exc:
            return _fail(exc)
    print(f"merged {result['episodes']} episodes ({result['steps']} steps) into {args.out}")
    for problem in result["skipped"]:
        print(f"skipped: {problem}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Check every episode of every dataset under ``DIR``."""
    from tqdm import tqdm

    from twinloop.datasets import DatasetError, open_dataset
    from twinloop.datasets.writer import find_datasets

    found = find_datasets(args.path)
    if not found:
        return _fail(ValueError(f"no dataset under {args.path} (no */data/metadata.json)"))
    results = []
    for data_dir in found:
        try:
            ds = open_dataset(data_dir)
        except DatasetError as exc:
            results.append({"path": str(data_dir), "episodes": 0, "problems": [str(exc)]})
            continue
        with ds, tqdm(desc=ds.id, unit="ep", file=sys.stderr, disable=args.quiet) as bar:
            total = len(ds)

            def progress(done: int, n: int, bar: Any = bar) -> None:
                bar.total = n
                bar.update(done - bar.n)

            problems = ds.verify(progress)
            results.append(
                {
                    "path": str(data_dir.parent),
                    "dataset_id": ds.id,
                    "episodes": total,
                    "intact": len(ds),
                    "problems": problems,
                }
            )
    if args.json:
        print(json.dumps(results if len(results) > 1 else results[0], indent=2))
    else:
        for r in results:
            state = "intact" if not r["problems"] else f"{len(r['problems'])} problem(s)"
            print(f"{r['path']}: {r.get('intact', 0)} of {r['episodes']} episodes intact; {state}")
            for problem in r["problems"]:
                print(f"  damaged: {problem}")
    return 1 if any(r["problems"] for r in results) else 0


def cmd_recover(args: argparse.Namespace) -> int:
    """Rewrite metadata.json from the data file of an interrupted capture."""
    from twinloop.datasets import DatasetError, recover_dataset

    try:
        counts = recover_dataset(args.path)
    except DatasetError as exc:
        return _fail(exc)
    print(f"{args.path}: {counts['episodes']} episodes, {counts['steps']} steps")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    """Replay a capture on a backend and print the divergence per episode (and per step)."""
    from tqdm import tqdm

    import twinloop
    from twinloop.core.config import override, parse_assignment, recorded_config
    from twinloop.core.text import table
    from twinloop.datasets import DatasetError, open_dataset
    from twinloop.datasets.replay import QUANTITIES, replay_dataset

    try:
        ds = open_dataset(args.path)
    except DatasetError as exc:
        return _fail(exc)
    with ds:
        env_id = (ds.metadata.get("twinloop") or {}).get("env_id")
        if not env_id:
            return _fail(ValueError(f"{args.path}: no env id in its metadata; cannot replay"))
        nominal = twinloop.make_config(env_id)
        cfg = recorded_config(type(nominal), ds.metadata, where=str(args.path))
        cfg = override(cfg, **dict(parse_assignment(cfg, a) for a in args.set))
        options: dict[str, Any] = {}
        if args.address:
            options["address"] = args.address
        token = _read_token(args.token_file)
        if token:
            options["token"] = token
        for i in args.episode or ():
            if not 0 <= i < len(ds):
                return _fail(ValueError(f"--episode {i} is outside [0, {len(ds) - 1}]"))

        def make_env() -> Any:
            return twinloop.make(env_id, backend=args.backend, config=cfg, **options)

        with tqdm(desc="replay", unit="ep", file=sys.stderr, disable=args.quiet) as bar:

            def progress(done: int, total: int) -> None:
                bar.total = total
                bar.update(done - bar.n)

            results = replay_dataset(ds, make_env, args.episode, progress)
    backend = args.backend or twinloop.spec(env_id).backend_names[0]
    print(f"{ds.id} replayed on backend={backend}")
    rows = [
        (
            r.episode_id,
            "-" if r.seed is None else r.seed,
            f"{r.replayed_steps}/{r.captured_steps}",
            "yes" if r.exact else "no",
            "-" if r.first_divergent_step() is None else r.first_divergent_step(),
            *(f"{r.max(q):.6g}" for q in QUANTITIES),
        )
        for r in results
    ]
    heads = (
        "episode",
        "seed",
        "steps",
        "exact",
        "first diverges",
        *(f"max {q}" for q in QUANTITIES),
    )
    print(table(rows, heads))
    if args.steps:
        for r in results:
            print(f"\nepisode {r.episode_id}")
            steps = [
                (t, *(f"{r.divergence[q][t]:.6g}" for q in QUANTITIES))
                for t in range(r.captured_steps)
            ]
            print(table(steps, ("step", *QUANTITIES)))
    if args.json:
        payload = {
            "dataset": ds.id,
            "path": str(args.path),
            "env_id": env_id,
            "backend": backend,
            "episodes": [r.to_json() for r in results],
        }
        with open(args.json, "w") as fh:
            json.dump(payload, fh, indent=2)
    return 0


def _read_token(token_file: str | None) -> str | None:
    """The twin's secret: ``--token-file``'s first line, else ``$TWINLOOP_TOKEN``, else None."""
    import os
    from pathlib import Path

    if not token_file:
        return os.environ.get("TWINLOOP_TOKEN") or None
    try:
        lines = Path(token_file).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"--token-file {token_file}: cannot read it ({exc})") from exc
    if not lines or not lines[0].strip():
        raise ValueError(f"--token-file {token_file} is empty: put the secret on its first line")
    return lines[0].strip()
