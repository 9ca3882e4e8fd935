"""The robot twin under hostile input: it stays up, answers, and is damped after every refusal.

Property-based (hypothesis, derandomized, small by default; a longer random campaign is marked
``slow``): any msgpack value, valid requests with one field broken, random frames; before each
example the robot is made active by a well-behaved controller, so that "damped after the
refusal" is a real check, not the idle state. The broken requests carry the controller's own
session (or a forged one): a refusal for ownership must leave the robot active (contract
point 11), every other refusal damps it.
"""

from __future__ import annotations

import math
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("mujoco", reason="the 'locomotion' extra is needed")
zmq = pytest.importorskip("zmq", reason="the 'microscope' extra (pyzmq, msgpack) is needed")
pytest.importorskip("hypothesis", reason="the 'test' extra (hypothesis) is needed")

import msgpack  # noqa: E402
from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tests.hardware.robot.helpers import (  # noqa: E402
    FORGED,
    LOGGERS,
    client,
    hold,
    pack,
    request,
    twin,
    well_formed_client_is_served,
)
from twinloop.hardware.robot.protocol import (  # noqa: E402
    OPERATIONS,
    OWNERSHIP_REFUSALS,
    PROTOCOL_VERSION,
    REFUSALS,
)
from twinloop.hardware.robot.server import RobotServer  # noqa: E402

MAX_ID = 2**63 - 1
#: Stands for the controller's session in a drawn request; :meth:`Harness.send` fills it in.
OWNER = "the-controllers-session"


def _settings(n: int, derandomize: bool = True) -> Any:
    return settings(
        max_examples=n,
        deadline=None,
        derandomize=derandomize,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )


@pytest.fixture(scope="module")
def served() -> Iterator[RobotServer]:
    """One twin for the module (a refusal must leave it serving the next example)."""
    with twin(watchdog_s=30.0) as server:
        yield server


class Harness:
    """A controller that makes the robot active, and a DEALER peer that sends what it is given."""

    def __init__(self, server: RobotServer) -> None:
        """Connect both to ``server``."""
        self.server = server
        self.ctl = client(server.address)
        self.peer = zmq.Context.instance().socket(zmq.DEALER)
        self.peer.setsockopt(zmq.LINGER, 0)
        self.peer.setsockopt(zmq.RCVTIMEO, 3000)
        self.peer.connect(server.address)

    def activate(self) -> None:
        """A new episode and one accepted command: the robot is active (PD engaged)."""
        self.ctl.acquire()  # again, if a drawn release ended its lease
        if self.server.robot.mode == "estop":
            self.ctl.clear_estop()
        self.ctl.reset(0)
        self.ctl.command(**hold(1))
        assert self.server.robot.mode == "active"

    def own(self, msg: Any) -> Any:
        """``msg`` with :data:`OWNER` as its session replaced by the controller's session."""
        args = msg.get("args") if isinstance(msg, dict) else None
        if isinstance(args, dict) and args.get("session") == OWNER:
            return {**msg, "args": {**args, "session": self.ctl.session}}
        return msg

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
def harness(served: RobotServer) -> Iterator[Harness]:
    h = Harness(served)
    yield h
    h.close()


def _readable_id(msg: Any) -> int | None:
    rid = msg.get("id") if isinstance(msg, dict) else None
    ok = isinstance(rid, int) and not isinstance(rid, bool) and 0 <= rid <= MAX_ID
    return rid if ok else None


def _check_reply(h: Harness, msg: Any, reply: Any) -> None:
    assert isinstance(reply, dict) and reply["v"] == PROTOCOL_VERSION
    if reply["ok"]:
        return
    assert reply["error"]["type"] in REFUSALS, reply  # never "internal" for client input
    if _readable_id(msg) is not None:
        assert reply["id"] == msg["id"]
    if reply["error"]["type"] in OWNERSHIP_REFUSALS:  # not the controller: left as it was
        assert h.server.robot.mode == "active", reply
    else:
        assert h.server.robot.mode in ("damping", "estop"), reply


SESSION_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-"
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.binary(max_size=8),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=13) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=20,
)


