"""The mobile manipulator's skill interface: its protocol, its network twin, the ``skills`` backend.

Backend factory (named in the registry table): ``skills``, the rearrangement task of
``twinloop/LangRearrange-v0`` over a twin served by ``twinloop serve skills`` (``address=``,
``token=``, ``timeout_s=``, ``retries=``, ``frame_px=``).
"""

from __future__ import annotations

from typing import Any

from twinloop.sim.rearrange.config import RearrangeConfig


def make_skills_backend(
    cfg: RearrangeConfig,
    address: str = "tcp://127.0.0.1:5557",
    token: str | None = None,
    timeout_s: float = 2.0,
    retries: int = 1,
    frame_px: int = 0,
) -> Any:
    """The rearrangement world over the skill protocol at ``address``."""
    from twinloop.hardware.skills.backend import SkillsBackend
    from twinloop.hardware.skills.remote import RemoteSkills

    robot = RemoteSkills(address, token, timeout_s=timeout_s, retries=retries)
    return SkillsBackend(cfg, robot, frame_px=frame_px)
