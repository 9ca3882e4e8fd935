"""The README's two commands stay true: CI runs the README's test command verbatim."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Two commands for a fresh machine", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", section)


def test_readme_has_exactly_two_commands() -> None:
    cmds = _commands()
    assert len(cmds) == 2
    assert all(c.startswith("python3 -m venv .venv") for c in cmds)


def test_ci_runs_the_readme_test_command() -> None:
    ci_lines = [
        line
        for line in (ROOT / ".ci/run").read_text().splitlines()
        if line and not line.startswith("#") and not line.startswith(("set ", "cd "))
    ]
    assert ci_lines == [_commands()[1]]


def test_main_job_runs_a_registered_env_and_controller() -> None:
    import twinloop
    from twinloop.controllers import CONTROLLERS

    cmd = _commands()[0]
    env_id = re.search(r"twinloop (?:run|demo) (\S+)", cmd)
    if env_id:
        assert env_id.group(1) in twinloop.registry
    ctrl = re.search(r"--controller (\S+)", cmd)
    if ctrl:
        assert ctrl.group(1) in CONTROLLERS


def test_python_quickstart_runs() -> None:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Python quickstart", 1)[1].split("\n## ", 1)[0]
    code = re.findall(r"```python\n(.+?)\n```", section, flags=re.S)
    assert len(code) == 1
    namespace: dict = {}
    exec(
        compile(code[0].replace("n_envs=1024", "n_envs=8"), "README quickstart", "exec"), namespace
    )
    assert "reward" in namespace and "vec" in namespace


def test_command_table_is_generated_from_the_parser() -> None:
    from twinloop.cli import TABLE_BEGIN, TABLE_END, render_command_table

    text = (ROOT / "README.md").read_text()
    assert text.count(TABLE_BEGIN) == 1 and text.count(TABLE_END) == 1, (
        "README.md lost the marker lines around its command table"
    )
    table = text.split(TABLE_BEGIN + "\n", 1)[1].split("\n" + TABLE_END, 1)[0]
    assert table == render_command_table(), (
        "README.md's command table differs from the parser's help texts; regenerate it with "
        "`.venv/bin/twinloop --readme-table README.md` (or `python -m twinloop.cli "
        "--readme-table README.md`) and commit the result"
    )
