"""The prior of a STEM device's hidden physics around the simulator's nominal values.

``twinloop serve microscope --profile random:SEED`` draws these (see
:mod:`twinloop.core.profile`): each parameter of the rate model (optimum offset, probe width,
peak rate, energy dependence, for both the physical and the prior rate model), the knock-out
and loss rates, the drift and the detector gain. ``log`` priors multiply the nominal value by
``m``, ``ln m ~ N(0, sd^2)`` truncated to ``[low, high]``; ``shift`` priors add
``d ~ N(0, sd^2)`` in the field's units, truncated to ``[low, high]``. The spreads follow the
ranges of the reference sheet (tags as in :mod:`twinloop.sim.stem.config`): a device sits
somewhere in the published range, and where no range is published the spread is a stated
guess. Fields the twin shows its clients (voltage, currents, holes, field of view, timing)
are not perturbed.
"""

from __future__ import annotations

from twinloop.core.profile import Prior

#: The STEM prior, drawn in this order.
PRIORS: tuple[Prior, ...] = (
    # rate model, physical form
    Prior(
        "physics.optimum_offset_angstrom",
        "shift",
        0.15,
        -0.3,
        0.3,
        "learned optima lie 0.45-0.75 A beyond the C [S23]: nominal 0.6 A +- 0.3 A",
    ),
    Prior(
        "physics.probe_fwhm_angstrom",
        "log",
        0.08,
        0.85,
        1.2,
        "probe FWHM 1.0-1.2 A [S23]; nominal 1.06 A, x[0.85, 1.2] covers 0.9-1.27 A",
    ),
    Prior(
        "physics.cross_section_barn_60kv",
        "log",
        0.4,
        1.0 / 3.0,
        5.0 / 3.0,
        "effective cross section 0.01-0.05 barn at 60 kV [Su19]: the peak rate",
    ),
    Prior(
        "physics.thermal_tail_ev",
        "log",
        0.2,
        0.7,
        1.4,
        "energy dependence 'roughly x3 per +5 kV' [Mey12]: x2.2-x4.8 per +5 kV",
    ),
    # failure channels
    Prior(
        "physics.knockout_ratio_60kv",
        "log",
        0.25,
        2.0 / 3.0,
        4.0 / 3.0,
        "knock-out 0.1-0.2 x the inversion rate at 60 kV [Su19]",
    ),
    Prior(
        "physics.knockout_tail_ev",
        "log",
        0.2,
        0.7,
        1.4,
        "knock-out rises faster with energy than inversion [Su19]; no figure: +-40 % guess",
    ),
    Prior(
        "physics.loss_ratio",
        "log",
        0.5,
        0.5,
        2.0,
        "Si replaced by a C adatom, 'rare' [S23]; no measured rate: a factor of 2 either way",
    ),
    # rate model, hand-set prior form (used when rate_model = "prior")
    Prior(
        "physics.prior_peak_rate_per_s",
        "log",
        0.3,
        0.5,
        2.0,
        "ln2/3 1/s was set by hand [S23]; the cross section's range allows x[1/3, 5/3] [Su19]",
    ),
    Prior(
        "physics.prior_optimum_bond_fraction",
        "shift",
        0.1,
        -0.2,
        0.2,
        "hand-set 0.85 bond lengths vs learned 1.32-1.53 [S23]: +-0.2 keeps it short of the C",
    ),
    Prior(
        "physics.prior_sigma_angstrom",
        "log",
        0.08,
        0.85,
        1.2,
        "isotropic 0.45 A [S23 prior]; as the probe width",
    ),
    # drift (the range of each per-episode draw; the twin still re-draws at every reset)
    Prior(
        "microscope.drift_speed_max_angstrom_per_s",
        "log",
        0.5,
        0.5,
        3.0,
        "residual drift after correction; raw drift 0.1-1 A/s [S23]: up to 0.15 A/s",
    ),
    Prior(
        "microscope.drift_diffusion_angstrom2_per_s",
        "log",
        0.5,
        0.5,
        2.0,
        "random-walk part of the drift; no published figure: a factor of 2 either way",
    ),
    # detector
    Prior(
        "imaging.carbon_yield",
        "log",
        0.2,
        0.7,
        1.4,
        "HAADF yield ~1e-3 at a C column (an order of magnitude) [reference sheet]: the gain",
    ),
    Prior(
        "imaging.background_yield",
        "log",
        0.5,
        0.5,
        2.0,
        "contamination and detector offset vary from sample to sample: a factor of 2",
    ),
    Prior(
        "imaging.z_exponent",
        "shift",
        0.05,
        -0.1,
        0.1,
        "gamma 1.7-1.9 at 60 kV (abTEM Si/C peak ratio 4.3-5.1) [reference sheet]",
    ),
)
