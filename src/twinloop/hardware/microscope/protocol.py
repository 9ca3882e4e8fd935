"""The STEM instrument interface and its wire protocol.

:class:`Microscope` is what twinloop needs from a scanning transmission electron microscope:
field of view, voltage and current, a probe parked at a position, a dwell with the beam
unblanked, frames acquired with a given size and pixel time, a scan field that can be moved,
and a safe state (beam blanked). Three implementations exist: the in-process simulated
instrument (:mod:`.fake`), a network client (:mod:`.remote`) for the twin served by
``twinloop serve microscope`` (:mod:`.server`), and an adapter to Nion Swift (:mod:`.nion`).

Every command is checked against the instrument's :class:`MicroscopeLimits` before it is
sent, and again by the twin when it arrives.

Wire protocol, version 1 (ZeroMQ REQ/REP, one msgpack map per message; never pickle)::

    request  {"v": 1, "id": <int>, "op": <str>, "args": {<str>: <scalar|list>}, "token": <str|nil>}
    response {"v": 1, "id": <same int>, "ok": true,  "result": <value>}
           | {"v": 1, "id": <same int>, "ok": false, "error": {"type": <str>, "message": <str>}}

Operations: ``hello`` (protocol version, limits, identity), ``ping``, ``reset`` (twin only:
re-seed the simulated sample), ``state`` (fov, voltage, current, probe, blanked, clock),
``park`` {x_angstrom, y_angstrom}, ``dwell`` {seconds}, ``blank``, ``unblank``,
``acquire`` {pixels, pixel_time_s}, ``shift_view`` {dx_angstrom, dy_angstrom}, ``truth``
(twin only: the simulator's privileged state). A frame travels as
``{"image": <bytes, little-endian float32, row-major>, "shape": [h, w], "metadata": {...}}``.
Error types: ``limit`` (a command outside the instrument's limits; nothing was executed),
``bad_request`` (malformed), ``unauthorized`` (wrong token), ``version``, ``unsupported``,
``internal``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Protocol, runtime_checkable

import numpy as np

from twinloop.core.backend import BackendFault

PROTOCOL_VERSION = 1
#: Largest request the twin accepts (bytes); requests are small maps.
MAX_REQUEST_BYTES = 64 * 1024
#: Operations of protocol version 1 and the argument names and types each takes.
OPERATIONS: dict[str, dict[str, type]] = {
    "hello": {},
    "ping": {},
    "reset": {"seed": int},
    "state": {},
    "park": {"x_angstrom": float, "y_angstrom": float},
    "dwell": {"seconds": float},
    "blank": {},
    "unblank": {},
    "acquire": {"pixels": int, "pixel_time_s": float},
    "shift_view": {"dx_angstrom": float, "dy_angstrom": float},
    "truth": {},
}


class MicroscopeLimitError(ValueError):
    """A command lies outside the instrument's limits; nothing was executed."""


class MicroscopeFault(BackendFault):
    """The instrument or the link to it failed (timeout, disconnect, internal error)."""


