"""``twinloop serve balloon``: a MAVLink vehicle twin over UDP, flying the balloon simulator.

The twin speaks the protocol of :mod:`.protocol` on one UDP socket (loopback by default) and
keeps its contract (validation, answers, safe state, stations, failsafe, bounds). It is
lock-step: simulated time advances one control step per altitude command, so a run through the
twin reproduces a run on the simulator exactly, while the whole hardware path (encoding,
sockets, acknowledgements, retries, timeouts, refusals, garbage, several stations) is
exercised.

Data flow::

    receive thread: socket -> batch of datagrams (what has arrived, up to RX_BATCH)
        -> fair share (at most RX_PER_PEER per sender and batch; the rest of a flood dropped)
        -> datagram (size cap) -> MAVLink parser -> message
        -> station table (admit, refresh; full: refuse) -> COMMAND_LONG?
        -> decode_command (every field checked) -> repeat? -> in command? -> execute
        -> ACK (+ telemetry frame) to the sender; any refusal: hold STAY, ACK + STATUSTEXT
    heartbeat thread: forget silent stations; station in command silent -> failsafe (STAY,
        MAV_STATE_CRITICAL); HEARTBEAT (state, held command) to every served station

Each datagram is handled under one lock, so both threads see one consistent vehicle; every
error inside the handling of one datagram is caught, logged in one line and answered, so the
receive loop serves the next one whatever arrived. The twin handles some 15-30 thousand
hostile datagrams a second; reading in batches and sharing them out by sender keeps a
well-formed station served through a flood from other addresses (the kernel's receive buffer
is drained faster than it is handled, so the flood, not the station, loses datagrams).

Before it serves (and before ``twinloop serve balloon`` prints its "listening on" line),
:meth:`VehicleTwin.warm_up` flies one step of a throwaway simulator and encodes its telemetry
frame, so the kernels are compiled (or loaded from the numba cache) before the first command
arrives (see :mod:`twinloop.hardware.ready`).
"""

from __future__ import annotations

import logging
import selectors
import socket
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twinloop.core.profile import PROFILE_HELP, DeviceProfile
from twinloop.hardware.balloon import protocol as P
from twinloop.sim.balloon import kernel as K
from twinloop.sim.balloon.config import BalloonConfig
from twinloop.sim.balloon.env import BalloonSimBackend

log = logging.getLogger(__name__)

DEFAULT_PORT = 14560
#: Datagrams read from the socket in one go, before any of them is handled.
RX_BATCH = 256
#: Datagrams of one sender (host:port) handled per batch; the rest of a flood is dropped.
RX_PER_PEER = 8
#: Receive buffer asked of the kernel (it may grant less: net.core.rmem_max).
RX_BUFFER_BYTES = 1 << 20
#: Answers to senders the twin does not serve (table full), per second, all together.
UNSERVED_ANSWERS_PER_S = 10.0


@dataclass(eq=False)
class Station:
    """A ground station the vehicle serves: one sender, its times and its recent commands."""

    addr: tuple[str, int]
    sysid: int
    compid: int
    heard: float
    #: ``(command, seq)`` of its last executed command and the reply it got (ACK, frame).
    last: tuple[int, int] | None = None
    last_reply: list[bytes] = field(default_factory=list)
    #: ACKs of its :data:`~.protocol.RECENT` executed commands before the last one.
    recent: OrderedDict[tuple[int, int], bytes] = field(default_factory=OrderedDict)

    @property
    def key(self) -> tuple[tuple[str, int], int, int]:
        """What identifies the station: address, system id, component id."""
        return self.addr, self.sysid, self.compid

    def __str__(self) -> str:
        """``host:port (system s, component c)``."""
        return f"{self.addr[0]}:{self.addr[1]} (system {self.sysid}, component {self.compid})"


