"""The skill protocol's one validation path, the catalog, and the simulated robot's effects."""

from __future__ import annotations

import re

import numpy as np
import pytest

pytest.importorskip("msgpack", reason="the 'microscope' extra (msgpack) is needed")

import twinloop
from tests.hardware.skills.helpers import ID, TOKEN, execute_args, pack, request
from twinloop.hardware.skills.fake import SimSkillsRobot
from twinloop.hardware.skills.protocol import (
    CATALOG,
    OPERATIONS,
    Refusal,
    Report,
    SkillsFault,
    decode_request,
    frame_from_wire,
    grounded_action,
    observation_from_wire,
    observation_to_wire,
    skill_of,
)
from twinloop.sim.rearrange import catalog as C
from twinloop.sim.rearrange import kernel as K


def _refusal(msg: object, frames: list[bytes] | None = None) -> Refusal:
    with pytest.raises(Refusal) as info:
        decode_request(frames or [b"", pack(msg)], TOKEN)
    return info.value


def test_the_catalog_names_every_grounded_action_once() -> None:
    names = C.action_names()
    seen = {skill_of(a) for a in range(C.N_ACTIONS)}
    assert len(seen) == C.N_ACTIONS
    for a in range(C.N_ACTIONS):
        skill, target = skill_of(a)
        assert grounded_action(skill, target) == a
        assert names[a] == (f"{skill}({target})" if target else skill)
    assert sum(max(len(v), 1) for v in CATALOG.values()) == C.N_ACTIONS


def test_every_operation_with_valid_arguments_is_accepted() -> None:
    args = {
        "reset": {"split": "novel_objects", "episode": 99, "seed": -1},
        "execute": execute_args(0, "pick", "mug", 64),
        "state": {"frame_px": 224},
    }
    for op in OPERATIONS:
        req = decode_request([b"", pack(request(op, rid=11, **args.get(op, {})))], TOKEN)
        assert req.op == op and req.id == 11


def test_state_frame_sizes_outside_the_camera_are_refused() -> None:
    for px, words in (
        (1, "must be 0 (no frame) or in [64, 224]"),
        (63, "must be 0"),
        (225, "is outside [0, 224]"),
    ):
        with pytest.raises(Refusal, match=re.escape(f"state.frame_px = {px} {words}")):
            decode_request([b"", pack(request("state", rid=3, frame_px=px))], TOKEN)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"skill": "fly"}, "execute.skill str 'fly' is not one of nav"),
        ({"skill": "pick", "target": "sofa"}, "target str 'sofa' of pick"),
        ({"skill": "noop", "target": "sofa"}, 'of noop: must be ""'),
        ({"target": "x" * 65}, "65 characters, over 64"),
        ({"frame_px": 32}, "frame_px = 32 must be 0 (no frame) or in [64, 224]"),
        ({"frame_px": 225}, "frame_px = 225 is outside [0, 224]"),
        ({"frame_px": True}, "frame_px must be int"),
        ({"seq": -1}, "seq = -1 is outside"),
        ({"skill": 3}, "skill must be a string"),
    ],
)
def test_a_malformed_execute_is_refused_with_its_id(change: dict, words: str) -> None:
    exc = _refusal(request("execute", rid=42, **{**execute_args(), **change}))
    assert (exc.kind, exc.rid) == ("bad_request", 42)
    assert words in str(exc)


def test_reset_checks_the_split_and_the_episode_inside_it() -> None:
    def reset(**kw: object) -> Refusal:
        return _refusal(request("reset", rid=3, **{"split": "", "episode": -1, "seed": 0, **kw}))

    assert "is not one of" in str(reset(split="nope"))
    assert "outside split 'rephrasing' of 100 episodes" in str(
        reset(split="rephrasing", episode=100)
    )
    assert "needs a reset.split" in str(reset(episode=0))
    assert reset(seed=-2).rid == 3


