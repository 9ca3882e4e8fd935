"""Figures of a recorded dataset: what was captured, at a glance (``twinloop data show``).

What is drawn, from a :class:`~twinloop.datasets.Dataset` alone:

* ``returns_lengths.png``: return and length of every episode over its id, with the mean and
  (given ``mean_interval``, e.g. ``twinloop.eval.bootstrap_ci``) its 95 % interval, and their
  histograms;
* ``endings.png``: how episodes ended (terminated / truncated / not ended) and, where the
  infos record a failure code (``failure``) or success flag (``is_success``), the causes; each
  bar is a fraction of episodes with (given ``rate_interval``, e.g.
  ``twinloop.eval.wilson_interval``) its 95 % interval;
* ``episode_<K>_observations.png`` / ``episode_<K>_actions.png``: every observation and action
  leaf of one episode over its steps, plus the reward; a flat observation is split into the
  named fields of ``Hints.observation_layout`` when one is given; leaves of more than
  :data:`MAX_LINES` elements are drawn as a heat map;
* for every image leaf (``uint8`` H x W or H x W x C): ``episode_<K>_<leaf>_frames.png``, a
  contact sheet of frames labelled by step, and ``episode_<K>_<leaf>.gif``, an animation of the
  episode (matplotlib's ``PillowWriter``).

This module knows nothing of any system: names of observation fields, actions and failure
codes come in through :class:`Hints` (the command line fills them from the env that recorded
the dataset), and interval estimators are passed in as functions, since ``eval`` sits above
``datasets``. Every plotting function returns a :class:`Figure` that holds the arrays it
drew, so a test (or a notebook) can compare them with the dataset. Matplotlib is imported
lazily and used through its object interface with the Agg canvas: nothing here touches
pyplot's global state, so it runs headless and inside other people's notebooks alike.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from twinloop.datasets.schema import SOURCE_INFO, is_image_space, leaves

log = logging.getLogger(__name__)

#: ``progress(stage, done, total)``: ``stage`` names the work (``"episodes"``, a GIF's name).
Progress = Callable[[str, int, int], None]
#: ``(low, high)`` of the mean of per-episode values.
MeanInterval = Callable[[np.ndarray], tuple[float, float]]
#: ``(low, high)`` of a proportion ``k / n``.
RateInterval = Callable[[int, int], tuple[float, float]]

#: Leaves (or layout fields) with more elements than this are drawn as heat maps.
MAX_LINES = 8
#: Info keys (the last part of the key) read as an integer failure code; 0 means none.
FAILURE_KEYS = ("failure", "failure_code", "termination_reason", "termination_code")
#: Info key of a boolean success flag.
SUCCESS_KEYS = ("is_success", "success")

#: Units read from the end of a name (``distance_km``, ``dwell_s``), longest suffix first.
_UNITS = (
    ("_m_per_s", "m/s"),
    ("_per_s", "1/s"),
    ("_angstrom", "Å"),
    ("_km", "km"),
    ("_mm", "mm"),
    ("_m", "m"),
    ("_ms", "ms"),
    ("_s", "s"),
    ("_h", "h"),
    ("_pa", "Pa"),
    ("_hpa", "hPa"),
    ("_deg", "deg"),
    ("_rad", "rad"),
    ("_w", "W"),
    ("_kw", "kW"),
    ("_k", "K"),
    ("_na", "nA"),
    ("_kev", "keV"),
    ("_kv", "kV"),
    ("_v", "V"),
    ("_ft", "ft"),
    ("_mol", "mol"),
    ("_hz", "Hz"),
    ("_n", "N"),
    ("_nm", "N m"),
)


@dataclasses.dataclass(frozen=True)
class Hints:
    """What the dataset's env can say about its data (all optional).

    Attributes:
        observation_layout: Named fields of a flat ``Box`` observation, as
            ``twinloop.core.layout.Layout.describe()`` writes them: name -> ``{"start",
            "stop", "shape", "doc"}``.
        action_labels: One label per action element (or one for a ``Discrete`` action).
        failure_names: Name of each failure code (index 0 = no failure).
    """

    observation_layout: Mapping[str, Mapping[str, Any]] | None = None
    action_labels: Sequence[str] | None = None
    failure_names: Sequence[str] | None = None


@dataclasses.dataclass(frozen=True)
class Figure:
    """A written figure and the data it shows.

    Attributes:
        path: The PNG or GIF.
        title: What it shows, in a few words.
        data: The arrays drawn, by name (e.g. ``"returns"``, or a trace's label).
    """

    path: Path
    title: str
    data: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class EpisodeTable:
    """One row per episode of a dataset (view order).

    Attributes:
        ids: Episode ids.
        returns: Sum of rewards.
        lengths: Steps.
        terminated: Ended in a terminal state.
        truncated: Ended by a time limit.
        causes: How each episode ended, from its last info (a failure name, ``success``,
            ``terminated``, ``truncated`` or ``not ended``); None when the infos record no
            failure code or success flag.
    """

    ids: np.ndarray
    returns: np.ndarray
    lengths: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    causes: list[str] | None

    @property
    def endings(self) -> list[str]:
        """``terminated``, ``truncated`` or ``not ended`` (a capture stopped mid-episode)."""
        return [
            "terminated" if te else "truncated" if tr else "not ended"
            for te, tr in zip(self.terminated.tolist(), self.truncated.tolist(), strict=True)
        ]


@dataclasses.dataclass(frozen=True)
class ShowResult:
    """What :func:`show_dataset` wrote.

    Attributes:
        episode: Position of the episode drawn step by step (in the dataset's view).
        episode_id: Its id.
        reason: Why that episode (asked for, or how it was chosen).
        figures: Every figure written.
    """

    episode: int
    episode_id: int
    reason: str
    figures: list[Figure]

    @property
    def paths(self) -> list[Path]:
        """The written files."""
        return [f.path for f in self.figures]


# --- choosing and tabulating episodes -----------------------------------------------------------
def _require_episodes(dataset: Any) -> int:
    n = len(dataset)
    if n == 0:
        raise ValueError(
            f"{dataset.path}: the dataset holds no episodes (a capture that has not committed "
            "one yet, or a filter that matched none); record some with twinloop run --record"
        )
    return n


def choose_episode(
    dataset: Any, episode: int | None = None, table: EpisodeTable | None = None
) -> tuple[int, str]:
    """The episode to draw step by step, and why.

    Args:
        dataset: A :class:`~twinloop.datasets.Dataset` (or a filtered view).
        episode: A position in the dataset (``0 .. len - 1``; negative counts from the end),
            or None for a representative one: the episode whose return is the median.
        table: The dataset's :func:`episode_table`, if already built.

    Returns:
        ``(position, reason)``.

    Raises:
        ValueError: The dataset holds no episodes, or ``episode`` is out of range (the message
            names the valid range).
    """
    n = _require_episodes(dataset)
    if episode is not None:
        if not -n <= episode < n:
            raise ValueError(
                f"episode {episode} is out of range: {dataset.path} holds {n} episode"
                f"{'s' if n != 1 else ''} (valid: 0..{n - 1}, or -{n}..-1 from the end)"
            )
        k = int(episode) % n
        return k, f"episode {k} as asked"
    returns = _metadata_column(dataset, "episode_return") if table is None else table.returns
    if returns is None or not np.isfinite(returns).any():
        return 0, "the first episode (returns unknown)"
    finite = np.where(np.isfinite(returns), returns, np.nan)
    median = float(np.nanmedian(finite))
    k = int(np.nanargmin(np.abs(finite - median)))
    return k, (
        f"the episode with the median return ({returns[k]:.4g}) of {n}; pick another with "
        "--episode K"
    )


def _metadata_column(dataset: Any, key: str) -> np.ndarray | None:
    rows = dataset.episode_metadata
    if not rows or any(key not in r for r in rows):
        return None
    return np.array([r[key] for r in rows], dtype=np.float64)


def _info_key(keys: Sequence[str], names: Sequence[str]) -> str | None:
    for key in sorted(keys):
        if key.split("/")[-1] in names:
            return key
    return None


def _cause(
    ep: Any, failure_key: str | None, success_key: str | None, names: Sequence[str] | None
) -> str:
    if failure_key is not None:
        code = int(np.asarray(ep.infos[failure_key]).reshape(len(ep) + 1, -1)[-1, 0])
        if code != 0:
            if names is not None and 0 <= code < len(names):
                return str(names[code])
            return f"failure {code}"
    terminated = bool(ep.terminations[-1]) if len(ep) else False
    truncated = bool(ep.truncations[-1]) if len(ep) else False
    if terminated and success_key is not None:
        success = np.asarray(ep.infos[success_key]).reshape(len(ep) + 1, -1)[-1, 0]
        return "success" if bool(success) else "terminated"
    return "terminated" if terminated else "truncated" if truncated else "not ended"


def episode_table(
    dataset: Any,
    failure_names: Sequence[str] | None = None,
    progress: Progress | None = None,
) -> EpisodeTable:
    """Return, length and ending of every episode.

    Returns, lengths and endings come from the episode metadata; episodes are read only when
    the metadata lacks them or the infos hold a failure code or success flag (for the causes).

    Args:
        dataset: A :class:`~twinloop.datasets.Dataset`.
        failure_names: Name of each failure code (index 0 = none).
        progress: Called as ``progress("episodes", done, total)`` while episodes are read.
    """
    n = _require_episodes(dataset)
    rows = dataset.episode_metadata
    ids = np.array([int(r.get("id", k)) for k, r in enumerate(rows)], dtype=np.int64)
    returns = _metadata_column(dataset, "episode_return")
    lengths = _metadata_column(dataset, "total_steps")
    terminated = _metadata_column(dataset, "terminated")
    truncated = _metadata_column(dataset, "truncated")
    info_keys = [str(f.key[0]) for f in dataset.fields if f.source == SOURCE_INFO and f.key]
    failure_key = _info_key(info_keys, FAILURE_KEYS)
    success_key = _info_key(info_keys, SUCCESS_KEYS)
    need_read = failure_key is not None or success_key is not None
    need_read |= any(c is None for c in (returns, lengths, terminated, truncated))
    causes: list[str] | None = None
    if need_read:
        r_, l_, te_, tr_, causes = [], [], [], [], []
        for k, ep in enumerate(dataset.iterate_episodes()):
            r_.append(float(np.sum(ep.rewards)))
            l_.append(len(ep))
            te_.append(bool(ep.terminations[-1]) if len(ep) else False)
            tr_.append(bool(ep.truncations[-1]) if len(ep) else False)
            causes.append(_cause(ep, failure_key, success_key, failure_names))
            if progress is not None:
                progress("episodes", k + 1, n)
        returns = np.array(r_) if returns is None else returns
        lengths = np.array(l_, dtype=np.float64) if lengths is None else lengths
        terminated = np.array(te_, dtype=np.float64) if terminated is None else terminated
        truncated = np.array(tr_, dtype=np.float64) if truncated is None else truncated
        if failure_key is None and success_key is None:
            causes = None
    assert returns is not None and lengths is not None
    assert terminated is not None and truncated is not None
    return EpisodeTable(
        ids=ids,
        returns=returns.astype(np.float64),
        lengths=lengths.astype(np.int64),
        terminated=terminated.astype(bool),
        truncated=truncated.astype(bool),
        causes=causes,
    )


# --- matplotlib, headless -----------------------------------------------------------------------
def _new_figure(width_in: float, height_in: float) -> Any:
    """A matplotlib Figure on its own Agg canvas (no pyplot, no global backend switch)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure as MplFigure

    fig = MplFigure(figsize=(width_in, height_in), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: Path, dpi: int = 110) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


def unit_of(name: str) -> str | None:
    """The unit a name ends with (``distance_km`` -> ``km``), or None."""
    low = name.lower()
    for suffix, unit in _UNITS:
        if low.endswith(suffix) and len(low) > len(suffix):
            return unit
    return None


# --- returns, lengths and endings ---------------------------------------------------------------
_ENDING_COLORS = {"terminated": "tab:red", "truncated": "tab:blue", "not ended": "tab:gray"}
_FAILURE_COLORS = ("tab:orange", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")


def _colors(names: Sequence[str]) -> dict[str, str]:
    """A color per ending or cause: success green, endings fixed, failures from a cycle."""
    out, k = {}, 0
    for name in names:
        if name == "success":
            out[name] = "tab:green"
        elif name in _ENDING_COLORS:
            out[name] = _ENDING_COLORS[name]
        else:
            out[name] = _FAILURE_COLORS[k % len(_FAILURE_COLORS)]
            k += 1
    return out


def _counts(labels: Sequence[str]) -> dict[str, int]:
    """Label -> count, ``success`` first, then by decreasing count."""
    counts: dict[str, int] = {}
    for c in labels:
        counts[c] = counts.get(c, 0) + 1
    order = sorted(counts, key=lambda k: (k != "success", -counts[k], k))
    return {k: counts[k] for k in order}


def _integer_ticks(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def plot_returns(
    table: EpisodeTable,
    out_dir: str | Path,
    mean_interval: MeanInterval | None = None,
    title: str = "",
) -> Figure:
    """Return and length of every episode over its id, with the mean (+ interval) and histograms.

    Points are colored by cause (``table.causes``) where the infos give one, else by ending.

    Args:
        table: From :func:`episode_table`.
        out_dir: Folder of ``returns_lengths.png``.
        mean_interval: 95 % interval of a mean (e.g. ``twinloop.eval.bootstrap_ci``); none
            drawn if None.
        title: Figure title (the dataset id).
    """
    fig = _new_figure(11.0, 6.5)
    axes = fig.subplots(2, 2, width_ratios=(2.2, 1.0))
    groups = table.causes if table.causes is not None else table.endings
    counts = _counts(groups)
    colors = _colors(list(counts))
    data: dict[str, Any] = {"episode_ids": table.ids, "groups": list(groups)}
    for row, (name, values, ylabel) in enumerate(
        (
            ("returns", table.returns.astype(np.float64), "return (sum of rewards)"),
            ("lengths", table.lengths.astype(np.float64), "length (steps)"),
        )
    ):
        ax, hist = axes[row]
        data[name] = values
        for group in counts:
            sel = np.array([g == group for g in groups], dtype=bool)
            ax.scatter(
                table.ids[sel],
                values[sel],
                s=16,
                color=colors[group],
                label=f"{group} ({sel.sum()})",
            )
        finite = values[np.isfinite(values)]
        if finite.size:
            mean = float(finite.mean())
            data[f"{name}_mean"] = mean
            label = f"mean {mean:.4g}"
            if mean_interval is not None:
                lo, hi = mean_interval(finite)
                data[f"{name}_mean_ci95"] = (lo, hi)
                ax.axhspan(lo, hi, color="k", alpha=0.12, lw=0, label="95% CI of the mean")
                label += f" [{lo:.4g}, {hi:.4g}]"
            ax.axhline(mean, color="k", lw=1.2, label=label)
            bins = min(30, max(5, int(math.sqrt(finite.size)) + 1))
            hist.hist(finite, bins=bins, color="0.55", edgecolor="white")
            hist.axvline(mean, color="k", lw=1.2, label="mean")
            hist.legend(fontsize=7)
        ax.set_xlabel("episode id")
        ax.set_ylabel(ylabel)
        _integer_ticks(ax)
        ax.legend(fontsize=7, loc="best")
        ax.grid(alpha=0.3)
        hist.set_xlabel(ylabel)
        hist.set_ylabel("episodes")
        hist.yaxis.get_major_locator().set_params(integer=True)
        hist.grid(alpha=0.3)
    n = table.ids.size
    fig.suptitle(f"{title}: {n} episode{'s' if n != 1 else ''}, returns and lengths".strip(": "))
    path = _save(fig, Path(out_dir) / "returns_lengths.png")
    return Figure(path, "returns and lengths of all episodes", data)


def _bars(
    ax: Any, counts: Mapping[str, int], n: int, rate_interval: RateInterval | None
) -> dict[str, tuple[float, float]]:
    """Bars of ``count / n`` with intervals; the counts go into the tick labels."""
    names = list(counts)
    x = np.arange(len(names))
    frac = np.array([counts[k] / n for k in names])
    colors = _colors(names)
    ax.bar(x, frac, width=0.6, color=[colors[k] for k in names], alpha=0.85)
    cis: dict[str, tuple[float, float]] = {}
    if rate_interval is not None:
        ci = np.array([rate_interval(counts[k], n) for k in names], dtype=np.float64)
        cis = {k: (float(lo), float(hi)) for k, (lo, hi) in zip(names, ci, strict=True)}
        err = np.clip([frac - ci[:, 0], ci[:, 1] - frac], 0.0, None)
        ax.errorbar(x, frac, yerr=err, fmt="none", color="k", capsize=4, label="95% interval")
        ax.legend(fontsize=7, loc="upper right")
    ticks = [f"{k}\n{counts[k]} of {n}" for k in names]
    ax.set_xticks(x, ticks, fontsize=8)
    ax.set_xlim(-0.7, len(names) - 0.3)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("fraction of episodes")
    ax.grid(axis="y", alpha=0.3)
    return cis


def plot_endings(
    table: EpisodeTable,
    out_dir: str | Path,
    rate_interval: RateInterval | None = None,
    title: str = "",
) -> Figure:
    """How episodes ended and, where the infos say, why (fractions of episodes with intervals).

    Args:
        table: From :func:`episode_table`.
        out_dir: Folder of ``endings.png``.
        rate_interval: 95 % interval of a proportion (e.g. ``twinloop.eval.wilson_interval``);
            none drawn if None.
        title: Figure title (the dataset id).
    """
    n = table.ids.size
    counts = _counts(table.endings)
    data: dict[str, Any] = {"endings": counts}
    if table.causes is None:
        fig = _new_figure(5.5, 4.2)
        axes = [fig.subplots()]
    else:
        causes = _counts(table.causes)
        data["causes"] = causes
        fig = _new_figure(4.0 + 1.3 * len(causes) + 1.3 * len(counts), 4.2)
        axes = fig.subplots(1, 2, width_ratios=(max(2, len(counts)), max(2, len(causes))))
    data["endings_ci95"] = _bars(axes[0], counts, n, rate_interval)
    axes[0].set_title("how episodes ended", fontsize=10)
    if table.causes is not None:
        data["causes_ci95"] = _bars(axes[1], data["causes"], n, rate_interval)
        axes[1].set_title("why: failure code or success flag of the last step", fontsize=10)
    fig.suptitle(f"{title}: endings of {n} episodes".strip(": "))
    path = _save(fig, Path(out_dir) / "endings.png")
    return Figure(path, "how episodes ended", data)


# --- traces of one episode ----------------------------------------------------------------------
def _leaf_name(key: tuple) -> str:
    return "/".join(f"_index_{k}" if isinstance(k, int) else str(k) for k in key)


def _get(tree: Any, key: tuple) -> Any:
    for part in key:
        tree = tree[part]
    return tree


@dataclasses.dataclass(frozen=True)
class _Trace:
    """One subplot: a name, a doc line and ``(rows, elements)`` values with element labels."""

    name: str
    doc: str
    values: np.ndarray
    labels: list[str]
    discrete: bool = False
    shape: tuple[int, ...] = ()


def _element_labels(shape: tuple[int, ...]) -> list[str]:
    if not shape:
        return [""]
    return [str(list(idx)) for idx in np.ndindex(*shape)]


def _layout_traces(
    values: np.ndarray, layout: Mapping[str, Mapping[str, Any]], root: str
) -> list[_Trace] | None:
    """Split a flat ``(rows, size)`` leaf into the layout's fields (None if they do not fit)."""
    try:
        spans = sorted(
            (
                int(d["start"]),
                int(d["stop"]),
                str(name),
                tuple(d.get("shape", ())),
                d.get("doc", ""),
            )
            for name, d in layout.items()
        )
    except (KeyError, TypeError, ValueError):
        log.warning("ignoring an observation layout that is not name -> {start, stop, shape}")
        return None
    size = values.shape[1]
    covered = [s for s, *_ in spans] == [0, *[e for _, e, *_ in spans[:-1]]]
    if not spans or not covered or spans[-1][1] != size:
        log.warning(
            "the observation layout (%d elements) does not match the recorded observation (%d); "
            "using index labels",
            spans[-1][1] if spans else 0,
            size,
        )
        return None
    traces = []
    for start, stop, name, shape, doc in spans:
        shape = shape if math.prod(shape) == stop - start else (stop - start,)
        labels = _element_labels(shape) if shape else [""]
        traces.append(_Trace(f"{root}{name}", str(doc), values[:, start:stop], labels, shape=shape))
    return traces


def _leaf_traces(
    tree: Any, space: gym.Space, root: str, layout: Mapping[str, Mapping[str, Any]] | None
) -> tuple[list[_Trace], list[tuple[tuple, gym.Space]]]:
    """Numeric traces of every leaf, and the image leaves (drawn elsewhere)."""
    traces: list[_Trace] = []
    images = []
    for key, leaf in leaves(space):
        name = _leaf_name(key)
        if is_image_space(leaf):
            images.append((key, leaf))
            continue
        if isinstance(leaf, gym.spaces.Text):
            log.info("not drawing text leaf %s/%s", root, name)
            continue
        values = np.asarray(_get(tree, key))
        rows = values.shape[0]
        flat = values.reshape(rows, -1).astype(np.float64)
        discrete = isinstance(leaf, gym.spaces.Discrete | gym.spaces.MultiDiscrete)
        discrete |= isinstance(leaf, gym.spaces.MultiBinary) or values.dtype == np.bool_
        if layout is not None and key == () and values.ndim == 2:
            split = _layout_traces(flat, layout, "")
            if split is not None:
                traces.extend(split)
                continue
        label = f"{root}/{name}" if name else root
        shape = tuple(values.shape[1:])
        traces.append(_Trace(label, "", flat, _element_labels(shape), discrete, shape))
    return traces, images


def _heatmap(fig: Any, ax: Any, tr: _Trace, steps: np.ndarray) -> None:
    """Many elements as an image over steps; an ``(n, m)`` field (m <= 4) as m blocks of n."""
    values, n_el = tr.values, tr.values.shape[1]
    blocks = 1
    if len(tr.shape) == 2 and tr.shape[1] <= 4:
        n, blocks = tr.shape
        # component-major: all levels of component 0, then of component 1 ...
        values = values.reshape(-1, n, blocks).transpose(0, 2, 1).reshape(-1, n_el)
    im = ax.imshow(
        values.T,
        aspect="auto",
        origin="lower",
        interpolation="nearest",
        extent=(steps[0] - 0.5, steps[-1] + 0.5, -0.5, n_el - 0.5),
        cmap="viridis",
    )
    cb = fig.colorbar(im, ax=ax, pad=0.01)
    cb.set_label(unit_of(tr.name) or "value", fontsize=7)
    cb.ax.tick_params(labelsize=7)
    if blocks > 1:
        n = n_el // blocks
        for j in range(1, blocks):
            ax.axhline(j * n - 0.5, color="w", lw=1.0)
        ax.set_yticks(
            [(j + 0.5) * n - 0.5 for j in range(blocks)], [f"[:, {j}]" for j in range(blocks)]
        )
        ax.set_ylabel(f"{blocks} x {n} elements", fontsize=8)
    else:
        ax.set_ylabel(f"element (of {n_el})", fontsize=8)


def _draw_trace(
    fig: Any, ax: Any, tr: _Trace, steps: np.ndarray, labels: Sequence[str] | None
) -> None:
    n_el = tr.values.shape[1]
    if n_el > MAX_LINES:
        _heatmap(fig, ax, tr, steps)
    else:
        marker = "." if steps.size < 60 else None
        for j in range(n_el):
            lab = labels[j] if labels is not None and j < len(labels) else tr.labels[j]
            if tr.discrete:
                ax.step(steps, tr.values[:, j], where="post", label=lab or None, lw=1.2)
            else:
                ax.plot(steps, tr.values[:, j], label=lab or None, lw=1.2, marker=marker)
        if tr.discrete:
            lo, hi = np.nanmin(tr.values), np.nanmax(tr.values)
            if np.isfinite(lo) and hi - lo <= 10:
                ax.set_yticks(np.arange(math.floor(lo), math.ceil(hi) + 1))
        ax.set_ylabel(unit_of(tr.name) or ("value" if n_el > 1 else ""), fontsize=8)
        if n_el > 1 or (labels is not None and any(labels)):
            ax.legend(fontsize=6, loc="best", ncols=2 if n_el > 4 else 1)
    title = tr.name + (f": {tr.doc}" if tr.doc else "")
    ax.set_title(title, fontsize=8, loc="left")
    ax.grid(alpha=0.3)
    ax.tick_params(labelsize=7)
    _integer_ticks(ax)


def _plot_traces(
    traces: list[_Trace],
    steps: np.ndarray,
    path: Path,
    suptitle: str,
    xlabel: str,
    labels_of: Callable[[_Trace], Sequence[str] | None] = lambda tr: None,
) -> dict[str, np.ndarray]:
    cols = 1 if len(traces) <= 4 else 2
    rows = math.ceil(len(traces) / cols)
    fig = _new_figure(6.0 * cols + 1.0, 1.9 * rows + 0.8)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    data: dict[str, np.ndarray] = {}
    for ax, tr in zip(axes, traces, strict=False):
        _draw_trace(fig, ax, tr, steps, labels_of(tr))
        data[tr.name] = tr.values
    for ax in axes[len(traces) :]:
        ax.set_visible(False)
    for ax in axes[: len(traces)][-cols:]:
        ax.set_xlabel(xlabel, fontsize=8)
    fig.suptitle(suptitle)
    _save(fig, path)
    return data


def plot_observations(
    ep: Any, observation_space: gym.Space, out_dir: str | Path, k: int, hints: Hints | None = None
) -> Figure | None:
    """Every non-image observation leaf of an episode over its ``L + 1`` rows.

    Returns:
        The figure (``data`` maps each subplot's name to its ``(L + 1, elements)`` values), or
        None when every leaf is an image or text.
    """
    layout = hints.observation_layout if hints else None
    traces, _ = _leaf_traces(ep.observations, observation_space, "observation", layout)
    if not traces:
        return None
    path = Path(out_dir) / f"episode_{k}_observations.png"
    steps = np.arange(len(ep) + 1)
    data = _plot_traces(
        traces,
        steps,
        path,
        f"episode {k} (id {ep.id}): observations, {len(ep)} steps (row 0 = reset)",
        "step",
    )
    return Figure(path, f"observation traces of episode {k}", data)


def plot_actions(
    ep: Any, action_space: gym.Space, out_dir: str | Path, k: int, hints: Hints | None = None
) -> Figure:
    """Every action leaf of an episode over its ``L`` steps, then the reward and return so far.

    Returns:
        The figure; ``data`` maps each subplot's name to its ``(L, elements)`` values and has
        ``reward`` and ``return``.
    """
    traces, _ = _leaf_traces(ep.actions, action_space, "action", None)
    rewards = np.asarray(ep.rewards, dtype=np.float64).reshape(-1, 1)
    traces.append(_Trace("reward", "per step", rewards, [""]))
    traces.append(_Trace("return", "reward summed so far", np.cumsum(rewards, axis=0), [""]))
    labels = list(hints.action_labels) if hints and hints.action_labels else None
    n_actions = len(traces) - 2

    def labels_of(tr: _Trace) -> Sequence[str] | None:
        # the env's labels name the elements of a single action leaf
        if labels is not None and n_actions == 1 and tr is traces[0]:
            return labels
        return None

    path = Path(out_dir) / f"episode_{k}_actions.png"
    steps = np.arange(len(ep))
    data = _plot_traces(
        traces,
        steps,
        path,
        f"episode {k} (id {ep.id}): actions and rewards, {len(ep)} steps",
        "step (action t is taken on observation t)",
        labels_of,
    )
    return Figure(path, f"action traces of episode {k}", data)


# --- images -------------------------------------------------------------------------------------
def _frame_kwargs(frames: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """Frames as imshow wants them: (n, H, W) grey, (n, H, W, 3|4) colour."""
    if frames.ndim == 4 and frames.shape[-1] == 1:
        frames = frames[..., 0]
    if frames.ndim == 4 and frames.shape[-1] not in (3, 4):
        log.info("image with %d channels: drawing channel 0", frames.shape[-1])
        frames = frames[..., 0]
    kw: dict[str, Any] = {"interpolation": "nearest"}
    if frames.ndim == 3:
        kw.update(cmap="gray", vmin=0, vmax=255)
    return frames, kw


def frame_steps(n_rows: int, max_frames: int) -> np.ndarray:
    """At most ``max_frames`` row indices spread evenly over ``n_rows``, first and last included."""
    if max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    if n_rows <= max_frames:
        return np.arange(n_rows)
    return np.unique(np.linspace(0, n_rows - 1, max_frames).round().astype(np.int64))


def contact_sheet(
    frames: np.ndarray, steps: np.ndarray, path: str | Path, title: str, cols: int = 6
) -> Figure:
    """A grid of ``frames`` (``(n, H, W[, C])`` uint8), each labelled with its step.

    Returns:
        The figure; ``data["steps"]`` are the steps shown, ``data["frames"]`` the frames.
    """
    shown, kw = _frame_kwargs(np.asarray(frames))
    n = shown.shape[0]
    cols = max(1, min(cols, n))
    rows = math.ceil(n / cols)
    h, w = shown.shape[1:3]
    cell = 1.9
    fig = _new_figure(cell * cols, cell * rows * h / w + 0.6)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, img, t in zip(axes, shown, steps, strict=False):
        ax.imshow(img, **kw)
        ax.set_title(f"step {int(t)}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[n:]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=10)
    path = _save(fig, Path(path))
    return Figure(path, title, {"steps": np.asarray(steps), "frames": np.asarray(frames)})


def animate(
    frames: np.ndarray,
    steps: np.ndarray,
    path: str | Path,
    title: str,
    fps: float = 10.0,
    progress: Progress | None = None,
) -> Figure:
    """An animated GIF of ``frames`` with a step counter, written by matplotlib's PillowWriter.

    Every frame carries its step number, so no two consecutive frames are identical and the GIF
    holds exactly one frame per entry of ``steps``.

    Returns:
        The figure; ``data["steps"]`` are the steps animated.
    """
    from matplotlib.animation import PillowWriter

    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    shown, kw = _frame_kwargs(np.asarray(frames))
    h, w = shown.shape[1:3]
    scale = max(1.0, 256.0 / max(h, w))  # small frames are enlarged (pixels stay sharp)
    fig = _new_figure(w * scale / 80.0 + 0.2, h * scale / 80.0 + 0.5)
    ax = fig.add_subplot()
    im = ax.imshow(shown[0], **kw)
    ax.set_xticks([])
    ax.set_yticks([])
    label = ax.set_title("", fontsize=9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = PillowWriter(fps=fps)
    n = shown.shape[0]
    with writer.saving(fig, str(path), dpi=80):
        for j in range(n):
            im.set_data(shown[j])
            label.set_text(f"{title}  step {int(steps[j])}/{int(steps[-1])}")
            writer.grab_frame()
            if progress is not None:
                progress(path.name, j + 1, n)
    return Figure(path, f"{title} (animation)", {"steps": np.asarray(steps)})


def plot_images(
    ep: Any,
    observation_space: gym.Space,
    out_dir: str | Path,
    k: int,
    *,
    fps: float = 10.0,
    max_frames: int = 300,
    sheet_frames: int = 24,
    progress: Progress | None = None,
) -> list[Figure]:
    """A contact sheet and a GIF for every image leaf of an episode's observations."""
    out: list[Figure] = []
    for key, _ in leaves(observation_space):
        leaf = observation_space
        for part in key:
            leaf = leaf[part]
        if not is_image_space(leaf):
            continue
        name = _leaf_name(key) or "observation"
        frames = np.asarray(_get(ep.observations, key))
        slug = re.sub(r"[^-\w]+", "_", name)
        sheet = frame_steps(frames.shape[0], sheet_frames)
        out.append(
            contact_sheet(
                frames[sheet],
                sheet,
                Path(out_dir) / f"episode_{k}_{slug}_frames.png",
                f"episode {k} (id {ep.id}): {name}, {sheet.size} of {frames.shape[0]} frames",
            )
        )
        steps = frame_steps(frames.shape[0], max_frames)
        out.append(
            animate(
                frames[steps],
                steps,
                Path(out_dir) / f"episode_{k}_{slug}.gif",
                f"episode {k}: {name}",
                fps=fps,
                progress=progress,
            )
        )
    return out


# --- everything ---------------------------------------------------------------------------------
def show_dataset(
    dataset: Any,
    out_dir: str | Path,
    *,
    episode: int | None = None,
    hints: Hints | None = None,
    mean_interval: MeanInterval | None = None,
    rate_interval: RateInterval | None = None,
    fps: float = 10.0,
    max_frames: int = 300,
    sheet_frames: int = 24,
    progress: Progress | None = None,
) -> ShowResult:
    """Write every generic figure of a dataset into ``out_dir`` (created if missing).

    Args:
        dataset: A :class:`~twinloop.datasets.Dataset` (or a filtered view).
        out_dir: Output folder; existing figures of the same name are replaced.
        episode: Position of the episode to draw step by step (default: the median-return
            one, see :func:`choose_episode`).
        hints: Names of observation fields, actions and failure codes.
        mean_interval: 95 % interval of a mean (e.g. ``twinloop.eval.bootstrap_ci``).
        rate_interval: 95 % interval of a proportion (``twinloop.eval.wilson_interval``).
        fps: Frames per second of the animations.
        max_frames: Most frames per animation (longer episodes are subsampled evenly).
        sheet_frames: Frames on a contact sheet.
        progress: ``progress(stage, done, total)`` while episodes are read and GIFs written.

    Raises:
        ValueError: The dataset has no episodes, or ``episode`` is out of range.
    """
    hints = hints or Hints()
    _require_episodes(dataset)
    if episode is not None:
        choose_episode(dataset, episode)  # a bad index fails before any reading
    if max_frames < 1 or sheet_frames < 1:
        raise ValueError(
            f"max_frames and sheet_frames must be >= 1, got {max_frames}, {sheet_frames}"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = episode_table(dataset, hints.failure_names, progress)
    k, reason = choose_episode(dataset, episode, table)
    title = dataset.id or dataset.path.parent.parent.name
    figures = [
        plot_returns(table, out, mean_interval, title),
        plot_endings(table, out, rate_interval, title),
    ]
    ep = dataset[k]
    obs_fig = plot_observations(ep, dataset.observation_space, out, k, hints)
    if obs_fig is not None:
        figures.append(obs_fig)
    figures.append(plot_actions(ep, dataset.action_space, out, k, hints))
    figures.extend(
        plot_images(
            ep,
            dataset.observation_space,
            out,
            k,
            fps=fps,
            max_frames=max_frames,
            sheet_frames=sheet_frames,
            progress=progress,
        )
    )
    return ShowResult(k, int(table.ids[k]), reason, figures)
