"""Network client of a skills twin (``twinloop serve skills``), protocol version 2.

ZeroMQ REQ with a timeout on every request; a request that times out closes its socket and
the next one opens a fresh connection ("lazy pirate", as the robot's and the microscope's
clients). Replies are capped at :data:`~.protocol.MAX_REPLY_BYTES` before they are received
(ZMQ_MAXMSGSIZE) and validated (version, id, fields, ranges, the frame's size) before use.
Every failure is a one-line :class:`~.protocol.SkillsFault`. See :mod:`.protocol`.
"""

from __future__ import annotations

import logging
from typing import Any

from twinloop.hardware.client import TwinClient
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


class RemoteSkills(TwinClient):
    """A mobile manipulator reached over the network through the skill protocol.

    Every operation may be sent again when its reply does not come: ``hello``, ``state`` and
    ``stop`` are idempotent, ``reset`` with a seed starts the same episode again, and an
    ``execute`` repeated with its ``seq`` is answered without being executed twice. Requests,
    resends and reply checks are :class:`~twinloop.hardware.client.TwinClient`'s;
    :meth:`request` raises :class:`SkillsFault`.

    Args:
        address: ZeroMQ endpoint of the twin, e.g. ``"tcp://127.0.0.1:5557"``.
        token: Shared secret, if the twin requires one.
        timeout_s: Longest wait for any reply.
        retries: Resends of a request whose reply did not come within ``timeout_s``.
    """

    fault = SkillsFault
    protocol_version = PROTOCOL_VERSION
    max_reply_bytes = MAX_REPLY_BYTES
    name = "skills robot"
    serve_command = "twinloop serve skills"
    no_reply_causes = "twin stopped, stalled, or the reply was over the size cap"
    safe_op = "stop"
    log = log

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        token: str | None = None,
        timeout_s: float = 2.0,
        retries: int = 1,
    ) -> None:
        """Nothing connects until :meth:`connect`."""
        super().__init__(address, token, timeout_s, retries)
        self.hello: dict[str, Any] | None = None

    def _greeted(self) -> bool:
        return self.hello is not None

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

    def state(self, frame_px: int = 0) -> Report:
        """The robot's last report again (with a frame of ``frame_px`` px if > 0)."""
        return Report.from_wire(self.request("state", frame_px=int(frame_px)), int(frame_px))

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
