"""Figures of recorded STEM episodes: the Si path on the graphene lattice (``twinloop data show``).

Everything is drawn in the goal's frame (the goal site at the origin, sample axes, Å), which
the observation alone defines on every backend: the goal is fixed in the sample and the
observation holds the goal relative to the measured Si, so the measured Si relative to the
goal is ``-goal_offset_angstrom`` whatever the view did (drift, re-centring). The lattice comes
from the measured neighbour offsets (exact bond vectors of the fitted lattice), anchored so
that the goal is a site. Simulated backends also record the true Si site
(``true/si_position_angstrom``, sample frame); its path is moved into the goal's frame with
the goal estimated as the median of ``true + goal_offset`` over the episode, snapped to the
nearest lattice site.

``dataset_figures`` is what ``twinloop data show`` calls; :func:`si_path` returns the arrays it
draws. The dataset is used through its public reader API only (``metadata``, ``[k]``), and
nothing here imports :mod:`twinloop.datasets`.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from twinloop.core.layout import Layout
from twinloop.sim.stem.config import StemConfig

log = logging.getLogger(__name__)

#: Info key of the true Si position in the sample frame (simulated backends only).
TRUE_SI_KEY = "true/si_position_angstrom"
#: Margin of the view around the path, the goal and nearby holes (Å).
MARGIN_ANGSTROM = 2.0
#: Smallest half-width of the view (Å).
MIN_HALF_VIEW_ANGSTROM = 4.0
#: Holes whose edge comes this close to the path's box are drawn too (Å).
HOLE_REACH_ANGSTROM = 4.0


def config_of(dataset: Any) -> StemConfig:
    """The recorded config (``twinloop.env_config``), or the defaults if it cannot be read."""
    from twinloop.core.config import recorded_config

    return recorded_config(StemConfig, dataset.metadata, str(dataset.path))


def _layout(cfg: StemConfig, size: int) -> Layout:
    from twinloop.sim.stem.task import observation_layout

    layout = observation_layout(cfg)
    if layout.size != size:
        raise ValueError(
            f"the STEM observation layout of the recorded config has {layout.size} elements but "
            f"the dataset's observations have {size}: not a twinloop/StemSteer-v0 recording?"
        )
    return layout


def _honeycomb(
    anchor: np.ndarray, bonds: np.ndarray, lo: np.ndarray, hi: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Sites of the sublattice of ``anchor`` and of its neighbours within ``[lo, hi]``.

    Args:
        anchor: A site (Å).
        bonds: ``(3, 2)`` offsets from ``anchor`` to its three neighbours.
        lo: Lower corner of the box to cover.
        hi: Upper corner.

    Returns:
        ``(a_sites, b_sites)``: the anchor's sublattice and the other one (``a + bonds[0]``).
    """
    u, w = bonds[0] - bonds[1], bonds[0] - bonds[2]  # Bravais vectors (length a)
    basis = np.stack([u, w], axis=1)
    corners = np.array([[lo[0], lo[1]], [lo[0], hi[1]], [hi[0], lo[1]], [hi[0], hi[1]]])
    coef = np.linalg.solve(basis, (corners - anchor).T)
    a0, a1 = math.floor(coef[0].min()) - 1, math.ceil(coef[0].max()) + 1
    b0, b1 = math.floor(coef[1].min()) - 1, math.ceil(coef[1].max()) + 1
    ia, ib = np.meshgrid(np.arange(a0, a1 + 1), np.arange(b0, b1 + 1), indexing="ij")
    a_sites = anchor + ia.reshape(-1, 1) * u + ib.reshape(-1, 1) * w
    keep = np.all((a_sites >= lo - 1.5) & (a_sites <= hi + 1.5), axis=1)
    a_sites = a_sites[keep]
    return a_sites, a_sites + bonds[0]


