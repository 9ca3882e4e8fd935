"""The request/reply client that the robot's and the skills twin's clients share.

ZeroMQ REQ with a timeout on every request; a request that times out closes its socket and
the next one opens a fresh connection ("lazy pirate", as the microscope's client). Replies are
capped at :attr:`TwinClient.max_reply_bytes` before they are received (ZMQ_MAXMSGSIZE), and the
envelope of :mod:`twinloop.hardware.wire` (version, id, ``ok``, a refusal's type and message)
is checked before the result is handed on. Every failure is one line of the twin's fault class.

A twin's client subclasses :class:`TwinClient`, sets the class attributes that name the twin
in its messages, and adds its operations (each a call of :meth:`TwinClient.request` whose
result it validates) and a ``connect`` that says hello.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any, ClassVar

from twinloop.hardware.ready import slow_answer_hint


class _NoReply(Exception):
    """No reply within the timeout (the socket was dropped; the request may be sent again)."""

    def __init__(self, wait_s: float) -> None:
        super().__init__(f"no reply within {wait_s:g} s")
        self.wait_s = wait_s


class TwinClient:
    """A twin reached over ZeroMQ REQ: send a request, resend it while no reply comes.

    Args:
        address: ZeroMQ endpoint of the twin, e.g. ``"tcp://127.0.0.1:5556"``.
        token: Shared secret, if the twin requires one.
        timeout_s: Longest wait for any reply.
        retries: Resends of a request whose reply did not come within ``timeout_s``.
    """

    #: The twin's exception: every failure of a request is one line of it.
    fault: ClassVar[type[Exception]]
    #: The protocol version every request carries and every reply must carry.
    protocol_version: ClassVar[int] = 1
    #: Largest reply accepted (bytes), enforced by the socket before it receives.
    max_reply_bytes: ClassVar[int]
    #: The twin in messages, e.g. ``"robot"`` ("robot at tcp://... refused ...").
    name: ClassVar[str]
    #: The command that serves the twin, named in the hint of a timeout.
    serve_command: ClassVar[str]
    #: Why a request may go unanswered, in the timeout's message.
    no_reply_causes: ClassVar[str]
    #: The operation that brings the twin to its safe state, sent (best effort) by :meth:`close`.
    safe_op: ClassVar[str]
    #: The subclass's logger, so that its log lines keep their module's name.
    log: ClassVar[logging.Logger]

    def __init__(self, address: str, token: str | None, timeout_s: float, retries: int) -> None:
        """Nothing connects until the subclass's ``connect``."""
        if not isinstance(address, str) or "://" not in address:
            raise ValueError(f"address must look like 'tcp://host:port', got {address!r}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        if not 0 <= int(retries) <= 10:
            raise ValueError(f"retries must be in [0, 10], got {retries}")
        self.address, self.token, self.timeout_s = address, token, float(timeout_s)
        self.retries = int(retries)
        self.resent = 0
        self.server: dict[str, Any] = {}
        self._ids = itertools.count(1)
        self._ctx: Any = None
        self._sock: Any = None

    # transport ---------------------------------------------------------------------------------
    def _open(self) -> None:
        import zmq

        if self._ctx is None:
            self._ctx = zmq.Context()
        sock = self._ctx.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, self.max_reply_bytes)
        sock.connect(self.address)
        self._sock = sock

    def _drop_socket(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None

    def request(
        self, op: str, timeout_s: float | None = None, retries: int | None = None, **args: Any
    ) -> Any:
        """Send one request (again, up to ``retries`` times, while no reply comes); its result.

        Raises:
            fault: Timeout, disconnect, a malformed reply, or a refusal (its type and message in
                one line), as the subclass's :attr:`fault`.
        """
        tries = 1 + (self.retries if retries is None else retries)
        for attempt in range(tries):
            try:
                return self._request_once(op, timeout_s, args)
            except _NoReply as exc:
                if attempt + 1 == tries:
                    raise self.fault(
                        f"{self.name} at {self.address} did not answer {op!r} within "
                        f"{exc.wait_s:g} s ({tries} tries: {self.no_reply_causes}). "
                        + slow_answer_hint(self.serve_command, "timeout_s", self.timeout_s)
                    ) from None
                self.resent += 1
                self.log.info("no reply to %r within %g s: sending it again", op, exc.wait_s)
        raise AssertionError("unreachable")

    def _request_once(self, op: str, timeout_s: float | None, args: dict[str, Any]) -> Any:
        import msgpack
        import zmq

        if self._sock is None:
            self._open()
        wait_ms = int(1000 * (timeout_s or self.timeout_s))
        self._sock.setsockopt(zmq.RCVTIMEO, wait_ms)
        self._sock.setsockopt(zmq.SNDTIMEO, wait_ms)
        rid = next(self._ids)
        version = self.protocol_version
        msg = {"v": version, "id": rid, "op": op, "args": args, "token": self.token}
        try:
            self._sock.send(msgpack.packb(msg, use_bin_type=True))
            raw = self._sock.recv()
        except zmq.Again:
            self._drop_socket()
            raise _NoReply(wait_ms / 1000) from None
        except zmq.ZMQError as exc:
            self._drop_socket()
            raise self.fault(
                f"link to the {self.name} at {self.address} failed during {op!r}: {exc}"
            ) from None
        try:
            reply = msgpack.unpackb(raw, raw=False)
        except Exception:
            raise self.fault(f"undecodable reply to {op!r} from {self.address}") from None
        if not isinstance(reply, dict) or reply.get("v") != version:
            raise self.fault(f"reply to {op!r} from {self.address} is not protocol v{version}")
        ok = reply.get("ok")
        if reply.get("id") != rid and not (ok is False and reply.get("id") is None):
            raise self.fault(f"reply id {reply.get('id')!r} does not match request {rid}")
        if ok is True:
            return reply.get("result")
        error = reply.get("error") if isinstance(reply.get("error"), dict) else {}
        kind = str(error.get("type", "internal"))[:40]
        text = " ".join(str(error.get("message", "unknown error")).split())[:300]
        raise self.fault(f"{self.name} at {self.address} refused {op!r} ({kind}): {text}")

    # the twin ------------------------------------------------------------------------------------
    def _greeted(self) -> bool:
        """Whether a hello was answered (then :meth:`close` sends :attr:`safe_op`)."""
        return False

    def close(self) -> None:
        """Bring the twin to its safe state (best effort, short timeout); close the socket."""
        try:
            if self._sock is not None or self._greeted():
                self.request(self.safe_op, timeout_s=min(self.timeout_s, 0.5), retries=0)
        except self.fault as exc:
            self.log.warning(
                "could not %s the %s at %s while closing: %s",
                self.safe_op,
                self.name,
                self.address,
                exc,
            )
        finally:
            self._drop_socket()
            if self._ctx is not None:
                self._ctx.term()
                self._ctx = None
