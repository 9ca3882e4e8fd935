"""ZMTP 3.1 over TCP, server side: a request-reply endpoint with every per-peer resource bounded.

A network twin must keep serving whatever its peers send, and must never hold more for one
peer than it can afford. libzmq's ROUTER socket cannot promise that: it buffers a multi-part
message whole before the application sees any of it (ZMQ_MAXMSGSIZE bounds one frame, not the
number of frames: one 2000-frame message held 115 MB in a twin), and it offers no way to close
one peer's connection, so neither an idle timeout nor a connection cap can be enforced. This
module therefore speaks the ZeroMQ wire protocol itself (ZMTP 3.1, RFC 37, NULL mechanism, as a
``ROUTER`` peer), so that stock ZeroMQ ``REQ`` and ``DEALER`` clients (pyzmq, libzmq, JeroMQ,
NetMQ) talk to it unchanged, while the server keeps these bounds:

* **per connection** it holds at most one partly received request (``max_message_bytes`` in
  at most ``max_frames`` frames; a larger frame or message, or bytes that are not ZMTP, close
  the connection without a reply, as libzmq does for ZMQ_MAXMSGSIZE) and one reply: it reads a
  connection's next request only once the reply to the previous one has been handed to the
  kernel (beyond :data:`CONTROL_BYTES` of protocol traffic), so a peer that sends and never
  reads is throttled by TCP, not buffered;
* **time**: a handshake must finish within ``handshake_timeout_s``; a reply that makes no
  progress for ``send_timeout_s`` closes its connection (a peer that does not read); a
  connection without an accepted request for ``idle_timeout_s`` is closed (a ZeroMQ client
  reconnects by itself on its next request);
* **connections**: at most ``max_connections``; a new one first reads what the peers still
  shaking hands have sent (garbage or a close frees their slot), then evicts the least
  valuable peer (no handshake yet, then no accepted request yet, then the least recently
  active; one being answered last), so idle or flooding connections cannot lock a
  well-formed client out; running out of file descriptors evicts too, or pauses accepting,
  and never spins;
* **fairness**: each round answers at most one request per connection, so a flood on one
  connection delays another client by at most one request per connection; a request
  already read (pipelined) is answered in the next round at once, not after a poll;
* **no lost request**: an idle connection is closed only when nothing it sent is waiting to
  be read.

Memory therefore stays below ``max_connections x (largest reply + 2 x max_message_bytes +
RECV_CHUNK)`` plus the kernel's socket buffers, whatever the peers do.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import errno
import logging
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

GREETING_BYTES = 64
#: Largest command frame accepted (READY with its properties, PING).
MAX_COMMAND_BYTES = 4096
#: Protocol traffic (greeting, READY, PONG) a connection may have unsent while it is read.
CONTROL_BYTES = 1024
#: Bytes read from a connection at a time.
RECV_CHUNK = 65536

_MORE, _LONG, _COMMAND = 0x01, 0x02, 0x04
_GREETING, _HANDSHAKE, _READY = "greeting", "handshake", "ready"


def _greeting() -> bytes:
    """Signature, version 3.1, the NULL mechanism, as-server 0 (NULL ignores it), filler."""
    out = b"\xff" + bytes(8) + b"\x7f" + bytes([3, 1]) + b"NULL".ljust(20, b"\x00")
    return out + bytes(32)


def frame_header(size: int, flags: int) -> bytes:
    """The flags byte and the size of one ZMTP frame (short form up to 255 bytes)."""
    if size <= 255:
        return bytes([flags, size])
    return bytes([flags | _LONG]) + size.to_bytes(8, "big")


def command(name: bytes, body: bytes = b"") -> bytes:
    """One ZMTP command frame."""
    data = bytes([len(name)]) + name + body
    return frame_header(len(data), _COMMAND) + data


def ready_command(socket_type: bytes) -> bytes:
    """The NULL mechanism's READY with the Socket-Type property."""
    name = b"Socket-Type"
    return command(
        b"READY", bytes([len(name)]) + name + len(socket_type).to_bytes(4, "big") + socket_type
    )


