"""The MAVLink backend: fly a balloon flight controller (or its twin) from a TwinEnv.

Data flow::

    apply(command) --COMMAND_LONG(MAV_CMD_USER_1, code, seq)--> vehicle      (retried)
                   <--COMMAND_ACK(result, reason, 8 seq + executed)-- vehicle
                   <--telemetry frame seq------------------------ vehicle
    reader thread: socket -> datagram (size cap) -> MAVLink parser -> from the vehicle?
        -> every field checked (protocol tables) -> heartbeat state, the ACK and frame of the
           one command waited for (anything else dropped), the vehicle's status text, the
           name of its device profile (a twin with hidden physics announces it)
    frame + forecast service (column at the reported position and time) -> measurement

The backend keeps the ground-station side of the contract in :mod:`.protocol`. A reader
thread drains the socket continuously (a burst of telemetry never overflows an unread socket)
and survives any input. A command unacknowledged after ``retries`` tries raises
:class:`~twinloop.core.backend.BackendFault` (link lost; the vehicle's failsafe holds STAY and
the env reports the fault); the message says what the vehicle's heartbeat last showed (no
heartbeat: the link is down both ways; failsafe: the vehicle does not hear this station). A
twin heartbeats only once it is ready (its kernels compiled), so the error for a silent vehicle
says to wait for the twin's "listening on" line. A command refused by the vehicle's policy is
reported as STAY in ``applied_command``; any other refusal (episode over, another ground station
in command, malformed) is a one-line :class:`~twinloop.core.backend.BackendFault` naming the
reason. Out-of-range telemetry rejects its frame, an out-of-range ACK or heartbeat is rejected
(counted in :attr:`stats`, logged at most once a second); garbage is dropped. ``close()`` puts
the vehicle in STAY and releases command, so the next ground station may command it at once.

The forecast column comes from a forecast service: the generative forecast of the episode's
seed (what the simulator and the twin fly in) or, with ``source="grid"`` in the config, the
gridded forecast file. pymavlink is imported when the backend is made (``twinloop[balloon]``).
"""

from __future__ import annotations

import logging
import math
import re
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

_HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9.\-]{0,252}")
#: A vehicle whose heartbeat is older than this is taken as unheard (MAVLink: one a second).
HEARTBEAT_STALE_S = 2.5


