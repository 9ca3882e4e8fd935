"""How twinloop talks to a balloon flight controller over MAVLink 2 (common dialect).

Both ends send a ``HEARTBEAT`` every second: the vehicle as ``MAV_TYPE_FREE_BALLOON``, the
ground station as ``MAV_TYPE_GCS``. A vehicle that hears no ground station for its link
timeout holds STAY (its failsafe).

Commands (ground -> vehicle), acknowledged with ``COMMAND_ACK`` and retried until acknowledged:

* ``COMMAND_LONG`` ``MAV_CMD_USER_1`` (altitude control): param1 = 0 DOWN, 1 STAY, 2 UP;
  param2 = step sequence number (a retry repeats it; the vehicle executes each number once).
  The ACK's ``result_param2`` is ``8 * sequence + executed command`` (the command after the
  vehicle's safety layers), so a late ACK of an earlier retry is never mistaken for this one;
  ``DENIED`` means the vehicle refused the command (it flies STAY for that step).
* ``COMMAND_LONG`` ``MAV_CMD_USER_2`` (start an episode): param1, param2 = a seed's low and
  high 24 bits; param3 = sequence number. Only the vehicle twin accepts it; a real vehicle
  answers ``UNSUPPORTED`` and the episode starts from wherever it flies.

Telemetry frame (vehicle -> ground, after every control step and episode start): ``HOME_POSITION``
(the station), ``GLOBAL_POSITION_INT`` (position, altitude, vx/vy = in-situ wind in cm/s),
``SCALED_PRESSURE`` (ambient pressure, ``press_diff`` = superpressure, hPa), ``SYSTEM_TIME``,
``NAMED_VALUE_FLOAT`` for the fields MAVLink has no message for (below), and last a
``NAMED_VALUE_INT`` ``"frame"`` with the sequence number that closes the frame. Every field is
range-checked on arrival; a frame with an out-of-range value is rejected whole.
No pickle, no Python objects: only MAVLink's own binary encoding crosses the wire.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from twinloop.sim.balloon import kernel as K
from twinloop.sim.balloon.config import EARTH_RADIUS_M, BalloonConfig

VEHICLE_SYSID = 1
VEHICLE_COMPID = 1  # MAV_COMP_ID_AUTOPILOT1
GCS_SYSID = 255
GCS_COMPID = 190  # MAV_COMP_ID_MISSIONPLANNER
MAV_TYPE_FREE_BALLOON = 8
MAV_TYPE_GCS = 6
MAV_AUTOPILOT_GENERIC = 0
MAV_STATE_ACTIVE = 4
CMD_ALTITUDE = 31010  # MAV_CMD_USER_1
CMD_EPISODE = 31011  # MAV_CMD_USER_2
RESULT_ACCEPTED = 0
RESULT_TEMPORARILY_REJECTED = 1
RESULT_DENIED = 2
RESULT_UNSUPPORTED = 3
RESULT_FAILED = 4
FRAME_MARK = b"frame"


def ack_code(seq: int, executed: int) -> int:
    """``result_param2`` of an acknowledged command: sequence and executed command."""
    return (int(seq) % (1 << 27)) * 8 + int(executed)


def parse_ack_code(code: int) -> tuple[int, int]:
    """Inverse of :func:`ack_code`: ``(sequence mod 2^27, executed command)``."""
    return int(code) // 8, int(code) % 8


#: NAMED_VALUE_FLOAT names (<= 10 chars) -> measurement column and valid range.
NAMED_FLOATS: dict[str, tuple[int, float, float]] = {
    "soc": (K.M_SOC, 0.0, 1.0),
    "sun_el": (K.M_EL, -90.0, 90.0),
    "hour_ang": (K.M_HOUR, -180.0, 180.0),
    "acs_w": (K.M_ACS_W, 0.0, 5000.0),
    "cmd": (K.M_CMD, 0.0, 2.0),
    "status": (K.M_STATUS, 0.0, 3.0),
    "excess": (K.M_EXCESS, 0.0, 1.0),
    "paused": (K.M_PAUSED, 0.0, 1.0),
    "wfc_u": (K.M_WIND_FC, -300.0, 300.0),
    "wfc_v": (K.M_WIND_FC + 1, -300.0, 300.0),
    "w_p": (K.M_WIND_P, 100.0, 1e5),
}

DEG_E7 = 1e7
M_PER_DEG = EARTH_RADIUS_M * math.pi / 180.0


def load_dialect() -> Any:
    """Load pymavlink's MAVLink 2 common dialect (imported lazily: an optional dependency)."""
    try:
        from pymavlink.dialects.v20 import common
    except ImportError as exc:
        raise ImportError(
            "the MAVLink backend needs pymavlink; install it with: pip install 'twinloop[balloon]'"
        ) from exc
    return common


