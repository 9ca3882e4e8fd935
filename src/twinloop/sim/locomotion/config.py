"""Configuration of the DeepMind Control Suite locomotion tasks (frozen, units in field names).

One config class per registered task: the class fixes the domain (which MJCF model of the
installed ``dm_control`` package) and the task (which reward), as class constants; the fields
are what a user may change. Episode length, control timestep and physics substeps default to
dm_control's own values [DMC]:

* [DMC] Tassa et al., "DeepMind Control Suite", arXiv:1801.00690 (2018), and the task
  definitions of ``dm_control.suite`` 1.0.50 (``cheetah.py``, ``walker.py``, ``hopper.py``,
  ``humanoid.py``, ``quadruped.py``): every task here runs 1000 control steps (cheetah 10 s at
  0.01 s, walker and humanoid 25 s at 0.025 s, hopper and quadruped 20 s at 0.02 s).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from twinloop.core.config import ConfigSection, param
from twinloop.core.safety import SafetyConfig


@dataclasses.dataclass(frozen=True, kw_only=True)
class DmcConfig(ConfigSection):
    """One control-suite task: its episode length, the vector env's threads, safety."""

    #: The domain (MJCF model ``<domain>.xml`` of ``dm_control/suite``).
    DOMAIN: ClassVar[str] = ""
    #: The task within the domain (selects the reward).
    TASK: ClassVar[str] = ""

    max_steps: int = param(
        1000,
        ge=1,
        le=10_000_000,
        doc="control steps before truncation; 1000 for every task here [DMC time limits]",
    )
    threads: int = param(
        0,
        ge=0,
        le=256,
        doc="worker threads that step the vector env's MuJoCo data (0: one per CPU); "
        "results do not depend on it",
    )
    safety: SafetyConfig = dataclasses.field(default_factory=SafetyConfig)


def _task_config(domain: str, task: str, doc: str) -> type[DmcConfig]:
    """A :class:`DmcConfig` subclass for ``domain``-``task`` (a class per registered id)."""
    name = f"{domain.capitalize()}{task.capitalize()}Config"
    cls = dataclasses.make_dataclass(
        name,
        [],
        bases=(DmcConfig,),
        frozen=True,
        kw_only=True,
        namespace={"DOMAIN": domain, "TASK": task, "__doc__": doc},
    )
    cls.__module__ = __name__
    return cls


CheetahRunConfig = _task_config("cheetah", "run", "dmc cheetah-run: run forward at >= 10 m/s.")
WalkerStandConfig = _task_config("walker", "stand", "dmc walker-stand: stand upright.")
WalkerWalkConfig = _task_config("walker", "walk", "dmc walker-walk: walk forward at 1 m/s.")
WalkerRunConfig = _task_config("walker", "run", "dmc walker-run: run forward at 8 m/s.")
HopperStandConfig = _task_config("hopper", "stand", "dmc hopper-stand: stand, small controls.")
HopperHopConfig = _task_config("hopper", "hop", "dmc hopper-hop: hop forward at 2 m/s.")
HumanoidStandConfig = _task_config("humanoid", "stand", "dmc humanoid-stand: stand still.")
HumanoidWalkConfig = _task_config("humanoid", "walk", "dmc humanoid-walk: walk at 1 m/s.")
HumanoidRunConfig = _task_config("humanoid", "run", "dmc humanoid-run: run at 10 m/s.")
QuadrupedWalkConfig = _task_config("quadruped", "walk", "dmc quadruped-walk: walk at 0.5 m/s.")
QuadrupedRunConfig = _task_config("quadruped", "run", "dmc quadruped-run: run at 5 m/s.")

#: ``(domain, task) -> config class``, in the order the ids are registered.
TASK_CONFIGS: dict[tuple[str, str], type[DmcConfig]] = {
    (c.DOMAIN, c.TASK): c
    for c in (
        CheetahRunConfig,
        WalkerStandConfig,
        WalkerWalkConfig,
        WalkerRunConfig,
        HopperStandConfig,
        HopperHopConfig,
        HumanoidStandConfig,
        HumanoidWalkConfig,
        HumanoidRunConfig,
        QuadrupedWalkConfig,
        QuadrupedRunConfig,
    )
}
