"""STEM-specific evaluation: the learned rate model against the simulator's true rates.

The simulator knows the true rate law (``twinloop.sim.stem.kernel``): towards neighbour 0 of
an Si in the canonical frame (neighbour 0 on +x), ``lambda_0(b) = A exp(-|b - reach x|^2 /
(2 sigma^2))``. A learned model is scored by

* ``optimum_error_angstrom``: distance between the learned and the true rate optimum;
* ``rate_map_error``: root-mean-square error of the rate towards neighbour 0 over beam offsets
  within 3 A of the Si, relative to the true peak rate;
* ``peak_ratio``: learned / true peak rate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from twinloop.controllers.rates import RateModel
from twinloop.sim.stem import kernel as K
from twinloop.sim.stem.config import BOND_ANGSTROM, StemConfig


def true_rates(cfg: StemConfig, beam_angstrom: np.ndarray) -> np.ndarray:
    """True inversion rates (1/s) towards the three canonical neighbours, ``(n, 3)``.

    Uses the config's nominal parameters (no domain randomisation).
    """
    p = K.physics_params(cfg)
    peak, sigma, reach = p[K.P_RATE_A], p[K.P_SIGMA], p[K.P_REACH]
    out = np.empty((beam_angstrom.shape[0], 3))
    for k in range(3):
        a = 2 * np.pi / 3 * k
        centre = reach * np.array([np.cos(a), np.sin(a)])
        d2 = ((beam_angstrom - centre) ** 2).sum(axis=1)
        out[:, k] = peak * np.exp(-d2 / (2 * sigma**2))
    return out


def _grid(radius: float = 3.0, n: int = 121) -> tuple[np.ndarray, np.ndarray]:
    g = np.linspace(-radius, radius, n)
    xx, yy = np.meshgrid(g, g)
    return g, np.column_stack([xx.ravel(), yy.ravel()])


def rate_model_errors(model: RateModel, cfg: StemConfig) -> dict[str, float]:
    """How far a learned model is from the simulator's truth (see the module docstring)."""
    current, voltage = cfg.physics.beam_current_na, cfg.physics.beam_energy_kev
    _, beam = _grid()
    inside = np.hypot(beam[:, 0], beam[:, 1]) <= 3.0
    true = true_rates(cfg, beam)[:, 0]
    learned = model.mean_rates(beam / BOND_ANGSTROM, current, voltage)[:, 0]
    opt, peak = model.optimum(current, voltage)
    true_opt = beam[int(np.argmax(true))]
    rmse = float(np.sqrt(np.mean((learned[inside] - true[inside]) ** 2)))
    return {
        "optimum_error_angstrom": float(np.hypot(*(opt - true_opt))),
        "learned_optimum_angstrom": [float(opt[0]), float(opt[1])],
        "true_optimum_angstrom": [float(true_opt[0]), float(true_opt[1])],
        "rate_map_error": rmse / float(true.max()),
        "peak_ratio": peak / float(true.max()),
        "learned_peak_per_s": peak,
        "true_peak_per_s": float(true.max()),
    }


