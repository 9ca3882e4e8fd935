"""Training sweeps: one training run per (seed, config) on a process pool or Ray, one report.

A sweep is the cartesian product of ``--grid`` values (each a config of the agent, on top of
the ``--set`` values every config shares) times the seeds. Every run is an ordinary
:func:`~twinloop.controllers.rl.train.train` into ``OUT/<config label>/seed-<S>/``, so each
one resumes from its newest checkpoint: a run whose worker died (a Ray retry, a pool retry,
or the same command run again) continues bit for bit as the uninterrupted run would, and only
the steps since its last checkpoint are trained again (never a run from scratch).

Data flow::

    plan_configs(agent, sets, grid)   every value parsed by the agent's Config and every grid
        |                             point built through it: a bad name or value fails here
    run_sweep(spec, OUT, workers | ray_address)
        --> runs whose newest checkpoint is their last step: skipped (done before)
        --> other runs: train() in this process (workers=1), on a spawned process pool, or as
            Ray tasks (a task whose worker or node died is retried and resumes)
        --> OUT/sweep.json rewritten at every change of a run's status (plan, status, attempts)
    sweep_report(OUT)                 per config: final score IQM + 95 % stratified bootstrap
        --> OUT/report.json, report.md, curves.png, profiles.png

The final score of a run is its ``return_recent``: the mean return of its last
:data:`~twinloop.controllers.rl.train.RECENT` (20) finished training episodes (training runs
here have no separate evaluation episodes). Intervals are over seeds, after Agarwal et al.
2021 (:mod:`twinloop.eval.metrics`).
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import itertools
import json
import math
import multiprocessing
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from twinloop.core.text import json_ready
from twinloop.eval.workers import on_driver_node, ray_session

#: Format of ``OUT/sweep.json``.
MANIFEST_VERSION = 1
#: Label of the single config of a sweep without ``--grid``.
BASE_LABEL = "base"
#: Env-step bins of the learning curves in the report.
CURVE_BINS = 20
#: Thresholds of the performance profiles (evenly spaced over the scores' range).
PROFILE_POINTS = 41
#: How a process pool starts its workers (numba's and JAX's threads do not survive a fork).
START_METHOD = "spawn"


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """One point of the grid.

    Attributes:
        label: Folder name of its runs (``lr=0.001,hidden=16x16``; ``base`` without a grid).
        overrides: Agent config overrides of its runs: the shared ``--set`` values and the
            grid point (dotted path -> typed value).
        point: The grid values alone.
    """

    label: str
    overrides: Mapping[str, Any]
    point: Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class SweepSpec:
    """What every run trains; plain data, so it crosses process boundaries.

    Attributes:
        env_id: Registered env id (each run makes ``twinloop.make_vec(env_id, n_envs, ...)``).
        agent: Agent name (:data:`~twinloop.controllers.rl.AGENTS`).
        steps: Env steps of each run.
        seeds: The seeds; every config runs every seed.
        configs: The grid points (:func:`plan_configs`).
        n_envs: Rows of each run's vector env.
        env_overrides: Env config overrides of every run.
        checkpoint_every: Env steps between a run's checkpoints.
        log_every: Env steps between log rows (None: train's default, about 1 % of a run).
    """

    env_id: str
    agent: str
    steps: int
    seeds: tuple[int, ...]
    configs: tuple[SweepConfig, ...]
    n_envs: int = 8
    env_overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    checkpoint_every: int = 50_000
    log_every: int | None = None

    def runs(self) -> list[SweepRun]:
        """Every (config, seed), config by config."""
        return [SweepRun(c, s) for c in self.configs for s in self.seeds]


@dataclasses.dataclass(frozen=True)
class SweepRun:
    """One training run of a sweep."""

    config: SweepConfig
    seed: int

    @property
    def key(self) -> str:
        """``<label>/seed-<S>``: the run's folder relative to the sweep's."""
        return f"{self.config.label}/seed-{self.seed}"


@dataclasses.dataclass(frozen=True)
class RunOutcome:
    """What one finished run reports back.

    Attributes:
        key: The run (:attr:`SweepRun.key`).
        env_steps: Env steps done in all.
        resumed_from: Env step of the checkpoint this attempt continued from (0: fresh).
        episodes: Episodes finished.
        return_recent: Mean return of the last finished episodes (NaN if none).
        wall_s: Seconds this attempt took.
        attempt: Which try this was (1 first).
    """

    key: str
    env_steps: int
    resumed_from: int
    episodes: int
    return_recent: float
    wall_s: float
    attempt: int


@dataclasses.dataclass
class SweepResult:
    """A whole sweep.

    Attributes:
        out: The sweep folder.
        engine: ``"process"`` (in this process), ``"pool"`` or ``"ray"``.
        outcomes: Runs trained by this call, by key.
        skipped: Runs already finished before this call.
        retried: Runs that needed more than one attempt, with their attempt counts.
        manifest: ``OUT/sweep.json``.
    """

    out: Path
    engine: str
    outcomes: dict[str, RunOutcome]
    skipped: list[str]
    retried: dict[str, int]
    manifest: Path


class SweepFailed(RuntimeError):
    """Runs failed; the others finished. The same command resumes the failed ones.

    Attributes:
        failed: ``{run key: reason}``.
    """

    def __init__(self, message: str, failed: Mapping[str, str]) -> None:
        """Keep the message and the failed runs."""
        super().__init__(message)
        self.failed = dict(failed)


#: Called in the driver with ``{"event", "key", "done", "total", "steps"}``: the event
#: (``start``, ``step``, ``done``, ``failed``, ``retry``, ``skip``), its run, runs done so
#: far, runs in all, and ``{key: (env_step, total_steps)}`` of every run seen so far.
SweepProgressFn = Callable[[dict[str, Any]], None]
#: Test hook, called in the worker as ``hook(run, env_step)`` after each of its log rows.
RunHook = Callable[[SweepRun, int], None]


# --- plan -----------------------------------------------------------------------------------
def parse_grid(text: str) -> tuple[str, list[str]]:
    """``"lr=1e-3,3e-4"`` -> ``("lr", ["1e-3", "3e-4"])``.

    Values are split at commas outside brackets, so a tuple value is written in brackets:
    ``hidden=[16],[32,32]``.

    Raises:
        ValueError: No ``=``, no name, or an empty value.
    """
    if "=" not in text:
        raise ValueError(f"--grid {text!r} must look like name=v1,v2")
    name, raw = (s.strip() for s in text.split("=", 1))
    if not name:
        raise ValueError(f"--grid {text!r} names no setting")
    values, depth, cur = [], 0, ""
    for ch in raw:
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            values.append(cur.strip())
            cur = ""
        else:
            cur += ch
    values.append(cur.strip())
    if any(not v for v in values):
        raise ValueError(f"--grid {text!r}: empty value (values are v1,v2,...)")
    return name, values


def _format_value(value: Any) -> str:
    if isinstance(value, tuple | list):
        return "x".join(_format_value(v) for v in value) or "none"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def config_label(point: Mapping[str, Any]) -> str:
    """Folder name of a grid point: ``lr=0.001,hidden=16x16`` (``base`` when empty)."""
    if not point:
        return BASE_LABEL
    text = ",".join(f"{k}={_format_value(v)}" for k, v in point.items())
    return re.sub(r"[^A-Za-z0-9._=,+-]", "_", text)


def plan_configs(
    agent: str, sets: Sequence[str] = (), grid: Sequence[str] = ()
) -> tuple[SweepConfig, ...]:
    """The sweep's configs: the cartesian product of ``grid``, each on top of ``sets``.

    Every value is parsed by the agent's config (``NAME=VALUE`` as ``agent train --set``) and
    every combination is built through it, so an unknown name, a value out of its limits or a
    combination that the config refuses fails here, before anything runs.

    Args:
        agent: Agent name.
        sets: ``NAME=VALUE`` settings shared by every config.
        grid: ``NAME=V1,V2`` settings to sweep (the product of all of them).

    Raises:
        ValueError: Unknown agent, a bad name or value (the config's own message), a name
            given twice, or two grid points with the same label.
    """
    from twinloop.controllers.rl import AGENTS
    from twinloop.core.config import override, parse_assignment
    from twinloop.core.registry import load

    if agent not in AGENTS:
        raise ValueError(f"unknown agent {agent!r}; valid agents: {', '.join(AGENTS)}")
    cfg = load(AGENTS[agent]).Config()
    base = dict(parse_assignment(cfg, a) for a in sets)
    axes: dict[str, list[Any]] = {}
    for text in grid:
        name, raws = parse_grid(text)
        values = []
        for raw in raws:
            path, value = parse_assignment(cfg, f"{name}={raw}")
            values.append(value)
        if path in axes:
            raise ValueError(f"--grid names {path!r} twice: give all its values in one --grid")
        if path in base:
            raise ValueError(f"{path!r} is in both --set and --grid: drop it from --set")
        if len(set(map(repr, values))) != len(values):
            raise ValueError(f"--grid {text!r} repeats a value")
        axes[path] = values
    configs = []
    for combo in itertools.product(*axes.values()):
        point = dict(zip(axes, combo, strict=True))
        label = config_label(point)
        overrides = {**base, **point}
        try:
            override(cfg, **overrides)
        except ValueError as exc:
            raise type(exc)(f"sweep config {label}: {exc}") from exc
        configs.append(SweepConfig(label, overrides, point))
    labels = [c.label for c in configs]
    if len(set(labels)) != len(labels):
        raise ValueError(f"grid points share a folder name: {labels}; use distinct values")
    return tuple(configs)


def seed_list(seeds: int, first: int = 0) -> tuple[int, ...]:
    """``seeds`` consecutive seeds from ``first``.

    Raises:
        ValueError: ``seeds < 1`` or ``first < 0``.
    """
    if seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {seeds}")
    if first < 0:
        raise ValueError(f"the first seed must be >= 0, got {first}")
    return tuple(range(first, first + seeds))


# --- one run --------------------------------------------------------------------------------
def run_dir(out: str | os.PathLike, run: SweepRun) -> Path:
    """``OUT/<label>/seed-<S>``."""
    return Path(out) / run.config.label / f"seed-{run.seed}"


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=list))


def run_state(spec: SweepSpec, out: str | os.PathLike, run: SweepRun) -> str:
    """``"new"``, ``"partial"`` (has a checkpoint short of the end) or ``"done"``.

    Raises:
        ValueError: The run's folder holds a run with other settings.
    """
    from twinloop.controllers.rl.checkpoint import latest_checkpoint

    folder = run_dir(out, run)
    meta = folder / "run.json"
    if not meta.exists():
        return "new"
    saved = json.loads(meta.read_text())
    want = {
        "env_id": spec.env_id,
        "agent": spec.agent,
        "seed": run.seed,
        "n_envs": spec.n_envs,
        "overrides": _plain(dict(run.config.overrides)),
        "env_overrides": _plain(dict(spec.env_overrides)),
    }
    different = {k: (saved.get(k), v) for k, v in want.items() if saved.get(k) != v}
    if different:
        raise ValueError(
            f"{folder} holds a run with other settings (saved, now): {different}; use another --out"
        )
    found = latest_checkpoint(folder)
    if found is None:
        return "new"
    return "done" if int(found.name.split("-")[1]) >= int(saved["steps"]) else "partial"


def train_run(
    spec: SweepSpec,
    run: SweepRun,
    out: str | os.PathLike,
    *,
    attempt: int = 1,
    progress: Callable[[str, int, int], None] | None = None,
    hook: RunHook | None = None,
) -> RunOutcome:
    """Train (or resume) one run of the sweep in this process.

    Args:
        spec: The sweep.
        run: Which run.
        out: The sweep folder.
        attempt: Which try this is, reported back.
        progress: Called as ``progress(key, env_step, total_steps)`` with every log row.
        hook: Test hook (:data:`RunHook`).

    Returns:
        The run's outcome.
    """
    import twinloop
    from twinloop.controllers.rl.train import train

    def on_row(row: dict[str, Any]) -> None:
        if progress is not None:
            progress(run.key, int(row["env_step"]), int(row["total_steps"]))
        if hook is not None:
            hook(run, int(row["env_step"]))

    env = twinloop.make_vec(spec.env_id, spec.n_envs, **spec.env_overrides)
    try:
        result = train(
            env, spec.agent, spec.steps, run.seed, run_dir(out, run),
            overrides=run.config.overrides, env_id=spec.env_id,
            env_overrides=spec.env_overrides, checkpoint_every=spec.checkpoint_every,
            log_every=spec.log_every, progress=on_row,
        )  # fmt: skip
    finally:
        env.close()
    return RunOutcome(
        run.key,
        result.env_steps,
        result.resumed_from,
        result.episodes,
        result.return_recent,
        result.wall_s,
        attempt,
    )


# --- the manifest ---------------------------------------------------------------------------
class _Manifest:
    """``OUT/sweep.json``: the plan and every run's status, rewritten atomically."""

    def __init__(self, spec: SweepSpec, out: Path, engine: str, workers: int) -> None:
        self.path = out / "sweep.json"
        old = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.data = {
            "version": MANIFEST_VERSION,
            "env_id": spec.env_id,
            "agent": spec.agent,
            "steps": spec.steps,
            "seeds": list(spec.seeds),
            "n_envs": spec.n_envs,
            "env_overrides": _plain(dict(spec.env_overrides)),
            "checkpoint_every": spec.checkpoint_every,
            "log_every": spec.log_every,
            "configs": [
                {
                    "label": c.label,
                    "point": _plain(dict(c.point)),
                    "overrides": _plain(dict(c.overrides)),
                }
                for c in spec.configs
            ],
            "engine": engine,
            "workers": workers,
            "invocations": int(old.get("invocations", 0)) + 1,
            "runs": {},
            "retried": {},
        }
        old_runs = old.get("runs", {})
        for run in spec.runs():
            prev = old_runs.get(run.key, {})
            self.data["runs"][run.key] = {
                "config": run.config.label,
                "seed": run.seed,
                "dir": run.key,
                "status": "pending",
                "attempts": int(prev.get("attempts", 0)),
            }
        self.write()

    def set(self, key: str, **fields: Any) -> None:
        self.data["runs"][key].update(fields)
        self.write()

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(".sweep.json.tmp")
        tmp.write_text(json.dumps(json_ready(self.data), indent=1, allow_nan=False))
        os.replace(tmp, self.path)


class _Tracker:
    """The driver's view of the sweep: the manifest, attempts and progress events."""

    def __init__(self, manifest: _Manifest, total: int, progress: SweepProgressFn | None) -> None:
        self.manifest = manifest
        self.total = total
        self.progress = progress
        self.done = 0
        self.steps: dict[str, tuple[int, int]] = {}
        self.attempts: dict[str, int] = {}
        self.outcomes: dict[str, RunOutcome] = {}
        self.failed: dict[str, str] = {}

    def emit(self, event: str, key: str) -> None:
        if self.progress is not None:
            self.progress(
                {"event": event, "key": key, "done": self.done, "total": self.total,
                 "steps": dict(self.steps)}
            )  # fmt: skip

    def skip(self, key: str) -> None:
        self.done += 1
        self.manifest.set(key, status="done", finished_before=True)
        self.emit("skip", key)

    def start(self, key: str, attempt: int) -> None:
        self.attempts[key] = attempt
        total_attempts = self.manifest.data["runs"][key]["attempts"] + 1
        self.manifest.set(key, status="running", attempt=attempt, attempts=total_attempts)
        self.emit("start", key)

    def step(self, key: str, env_step: int, total: int) -> None:
        self.steps[key] = (env_step, total)
        self.emit("step", key)

    def finish(self, outcome: RunOutcome) -> None:
        self.done += 1
        self.outcomes[outcome.key] = outcome
        self.steps[outcome.key] = (outcome.env_steps, outcome.env_steps)
        self.manifest.set(
            outcome.key, status="done", env_steps=outcome.env_steps,
            resumed_from=outcome.resumed_from, episodes=outcome.episodes,
            return_recent=outcome.return_recent, wall_s=round(outcome.wall_s, 3),
            attempt=outcome.attempt, error=None,
        )  # fmt: skip
        if outcome.attempt > 1:
            self.manifest.data["retried"][outcome.key] = outcome.attempt
            self.manifest.write()
        self.emit("done", outcome.key)

    def retry(self, key: str, reason: str) -> None:
        self.manifest.set(key, status="retrying", error=reason)
        self.emit("retry", key)

    def fail(self, key: str, reason: str) -> None:
        self.failed[key] = reason
        self.manifest.set(key, status="failed", error=reason)
        self.emit("failed", key)


# --- engines --------------------------------------------------------------------------------
def run_sweep(
    spec: SweepSpec,
    out: str | os.PathLike,
    *,
    workers: int | None = None,
    ray_address: str | None = None,
    max_retries: int = 3,
    progress: SweepProgressFn | None = None,
    hook: RunHook | None = None,
) -> SweepResult:
    """Train every run of ``spec`` that is not finished yet, into ``out``.

    Args:
        spec: The sweep.
        out: The sweep folder (``OUT/sweep.json`` and one folder per run).
        workers: Runs at once: 1 (the default without Ray) trains in this process, more on
            a spawned process pool; with Ray, the tasks in flight at once (default: every
            run; Ray schedules them by the CPUs they ask for, one each).
        ray_address: None: no Ray. ``"local"`` starts a Ray instance here; ``"auto"``,
            ``host:port`` or ``ray://host:port`` join a cluster. Ignored when Ray is already
            initialised in this process.
        max_retries: Attempts after the first of a run whose worker process (or Ray node)
            died; each resumes from the run's newest checkpoint. A run that raises is not
            retried (it would raise again).
        progress: Called in this process with each event (:data:`SweepProgressFn`).
        hook: Test hook run in the workers (:data:`RunHook`).

    Returns:
        The outcome of every run trained now, the runs skipped and the retries.

    Raises:
        SweepFailed: Runs failed (after their retries); every other run finished.
        ValueError: Bad arguments, or a run folder holding another run.
        ImportError: ``ray_address`` given and Ray is not installed.
    """
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if max_retries < 0:
        raise ValueError(f"max_retries must be >= 0, got {max_retries}")
    if not spec.configs or not spec.seeds:
        raise ValueError("the sweep has no configs or no seeds")
    out = Path(out)
    runs = spec.runs()
    states = {r.key: run_state(spec, out, r) for r in runs}  # refuses foreign folders first
    if ray_address is not None:
        engine, workers = "ray", workers or len(runs)
    else:
        workers = workers or 1
        engine = "pool" if workers > 1 else "process"
    manifest = _Manifest(spec, out, engine, workers)
    tracker = _Tracker(manifest, len(runs), progress)
    todo = []
    for r in runs:
        if states[r.key] == "done":
            tracker.skip(r.key)
        else:
            todo.append(r)
    if todo:
        if engine == "ray":
            assert ray_address is not None
            _run_ray(spec, todo, out, workers, ray_address, max_retries, tracker, hook)
        elif engine == "pool":
            _run_pool(spec, todo, out, workers, max_retries, tracker, hook)
        else:
            _run_here(spec, todo, out, tracker, hook)
    if tracker.failed:
        names = "; ".join(f"{k}: {v}" for k, v in list(tracker.failed.items())[:3])
        more = len(tracker.failed) - 3
        raise SweepFailed(
            f"{len(tracker.failed)} of {len(runs)} runs failed ({names}"
            f"{f'; and {more} more' if more > 0 else ''}); the others finished. Run the same "
            f"sweep again to resume them from their checkpoints (status in {manifest.path})",
            tracker.failed,
        )
    return SweepResult(
        out=out,
        engine=engine,
        outcomes=tracker.outcomes,
        skipped=[r.key for r in runs if states[r.key] == "done"],
        retried=dict(manifest.data["retried"]),
        manifest=manifest.path,
    )


def _run_here(
    spec: SweepSpec, runs: list[SweepRun], out: Path, tracker: _Tracker, hook: RunHook | None
) -> None:
    for r in runs:
        tracker.start(r.key, 1)
        try:
            tracker.finish(train_run(spec, r, out, progress=tracker.step, hook=hook))
        except Exception as exc:  # reported with the other failures at the end
            tracker.fail(r.key, f"{type(exc).__name__}: {exc}")


#: The pool workers' queue back to the driver (set by :func:`_init_pool_worker`).
_QUEUE: Any = None


def _init_pool_worker(queue: Any) -> None:
    global _QUEUE
    _QUEUE = queue


def _pool_run(
    spec: SweepSpec, run: SweepRun, out: str, attempt: int, hook: RunHook | None
) -> RunOutcome:
    def progress(key: str, env_step: int, total: int) -> None:
        _QUEUE.put(("step", key, env_step, total))

    _QUEUE.put(("start", run.key, attempt, 0))
    return train_run(spec, run, out, attempt=attempt, progress=progress, hook=hook)


def _drain(queue: Any, tracker: _Tracker, started: set[str]) -> None:
    while not queue.empty():
        kind, key, a, b = queue.get()
        if kind == "start":
            started.add(key)
            tracker.start(key, a)
        else:
            tracker.step(key, a, b)


def _run_pool(
    spec: SweepSpec,
    runs: list[SweepRun],
    out: Path,
    workers: int,
    max_retries: int,
    tracker: _Tracker,
    hook: RunHook | None,
) -> None:
    """Runs on a spawned pool, retried in a fresh pool when a worker dies.

    A dead worker breaks the whole pool: its unfinished runs go to a fresh pool (each resumes
    from its newest checkpoint). A run is charged an attempt only if it had started; one
    charged more than ``max_retries + 1`` times fails.
    """
    context = multiprocessing.get_context(START_METHOD)
    attempts = {r.key: 0 for r in runs}
    remaining = list(runs)
    while remaining:
        # a SimpleQueue writes at once (no feeder thread), so a worker that dies right after
        # its "start" message still delivers it
        queue = context.SimpleQueue()
        broken: list[SweepRun] = []
        started: set[str] = set()
        with cf.ProcessPoolExecutor(
            max_workers=min(workers, len(remaining)), mp_context=context,
            initializer=_init_pool_worker, initargs=(queue,),
        ) as pool:  # fmt: skip
            futures = {
                pool.submit(_pool_run, spec, r, str(out), attempts[r.key] + 1, hook): r
                for r in remaining
            }
            pending = set(futures)
            while pending:
                finished, pending = cf.wait(pending, timeout=0.2, return_when=cf.FIRST_COMPLETED)
                _drain(queue, tracker, started)
                for future in finished:
                    r = futures[future]
                    try:
                        tracker.finish(future.result())
                    except cf.process.BrokenProcessPool:
                        broken.append(r)
                    except Exception as exc:  # deterministic: retrying would raise again
                        tracker.fail(r.key, f"{type(exc).__name__}: {exc}")
        _drain(queue, tracker, started)
        queue.close()
        for key in started:
            attempts[key] += 1
        remaining = []
        for r in broken:
            reason = "a worker process died"
            if r.key not in started:  # queued when the pool broke: not an attempt
                remaining.append(r)
            elif attempts[r.key] > max_retries:
                tracker.fail(r.key, f"{reason} ({attempts[r.key]} attempts)")
            else:
                tracker.retry(r.key, reason)
                remaining.append(r)


class _Board:
    """A Ray actor: attempts of each run (a restarted task cannot count its own) and steps."""

    def __init__(self) -> None:
        self.attempts: dict[str, int] = {}
        self.steps: dict[str, tuple[int, int]] = {}
        self.started: list[tuple[str, int]] = []

    def bump(self, key: str) -> int:
        self.attempts[key] = self.attempts.get(key, 0) + 1
        self.started.append((key, self.attempts[key]))
        return self.attempts[key]

    def report(self, key: str, env_step: int, total: int) -> None:
        self.steps[key] = (env_step, total)

    def snapshot(self) -> tuple[list[tuple[str, int]], dict[str, tuple[int, int]]]:
        started, self.started = self.started, []
        return started, dict(self.steps)


def _ray_run(
    spec: SweepSpec, run: SweepRun, out: str, board: Any, hook: RunHook | None
) -> RunOutcome:
    import ray

    attempt = ray.get(board.bump.remote(run.key))

    def progress(key: str, env_step: int, total: int) -> None:
        board.report.remote(key, env_step, total)

    return train_run(spec, run, out, attempt=attempt, progress=progress, hook=hook)


def _run_ray(
    spec: SweepSpec,
    runs: list[SweepRun],
    out: Path,
    workers: int,
    address: str,
    max_retries: int,
    tracker: _Tracker,
    hook: RunHook | None,
) -> None:
    """Runs as Ray tasks (``max_retries``: Ray retries a task whose worker or node died)."""
    with ray_session(address) as ray:
        # on the driver's node, so that losing another node costs only the runs on it
        board = ray.remote(num_cpus=0)(_Board).options(**on_driver_node(ray)).remote()
        task = ray.remote(num_cpus=1, max_retries=max_retries)(_ray_run)
        queue = list(runs)
        pending: dict[Any, SweepRun] = {}
        seen: dict[str, int] = {}

        def poll() -> None:
            started_now, steps = ray.get(board.snapshot.remote())
            for key, attempt in started_now:
                if attempt > 1 and seen.get(key, 0) < attempt:
                    tracker.retry(key, "its Ray worker or node died")
                seen[key] = attempt
                tracker.start(key, attempt)
            for key, (step, total) in steps.items():
                if tracker.steps.get(key) != (step, total) and key not in tracker.outcomes:
                    tracker.step(key, step, total)

        while queue or pending:
            while queue and len(pending) < workers:
                r = queue.pop(0)
                pending[task.remote(spec, r, str(out), board, hook)] = r
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
            poll()
            for ref in ready:
                r = pending.pop(ref)
                try:
                    outcome = ray.get(ref)
                except Exception as exc:  # retries exhausted, or the run itself raised
                    tracker.fail(r.key, _ray_reason(exc))
                else:
                    tracker.finish(outcome)


def _ray_reason(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None)
    if cause is not None:
        return f"{type(cause).__name__}: {cause}"
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


# --- the report -----------------------------------------------------------------------------
def run_scores(out: str | os.PathLike, key: str) -> tuple[float, list[dict[str, Any]]]:
    """A finished run's final score (``return_recent``) and its log rows, from metrics.json."""
    data = json.loads((Path(out) / key / "metrics.json").read_text())
    score = data["summary"]["return_recent"]
    return (math.nan if score is None else float(score)), data["log"]


def _curve_at(log: list[dict[str, Any]], bins: Any) -> Any:
    """``return_recent`` of the newest log row at or before each bin's end (NaN before)."""
    import numpy as np

    steps = np.array([row["env_step"] for row in log], dtype=np.float64)
    vals = np.array(
        [np.nan if row["return_recent"] is None else row["return_recent"] for row in log],
        dtype=np.float64,
    )
    idx = np.searchsorted(steps, bins, side="right") - 1
    return np.where(idx >= 0, vals[np.clip(idx, 0, None)], np.nan)


def _interval(values: Any, n_resamples: int, seed: int) -> dict[str, Any]:
    from twinloop.eval import metrics

    agg = metrics.aggregate(values, metrics=("iqm", "mean"), n_resamples=n_resamples, seed=seed)
    return {name: {"point": iv.point, "low": iv.low, "high": iv.high} for name, iv in agg.items()}


def sweep_report(
    out: str | os.PathLike,
    *,
    n_resamples: int = 5000,
    seed: int = 0,
    plots: bool = True,
) -> dict[str, Any]:
    """Aggregate a sweep's finished runs: ``OUT/report.json``, ``report.md`` and the plots.

    Per config: the final score of each seed (``return_recent``, see the module docstring),
    their IQM and mean with a 95 % stratified (here: one env, so one stratum) percentile
    bootstrap interval over seeds; performance profiles of the scores for every config;
    learning curves (each run's ``return_recent`` at the end of each of :data:`CURVE_BINS`
    env-step bins) as IQM with its 95 % interval per bin.

    Args:
        out: The sweep folder (holding ``sweep.json``).
        n_resamples: Bootstrap resamples of every interval.
        seed: Seed of the resampling.
        plots: Write ``curves.png`` and ``profiles.png`` (needs matplotlib).

    Returns:
        The report (as ``report.json``), with ``notes`` saying what was left out and why.
    """
    import numpy as np

    from twinloop.controllers.rl.train import RECENT
    from twinloop.eval import metrics

    out = Path(out)
    plan = json.loads((out / "sweep.json").read_text())
    notes: list[str] = []
    configs: list[dict[str, Any]] = []
    logs: dict[str, list[list[dict[str, Any]]]] = {}
    max_step = 0
    for c in plan["configs"]:
        label = c["label"]
        keys = [k for k, r in plan["runs"].items() if r["config"] == label]
        done = [k for k in keys if plan["runs"][k]["status"] == "done"]
        if len(done) < len(keys):
            notes.append(f"{label}: {len(keys) - len(done)} of {len(keys)} runs unfinished")
        seeds, scores, run_logs = [], [], []
        for k in done:
            score, log = run_scores(out, k)
            run_logs.append(log)
            max_step = max([max_step, *(row["env_step"] for row in log)])
            if math.isnan(score):
                notes.append(f"{k}: no finished episode, no score")
                continue
            seeds.append(plan["runs"][k]["seed"])
            scores.append(score)
        logs[label] = run_logs
        entry: dict[str, Any] = {
            "label": label, "point": c["point"], "seeds": seeds, "scores": scores,
        }  # fmt: skip
        if scores:
            entry.update(_interval(np.array(scores), n_resamples, seed))
        configs.append(entry)
    all_scores = np.array([s for c in configs for s in c["scores"]], dtype=np.float64)
    profiles: dict[str, Any] = {"thresholds": []}
    if all_scores.size:
        lo, hi = float(all_scores.min()), float(all_scores.max())
        taus = np.linspace(lo, hi, PROFILE_POINTS) if hi > lo else np.array([lo - 1.0, lo])
        profiles["thresholds"] = taus.tolist()
        for c in configs:
            if c["scores"]:
                frac, flo, fhi = metrics.performance_profile(
                    c["scores"], taus, n_resamples=n_resamples, seed=seed
                )
                profiles[c["label"]] = {
                    "fraction": frac.tolist(), "low": flo.tolist(), "high": fhi.tolist(),
                }  # fmt: skip
    bins = np.linspace(0, max_step, CURVE_BINS + 1)[1:] if max_step else np.zeros(0)
    curves: dict[str, Any] = {"env_step": bins.tolist()}
    for label, run_logs in logs.items():
        if not run_logs:
            continue
        values = np.array([_curve_at(log, bins) for log in run_logs])  # (runs, bins)
        rows = []
        for b in range(bins.size):
            col = values[:, b][np.isfinite(values[:, b])]
            rows.append(
                _interval(col, n_resamples, seed)["iqm"] | {"runs": int(col.size)}
                if col.size else None
            )  # fmt: skip
        curves[label] = rows
    report = {
        "env_id": plan["env_id"],
        "agent": plan["agent"],
        "steps": plan["steps"],
        "score": f"return_recent: mean return of the last {RECENT} finished training "
        "episodes of each run",
        "confidence": 0.95,
        "n_resamples": n_resamples,
        "configs": configs,
        "profiles": profiles,
        "curves": curves,
        "notes": notes,
        "plots": {},
    }
    if plots:
        report["plots"], why = _plots(out, report)
        if why:
            notes.append(why)
    tmp = out / ".report.json.tmp"
    tmp.write_text(json.dumps(json_ready(report), indent=1, allow_nan=False))
    os.replace(tmp, out / "report.json")
    (out / "report.md").write_text(report_markdown(report))
    return report


def _fmt_interval(entry: Mapping[str, Any], name: str) -> str:
    iv = entry.get(name)
    if not iv:
        return "-"
    return f"{iv['point']:.4g} [{iv['low']:.4g}, {iv['high']:.4g}]"


def report_markdown(report: Mapping[str, Any]) -> str:
    """The report as Markdown: a table of configs, the plots and the notes."""
    lines = [
        f"# Sweep: {report['agent']} on {report['env_id']}, {report['steps']} env steps per run",
        "",
        f"Final score = {report['score']}. Intervals: {report['confidence']:.0%} percentile "
        f"bootstrap over seeds ({report['n_resamples']} resamples).",
        "",
        "| config | seeds | IQM [95 % CI] | mean [95 % CI] | scores |",
        "|---|---|---|---|---|",
    ]
    for c in report["configs"]:
        scores = ", ".join(f"{s:.4g}" for s in c["scores"]) or "-"
        lines.append(
            f"| {c['label']} | {len(c['scores'])} | {_fmt_interval(c, 'iqm')} | "
            f"{_fmt_interval(c, 'mean')} | {scores} |"
        )
    lines.append("")
    for name, path in report.get("plots", {}).items():
        lines.append(f"![{name}]({path})")
    if report["notes"]:
        lines += ["", "Notes:", *(f"- {n}" for n in report["notes"])]
    return "\n".join(lines) + "\n"


def _plots(out: Path, report: Mapping[str, Any]) -> tuple[dict[str, str], str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return (
            {},
            "no curves.png / profiles.png: matplotlib is missing (pip install 'twinloop[plot]')",
        )
    written: dict[str, str] = {}
    steps = report["curves"]["env_step"]
    fig, ax = plt.subplots(figsize=(6.5, 4), dpi=100)
    for c in report["configs"]:
        rows = report["curves"].get(c["label"])
        if not rows:
            continue
        pts = [(s, r) for s, r in zip(steps, rows, strict=True) if r is not None]
        if not pts:
            continue
        x = [s for s, _ in pts]
        (line,) = ax.plot(x, [r["point"] for _, r in pts], "-", label=c["label"])
        ax.fill_between(
            x, [r["low"] for _, r in pts], [r["high"] for _, r in pts],
            color=line.get_color(), alpha=0.2,
        )  # fmt: skip
    ax.set_xlabel("env steps")
    ax.set_ylabel("recent return (IQM over seeds, 95 % CI)")
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    fig.savefig(out / "curves.png", format="png")
    plt.close(fig)
    written["curves"] = "curves.png"
    taus = report["profiles"]["thresholds"]
    if taus:
        fig, ax = plt.subplots(figsize=(6.5, 4), dpi=100)
        for c in report["configs"]:
            prof = report["profiles"].get(c["label"])
            if prof is None:
                continue
            (line,) = ax.plot(taus, prof["fraction"], "-", label=c["label"])
            ax.fill_between(taus, prof["low"], prof["high"], color=line.get_color(), alpha=0.2)
        ax.set_xlabel("final score threshold")
        ax.set_ylabel("fraction of runs above")
        ax.legend(loc="best", fontsize="small")
        fig.tight_layout()
        fig.savefig(out / "profiles.png", format="png")
        plt.close(fig)
        written["profiles"] = "profiles.png"
    return written, ""
