"""Fakes for testing the MAVLink path without a vehicle: a twin on a free port, a noisy peer.

``running_twin`` starts :class:`~.server.VehicleTwin` on an ephemeral loopback port in
background threads and yields it with its ``udp:HOST:PORT`` address. ``RawPeer`` sends
arbitrary bytes or hand-built MAVLink messages, e.g. garbage or out-of-range telemetry, to any
address, pretending to be a vehicle or a ground station, and reads what comes back (a hand-made
ground station, or a rogue vehicle for testing the client).
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

from twinloop.hardware.balloon import protocol as P
from twinloop.hardware.balloon.server import VehicleTwin
from twinloop.sim.balloon.config import BalloonConfig


@contextlib.contextmanager
def running_twin(
    cfg: BalloonConfig | None = None, **options: Any
) -> Iterator[tuple[VehicleTwin, str]]:
    """A vehicle twin serving on ``127.0.0.1`` and a free port; stopped on exit."""
    twin = VehicleTwin(cfg, host="127.0.0.1", port=0, **options).start()
    try:
        yield twin, f"udp:{twin.address[0]}:{twin.address[1]}"
    finally:
        twin.stop()


class RawPeer:
    """A UDP peer that sends raw bytes or MAVLink messages as a given system id.

    Args:
        sysid: MAVLink system id to send as (1 = the vehicle, 255 = a ground station).
        compid: Component id (default: the autopilot's for the vehicle, 190 otherwise).
    """

    def __init__(self, sysid: int = P.VEHICLE_SYSID, compid: int | None = None) -> None:
        """Open a loopback socket."""
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        if compid is None:
            compid = P.VEHICLE_COMPID if sysid == P.VEHICLE_SYSID else P.GCS_COMPID
        self.mav = P.new_link(sysid, compid)
        self._parser = P.new_link(sysid, compid)

    @property
    def address(self) -> tuple[str, int]:
        """The peer's own ``(host, port)``."""
        return self.sock.getsockname()

    def send(self, data: bytes, to: tuple[str, int]) -> None:
        """Send raw bytes."""
        self.sock.sendto(data, to)

    def send_msg(self, msg: Any, to: tuple[str, int]) -> None:
        """Pack and send one MAVLink message built with ``self.mav.<name>_encode``."""
        self.sock.sendto(msg.pack(self.mav), to)

    def command(
        self,
        to: tuple[str, int],
        command: int,
        *params: float,
        target: tuple[int, int] = (P.VEHICLE_SYSID, P.VEHICLE_COMPID),
    ) -> None:
        """Send a COMMAND_LONG with up to 7 parameters (the rest 0)."""
        values = [float(v) for v in params] + [0.0] * (7 - len(params))
        self.send_msg(self.mav.command_long_encode(*target, command, 0, *values), to)

    def receive(
        self, until: Callable[[Any], bool] | None = None, timeout_s: float = 1.0
    ) -> list[Any]:
        """The MAVLink messages that arrive within ``timeout_s``, or up to the first ``until``."""
        got: list[Any] = []
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                break
            for msg in P.parse_datagram(self._parser, data):
                got.append(msg)
                if until is not None and until(msg):
                    return got
        return got

    def ack(self, command: int, timeout_s: float = 1.0) -> Any | None:
        """The next COMMAND_ACK of ``command`` within ``timeout_s`` (other messages dropped)."""
        got = self.receive(
            lambda m: m.get_type() == "COMMAND_ACK" and m.command == command, timeout_s
        )
        return got[-1] if got and got[-1].get_type() == "COMMAND_ACK" else None

    def drain(self) -> None:
        """Drop whatever has arrived so far."""
        self.receive(timeout_s=0.01)

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()
