from __future__ import annotations

import argparse
import json

import pytest

from twinloop.cli import (
    TABLE_BEGIN,
    TABLE_END,
    build_parser,
    iter_commands,
    main,
    modernize,
    render_command_table,
    write_command_table,
)

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


# --- the shape of the command line -------------------------------------------------------------
def _walk(parser: argparse.ArgumentParser, path: str = "twinloop"):
    """Every (command path, action) of the tree, and every (path, subcommand name, help)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, child in action.choices.items():
                yield f"{path} {name}", None, helps.get(name)
                yield from _walk(child, f"{path} {name}")
        else:
            yield path, action, action.help


def _missing_help(parser: argparse.ArgumentParser) -> list[str]:
    missing = []
    for path, action, help_text in _walk(parser):
        if not help_text or help_text == argparse.SUPPRESS or not help_text.strip():
            what = (
                path
                if action is None
                else f"{path} {'/'.join(action.option_strings) or action.dest}"
            )
            missing.append(what)
    return missing


def test_every_option_argument_and_command_has_help() -> None:
    missing = _missing_help(build_parser())
    assert not missing, "no help text: " + ", ".join(missing)


def test_the_help_check_finds_what_lacks_help() -> None:
    p = argparse.ArgumentParser(prog="x")
    sub = p.add_subparsers()
    s = sub.add_parser("go")  # no help
    s.add_argument("--fast", action="store_true")  # no help
    s.add_argument("where", help="a place")
    t = sub.add_parser("stop", help="stop")
    t.add_argument("--now", help=argparse.SUPPRESS)
    assert sorted(_missing_help(p)) == ["twinloop go", "twinloop go --fast", "twinloop stop --now"]


def test_help_renders_for_every_command(capsys) -> None:
    commands = [path for path, _, _ in iter_commands(build_parser())]
    assert ("stem-rates", "capture") in commands and ("data", "export") in commands
    for path in [(), *commands]:
        with pytest.raises(SystemExit) as stop:
            main([*path, "-h"])
        assert stop.value.code == 0
        assert "usage: twinloop" in capsys.readouterr().out


def test_generic_verbs_and_system_stages_sit_where_the_design_says() -> None:
    top = {path[0] for path, _, _ in iter_commands(build_parser())}
    assert top == {
        "list",
        "info",
        "run",
        "eval",
        "serve",
        "data",
        "sysid",
        "agent",
        "demo",
        "transfer",
        "stem-rates",
    }
    stages = {
        p[1]
        for p, _, _ in iter_commands(build_parser())
        if p[:1] == ("stem-rates",) and len(p) == 2
    }
    assert stages == {"capture", "train", "eval"}


def test_command_table_has_one_row_per_runnable_command() -> None:
    parser = build_parser()
    table = render_command_table(parser).splitlines()
    assert table[:2] == ["| command | what |", "|---|---|"]
    leaves = [
        path
        for path, child, _ in iter_commands(parser)
        if not any(isinstance(a, argparse._SubParsersAction) for a in child._actions)
    ]
    assert len(table) == 2 + len(leaves)
    assert "| `twinloop run ID --controller NAME [options]` |" in table[2 + leaves.index(("run",))]
    row = table[2 + leaves.index(("data", "export"))]
    assert row.startswith("| `twinloop data export DIR OUT --format lerobot\\|robomimic [options]`")
    assert "| `twinloop data recover DIR` |" in table[2 + leaves.index(("data", "recover"))]
    assert "95% intervals" in table[2 + leaves.index(("stem-rates", "eval"))]  # %% expanded


def test_readme_table_is_written_between_its_markers(tmp_path, capsys) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nintro\n\n{TABLE_BEGIN}\n| stale |\n{TABLE_END}\n\n## next\n")
    assert write_command_table(readme) is True
    text = readme.read_text()
    assert text == (
        f"# x\n\nintro\n\n{TABLE_BEGIN}\n{render_command_table()}\n{TABLE_END}\n\n## next\n"
    )
    assert write_command_table(readme) is False
    with pytest.raises(SystemExit) as stop:
        main(["--readme-table"])
    assert stop.value.code == 0
    assert capsys.readouterr().out == render_command_table() + "\n"
    bare = tmp_path / "bare.md"
    bare.write_text("# no markers\n")
    with pytest.raises(ValueError, match="no generated command table"):
        write_command_table(bare)
    with pytest.raises(SystemExit) as stop:
        main(["--readme-table", str(bare)])
    assert stop.value.code == 2 and TABLE_BEGIN in capsys.readouterr().err
    assert bare.read_text() == "# no markers\n"


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (["capture", "d", "--backend", "sim", "--transitions", "7"], ["stem-rates", "capture"]),
        (["train", "d", "--out", "m.npz", "--steps", "5"], ["stem-rates", "train"]),
        (["eval", "a", "b", "--out", "o"], ["stem-rates", "eval"]),
    ],
)
def test_old_spellings_parse_as_the_new_ones_with_a_notice(capsys, old, new) -> None:
    parser = build_parser()
    modern = modernize(old)
    err = capsys.readouterr().err
    assert f"'twinloop {old[0]}' is deprecated" in err and f"'twinloop {' '.join(new)}'" in err
    assert modern == [*new, *old[1:]]
    assert vars(parser.parse_args(modern)) == vars(parser.parse_args([*new, *old[1:]]))


def test_new_spellings_and_other_commands_get_no_notice(capsys) -> None:
    for argv in (["stem-rates", "eval", "x"], ["run", "capture"], ["data", "info", "train"], []):
        assert modernize(argv) == argv
    assert capsys.readouterr().err == ""


def test_capture_runs_under_both_spellings(tmp_path, capsys) -> None:
    from twinloop.datasets import open_dataset

    args = ["--backend", "sim", "--transitions", "120", "--seed", "4", "--quiet"]
    assert main(["stem-rates", "capture", str(tmp_path / "new"), *args]) == 0
    assert "deprecated" not in capsys.readouterr().err
    assert main(["capture", str(tmp_path / "old"), *args]) == 0
    assert "use 'twinloop stem-rates capture'" in capsys.readouterr().err
    with open_dataset(tmp_path / "new") as a, open_dataset(tmp_path / "old") as b:
        assert len(a) == len(b) >= 1  # episodes that ended within the 120 dwells
        assert a.total_steps == b.total_steps and 0 < a.total_steps <= 120


def test_twinloop_demo_without_options_runs_the_library_defaults(monkeypatch, capsys) -> None:
    import twinloop.demo as demo

    seen = []

    def fake_run_demo(cfg, progress=None):
        seen.append(cfg)
        empty = {"runs": [], "controller_pairs": [], "backend_gaps": []}
        return {"rate_model": {}, "evaluation": empty, "wall_time_s": 1.0}

    monkeypatch.setattr(demo, "run_demo", fake_run_demo)
    assert main(["demo"]) == 0
    assert seen == [demo.DemoConfig()]  # the README's first command is run_demo's defaults
    assert "report: twinloop-demo/report.md" in capsys.readouterr().out
    assert main(["demo", "--address", "tcp://127.0.0.1:7", "--backend", "remote"]) == 0
    assert seen[-1].address == "tcp://127.0.0.1:7"  # a running twin instead of a new one


def test_demo_uses_the_twin_at_address_instead_of_starting_one(monkeypatch, tmp_path) -> None:
    import twinloop.demo as demo

    def no_twin(*args, **kwargs):
        raise AssertionError("started a twin although an address was given")

    class Captured(Exception):
        pass

    def fake_capture(backend, n, directory, *, address=None, **kwargs):
        raise Captured(backend, address)

    monkeypatch.setattr(demo, "microscope_twin", no_twin)
    monkeypatch.setattr(demo, "capture", fake_capture)
    cfg = demo.DemoConfig(out=str(tmp_path / "d"), address="tcp://127.0.0.1:7")
    with pytest.raises(Captured) as got:
        demo.run_demo(cfg)
    assert got.value.args == ("remote", "tcp://127.0.0.1:7")


def test_run_timeout_reaches_the_network_backend_by_its_own_names(monkeypatch, capsys) -> None:
    """``--timeout`` is ``timeout_s`` for the microscope twin, both link timeouts for MAVLink."""
    import twinloop

    seen: list[dict] = []

    def fake_make(env_id, **kwargs):
        seen.append(kwargs)
        raise ValueError("stop here")

    monkeypatch.setattr(twinloop, "make", fake_make)
    base = ["run", "--controller", "random", "--episodes", "1", "--timeout", "42"]
    assert main([*base[:1], "twinloop/StemSteer-v0", *base[1:], "--backend", "remote"]) == 2
    assert seen[-1]["timeout_s"] == 42.0
    balloon = "twinloop/BalloonStationKeeping-v0"
    assert main([*base[:1], balloon, *base[1:], "--backend", "mavlink"]) == 2
    assert seen[-1]["connect_timeout_s"] == seen[-1]["ack_timeout_s"] == 42.0
    seen.clear()
    assert main([*base[:1], "twinloop/StemSteer-v0", *base[1:]]) == 2
    assert not seen and "takes no timeout" in capsys.readouterr().err


def test_port_builds_each_backends_own_address(monkeypatch, capsys) -> None:
    """``--port`` with MAVLink is ``udp:HOST:PORT``, with the microscope twin ``tcp://...``."""
    import twinloop

    seen: list[dict] = []

    def fake_make(env_id, **kwargs):
        seen.append(kwargs)
        raise ValueError("stop here")

    monkeypatch.setattr(twinloop, "make", fake_make)
    args = ["--controller", "random", "--episodes", "1", "--port", "14560"]
    balloon = "twinloop/BalloonStationKeeping-v0"
    assert main(["run", balloon, *args, "--backend", "mavlink"]) == 2
    assert seen[-1]["address"] == "udp:127.0.0.1:14560"
    assert main(["run", ID, *args, "--backend", "remote", "--host", "10.0.0.2"]) == 2
    assert seen[-1]["address"] == "tcp://10.0.0.2:14560"
    seen.clear()
    assert main(["run", ID, *args]) == 2  # the simulator has no address
    assert not seen and "takes no address" in capsys.readouterr().err


