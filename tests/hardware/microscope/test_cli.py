"""``twinloop serve microscope``: where its secret comes from, and a served twin's bounds.

Issue 13: ``--token`` is visible to every local user in the process list; 54 idle connections
locked a client out of the twin at 100 % CPU, and 100 unread acquires grew it by 400 MiB.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from typing import Any

import pytest

zmq = pytest.importorskip("zmq", reason="the 'microscope' extra (pyzmq, msgpack) is needed")
pytest.importorskip("msgpack", reason="the 'microscope' extra is needed")
pytest.importorskip("hypothesis", reason="the 'test' extra (hypothesis) is needed")

from tests.hardware.microscope.helpers import TOKEN, client, greedy_peer  # noqa: E402
from twinloop.hardware.microscope import cli  # noqa: E402
from twinloop.hardware.microscope.server import MicroscopeServer  # noqa: E402


def test_serve_takes_its_token_from_a_file_or_the_environment(monkeypatch, tmp_path) -> None:
    """Secrets: ``--token-file`` and ``$TWINLOOP_TOKEN`` keep the token out of the process list."""
    seen: list[tuple[str | None, int, float]] = []

    def serve_forever(self: MicroscopeServer) -> None:
        limits = self.net.limits
        seen.append((self.token, limits.max_connections, limits.idle_timeout_s))
        self.stop()

    monkeypatch.setattr(MicroscopeServer, "serve_forever", serve_forever)
    monkeypatch.setattr(MicroscopeServer, "warm_up", lambda self: None)
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    token_help = next(a.help for a in parser._actions if a.dest == "token")
    assert "process list" in token_help and "TWINLOOP_TOKEN" in token_help
    secret = tmp_path / "token"
    secret.write_text(TOKEN + "\nignored\n", encoding="utf-8")
    monkeypatch.delenv("TWINLOOP_TOKEN", raising=False)
    assert cli.main(parser.parse_args(["--port", "0", "--token-file", str(secret)])) == 0
    monkeypatch.setenv("TWINLOOP_TOKEN", "from-env")
    assert cli.main(parser.parse_args(["--port", "0"])) == 0
    bounds = ["--max-connections", "3", "--idle-timeout-s", "7"]
    assert cli.main(parser.parse_args(["--port", "0", "--token", "on-cmdline", *bounds])) == 0
    assert seen == [(TOKEN, 16, 300.0), ("from-env", 16, 300.0), ("on-cmdline", 3, 7.0)]
    both = ["--port", "0", "--token", "a", "--token-file", str(secret)]
    assert cli.main(parser.parse_args(both)) == 2
    assert cli.main(parser.parse_args(["--port", "0", "--token-file", str(tmp_path)])) == 2


def _proc_status(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_served_twin_with_few_descriptors_stays_responsive_idle_and_small(tmp_path) -> None:
    """Contract 6 in a ``twinloop serve microscope`` process with 64 file descriptors.

    130 idle connections, a peer that never reads its 4 MiB frames; a client gets in at once,
    the twin idles and does not grow.
    """
    secret = tmp_path / "token"
    secret.write_text(TOKEN + "\n", encoding="utf-8")
    argv = ["twinloop", "serve", "microscope", "--port", "0", "--token-file", str(secret)]
    argv += ["--set", "frame_pixels=64"]
    limited = (
        "import resource, runpy, sys; "
        "resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64)); "
        f"sys.argv = {argv!r}; "
        "runpy.run_module('twinloop.cli', run_name='__main__')"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", limited],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    held: list[Any] = []
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "listening on" in line, line
        address = line.split()[-1]
        port = int(address.rsplit(":", 1)[1])
        client(address).close()
        rss0 = _proc_status(proc.pid, "VmRSS")
        held.append(greedy_peer(port, 100))  # 100 acquires of 4 MiB frames, never read
        held += [socket.create_connection(("127.0.0.1", port)) for _ in range(100)]
        for _ in range(30):
            s = zmq.Context.instance().socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            s.connect(address)
            held.append(s)
        time.sleep(1.0)
        cpu0, t0 = _cpu_s(proc.pid), time.monotonic()
        time.sleep(1.5)
        busy = (_cpu_s(proc.pid) - cpu0) / (time.monotonic() - t0)
        t1 = time.monotonic()
        mic = client(address)
        try:
            assert mic.request("ping")["clock_s"] >= 0
        finally:
            mic.close()
        assert time.monotonic() - t1 < 3.0
        assert busy < 0.5, f"the twin used {busy:.0%} of a core while its peers were idle"
        grown = _proc_status(proc.pid, "VmHWM") - rss0
        assert grown < 64 * 2**20, f"the twin grew by {grown / 2**20:.0f} MiB"
        assert proc.poll() is None
    finally:
        for s in held:
            s.close() if isinstance(s, socket.socket) else s.close(linger=0)
        proc.terminate()
        proc.wait(timeout=10)
