"""Property-based: any observation with a non-finite or wrong-typed value is refused, cleanly.

For any observation dict in which one read key holds a value that is not a real, finite scalar
(NaN, infinities, None, bools, strings, bytes, lists, arrays, complex numbers, dicts), and any
finite values elsewhere, a step raises one ``BackendFault`` naming that key, and the backend's
state is untouched: its last measurement, the pose its safe state would hold, and the next good
step (whose finite difference still starts from the last good measurement).
Hypothesis runs derandomized and small by default.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

pytest.importorskip("hypothesis", reason="the 'test' extra (hypothesis) is needed")

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.hardware.lerobot.helpers import DT, backend, mapping, robot
from twinloop.core.backend import BackendFault
from twinloop.hardware.lerobot.fake import FakeRobot

KEYS = ("a.pos", "b.pos")

FINITE = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
GOOD = st.one_of(
    FINITE,
    st.integers(min_value=-(10**6), max_value=10**6),
    FINITE.map(np.float32),
    FINITE.map(lambda v: np.array(v)),  # a 0-d array is a scalar
)
BAD = st.one_of(
    st.sampled_from([float("nan"), float("inf"), float("-inf"), np.float32("nan")]),
    st.sampled_from([np.float64("-inf"), np.array(np.nan)]),
    st.none(),
    st.booleans(),
    st.booleans().map(np.bool_),
    st.text(max_size=5),
    st.binary(max_size=5),
    st.lists(FINITE, max_size=3),
    st.lists(FINITE, min_size=1, max_size=3).map(np.array),
    st.complex_numbers(allow_nan=False, allow_infinity=False, max_magnitude=10.0),
    st.dictionaries(st.text(max_size=2), FINITE, max_size=2),
)


class ScriptedRobot(FakeRobot):
    """A fake whose next observation is whatever the test says (then the servo's again)."""

    def __init__(self) -> None:
        """Two joints, ``a.pos`` and ``b.pos``."""
        super().__init__(["a", "b"])
        self.next_observation: dict[str, Any] | None = None

    def _read(self) -> dict[str, Any]:
        if self.next_observation is not None:
            obs, self.next_observation = self.next_observation, None
            return obs
        return super()._read()


def _settings(n: int) -> Any:
    return settings(
        max_examples=n,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )


@_settings(150)
@given(
    key=st.sampled_from(KEYS),
    bad=BAD,
    others=st.fixed_dictionaries({k: GOOD for k in KEYS}),
    extra=st.dictionaries(st.sampled_from(["x", "img", "c.pos"]), BAD | GOOD, max_size=2),
)
def test_a_bad_value_is_refused_naming_its_key_and_corrupts_nothing(
    key: str, bad: Any, others: dict[str, Any], extra: dict[str, Any]
) -> None:
    fake = ScriptedRobot()
    be = backend(fake, mapping=mapping(degrees=False))
    be.reset()
    good, _ = be.apply(np.array([0.25, -0.5]))
    hold = be.hold_targets()
    fake.next_observation = {**extra, **others, key: bad}  # keys not read are never inspected
    with pytest.raises(BackendFault) as info:
        be.apply(np.array([0.3, -0.5]))
    text = str(info.value)
    assert repr(key) in text and "\n" not in text
    np.testing.assert_array_equal(be.last_measurement, good)
    np.testing.assert_array_equal(be.hold_targets(), hold)
    after, _applied = be.apply(np.array([0.5, -0.5]))
    np.testing.assert_array_equal(after[:2], [0.5, -0.5])
    np.testing.assert_array_equal(after[2:4], (after[:2] - good[:2]) / DT)


@_settings(60)
@given(others=st.fixed_dictionaries({k: GOOD for k in KEYS}))
def test_any_finite_real_scalars_are_accepted_as_their_float_value(others: dict[str, Any]) -> None:
    fake = ScriptedRobot()
    be = backend(fake, mapping=mapping(degrees=False))
    be.reset()
    fake.next_observation = dict(others)
    m, _ = be.apply(np.array([0.0, 0.0]))
    np.testing.assert_array_equal(m[:2], [float(others[k]) for k in KEYS])


@_settings(40)
@given(sent=st.fixed_dictionaries({"a.pos": BAD, "b.pos": GOOD}))
def test_a_bad_returned_action_is_refused_and_not_reported_as_applied(sent: dict) -> None:
    fake = robot()
    be = backend(fake)
    be.reset()
    be.apply(np.array([0.1, 0.1]))

    def send(action: dict) -> dict:
        return dict(sent)

    fake.send_action = send  # type: ignore[method-assign]
    with pytest.raises(BackendFault, match=r"returned action\['a.pos'\]"):
        be.apply(np.array([0.2, 0.2]))