def new_link(sysid: int, compid: int) -> Any:
    """A MAVLink 2 encoder/decoder that skips malformed bytes instead of raising."""
    dialect = load_dialect()
    mav = dialect.MAVLink(None, srcSystem=sysid, srcComponent=compid)
    mav.robust_parsing = True
    return mav


def parse_datagram(mav: Any, data: bytes) -> list[Any]:
    """Decode one UDP datagram; bytes left over from an earlier datagram are discarded.

    pymavlink's parser is a byte stream; over UDP each datagram holds whole messages, so a
    truncated or garbage datagram must not swallow the start of the next one.
    """
    mav.buf = bytearray()
    mav.buf_index = 0
    mav.expected_length = 8  # HEADER_LEN_V1 + 2, pymavlink's initial state
    mav.have_prefix_error = False
    return mav.parse_buffer(data) or []


def split_seed(seed: int) -> tuple[float, float]:
    """A seed < 2^48 as two floats that a float32 parameter carries exactly (24 bits each)."""
    if not 0 <= seed < 2**48:
        raise ValueError(f"seed {seed} must lie in [0, 2^48) to travel over MAVLink")
    return float(seed & 0xFFFFFF), float(seed >> 24)


def join_seed(low: float, high: float) -> int:
    """Inverse of :func:`split_seed`."""
    return (int(high) << 24) | int(low)


def encode_frame(mav: Any, meas: np.ndarray, seq: int) -> list[bytes]:
    """The telemetry frame of one measurement row, as packed MAVLink messages."""
    lat0, lon0 = float(meas[K.M_STATION]), float(meas[K.M_STATION + 1])
    x, y = float(meas[K.M_POS]), float(meas[K.M_POS + 1])
    lat = lat0 + y / M_PER_DEG
    lon = lon0 + x / (M_PER_DEG * math.cos(math.radians(lat0)))
    t_ms = round(float(meas[K.M_ELAPSED]) * 1000.0)
    msgs = [
        mav.home_position_encode(
            round(lat0 * DEG_E7),
            round(lon0 * DEG_E7),
            0,
            0.0,
            0.0,
            0.0,
            [1.0, 0.0, 0.0, 0.0],
            0.0,
            0.0,
            0.0,
        ),
        mav.global_position_int_encode(
            t_ms,
            round(lat * DEG_E7),
            round(lon * DEG_E7),
            round(float(meas[K.M_ALT]) * 1000.0),
            round(float(meas[K.M_ALT]) * 1000.0),
            round(float(meas[K.M_WIND]) * 100.0),
            round(float(meas[K.M_WIND + 1]) * 100.0),
            0,
            65535,
        ),
        mav.scaled_pressure_encode(
            t_ms, float(meas[K.M_P]) / 100.0, float(meas[K.M_SP]) / 100.0, 0
        ),
        mav.system_time_encode(round(float(meas[K.M_UNIX]) * 1e6), t_ms),
    ]
    for name, (col, _, _) in NAMED_FLOATS.items():
        msgs.append(mav.named_value_float_encode(t_ms, name.encode(), float(meas[col])))
    msgs.append(mav.named_value_int_encode(t_ms, FRAME_MARK, int(seq)))
    return [m.pack(mav) for m in msgs]


class FrameError(ValueError):
    """A telemetry frame carried a value out of its range (the message names it)."""


