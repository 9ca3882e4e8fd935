"""Shared pieces of the skills twin's tests: configs, an in-process twin, peers, requests."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import msgpack

import twinloop
from twinloop.hardware.skills.fake import SimSkillsRobot
from twinloop.hardware.skills.protocol import PROTOCOL_VERSION
from twinloop.hardware.skills.remote import RemoteSkills
from twinloop.hardware.skills.server import SkillsServer

ID = "twinloop/LangRearrange-v0"
TOKEN = "sk\u00efll-\u2713"  # not ASCII on purpose
LOGGERS = ("twinloop.hardware.skills.server", "twinloop.hardware.zmtp")


@contextlib.contextmanager
def twin(
    failure_rates: dict[str, float] | None = None,
    perception_error: float = 0.0,
    hidden_seed: int = 0,
    **server_kwargs: Any,
) -> Iterator[SkillsServer]:
    """An in-process skills twin on a free loopback port, stopped afterwards."""
    robot = SimSkillsRobot(
        twinloop.make_config(ID),
        hidden_seed=hidden_seed,
        failure_rates=failure_rates,
        perception_error=perception_error,
    )
    server_kwargs.setdefault("token", TOKEN)
    server = SkillsServer(robot, port=0, **server_kwargs).start()
    try:
        yield server
    finally:
        server.stop()


def client(address: str, timeout_s: float = 2.0, token: str | None = TOKEN) -> RemoteSkills:
    """A connected client."""
    robot = RemoteSkills(address, token=token, timeout_s=timeout_s)
    robot.connect()
    return robot


def pack(msg: Any) -> bytes:
    """msgpack, as every client encodes."""
    return msgpack.packb(msg, use_bin_type=True)


def request(op: str = "ping", rid: int = 5, token: Any = TOKEN, **args: Any) -> dict[str, Any]:
    """A request map of the protocol's version."""
    return {"v": PROTOCOL_VERSION, "id": rid, "op": op, "args": args, "token": token}


def execute_args(seq: int = 1, skill: str = "nav", target: str = "sofa", px: int = 0) -> dict:
    """The arguments of an ``execute``."""
    return {"seq": seq, "skill": skill, "target": target, "frame_px": px}


def well_formed_client_is_served(address: str, timeout_s: float = 2.0) -> None:
    """A fresh client: hello, reset, one skill, each answered correctly within its timeout."""
    robot = client(address, timeout_s=timeout_s)
    try:
        report = robot.reset("train", 7, seed=3)
        assert report.mode == "ready" and report.seq == -1
        result = robot.execute(1, "nav", "sofa")
        assert result.report.seq == 1 and result.success and not result.repeat
    finally:
        robot.close()
