"""Configuration of the STEM silicon-in-graphene system (frozen, units in every field name).

Sources (see ``shared/reference/stem.md``):

* [S23] Schwarzer et al., "Learning and Controlling Silicon Dopant Transitions in Graphene
  using Scanning Transmission Electron Microscopy", arXiv:2311.17894 (2023), and its published
  hand-set prior (google-research/putting-dune): optimum at 0.85 bond lengths, peak
  ln2/3 s^-1, isotropic sigma 0.45 A, calibrated at 60 kV and ~0.1 nA.
* [Su19] Su et al., npj Comput. Mater. 5, 2019: effective Si-C inversion cross sections at
  60 kV of 0.01-0.05 barn; knock-out of a C neighbour at ~0.1-0.2 x that rate.
* [Mey12] Meyer et al., PRL 108, 196102 (2012): the thermal-vibration tail that makes
  sub-threshold cross sections rise steeply (about x3 per +5 kV near 60 kV).
* Experiment timing (frame 2-4 s, dwell 1.5-5 s, settle ~2 s, field of view 15-30 A,
  re-centring when the Si leaves the central half, drift 0.1-1 A/s): [S23], Dyck et al. 2017.
"""

from __future__ import annotations

import dataclasses
import math

from twinloop.core.config import ConfigSection, cross_check, param
from twinloop.core.safety import SafetyConfig

#: Graphene lattice constant (A) [S23 reference sheet]; the C-C bond is a / sqrt(3) = 1.42 A.
LATTICE_CONSTANT_ANGSTROM = 2.46
BOND_ANGSTROM = LATTICE_CONSTANT_ANGSTROM / math.sqrt(3.0)
#: Elementary charge (C).
ELEMENTARY_CHARGE_C = 1.602176634e-19
#: Electron rest energy (eV) and the rest energy of a 12C nucleus (eV), for E_max.
ELECTRON_REST_EV = 510998.95
CARBON_REST_EV = 12.0 * 931.49410242e6
#: 1 barn in A^2.
BARN_ANGSTROM2 = 1e-8


def max_transfer_ev(beam_energy_kev: float) -> float:
    """Largest energy (eV) an electron of ``beam_energy_kev`` can give a C nucleus at rest.

    E_max = 2 E (E + 2 m c^2) / (M c^2): 11.6 eV at 60 kV and 20.1 eV at 100 kV [S23 sheet].
    """
    e = beam_energy_kev * 1e3
    return 2.0 * e * (e + 2.0 * ELECTRON_REST_EV) / CARBON_REST_EV


#: Upper bound on holes per episode (array sizes in the kernel).
MAX_HOLES = 8


