"""``twinloop serve robot``: its options, and a served twin killed or stalled under a client."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mujoco", reason="the 'locomotion' extra is needed")
pytest.importorskip("zmq", reason="the 'microscope' extra (pyzmq, msgpack) is needed")

import twinloop
from tests.hardware.robot.helpers import ID, NO_HIDDEN, TOKEN
from twinloop.core.backend import BackendFault
from twinloop.hardware.robot import cli
from twinloop.hardware.robot.server import RobotServer


def test_serve_reads_its_token_and_link_options(monkeypatch, tmp_path) -> None:
    seen: list[tuple] = []

    def serve_forever(self: RobotServer) -> None:
        r = self.robot
        seen.append((self.token, self.latency_s, self.loss, r.hidden_seed, r.cfg.latency))
        self.stop()

    monkeypatch.setattr(RobotServer, "serve_forever", serve_forever)
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    secret = tmp_path / "token"
    secret.write_text(TOKEN + "\n", encoding="utf-8")
    monkeypatch.delenv("TWINLOOP_TOKEN", raising=False)
    args = ["--port", "0", "--token-file", str(secret), "--latency-s", "0.01", "--loss", "0.1"]
    assert cli.main(parser.parse_args([*args, "--hidden-seed", "7"])) == 0
    monkeypatch.setenv("TWINLOOP_TOKEN", "from-env")
    assert cli.main(parser.parse_args(["--port", "0", "--no-hidden-effects"])) == 0
    (a, b) = seen
    assert a[:4] == (TOKEN, 0.01, 0.1, 7) and a[4].action_enabled
    assert b[:4] == ("from-env", 0.0, 0.0, None) and not b[4].action_enabled
    assert cli.main(parser.parse_args(["--port", "0", "--loss", "1.5"])) == 2
    assert cli.main(parser.parse_args(["--port", "0", "--set", "nope=1"])) == 2


def _serve(tmp_path: Path) -> tuple[subprocess.Popen, str]:
    secret = tmp_path / "token"
    secret.write_text(TOKEN, encoding="utf-8")
    cmd = [str(Path(sys.executable).with_name("twinloop")), "serve", "robot", "--port", "0"]
    cmd += ["--no-hidden-effects", "--token-file", str(secret)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()  # the twin prints it once it is warm
    assert line.startswith("robot twin listening on tcp://127.0.0.1:"), line
    return proc, line.split()[-1]


def test_a_served_twin_stalled_then_killed_ends_each_step_with_one_line(tmp_path) -> None:
    proc, address = _serve(tmp_path)
    env = twinloop.make(
        ID, backend="robot", address=address, token=TOKEN, timeout_s=0.3, retries=1, **NO_HIDDEN
    )
    try:
        env.reset(seed=1)
        env.step(np.zeros(12, np.float32))
        os.kill(proc.pid, signal.SIGSTOP)  # stalled
        t0 = time.monotonic()
        with pytest.raises(BackendFault, match="did not answer 'command'") as info:
            env.step(np.zeros(12, np.float32))
        assert time.monotonic() - t0 < 2.0 and "\n" not in str(info.value)
        os.kill(proc.pid, signal.SIGCONT)
        env.reset(seed=2)  # the link comes back by itself
        env.step(np.zeros(12, np.float32))
        proc.kill()  # killed
        proc.wait(5)
        t0 = time.monotonic()
        with pytest.raises(BackendFault, match="did not answer 'command'"):
            env.step(np.zeros(12, np.float32))
        assert time.monotonic() - t0 < 2.0
    finally:
        t0 = time.monotonic()
        env.close()
        assert time.monotonic() - t0 < 1.5
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.terminate()
            proc.wait(5)
