"""The simulated mobile manipulator behind the skills twin: the rearrangement kernel, imperfect.

:class:`SimSkillsRobot` runs :class:`~twinloop.sim.rearrange.env.RearrangeSimBackend` (the
``sim`` backend itself: the same kernel, episodes and streams; no second copy of the world)
and adds what a real robot's skill interface does differently:

* **skill failures**: a skill of kind ``k`` fails with probability ``failure_rates[k]`` even
  when its preconditions hold (a grasp slips, a path is blocked); a failed skill changes
  nothing and is reported as failed (``skill_ok`` 0), which the task charges as an invalid
  action, as it does a skill whose preconditions failed;
* **perception errors**: each object the robot reports (and the one in its hand) is reported
  with a wrong category, uniform over the other 32, with probability ``perception_error``
  per report; the world itself is unchanged, and the frame shows the truth;
* **durations**: each skill takes :data:`SKILL_DURATION_S` of its kind (ours: a mobile
  manipulator's typical times; the kinematic benchmark has none).

The failure and perception draws come from a generator seeded by the episode's seed mixed
with ``hidden_seed``, which the client never sees (with both effects off nothing is drawn:
the robot then equals the ``sim`` backend from the same seed and episodes).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from twinloop.core.config import ConfigSection, param
from twinloop.core.profile import DeviceProfile
from twinloop.core.rng import new_entropy
from twinloop.hardware.skills.protocol import SKILLS, grounded_action
from twinloop.sim.rearrange import catalog as C
from twinloop.sim.rearrange import kernel as K
from twinloop.sim.rearrange import render as R
from twinloop.sim.rearrange import task as T
from twinloop.sim.rearrange.config import RearrangeConfig
from twinloop.sim.rearrange.env import RearrangeSimBackend

#: Execution time of each skill kind (s; ours, of the order of a mobile manipulator's).
SKILL_DURATION_S = {"nav": 6.0, "pick": 4.0, "place": 4.0, "open": 3.0, "close": 3.0, "noop": 0.5}


@dataclasses.dataclass(frozen=True, kw_only=True)
class SkillsDeviceConfig(ConfigSection):
    """The robot's imperfections: what a device profile (``--profile``) sets.

    Nominal values come from the twin's command line (``--failure-rate``,
    ``--perception-error``); :mod:`twinloop.sim.rearrange.profile` is their prior.
    """

    nav_failure: float = param(0.0, ge=0.0, le=1.0, doc="P(a nav fails although it could run)")
    pick_failure: float = param(0.0, ge=0.0, le=1.0, doc="P(a pick fails)")
    place_failure: float = param(0.0, ge=0.0, le=1.0, doc="P(a place fails)")
    open_failure: float = param(0.0, ge=0.0, le=1.0, doc="P(an open fails)")
    close_failure: float = param(0.0, ge=0.0, le=1.0, doc="P(a close fails)")
    noop_failure: float = param(0.0, ge=0.0, le=1.0, doc="P(a noop is reported failed)")
    perception_error: float = param(
        0.0, ge=0.0, le=1.0, doc="P(a reported object's category is wrong), per report"
    )

    @classmethod
    def of(cls, failure_rates: dict[str, float], perception_error: float) -> SkillsDeviceConfig:
        """From failure rates by skill kind (checked by :func:`check_rates`)."""
        rates = check_rates(failure_rates, perception_error)
        return cls(
            **{f"{k}_failure": v for k, v in rates.items()}, perception_error=perception_error
        )

    def rates(self) -> dict[str, float]:
        """Failure rate by skill kind."""
        return {k: float(getattr(self, f"{k}_failure")) for k in SKILLS}


def check_rates(
    failure_rates: dict[str, float] | None, perception_error: float
) -> dict[str, float]:
    """Failure rate per skill kind (0 for kinds not named), checked.

    Raises:
        ValueError: An unknown kind, or a probability outside [0, 1].
    """
    rates = dict.fromkeys(SKILLS, 0.0)
    for kind, p in (failure_rates or {}).items():
        if kind not in rates:
            raise ValueError(f"failure rate of unknown skill {kind!r}; skills: {', '.join(SKILLS)}")
        if not 0.0 <= float(p) <= 1.0:
            raise ValueError(f"failure rate of {kind} must be in [0, 1], got {p}")
        rates[kind] = float(p)
    if not 0.0 <= float(perception_error) <= 1.0:
        raise ValueError(f"perception_error must be in [0, 1], got {perception_error}")
    return rates


class SimSkillsRobot:
    """A simulated mobile manipulator with a skill interface (the twin's device).

    Args:
        cfg: The rearrangement config (its split is the one a reset without a split uses).
        hidden_seed: Mixed into every episode's seed for the failure and perception draws
            (None: fresh entropy).
        failure_rates: Probability that a skill of each kind fails (kinds of :data:`SKILLS`).
        perception_error: Probability that a reported object's category is wrong.
        profile: The device's hidden imperfections (:class:`SkillsDeviceConfig` values,
            :mod:`twinloop.core.profile`) over the nominal rates above; only its name is
            shown (:meth:`identity`).
    """

    def __init__(
        self,
        cfg: RearrangeConfig,
        hidden_seed: int | None = None,
        failure_rates: dict[str, float] | None = None,
        perception_error: float = 0.0,
        profile: DeviceProfile | None = None,
    ) -> None:
        """Build the world and start an episode of the configured split (seed 0)."""
        self.cfg = cfg
        device = SkillsDeviceConfig.of(failure_rates or {}, perception_error)
        if profile is not None:
            device = profile.apply(device)
        self.profile = profile
        self.failure_rates = device.rates()
        self.perception_error = float(device.perception_error)
        self.hidden_seed = new_entropy() if hidden_seed is None else int(hidden_seed)
        self.sim = RearrangeSimBackend(cfg)
        self._tp = T.task_params(cfg)
        self._ti = np.zeros(T.N_T, dtype=np.int64)
        self._row = np.zeros(T.N_OBS, dtype=np.float32)
        self._rng = np.random.default_rng([self.hidden_seed, 0])
        self.mode = "stopped"
        self.seq = -1
        #: ``(seq, result)`` of the last executed skill (a repeated seq gets it again).
        self.last: tuple[int, dict[str, Any]] | None = None
        self.skills = 0
        self.failures_injected = 0
        self.reported = np.zeros(K.N_MEAS)
        self.reset(None, None, 0)
        self.stop()

    def reset(self, split: str | None, episode: int | None, seed: int | None) -> None:
        """New episode: ``episode`` of ``split`` (None: drawn; the configured split).

        ``seed`` re-seeds the world's stream and the hidden draws (None: both continue).

        Raises:
            ValueError: An unknown split, or an episode outside it.
        """
        options: dict[str, Any] = {}
        if split:
            options["split"] = split
        if episode is not None:
            options.setdefault("split", self.cfg.task.split)
            options["episode"] = int(episode)
        if seed is not None:
            self._rng = np.random.default_rng([self.hidden_seed, int(seed)])
        meas = self.sim.reset(seed, options)
        self.seq = -1
        self.last = None
        self.mode = "ready"
        self._report(meas)

    def execute(self, seq: int, skill: str, target: str) -> tuple[bool, float]:
        """Run one skill (it may fail, see the module docstring); ``(success, duration_s)``.

        Raises:
            ValueError: ``skill(target)`` is not in the catalog (the server refuses first).
        """
        action = grounded_action(skill, target)
        self.mode = "ready"
        self.seq = int(seq)
        self.skills += 1
        rate = self.failure_rates[skill]
        if rate and self._rng.random() < rate:
            self.failures_injected += 1
            st = self.sim.state
            st.w[0, K.W_OK] = 0  # the world is unchanged; the skill reports failure
            K.write_measurement(0, st.w, st.art, st.ocat, st.orec, self.sim.tables, st.meas)
            meas = st.meas[0].copy()
        else:
            meas, _ = self.sim.apply(np.array([float(action)]))
        self._report(meas)
        return bool(meas[K.M_OK]), SKILL_DURATION_S[skill]

    def stop(self) -> None:
        """The safe state: no skill running, the arm holds what it holds."""
        self.mode = "stopped"

    def _report(self, meas: np.ndarray) -> None:
        """What the robot's perception reports of ``meas`` (wrong categories now and then)."""
        out = meas.copy()
        p = self.perception_error
        if p:
            cats = out[K.M_OBJ_CAT : K.M_OBJ_CAT + K.MAX_OBJECTS]
            present = np.flatnonzero(cats >= 0)
            wrong = present[self._rng.random(present.size) < p]
            shift = self._rng.integers(1, C.N_CATEGORIES, wrong.size)
            cats[wrong] = (cats[wrong] + shift) % C.N_CATEGORIES
            held = int(self.sim.state.w[0, K.W_HELD])
            if held >= 0:
                out[K.M_HELD] = cats[held]
        self.reported = out

    def true_measurement(self) -> np.ndarray:
        """The world as it is (never served; for tests)."""
        return self.sim.state.meas[0].copy()

    def frame(self, px: int) -> np.ndarray:
        """The camera's ``(px, px, 3)`` uint8 view of the true world."""
        T.write_observation(self.true_measurement(), self._ti, self._tp, self._row)
        return R.render(self._row, px)

    def identity(self) -> dict[str, Any]:
        """What this robot is (a profile by its name only: the values stay hidden)."""
        out = {"kind": "sim-skills-robot", "world": "twinloop/LangRearrange-v0"}
        if self.profile is not None:
            out["profile"] = self.profile.name
        return out