def parse_address(address: str) -> tuple[str, int]:
    """``"udp:HOST:PORT"``, ``"udpout:HOST:PORT"`` or ``"HOST:PORT"`` -> ``(host, port)``.

    HOST is a host name or an IPv4 address.

    Raises:
        ValueError: Anything else, e.g. a ``tcp://`` URL (the message says what to write).
    """
    example = "write udp:HOST:PORT, e.g. udp:127.0.0.1:14560"
    if not isinstance(address, str):
        raise ValueError(f"address {address!r} must be a string: {example}")
    if "://" in address:
        raise ValueError(
            f"address {address!r} is a URL, but the MAVLink backend talks UDP datagrams: {example}"
        )
    text = address.strip()
    for prefix in ("udp:", "udpout:"):
        if text.startswith(prefix):
            text = text[len(prefix) :]
            break
    host, sep, port = text.rpartition(":")
    if not (
        sep
        and _HOST.fullmatch(host)
        and port.isascii()
        and port.isdigit()
        and 0 < int(port) < 65536
    ):
        raise ValueError(
            f"address {address!r} must look like udp:HOST:PORT (HOST a name or an IPv4 "
            f"address, PORT 1-65535): {example}"
        )
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
        self.stats = dict.fromkeys(
            (
                "garbage",  # undecodable bytes, oversized datagrams
                "rejected_frames",  # telemetry frames with a field out of range
                "rejected",  # heartbeats and ACKs with a field out of range
                "ignored",  # other senders, other targets
                "stale",  # ACKs and frames of commands nobody waits for
                "retries",
                "denied",
                "errors",  # unexpected errors in the reader
            ),
            0,
        )
        self._sock: socket.socket | None = None
        self._mav: Any = None
        self._cv = threading.Condition()
        self._pending: tuple[int, int] | None = None  # (command, seq) waited for
        self._ack: dict[str, int] | None = None
        self._frame: dict[str, Any] | None = None
        self._vehicle_heard = 0.0
        self._vehicle_state: int | None = None
        self._vehicle_held: int | None = None
        self._status_text = ""  # what the vehicle last said in a STATUSTEXT
        self._profile: str | None = None  # the device profile the vehicle last announced
        self._rejected = ""  # the last validation error
        self._throttle = P.Throttle()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._seq = 0
        self._acked = False  # whether any command was acknowledged since connect()
        self._last_error = ""

    @property
    def where(self) -> str:
        """The vehicle's address as ``udp:HOST:PORT``."""
        return f"udp:{self.address[0]}:{self.address[1]}"

    # connection ------------------------------------------------------------------------------
    def connect(self) -> None:
        """Open the socket, start the reader and heartbeat threads, wait for the vehicle."""
        if self.connected:
            return
        self._mav = P.new_link(P.GCS_SYSID, P.GCS_COMPID)
        self._acked = False
        self._vehicle_heard = 0.0
        self._profile = None
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1" if self.address[0] in ("127.0.0.1", "localhost") else "", 0))
        self._sock.settimeout(0.1)
        self._stop.clear()
        parser = P.new_link(P.GCS_SYSID, P.GCS_COMPID)
        for target, args in ((self._rx_loop, (parser,)), (self._heartbeat_loop, ())):
            t = threading.Thread(
                target=target, args=args, daemon=True, name=f"mavlink-{target.__name__}"
            )
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
                f"no heartbeat from a balloon at {self.where} within "
                f"{self.connect_timeout_s:g} s{self._heard_instead()}. "
                + slow_answer_hint(
                    "twinloop serve balloon", "connect_timeout_s", self.connect_timeout_s
                )
            )
        super().connect()

    def close(self) -> None:
        """Send STAY and release command (best effort), stop the threads, close the socket."""
        was_connected = self.connected
        try:
            super().close()
        finally:
            if was_connected:
                self._release()
            self._shutdown()

    def _release(self) -> None:
        """Give up command of the vehicle, so another ground station may command it at once."""
        self._seq = P.next_seq(self._seq)
        try:
            self._transact(P.CMD_RELEASE, float(self._seq), 0.0, 0.0, self._seq, tries=1)
        except BackendFault as exc:  # the vehicle frees it after its link timeout anyway
            log.info("could not release command of the vehicle: %s", exc)

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
        self._seq = P.next_seq(self._seq)
        self._send_command(P.CMD_ALTITUDE, float(K.STAY), float(self._seq), 0.0)

    @property
    def listening(self) -> bool:
        """Whether the reader and heartbeat threads run (connect to close, whatever arrives)."""
        return len(self._threads) == 2 and all(t.is_alive() for t in self._threads)

    def identity(self) -> dict[str, Any]:
        """Kind and address; ``"profile"``: the device profile the vehicle announced, if any.

        A twin with hidden physics announces its profile's name (never its values) when it
        first hears this station and at each episode start (:mod:`.protocol`, contract point
        10), so a capture records the name as ``device_profile``; a nominal vehicle announces
        none, and the identity has no ``"profile"``.
        """
        out: dict[str, Any] = {"kind": self.kind, "address": self.where}
        with self._cv:
            profile = self._profile
        if profile is not None:
            out["profile"] = profile
        return out

    @property
    def vehicle_status(self) -> dict[str, Any]:
        """What the vehicle's last heartbeat said.

        Keys: ``state`` (MAV_STATE name, or None before any heartbeat), ``failsafe`` (the
        vehicle does not hear its ground station in command and holds STAY), ``held`` (the
        altitude command it flies now), ``heard_s_ago`` and ``said`` (its last STATUSTEXT
        since the last command was sent, printable ASCII).
        """
        with self._cv:
            heard, state, held = self._vehicle_heard, self._vehicle_state, self._vehicle_held
            said = self._status_text
        return {
            "state": None if state is None else P.MAV_STATE_NAMES[state],
            "failsafe": state in (P.MAV_STATE_CRITICAL, P.MAV_STATE_EMERGENCY),
            "held": None if held is None else K.COMMAND_NAMES[held].upper(),
            "heard_s_ago": None if heard == 0.0 else time.monotonic() - heard,
            "said": said,
        }

    # threads ------------------------------------------------------------------------------------
    def _heartbeat_loop(self) -> None:
        while not self._stop.is_set():
            try:
                hb = self._mav.heartbeat_encode(
                    P.MAV_TYPE_GCS, P.MAV_AUTOPILOT_GENERIC, 0, 0, P.MAV_STATE_ACTIVE
                )
                self._sendto(hb.pack(self._mav))
            except Exception as exc:  # never stop telling the vehicle we are here
                self._throttle.log(log, logging.ERROR, "heartbeat", "heartbeat: %r", exc)
            self._stop.wait(self.heartbeat_s)

    def _sendto(self, data: bytes) -> None:
        sock = self._sock
        if sock is None:
            return
        try:
            sock.sendto(data, self.address)
        except OSError as exc:
            self._last_error = str(exc)

    def _rx_loop(self, parser: Any) -> None:
        assembler = P.FrameAssembler()
        while not self._stop.is_set():
            sock = self._sock
            if sock is None:
                return
            try:
                data, _ = sock.recvfrom(65536)
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set() or sock.fileno() < 0:
                    return
                time.sleep(0.01)
                continue
            try:
                msgs = P.parse_datagram(parser, data)
            except Exception:  # oversized, or pymavlink raised on malformed input
                self.stats["garbage"] += 1
                continue
            for msg in msgs:
                try:
                    self._on_message(msg, assembler)
                except Exception as exc:  # the last line of defence: the reader never dies
                    self.stats["errors"] += 1
                    self._throttle.log(
                        log, logging.ERROR, "error", "error reading from %s: %r", self.where, exc
                    )

    def _on_message(self, msg: Any, assembler: P.FrameAssembler) -> None:
        kind = msg.get_type()
        if kind == "BAD_DATA":
            self.stats["garbage"] += 1
            return
        if (msg.get_srcSystem(), msg.get_srcComponent()) != (P.VEHICLE_SYSID, P.VEHICLE_COMPID):
            self.stats["ignored"] += 1
            return
        try:
            if kind == "HEARTBEAT":
                self._on_heartbeat(P.read_fields(msg, P.VEHICLE_HEARTBEAT))
            elif kind == "COMMAND_ACK":
                self._on_ack(msg)
            elif kind == "STATUSTEXT":
                profile = P.read_profile(msg)
                if profile is not None:
                    self._on_profile(profile)
                    return
                text = P.read_name(msg, "text")
                with self._cv:
                    self._status_text = text
                self._throttle.log(log, logging.INFO, "text", "the vehicle says: %r", text)
            else:
                self._on_frame(assembler.add(msg))
        except P.ProtocolError as exc:
            frame = isinstance(exc, P.FrameError)
            self.stats["rejected_frames" if frame else "rejected"] += 1
            self._rejected = str(exc)
            what = "a telemetry frame" if frame else f"a {kind}"
            self._throttle.log(
                log, logging.WARNING, kind, "rejected %s from %s: %s", what, self.where, exc
            )

    def _on_profile(self, name: str) -> None:
        with self._cv:
            was, self._profile = self._profile, name
        if name != was:
            log.info(
                "the vehicle at %s flies device profile %r (its values stay hidden)",
                self.where,
                name,
            )

    def _on_heartbeat(self, hb: dict[str, int]) -> None:
        failsafe = (P.MAV_STATE_CRITICAL, P.MAV_STATE_EMERGENCY)
        with self._cv:
            was = self._vehicle_state
            self._vehicle_heard = time.monotonic()
            self._vehicle_state, self._vehicle_held = hb["system_status"], hb["held"]
            self._cv.notify_all()
        now = hb["system_status"]
        if now in failsafe and was not in failsafe:
            log.warning(
                "the vehicle at %s reports failsafe (MAV_STATE_%s): it does not hear its ground "
                "station in command and holds STAY",
                self.where,
                P.MAV_STATE_NAMES[now],
            )
        elif was in failsafe and now not in failsafe:
            log.info(
                "the vehicle at %s left failsafe (MAV_STATE_%s)", self.where, P.MAV_STATE_NAMES[now]
            )

    def _on_ack(self, msg: Any) -> None:
        if msg.target_system not in (0, P.GCS_SYSID) or msg.target_component not in (
            0,
            P.GCS_COMPID,
        ):
            self.stats["ignored"] += 1
            return
        ack = P.read_ack(msg)
        with self._cv:
            pending = self._pending
            # UNSUPPORTED (a real vehicle leaves result_param2 0) and an ACK without a sequence
            # (the vehicle could not read it) answer the pending command of their id
            unsequenced = ack["code"] == P.NO_SEQUENCE or ack["result"] == P.RESULT_UNSUPPORTED
            if (
                pending is None
                or ack["command"] != pending[0]
                or (ack["seq"] != pending[1] and not unsequenced)
            ):
                self.stats["stale"] += 1  # a late ACK of an earlier command, or not ours
                return
            self._ack = ack
            self._cv.notify_all()

    def _on_frame(self, done: tuple[int, dict[str, Any]] | None) -> None:
        if done is None:
            return
        with self._cv:
            if self._pending is None or done[0] != self._pending[1]:
                self.stats["stale"] += 1
                return
            self._frame = done[1]
            self._cv.notify_all()

    # diagnosis ---------------------------------------------------------------------------------
    def _heard_instead(self) -> str:
        """What did arrive, for the "no heartbeat" error (empty if nothing did)."""
        parts = []
        with self._cv:
            text = self._status_text
        if text:
            parts.append(f"the vehicle said {text!r}")
        if self.stats["rejected"]:
            parts.append(f"{self.stats['rejected']} message(s) were rejected: {self._rejected}")
        return f" ({'; '.join(parts)})" if parts else ""

    def _link_diagnosis(self) -> str:
        """What the vehicle's heartbeat says about a lost link, as one sentence."""
        status = self.vehicle_status
        ago = status["heard_s_ago"]
        if ago is None or ago > HEARTBEAT_STALE_S:
            return (
                " No heartbeat from the vehicle"
                + ("" if ago is None else f" for {ago:.1f} s")
                + ": the link is down both ways."
            )
        if status["failsafe"]:
            return (
                f" The vehicle's heartbeat ({ago:.1f} s ago) reports failsafe "
                f"(MAV_STATE_{status['state']}): it does not hear this station (uplink lost)."
            )
        return f" The vehicle's heartbeat still arrives ({ago:.1f} s ago, {status['state']})."

    def _refusal(self, ack: dict[str, int], what: str) -> str:
        """The one-line error for a refused command."""
        reason = ack["reason"]
        text = (
            f"the vehicle at {self.where} refused {what}: MAV_RESULT_"
            f"{P.RESULT_NAMES[ack['result']]} ({P.REASONS[reason]})"
        )
        with self._cv:
            said = self._status_text
        if said:
            text += f"; it said {said!r}"
        advice = {
            P.REASON_TERMINAL: "reset the env",
            P.REASON_OTHER_STATION: "one ground station commands a vehicle at a time: stop the "
            "other one (it releases command when it closes, or after the vehicle's link timeout "
            "of silence) or serve a second twin on another port",
            P.REASON_TOO_MANY_STATIONS: "stop a ground station that watches this vehicle",
            P.REASON_INVALID: "this client and the vehicle disagree on the protocol",
        }.get(reason, "reset the env")
        return f"{text}; it holds STAY. To go on, {advice}."

    # commands ---------------------------------------------------------------------------------
    def _send_command(self, command: int, p1: float, p2: float, p3: float) -> None:
        if self._mav is None:
            return
        msg = self._mav.command_long_encode(
            P.VEHICLE_SYSID, P.VEHICLE_COMPID, command, 0, p1, p2, p3, 0.0, 0.0, 0.0, 0.0
        )
        self._sendto(msg.pack(self._mav))

    def _transact(
        self, command: int, p1: float, p2: float, p3: float, seq: int, tries: int | None = None
    ) -> tuple[dict[str, int], dict[str, Any] | None]:
        """Send a command until acknowledged; return ``(ack, frame or None)``.

        A frame is awaited for an accepted altitude or episode command and for one the
        vehicle's policy refused (it flew STAY).
        """
        tries = self.retries if tries is None else tries
        with self._cv:
            self._pending, self._ack, self._frame, self._status_text = (
                (command, seq),
                None,
                None,
                "",
            )
        try:
            ack = None
            for attempt in range(tries):
                if attempt:
                    self.stats["retries"] += 1
                self._send_command(command, p1, p2, p3)
                deadline = time.monotonic() + self.ack_timeout_s
                with self._cv:
                    while self._ack is None and time.monotonic() < deadline:
                        self._cv.wait(max(deadline - time.monotonic(), 0.0))
                    ack = self._ack
                if ack is not None:
                    break
            if ack is None:
                hint = (
                    ""
                    if self._acked
                    else " The vehicle has not acknowledged any command on this link yet: on a "
                    f"slow or busy machine raise the backend option ack_timeout_s (now "
                    f"{self.ack_timeout_s:g} s) or retries (now {self.retries})."
                )
                raise BackendFault(
                    f"link lost: no COMMAND_ACK for command {command} (sequence {seq}) from "
                    f"{self.where} after {tries} tries of {self.ack_timeout_s} s; the vehicle's "
                    "failsafe holds STAY. Reset the env once the link is back."
                    + self._link_diagnosis()
                    + hint
                )
            self._acked = True
            flew = ack["result"] == P.RESULT_ACCEPTED or (
                ack["result"] == P.RESULT_DENIED and ack["reason"] == P.REASON_POLICY
            )
            if command == P.CMD_RELEASE or not flew:
                return ack, None
            deadline = time.monotonic() + self.frame_timeout_s
            with self._cv:
                while self._frame is None and time.monotonic() < deadline:
                    self._cv.wait(max(deadline - time.monotonic(), 0.0))
                frame = self._frame
            if frame is None:
                raise BackendFault(
                    f"link lost: command {command} (sequence {seq}) was acknowledged but no "
                    f"valid telemetry frame arrived within {self.frame_timeout_s} s"
                    + (f" (last rejected: {self._rejected})" if self._rejected else "")
                    + "; the vehicle's failsafe holds STAY. Reset the env once the link is back."
                )
            return ack, frame
        finally:
            with self._cv:
                self._pending, self._ack, self._frame = None, None, None

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
        self._seq = P.next_seq(self._seq)
        lo, hi = P.split_seed(seed)
        ack, frame = self._transact(P.CMD_EPISODE, lo, hi, float(self._seq), self._seq)
        self.forecast.reset(seed)
        if frame is None:
            if ack["result"] != P.RESULT_UNSUPPORTED:
                raise BackendFault(self._refusal(ack, "the episode start"))
            # a real vehicle: the episode starts where it is, after one STAY
            log.info("the vehicle does not start episodes; flying on from where it is")
            return self.apply(np.array([float(K.STAY)]))[0]
        return self._measurement(frame)

    def apply(self, command: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Send one altitude command; return ``(measurement, applied_command)``.

        Raises:
            ValueError: The command is not a finite number.
            BackendFault: The link is lost, or the vehicle refused the command for a reason
                other than its policy.
        """
        self._require()
        value = float(command[0])
        if not math.isfinite(value):
            raise ValueError(f"altitude command {value!r} is not a finite number")
        code = int(min(max(value, 0.0), 2.0) + 0.5)
        self._seq = P.next_seq(self._seq)
        ack, frame = self._transact(P.CMD_ALTITUDE, float(code), float(self._seq), 0.0, self._seq)
        if frame is None:
            raise BackendFault(self._refusal(ack, f"altitude command {K.COMMAND_NAMES[code]}"))
        if ack["result"] == P.RESULT_DENIED:
            self.stats["denied"] += 1
            log.warning("the vehicle refused command %d; it flew STAY", code)
        return self._measurement(frame), np.array([float(ack["executed"])])


def make_mavlink_backend(cfg: BalloonConfig, **options: Any) -> MavlinkBalloonBackend:
    """Backend factory for ``backend="mavlink"`` (options: address, timeouts, retries)."""
    return MavlinkBalloonBackend(cfg, **options)
