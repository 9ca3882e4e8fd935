"""From HAADF frames to the symbolic state: atom finding, Si identification, lattice fit, alignment.

The pipeline of the reference detector (``shared/reference/stem.md``): atoms are found as peaks
of the frame smoothed with the probe's Gaussian (a matched filter), refined to sub-pixel
precision, told apart by intensity (the Si scatters (14/6)^gamma ~ 4.6 x more than C); the
lattice scale and orientation come from nearest-neighbour bonds; the Si's neighbours are counted
(3 in the lattice, 4 when a C neighbour was knocked out, fewer at an edge); consecutive frames are
aligned by matching C atoms (iterated closest points, shifts up to ~1 A from the prediction).

Failures are explicit: ``no_si`` and ``two_si`` ask the caller to re-image; ``four_fold`` and
``edge`` are real states of the sample.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from twinloop.core.jit import njit

BOND_ANGSTROM = 1.42

#: Perception outcomes.
OK = "ok"
NO_SI = "no_si"
TWO_SI = "two_si"
FOUR_FOLD = "four_fold"
EDGE = "edge"


@dataclasses.dataclass
class Detection:
    """What one frame shows.

    Attributes:
        positions_angstrom: ``(n, 2)`` atom positions in the view (A, relative to its centre).
        intensity: ``(n,)`` peak heights of the smoothed frame above background.
        is_si: ``(n,)`` which atoms are Si.
        status: One of ``ok``, ``no_si``, ``two_si``, ``four_fold``, ``edge``.
        si_position_angstrom: The Si's position (NaN when there is no single Si).
        neighbor_offsets_angstrom: ``(3, 2)`` neighbours of a 3-fold Si from the fitted lattice.
        n_neighbors: Atoms found within bonding distance of the Si.
        bond_angstrom: Fitted C-C bond length (a check of the view's calibration).
        lattice_angle_rad: Orientation of the bonds (mod 60 degrees).
    """

    positions_angstrom: np.ndarray
    intensity: np.ndarray
    is_si: np.ndarray
    status: str
    si_position_angstrom: np.ndarray
    neighbor_offsets_angstrom: np.ndarray
    n_neighbors: int
    bond_angstrom: float
    lattice_angle_rad: float


@njit
def _gauss_kernel(sigma_px: float) -> np.ndarray:
    radius = max(1, int(math.ceil(2.5 * sigma_px)))
    k = np.empty(2 * radius + 1)
    total = 0.0
    for q in range(-radius, radius + 1):
        v = math.exp(-0.5 * (q / sigma_px) ** 2)
        k[q + radius] = v
        total += v
    for q in range(k.size):
        k[q] /= total
    return k


@njit
def smooth(image: np.ndarray, sigma_px: float) -> np.ndarray:
    """Separable Gaussian smoothing (edges replicated)."""
    k = _gauss_kernel(sigma_px)
    rad = k.size // 2
    h, w = image.shape
    tmp = np.empty((h, w))
    out = np.empty((h, w))
    for r in range(h):
        for c in range(w):
            acc = 0.0
            for q in range(k.size):
                cc = min(max(c + q - rad, 0), w - 1)
                acc += k[q] * image[r, cc]
            tmp[r, c] = acc
    for r in range(h):
        for c in range(w):
            acc = 0.0
            for q in range(k.size):
                rr = min(max(r + q - rad, 0), h - 1)
                acc += k[q] * tmp[rr, c]
            out[r, c] = acc
    return out


@njit
def local_maxima(img: np.ndarray, radius: int, floor: float) -> np.ndarray:
    """``(k, 2)`` (row, col) of pixels that are the maximum within ``radius``, above ``floor``."""
    h, w = img.shape
    found = []
    for r in range(1, h - 1):
        for c in range(1, w - 1):
            v = img[r, c]
            if v <= floor:
                continue
            # cheap 3 x 3 test first, then the full window
            if (
                v < img[r - 1, c]
                or v < img[r + 1, c]
                or v < img[r, c - 1]
                or v < img[r, c + 1]
                or v < img[r - 1, c - 1]
                or v < img[r + 1, c + 1]
            ):
                continue
            best = True
            for rr in range(max(0, r - radius), min(h, r + radius + 1)):
                for cc in range(max(0, c - radius), min(w, c + radius + 1)):
                    if (rr, cc) == (r, c):
                        continue
                    other = img[rr, cc]
                    # ties: keep the first in raster order
                    if other > v or (other == v and (rr < r or (rr == r and cc < c))):
                        best = False
                        break
                if not best:
                    break
            if best:
                found.append((r, c))
    out = np.empty((len(found), 2), dtype=np.int64)
    for k in range(len(found)):
        out[k, 0] = found[k][0]
        out[k, 1] = found[k][1]
    return out


@njit
def refine(img: np.ndarray, peaks: np.ndarray, step: int) -> np.ndarray:
    """Sub-pixel peak positions (row, col) by a parabola through +-``step`` pixels per axis."""
    h, w = img.shape
    out = np.empty((peaks.shape[0], 2))
    for k in range(peaks.shape[0]):
        r, c = peaks[k, 0], peaks[k, 1]
        s = min(step, r, c, h - 1 - r, w - 1 - c)
        dr = dc = 0.0
        if s >= 1:
            a, b, d = img[r - s, c], img[r, c], img[r + s, c]
            den = a - 2.0 * b + d
            if den < 0.0:
                dr = min(max(0.5 * (a - d) / den * s, -s), s)
            a, d = img[r, c - s], img[r, c + s]
            den = a - 2.0 * b + d
            if den < 0.0:
                dc = min(max(0.5 * (a - d) / den * s, -s), s)
        out[k, 0] = r + dr
        out[k, 1] = c + dc
    return out


def find_atoms(
    image: np.ndarray, fov_angstrom: float, probe_sigma_angstrom: float
) -> tuple[np.ndarray, np.ndarray, float]:
    """Atom positions (view frame, A) and peak heights above background in one frame.

    Returns:
        ``(positions (n, 2), intensity (n,), carbon_level)`` where ``carbon_level`` is the
        median peak height (most atoms are C).
    """
    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 2 or img.shape[0] != img.shape[1]:
        raise ValueError(f"find_atoms needs a square 2-D frame, got shape {img.shape}")
    n = img.shape[0]
    px = fov_angstrom / n
    sigma_px = max(0.5 * probe_sigma_angstrom / px, 0.7)
    sm = smooth(img, sigma_px)
    background = float(np.percentile(sm, 5))
    return _peaks(sm, background, px, fov_angstrom, sigma_px)


def _peaks(
    sm: np.ndarray, background: float, px: float, fov_angstrom: float, sigma_px: float
) -> tuple[np.ndarray, np.ndarray, float]:
    # local maxima in a small window (a bright Si's tail must not hide its neighbours), then
    # maxima closer than 0.6 A are merged, brightest first
    peaks = local_maxima(sm, 2, background)
    if peaks.shape[0] == 0:
        return np.zeros((0, 2)), np.zeros(0), 0.0
    heights = sm[peaks[:, 0], peaks[:, 1]] - background
    level = float(np.median(heights))
    keep = heights > 0.45 * level  # spurious maxima sit in the hexagon centres, far lower
    peaks, heights = peaks[keep], heights[keep]
    peaks, heights = _merge_close(peaks, heights, 0.6 / px)
    rc = refine(sm, peaks, max(1, int(round(0.5 * sigma_px))))
    xy = np.empty_like(rc)
    xy[:, 0] = (rc[:, 1] + 0.5) * px - 0.5 * fov_angstrom
    xy[:, 1] = (rc[:, 0] + 0.5) * px - 0.5 * fov_angstrom
    return xy, heights, float(np.median(heights))


def _merge_close(
    peaks: np.ndarray, heights: np.ndarray, min_px: float
) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-heights, kind="stable")
    kept: list[int] = []
    for k in order:
        if kept:
            d = peaks[kept] - peaks[k]
            if (d[:, 0] ** 2 + d[:, 1] ** 2 < min_px * min_px).any():
                continue
        kept.append(int(k))
    kept_arr = np.array(sorted(kept), dtype=np.int64)
    return peaks[kept_arr], heights[kept_arr]


def fit_lattice(positions: np.ndarray) -> tuple[float, float]:
    """Bond length (A) and bond orientation (rad, mod 60 deg) from nearest-neighbour vectors."""
    if positions.shape[0] < 4:
        return math.nan, math.nan
    d = positions[None, :, :] - positions[:, None, :]
    dist = np.hypot(d[..., 0], d[..., 1])
    np.fill_diagonal(dist, np.inf)
    near = (dist > 0.6 * BOND_ANGSTROM) & (dist < 1.35 * BOND_ANGSTROM)
    if not near.any():
        return math.nan, math.nan
    vecs = d[near]
    bond = float(np.median(np.hypot(vecs[:, 0], vecs[:, 1])))
    angles = np.arctan2(vecs[:, 1], vecs[:, 0])
    six = np.angle(np.exp(6j * angles).mean()) / 6.0
    return bond, float(six)


def analyse(
    image: np.ndarray,
    fov_angstrom: float,
    probe_sigma_angstrom: float,
    si_to_c_ratio: float,
    edge_margin_angstrom: float = 2.0,
) -> Detection:
    """Find the atoms of one frame, the Si and its neighbours.

    Args:
        image: The frame (counts), row 0 at the bottom of the view.
        fov_angstrom: Width of the view.
        probe_sigma_angstrom: Gaussian sigma of the probe (the matched filter).
        si_to_c_ratio: Expected Si/C peak ratio, (14/6)^gamma.
        edge_margin_angstrom: An Si closer than this to the frame edge is not judged for
            missing neighbours (they may lie outside the frame).
    """
    xy, heights, level = find_atoms(image, fov_angstrom, probe_sigma_angstrom)
    nan2 = np.full(2, np.nan)
    nan_nbrs = np.full((3, 2), np.nan)
    if xy.shape[0] == 0:
        return Detection(
            xy, heights, np.zeros(0, bool), NO_SI, nan2, nan_nbrs, 0, math.nan, math.nan
        )
    is_si = heights > 0.5 * (1.0 + si_to_c_ratio) * level
    carbon = xy[~is_si]
    bond, angle = fit_lattice(carbon)
    n_si = int(is_si.sum())
    if n_si == 0:
        return Detection(xy, heights, is_si, NO_SI, nan2, nan_nbrs, 0, bond, angle)
    if n_si > 1:
        return Detection(xy, heights, is_si, TWO_SI, nan2, nan_nbrs, 0, bond, angle)
    si = xy[is_si][0]
    # the Si's tail hides its neighbours (peaks ~3 sigma apart, 4.6:1): subtract a probe-shaped
    # Si and look for them in the residual
    extra = _neighbors_in_residual(image, fov_angstrom, probe_sigma_angstrom, si, level)
    if extra.shape[0] and carbon.shape[0]:
        gap = np.sqrt(((extra[:, None, :] - carbon[None, :, :]) ** 2).sum(-1)).min(axis=1)
        carbon = np.concatenate([carbon, extra[gap > 0.6]])
    elif extra.shape[0]:
        carbon = extra
    d = carbon - si
    dist = np.hypot(d[:, 0], d[:, 1])
    # neighbour shells: 3 at 1.42 A around a 3-fold Si; 4 at ~1.88 A around a 4-fold Si
    # sitting in a divacancy
    close = np.abs(dist - BOND_ANGSTROM) < 0.25
    n_close = int(close.sum())
    n_far = int((np.abs(dist - 1.88) < 0.2).sum())
    half = 0.5 * fov_angstrom - edge_margin_angstrom
    inside = abs(si[0]) <= half and abs(si[1]) <= half
    n_nbrs = n_close
    if n_close >= 3:
        status = OK
    elif n_far >= 4:
        status, n_nbrs = FOUR_FOLD, n_far
    elif inside:
        status = EDGE
    else:
        status = NO_SI  # too close to the frame edge to judge: re-centre and re-image
    nbrs = nan_nbrs
    if status == OK:
        nbrs = _lattice_neighbors(d[close][np.argsort(dist[close])[:3]], angle)
    return Detection(xy, heights, is_si, status, si.copy(), nbrs, n_nbrs, bond, angle)


def _neighbors_in_residual(
    image: np.ndarray, fov: float, sigma: float, si: np.ndarray, carbon_level: float
) -> np.ndarray:
    """Atoms within 2.3 A of the Si, found after subtracting a Gaussian Si peak."""
    img = np.asarray(image, dtype=np.float64)
    n = img.shape[0]
    px = fov / n
    centre = ((si + 0.5 * fov) / px - 0.5)[::-1]  # (row, col)
    win = int(math.ceil(3.2 / px))
    r0 = max(0, int(centre[0]) - win)
    r1 = min(n, int(centre[0]) + win + 1)
    c0 = max(0, int(centre[1]) - win)
    c1 = min(n, int(centre[1]) + win + 1)
    patch = img[r0:r1, c0:c1]
    rr, cc = np.mgrid[r0:r1, c0:c1]
    r2 = ((rr - centre[0]) ** 2 + (cc - centre[1]) ** 2) * px * px
    profile = np.exp(-r2 / (2.0 * sigma * sigma))
    core = r2 < (0.6 * sigma) ** 2
    background = float(np.percentile(patch, 5))
    if not core.any():
        return np.zeros((0, 2))
    amplitude = float(
        ((patch[core] - background) * profile[core]).sum() / (profile[core] ** 2).sum()
    )
    residual = patch - amplitude * profile
    sigma_px = max(0.5 * sigma / px, 0.7)
    sm = smooth(residual, sigma_px)
    xy, heights, _ = _peaks(sm, float(np.percentile(sm, 5)), px, fov, sigma_px)
    if xy.shape[0] == 0:
        return xy
    # _peaks counts pixels from the patch's corner: move them to the view frame
    xy[:, 0] += c0 * px
    xy[:, 1] += r0 * px
    d = np.hypot(*(xy - si).T)
    keep = (d > 1.0) & (d < 2.2) & (heights > 0.45 * carbon_level)
    return xy[keep]


def _lattice_neighbors(offsets: np.ndarray, angle: float) -> np.ndarray:
    """Snap three detected neighbour offsets onto the fitted lattice's bond directions."""
    out = np.empty((3, 2))
    base = angle if math.isfinite(angle) else 0.0
    for k in range(3):
        theta = math.atan2(offsets[k, 1], offsets[k, 0])
        snapped = base + round((theta - base) / (math.pi / 3.0)) * (math.pi / 3.0)
        out[k] = BOND_ANGSTROM * math.cos(snapped), BOND_ANGSTROM * math.sin(snapped)
    return out


def align(
    previous: np.ndarray,
    current: np.ndarray,
    guess: np.ndarray,
    max_pair_angstrom: float = 0.6,
    iterations: int = 4,
) -> tuple[np.ndarray, int]:
    """Shift of the view between two frames from matched atoms (iterated closest points).

    An atom at sample position p shows at ``p - c`` in a view centred on ``c``; the returned
    shift is ``c_current - c_previous``. ``guess`` is the predicted shift (commanded re-centring
    plus expected drift); matches must lie within ``max_pair_angstrom`` of the prediction, so
    shifts are resolved within about a bond of the guess.

    Returns:
        ``(shift (2,), number of matched atoms)``; with fewer than 6 matches the guess is
        returned unchanged.
    """
    shift = np.asarray(guess, dtype=np.float64).copy()
    if previous.shape[0] == 0 or current.shape[0] == 0:
        return shift, 0
    matched = 0
    for _ in range(iterations):
        predicted = current + shift  # where each current atom sat in the previous view
        d = predicted[:, None, :] - previous[None, :, :]
        dist = np.hypot(d[..., 0], d[..., 1])
        nearest = dist.argmin(axis=1)
        ok = dist[np.arange(current.shape[0]), nearest] < max_pair_angstrom
        matched = int(ok.sum())
        if matched < 6:
            return np.asarray(guess, dtype=np.float64).copy(), matched
        shift = np.median(previous[nearest[ok]] - current[ok], axis=0)
    return shift, matched