def _view(
    measured: np.ndarray, true: np.ndarray | None, holes: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """A square around the path and the goal, grown to take in holes that come near it."""
    pts = np.concatenate([measured, np.zeros((1, 2))] + ([] if true is None else [true]))
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    for x, y, r in holes:
        centre = np.array([x, y])
        if np.all(centre + r + HOLE_REACH_ANGSTROM >= lo) and np.all(
            centre - r - HOLE_REACH_ANGSTROM <= hi
        ):
            lo, hi = np.minimum(lo, centre - r), np.maximum(hi, centre + r)
    mid = 0.5 * (lo + hi)
    half = max(MIN_HALF_VIEW_ANGSTROM, 0.5 * float(np.max(hi - lo)) + MARGIN_ANGSTROM)
    return mid - half, mid + half


def _nearest(sites: np.ndarray, q: np.ndarray) -> np.ndarray:
    return sites[int(np.argmin(np.sum((sites - q) ** 2, axis=1)))]


def si_path(ep: Any, cfg: StemConfig) -> dict[str, Any]:
    """The Si path of one episode in the goal's frame, the lattice around it and the holes.

    Args:
        ep: An episode (``observations`` ``(L + 1, n)``, ``infos``).
        cfg: The config it was recorded with (for the observation layout and success radius).

    Returns:
        ``measured`` ``(L + 1, 2)``: the measured Si relative to the goal (Å);
        ``true`` ``(L + 1, 2)`` or None: the true Si site relative to the goal;
        ``sites_a``, ``sites_b``: lattice sites (the Si's starting sublattice and the other);
        ``bonds`` ``(3, 2)``: neighbour offsets from an ``a`` site;
        ``holes`` ``(k, 3)``: known holes at reset (centre x, y relative to the goal, radius);
        ``view``: lower and upper corner of the square drawn (path, goal and nearby holes);
        ``success_radius_angstrom``; ``distance_angstrom`` and ``time_s`` (``L + 1``) when the
        infos hold them.
    """
    obs = np.asarray(ep.observations, dtype=np.float64)
    layout = _layout(cfg, obs.shape[1])
    goal_offset = layout.get(obs, "goal_offset_angstrom")
    bonds = layout.get(obs[0], "neighbor_offsets_angstrom")
    measured = -goal_offset
    true = None
    if TRUE_SI_KEY in ep.infos:
        true_sample = np.asarray(ep.infos[TRUE_SI_KEY], dtype=np.float64)
        estimate = np.median(true_sample + goal_offset, axis=0)
        lo, hi = estimate - 2.0, estimate + 2.0
        a, b = _honeycomb(true_sample[0], bonds, lo, hi)
        goal_sample = _nearest(np.concatenate([a, b]), estimate)
        true = true_sample - goal_sample
    holes = np.zeros((0, 3))
    if "hole_offsets_angstrom" in layout:
        h = layout.get(obs[0], "hole_offsets_angstrom").reshape(-1, 3)
        h = h[h[:, 2] > 0]
        holes = np.column_stack([measured[0] + h[:, :2], h[:, 2]])
    lo, hi = _view(measured, true, holes)
    a, b = _honeycomb(measured[0], bonds, lo - 1.5, hi + 1.5)
    # the measured start carries localisation noise: shift the lattice so the goal is a site
    shift = _nearest(np.concatenate([a, b]), np.zeros(2))
    a, b = a - shift, b - shift
    out: dict[str, Any] = {
        "measured": measured,
        "true": true,
        "sites_a": a,
        "sites_b": b,
        "bonds": bonds,
        "holes": holes,
        "view": (lo, hi),
        "success_radius_angstrom": cfg.task.success_radius_angstrom,
    }
    for key, name in (("distance_to_goal_angstrom", "distance_angstrom"), ("time_s", "time_s")):
        if key in ep.infos:
            out[name] = np.asarray(ep.infos[key], dtype=np.float64)
    return out


def _ending(ep: Any, failure_names: list[str]) -> str:
    if not len(ep):
        return "not ended"
    code = int(np.asarray(ep.infos.get("failure", [0]))[-1])
    if code:
        return failure_names[code] if code < len(failure_names) else f"failure {code}"
    if bool(ep.terminations[-1]):
        return "success" if bool(np.asarray(ep.infos.get("is_success", [True]))[-1]) else "ended"
    return "time limit" if bool(ep.truncations[-1]) else "not ended"


def _in_holes(points: np.ndarray, holes: np.ndarray) -> np.ndarray:
    if not holes.size:
        return np.zeros(points.shape[0], dtype=bool)
    d2 = ((points[:, None, :] - holes[None, :, :2]) ** 2).sum(-1)
    return np.any(d2 < holes[None, :, 2] ** 2, axis=1)


def plot_si_path(ep: Any, cfg: StemConfig, path: Path, title: str) -> dict[str, Any]:
    """Draw :func:`si_path` (and the distance to the goal over microscope time) into ``path``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import LineCollection
    from matplotlib.figure import Figure
    from matplotlib.patches import Circle

    d = si_path(ep, cfg)
    has_dist = "distance_angstrom" in d
    fig = Figure(figsize=(12.0 if has_dist else 7.5, 6.4), layout="constrained")
    FigureCanvasAgg(fig)
    if has_dist:
        ax, ax2 = fig.subplots(1, 2, width_ratios=(1.25, 1.0))
    else:
        ax, ax2 = fig.subplots(), None
    lo, hi = d["view"]
    a, bonds = d["sites_a"], d["bonds"]
    segs = np.stack([np.repeat(a, 3, axis=0), (a[:, None, :] + bonds[None]).reshape(-1, 2)], 1)
    sites = np.concatenate([a, d["sites_b"]])
    # sites inside a hole are missing atoms: drop them and their bonds
    holes = d["holes"]
    segs = segs[~(_in_holes(segs[:, 0], holes) | _in_holes(segs[:, 1], holes))]
    sites = sites[~_in_holes(sites, holes)]
    ax.add_collection(LineCollection(segs, colors="0.8", linewidths=0.8, zorder=0))
    ax.scatter(sites[:, 0], sites[:, 1], s=9, color="0.6", zorder=1, label="C lattice sites")
    inside = [h for h in d["holes"] if np.all(h[:2] + h[2] >= lo) and np.all(h[:2] - h[2] <= hi)]
    for k, (x, y, r) in enumerate(inside):
        ax.add_patch(
            Circle(
                (x, y), r, fill=False, ls="--", color="tab:purple", label="hole" if k == 0 else None
            )
        )
    ax.add_patch(
        Circle(
            (0, 0),
            d["success_radius_angstrom"],
            color="tab:red",
            alpha=0.15,
            lw=0,
            label=f"success radius {d['success_radius_angstrom']:.2f} Å",
        )
    )
    m = d["measured"]
    steps = np.arange(m.shape[0])
    ax.plot(m[:, 0], m[:, 1], color="tab:blue", lw=0.6, alpha=0.5, zorder=2)
    sc = ax.scatter(
        m[:, 0], m[:, 1], c=steps, cmap="viridis", s=12, zorder=3, label="measured Si (observation)"
    )
    if d["true"] is not None:
        t = d["true"]
        moves = int(np.any(np.abs(np.diff(t, axis=0)) > 1e-6, axis=1).sum())
        ax.plot(
            t[:, 0],
            t[:, 1],
            color="k",
            lw=1.6,
            marker="o",
            ms=4,
            zorder=4,
            label=f"true Si site ({moves} move{'s' if moves != 1 else ''})",
        )
    ax.scatter(
        [m[0, 0]],
        [m[0, 1]],
        s=90,
        marker="o",
        facecolor="none",
        edgecolor="tab:green",
        lw=2,
        zorder=5,
        label="start",
    )
    ax.scatter(
        [m[-1, 0]],
        [m[-1, 1]],
        s=80,
        marker="s",
        facecolor="none",
        edgecolor="k",
        lw=1.5,
        zorder=5,
        label="end",
    )
    ax.scatter([0], [0], s=220, marker="*", color="tab:red", zorder=6, label="goal site")
    lo, hi = d["view"]
    ax.set_xlim(lo[0], hi[0])
    ax.set_ylim(lo[1], hi[1])
    ax.set_aspect("equal")
    ax.set_xlabel("x from the goal (Å)")
    ax.set_ylabel("y from the goal (Å)")
    ax.set_title("Si path on the graphene lattice (goal frame)", fontsize=10)
    fig.colorbar(sc, ax=ax, shrink=0.6, label="step")
    ax.legend(fontsize=7, loc="upper left", framealpha=0.85)
    if ax2 is not None:
        time = d.get("time_s")
        x = time if time is not None else steps.astype(float)
        ax2.plot(x, d["distance_angstrom"], color="tab:blue", marker="." if x.size < 80 else None)
        ax2.axhline(
            d["success_radius_angstrom"], color="tab:red", ls="--", lw=1, label="success radius"
        )
        ax2.set_xlabel("microscope time (s)" if time is not None else "step")
        ax2.set_ylabel("distance Si-goal (Å)")
        ax2.set_ylim(bottom=0)
        ax2.set_title("distance to the goal", fontsize=10)
        ax2.grid(alpha=0.3)
        ax2.legend(fontsize=7)
    fig.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return d


def dataset_figures(dataset: Any, out_dir: str | Path, episode: int) -> list[Path]:
    """The STEM figures of a dataset: the Si path of episode ``episode`` (a dataset position).

    Returns:
        The written files (``episode_<K>_si_path.png``).
    """
    cfg = config_of(dataset)
    ep = dataset[episode]
    names = list(
        dataset.metadata.get("twinloop", {}).get("env_metadata", {}).get("failure_names", ())
    )
    path = Path(out_dir) / f"episode_{episode}_si_path.png"
    plot_si_path(
        ep,
        cfg,
        path,
        f"episode {episode} (id {ep.id}): {len(ep)} steps, ended: {_ending(ep, names)}",
    )
    return [path]
