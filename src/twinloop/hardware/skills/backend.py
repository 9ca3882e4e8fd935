"""``backend="skills"`` of ``twinloop/LangRearrange-v0``: the task over a skills robot.

Data flow of one step::

    grounded action (from the task; after the env's safety layer)
        -> protocol.skill_of: (skill, target) by name, e.g. ("pick", "apple")
        -> RemoteSkills.execute(seq, skill, target, frame_px)   (a lost reply: the same seq
           again, up to the client's ``retries``; the twin answers a repeat, not re-executing)
        -> reply: success, duration, the reported symbolic observation, a frame if asked
        -> (measurement in the ``sim`` backend's layout, the action executed)

The task, the reward and the termination are the simulator's own code, run on what the robot
reports (so a perception error can cost reward, as on a real robot). Any fault (timeout, twin
gone, refusal, malformed reply) is a one-line :class:`~.protocol.SkillsFault` (a
``BackendFault``); the env then calls :meth:`SkillsBackend.safe_state`, which stops the robot.
With failure rates, perception errors and latency off, a run equals the ``sim`` backend's
from the same seed and episodes (``tests/hardware/skills/test_backend.py``).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from twinloop.core.backend import BaseBackend
from twinloop.hardware.skills.protocol import MAX_FRAME_PX, MIN_FRAME_PX, SkillsFault, skill_of
from twinloop.hardware.skills.remote import RemoteSkills
from twinloop.sim.rearrange import kernel as K
from twinloop.sim.rearrange.config import RearrangeConfig
from twinloop.sim.rearrange.env import COMMAND_SPACE, ENV_ID, episode_options

log = logging.getLogger(__name__)


class SkillsBackend(BaseBackend):
    """The rearrangement world over the skill protocol (a twin, or a robot speaking it).

    Args:
        cfg: The env's config (its split is the one a reset without options starts).
        robot: The client.
        frame_px: Ask the robot for a frame of this side with every skill (0: none); the last
            one is :attr:`last_frame`.
    """

    kind = "skills"
    deterministic = False

    def __init__(self, cfg: RearrangeConfig, robot: RemoteSkills, frame_px: int = 0) -> None:
        """Nothing connects until :meth:`connect`."""
        super().__init__()
        if frame_px and not MIN_FRAME_PX <= frame_px <= MAX_FRAME_PX:
            raise ValueError(
                f"frame_px = {frame_px} must be 0 (no frame) or in [{MIN_FRAME_PX}, {MAX_FRAME_PX}]"
            )
        self.cfg = cfg
        self.robot = robot
        self.frame_px = int(frame_px)
        self.command_space = COMMAND_SPACE
        self.measurement_space = K.MEASUREMENT.space(np.float64)
        self._seq = 0
        self.repeats = 0
        self.last_duration_s = 0.0
        self.last_frame: np.ndarray | None = None

    def request_frames(self, px: int) -> None:
        """Ask the robot for a frame of ``px`` px with every report (the env's rgb mode).

        Raises:
            ValueError: ``px`` is not in [MIN_FRAME_PX, MAX_FRAME_PX].
        """
        if not MIN_FRAME_PX <= int(px) <= MAX_FRAME_PX:
            raise ValueError(f"frame_px = {px} must be in [{MIN_FRAME_PX}, {MAX_FRAME_PX}]")
        self.frame_px = int(px)

    def connect(self) -> None:
        """Say hello and check the robot's catalog and observation (see ``RemoteSkills``)."""
        if self.connected:
            return
        self.robot.connect()
        super().connect()

    def reset(self, seed: int | None = None, options: dict[str, Any] | None = None) -> np.ndarray:
        """A new episode (``options``: ``{"split", "episode"}`` as ``sim``); the first measurement.

        Raises:
            ValueError: ``options`` is not a valid ``{"split", "episode"}``.
            SkillsFault: The robot refused or did not answer (it is then stopped if reachable).
        """
        opts = episode_options(options, 1, ENV_ID)
        split = (options or {}).get("split") or ""
        try:
            report = self.robot.reset(split, int(opts.episode[0]), seed)
        except SkillsFault:
            self._try_stop()
            raise
        self._seq = 0
        self.last_frame = None
        if self.frame_px:  # the episode's first view, from the robot's camera
            try:
                self.last_frame = self.robot.state(self.frame_px).frame
            except SkillsFault:
                self._try_stop()
                raise
        return report.measurement

    def apply(self, command: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Execute one skill on the robot: ``(measurement, the action executed)``."""
        self._seq += 1
        skill, target = skill_of(int(command[0]))
        result = self.robot.execute(self._seq, skill, target, self.frame_px)
        self.repeats += int(result.repeat)
        self.last_duration_s = result.duration_s
        self.last_frame = result.report.frame
        return result.report.measurement, np.asarray(command, dtype=np.float64)

    def safe_state(self) -> None:
        """Stop the robot (short timeout, one try: the link may be down)."""
        self.robot.stop(timeout_s=min(self.robot.timeout_s, 0.5), retries=0)

    def _try_stop(self) -> None:
        try:
            self.safe_state()
        except SkillsFault as exc:
            log.warning("could not stop the skills robot: %s", exc)

    def close(self) -> None:
        """Stop the robot (best effort) and close the link."""
        self._connected = False
        self.robot.close()

    def identity(self) -> dict[str, Any]:
        """Kind, address and what the robot says it is."""
        return {"kind": self.kind, "address": self.robot.address, "server": self.robot.server}
