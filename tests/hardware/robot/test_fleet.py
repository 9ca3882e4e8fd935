"""A fleet of devices: ``twinloop run ... --backend robot --fleet FILE`` (issue 19).

Two robot twins, one worker each: the seeds split into one contiguous share per device, each
episode says which device ran it, the capture merges both devices' shards into one dataset
that names each shard's device, and the results equal the simulator's from the same seeds
(the twins run without hidden effects).
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("mujoco", reason="the 'locomotion' extra is needed")
pytest.importorskip("zmq", reason="the 'microscope' extra (pyzmq, msgpack) is needed")

from tests.hardware.robot.helpers import ID, NO_HIDDEN, TOKEN, twin
from twinloop.cli import main
from twinloop.datasets.reader import open_dataset
from twinloop.eval.workers import load_fleet

SETS = ["--set", "max_steps=15", *[f"--set={k}=false" for k in NO_HIDDEN]]


def _run(tmp_path, name: str, *extra: str) -> dict:
    out = tmp_path / f"{name}.json"
    args = ["run", ID, "--controller", "stand", "--episodes", "4", "--seed", "3", "--quiet"]
    assert main([*args, *SETS, "--json", str(out), *extra]) == 0
    return json.loads(out.read_text())


def test_a_fleet_of_two_twins_runs_each_share_on_its_device_and_records_one_dataset(
    tmp_path,
) -> None:
    secret = tmp_path / "token"
    secret.write_text(TOKEN + "\n", encoding="utf-8")
    with twin() as a, twin() as b:
        fleet = tmp_path / "fleet.json"
        devices = [
            {"name": "robot-a", "address": a.address, "token_file": str(secret)},
            {"name": "robot-b", "address": b.address, "token_file": str(secret)},
        ]
        fleet.write_text(json.dumps(devices))
        assert [d["token"] for d in load_fleet(fleet)] == [TOKEN, TOKEN]
        run = _run(tmp_path, "fleet", "--backend", "robot", "--fleet", str(fleet),
                   "--record", str(tmp_path / "data"))  # fmt: skip
        served = (a.robot.episodes, b.robot.episodes)
    sim = _run(tmp_path, "sim")
    assert [e["device"] for e in run["episodes"]] == ["robot-a"] * 2 + ["robot-b"] * 2
    assert [e["seed"] for e in run["episodes"]] == [3, 4, 5, 6]
    for ours, theirs in zip(run["episodes"], sim["episodes"], strict=True):
        assert ours["episode_return"] == pytest.approx(theirs["episode_return"], rel=1e-9)
    assert all(n >= 3 for n in served)  # each twin reset for its own two episodes
    meta = next((tmp_path / "data").rglob("metadata.json"))
    ds = open_dataset(meta.parent.parent)
    try:
        assert len(ds) == 4
        shards = ds.metadata["twinloop"]["shards"]
        assert [s["episodes"] for s in shards] == [2, 2]
        addresses = [json.dumps(s["backend"]) for s in shards]
        assert a.address in addresses[0] and b.address in addresses[1]
    finally:
        ds.close()


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("{}", "non-empty JSON list"),
        ('[{"address": "tcp://127.0.0.1:1"}]', "unique non-empty 'name'"),
        ('[{"name": "a"}]', "needs an 'address'"),
        ('[{"name": "a", "address": "x"}, {"name": "a", "address": "y"}]', "unique"),
    ],
)
def test_bad_fleet_files_are_refused_precisely(tmp_path, content: str, words: str) -> None:
    path = tmp_path / "fleet.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=words):
        load_fleet(path)


def test_fleet_needs_a_device_backend(tmp_path, capsys) -> None:
    path = tmp_path / "fleet.json"
    path.write_text('[{"name": "a", "address": "tcp://127.0.0.1:1"}]')
    args = ["run", ID, "--controller", "stand", "--episodes", "2", "--fleet", str(path)]
    assert main(args) == 2
    assert "give their --backend" in capsys.readouterr().err
