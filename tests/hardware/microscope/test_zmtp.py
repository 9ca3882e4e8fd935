"""The twins' ZMTP server (contracts 1 and 6 of ``hardware/microscope/protocol.py``), alone.

:class:`~twinloop.hardware.zmtp.ZmtpServer` serves an echo handler here, so that
the transport's promises are checked without a microscope: hypothesis writes ZMTP streams
from its grammar (handshakes of every kind, messages of many frames, PINGs, frames over a
bound, invalid flags, unknown commands, garbage), cuts them into pieces sent slowly, and the
server must answer every whole message in order, close the connection at the first violation
(and only then), hold no more than its bound, and keep serving everyone else.
"""

from __future__ import annotations

import itertools
import socket
import threading
import time
from typing import Any

import pytest

pytest.importorskip("msgpack", reason="the 'microscope' extra (pyzmq, msgpack) is needed")
zmq = pytest.importorskip("zmq", reason="the 'microscope' extra is needed")
pytest.importorskip("hypothesis", reason="the 'test' extra (hypothesis) is needed")

from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tests.hardware.microscope.helpers import (  # noqa: E402
    GREETING,
    campaign,
    examples,
    read_frame,
    ready,
    recv_exact,
    zmtp_frame,
    zmtp_message,
    zmtp_peer,
)
from twinloop.hardware.zmtp import RECV_CHUNK, PeerLimits, ZmtpServer  # noqa: E402

LIMITS = PeerLimits(
    max_message_bytes=1024,
    max_frames=4,
    max_connections=8,
    idle_timeout_s=30.0,
    handshake_timeout_s=5.0,
    send_timeout_s=5.0,
)
#: What the server may hold for all its peers at once (the bound of ``zmtp``'s docstring).
HELD_BOUND = LIMITS.max_connections * (
    (LIMITS.max_message_bytes + 64) + 2 * LIMITS.max_message_bytes + RECV_CHUNK
)


class Echo:
    """A handler that answers ``[*frames, b"echo"]``; a request ending in ``ok`` is accepted.

    A request whose last frame is ``slow`` holds the server until :attr:`go` is set.
    """

    def __init__(self) -> None:
        """Nothing seen yet."""
        self.calls = 0
        self.refused: list[str] = []
        self.slow_started = threading.Event()
        self.go = threading.Event()

    def __call__(self, frames: list[bytes]) -> tuple[list[bytes], bool]:
        """Echo the frames."""
        self.calls += 1
        if frames[-1] == b"slow":
            self.slow_started.set()
            self.go.wait(5.0)
        return [*frames, b"echo"], frames[-1].endswith(b"ok")


class Served:
    """A ZmtpServer serving an :class:`Echo` in a thread."""

    def __init__(self, limits: PeerLimits = LIMITS) -> None:
        """Bind and serve."""
        self.net = ZmtpServer("127.0.0.1", 0, limits)
        self.echo = Echo()
        self.stop = threading.Event()
        self.thread = threading.Thread(
            target=self.net.serve,
            args=(self.echo, lambda now: None, self.stop),
            kwargs={"refused": self.echo.refused.append},
            daemon=True,
        )
        self.thread.start()

    def close(self) -> None:
        """Stop serving."""
        self.stop.set()
        self.thread.join(5.0)
        assert not self.thread.is_alive()


@pytest.fixture(scope="module")
def served():
    server = Served()
    yield server
    server.close()


@pytest.fixture
def fresh(request):
    limits = PeerLimits(**{**LIMITS.__dict__, **getattr(request, "param", {})})
    server = Served(limits)
    yield server
    server.close()


def _echo_round_trip(port: int, payload: bytes = b"hello") -> None:
    """A well-formed peer is answered at once."""
    s = zmtp_peer(port)
    try:
        s.sendall(zmtp_message([b"", payload]))
        assert _read_events(s, 1) == ([("msg", [b"", payload, b"echo"])], False)
    finally:
        s.close()


def _read_events(s: socket.socket, n: int) -> tuple[list[tuple[Any, ...]], bool]:
    """Up to ``n`` events (``("ready",)``, ``("pong", context)``, ``("msg", frames)``).

    Returns them and whether the connection closed before ``n`` came.
    """
    events: list[tuple[Any, ...]] = []
    frames: list[bytes] = []
    while len(events) < n:
        frame = read_frame(s)
        if frame is None:
            return events, True
        flags, body = frame
        if flags & 0x04:
            name = body[1 : 1 + body[0]]
            events.append(("ready",) if name == b"READY" else (name.decode().lower(), body[5:]))
            continue
        frames.append(body)
        if not flags & 0x01:
            events.append(("msg", frames))
            frames = []
    return events, False


