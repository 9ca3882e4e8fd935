"""The balloon twin and its ground-station client against hostile peers, over loopback UDP.

Issue 13: each test names the point of the contract in
:mod:`twinloop.hardware.balloon.protocol`'s docstring that it checks. The first tests are the
issue's reproductions; the property-based tests draw random bytes, MAVLink framing around
random payloads, messages of every type with any value in every field, and COMMAND_LONGs of
this protocol with non-finite, extreme and wrong values, from several stations at once, and
check after every example that the twin still serves (its receive thread alive, no input
reaching its last line of defence), that a well-formed ground station (the real client) is
answered within its timeout and flies exactly what the in-process simulator flies, that the
stations it holds stay bounded, and that the vehicle holds STAY after every refusal. They run a
few dozen derandomized examples by default and a longer campaign under ``-m slow``.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import random
import threading
import time
from typing import Any

import numpy as np
import pytest

pytest.importorskip("pymavlink", reason="the MAVLink backend needs pymavlink: twinloop[balloon]")
pytest.importorskip("hypothesis", reason="the 'test' extra (hypothesis) is needed")

from hypothesis import given
from hypothesis import strategies as st

import twinloop
from tests.hardware.balloon.helpers import (
    ask,
    campaign,
    contract_valid,
    datagrams,
    examples,
    f32,
    float32s,
    heartbeat,
    is_ack,
    wait,
)
from twinloop.core.backend import BackendFault
from twinloop.hardware.balloon import protocol as P
from twinloop.hardware.balloon.backend import MavlinkBalloonBackend
from twinloop.hardware.balloon.fake import RawPeer, running_twin
from twinloop.sim.balloon import kernel as K
from twinloop.sim.balloon.env import BalloonSimBackend

ID = "twinloop/BalloonStationKeeping-v0"
CFG = twinloop.make_config(ID)
FAST = {"ack_timeout_s": 0.3, "retries": 2, "connect_timeout_s": 5.0, "heartbeat_s": 0.2}
#: The well-formed station of the property tests: patient, so a loaded machine never flakes.
PATIENT = {"ack_timeout_s": 1.0, "retries": 3, "connect_timeout_s": 5.0, "heartbeat_s": 0.2}
TWIN_LOGGER = "twinloop.hardware.balloon.server"
#: Items a station may hold (itself, its last reply: one ACK and a frame, its recent ACKs).
FRAME_PARTS = 4 + len(P.NAMED_FLOATS) + 1
PER_STATION = 1 + 1 + FRAME_PARTS + P.RECENT


def flown(seed: int, codes: list[int]) -> list[int]:
    """The commands the in-process simulator executes for ``codes`` from ``seed``."""
    sim = BalloonSimBackend(CFG)
    sim.connect()
    sim.reset(seed=seed)
    return [int(sim.apply([float(c)])[1][0]) for c in codes]


def text_to(peer: RawPeer, timeout_s: float = 2.0) -> str:
    """The next STATUSTEXT the peer receives ('' if none)."""
    got = peer.receive(lambda m: m.get_type() == "STATUSTEXT", timeout_s)
    return P.read_name(got[-1], "text") if got and got[-1].get_type() == "STATUSTEXT" else ""


def gcs_heartbeat(peer: RawPeer) -> Any:
    """A ground station's HEARTBEAT, as ``peer`` sends it."""
    return peer.mav.heartbeat_encode(P.MAV_TYPE_GCS, P.MAV_AUTOPILOT_GENERIC, 0, 0, 4)