def parse_properties(body: bytes) -> dict[bytes, bytes]:
    """The metadata of a READY command (name-size, name, value-size, value, ...).

    Raises:
        ValueError: The properties are truncated.
    """
    props: dict[bytes, bytes] = {}
    i = 0
    while i < len(body):
        n = body[i]
        name = body[i + 1 : i + 1 + n]
        if len(name) != n or i + 1 + n + 4 > len(body):
            raise ValueError("truncated property name")
        i += 1 + n
        size = int.from_bytes(body[i : i + 4], "big")
        value = body[i + 4 : i + 4 + size]
        if len(value) != size:
            raise ValueError("truncated property value")
        props[name.lower()] = value
        i += 4 + size
    return props


@dataclasses.dataclass(frozen=True)
class PeerLimits:
    """What one peer may make the server hold, and for how long.

    Attributes:
        max_message_bytes: All frames of one request together (and so any one frame).
        max_frames: Frames of one request.
        max_connections: Open connections; a new one evicts the least recently active.
        idle_timeout_s: Close a connection without an accepted request for this long.
        handshake_timeout_s: Close a connection that has not finished its handshake by then.
        send_timeout_s: Close a connection whose reply made no progress for this long.
    """

    max_message_bytes: int = 64 * 1024
    max_frames: int = 8
    max_connections: int = 16
    idle_timeout_s: float = 300.0
    handshake_timeout_s: float = 5.0
    send_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        """Every bound must be positive."""
        for f in dataclasses.fields(self):
            if not getattr(self, f.name) > 0:
                raise ValueError(f"{f.name} must be > 0, got {getattr(self, f.name)!r}")


class LogThrottle:
    """At most ``per_s`` log lines a second; the rest are counted and reported in one line."""

    def __init__(self, logger: logging.Logger, per_s: int = 10) -> None:
        """Log to ``logger``."""
        self._log, self._per_s = logger, per_s
        self._window, self._n, self._dropped = 0.0, 0, 0

    def __call__(self, level: int, msg: str, *args: object) -> None:
        """Log one line unless this second's quota is spent."""
        now = time.monotonic()
        if now - self._window >= 1.0:
            if self._dropped:
                self._log.log(level, "... %d more like this in the last second", self._dropped)
            self._window, self._n, self._dropped = now, 0, 0
        if self._n < self._per_s:
            self._n += 1
            self._log.log(level, msg, *args)
        else:
            self._dropped += 1


#: The request handler: frames of one request -> (reply frames or None for no reply, whether
#: the request was accepted, which counts as activity for the idle timeout).
Handler = Callable[[list[bytes]], tuple[list[bytes] | None, bool]]


class _Peer:
    """One connection: its parse state and what the server holds for it."""

    def __init__(self, sock: socket.socket, address: str, serial: int, now: float) -> None:
        self.sock, self.address, self.serial = sock, address, serial
        self.state = _GREETING
        self.inbuf = bytearray()
        self.parts: list[bytes] = []
        self.part_bytes = 0
        self.message: list[bytes] | None = None  # a whole request waiting for its turn
        self.outbox: collections.deque[memoryview] = collections.deque()
        self.out_bytes = 0
        self.opened_s = self.progress_s = now
        self.active_s = now  # last accepted request (or the connection's start)
        self.accepted = False  # made an accepted request
        self.events = 0
        self.closed = False
        self.held: list[bytes] | None = None  # a reply waiting for its due time (reply_delay)
        self.due_s = 0.0


class ProtocolViolation(Exception):
    """A peer broke ZMTP or a bound; its connection is closed."""


