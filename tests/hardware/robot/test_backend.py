"""``--backend robot``: parity with ``sim``, hidden effects, and faults that end cleanly.

Faults (issue 15): the twin killed (stopped), stalled (a port that accepts and never
answers), garbage (an endpoint that answers nonsense), limits exceeded (the reply reports the
clipping), an e-stop, and link loss (the watchdog damps): each is one precise line, a
``BackendFault``, the joints are damped where the twin is reachable, and nothing hangs.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import numpy as np
import pytest

pytest.importorskip("mujoco", reason="the 'locomotion' extra is needed")
zmq = pytest.importorskip("zmq", reason="the 'microscope' extra (pyzmq, msgpack) is needed")

import twinloop  # noqa: E402
from tests.hardware.robot.helpers import ID, NO_HIDDEN, TOKEN, client, twin  # noqa: E402
from twinloop.core.backend import BackendFault  # noqa: E402
from twinloop.hardware.robot.protocol import PROTOCOL_VERSION  # noqa: E402


def _robot_env(address: str, **kwargs: Any) -> Any:
    kwargs.setdefault("timeout_s", 0.5)
    return twinloop.make(ID, backend="robot", address=address, token=TOKEN, **NO_HIDDEN, **kwargs)


def _actions(n: int, seed: int) -> np.ndarray:
    """Actions whose targets move less than a calf can in one period (no velocity clipping)."""
    return np.random.default_rng(seed).uniform(-0.35, 0.35, (n, 12)).astype(np.float32)


def test_robot_backend_equals_sim_when_latency_loss_and_hidden_effects_are_off() -> None:
    with twin() as server:
        sim = twinloop.make(ID, **NO_HIDDEN)
        robot = _robot_env(server.address)
        try:
            for seed in (3, 11):
                o_sim, _ = sim.reset(seed=seed)
                o_rob, _ = robot.reset(seed=seed)
                np.testing.assert_array_equal(o_sim, o_rob)
                for k, a in enumerate(_actions(150, seed)):
                    s, r = sim.step(a), robot.step(a)
                    # gravity comes from the IMU quaternion: equal to rounding
                    np.testing.assert_allclose(r[0], s[0], rtol=0, atol=1e-6, err_msg=f"step {k}")
                    assert r[1] == pytest.approx(s[1], abs=1e-12)
                    assert (r[2], r[3]) == (s[2], s[3])
                    np.testing.assert_array_equal(r[4]["applied_command"], s[4]["applied_command"])
                    assert not r[4]["command_clipped"]
                    if s[2] or s[3]:
                        break
            # the plant's drawn values stay hidden; only the task's own draw is reported
            assert {k for k in r[4] if k.startswith("true/")} == {"true/observation_delay_steps"}
            assert "true/floor_friction" in s[4]
        finally:
            robot.close()
            sim.close()


def test_hidden_effects_make_the_twin_differ_from_sim_without_revealing_why() -> None:
    with twin(hidden=True, hidden_seed=1234) as server:
        sim = twinloop.make(ID, **NO_HIDDEN)
        robot = _robot_env(server.address)
        try:
            sim.reset(seed=4)
            robot.reset(seed=4)
            gap = 0.0
            for a in _actions(20, 0):
                gap = max(gap, float(np.abs(sim.step(a)[0] - robot.step(a)[0]).max()))
            assert gap > 1e-3
            assert robot.unwrapped.backend.privileged() == {}
        finally:
            robot.close()
            sim.close()


def test_limits_exceeded_are_clipped_and_reported_as_the_applied_command() -> None:
    with twin() as server:
        env = _robot_env(server.address)
        try:
            env.reset(seed=1)
            env.step(np.full(12, -1.0, np.float32))
            _, _, _, _, info = env.step(np.full(12, 1.0, np.float32))  # 1 rad in one period
            assert info["command_clipped"]
            backend = env.unwrapped.backend
            assert all(backend.last_clipped["q_rad"])
            requested = env.unwrapped.task.command(np.ones(12), None)
            assert np.all(info["applied_command"] < requested)
        finally:
            env.close()


def _one_line_fault(env: Any, within_s: float, match: str) -> BackendFault:
    t0 = time.monotonic()
    with pytest.raises(BackendFault, match=match) as info:
        env.step(np.zeros(12, np.float32))
    assert time.monotonic() - t0 < within_s
    assert "\n" not in str(info.value)
    return info.value


def test_twin_killed_is_a_one_line_fault_and_closing_does_not_hang() -> None:
    with twin() as server:
        env = _robot_env(server.address, retries=1)
        env.reset(seed=1)
        env.step(np.zeros(12, np.float32))
        server.stop()
        _one_line_fault(env, within_s=2.5, match=r"did not answer 'command' within 0\.5 s")
        t0 = time.monotonic()
        env.close()
        assert time.monotonic() - t0 < 1.5


def test_a_stalled_twin_times_out() -> None:
    listener = socket.create_server(("127.0.0.1", 0))  # accepts, never speaks ZMTP
    try:
        port = listener.getsockname()[1]
        env = _robot_env(f"tcp://127.0.0.1:{port}", timeout_s=0.3, retries=0)
        t0 = time.monotonic()
        with pytest.raises(BackendFault, match=r"did not answer 'hello' within 0\.3 s"):
            env.reset(seed=1)
        env.close()
        assert time.monotonic() - t0 < 2.0
    finally:
        listener.close()


@pytest.mark.parametrize(
    ("reply", "words"),
    [
        (b"\xc1garbage", "undecodable reply"),
        (b"\x81\xa1v\x01", "not protocol v2"),
        (None, "does not match request"),
        (b"x" * 100_000, "did not answer"),  # over the client's reply cap: dropped unread
    ],
)
def test_a_garbage_endpoint_is_a_precise_fault(reply: bytes | None, words: str) -> None:
    import msgpack

    ctx = zmq.Context.instance()
    rep = ctx.socket(zmq.REP)
    port = rep.bind_to_random_port("tcp://127.0.0.1")
    stop = threading.Event()

    def serve() -> None:
        rep.setsockopt(zmq.RCVTIMEO, 100)
        while not stop.is_set():
            try:
                rep.recv()
            except zmq.Again:
                continue
            wrong_id = msgpack.packb({"v": PROTOCOL_VERSION, "id": 10**9, "ok": True, "result": {}})
            rep.send(wrong_id if reply is None else reply)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        env = _robot_env(f"tcp://127.0.0.1:{port}", timeout_s=0.3, retries=0)
        with pytest.raises(BackendFault, match=words) as info:
            env.reset(seed=1)
        assert "\n" not in str(info.value)
        env.close()
    finally:
        stop.set()
        thread.join(2)
        rep.close(linger=0)


def test_estop_from_another_client_ends_the_run_with_the_joints_damped() -> None:
    with twin() as server:
        env = _robot_env(server.address)
        operator = client(server.address)
        try:
            env.reset(seed=1)
            env.step(np.zeros(12, np.float32))
            operator.estop()  # open to every client: no lease needed
            _one_line_fault(env, within_s=1.0, match=r"refused 'command' \(estop\)")
            assert server.robot.mode == "estop"
            with pytest.raises(BackendFault, match="estop"):
                env.reset(seed=2)  # latched until cleared
            # clearing is the owner's: the operator is refused, naming the owner's lease
            with pytest.raises(BackendFault, match=r"\(owned_by_another\).*lease ends in"):
                operator.acquire()
            env.unwrapped.backend.robot.clear_estop()
            env.reset(seed=2)
            env.step(np.zeros(12, np.float32))
        finally:
            operator.close()
            env.close()
        assert server.robot.mode == "damping"


def test_link_loss_lets_the_watchdog_damp_the_joints() -> None:
    with twin(watchdog_s=0.2) as server:
        env = _robot_env(server.address)
        try:
            env.reset(seed=1)
            env.step(np.zeros(12, np.float32))
            assert server.robot.mode == "active"
            time.sleep(0.5)  # the controller goes silent
            assert server.robot.mode == "damping" and server.watchdog_trips == 1
            # its lease ended with it: the episode ends with one line, the robot stays damped
            _one_line_fault(env, within_s=1.0, match=r"\(no_lease\).*expired.*0\.2 s")
            assert server.robot.mode == "damping"
            env.reset(seed=2)  # acquires again
            env.step(np.zeros(12, np.float32))  # a command re-engages the PD loop
            assert server.robot.mode == "active"
        finally:
            env.close()
