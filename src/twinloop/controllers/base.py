"""The Controller interface: any policy that acts on observations, batched.

A controller acts on a batch of observations (``(n_envs, ...)``) and returns a batch of
actions, so the same object drives a single env (a batch of one) and a vector env. Episodes
start per row with :meth:`Controller.reset`, each with its own seed, so a run gives the same
results whatever the batch size. Controllers read observation fields by name through the
env's ``metadata["observation_layout"]``; they never import a simulator.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np


class Controller:
    """Base class of every controller.

    Args:
        observation_space: The env's single observation space.
        action_space: The env's single action space.
        metadata: The env's metadata (system name, observation layout, action mode ...).
    """

    #: Name used by ``twinloop run --controller NAME``.
    name: ClassVar[str] = "base"
    #: Systems this controller understands (empty: any system).
    systems: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        observation_space: gym.Space,
        action_space: gym.Space,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        """Check that the env's system is supported."""
        self.observation_space = observation_space
        self.action_space = action_space
        self.metadata = dict(metadata or {})
        system = self.metadata.get("system")
        if self.systems and system not in self.systems:
            raise ValueError(
                f"controller {self.name!r} works on systems {', '.join(self.systems)}, "
                f"not on {system!r}"
            )
        self.n_envs = 0

    def reset(self, n_envs: int, seeds: np.ndarray, mask: np.ndarray | None = None) -> None:
        """Start episodes in the rows of ``mask`` (all rows if None); row ``i`` gets ``seeds[i]``.

        Args:
            n_envs: Batch size the controller will act on.
            seeds: One non-negative seed per row.
            mask: Rows whose episodes start now.
        """
        self.n_envs = int(n_envs)

    def act(self, obs: np.ndarray) -> np.ndarray:
        """Actions for a batch of observations."""
        raise NotImplementedError

    def act_one(self, obs: np.ndarray) -> np.ndarray:
        """Action for one observation (a batch of one)."""
        return self.act(np.asarray(obs)[None])[0]

    # persistence ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Parameters to save (JSON-compatible); stateless controllers save nothing."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""

    def save(self, path: str | Path) -> None:
        """Write the controller's name and parameters as JSON (never pickle)."""
        Path(path).write_text(json.dumps({"name": self.name, "state": self.state_dict()}))

    def load(self, path: str | Path) -> None:
        """Read parameters written by :meth:`save` for a controller of the same name."""
        data = json.loads(Path(path).read_text())
        if data.get("name") != self.name:
            raise ValueError(f"{path} holds a {data.get('name')!r} controller, not {self.name!r}")
        self.load_state_dict(data.get("state", {}))

    # helpers ----------------------------------------------------------------------------------
    def field(self, obs: np.ndarray, name: str) -> np.ndarray:
        """Read a named field from a batch of flat observations (shape ``(n, *field_shape)``)."""
        layout = self.metadata.get("observation_layout")
        if not layout or name not in layout:
            raise KeyError(f"observation has no field {name!r}; fields: {', '.join(layout or {})}")
        entry = layout[name]
        part = obs[:, entry["start"] : entry["stop"]]
        return part.reshape(obs.shape[0], *entry["shape"])