def test_envelope_version_token_and_keys_are_checked() -> None:
    assert _refusal(request(token="wrong")).kind == "unauthorized"
    assert _refusal({**request(), "v": 1}).kind == "version"  # version 1 lacks state.frame_px
    assert _refusal({**request(), "extra": 1}).rid == 5
    assert _refusal(request("stop", x=1)).kind == "bad_request"
    assert _refusal([1, 2]).rid is None
    multi = _refusal(None, [b"", pack(request(rid=8)), b"x"])
    assert (multi.kind, multi.rid) == ("bad_request", 8)


def test_reports_round_trip_and_malformed_ones_are_faults() -> None:
    robot = SimSkillsRobot(twinloop.make_config(ID), hidden_seed=0)
    wire = observation_to_wire(robot.reported)
    np.testing.assert_array_equal(observation_from_wire(wire), robot.reported)
    for bad in ({**wire, "scene": 1000}, {**wire, "scene": 1.5}, {**wire, "x": 0}, []):
        with pytest.raises(SkillsFault, match="observation"):
            observation_from_wire(bad)
    frame = robot.frame(64)
    assert frame.shape == (64, 64, 3) and frame.dtype == np.uint8 and frame.std() > 10
    wire_frame = {"pixels": frame.tobytes(), "shape": [64, 64, 3]}
    np.testing.assert_array_equal(frame_from_wire(wire_frame, 64), frame)
    with pytest.raises(SkillsFault, match="must be 12288 bytes"):
        frame_from_wire({**wire_frame, "pixels": b"x" * 100}, 64)
    with pytest.raises(SkillsFault, match="not asked for"):
        frame_from_wire(wire_frame, 0)
    with pytest.raises(SkillsFault, match="mode"):
        Report.from_wire({"mode": "flying", "seq": 0, "observation": wire})


def test_failure_rates_and_perception_errors_follow_their_probabilities() -> None:
    cfg = twinloop.make_config(ID)
    robot = SimSkillsRobot(cfg, hidden_seed=5, failure_rates={"nav": 0.3}, perception_error=0.2)
    robot.reset("train", 0, 1)
    fails, wrong, total = 0, 0, 0
    for seq in range(1, 401):
        before = robot.true_measurement()
        ok, duration = robot.execute(seq, "nav", C.NAV_TARGETS[seq % C.N_NAV])
        fails += not ok
        truth = robot.true_measurement()
        if not ok:  # an injected failure changes nothing in the world
            np.testing.assert_array_equal(truth[1:], before[1:])
        assert duration == 6.0
        cat = slice(K.M_OBJ_CAT, K.M_OBJ_CAT + K.MAX_OBJECTS)
        present = truth[cat] >= 0
        wrong += int((robot.reported[cat] != truth[cat])[present].sum())
        total += int(present.sum())
        # only categories are ever wrong; where the objects are is reported truly
        rest = np.r_[0 : K.M_OBJ_CAT, K.M_OBJ_REC : K.N_MEAS]
        np.testing.assert_array_equal(robot.reported[rest], truth[rest])
    assert 0.24 < fails / 400 < 0.36  # nav fails with p = 0.3 (3 sigma is 0.07)
    assert 0.18 < wrong / total < 0.22
    # the same hidden seed and episode seed draw the same failures; another hidden seed does not
    patterns = []
    for hidden in (5, 5, 6):
        r = SimSkillsRobot(cfg, hidden_seed=hidden, failure_rates={"nav": 0.5})
        r.reset("train", 0, 1)
        patterns.append([r.execute(s, "nav", "sofa")[0] for s in range(1, 41)])
    assert patterns[0] == patterns[1] != patterns[2]


def test_unknown_kinds_and_rates_outside_zero_one_are_refused() -> None:
    cfg = twinloop.make_config(ID)
    with pytest.raises(ValueError, match="unknown skill 'jump'"):
        SimSkillsRobot(cfg, failure_rates={"jump": 0.1})
    with pytest.raises(ValueError, match=r"failure rate of pick must be in \[0, 1\], got 1.5"):
        SimSkillsRobot(cfg, failure_rates={"pick": 1.5})
    with pytest.raises(ValueError, match="perception_error"):
        SimSkillsRobot(cfg, perception_error=-0.1)