def plot_rate_maps(model: RateModel, cfg: StemConfig, path: str | Path) -> Path:
    """Learned vs true rate towards neighbour 0 (canonical frame), with both optima marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g, beam = _grid()
    n = g.size
    true = true_rates(cfg, beam)[:, 0].reshape(n, n)
    current, voltage = cfg.physics.beam_current_na, cfg.physics.beam_energy_kev
    learned = model.mean_rates(beam / BOND_ANGSTROM, current, voltage)[:, 0].reshape(n, n)
    spread = model.rates(beam / BOND_ANGSTROM, current, voltage)[..., 0].std(axis=0).reshape(n, n)
    err = rate_model_errors(model, cfg)
    vmax = max(true.max(), learned.max())
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2))
    extent = (g[0], g[-1], g[0], g[-1])
    for ax, img, title in (
        (axes[0], true, "true rate to neighbour 0 (1/s)"),
        (
            axes[1],
            learned,
            f"learned ({model.members}-member mean; {model.info.get('transitions', '?')} "
            "transitions)",
        ),
        (axes[2], spread, "ensemble std (1/s)"),
    ):
        im = ax.imshow(
            img,
            origin="lower",
            extent=extent,
            cmap="viridis",
            vmax=vmax if ax is not axes[2] else None,
        )
        fig.colorbar(im, ax=ax, fraction=0.046)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("beam x from Si (A)")
        for k in range(3):
            a = 2 * np.pi / 3 * k
            ax.plot(BOND_ANGSTROM * np.cos(a), BOND_ANGSTROM * np.sin(a), "wo", ms=5)
        ax.plot(0, 0, "o", color="gold", ms=7)
    axes[0].set_ylabel("beam y from Si (A)")
    for ax in axes[:2]:
        ax.plot(*err["true_optimum_angstrom"], "r+", ms=12, mew=2, label="true optimum")
        ax.plot(*err["learned_optimum_angstrom"], "wx", ms=10, mew=2, label="learned optimum")
    axes[1].legend(fontsize=7, loc="lower left")
    fig.suptitle(
        f"optimum error {err['optimum_error_angstrom']:.3f} A, rate-map error "
        f"{100 * err['rate_map_error']:.1f} % of peak, peak ratio {err['peak_ratio']:.2f}",
        fontsize=10,
    )
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_trajectories(datasets: dict[str, Any], path: str | Path, per_run: int = 4) -> Path:
    """True Si paths over the lattice for a few episodes of each run (twin/simulator truth)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # one row per backend, one column per controller (names are "backend/controller")
    backends = list(dict.fromkeys(k.split("/")[0] for k in datasets))
    controllers = list(dict.fromkeys(k.split("/")[-1] for k in datasets))
    fig, axes = plt.subplots(
        len(backends),
        len(controllers),
        figsize=(4.0 * len(controllers), 4.0 * len(backends)),
        squeeze=False,
    )
    for ax in axes.ravel():
        ax.set_visible(False)
    for name, ds in datasets.items():
        ax = axes[backends.index(name.split("/")[0]), controllers.index(name.split("/")[-1])]
        ax.set_visible(True)
        layout = ds.metadata["twinloop"]["env_metadata"]["observation_layout"]
        nb_slice = slice(
            layout["neighbor_offsets_angstrom"]["start"],
            layout["neighbor_offsets_angstrom"]["stop"],
        )
        goal_slice = slice(
            layout["goal_offset_angstrom"]["start"], layout["goal_offset_angstrom"]["stop"]
        )
        for i, ep in enumerate(ds.iterate_episodes()):
            if i >= per_run or "true/si_position_angstrom" not in ep.infos:
                break
            path_xy = np.asarray(ep.infos["true/si_position_angstrom"], dtype=float)
            path_xy = path_xy - path_xy[0]
            obs0 = np.asarray(ep.observations)[0]
            nbrs = obs0[nb_slice].reshape(3, 2)
            goal = obs0[goal_slice]
            if i == 0:
                u, w = nbrs[0] - nbrs[1], nbrs[0] - nbrs[2]
                sites = np.array(
                    [
                        m * u + q * w + p * nbrs[0]
                        for m in range(-8, 9)
                        for q in range(-8, 9)
                        for p in (0, 1)
                    ]
                )
                ax.plot(sites[:, 0], sites[:, 1], ".", color="0.8", ms=3, zorder=0)
            color = f"C{i}"
            ax.plot(path_xy[:, 0], path_xy[:, 1], "-o", color=color, ms=3, lw=1.2)
            ax.plot(*goal, "*", color=color, ms=12, mec="k")
        ax.plot(0, 0, "o", color="gold", ms=9, mec="k", label="start")
        ax.set_title(name, fontsize=9)
        ax.set_aspect("equal")
        ax.set_xlim(-9, 9)
        ax.set_ylim(-9, 9)
        ax.set_xlabel("x (A)")
    for row in axes:
        row[0].set_ylabel("y (A)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
