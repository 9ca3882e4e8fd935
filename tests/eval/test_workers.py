"""Episodes on worker processes or Ray tasks: same results as one process, failures named.

The hooks below run inside the workers (a spawned process imports this module to find them):
one raises, one kills its process with ``os._exit``, one kills it only on the first attempt
(a marker file remembers), so that a Ray retry can succeed.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path

import numpy as np
import pytest

import twinloop
from twinloop.controllers import make_controller
from twinloop.datasets import open_dataset, record
from twinloop.eval.rollout import run_single
from twinloop.eval.workers import (
    Chunk,
    RunSpec,
    WorkersFailed,
    merge_shards,
    run_workers,
    seed_ranges,
    split_seeds,
)

ID = "twinloop/StemSteer-v0"
SHORT = {"task": {"max_steps": 25}}
SPEC = RunSpec(ID, "greedy-neighbor", seed=5, episodes=6, overrides=SHORT)


def _single_process(tmp_path: Path | None = None) -> list:
    env = twinloop.make(ID, **SHORT)
    if tmp_path is not None:
        env = record(env, tmp_path / "single", mode="create")
    try:
        return run_single(env, make_controller(SPEC.controller, env), SPEC.episodes, SPEC.seed)
    finally:
        env.close()


def _raise_in(index: int, chunk: Chunk, done: int) -> None:
    if chunk.index == index and done == 1:
        raise RuntimeError("hook: this worker fails")


def _exit_in(index: int, chunk: Chunk, done: int) -> None:
    if chunk.index == index and done == 1:
        os._exit(3)


def _exit_once_in(index: int, marker: str, chunk: Chunk, done: int) -> None:
    if chunk.index == index and done == 1 and not os.path.exists(marker):
        Path(marker).write_text("died once")
        os._exit(3)


def _same_episodes(a: list, b: list) -> None:
    assert [r.__dict__ for r in a] == [r.__dict__ for r in b]


def test_chunks_cover_every_seed_once_in_order() -> None:
    chunks = split_seeds(10, 7, 3)
    assert [list(c.seeds) for c in chunks] == [[7, 8, 9], [10, 11, 12], [13, 14, 15], [16]]
    assert [c.index for c in chunks] == [0, 1, 2, 3]
    assert seed_ranges([3, 4, 5, 9, 11, 12]) == "3-5, 9, 11-12"
    with pytest.raises(ValueError):
        split_seeds(0, 0, 1)


def test_one_and_two_workers_equal_one_process() -> None:
    here = _single_process()
    one = run_workers(SPEC, 1, chunk_episodes=4)
    two = run_workers(SPEC, 2, chunk_episodes=2)
    assert [r.seed for r in two.results] == list(range(5, 11))
    assert [r.episode for r in two.results] == list(range(6))
    _same_episodes(one.results, here)
    _same_episodes(two.results, here)
    assert len({r.episode_return for r in here}) > 1  # the seeds do differ
    assert two.engine == "pool" and not two.retried and len(two.chunks) == 3


def test_workers_with_vector_envs_equal_one_process() -> None:
    """Each worker running a kernel-batched vector env of 2 rows: the same episodes again."""
    here = _single_process()
    two = run_workers(dataclasses.replace(SPEC, n_envs=2), 2, chunk_episodes=3)
    assert len(two.chunks) == 2
    _same_episodes(two.results, here)


def test_merged_shards_equal_a_single_process_capture(tmp_path) -> None:
    _single_process(tmp_path)
    run = run_workers(SPEC, 2, chunk_episodes=2, shards=tmp_path / "shards", tags={"k": 1})
    assert [p.name for p in run.shards] == ["shard-000", "shard-001", "shard-002"]
    out = merge_shards(run, tmp_path / "merged", dataset_id="merged-v0", mode="create")
    assert out["episodes"] == 6 and not (tmp_path / "shards").exists()
    single, merged = open_dataset(tmp_path / "single"), open_dataset(tmp_path / "merged")
    assert len(merged) == len(single) == 6
    pairs = zip(single.iterate_episodes(), merged.iterate_episodes(), strict=True)
    for k, (a, b) in enumerate(pairs):
        assert a.metadata["seed"] == b.metadata["seed"] == SPEC.seed + k
        np.testing.assert_array_equal(a.observations, b.observations)
        np.testing.assert_array_equal(a.actions, b.actions)
        np.testing.assert_array_equal(a.rewards, b.rewards)


@pytest.mark.parametrize("hook", [_raise_in, _exit_in], ids=["raises", "dies"])
def test_a_lost_worker_fails_the_run_naming_the_seeds_and_keeping_shards(tmp_path, hook) -> None:
    shards = tmp_path / "shards"
    with pytest.raises(WorkersFailed) as info:
        run_workers(SPEC, 2, chunk_episodes=2, shards=shards, hook=functools.partial(hook, 1))
    err = info.value
    assert 1 in [c.index for c in err.lost] and "seeds 7-8" in str(err)
    assert str(shards) in str(err)
    if hook is _raise_in:  # the other chunks ran to the end and their shards are whole
        assert [c.index for c in err.lost] == [1]
        assert [p.name for p in err.kept] == ["shard-000", "shard-002"]
        assert "hook: this worker fails" in str(err)
    for p in err.kept:
        ds = open_dataset(p)
        assert len(ds) == 2 and ds.episode_metadata[0]["seed"] in (5, 9)


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray instance of 2 CPUs (the test skips without the ray extra)."""
    ray = pytest.importorskip("ray", reason="the Ray tests need the ray extra (pip install .[ray])")
    ray.init(num_cpus=2, log_to_driver=False, include_dashboard=False)
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_ray_equals_the_pool_and_retries_a_dead_worker(tmp_path, local_ray) -> None:
    _single_process(tmp_path)
    marker = str(tmp_path / "died")
    run = run_workers(
        SPEC,
        2,
        chunk_episodes=2,
        shards=tmp_path / "shards",
        ray_address="auto",
        hook=functools.partial(_exit_once_in, 1, marker),
    )
    assert os.path.exists(marker)  # chunk 1's first worker did die after one episode
    assert run.engine == "ray"
    assert [(c.index, n) for c, n in run.retried] == [(1, 2)]
    _same_episodes(run.results, _single_process())
    merge_shards(run, tmp_path / "merged", dataset_id="merged-v0", mode="create")
    single, merged = open_dataset(tmp_path / "single"), open_dataset(tmp_path / "merged")
    assert len(merged) == 6  # the dead attempt's committed episode is not counted twice
    for a, b in zip(single.iterate_episodes(), merged.iterate_episodes(), strict=True):
        assert a.metadata["seed"] == b.metadata["seed"]
        np.testing.assert_array_equal(a.observations, b.observations)
        np.testing.assert_array_equal(a.actions, b.actions)
        np.testing.assert_array_equal(a.rewards, b.rewards)
