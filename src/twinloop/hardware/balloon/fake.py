"""Fakes for testing the MAVLink path without a vehicle: a twin on a free port, a noisy peer.

``running_twin`` starts :class:`~.server.VehicleTwin` on an ephemeral loopback port in
background threads and yields it with its ``udp:HOST:PORT`` address. ``RawPeer`` sends
arbitrary bytes or hand-built MAVLink messages, e.g. garbage or out-of-range telemetry, to any
address, pretending to be a vehicle or a ground station.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
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
    """

    def __init__(self, sysid: int = P.VEHICLE_SYSID) -> None:
        """Open a loopback socket."""
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.mav = P.new_link(sysid, P.VEHICLE_COMPID if sysid == P.VEHICLE_SYSID else 190)

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

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()
