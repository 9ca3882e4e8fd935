"""The robot twin over the network: model, commands, repeats, e-stop, watchdog, link effects."""

from __future__ import annotations

import time

import numpy as np
import pytest

pytest.importorskip("mujoco", reason="the 'locomotion' extra is needed")
pytest.importorskip("zmq", reason="the 'microscope' extra (pyzmq, msgpack) is needed")

from tests.hardware.robot.helpers import client, hold, twin
from twinloop.hardware.robot.protocol import RobotFault
from twinloop.sim.locomotion.velocity import DEFAULT_POSE, JOINT_NAMES


def test_hello_announces_the_model_and_commands_advance_one_control_period() -> None:
    with twin() as server:
        robot = client(server.address)
        try:
            m = robot.model
            assert m.joint_names == JOINT_NAMES and m.decimation == 4
            assert m.control_dt_s == pytest.approx(0.02) and max(m.torque_limit_nm) == 35.55
            t0 = robot.reset(1).time_s
            state, applied, clipped, repeat = robot.command(**hold(1))
            assert state.time_s == pytest.approx(t0 + 0.02) and state.mode == "active"
            assert applied["q_rad"] == pytest.approx(list(DEFAULT_POSE)) and not repeat
            assert not any(clipped["q_rad"])
        finally:
            robot.close()
        assert server.robot.mode == "damping"  # closing damps


def test_a_repeated_seq_is_answered_again_not_executed_twice() -> None:
    with twin() as server:
        robot = client(server.address)
        try:
            robot.reset(1)
            first, *_ = robot.command(**hold(1))
            again, _, _, repeat = robot.command(**hold(1))
            assert repeat and again.time_s == first.time_s
            assert server.robot.physics.steps == 1
            with pytest.raises(RobotFault, match="not after the last executed 1"):
                robot.command(**hold(0))
            assert server.robot.mode == "damping"  # the refusal damped the joints
            state, *_ = robot.command(**hold(2))
            assert state.mode == "active"  # the next command re-engages the PD loop
        finally:
            robot.close()


def test_estop_latches_until_cleared_and_refuses_commands_and_resets() -> None:
    with twin() as server:
        robot = client(server.address)
        try:
            robot.reset(1)
            robot.command(**hold(1))
            assert robot.estop().mode == "estop"
            for call in (lambda: robot.command(**hold(2)), lambda: robot.reset(2)):
                with pytest.raises(RobotFault, match=r"\(estop\): .*clear_estop"):
                    call()
            assert robot.state().mode == "estop"
            assert robot.clear_estop().mode == "damping"
            assert robot.command(**hold(2))[0].mode == "active"
        finally:
            robot.close()


def test_watchdog_damps_when_commands_stop_and_refusals_do_not_feed_it() -> None:
    with twin(watchdog_s=0.3) as server:
        robot = client(server.address)
        try:
            robot.reset(1)
            state, *_ = robot.command(**hold(1))
            h0 = state.height_m
            # refused pings every 0.05 s must not keep the robot active
            from twinloop.hardware.robot.remote import RemoteRobot

            rogue = RemoteRobot(server.address, token="wrong", timeout_s=1.0, retries=0)
            fed = server.last_accepted_s
            t0 = time.monotonic()
            while time.monotonic() - t0 < 0.6:
                with pytest.raises(RobotFault, match="unauthorized"):
                    rogue.request("ping")
                time.sleep(0.05)
            rogue.close()
            assert server.last_accepted_s == fed  # refused requests do not feed the watchdog
            assert server.watchdog_trips == 0  # the refusals damped it first (safe state)
            assert server.robot.mode == "damping"
            # the owner was silent too: its lease ended, so its next command is refused
            with pytest.raises(RobotFault, match=r"\(no_lease\).*expired"):
                robot.command(**hold(2))
            robot.acquire()
            robot.command(**hold(2))
            time.sleep(0.8)  # link loss: no command
            assert server.watchdog_trips == 1
            state = robot.state()
            assert state.mode == "damping"
            # in damping the twin runs in real time and the robot sinks
            assert state.height_m < h0 - 0.02
        finally:
            robot.close()


def test_latency_and_jitter_delay_each_reply() -> None:
    with twin(latency_s=0.02, jitter_s=0.01, seed=0) as server:
        robot = client(server.address)
        try:
            robot.reset(1)
            t0 = time.perf_counter()
            for k in range(1, 11):
                robot.command(**hold(k))
            per = (time.perf_counter() - t0) / 10
            assert 0.02 <= per < 0.02 + 0.01 + 0.02
        finally:
            robot.close()


def test_lost_replies_are_recovered_by_repeating_the_seq() -> None:
    import twinloop
    from tests.hardware.robot.helpers import NO_HIDDEN, TOKEN

    with twin(loss=0.2, seed=3) as server:
        env = twinloop.make(
            "twinloop/QuadrupedVelocity-v0",
            backend="robot",
            address=server.address,
            token=TOKEN,
            timeout_s=0.15,
            retries=5,
            **NO_HIDDEN,
        )
        try:
            env.reset(seed=1)
            for _ in range(30):
                env.step(np.zeros(12, np.float32))
            assert server.dropped_replies > 0
            assert env.unwrapped.backend.repeats > 0
            assert server.robot.physics.steps == 30  # each command executed exactly once
        finally:
            env.close()
