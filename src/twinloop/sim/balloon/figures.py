"""Figures of recorded balloon flights: track around the station, altitude (``twinloop data show``).

The track is drawn in kilometres east and north of the station, from what every backend
records: the distance to the station (the ``distance_km`` info, unclipped, else the
observation) and the unit vector from the balloon to the station (observation
``station_direction``), so the balloon sits at ``-distance * direction``. The station's latitude
and longitude are not recorded, hence x/y rather than lat/lon.

Altitude is not recorded either; it is computed from the observed ambient pressure with the
simulator's own atmosphere (:func:`~twinloop.sim.balloon.kernel.height_at`, geopotential
height). Each episode draws the atmosphere's lapse-rate mixing ``alpha ~ U(0, 1)`` and does not
record it, so the line is the altitude at ``alpha = 0.5`` and the band spans ``alpha`` in
``[0, 1]``.

``dataset_figures`` is what ``twinloop data show`` calls; :func:`flight_track` returns the
arrays it draws. Nothing here imports :mod:`twinloop.datasets`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from twinloop.core.layout import Layout
from twinloop.sim.balloon.config import BalloonConfig

log = logging.getLogger(__name__)

#: Lapse-rate mixings of the altitude band and line (the episode's own is not recorded).
ALPHAS = (0.0, 0.5, 1.0)
_COMMANDS = ("down", "stay", "up")


def config_of(dataset: Any) -> BalloonConfig:
    """The recorded config (``twinloop.env_config``), or the defaults if it cannot be read."""
    from twinloop.core.config import recorded_config

    return recorded_config(BalloonConfig, dataset.metadata, str(dataset.path))


def _layout(cfg: BalloonConfig, size: int) -> Layout:
    from twinloop.sim.balloon.task import observation_layout

    layout = observation_layout(cfg)
    if layout.size != size:
        raise ValueError(
            f"the balloon observation layout of the recorded config has {layout.size} elements "
            f"but the dataset's observations have {size}: not a "
            "twinloop/BalloonStationKeeping-v0 recording?"
        )
    return layout


def altitude_km(pressure_pa: np.ndarray, cfg: BalloonConfig, alpha: float) -> np.ndarray:
    """Geopotential height (km) of each pressure in the model atmosphere mixed by ``alpha``."""
    from twinloop.sim.balloon import kernel as K

    params = K.physics_params(cfg)
    f = np.zeros(K.N_F, dtype=np.float64)
    K.init_atmosphere(f, float(alpha), params)
    p = np.asarray(pressure_pa, dtype=np.float64)
    out = np.array([K.height_at(f, float(x), params) if x > 0 else np.nan for x in p.ravel()])
    return out.reshape(p.shape) / 1000.0


def flight_track(ep: Any, cfg: BalloonConfig) -> dict[str, Any]:
    """The flight of one episode relative to the station.

    Args:
        ep: An episode (``observations`` ``(L + 1, n)``, ``actions``, ``infos``).
        cfg: The config it was recorded with.

    Returns:
        ``east_km``, ``north_km``, ``distance_km``, ``pressure_pa``, ``time_h`` (``L + 1``
        each); ``altitude_km`` (``alpha = 0.5``), ``altitude_low_km`` / ``altitude_high_km``
        (the band over ``alpha`` in [0, 1]); ``actions`` (``L``); ``station_radius_km``.
    """
    obs = np.asarray(ep.observations, dtype=np.float64)
    layout = _layout(cfg, obs.shape[1])
    if "distance_km" in ep.infos:
        dist = np.asarray(ep.infos["distance_km"], dtype=np.float64).reshape(-1)
    else:
        dist = layout.get(obs, "distance_km").astype(np.float64)
    direction = layout.get(obs, "station_direction")
    east, north = -dist * direction[:, 0], -dist * direction[:, 1]
    pressure = layout.get(obs, "pressure_pa").astype(np.float64)
    if "time_s" in ep.infos:
        time_h = np.asarray(ep.infos["time_s"], dtype=np.float64).reshape(-1) / 3600.0
    else:
        time_h = np.arange(obs.shape[0]) * cfg.physics.control_step_s / 3600.0
    alt = [altitude_km(pressure, cfg, a) for a in ALPHAS]
    return {
        "east_km": east,
        "north_km": north,
        "distance_km": dist,
        "pressure_pa": pressure,
        "time_h": time_h,
        "altitude_low_km": np.minimum(alt[0], alt[2]),
        "altitude_km": alt[1],
        "altitude_high_km": np.maximum(alt[0], alt[2]),
        "actions": np.asarray(ep.actions).reshape(-1),
        "station_radius_km": float(cfg.task.station_radius_km),
    }


def plot_flight(ep: Any, cfg: BalloonConfig, path: Path, title: str) -> dict[str, Any]:
    """Draw :func:`flight_track` into ``path``: track, altitude and distance over time."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Circle

    d = flight_track(ep, cfg)
    fig = Figure(figsize=(13.0, 6.2), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(2, 2, width_ratios=(1.0, 1.25))
    ax = fig.add_subplot(grid[:, 0])
    ax_alt = fig.add_subplot(grid[0, 1])
    ax_dist = fig.add_subplot(grid[1, 1], sharex=ax_alt)
    r = d["station_radius_km"]
    x, y, t = d["east_km"], d["north_km"], d["time_h"]
    ax.add_patch(Circle((0, 0), r, color="tab:green", alpha=0.12, lw=0))
    ax.add_patch(Circle((0, 0), r, fill=False, color="tab:green", lw=1.2, label=f"{r:g} km radius"))
    ax.plot(x, y, color="0.5", lw=0.8, zorder=1)
    sc = ax.scatter(x, y, c=t, cmap="viridis", s=8, zorder=2)
    ax.scatter(
        [0], [0], marker="^", s=120, color="tab:green", edgecolor="k", zorder=4, label="station"
    )
    ax.scatter(
        [x[0]],
        [y[0]],
        marker="o",
        s=70,
        facecolor="none",
        edgecolor="tab:blue",
        lw=2,
        zorder=3,
        label="start",
    )
    ax.scatter(
        [x[-1]],
        [y[-1]],
        marker="s",
        s=60,
        facecolor="none",
        edgecolor="k",
        lw=1.5,
        zorder=3,
        label="end",
    )
    span = max(1.2 * r, float(np.nanmax(np.abs(np.concatenate([x, y])))) * 1.08)
    ax.set_xlim(-span, span)
    ax.set_ylim(-span, span)
    ax.set_aspect("equal")
    ax.set_xlabel("east of the station (km)")
    ax.set_ylabel("north of the station (km)")
    ax.set_title("flight track", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.colorbar(sc, ax=ax, shrink=0.7, label="time since start (h)")

    ax_alt.fill_between(
        t,
        d["altitude_low_km"],
        d["altitude_high_km"],
        color="tab:blue",
        alpha=0.2,
        lw=0,
        label="over the atmospheres drawn (alpha 0-1)",
    )
    ax_alt.plot(t, d["altitude_km"], color="tab:blue", lw=1.3, label="alpha = 0.5")
    a = d["actions"]
    if a.size and np.all((a >= 0) & (a <= 2)):
        # the command applied over each step, as ticks along the bottom of the panel
        lo = float(np.nanmin(d["altitude_low_km"])) - 0.2
        for code, color in zip(range(3), ("tab:orange", "0.7", "tab:purple"), strict=True):
            sel = a == code
            if sel.any():
                ax_alt.scatter(
                    t[:-1][sel],
                    np.full(sel.sum(), lo),
                    marker="|",
                    s=40,
                    color=color,
                    label=f"action {_COMMANDS[code]}",
                )
    ax_alt.set_ylabel("altitude (km, geopotential)")
    ax_alt.set_title("altitude from the observed pressure", fontsize=10)
    ax_alt.grid(alpha=0.3)
    ax_alt.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax_alt.tick_params(labelbottom=False)

    ax_dist.plot(t, d["distance_km"], color="k", lw=1.2, label="distance to the station")
    ax_dist.axhline(r, color="tab:green", ls="--", lw=1.2, label=f"{r:g} km radius")
    inside = d["distance_km"] <= r
    ax_dist.fill_between(
        t,
        0,
        r,
        where=inside,
        color="tab:green",
        alpha=0.15,
        lw=0,
        label=f"within ({inside.mean():.0%} of rows)",
    )
    ax_dist.set_ylim(bottom=0)
    ax_dist.set_xlabel("time since start (h)")
    ax_dist.set_ylabel("distance (km)")
    ax_dist.grid(alpha=0.3)
    ax_dist.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return d


def dataset_figures(dataset: Any, out_dir: str | Path, episode: int) -> list[Path]:
    """The balloon figures of a dataset: the flight of episode ``episode`` (a dataset position).

    Returns:
        The written files (``episode_<K>_flight.png``).
    """
    cfg = config_of(dataset)
    ep = dataset[episode]
    hours = len(ep) * cfg.physics.control_step_s / 3600.0
    path = Path(out_dir) / f"episode_{episode}_flight.png"
    plot_flight(ep, cfg, path, f"episode {episode} (id {ep.id}): {len(ep)} steps ({hours:.1f} h)")
    return [path]
