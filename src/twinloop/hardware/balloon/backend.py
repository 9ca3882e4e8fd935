"""The MAVLink backend: fly a balloon flight controller (or its twin) from a TwinEnv.

Data flow::

    apply(command) --COMMAND_LONG(MAV_CMD_USER_1, code, seq)--> vehicle      (retried)
                   <--COMMAND_ACK(result, 8 seq + executed)---- vehicle
                   <--telemetry frame seq------------------------ vehicle
    reader thread: socket -> MAVLink parser -> heartbeats, ACKs, FrameAssembler -> frames
    frame + forecast service (column at the reported position and time) -> measurement

A reader thread drains the socket continuously (a burst of telemetry never overflows an unread
socket). A command unacknowledged after ``retries`` tries raises
:class:`~twinloop.core.backend.BackendFault` (link lost; the vehicle's failsafe holds STAY and
the env reports the fault). A twin heartbeats only once it is ready (its kernels compiled), so
the error for a silent vehicle says to wait for the twin's "listening on" line. A DENIED
command is reported as STAY in ``applied_command``.
Out-of-range telemetry rejects its frame (counted in :attr:`stats`); garbage is dropped.

The forecast column comes from a forecast service: the generative forecast of the episode's
seed (what the simulator and the twin fly in) or, with ``source="grid"`` in the config, the
gridded forecast file. pymavlink is imported when the backend is made (``twinloop[balloon]``).
"""

from __future__ import annotations

import logging
import math
import socket
import threading
import time
from typing import Any

import numpy as np

from twinloop.core.backend import BackendFault, BaseBackend
from twinloop.core.rng import new_entropy
from twinloop.hardware.balloon import protocol as P
from twinloop.hardware.ready import slow_answer_hint
from twinloop.sim.balloon import kernel as K
from twinloop.sim.balloon.config import BalloonConfig
from twinloop.sim.balloon.env import COMMAND_SPACE, BalloonSimBackend

log = logging.getLogger(__name__)


def parse_address(address: str) -> tuple[str, int]:
    """``"udp:HOST:PORT"`` or ``"HOST:PORT"`` -> ``(host, port)``."""
    text = address[4:] if address.startswith("udp:") else address
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"address {address!r} must look like udp:HOST:PORT (port 1-65535)")
    return host, int(port)


class ForecastService:
    """The forecast the controller sees: the column at a reported position and time."""

    def __init__(self, cfg: BalloonConfig) -> None:
        """Build the forecast source (a kernel row that only evaluates winds)."""
        self._shadow = BalloonSimBackend(cfg)
        self._cfg = cfg
        self._column = np.zeros(2 * cfg.task.n_column_levels)

    def reset(self, seed: int) -> None:
        """Draw the episode's forecast (the same draws as the simulator's for ``seed``)."""
        self._shadow.reset(seed=seed)

    def column(self, x_m: float, y_m: float, elapsed_s: float) -> np.ndarray:
        """Forecast u then v on the column levels at ``(x, y)`` and ``elapsed_s``."""
        f, _, wind, work, params, wp, grid, levels = self._shadow.kernel_args()
        t = elapsed_s + f[0, K.F_T_OFFSET]
        K.forecast_column(0, x_m, y_m, t, wind, work, wp, grid, levels, params, self._column)
        return self._column.copy()