# the grammar of a peer's stream -----------------------------------------------------------------
HANDSHAKES = {
    "DEALER": (GREETING + ready(b"DEALER"), True, True),  # bytes, server says READY, valid
    "REQ": (GREETING + ready(b"REQ"), True, True),
    "PUB": (GREETING + ready(b"PUB"), True, False),
    "ROUTER": (GREETING + ready(b"ROUTER"), True, False),
    "PLAIN": (GREETING[:12] + b"PLAIN".ljust(20, b"\x00") + GREETING[32:], False, False),
    "ZMTP 2": (GREETING[:10] + b"\x02" + GREETING[11:], False, False),
    "PING first": (GREETING + zmtp_frame(b"\x04PING\x00\x10", command=True), True, False),
    "a message first": (GREETING + zmtp_frame(b"hi"), True, False),
    "READY malformed": (GREETING + zmtp_frame(b"\x05READY\x0bSocket", command=True), True, False),
}

UNITS = st.one_of(
    st.tuples(st.just("msg"), st.lists(st.binary(max_size=300), min_size=1, max_size=6)),
    st.tuples(st.just("ping"), st.binary(max_size=16)),
    st.tuples(st.just("pong")),
    st.tuples(st.just("huge"), st.integers(LIMITS.max_message_bytes + 1, 2**64 - 1)),
    st.tuples(st.just("flags"), st.sampled_from([0x05, 0x06 | 0x08, 0x10, 0x80, 0xFF])),
    st.tuples(st.just("command"), st.sampled_from([b"READY", b"ERROR", b"SUBSCRIBE", b"X"])),
    st.tuples(st.just("garbage"), st.binary(min_size=1, max_size=200)),
)


def _unit(unit: tuple[Any, ...]) -> tuple[bytes, tuple[Any, ...] | None, bool]:
    """A unit's bytes, the event it must cause (None: none), and whether it breaks ZMTP."""
    kind = unit[0]
    if kind == "msg":
        frames = unit[1]
        over = sum(map(len, frames)) > LIMITS.max_message_bytes
        over = over or len(frames) > LIMITS.max_frames
        return zmtp_message(frames), None if over else ("msg", [*frames, b"echo"]), over
    if kind == "ping":
        body = b"\x04PING" + b"\x00\x10" + unit[1]
        return zmtp_frame(body, command=True), ("pong", unit[1]), False
    if kind == "pong":
        return zmtp_frame(b"\x04PONG", command=True), None, False
    if kind == "huge":  # a long frame announcing more than a request may hold
        return b"\x02" + unit[1].to_bytes(8, "big"), None, True
    if kind == "flags":
        return bytes([unit[1], 0]), None, True
    if kind == "command":
        return zmtp_frame(bytes([len(unit[1])]) + unit[1], command=True), None, True
    return unit[1], None, False  # garbage: what it means is not modelled


def _send_slowly(s: socket.socket, data: bytes, cuts: list[int], pause_s: float) -> None:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    try:
        for a, b in itertools.pairwise(points):
            s.sendall(data[a:b])
            if pause_s:
                time.sleep(pause_s)
    except OSError:  # the server closed the connection: expected after a violation
        pass


def _check_stream(
    served: Served, handshake: str, units: list[tuple[Any, ...]], cuts: list[int], slow: bool
) -> None:
    """Send one stream and check what comes back against the grammar's model."""
    data, server_ready, valid = HANDSHAKES[handshake]
    expected: list[tuple[Any, ...]] = [("ready",)] if server_ready else []
    breaks, known = not valid, True
    if valid:
        for unit in units:
            raw, event, violation = _unit(unit)
            data += raw
            if unit[0] == "garbage":  # its meaning is not modelled: the stream ends with it
                known = False
                break
            if event is not None:
                expected.append(event)
            if violation:
                breaks = True
                break
    refused_before = len(served.echo.refused)
    s = socket.create_connection(("127.0.0.1", served.net.port), timeout=3.0)
    try:
        assert recv_exact(s, 64)[:1] == b"\xff"  # the server's greeting, sent at once
        _send_slowly(s, data, cuts, 0.001 if slow else 0.0)
        # everything before a violation or garbage is answered, in order
        events, closed = _read_events(s, len(expected))
        assert events == expected, (events, expected)
        if breaks:  # closed at the violation, after answering everything before it
            assert read_frame(s) is None
            deadline = time.monotonic() + 2.0
            while len(served.echo.refused) == refused_before and time.monotonic() < deadline:
                time.sleep(0.01)
            assert len(served.echo.refused) == refused_before + 1
        elif known:
            assert not closed
    finally:
        s.close()
    assert served.thread.is_alive()
    assert served.net.held_bytes() <= HELD_BOUND
    _echo_round_trip(served.net.port)


STREAMS = (
    st.sampled_from(sorted(HANDSHAKES)),
    st.lists(UNITS, max_size=8),
    st.lists(st.integers(0, 10_000), max_size=6),
    st.booleans(),
)


@examples(40)
@given(*STREAMS)
def test_streams_from_the_grammar_are_answered_in_order_or_closed_at_the_violation(
    served, handshake, units, cuts, slow
) -> None:
    """Contracts 1, 6: every whole message answered in order; a violation closes, only it."""
    _check_stream(served, handshake, units, cuts, slow)


