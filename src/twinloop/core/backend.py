"""The Backend protocol: the plant, simulated or real, behind every env.

A backend takes commands and returns measurements. It declares its command and measurement
spaces without connecting, so an env can be built (and its spaces listed) with no device
attached. ``apply`` returns the command the device really executed after its own clipping;
datasets record both it and the controller's action.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any, ClassVar, Protocol, Self, runtime_checkable

import gymnasium as gym
import numpy as np


class BackendFault(RuntimeError):
    """The device or its link failed; the message says what and whether the safe state holds."""


@runtime_checkable
class Backend(Protocol):
    """What every backend (``sim``, a network twin client, a vendor adapter) provides."""

    kind: str
    deterministic: bool
    command_space: gym.spaces.Box
    measurement_space: gym.spaces.Space

    @property
    def connected(self) -> bool:
        """Whether :meth:`connect` succeeded and :meth:`close` was not called since."""
        ...

    def connect(self) -> None:
        """Open the link to the device (idempotent)."""
        ...

    def close(self) -> None:
        """Put the device in its safe state and release it (idempotent)."""
        ...

    def reset(self, seed: int | None = None, options: dict[str, Any] | None = None) -> np.ndarray:
        """Start an episode; return the first measurement."""
        ...

    def apply(self, command: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Execute one command; return ``(measurement, applied_command)``."""
        ...

    def safe_state(self) -> None:
        """Bring the device to its safe state (e.g. beam blanked, valves closed)."""
        ...

    def privileged(self) -> dict[str, Any]:
        """Ground truth only a simulator knows (``{}`` on hardware), reported as ``true/...``."""
        ...

    def identity(self) -> dict[str, Any]:
        """What device this is (kind, address, serial, version), recorded in datasets."""
        ...

    def __enter__(self) -> Self:  # noqa: D105
        ...

    def __exit__(  # noqa: D105
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class BaseBackend:
    """Connection bookkeeping and the context manager, shared by concrete backends."""

    kind: ClassVar[str] = "base"
    deterministic: ClassVar[bool] = False

    def __init__(self) -> None:
        """Start disconnected."""
        self._connected = False

    @property
    def connected(self) -> bool:
        """Whether the backend is connected."""
        return self._connected

    def connect(self) -> None:
        """Mark connected; subclasses open their link first and then call this."""
        self._connected = True

    def close(self) -> None:
        """Go to the safe state (if connected) and mark disconnected."""
        if self._connected:
            try:
                self.safe_state()
            finally:
                self._connected = False

    def safe_state(self) -> None:
        """Nothing to do by default (a simulator has no beam to blank)."""

    def privileged(self) -> dict[str, Any]:
        """No ground truth by default."""
        return {}

    def identity(self) -> dict[str, Any]:
        """The backend kind."""
        return {"kind": self.kind}

    def __enter__(self) -> Self:
        """Connect and return self."""
        self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close, whatever happened inside the block."""
        self.close()
