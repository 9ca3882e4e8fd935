"""One controller owns the robot: leases, sessions, and who may do what (contract points 9-13).

A second client may read the state and e-stop the robot but not actuate it while the first
owns it; a wrong, forged or stale session is refused without damping the owner's robot;
ownership passes on release and when the lease expires; a session survives reconnection and
lost replies. The lease logic itself is checked on :class:`Ownership` with a test clock.
"""

from __future__ import annotations

import time

import pytest

pytest.importorskip("mujoco", reason="the 'locomotion' extra is needed")
pytest.importorskip("zmq", reason="the 'microscope' extra (pyzmq, msgpack) is needed")

from tests.hardware.robot.helpers import FORGED, client, hold, twin
from twinloop.hardware.robot.protocol import Refusal, RobotFault
from twinloop.hardware.robot.server import ENDED_SESSIONS, Ownership

OWNED = r"\(owned_by_another\): .*lease ends in \d+\.\d\d s"


def test_a_second_client_may_read_and_estop_but_not_actuate_while_the_first_owns() -> None:
    with twin(watchdog_s=2.0) as server:
        owner, other = client(server.address), client(server.address)
        try:
            owner.reset(1)
            owner.command(**hold(1))
            with pytest.raises(RobotFault, match=OWNED):
                other.acquire()
            assert other.session is None
            with pytest.raises(RobotFault, match=r"needs a lease .* call reset"):
                other.command(**hold(2))  # refused here: nothing is sent without a session
            # a forged session is refused, and neither executes nor damps (point 11)
            for op, args in (
                ("command", hold(2)),
                ("reset", {"seed": 2}),
                ("clear_estop", {}),
            ):
                with pytest.raises(RobotFault, match=rf"refused '{op}' {OWNED}"):
                    other.request(op, session=FORGED, **args)
            assert server.robot.mode == "active" and server.robot.seq == 1
            assert other.state().mode == "active"  # reading is open to all
            ping = other.request("ping")
            assert ping["owned"] and 0.0 < ping["lease_left_s"] <= 2.0
            assert owner.command(**hold(2))[0].seq == 2  # the owner was not disturbed
            assert other.estop().mode == "estop"  # safety first: anyone may stop it
            with pytest.raises(RobotFault, match=r"\(estop\)"):
                owner.command(**hold(3))
            assert owner.clear_estop().mode == "damping"
            assert owner.command(**hold(3))[0].mode == "active"
            other.close()  # holds no lease: closing leaves the robot as it is
            assert server.robot.mode == "active"
        finally:
            other.close()
            owner.close()
        assert server.robot.mode == "damping"  # the owner's close released and damped


def test_ownership_passes_on_release_and_a_stale_session_is_refused_without_damping() -> None:
    with twin(watchdog_s=2.0) as server:
        first, second = client(server.address), client(server.address)
        try:
            first.reset(1)
            first.command(**hold(1))
            old = first.session
            assert first.release() is True
            assert server.robot.mode == "damping" and first.session is None
            second.acquire()
            # a new owner's seq is its own: the first owner's last seq is no repeat for it
            with pytest.raises(RobotFault, match="seq = 1 is not after the last executed 1"):
                second.command(**hold(1))
            second.reset(2)
            second.command(**hold(1))
            # the first owner's old session: refused, saying why, and the robot stays active
            with pytest.raises(RobotFault, match=OWNED + r".*released by its owner"):
                first.request("command", session=old, **hold(2))
            assert server.robot.mode == "active" and server.robot.seq == 1
            # release is idempotent: with a session that holds no lease it changes nothing
            assert first.request("release", session=old) == {"released": False, "mode": "active"}
            assert second.command(**hold(2))[0].seq == 2
        finally:
            first.close()
            second.close()


def test_ownership_passes_when_the_lease_expires() -> None:
    with twin(watchdog_s=0.25) as server:
        first, second = client(server.address), client(server.address)
        try:
            first.reset(1)
            first.command(**hold(1))
            time.sleep(0.5)  # the owner goes silent: the watchdog ends its lease
            assert server.robot.mode == "damping" and server.watchdog_trips == 1
            assert second.request("ping")["owned"] is False
            with pytest.raises(RobotFault, match=r"\(no_lease\): .*expired.*0\.25 s.*acquire"):
                first.command(**hold(2))
            assert first.session is None  # the client forgot it: it neither commands nor damps
            second.reset(2)
            assert second.command(**hold(1))[0].mode == "active"
            with pytest.raises(RobotFault, match=OWNED):
                first.acquire()
            assert server.owners.grants == 2
        finally:
            first.close()
            second.close()


