"""Link latency is per reply, per connection: one peer's delay never stalls another's (point 14).

With latency L, requests of two peers sent together are both answered after about L (not
2L); no reply leaves before L; a connection with a held reply is not read until the reply
has gone (one request, one reply); and a state reader does not slow the controller.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import msgpack
import pytest

pytest.importorskip("mujoco", reason="the 'locomotion' extra is needed")
zmq = pytest.importorskip("zmq", reason="the 'microscope' extra (pyzmq, msgpack) is needed")

from tests.hardware.robot.helpers import client, hold, pack, request, twin  # noqa: E402
from twinloop.hardware.robot.server import RobotServer  # noqa: E402


def _dealer(address: str) -> Any:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 3000)
    sock.connect(address)
    return sock


def _replies(socks: list[Any], n: int, t0: float) -> list[tuple[int, int, float]]:
    """``n`` replies from any of ``socks``: (socket index, request id, seconds since t0)."""
    poller = zmq.Poller()
    for s in socks:
        poller.register(s, zmq.POLLIN)
    got: list[tuple[int, int, float]] = []
    deadline = time.monotonic() + 3.0
    while len(got) < n and time.monotonic() < deadline:
        for sock, _ in poller.poll(100):
            parts = sock.recv_multipart()
            got.append((socks.index(sock), msgpack.unpackb(parts[1])["id"], time.perf_counter()))
    assert len(got) == n, got
    return [(i, rid, t - t0) for i, rid, t in got]


def _ready(socks: list[Any]) -> None:
    """Each socket has finished its handshake (one ping answered), so no setup is timed."""
    for k, s in enumerate(socks):
        s.send_multipart([b"", pack(request("ping", rid=k))])
    _replies(socks, len(socks), time.perf_counter())


def test_two_peers_sent_together_are_both_answered_after_one_latency() -> None:
    latency = 0.2
    with twin(latency_s=latency) as server:
        socks = [_dealer(server.address) for _ in range(3)]
        try:
            _ready(socks)
            t0 = time.perf_counter()
            for k, s in enumerate(socks):
                s.send_multipart([b"", pack(request("state" if k else "ping", rid=10 + k))])
            got = _replies(socks, 3, t0)
            # serialised, the last would come after 3L; per connection all come after ~L
            assert all(t >= latency for _, _, t in got), got
            assert max(t for _, _, t in got) < 1.5 * latency, got
            assert sorted(rid for _, rid, _ in got) == [10, 11, 12]
        finally:
            for s in socks:
                s.close(linger=0)


def test_a_held_reply_holds_only_its_own_connection() -> None:
    latency = 0.15
    with twin(latency_s=latency) as server:
        pipelined, other = _dealer(server.address), _dealer(server.address)
        try:
            _ready([pipelined, other])
            t0 = time.perf_counter()
            for rid in (1, 2):  # two requests at once on one connection
                pipelined.send_multipart([b"", pack(request("ping", rid=rid))])
            time.sleep(0.5 * latency)
            assert server.net.held_replies == 1  # the second request was not read yet
            other.send_multipart([b"", pack(request("ping", rid=3))])
            got = {rid: (i, t) for i, rid, t in _replies([pipelined, other], 3, t0)}
            # one request, one reply per connection: the second waits for the first reply
            assert latency <= got[1][1] < got[2][1] and got[2][1] >= 2 * latency
            # the other connection is answered one latency after it asked, not after both
            assert 1.5 * latency <= got[3][1] < got[2][1]
            deadline = time.monotonic() + 1.0  # the twin's thread may still be finishing a send
            while server.net.held_bytes() and time.monotonic() < deadline:
                time.sleep(0.01)
            assert server.net.held_replies == 0 and server.net.held_bytes() == 0
        finally:
            pipelined.close(linger=0)
            other.close(linger=0)


def test_a_state_reader_does_not_slow_the_controller() -> None:
    latency = 0.05
    with twin(latency_s=latency, watchdog_s=2.0) as server:
        owner, reader = client(server.address), client(server.address)
        stop = threading.Event()
        reads = [0]

        def read() -> None:
            while not stop.is_set():
                reader.state()
                reads[0] += 1

        thread = threading.Thread(target=read, daemon=True)
        try:
            owner.reset(1)
            thread.start()
            times = []
            for k in range(1, 11):
                t0 = time.perf_counter()
                owner.command(**hold(k))
                times.append(time.perf_counter() - t0)
            stop.set()
            thread.join(2.0)
            assert reads[0] >= 5  # the reader kept asking all along
            assert min(times) >= latency  # never earlier than the latency
            # serialised, each command would also wait for a reader's reply (~2L)
            assert sum(times) / len(times) < 1.5 * latency, times
            assert server.robot.physics.steps == 10  # lock-stepped: one period per command
        finally:
            stop.set()
            reader.close()
            owner.close()


def test_latency_must_stay_below_the_lease() -> None:
    from tests.hardware.robot.helpers import plant_config
    from twinloop.hardware.robot.fake import SimRobot

    with pytest.raises(ValueError, match=r"latency_s \+ jitter_s = 0\.6 s must be below"):
        RobotServer(SimRobot(plant_config()), port=0, watchdog_s=0.5, latency_s=0.4, jitter_s=0.2)
