from __future__ import annotations

import json

import pytest

from twinloop.cli import main

ID = "twinloop/StemSteer-v0"


def test_list(capsys) -> None:
    assert main(["list", "--spaces"]) == 0
    out = capsys.readouterr().out
    assert ID in out and "Box(12,) -> Box(2,)" in out


def test_info(capsys) -> None:
    assert main(["info", ID]) == 0
    out = capsys.readouterr().out
    assert "goal_offset_angstrom" in out and "beam_current_na" in out and "sim" in out


def test_run_prints_table_and_json_and_n_envs_does_not_change_results(capsys, tmp_path) -> None:
    args = [
        "run",
        ID,
        "--controller",
        "greedy-neighbor",
        "--episodes",
        "12",
        "--seed",
        "3",
        "--quiet",
    ]
    assert main([*args, "--json", str(tmp_path / "a.json")]) == 0
    out = capsys.readouterr().out
    assert "success rate" in out and "failures by kind" in out
    assert main([*args, "--n-envs", "4", "--json", str(tmp_path / "b.json")]) == 0
    a = json.loads((tmp_path / "a.json").read_text())
    b = json.loads((tmp_path / "b.json").read_text())
    assert a["episodes"] == b["episodes"]
    assert a["summary"]["episodes"] == 12


def test_run_with_overrides(capsys, tmp_path) -> None:
    assert (
        main(
            [
                "run",
                ID,
                "--controller",
                "random",
                "--episodes",
                "3",
                "--quiet",
                "--set",
                "max_steps=2",
                "--set",
                "beam_current_na=0",
                "--json",
                str(tmp_path / "r.json"),
            ]
        )
        == 0
    )
    data = json.loads((tmp_path / "r.json").read_text())
    assert all(e["steps"] == 2 and e["truncated"] for e in data["episodes"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", ID, "--controller", "nope"], "valid controllers"),
        (["run", ID, "--controller", "random", "--set", "bogus=1"], "no field 'bogus'"),
        (["run", "twinloop/X-v0", "--controller", "random"], "registered ids"),
        (["run", ID, "--controller", "random", "--backend", "nope"], "valid backends"),
    ],
)
def test_errors_are_reported_not_raised(capsys, args, message) -> None:
    assert main([*args, "--quiet"]) == 2
    assert message in capsys.readouterr().err


def test_bad_episode_count_is_rejected() -> None:
    with pytest.raises(SystemExit):
        main(["run", ID, "--controller", "random", "--episodes", "0"])