# --- the reproductions ----------------------------------------------------------------
#: COMMAND_LONGs (command, param1, param2, ...) that killed the receive loop, and their kin.
MALFORMED = {
    "altitude sequence NaN (param2 = NaN)": (P.CMD_ALTITUDE, 2.0, math.nan),
    "altitude sequence 1e10": (P.CMD_ALTITUDE, 2.0, 1e10),
    "altitude sequence -1": (P.CMD_ALTITUDE, 2.0, -1.0),
    "altitude sequence inf": (P.CMD_ALTITUDE, 2.0, math.inf),
    "altitude sequence 2^24": (P.CMD_ALTITUDE, 2.0, float(2**24)),
    "altitude code NaN": (P.CMD_ALTITUDE, math.nan, 9.0),
    "altitude code 1e10": (P.CMD_ALTITUDE, 1e10, 9.0),
    "seed half -1": (P.CMD_EPISODE, -1.0, 0.0, 9.0),
    "seed half NaN": (P.CMD_EPISODE, 0.0, math.nan, 9.0),
    "seed half 2^24": (P.CMD_EPISODE, float(2**24), 0.0, 9.0),
    "episode sequence 1e10": (P.CMD_EPISODE, 1.0, 0.0, 1e10),
    "episode sequence -inf": (P.CMD_EPISODE, 1.0, 0.0, -math.inf),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_sequence_or_seed_is_refused_and_the_loop_lives(case: str) -> None:
    """Contract 1-4: refused with an ACK naming what it could read, never run, STAY, served."""
    command, *params = MALFORMED[case]
    with running_twin(CFG, heartbeat_s=0.05) as (twin, _):
        gcs, to = RawPeer(P.GCS_SYSID), twin.address
        try:
            assert ask(gcs, to, P.CMD_EPISODE, 0.0, 0.0, 1.0, seq=1).result == P.RESULT_ACCEPTED
            up = ask(gcs, to, P.CMD_ALTITUDE, 2.0, 2.0, seq=2)
            assert up.result_param2 == 8 * 2 + flown(0, [2])[0]
            steps, episodes = twin.stats["steps"], twin.stats["episodes"]
            ack = ask(gcs, to, command, *params)
            assert ack is not None, "no answer: the receive loop died"
            assert (ack.result, ack.progress) == (P.RESULT_DENIED, P.REASON_INVALID)
            _, seq = contract_valid(
                command, [f32(v) for v in [*params] + [0.0] * (7 - len(params))]
            )
            assert ack.result_param2 == (P.NO_SEQUENCE if seq is None else 8 * seq + K.STAY)
            assert (twin.stats["steps"], twin.stats["episodes"]) == (steps, episodes)
            assert heartbeat(gcs).custom_mode == K.STAY  # the first heartbeat after the refusal
            assert twin.serving and twin.stats["errors"] == 0
            # the same station's next well-formed command flies as on the simulator
            ack = ask(gcs, to, P.CMD_ALTITUDE, 0.0, 3.0, seq=3)
            assert ack.result == P.RESULT_ACCEPTED
            assert ack.result_param2 == 8 * 3 + flown(0, [2, 0])[1]
        finally:
            gcs.close()


def test_an_internal_error_is_answered_held_safe_and_never_run_twice(monkeypatch, caplog) -> None:
    """Contract 2, 4, 5: FAILED (INTERNAL), STAY, one log line; a retry is not run again."""
    with running_twin(CFG, heartbeat_s=0.05) as (twin, _):
        gcs, to = RawPeer(P.GCS_SYSID), twin.address
        try:
            ask(gcs, to, P.CMD_EPISODE, 0.0, 0.0, 1.0, seq=1)
            ask(gcs, to, P.CMD_ALTITUDE, 2.0, 2.0, seq=2)
            runs = []
            real = twin.sim.apply

            def breaks_after_running(command):
                runs.append(command)
                real(command)
                raise RuntimeError("the simulator broke half way")

            monkeypatch.setattr(twin.sim, "apply", breaks_after_running)
            with caplog.at_level(logging.INFO, logger=TWIN_LOGGER):
                ack = ask(gcs, to, P.CMD_ALTITUDE, 2.0, 3.0, seq=3)
            assert (ack.result, ack.progress) == (P.RESULT_FAILED, P.REASON_INTERNAL)
            assert ack.result_param2 == 8 * 3 + K.STAY
            assert heartbeat(gcs).custom_mode == K.STAY
            again = ask(gcs, to, P.CMD_ALTITUDE, 2.0, 3.0, seq=3)  # the station retries
            assert again.result == P.RESULT_FAILED and len(runs) == 1
            errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
            assert errors and all(r.exc_info is None for r in errors)
            assert all("\n" not in r.getMessage() for r in caplog.records)
            monkeypatch.undo()
            assert ask(gcs, to, P.CMD_ALTITUDE, 1.0, 4.0, seq=4).result == P.RESULT_ACCEPTED
            assert twin.serving and twin.stats["errors"] == 1
        finally:
            gcs.close()


def test_two_stations_with_the_same_sequence_numbers_are_told_apart() -> None:
    """Contract 5, 6: repeats are keyed by sender; one station commands, the other is told."""
    with running_twin(CFG) as (twin, _):
        a, b, to = RawPeer(P.GCS_SYSID), RawPeer(P.GCS_SYSID), twin.address
        try:
            assert ask(a, to, P.CMD_EPISODE, 3.0, 0.0, 1.0, seq=1).result == P.RESULT_ACCEPTED
            up = ask(a, to, P.CMD_ALTITUDE, 2.0, 2.0, seq=2)
            assert up.result_param2 == 8 * 2 + flown(3, [2])[0]
            steps, episodes = twin.stats["steps"], twin.stats["episodes"]
            # B's DOWN with A's last sequence: not A's "executed UP", a clear refusal
            down = ask(b, to, P.CMD_ALTITUDE, 0.0, 2.0, seq=2)
            assert (down.result, down.progress) == (
                P.RESULT_TEMPORARILY_REJECTED,
                P.REASON_OTHER_STATION,
            )
            assert down.result_param2 == 8 * 2 + K.STAY
            assert f"{a.address[1]} in command" in text_to(b)
            # A's retry of its sequence 2 gets its own answer again and is not run again
            assert ask(a, to, P.CMD_ALTITUDE, 2.0, 2.0, seq=2).result_param2 == up.result_param2
            assert (twin.stats["steps"], twin.stats["episodes"]) == (steps, episodes)
            # A releases command; B's episode start reusing A's sequence 1 is B's and runs
            assert ask(a, to, P.CMD_RELEASE, 3.0, seq=3).result == P.RESULT_ACCEPTED
            assert ask(b, to, P.CMD_EPISODE, 5.0, 0.0, 1.0, seq=1).result == P.RESULT_ACCEPTED
            assert twin.stats["episodes"] == episodes + 1
            down = ask(b, to, P.CMD_ALTITUDE, 0.0, 2.0, seq=2)
            assert down.result == P.RESULT_ACCEPTED
            assert down.result_param2 == 8 * 2 + flown(5, [0])[0]
            assert twin.controller.startswith(f"127.0.0.1:{b.address[1]} ")
        finally:
            a.close()
            b.close()


def test_a_second_ground_station_is_refused_clearly_and_may_watch(capsys) -> None:
    """Contract 6, 9: every station hears the heartbeat; the second is refused in one line."""
    from twinloop.cli import main

    with running_twin(CFG, heartbeat_s=0.1) as (twin, address):
        first = twinloop.make(ID, backend="mavlink", address=address, **FAST)
        sim = twinloop.make(ID)
        first.reset(seed=1)
        sim.reset(seed=1)
        others = [twinloop.make(ID, backend="mavlink", address=address, **FAST) for _ in range(2)]
        faults: list[str] = []

        def start(env) -> None:
            try:
                env.reset(seed=2)
            except BackendFault as exc:
                faults.append(str(exc))

        threads = [threading.Thread(target=start, args=(env,)) for env in others]
        for t in threads:
            t.start()
        for a in (2, 2, 0):  # the first station flies on meanwhile, exactly as the simulator
            got, want = first.step(a), sim.step(a)
            assert got[4]["applied_command"][0] == want[4]["applied_command"][0]
            assert got[1] == pytest.approx(want[1], abs=1e-6)
        for t in threads:
            t.join()
        assert len(faults) == 2
        for text in faults:
            assert "another ground station commands the vehicle" in text
            assert "no heartbeat" not in text and "\n" not in text
        for env in (first, *others):  # every station hears the vehicle
            assert env.unwrapped.backend.vehicle_status["heard_s_ago"] < 1.0
        assert len(twin.stations) == 3
        # `twinloop run --backend mavlink` as the second station: one clear line, not a hang
        capsys.readouterr()
        argv = ["run", ID, "--backend", "mavlink", "--address", address, "--episodes", "1"]
        argv += ["--controller", "station-seeker", "--set", "max_steps=3", "--quiet"]
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("twinloop: error: the vehicle at udp:127.0.0.1:") and "\n" not in err
        assert "another ground station commands the vehicle" in err
        # the first closes (it releases command): the next station commands at once
        first.close()
        others[0].reset(seed=2)
        *_, info = others[0].step(2)
        assert info["applied_command"][0] == flown(2, [2])[0]
        for env in others:
            env.close()


def test_failsafe_shows_in_every_heartbeat_and_in_the_client_error() -> None:
    """Contract 7: MAV_STATE_CRITICAL and STAY while the station in command is silent."""
    with running_twin(CFG, link_timeout_s=0.3, heartbeat_s=0.05) as (twin, _):
        a, watcher, to = RawPeer(P.GCS_SYSID), RawPeer(P.GCS_SYSID), twin.address
        try:
            ask(a, to, P.CMD_EPISODE, 0.0, 0.0, 1.0, seq=1)
            ask(a, to, P.CMD_ALTITUDE, 2.0, 2.0, seq=2)
            watcher.send_msg(gcs_heartbeat(watcher), to)
            assert heartbeat(watcher).system_status == P.MAV_STATE_ACTIVE
            critical = heartbeat(watcher, lambda m: m.system_status == P.MAV_STATE_CRITICAL)
            assert critical is not None and critical.custom_mode == K.STAY
            # the silent station in command still gets the heartbeat that says so
            assert heartbeat(a, lambda m: m.system_status == P.MAV_STATE_CRITICAL) is not None
            a.send_msg(gcs_heartbeat(a), to)  # it is heard again: failsafe over
            assert heartbeat(watcher, lambda m: m.system_status == P.MAV_STATE_ACTIVE)
        finally:
            a.close()
            watcher.close()
    with running_twin(CFG, link_timeout_s=0.2, heartbeat_s=0.05) as (twin, address):
        env = twinloop.make(ID, backend="mavlink", address=address, **FAST)
        env.reset(seed=1)
        env.step(1)
        twin.uplink_up = False  # the vehicle no longer hears the station; its heartbeat goes on
        with pytest.raises(BackendFault) as info:
            env.step(2)
        text = str(info.value)
        assert "reports failsafe (MAV_STATE_CRITICAL)" in text and "\n" not in text
        assert env.unwrapped.backend.vehicle_status["failsafe"]
        twin.uplink_up = True
        env.reset(seed=1)
        assert wait(lambda: not env.unwrapped.backend.vehicle_status["failsafe"])
        env.close()


def test_the_station_table_is_bounded_and_a_full_vehicle_says_so() -> None:
    """Contract 6, 8: at most max_stations; the next one is refused clearly until one is silent."""
    with running_twin(CFG, max_stations=3, link_timeout_s=0.5, heartbeat_s=0.1) as (twin, address):
        peers = [RawPeer(P.GCS_SYSID) for _ in range(3)]
        late = RawPeer(P.GCS_SYSID)
        try:
            for peer in peers:
                peer.send_msg(gcs_heartbeat(peer), twin.address)
                assert heartbeat(peer, timeout_s=0.5) is not None  # served at once
            ack = ask(late, twin.address, P.CMD_ALTITUDE, 1.0, 1.0, seq=1)
            assert (ack.result, ack.progress) == (
                P.RESULT_TEMPORARILY_REJECTED,
                P.REASON_TOO_MANY_STATIONS,
            )
            assert text_to(late).startswith("busy: 3 stations served")
            assert len(twin.stations) == 3 and twin.stats["steps"] == 0
            env = twinloop.make(ID, backend="mavlink", address=address, connect_timeout_s=0.4)
            with pytest.raises(BackendFault, match="the vehicle said 'busy: 3 stations served'"):
                env.reset(seed=0)
            time.sleep(0.6)  # the three fall silent for the link timeout: places free up
            ack = ask(late, twin.address, P.CMD_EPISODE, 4.0, 0.0, 2.0, seq=2)
            assert ack.result == P.RESULT_ACCEPTED
            assert len(twin.stations) <= 3 and twin.station_memory() <= 3 * PER_STATION
        finally:
            for peer in (*peers, late):
                peer.close()


def test_a_silent_station_in_command_gives_way_even_to_a_full_table() -> None:
    """Contract 6, 7: after the link timeout another station takes command (max_stations=1)."""
    with running_twin(CFG, max_stations=1, link_timeout_s=0.3, heartbeat_s=0.05) as (twin, _):
        a, b, to = RawPeer(P.GCS_SYSID), RawPeer(P.GCS_SYSID), twin.address
        try:
            assert ask(a, to, P.CMD_EPISODE, 0.0, 0.0, 1.0, seq=1).result == P.RESULT_ACCEPTED
            ack = ask(b, to, P.CMD_EPISODE, 2.0, 0.0, 1.0, seq=1)
            assert ack.progress == P.REASON_TOO_MANY_STATIONS
            assert wait(lambda: twin.failsafe)
            ack = ask(b, to, P.CMD_EPISODE, 2.0, 0.0, 2.0, seq=2)
            assert ack.result == P.RESULT_ACCEPTED and not twin.failsafe
            assert twin.controller.startswith(f"127.0.0.1:{b.address[1]} ")
        finally:
            a.close()
            b.close()


def test_silent_stations_are_forgotten() -> None:
    """Contract 6, 8: a station silent for station_timeout_s no longer costs anything."""
    with running_twin(CFG, station_timeout_s=0.3, heartbeat_s=0.05) as (twin, _):
        peers = [RawPeer(P.GCS_SYSID, compid=c) for c in range(10)]
        try:
            for peer in peers:
                peer.send_msg(gcs_heartbeat(peer), twin.address)
            assert wait(lambda: len(twin.stations) == 10)
            assert wait(lambda: not twin.stations and twin.station_memory() == 0)
        finally:
            for peer in peers:
                peer.close()


def test_forged_answers_to_commands_not_yet_sent_are_dropped() -> None:
    """Contract 8 (ground station): it holds only the answer it waits for; nothing piles up."""
    with running_twin(CFG) as (_, address):
        env = twinloop.make(ID, backend="mavlink", address=address, **FAST)
        sim = twinloop.make(ID)
        env.reset(seed=6)
        sim.reset(seed=6)
        backend = env.unwrapped.backend
        client = backend._sock.getsockname()
        rogue = RawPeer(P.VEHICLE_SYSID)  # pretends to be the vehicle
        try:
            # "executed DOWN" for the next 100 sequences, and a telemetry frame 1 km too high
            for seq in range(2, 102):
                ack = rogue.mav.command_ack_encode(P.CMD_ALTITUDE, 0, 0, 8 * seq, 255, 190)
                rogue.send_msg(ack, client)
            fake = BalloonSimBackend(CFG)
            fake.connect()
            meas = fake.reset(seed=6).copy()
            meas[K.M_ALT] += 1000.0
            for packet in P.encode_frame(rogue.mav, meas, 2):
                rogue.send(packet, client)
            time.sleep(0.3)
            got, want = env.step(2), sim.step(2)
            assert got[4]["applied_command"][0] == want[4]["applied_command"][0]
            assert got[1] == pytest.approx(want[1], abs=1e-6)
            assert got[4]["distance_km"] == pytest.approx(want[4]["distance_km"], abs=1e-4)
            assert backend.stats["stale"] >= 100
        finally:
            rogue.close()
            env.close()


# --- property-based: any input, several stations, one well-formed flight ----------------------
class Flight:
    """A well-formed ground station (the real client) flying the twin beside the simulator."""

    CODES = (2, 2, 1, 0, 0, 1, 2, 0, 1)

    def __init__(self, twin: Any, address: str) -> None:
        """Connect, take command and start the first episode."""
        self.twin = twin
        self.gcs = MavlinkBalloonBackend(CFG, address=address, **PATIENT)
        self.gcs.connect()
        self.sim = BalloonSimBackend(CFG)
        self.sim.connect()
        self.seed = 0
        self.steps = 0
        self.meas = self.start()

    def start(self) -> np.ndarray:
        """A new episode on both; their first measurements agree."""
        self.seed += 1
        got, want = self.gcs.reset(seed=self.seed), self.sim.reset(seed=self.seed)
        self.same(got, want)
        return want

    def step(self) -> None:
        """One step on both: the twin executes and reports what the simulator does."""
        if int(self.meas[K.M_STATUS]) != K.OK:
            self.meas = self.start()
        code = self.CODES[self.steps % len(self.CODES)]
        self.steps += 1
        got, applied = self.gcs.apply(np.array([float(code)]))
        want, sim_applied = self.sim.apply([float(code)])
        assert applied[0] == sim_applied[0]
        self.same(got, want)
        self.meas = want

    @staticmethod
    def same(got: np.ndarray, want: np.ndarray) -> None:
        """Measurements equal up to the wire's formats (float32, mm, 1e-7 degrees)."""
        for col in (K.M_ALT, K.M_P, K.M_SOC, K.M_ELAPSED, K.M_STATUS, K.M_POS, K.M_POS + 1):
            assert got[col] == pytest.approx(want[col], rel=1e-5, abs=2e-2), col

    def close(self) -> None:
        """Release the vehicle."""
        self.gcs.close()


PROBE_COMPID = 191  # the well-formed station that probes the twin after each hostile input
_probe_seq = itertools.count(1)


def probe(peer: RawPeer, to: tuple[str, int]) -> list[Any]:
    """A well-formed command from ``peer``'s socket: what arrived before its answer.

    The twin handles one socket's datagrams in order, so once the probe is answered every
    datagram ``peer`` sent before it has been handled.
    """
    seq = next(_probe_seq) % P.SEQ_LIMIT
    link = P.new_link(P.GCS_SYSID, PROBE_COMPID)
    msg = link.command_long_encode(1, 1, P.CMD_RELEASE, 0, float(seq), 0, 0, 0, 0, 0, 0)
    peer.send(msg.pack(link), to)
    got = peer.receive(lambda m: is_ack(m, P.CMD_RELEASE, seq, PROBE_COMPID), timeout_s=3.0)
    assert got and is_ack(got[-1], P.CMD_RELEASE, seq, PROBE_COMPID), "a station went unanswered"
    assert got[-1].result == P.RESULT_ACCEPTED
    return got[:-1]


def assert_serving_and_bounded(twin: Any) -> None:
    """The twin serves, no input reached its last line of defence, held state is bounded."""
    assert twin.serving
    assert twin.stats["errors"] == 0, "an input got past the validation path"
    assert len(twin.stations) <= twin.max_stations
    assert twin.station_memory() <= twin.max_stations * PER_STATION


def assert_healthy(twin: Any, before: dict[str, int]) -> None:
    """As :func:`assert_serving_and_bounded`, and STAY held if anything was refused since."""
    assert_serving_and_bounded(twin)
    if twin.stats["refused"] > before["refused"]:
        assert twin.held == K.STAY, "a refusal left the vehicle flying"


@pytest.fixture(scope="module")
def flight():
    """One twin, the flight in command of it, three hostile peers and a rogue vehicle."""
    with running_twin(CFG, max_stations=32, station_timeout_s=600.0, link_timeout_s=60.0) as (
        twin,
        address,
    ):
        f = Flight(twin, address)
        hostile = [RawPeer(P.GCS_SYSID) for _ in range(3)]
        rogue = RawPeer(P.VEHICLE_SYSID)
        try:
            yield f, hostile, rogue
        finally:
            for peer in (*hostile, rogue):
                peer.close()
            f.close()


#: Who a hostile datagram claims to be: ground stations (not the probe) and others.
SENDERS = st.tuples(st.sampled_from((255, 255, 1, 0, 42)), st.sampled_from((190, 0, 1, 255)))


def _random_datagrams(flight, sender: tuple[int, int], data: st.DataObject) -> None:
    f, hostile, _ = flight
    peer = hostile[data.draw(st.integers(0, len(hostile) - 1))]
    before = dict(f.twin.stats)
    peer.send(data.draw(datagrams(*sender)), f.twin.address)
    probe(peer, f.twin.address)
    assert_healthy(f.twin, before)
    f.step()


@examples(100)
@given(sender=SENDERS, data=st.data())
def test_random_datagrams_from_any_peer_leave_the_twin_serving(flight, sender, data) -> None:
    """Contract 1, 2, 4, 8: any bytes; the twin serves, holds STAY on refusal, stays small."""
    _random_datagrams(flight, sender, data)


@pytest.mark.slow
@campaign(3000)
@given(sender=SENDERS, data=st.data())
def test_random_datagrams_campaign(flight, sender, data) -> None:
    """The same, at length."""
    _random_datagrams(flight, sender, data)


TARGETS = ((1, 1), (0, 0), (1, 0), (0, 1), (2, 1), (1, 2), (255, 190))
COMMAND_IDS = (P.CMD_ALTITUDE, P.CMD_EPISODE, P.CMD_RELEASE, 0, 400, P.CMD_RELEASE + 1, 65535)


def _command_over_the_wire(flight, command, params, target, compid, confirmation) -> None:
    f, hostile, _ = flight
    twin, peer = f.twin, hostile[0]
    link = P.new_link(P.GCS_SYSID, compid)
    before, held = dict(twin.stats), twin.held
    msg = link.command_long_encode(*target, command, confirmation, *params)
    peer.send(msg.pack(link), twin.address)
    got = probe(peer, twin.address)
    acks = [
        (m.command, m.result, m.progress, m.result_param2)
        for m in got
        if m.get_type() == "COMMAND_ACK" and m.target_component == compid
    ]
    if target[0] not in (0, 1) or target[1] not in (0, 1):
        want = []  # addressed to another system: not ours to answer
    elif command not in (P.CMD_ALTITUDE, P.CMD_EPISODE, P.CMD_RELEASE):
        want = [(command, P.RESULT_UNSUPPORTED, P.REASON_NONE, P.NO_SEQUENCE)]
    else:
        valid, seq = contract_valid(command, [f32(v) for v in params])
        code = P.NO_SEQUENCE if seq is None else 8 * seq + K.STAY
        if not valid:
            want = [(command, P.RESULT_DENIED, P.REASON_INVALID, code)]
        elif command == P.CMD_RELEASE:  # it holds no command: nothing to release, nothing changes
            want = [(command, P.RESULT_ACCEPTED, P.REASON_NONE, 8 * seq + held)]
        else:  # the flight commands the vehicle
            want = [(command, P.RESULT_TEMPORARILY_REJECTED, P.REASON_OTHER_STATION, code)]
    assert acks == want
    for key in ("steps", "episodes"):
        assert twin.stats[key] == before[key], "a hostile station's command ran"
    if want and want[0][1] != P.RESULT_ACCEPTED and want[0][1] != P.RESULT_UNSUPPORTED:
        assert twin.held == K.STAY
    assert_healthy(twin, before)
    f.step()


COMMANDS = {
    "command": st.sampled_from(COMMAND_IDS),
    "params": st.lists(float32s(), min_size=7, max_size=7),
    "target": st.sampled_from(TARGETS),
    "compid": st.sampled_from((190, 0, 1, 255)),
    "confirmation": st.sampled_from((0, 1, 255)),
}


@examples(80)
@given(**COMMANDS)
def test_every_field_of_every_command_is_answered_by_the_contract(flight, **drawn) -> None:
    """Contract 1, 3, 4, 6: exactly the ACK the contract names; nothing a stranger sends runs."""
    _command_over_the_wire(flight, **drawn)


@pytest.mark.slow
@campaign(3000)
@given(**COMMANDS)
def test_every_field_of_every_command_campaign(flight, **drawn) -> None:
    """The same, at length."""
    _command_over_the_wire(flight, **drawn)


ROGUES = st.sampled_from(((1, 1), (1, 1), (1, 0), (2, 1), (255, 190)))
_marks = itertools.count(1)


def _rogue_vehicle(flight, sender: tuple[int, int], data: st.DataObject) -> None:
    f, _, rogue = flight
    client = f.gcs._sock.getsockname()
    rogue.send(data.draw(datagrams(*sender)), client)
    # the client has read the datagram once it has read the status text sent after it
    mark = f"mark {next(_marks)}"
    rogue.send_msg(rogue.mav.statustext_encode(P.MAV_SEVERITY_WARNING, mark.encode()), client)
    assert wait(lambda: f.gcs.vehicle_status["said"] == mark), "the client stopped reading"
    assert f.gcs.listening and f.gcs.stats["errors"] == 0, "an input got past the validation path"
    f.step()  # and it still flies the real vehicle exactly


@examples(100)
@given(sender=ROGUES, data=st.data())
def test_a_rogue_vehicle_cannot_stop_or_mislead_the_client(flight, sender, data) -> None:
    """Contract 1, 2, 8 on the ground station: it validates everything it reads."""
    _rogue_vehicle(flight, sender, data)


@pytest.mark.slow
@campaign(3000)
@given(sender=ROGUES, data=st.data())
def test_a_rogue_vehicle_campaign(flight, sender, data) -> None:
    """The same, at length."""
    _rogue_vehicle(flight, sender, data)


# --- floods, silent peers, several stations at once --------------------------------------------
def _flood(steps: int) -> None:
    with running_twin(CFG, max_stations=16, link_timeout_s=60.0) as (twin, address):
        f = Flight(twin, address)
        blasters = [RawPeer(P.GCS_SYSID) for _ in range(3)]  # they never read their replies
        client = f.gcs._sock.getsockname()
        stop = threading.Event()
        sent = [0] * len(blasters)

        def blast(i: int) -> None:
            peer, rnd = blasters[i], random.Random(i)
            links = [P.new_link(P.GCS_SYSID, c) for c in range(256)]
            while not stop.is_set():
                link = links[rnd.randrange(256)]  # a new station now and then: the table fills
                kind = sent[i] % 5
                if kind == 0:
                    data = rnd.randbytes(rnd.randrange(1, 300))
                elif kind == 1:
                    nan = link.command_long_encode(
                        1, 1, P.CMD_ALTITUDE, 0, 2, math.nan, 0, 0, 0, 0, 0
                    )
                    data = nan.pack(link)
                elif kind == 2:
                    data = link.heartbeat_encode(6, 0, 0, 0, 4).pack(link)
                elif kind == 3:
                    data = b"\xfd" * (P.MAX_DATAGRAM + 1)
                else:
                    data = rnd.randbytes(40)
                with contextlib.suppress(OSError):  # a full send buffer: the flood goes on
                    peer.send(data, client if kind == 4 else twin.address)
                sent[i] += 1
                if sent[i] % 64 == 0:
                    time.sleep(0.0005)  # let the other threads (the twin among them) run

        threads = [threading.Thread(target=blast, args=(i,), daemon=True) for i in range(3)]
        for t in threads:
            t.start()
        try:
            for _ in range(steps):
                f.step()  # each one answered within the client's timeout, and exact
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert sum(sent) > 10 * steps
        assert_serving_and_bounded(twin)
        assert f.gcs.listening and f.gcs.stats["errors"] == 0
        assert twin.stats["unserved"] > 0  # the table filled; the flood beyond it was turned away
        assert twin.stats["dropped"] > 0  # more than the twin handles: each sender got its share
        f.close()
        for peer in blasters:
            peer.close()


def test_a_flood_from_many_stations_does_not_stop_a_well_formed_one() -> None:
    """Contract 2, 6, 8: a well-formed station is served through a flood; the table is bounded."""
    _flood(25)


@pytest.mark.slow
def test_a_long_flood() -> None:
    """The same, at length."""
    _flood(1000)