def test_a_session_survives_reconnection_and_lost_replies() -> None:
    # the twin drops replies (the client times out and resends on a fresh socket) and closes
    # idle connections; the lease, keyed on the session, stays with the owner throughout
    with twin(watchdog_s=2.0, loss=0.3, seed=5, idle_timeout_s=0.2) as server:
        owner = client(server.address, timeout_s=0.1)
        owner.retries = 8
        try:
            owner.reset(1)
            session = owner.session
            for k in range(1, 21):
                owner.command(**hold(k))
            assert owner.resent > 0 and server.dropped_replies > 0
            deadline = time.monotonic() + 3.0
            while server.net.connections and time.monotonic() < deadline:
                time.sleep(0.02)
            assert server.net.connections == 0  # closed for idleness
            assert owner.command(**hold(21))[0].seq == 21  # a new connection, the same lease
            assert owner.session == session and server.owners.grants == 1
            assert server.robot.physics.steps == 21  # each command executed exactly once
        finally:
            owner.close()


def test_acquire_with_the_owners_nonce_renews_and_answers_the_same_session() -> None:
    with twin(watchdog_s=2.0) as server:
        owner, other = client(server.address), client(server.address)
        try:
            session = owner.acquire()
            again = owner.request("acquire", nonce=owner.nonce)  # as a resend after a loss
            assert again["session"] == session and again["renewed"] is True
            assert again["lease_s"] == 2.0 and server.owners.grants == 1
            with pytest.raises(RobotFault, match=OWNED):
                other.request("acquire", nonce=other.nonce)
        finally:
            other.close()
            owner.close()


class Clock:
    """A test clock for :class:`Ownership`."""

    def __init__(self) -> None:
        """Start at 100 s."""
        self.t = 100.0


def test_ownership_lease_rules_on_a_test_clock() -> None:
    issued = iter(f"session-{k:012d}" for k in range(100))
    owners = Ownership(0.5, new_session=lambda: next(issued))
    with pytest.raises(ValueError, match="lease_s must be > 0, got 0"):
        Ownership(0.0)
    a, renewed = owners.acquire("nonce-of-a-000000", 100.0)
    assert not renewed and owners.left_s(100.2) == pytest.approx(0.3)
    with pytest.raises(Refusal, match=r"lease ends in 0\.30 s") as info:
        owners.acquire("nonce-of-b-000000", 100.2)
    assert info.value.kind == "owned_by_another"
    owners.check("command", a, 100.4)
    owners.feed(a, 100.4)  # fed: the lease lasts from now
    assert not owners.expire(100.85) and owners.lease is not None
    assert owners.expire(100.95) and owners.lease is None
    expired = r"session-\.\.\. holds no lease \(it expired.*0\.5 s, 0\.50 s ago"
    with pytest.raises(Refusal, match=expired) as info:
        owners.check("command", a, 101.45)
    assert info.value.kind == "no_lease"
    b, _ = owners.acquire("nonce-of-b-000000", 102.0)
    assert b != a and owners.grants == 2
    with pytest.raises(Refusal) as info:
        owners.check("reset", a, 102.0)
    assert info.value.kind == "owned_by_another" and "expired" in str(info.value)
    with pytest.raises(Refusal, match="not issued by this twin") as info:
        owners.check("reset", FORGED, 102.0)
    assert not owners.release(a, 102.0) and owners.lease is not None
    assert owners.release(b, 102.0) and owners.lease is None
    with pytest.raises(Refusal, match="released by its owner") as info:
        owners.check("clear_estop", b, 102.5)
    assert info.value.kind == "no_lease"
    # the record of ended sessions is bounded: the oldest are forgotten
    for k in range(ENDED_SESSIONS + 1):
        s, _ = owners.acquire(f"nonce-{k:012d}", 103.0 + k)
        owners.release(s, 103.0 + k)
    with pytest.raises(Refusal, match="not issued by this twin"):
        owners.check("command", a, 200.0)
