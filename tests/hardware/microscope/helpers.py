"""Shared pieces of the microscope twin's hostile-input tests: peers, strategies, an oracle.

The strategies draw what a hostile or broken client could send: any msgpack value, and valid
requests with one field replaced, removed or added (wrong types and shapes, non-finite and
extreme numbers, deep nesting). :func:`contract_valid` says, from the words of the contract in
:mod:`twinloop.hardware.microscope.protocol` (not from its tables), whether a request is well
formed. The peers at the end talk to a twin as a ZeroMQ socket (:class:`Peer`) or speak ZMTP
by hand over a plain TCP socket, which is what a hostile peer does.
"""

from __future__ import annotations

import math
import socket
from typing import Any

import msgpack
import zmq
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

import twinloop
from twinloop.hardware.microscope.remote import RemoteMicroscope

ID = "twinloop/StemSteer-v0"
FAST = dict(frame_pixels=64, frame_time_s=0.5)  # small frames keep these tests quick
TOKEN = "s3cr\u00e9t-\u2713"  # not ASCII on purpose: any Unicode token must work
#: The loggers of the twin: a refusal may write one line to them, never a traceback.
LOGGERS = ("twinloop.hardware.microscope.server", "twinloop.hardware.zmtp")

#: Operations of protocol v1 and their arguments, as the protocol's docstring states them:
#: ``int`` arguments with their domain, ``float`` ones any finite number.
CONTRACT_OPS: dict[str, dict[str, tuple[type, int, int] | type]] = {
    "hello": {},
    "ping": {},
    "reset": {"seed": (int, -1, 2**63 - 1)},
    "state": {},
    "park": {"x_angstrom": float, "y_angstrom": float},
    "dwell": {"seconds": float},
    "blank": {},
    "unblank": {},
    "acquire": {"pixels": (int, 0, 2**31 - 1), "pixel_time_s": float},
    "shift_view": {"dx_angstrom": float, "dy_angstrom": float},
    "truth": {},
}
MAX_ID = 2**63 - 1


