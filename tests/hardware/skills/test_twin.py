"""The skills twin over the network: hello, skills, repeats, stop, frames, latency, effects."""

from __future__ import annotations

import time

import numpy as np
import pytest

pytest.importorskip("zmq", reason="the 'microscope' extra (pyzmq, msgpack) is needed")

from tests.hardware.skills.helpers import client, twin
from twinloop.hardware.skills.protocol import CATALOG, SkillsFault
from twinloop.sim.rearrange import catalog as C
from twinloop.sim.rearrange import kernel as K
from twinloop.sim.rearrange import render as R


def test_hello_announces_the_catalog_and_a_skill_reports_what_changed() -> None:
    with twin() as server:
        robot = client(server.address)
        try:
            assert robot.hello["catalog"]["pick"] == list(CATALOG["pick"])
            assert robot.hello["splits"]["novel_objects"] == 100
            first = robot.reset("train", 3, seed=1)
            assert first.mode == "ready" and first.measurement[K.M_LOC] == -1
            result = robot.execute(1, "nav", "fridge")
            assert result.success and result.duration_s == 6.0 and not result.repeat
            assert result.report.measurement[K.M_LOC] == 8  # the fridge's navigation target
            again = robot.state()
            np.testing.assert_array_equal(again.measurement, result.report.measurement)
            bad = robot.execute(2, "place", "sofa")  # nothing in hand: preconditions fail
            assert not bad.success and bad.report.measurement[K.M_OK] == 0
        finally:
            robot.close()
        assert server.robot.mode == "stopped"  # closing stops the robot


def test_a_repeated_seq_is_answered_again_not_executed_twice() -> None:
    with twin() as server:
        robot = client(server.address)
        try:
            robot.reset("train", 0, seed=1)
            first = robot.execute(1, "nav", "sofa")
            again = robot.execute(1, "nav", "sofa")
            assert again.repeat and server.robot.skills == 1
            np.testing.assert_array_equal(again.report.measurement, first.report.measurement)
            with pytest.raises(SkillsFault, match=r"execute.seq = 0 is not after the last"):
                robot.execute(0, "noop")
            assert server.robot.mode == "stopped"  # the refusal stopped the robot
            assert robot.execute(2, "noop").report.mode == "ready"  # the next skill runs
        finally:
            robot.close()


def test_frames_come_at_the_requested_resolution_and_show_the_true_world() -> None:
    with twin(perception_error=1.0) as server:
        robot = client(server.address)
        try:
            robot.reset("train", 5, seed=2)
            for px in (64, 224):
                result = robot.execute(px, "nav", "black table", frame_px=px)
                assert result.report.frame.shape == (px, px, 3)
                assert result.report.frame.dtype == np.uint8
            # every category is misreported; the frame is rendered from the truth
            truth = server.robot.true_measurement()
            assert not np.array_equal(result.report.measurement, truth)
            np.testing.assert_array_equal(result.report.frame, server.robot.frame(224))
            assert robot.execute(300, "noop").report.frame is None
        finally:
            robot.close()


def test_rendering_the_twins_frame_equals_the_renderer_on_the_true_state() -> None:
    from twinloop.sim.rearrange import task as T

    with twin() as server:
        robot = server.robot
        robot.reset("train", 1, 0)
        robot.execute(1, "nav", "sink")
        row = np.zeros(T.N_OBS, dtype=np.float32)
        T.write_observation(robot.true_measurement(), np.zeros(T.N_T, np.int64), robot._tp, row)
        np.testing.assert_array_equal(robot.frame(96), R.render(row, 96))


def test_latency_and_jitter_delay_each_reply() -> None:
    with twin(latency_s=0.02, jitter_s=0.01, seed=0) as server:
        robot = client(server.address)
        try:
            robot.reset("train", 0, seed=1)
            t0 = time.perf_counter()
            for k in range(1, 11):
                robot.execute(k, "noop")
            per = (time.perf_counter() - t0) / 10
            assert 0.02 <= per < 0.02 + 0.01 + 0.02
        finally:
            robot.close()


def test_failures_over_the_wire_leave_the_world_unchanged() -> None:
    with twin(failure_rates={"pick": 1.0}) as server:
        robot = client(server.address)
        try:
            robot.reset("train", 0, seed=1)
            truth = server.robot.true_measurement()
            where = truth[K.M_OBJ_REC : K.M_OBJ_REC + K.MAX_OBJECTS]
            rec = int(np.flatnonzero((where >= 0) & (where < C.N_OPEN_RECEPTACLES))[0])
            r = int(truth[K.M_OBJ_REC + rec])
            c = int(truth[K.M_OBJ_CAT + rec])
            robot.execute(1, "nav", C.NAV_TARGETS[r])
            result = robot.execute(2, "pick", C.CATEGORIES[c])  # would succeed in sim
            assert not result.success and result.report.measurement[K.M_HELD] == -1
            assert server.robot.failures_injected == 1
        finally:
            robot.close()
