"""``twinloop run --workers N [--ray ADDRESS]``: the same output for any N, one merged capture."""

from __future__ import annotations

import json
import sys

import numpy as np

from twinloop.cli import main
from twinloop.datasets import open_dataset

ID = "twinloop/StemSteer-v0"
RUN = ["run", ID, "--controller", "greedy-neighbor", "--episodes", "5", "--seed", "11"]
RUN += ["--set", "task.max_steps=25", "--quiet"]
DATASET = "twinloop/stemsteer-greedy-neighbor-v0"


def _run(capsys, tmp_path, name: str, *extra: str) -> tuple[str, dict]:
    out_json = tmp_path / f"{name}.json"
    assert main([*RUN, "--json", str(out_json), *extra]) == 0
    out = capsys.readouterr().out
    return out, json.loads(out_json.read_text())


def _table(out: str) -> str:
    """The header and the summary table (the lines before the workers' report)."""
    lines = out.splitlines()
    end = next((i for i, line in enumerate(lines) if line.startswith("workers: ")), len(lines))
    return "\n".join(lines[:end])


def test_one_or_two_workers_print_what_one_process_prints(capsys, tmp_path) -> None:
    here, a = _run(capsys, tmp_path, "here")
    one, b = _run(capsys, tmp_path, "one", "--workers", "1")
    two, c = _run(capsys, tmp_path, "two", "--workers", "2", "--chunk-episodes", "2")
    assert _table(here) == _table(one) == _table(two)
    assert "mean return" in _table(two) and "workers: 2 (process pool), 3 chunks" in two
    assert "retried: none" in two
    assert a["episodes"] == b["episodes"] == c["episodes"]
    assert [e["seed"] for e in c["episodes"]] == list(range(11, 16))
    assert c["workers"] == {"engine": "pool", "workers": 2, "chunks": 3, "retried": []}
    assert "workers" not in a


def test_two_workers_record_one_dataset_equal_to_one_process(capsys, tmp_path) -> None:
    _run(capsys, tmp_path, "here", "--record", str(tmp_path / "a"))
    out, _ = _run(capsys, tmp_path, "two", "--workers", "2", "--record", str(tmp_path / "b"))
    assert "recorded 5 episodes" in out and "merged from" in out
    assert not list((tmp_path / "b").rglob("*.shards"))  # merged, then removed
    single = open_dataset(tmp_path / "a" / DATASET)
    merged = open_dataset(tmp_path / "b" / DATASET)
    assert merged.id == single.id and len(merged) == len(single) == 5
    for a, b in zip(single.iterate_episodes(), merged.iterate_episodes(), strict=True):
        assert a.metadata["seed"] == b.metadata["seed"]
        np.testing.assert_array_equal(a.observations, b.observations)
        np.testing.assert_array_equal(a.actions, b.actions)
        np.testing.assert_array_equal(a.rewards, b.rewards)
    # a second capture into the same dataset is refused before any worker runs
    assert main([*RUN, "--workers", "2", "--record", str(tmp_path / "b")]) == 2
    assert "already exists" in capsys.readouterr().err
    out, _ = _run(
        capsys, tmp_path, "app", "--workers", "2", "--record", str(tmp_path / "b"), "--append"
    )
    assert len(open_dataset(tmp_path / "b" / DATASET)) == 10


def test_ray_without_the_extra_names_it(capsys, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    assert main([*RUN, "--workers", "2", "--ray", "local"]) == 2
    assert "pip install 'twinloop[ray]'" in capsys.readouterr().err


def test_workers_refuse_a_device_backend_and_ray_needs_workers(capsys) -> None:
    assert main([*RUN, "--workers", "2", "--backend", "remote", "--port", "5555"]) == 2
    assert "or a fleet of devices (--fleet FILE" in capsys.readouterr().err
    assert main([*RUN, "--ray", "auto"]) == 2
    assert "--ray needs --workers" in capsys.readouterr().err
