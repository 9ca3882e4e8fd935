"""The robot protocol's one validation path, and the simulated robot's joint-level semantics."""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("mujoco", reason="the 'locomotion' extra is needed")
pytest.importorskip("msgpack", reason="the 'microscope' extra (msgpack) is needed")

from tests.hardware.robot.helpers import FORGED, KD, KP, TOKEN, hold, pack, plant_config, request
from twinloop.hardware.robot.fake import SPEED_LIMITS_RAD_PER_S, SimRobot
from twinloop.hardware.robot.protocol import (
    OPERATIONS,
    Refusal,
    RobotModel,
    RobotState,
    decode_request,
)
from twinloop.sim.locomotion.velocity import DEFAULT_POSE, joint_limits


def _refusal(msg: object, frames: list[bytes] | None = None) -> Refusal:
    with pytest.raises(Refusal) as info:
        decode_request(frames or [b"", pack(msg)], TOKEN)
    return info.value


def test_every_operation_with_valid_arguments_is_accepted() -> None:
    session = {"session": FORGED}
    args = {
        "reset": {"seed": -1, **session},
        "command": {**hold(0), **session},
        "clear_estop": session,
        "release": session,
        "acquire": {"nonce": "n" * 64},
    }
    for op in OPERATIONS:
        req = decode_request([b"", pack(request(op, rid=11, **args.get(op, {})))], TOKEN)
        assert req.op == op and req.id == 11


@pytest.mark.parametrize(
    ("change", "kind", "words"),
    [
        ({"q_rad": [0.0] * 11}, "bad_request", "array of 12"),
        ({"q_rad": [0.0] * 11 + [math.nan]}, "bad_request", "q_rad[11] must be a finite"),
        ({"kp": [KP] * 11 + [-1.0]}, "bad_request", "kp[11] = -1.0 is outside"),
        ({"kd": [True] * 12}, "bad_request", "kd[0] must be float"),
        ({"seq": -1}, "bad_request", "seq = -1"),
        ({"seq": 1.0}, "bad_request", "seq must be int"),
        ({"q_rad": "twelve"}, "bad_request", "array of 12"),
        ({"session": "a" * 15}, "bad_request", "session has 15 characters; it must have 16 to 64"),
        ({"session": "a" * 65}, "bad_request", "session has 65 characters"),
        ({"session": "abcdefgh ijklmnop"}, "bad_request", "characters outside A-Z a-z 0-9 _ -"),
        ({"session": 1234567890123456}, "bad_request", "session must be a string, got int"),
    ],
)
def test_a_malformed_command_is_refused_with_its_id(change: dict, kind: str, words: str) -> None:
    exc = _refusal(request("command", rid=42, **{**hold(1), "session": FORGED, **change}))
    assert (exc.kind, exc.rid) == (kind, 42)
    assert words in str(exc)


def test_envelope_version_token_and_keys_are_checked() -> None:
    assert _refusal(request(token="wrong")).kind == "unauthorized"
    assert _refusal({**request(), "v": 1}).kind == "version"  # v1 had no ownership
    assert _refusal(request("command", **hold(1))).kind == "bad_request"  # no session
    assert _refusal({**request(), "extra": 1}).rid == 5
    assert _refusal(request("fly")).kind == "bad_request"
    assert _refusal(request("damp", x=1)).kind == "bad_request"
    assert _refusal([1, 2]).rid is None
    multi = _refusal(None, [b"", pack(request(rid=8)), b"x"])
    assert (multi.kind, multi.rid) == ("bad_request", 8)


def test_clipping_by_position_velocity_gain_and_torque_limits_is_reported() -> None:
    robot = SimRobot(plant_config())
    robot.reset(1)
    _, high = joint_limits()
    step = np.array(SPEED_LIMITS_RAD_PER_S * 4) * robot.model.control_dt_s
    q = DEFAULT_POSE.copy()
    q[0] = high[0] + 1.0  # beyond the range and much faster than the joint can go
    q[1] = DEFAULT_POSE[1] + 0.5 * step[1]  # within both
    kp = [KP] * 12
    kp[0] = 1e4
    out = robot.command(0, q, kp, [KD] * 12)
    applied, clipped = out["applied"], out["clipped"]
    assert applied["q_rad"][0] == pytest.approx(DEFAULT_POSE[0] + step[0])
    assert applied["q_rad"][1] == q[1] and not clipped["q_rad"][1]
    assert clipped["q_rad"][0] and clipped["kp"][0] and applied["kp"][0] == robot.model.kp_max
    assert sum(clipped["kp"]) == 1 and not any(clipped["kd"])
    # 0.6 rad of error at the largest gain asks the hip for 60 N m: its motor saturates
    assert clipped["torque_nm"][0] and not clipped["torque_nm"][1]
    assert abs(out["state"]["torque_nm"][0]) == pytest.approx(robot.model.torque_limit_nm[0])


def test_estop_is_latched_and_damping_sinks_the_robot() -> None:
    robot = SimRobot(plant_config())
    robot.reset(2)
    h0 = robot.state()["estimate"]["height_m"]
    robot.estop()
    with pytest.raises(RuntimeError, match="e-stop"):
        robot.command(0, DEFAULT_POSE, [KP] * 12, [KD] * 12)
    assert robot.run_damped(1.0) == 200
    assert robot.state()["mode"] == "estop"
    assert robot.state()["estimate"]["height_m"] < h0 - 0.05  # no torque holds it up
    robot.damp()
    assert robot.mode == "estop"  # damping does not clear the latch
    robot.clear_estop()
    assert robot.mode == "damping"
    robot.command(0, DEFAULT_POSE, [KP] * 12, [KD] * 12)
    assert robot.mode == "active"


def test_hidden_seed_changes_the_plant_but_never_the_protocol() -> None:
    cfg = plant_config(hidden=True)
    a, b, c = SimRobot(cfg, hidden_seed=1), SimRobot(cfg, hidden_seed=2), SimRobot(cfg, 1)
    for r in (a, b, c):
        r.reset(5)
    ta, tb, tc = a.truth(), b.truth(), c.truth()
    assert ta["floor_friction"] != tb["floor_friction"]
    assert ta["floor_friction"] == tc["floor_friction"]
    assert "floor_friction" not in str(a.state()) and "kp_scale" not in str(a.model.to_dict())


def test_model_and_state_round_trip_through_their_validators() -> None:
    robot = SimRobot(plant_config())
    model = RobotModel.from_dict(robot.model.to_dict())
    assert model == robot.model
    state = RobotState.from_wire(robot.state())
    assert state.mode == "damping" and state.q_rad.shape == (12,)
    meas = robot.measurement()
    assert np.allclose(state.gravity(), meas[30:33], atol=1e-12)
    bad = robot.state()
    bad["imu"]["gyro_rad_per_s"] = [0.0, math.inf, 0.0]
    with pytest.raises(Exception, match="finite"):
        RobotState.from_wire(bad)
