"""Configuration of the language-conditioned rearrangement system (frozen, validated).

Sources: [LLaRP] Szot et al., "Large Language Models as Generalizable Policies for Embodied
Tasks", ICLR 2024 (arXiv 2310.17722): at most 32 high-level actions per episode, 30 clutter
objects, success reward 10, +5 per completed subgoal, -0.05 per invalid action.
"""

from __future__ import annotations

import dataclasses

from twinloop.core.config import ConfigSection, param
from twinloop.core.safety import SafetyConfig
from twinloop.sim.rearrange.episodes import MAX_CLUTTER, SPLITS


@dataclasses.dataclass(frozen=True, kw_only=True)
class RearrangeWorldConfig(ConfigSection):
    """The apartment and its objects."""

    n_clutter: int = param(
        30,
        units="objects",
        ge=0,
        le=MAX_CLUTTER,
        doc="clutter objects on the open receptacles per episode; 30 [LLaRP]",
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class RearrangeTaskConfig(ConfigSection):
    """What the controller sees and is rewarded for."""

    split: str = param(
        "train",
        choices=SPLITS,
        doc="the split a reset draws its episode from (uniformly, from the row's stream)",
    )
    observation_mode: str = param(
        "symbolic",
        choices=("symbolic", "rgb"),
        doc="symbolic: flat instruction tokens, is_holding and the world state (true/...); "
        "rgb: a Dict with the egocentric frame (render.py), tokens, is_holding and the "
        "symbolic vector",
    )
    resolution: int = param(
        224,
        units="px",
        ge=64,
        le=224,
        doc="side of the square RGB frame (observation_mode='rgb'); 224 [LLaRP]",
    )
    max_steps: int = param(
        32, units="actions", ge=1, le=1000, doc="high-level actions per episode; 32 [LLaRP]"
    )
    reward_success: float = param(10.0, ge=-1e6, le=1e6, doc="on success; 10 [LLaRP]")
    reward_subgoal: float = param(
        5.0, ge=-1e6, le=1e6, doc="per completed subgoal (paid once); 5 [LLaRP]"
    )
    reward_invalid: float = param(
        -0.05, ge=-1e6, le=1e6, doc="per invalid (failed precondition) action; -0.05 [LLaRP]"
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class RearrangeConfig(ConfigSection):
    """The whole rearrangement system: world, task and safety."""

    world: RearrangeWorldConfig = dataclasses.field(default_factory=RearrangeWorldConfig)
    task: RearrangeTaskConfig = dataclasses.field(default_factory=RearrangeTaskConfig)
    safety: SafetyConfig = dataclasses.field(default_factory=SafetyConfig)
