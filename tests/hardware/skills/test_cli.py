"""``twinloop serve skills``: its options, and a served twin stalled then killed under a client."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("zmq", reason="the 'microscope' extra (pyzmq, msgpack) is needed")

import twinloop
from tests.hardware.skills.helpers import ID, TOKEN
from twinloop.core.backend import BackendFault
from twinloop.hardware.skills import cli
from twinloop.hardware.skills.server import SkillsServer


def test_serve_reads_its_token_rates_and_link_options(monkeypatch, tmp_path) -> None:
    seen: list[tuple] = []

    def serve_forever(self: SkillsServer) -> None:
        r = self.robot
        seen.append(
            (self.token, self.latency_s, r.hidden_seed, r.failure_rates, r.perception_error,
             r.cfg.task.split)
        )  # fmt: skip
        self.stop()

    monkeypatch.setattr(SkillsServer, "serve_forever", serve_forever)
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    secret = tmp_path / "token"
    secret.write_text(TOKEN + "\n", encoding="utf-8")
    monkeypatch.delenv("TWINLOOP_TOKEN", raising=False)
    args = ["--port", "0", "--token-file", str(secret), "--latency-s", "0.01"]
    args += ["--failure-rate", "all=0.1", "--failure-rate", "pick=0.3", "--perception-error", "0.2"]
    assert cli.main(parser.parse_args([*args, "--hidden-seed", "7"])) == 0
    monkeypatch.setenv("TWINLOOP_TOKEN", "from-env")
    assert cli.main(parser.parse_args(["--port", "0", "--set", "task.split=novel_objects"])) == 0
    (a, b) = seen
    assert a[:3] == (TOKEN, 0.01, 7) and a[4] == 0.2
    assert a[3] == {"nav": 0.1, "pick": 0.3, "place": 0.1, "open": 0.1, "close": 0.1, "noop": 0.1}
    assert b[0] == "from-env" and set(b[3].values()) == {0.0} and b[5] == "novel_objects"
    for bad in (
        ["--failure-rate", "pick"],
        ["--failure-rate", "jump=0.1"],
        ["--failure-rate", "pick=2"],
        ["--perception-error", "-1"],
        ["--set", "nope=1"],
    ):
        assert cli.main(parser.parse_args(["--port", "0", *bad])) == 2, bad


def test_serve_skills_is_a_registered_device() -> None:
    from twinloop.cli import SERVE_DEVICES

    assert SERVE_DEVICES["skills"] == "twinloop.hardware.skills.cli"
    spec = next(b for b in twinloop.registry[ID].backends if b.name == "skills")
    assert spec.address("127.0.0.1", 5557) == "tcp://127.0.0.1:5557"


def _serve(tmp_path: Path) -> tuple[subprocess.Popen, str]:
    secret = tmp_path / "token"
    secret.write_text(TOKEN, encoding="utf-8")
    cmd = [str(Path(sys.executable).with_name("twinloop")), "serve", "skills", "--port", "0"]
    cmd += ["--token-file", str(secret)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()  # the twin prints it once it is warm
    assert line.startswith("skills twin listening on tcp://127.0.0.1:"), line
    return proc, line.split()[-1]


def test_a_served_twin_stalled_then_killed_ends_each_step_with_one_line(tmp_path) -> None:
    proc, address = _serve(tmp_path)
    env = twinloop.make(
        ID, backend="skills", address=address, token=TOKEN, timeout_s=0.3, retries=1
    )
    try:
        env.reset(seed=1)
        env.step(0)
        os.kill(proc.pid, signal.SIGSTOP)  # stalled
        t0 = time.monotonic()
        with pytest.raises(BackendFault, match="did not answer 'execute'") as info:
            env.step(70)
        assert time.monotonic() - t0 < 2.0 and "\n" not in str(info.value)
        os.kill(proc.pid, signal.SIGCONT)
        env.reset(seed=2)  # the link comes back by itself
        env.step(70)
        proc.kill()  # killed
        proc.wait(5)
        t0 = time.monotonic()
        with pytest.raises(BackendFault, match="did not answer 'execute'"):
            env.step(70)
        assert time.monotonic() - t0 < 2.0
    finally:
        t0 = time.monotonic()
        env.close()
        assert time.monotonic() - t0 < 1.5
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.terminate()
            proc.wait(5)
