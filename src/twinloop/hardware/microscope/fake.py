"""A simulated STEM behind the :class:`~.protocol.Microscope` interface.

It runs the STEM kernel (``twinloop.sim.stem.kernel``) one instrument call at a time and renders
frames with ``twinloop.sim.stem.render``: parking the probe costs the beam-settle time, a dwell
runs the beam-driven Markov process, a frame delivers its scanning dose while the sample drifts.
The clock is simulated (no sleeping), so a twin answers as fast as it can compute. The same
object serves in-process (``backend="sim-image"``) and behind the network twin.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from twinloop.core.profile import DeviceProfile
from twinloop.core.rng import new_entropy, new_streams, seed_streams
from twinloop.hardware.microscope.protocol import Frame, MicroscopeLimits
from twinloop.sim.stem import kernel as K
from twinloop.sim.stem import render as R
from twinloop.sim.stem.config import StemConfig


def limits_for(cfg: StemConfig) -> MicroscopeLimits:
    """The simulated instrument's limits, from the config."""
    mi = cfg.microscope
    return MicroscopeLimits(
        fov_angstrom=mi.fov_angstrom,
        dwell_s=(mi.dwell_min_s, mi.dwell_max_s),
        pixel_time_s=(1e-7, 1e-3),
        frame_pixels=(16, 1024),
        shift_angstrom=mi.fov_angstrom,
    )


def _shown(cfg: StemConfig) -> dict[str, Any]:
    """Every config value a client sees (limits, identity, state, frame metadata)."""
    ph = cfg.physics
    return {
        "limits": limits_for(cfg).to_dict(),
        "rate_model": ph.rate_model,
        "n_holes": ph.n_holes,
        "hole_radius_angstrom": ph.hole_radius_angstrom,
        "hole_min_distance_angstrom": ph.hole_min_distance_angstrom,
        "hole_max_distance_angstrom": ph.hole_max_distance_angstrom,
        "beam_energy_kev": ph.beam_energy_kev,
        "beam_current_na": ph.beam_current_na,
        "imaging_current_na": cfg.imaging.imaging_current_na,
    }


