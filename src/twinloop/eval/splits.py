"""Success per evaluation split, in the layout of LLaRP's results table.

An env with named evaluation splits (``metadata["evaluation_splits"]``, e.g.
``twinloop/LangRearrange-v0``'s ten from LLaRP [LLaRP]) pins each reset to one episode of one
split through its reset options (``{"backend": {"split": name, "episode": k}}``). A split
evaluation runs episodes ``0..n-1`` of every split once, for any controller and backend, and
tabulates the success rate with a 95 % Wilson interval per split, an ``overall`` row over the
benchmark's splits pooled (LLaRP's headline number is the mean over its 1,000 episodes), then
the env's further splits (``metadata["extra_evaluation_splits"]``: our compositional split),
which ``overall`` leaves out.

[LLaRP] Szot et al., "Large Language Models as Generalizable Policies for Embodied Tasks",
ICLR 2024, arXiv:2310.17722 (Table 1: success per split).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from twinloop.eval.rollout import EpisodeResult, wilson_interval

#: The row that pools the benchmark's splits.
OVERALL = "overall"


def splits_of(metadata: Mapping[str, Any], which: str, env_id: str) -> list[str]:
    """The splits ``--split which`` names: ``"all"`` (every evaluation split) or one name.

    Raises:
        ValueError: The env has no evaluation splits, or ``which`` is not one of its splits.
    """
    evaluation = tuple(metadata.get("evaluation_splits", ()))
    extra = tuple(metadata.get("extra_evaluation_splits", ()))
    known = tuple(metadata.get("splits", ()))
    if not evaluation and not known:
        raise ValueError(f"--split: {env_id} has no splits (it takes no --split)")
    if which == "all":
        return [*evaluation, *extra]
    if which not in known:
        raise ValueError(
            f"--split {which!r}: not a split of {env_id}; valid: 'all', {', '.join(known)}"
        )
    return [which]


def split_size(metadata: Mapping[str, Any], split: str) -> int:
    """Episodes in ``split`` (``metadata["split_sizes"]``)."""
    return int(metadata["split_sizes"][split])


def reset_options(split: str) -> tuple[Callable[[int], dict], Callable[[np.ndarray], dict]]:
    """Reset options pinning episode ``k`` of ``split``: for a single env, for a vector env.

    The vector form takes each row's episode index (-1 for a row with none left, whose
    reset is masked out; it gets a valid index all the same).
    """

    def single(k: int) -> dict[str, Any]:
        return {"backend": {"split": split, "episode": int(k)}}

    def vector(rows: np.ndarray) -> dict[str, Any]:
        return {"backend": {"split": split, "episode": np.maximum(np.asarray(rows), 0)}}

    return single, vector


def split_rows(
    results: Mapping[str, Sequence[EpisodeResult]], benchmark: Sequence[str]
) -> list[dict[str, Any]]:
    """One row per split, then ``overall`` over the ``benchmark`` splits, then the rest."""

    def row(name: str, eps: Sequence[EpisodeResult]) -> dict[str, Any]:
        n = len(eps)
        wins = sum(bool(e.success) for e in eps)
        lo, hi = wilson_interval(wins, n)
        ret = float(np.mean([e.episode_return for e in eps])) if n else float("nan")
        steps = float(np.mean([e.steps for e in eps])) if n else float("nan")
        return {
            "split": name,
            "episodes": n,
            "successes": wins,
            "success_rate": wins / n if n else float("nan"),
            "success_rate_ci95": (lo, hi),
            "mean_return": ret,
            "mean_steps": steps,
        }

    in_benchmark = [s for s in results if s in benchmark]
    rows = [row(s, results[s]) for s in in_benchmark]
    if len(in_benchmark) > 1:
        rows.append(row(OVERALL, [e for s in in_benchmark for e in results[s]]))
    rows += [row(s, results[s]) for s in results if s not in benchmark]
    return rows


def plot_split_rows(rows: Sequence[dict[str, Any]], title: str, path: str | Path) -> Path:
    """Success rate (95 % Wilson interval) and mean return per split, ``overall`` apart."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["split"] for r in rows]
    x = np.arange(len(rows))
    rate = np.array([r["success_rate"] for r in rows])
    ci = np.array([r["success_rate_ci95"] for r in rows])
    colours = ["tab:red" if n == OVERALL else "tab:blue" for n in names]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2))
    ax1.bar(x, rate, color=colours, alpha=0.75)
    err = np.clip([rate - ci[:, 0], ci[:, 1] - rate], 0, None)
    ax1.errorbar(x, rate, yerr=err, fmt="none", color="k", capsize=3)
    ax1.set_ylim(0, 1)
    ax1.set_ylabel("success rate (95% Wilson CI)")
    ax2.bar(x, [r["mean_return"] for r in rows], color=colours, alpha=0.75)
    ax2.set_ylabel("mean return")
    for ax in (ax1, ax2):
        ax.set_xticks(x, names, fontsize=7, rotation=35, ha="right")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
