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

from twinloop.core.config import ConfigError, check_choice, check_range
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


@dataclasses.dataclass(frozen=True, kw_only=True)
class StemPhysicsConfig:
    """The sample and the beam-driven dynamics.

    The physical rate model gives neighbour k the rate
    ``lambda_k = (I/e) sigma(E) P(b - r_k - delta u_k)`` with P a normalised Gaussian probe
    [S23]; ``sigma(E) = sigma_60 exp((E_max(E) - E_max(60 kV)) / thermal_tail_ev)`` [Mey12].
    The ``prior`` model is the published hand-set prior [S23], linear in current and scaled in
    energy by the same ``sigma(E) / sigma_60``.
    """

    rate_model: str = "physical"  # "physical" or "prior"
    lattice_size_cells: int = 64  # square patch of L x L unit cells centred on the start site
    beam_energy_kev: float = 60.0  # [S23] experiments at 60 kV
    beam_current_na: float = 0.1  # [S23] ~0.1 nA
    probe_fwhm_angstrom: float = 1.06  # FWHM 1.0-1.2 A; 1.06 A gives sigma 0.45 A [S23]
    optimum_offset_angstrom: float = 0.6  # optimum 0.45-0.75 A beyond the C [S23 learned]
    cross_section_barn_60kv: float = 0.03  # effective inversion cross section [Su19]
    thermal_tail_ev: float = 0.93  # x3 per +5 kV near 60 kV: 1.02 eV of E_max / ln 3 [Mey12]
    knockout_ratio_60kv: float = 0.15  # knock-out / inversion at 60 kV, 0.1-0.2 [Su19]
    knockout_tail_ev: float = 0.5  # knock-out rises faster with energy than inversion [Su19]
    loss_ratio: float = 0.005  # Si replaced by a C adatom, per inversion event (rare) [S23]
    prior_peak_rate_per_s: float = math.log(2.0) / 3.0  # 50 % jump chance in 3 s [S23 prior]
    prior_optimum_bond_fraction: float = 0.85  # optimum at 0.85 bond lengths [S23 prior]
    prior_sigma_angstrom: float = 0.45  # isotropic width [S23 prior]
    prior_current_na: float = 0.1  # current at which the prior was calibrated [S23]
    # Domain randomisation, re-drawn at every reset:
    cross_section_log_sd: float = 0.0  # ln(sigma multiplier) ~ N(0, sd^2), dimensionless
    probe_fwhm_rel_sd: float = 0.0  # FWHM multiplier ~ 1 + N(0, sd^2) clipped to [0.5, 1.5]
    optimum_offset_sd_angstrom: float = 0.0  # optimum offset + N(0, sd^2) A, clipped >= 0
    # Holes (known defects) per episode: centres at U(min, max) A from the start, angle U(0, 2pi)
    n_holes: int = 0
    hole_radius_angstrom: float = 2.5
    hole_min_distance_angstrom: float = 6.0
    hole_max_distance_angstrom: float = 15.0

    def __post_init__(self) -> None:  # noqa: D105
        check_choice(self, "rate_model", ("physical", "prior"))
        check_range(self, "lattice_size_cells", 8, 4096)
        check_range(self, "beam_energy_kev", 40.0, 100.0)
        check_range(self, "beam_current_na", 0.0, 10.0)
        check_range(self, "probe_fwhm_angstrom", 0.3, 5.0)
        check_range(self, "optimum_offset_angstrom", 0.0, 3.0)
        check_range(self, "cross_section_barn_60kv", 0.0, 10.0)
        check_range(self, "thermal_tail_ev", 0.05, 100.0)
        check_range(self, "knockout_ratio_60kv", 0.0, 10.0)
        check_range(self, "knockout_tail_ev", 0.05, 100.0)
        check_range(self, "loss_ratio", 0.0, 1.0)
        check_range(self, "prior_peak_rate_per_s", 0.0, 1e3)
        check_range(self, "prior_optimum_bond_fraction", 0.0, 3.0)
        check_range(self, "prior_sigma_angstrom", 0.05, 5.0)
        check_range(self, "prior_current_na", 0.0, 10.0, lo_open=True)
        check_range(self, "cross_section_log_sd", 0.0, 3.0)
        check_range(self, "probe_fwhm_rel_sd", 0.0, 0.5)
        check_range(self, "optimum_offset_sd_angstrom", 0.0, 2.0)
        check_range(self, "n_holes", 0, MAX_HOLES)
        check_range(self, "hole_radius_angstrom", 0.5, 50.0)
        check_range(self, "hole_min_distance_angstrom", 0.0, 1e4)
        check_range(self, "hole_max_distance_angstrom", 0.0, 1e4)
        if self.hole_max_distance_angstrom < self.hole_min_distance_angstrom:
            raise ConfigError(
                f"StemPhysicsConfig.hole_max_distance_angstrom = "
                f"{self.hole_max_distance_angstrom} < hole_min_distance_angstrom = "
                f"{self.hole_min_distance_angstrom}"
            )
        if self.n_holes and (
            self.hole_min_distance_angstrom - self.hole_radius_angstrom < 2.0 * BOND_ANGSTROM
        ):
            raise ConfigError(
                "StemPhysicsConfig: holes must keep >= 2 bonds from the start site: "
                f"hole_min_distance_angstrom ({self.hole_min_distance_angstrom}) - "
                f"hole_radius_angstrom ({self.hole_radius_angstrom}) < {2 * BOND_ANGSTROM:.2f}"
            )

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


