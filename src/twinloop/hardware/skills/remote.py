"""Network client of a skills twin (``twinloop serve skills``), protocol version 1.

ZeroMQ REQ with a timeout on every request; a request that times out closes its socket and
the next one opens a fresh connection ("lazy pirate", as the robot's and the microscope's
clients). Replies are capped at :data:`~.protocol.MAX_REPLY_BYTES` before they are received
(ZMQ_MAXMSGSIZE) and validated (version, id, fields, ranges, the frame's size) before use.
Every failure is a one-line :class:`~.protocol.SkillsFault`. See :mod:`.protocol`.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any

from twinloop.hardware.ready import slow_answer_hint
from twinloop.hardware.skills.protocol import (
    CATALOG,
    MAX_REPLY_BYTES,
    PROTOCOL_VERSION,
    Report,
    SkillResult,
    SkillsFault,
    measurement_fields,
)

log = logging.getLogger(__name__)

DEFAULT_ADDRESS = "tcp://127.0.0.1:5557"


class _NoReply(Exception):
    """No reply within the timeout (the socket was dropped; the request may be sent again)."""

    def __init__(self, wait_s: float) -> None:
        super().__init__(f"no reply within {wait_s:g} s")
        self.wait_s = wait_s


class RemoteSkills:
    """A mobile manipulator reached over the network through the skill protocol.

    Every operation may be sent again when its reply does not come: ``hello``, ``state`` and
    ``stop`` are idempotent, ``reset`` with a seed starts the same episode again, and an
    ``execute`` repeated with its ``seq`` is answered without being executed twice.

    Args:
        address: ZeroMQ endpoint of the twin, e.g. ``"tcp://127.0.0.1:5557"``.
        token: Shared secret, if the twin requires one.
        timeout_s: Longest wait for any reply.
        retries: Resends of a request whose reply did not come within ``timeout_s``.
    """

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        token: str | None = None,
        timeout_s: float = 2.0,
        retries: int = 1,
    ) -> None:
        """Nothing connects until :meth:`connect`."""
        if not isinstance(address, str) or "://" not in address:
            raise ValueError(f"address must look like 'tcp://host:port', got {address!r}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        if not 0 <= int(retries) <= 10:
            raise ValueError(f"retries must be in [0, 10], got {retries}")
        self.address, self.token, self.timeout_s = address, token, float(timeout_s)
        self.retries = int(retries)
        self.resent = 0
        self.hello: dict[str, Any] | None = None
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
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_REPLY_BYTES)
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
            SkillsFault: Timeout, disconnect, a malformed reply, or a refusal (its type and
                message in one line).
        """
        tries = 1 + (self.retries if retries is None else retries)
        for attempt in range(tries):
            try:
                return self._request_once(op, timeout_s, args)
            except _NoReply as exc:
                if attempt + 1 == tries:
                    raise SkillsFault(
                        f"skills robot at {self.address} did not answer {op!r} within "
                        f"{exc.wait_s:g} s ({tries} tries: twin stopped, stalled, or the reply "
                        "was over the size cap). "
                        + slow_answer_hint("twinloop serve skills", "timeout_s", self.timeout_s)
                    ) from None
                self.resent += 1
                log.info("no reply to %r within %g s: sending it again", op, exc.wait_s)
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
        msg = {"v": PROTOCOL_VERSION, "id": rid, "op": op, "args": args, "token": self.token}
        try:
            self._sock.send(msgpack.packb(msg, use_bin_type=True))
            raw = self._sock.recv()
        except zmq.Again:
            self._drop_socket()
            raise _NoReply(wait_ms / 1000) from None
        except zmq.ZMQError as exc:
            self._drop_socket()
            raise SkillsFault(
                f"link to the skills robot at {self.address} failed during {op!r}: {exc}"
            ) from None
        try:
            reply = msgpack.unpackb(raw, raw=False)
        except Exception:
            raise SkillsFault(f"undecodable reply to {op!r} from {self.address}") from None
        if not isinstance(reply, dict) or reply.get("v") != PROTOCOL_VERSION:
            raise SkillsFault(f"reply to {op!r} from {self.address} is not protocol v1")
        ok = reply.get("ok")
        if reply.get("id") != rid and not (ok is False and reply.get("id") is None):
            raise SkillsFault(f"reply id {reply.get('id')!r} does not match request {rid}")
        if ok is True:
            return reply.get("result")
        error = reply.get("error") if isinstance(reply.get("error"), dict) else {}
        kind = str(error.get("type", "internal"))[:40]
        text = " ".join(str(error.get("message", "unknown error")).split())[:300]
        raise SkillsFault(f"skills robot at {self.address} refused {op!r} ({kind}): {text}")

    # the robot -----------------------------------------------------------------------------------
    def connect(self) -> dict[str, Any]:
        """Say hello: check the protocol, the catalog and the observation's fields.

        Raises:
            SkillsFault: Another protocol, catalog or observation layout than this client's.
        """
        hello = self.request("hello")
        if not isinstance(hello, dict) or hello.get("protocol") != PROTOCOL_VERSION:
            raise SkillsFault(f"skills robot at {self.address} does not speak protocol v1")
        if hello.get("catalog") != {k: list(v) for k, v in CATALOG.items()}:
            raise SkillsFault(f"skills robot at {self.address} has another skill catalog")
        if hello.get("measurement") != measurement_fields():
            raise SkillsFault(f"skills robot at {self.address} reports other observation fields")
        identity = hello.get("identity")
        self.server = dict(identity) if isinstance(identity, dict) else {}
        self.hello = hello
        return hello

    def state(self) -> Report:
        """The robot's last report again."""
        return Report.from_wire(self.request("state"))

    def reset(self, split: str = "", episode: int = -1, seed: int | None = None) -> Report:
        """A new episode on the twin (``""``/-1/None: its split, a drawn episode, its stream)."""
        seed = -1 if seed is None else int(seed)
        return Report.from_wire(self.request("reset", split=split, episode=episode, seed=seed))

    def execute(self, seq: int, skill: str, target: str = "", frame_px: int = 0) -> SkillResult:
        """Run one skill; its validated result (a frame of ``frame_px`` px if > 0).

        Raises:
            SkillsFault: As :meth:`request`, or the result is malformed.
        """
        result = self.request(
            "execute", seq=int(seq), skill=skill, target=target, frame_px=int(frame_px)
        )
        return SkillResult.from_wire(result, int(seq), int(frame_px))

    def stop(self, timeout_s: float | None = None, retries: int | None = None) -> Report:
        """Stop: no skill running, the arm holds (the safe state)."""
        return Report.from_wire(self.request("stop", timeout_s=timeout_s, retries=retries))

    def close(self) -> None:
        """Stop the robot (best effort, short timeout) and close the socket."""
        try:
            if self._sock is not None or self.hello is not None:
                self.request("stop", timeout_s=min(self.timeout_s, 0.5), retries=0)
        except SkillsFault as exc:
            log.warning(
                "could not stop the skills robot at %s while closing: %s", self.address, exc
            )
        finally:
            self._drop_socket()
            if self._ctx is not None:
                self._ctx.term()
                self._ctx = None
