"""The main job end to end, tiny: capture -> train -> evaluate -> report, on sim and remote."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("jax", reason="the 'learn' extra (jax, optax) trains the rate model")
pytest.importorskip("matplotlib", reason="the 'plot' extra draws the report's figures")

from twinloop.cli import main
from twinloop.demo import DemoConfig, run_demo


@pytest.mark.parametrize("backend", ["sim", "remote"])
def test_tiny_demo_writes_a_complete_report(tmp_path, backend: str) -> None:
    if backend == "remote":
        pytest.importorskip("zmq", reason="the 'microscope' extra is needed for the twin")
    out = tmp_path / "demo"
    cfg = DemoConfig(
        out=str(out),
        backend=backend,
        transitions=150,
        episodes=3,
        train_steps=60,
        ensemble=2,
        goal_hops=3,
        compare_sim=False,
    )
    results = run_demo(cfg)
    for name in (
        "report.md",
        "results.json",
        "model.npz",
        "figures/rate_map.png",
        "figures/controllers.png",
        "figures/trajectories.png",
        "dataset/data/main_data.hdf5",
    ):
        assert (out / name).exists(), name
    saved = json.loads((out / "results.json").read_text())
    runs = saved["evaluation"]["runs"]
    assert {r["controller"] for r in runs} == {"greedy-neighbor", "greedy-learned", "planner"}
    # through the twin: a device with hidden physics, and the simulator calibrated to it
    backends = {backend, "sim-calibrated"} if backend == "remote" else {backend}
    assert {r["backend"] for r in runs} == backends
    assert all(r["episodes"] == 3 for r in runs)
    assert saved["rate_model"]["info"]["transitions"] > 50
    assert results["wall_time_s"] > 0
    text = (out / "report.md").read_text()
    assert "optimum location error" in text and "![controllers]" in text
    if backend == "remote":
        assert saved["device_profile"]["name"] == DemoConfig().profile
        assert "device profile `random:7`" in text and "`sim-calibrated`" in text
        assert json.loads((out / "sysid.json").read_text())  # the fitted overrides
        gaps = {(g["controller"], g["a"], g["b"]) for g in saved["evaluation"]["backend_gaps"]}
        assert ("planner", "remote", "sim-calibrated") in gaps
    with pytest.raises(FileExistsError, match="--overwrite"):
        run_demo(cfg)


def test_stages_run_alone_from_the_cli(tmp_path, capsys) -> None:
    ds, model = tmp_path / "capture", tmp_path / "model.npz"
    assert main(["capture", str(ds), "--backend", "sim", "--transitions", "120", "--quiet"]) == 0
    assert (
        main(["train", str(ds), "--out", str(model), "--steps", "50", "--ensemble", "2", "--quiet"])
        == 0
    )
    assert "optimum error" in capsys.readouterr().out
    runs = []
    for ctrl in ("greedy-neighbor", "greedy-learned"):
        rec = tmp_path / ctrl
        args = [
            "run",
            "twinloop/StemSteer-v0",
            "--controller",
            ctrl,
            "--episodes",
            "4",
            "--quiet",
            "--record",
            str(rec),
            "--tag",
            f"controller={ctrl}",
            "--tag",
            "backend=sim",
        ]
        if ctrl == "greedy-learned":
            args += ["--model", str(model)]
        assert main(args) == 0
        runs.append(str(rec))
    capsys.readouterr()
    assert main(["eval", *runs, "--out", str(tmp_path / "eval")]) == 0
    out = capsys.readouterr().out
    assert "greedy-learned" in out and "controller pairs" in out
    assert (tmp_path / "eval" / "controllers.png").exists()