#: Upper bound on holes per episode (array sizes in the kernel).
MAX_HOLES = 8


@dataclasses.dataclass(frozen=True, kw_only=True)
class StemMicroscopeConfig:
    """Timing, field of view, drift and detection of the microscope."""

    fov_angstrom: float = 20.0  # field of view 15-30 A [S23]
    recentre_fraction: float = 0.5  # re-centre when the Si leaves the central half [S23]
    frame_time_s: float = 3.0  # a frame takes 2-4 s [S23]
    beam_settle_s: float = 2.0  # beam settle ~2 s [S23]
    recentre_time_s: float = 5.0  # one extra frame plus settle when the view is re-centred
    dwell_s: float = 3.0  # default dwell when the action has no dwell; 1.5-5 s [S23]
    dwell_min_s: float = 0.1  # instrument limit on one dwell
    dwell_max_s: float = 20.0  # random data collection used 1-20 s [S23]
    # Drift, re-drawn at every reset: speed ~ U(0, max) A/s, direction ~ U(0, 2 pi);
    # residual drift after the microscope's own correction (raw drift 0.1-1 A/s [S23]).
    drift_speed_max_angstrom_per_s: float = 0.05
    drift_diffusion_angstrom2_per_s: float = 0.0005  # random-walk part of the drift
    drift_resolution_angstrom: float = 0.1  # beam-vs-sample shift per piecewise-constant step
    detection_noise_angstrom: float = 0.05  # Si localisation error, N(0, sd^2) per axis
    lattice_angle_deg: float = 0.0  # lattice orientation when not randomised
    randomize_lattice_angle: bool = True  # orientation ~ U(0, 360) deg per episode

    def __post_init__(self) -> None:  # noqa: D105
        check_range(self, "fov_angstrom", 5.0, 500.0)
        check_range(self, "recentre_fraction", 0.05, 1.0)
        check_range(self, "frame_time_s", 0.0, 600.0)
        check_range(self, "beam_settle_s", 0.0, 600.0)
        check_range(self, "recentre_time_s", 0.0, 600.0)
        check_range(self, "dwell_min_s", 0.0, 3600.0, lo_open=True)
        check_range(self, "dwell_max_s", self.dwell_min_s, 3600.0)
        check_range(self, "dwell_s", self.dwell_min_s, self.dwell_max_s)
        check_range(self, "drift_speed_max_angstrom_per_s", 0.0, 10.0)
        check_range(self, "drift_diffusion_angstrom2_per_s", 0.0, 10.0)
        check_range(self, "drift_resolution_angstrom", 0.01, 10.0)
        check_range(self, "detection_noise_angstrom", 0.0, 1.0)
        check_range(self, "lattice_angle_deg", -360.0, 360.0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class StemImagingConfig:
    """HAADF image formation (the fast path) and the atom-finding pipeline.

    Intensity ~ sum_i Y (Z_i/6)^gamma G(x - r_i; sigma_probe) + background, in detected
    electrons: ``(I t_pixel / e) x yield``, with Poisson shot noise [reference sheet: yield
    ~1e-3 of incident electrons at a C column and ~4e-3 at the Si at 60 kV, 80-200 mrad;
    gamma 1.7-1.9 (abTEM multislice Si/C peak ratio 4.3-5.1); per-line jitter up to ~0.3 A].
    The pixel time follows from the frame time: ``(frame_time_s / n - flyback) / n``.
    """

    frame_pixels: int = 256  # square frames of n x n pixels over the field of view
    flyback_us: float = 500.0  # per line
    imaging_current_na: float = 0.03  # probe current while scanning: 30 pA [reference sheet]
    carbon_yield: float = 1e-3  # HAADF electrons per incident electron at a C column
    z_exponent: float = 1.8  # gamma; Si/C peak ratio (14/6)^1.8 = 4.6
    background_yield: float = 1e-4  # uniform background (contamination, detector offset)
    line_jitter_angstrom: float = 0.1  # per-line x jitter, N(0, sd^2), re-drawn every line
    flyback_distortion_angstrom: float = 0.2  # x lag at the start of a line ...
    flyback_decay_pixels: float = 8.0  # ... decaying exponentially along the line
    max_reimages: int = 2  # perception re-images when the Si is not found unambiguously
    # Image backends with n_holes > 0 map holes from frames; at reset they image a grid of views
    # spaced half the field of view around the Si (consecutive views overlap by half, so frame
    # alignment chains them) until the square of this half-width is seen, then return to the
    # start view; 0: no survey (holes are mapped from the frames of the episode only).
    # Default: holes lie <= 15 A from the start with radius 2.5 A (physics defaults), so
    # 17.5 A holds them all; + 0.5 A spare. With a 20 A view: a 3 x 3 grid, 45-50 s.
    hole_survey_half_width_angstrom: float = 18.0

    def __post_init__(self) -> None:  # noqa: D105
        check_range(self, "frame_pixels", 16, 4096)
        check_range(self, "imaging_current_na", 0.0, 10.0)
        check_range(self, "flyback_us", 0.0, 1e5)
        check_range(self, "carbon_yield", 0.0, 1.0, lo_open=True)
        check_range(self, "z_exponent", 0.5, 3.0)
        check_range(self, "background_yield", 0.0, 1.0)
        check_range(self, "line_jitter_angstrom", 0.0, 2.0)
        check_range(self, "flyback_distortion_angstrom", 0.0, 5.0)
        check_range(self, "flyback_decay_pixels", 0.1, 1e4)
        check_range(self, "max_reimages", 0, 20)
        check_range(self, "hole_survey_half_width_angstrom", 0.0, 1000.0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class StemTaskConfig:
    """Steer the Si to a goal site: actions, goals, reward and limits.

    Reward = sum of ``scale * term`` over terms ``success`` (1 on reaching the goal),
    ``failure`` (-1 on knock-out, loss or edge), ``time`` (-microscope seconds of the step) and
    ``progress`` (decrease of the Si-goal distance in A).
    """

    action_mode: str = "offset"  # "offset": beam relative to the Si; "absolute": in the view
    action_dwell: bool = False  # add the dwell time (s) as a last action element
    offset_max_angstrom: float = 3.0  # +- bound of offset actions (r_max)
    success_radius_angstrom: float = 0.71  # half a bond [S23]
    goal_min_angstrom: float = 2.0  # goals drawn 0.1-50 A away [S23]; here a laptop default
    goal_max_angstrom: float = 8.0
    goal_hops: int = 0  # > 0: goals exactly this many lattice hops away (replaces the annulus)
    max_steps: int = 100  # truncation
    reward_success: float = 1.0
    reward_failure: float = 1.0
    reward_time_per_s: float = 0.01
    reward_progress_per_angstrom: float = 0.0

    def __post_init__(self) -> None:  # noqa: D105
        check_choice(self, "action_mode", ("offset", "absolute"))
        check_range(self, "offset_max_angstrom", 0.1, 50.0)
        check_range(self, "success_radius_angstrom", 0.01, 10.0)
        check_range(self, "goal_min_angstrom", 0.0, 1e4)
        check_range(self, "goal_max_angstrom", self.goal_min_angstrom, 1e4)
        check_range(self, "max_steps", 1, 10_000_000)
        check_range(self, "goal_hops", 0, 200)
        for name in (
            "reward_success",
            "reward_failure",
            "reward_time_per_s",
            "reward_progress_per_angstrom",
        ):
            check_range(self, name, -1e6, 1e6)


@dataclasses.dataclass(frozen=True, kw_only=True)
class StemConfig:
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

    def __post_init__(self) -> None:  # noqa: D105
        if self.microscope.frame_time_s > 0 and self.pixel_time_s <= 0:
            raise ConfigError(
                f"StemMicroscopeConfig.frame_time_s = {self.microscope.frame_time_s} is too "
                f"short for {self.imaging.frame_pixels} lines with a flyback of "
                f"{self.imaging.flyback_us} us each"
            )
        half = 0.5 * self.physics.lattice_size_cells * LATTICE_CONSTANT_ANGSTROM
        if self.task.goal_hops * BOND_ANGSTROM > 0.8 * half:
            raise ConfigError(
                f"StemTaskConfig.goal_hops = {self.task.goal_hops} reaches beyond 0.8 x the "
                f"lattice half-width ({0.8 * half:.1f} A for lattice_size_cells = "
                f"{self.physics.lattice_size_cells})"
            )
        if self.task.goal_max_angstrom > 0.8 * half:
            raise ConfigError(
                f"StemTaskConfig.goal_max_angstrom = {self.task.goal_max_angstrom} must stay "
                f"within 0.8 x the lattice half-width ({0.8 * half:.1f} A for "
                f"lattice_size_cells = {self.physics.lattice_size_cells})"
            )
        if self.task.offset_max_angstrom > 0.5 * self.microscope.fov_angstrom:
            raise ConfigError(
                f"StemTaskConfig.offset_max_angstrom = {self.task.offset_max_angstrom} exceeds "
                f"half the field of view ({0.5 * self.microscope.fov_angstrom} A)"
            )
