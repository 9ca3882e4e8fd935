"""``--backend skills``: parity with ``sim``, the twin's effects, and faults that end cleanly.

Faults (as the other twins'): the twin killed (stopped), stalled (a port that accepts and
never answers), garbage (an endpoint that answers nonsense), an oversized reply, and link
loss: each is one precise line, a ``BackendFault``, and nothing hangs.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import numpy as np
import pytest

zmq = pytest.importorskip("zmq", reason="the 'microscope' extra (pyzmq, msgpack) is needed")

import twinloop  # noqa: E402
from tests.hardware.skills.helpers import ID, TOKEN, twin  # noqa: E402
from twinloop.controllers import make_controller  # noqa: E402
from twinloop.core.backend import BackendFault  # noqa: E402


def _skills_env(address: str, **kwargs: Any) -> Any:
    kwargs.setdefault("timeout_s", 0.5)
    return twinloop.make(ID, backend="skills", address=address, token=TOKEN, **kwargs)


def _run_both(sim: Any, env: Any, reset: dict[str, Any], seed: int) -> tuple[int, float]:
    """Oracle actions, with a random action every third step; asserts equality step by step."""
    oracle = make_controller("oracle", sim)
    rng = np.random.default_rng(seed)
    o_sim, i_sim = sim.reset(**reset)
    o_env, i_env = env.reset(**reset)
    np.testing.assert_array_equal(o_sim, o_env)
    assert i_sim == i_env
    total, steps = 0.0, 0
    while True:
        a = int(rng.integers(71)) if steps % 3 == 2 else int(oracle.act_one(o_sim))
        s, r = sim.step(a), env.step(a)
        np.testing.assert_array_equal(s[0], r[0], err_msg=f"step {steps}")
        assert (s[1], s[2], s[3]) == (r[1], r[2], r[3])
        assert {k: v for k, v in s[4].items() if k.startswith("reward/")} == {
            k: v for k, v in r[4].items() if k.startswith("reward/")
        }
        total += s[1]
        steps += 1
        o_sim = s[0]
        if s[2] or s[3]:
            return steps, total


def test_skills_backend_equals_sim_with_no_failures_errors_or_latency() -> None:
    with twin() as server:
        sim = twinloop.make(ID)
        env = _skills_env(server.address)
        try:
            rewards = []
            for reset in (
                {"seed": 3},
                {"seed": 4, "options": {"backend": {"split": "novel_objects", "episode": 17}}},
                {"seed": None, "options": {"backend": {"split": "multiple_objects"}}},
                {"seed": None},
            ):
                rewards.append(_run_both(sim, env, reset, seed=len(rewards))[1])
            assert max(rewards) > 10  # an oracle episode succeeded: rewards were really compared
            with pytest.raises(ValueError, match="episode 100 is outside split 'rephrasing'"):
                env.reset(options={"backend": {"split": "rephrasing", "episode": 100}})
        finally:
            env.close()
            sim.close()
        assert server.robot.mode == "stopped"


def test_failures_and_perception_errors_make_the_twin_differ_without_saying_why() -> None:
    with twin(failure_rates={"pick": 0.5}, perception_error=0.3) as server:
        sim = twinloop.make(ID)
        env = _skills_env(server.address)
        try:
            differ = 0
            for seed in range(3):
                o_sim, _ = sim.reset(seed=seed)
                o_env, _ = env.reset(seed=seed)
                differ += int(not np.array_equal(o_sim, o_env))
                for a in (0, 16, 49, 70):
                    differ += int(not np.array_equal(sim.step(a)[0], env.step(a)[0]))
            assert differ > 0
            assert env.unwrapped.backend.privileged() == {}
            assert "hidden" not in str(env.unwrapped.backend.identity())
        finally:
            env.close()
            sim.close()


def _one_line_fault(env: Any, within_s: float, match: str) -> BackendFault:
    t0 = time.monotonic()
    with pytest.raises(BackendFault, match=match) as info:
        env.step(70)
    assert time.monotonic() - t0 < within_s
    assert "\n" not in str(info.value)
    return info.value


def test_twin_killed_is_a_one_line_fault_and_closing_does_not_hang() -> None:
    with twin() as server:
        env = _skills_env(server.address, retries=1)
        env.reset(seed=1)
        env.step(70)
        server.stop()
        _one_line_fault(env, within_s=2.5, match=r"did not answer 'execute' within 0\.5 s")
        t0 = time.monotonic()
        env.close()
        assert time.monotonic() - t0 < 1.5


def test_a_stalled_twin_times_out() -> None:
    listener = socket.create_server(("127.0.0.1", 0))  # accepts, never speaks ZMTP
    try:
        port = listener.getsockname()[1]
        env = _skills_env(f"tcp://127.0.0.1:{port}", timeout_s=0.3, retries=0)
        t0 = time.monotonic()
        with pytest.raises(BackendFault, match=r"did not answer 'hello' within 0\.3 s"):
            env.reset(seed=1)
        env.close()
        assert time.monotonic() - t0 < 2.0
    finally:
        listener.close()


def _fake_twin(
    answer: Any, drop_category: bool = False
) -> tuple[int, threading.Event, threading.Thread, Any]:
    """A REP endpoint that answers hello (truly, or with a category missing), then ``answer``."""
    import msgpack

    from twinloop.hardware.skills.protocol import CATALOG, measurement_fields

    rep = zmq.Context.instance().socket(zmq.REP)
    port = rep.bind_to_random_port("tcp://127.0.0.1")
    stop = threading.Event()
    hello = {
        "protocol": 2,
        "catalog": {k: list(v) for k, v in CATALOG.items()},
        "measurement": measurement_fields(),
        "identity": {},
    }
    if drop_category:
        hello["catalog"]["pick"] = hello["catalog"]["pick"][:-1]

    def serve() -> None:
        rep.setsockopt(zmq.RCVTIMEO, 100)
        while not stop.is_set():
            try:
                req = msgpack.unpackb(rep.recv(), raw=False)
            except zmq.Again:
                continue
            if req["op"] == "hello":
                rep.send(msgpack.packb({"v": 2, "id": req["id"], "ok": True, "result": hello}))
            else:
                rep.send(answer(req))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return port, stop, thread, rep


@pytest.mark.parametrize(
    ("reply", "words"),
    [
        (lambda r: b"\xc1garbage", "undecodable reply"),
        (lambda r: b"\x81\xa1v\x09", "not protocol v2"),
        (lambda r: _ok(10**9, {}), "does not match request"),
        (lambda r: _ok(r["id"], {"mode": "ready", "seq": -1, "observation": {"x": 1}}), "fields"),
        (lambda r: b"x" * 300_000, "did not answer"),  # over the client's reply cap: unread
    ],
)
def test_a_garbage_endpoint_is_a_precise_fault(reply: Any, words: str) -> None:
    port, stop, thread, rep = _fake_twin(reply)
    try:
        env = _skills_env(f"tcp://127.0.0.1:{port}", timeout_s=0.3, retries=0)
        with pytest.raises(BackendFault, match=words) as info:
            env.reset(seed=1)
        assert "\n" not in str(info.value)
        env.close()
    finally:
        stop.set()
        thread.join(2)
        rep.close(linger=0)


def _ok(rid: int, result: Any) -> bytes:
    import msgpack

    return msgpack.packb({"v": 2, "id": rid, "ok": True, "result": result})


def test_another_catalog_is_refused_at_connect() -> None:
    port, stop, thread, rep = _fake_twin(lambda r: b"", drop_category=True)
    try:
        env = _skills_env(f"tcp://127.0.0.1:{port}", timeout_s=0.5, retries=0)
        with pytest.raises(BackendFault, match="another skill catalog"):
            env.reset(seed=1)
        env.close()
    finally:
        stop.set()
        thread.join(2)
        rep.close(linger=0)


def test_link_loss_mid_run_is_a_fault_and_the_link_comes_back() -> None:
    with twin() as server:
        env = _skills_env(server.address, timeout_s=0.3, retries=0)
        try:
            env.reset(seed=1)
            env.step(0)
            port = server.port
            server.stop()
            _one_line_fault(env, within_s=1.5, match="did not answer 'execute'")
        finally:
            env.close()
    # a new twin on the same port: the same client reconnects by itself
    from twinloop.hardware.skills.fake import SimSkillsRobot
    from twinloop.hardware.skills.server import SkillsServer

    robot = SimSkillsRobot(twinloop.make_config(ID), hidden_seed=0)
    server = SkillsServer(robot, port=port, token=TOKEN).start()
    try:
        env = _skills_env(server.address)
        env.reset(seed=2)
        env.step(70)
        env.close()
    finally:
        server.stop()


def test_rgb_mode_over_the_twin_shows_the_devices_own_frames() -> None:
    """In rgb mode the observation's frame is the robot's camera.

    The twin renders the true world: without perception errors its frame equals the
    simulator's, with them it still shows the truth while the reported symbolic fields are
    wrong.
    """
    rgb = {"observation_mode": "rgb", "resolution": 64}
    reset = {"seed": 4, "options": {"backend": {"split": "train", "episode": 3}}}
    with twin() as server:
        sim = twinloop.make(ID, **rgb)
        env = _skills_env(server.address, **rgb)
        try:
            o_sim, _ = sim.reset(**reset)
            o_env, _ = env.reset(**reset)
            np.testing.assert_array_equal(o_sim["image"], o_env["image"])
            oracle = make_controller("oracle", sim)
            for _ in range(3):
                a = int(oracle.act_one(o_sim))
                o_sim, *_ = sim.step(a)
                o_env, *_ = env.step(a)
                np.testing.assert_array_equal(o_sim["image"], o_env["image"])
                np.testing.assert_array_equal(o_sim["symbolic"], o_env["symbolic"])
        finally:
            env.close()
            sim.close()
    with twin(perception_error=1.0, hidden_seed=5) as server:
        sim = twinloop.make(ID, **rgb)
        env = _skills_env(server.address, **rgb)
        try:
            o_sim, _ = sim.reset(**reset)
            o_env, _ = env.reset(**reset)
            truth = o_sim["image"]
            assert not np.array_equal(o_sim["symbolic"], o_env["symbolic"])  # misperceived
            np.testing.assert_array_equal(o_env["image"], truth)  # the camera sees the world
        finally:
            env.close()
            sim.close()
