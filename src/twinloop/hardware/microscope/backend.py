"""The env backend for any :class:`~.protocol.Microscope`: frames in, symbolic measurement out.

Data flow of one command (probe x, y in the view; dwell)::

    park(x, y) -> dwell(t) -> acquire() -> perception.analyse(frame)
        -> re-image while the Si is not found unambiguously (up to max_reimages)
        -> align with the previous frame (drift) -> re-centre if the Si left the central part
        -> measurement (the layout of twinloop.sim.stem.kernel.MEASUREMENT)

The task, the reward and the termination are the simulator's own code; only the measurement
now comes from images. Any instrument fault puts the beam in its safe state (blanked) and
surfaces as a :class:`~.protocol.MicroscopeFault`; the env then calls :meth:`safe_state`.
A fault during :meth:`MicroscopeBackend.reset` (which images, and on a twin re-seeds the
sample) tries to blank the beam before it propagates, as a fault during a step does.

Holes (``n_holes > 0``): every frame is searched for holes (:func:`perception.find_holes`),
which are kept in a map in the sample frame (the estimated view centre plus their position in
the view) and merged across frames: a hole seen again is averaged in; a sighting cut by the
frame border gives way to an uncut one, and among cut sightings the one with more vacant sites
stands. The map is cleared on reset. The measurement carries at most ``n_holes`` of them,
nearest the Si first (by distance to the hole's edge), radius 0 in unused rows. Because holes
lie 6-15 A from the start and the view is 20 A wide, reset surveys the neighbourhood first
(``imaging.hole_survey_half_width_angstrom``): it images a spiral of views spaced half the field
of view around the Si, each aligned to the previous one with the commanded shift as the guess,
and returns to the start view. The survey's microscope time is not charged to the episode (its
first measurement reports ``elapsed_s = 0`` as the ``sim`` backend does, whose holes are known
for free); it is reported as :attr:`MicroscopeBackend.survey_s` (and ``survey_frames``).
"""

from __future__ import annotations

import dataclasses
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

#: Border band of a frame whose lattice sites are not judged for holes (A): an atom there is
#: partly outside the frame (its peak is cut), and the flyback bends the first ~0.6 A of a line.
HOLE_MARGIN_ANGSTROM = 1.0
#: Memory of the drift estimate (s of microscope time): an alignment over ``dt`` seconds
#: weighs ``dt / (dt + DRIFT_MEMORY_S)`` against the estimate so far (drift is a steady
#: velocity plus a random walk, so recent frames count most, long baselines most of all).
DRIFT_MEMORY_S = 20.0


@dataclasses.dataclass
class MappedHole:
    """One hole in the backend's map (sample frame, A).

    Attributes:
        x: Centre x.
        y: Centre y.
        radius: Radius.
        cut: Whether every sighting so far was cut by a frame border (the disc then covers
            only the part seen).
        n_sites: Vacant sites of the best sighting.
        n_seen: Sightings averaged into the centre and radius.
    """

    x: float
    y: float
    radius: float
    cut: bool
    n_sites: int
    n_seen: int = 1