@pytest.mark.slow
@campaign(1500)
@given(*STREAMS)
def test_streams_from_the_grammar_campaign(served, handshake, units, cuts, slow) -> None:
    _check_stream(served, handshake, units, cuts, slow)


# bounds and timing, one at a time ---------------------------------------------------------------
def test_pipelined_requests_wait_for_no_poll(served) -> None:
    """A request already read is answered in the same round, not after the next poll."""
    s = zmtp_peer(served.net.port)
    try:
        t0 = time.monotonic()
        s.sendall(b"".join(zmtp_message([b"", b"%d" % k]) for k in range(50)))
        events, closed = _read_events(s, 50)
        elapsed = time.monotonic() - t0
    finally:
        s.close()
    assert not closed and [e[1][1] for e in events] == [b"%d" % k for k in range(50)]
    assert elapsed < 1.0, f"50 pipelined requests took {elapsed:.2f} s"


@pytest.mark.parametrize("fresh", [{"idle_timeout_s": 0.3}], indirect=True)
def test_a_request_that_has_arrived_is_answered_not_lost_to_the_idle_timeout(fresh) -> None:
    """Contract 1 against the idle timeout: an idle peer's request that arrived is answered.

    Another peer's request holds the server while the idle peer's request arrives and its
    idle time runs out; the server must read it, not close the connection under it.
    """
    idle = zmtp_peer(fresh.net.port)
    busy = zmtp_peer(fresh.net.port)
    try:
        time.sleep(0.15)
        busy.sendall(zmtp_message([b"", b"slow"]))
        assert fresh.echo.slow_started.wait(2.0)
        idle.sendall(zmtp_message([b"", b"late"]))
        time.sleep(0.3)  # past the idle timeout, with the request in the kernel's buffer
        fresh.echo.go.set()
        assert _read_events(busy, 1) == ([("msg", [b"", b"slow", b"echo"])], False)
        assert _read_events(idle, 1) == ([("msg", [b"", b"late", b"echo"])], False)
        assert read_frame(idle) is None  # and then closed, as it was idle
    finally:
        idle.close()
        busy.close()


@pytest.mark.parametrize(
    "fresh", [{"max_connections": 4, "handshake_timeout_s": 30.0}], indirect=True
)
def test_a_flood_of_connections_does_not_evict_a_client_that_has_shaken_hands(fresh) -> None:
    """Contract 6: 30 silent and 30 garbage connections at a cap of 4; the client keeps its own.

    The client has finished its handshake but made no accepted request yet (the state of a
    client between connecting and its first answer).
    """
    client = zmtp_peer(fresh.net.port)
    flood: list[socket.socket] = []
    try:
        for k in range(60):
            s = socket.create_connection(("127.0.0.1", fresh.net.port))
            if k % 2:
                s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            flood.append(s)
        time.sleep(0.3)
        client.sendall(zmtp_message([b"", b"still here"]))
        assert _read_events(client, 1) == ([("msg", [b"", b"still here", b"echo"])], False)
        assert fresh.net.connections <= 4
        assert fresh.net.evictions >= 20
    finally:
        client.close()
        for s in flood:
            s.close()


@pytest.mark.parametrize(
    ("frames", "why"),
    [
        ([b"x" * 1025], "one frame over the bound"),
        ([b"x" * 600, b"y" * 600], "frames that together are over the bound"),
        ([b""] * 5, "more frames than the bound"),
    ],
)
def test_a_message_over_a_bound_closes_its_connection_unanswered(served, frames, why) -> None:
    """Contract 1: over a bound is refused before it is read: the connection closes."""
    s = zmtp_peer(served.net.port)
    calls = served.echo.calls
    try:
        s.sendall(zmtp_message([b"", b"first"]) + zmtp_message(frames))
        assert _read_events(s, 2) == ([("msg", [b"", b"first", b"echo"])], True), why
    finally:
        s.close()
    assert served.echo.calls == calls + 1
    _echo_round_trip(served.net.port)


def test_a_zeromq_dealer_and_req_are_served() -> None:
    """Stock ZeroMQ sockets talk to the server unchanged (the point of speaking ZMTP)."""
    server = Served()
    try:
        cases = (
            (zmq.REQ, [b"req"], [b"req", b"echo"]),  # a REQ socket takes the delimiter off
            (zmq.DEALER, [b"", b"dealer"], [b"", b"dealer", b"echo"]),
        )
        for kind, frames, expected in cases:
            sock = zmq.Context.instance().socket(kind)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RCVTIMEO, 2000)
            sock.connect(f"tcp://127.0.0.1:{server.net.port}")
            try:
                sock.send_multipart(frames)
                reply = sock.recv_multipart()
            finally:
                sock.close(linger=0)
            assert reply == expected
    finally:
        server.close()