class VehicleTwin:
    """A simulated balloon flight controller behind MAVLink.

    Args:
        cfg: The system config of the simulator.
        host: Address to bind (loopback by default).
        port: UDP port; 0 picks a free one (see :attr:`address`).
        seed: Seed of the episode flown before any ground station asks for one.
        refuse: Command codes (0 down, 1 stay, 2 up) this vehicle refuses.
        link_timeout_s: Silence of the station in command after which the twin holds STAY in
            failsafe, and after which another station may take command.
        heartbeat_s: Heartbeat period.
        max_stations: Ground stations served at once.
        station_timeout_s: Silence after which a station is forgotten (no more heartbeats);
            the station in command is kept until another takes command.
        profile: The vehicle's hidden physics (:mod:`twinloop.core.profile`), applied over
            ``cfg``; the twin announces its name (a STATUSTEXT, see :mod:`.protocol`, contract
            point 10), never its values. None: nominal, and nothing is announced.

    Raises:
        ValueError: An option out of its range, or a profile name an announcement cannot
            carry (:func:`~.protocol.check_profile_name`).
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
        max_stations: int = 16,
        station_timeout_s: float = 30.0,
        profile: DeviceProfile | None = None,
    ) -> None:
        """Bind the socket; :meth:`start` warms up, starts the first episode and serves."""
        for name, value in (
            ("link_timeout_s", link_timeout_s),
            ("heartbeat_s", heartbeat_s),
            ("station_timeout_s", station_timeout_s),
        ):
            if not (isinstance(value, int | float) and 0 < value <= 3600):
                raise ValueError(f"{name} = {value!r} must lie in (0, 3600] s")
        if not (isinstance(max_stations, int) and 1 <= max_stations <= 1024):
            raise ValueError(f"max_stations = {max_stations!r} must be an int in [1, 1024]")
        self.profile = profile
        #: The announcement's text (None: nominal, nothing is announced); checked before binding.
        self._profile_text = None if profile is None else P.profile_text(profile.name)
        self.cfg = cfg or BalloonConfig()
        if profile is not None:
            self.cfg = profile.apply(self.cfg)
        self.sim = BalloonSimBackend(self.cfg)
        self.sim.connect()
        self.refuse = tuple(int(c) for c in refuse)
        self.link_timeout_s = float(link_timeout_s)
        self.heartbeat_s = float(heartbeat_s)
        self.max_stations = max_stations
        self.station_timeout_s = float(station_timeout_s)
        self.mav = P.new_link(P.VEHICLE_SYSID, P.VEHICLE_COMPID)  # encodes what the twin sends
        self._parser = P.new_link(P.VEHICLE_SYSID, P.VEHICLE_COMPID)  # decodes what it receives
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RX_BUFFER_BYTES)
        self.sock.bind((host, int(port)))
        self.sock.setblocking(False)  # the receive loop waits on a selector, then drains
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.sock, selectors.EVENT_READ)
        self.address: tuple[str, int] = self.sock.getsockname()
        self.stats = dict.fromkeys(
            (
                "garbage",  # undecodable bytes, oversized datagrams
                "ignored",  # other systems, other targets, messages the vehicle does not use
                "denied",  # DENIED: malformed commands and commands the vehicle refuses
                "refused",  # every refusal, whatever its reason
                "unsupported",  # commands this protocol does not define
                "repeats",  # repeated sequence numbers answered again, not executed
                "unserved",  # messages from stations beyond max_stations
                "dropped",  # datagrams of a flood: beyond RX_PER_PEER of one sender per batch
                "errors",  # unexpected errors while handling a message
                "steps",
                "episodes",
            ),
            0,
        )
        #: Set False to simulate a dead radio link: nothing is received or sent.
        self.link_up = True
        #: Set False to simulate a dead uplink: nothing is received; heartbeats still go out.
        self.uplink_up = True
        self.failsafe = False
        #: The altitude command the vehicle flies now (STAY after every refusal and failsafe).
        self.held = K.STAY
        self._stations: dict[tuple[tuple[str, int], int, int], Station] = {}
        self._controller: Station | None = None
        self._unserved_budget = UNSERVED_ANSWERS_PER_S
        self._unserved_at = time.monotonic()
        self._throttle = P.Throttle()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
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
        self._selector.close()
        self.sock.close()

    def __enter__(self) -> VehicleTwin:
        """Start serving."""
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        """Stop serving."""
        self.stop()

    # what tests and operators look at -----------------------------------------------------
    @property
    def serving(self) -> bool:
        """Whether both the receive and the heartbeat threads are running."""
        return len(self._threads) == 2 and all(t.is_alive() for t in self._threads)

    @property
    def stations(self) -> list[str]:
        """The ground stations served now, as ``"host:port (system s, component c)"``."""
        with self._lock:
            return [str(s) for s in self._stations.values()]

    @property
    def controller(self) -> str | None:
        """The station in command, or None."""
        with self._lock:
            return None if self._controller is None else str(self._controller)

    def station_memory(self) -> int:
        """Items the twin holds for its stations (stations + remembered replies): bounded."""
        with self._lock:
            return sum(1 + len(s.last_reply) + len(s.recent) for s in self._stations.values())

    # loops ---------------------------------------------------------------------------------
    def _send(self, packets: list[bytes], addr: tuple[str, int]) -> None:
        if not self.link_up:
            return
        for pkt in packets:
            for wait_s in (0.001, 0.01, None):  # a full send buffer drains in moments
                try:
                    self.sock.sendto(pkt, addr)
                    break
                except BlockingIOError as exc:
                    if wait_s is None:
                        self._throttle.log(
                            log, logging.WARNING, "send", "vehicle twin: send: %s", exc
                        )
                        return
                    time.sleep(wait_s)
                except OSError as exc:  # an unreachable sender: the next one counts
                    self._throttle.log(log, logging.WARNING, "send", "vehicle twin: send: %s", exc)
                    return

    def _heartbeat_loop(self) -> None:
        while not self._stop.is_set():
            try:
                with self._lock:
                    self._tick(time.monotonic())
            except Exception as exc:  # never let the heartbeat stop: it is how stations see us
                self.stats["errors"] += 1
                self._throttle.log(
                    log, logging.ERROR, "heartbeat", "vehicle twin: heartbeat: %r", exc
                )
            self._stop.wait(self.heartbeat_s)

    def _tick(self, now: float) -> None:
        ctl = self._controller
        for key, s in list(self._stations.items()):
            if s is not ctl and now - s.heard > self.station_timeout_s:
                del self._stations[key]
                log.info("vehicle twin: forgot ground station %s (silent)", s)
        if ctl is not None and not self.failsafe and now - ctl.heard > self.link_timeout_s:
            self.failsafe = True  # hold STAY: the lock-step twin simply does not move
            self.held = K.STAY
            log.warning(
                "vehicle twin: no word from ground station %s in command for %.1f s: "
                "failsafe, holding STAY",
                ctl,
                now - ctl.heard,
            )
        hb = self._heartbeat()
        targets = {s.addr for s in self._stations.values()}
        if ctl is not None:
            targets.add(ctl.addr)
        for addr in targets:
            self._send([hb], addr)

    def _heartbeat(self) -> bytes:
        state = P.MAV_STATE_CRITICAL if self.failsafe else P.MAV_STATE_ACTIVE
        return self.mav.heartbeat_encode(
            P.MAV_TYPE_FREE_BALLOON,
            P.MAV_AUTOPILOT_GENERIC,
            P.MAV_MODE_FLAG_CUSTOM_MODE_ENABLED,
            int(self.held),
            state,
        ).pack(self.mav)

    def _rx_loop(self) -> None:
        while not self._stop.is_set():
            batch = self._receive()
            if not (self.link_up and self.uplink_up):
                continue
            for data, addr in self._fair(batch):
                self._handle(data, addr)

    def _receive(self) -> list[tuple[bytes, tuple[str, int]]]:
        """Wait up to 0.1 s for a datagram, then read what has arrived (up to RX_BATCH)."""
        try:
            if not self._selector.select(0.1):
                return []
        except (OSError, ValueError):  # the socket was closed under us: stop() is running
            self._stop.wait(0.01)
            return []
        batch: list[tuple[bytes, tuple[str, int]]] = []
        while len(batch) < RX_BATCH:
            try:
                batch.append(self.sock.recvfrom(65536))
            except BlockingIOError:
                break
            except OSError as exc:  # e.g. an ICMP error reported on some platforms
                if not self._stop.is_set():
                    self._throttle.log(
                        log, logging.WARNING, "recv", "vehicle twin: receive: %s", exc
                    )
                break
        return batch

    def _fair(
        self, batch: list[tuple[bytes, tuple[str, int]]]
    ) -> list[tuple[bytes, tuple[str, int]]]:
        """At most RX_PER_PEER datagrams of each sender, in arrival order; the rest dropped.

        A flood from one address then costs the others one batch's wait, never their turn.
        """
        taken: dict[tuple[str, int], int] = {}
        kept = []
        for data, addr in batch:
            n = taken.get(addr, 0)
            taken[addr] = n + 1
            if n < RX_PER_PEER:
                kept.append((data, addr))
        dropped = len(batch) - len(kept)
        if dropped:
            with self._lock:
                self.stats["dropped"] += dropped
            floods = [f"{a[0]}:{a[1]}" for a, n in taken.items() if n > RX_PER_PEER]
            self._throttle.log(
                log,
                logging.WARNING,
                "flood",
                "vehicle twin: dropped %d datagrams of a flood from %s",
                dropped,
                ", ".join(floods[:3]) + (" and others" if len(floods) > 3 else ""),
            )
        return kept

    def _handle(self, data: bytes, addr: tuple[str, int]) -> None:
        """One datagram; any error is caught here, so the next one is served."""
        try:
            with self._lock:
                self._datagram(data, addr)
        except Exception as exc:  # the last line of defence: the next datagram is served
            with self._lock:
                self.stats["errors"] += 1
                self.held = K.STAY
            self._throttle.log(
                log,
                logging.ERROR,
                "error",
                "vehicle twin: error handling a datagram from %s:%s: %r; holding STAY",
                *addr[:2],
                exc,
            )

    # messages ------------------------------------------------------------------------------
    def _datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            msgs = P.parse_datagram(self._parser, data)
        except Exception:  # oversized, or pymavlink raised on malformed input despite robust mode
            self.stats["garbage"] += 1
            return
        for msg in msgs:
            self._message(msg, addr)

    def _message(self, msg: Any, addr: tuple[str, int]) -> None:
        kind = msg.get_type()
        if kind == "BAD_DATA":
            self.stats["garbage"] += 1
            return
        sysid, compid = int(msg.get_srcSystem()), int(msg.get_srcComponent())
        if sysid != P.GCS_SYSID:
            self.stats["ignored"] += 1
            return
        now = time.monotonic()
        station = self._station(addr, sysid, compid, now)
        if station is None:
            self._unserved(msg, addr, sysid, compid, now)
            return
        station.heard = now
        if station is self._controller and self.failsafe:
            self.failsafe = False
            log.info("vehicle twin: ground station %s in command is back; failsafe over", station)
        if kind != "COMMAND_LONG":
            return  # a heartbeat (or anything else a station says) only shows it is there
        if not _for_vehicle(msg):
            self.stats["ignored"] += 1
            return
        self._command(msg, station, now)

    def _station(
        self, addr: tuple[str, int], sysid: int, compid: int, now: float
    ) -> Station | None:
        """The station that sent a message: known, admitted now, or None (table full)."""
        station = self._stations.get((addr, sysid, compid))
        if station is not None:
            return station
        if len(self._stations) >= self.max_stations:
            # the station silent longest makes room if it has been silent for the link
            # timeout; the station in command too (it has lost command: failsafe stays on
            # until another station takes command)
            oldest = min(self._stations.values(), key=lambda s: s.heard)
            if now - oldest.heard < self.link_timeout_s:
                return None
            del self._stations[oldest.key]
            if oldest is self._controller:
                self._controller = None
            log.info("vehicle twin: ground station %s (silent) replaced", oldest)
        station = Station(addr, sysid, compid, now)
        self._stations[station.key] = station
        log.info("vehicle twin: serving ground station %s", station)
        # no need to wait a period to be seen; the profile's name first, so a station knows it
        # by the time it sees the vehicle
        self._send([*self._announcement(), self._heartbeat()], addr)
        return station

    def _unserved(
        self, msg: Any, addr: tuple[str, int], sysid: int, compid: int, now: float
    ) -> None:
        """A message from a station beyond ``max_stations``: refuse, within a global budget."""
        self.stats["unserved"] += 1
        self._unserved_budget = min(
            UNSERVED_ANSWERS_PER_S,
            self._unserved_budget + (now - self._unserved_at) * UNSERVED_ANSWERS_PER_S,
        )
        self._unserved_at = now
        if self._unserved_budget < 1.0:
            return
        self._unserved_budget -= 1.0
        text = f"busy: {len(self._stations)} stations served"
        if _for_vehicle(msg) and msg.command in P.COMMANDS:
            seq = _seq_or_none(msg)
            result, reason = P.RESULT_TEMPORARILY_REJECTED, P.REASON_TOO_MANY_STATIONS
            self._refuse(addr, sysid, compid, msg.command, result, reason, seq, text)
        else:
            self._send([self._statustext(text)], addr)
        self._throttle.log(
            log, logging.WARNING, "unserved", "vehicle twin: %s:%s refused: %s", *addr[:2], text
        )

    def _ack(self, command: int, result: int, reason: int, code: int, to: tuple[int, int]) -> bytes:
        return self.mav.command_ack_encode(command, result, reason, code, *to).pack(self.mav)

    def _announcement(self) -> list[bytes]:
        """The STATUSTEXT that names the device profile in force; none for a nominal twin."""
        if self._profile_text is None:
            return []
        msg = self.mav.statustext_encode(P.MAV_SEVERITY_INFO, self._profile_text)
        return [msg.pack(self.mav)]

    def _statustext(self, text: str) -> bytes:
        raw = text.encode("ascii", errors="replace")[:50]
        return self.mav.statustext_encode(P.MAV_SEVERITY_WARNING, raw).pack(self.mav)

    def _refuse(
        self,
        addr: tuple[str, int],
        sysid: int,
        compid: int,
        command: int,
        result: int,
        reason: int,
        seq: int | None,
        text: str,
    ) -> bytes:
        """Answer a refusal (ACK + STATUSTEXT) and hold STAY: the safe state, whatever the why.

        Returns:
            The ACK sent.
        """
        self.held = K.STAY
        self.stats["refused"] += 1
        if result == P.RESULT_DENIED:
            self.stats["denied"] += 1
        code = P.NO_SEQUENCE if seq is None else P.ack_code(seq, K.STAY)
        ack = self._ack(command, result, reason, code, (sysid, compid))
        self._send([ack, self._statustext(text)], addr)
        self._throttle.log(
            log, logging.INFO, f"refuse{reason}", "vehicle twin: refused %s:%s: %s", *addr[:2], text
        )
        return ack

    def _command(self, msg: Any, station: Station, now: float) -> None:
        cmd = int(msg.command)
        to = (station.sysid, station.compid)
        if cmd not in P.COMMANDS:
            self.stats["unsupported"] += 1
            ack = self._ack(cmd, P.RESULT_UNSUPPORTED, P.REASON_NONE, P.NO_SEQUENCE, to)
            self._send([ack], station.addr)
            return
        where = (station.addr, *to)
        try:
            c = P.decode_command(msg)
        except P.CommandError as exc:
            text = f"denied: {exc}".replace(" command: COMMAND_LONG.", " ")
            self._refuse(*where, cmd, P.RESULT_DENIED, P.REASON_INVALID, exc.seq, text)
            return
        if station.last == (cmd, c.seq):
            self.stats["repeats"] += 1
            self._send(station.last_reply, station.addr)
            return
        if (cmd, c.seq) in station.recent:
            self.stats["repeats"] += 1
            self._send([station.recent[cmd, c.seq]], station.addr)
            return
        ctl = self._controller
        if cmd == P.CMD_RELEASE and ctl is not station:
            # nothing to release: accepted, and nothing changes (a watcher closing must not
            # disturb the vehicle another station commands)
            code = P.ack_code(c.seq, self.held)
            self._send([self._ack(cmd, P.RESULT_ACCEPTED, P.REASON_NONE, code, to)], station.addr)
            return
        if ctl is not None and ctl is not station and now - ctl.heard <= self.link_timeout_s:
            text = f"busy: {ctl.addr[0]}:{ctl.addr[1]} in command"
            result, reason = P.RESULT_TEMPORARILY_REJECTED, P.REASON_OTHER_STATION
            self._refuse(*where, cmd, result, reason, c.seq, text)
            return
        try:
            reply = self._execute(c, station, to)
        except Exception as exc:  # a bug or an unencodable state: answer it, hold STAY
            self.stats["errors"] += 1
            self._throttle.log(
                log, logging.ERROR, "execute", "vehicle twin: %s command failed: %r", c.name, exc
            )
            text = "internal error: holding STAY"
            failed = self._refuse(*where, cmd, P.RESULT_FAILED, P.REASON_INTERNAL, c.seq, text)
            # the command may have run part way: a retry gets this answer, never a second run
            self._remember(station, (cmd, c.seq), [failed])
            return
        if reply is None:
            return
        self._remember(station, (cmd, c.seq), reply)
        self._send(reply, station.addr)

    @staticmethod
    def _remember(station: Station, key: tuple[int, int], reply: list[bytes]) -> None:
        """Keep a command's reply for repeats; the one before moves to the bounded recent."""
        if station.last is not None:
            station.recent[station.last] = station.last_reply[0]
            while len(station.recent) > P.RECENT:
                station.recent.popitem(last=False)
        station.last, station.last_reply = key, reply

    def _take_command(self, station: Station) -> None:
        if self._controller is not station:
            log.info("vehicle twin: ground station %s takes command", station)
            self._controller = station
        self.failsafe = False

    def _execute(self, c: P.Command, station: Station, to: tuple[int, int]) -> list[bytes] | None:
        """Run a checked command of the station allowed to command; its reply, or None."""
        if c.command == P.CMD_RELEASE:  # by the station in command (others: see _command)
            log.info("vehicle twin: ground station %s released command", station)
            self._controller = None
            self.held = K.STAY
            return [self._ack(c.command, P.RESULT_ACCEPTED, 0, P.ack_code(c.seq, K.STAY), to)]
        if c.command == P.CMD_EPISODE:
            seed = P.join_seed(c.args["seed_low"], c.args["seed_high"])
            self._take_command(station)
            self._meas = self.sim.reset(seed=seed)
            self.held = K.STAY
            self.stats["episodes"] += 1
            self._send(self._announcement(), station.addr)  # before the ACK that ends its wait
            reply = [self._ack(c.command, P.RESULT_ACCEPTED, 0, P.ack_code(c.seq, K.STAY), to)]
            return reply + P.encode_frame(self.mav, self._meas, c.seq)
        code = c.args["code"]  # CMD_ALTITUDE
        if int(self._meas[K.M_STATUS]) != K.OK:
            result, reason = P.RESULT_TEMPORARILY_REJECTED, P.REASON_TERMINAL
            self._refuse(station.addr, *to, c.command, result, reason, c.seq, "episode over")
            return None
        self._take_command(station)
        result, reason = P.RESULT_ACCEPTED, P.REASON_NONE
        if code in self.refuse:
            result, reason, code = P.RESULT_DENIED, P.REASON_POLICY, K.STAY
            self.stats["denied"] += 1
            self.stats["refused"] += 1
        self._meas, applied = self.sim.apply([float(code)])
        self.stats["steps"] += 1
        self.held = int(applied[0])
        reply = [self._ack(c.command, result, reason, P.ack_code(c.seq, self.held), to)]
        return reply + P.encode_frame(self.mav, self._meas, c.seq)


