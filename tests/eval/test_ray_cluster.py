"""A capture on a real two-node Ray cluster (on this machine) survives losing a whole node.

``ray.cluster_utils.Cluster`` starts a head and a worker node as separate raylets. A placeholder
actor holds the head's only CPU while the capture starts, so the chunks land on the worker
node; once an episode has been committed there, the node is removed (its raylet and every
worker process on it killed, not drained) and the placeholder released. Ray retries the lost
chunks on the head, each overwriting its shard from scratch; the merged dataset must then equal
a single-process capture, every episode once.

A single dead worker process (rather than a node) is covered by ``test_workers.py``.
"""

from __future__ import annotations

import functools
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from twinloop.datasets import open_dataset
from twinloop.eval.workers import Chunk, merge_shards, run_workers

from .test_workers import SPEC, _same_episodes, _single_process

#: Seconds the worker node's tasks pause after each episode, so the kill lands mid-chunk.
PAUSE_S = 1.0


def _note_node(folder: str, slow_node: str, chunk: Chunk, done: int) -> None:
    """Hook: note where each episode ran (``<chunk>-<episode>-<node>``); pause on ``slow_node``."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    Path(folder, f"{chunk.index}-{done}-{node}").touch()
    if node == slow_node:
        time.sleep(PAUSE_S)


@pytest.fixture()
def cluster():
    """A head node (1 CPU, resource ``head``) and a worker node (2 CPUs); ray connected."""
    ray = pytest.importorskip("ray", reason="the Ray tests need the ray extra (pip install .[ray])")
    from ray.cluster_utils import Cluster

    c = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "resources": {"head": 1}, "include_dashboard": False},
    )
    worker = c.add_node(num_cpus=2)
    c.wait_for_nodes()
    ray.init(address=c.address, log_to_driver=False)
    try:
        yield ray, c, worker
    finally:
        ray.shutdown()
        c.shutdown()


@pytest.mark.slow
def test_a_capture_survives_losing_a_node_mid_run(tmp_path, cluster) -> None:
    ray, c, worker = cluster
    head_id = ray.get_runtime_context().get_node_id()
    worker_id = worker.node_id
    assert head_id != worker_id

    @ray.remote(num_cpus=1, resources={"head": 1})
    class Placeholder:
        def ready(self) -> bool:
            return True

    holder = Placeholder.remote()
    ray.get(holder.ready.remote())  # the head's CPU is taken: the chunks go to the worker node
    notes = tmp_path / "notes"
    notes.mkdir()
    removed = threading.Event()

    def kill_worker_node() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if any(p.name.endswith(worker_id) for p in notes.iterdir()):
                c.remove_node(worker, allow_graceful=False)
                ray.kill(holder)  # the head's CPU is free for the retries
                removed.set()
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_worker_node, daemon=True)
    killer.start()
    run = run_workers(
        SPEC,
        2,
        chunk_episodes=2,
        shards=tmp_path / "shards",
        ray_address=c.address,
        hook=functools.partial(_note_node, str(notes), worker_id),
    )
    killer.join(timeout=5)
    assert removed.is_set(), "no episode ever ran on the worker node"
    ran = [p.name.split("-", 2) for p in notes.iterdir()]
    on_worker = {int(k) for k, _, node in ran if node == worker_id}
    on_head = {int(k) for k, _, node in ran if node == head_id}
    assert on_worker and on_worker <= {0, 1}  # the first chunks started on the worker node
    assert on_head == {0, 1, 2}  # and everything finished on the head
    # the run's summary records the retries of the chunks the node took down
    retried = {chunk.index for chunk, _ in run.retried}
    assert on_worker <= retried <= {0, 1} and all(n == 2 for _, n in run.retried)
    _same_episodes(run.results, _single_process())
    _single_process(tmp_path)
    merge_shards(run, tmp_path / "merged", dataset_id="merged-v0", mode="create")
    single, merged = open_dataset(tmp_path / "single"), open_dataset(tmp_path / "merged")
    assert len(merged) == SPEC.episodes  # the dead attempts' committed episodes not counted twice
    seeds = [ep.metadata["seed"] for ep in merged.iterate_episodes()]
    assert seeds == list(range(SPEC.seed, SPEC.seed + SPEC.episodes))
    for a, b in zip(single.iterate_episodes(), merged.iterate_episodes(), strict=True):
        np.testing.assert_array_equal(a.observations, b.observations)
        np.testing.assert_array_equal(a.actions, b.actions)
        np.testing.assert_array_equal(a.rewards, b.rewards)
