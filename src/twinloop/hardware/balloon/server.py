"""``twinloop serve balloon``: a MAVLink vehicle twin over UDP, flying the balloon simulator.

The twin speaks the protocol of :mod:`.protocol` on one UDP socket (loopback by default). It is
lock-step: simulated time advances one control step per altitude command, so a run through the
twin reproduces a run on the simulator exactly, while the whole hardware path (encoding,
sockets, acknowledgements, retries, timeouts, refusals, garbage) is exercised.

Behaviour: heartbeats every ``heartbeat_s``; a ground station silent for ``link_timeout_s``
puts the twin in failsafe (it holds STAY and reports it); a repeated sequence number gets the
same acknowledgement and frame again without stepping; commands outside {0, 1, 2} and
commands in ``refuse`` are DENIED (a refused command flies STAY for that step). Malformed
datagrams are counted and dropped.

Before it serves (and before ``twinloop serve balloon`` prints its "listening on" line),
:meth:`VehicleTwin.warm_up` flies one step of a throwaway simulator and encodes its telemetry
frame, so the kernels are compiled (or loaded from the numba cache) before the first command
arrives (see :mod:`twinloop.hardware.ready`).
"""

from __future__ import annotations

import logging
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from twinloop.hardware.balloon import protocol as P
from twinloop.sim.balloon import kernel as K
from twinloop.sim.balloon.config import BalloonConfig
from twinloop.sim.balloon.env import BalloonSimBackend

log = logging.getLogger(__name__)

DEFAULT_PORT = 14560


class VehicleTwin:
    """A simulated balloon flight controller behind MAVLink.

    Args:
        cfg: The system config of the simulator.
        host: Address to bind (loopback by default).
        port: UDP port; 0 picks a free one (see :attr:`address`).
        seed: Seed of the episode flown before any ground station asks for one.
        refuse: Command codes (0 down, 1 stay, 2 up) this vehicle refuses.
        link_timeout_s: Ground-station silence after which the twin holds STAY.
        heartbeat_s: Heartbeat period.
    """

    def __init__(
        self,
        cfg: BalloonConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        seed: int = 0,
        refuse: tuple[int, ...] = (),
        link_timeout_s: float = 5.0,
        heartbeat_s: float = 1.0,
    ) -> None:
        """Bind the socket; :meth:`start` warms up, starts the first episode and serves."""
        self.cfg = cfg or BalloonConfig()
        self.sim = BalloonSimBackend(self.cfg)
        self.sim.connect()
        self.refuse = tuple(int(c) for c in refuse)
        self.link_timeout_s = float(link_timeout_s)
        self.heartbeat_s = float(heartbeat_s)
        self.mav = P.new_link(P.VEHICLE_SYSID, P.VEHICLE_COMPID)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, int(port)))
        self.sock.settimeout(0.1)
        self.address: tuple[str, int] = self.sock.getsockname()
        self.stats = {"garbage": 0, "denied": 0, "steps": 0, "episodes": 0, "ignored": 0}
        #: Set False to simulate a dead radio link: nothing is received or sent.
        self.link_up = True
        self.failsafe = False
        self._gcs: tuple[str, int] | None = None
        self._last_heard = time.monotonic()
        self._last_seq: tuple[int, int] | None = None  # (command, seq) last executed
        self._last_reply: list[bytes] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._frame_seq = 0
        self._seed = int(seed)
        self._meas: Any = None  # the first episode starts in start(), after the warm-up
        self.warmed_up = False

    # lifecycle -----------------------------------------------------------------------------
    def warm_up(self) -> None:
        """Compile (or load) every kernel a command runs; the served vehicle is untouched.

        Starts an episode on a throwaway simulator with the same config, flies one STAY step
        and encodes its telemetry frame on a throwaway link (so the served link's MAVLink
        sequence numbers are not advanced). Runs once; :meth:`start` calls it if nobody did.
        """
        if self.warmed_up:
            return
        shadow = BalloonSimBackend(self.cfg)
        shadow.connect()
        shadow.reset(seed=self._seed)
        meas, _ = shadow.apply([float(K.STAY)])
        P.encode_frame(P.new_link(P.VEHICLE_SYSID, P.VEHICLE_COMPID), meas, 0)
        self.warmed_up = True

    def start(self) -> VehicleTwin:
        """Warm up, start the first episode, serve in background threads; return self."""
        self.warm_up()
        with self._lock:
            if self._meas is None:
                self._meas = self.sim.reset(seed=self._seed)
        for target in (self._rx_loop, self._heartbeat_loop):
            t = threading.Thread(target=target, daemon=True, name=f"twin-{target.__name__}")
            t.start()
            self._threads.append(t)
        return self

    def serve_forever(self) -> None:
        """Serve until interrupted (Ctrl-C)."""
        self.start()
        try:
            while not self._stop.is_set():
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    def stop(self) -> None:
        """Stop serving and release the socket."""
        self._stop.set()
        for t in self._threads:
            t.join(timeout=2.0)
        self.sock.close()

    def __enter__(self) -> VehicleTwin:
        """Start serving."""
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        """Stop serving."""
        self.stop()

    # loops ---------------------------------------------------------------------------------
    def _send(self, packets: list[bytes]) -> None:
        if not self.link_up or self._gcs is None:
            return
        for pkt in packets:
            try:
                self.sock.sendto(pkt, self._gcs)
            except OSError:
                return

    def _heartbeat_loop(self) -> None:
        while not self._stop.is_set():
            hb = self.mav.heartbeat_encode(
                P.MAV_TYPE_FREE_BALLOON, P.MAV_AUTOPILOT_GENERIC, 0, 0, P.MAV_STATE_ACTIVE
            )
            self._send([hb.pack(self.mav)])
            silent = time.monotonic() - self._last_heard
            if self._gcs is not None and silent > self.link_timeout_s and not self.failsafe:
                self.failsafe = True  # hold STAY: the lock-step twin simply does not move
                log.warning("vehicle twin: no ground station for %.1f s: failsafe STAY", silent)
            self._stop.wait(self.heartbeat_s)

    def _rx_loop(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            if not self.link_up:
                continue
            try:
                msgs = P.parse_datagram(self.mav, data)
            except Exception:  # pymavlink raises on some malformed input despite robust mode
                self.stats["garbage"] += 1
                continue
            for msg in msgs:
                self._handle(msg, addr)

    # messages ------------------------------------------------------------------------------
    def _handle(self, msg: Any, addr: tuple[str, int]) -> None:
        kind = msg.get_type()
        if kind == "BAD_DATA":
            self.stats["garbage"] += 1
            return
        if msg.get_srcSystem() != P.GCS_SYSID:
            self.stats["ignored"] += 1
            return
        self._gcs = addr
        self._last_heard = time.monotonic()
        if self.failsafe:
            self.failsafe = False
            log.info("vehicle twin: ground station back; leaving failsafe")
        if kind == "COMMAND_LONG" and msg.target_system in (0, P.VEHICLE_SYSID):
            with self._lock:
                self._command(msg)

    def _ack(self, command: int, result: int, code: int = 0) -> bytes:
        return self.mav.command_ack_encode(
            command, result, 0, code, P.GCS_SYSID, P.GCS_COMPID
        ).pack(self.mav)

    def _command(self, msg: Any) -> None:
        cmd = int(msg.command)
        if cmd == P.CMD_EPISODE:
            seq = int(msg.param3)
            if self._last_seq == (cmd, seq):
                self._send(self._last_reply)
                return
            seed = P.join_seed(msg.param1, msg.param2)
            self._meas = self.sim.reset(seed=seed)
            self.stats["episodes"] += 1
            reply = [self._ack(cmd, P.RESULT_ACCEPTED, P.ack_code(seq, K.STAY))]
        elif cmd == P.CMD_ALTITUDE:
            seq = int(msg.param2)
            if self._last_seq == (cmd, seq):
                self._send(self._last_reply)
                return
            code = msg.param1
            if code not in (0.0, 1.0, 2.0):
                self.stats["denied"] += 1
                self._send([self._ack(cmd, P.RESULT_DENIED, P.ack_code(seq, K.STAY))])
                return  # an invalid command is not executed at all
            if int(self._meas[K.M_STATUS]) != K.OK:
                self._send([self._ack(cmd, P.RESULT_TEMPORARILY_REJECTED, P.ack_code(seq, K.STAY))])
                return
            result = P.RESULT_ACCEPTED
            if int(code) in self.refuse:
                self.stats["denied"] += 1
                result, code = P.RESULT_DENIED, float(K.STAY)
            self._meas, applied = self.sim.apply([code])
            self.stats["steps"] += 1
            reply = [self._ack(cmd, result, P.ack_code(seq, int(applied[0])))]
        else:
            self._send([self._ack(cmd, P.RESULT_UNSUPPORTED)])
            return
        self._frame_seq = seq
        reply += P.encode_frame(self.mav, self._meas, seq)
        self._last_seq = (cmd, seq)
        self._last_reply = reply
        self._send(reply)


def add_arguments(parser: Any) -> None:
    """Options of ``twinloop serve balloon``."""
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="UDP port")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first episode")
    parser.add_argument(
        "--refuse",
        action="append",
        default=[],
        choices=K.COMMAND_NAMES,
        help="a command this vehicle refuses (repeatable)",
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="NAME=VALUE", help="config override"
    )