def _for_vehicle(msg: Any) -> bool:
    """Whether ``msg`` is a COMMAND_LONG addressed to this vehicle (or to every system)."""
    return (
        msg.get_type() == "COMMAND_LONG"
        and msg.target_system in (0, P.VEHICLE_SYSID)
        and msg.target_component in (0, P.VEHICLE_COMPID)
    )


def _seq_or_none(msg: Any) -> int | None:
    try:
        return P.decode_command(msg).seq
    except P.CommandError as exc:
        return exc.seq


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
        "--link-timeout",
        type=float,
        default=5.0,
        metavar="S",
        help="silence of the ground station in command before failsafe (STAY) and before "
        "another station may take command (default 5 s)",
    )
    parser.add_argument(
        "--max-stations",
        type=int,
        default=16,
        metavar="N",
        help="ground stations served at once; one commands, the others watch (default 16)",
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="NAME=VALUE", help="config override"
    )
    parser.add_argument("--profile", default=None, metavar="random:SEED|FILE", help=PROFILE_HELP)


def main(args: Any) -> int:
    """Run ``twinloop serve balloon`` with parsed arguments."""
    import twinloop
    from twinloop.core.config import parse_assignment

    cfg = twinloop.make_config("twinloop/BalloonStationKeeping-v0")
    overrides = dict(parse_assignment(cfg, a) for a in args.set)
    refuse = tuple(K.COMMAND_NAMES.index(name) for name in args.refuse)
    options: dict[str, Any] = {
        "link_timeout_s": args.link_timeout,
        "max_stations": args.max_stations,
    }
    if args.profile:
        from twinloop.core.profile import parse_profile
        from twinloop.sim.balloon.profile import PRIORS

        nominal = twinloop.make_config("twinloop/BalloonStationKeeping-v0", **overrides)
        try:
            options["profile"] = parse_profile(args.profile, nominal, PRIORS)
            P.check_profile_name(options["profile"].name)  # an announcement must carry it
        except ValueError as exc:  # ConfigError is a ValueError: it names field and limits
            _say(f"twinloop serve balloon: error: {exc}")
            return 2
        _say(
            f"device profile {options['profile'].name!r} in force "
            "(its values stay hidden from ground stations)"
        )
    serve(args.host, args.port, args.seed, refuse, overrides, **options)
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
    **options: Any,
) -> None:
    """Run a vehicle twin until interrupted (the ``twinloop serve balloon`` command).

    ``report`` receives the warm-up's lines (default: stderr); the "listening on" line goes to
    stdout once the twin is ready. ``options`` go to :class:`VehicleTwin` (``link_timeout_s``,
    ``max_stations``, ...).
    """
    import twinloop
    from twinloop.hardware.ready import compiling

    cfg = twinloop.make_config("twinloop/BalloonStationKeeping-v0", **(overrides or {}))
    try:
        with compiling("balloon vehicle twin", report=report):
            twin = VehicleTwin(cfg, host=host, port=port, seed=seed, refuse=refuse, **options)
            twin.warm_up()
    except KeyboardInterrupt:  # Ctrl-C while compiling: nothing was served
        return
    log.info("balloon vehicle twin on udp:%s:%d", *twin.address)
    print(f"balloon vehicle twin listening on udp:{twin.address[0]}:{twin.address[1]}", flush=True)
    twin.serve_forever()
