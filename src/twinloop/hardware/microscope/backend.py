"""The env backend for any :class:`~.protocol.Microscope`: frames in, symbolic measurement out.

Data flow of one command (probe x, y in the view; dwell)::

    park(x, y) -> dwell(t) -> acquire() -> perception.analyse(frame)
        -> re-image while the Si is not found unambiguously (up to max_reimages)
        -> align with the previous frame (drift) -> re-centre if the Si left the central part
        -> measurement (the layout of twinloop.sim.stem.kernel.MEASUREMENT)

The task, the reward and the termination are the simulator's own code; only the measurement
now comes from images. Any instrument fault puts the beam in its safe state (blanked) and
surfaces as a :class:`~.protocol.MicroscopeFault`; the env then calls :meth:`safe_state`.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from twinloop.core.backend import BaseBackend
from twinloop.hardware.microscope.protocol import Microscope, MicroscopeFault
from twinloop.sim.stem import kernel as K
from twinloop.sim.stem import perception as P
from twinloop.sim.stem.config import MAX_HOLES, StemConfig
from twinloop.sim.stem.env import command_space

log = logging.getLogger(__name__)

#: Perception outcome -> measurement status.
STATUS_OF = {
    P.OK: K.OK,
    P.FOUR_FOLD: K.KNOCKOUT,
    P.EDGE: K.EDGE,
    P.NO_SI: K.LOST,
    P.TWO_SI: K.AMBIGUOUS,
}


class MicroscopeBackend(BaseBackend):
    """Drive a microscope and turn its frames into the STEM measurement.

    Args:
        cfg: The STEM config (timing, imaging, re-imaging limit).
        microscope: The instrument (simulated, remote twin, or a vendor adapter).
        kind: Backend name reported in datasets (``"sim-image"``, ``"remote"``, ``"nion"``).
        deterministic: Whether the same seed and actions reproduce a run (twins: yes).
    """

    def __init__(
        self, cfg: StemConfig, microscope: Microscope, kind: str, deterministic: bool = False
    ) -> None:
        """Nothing connects until :meth:`connect`."""
        super().__init__()
        self.cfg = cfg
        self.microscope = microscope
        self.kind = kind
        self.deterministic = deterministic
        self.command_space = command_space(cfg)
        self.measurement_space = K.MEASUREMENT.space(np.float64)
        self._ratio = (14.0 / 6.0) ** cfg.imaging.z_exponent
        self._pixels = cfg.imaging.frame_pixels
        self._pixel_time = cfg.pixel_time_s
        self._view = np.zeros(2)  # estimated view centre in the sample frame (A)
        self._atoms = np.zeros((0, 2))
        self._meas = np.zeros(K.N_MEAS)
        self.last_frame: Any = None
        self.last_detection: P.Detection | None = None
        self.reimages = 0

    def connect(self) -> None:
        """Open the instrument; check its field of view matches the config."""
        self.microscope.connect()
        fov = self.microscope.limits.fov_angstrom
        if not math.isclose(fov, self.cfg.microscope.fov_angstrom, rel_tol=1e-6):
            raise MicroscopeFault(
                f"the instrument's field of view is {fov} A but the config says "
                f"{self.cfg.microscope.fov_angstrom} A"
            )
        super().connect()

    def close(self) -> None:
        """Blank the beam and release the instrument."""
        try:
            self.safe_state()
        finally:
            try:
                self.microscope.close()
            except Exception:  # closing must not raise over the original problem
                log.exception("closing the microscope failed")
            self._connected = False

    def safe_state(self) -> None:
        """Blank the beam (best effort on a broken link)."""
        try:
            self.microscope.blank()
        except Exception:
            log.exception("could not blank the beam")

    def reset(self, seed: int | None = None, options: dict[str, Any] | None = None) -> np.ndarray:
        """New sample on a twin (re-seeded); on an instrument, just image the current state."""
        self.microscope.reset_sample(seed)
        self._view[:] = 0.0
        self._atoms = np.zeros((0, 2))
        start = self.microscope.clock_s
        det = self._image(first=True)
        self._write(det, self.microscope.clock_s - start)
        self._meas[K.M_ELAPSED] = 0.0
        return self._meas.copy()

    def apply(self, command: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Park, dwell, image, perceive; return ``(measurement, applied_command)``."""
        x, y, dwell = (float(v) for v in command)
        start = self.microscope.clock_s
        self.microscope.park(x, y)
        self.microscope.dwell(dwell)
        det = self._image()
        limit = 0.5 * self.cfg.microscope.recentre_fraction * self.cfg.microscope.fov_angstrom
        if det.status == P.OK and max(abs(det.si_position_angstrom)) > limit:
            shift = det.si_position_angstrom.copy()
            self.microscope.shift_view(float(shift[0]), float(shift[1]))
            det = self._image(expected_shift=shift)
        self._write(det, self.microscope.clock_s - start)
        return self._meas.copy(), np.array([x, y, dwell])

    # helpers ------------------------------------------------------------------------------------
    def _image(self, first: bool = False, expected_shift: np.ndarray | None = None) -> P.Detection:
        """Acquire and analyse a frame, re-imaging while the Si is ambiguous; align it."""
        self.reimages = 0
        guess = np.zeros(2) if expected_shift is None else expected_shift
        while True:
            frame = self.microscope.acquire(self._pixels, self._pixel_time)
            det = P.analyse(
                frame.image,
                float(frame.metadata.get("fov_angstrom", self.cfg.microscope.fov_angstrom)),
                self.cfg.physics.probe_sigma_angstrom,
                self._ratio,
            )
            carbon = det.positions_angstrom[~det.is_si]
            if not first:
                shift, _ = P.align(self._atoms, carbon, guess)
                self._view += shift
                guess = np.zeros(2)
            first = False
            self._atoms = carbon
            self.last_frame, self.last_detection = frame, det
            if det.status not in (P.NO_SI, P.TWO_SI):
                return det
            if self.reimages >= self.cfg.imaging.max_reimages:
                return det
            self.reimages += 1

    def _write(self, det: P.Detection, elapsed: float) -> None:
        m = self._meas
        if det.status == P.OK:  # otherwise the last good Si and neighbours stay
            m[K.M_SI : K.M_SI + 2] = det.si_position_angstrom
            m[K.M_NBR : K.M_NBR + 6] = det.neighbor_offsets_angstrom.ravel()
        m[K.M_FOV_C : K.M_FOV_C + 2] = self._view
        m[K.M_STATUS] = STATUS_OF[det.status]
        m[K.M_ELAPSED] = elapsed
        m[K.M_FOV] = self.cfg.microscope.fov_angstrom
        m[K.M_HOLES : K.M_HOLES + 3 * MAX_HOLES] = 0.0  # hole detection: not yet in perception

    def privileged(self) -> dict[str, Any]:
        """The twin's truth (same keys as the ``sim`` backend); ``{}`` on an instrument."""
        truth = self.microscope.truth() if self.connected else {}
        if not truth:
            return {}
        return {
            "si_position_angstrom": np.asarray(truth["si_position_angstrom"], dtype=np.float64),
            "rates_per_s": np.asarray(truth["rates_per_s"], dtype=np.float64),
            "n_hops": int(truth["n_hops"]),
            "si_site": np.asarray(truth["si_site"], dtype=np.int64),
        }

    def identity(self) -> dict[str, Any]:
        """Backend kind and the instrument's identity."""
        return {"kind": self.kind, "instrument": self.microscope.identity()}
