"""From HAADF frames to the symbolic state: atom finding, Si identification, lattice fit, alignment.

The pipeline of the reference detector (``shared/reference/stem.md``): atoms are found as peaks
of the frame smoothed with the probe's Gaussian (a matched filter), refined to sub-pixel
precision, told apart by intensity (the Si scatters (14/6)^gamma ~ 4.6 x more than C); the
lattice scale and orientation come from nearest-neighbour bonds; the Si's neighbours are counted
(3 in the lattice, 4 when a C neighbour was knocked out, fewer at an edge); consecutive frames are
aligned by matching C atoms (iterated closest points, shifts up to ~1 A from the prediction).

Failures are explicit: ``no_si`` and ``two_si`` ask the caller to re-image; ``four_fold`` and
``edge`` are real states of the sample.

Holes (:func:`find_holes`): the fitted lattice predicts every site of the view; sites without an
atom form clusters, and each cluster big enough to be a hole becomes the disc that holds exactly
its vacant sites (the simulator's definition of a hole).
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
        atoms_angstrom: ``(m, 2)`` every atom found, C and Si: ``positions_angstrom`` plus the
            Si's neighbours found after subtracting its peak (its tail hides them from the
            first search). What :func:`find_holes` reads.
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
    atoms_angstrom: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 2)))


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
        return Detection(xy, heights, is_si, NO_SI, nan2, nan_nbrs, 0, bond, angle, xy)
    if n_si > 1:
        return Detection(xy, heights, is_si, TWO_SI, nan2, nan_nbrs, 0, bond, angle, xy)
    si = xy[is_si][0]
    # the Si's tail hides its neighbours (peaks ~3 sigma apart, 4.6:1): subtract a probe-shaped
    # Si and look for them in the residual
    extra = _neighbors_in_residual(image, fov_angstrom, probe_sigma_angstrom, si, level)
    if extra.shape[0] and carbon.shape[0]:
        gap = np.sqrt(((extra[:, None, :] - carbon[None, :, :]) ** 2).sum(-1)).min(axis=1)
        extra = extra[gap > 0.6]
        carbon = np.concatenate([carbon, extra])
    elif extra.shape[0]:
        carbon = extra
    atoms = np.concatenate([xy, extra]) if extra.shape[0] else xy
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
    return Detection(xy, heights, is_si, status, si.copy(), nbrs, n_nbrs, bond, angle, atoms)


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


# --- holes ---------------------------------------------------------------------------------------
#: Site states of :func:`find_holes`.
SITE_UNSEEN = 0  # outside the judged part of the frame (border margin or beyond the frame)
SITE_PRESENT = 1
SITE_VACANT = 2


@dataclasses.dataclass
class Holes:
    """Holes found in one frame (view coordinates, A, relative to the view's centre).

    Attributes:
        holes_angstrom: ``(k, 3)`` rows of x, y and radius. The disc holds exactly the vacant
            lattice sites of the hole (the simulator's definition: a site is missing when it
            lies closer than the radius to the centre).
        cut: ``(k,)`` whether the hole may extend beyond the judged part of the frame (a
            disc consistent with the frame would also hold an unseen site); its disc then
            covers only the part seen, centred on those sites (biased towards the frame's
            inside), and is not an estimate of the hole's size.
        n_sites: ``(k,)`` vacant sites seen in each hole.
        n_analysed: Lattice sites judged in the frame (present or vacant).
        n_vacant: Vacant sites in the frame, holes or not (single misses included).
    """

    holes_angstrom: np.ndarray
    cut: np.ndarray
    n_sites: np.ndarray
    n_analysed: int = 0
    n_vacant: int = 0

    @classmethod
    def none(cls) -> Holes:
        """No holes (and nothing analysed)."""
        return cls(np.zeros((0, 3)), np.zeros(0, dtype=bool), np.zeros(0, dtype=np.int64))


def lattice_frame(
    atoms: np.ndarray, bond_angstrom: float, lattice_angle_rad: float, match_angstrom: float = 0.5
) -> np.ndarray | None:
    """Affine map from lattice coordinates to the view, fitted to the atoms.

    Lattice coordinates ``u = (i + s/3, j + s/3)`` name site ``(i, j, s)`` of a honeycomb with
    Bravais vectors ``a1``, ``a2`` (60 degrees apart, 30 degrees either side of a bond). Sites
    map to ``M @ u + t``. The first guess comes from the fitted bond and orientation with one
    atom near the view's centre on site ``(0, 0, 0)``; two least-squares refits over the atoms
    within ``match_angstrom`` of a site then take up the scale, the shear of a drifting scan
    and the sub-pixel offset.

    Returns:
        ``(3, 2)`` matrix ``X`` with ``view = [u_x, u_y, 1] @ X``, or None when fewer than 8
        atoms fit a lattice.
    """
    if atoms.shape[0] < 8 or not (
        math.isfinite(bond_angstrom) and math.isfinite(lattice_angle_rad)
    ):
        return None
    a = math.sqrt(3.0) * bond_angstrom
    b = lattice_angle_rad
    a1 = a * np.array([math.cos(b - math.pi / 6), math.sin(b - math.pi / 6)])
    a2 = a * np.array([math.cos(b + math.pi / 6), math.sin(b + math.pi / 6)])
    # candidate origins: the atoms nearest the view's centre (one of them is surely on-lattice)
    order = np.argsort(np.hypot(atoms[:, 0], atoms[:, 1]))[:5]
    best: tuple[int, np.ndarray] | None = None
    for k in order:
        x = np.zeros((3, 2))
        x[0], x[1], x[2] = a1, a2, atoms[k]
        for _ in range(3):
            u, ok = _lattice_coords(atoms, x, match_angstrom)
            if ok.sum() < 8:
                break
            design = np.column_stack([u[ok], np.ones(int(ok.sum()))])
            x = np.linalg.lstsq(design, atoms[ok], rcond=None)[0]
        else:
            n_ok = int(_lattice_coords(atoms, x, match_angstrom)[1].sum())
            if best is None or n_ok > best[0]:
                best = (n_ok, x)
            if n_ok >= 0.9 * atoms.shape[0]:
                break
    return None if best is None else best[1]


def _lattice_coords(
    atoms: np.ndarray, x: np.ndarray, match: float
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest site (lattice coordinates) of every atom under map ``x``, and which lie close."""
    inv = np.linalg.inv(x[:2])
    u = (atoms - x[2]) @ inv
    best_u = np.empty_like(u)
    best_d = np.full(atoms.shape[0], np.inf)
    for s in (0.0, 1.0 / 3.0):
        cand = np.round(u - s) + s
        d = np.hypot(*((cand - u) @ x[:2]).T)
        take = d < best_d
        best_u[take], best_d[take] = cand[take], d[take]
    return best_u, best_d < match


@njit
def _classify_sites(
    x: np.ndarray,
    atoms: np.ndarray,
    half: float,
    margin: float,
    reach: float,
    match: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Every lattice site within ``half + reach`` of the centre (per axis), and its state.

    Sites within ``half - margin`` are judged: present when an atom lies within ``match``,
    vacant otherwise; the rest are unseen.
    """
    # lattice-coordinate bounds of the padded square (corners through the inverse map)
    det = x[0, 0] * x[1, 1] - x[0, 1] * x[1, 0]
    lo0 = lo1 = 1e300
    hi0 = hi1 = -1e300
    ext = half + reach
    for cx in (-ext, ext):
        for cy in (-ext, ext):
            rx, ry = cx - x[2, 0], cy - x[2, 1]
            u0 = (rx * x[1, 1] - ry * x[1, 0]) / det
            u1 = (-rx * x[0, 1] + ry * x[0, 0]) / det
            lo0, hi0 = min(lo0, u0), max(hi0, u0)
            lo1, hi1 = min(lo1, u1), max(hi1, u1)
    i0, i1 = int(math.floor(lo0)) - 1, int(math.ceil(hi0)) + 1
    j0, j1 = int(math.floor(lo1)) - 1, int(math.ceil(hi1)) + 1
    n_max = (i1 - i0 + 1) * (j1 - j0 + 1) * 2
    xy = np.empty((n_max, 2))
    state = np.empty(n_max, dtype=np.int64)
    # bin the atoms on a coarse grid so each site looks at a few atoms only
    cell = max(match, 0.5)
    nb = int(math.ceil(2.0 * ext / cell)) + 1
    counts = np.zeros(nb * nb + 1, dtype=np.int64)
    keys = np.empty(atoms.shape[0], dtype=np.int64)
    for k in range(atoms.shape[0]):
        bx = min(max(int((atoms[k, 0] + ext) / cell), 0), nb - 1)
        by = min(max(int((atoms[k, 1] + ext) / cell), 0), nb - 1)
        keys[k] = by * nb + bx
        counts[keys[k] + 1] += 1
    for q in range(nb * nb):
        counts[q + 1] += counts[q]
    fill = counts[:-1].copy()
    slots = np.empty(atoms.shape[0], dtype=np.int64)
    for k in range(atoms.shape[0]):
        slots[fill[keys[k]]] = k
        fill[keys[k]] += 1
    inner = half - margin
    m2 = match * match
    n = 0
    for i in range(i0, i1 + 1):
        for j in range(j0, j1 + 1):
            for s in range(2):
                u0 = i + s / 3.0
                u1 = j + s / 3.0
                px = u0 * x[0, 0] + u1 * x[1, 0] + x[2, 0]
                py = u0 * x[0, 1] + u1 * x[1, 1] + x[2, 1]
                if abs(px) > ext or abs(py) > ext:
                    continue
                xy[n, 0], xy[n, 1] = px, py
                if abs(px) > inner or abs(py) > inner:
                    state[n] = SITE_UNSEEN
                    n += 1
                    continue
                found = False
                bx = int((px + ext) / cell)
                by = int((py + ext) / cell)
                for qy in range(max(by - 1, 0), min(by + 2, nb)):
                    for qx in range(max(bx - 1, 0), min(bx + 2, nb)):
                        q = qy * nb + qx
                        for e in range(counts[q], counts[q + 1]):
                            k = slots[e]
                            dx, dy = atoms[k, 0] - px, atoms[k, 1] - py
                            if dx * dx + dy * dy < m2:
                                found = True
                state[n] = SITE_PRESENT if found else SITE_VACANT
                n += 1
    return xy[:n], state[:n]


@njit
def _cluster(xy: np.ndarray, unseen: np.ndarray, bond: float) -> np.ndarray:
    """Connected components (labels 0..k-1) of vacant sites (union-find).

    Sites are joined when bonded (closer than 1.2 bonds), or when second neighbours (closer
    than 1.1 lattice constants) whose common neighbour is unseen: the hole may run through it.
    """
    n = xy.shape[0]
    parent = np.arange(n)
    b2 = (1.2 * bond) ** 2
    s2 = (1.1 * math.sqrt(3.0) * bond) ** 2
    for a in range(n):
        for b in range(a + 1, n):
            dx, dy = xy[a, 0] - xy[b, 0], xy[a, 1] - xy[b, 1]
            d2 = dx * dx + dy * dy
            if d2 >= s2:
                continue
            join = d2 < b2
            if not join:
                for q in range(unseen.shape[0]):
                    ax, ay = unseen[q, 0] - xy[a, 0], unseen[q, 1] - xy[a, 1]
                    bx, by = unseen[q, 0] - xy[b, 0], unseen[q, 1] - xy[b, 1]
                    if ax * ax + ay * ay < b2 and bx * bx + by * by < b2:
                        join = True
                        break
            if join:
                ra, rb = a, b
                while parent[ra] != ra:
                    ra = parent[ra]
                while parent[rb] != rb:
                    rb = parent[rb]
                if ra != rb:
                    parent[max(ra, rb)] = min(ra, rb)
    labels = np.empty(n, dtype=np.int64)
    next_label = 0
    root_label = np.full(n, -1, dtype=np.int64)
    for a in range(n):
        r = a
        while parent[r] != r:
            r = parent[r]
        if root_label[r] < 0:
            root_label[r] = next_label
            next_label += 1
        labels[a] = root_label[r]
    return labels


@njit
def _fit_disc(
    vacant: np.ndarray, present: np.ndarray, unseen: np.ndarray, search: float, step: float
) -> tuple[float, float, float, bool, float]:
    """Centre and radius of the disc that holds the vacant sites and no present one.

    The centre maximises the gap between the nearest present site and the farthest vacant
    one, searched on a grid of ``step`` within ``search`` of the vacant sites' mean (ties: the
    point nearest the mean); the radius lies halfway across that gap.

    Returns:
        ``(x, y, radius, cut, gap)``. ``cut``: some disc consistent with the frame (centre on
        the grid, holding the vacant sites and no present one) would also hold an unseen
        site, so the hole may go on where the frame does not show it. ``gap``: the best gap
        (not positive: no disc holds the vacant sites without a present one).
    """
    mx = 0.0
    my = 0.0
    for k in range(vacant.shape[0]):
        mx += vacant[k, 0]
        my += vacant[k, 1]
    mx /= vacant.shape[0]
    my /= vacant.shape[0]
    n_steps = int(search / step)
    best_gap = -1e300
    best_d2 = 1e300
    bx, by, b_in, b_out = mx, my, 0.0, 0.0
    cut = False
    for gi in range(-n_steps, n_steps + 1):
        for gj in range(-n_steps, n_steps + 1):
            cx = mx + gi * step
            cy = my + gj * step
            r_in = 0.0
            for k in range(vacant.shape[0]):
                d = (vacant[k, 0] - cx) ** 2 + (vacant[k, 1] - cy) ** 2
                r_in = max(r_in, d)
            r_out = 1e300
            for k in range(present.shape[0]):
                d = (present[k, 0] - cx) ** 2 + (present[k, 1] - cy) ** 2
                r_out = min(r_out, d)
            if r_out > r_in and not cut:
                for k in range(unseen.shape[0]):
                    if (unseen[k, 0] - cx) ** 2 + (unseen[k, 1] - cy) ** 2 < r_out:
                        cut = True
                        break
            r_in, r_out = math.sqrt(r_in), math.sqrt(r_out)
            gap = r_out - r_in
            d2 = (gi * gi + gj * gj) * step * step
            if gap > best_gap + 1e-9 or (abs(gap - best_gap) <= 1e-9 and d2 < best_d2):
                best_gap, best_d2 = gap, d2
                bx, by, b_in, b_out = cx, cy, r_in, r_out
    radius = 0.5 * (b_in + b_out) if b_out > b_in else b_in + 0.05
    if best_gap <= 0.0:  # no consistent disc: judge the covering one
        for k in range(unseen.shape[0]):
            if math.hypot(unseen[k, 0] - bx, unseen[k, 1] - by) < max(b_out, radius):
                cut = True
                break
    return bx, by, radius, cut, best_gap


def _discs(
    members: np.ndarray, present: np.ndarray, unseen: np.ndarray, a: float, min_sites: int
) -> list[tuple[tuple[float, float, float, bool], int]]:
    """Discs of one cluster: one disc, or 2-3 when one cannot hold the sites (merged holes).

    A cluster (not cut) whose best single disc cannot hold its vacant sites without a present
    one is split by k-means (k = 2, then 3, farthest-point start); a split is kept when every
    part has ``min_sites`` sites and a disc that holds them and no present site. Otherwise the
    one disc covering every vacant site stands (conservative: it holds present sites too).
    """
    one = _disc_near(members, present, unseen, a)
    if one[4] > 0.0 or one[3]:  # a disc fits, or the hole is cut (its shape is unknown)
        return [(one[:4], members.shape[0])]
    for k in (2, 3):
        if members.shape[0] < k * min_sites:
            break
        labels = _kmeans(members, k)
        parts = [members[labels == q] for q in range(k)]
        if min(p.shape[0] for p in parts) < min_sites:
            continue
        fits = [_disc_near(p, present, unseen, a) for p in parts]
        if all(f[4] > 0.0 for f in fits):
            return [(f[:4], p.shape[0]) for f, p in zip(fits, parts, strict=True)]
    return [(one[:4], members.shape[0])]


def _disc_near(
    members: np.ndarray, present: np.ndarray, unseen: np.ndarray, a: float
) -> tuple[float, float, float, bool, float]:
    """:func:`_fit_disc` over the sites near a cluster; returns ``(x, y, r, cut, gap)``.

    A cut cluster is a disc's visible part: nothing bounds the centre on the unseen side, so
    its disc is centred on the vacant sites' mean instead (biased towards the frame's inside),
    with the radius halfway from its farthest vacant site to its nearest present one.
    """
    members = np.ascontiguousarray(members)
    centre = members.mean(axis=0)
    reach = float(np.hypot(*(members - centre).T).max()) + 2.0 * a
    near_p = present[np.hypot(*(present - centre).T) < reach].reshape(-1, 2)
    near_u = unseen[np.hypot(*(unseen - centre).T) < reach].reshape(-1, 2)
    fit = _fit_disc(members, near_p, near_u, 1.5, 0.05)
    if fit[3]:
        x, y, r, _, _ = _fit_disc(members, near_p, near_u, 0.0, 0.05)
        return x, y, r, True, fit[4]
    return fit


def _kmeans(points: np.ndarray, k: int, iterations: int = 10) -> np.ndarray:
    """Labels of a k-means clustering started from farthest points (deterministic)."""
    centres = [points[int(np.argmax(np.hypot(*(points - points.mean(axis=0)).T)))]]
    while len(centres) < k:
        d = np.min([np.hypot(*(points - c).T) for c in centres], axis=0)
        centres.append(points[int(np.argmax(d))])
    c = np.array(centres)
    labels = np.zeros(points.shape[0], dtype=np.int64)
    for _ in range(iterations):
        d = np.hypot(points[:, None, 0] - c[None, :, 0], points[:, None, 1] - c[None, :, 1])
        labels = d.argmin(axis=1)
        for q in range(k):
            if (labels == q).any():
                c[q] = points[labels == q].mean(axis=0)
    return labels


def find_holes(
    atoms_angstrom: np.ndarray,
    fov_angstrom: float,
    bond_angstrom: float,
    lattice_angle_rad: float,
    margin_angstrom: float = 1.0,
    min_sites: int = 3,
    match_angstrom: float = 0.6,
) -> Holes:
    """Holes in one frame: clusters of lattice sites where no atom was found.

    1. The lattice (scale, orientation, offset, and the shear of a drifting scan) is fitted
       to the atoms (:func:`lattice_frame`); every site covering the view is predicted.
    2. A site farther than ``margin_angstrom`` inside the frame's border is *vacant* when no
       atom lies within ``match_angstrom`` of it, *present* otherwise; sites in the margin
       (atoms there are partly outside the frame) and beyond it are *unseen*.
    3. Bonded vacant sites form clusters (and second neighbours whose common neighbour is
       unseen, so a hole cut by the border stays one); a cluster of fewer than ``min_sites``
       sites is taken for missed detections (a lone miss is one site; the C knocked out next
       to a 4-fold Si leaves two) and dropped.
    4. Each cluster becomes a disc: the centre that maximises the gap between its farthest
       vacant site and the nearest present site (searched within 1.5 A of the sites' mean), the
       radius halfway across that gap, so the disc holds exactly the vacant sites, as the
       simulator defines a hole.

    Holes cut by the frame border: a hole is flagged ``cut`` when some disc consistent with
    the frame (holding its vacant sites and no present one) would also hold an unseen site,
    i.e. the frame cannot tell where the hole ends. Its disc then describes only the part
    seen: centred on the vacant sites seen (so biased towards the frame's inside), holding
    them and, where the geometry allows, no present site; its radius is not an estimate of
    the hole's. A caller that maps holes over several frames should prefer an uncut sighting
    (the microscope backend does). A hole wholly in the border band, or with fewer than
    ``min_sites`` vacant sites showing, is not reported.

    Merged holes: the vacant sites of two holes that touch form one cluster. When no single
    disc holds it without a present site (overlapping holes), it is split by k-means into 2
    or 3 discs that each do; holes overlapping so much that no split works (centres about a
    bond apart) stay one disc covering every vacant site of the cluster.

    Args:
        atoms_angstrom: ``(n, 2)`` every atom found in the frame (C and Si), view frame (A).
        fov_angstrom: Width of the (square) view.
        bond_angstrom: Fitted C-C bond length (:func:`fit_lattice`).
        lattice_angle_rad: Fitted bond orientation, mod 60 degrees (:func:`fit_lattice`).
        margin_angstrom: Width of the border band whose sites are not judged.
        min_sites: Smallest cluster of vacant sites reported as a hole.
        match_angstrom: An atom this close to a site occupies it (under half a bond, 0.71 A,
            so no atom occupies two sites).

    Returns:
        The holes, view coordinates (A).
    """
    atoms = np.ascontiguousarray(atoms_angstrom, dtype=np.float64).reshape(-1, 2)
    x = lattice_frame(atoms, bond_angstrom, lattice_angle_rad)
    if x is None:
        return Holes.none()
    a = math.sqrt(3.0) * (bond_angstrom if math.isfinite(bond_angstrom) else BOND_ANGSTROM)
    half = 0.5 * fov_angstrom
    xy, state = _classify_sites(x, atoms, half, margin_angstrom, 2.0 * a, match_angstrom)
    vac = state == SITE_VACANT
    n_analysed = int((state != SITE_UNSEEN).sum())
    holes = Holes.none()
    holes.n_analysed, holes.n_vacant = n_analysed, int(vac.sum())
    if not vac.any():
        return holes
    vac_xy = np.ascontiguousarray(xy[vac])
    present = np.ascontiguousarray(xy[state == SITE_PRESENT])
    unseen = np.ascontiguousarray(xy[state == SITE_UNSEEN])
    labels = _cluster(vac_xy, unseen, a / math.sqrt(3.0))
    rows, cut, sizes = [], [], []
    for lab in range(int(labels.max()) + 1):
        members = vac_xy[labels == lab]
        if members.shape[0] < min_sites:
            continue
        for disc, n_sites in _discs(members, present, unseen, a, min_sites):
            rows.append(disc[:3])
            cut.append(disc[3])
            sizes.append(n_sites)
    if rows:
        holes.holes_angstrom = np.array(rows, dtype=np.float64)
        holes.cut = np.array(cut, dtype=bool)
        holes.n_sites = np.array(sizes, dtype=np.int64)
    return holes
