"""Shared pieces of the robot twin's tests: configs, an in-process twin, peers, requests."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import msgpack
import numpy as np

import twinloop
from twinloop.hardware.robot.fake import SimRobot
from twinloop.hardware.robot.protocol import PROTOCOL_VERSION
from twinloop.hardware.robot.remote import RemoteRobot
from twinloop.hardware.robot.server import RobotServer
from twinloop.sim.locomotion.velocity_config import RANDOM_EFFECT_SWITCHES

ID = "twinloop/QuadrupedVelocity-v0"
TOKEN = "r0b\u00f6t-\u2713"  # not ASCII on purpose
#: Config overrides that turn every hidden effect of the plant off (parity with ``sim``).
NO_HIDDEN: dict[str, Any] = dict.fromkeys(RANDOM_EFFECT_SWITCHES, False)
LOGGERS = ("twinloop.hardware.robot.server", "twinloop.hardware.zmtp")
KP, KD = 30.0, 0.6
#: A well-formed session id that no twin issued (they issue 32 hex digits).
FORGED = "forged-session-0001"


def plant_config(hidden: bool = False, **overrides: Any) -> Any:
    """The twin's plant config, with or without its hidden effects."""
    return twinloop.make_config(ID, **({} if hidden else NO_HIDDEN), **overrides)


@contextlib.contextmanager
def twin(
    hidden: bool = False, hidden_seed: int | None = None, **server_kwargs: Any
) -> Iterator[RobotServer]:
    """An in-process robot twin on a free loopback port, stopped afterwards."""
    robot = SimRobot(plant_config(hidden), hidden_seed=hidden_seed)
    server_kwargs.setdefault("token", TOKEN)
    server = RobotServer(robot, port=0, **server_kwargs).start()
    try:
        yield server
    finally:
        server.stop()


def client(address: str, timeout_s: float = 2.0, token: str | None = TOKEN) -> RemoteRobot:
    """A connected client."""
    robot = RemoteRobot(address, token=token, timeout_s=timeout_s)
    robot.connect()
    return robot


def pack(msg: Any) -> bytes:
    """msgpack, as every client encodes."""
    return msgpack.packb(msg, use_bin_type=True)


def request(op: str = "ping", rid: int = 5, token: Any = TOKEN, **args: Any) -> dict[str, Any]:
    """A request map of the robot's protocol version."""
    return {"v": PROTOCOL_VERSION, "id": rid, "op": op, "args": args, "token": token}


def hold(seq: int, q: Any = None, kp: float = KP, kd: float = KD) -> dict[str, Any]:
    """The arguments of a command holding ``q`` (default: the default pose)."""
    from twinloop.sim.locomotion.velocity import DEFAULT_POSE

    q = DEFAULT_POSE if q is None else np.asarray(q)
    return {"seq": seq, "q_rad": [float(x) for x in q], "kp": [kp] * 12, "kd": [kd] * 12}


def well_formed_client_is_served(address: str, timeout_s: float = 2.0) -> None:
    """A fresh client: hello, reset, one command, each answered correctly within its timeout."""
    robot = client(address, timeout_s=timeout_s)
    try:
        state = robot.reset(3)
        assert state.mode == "active" and state.seq == -1
        state, applied, _, repeat = robot.command(**hold(1))
        assert state.seq == 1 and not repeat and len(applied["q_rad"]) == 12
    finally:
        robot.close()