def examples(n: int) -> Any:
    """Settings of the default run: ``n`` derandomized examples, no deadline, no database."""
    return settings(
        max_examples=n,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def campaign(n: int) -> Any:
    """Settings of the slow campaign: ``n`` random examples."""
    return settings(
        max_examples=n,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def pack(msg: Any) -> bytes:
    """msgpack, as every client encodes."""
    return msgpack.packb(msg, use_bin_type=True)


def request(op: str = "ping", rid: int = 5, token: Any = TOKEN, **args: Any) -> dict[str, Any]:
    """A request map of protocol v1."""
    return {"v": 1, "id": rid, "op": op, "args": args, "token": token}


# the oracle -------------------------------------------------------------------------------------
def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def contract_valid(msg: Any, token: str | None = TOKEN) -> bool:
    """Whether the contract says the twin must accept (and execute) this request."""
    if not isinstance(msg, dict) or not set(msg) <= {"v", "id", "op", "args", "token"}:
        return False
    if not (_is_int(msg.get("v")) and msg["v"] == 1):
        return False
    if not (_is_int(msg.get("id")) and 0 <= msg["id"] <= MAX_ID):
        return False
    given = msg.get("token")
    if given is not None and not isinstance(given, str):
        return False
    if token is not None and given != token:
        return False
    op, args = msg.get("op"), msg.get("args", {})
    if not isinstance(op, str) or op not in CONTRACT_OPS or not isinstance(args, dict):
        return False
    spec = CONTRACT_OPS[op]
    if set(args) != set(spec):
        return False
    for name, kind in spec.items():
        value = args[name]
        if isinstance(kind, tuple):
            if not (_is_int(value) and kind[1] <= value <= kind[2]):
                return False
        elif not ((_is_int(value) or isinstance(value, float)) and math.isfinite(value)):
            return False
    return True


def expected_rid(msg: Any) -> int | None:
    """The id a refusal must carry: the request's, when it is one."""
    rid = msg.get("id") if isinstance(msg, dict) else None
    return rid if _is_int(rid) and 0 <= rid <= MAX_ID else None


# strategies -------------------------------------------------------------------------------------
#: Numbers at the edges: non-finite, huge, tiny, negative zero, the integer limits of msgpack.
EXTREME_NUMBERS = st.one_of(
    st.sampled_from(
        [math.nan, math.inf, -math.inf, 1e308, -1e308, 5e-324, -0.0, 0, -1, 2**31, 2**63 - 1]
    ),
    st.sampled_from([2**63, 2**64 - 1, -(2**63), True, False]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    EXTREME_NUMBERS,
    st.text(max_size=12),
    st.binary(max_size=12),
)
#: Any msgpack value: wrong types and shapes, nested lists and maps.
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def _valid_arg(kind: Any) -> st.SearchStrategy[Any]:
    if isinstance(kind, tuple):
        return st.integers(min_value=max(kind[1], 0), max_value=min(kind[2], 2**31 - 1))
    return st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**53), 2**53)


@st.composite
def requests(draw: st.DrawFn) -> tuple[dict[Any, Any], bool]:
    """A valid request with (most often) one field replaced, removed or added.

    Returns the message and whether it is still untouched.
    """
    op = draw(st.sampled_from(sorted(CONTRACT_OPS)))
    args = {name: draw(_valid_arg(kind)) for name, kind in CONTRACT_OPS[op].items()}
    msg: dict[Any, Any] = request(op, draw(st.integers(0, MAX_ID)), **args)
    how = draw(st.sampled_from(["none", "field", "arg", "drop", "add", "number"]))
    if how == "field":
        msg[draw(st.sampled_from(["v", "id", "op", "args", "token"]))] = draw(VALUES)
    elif how == "arg" and args:
        msg["args"][draw(st.sampled_from(sorted(args)))] = draw(VALUES)
    elif how == "number":
        where = draw(st.sampled_from(["v", "id", *(f"args.{a}" for a in args)]))
        value = draw(EXTREME_NUMBERS)
        if where.startswith("args."):
            msg["args"][where[5:]] = value
        else:
            msg[where] = value
    elif how == "drop":
        del msg[draw(st.sampled_from(["v", "id", "op", "args", "token"]))]
    elif how == "add":
        msg[draw(st.text(max_size=8).filter(lambda k: k not in msg))] = draw(VALUES)
    return msg, how == "none"


def deep(depth: int) -> bytes:
    """A dwell request (id 9) whose ``seconds`` is nested ``depth`` lists deep."""
    head = b"\x85" + pack({"v": 1, "id": 9, "op": "dwell", "token": TOKEN})[1:]
    return head + pack("args") + b"\x81" + pack("seconds") + b"\x91" * depth + b"\x01"


# ZeroMQ peers -----------------------------------------------------------------------------------
class Peer:
    """A raw ZeroMQ peer (REQ or DEALER) that sends frames and reads what comes back."""

    def __init__(self, address: str, kind: int = zmq.REQ, timeout_ms: int = 2000) -> None:
        """Connect a socket of ``kind`` that waits ``timeout_ms`` for a reply."""
        self.kind = kind
        self.sock = zmq.Context.instance().socket(kind)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVTIMEO, timeout_ms)
        self.sock.connect(address)

    def ask(self, payload: bytes) -> Any | None:
        """Send one payload in a well-formed envelope; its decoded reply map (None: no reply).

        A REQ socket puts the empty delimiter in front by itself; a DEALER must add it.
        """
        reply = self.ask_frames([payload] if self.kind == zmq.REQ else [b"", payload])
        if reply is None:
            return None
        assert len(reply) == (1 if self.kind == zmq.REQ else 2), reply
        return reply[-1]

    def ask_frames(self, frames: list[bytes]) -> list[Any] | None:
        """Send these frames as they are (after a REQ socket's own delimiter); the reply's."""
        self.sock.send_multipart(frames)
        return self.read()

    def read(self) -> list[Any] | None:
        """The next reply's frames, decoded (None after the timeout)."""
        try:
            parts = self.sock.recv_multipart()
        except zmq.Again:
            return None
        return [msgpack.unpackb(p, raw=False) if p else p for p in parts]

    def close(self) -> None:
        """Close at once."""
        self.sock.close(linger=0)


def make_twin_config() -> Any:
    """The config of the twins in these tests (small frames)."""
    return twinloop.make_config(ID, **FAST)


