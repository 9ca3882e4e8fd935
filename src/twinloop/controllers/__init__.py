"""Controllers: classical policies and learned agents that act on observations only.

``make_controller(name, env)`` builds one by name; ``CONTROLLERS`` lists the names with their
lazy entry points. ``agent:DIR`` names an agent trained by ``twinloop agent train`` (its run
folder or a checkpoint folder), loaded by :mod:`twinloop.controllers.rl.controller`.
"""

from __future__ import annotations

from typing import Any

from twinloop.controllers.base import Controller
from twinloop.core.registry import load

#: Controller name -> ``"module:Class"``.
CONTROLLERS: dict[str, str] = {
    "random": "twinloop.controllers.classical.random:RandomController",
    "greedy-neighbor": "twinloop.controllers.classical.stem:GreedyNeighbor",
    "greedy-learned": "twinloop.controllers.classical.stem:GreedyLearned",
    "planner": "twinloop.controllers.classical.stem:Planner",
    "station-seeker": "twinloop.controllers.classical.balloon:StationSeeker",
    "random-walk": "twinloop.controllers.classical.balloon:RandomWalk",
    "altitude-hold": "twinloop.controllers.classical.balloon:AltitudeHold",
    "oracle": "twinloop.controllers.classical.rearrange:Oracle",
    "scripted": "twinloop.controllers.classical.rearrange_scripted:ScriptedParser",
    "stand": "twinloop.controllers.classical.locomotion:Stand",
    "trot": "twinloop.controllers.classical.locomotion:Trot",
}
#: ``agent:DIR``: a saved agent (see :mod:`twinloop.controllers.rl`).
AGENT_PREFIX = "agent:"
AGENT_CONTROLLER = "twinloop.controllers.rl.controller:AgentController"


def make_controller(name: str, env: Any, **kwargs: Any) -> Controller:
    """Build controller ``name`` for ``env`` (a single or vector env).

    Raises:
        ValueError: Unknown name (the message lists valid ones) or unsupported system.
    """
    if name.startswith(AGENT_PREFIX):
        kwargs["path"] = name[len(AGENT_PREFIX) :]
        cls = load(AGENT_CONTROLLER)
    elif name not in CONTROLLERS:
        raise ValueError(
            f"unknown controller {name!r}; valid controllers: {', '.join(CONTROLLERS)}, "
            f"or {AGENT_PREFIX}DIR (an agent saved by 'twinloop agent train')"
        )
    else:
        cls = load(CONTROLLERS[name])
    obs_space = getattr(env, "single_observation_space", env.observation_space)
    act_space = getattr(env, "single_action_space", env.action_space)
    return cls(obs_space, act_space, getattr(env, "metadata", {}), **kwargs)


__all__ = ["CONTROLLERS", "Controller", "make_controller"]
