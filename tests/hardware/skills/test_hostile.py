"""The skills twin under hostile input: it stays up, answers, and is stopped after every refusal.

Property-based (hypothesis, derandomized, small by default; a longer random campaign is marked
``slow``): any msgpack value, valid requests with one field broken, random frames; before each
example a well-behaved controller makes the robot ready, so that "stopped after the refusal"
is a real check, not the idle state.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

zmq = pytest.importorskip("zmq", reason="the 'microscope' extra (pyzmq, msgpack) is needed")
pytest.importorskip("hypothesis", reason="the 'test' extra (hypothesis) is needed")

import msgpack  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tests.hardware.skills.helpers import (  # noqa: E402
    LOGGERS,
    client,
    execute_args,
    pack,
    request,
    twin,
    well_formed_client_is_served,
)
from twinloop.hardware.skills.protocol import OPERATIONS, REFUSALS  # noqa: E402
from twinloop.hardware.skills.server import SkillsServer  # noqa: E402

MAX_ID = 2**63 - 1


def _settings(n: int, derandomize: bool = True) -> Any:
    return settings(
        max_examples=n,
        deadline=None,
        derandomize=derandomize,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )


@pytest.fixture(scope="module")
def served() -> Iterator[SkillsServer]:
    """One twin for the module (a refusal must leave it serving the next example)."""
    with twin() as server:
        yield server


class Harness:
    """A controller that makes the robot ready, and a DEALER peer that sends what it is given."""

    def __init__(self, server: SkillsServer) -> None:
        """Connect both to ``server``."""
        self.server = server
        self.ctl = client(server.address)
        self.seq = 0
        self.peer = zmq.Context.instance().socket(zmq.DEALER)
        self.peer.setsockopt(zmq.LINGER, 0)
        self.peer.setsockopt(zmq.RCVTIMEO, 3000)
        self.peer.connect(server.address)

    def activate(self) -> None:
        """A new episode and one accepted skill: the robot is ready."""
        self.ctl.reset("train", 0, seed=0)
        self.ctl.execute(1, "nav", "sofa")
        assert self.server.robot.mode == "ready"

    def send(self, frames: list[bytes]) -> Any:
        """Send ``[empty, *frames]``; the one reply map (fails if none comes within 3 s)."""
        self.peer.send_multipart([b"", *frames])
        parts = self.peer.recv_multipart()
        assert parts[0] == b"" and len(parts) == 2, parts
        return msgpack.unpackb(parts[1], raw=False)

    def close(self) -> None:
        """Close both."""
        self.peer.close(linger=0)
        self.ctl.close()


@pytest.fixture
def harness(served: SkillsServer) -> Iterator[Harness]:
    h = Harness(served)
    yield h
    h.close()


def _readable_id(msg: Any) -> int | None:
    rid = msg.get("id") if isinstance(msg, dict) else None
    ok = isinstance(rid, int) and not isinstance(rid, bool) and 0 <= rid <= MAX_ID
    return rid if ok else None


def _check_reply(h: Harness, msg: Any, reply: Any) -> None:
    assert isinstance(reply, dict) and reply["v"] == 2
    if reply["ok"]:
        return
    assert reply["error"]["type"] in REFUSALS, reply  # never "internal" for client input
    if _readable_id(msg) is not None:
        assert reply["id"] == msg["id"]
    assert h.server.robot.mode == "stopped", reply


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.sampled_from(["nav", "pick", "sofa", "apple", "", "train", "noop"]),
    st.binary(max_size=8),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=20,
)


@st.composite
def broken_requests(draw: st.DrawFn) -> dict[str, Any]:
    """A valid request of any operation with one field replaced, removed or added."""
    op = draw(st.sampled_from(sorted(OPERATIONS)))
    args = {
        "execute": execute_args(2, "pick", "apple", 64),
        "reset": {"split": "train", "episode": 1, "seed": 1},
    }.get(op, {})
    msg: dict[str, Any] = request(op, rid=draw(st.integers(0, MAX_ID)), **args)
    if draw(st.booleans()):
        key = draw(st.sampled_from(["v", "id", "op", "args", "token", "extra"]))
        if draw(st.booleans()) and key in msg:
            del msg[key]
        else:
            msg[key] = draw(values)
    else:
        msg["args"][draw(st.sampled_from([*args, "x"]))] = draw(values)
    return msg


@_settings(40)
@given(msg=st.one_of(values, broken_requests()))
def test_random_and_broken_requests_are_answered_and_leave_the_robot_stopped(
    harness: Harness, msg: Any
) -> None:
    harness.activate()
    reply = harness.send([pack(msg)])
    _check_reply(harness, msg, reply)


@_settings(20)
@given(frames=st.lists(st.binary(max_size=64), min_size=0, max_size=4))
def test_random_frames_are_refused_and_stop(harness: Harness, frames: list[bytes]) -> None:
    harness.activate()
    if len(frames) == 1:
        frames = [frames[0], b"extra"]  # one frame may be a valid request; two never are
    reply = harness.send(frames)
    assert reply["ok"] is False and reply["error"]["type"] == "bad_request"
    assert harness.server.robot.mode == "stopped"


def test_after_the_campaign_a_well_formed_client_is_served(
    served: SkillsServer, caplog: pytest.LogCaptureFixture
) -> None:
    h = Harness(served)
    try:
        h.activate()
        time.sleep(1.05)  # the campaign may have spent this second's quota of log lines
        n = len([r for r in caplog.records if r.name in LOGGERS])
        for bad in (b"\xc1", pack(request(token="wrong")), pack({"v": 1, "id": [1]})):
            reply = h.send([bad])
            assert reply["ok"] is False
        assert served.robot.mode == "stopped"
        lines = [r.getMessage() for r in caplog.records if r.name in LOGGERS][n:]
        refusals = [line for line in lines if line.startswith("refused request")]
        assert len(refusals) == 3, lines  # one line per refusal
    finally:
        h.close()
    well_formed_client_is_served(served.address)
    for record in caplog.records:
        assert record.name not in LOGGERS or not record.exc_info  # one line, no traceback


def test_bytes_that_are_not_zmtp_close_the_connection_and_stop(served: SkillsServer) -> None:
    h = Harness(served)
    try:
        h.activate()
        with socket.create_connection(("127.0.0.1", served.port), timeout=3) as s:
            s.sendall(b"GET / HTTP/1.1\r\n\r\n" + bytes(200))
            deadline = time.monotonic() + 3
            while served.robot.mode != "stopped" and time.monotonic() < deadline:
                time.sleep(0.01)
        assert served.robot.mode == "stopped"
    finally:
        h.close()
    well_formed_client_is_served(served.address)


@pytest.mark.slow
@_settings(1000, derandomize=False)
@given(msg=st.one_of(values, broken_requests()))
def test_campaign_random_requests(harness: Harness, msg: Any) -> None:
    harness.activate()
    _check_reply(harness, msg, harness.send([pack(msg)]))
