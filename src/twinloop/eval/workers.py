"""Run one controller's episodes on several worker processes, or on a Ray cluster.

The episodes of a run are split by seed into contiguous chunks; each chunk runs in a worker
exactly as :func:`~twinloop.eval.rollout.run_single` (or ``run_vector``) would run it in this
process, so episode ``e`` uses seed ``S + e`` and the results do not depend on the number of
workers, the chunk size or the engine. There is no scheduler here beyond that split: a local
:class:`~concurrent.futures.ProcessPoolExecutor` (``spawn`` context: numba and JAX are not
fork-safe) or Ray tasks run the chunks.

Data flow with a capture::

    run_workers(spec, workers)
        --> split_seeds: chunk k = seeds S+a .. S+b-1
        --> worker: make env + controller, record into <shards>/shard-<k>, run the chunk
            (a retried Ray task overwrites its shard from scratch: none counted twice)
        --> driver: results in episode order; merge_shards copies shard 0, 1, ... into the
            dataset (episodes ordered by seed), then removes the shards

A worker that dies under the process pool fails the run with :class:`WorkersFailed`, which
names the lost seeds and the shards kept; under Ray the task is retried (``max_retries``) and
:attr:`WorkersRun.retried` says which chunks ran more than once.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import dataclasses
import math
import multiprocessing
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from twinloop.datasets.writer import Mode
from twinloop.eval.rollout import EpisodeResult, ProgressFn, run_single, run_vector

#: Test hook, called in the worker as ``hook(chunk, episodes_done)`` after each episode.
EpisodeHook = Callable[["Chunk", int], None]

#: How a process pool starts its workers (numba's and JAX's threads do not survive a fork).
START_METHOD = "spawn"


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """What every worker builds and runs; plain data, so it crosses process boundaries.

    Attributes:
        env_id: Registered env id.
        controller: Controller name (as ``twinloop run --controller``).
        seed: Seed of episode 0; episode ``e`` uses ``seed + e``.
        episodes: Number of episodes of the whole run.
        overrides: Config overrides (``twinloop.make(env_id, **overrides)``).
        controller_options: Keyword arguments of ``make_controller`` (e.g. ``model``).
        n_envs: Rows of the kernel-batched vector env each worker runs (1: a single env).
        backend: The backend every worker runs on (None: the env's simulator).
        devices: A fleet: one entry per device, ``{"name": ..., <backend options>}`` (e.g.
            ``address``, ``token``); the run is then split into one chunk per device, chunk
            ``k`` runs on device ``k``, and each episode says its device. Empty: no fleet.
    """

    env_id: str
    controller: str
    seed: int
    episodes: int
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    controller_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    n_envs: int = 1
    backend: str | None = None
    devices: tuple[Mapping[str, Any], ...] = ()


def load_fleet(path: str | os.PathLike) -> tuple[dict[str, Any], ...]:
    """A fleet file: a JSON list of devices, each ``{"name": str, "address": str, ...}``.

    Every other key is a backend option (``token``, ``timeout_s`` ...); a ``token_file`` key
    is read (its first line) into ``token``, so the file itself need hold no secret.

    Raises:
        ValueError: The file is not such a list, a name is missing or repeated, or a device
            has no address.
    """
    import json

    where = f"fleet file {path}"
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{where}: cannot read it as JSON ({exc})") from exc
    if not isinstance(data, list) or not data:
        raise ValueError(f"{where}: must be a non-empty JSON list of devices")
    fleet, names = [], set()
    for k, entry in enumerate(data):
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: device {k} is {type(entry).__name__}, not an object")
        dev = dict(entry)
        name = dev.get("name")
        if not isinstance(name, str) or not name or name in names:
            raise ValueError(f"{where}: device {k} needs a unique non-empty 'name', got {name!r}")
        if not isinstance(dev.get("address"), str):
            raise ValueError(f"{where}: device {name!r} needs an 'address' (e.g. tcp://h:5556)")
        token_file = dev.pop("token_file", None)
        if token_file is not None:
            try:
                dev["token"] = Path(token_file).read_text(encoding="utf-8").splitlines()[0]
            except (OSError, IndexError) as exc:
                raise ValueError(f"{where}: device {name!r}: cannot read {token_file}") from exc
        names.add(name)
        fleet.append(dev)
    return tuple(fleet)


@dataclasses.dataclass(frozen=True)
class Chunk:
    """Episodes ``start .. start + episodes - 1`` of a run (seeds ``seed + start ...``)."""

    index: int
    start: int
    episodes: int
    seed: int

    @property
    def first_seed(self) -> int:
        """Seed of the chunk's first episode."""
        return self.seed + self.start

    @property
    def seeds(self) -> range:
        """The chunk's seeds, in order."""
        return range(self.first_seed, self.first_seed + self.episodes)

    def describe(self) -> str:
        """``chunk 1 (seeds 3-5)``."""
        return f"chunk {self.index} (seeds {seed_ranges(self.seeds)})"


@dataclasses.dataclass(frozen=True)
class ChunkResult:
    """What a worker sends back for one chunk.

    Attributes:
        chunk: The chunk.
        results: Its episodes, numbered within the whole run.
        attempt: 1 on the first try; more when Ray retried the chunk after a worker died.
        shard: The chunk's dataset folder, when recording.
        wall_s: Seconds the worker spent on it, env and controller construction included.
    """

    chunk: Chunk
    results: list[EpisodeResult]
    attempt: int
    shard: str | None
    wall_s: float


@dataclasses.dataclass(frozen=True)
class WorkersRun:
    """A whole run on workers.

    Attributes:
        results: Every episode, in episode (= seed) order.
        engine: ``"pool"`` or ``"ray"``.
        workers: Worker count asked for.
        chunks: The chunks, in order.
        retried: Chunks that ran more than once, with their attempt counts.
        shards: Shard folders in chunk order (when recording; removed once merged).
    """

    results: list[EpisodeResult]
    engine: str
    workers: int
    chunks: list[Chunk]
    retried: list[tuple[Chunk, int]]
    shards: list[Path]


class WorkersFailed(RuntimeError):
    """Chunks were lost: the message lists their seeds and the shards that were kept.

    Attributes:
        lost: The chunks that did not finish.
        kept: Shard folders of the chunks that did finish (empty when not recording).
    """

    def __init__(self, message: str, lost: Sequence[Chunk], kept: Sequence[Path]) -> None:
        """Keep the message, the lost chunks and the kept shards."""
        super().__init__(message)
        self.lost = list(lost)
        self.kept = list(kept)


def seed_ranges(seeds: Sequence[int]) -> str:
    """``[3, 4, 5, 9]`` -> ``"3-5, 9"``."""
    out: list[str] = []
    ordered = sorted(seeds)
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        out.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ", ".join(out)


def split_seeds(episodes: int, seed: int, chunk_episodes: int) -> list[Chunk]:
    """Contiguous chunks of at most ``chunk_episodes`` episodes covering ``0 .. episodes-1``."""
    if episodes < 1 or chunk_episodes < 1:
        raise ValueError(
            f"need episodes >= 1 and chunk size >= 1, got {episodes}, {chunk_episodes}"
        )
    return [
        Chunk(k, start, min(chunk_episodes, episodes - start), seed)
        for k, start in enumerate(range(0, episodes, chunk_episodes))
    ]


def fleet_chunks(episodes: int, seed: int, devices: int) -> list[Chunk]:
    """One contiguous chunk per device, sizes differing by at most one episode."""
    bounds = [episodes * k // devices for k in range(devices + 1)]
    return [Chunk(k, bounds[k], bounds[k + 1] - bounds[k], seed) for k in range(devices)]


def default_chunk_episodes(episodes: int, workers: int) -> int:
    """About four chunks per worker: a lost or retried chunk costs a quarter of a share."""
    return max(1, math.ceil(episodes / (4 * workers)))


def shard_path(shards: str | os.PathLike, chunk: Chunk) -> Path:
    """``<shards>/shard-<k>``: the dataset folder of chunk ``k``."""
    return Path(shards) / f"shard-{chunk.index:03d}"


def run_chunk(
    spec: RunSpec,
    chunk: Chunk,
    shards: str | None = None,
    tags: Mapping[str, Any] | None = None,
    hook: EpisodeHook | None = None,
    attempt: int = 1,
) -> ChunkResult:
    """Run one chunk in this process; record it into its shard (from scratch) if ``shards``.

    Args:
        spec: The run.
        chunk: Which episodes.
        shards: Folder of the run's shards, or None not to record.
        tags: User tags of every shard.
        hook: Test hook called after each episode (see :data:`EpisodeHook`).
        attempt: Which try this is (1 first), reported back.

    Returns:
        The chunk's episodes, numbered within the run.
    """
    import twinloop
    from twinloop.controllers import make_controller

    t0 = time.perf_counter()
    device: dict[str, Any] = dict(spec.devices[chunk.index]) if spec.devices else {}
    name = str(device.pop("name", ""))
    if spec.n_envs > 1:
        env: Any = twinloop.make_vec(spec.env_id, spec.n_envs, **spec.overrides)
    elif spec.backend is not None:
        env = twinloop.make(spec.env_id, backend=spec.backend, **device, **spec.overrides)
    else:
        env = twinloop.make(spec.env_id, **spec.overrides)
    shard = None
    try:
        if shards is not None:
            shard = shard_path(shards, chunk)
            env = _record_from_scratch(env, shard, tags)
        controller = make_controller(spec.controller, env, **spec.controller_options)

        def progress(done: int, total: int) -> None:
            if hook is not None:
                hook(chunk, done)

        if spec.n_envs > 1:
            on_idle = (lambda idle: env.set_recording(~idle)) if shard is not None else None
            results = run_vector(
                env, controller, chunk.episodes, chunk.first_seed, progress, on_idle
            )
        else:
            results = run_single(env, controller, chunk.episodes, chunk.first_seed, progress)
    finally:
        env.close()
    results = [
        dataclasses.replace(r, episode=chunk.start + r.episode, device=name) for r in results
    ]
    return ChunkResult(
        chunk, results, attempt, str(shard) if shard else None, time.perf_counter() - t0
    )


#: How long a retried chunk waits for its shard's lock: when a worker dies, the dataset's
#: watcher process holds the lock while it brings the dead attempt's metadata up to date.
SHARD_LOCK_WAIT_S = 30.0


def _record_from_scratch(env: Any, shard: Path, tags: Mapping[str, Any] | None) -> Any:
    """``env`` recording into ``shard``, overwriting whatever an earlier attempt left there."""
    from twinloop.datasets.errors import DatasetLockedError
    from twinloop.datasets.record import record

    deadline = time.monotonic() + SHARD_LOCK_WAIT_S
    while True:
        try:
            return record(env, shard, mode="overwrite", tags=dict(tags or {}))
        except DatasetLockedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def run_workers(
    spec: RunSpec,
    workers: int,
    *,
    chunk_episodes: int | None = None,
    shards: str | os.PathLike | None = None,
    tags: Mapping[str, Any] | None = None,
    ray_address: str | None = None,
    max_retries: int = 3,
    progress: ProgressFn | None = None,
    hook: EpisodeHook | None = None,
) -> WorkersRun:
    """Run ``spec``'s episodes on ``workers`` processes (a local pool) or Ray tasks.

    Args:
        spec: The run.
        workers: Processes of the pool, or Ray tasks in flight at once.
        chunk_episodes: Episodes per chunk (default :func:`default_chunk_episodes`).
        shards: Record each chunk into ``<shards>/shard-<k>`` (a new folder); None: no capture.
        tags: User tags of every shard.
        ray_address: None for the local pool; ``"local"`` to start a Ray instance here, or
            ``"auto"`` / ``host:port`` / ``ray://host:port`` to join a cluster. Ignored
            when Ray is already initialised in this process.
        max_retries: Ray's ``max_retries`` per chunk (a task whose worker died runs again).
        progress: Called as ``progress(episodes_done, episodes)`` as chunks finish.
        hook: Test hook run in the workers after each episode.

    Returns:
        The episodes in order, the chunks, what was retried and the shards.

    Raises:
        WorkersFailed: Under the pool, a worker raised or died; every other chunk still ran.
        ImportError: ``ray_address`` given and Ray is not installed.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if spec.devices:
        n_dev = len(spec.devices)
        if spec.n_envs > 1:
            raise ValueError("a fleet runs single envs (one per device): drop --n-envs")
        if spec.episodes < n_dev:
            raise ValueError(f"{spec.episodes} episodes cannot keep a fleet of {n_dev} busy")
        chunks = fleet_chunks(spec.episodes, spec.seed, n_dev)
        workers = n_dev  # one worker per device, each running its device's chunk
    else:
        chunks = split_seeds(
            spec.episodes,
            spec.seed,
            chunk_episodes or default_chunk_episodes(spec.episodes, workers),
        )
    shard_root: str | None = None
    if shards is not None:
        shard_root = str(shards)
        if Path(shard_root).exists():
            raise ValueError(
                f"{shard_root} exists (shards of an earlier run?): merge or remove it first"
            )
        Path(shard_root).mkdir(parents=True)
    if ray_address is None:
        engine = "pool"
        done = _run_pool(spec, chunks, workers, shard_root, tags, progress, hook)
    else:
        engine = "ray"
        done = _run_ray(
            spec, chunks, workers, shard_root, tags, progress, hook, ray_address, max_retries
        )
    ordered = [done[c.index] for c in chunks]
    return WorkersRun(
        results=[r for d in ordered for r in d.results],
        engine=engine,
        workers=workers,
        chunks=chunks,
        retried=[(d.chunk, d.attempt) for d in ordered if d.attempt > 1],
        shards=[Path(d.shard) for d in ordered if d.shard],
    )


def _run_pool(
    spec: RunSpec,
    chunks: list[Chunk],
    workers: int,
    shards: str | None,
    tags: Mapping[str, Any] | None,
    progress: ProgressFn | None,
    hook: EpisodeHook | None,
) -> dict[int, ChunkResult]:
    done: dict[int, ChunkResult] = {}
    errors: dict[int, str] = {}
    context = multiprocessing.get_context(START_METHOD)
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = {pool.submit(run_chunk, spec, c, shards, tags, hook): c for c in chunks}
        for future in cf.as_completed(futures):
            chunk = futures[future]
            try:
                done[chunk.index] = future.result()
            except cf.process.BrokenProcessPool:
                errors[chunk.index] = "a worker process died"
            except Exception as exc:  # reported with the lost seeds below
                errors[chunk.index] = f"{type(exc).__name__}: {exc}"
            else:
                if progress is not None:
                    progress(sum(d.chunk.episodes for d in done.values()), spec.episodes)
    if errors:
        lost = [c for c in chunks if c.index in errors]
        kept = [Path(done[c.index].shard or "") for c in chunks if c.index in done and shards]
        raise WorkersFailed(_lost_message(lost, errors, kept, shards), lost, kept)
    return done


def _lost_message(
    lost: list[Chunk], errors: dict[int, str], kept: list[Path], shards: str | None
) -> str:
    seeds = [s for c in lost for s in c.seeds]
    reasons = "; ".join(f"{c.describe()}: {errors[c.index]}" for c in lost[:3])
    if len(lost) > 3:
        reasons += f"; and {len(lost) - 3} more chunks"
    text = f"{len(seeds)} episodes lost, seeds {seed_ranges(seeds)} ({reasons})"
    if shards is not None:
        names = ", ".join(p.name for p in kept) or "none"
        text += (
            f"; the shards of the {len(kept)} finished chunks are kept in {shards} ({names}): "
            "merge them with 'twinloop data merge' and rerun the lost seeds (--seed/--episodes)"
        )
    return text


# --- Ray ----------------------------------------------------------------------------------------
def import_ray() -> Any:
    """The ``ray`` module, or an ImportError naming the extra that installs it."""
    try:
        import ray
    except ImportError as exc:
        raise ImportError(
            "--ray needs Ray, which is not installed: pip install 'twinloop[ray]'"
        ) from exc
    return ray


class _Attempts:
    """A Ray actor counting the tries of each chunk (a restarted task cannot count its own)."""

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}

    def bump(self, index: int) -> int:
        self.counts[index] = self.counts.get(index, 0) + 1
        return self.counts[index]


def on_driver_node(ray: Any) -> dict[str, Any]:
    """Actor options that pin it to the driver's node (soft pinning let it spill elsewhere)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    node = ray.get_runtime_context().get_node_id()
    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(node, soft=False)}


@contextlib.contextmanager
def ray_session(address: str) -> Iterator[Any]:
    """The ``ray`` module, connected for the length of a ``with`` block.

    Joins ``address`` (``"local"``: starts Ray here) unless Ray is already initialised in this
    process, and shuts down only what it started.
    """
    ray = import_ray()
    started = False
    if not ray.is_initialized():
        ray.init(address=None if address == "local" else address, log_to_driver=False)
        started = True
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def _ray_chunk(
    spec: RunSpec,
    chunk: Chunk,
    shards: str | None,
    tags: Mapping[str, Any] | None,
    hook: EpisodeHook | None,
    attempts: Any,
) -> ChunkResult:
    import ray

    attempt = ray.get(attempts.bump.remote(chunk.index))
    return run_chunk(spec, chunk, shards, tags, hook, attempt)


def _run_ray(
    spec: RunSpec,
    chunks: list[Chunk],
    workers: int,
    shards: str | None,
    tags: Mapping[str, Any] | None,
    progress: ProgressFn | None,
    hook: EpisodeHook | None,
    address: str,
    max_retries: int,
) -> dict[int, ChunkResult]:
    with ray_session(address) as ray:
        # the counter lives on the driver's node: on any other it would die with that node,
        # and every retried chunk with it (a lost worker node must cost only its chunks)
        attempts = ray.remote(num_cpus=0)(_Attempts).options(**on_driver_node(ray)).remote()
        task = ray.remote(num_cpus=1, max_retries=max_retries)(_ray_chunk)
        done: dict[int, ChunkResult] = {}
        pending: list[Any] = []
        queue = list(chunks)
        # at most `workers` tasks in flight: Ray's own pattern for bounding pending tasks
        while queue or pending:
            while queue and len(pending) < workers:
                pending.append(task.remote(spec, queue.pop(0), shards, tags, hook, attempts))
            ready, pending = ray.wait(pending, num_returns=1)
            result = ray.get(ready[0])
            done[result.chunk.index] = result
            if progress is not None:
                progress(sum(d.chunk.episodes for d in done.values()), spec.episodes)
        return done


# --- capture ------------------------------------------------------------------------------------
def merge_shards(
    run: WorkersRun,
    directory: str | os.PathLike,
    *,
    dataset_id: str | None,
    mode: Mode,
    tags: Mapping[str, Any] | None = None,
    remove: bool = True,
) -> dict[str, Any]:
    """Merge ``run``'s shards, in chunk (= seed) order, into one dataset; then remove them.

    Raises:
        RuntimeError: The shards do not hold exactly the run's episodes (the shards are kept).

    Returns:
        :func:`~twinloop.datasets.merge.merge_datasets`'s answer (episodes and steps of the
        dataset, ``added``: the run's episodes now in it).
    """
    from twinloop.datasets.merge import merge_datasets
    from twinloop.datasets.reader import open_dataset

    if not run.shards:
        raise ValueError("the run recorded no shards")
    held = []
    for shard in run.shards:
        ds = open_dataset(shard)
        held.append(len(ds))
        ds.close()
    expected = [c.episodes for c in run.chunks]
    if held != expected:
        raise RuntimeError(
            f"the shards hold {held} episodes, the chunks had {expected}; the shards are kept "
            f"in {run.shards[0].parent}"
        )
    out = merge_datasets(directory, run.shards, dataset_id=dataset_id, mode=mode, tags=tags)
    if out["skipped"]:
        raise RuntimeError(
            f"damaged shard episodes were skipped ({'; '.join(out['skipped'][:3])}); the "
            f"shards are kept in {run.shards[0].parent}"
        )
    if remove:
        shutil.rmtree(run.shards[0].parent)
    return {**out, "added": sum(held)}