class FrameAssembler:
    """Collects telemetry messages into frames; validates every field on arrival."""

    def __init__(self) -> None:
        """Start with an empty frame."""
        self._fields: dict[str, Any] = {}

    def add(self, msg: Any) -> tuple[int, dict[str, Any]] | None:
        """Take one message; return ``(seq, fields)`` when it closes a frame.

        Raises:
            FrameError: A value outside its range (the frame in progress is dropped).
        """
        kind = msg.get_type()
        f = self._fields
        try:
            if kind == "HOME_POSITION":
                f["station"] = (
                    _deg(msg.latitude, 90.0, "HOME_POSITION.latitude"),
                    _deg(msg.longitude, 180.0, "HOME_POSITION.longitude"),
                )
            elif kind == "GLOBAL_POSITION_INT":
                f["lat"] = _deg(msg.lat, 90.0, "GLOBAL_POSITION_INT.lat")
                f["lon"] = _deg(msg.lon, 180.0, "GLOBAL_POSITION_INT.lon")
                f["alt_m"] = _check(msg.alt / 1000.0, -1000.0, 60000.0, "GLOBAL_POSITION_INT.alt")
                f["wind"] = (
                    _check(msg.vx / 100.0, -300.0, 300.0, "GLOBAL_POSITION_INT.vx"),
                    _check(msg.vy / 100.0, -300.0, 300.0, "GLOBAL_POSITION_INT.vy"),
                )
                f["elapsed_s"] = msg.time_boot_ms / 1000.0
            elif kind == "SCALED_PRESSURE":
                f["p_pa"] = _check(msg.press_abs * 100.0, 100.0, 1.1e5, "SCALED_PRESSURE.press_abs")
                f["sp_pa"] = _check(msg.press_diff * 100.0, -1e4, 1e4, "SCALED_PRESSURE.press_diff")
            elif kind == "SYSTEM_TIME":
                f["unix_s"] = msg.time_unix_usec / 1e6
            elif kind == "NAMED_VALUE_FLOAT":
                name = _name(msg.name)
                if name in NAMED_FLOATS:
                    _, lo, hi = NAMED_FLOATS[name]
                    f[name] = _check(float(msg.value), lo, hi, f"NAMED_VALUE_FLOAT {name!r}")
            elif kind == "NAMED_VALUE_INT" and _name(msg.name) == FRAME_MARK.decode():
                missing = {"station", "lat", "p_pa", "unix_s", *NAMED_FLOATS} - set(f)
                self._fields = {}
                if missing:
                    raise FrameError(f"telemetry frame {msg.value} lacks {sorted(missing)}")
                return int(msg.value), f
        except FrameError:
            self._fields = {}
            raise
        return None


def _name(raw: Any) -> str:
    if isinstance(raw, bytes):
        raw = raw.decode("ascii", errors="replace")
    return str(raw).rstrip("\x00")


def _check(value: float, lo: float, hi: float, what: str) -> float:
    if not (math.isfinite(value) and lo <= value <= hi):
        raise FrameError(f"{what} = {value!r} is outside [{lo}, {hi}]")
    return float(value)


def _deg(value_e7: int, limit: float, what: str) -> float:
    return _check(value_e7 / DEG_E7, -limit, limit, what)


def frame_to_measurement(
    fields: dict[str, Any], cfg: BalloonConfig, column: np.ndarray | None
) -> np.ndarray:
    """A measurement row (:func:`~twinloop.sim.balloon.kernel.measurement_layout`) from a frame.

    Args:
        fields: A frame from :class:`FrameAssembler`.
        cfg: The system config (column size).
        column: Forecast u then v on the column levels (from the forecast service), or None
            for zeros.
    """
    m = np.zeros(K.measurement_size(cfg))
    lat0, lon0 = fields["station"]
    m[K.M_POS] = (fields["lon"] - lon0) * M_PER_DEG * math.cos(math.radians(lat0))
    m[K.M_POS + 1] = (fields["lat"] - lat0) * M_PER_DEG
    m[K.M_P] = fields["p_pa"]
    m[K.M_ALT] = fields["alt_m"]
    m[K.M_SP] = fields["sp_pa"]
    m[K.M_ELAPSED] = fields["elapsed_s"]
    m[K.M_WIND] = fields["wind"][0]
    m[K.M_WIND + 1] = fields["wind"][1]
    m[K.M_STATION] = lat0
    m[K.M_STATION + 1] = lon0
    m[K.M_UNIX] = fields["unix_s"]
    for name, (col, _, _) in NAMED_FLOATS.items():
        m[col] = fields[name]
    if column is not None:
        m[K.M_COLUMN : K.M_COLUMN + column.size] = column
    return m