@dataclasses.dataclass(frozen=True, kw_only=True)
class StemPhysicsConfig(ConfigSection):
    """The sample and the beam-driven dynamics.

    The physical rate model gives neighbour k the rate
    ``lambda_k = (I/e) sigma(E) P(b - r_k - delta u_k)`` with P a normalised Gaussian probe
    [S23]; ``sigma(E) = sigma_60 exp((E_max(E) - E_max(60 kV)) / thermal_tail_ev)`` [Mey12].
    The ``prior`` model is the published hand-set prior [S23], linear in current and scaled in
    energy by the same ``sigma(E) / sigma_60``.
    """

    rate_model: str = param("physical", choices=("physical", "prior"), doc='"physical" or "prior"')
    lattice_size_cells: int = param(
        64,
        units="cells",
        ge=8,
        le=4096,
        doc="square patch of L x L unit cells centred on the start site",
    )
    beam_energy_kev: float = param(
        60.0, units="keV", ge=40.0, le=100.0, doc="[S23] experiments at 60 kV"
    )
    beam_current_na: float = param(0.1, units="nA", ge=0.0, le=10.0, doc="[S23] ~0.1 nA")
    probe_fwhm_angstrom: float = param(
        1.06, units="A", ge=0.3, le=5.0, doc="FWHM 1.0-1.2 A; 1.06 A gives sigma 0.45 A [S23]"
    )
    optimum_offset_angstrom: float = param(
        0.6, units="A", ge=0.0, le=3.0, doc="optimum 0.45-0.75 A beyond the C [S23 learned]"
    )
    cross_section_barn_60kv: float = param(
        0.03, units="barn", ge=0.0, le=10.0, doc="effective inversion cross section [Su19]"
    )
    thermal_tail_ev: float = param(
        0.93,
        units="eV",
        ge=0.05,
        le=100.0,
        doc="x3 per +5 kV near 60 kV: 1.02 eV of E_max / ln 3 [Mey12]",
    )
    knockout_ratio_60kv: float = param(
        0.15, ge=0.0, le=10.0, doc="knock-out / inversion at 60 kV, 0.1-0.2 [Su19]"
    )
    knockout_tail_ev: float = param(
        0.5,
        units="eV",
        ge=0.05,
        le=100.0,
        doc="knock-out rises faster with energy than inversion [Su19]",
    )
    loss_ratio: float = param(
        0.005, ge=0.0, le=1.0, doc="Si replaced by a C adatom, per inversion event (rare) [S23]"
    )
    prior_peak_rate_per_s: float = param(
        math.log(2.0) / 3.0, units="1/s", ge=0.0, le=1e3, doc="50 % jump chance in 3 s [S23 prior]"
    )
    prior_optimum_bond_fraction: float = param(
        0.85, ge=0.0, le=3.0, doc="optimum at 0.85 bond lengths [S23 prior]"
    )
    prior_sigma_angstrom: float = param(
        0.45, units="A", ge=0.05, le=5.0, doc="isotropic width [S23 prior]"
    )
    prior_current_na: float = param(
        0.1, units="nA", gt=0.0, le=10.0, doc="current at which the prior was calibrated [S23]"
    )
    # Domain randomisation, re-drawn at every reset:
    cross_section_log_sd: float = param(
        0.0, ge=0.0, le=3.0, doc="ln(sigma multiplier) ~ N(0, sd^2), dimensionless"
    )
    probe_fwhm_rel_sd: float = param(
        0.0, ge=0.0, le=0.5, doc="FWHM multiplier ~ 1 + N(0, sd^2) clipped to [0.5, 1.5]"
    )
    optimum_offset_sd_angstrom: float = param(
        0.0, units="A", ge=0.0, le=2.0, doc="optimum offset + N(0, sd^2) A, clipped >= 0"
    )
    # Holes (known defects) per episode: centres at U(min, max) A from the start, angle U(0, 2pi)
    n_holes: int = param(0, ge=0, le=MAX_HOLES)
    hole_radius_angstrom: float = param(2.5, units="A", ge=0.5, le=50.0)
    hole_min_distance_angstrom: float = param(6.0, units="A", ge=0.0, le=1e4)
    hole_max_distance_angstrom: float = param(
        15.0, units="A", ge="hole_min_distance_angstrom", le=1e4
    )

    @cross_check
    def _holes_clear_of_start(self) -> str | None:
        if self.n_holes and (
            self.hole_min_distance_angstrom - self.hole_radius_angstrom < 2.0 * BOND_ANGSTROM
        ):
            return (
                "StemPhysicsConfig: holes must keep >= 2 bonds from the start site: "
                f"hole_min_distance_angstrom ({self.hole_min_distance_angstrom}) - "
                f"hole_radius_angstrom ({self.hole_radius_angstrom}) < {2 * BOND_ANGSTROM:.2f}"
            )
        return None

    @property
    def probe_sigma_angstrom(self) -> float:
        """Gaussian sigma of the probe: FWHM / (2 sqrt(2 ln 2))."""
        return self.probe_fwhm_angstrom / (2.0 * math.sqrt(2.0 * math.log(2.0)))

    @property
    def cross_section_barn(self) -> float:
        """Effective inversion cross section at ``beam_energy_kev`` [Mey12 tail model]."""
        de = max_transfer_ev(self.beam_energy_kev) - max_transfer_ev(60.0)
        return self.cross_section_barn_60kv * math.exp(de / self.thermal_tail_ev)

    @property
    def knockout_ratio(self) -> float:
        """Knock-out / inversion ratio at ``beam_energy_kev``."""
        de = max_transfer_ev(self.beam_energy_kev) - max_transfer_ev(60.0)
        return self.knockout_ratio_60kv * math.exp(
            de / self.knockout_tail_ev - de / self.thermal_tail_ev
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class StemMicroscopeConfig(ConfigSection):
    """Timing, field of view, drift and detection of the microscope."""

    fov_angstrom: float = param(
        20.0, units="A", ge=5.0, le=500.0, doc="field of view 15-30 A [S23]"
    )
    recentre_fraction: float = param(
        0.5, ge=0.05, le=1.0, doc="re-centre when the Si leaves the central half [S23]"
    )
    frame_time_s: float = param(3.0, units="s", ge=0.0, le=600.0, doc="a frame takes 2-4 s [S23]")
    beam_settle_s: float = param(2.0, units="s", ge=0.0, le=600.0, doc="beam settle ~2 s [S23]")
    recentre_time_s: float = param(
        5.0,
        units="s",
        ge=0.0,
        le=600.0,
        doc="one extra frame plus settle when the view is re-centred",
    )
    dwell_s: float = param(
        3.0,
        units="s",
        ge="dwell_min_s",
        le="dwell_max_s",
        doc="default dwell when the action has no dwell; 1.5-5 s [S23]",
    )
    dwell_min_s: float = param(
        0.1, units="s", gt=0.0, le=3600.0, doc="instrument limit on one dwell"
    )
    dwell_max_s: float = param(
        20.0, units="s", ge="dwell_min_s", le=3600.0, doc="random data collection used 1-20 s [S23]"
    )
    # Drift, re-drawn at every reset: speed ~ U(0, max) A/s, direction ~ U(0, 2 pi);
    # residual drift after the microscope's own correction (raw drift 0.1-1 A/s [S23]).
    drift_speed_max_angstrom_per_s: float = param(0.05, units="A/s", ge=0.0, le=10.0)
    drift_diffusion_angstrom2_per_s: float = param(
        0.0005, units="A^2/s", ge=0.0, le=10.0, doc="random-walk part of the drift"
    )
    drift_resolution_angstrom: float = param(
        0.1, units="A", ge=0.01, le=10.0, doc="beam-vs-sample shift per piecewise-constant step"
    )
    detection_noise_angstrom: float = param(
        0.05, units="A", ge=0.0, le=1.0, doc="Si localisation error, N(0, sd^2) per axis"
    )
    lattice_angle_deg: float = param(
        0.0, units="deg", ge=-360.0, le=360.0, doc="lattice orientation when not randomised"
    )
    randomize_lattice_angle: bool = param(True, doc="orientation ~ U(0, 360) deg per episode")


@dataclasses.dataclass(frozen=True, kw_only=True)
class StemImagingConfig(ConfigSection):
    """HAADF image formation (the fast path) and the atom-finding pipeline.

    Intensity ~ sum_i Y (Z_i/6)^gamma G(x - r_i; sigma_probe) + background, in detected
    electrons: ``(I t_pixel / e) x yield``, with Poisson shot noise [reference sheet: yield
    ~1e-3 of incident electrons at a C column and ~4e-3 at the Si at 60 kV, 80-200 mrad;
    gamma 1.7-1.9 (abTEM multislice Si/C peak ratio 4.3-5.1); per-line jitter up to ~0.3 A].
    The pixel time follows from the frame time: ``(frame_time_s / n - flyback) / n``.
    """

    frame_pixels: int = param(
        256, units="px", ge=16, le=4096, doc="square frames of n x n pixels over the field of view"
    )
    flyback_us: float = param(500.0, units="us", ge=0.0, le=1e5, doc="per line")
    imaging_current_na: float = param(
        0.03,
        units="nA",
        ge=0.0,
        le=10.0,
        doc="probe current while scanning: 30 pA [reference sheet]",
    )
    carbon_yield: float = param(
        1e-3, gt=0.0, le=1.0, doc="HAADF electrons per incident electron at a C column"
    )
    z_exponent: float = param(1.8, ge=0.5, le=3.0, doc="gamma; Si/C peak ratio (14/6)^1.8 = 4.6")
    background_yield: float = param(
        1e-4, ge=0.0, le=1.0, doc="uniform background (contamination, detector offset)"
    )
    line_jitter_angstrom: float = param(
        0.1, units="A", ge=0.0, le=2.0, doc="per-line x jitter, N(0, sd^2), re-drawn every line"
    )
    flyback_distortion_angstrom: float = param(
        0.2, units="A", ge=0.0, le=5.0, doc="x lag at the start of a line ..."
    )
    flyback_decay_pixels: float = param(
        8.0, units="px", ge=0.1, le=1e4, doc="... decaying exponentially along the line"
    )
    max_reimages: int = param(
        2, ge=0, le=20, doc="perception re-images when the Si is not found unambiguously"
    )
    # Image backends with n_holes > 0 map holes from frames; at reset they image a grid of views
    # spaced half the field of view around the Si (consecutive views overlap by half, so frame
    # alignment chains them) until the square of this half-width is seen, then return to the
    # start view; 0: no survey (holes are mapped from the frames of the episode only).
    # Default: holes lie <= 15 A from the start with radius 2.5 A (physics defaults), so
    # 17.5 A holds them all; + 0.5 A spare. With a 20 A view: a 3 x 3 grid, 45-50 s.
    hole_survey_half_width_angstrom: float = param(18.0, units="A", ge=0.0, le=1000.0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class StemTaskConfig(ConfigSection):
    """Steer the Si to a goal site: actions, goals, reward and limits.

    Reward = sum of ``scale * term`` over terms ``success`` (1 on reaching the goal),
    ``failure`` (-1 on knock-out, loss or edge), ``time`` (-microscope seconds of the step) and
    ``progress`` (decrease of the Si-goal distance in A).
    """

    action_mode: str = param(
        "offset",
        choices=("offset", "absolute"),
        doc='"offset": beam relative to the Si; "absolute": in the view',
    )
    action_dwell: bool = param(False, doc="add the dwell time (s) as a last action element")
    offset_max_angstrom: float = param(
        3.0, units="A", ge=0.1, le=50.0, doc="+- bound of offset actions (r_max)"
    )
    success_radius_angstrom: float = param(
        0.71, units="A", ge=0.01, le=10.0, doc="half a bond [S23]"
    )
    goal_min_angstrom: float = param(
        2.0, units="A", ge=0.0, le=1e4, doc="goals drawn 0.1-50 A away [S23]; here a laptop default"
    )
    goal_max_angstrom: float = param(8.0, units="A", ge="goal_min_angstrom", le=1e4)
    goal_hops: int = param(
        0, ge=0, le=200, doc="> 0: goals exactly this many lattice hops away (replaces the annulus)"
    )
    max_steps: int = param(100, ge=1, le=10_000_000, doc="truncation")
    reward_success: float = param(1.0, ge=-1e6, le=1e6)
    reward_failure: float = param(1.0, ge=-1e6, le=1e6)
    reward_time_per_s: float = param(0.01, units="1/s", ge=-1e6, le=1e6)
    reward_progress_per_angstrom: float = param(0.0, units="1/A", ge=-1e6, le=1e6)
    observation_mode: str = param(
        "vector",
        choices=("vector", "frame"),
        doc='"vector": the flat observation (task.py); "frame": a Dict that adds a HAADF crop '
        "around the Si (frames.py)",
    )
    frame_crop_pixels: int = param(
        48, units="px", ge=16, le=256, doc="side of the frame crop (observation_mode='frame')"
    )
    frame_crop_angstrom: float = param(
        8.0, units="A", ge=2.0, le=100.0, doc="width of the crop's square, centred on the Si"
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class StemConfig(ConfigSection):
    """The whole STEM system: physics, microscope, imaging, task and safety."""

    physics: StemPhysicsConfig = dataclasses.field(default_factory=StemPhysicsConfig)
    microscope: StemMicroscopeConfig = dataclasses.field(default_factory=StemMicroscopeConfig)
    imaging: StemImagingConfig = dataclasses.field(default_factory=StemImagingConfig)
    task: StemTaskConfig = dataclasses.field(default_factory=StemTaskConfig)
    safety: SafetyConfig = dataclasses.field(default_factory=SafetyConfig)

    @property
    def pixel_time_s(self) -> float:
        """Dwell of the scanning beam per pixel in a frame."""
        n = self.imaging.frame_pixels
        return (self.microscope.frame_time_s / n - self.imaging.flyback_us * 1e-6) / n

    @cross_check
    def _frame_holds_its_lines(self) -> str | None:
        if self.microscope.frame_time_s > 0 and self.pixel_time_s <= 0:
            return (
                f"StemMicroscopeConfig.frame_time_s = {self.microscope.frame_time_s} is too "
                f"short for {self.imaging.frame_pixels} lines with a flyback of "
                f"{self.imaging.flyback_us} us each"
            )
        return None

    @property
    def _goal_reach_angstrom(self) -> float:
        """0.8 x the lattice half-width: the farthest a goal may lie from the start."""
        half = 0.5 * self.physics.lattice_size_cells * LATTICE_CONSTANT_ANGSTROM
        return 0.8 * half

    @cross_check
    def _goal_hops_on_lattice(self) -> str | None:
        reach = self._goal_reach_angstrom
        if self.task.goal_hops * BOND_ANGSTROM > reach:
            return (
                f"StemTaskConfig.goal_hops = {self.task.goal_hops} reaches beyond 0.8 x the "
                f"lattice half-width ({reach:.1f} A for lattice_size_cells = "
                f"{self.physics.lattice_size_cells})"
            )
        return None

    @cross_check
    def _goals_on_lattice(self) -> str | None:
        reach = self._goal_reach_angstrom
        if self.task.goal_max_angstrom > reach:
            return (
                f"StemTaskConfig.goal_max_angstrom = {self.task.goal_max_angstrom} must stay "
                f"within 0.8 x the lattice half-width ({reach:.1f} A for "
                f"lattice_size_cells = {self.physics.lattice_size_cells})"
            )
        return None

    @cross_check
    def _crop_in_view(self) -> str | None:
        if self.task.observation_mode != "frame":
            return None
        if self.task.frame_crop_angstrom > self.microscope.fov_angstrom:
            return (
                f"StemTaskConfig.frame_crop_angstrom = {self.task.frame_crop_angstrom} exceeds "
                f"the field of view ({self.microscope.fov_angstrom} A)"
            )
        return None

    @cross_check
    def _offsets_in_view(self) -> str | None:
        if self.task.offset_max_angstrom > 0.5 * self.microscope.fov_angstrom:
            return (
                f"StemTaskConfig.offset_max_angstrom = {self.task.offset_max_angstrom} exceeds "
                f"half the field of view ({0.5 * self.microscope.fov_angstrom} A)"
            )
        return None