class ZmtpServer:
    """Serve ZeroMQ REQ/DEALER clients as a ROUTER peer over TCP, with bounded resources.

    Args:
        host: Interface to bind.
        port: TCP port (0: a free one).
        limits: Per-peer bounds.
        peer_types: ZMTP socket types accepted from clients.
        reply_delay: Asked once per reply for a delay (s) before it is sent, e.g. a twin's
            simulated link latency: the reply waits on its own connection (which is not read
            meanwhile, so it still holds one reply at most) while every other connection is
            served; None or a delay <= 0 sends at once.
    """

    def __init__(
        self,
        host: str,
        port: int,
        limits: PeerLimits,
        peer_types: tuple[bytes, ...] = (b"REQ", b"DEALER"),
        reply_delay: Callable[[], float] | None = None,
    ) -> None:
        """Bind and listen (the port is taken when this returns)."""
        self.limits = limits
        self.peer_types = peer_types
        self._reply_delay = reply_delay
        family, kind, proto, _, addr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        self._listener = socket.socket(family, kind, proto)
        try:
            if os.name != "nt":  # rebind at once after a restart (Windows: would share it)
                self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._listener.bind(addr)
            self._listener.listen(128)
        except OSError:
            self._listener.close()
            raise
        self._listener.setblocking(False)
        self.host = host
        self.port = int(self._listener.getsockname()[1])
        self.address = f"tcp://{f'[{host}]' if ':' in host else host}:{self.port}"
        self._peers: dict[int, _Peer] = {}
        self._serial = 0
        self._paused_until = 0.0
        self._sel: selectors.BaseSelector | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._say = LogThrottle(log)
        self._refused: Callable[[str], None] | None = None
        self.evictions = 0

    @property
    def connections(self) -> int:
        """Open connections."""
        return len(self._peers)

    def held_bytes(self) -> int:
        """Bytes held for all peers now (partial requests, waiting requests, unsent replies)."""
        total = 0
        for p in list(self._peers.values()):
            waiting = sum(map(len, p.message)) if p.message else 0
            held = sum(map(len, p.held)) if p.held else 0
            total += len(p.inbuf) + p.part_bytes + waiting + held + p.out_bytes
        return total

    @property
    def held_replies(self) -> int:
        """Replies waiting for their due time (``reply_delay``)."""
        return sum(p.held is not None for p in list(self._peers.values()))

    # the loop -----------------------------------------------------------------------------------
    def serve(
        self,
        handle: Handler,
        tick: Callable[[float], None],
        stop: threading.Event,
        refused: Callable[[str], None] | None = None,
        poll_s: float = 0.1,
    ) -> None:
        """Answer requests with ``handle`` until ``stop`` is set.

        Args:
            handle: Answers one request (its frames).
            tick: Called every round (at most ``poll_s`` apart) with ``time.monotonic()``.
            stop: Ends the loop.
            refused: Called with the reason when a connection is closed for breaking ZMTP or
                a bound (a request refused before it could be read: a device goes safe).
            poll_s: Longest wait for input.
        """
        self._refused = refused
        with self._lock:
            if self._closed:
                raise RuntimeError("the server was closed")
            self._sel = selectors.DefaultSelector()
        sel = self._sel
        sel.register(self._listener, selectors.EVENT_READ, None)
        listening = True
        try:
            while not stop.is_set():
                now = time.monotonic()
                if not listening and now >= self._paused_until:
                    sel.register(self._listener, selectors.EVENT_READ, None)
                    listening = True
                # a pipelined request already read waits for no input: do not sleep on it;
                # nor past the due time of a held reply
                ready = any(self._ready(p) for p in self._peers.values())
                wait = 0.0 if ready else poll_s
                if not ready and self._reply_delay is not None:
                    dues = [p.due_s for p in self._peers.values() if p.held is not None]
                    if dues:
                        wait = min(wait, max(0.0, min(dues) - time.monotonic()))
                for key, mask in sel.select(timeout=wait):
                    if key.data is None:
                        if not self._accept():
                            sel.unregister(self._listener)
                            listening = False
                        continue
                    peer: _Peer = key.data
                    if peer.closed:  # evicted while accepting
                        continue
                    if mask & selectors.EVENT_WRITE:
                        self._flush(peer)
                    if mask & selectors.EVENT_READ and not peer.closed:
                        self._receive(peer)
                for peer in list(self._peers.values()):
                    if self._ready(peer):
                        self._answer(peer, handle)
                now = time.monotonic()
                self._expire(now)
                tick(now)
        finally:
            self.close()

    def close(self) -> None:
        """Close every connection and the listening socket (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        for peer in list(self._peers.values()):
            self._close(peer, None)
        if self._sel is not None:
            self._sel.close()
        self._listener.close()

    @staticmethod
    def _ready(peer: _Peer) -> bool:
        """A whole request waits and the previous reply is on its way, or a held reply is due."""
        if peer.held is not None:
            return time.monotonic() >= peer.due_s
        return peer.message is not None and peer.out_bytes <= CONTROL_BYTES

    # connections ------------------------------------------------------------------------------
    def _accept(self) -> bool:
        """Accept waiting connections; False when the listener must pause (no descriptors)."""
        while True:
            try:
                sock, addr = self._listener.accept()
            except BlockingIOError:
                return True
            except OSError as exc:
                if exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    return True  # the peer gave up before it was accepted
                victim = self._eviction_candidate()
                if victim is None:
                    self._say(logging.WARNING, "out of file descriptors: not accepting for 0.5 s")
                    self._paused_until = time.monotonic() + 0.5
                    return False
                self._evict(victim, "out of file descriptors")
                continue
            now = time.monotonic()
            if len(self._peers) >= self.limits.max_connections:
                self._reap()
            if len(self._peers) >= self.limits.max_connections:
                victim = self._eviction_candidate()
                if victim is not None:
                    self._evict(victim, f"{self.limits.max_connections} connections open")
            sock.setblocking(False)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._serial += 1
            address = f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) else str(addr)
            peer = _Peer(sock, address, self._serial, now)
            self._peers[peer.serial] = peer
            self._queue(peer, [memoryview(_greeting())])
            self._flush(peer)

    def _reap(self) -> None:
        """Read what peers still shaking hands have sent: garbage or a close frees their slot.

        A flood of connections that each send garbage and leave is then closed for what it
        is, instead of evicting a client that is connecting at the same time.
        """
        for peer in list(self._peers.values()):
            if peer.state != _READY and not peer.closed:
                self._receive(peer)

    def _eviction_candidate(self) -> _Peer | None:
        """The peer to close for a new one: the least valuable, then the least recently active.

        Value, lowest first: a peer that never made an accepted request and has not finished
        its handshake (garbage, a port scan, a flood of connections), one that finished it
        but made no accepted request, one that did; a peer being served comes last. So a
        flood of connections evicts itself before a client that is shaking hands or working.
        """
        peers = list(self._peers.values())
        if not peers:
            return None
        return min(
            peers,
            key=lambda p: (
                p.message is not None or p.out_bytes > 0,
                p.accepted,
                p.state == _READY,
                p.active_s,
            ),
        )

    def _evict(self, peer: _Peer, why: str) -> None:
        self.evictions += 1
        idle = time.monotonic() - peer.active_s
        self._close(peer, f"{why}: closing the least recently active ({idle:.1f} s idle)")

    def _close(self, peer: _Peer, why: str | None) -> None:
        if peer.closed:
            return
        peer.closed = True
        if why:
            self._say(logging.INFO, "connection from %s closed: %s", peer.address, why)
        if peer.events and self._sel is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(peer.sock)
        self._peers.pop(peer.serial, None)
        peer.sock.close()
        peer.inbuf, peer.parts, peer.message, peer.held = bytearray(), [], None, None
        peer.outbox.clear()
        peer.out_bytes = 0

    def _watch(self, peer: _Peer) -> None:
        """Select reads while nothing is waiting for this peer, writes while output is unsent."""
        if peer.closed or self._sel is None:
            return
        want = 0
        if peer.message is None and peer.out_bytes <= CONTROL_BYTES:
            want |= selectors.EVENT_READ
        if peer.out_bytes:
            want |= selectors.EVENT_WRITE
        if want == peer.events:
            return
        if not peer.events:
            self._sel.register(peer.sock, want, peer)
        elif not want:
            self._sel.unregister(peer.sock)
        else:
            self._sel.modify(peer.sock, want, peer)
        peer.events = want

    def _expire(self, now: float) -> None:
        lim = self.limits
        for peer in list(self._peers.values()):
            if peer.state != _READY and now - peer.opened_s > lim.handshake_timeout_s:
                self._close(peer, f"no ZMTP handshake within {lim.handshake_timeout_s:g} s")
            elif peer.out_bytes and now - peer.progress_s > lim.send_timeout_s:
                self._close(peer, f"it read none of its reply for {lim.send_timeout_s:g} s")
            elif (
                peer.message is None
                and not peer.out_bytes
                and now - peer.active_s > lim.idle_timeout_s
                and not self._pending(peer)
            ):
                self._close(peer, f"no accepted request for {lim.idle_timeout_s:g} s")

    @staticmethod
    def _pending(peer: _Peer) -> bool:
        """Bytes have arrived that were not read yet (a request this very moment).

        An idle connection is closed only when none wait, so that a request which has
        arrived is answered rather than lost with the connection (contract 1).
        """
        try:  # the socket does not block
            return bool(peer.sock.recv(1, socket.MSG_PEEK))
        except OSError:  # nothing there (BlockingIOError), or the connection is broken
            return False

    # input ------------------------------------------------------------------------------------
    def _receive(self, peer: _Peer) -> None:
        try:
            data = peer.sock.recv(RECV_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._close(peer, f"receive failed ({exc.strerror or exc})")
            return
        if not data:
            self._close(peer, None)  # the peer closed it
            return
        peer.inbuf += data
        self._parse(peer)

    def _parse(self, peer: _Peer) -> None:
        """Consume whole units of input until a request is complete or more bytes are needed."""
        try:
            while peer.message is None and not peer.closed:
                if peer.state == _GREETING:
                    if not self._greeted(peer):
                        break
                    continue
                frame = self._next_frame(peer)
                if frame is None:
                    break
                flags, body = frame
                if flags & _COMMAND:
                    self._command(peer, body)
                elif peer.state != _READY:
                    raise ProtocolViolation("a message before the handshake")
                else:
                    self._add_part(peer, flags, body)
        except ProtocolViolation as exc:
            self._close(peer, str(exc))
            if self._refused is not None:
                self._refused(str(exc))
            return
        self._watch(peer)

    def _greeted(self, peer: _Peer) -> bool:
        buf = peer.inbuf
        if buf[:1] not in (b"", b"\xff") or (len(buf) >= 10 and not buf[9] & 0x01):
            raise ProtocolViolation("not a ZMTP 3 greeting")
        if len(buf) >= 11 and buf[10] < 3:
            raise ProtocolViolation(f"ZMTP {buf[10]}.x; this server speaks ZMTP 3")
        if len(buf) < GREETING_BYTES:
            return False
        mechanism = bytes(buf[12:32]).rstrip(b"\x00")
        if mechanism != b"NULL":
            raise ProtocolViolation(f"security mechanism {mechanism[:20]!r}; only NULL is served")
        del buf[:GREETING_BYTES]
        peer.state = _HANDSHAKE
        self._queue(peer, [memoryview(ready_command(b"ROUTER"))])
        self._flush(peer)
        return True

    def _next_frame(self, peer: _Peer) -> tuple[int, bytes] | None:
        buf = peer.inbuf
        if len(buf) < 2:
            return None
        flags = buf[0]
        if flags & ~(_MORE | _LONG | _COMMAND) or (flags & _COMMAND and flags & _MORE):
            raise ProtocolViolation(f"invalid frame flags 0x{flags:02x}")
        head = 9 if flags & _LONG else 2
        if len(buf) < head:
            return None
        size = int.from_bytes(buf[1:9], "big") if flags & _LONG else buf[1]
        limit = MAX_COMMAND_BYTES if flags & _COMMAND else self.limits.max_message_bytes
        if size > limit - (0 if flags & _COMMAND else peer.part_bytes):
            raise ProtocolViolation(f"a request over {limit} bytes")
        if len(buf) < head + size:
            return None
        body = bytes(buf[head : head + size])
        del buf[: head + size]
        return flags, body

    def _command(self, peer: _Peer, body: bytes) -> None:
        n = body[0] if body else 0
        name, rest = body[1 : 1 + n], body[1 + n :]
        if len(name) != n or not n:
            raise ProtocolViolation("a malformed command")
        if peer.state == _HANDSHAKE:
            if name == b"ERROR":
                raise ProtocolViolation("the peer refused the handshake")
            if name != b"READY":
                raise ProtocolViolation(f"{name[:20]!r} instead of READY")
            try:
                kind = parse_properties(rest).get(b"socket-type", b"")
            except ValueError as exc:
                raise ProtocolViolation(f"READY: {exc}") from None
            if kind not in self.peer_types:
                raise ProtocolViolation(
                    f"a {kind[:20].decode('ascii', 'replace')} socket; this server answers "
                    + " and ".join(t.decode() for t in self.peer_types)
                )
            peer.state = _READY
        elif name == b"PING":
            if len(rest) < 2 or len(rest) > 2 + 16:
                raise ProtocolViolation("a malformed PING")
            self._queue(peer, [memoryview(command(b"PONG", rest[2:]))])
            self._flush(peer)
        elif name != b"PONG":
            raise ProtocolViolation(f"unexpected command {name[:20]!r}")

    def _add_part(self, peer: _Peer, flags: int, body: bytes) -> None:
        if len(peer.parts) >= self.limits.max_frames:
            raise ProtocolViolation(f"a request of more than {self.limits.max_frames} frames")
        peer.parts.append(body)
        peer.part_bytes += len(body)
        if not flags & _MORE:
            peer.message, peer.parts, peer.part_bytes = peer.parts, [], 0

    # output -----------------------------------------------------------------------------------
    def _answer(self, peer: _Peer, handle: Handler) -> None:
        frames, peer.message = peer.message, None
        assert frames is not None
        if peer.held is not None:  # a delayed reply whose time has come
            reply, accepted, peer.held = peer.held, False, None
        else:
            try:
                reply, accepted = handle(frames)
            except Exception as exc:  # the handler answers every request; a last resort
                log.error(
                    "request handler failed (%s: %s): closing %s",
                    type(exc).__name__, exc, peer.address,
                )  # fmt: skip
                self._close(peer, None)
                return
            if peer.closed:
                return
            if accepted:
                peer.active_s, peer.accepted = time.monotonic(), True
            delay = self._reply_delay() if reply is not None and self._reply_delay else 0.0
            if delay > 0:
                # held on its connection; an empty placeholder request keeps the connection
                # from being read until the reply has been sent
                peer.held, peer.due_s, peer.message = reply, time.monotonic() + delay, []
                self._watch(peer)
                return
        if reply is not None:
            views: list[memoryview] = []
            for i, part in enumerate(reply):
                views.append(
                    memoryview(frame_header(len(part), _MORE if i < len(reply) - 1 else 0))
                )
                views.append(memoryview(part))
            self._queue(peer, views)
            self._flush(peer)
        if not peer.closed and peer.out_bytes <= CONTROL_BYTES:
            self._parse(peer)  # a pipelined request may already be here
        else:
            self._watch(peer)

    def _queue(self, peer: _Peer, views: list[memoryview]) -> None:
        if not peer.out_bytes:
            peer.progress_s = time.monotonic()
        for v in views:
            if len(v):
                peer.outbox.append(v)
                peer.out_bytes += len(v)

    def _flush(self, peer: _Peer) -> None:
        while peer.outbox and not peer.closed:
            head = peer.outbox[0]
            try:
                n = peer.sock.send(head)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self._close(peer, f"send failed ({exc.strerror or exc})")
                return
            peer.progress_s = time.monotonic()
            peer.out_bytes -= n
            if n == len(head):
                peer.outbox.popleft()
            else:
                peer.outbox[0] = head[n:]
        self._watch(peer)