def test_token_from_a_file_or_the_environment(monkeypatch, tmp_path, capsys) -> None:
    """A secret given on the command line shows in ps; a file or $TWINLOOP_TOKEN does not."""
    import twinloop

    seen: list[dict] = []

    def fake_make(env_id, **kwargs):
        seen.append(kwargs)
        raise ValueError("stop here")

    monkeypatch.setattr(twinloop, "make", fake_make)
    base = ["run", ID, "--controller", "random", "--episodes", "1", "--backend", "remote"]
    secret = tmp_path / "token"
    secret.write_text("s3cr\u00e9t\nignored\n", encoding="utf-8")
    assert main([*base, "--token-file", str(secret)]) == 2
    assert seen[-1]["token"] == "s3cr\u00e9t"
    monkeypatch.setenv("TWINLOOP_TOKEN", "from-env")
    assert main(base) == 2
    assert seen[-1]["token"] == "from-env"
    seen.clear()
    assert main([*base, "--token", "a", "--token-file", str(secret)]) == 2
    assert not seen and "not both" in capsys.readouterr().err
    (tmp_path / "empty").write_text("\n")
    assert main([*base, "--token-file", str(tmp_path / "empty")]) == 2
    assert "is empty" in capsys.readouterr().err


def test_a_device_fault_mid_run_is_one_line_and_the_env_is_closed(monkeypatch, capsys) -> None:
    """A backend fault during ``run`` is reported in one line and the env is still closed.

    Closing is what releases the device: a MAVLink station releases command and stops its
    threads, a capture is finalised.
    """
    import gymnasium as gym

    import twinloop
    from twinloop.core.backend import BackendFault

    real_make = twinloop.make
    closed: list[bool] = []

    class Faulty(gym.Wrapper):
        def step(self, action):
            raise BackendFault("link lost: no heartbeat for 3 s")

        def close(self) -> None:
            closed.append(True)
            super().close()

    monkeypatch.setattr(twinloop, "make", lambda env_id, **kw: Faulty(real_make(env_id, **kw)))
    assert main(["run", ID, "--controller", "random", "--episodes", "1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "twinloop: error: link lost: no heartbeat for 3 s" in err
    assert "Traceback" not in err
    assert closed == [True]
