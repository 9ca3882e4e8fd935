from __future__ import annotations

import threading
import time

import gymnasium as gym
import numpy as np
import pytest

from twinloop.core.config import ConfigError
from twinloop.core.safety import SafetyConfig, SafetyFault, SafetyLayer, check_action

BOX = gym.spaces.Box(np.array([-1.0, 0.0], np.float32), np.array([1.0, 5.0], np.float32))


def test_check_action_accepts_and_converts() -> None:
    out, clipped = check_action("env", BOX, [0.5, 2.0])
    assert out.dtype == np.float64 and not clipped
    np.testing.assert_array_equal(out, [0.5, 2.0])


@pytest.mark.parametrize(
    ("action", "pattern"),
    [
        ([0.5], r"env: action has shape \(1,\), expected \(2,\)"),
        ([np.nan, 1.0], r"env: action\[0\] \(x \(A\)\) = nan is not finite"),
        ([0.0, np.inf], r"action\[1\] \(dwell \(s\)\) = inf is not finite"),
        ([1.5, 1.0], r"action\[0\] \(x \(A\)\) = 1.5 is above the upper bound 1"),
        ([0.0, -0.1], r"action\[1\] \(dwell \(s\)\) = -0.1 is below the lower bound 0"),
    ],
)
def test_check_action_errors_name_value_and_bound(action, pattern) -> None:
    with pytest.raises(ValueError, match=pattern):
        check_action("env", BOX, action, labels=("x (A)", "dwell (s)"))


def test_check_action_clips_when_asked_but_never_nan() -> None:
    out, clipped = check_action("env", BOX, [1.5, -2.0], clip=True)
    assert clipped
    np.testing.assert_array_equal(out, [1.0, 0.0])
    with pytest.raises(ValueError, match="not finite"):
        check_action("env", BOX, [np.nan, 0.0], clip=True)


def test_check_action_refuses_non_finite_values_in_an_unbounded_box() -> None:
    """With infinite bounds, +-inf passes every comparison: it must still be refused."""
    box = gym.spaces.Box(-np.inf, np.inf, shape=(3,), dtype=np.float64)
    out, clipped = check_action("env", box, [1e300, -5.0, 0.0])
    assert not clipped and out[0] == 1e300
    for bad in ([np.inf, 0.0, 0.0], [0.0, -np.inf, 0.0], [0.0, 0.0, np.nan]):
        with pytest.raises(ValueError, match="is not finite"):
            check_action("env", box, bad)


def test_check_action_large_boxes_take_the_array_path() -> None:
    """Boxes above the small-box size are checked with array operations, with the same errors."""
    box = gym.spaces.Box(-1.0, 1.0, shape=(4, 8), dtype=np.float32)
    ok = np.zeros((4, 8))
    assert check_action("env", box, ok)[0].shape == (4, 8)
    ok[2, 5] = 1.5
    with pytest.raises(ValueError, match=r"action\[2, 5\] = 1.5 is above the upper bound 1"):
        check_action("env", box, ok)
    ok[2, 5] = np.nan
    with pytest.raises(ValueError, match=r"action\[2, 5\] = nan is not finite"):
        check_action("env", box, ok)
    unbounded = gym.spaces.Box(-np.inf, np.inf, shape=(20,), dtype=np.float64)
    big = np.full(20, 1e300)
    assert check_action("env", unbounded, big)[0][0] == 1e300
    big[19] = -np.inf
    with pytest.raises(ValueError, match=r"action\[19\] = -inf is not finite"):
        check_action("env", unbounded, big)


def test_check_action_discrete() -> None:
    space = gym.spaces.Discrete(3)
    assert check_action("env", space, 2) == (2, False)
    with pytest.raises(ValueError, match=r"action 3 is outside \{0, ..., 2\}"):
        check_action("env", space, 3)
    with pytest.raises(ValueError, match="not a scalar integer"):
        check_action("env", space, 1.5)
    assert check_action("env", space, 7, clip=True) == (2, True)


def test_safety_layer_clips_to_limits_and_rate() -> None:
    space = gym.spaces.Box(np.array([-10.0, -10.0]), np.array([10.0, 10.0]), dtype=np.float64)
    layer = SafetyLayer(space, SafetyConfig(max_command_step=(1.0, 100.0)))
    out, changed = layer.filter(np.array([5.0, 50.0]))  # first command: limits only
    np.testing.assert_array_equal(out, [5.0, 10.0])
    assert changed
    out, changed = layer.filter(np.array([9.0, -10.0]))  # x limited to +1 per step
    np.testing.assert_array_equal(out, [6.0, -10.0])
    layer.reset()
    out, _ = layer.filter(np.array([-9.0, 0.0]))  # the rate limit restarts after reset
    np.testing.assert_array_equal(out, [-9.0, 0.0])


def test_safety_config_validation() -> None:
    with pytest.raises(ConfigError, match=r"max_command_step\[0\] = -1"):
        SafetyConfig(max_command_step=(-1.0,))
    space = gym.spaces.Box(-1.0, 1.0, shape=(3,))
    with pytest.raises(ConfigError, match="has 1 entries; the command has 3"):
        SafetyLayer(space, SafetyConfig(max_command_step=(1.0,)))


def test_watchdog_puts_the_device_in_its_safe_state() -> None:
    fired = threading.Event()
    space = gym.spaces.Box(-1.0, 1.0, shape=(1,))
    layer = SafetyLayer(space, SafetyConfig(watchdog_s=0.05), on_trip=fired.set)
    layer.filter(np.array([0.0]))
    assert fired.wait(2.0), "the watchdog must call the safe-state handler"
    assert layer.tripped
    with pytest.raises(SafetyFault, match="watchdog"):
        layer.filter(np.array([0.0]))
    layer.reset()
    layer.filter(np.array([0.0]))  # usable again after a reset
    layer.disarm()


def test_watchdog_does_not_fire_while_commands_arrive() -> None:
    fired = threading.Event()
    space = gym.spaces.Box(-1.0, 1.0, shape=(1,))
    layer = SafetyLayer(space, SafetyConfig(watchdog_s=0.2), on_trip=fired.set)
    for _ in range(10):
        layer.filter(np.array([0.0]))
        time.sleep(0.02)
    layer.disarm()
    time.sleep(0.3)
    assert not fired.is_set()


def test_vector_envs_check_the_rate_limit_size() -> None:
    import twinloop

    with pytest.raises(ConfigError, match="has 1 entries; the command has 3"):
        twinloop.make_vec("twinloop/StemSteer-v0", 2, max_command_step=(1.0,))
    vec = twinloop.make_vec("twinloop/StemSteer-v0", 2, max_command_step=(0.5, 0.5, 100.0))
    vec.reset(seed=0)
    _, _, _, _, info = vec.step(np.zeros((2, 2), np.float32))
    first = info["applied_command"].copy()
    _, _, _, _, info = vec.step(np.full((2, 2), 3.0, np.float32))
    step = np.abs(info["applied_command"][:, :2] - first[:, :2])
    assert (step <= 0.5 + 1e-12).all() and info["command_clipped"].all()