@st.composite
def broken_requests(draw: st.DrawFn) -> dict[str, Any]:
    """A valid request of any operation with one field replaced, removed or added."""
    op = draw(st.sampled_from(sorted(OPERATIONS)))
    owner = {"session": OWNER}
    args = {
        "command": {**hold(2), **owner},
        "reset": {"seed": 1, **owner},
        "clear_estop": owner,
        "release": owner,
        "acquire": {"nonce": "a-hostile-peers-nonce"},
    }.get(op, {})
    msg: dict[str, Any] = request(op, rid=draw(st.integers(0, MAX_ID)), **args)
    where = draw(st.sampled_from(["top", "args", "element", "session"]))
    if where == "session" and "session" in args:  # well-formed, but not the owner's
        msg["args"]["session"] = draw(st.text(SESSION_ALPHABET, min_size=16, max_size=64))
        return msg
    if where == "top":
        key = draw(st.sampled_from(["v", "id", "op", "args", "token", "extra"]))
        if draw(st.booleans()) and key in msg:
            del msg[key]
        else:
            msg[key] = draw(values)
    elif where in ("args", "session") or op != "command":
        msg["args"][draw(st.sampled_from([*args, "x"]))] = draw(values)
    else:
        name = draw(st.sampled_from(["q_rad", "kp", "kd"]))
        i = draw(st.integers(0, 11))
        msg["args"][name][i] = draw(st.sampled_from([math.nan, math.inf, -1.0, "1", None, [1]]))
    return msg


@_settings(40)
@given(msg=st.one_of(values, broken_requests()))
@example(msg=request("command", rid=7, session=FORGED, **hold(2)))  # not the owner's
@example(msg=request("acquire", rid=8, nonce="a-hostile-peers-nonce"))  # while owned
@example(msg=request("release", rid=9, session=FORGED))  # changes nothing
def test_random_and_broken_requests_are_answered_and_leave_the_robot_damped(
    harness: Harness, msg: Any
) -> None:
    harness.activate()
    msg = harness.own(msg)
    reply = harness.send([pack(msg)])
    _check_reply(harness, msg, reply)


@_settings(20)
@given(frames=st.lists(st.binary(max_size=64), min_size=0, max_size=4))
def test_random_frames_are_refused_and_damp(harness: Harness, frames: list[bytes]) -> None:
    harness.activate()
    if len(frames) == 1:
        frames = [frames[0], b"extra"]  # one frame may be a valid request; two never are
    reply = harness.send(frames)
    assert reply["ok"] is False and reply["error"]["type"] == "bad_request"
    assert harness.server.robot.mode == "damping"


def test_after_the_campaign_a_well_formed_client_is_served(
    served: RobotServer, caplog: pytest.LogCaptureFixture
) -> None:
    h = Harness(served)
    try:
        h.activate()
        for bad in (b"\xc1", pack(request(token="wrong")), pack({"v": 1, "id": [1]})):
            reply = h.send([bad])
            assert reply["ok"] is False
        assert served.robot.mode == "damping"
    finally:
        h.close()
    well_formed_client_is_served(served.address)
    for record in caplog.records:
        assert record.name not in LOGGERS or not record.exc_info  # one line, no traceback


def test_bytes_that_are_not_zmtp_close_the_connection_and_damp(served: RobotServer) -> None:
    h = Harness(served)
    try:
        h.activate()
        with socket.create_connection(("127.0.0.1", served.port), timeout=3) as s:
            s.sendall(b"GET / HTTP/1.1\r\n\r\n" + bytes(200))
            deadline = time.monotonic() + 3
            while served.robot.mode != "damping" and time.monotonic() < deadline:
                time.sleep(0.01)
        assert served.robot.mode == "damping"
    finally:
        h.close()
    well_formed_client_is_served(served.address)


@pytest.mark.slow
@_settings(1000, derandomize=False)
@given(msg=st.one_of(values, broken_requests()))
def test_campaign_random_requests(harness: Harness, msg: Any) -> None:
    harness.activate()
    msg = harness.own(msg)
    _check_reply(harness, msg, harness.send([pack(msg)]))
