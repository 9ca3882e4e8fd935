"""The LeRobot bridge over a fake two-joint arm: mapping, clipping, refusals, faults, timing.

No simulator and no ``lerobot``: the fake follows LeRobot's documented ``Robot`` interface
(``tests`` of the quadruped in ``test_quadruped.py`` run the bridge inside the env).
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from tests.hardware.lerobot.helpers import (
    DT,
    ROBOT_LIMIT_DEG,
    backend,
    mapping,
    rad,
    robot,
)
from twinloop.core.backend import Backend, BackendFault
from twinloop.core.config import ConfigError
from twinloop.hardware.lerobot.backend import LeRobotConfig, LeRobotFault
from twinloop.hardware.lerobot.fake import (
    DeviceAlreadyConnectedError,
    DeviceNotConnectedError,
    Fault,
)
from twinloop.hardware.lerobot.protocol import (
    Channel,
    FiniteDifference,
    GravityFromQuaternion,
    LeRobotRobot,
    MappingError,
    Unavailable,
    gravity_from_quaternion,
)


# --- the fake follows LeRobot's interface --------------------------------------------------------
def test_fake_follows_lerobots_connection_rules() -> None:
    fake = robot()
    assert isinstance(fake, LeRobotRobot)
    assert fake.observation_features == {"a.pos": float, "b.pos": float}  # while disconnected
    with pytest.raises(DeviceNotConnectedError):
        fake.get_observation()
    with pytest.raises(DeviceNotConnectedError):
        fake.send_action({"a.pos": 0.0})
    fake.connect(calibrate=False)
    with pytest.raises(DeviceAlreadyConnectedError):
        fake.connect()
    assert isinstance(DeviceNotConnectedError(), ConnectionError)
    sent = fake.send_action({"a.pos": 100.0, "b.pos": -10.0})
    assert sent == {"a.pos": ROBOT_LIMIT_DEG, "b.pos": -10.0}  # what was sent, after clipping
    assert fake.get_observation() == sent
    fake.disconnect()
    with pytest.raises(DeviceNotConnectedError):
        fake.disconnect()


def test_fake_implements_every_abstract_member_of_lerobots_robot() -> None:
    lerobot_robot = pytest.importorskip("lerobot.robots", reason="lerobot is not installed")
    import inspect

    for name in sorted(lerobot_robot.Robot.__abstractmethods__):
        theirs = inspect.getattr_static(lerobot_robot.Robot, name)
        ours = inspect.getattr_static(robot(), name)
        assert isinstance(ours, property) == isinstance(theirs, property), name
        if not isinstance(theirs, property):
            assert list(inspect.signature(ours).parameters) == list(
                inspect.signature(theirs).parameters
            ), name


def test_fake_caps_moves_relative_to_the_present_position() -> None:
    fake = robot(max_relative_target=5.0, initial={"a.pos": 10.0})
    fake.connect()
    assert fake.send_action({"a.pos": 30.0, "b.pos": -1.0}) == {"a.pos": 15.0, "b.pos": -1.0}


# --- mapping -------------------------------------------------------------------------------------
def test_command_and_measurement_round_trip_exactly_without_conversion() -> None:
    fake = robot(limits=None)
    be = backend(fake, mapping=mapping(degrees=False))
    assert isinstance(be, Backend)
    m0 = be.reset(seed=1)
    np.testing.assert_array_equal(m0[:2], [0.0, 0.0])
    cmd = np.array([0.123456789, -1.0000001])
    m, applied = be.apply(cmd)
    requested, _sent = fake.actions[-1]
    assert requested == {"a.pos": cmd[0], "b.pos": cmd[1]}
    np.testing.assert_array_equal(applied, cmd)
    np.testing.assert_array_equal(m[:2], cmd)  # an ideal servo: the measurement is the target
    np.testing.assert_array_equal(m[2:4], cmd / DT)  # finite difference from the reset pose
    assert math.isnan(m[4])  # declared unavailable: NaN, not zero
    assert be.last_clipped == []


def test_degrees_are_converted_both_ways_and_unchanged_targets_report_exactly() -> None:
    fake = robot()
    be = backend(fake)
    be.reset()
    cmd = np.array([0.5, -0.25])
    m, applied = be.apply(cmd)
    requested, _ = fake.actions[-1]
    assert requested == pytest.approx({"a.pos": 0.5 * 180 / math.pi, "b.pos": -45 / math.pi})
    np.testing.assert_array_equal(applied, cmd)  # not clipped: exactly the command, no round trip
    np.testing.assert_allclose(m[:2], cmd, rtol=0, atol=1e-15)
    assert m[2:4] == pytest.approx(cmd / DT, abs=1e-12)


def test_the_robots_clipping_is_reported_as_the_applied_command() -> None:
    fake = robot()
    be = backend(fake)
    be.reset()
    _, applied = be.apply(np.array([1.4, 0.1]))  # 80 degrees: the robot caps at 60
    assert applied[0] == pytest.approx(rad(ROBOT_LIMIT_DEG), abs=1e-15)
    assert applied[1] == 0.1
    assert be.last_clipped == ["a.pos"]


def test_finite_difference_starts_at_its_declared_reset_value() -> None:
    m = mapping(
        measurement={
            "q_rad": (Channel.degrees("a.pos"), Channel.degrees("b.pos")),
            "qd_rad_per_s": FiniteDifference("q_rad", at_reset=math.nan),
            "temperature_c": Unavailable(fill=25.0, why="lab"),
        }
    )
    fake = robot(initial={"a.pos": 30.0})
    be = backend(fake, mapping=m)
    first = be.reset()
    assert np.isnan(first[2:4]).all()
    assert first[4] == 25.0
    assert first[0] == pytest.approx(rad(30.0))
    second, _ = be.apply(np.array([rad(31.0), 0.0]))
    assert second[2] == pytest.approx(rad(1.0) / DT)


def test_describe_names_every_source() -> None:
    lines = mapping().describe()
    assert lines[0].startswith("q_rad <- a.pos (robot = 57.2958 x + 0)")
    assert "qd_rad_per_s <- finite difference of q_rad (at reset: 0)" in lines
    assert "temperature_c <- unavailable, filled with nan (no sensor)" in lines
    assert lines[-1].startswith("command[1] -> b.pos")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"measurement": {"q_rad": (Channel("a.pos"), Channel("b.pos"))}},
            "fields without a source",
        ),
        (
            {
                "measurement": {
                    "q_rad": (Channel("a.pos"), Channel("b.pos")),
                    "qd_rad_per_s": Unavailable(),
                    "temperature_c": Unavailable(),
                    "pressure_pa": Unavailable(),
                }
            },
            "unknown fields: pressure_pa",
        ),
        (
            {
                "measurement": {
                    "q_rad": (Channel("a.pos"),),
                    "qd_rad_per_s": Unavailable(),
                    "temperature_c": Unavailable(),
                }
            },
            "q_rad has 2 elements; its mapping has 1",
        ),
        (
            {
                "measurement": {
                    "q_rad": Unavailable(),
                    "qd_rad_per_s": FiniteDifference("q_rad"),
                    "temperature_c": Unavailable(),
                }
            },
            "FiniteDifference of 'q_rad', which is not read from the robot",
        ),
        (
            {"action": (Channel("a.pos"), Channel("a.pos"))},
            "action keys used more than once: a.pos",
        ),
        ({"action": (Channel("a.pos"),)}, "action mapping has 1 channels; the command has 2"),
        ({"ignore": ("a.pos",)}, "both read and ignored: a.pos"),
        ({"hold_field": "nope"}, "hold_field 'nope' is not a measurement field"),
    ],
)
def test_a_mapping_that_does_not_fit_is_refused_precisely(change: dict, message: str) -> None:
    with pytest.raises(MappingError, match=message):
        mapping(**change)


def test_channels_refuse_a_zero_or_non_finite_scale() -> None:
    with pytest.raises(MappingError, match="scale = 0"):
        Channel("a", 0.0)
    with pytest.raises(MappingError, match="offset = nan"):
        Channel("a", 1.0, math.nan)


# --- features ------------------------------------------------------------------------------------
def test_missing_extra_and_non_scalar_features_are_refused_before_connecting() -> None:
    fake = robot(extra_observation={"temp.c": 20.0}, cameras={"front": (4, 6, 3)})
    m = mapping(
        measurement={
            "q_rad": (Channel("a.pos"), Channel("front")),
            "qd_rad_per_s": (Channel("a.vel"), Channel("b.vel")),
            "temperature_c": Unavailable(),
        },
        action=(Channel("a.pos"), Channel("c.pos")),
    )
    be = backend(fake, mapping=m)
    with pytest.raises(BackendFault) as info:
        be.reset()
    text = str(info.value)
    assert "\n" not in text
    assert "the mapping reads but the robot lacks: a.vel, b.vel" in text
    assert "neither read nor ignored: b.pos, temp.c" in text
    assert "the mapping sends but the robot lacks: c.pos" in text
    assert "the robot expects but the mapping does not send: b.pos" in text
    assert "not scalar (float) features: front ((4, 6, 3))" in text
    assert fake.calls == []  # refused from the features alone; never connected
    assert not be.connected


def test_ignored_keys_such_as_cameras_are_accepted_and_not_read() -> None:
    fake = robot(cameras={"front": (4, 6, 3)})
    be = backend(fake, mapping=mapping(ignore=("front",)))
    m = be.reset()
    assert m.shape == (5,)


# --- connection ----------------------------------------------------------------------------------
def test_connects_without_calibrating_and_refuses_an_uncalibrated_robot() -> None:
    fake = robot(calibrated=False)
    be = backend(fake)
    with pytest.raises(LeRobotFault, match="is not calibrated"):
        be.reset()
    assert fake.calls == ["connect(calibrate=False)", "disconnect"]  # left as it was found
    assert not fake.is_connected


def test_calibrate_true_is_passed_to_connect() -> None:
    fake = robot(calibrated=False)
    be = backend(fake, calibrate=True)
    be.reset()
    assert fake.calls[:2] == ["connect(calibrate=True)", "calibrate"]


def test_an_already_connected_robot_is_not_connected_again() -> None:
    fake = robot()
    fake.connect()
    be = backend(fake)
    be.reset()
    assert fake.calls.count("connect(calibrate=True)") == 1
    assert not any(c.startswith("connect(calibrate=False)") for c in fake.calls)


def test_close_sends_the_hold_action_then_disconnects_once() -> None:
    fake = robot()
    be = backend(fake)
    be.reset()
    be.apply(np.array([0.3, -0.2]))
    be.close()
    be.close()
    assert not fake.is_connected
    assert fake.calls[-2:] == ["send_action", "disconnect"]
    assert fake.calls.count("disconnect") == 1
    hold, _ = fake.actions[-1]
    assert hold == pytest.approx({"a.pos": 0.3 * 180 / math.pi, "b.pos": -0.2 * 180 / math.pi})


def test_a_failing_disconnect_is_a_fault_and_the_backend_is_closed_anyway() -> None:
    fake = robot()
    be = backend(fake)
    be.reset()
    fake.inject(Fault("disconnect", "raise", error=OSError("port vanished\nsecond line")))
    with pytest.raises(LeRobotFault, match=r"disconnect failed: OSError: port vanished$"):
        be.close()
    assert not be.connected


# --- faults --------------------------------------------------------------------------------------
@pytest.mark.parametrize("timeout_s", [0.5, 0.0])  # on the worker thread, and in the caller's
def test_a_robot_exception_becomes_a_one_line_fault_and_the_safe_state_holds(
    timeout_s: float,
) -> None:
    fake = robot()
    be = backend(fake, timeout_s=timeout_s)
    be.reset()
    be.apply(np.array([0.2, 0.4]))
    fake.inject(Fault("send_action", "raise", error=RuntimeError("overload on motor 3")))
    with pytest.raises(BackendFault) as info:
        be.apply(np.array([0.3, 0.4]))
    assert str(info.value) == (
        "FakeRobot 'fake': send_action failed: RuntimeError: overload on motor 3"
    )
    be.safe_state()  # what TwinEnv does after a fault
    hold, sent = fake.actions[-1]
    assert sent == pytest.approx({"a.pos": 0.2 * 180 / math.pi, "b.pos": 0.4 * 180 / math.pi})
    assert hold == sent


def test_a_nan_reading_is_a_fault_naming_the_key_and_keeps_the_last_measurement() -> None:
    fake = robot()
    be = backend(fake)
    be.reset()
    good, _ = be.apply(np.array([0.1, 0.2]))
    fake.inject(Fault("get_observation", "value", key="b.pos", value=float("nan")))
    with pytest.raises(LeRobotFault, match=r"observation\['b.pos'\] = nan is not finite"):
        be.apply(np.array([0.1, 0.3]))
    np.testing.assert_array_equal(be.last_measurement, good)
    fake.inject(Fault("get_observation", "drop", key="a.pos"))
    with pytest.raises(LeRobotFault, match=r"observation lacks key 'a\.pos'"):
        be.apply(np.array([0.1, 0.3]))


def test_a_malformed_returned_action_is_a_fault() -> None:
    fake = robot()
    be = backend(fake)
    be.reset()
    fake.inject(Fault("send_action", "value", key="a.pos", value="60"))
    with pytest.raises(LeRobotFault, match=r"returned action\['a.pos'\] = str '60'"):
        be.apply(np.array([0.1, 0.2]))


def test_a_stalled_observation_is_a_fault_and_the_robot_is_never_called_twice_at_once() -> None:
    fake = robot()
    be = backend(fake, timeout_s=0.05)
    be.reset()
    fake.inject(Fault("get_observation", "stall", seconds=0.4))
    t0 = time.monotonic()
    with pytest.raises(LeRobotFault, match=r"get_observation took longer than 0.05 s"):
        be.apply(np.array([0.1, 0.2]))
    assert time.monotonic() - t0 < 0.3  # the caller is not held for the whole stall
    with pytest.raises(LeRobotFault, match="still busy with get_observation"):
        be.apply(np.array([0.1, 0.2]))
    t1 = time.monotonic()
    be.safe_state()  # cannot reach the robot now: logged, not raised, and not held up
    assert time.monotonic() - t1 < 0.2
    time.sleep(max(0.0, t0 + 0.7 - time.monotonic()))  # the stall is over: answers again
    m, _ = be.apply(np.array([0.1, 0.2]))
    assert m[0] == pytest.approx(0.1)


def test_safe_state_never_raises_even_when_the_robot_does() -> None:
    fake = robot()
    be = backend(fake)
    be.safe_state()  # nothing known yet: nothing sent, nothing raised
    assert fake.calls == []
    be.reset()
    fake.inject(Fault("send_action", "raise", times=-1))
    be.safe_state()
    fake.faults.clear()


def test_a_configured_safe_pose_is_what_the_safe_state_sends() -> None:
    fake = robot()
    be = backend(fake, safe_pose=(0.0, 0.5), mapping=mapping(hold_field=None))
    be.reset()
    be.apply(np.array([0.3, 0.3]))
    be.safe_state()
    assert fake.actions[-1][0] == pytest.approx({"a.pos": 0.0, "b.pos": 0.5 * 180 / math.pi})
    with pytest.raises(MappingError, match="safe_pose has 3 entries; the command has 2"):
        backend(robot(), safe_pose=(0.0, 0.0, 0.0))
    with pytest.raises(MappingError, match=r"needs LeRobotConfig\.safe_pose or the mapping"):
        backend(robot(), mapping=mapping(hold_field=None))


def test_a_failing_reset_hook_is_a_fault() -> None:
    from twinloop.hardware.lerobot.backend import LeRobotBackend

    def hook(robot: object, seed: int | None) -> None:
        raise ValueError(f"could not stand up (seed {seed})")

    be = LeRobotBackend(
        robot(), config=LeRobotConfig(pace=False), mapping=mapping(), reset_hook=hook
    )
    with pytest.raises(LeRobotFault, match=r"reset_hook failed: ValueError: could not stand up"):
        be.reset(seed=7)


def test_bad_commands_and_options_are_refused() -> None:
    be = backend()
    be.reset()
    with pytest.raises(ValueError, match=r"command\[1\] = nan is not finite"):
        be.apply(np.array([0.0, np.nan]))
    with pytest.raises(ValueError, match=r"command shape \(3,\)"):
        be.apply(np.zeros(3))
    with pytest.raises(ValueError, match="takes no reset options"):
        be.reset(options={"pose": 1})


def test_config_limits_are_checked() -> None:
    with pytest.raises(ConfigError, match="timeout_s"):
        LeRobotConfig(timeout_s=-1.0)
    with pytest.raises(ConfigError, match="exceeds connect_timeout_s"):
        LeRobotConfig(timeout_s=20.0, connect_timeout_s=10.0)


# --- timing --------------------------------------------------------------------------------------
def test_pacing_keeps_actions_one_control_period_apart() -> None:
    fake = robot()
    be = backend(fake, pace=True, control_dt_s=0.05)
    be.reset()
    t0 = time.monotonic()
    for _ in range(4):
        be.apply(np.array([0.1, 0.1]))
    assert time.monotonic() - t0 >= 3 * 0.05 - 1e-3


# --- gravity -------------------------------------------------------------------------------------
def test_gravity_from_a_quaternion() -> None:
    np.testing.assert_allclose(gravity_from_quaternion([1, 0, 0, 0]), [0, 0, -1], atol=1e-15)
    # 90 degrees about x (roll): gravity points along -y in the body frame
    s = math.sqrt(0.5)
    np.testing.assert_allclose(gravity_from_quaternion([s, s, 0, 0]), [0, -1, 0], atol=1e-15)
    with pytest.raises(ValueError, match="norm 0, not an orientation"):
        gravity_from_quaternion([0, 0, 0, 0], ("w", "x", "y", "z"))
    with pytest.raises(MappingError, match="need 4 keys"):
        GravityFromQuaternion(("w", "x", "y"))  # type: ignore[arg-type]
