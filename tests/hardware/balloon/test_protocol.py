"""The protocol's one validation path: every field of every message, against the contract.

The oracles here are written from the contract in :mod:`twinloop.hardware.balloon.protocol`'s
docstring, not from its tables, so a table that drifts from the contract fails.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest

pytest.importorskip("pymavlink", reason="the MAVLink backend needs pymavlink: twinloop[balloon]")

from hypothesis import given
from hypothesis import strategies as st

import twinloop
from tests.hardware.balloon.helpers import (
    QUICK,
    contract_valid,
    f32,
    field_values,
    float32s,
    messages,
    replace,
)
from twinloop.hardware.balloon import protocol as P
from twinloop.hardware.balloon.backend import parse_address
from twinloop.sim.balloon.env import BalloonSimBackend

ID = "twinloop/BalloonStationKeeping-v0"


def _roundtrip(msg, sysid=P.GCS_SYSID, compid=P.GCS_COMPID):
    """What the receiver decodes of ``msg`` (float32 rounding included)."""
    data = msg.pack(P.new_link(sysid, compid))
    (got,) = P.parse_datagram(P.new_link(9, 9), data)
    return got


# --- commands (ground -> vehicle) -------------------------------------------------------------
@QUICK
@given(
    command=st.sampled_from((P.CMD_ALTITUDE, P.CMD_EPISODE, P.CMD_RELEASE)),
    params=st.lists(float32s(), min_size=7, max_size=7),
)
def test_every_parameter_of_every_command_is_checked(command: int, params: list[float]) -> None:
    mav = P.new_link(P.GCS_SYSID, P.GCS_COMPID)
    msg = _roundtrip(mav.command_long_encode(1, 1, command, 0, *params))
    seen = [f32(v) for v in params]
    valid, seq = contract_valid(command, seen)
    if valid:
        c = P.decode_command(msg)
        assert c.seq == seq and c.command == command
        if command == P.CMD_EPISODE:
            assert P.join_seed(c.args["seed_low"], c.args["seed_high"]) == (
                int(seen[1]) << 24 | int(seen[0])
            )
    else:
        with pytest.raises(P.CommandError) as info:
            P.decode_command(msg)
        assert info.value.seq == seq  # a refusal can name the sequence whenever it was readable
        assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("params", "what"),
    [
        ((1.0, math.nan), "param2 = nan is not finite"),  # the NaN sequence
        ((1.0, 1e10), "param2 = 10000000000.0 is outside"),  # the huge sequence
        ((1.0, -1.0), "param2 = -1.0 is outside"),
        ((1.0, 2.5), "param2 = 2.5 is not a whole number"),
        ((1.5, 3.0), "param1 = 1.5 is not a whole number"),
        ((math.inf, 3.0), "param1 = inf is not finite"),
        ((1.0, 3.0, 7.0), "param3 = 7.0 must be 0 or NaN"),
    ],
)
def test_malformed_altitude_commands_name_the_field(params, what) -> None:
    mav = P.new_link(P.GCS_SYSID, P.GCS_COMPID)
    values = list(params) + [0.0] * (7 - len(params))
    msg = _roundtrip(mav.command_long_encode(1, 1, P.CMD_ALTITUDE, 0, *values))
    with pytest.raises(P.CommandError, match=what):
        P.decode_command(msg)


def test_seed_halves_and_sequences_have_their_ranges() -> None:
    for low, high in ((-1.0, 0.0), (0.0, math.nan), (2.0**24, 0.0), (0.5, 0.0), (0.0, math.inf)):
        with pytest.raises(ValueError, match="seed halves"):
            P.join_seed(low, high)
    assert P.join_seed(2**24 - 1, 2**24 - 1) == 2**48 - 1
    assert P.next_seq(1) == 2 and P.next_seq(2**24 - 1) == 1 and P.next_seq(0) == 1
    for seq in (0, 1, 2**24 - 1):
        for executed in (0, 1, 2):
            assert P.parse_ack_code(P.ack_code(seq, executed)) == (seq, executed)
    assert P.parse_ack_code(P.NO_SEQUENCE) == (P.NO_SEQUENCE, P.NO_SEQUENCE)
    for bad in ((2**24, 1), (-1, 1), (1, 8)):
        with pytest.raises(ValueError):
            P.ack_code(*bad)


# --- what the vehicle sends (vehicle -> ground) -----------------------------------------------
@QUICK
@given(
    command=st.sampled_from((P.CMD_ALTITUDE, P.CMD_EPISODE, 0, 65535)),
    result=st.integers(0, 255),
    progress=st.integers(0, 255),
    code=st.one_of(
        st.sampled_from((-1, -2, 0, 1, 2, 3, 7, 8 * 2**24 - 6, 8 * 2**24 - 5, 2**31 - 1)),
        st.integers(-(2**31), 2**31 - 1),
    ),
)
def test_every_field_of_an_ack_is_checked(command, result, progress, code) -> None:
    mav = P.new_link(P.VEHICLE_SYSID, P.VEHICLE_COMPID)
    msg = _roundtrip(mav.command_ack_encode(command, result, progress, code, 255, 190), 1, 1)
    executed_ok = code == -1 or (0 <= code < 8 * 2**24 and code % 8 <= 2)
    valid = result <= 9 and progress <= 6 and executed_ok
    if valid:
        ack = P.read_ack(msg)
        assert (ack["command"], ack["result"], ack["reason"]) == (command, result, progress)
        assert ack["seq"] == (-1 if code == -1 else code // 8)
    else:
        with pytest.raises(P.ProtocolError):
            P.read_ack(msg)


@QUICK
@given(msg=messages(tuple(P.load_dialect().mavlink_map[i] for i in (0,))))
def test_every_field_of_a_heartbeat_is_checked(msg) -> None:
    got = _roundtrip(msg, 1, 1)
    valid = got.type == P.MAV_TYPE_FREE_BALLOON and got.system_status <= 8 and got.custom_mode <= 2
    if valid:
        hb = P.read_fields(got, P.VEHICLE_HEARTBEAT)
        assert (hb["system_status"], hb["held"]) == (got.system_status, got.custom_mode)
    else:
        with pytest.raises(P.ProtocolError):
            P.read_fields(got, P.VEHICLE_HEARTBEAT)


@pytest.fixture(scope="module")
def frame_messages() -> list:
    """A real telemetry frame (sequence 5), decoded as a ground station receives it."""
    sim = BalloonSimBackend(twinloop.make_config(ID))
    sim.connect()
    meas = sim.reset(seed=3)
    data = P.encode_frame(P.new_link(1, 1), meas, 5)
    parser = P.new_link(255, 190)
    return [m for d in data for m in P.parse_datagram(parser, d)]


def _assemble(msgs) -> tuple[int, dict] | None:
    assembler = P.FrameAssembler()
    done = None
    for m in msgs:
        done = assembler.add(m) or done
    return done


#: (message or NAMED_VALUE_FLOAT name, field) -> the contract's range (SI units) and the scale.
FRAME_FIELDS = {
    ("HOME_POSITION", "latitude"): (-90.0, 90.0, 1e-7),
    ("HOME_POSITION", "longitude"): (-180.0, 180.0, 1e-7),
    ("GLOBAL_POSITION_INT", "lat"): (-90.0, 90.0, 1e-7),
    ("GLOBAL_POSITION_INT", "lon"): (-180.0, 180.0, 1e-7),
    ("GLOBAL_POSITION_INT", "alt"): (-1000.0, 60000.0, 1e-3),
    ("GLOBAL_POSITION_INT", "vx"): (-300.0, 300.0, 0.01),
    ("GLOBAL_POSITION_INT", "vy"): (-300.0, 300.0, 0.01),
    ("SCALED_PRESSURE", "press_abs"): (100.0, 1.1e5, 100.0),
    ("SCALED_PRESSURE", "press_diff"): (-1e4, 1e4, 100.0),
    ("SYSTEM_TIME", "time_unix_usec"): (0.0, 1e10, 1e-6),
    ("NAMED_VALUE_INT", "value"): (0, 2**24 - 1, 1),  # the frame's sequence number
    ("soc", "value"): (0.0, 1.0, 1),
    ("sun_el", "value"): (-90.0, 90.0, 1),
    ("hour_ang", "value"): (-180.0, 180.0, 1),
    ("acs_w", "value"): (0.0, 5000.0, 1),
    ("cmd", "value"): (0.0, 2.0, 1),
    ("status", "value"): (0.0, 3.0, 1),
    ("excess", "value"): (0.0, 1.0, 1),
    ("paused", "value"): (0.0, 1.0, 1),
    ("wfc_u", "value"): (-300.0, 300.0, 1),
    ("wfc_v", "value"): (-300.0, 300.0, 1),
    ("w_p", "value"): (100.0, 1e5, 1),
}


def _is(m, kind: str) -> bool:
    return m.get_type() == kind or (m.get_type() == "NAMED_VALUE_FLOAT" and P.read_name(m) == kind)


@QUICK
@given(where=st.sampled_from(sorted(FRAME_FIELDS)), data=st.data())
def test_every_field_of_a_telemetry_frame_is_checked(frame_messages, where, data) -> None:
    """One field replaced by any value its wire type carries: accepted iff in its range."""
    kind, attr = where
    original = next(m for m in frame_messages if _is(m, kind))
    value = data.draw(field_values(type(original), attr))
    changed = replace(original, **{attr: value})
    msgs = [changed if m is original else m for m in frame_messages]
    lo, hi, scale = FRAME_FIELDS[where]
    si = getattr(changed, attr) * scale
    if math.isfinite(si) and lo <= si <= hi:
        seq, frame = _assemble(msgs)
        assert seq == (getattr(changed, attr) if kind == "NAMED_VALUE_INT" else 5)
        values = [x for v in frame.values() for x in (v if isinstance(v, tuple) else (v,))]
        assert all(math.isfinite(x) for x in values)
    else:
        with pytest.raises(P.FrameError, match=attr) as info:
            _assemble(msgs)
        assert kind in str(info.value)  # the message names the field


def test_the_frame_table_covers_every_named_value() -> None:
    assert {k for k, _ in FRAME_FIELDS} >= set(P.NAMED_FLOATS)


def test_a_frame_missing_a_part_or_mixing_times_is_dropped_whole(frame_messages) -> None:
    seq, frame = _assemble(frame_messages)
    assert seq == 5 and frame["p_pa"] > 0 and set(P.NAMED_FLOATS) <= set(frame)
    for drop in range(len(frame_messages) - 1):
        with pytest.raises(P.FrameError, match="lacks"):
            _assemble(frame_messages[:drop] + frame_messages[drop + 1 :])
    gpi = next(m for m in frame_messages if m.get_type() == "GLOBAL_POSITION_INT")
    other = replace(gpi, time_boot_ms=gpi.time_boot_ms + 1000)  # a part of another step
    mixed = [other if m is gpi else m for m in frame_messages]
    with pytest.raises(P.FrameError, match="in a frame of time"):
        _assemble(mixed)
    # after a rejected frame the next complete one is assembled
    assembler = P.FrameAssembler()
    with pytest.raises(P.FrameError):
        for m in mixed:
            assembler.add(m)
    for m in frame_messages:
        done = assembler.add(m)
    assert done is not None and done[0] == 5


def test_stray_parts_before_a_frame_do_not_spoil_it(frame_messages) -> None:
    """A HOME_POSITION opens a frame: forged or left-over parts before it are dropped."""
    gpi = next(m for m in frame_messages if m.get_type() == "GLOBAL_POSITION_INT")
    closer = frame_messages[-1]
    stray = [replace(gpi, time_boot_ms=gpi.time_boot_ms + 7000), frame_messages[0]]
    stray += [m for m in frame_messages[2:-1] if m.get_type() == "NAMED_VALUE_FLOAT"][:3]
    seq, frame = _assemble(stray + frame_messages)
    assert seq == 5 and frame["elapsed_s"] == pytest.approx(gpi.time_boot_ms / 1000.0)
    assert closer.get_type() == "NAMED_VALUE_INT"


def test_validation_logs_nothing_of_its_own(frame_messages, caplog) -> None:
    """Reading fields never touches what a message lacks (pymavlink logs an error for .name)."""
    mav = P.new_link(P.VEHICLE_SYSID, P.VEHICLE_COMPID)
    ack = _roundtrip(mav.command_ack_encode(P.CMD_ALTITUDE, 0, 0, 17, 255, 190), 1, 1)
    hb = _roundtrip(mav.heartbeat_encode(8, 0, 1, 1, 4), 1, 1)
    with caplog.at_level(logging.DEBUG):
        P.read_ack(ack)
        P.read_fields(hb, P.VEHICLE_HEARTBEAT)
        _assemble(frame_messages)
        with pytest.raises(P.ProtocolError):
            P.read_fields(replace(hb, custom_mode=9), P.VEHICLE_HEARTBEAT)
    assert not caplog.records


def test_a_frame_survives_the_wire_exactly(frame_messages) -> None:
    sim = BalloonSimBackend(twinloop.make_config(ID))
    sim.connect()
    meas = sim.reset(seed=3)
    _, frame = _assemble(frame_messages)
    back = P.frame_to_measurement(frame, twinloop.make_config(ID), None)
    for col in (P.K.M_P, P.K.M_ALT, P.K.M_SOC, P.K.M_ELAPSED):
        assert back[col] == pytest.approx(meas[col], rel=1e-6, abs=1e-3)
    assert np.isfinite(back).all()


# --- datagrams, addresses, logs ---------------------------------------------------------------
def test_an_oversized_datagram_is_not_parsed() -> None:
    hb = P.new_link(255, 190)
    one = hb.heartbeat_encode(6, 0, 0, 0, 4).pack(hb)
    assert len(P.parse_datagram(P.new_link(1, 1), one * (P.MAX_DATAGRAM // len(one)))) > 1
    with pytest.raises(P.ProtocolError, match="at most 4096"):
        P.parse_datagram(P.new_link(1, 1), one * (P.MAX_DATAGRAM // len(one) + 1))


@pytest.mark.parametrize(
    "address",
    [
        "udp:tcp://127.0.0.1:14560",  # what `twinloop run --port` used to build
        "tcp://127.0.0.1:14560",
        "udp://127.0.0.1:14560",
        "nowhere",
        "udp:127.0.0.1",
        "udp:127.0.0.1:0",
        "udp:127.0.0.1:65536",
        "udp:127.0.0.1:١٤٥٦٠",  # digits, but not ASCII ones
        "udp:[::1]:14560",
        "udp:bad host:14560",
        "udp::14560",
    ],
)
def test_an_address_that_is_not_udp_host_port_is_refused_at_once(address: str) -> None:
    with pytest.raises(ValueError, match="udp:HOST:PORT") as info:
        parse_address(address)
    assert "\n" not in str(info.value)
    if "://" in address:
        assert "talks UDP" in str(info.value)


@pytest.mark.parametrize(
    ("address", "want"),
    [
        ("udp:127.0.0.1:14560", ("127.0.0.1", 14560)),
        ("udpout:localhost:5", ("localhost", 5)),
        ("vehicle-1.local:65535", ("vehicle-1.local", 65535)),
    ],
)
def test_udp_addresses_are_read(address: str, want) -> None:
    assert parse_address(address) == want


def test_throttle_logs_one_line_a_second_per_kind(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("twinloop.test.throttle")
    throttle = P.Throttle(period_s=60.0, max_kinds=2)
    with caplog.at_level(logging.INFO, logger=log.name):
        for _ in range(100):
            throttle.log(log, logging.WARNING, "a", "bad a")
            throttle.log(log, logging.WARNING, "b", "bad b")
    assert [r.getMessage() for r in caplog.records] == ["bad a", "bad b"]
    for i in range(10):
        throttle(f"k{i}")
    assert len(throttle._last) <= 2  # bounded, whatever the kinds