class SimMicroscope:
    """The STEM simulator as an instrument.

    Args:
        cfg: The STEM config (physics, microscope timing, imaging).
        profile: The device's hidden physics (:mod:`twinloop.core.profile`), applied over
            ``cfg``; only its name is ever shown (:meth:`identity`). None: the nominal
            simulator.

    Raises:
        ValueError: The profile changes a value the instrument shows its clients (limits,
            rate model, holes, voltage, currents): it would no longer be hidden.
    """

    kind = "sim"

    def __init__(self, cfg: StemConfig, profile: DeviceProfile | None = None) -> None:
        """Allocate the simulated sample; :meth:`reset_sample` starts one."""
        if profile is not None:
            nominal, cfg = _shown(cfg), profile.apply(cfg)
            changed = sorted(k for k, v in _shown(cfg).items() if v != nominal[k])
            if changed:
                raise ValueError(
                    f"device profile {profile.name!r} changes {', '.join(changed)}, which the "
                    "twin shows its clients; a profile may change hidden physics only"
                )
        self.profile = profile
        self.cfg = cfg
        self.limits = limits_for(cfg)
        self._params = K.physics_params(cfg)
        self._ip = R.imaging_params(cfg)
        self._f, self._i, self._holes, self._meas = K.new_state(1)
        self._rng = new_streams(1)
        self._probe = np.zeros(2)
        self._blanked = True
        self._clock = 0.0
        self._frames = 0
        self._connected = False
        self._lock = threading.Lock()  # the twin's watchdog may blank from another thread
        self.reset_sample(0)

    # lifecycle -----------------------------------------------------------------------------
    def connect(self) -> None:
        """Nothing to open."""
        self._connected = True

    def close(self) -> None:
        """Blank the beam."""
        self.blank()
        self._connected = False

    def safe_state(self) -> None:
        """Blank the beam."""
        self.blank()

    @property
    def clock_s(self) -> float:
        """Simulated microscope time since the sample was reset (s)."""
        return self._clock

    @property
    def blanked(self) -> bool:
        """Whether the beam is blanked."""
        return self._blanked

    def reset_sample(self, seed: int | None) -> bool:
        """New sample (Si at a lattice site, new drift and orientation); clock to zero."""
        with self._lock:
            seed_streams(self._rng, 0, new_entropy() if seed is None else int(seed))
            K.reset(0, self._f, self._i, self._holes, self._params, self._rng, self._meas)
            self._probe[:] = 0.0
            self._blanked = True
            self._clock = 0.0
            self._frames = 0
        return True

    # commands ----------------------------------------------------------------------------------
    def park(self, x_angstrom: float, y_angstrom: float) -> None:
        """Move the blanked probe; the beam settles while the sample drifts."""
        self.limits.check_probe(x_angstrom, y_angstrom)
        with self._lock:
            K.begin_command(0, self._i)
            self._probe[:] = (float(x_angstrom), float(y_angstrom))
            self._advance(self.cfg.microscope.beam_settle_s)

    def dwell(self, seconds: float) -> None:
        """Expose the parked position for ``seconds`` (the Si may hop), then blank."""
        self.limits.check_dwell(seconds)
        with self._lock:
            self._blanked = False
            K.dwell(
                0,
                self._probe[0],
                self._probe[1],
                float(seconds),
                self._f,
                self._i,
                self._holes,
                self._params,
                self._rng,
            )
            K.diffuse(0, float(seconds), self._f, self._params, self._rng)
            self._clock += float(seconds)
            self._blanked = True

    def blank(self) -> None:
        """Blank the beam."""
        self._blanked = True

    def unblank(self) -> None:
        """Unblank the beam at the parked probe (time only passes through commands)."""
        self._blanked = False

    def acquire(self, pixels: int, pixel_time_s: float) -> Frame:
        """Scan one frame: render it, then deliver its dose while the sample drifts.

        The kernel spreads a frame's dose uniformly over the view; a view that does not hold the
        Si (the hole survey's) gives it none.
        """
        self.limits.check_acquire(pixels, pixel_time_s)
        with self._lock:
            flyback = self.cfg.imaging.flyback_us * 1e-6
            out = np.empty((pixels, pixels), dtype=np.float32)
            R.render(
                0,
                int(pixels),
                float(pixel_time_s),
                flyback,
                self._f,
                self._i,
                self._holes,
                self._params,
                self._ip,
                self._rng,
                out,
            )
            duration = pixels * (pixels * pixel_time_s + flyback)
            start = self._clock
            if self._si_in_view():
                K.scan_dose(0, duration, self._f, self._i, self._holes, self._params, self._rng)
            else:  # the scan misses the Si (a survey view): no dose, only drift
                K.drift(0, duration, self._f)
            K.diffuse(0, duration, self._f, self._params, self._rng)
            self._clock += duration
            self._frames += 1
            self._blanked = True
            meta = {
                "fov_angstrom": self.limits.fov_angstrom,
                "pixel_time_s": float(pixel_time_s),
                "start_s": start,
                "duration_s": duration,
                "frame_index": self._frames,
                "channel": "HAADF",
                "voltage_kev": self.cfg.physics.beam_energy_kev,
                "current_na": self.cfg.imaging.imaging_current_na,
            }
        return Frame(out, meta)

    def shift_view(self, dx_angstrom: float, dy_angstrom: float) -> None:
        """Move the scan field; the beam settles while the sample drifts."""
        self.limits.check_shift(dx_angstrom, dy_angstrom)
        with self._lock:
            K.shift_view(0, float(dx_angstrom), float(dy_angstrom), self._f)
            self._advance(self.cfg.microscope.beam_settle_s)

    def _si_in_view(self) -> bool:
        """Whether the Si lies inside the scanned field (only then does a frame dose it)."""
        x, y = K.true_position(self._f, self._i, 0)
        half = 0.5 * self.limits.fov_angstrom
        return abs(x - self._f[0, K.F_FOV_X]) <= half and abs(y - self._f[0, K.F_FOV_Y]) <= half

    def _advance(self, seconds: float) -> None:
        K.drift(0, seconds, self._f)
        K.diffuse(0, seconds, self._f, self._params, self._rng)
        self._clock += seconds

    # introspection -----------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """What the instrument reports about itself."""
        return {
            "fov_angstrom": self.limits.fov_angstrom,
            "voltage_kev": self.cfg.physics.beam_energy_kev,
            "current_na": self.cfg.physics.beam_current_na,
            "probe_angstrom": [float(self._probe[0]), float(self._probe[1])],
            "blanked": self._blanked,
            "clock_s": self._clock,
        }

    def truth(self) -> dict[str, Any]:
        """Privileged state of the simulated sample (the same keys as the ``sim`` backend)."""
        with self._lock:
            return {
                "si_position_angstrom": K.true_position(self._f, self._i, 0).tolist(),
                "rates_per_s": self._f[0, K.F_RATE0 : K.F_RATE0 + 3].tolist(),
                "n_hops": int(self._i[0, K.I_HOPS]),
                "si_site": [int(v) for v in self._i[0, K.I_SI_I : K.I_SI_S + 1]],
                "status": int(self._i[0, K.I_STATUS]),
                "view_center_angstrom": [
                    float(self._f[0, K.F_FOV_X]),
                    float(self._f[0, K.F_FOV_Y]),
                ],
                # x, y (sample frame, as si_position_angstrom) and radius of each hole
                "holes_angstrom": self._holes[0, : int(self._i[0, K.I_NHOLES])].tolist(),
            }

    def identity(self) -> dict[str, Any]:
        """Kind, rate model and the holes it simulates (a client checks them against its config).

        A twin with a device profile adds ``"profile": <its name>``, never its values.
        """
        ph = self.cfg.physics
        out: dict[str, Any] = {
            "kind": self.kind,
            "rate_model": ph.rate_model,
            "holes": {
                "n_holes": ph.n_holes,
                "hole_radius_angstrom": ph.hole_radius_angstrom,
                "hole_min_distance_angstrom": ph.hole_min_distance_angstrom,
                "hole_max_distance_angstrom": ph.hole_max_distance_angstrom,
            },
        }
        if self.profile is not None:
            out.update(self.profile.public())
        return out