def survey_offsets(half_width_angstrom: float, fov_angstrom: float) -> np.ndarray:
    """View centres of the hole survey relative to the Si, in imaging order (the Si's own excluded).

    Views lie on a grid of pitch ``fov / 2`` (consecutive views overlap by half a frame) and
    are visited along a square spiral, so every step is one pitch along one axis. The grid has
    ``2 K + 1`` views a side with the smallest ``K`` whose frames, less
    :data:`HOLE_MARGIN_ANGSTROM`, reach ``half_width_angstrom`` from the Si; none when the
    start frame alone does.

    Returns:
        ``(k, 2)`` offsets (A).
    """
    pitch = 0.5 * fov_angstrom
    seen = 0.5 * fov_angstrom - HOLE_MARGIN_ANGSTROM
    if half_width_angstrom <= seen:
        return np.zeros((0, 2))
    k = math.ceil((half_width_angstrom - seen) / pitch - 1e-9)
    cells = (2 * k + 1) ** 2
    out: list[tuple[int, int]] = [(0, 0)]
    x = y = 0
    leg, direction = 1, 0
    steps = ((1, 0), (0, 1), (-1, 0), (0, -1))
    while len(out) < cells:
        for _ in range(2):
            dx, dy = steps[direction % 4]
            for _ in range(leg):
                x, y = x + dx, y + dy
                if len(out) < cells:
                    out.append((x, y))
            direction += 1
        leg += 1
    return pitch * np.array(out[1:], dtype=np.float64)


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
        # the view's drift against the sample (A/s), from consecutive alignments: it predicts
        # the next frame's shift, so that a long dwell's drift does not slip the alignment
        # onto another lattice match (it locks within ~0.7 A of the guess)
        self._drift = np.zeros(2)
        self._drift_known = False
        self._frame_clock: float | None = None  # microscope clock at the last frame
        self._atoms = np.zeros((0, 2))
        self._meas = np.zeros(K.N_MEAS)
        self.last_frame: Any = None
        self.last_detection: P.Detection | None = None
        self.reimages = 0
        self.holes: list[MappedHole] = []  # the hole map (sample frame), cleared on reset
        self.last_holes: P.Holes | None = None  # holes of the last frame (view frame)
        self.survey_s = 0.0  # microscope time of the last reset's hole survey
        self.survey_frames = 0

    def connect(self) -> None:
        """Open the instrument; check its field of view (and a twin's holes) match the config."""
        self.microscope.connect()
        fov = self.microscope.limits.fov_angstrom
        if not math.isclose(fov, self.cfg.microscope.fov_angstrom, rel_tol=1e-6):
            raise MicroscopeFault(
                f"the instrument's field of view is {fov} A but the config says "
                f"{self.cfg.microscope.fov_angstrom} A"
            )
        self._check_sample(self.microscope.identity())
        super().connect()

    def _check_sample(self, identity: dict[str, Any]) -> None:
        """A twin that reports its simulated holes must simulate the config's."""
        server = identity.get("server")
        sample = identity.get("holes", server.get("holes") if isinstance(server, dict) else None)
        if not isinstance(sample, dict):
            return  # a real instrument: its sample is what it is
        ph = self.cfg.physics
        expected = {
            "n_holes": ph.n_holes,
            "hole_radius_angstrom": ph.hole_radius_angstrom,
            "hole_min_distance_angstrom": ph.hole_min_distance_angstrom,
            "hole_max_distance_angstrom": ph.hole_max_distance_angstrom,
        }
        wrong = {
            k: (sample.get(k), v)
            for k, v in expected.items()
            if not (
                isinstance(sample.get(k), int | float)
                and math.isclose(float(sample[k]), float(v), rel_tol=1e-9)
            )
        }
        if wrong:
            detail = ", ".join(f"{k}: twin {a!r}, config {b!r}" for k, (a, b) in wrong.items())
            raise MicroscopeFault(
                f"the twin simulates other holes than the config ({detail}); start it with "
                "the same physics, e.g. `twinloop serve microscope --set n_holes=N`"
            )

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
        """Blank the beam (best effort on a broken link: a failure is logged in one line)."""
        try:
            self.microscope.blank()
        except Exception as exc:
            log.error("could not blank the beam: %s: %s", type(exc).__name__, exc)

    def reset(self, seed: int | None = None, options: dict[str, Any] | None = None) -> np.ndarray:
        """New sample on a twin (re-seeded); on an instrument, just image the current state.

        Two frames are taken (the second one measures the drift, see :meth:`_image`). With
        ``n_holes > 0`` the hole map is cleared and the neighbourhood surveyed
        (:meth:`_survey`). The first measurement reports ``elapsed_s = 0``. Any fault tries
        to blank the beam before it propagates.
        """
        try:
            return self._reset(seed)
        except BaseException:
            self.safe_state()
            raise

    def _reset(self, seed: int | None) -> np.ndarray:
        self.microscope.reset_sample(seed)
        self._view[:] = 0.0
        self._drift[:] = 0.0
        self._drift_known = False
        self._frame_clock = None
        self._atoms = np.zeros((0, 2))
        self.holes = []
        self.last_holes = None
        self.survey_s, self.survey_frames = 0.0, 0
        start = self.microscope.clock_s
        self._image(first=True)
        # a second frame one frame time later measures the drift before the first dwell: a
        # dwell of 20 s at 0.05 A/s drifts 1 A, past what an unpredicted alignment can lock onto
        det = self._image()
        if self.cfg.physics.n_holes:
            det = self._survey(det)
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
    def _survey(self, det: P.Detection) -> P.Detection:
        """Image the views of :func:`survey_offsets` around the Si, then return to the start.

        Each step shifts the view by half a frame and aligns the new frame to the previous one
        with the commanded shift as the guess (drift between frames must stay below ~0.6 A:
        0.25 A at the largest default drift over settle + frame). The way back to the start
        view goes in steps no longer than one diagonal pitch (so frames still overlap by a
        quarter) and within the instrument's shift limit. Returns the start view's detection.
        """
        fov = self.cfg.microscope.fov_angstrom
        offsets = survey_offsets(self.cfg.imaging.hole_survey_half_width_angstrom, fov)
        if not offsets.shape[0]:
            return det
        t0 = self.microscope.clock_s
        home = self._view.copy()
        anchor = self._view + (det.si_position_angstrom if det.status == P.OK else 0.0)
        max_step = min(0.5 * fov * math.sqrt(2.0), self.microscope.limits.shift_angstrom)
        for target in anchor + offsets:
            self._goto(target, max_step, need_si=False)
        det = self._goto(home, max_step, need_si=True)
        self.survey_s = self.microscope.clock_s - t0
        log.debug(
            "hole survey: %d frames, %.1f s, %d holes",
            self.survey_frames,
            self.survey_s,
            len(self.holes),
        )
        return det

    def _goto(self, target: np.ndarray, max_step: float, need_si: bool) -> P.Detection:
        """Shift the view to ``target`` (sample frame) in imaged steps of at most ``max_step``."""
        delta = target - self._view
        n = max(1, math.ceil(float(np.hypot(*delta)) / max_step - 1e-9))
        det = None
        for q in range(n):
            shift = (target - self._view) / (n - q)
            self.microscope.shift_view(float(shift[0]), float(shift[1]))
            last = q == n - 1
            det = self._image(expected_shift=shift, reimage=need_si and last)
            self.survey_frames += 1 + self.reimages
        assert det is not None
        return det

    def _image(
        self, first: bool = False, expected_shift: np.ndarray | None = None, reimage: bool = True
    ) -> P.Detection:
        """Acquire and analyse a frame, re-imaging while the Si is ambiguous; align it.

        The alignment's guess is the commanded view shift plus the drift expected since the
        last frame (:attr:`_drift` times the microscope time between the frames); each
        alignment without a commanded shift updates the drift estimate (an average weighted by
        time, :data:`DRIFT_MEMORY_S`).
        """
        self.reimages = 0
        commanded = np.zeros(2) if expected_shift is None else np.asarray(expected_shift, float)
        fov = self.cfg.microscope.fov_angstrom
        while True:
            frame = self.microscope.acquire(self._pixels, self._pixel_time)
            now = self.microscope.clock_s
            det = P.analyse(
                frame.image,
                float(frame.metadata.get("fov_angstrom", fov)),
                self.cfg.physics.probe_sigma_angstrom,
                self._ratio,
            )
            carbon = det.positions_angstrom[~det.is_si]
            if not first:
                dt = now - self._frame_clock if self._frame_clock is not None else 0.0
                shift, _ = P.align(self._atoms, carbon, commanded + self._drift_guess(dt))
                self._view += shift
                # only frames without a commanded shift measure the drift: a shift's own error
                # (the stage's, not the sample's) divided by one frame time would swamp it
                if dt > 0.0 and not commanded.any():
                    a = dt / (dt + DRIFT_MEMORY_S) if self._drift_known else 1.0
                    self._drift += a * (shift / dt - self._drift)
                    self._drift_known = True
                commanded = np.zeros(2)
            first = False
            self._frame_clock = now
            self._atoms = carbon
            self.last_frame, self.last_detection = frame, det
            if self.cfg.physics.n_holes:
                self._map_holes(det, float(frame.metadata.get("fov_angstrom", fov)))
            if not reimage or det.status not in (P.NO_SI, P.TWO_SI):
                return det
            if self.reimages >= self.cfg.imaging.max_reimages:
                return det
            self.reimages += 1

    def _drift_guess(self, dt: float) -> np.ndarray:
        """The view's expected drift over ``dt`` seconds (A): part of the alignment's guess."""
        return self._drift * dt

    def _map_holes(self, det: P.Detection, fov: float) -> None:
        """Find the holes of a frame and merge them into the map (sample frame)."""
        found = P.find_holes(
            det.atoms_angstrom,
            fov,
            det.bond_angstrom,
            det.lattice_angle_rad,
            margin_angstrom=HOLE_MARGIN_ANGSTROM,
        )
        self.last_holes = found
        for (x, y, r), cut, n in zip(found.holes_angstrom, found.cut, found.n_sites, strict=True):
            self._merge(MappedHole(x + self._view[0], y + self._view[1], r, bool(cut), int(n)))

    def _merge(self, new: MappedHole) -> None:
        """Add one sighting to the map.

        Sightings are of the same hole when their centres lie closer than half the larger
        radius (at least 1 A), or, if either is cut, closer than the larger radius (a cut
        sighting's centre is biased inwards but stays inside the hole). An uncut sighting is
        averaged into the uncut hole it matches (equal weights per sighting) and replaces cut
        ones; a cut sighting is dropped against an uncut hole and replaces cut ones with fewer
        vacant sites.
        """
        matches = []
        for old in self.holes:
            d = math.hypot(old.x - new.x, old.y - new.y)
            r = max(old.radius, new.radius)
            if d < (r if (old.cut or new.cut) else max(0.5 * r, 1.0)):
                matches.append((d, old))
        uncut = [m for m in matches if not m[1].cut]
        cut = [m[1] for m in matches if m[1].cut]
        if new.cut:
            if uncut or any(old.n_sites >= new.n_sites for old in cut):
                return
            self.holes = [h for h in self.holes if all(h is not c for c in cut)]
            self.holes.append(new)
            return
        self.holes = [h for h in self.holes if all(h is not c for c in cut)]
        if uncut:
            old = min(uncut, key=lambda m: m[0])[1]
            w = 1.0 / (old.n_seen + 1)
            old.x += w * (new.x - old.x)
            old.y += w * (new.y - old.y)
            old.radius += w * (new.radius - old.radius)
            old.n_sites = max(old.n_sites, new.n_sites)
            old.n_seen += 1
            return
        self.holes.append(new)

    def _write(self, det: P.Detection, elapsed: float) -> None:
        m = self._meas
        if det.status == P.OK:  # otherwise the last good Si and neighbours stay
            m[K.M_SI : K.M_SI + 2] = det.si_position_angstrom
            m[K.M_NBR : K.M_NBR + 6] = det.neighbor_offsets_angstrom.ravel()
        m[K.M_FOV_C : K.M_FOV_C + 2] = self._view
        m[K.M_STATUS] = STATUS_OF[det.status]
        m[K.M_ELAPSED] = elapsed
        m[K.M_FOV] = self.cfg.microscope.fov_angstrom
        self._write_holes(m)

    def _write_holes(self, m: np.ndarray) -> None:
        """Write the ``n_holes`` mapped holes nearest the Si (edge distance); radius 0 after."""
        m[K.M_HOLES : K.M_HOLES + 3 * MAX_HOLES] = 0.0
        n = self.cfg.physics.n_holes
        if not n or not self.holes:
            return
        sx = m[K.M_FOV_C] + m[K.M_SI]
        sy = m[K.M_FOV_C + 1] + m[K.M_SI + 1]
        ranked = sorted(self.holes, key=lambda h: math.hypot(h.x - sx, h.y - sy) - h.radius)
        for q, h in enumerate(ranked[:n]):
            m[K.M_HOLES + 3 * q : K.M_HOLES + 3 * q + 3] = (h.x, h.y, h.radius)

    def privileged(self) -> dict[str, Any]:
        """The twin's truth (same keys as the ``sim`` backend); ``{}`` on an instrument."""
        truth = self.microscope.truth() if self.connected else {}
        if not truth:
            return {}
        return {
            "si_position_angstrom": np.asarray(truth["si_position_angstrom"], dtype=np.float64),
            # a twin with a device profile keeps its rates hidden: unknown, not zero
            "rates_per_s": np.asarray(truth.get("rates_per_s", [np.nan] * 3), dtype=np.float64),
            "n_hops": int(truth["n_hops"]),
            "si_site": np.asarray(truth["si_site"], dtype=np.int64),
        }

    def identity(self) -> dict[str, Any]:
        """Backend kind and the instrument's identity."""
        return {"kind": self.kind, "instrument": self.microscope.identity()}
