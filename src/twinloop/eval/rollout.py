"""Run a controller for N episodes on any env and collect per-episode results.

Episode ``e`` of a run seeded ``S`` always uses env seed ``S + e`` and controller seed
``S + e``, whether it runs in a single env or in row ``i`` of a vector env of any size, so a
run's results do not depend on ``n_envs`` or on the thread count.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from twinloop.controllers.base import Controller

#: Called as ``progress(episodes_done, episodes_total)``.
ProgressFn = Callable[[int, int], None]


@dataclasses.dataclass
class EpisodeResult:
    """One finished episode.

    Attributes:
        episode: Index in the run.
        seed: Env and controller seed.
        episode_return: Sum of rewards.
        steps: Number of steps.
        success: Whether the task's success condition held at the end.
        failure: Failure name (``"none"`` when there was none).
        terminated: Ended in a terminal state.
        truncated: Cut by the step limit.
        time_s: The system's own clock at the end (microscope time for STEM), if reported.
        metrics: Per-episode metrics the env names in ``metadata["episode_metrics"]``, read
            from the last step's info (e.g. ``twr50`` of the balloon).
        device: The device (fleet member) that ran it, when a run spans several ("": one).
    """

    episode: int
    seed: int
    episode_return: float
    steps: int
    success: bool
    failure: str
    terminated: bool
    truncated: bool
    time_s: float
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    device: str = ""


def _failure_name(metadata: dict[str, Any], code: Any) -> str:
    names: Sequence[str] = metadata.get("failure_names", ())
    if code is None:
        return "none"
    code = int(code)
    return names[code] if 0 <= code < len(names) else str(code)


def _result(
    episode: int, seed: int, ret: float, steps: int, term: bool, trunc: bool, info: dict, meta: dict
) -> EpisodeResult:
    return EpisodeResult(
        episode=episode,
        seed=seed,
        episode_return=float(ret),
        steps=int(steps),
        success=bool(info.get("is_success", False)),
        failure=_failure_name(meta, info.get("failure")),
        terminated=bool(term),
        truncated=bool(trunc),
        time_s=float(info.get("time_s", math.nan)),
        metrics={k: float(info[k]) for k in meta.get("episode_metrics", ()) if k in info},
    )


def run_single(
    env: gym.Env,
    controller: Controller,
    episodes: int,
    seed: int,
    progress: ProgressFn | None = None,
    reset_options: Callable[[int], dict[str, Any] | None] | None = None,
) -> list[EpisodeResult]:
    """Run ``episodes`` episodes one after another in a single env."""
    meta = dict(env.metadata)
    results = []
    for e in range(episodes):
        s = seed + e
        obs, info = env.reset(seed=s, options=reset_options(e) if reset_options else None)
        controller.reset(1, np.array([s]))
        ret, steps = 0.0, 0
        while True:
            action = controller.act_one(obs)
            obs, reward, term, trunc, info = env.step(action)
            ret += float(reward)
            steps += 1
            if term or trunc:
                break
        results.append(_result(e, s, ret, steps, term, trunc, info, meta))
        if progress:
            progress(e + 1, episodes)
    return results


def run_vector(
    env: gym.vector.VectorEnv,
    controller: Controller,
    episodes: int,
    seed: int,
    progress: ProgressFn | None = None,
    on_idle: Callable[[np.ndarray], None] | None = None,
    reset_options: Callable[[np.ndarray], dict[str, Any]] | None = None,
) -> list[EpisodeResult]:
    """Run ``episodes`` episodes spread over the rows of a vector env.

    Each row runs episode after episode; an ended row is re-seeded with the next episode's
    seed (a masked reset), so episode ``e`` sees seed ``seed + e`` as in :func:`run_single`.
    Rows with no episode left keep stepping; ``on_idle(mask)`` is told which rows those are
    whenever the set grows (a recorder uses it to skip their extra episodes).
    ``reset_options(row_episode)`` adds options to every reset, given each row's episode
    index (-1 for a row with none left), e.g. to pin episode ``e`` of a split.
    """
    n = env.num_envs
    meta = dict(env.metadata)
    row_episode = np.full(n, -1, dtype=np.int64)
    first = min(n, episodes)
    row_episode[:first] = np.arange(first)
    if on_idle is not None:
        on_idle(row_episode < 0)
    seeds = [seed + int(e) if e >= 0 else seed + episodes + i for i, e in enumerate(row_episode)]
    obs, _ = env.reset(seed=seeds, options=reset_options(row_episode) if reset_options else None)
    controller.reset(n, np.array(seeds))
    next_episode = first
    returns = np.zeros(n)
    steps = np.zeros(n, dtype=np.int64)
    results: dict[int, EpisodeResult] = {}
    while len(results) < episodes:
        actions = controller.act(obs)
        obs, reward, term, trunc, infos = env.step(actions)
        returns += reward
        steps += 1
        ended = np.flatnonzero(term | trunc)
        if ended.size == 0:
            continue
        final = infos["final_info"]
        restart = np.zeros(n, dtype=np.bool_)
        new_seeds: list[int | None] = [None] * n
        for i in ended:
            e = int(row_episode[i])
            if e >= 0:
                info = {k: v[i] for k, v in final.items() if not k.startswith("_")}
                results[e] = _result(
                    e, seed + e, returns[i], steps[i], term[i], trunc[i], info, meta
                )
                if progress:
                    progress(len(results), episodes)
            returns[i] = 0.0
            steps[i] = 0
            if next_episode < episodes:
                row_episode[i] = next_episode
                new_seeds[i] = seed + next_episode
                restart[i] = True
                next_episode += 1
            else:
                row_episode[i] = -1
        if on_idle is not None and (row_episode[ended] < 0).any():
            on_idle(row_episode < 0)
        if restart.any():
            options = {"reset_mask": restart}
            if reset_options:
                options.update(reset_options(row_episode))
            obs, _ = env.reset(seed=new_seeds, options=options)
            controller.reset(n, np.array([s if s is not None else 0 for s in new_seeds]), restart)
    return [results[e] for e in range(episodes)]


def summarize(results: Sequence[EpisodeResult]) -> dict[str, Any]:
    """Success rate (with a 95 % Wilson interval), mean return, steps, time, failures.

    Each per-episode metric (``EpisodeResult.metrics``) is reported as ``<name>`` (the mean)
    and ``<name>_ci95`` (a percentile bootstrap interval of the mean).
    """
    n = len(results)
    if n == 0:
        raise ValueError("no episodes to summarize")
    wins = sum(r.success for r in results)
    lo, hi = wilson_interval(wins, n)
    success_times = [r.time_s for r in results if r.success]
    failures = Counter(r.failure for r in results if r.failure != "none")
    return {
        "episodes": n,
        "success_rate": wins / n,
        "success_rate_ci95": [lo, hi],
        "mean_return": float(np.mean([r.episode_return for r in results])),
        "mean_steps": float(np.mean([r.steps for r in results])),
        "median_time_to_success_s": float(np.median(success_times)) if success_times else math.nan,
        "truncated": sum(r.truncated for r in results),
        "failures": dict(sorted(failures.items())),
        **_metric_summary(results),
    }


def _metric_summary(results: Sequence[EpisodeResult]) -> dict[str, Any]:
    from twinloop.eval.bootstrap import bootstrap_ci

    out: dict[str, Any] = {}
    names = sorted({k for r in results for k in r.metrics})
    for name in names:
        values = np.array([r.metrics[name] for r in results if name in r.metrics])
        out[name] = float(values.mean())
        out[f"{name}_ci95"] = list(bootstrap_ci(values))
    return out


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (default 95 %).

    Wilson, "Probable inference, the law of succession, and statistical inference",
    JASA 22 (1927): keeps coverage near nominal for small n and rates near 0 or 1.
    """
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)