def client(address: str, timeout_s: float = 3.0, **kwargs: Any) -> RemoteMicroscope:
    """A connected, well-formed client with the tests' token."""
    mic = RemoteMicroscope(address, token=TOKEN, timeout_s=timeout_s, **kwargs)
    try:
        mic.connect()
    except BaseException:
        mic.close()
        raise
    return mic


def well_formed_client_is_served(address: str, timeout_s: float = 3.0) -> None:
    """A fresh client: park, state and a frame, each answered correctly within its timeout."""
    mic = client(address, timeout_s=timeout_s)
    try:
        mic.park(1.25, -0.5)
        assert mic.state()["probe_angstrom"] == [1.25, -0.5]
        assert mic.acquire(16, 1e-6).image.shape == (16, 16)
    finally:
        mic.close()


# ZMTP spoken by hand ----------------------------------------------------------------------------
#: A ZMTP 3.1 greeting with the NULL mechanism.
GREETING = b"\xff" + bytes(8) + b"\x7f\x03\x01" + b"NULL".ljust(20, b"\x00") + bytes(32)


def zmtp_frame(body: bytes, more: bool = False, command: bool = False) -> bytes:
    """One ZMTP frame (the short form up to 255 bytes)."""
    flags = (0x01 if more else 0x00) | (0x04 if command else 0x00)
    if len(body) <= 255:
        return bytes([flags, len(body)]) + body
    return bytes([flags | 0x02]) + len(body).to_bytes(8, "big") + body


def zmtp_message(frames: list[bytes]) -> bytes:
    """A message of several frames."""
    return b"".join(zmtp_frame(f, more=i < len(frames) - 1) for i, f in enumerate(frames))


def ready(socket_type: bytes = b"DEALER") -> bytes:
    """The READY command with a Socket-Type property."""
    body = b"\x05READY" + b"\x0bSocket-Type" + len(socket_type).to_bytes(4, "big") + socket_type
    return zmtp_frame(body, command=True)


def recv_exact(s: socket.socket, n: int) -> bytes:
    """``n`` bytes, or fewer if the other side closed the connection first."""
    out = b""
    while len(out) < n:
        try:
            chunk = s.recv(n - len(out))
        except ConnectionResetError:
            break
        if not chunk:
            break
        out += chunk
    return out


def read_frame(s: socket.socket) -> tuple[int, bytes] | None:
    """One ZMTP frame (flags, body); None if the connection closed."""
    head = recv_exact(s, 2)
    if len(head) < 2:
        return None
    size = head[1]
    if head[0] & 0x02:
        rest = recv_exact(s, 7)
        if len(rest) < 7:
            return None
        size = int.from_bytes(head[1:] + rest, "big")
    body = recv_exact(s, size)
    return (head[0], body) if len(body) == size else None


def read_reply(s: socket.socket) -> list[bytes]:
    """The frames of the next message (commands skipped); [] if the connection closed."""
    frames: list[bytes] = []
    while True:
        frame = read_frame(s)
        if frame is None:
            return []
        flags, body = frame
        if flags & 0x04:
            continue
        frames.append(body)
        if not flags & 0x01:
            return frames


def zmtp_peer(port: int, rcvbuf: int | None = None, timeout_s: float = 3.0) -> socket.socket:
    """A ZeroMQ DEALER spoken by hand, its handshake done (``timeout_s`` on every read)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(timeout_s)
    s.connect(("127.0.0.1", port))
    s.sendall(GREETING + ready())
    assert recv_exact(s, 64)[:1] == b"\xff"
    frame = read_frame(s)
    assert frame is not None and frame[0] & 0x04 and frame[1][1:6] == b"READY"
    return s


def greedy_peer(port: int, n: int, pixels: int = 1024) -> socket.socket:
    """A DEALER that sends ``n`` acquires (1024^2 pixels: 4 MiB replies) and never reads."""
    s = zmtp_peer(port, rcvbuf=64 * 1024)
    big = pack(request("acquire", rid=1, pixels=pixels, pixel_time_s=1e-7))
    s.sendall(zmtp_message([b"", big]) * n)
    return s


def blast(port: int, chunks: list[bytes]) -> None:
    """Connect, send ``chunks`` (until the other side closes), leave."""
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        for chunk in chunks:
            try:
                s.sendall(chunk)
            except OSError:  # closed on us: what a twin should do with garbage
                break