class MavlinkBalloonBackend(BaseBackend):
    """A balloon flight controller reached over MAVLink 2 on UDP.

    Args:
        cfg: The system config (column levels, forecast source).
        address: ``udp:HOST:PORT`` of the vehicle (or its twin).
        ack_timeout_s: Wait for each COMMAND_ACK this long before retrying.
        retries: Tries per command before the link is declared lost.
        connect_timeout_s: Wait this long for the vehicle's first heartbeat.
        frame_timeout_s: Wait this long for the telemetry frame after an ACK.
        heartbeat_s: Ground-station heartbeat period.
    """

    kind = "mavlink"
    deterministic = False

    def __init__(
        self,
        cfg: BalloonConfig,
        address: str = "udp:127.0.0.1:14560",
        ack_timeout_s: float = 1.0,
        retries: int = 3,
        connect_timeout_s: float = 5.0,
        frame_timeout_s: float = 2.0,
        heartbeat_s: float = 1.0,
    ) -> None:
        """Check the options and load pymavlink; nothing connects until :meth:`connect`."""
        super().__init__()
        P.load_dialect()
        self.cfg = cfg
        self.address = parse_address(address)
        for name, value in (
            ("ack_timeout_s", ack_timeout_s),
            ("connect_timeout_s", connect_timeout_s),
            ("frame_timeout_s", frame_timeout_s),
            ("heartbeat_s", heartbeat_s),
        ):
            if not (isinstance(value, int | float) and 0 < value <= 600):
                raise ValueError(f"{name} = {value!r} must lie in (0, 600] s")
        if not (isinstance(retries, int) and 1 <= retries <= 100):
            raise ValueError(f"retries = {retries!r} must be an int in [1, 100]")
        self.ack_timeout_s = float(ack_timeout_s)
        self.retries = retries
        self.connect_timeout_s = float(connect_timeout_s)
        self.frame_timeout_s = float(frame_timeout_s)
        self.heartbeat_s = float(heartbeat_s)
        self.command_space = COMMAND_SPACE
        self.measurement_layout = K.measurement_layout(cfg)
        self.measurement_space = self.measurement_layout.space(np.float64)
        self.forecast = ForecastService(cfg)
        self.stats = {"garbage": 0, "rejected_frames": 0, "retries": 0, "denied": 0, "ignored": 0}
        self._sock: socket.socket | None = None
        self._mav: Any = None
        self._cv = threading.Condition()
        self._acks: dict[int, tuple[int, int, int]] = {}  # seq -> (command, result, executed)
        self._frames: dict[int, dict[str, Any]] = {}
        self._vehicle_heard = 0.0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._seq = 0
        self._acked = False  # whether any command was acknowledged since connect()
        self._last_error = ""

    # connection ------------------------------------------------------------------------------
    def connect(self) -> None:
        """Open the socket, start the reader and heartbeat threads, wait for the vehicle."""
        if self.connected:
            return
        self._mav = P.new_link(P.GCS_SYSID, P.GCS_COMPID)
        self._acked = False
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1" if self.address[0] in ("127.0.0.1", "localhost") else "", 0))
        self._sock.settimeout(0.1)
        self._stop.clear()
        for target in (self._rx_loop, self._heartbeat_loop):
            t = threading.Thread(target=target, daemon=True, name=f"mavlink-{target.__name__}")
            t.start()
            self._threads.append(t)
        deadline = time.monotonic() + self.connect_timeout_s
        with self._cv:
            while self._vehicle_heard == 0.0:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cv.wait(left)
        if self._vehicle_heard == 0.0:
            self._shutdown()
            raise BackendFault(
                f"no heartbeat from a balloon at udp:{self.address[0]}:{self.address[1]} "
                f"within {self.connect_timeout_s:g} s. "
                + slow_answer_hint(
                    "twinloop serve balloon", "connect_timeout_s", self.connect_timeout_s
                )
            )
        super().connect()

    def close(self) -> None:
        """Send STAY (best effort), stop the threads and close the socket."""
        super().close()
        self._shutdown()

    def _shutdown(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=2.0)
        self._threads = []
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def safe_state(self) -> None:
        """Ask the vehicle to hold STAY (no wait: the link may be down)."""
        if self._sock is None:
            return
        self._seq += 1
        self._send_command(P.CMD_ALTITUDE, float(K.STAY), float(self._seq), 0.0)

    def identity(self) -> dict[str, Any]:
        """Kind and address."""
        return {"kind": self.kind, "address": f"udp:{self.address[0]}:{self.address[1]}"}

    # threads ------------------------------------------------------------------------------------
    def _heartbeat_loop(self) -> None:
        while not self._stop.is_set():
            hb = self._mav.heartbeat_encode(P.MAV_TYPE_GCS, P.MAV_AUTOPILOT_GENERIC, 0, 0, 4)
            self._sendto(hb.pack(self._mav))
            self._stop.wait(self.heartbeat_s)

    def _sendto(self, data: bytes) -> None:
        sock = self._sock
        if sock is None:
            return
        try:
            sock.sendto(data, self.address)
        except OSError as exc:
            self._last_error = str(exc)

    def _rx_loop(self) -> None:
        assembler = P.FrameAssembler()
        while not self._stop.is_set():
            sock = self._sock
            if sock is None:
                return
            try:
                data, _ = sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                msgs = P.parse_datagram(self._mav, data)
            except Exception:  # pymavlink raises on some malformed input despite robust mode
                self.stats["garbage"] += 1
                continue
            for msg in msgs:
                self._on_message(msg, assembler)

    def _on_message(self, msg: Any, assembler: P.FrameAssembler) -> None:
        kind = msg.get_type()
        if kind == "BAD_DATA":
            self.stats["garbage"] += 1
            return
        if msg.get_srcSystem() != P.VEHICLE_SYSID:
            self.stats["ignored"] += 1
            return
        with self._cv:
            if kind == "HEARTBEAT":
                if msg.type == P.MAV_TYPE_FREE_BALLOON:
                    self._vehicle_heard = time.monotonic()
                    self._cv.notify_all()
                return
            if kind == "COMMAND_ACK":
                seq, executed = P.parse_ack_code(msg.result_param2)
                self._acks[seq] = (int(msg.command), int(msg.result), executed)
                self._cv.notify_all()
                return
            try:
                done = assembler.add(msg)
            except P.FrameError as exc:
                self.stats["rejected_frames"] += 1
                log.warning("rejected a telemetry frame: %s", exc)
                return
            if done is not None:
                self._frames[done[0] % (1 << 27)] = done[1]
                self._cv.notify_all()

    # commands ---------------------------------------------------------------------------------
    def _send_command(self, command: int, p1: float, p2: float, p3: float) -> None:
        if self._mav is None:
            return
        msg = self._mav.command_long_encode(
            P.VEHICLE_SYSID, P.VEHICLE_COMPID, command, 0, p1, p2, p3, 0.0, 0.0, 0.0, 0.0
        )
        self._sendto(msg.pack(self._mav))

    def _transact(
        self, command: int, p1: float, p2: float, p3: float, seq: int
    ) -> tuple[int, int, dict[str, Any] | None]:
        """Send a command until acknowledged; return ``(result, executed, frame or None)``."""
        key = seq % (1 << 27)
        for attempt in range(self.retries):
            if attempt:
                self.stats["retries"] += 1
            self._send_command(command, p1, p2, p3)
            deadline = time.monotonic() + self.ack_timeout_s
            with self._cv:
                while key not in self._acks and time.monotonic() < deadline:
                    self._cv.wait(max(deadline - time.monotonic(), 0.0))
                if key in self._acks:
                    _, result, executed = self._acks.pop(key)
                    break
        else:
            hint = (
                ""
                if self._acked
                else " The vehicle has not acknowledged any command on this link yet: on a "
                f"slow or busy machine raise the backend option ack_timeout_s (now "
                f"{self.ack_timeout_s:g} s) or retries (now {self.retries})."
            )
            raise BackendFault(
                f"link lost: no COMMAND_ACK for command {command} (sequence {seq}) from "
                f"udp:{self.address[0]}:{self.address[1]} after {self.retries} tries of "
                f"{self.ack_timeout_s} s; the vehicle's failsafe holds STAY. Reset the env "
                "once the link is back." + hint
            )
        self._acked = True
        if result not in (P.RESULT_ACCEPTED, P.RESULT_DENIED):
            return result, executed, None
        deadline = time.monotonic() + self.frame_timeout_s
        with self._cv:
            while key not in self._frames and time.monotonic() < deadline:
                self._cv.wait(max(deadline - time.monotonic(), 0.0))
            frame = self._frames.pop(key, None)
            self._frames.clear()
        if frame is None:
            raise BackendFault(
                f"link lost: command {command} (sequence {seq}) was acknowledged but no "
                f"telemetry frame arrived within {self.frame_timeout_s} s"
            )
        return result, executed, frame

    def _measurement(self, frame: dict[str, Any]) -> np.ndarray:
        lat0 = frame["station"][0]
        x = (frame["lon"] - frame["station"][1]) * P.M_PER_DEG * math.cos(math.radians(lat0))
        y = (frame["lat"] - lat0) * P.M_PER_DEG
        column = self.forecast.column(x, y, frame["elapsed_s"])
        return P.frame_to_measurement(frame, self.cfg, column)

    def _require(self) -> None:
        if not self.connected:
            raise BackendFault("the MAVLink backend is not connected; call connect() or reset()")

    def reset(self, seed: int | None = None, options: dict[str, Any] | None = None) -> np.ndarray:
        """Start an episode (the twin restarts from ``seed``; a real vehicle flies on)."""
        self._require()
        seed = new_entropy() % (2**48) if seed is None else int(seed) % (2**48)
        self._seq += 1
        lo, hi = P.split_seed(seed)
        result, _, frame = self._transact(P.CMD_EPISODE, lo, hi, float(self._seq), self._seq)
        self.forecast.reset(seed)
        if frame is None:  # a real vehicle: the episode starts where it is, after one STAY
            log.info("vehicle answered %d to an episode start; flying on from here", result)
            return self.apply(np.array([float(K.STAY)]))[0]
        return self._measurement(frame)

    def apply(self, command: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Send one altitude command; return ``(measurement, applied_command)``."""
        self._require()
        code = int(min(max(float(command[0]), 0.0), 2.0) + 0.5)
        self._seq += 1
        result, executed, frame = self._transact(
            P.CMD_ALTITUDE, float(code), float(self._seq), 0.0, self._seq
        )
        if frame is None:
            raise BackendFault(
                f"the vehicle rejected altitude command {code} with MAV_RESULT {result} "
                "(terminal state or busy); reset the env"
            )
        if result == P.RESULT_DENIED:
            self.stats["denied"] += 1
            log.warning("the vehicle refused command %d; it flew STAY", code)
        return self._measurement(frame), np.array([float(executed)])


def make_mavlink_backend(cfg: BalloonConfig, **options: Any) -> MavlinkBalloonBackend:
    """Backend factory for ``backend="mavlink"`` (options: address, timeouts, retries)."""
    return MavlinkBalloonBackend(cfg, **options)