def main(args: Any) -> int:
    """Run ``twinloop serve balloon`` with parsed arguments."""
    import twinloop
    from twinloop.core.config import parse_assignment

    cfg = twinloop.make_config("twinloop/BalloonStationKeeping-v0")
    overrides = dict(parse_assignment(cfg, a) for a in args.set)
    refuse = tuple(K.COMMAND_NAMES.index(name) for name in args.refuse)
    serve(args.host, args.port, args.seed, refuse, overrides)
    return 0


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def serve(
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    seed: int = 0,
    refuse: tuple[int, ...] = (),
    overrides: dict[str, Any] | None = None,
    report: Callable[[str], None] = _say,
) -> None:
    """Run a vehicle twin until interrupted (the ``twinloop serve balloon`` command).

    ``report`` receives the warm-up's lines (default: stderr); the "listening on" line goes to
    stdout once the twin is ready.
    """
    import twinloop
    from twinloop.hardware.ready import compiling

    cfg = twinloop.make_config("twinloop/BalloonStationKeeping-v0", **(overrides or {}))
    try:
        with compiling("balloon vehicle twin", report=report):
            twin = VehicleTwin(cfg, host=host, port=port, seed=seed, refuse=refuse)
            twin.warm_up()
    except KeyboardInterrupt:  # Ctrl-C while compiling: nothing was served
        return
    log.info("balloon vehicle twin on udp:%s:%d", *twin.address)
    print(f"balloon vehicle twin listening on udp:{twin.address[0]}:{twin.address[1]}", flush=True)
    twin.serve_forever()
