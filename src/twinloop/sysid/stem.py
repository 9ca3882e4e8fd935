"""STEM system identification: the device's rate model, failure ratios and drift from dwells.

What a microscope records per step is enough (``twinloop/StemSteer-v0`` captures, the dwells
of ``twinloop stem-rates capture``): the observation before and after (Si in the view, its
three neighbour offsets, the goal's offset from the Si), the applied command (probe position
in the view, dwell), the failure code and the step's elapsed microscope time; the instrument's
settings (current, voltage, timing, field of view) come from the capture's recorded config.
``true/...`` infos are never read. The device profile in a capture's privileged metadata is
used by :mod:`twinloop.sysid.base` for scoring only.

Reading a step (exact, no view-centre bookkeeping):

* The observation holds the Si in the view ``s = S - F + n`` (``S`` the Si's site, ``F`` the
  view centre, ``n`` the localisation noise) and the goal's offset ``g = G - S - n``. The goal
  is fixed per episode, at the site nearest a point drawn around the *measured* start, so
  ``G - S`` is a lattice vector plus the start's noise ``n0``. Snapping ``g`` to the lattice
  of the measured neighbours removes ``n`` up to ``n0``: the Si in the view before each dwell
  is known to ``n0`` (one 0.05 A error per episode at the default noise, which widens the
  fitted probe by ~0.6 %, well inside its interval), the Si's displacement over a step is
  exact (the change of the snapped ``G - S``), and ``F = G - g - s`` (``n`` cancels) gives
  the view's drift exactly.
* Drift (:mod:`twinloop.sim.stem.kernel`: per-episode velocity ``v``, plus a random walk
  of variance ``2 D t`` per axis added once per step): between two measurements without a
  re-centring, ``dF = v T + N(0, 2 D T)`` with ``T`` the elapsed time. ``v`` per episode and
  ``D`` are estimated by weighted least squares; ``D`` has an exact chi-square interval. The
  speeds are ``U(0, v_max)``: ``v_max`` is estimated from the largest speed ``M`` of ``n``
  episodes by ``(n + 1) M / n`` with the exact pivot interval ``M / 0.975^(1/n) ..
  M / 0.025^(1/n)``, widened by twice the speed's own noise.
* Rates: during the dwell the beam sits at ``probe - (s - n) + v (settle + t)`` from the Si,
  piecewise constant over the kernel's drift pieces. The likelihood of each step's outcome
  (no hop; one hop to neighbour k; knock-out or loss, before or after one hop; an edge
  reached; several hops) is exact for piecewise-constant rates with at most two events
  (three-event paths, a few in 10^4 at most, are lumped with "several hops"), including the
  uniform dose of the imaging frame. The rates come from the simulator itself: candidate
  parameters are applied to the capture's config, packed by ``kernel.physics_params`` and
  turned into a rate row by ``kernel.reset``, and evaluated by ``kernel.neighbor_rate``; no
  formula is re-derived here.

Image captures: the drift and noise model above is the ``sim`` backend's. Captures of the
image backends (``sim-image``, ``remote`` twins, ``nion``; the capture's ``backend.kind``) are
read by :func:`read_image_episode` instead: their view centre comes from aligning frames,
which slips to another lattice match when the sample drifted by more than ~0.7 A between
frames (a twin at 0.05 A/s without drift prediction: ~10 % of the steps), and the exact
snapping above then reads the slips as hops (on ``random:7``, 1478 steps: 234 "several hops",
the probe width at its bound of 5 A). There the Si's displacement comes from the frames and
the drift line, the beam offset from the Si in the frame, and slips are dropped from the drift
data. Four more things differ from ``sim`` captures, and the likelihood models them:

* Neighbour order: perception lists an Si's neighbours in its own order, the likelihood needs
  the kernel's (bond ``k`` at ``30 + 120 k`` degrees from the lattice angle taken from
  neighbour 0; :func:`kernel_order`). Read as they came (neighbours 1 and 2 swapped on about
  half the steps), a hop was scored with the other neighbour's rate: this, not the offsets'
  error, was the bias on image captures (12 random devices, 256 px, ~1000 steps each: the
  cross section 23 % low, covered 3 times of 12; the probe width 25 % wide on average, two
  fits at 3.4 and 4.6 A).
* Scan lag: the Si is seen when the scan passes its row (row 0, the smallest y, first), and
  the view drifts on for the rest of the frame: the beam offset at the command is the
  measured one plus ``v frame_s (1/2 - y / fov)`` (up to 0.15 A at 0.05 A/s).
* The beam offset's error (:func:`fit_blur`): the frame's localisation error ``s_loc`` and the
  drift's random walk between the frame and the dwell (a twin adds a frame's walk after its
  scan, then the settle's) make the true offset ``N(measured, s^2)`` per axis with
  ``s^2 = s_loc^2 + 2 D (frame_s + settle_s)``. ``D`` comes from the drift fit, ``s_loc`` from
  the steps read as "no hop": their displacement less the drift is two frames' errors plus
  the walk, ``E r^2 = 2 s_loc^2 + 2 D t`` per axis. Each step's probability is averaged over
  the error with a degree-5 cubature (:data:`BLUR_NODES`). On a twin at 256 px, ``s`` is
  0.06-0.09 A, mostly the walk (``s_loc`` 0-0.03 A); for a Gaussian probe it acts as a wider
  one, ``FWHM^2 + 8 ln 2 s^2``, so the width's bias it removes is 1-2 %. ``s`` is plugged
  in, not fitted with the rates: a Gaussian error on a Gaussian probe gives exactly the rate
  of a wider probe with the same cross section, so hops cannot tell them apart; its own
  error (~0.005 A) moves the width by < 0.5 %.
* Re-centred steps are dropped (the Si's position before the shift is not recorded), and a
  hop makes a re-centring likelier (the Si moves 1.4 A towards the edge of the central box):
  on the 12 devices 3 % of the stays and 11 % of the hops were dropped, which biased the
  cross section low. A kept step's likelihood is conditional on its being kept: divided by
  ``P(kept) = P(failure) + sum over landings P(landing) P(Si seen inside the box | landing)``,
  each landing's position predicted from the Si before the step and the drift, with sd
  ``sqrt(2 s_loc^2 + 2 D t)`` per axis (several hops taken to land where no hop would).

Measured on those 12 devices (``random:1..13`` without 7, 40 episodes each, in-process
``sim-image``; mean error over devices +- its standard error; log ratio for the width and
the cross section): before, the optimum offset -0.070 +- 0.048 A, the width +0.25 +- 0.14, the
cross section -0.26 +- 0.02 (covered 12, 9 and 3 times of 12); with the four changes
+0.008 +- 0.013 A, +0.008 +- 0.016 and -0.066 +- 0.032 (covered 12, 11 and 11 times). Fitted
with the true beam offsets (scoring only): +0.009 A, +0.003 and -0.093 without the box
correction, so what is left of the cross section's bias is not the offsets' error.

Intervals: ``boot = 0`` uses a Laplace approximation (the inverse Hessian of the negative
log-likelihood in the fitted coordinates: log of positive parameters, the offset as is),
``boot = N`` the percentile intervals of N refits on episodes resampled with replacement. The
drift intervals are the exact ones above in both cases (the bootstrap resamples them too).
An optimum at a field's bound (:func:`at_bounds`) or a Hessian that is not positive definite
(:func:`laplace_covariance`) gives no estimate: the parameter is reported not identified with
the reason, and a rate-shape parameter at a bound takes the other shape parameters with it
(they trade off, so their values at that bound mean nothing).

Identifiability: the rate-model shape (optimum offset, probe width, peak rate / cross section)
needs hops; the energy tails need captures at two or more beam energies; the knock-out and
loss ratios need events of their kind; the detector parameters need images (not in these
captures); the hand-set "prior" rate model's parameters are identified only when the device
runs that model (and the physical model's then are not). What cannot be identified is
reported with the reason and left out of the override file.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from twinloop.core.config import ConfigError, field_param, from_dict, override
from twinloop.core.jit import njit
from twinloop.core.rng import new_streams
from twinloop.sim.stem import kernel as K
from twinloop.sim.stem.config import BOND_ANGSTROM, StemConfig
from twinloop.sim.stem.profile import PRIORS
from twinloop.sysid.base import ParameterEstimate, Progress, SysidResult

# --- step outcome codes -------------------------------------------------------------------------
STAY = 0  # no hop, no failure
HOP = 1  # one hop to neighbour k, no failure
EDGE_HOP = 2  # one hop to neighbour k, which is an edge site (the process stops there)
KO_STAY = 3  # knock-out without a hop
KO_HOP = 4  # knock-out after one hop to k
LOST_STAY = 5
LOST_HOP = 6
MULTI = 7  # two or more hops
KO_ANY = 8  # knock-out, with or without one hop first (image captures: the Si is not seen)
LOST_ANY = 9  # loss, with or without one hop first
#: Fewest events of a kind for its ratio to count as identified (fewer: a ratio fitted only
#: when, by chance, many events were seen is biased high).
MIN_EVENTS = 10
#: Fewest single hops for the rate model to count as identified.
MIN_HOPS = 10
#: Fewest episodes with a drift estimate for the drift parameters.
MIN_DRIFT_EPISODES = 3

_Z975 = 1.959963984540054


@dataclasses.dataclass
class StemSteps:
    """Every usable step of the captures, one row each, plus the drift data per episode.

    Attributes:
        dataset: ``(n,)`` index of the step's dataset (its settings).
        episode: ``(n,)`` global episode index.
        offset: ``(n, 2)`` beam minus Si position at the command (A, view frame): exact on
            ``sim`` captures, as read from the frame before the dwell on image captures.
        lead_s: ``(n,)`` time from the Si's measurement to the frame's end (image captures:
            the part of the frame scanned after the Si's row; 0 on ``sim`` captures).
        box_mu: ``(n, 2)`` where the Si would be seen after the step without a hop (image
            captures: a step whose Si leaves the central box is re-centred and dropped).
        dwell_s: ``(n,)`` dwell.
        cos: ``(n,)`` cosine of the lattice angle that puts neighbour 0 where it was seen.
        sin: ``(n,)`` its sine.
        nbrs: ``(n, 3, 2)`` neighbour offsets before the dwell (exact lattice vectors).
        outcome: ``(n,)`` outcome code (``STAY`` ... ``MULTI``).
        hop: ``(n,)`` neighbour hopped to (0-2), or -1.
        drift_df: Per episode, ``(m, 2)`` view-centre changes of the steps without re-centring.
        drift_t: Per episode, ``(m,)`` their elapsed times.
        loc_r: Per episode, ``(m, 2)`` the Si's measured displacement over each step read as
            "no hop", less the episode's drift (image captures; empty on ``sim`` captures).
        loc_t: Per episode, ``(m,)`` their elapsed times.
        dropped: Steps left out, by reason.
    """

    dataset: np.ndarray
    episode: np.ndarray
    offset: np.ndarray
    lead_s: np.ndarray
    box_mu: np.ndarray
    dwell_s: np.ndarray
    cos: np.ndarray
    sin: np.ndarray
    nbrs: np.ndarray
    outcome: np.ndarray
    hop: np.ndarray
    drift_df: list[np.ndarray]
    drift_t: list[np.ndarray]
    loc_r: list[np.ndarray]
    loc_t: list[np.ndarray]
    dropped: dict[str, int]

    @property
    def n_episodes(self) -> int:
        """Episodes read."""
        return len(self.drift_t)

    def select(self, episodes: np.ndarray) -> StemSteps:
        """The steps of ``episodes`` (global indices, repeats allowed), renumbered 0..k-1."""
        rows, new_ep = [], []
        by_ep: dict[int, np.ndarray] = {}
        for e in np.unique(episodes):
            by_ep[int(e)] = np.flatnonzero(self.episode == e)
        for j, e in enumerate(episodes):
            r = by_ep[int(e)]
            rows.append(r)
            new_ep.append(np.full(r.size, j, dtype=np.int64))
        idx = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
        return StemSteps(
            dataset=self.dataset[idx],
            episode=np.concatenate(new_ep) if new_ep else np.zeros(0, dtype=np.int64),
            offset=self.offset[idx],
            lead_s=self.lead_s[idx],
            box_mu=self.box_mu[idx],
            dwell_s=self.dwell_s[idx],
            cos=self.cos[idx],
            sin=self.sin[idx],
            nbrs=self.nbrs[idx],
            outcome=self.outcome[idx],
            hop=self.hop[idx],
            drift_df=[self.drift_df[int(e)] for e in episodes],
            drift_t=[self.drift_t[int(e)] for e in episodes],
            loc_r=[self.loc_r[int(e)] for e in episodes],
            loc_t=[self.loc_t[int(e)] for e in episodes],
            dropped=dict(self.dropped),
        )


@dataclasses.dataclass(frozen=True)
class Settings:
    """What the instrument was set to in one capture (known to its user), and its config."""

    cfg: StemConfig
    settle_s: float
    frame_s: float
    drift_resolution_angstrom: float
    beam_energy_kev: float
    from_images: bool = False


# --- reading captures ---------------------------------------------------------------------------
def settings_of(dataset: Any) -> Settings:
    """The recorded config of a STEM capture and the timing the fit needs.

    Raises:
        ValueError: Not a STEM capture, or per-episode randomisation of the rate model
            (the fit assumes one device, fixed physics).
    """
    tl = dataset.metadata.get("twinloop") or {}
    raw = tl.get("env_config")
    meta = tl.get("env_metadata") or {}
    if meta.get("system") != "stem" or not isinstance(raw, dict):
        raise ValueError(f"{dataset.path} is not a STEM capture (no STEM metadata and config)")
    cfg = from_dict(StemConfig, raw)
    ph = cfg.physics
    if ph.cross_section_log_sd or ph.probe_fwhm_rel_sd or ph.optimum_offset_sd_angstrom:
        raise ValueError(
            f"{dataset.path}: captured with per-episode randomisation of the rate model "
            "(cross_section_log_sd, probe_fwhm_rel_sd or optimum_offset_sd_angstrom > 0); a "
            "device has one set of physics: capture with those at 0"
        )
    mi = cfg.microscope
    kind = (tl.get("backend") or {}).get("kind", "sim")
    return Settings(
        cfg=cfg,
        settle_s=mi.beam_settle_s,
        frame_s=mi.frame_time_s,
        drift_resolution_angstrom=mi.drift_resolution_angstrom,
        beam_energy_kev=ph.beam_energy_kev,
        from_images=kind != "sim",
    )


def _field(obs: np.ndarray, layout: dict[str, Any], name: str) -> np.ndarray:
    entry = layout[name]
    part = obs[:, entry["start"] : entry["stop"]].astype(np.float64)
    return part.reshape(obs.shape[0], *entry["shape"])


def snap_to_lattice(g: np.ndarray, nbrs: np.ndarray) -> np.ndarray:
    """The lattice vector nearest each ``g``, on the lattice of an Si with neighbours ``nbrs``.

    Sites relative to the Si are ``m u + l w`` (its own sublattice, ``u = b0 - b1``,
    ``w = b0 - b2``) and ``b0 + m u + l w`` (the other); localisation noise of a few hundredths
    of an angstrom leaves the rounding exact.

    Args:
        g: ``(n, 2)`` noisy vectors (A).
        nbrs: ``(n, 3, 2)`` neighbour offsets ``b_k`` (A).
    """
    u = nbrs[:, 0] - nbrs[:, 1]
    w = nbrs[:, 0] - nbrs[:, 2]
    det = u[:, 0] * w[:, 1] - u[:, 1] * w[:, 0]
    best = np.full(g.shape, np.nan)
    best_d = np.full(g.shape[0], np.inf)
    for shift in (np.zeros_like(g), nbrs[:, 0]):
        r = g - shift
        a = np.rint((r[:, 0] * w[:, 1] - r[:, 1] * w[:, 0]) / det)
        b = np.rint((u[:, 0] * r[:, 1] - u[:, 1] * r[:, 0]) / det)
        cand = shift + a[:, None] * u + b[:, None] * w
        d = np.linalg.norm(cand - g, axis=1)
        better = d < best_d
        best[better] = cand[better]
        best_d[better] = d[better]
    return best


def read_episode(
    obs: np.ndarray,
    command: np.ndarray,
    failure: np.ndarray,
    elapsed: np.ndarray,
    layout: dict[str, Any],
    settings: Settings,
) -> dict[str, Any]:
    """Turn one recorded episode into steps for the rate likelihood and drift data.

    Args:
        obs: ``(T + 1, D)`` observations.
        command: ``(T, 3)`` applied commands: probe x, y in the view (A), dwell (s).
        failure: ``(T,)`` failure code after each step.
        elapsed: ``(T,)`` microscope time of each step (s).
        layout: The env's observation layout (metadata).
        settings: The capture's settings.

    Returns:
        A dict of per-step arrays (``offset``, ``dwell_s``, ``nbrs``, ``outcome``, ``hop``,
        ``cos``, ``sin``, ``recentred``) and the drift data ``df`` (view-centre changes) and
        ``t`` (their elapsed times), plus ``dropped`` counts.
    """
    n = command.shape[0]
    if obs.shape[0] != n + 1:
        raise ValueError(
            f"an episode has one more observation than commands: got {obs.shape[0]} for {n}"
        )
    if settings.from_images:
        return read_image_episode(obs, command, failure, elapsed, layout, settings)
    s = _field(obs, layout, "si_position_angstrom")
    g = _field(obs, layout, "goal_offset_angstrom")
    nb = _field(obs, layout, "neighbor_offsets_angstrom")
    d = snap_to_lattice(g, nb)  # G - S, exact
    true_si = s - d + g  # s - n, with n = d - g
    view = -(g + s)  # F - G: the view centre up to a constant
    before, after = slice(0, n), slice(1, n + 1)
    disp = d[before] - d[after]  # S_after - S_before
    nbr = nb[before]
    dist_k = np.linalg.norm(disp[:, None, :] - nbr, axis=-1)
    k = dist_k.argmin(axis=1)
    one_hop = dist_k[np.arange(n), k] < 0.5 * BOND_ANGSTROM
    stay = np.linalg.norm(disp, axis=1) < 0.5 * BOND_ANGSTROM
    outcome = np.full(n, -1, dtype=np.int64)
    drop: dict[str, int] = {"out_of_view_or_ambiguous": 0, "failure_after_several_hops": 0}
    f = failure.astype(np.int64)
    ok, ko, lost, edge = f == K.OK, f == K.KNOCKOUT, f == K.LOST, f == K.EDGE
    outcome[ok & stay] = STAY
    outcome[ok & one_hop] = HOP
    outcome[ok & ~stay & ~one_hop] = MULTI
    outcome[edge & one_hop] = EDGE_HOP
    outcome[edge & ~one_hop & ~stay] = MULTI
    outcome[ko & stay] = KO_STAY
    outcome[ko & one_hop] = KO_HOP
    outcome[lost & stay] = LOST_STAY
    outcome[lost & one_hop] = LOST_HOP
    drop["out_of_view_or_ambiguous"] = int(((f == K.OUT_OF_VIEW) | (f == K.AMBIGUOUS)).sum())
    drop["failure_after_several_hops"] = int(((ko | lost) & ~stay & ~one_hop).sum())
    dwell = command[:, 2].astype(np.float64)
    expected_t = settings.settle_s + dwell + settings.frame_s
    recentred = np.abs(elapsed - expected_t) > 1e-6 * np.maximum(1.0, expected_t)
    drift_ok = ~recentred & (f != K.OUT_OF_VIEW) & (f != K.AMBIGUOUS)
    keep = outcome >= 0
    angle = np.arctan2(nbr[:, 0, 1], nbr[:, 0, 0]) - math.pi / 6.0  # bond_unit(0, s=0) at 30 deg
    return {
        "offset": (command[:, :2] - true_si[before])[keep],
        "lead_s": np.zeros(int(keep.sum())),
        "box_mu": np.zeros((int(keep.sum()), 2)),
        "step": np.flatnonzero(keep),
        "dwell_s": dwell[keep],
        "nbrs": nbr[keep],
        "outcome": outcome[keep],
        "hop": np.where(one_hop, k, -1)[keep],
        "cos": np.cos(angle)[keep],
        "sin": np.sin(angle)[keep],
        "df": (view[after] - view[before])[drift_ok],
        "t": elapsed[drift_ok].astype(np.float64),
        "loc_r": np.zeros((0, 2)),
        "loc_t": np.zeros(0),
        "dropped": drop,
    }


#: Largest misfit (A) of a step of an image capture to a lattice vector (Si displacement
#: read from the frames and the drift line) or of its view-centre change to the one the
#: displacement implies. Alignment slips jump to another lattice match, >= ~0.7 A away;
#: localisation (two frames, ~0.1 A each) and drift diffusion over a step stay near 0.2 A.
IMAGE_TOLERANCE_ANGSTROM = 0.5


def kernel_order(nbrs: np.ndarray) -> np.ndarray:
    """Neighbour offsets reordered as the kernel numbers an Si's bonds.

    The kernel's bond ``k`` of an Si on sublattice 0 points at ``30 + 120 k`` degrees from the
    lattice angle (:func:`twinloop.sim.stem.kernel.bond_unit`); the fit takes the lattice
    angle from neighbour 0, so neighbours 1 and 2 must follow at +120 and +240 degrees.
    Perception lists them in another order on about half of the frames; read as they come, a
    hop towards one neighbour was scored with the other one's rate.

    Args:
        nbrs: ``(n, 3, 2)`` neighbour offsets, neighbour 0 first.
    """
    a0 = np.arctan2(nbrs[:, 0, 1], nbrs[:, 0, 0])
    want1 = np.stack([np.cos(a0 + 2.0 * math.pi / 3.0), np.sin(a0 + 2.0 * math.pi / 3.0)], -1)
    swap = (nbrs[:, 2] * want1).sum(-1) > (nbrs[:, 1] * want1).sum(-1)
    out = nbrs.copy()
    out[swap, 1], out[swap, 2] = nbrs[swap, 2], nbrs[swap, 1]
    return out


def read_image_episode(
    obs: np.ndarray,
    command: np.ndarray,
    failure: np.ndarray,
    elapsed: np.ndarray,
    layout: dict[str, Any],
    settings: Settings,
) -> dict[str, Any]:
    """:func:`read_episode` for captures whose measurements come from frames.

    An image backend (``sim-image``, ``remote`` twins, ``nion``) tracks the view centre by
    aligning each frame to the previous one, so the goal offset carries the alignment's
    errors and, when the sample drifted by more than ~0.7 A since the last frame, a slip to
    another lattice match that persists (a twin at 0.05 A/s slips on ~10 % of the steps): the
    exact snapping of :func:`read_episode` then reads phantom hops and wrong beam offsets.
    Here nothing depends on the view estimate:

    * the beam offset is the command minus the Si measured in the frame before the dwell;
    * the episode's drift velocity ``v`` comes from the Si's own motion in the view (most
      steps are no hop: the median of ``-ds / T``, then refined on the steps read);
    * the Si's displacement over a step is ``ds + v T`` snapped to the lattice of the
      measured neighbours; a step whose ``ds + v T`` is no lattice vector (within
      :data:`IMAGE_TOLERANCE_ANGSTROM`) is dropped as ambiguous;
    * the drift data are the view-centre changes of the steps whose change agrees with the
      one the displacement implies (others are alignment slips, dropped from the drift only).

    Re-centred steps are dropped (the Si's position before the shift is not recorded, so the
    alignment across the shift cannot be checked), and so are steps that follow a frame
    without the Si. A failed step reports the last good Si, so whether it hopped first is
    unknown: its outcome is "knock-out (or loss), hop or not". An edge reported by a frame is
    dropped too: it cannot tell which neighbour was reached, and on small frames (64 px) the
    perception reports edges that are not there (a twin without holes: ~5 % of the steps).
    """
    n = command.shape[0]
    s = _field(obs, layout, "si_position_angstrom")
    g = _field(obs, layout, "goal_offset_angstrom")
    nb = kernel_order(_field(obs, layout, "neighbor_offsets_angstrom"))
    view = -(g + s)  # estimated view centre minus the goal
    before, after = slice(0, n), slice(1, n + 1)
    f = failure.astype(np.int64)
    ok, ko, lost, edge = f == K.OK, f == K.KNOCKOUT, f == K.LOST, f == K.EDGE
    unseen = (f == K.OUT_OF_VIEW) | (f == K.AMBIGUOUS)
    dwell = command[:, 2].astype(np.float64)
    t = elapsed.astype(np.float64)
    expected_t = settings.settle_s + dwell + settings.frame_s
    recentred = np.abs(t - expected_t) > 1e-6 * np.maximum(1.0, expected_t)
    seen_before = np.concatenate([[True], ok[:-1]])  # a failed frame keeps the last good Si
    ds = s[after] - s[before]
    nbr = nb[before]
    usable = ~recentred & seen_before & ~unseen & (t > 0)
    tracked = usable & ok  # the Si was seen after the step too
    v = np.zeros(2)
    if tracked.any():
        v = np.median(-ds[tracked] / t[tracked, None], axis=0)
    for _ in range(3):  # classify with v, refit v on the steps read
        pred = ds + v * t[:, None]
        snapped = snap_to_lattice(pred, nbr)
        fits = tracked & (np.linalg.norm(pred - snapped, axis=1) < IMAGE_TOLERANCE_ANGSTROM)
        if not fits.any():
            break
        v = (snapped[fits] - ds[fits]).sum(axis=0) / t[fits].sum()
    pred = ds + v * t[:, None]
    snapped = snap_to_lattice(pred, nbr)
    on_lattice = np.linalg.norm(pred - snapped, axis=1) < IMAGE_TOLERANCE_ANGSTROM
    dist_k = np.linalg.norm(snapped[:, None, :] - nbr, axis=-1)
    k = dist_k.argmin(axis=1)
    one_hop = dist_k[np.arange(n), k] < 0.5 * BOND_ANGSTROM
    stay = np.linalg.norm(snapped, axis=1) < 0.5 * BOND_ANGSTROM
    outcome = np.full(n, -1, dtype=np.int64)
    outcome[ok & on_lattice & stay] = STAY
    outcome[ok & on_lattice & one_hop] = HOP
    outcome[ok & on_lattice & ~stay & ~one_hop] = MULTI
    outcome[ko] = KO_ANY
    outcome[lost] = LOST_ANY
    df = view[after] - view[before]
    slip = np.linalg.norm(df - (snapped - ds), axis=1) > IMAGE_TOLERANCE_ANGSTROM
    drift_ok = tracked & ~slip  # not on_lattice: that would truncate the diffusion
    keep = usable & (outcome >= 0)
    drop = {
        "out_of_view_or_ambiguous": int(unseen.sum()),
        "edge_in_frame": int((edge & usable).sum()),
        "recentred_image_capture": int((recentred & ~unseen).sum()),
        "si_not_seen_before": int((~seen_before & ~recentred & ~unseen).sum()),
        "off_lattice_displacement": int((tracked & ~on_lattice).sum()),
        "alignment_slip_drift_only": int((tracked & slip).sum()),
    }
    angle = np.arctan2(nbr[:, 0, 1], nbr[:, 0, 0]) - math.pi / 6.0
    # the frame is scanned bottom row first (row 0 at the smallest y, as the perception reads
    # it): the Si was seen when the scan passed its row, and the view drifts on until the
    # frame's end, after which the probe is parked
    fov = settings.cfg.microscope.fov_angstrom
    lead = settings.frame_s * np.clip(0.5 - s[before, 1] / fov, 0.0, 1.0)
    still = tracked & on_lattice & stay  # localisation: two frames' errors plus diffusion
    return {
        "offset": (command[:, :2] - s[before])[keep],
        "lead_s": lead[keep],
        "box_mu": (s[before] - v * t[:, None])[keep],
        "step": np.flatnonzero(keep),
        "dwell_s": dwell[keep],
        "nbrs": nbr[keep],
        "outcome": outcome[keep],
        "hop": np.where(one_hop & ok, k, -1)[keep],
        "cos": np.cos(angle)[keep],
        "sin": np.sin(angle)[keep],
        "df": df[drift_ok],
        "t": t[drift_ok],
        "loc_r": pred[still],
        "loc_t": t[still],
        "dropped": drop,
    }


def read_captures(
    datasets: Sequence[Any], max_episodes: int | None = None
) -> tuple[StemSteps, list[Settings]]:
    """Every step of every episode (the first ``max_episodes`` only, if given)."""
    settings = [settings_of(ds) for ds in datasets]
    parts: list[dict[str, Any]] = []
    ds_index: list[int] = []
    for j, ds in enumerate(datasets):
        layout = ds.metadata["twinloop"]["env_metadata"]["observation_layout"]
        for ep in ds.iterate_episodes():
            if max_episodes is not None and len(parts) >= max_episodes:
                break
            if len(ep) == 0:
                continue
            infos = ep.infos
            for key in ("applied_command", "failure", "elapsed_s"):
                if key not in infos:
                    raise ValueError(f"{ds.path}: episodes have no {key!r} info; cannot fit")
            parts.append(
                read_episode(
                    np.asarray(ep.observations),
                    np.asarray(infos["applied_command"])[1:],
                    np.asarray(infos["failure"])[1:],
                    np.asarray(infos["elapsed_s"])[1:],
                    layout,
                    settings[j],
                )
            )
            ds_index.append(j)
    if not parts:
        raise ValueError("the captures hold no episodes with steps: record some first")
    dropped: dict[str, int] = {}
    for p in parts:
        for key, v in p["dropped"].items():
            dropped[key] = dropped.get(key, 0) + v

    def cat(key: str) -> np.ndarray:
        return np.concatenate([p[key] for p in parts])

    steps = StemSteps(
        dataset=np.concatenate(
            [
                np.full(p["dwell_s"].size, j, dtype=np.int64)
                for p, j in zip(parts, ds_index, strict=True)
            ]
        ),
        episode=np.concatenate(
            [np.full(p["dwell_s"].size, e, dtype=np.int64) for e, p in enumerate(parts)]
        ),
        offset=cat("offset"),
        lead_s=cat("lead_s"),
        box_mu=cat("box_mu"),
        dwell_s=cat("dwell_s"),
        cos=cat("cos"),
        sin=cat("sin"),
        nbrs=cat("nbrs"),
        outcome=cat("outcome"),
        hop=cat("hop"),
        drift_df=[p["df"] for p in parts],
        drift_t=[p["t"] for p in parts],
        loc_r=[p["loc_r"] for p in parts],
        loc_t=[p["loc_t"] for p in parts],
        dropped=dropped,
    )
    return steps, settings


# --- drift --------------------------------------------------------------------------------------
@dataclasses.dataclass
class DriftFit:
    """Per-episode drift velocities and the drift parameters with intervals."""

    velocity: np.ndarray  # (n_episodes, 2), zero where an episode gave no estimate
    diffusion: tuple[float, float, float]  # estimate, low, high (A^2/s)
    speed_max: tuple[float, float, float]  # estimate, low, high (A/s)
    n_episodes: int  # episodes with a velocity estimate
    dof: int  # degrees of freedom of the diffusion estimate
    ss: float  # sum of squared scaled residuals (2 D chi2_dof)
    speeds: np.ndarray  # speeds of the episodes with an estimate
    speed_sd: np.ndarray  # their noise


def fit_drift(steps: StemSteps) -> DriftFit:
    """Velocity per episode, diffusion (chi-square interval), top speed (pivot interval)."""
    from scipy.stats import chi2

    n_ep = steps.n_episodes
    vel = np.zeros((n_ep, 2))
    has = np.zeros(n_ep, dtype=bool)
    total_t = np.zeros(n_ep)
    ss, dof = 0.0, 0
    for e in range(n_ep):
        df, t = steps.drift_df[e], steps.drift_t[e]
        if t.size == 0:
            continue
        v = df.sum(axis=0) / t.sum()
        vel[e], has[e], total_t[e] = v, True, t.sum()
        r = df - v * t[:, None]
        ss += float((r**2 / t[:, None]).sum())
        dof += 2 * (t.size - 1)
    nan3 = (math.nan, math.nan, math.nan)
    diffusion = nan3
    if dof > 0:
        diffusion = (
            ss / (2.0 * dof),
            ss / (2.0 * chi2.ppf(0.975, dof)),
            ss / (2.0 * chi2.ppf(0.025, dof)),
        )
    speeds = np.linalg.norm(vel[has], axis=1)
    d_hat = diffusion[0] if math.isfinite(diffusion[0]) else 0.0
    speed_sd = np.sqrt(2.0 * d_hat / total_t[has])
    speed_max = nan3
    m = int(has.sum())
    if m >= MIN_DRIFT_EPISODES:
        top = int(np.argmax(speeds))
        big, noise = float(speeds[top]), 2.0 * float(speed_sd[top])
        speed_max = (
            big * (m + 1) / m,
            max(big - noise, 0.0) / 0.975 ** (1.0 / m),
            (big + noise) / 0.025 ** (1.0 / m),
        )
    return DriftFit(vel, diffusion, speed_max, m, dof, ss, speeds, speed_sd)


# --- the beam offset's error on image captures --------------------------------------------------
@dataclasses.dataclass
class BlurFit:
    """Per capture, the error of the beam offsets read from frames (image captures only).

    Attributes:
        sd: ``(n_datasets,)`` sd per axis of the Gaussian error of a beam offset (A); 0 for a
            ``sim`` capture (its offsets are exact).
        localisation_sd: ``(n_datasets,)`` the frames' own part of it (A; NaN for ``sim``).
        n_still: ``(n_datasets,)`` steps read as "no hop" that measured the localisation.
        diffusion: The drift's diffusion used (A^2/s).
    """

    sd: np.ndarray
    localisation_sd: np.ndarray
    n_still: np.ndarray
    diffusion: float = 0.0


def fit_blur(steps: StemSteps, settings: Sequence[Settings], diffusion: float) -> BlurFit:
    """The error of the beam offsets of each image capture (see the module doc).

    Over a step read as "no hop" the Si's measured displacement less the drift is the
    difference of two frames' localisation errors plus the random walk over the step, so per
    axis ``E r^2 = 2 s_loc^2 + 2 D t``; with ``D`` from the drift fit,
    ``s_loc^2 = max(0, mean(|r|^2 / 2 - 2 D t) / 2)``. Between the frame that measured the Si
    and the dwell the view walks on for the rest of the frame and the beam's settle (the
    twin applies a frame's walk after its scan: ``frame_s + settle_s``), so a beam offset's
    error has ``s^2 = s_loc^2 + 2 D (frame_s + settle_s)`` per axis.

    Args:
        steps: The captured steps.
        settings: Each capture's settings.
        diffusion: The drift's diffusion ``D`` (A^2/s; NaN: taken as 0, so the walk over
            the stills is counted as localisation).
    """
    n_ds = len(settings)
    d = diffusion if math.isfinite(diffusion) else 0.0
    ep_ds = np.full(steps.n_episodes, -1, dtype=np.int64)
    ep_ds[steps.episode] = steps.dataset
    sd, loc, n_still = np.zeros(n_ds), np.full(n_ds, math.nan), np.zeros(n_ds, dtype=np.int64)
    for j, st in enumerate(settings):
        if not st.from_images:
            continue
        eps = np.flatnonzero(ep_ds == j)
        r = np.concatenate([steps.loc_r[e] for e in eps] or [np.zeros((0, 2))])
        t = np.concatenate([steps.loc_t[e] for e in eps] or [np.zeros(0)])
        n_still[j] = t.size
        s2 = 0.0
        if t.size:
            s2 = max(0.0, float(np.mean(0.5 * (r**2).sum(axis=1) - 2.0 * d * t)) / 2.0)
        loc[j] = math.sqrt(s2)
        sd[j] = math.sqrt(s2 + 2.0 * d * (st.frame_s + st.settle_s))
    return BlurFit(sd, loc, n_still, d)


# --- the rate likelihood ------------------------------------------------------------------------
@njit(inline="always")
def _between(a: float, c: float, dt: float) -> float:
    """``int_0^dt exp(-a s) exp(-c (dt - s)) ds``, stable for ``a`` near ``c``."""
    x = (a - c) * dt
    if abs(x) < 1e-9:
        return dt * math.exp(-a * dt)
    return math.exp(-c * dt) * (-math.expm1(-x)) / (a - c)


@njit(inline="always")
def _first(a: float, dt: float) -> float:
    """``int_0^dt exp(-a s) ds``."""
    if a * dt < 1e-12:
        return dt
    return -math.expm1(-a * dt) / a


#: A degree-5 cubature of the standard bivariate normal (Stroud's 7-point rule): the centre
#: with weight 1/2 and six points at radius 2 every 60 degrees with weight 1/12 each. It
#: integrates every polynomial of degree <= 5 exactly; the beam-offset error it averages over
#: (~0.1 A) is a quarter of the rate profile's width, so the next term is ~(1/4)^6 of it.
BLUR_NODES = np.array(
    [[0.0, 0.0]]
    + [[2.0 * math.cos(k * math.pi / 3.0), 2.0 * math.sin(k * math.pi / 3.0)] for k in range(6)]
)
BLUR_WEIGHTS = np.array([0.5] + [1.0 / 12.0] * 6)


@njit
def _step_prob(
    f: np.ndarray,
    ox: float,
    oy: float,
    vx: float,
    vy: float,
    lead: float,
    dwell: float,
    nbrs: np.ndarray,
    o: int,
    k: int,
    settle: float,
    frame: float,
    res: float,
    box: np.ndarray,
) -> tuple[float, float]:
    """Probability of one step's outcome ``o`` (hop to ``k``) with the beam offset ``ox, oy``.

    Also the probability that the step is kept (1 unless ``box[3] > 0``): an image capture
    drops a step whose Si, seen after it, left the central box of half-width ``box[3]``
    (re-centred); ``box[:2]`` is where the Si would be seen without a hop, ``box[2]`` the sd
    of that per axis. Every failure is kept (the view is not re-centred on one).
    """
    lam0 = np.empty(3)
    ko, loss = f[K.F_KO], f[K.F_LOSS]
    e_all = 1.0 + ko + loss
    speed = math.sqrt(vx * vx + vy * vy)
    n_pieces = 1 + int(min(speed * dwell / res, 1000.0))
    dt = dwell / n_pieces
    t0 = lead + settle
    h0 = 0.0  # cumulative hazard of any event at the start site (x e_all)
    first = np.zeros(3)  # P(first event is a hop to k)
    single = np.zeros(3)  # P(hop to k, then nothing)
    # hazards at the new site over the remaining pieces: computed back to front
    after = np.zeros((n_pieces + 1, 3))
    for p in range(n_pieces - 1, -1, -1):
        bx = ox + vx * (t0 + (p + 0.5) * dt)
        by = oy + vy * (t0 + (p + 0.5) * dt)
        for q in range(3):
            tot = 0.0
            for r in range(3):
                tot += K.neighbor_rate(r, nbrs[q, 0], nbrs[q, 1], 1, bx, by, f)
            after[p, q] = after[p + 1, q] + e_all * tot * dt
    r_img = f[K.F_IMG_RATE]
    a_img = 3.0 * e_all * r_img
    img_surv = math.exp(-a_img * frame)
    for p in range(n_pieces):
        bx = ox + vx * (t0 + (p + 0.5) * dt)
        by = oy + vy * (t0 + (p + 0.5) * dt)
        total = 0.0
        for q in range(3):
            lam0[q] = K.neighbor_rate(q, 0.0, 0.0, 0, bx, by, f)
            total += lam0[q]
        a = e_all * total
        pre = math.exp(-h0)
        for q in range(3):
            c = (after[p, q] - after[p + 1, q]) / dt
            first[q] += pre * lam0[q] * _first(a, dt)
            single[q] += pre * lam0[q] * _between(a, c, dt) * math.exp(-after[p + 1, q])
        h0 += a * dt
    surv_dwell = math.exp(-h0)
    for q in range(3):
        single[q] *= img_surv
        first[q] += surv_dwell * r_img * _first(a_img, frame)
        single[q] += surv_dwell * r_img * frame * img_surv
    p_stay = surv_dwell * img_surv
    hop_then = first[0] + first[1] + first[2] - single[0] - single[1] - single[2]
    kept = 1.0
    if box[3] > 0.0:  # several hops: taken to land where no hop would
        still = _in_box(box[0], box[1], box[2], box[3])
        kept = (ko + loss) / e_all * (1.0 - p_stay + hop_then)
        kept += (p_stay + hop_then / e_all) * still
        for q in range(3):
            kept += single[q] * _in_box(box[0] + nbrs[q, 0], box[1] + nbrs[q, 1], box[2], box[3])
    if o == STAY:
        prob = p_stay
    elif o == HOP:
        prob = single[k]
    elif o == EDGE_HOP:
        prob = first[k]
    elif o == KO_STAY:
        prob = ko / e_all * (1.0 - p_stay)
    elif o == KO_HOP:
        prob = ko / e_all * (first[k] - single[k])
    elif o == LOST_STAY:
        prob = loss / e_all * (1.0 - p_stay)
    elif o == LOST_HOP:
        prob = loss / e_all * (first[k] - single[k])
    elif o in (KO_ANY, LOST_ANY):
        prob = (ko if o == KO_ANY else loss) / e_all * (1.0 - p_stay + hop_then)
    else:  # MULTI
        prob = hop_then / e_all
    return prob, kept


@njit(inline="always")
def _in_box(x: float, y: float, sd: float, half: float) -> float:
    """P(|x + e| <= half and |y + e'| <= half) for independent ``e, e' ~ N(0, sd^2)``."""
    z = 1.0 / (math.sqrt(2.0) * max(sd, 1e-9))
    px = 0.5 * (math.erf((half - x) * z) + math.erf((half + x) * z))
    py = 0.5 * (math.erf((half - y) * z) + math.erf((half + y) * z))
    return px * py


@njit
def step_loglik(
    rows: np.ndarray,
    dataset: np.ndarray,
    offset: np.ndarray,
    velocity: np.ndarray,
    episode: np.ndarray,
    lead_s: np.ndarray,
    blur_sd: np.ndarray,
    box: np.ndarray,
    dwell_s: np.ndarray,
    cos: np.ndarray,
    sin: np.ndarray,
    nbrs: np.ndarray,
    outcome: np.ndarray,
    hop: np.ndarray,
    timing: np.ndarray,
    out: np.ndarray,
) -> None:
    """Log-likelihood of each step's outcome into ``out`` (see the module doc).

    Args:
        rows: ``(n_datasets, N_F)`` rate rows (``kernel.reset`` of the candidate physics).
        dataset: ``(n,)`` dataset of each step.
        offset: ``(n, 2)`` beam minus Si when the Si was measured (A).
        velocity: ``(n_episodes, 2)`` drift velocity of each episode (A/s).
        episode: ``(n,)`` episode of each step.
        lead_s: ``(n,)`` time from the Si's measurement to the end of its frame (s).
        blur_sd: ``(n,)`` sd per axis of the Gaussian error of ``offset`` (A): the step's
            likelihood is averaged over it (:data:`BLUR_NODES`); 0 takes ``offset`` as exact.
        box: ``(n, 4)`` the re-centring box of image captures (see :func:`_step_prob`): the
            likelihood is conditional on the step being kept; ``box[:, 3] = 0``: no box.
        dwell_s: ``(n,)`` dwell.
        cos: ``(n,)`` lattice cosine (neighbour 0 as measured, sublattice 0).
        sin: ``(n,)`` lattice sine.
        nbrs: ``(n, 3, 2)`` neighbour offsets.
        outcome: ``(n,)`` outcome code.
        hop: ``(n,)`` neighbour hopped to, or -1.
        timing: ``(n_datasets, 3)`` settle (s), frame (s), drift resolution (A).
        out: ``(n,)`` output.
    """
    f = np.empty(rows.shape[1])
    for i in range(outcome.size):
        j = dataset[i]
        f[:] = rows[j]
        f[K.F_COS] = cos[i]
        f[K.F_SIN] = sin[i]
        vx, vy = velocity[episode[i], 0], velocity[episode[i], 1]
        settle, frame, res = timing[j, 0], timing[j, 1], timing[j, 2]
        sd = blur_sd[i]
        n_nodes = BLUR_WEIGHTS.size if sd > 0.0 else 1
        prob, kept = 0.0, 0.0
        for q in range(n_nodes):
            w = BLUR_WEIGHTS[q] if sd > 0.0 else 1.0
            p_o, p_kept = _step_prob(
                f,
                offset[i, 0] + sd * BLUR_NODES[q, 0],
                offset[i, 1] + sd * BLUR_NODES[q, 1],
                vx,
                vy,
                lead_s[i],
                dwell_s[i],
                nbrs[i],
                outcome[i],
                hop[i],
                settle,
                frame,
                res,
                box[i],
            )
            prob += w * p_o
            kept += w * p_kept
        out[i] = math.log(max(prob, 1e-300)) - math.log(max(kept, 1e-300))


# --- parameters ---------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Free:
    """A fitted parameter: its path, whether it is fitted on a log scale, its bounds."""

    path: str
    log: bool
    low: float
    high: float

    def to_u(self, x: float) -> float:
        return math.log(x) if self.log else x

    def from_u(self, u: np.ndarray | float) -> Any:
        return np.exp(u) if self.log else u


def _get(cfg: object, path: str) -> Any:
    for part in path.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _limits(cfg: object, path: str) -> tuple[float, float, str]:
    """Numeric limits and units of a config field (infinite where none is declared)."""
    *parents, name = path.split(".")
    section = cfg
    for part in parents:
        section = getattr(section, part)
    spec = None
    for f in dataclasses.fields(section):  # type: ignore[arg-type]
        if f.name == name:
            spec = field_param(f)
    if spec is None:
        return -math.inf, math.inf, ""
    (lo, lo_open), (hi, _) = spec.low, spec.high
    lo_v = float(lo) if isinstance(lo, int | float) else -math.inf
    hi_v = float(hi) if isinstance(hi, int | float) else math.inf
    if lo_open:
        lo_v = lo_v + 1e-9 * max(1.0, abs(lo_v))
    return lo_v, hi_v, spec.units


class RateModel:
    """The likelihood of the captured steps as a function of the device's rate parameters.

    Args:
        steps: The captured steps.
        settings: Each capture's settings.
        velocity: ``(n_episodes, 2)`` drift velocities.
        fixed: Dotted path -> value for parameters held fixed (not identified).
        blur: The error of each capture's beam offsets (:func:`fit_blur`); None: the
            offsets are exact and no step was dropped for its outcome.
    """

    def __init__(
        self,
        steps: StemSteps,
        settings: Sequence[Settings],
        velocity: np.ndarray,
        fixed: dict[str, float],
        blur: BlurFit | None = None,
    ) -> None:
        """Prepare the arrays and a scratch kernel state for building rate rows."""
        self.steps = steps
        self.settings = list(settings)
        self.velocity = np.ascontiguousarray(velocity, dtype=np.float64)
        self.fixed = dict(fixed)
        self.timing = np.array(
            [[s.settle_s, s.frame_s, s.drift_resolution_angstrom] for s in self.settings]
        )
        n = steps.outcome.size
        self.blur_sd = np.zeros(n)
        self.box = np.zeros((n, 4))
        if blur is not None:
            ds = steps.dataset
            self.blur_sd = np.ascontiguousarray(blur.sd[ds], dtype=np.float64)
            img = np.array([s.from_images for s in self.settings])[ds]
            half = np.array(
                [0.5 * s.cfg.microscope.recentre_fraction * s.cfg.microscope.fov_angstrom
                 for s in self.settings]
            )[ds]  # fmt: skip
            t = self.timing[ds, 0] + steps.dwell_s + self.timing[ds, 1]
            loc = np.nan_to_num(blur.localisation_sd[ds])
            self.box[:, :2] = steps.box_mu
            self.box[:, 2] = np.sqrt(2.0 * loc**2 + 2.0 * blur.diffusion * t)
            self.box[:, 3] = np.where(img, half, 0.0)
        self._state = K.new_state(1)
        self._rng = new_streams(1)
        self._out = np.zeros(steps.outcome.size)

    def rows(self, values: dict[str, float]) -> np.ndarray:
        """Rate rows of every capture with ``values`` applied over its config.

        Raises:
            ConfigError: A value outside its field's limits.
        """
        rows = np.zeros((len(self.settings), K.N_F))
        st = self._state
        for j, s in enumerate(self.settings):
            cfg = override(s.cfg, **{**self.fixed, **values})
            params = K.physics_params(cfg)
            K.reset(0, st.f, st.i, st.holes, params, self._rng, st.meas)
            rows[j] = st.f[0]
        return rows

    def loglik(self, values: dict[str, float], per_step: bool = False) -> Any:
        """Total log-likelihood (or per step) of the captures under ``values``."""
        s = self.steps
        step_loglik(
            self.rows(values),
            s.dataset,
            s.offset,
            self.velocity,
            s.episode,
            s.lead_s,
            self.blur_sd,
            self.box,
            s.dwell_s,
            s.cos,
            s.sin,
            s.nbrs,
            s.outcome,
            s.hop,
            self.timing,
            self._out,
        )
        return self._out.copy() if per_step else float(self._out.sum())


def _rate_paths(rate_model: str) -> tuple[tuple[str, bool], ...]:
    """The rate-shape parameters of the model the device runs (path, fitted on a log scale)."""
    if rate_model == "prior":
        return (
            ("physics.prior_optimum_bond_fraction", False),
            ("physics.prior_sigma_angstrom", True),
            ("physics.prior_peak_rate_per_s", True),
        )
    return (
        ("physics.optimum_offset_angstrom", False),
        ("physics.probe_fwhm_angstrom", True),
        ("physics.cross_section_barn_60kv", True),
    )


def plan(steps: StemSteps, settings: Sequence[Settings]) -> tuple[list[_Free], dict[str, str]]:
    """Which prior parameters these captures identify, and why the others are not.

    Returns:
        ``(free, reasons)``: the rate parameters to fit, and path -> reason for every prior
        parameter that is not fitted here (drift parameters are handled by
        :func:`fit_drift` and appear in neither).

    Raises:
        ValueError: Captures of different rate models, or too few hops for any rate fit.
    """
    models = {s.cfg.physics.rate_model for s in settings}
    if len(models) != 1:
        raise ValueError(
            f"the captures mix rate models {sorted(models)}: fit each model's captures apart"
        )
    model = models.pop()
    cfg0 = settings[0].cfg
    o = steps.outcome
    n_hops = int(np.isin(o, (HOP, EDGE_HOP, KO_HOP, LOST_HOP)).sum())
    if n_hops < MIN_HOPS:
        raise ValueError(
            f"only {n_hops} single hops in {o.size} usable steps: at least {MIN_HOPS} are "
            "needed to identify the rate model; capture more episodes, with the beam parked "
            "near the neighbours (random offsets within ~3 A, dwells of 1-20 s, as 'twinloop "
            "stem-rates capture' does)"
        )
    free: list[_Free] = []
    reasons: dict[str, str] = {}
    for path, log in _rate_paths(model):
        lo, hi, _ = _limits(cfg0, path)
        free.append(_Free(path, log, lo, hi))
    other = _rate_paths("physical" if model == "prior" else "prior")
    for path, _ in other:
        reasons[path] = f"the device runs the {model!r} rate model: this one has no effect"
    energies = sorted({round(s.beam_energy_kev, 6) for s in settings})
    n_ko = int(np.isin(o, (KO_STAY, KO_HOP, KO_ANY)).sum())
    n_lost = int(np.isin(o, (LOST_STAY, LOST_HOP, LOST_ANY)).sum())
    if len(energies) >= 2:
        free.append(
            _Free("physics.thermal_tail_ev", True, *_limits(cfg0, "physics.thermal_tail_ev")[:2])
        )
    else:
        reasons["physics.thermal_tail_ev"] = (
            f"captures at one beam energy ({energies[0]} kV): the energy dependence needs two "
            "or more (record at another --set beam_energy_kev=...)"
        )
    if n_ko >= MIN_EVENTS:
        free.append(
            _Free(
                "physics.knockout_ratio_60kv",
                True,
                *_limits(cfg0, "physics.knockout_ratio_60kv")[:2],
            )
        )
        ko_energies = {
            round(settings[j].beam_energy_kev, 6)
            for j in np.unique(steps.dataset[np.isin(o, (KO_STAY, KO_HOP, KO_ANY))])
        }
        if len(ko_energies) >= 2:
            free.append(
                _Free(
                    "physics.knockout_tail_ev", True, *_limits(cfg0, "physics.knockout_tail_ev")[:2]
                )
            )
        else:
            reasons["physics.knockout_tail_ev"] = (
                "knock-outs seen at one beam energy only: its energy dependence needs two or more"
            )
    else:
        reasons["physics.knockout_ratio_60kv"] = (
            f"{n_ko} knock-outs seen, {MIN_EVENTS} needed: capture more episodes"
        )
        reasons["physics.knockout_tail_ev"] = "needs the knock-out ratio first (too few knock-outs)"
    if n_lost >= MIN_EVENTS:
        free.append(_Free("physics.loss_ratio", True, *_limits(cfg0, "physics.loss_ratio")[:2]))
    else:
        reasons["physics.loss_ratio"] = (
            f"{n_lost} losses seen, {MIN_EVENTS} needed: capture more episodes (a loss is rare: "
            f"~{cfg0.physics.loss_ratio:g} per hop nominally)"
        )
    for prior in PRIORS:
        if prior.path.startswith("imaging."):
            reasons[prior.path] = (
                "a detector parameter: these captures hold measurements, not images"
            )
    if len(energies) == 1 and abs(energies[0] - 60.0) > 1e-6:
        note = (
            f"; captures at {energies[0]} kV only: fitted with the energy tail at its nominal "
            "value, so this is the 60 kV value that nominal tail implies"
        )
        reasons["_note_energy"] = note
    return free, reasons


def _minimize(model: RateModel, free: list[_Free], u0: np.ndarray) -> tuple[np.ndarray, float]:
    from scipy.optimize import minimize

    def values(u: np.ndarray) -> dict[str, float]:
        return {p.path: float(p.from_u(x)) for p, x in zip(free, u, strict=True)}

    def nll(u: np.ndarray) -> float:
        try:
            return -model.loglik(values(u))
        except ConfigError:
            return 1e300

    bounds = []
    for p in free:
        lo = p.to_u(p.low) if (not p.log or p.low > 0) else None
        hi = p.to_u(p.high) if math.isfinite(p.high) else None
        bounds.append((lo if lo is not None and math.isfinite(lo) else None, hi))
    res = minimize(nll, u0, method="L-BFGS-B", bounds=bounds, options={"maxiter": 500})
    u = np.asarray(res.x, dtype=np.float64)
    # polish: L-BFGS-B's finite differences stop early on flat directions
    res2 = minimize(nll, u, method="Nelder-Mead", options={"xatol": 1e-5, "fatol": 1e-4})
    if res2.fun < res.fun:
        u = np.asarray(res2.x, dtype=np.float64)
    return u, float(min(res.fun, res2.fun))


def _hessian(fun: Any, u: np.ndarray, step: float = 1e-3) -> np.ndarray:
    """Central-difference Hessian of ``fun`` at ``u``."""
    n = u.size
    h = np.zeros((n, n))
    f0 = fun(u)
    e = np.eye(n) * step
    for i in range(n):
        fp, fm = fun(u + e[i]), fun(u - e[i])
        h[i, i] = (fp - 2.0 * f0 + fm) / step**2
        for j in range(i):
            fpp = fun(u + e[i] + e[j])
            fpm = fun(u + e[i] - e[j])
            fmp = fun(u - e[i] + e[j])
            fmm = fun(u - e[i] - e[j])
            h[i, j] = h[j, i] = (fpp - fpm - fmp + fmm) / (4.0 * step**2)
    return h


def at_bounds(free: Sequence[_Free], u: np.ndarray, tol: float = 1e-4) -> np.ndarray:
    """Whether each fitted coordinate ``u`` sits at (within ``tol`` of) its parameter's bound.

    ``tol`` is in the fitted coordinate: relative for log-scale parameters, in the field's
    units otherwise.
    """
    out = np.zeros(len(free), dtype=bool)
    for k, p in enumerate(free):
        for bound in (p.low, p.high):
            if not math.isfinite(bound) or (p.log and bound <= 0):
                continue
            if abs(u[k] - p.to_u(bound)) <= tol * max(1.0, abs(p.to_u(bound))):
                out[k] = True
    return out


def _fmt_sd(sd: np.ndarray) -> str:
    """The image captures' offset errors, as ``0.095`` or ``0.09-0.11``."""
    vals = sd[sd > 0]
    if not vals.size:
        return "0"
    lo, hi = float(vals.min()), float(vals.max())
    return f"{lo:.2g}" if f"{lo:.2g}" == f"{hi:.2g}" else f"{lo:.2g}-{hi:.2g}"


def _fmt_bound(p: _Free, u: float) -> str:
    return f"{float(p.from_u(u)):.4g}"


def laplace_covariance(h: np.ndarray) -> tuple[np.ndarray, bool]:
    """The inverse of a Hessian ``h`` of a negative log-likelihood, and whether it is valid.

    Valid means finite and positive definite (every eigenvalue of the symmetrised ``h``
    above ``1e-12`` of the largest); otherwise the returned matrix is NaN.
    """
    h = 0.5 * (h + h.T)
    bad = np.full_like(h, np.nan)
    if h.size == 0 or not np.all(np.isfinite(h)):
        return bad, False
    eig = np.linalg.eigvalsh(h)
    if eig[0] <= 1e-12 * max(abs(eig[-1]), 1e-300):
        return bad, False
    cov = np.linalg.inv(h)
    if not np.all(np.isfinite(cov)) or np.any(np.diag(cov) <= 0):
        return bad, False
    return cov, True


def fit_stem(
    datasets: Sequence[Any],
    *,
    boot: int = 0,
    seed: int = 0,
    max_episodes: int | None = None,
    progress: Progress | None = None,
    n_samples: int = 2000,
) -> SysidResult:
    """Fit a STEM device's identifiable parameters to its captures (see the module doc).

    Args:
        datasets: Open STEM captures (:class:`twinloop.datasets.Dataset`), one device.
        boot: 0 for Laplace intervals, else the number of bootstrap resamples of episodes.
        seed: Seed of the samples and of the bootstrap.
        max_episodes: Use the first N episodes only.
        progress: ``progress(stage, done, total)``.
        n_samples: Posterior samples drawn from the Laplace approximation.

    Raises:
        ValueError: Too little data or inconsistent captures (the message says what to do).
    """
    steps, settings = read_captures(datasets, max_episodes)
    est, samples, paths, details = _fit_once(steps, settings, seed, n_samples, laplace=boot == 0)
    method = (
        "laplace: 95 % intervals from the inverse Hessian of the log-likelihood (log scale "
        "for positive parameters); drift: exact chi-square (diffusion) and pivot (top speed)"
    )
    if boot:
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0x5157,)))
        reps = []
        for b in range(boot):
            pick = rng.integers(0, steps.n_episodes, steps.n_episodes)
            sub = steps.select(pick)
            try:
                r, *_ = _fit_once(sub, settings, seed, 0, laplace=False, paths=paths)
                reps.append([r[p][0] for p in paths])
            except ValueError:
                continue  # a resample with too few events of some kind
            if progress:
                progress("bootstrap", b + 1, boot)
        if len(reps) < max(20, boot // 2):
            raise ValueError(
                f"only {len(reps)} of {boot} bootstrap resamples could be fitted: capture more "
                "episodes, or use Laplace intervals (--boot 0)"
            )
        samples = np.asarray(reps, dtype=np.float64)
        for k, p in enumerate(paths):
            if p.startswith("microscope.drift"):
                continue  # the exact drift intervals stand (a bootstrapped maximum is biased)
            lo, hi = np.nanpercentile(samples[:, k], [2.5, 97.5])
            est[p] = (est[p][0], float(lo), float(hi), f"bootstrap over episodes ({len(reps)})")
        method = f"bootstrap: percentile 95 % intervals of {len(reps)} refits on resampled episodes"
        details["bootstrap_fitted"] = len(reps)
    estimates = _estimates(settings[0].cfg, est, details.pop("reasons"))
    identified = {e.path for e in estimates if e.identified}
    keep = [k for k, p in enumerate(paths) if p in identified]
    if len(keep) < len(paths):  # samples only of what is reported as identified
        samples = samples[:, keep]
        paths = [paths[k] for k in keep]
    return SysidResult(
        env_id="",
        n_episodes=steps.n_episodes,
        n_transitions=int(steps.outcome.size),
        estimates=estimates,
        samples=samples,
        sample_paths=list(paths),
        method=method,
        details=details,
    )


def _fit_once(
    steps: StemSteps,
    settings: Sequence[Settings],
    seed: int,
    n_samples: int,
    *,
    laplace: bool,
    paths: Sequence[str] | None = None,
) -> tuple[dict[str, tuple[float, float, float, str]], np.ndarray, list[str], dict[str, Any]]:
    """One fit: estimates (path -> estimate, low, high, note), samples, their paths, details."""
    drift = fit_drift(steps)
    free, reasons = plan(steps, settings)
    if paths is not None:  # a bootstrap replicate must fit what the full data fitted
        want = set(paths)
        got = {p.path for p in free}
        missing = (
            want
            - got
            - {
                "microscope.drift_speed_max_angstrom_per_s",
                "microscope.drift_diffusion_angstrom2_per_s",
            }
        )
        if missing:
            raise ValueError(f"resample does not identify {sorted(missing)}")
    fixed: dict[str, float] = {}
    blur = fit_blur(steps, settings, drift.diffusion[0])
    model = RateModel(steps, settings, drift.velocity, fixed, blur)
    cfg0 = settings[0].cfg
    u0 = np.array([p.to_u(float(_get(cfg0, p.path))) for p in free])
    u, nll = _minimize(model, free, u0)
    est: dict[str, tuple[float, float, float, str]] = {}
    cols: list[np.ndarray] = []
    out_paths: list[str] = []
    # an optimum at a bound is no estimate: the data push past what the field allows
    stuck = at_bounds(free, u)
    for p in (p for p, s in zip(free, stuck, strict=True) if s):
        reasons[p.path] = (
            f"the fit ends at the bound {_fmt_bound(p, u[free.index(p)])} of the field's range: "
            "the captures do not constrain it (or the steps were misread; see the details)"
        )
    shape = {path for path, _ in _rate_paths(settings[0].cfg.physics.rate_model)}
    stuck_shape = [p.path for p, s in zip(free, stuck, strict=True) if s and p.path in shape]
    if stuck_shape:  # the shape parameters trade off: the others are fitted at a bound's value
        for k, p in enumerate(free):
            if p.path in shape and not stuck[k]:
                stuck[k] = True
                reasons[p.path] = (
                    f"fitted with {', '.join(stuck_shape)} at a bound, so not identified either"
                )
    inner = [k for k, s in enumerate(stuck) if not s]
    if laplace and inner:

        def f(x: np.ndarray) -> float:
            full = u.copy()
            full[inner] = x
            try:
                return -model.loglik(
                    {p.path: float(p.from_u(v)) for p, v in zip(free, full, strict=True)}
                )
            except ConfigError:
                return 1e300

        cov, ok = laplace_covariance(_hessian(f, u[inner]))
        if not ok:
            why = (
                "the likelihood's curvature at the optimum is not positive definite (flat or "
                "saddle), so no interval can be given: capture more episodes"
            )
            for k in inner:
                reasons[free[k].path] = why
        else:
            sd = np.sqrt(np.diag(cov))
            rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0x5AB1,)))
            draws = rng.multivariate_normal(u[inner], cov, size=n_samples)
            for j, k in enumerate(inner):
                p = free[k]
                note = "laplace"
                if any(s.from_images for s in settings) and p.path in shape:
                    note += (
                        "; beam offsets read from frames, their error integrated out (sd "
                        f"{_fmt_sd(blur.sd)} A per axis)"
                    )
                if p.path.endswith(("barn_60kv", "peak_rate_per_s")):
                    note += reasons.get("_note_energy", "")
                est[p.path] = (
                    float(p.from_u(u[k])),
                    float(p.from_u(u[k] - _Z975 * sd[j])),
                    float(p.from_u(u[k] + _Z975 * sd[j])),
                    note,
                )
                cols.append(np.asarray(p.from_u(draws[:, j])))
                out_paths.append(p.path)
    elif not laplace:
        # a bootstrap replicate keeps a value at a bound: it is one draw of the percentiles
        for k in inner if paths is None else range(len(free)):
            p = free[k]
            est[p.path] = (float(p.from_u(u[k])), math.nan, math.nan, "point estimate")
            out_paths.append(p.path)
    # drift: exact intervals; samples from the pivots
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0xD21F,)))
    d_path = "microscope.drift_diffusion_angstrom2_per_s"
    v_path = "microscope.drift_speed_max_angstrom_per_s"
    if drift.dof > 0:
        est[d_path] = (*drift.diffusion, f"chi-square, {drift.dof} degrees of freedom")
        out_paths.append(d_path)
        if laplace:
            cols.append(drift.ss / (2.0 * rng.chisquare(drift.dof, n_samples)))
    else:
        reasons[d_path] = "no two steps of one episode without re-centring: capture longer episodes"
    if math.isfinite(drift.speed_max[0]):
        est[v_path] = (*drift.speed_max, f"pivot on the top speed of {drift.n_episodes} episodes")
        out_paths.append(v_path)
        if laplace:
            m = drift.n_episodes
            cols.append(float(drift.speeds.max()) / rng.uniform(0, 1, n_samples) ** (1.0 / m))
    else:
        reasons[v_path] = (
            f"{drift.n_episodes} episodes with a drift estimate, {MIN_DRIFT_EPISODES} needed: "
            "capture more episodes"
        )
    samples = np.column_stack(cols) if cols else np.zeros((0, len(out_paths)))
    counts = {
        name: int((steps.outcome == code).sum())
        for name, code in (
            ("stay", STAY),
            ("hop", HOP),
            ("edge_hop", EDGE_HOP),
            ("knockout", KO_STAY),
            ("knockout_after_hop", KO_HOP),
            ("lost", LOST_STAY),
            ("lost_after_hop", LOST_HOP),
            ("knockout_hop_unseen", KO_ANY),
            ("lost_hop_unseen", LOST_ANY),
            ("several_hops", MULTI),
        )
    }
    details = {
        "outcomes": counts,
        "beam_offset_error": {  # image captures: what the rate likelihood averages over
            "sd_angstrom": [float(x) for x in blur.sd],
            "localisation_sd_angstrom": [
                None if math.isnan(x) else float(x) for x in blur.localisation_sd
            ],
            "still_steps": [int(x) for x in blur.n_still],
        },
        "dropped_steps": dict(steps.dropped),
        "neg_log_likelihood": nll,
        "drift_episodes": drift.n_episodes,
        "reasons": reasons,
    }
    return est, samples, out_paths, details


def _estimates(
    cfg: StemConfig,
    est: dict[str, tuple[float, float, float, str]],
    reasons: dict[str, str],
) -> list[ParameterEstimate]:
    """One entry per prior parameter, in the prior's order."""
    out = []
    for prior in PRIORS:
        nominal = float(_get(cfg, prior.path))
        units = _limits(cfg, prior.path)[2]
        if prior.path in est and all(math.isfinite(x) for x in est[prior.path][:3]):
            v, lo, hi, note = est[prior.path]
            out.append(
                ParameterEstimate(
                    prior.path, v, lo, hi, nominal, None, units, True, note, prior.kind
                )
            )
        else:
            why = reasons.get(prior.path, "not identified by these captures")
            if prior.path in est:  # a value without a finite interval is no estimate
                why = f"no finite 95 % interval ({est[prior.path][3]})"
            out.append(
                ParameterEstimate(
                    prior.path,
                    math.nan,
                    math.nan,
                    math.nan,
                    nominal,
                    None,
                    units,
                    False,
                    why,
                    prior.kind,
                )
            )
    return out