@dataclasses.dataclass(frozen=True)
class MicroscopeLimits:
    """Bounds of every command (inclusive).

    Attributes:
        fov_angstrom: Width of the square field of view.
        dwell_s: One dwell.
        pixel_time_s: Pixel dwell while scanning.
        frame_pixels: Frame width in pixels (square frames).
        shift_angstrom: Largest scan-field shift per command.
    """

    fov_angstrom: float
    dwell_s: tuple[float, float]
    pixel_time_s: tuple[float, float]
    frame_pixels: tuple[int, int]
    shift_angstrom: float

    def to_dict(self) -> dict[str, Any]:
        """Plain data for the wire."""
        return {
            "fov_angstrom": self.fov_angstrom,
            "dwell_s": list(self.dwell_s),
            "pixel_time_s": list(self.pixel_time_s),
            "frame_pixels": list(self.frame_pixels),
            "shift_angstrom": self.shift_angstrom,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MicroscopeLimits:
        """Inverse of :meth:`to_dict` (validating types)."""
        try:
            return cls(
                fov_angstrom=float(data["fov_angstrom"]),
                dwell_s=(float(data["dwell_s"][0]), float(data["dwell_s"][1])),
                pixel_time_s=(float(data["pixel_time_s"][0]), float(data["pixel_time_s"][1])),
                frame_pixels=(int(data["frame_pixels"][0]), int(data["frame_pixels"][1])),
                shift_angstrom=float(data["shift_angstrom"]),
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise MicroscopeFault(f"malformed limits from the instrument: {data!r}") from exc

    def check_probe(self, x: float, y: float) -> None:
        """The probe must lie inside the field of view."""
        half = 0.5 * self.fov_angstrom
        for name, v in (("x_angstrom", x), ("y_angstrom", y)):
            _finite(name, v)
            if not -half <= v <= half:
                raise MicroscopeLimitError(
                    f"probe {name} = {v:.4g} A is outside the field of view [-{half:g}, {half:g}] A"
                )

    def check_dwell(self, seconds: float) -> None:
        """A dwell within the instrument's bounds."""
        _within("dwell seconds", seconds, self.dwell_s, "s")

    def check_acquire(self, pixels: int, pixel_time_s: float) -> None:
        """Frame size and pixel time within the instrument's bounds."""
        if isinstance(pixels, bool) or not isinstance(pixels, int | np.integer):
            raise MicroscopeLimitError(f"pixels must be an int, got {pixels!r}")
        lo, hi = self.frame_pixels
        if not lo <= pixels <= hi:
            raise MicroscopeLimitError(f"pixels = {pixels} is outside [{lo}, {hi}]")
        _within("pixel_time_s", pixel_time_s, self.pixel_time_s, "s")

    def check_shift(self, dx: float, dy: float) -> None:
        """A scan-field shift no larger than the instrument allows."""
        _finite("dx_angstrom", dx)
        _finite("dy_angstrom", dy)
        if math.hypot(dx, dy) > self.shift_angstrom:
            raise MicroscopeLimitError(
                f"view shift |({dx:.4g}, {dy:.4g})| A exceeds the limit {self.shift_angstrom:g} A"
            )


def _finite(name: str, v: float) -> None:
    if isinstance(v, bool) or not isinstance(v, int | float | np.number) or not math.isfinite(v):
        raise MicroscopeLimitError(f"{name} = {v!r} must be a finite number")


def _within(name: str, v: float, bounds: tuple[float, float], unit: str) -> None:
    _finite(name, v)
    lo, hi = bounds
    if not lo <= v <= hi:
        raise MicroscopeLimitError(f"{name} = {v:.4g} {unit} is outside [{lo:g}, {hi:g}] {unit}")


@dataclasses.dataclass
class Frame:
    """One acquired frame.

    Attributes:
        image: ``(h, w)`` float32 HAADF signal (detected electrons); row 0 at the bottom.
        metadata: fov_angstrom, pixel_time_s, start_s and duration_s on the instrument's
            clock, frame_index, and whatever else the instrument reports.
    """

    image: np.ndarray
    metadata: dict[str, Any]

    def to_wire(self) -> dict[str, Any]:
        """Encode for msgpack: raw little-endian float32 bytes plus shape."""
        img = np.ascontiguousarray(self.image, dtype="<f4")
        return {"image": img.tobytes(), "shape": list(img.shape), "metadata": self.metadata}

    @classmethod
    def from_wire(cls, data: Any, max_pixels: int) -> Frame:
        """Decode and validate a frame received from an instrument."""
        if not isinstance(data, dict):
            raise MicroscopeFault(f"frame must be a map, got {type(data).__name__}")
        shape = data.get("shape")
        raw = data.get("image")
        meta = data.get("metadata", {})
        if (
            not isinstance(shape, list)
            or len(shape) != 2
            or not all(isinstance(s, int) and 0 < s <= max_pixels for s in shape)
        ):
            raise MicroscopeFault(f"frame shape {shape!r} is invalid (max {max_pixels} pixels)")
        if not isinstance(raw, bytes) or len(raw) != 4 * shape[0] * shape[1]:
            raise MicroscopeFault(
                f"frame data has {len(raw) if isinstance(raw, bytes) else 'no'} bytes for shape "
                f"{shape} (expected {4 * shape[0] * shape[1]})"
            )
        if not isinstance(meta, dict):
            raise MicroscopeFault("frame metadata must be a map")
        image = np.frombuffer(raw, dtype="<f4").reshape(shape).astype(np.float32)
        return cls(image=image, metadata=meta)


@runtime_checkable
class Microscope(Protocol):
    """What twinloop drives on a STEM (simulated, remote twin, or a vendor's API)."""

    kind: str
    limits: MicroscopeLimits

    def connect(self) -> None:
        """Open the instrument (idempotent)."""
        ...

    def close(self) -> None:
        """Blank the beam and release the instrument."""
        ...

    @property
    def clock_s(self) -> float:
        """The instrument's own clock (s): microscope time spent."""
        ...

    def park(self, x_angstrom: float, y_angstrom: float) -> None:
        """Move the (blanked) probe to a position in the view and let it settle."""
        ...

    def dwell(self, seconds: float) -> None:
        """Unblank the beam at the parked position for ``seconds``, then blank it."""
        ...

    def blank(self) -> None:
        """Blank the beam (the safe state)."""
        ...

    def acquire(self, pixels: int, pixel_time_s: float) -> Frame:
        """Scan one HAADF frame of ``pixels`` x ``pixels``."""
        ...

    def shift_view(self, dx_angstrom: float, dy_angstrom: float) -> None:
        """Move the scan field by ``(dx, dy)`` A (re-centring)."""
        ...

    def reset_sample(self, seed: int | None) -> bool:
        """Start a new simulated sample (twins only); return False on a real instrument."""
        ...

    def truth(self) -> dict[str, Any]:
        """Privileged simulator state (twins only; ``{}`` on a real instrument)."""
        ...

    def identity(self) -> dict[str, Any]:
        """Kind, address and versions, recorded in datasets."""
        ...
