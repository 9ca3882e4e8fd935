"""Replay: re-issue a captured episode's commands on a backend and measure the divergence.

The basic tool for spotting a sim-vs-device mismatch, and the test that a simulator replays
its own captures bit for bit. Data flow of one episode::

    episode metadata seed --> env.reset(seed)         (the captured initial state where the
                                                       backend can make it: sim, twins)
    for t in 0..L-1:
        infos["applied_action"][t+1] (else actions[t]) --> env.step --> obs, reward, info
        divergence[t] = max |captured - replayed| of the observation after the step, the
        reward and the applied command (``info["applied_command"]``, when both have it)

The action re-issued is the one the captured backend really executed after clipping (the
``applied_action`` info, which the safety layer passes unchanged a second time), else the
controller's. A replay that ends before the capture did marks the remaining steps ``inf``.
Divergences compare numbers exactly: a deterministic backend replaying its own capture gives
0.0 everywhere. This module knows no system: the caller makes the env.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

#: Per-step quantities compared, in report order.
QUANTITIES = ("observation", "reward", "applied_command")


@dataclasses.dataclass(frozen=True)
class EpisodeReplay:
    """The divergence of one replayed episode from its capture.

    Attributes:
        episode_id: The episode's id in the dataset.
        seed: The seed it was reset with (None: not recorded, the replay starts elsewhere).
        captured_steps: Steps in the capture.
        replayed_steps: Steps the replay ran (fewer when it ended first).
        divergence: Quantity (:data:`QUANTITIES`) -> ``(captured_steps,)`` float64, the
            largest absolute difference at each step (NaN: not recorded on one side;
            inf: shapes differ or the replay had ended).
    """

    episode_id: int
    seed: int | None
    captured_steps: int
    replayed_steps: int
    divergence: dict[str, np.ndarray]

    def max(self, quantity: str) -> float:
        """Largest divergence of ``quantity`` over the episode (NaN when never compared)."""
        d = self.divergence[quantity]
        d = d[~np.isnan(d)]
        return float(d.max()) if d.size else math.nan

    def first_divergent_step(self) -> int | None:
        """The first step where anything differs, or None for an exact replay."""
        for t in range(self.captured_steps):
            if any(self.divergence[q][t] > 0 for q in QUANTITIES):
                return t
        return None

    @property
    def exact(self) -> bool:
        """Every compared quantity equal at every step, and the replay ran every step."""
        return self.first_divergent_step() is None and self.replayed_steps == self.captured_steps

    def to_json(self) -> dict[str, Any]:
        """Plain JSON: the summary and every step's divergence (NaN and inf as strings)."""
        return {
            "episode_id": self.episode_id,
            "seed": self.seed,
            "captured_steps": self.captured_steps,
            "replayed_steps": self.replayed_steps,
            "exact": self.exact,
            "first_divergent_step": self.first_divergent_step(),
            "max": {q: _json_float(self.max(q)) for q in QUANTITIES},
            "per_step": {q: [_json_float(v) for v in self.divergence[q]] for q in QUANTITIES},
        }


def _json_float(v: float) -> float | str | None:
    v = float(v)
    if math.isnan(v):
        return None
    return "inf" if math.isinf(v) else v


def _leaves(value: Any) -> list[Any]:
    """The arrays and texts of an observation (a dict or tuple in a fixed order), flat."""
    if isinstance(value, Mapping):
        return [leaf for k in sorted(value) for leaf in _leaves(value[k])]
    if isinstance(value, tuple | list) and not _is_numeric_sequence(value):
        return [leaf for v in value for leaf in _leaves(v)]
    return [value]


def _is_numeric_sequence(value: Sequence[Any]) -> bool:
    return all(isinstance(v, int | float | np.number) for v in value)


def _row(value: Any, t: int) -> Any:
    """Row ``t`` of a captured field (an array, or a dict/tuple of arrays)."""
    if isinstance(value, Mapping):
        return {k: _row(v, t) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(_row(v, t) for v in value)
    return value[t]


def difference(a: Any, b: Any) -> float:
    """Largest absolute difference between two observations, rewards or commands.

    Both NaN counts as equal; a shape or structure mismatch, or differing texts, is inf.
    """
    la, lb = _leaves(a), _leaves(b)
    if len(la) != len(lb):
        return math.inf
    worst = 0.0
    for x, y in zip(la, lb, strict=True):
        if isinstance(x, str | bytes) or isinstance(y, str | bytes):
            worst = max(worst, 0.0 if x == y else math.inf)
            continue
        xa, ya = np.asarray(x), np.asarray(y)
        if xa.shape != ya.shape:
            return math.inf
        if xa.size == 0:
            continue
        xf, yf = xa.astype(np.float64), ya.astype(np.float64)
        both_nan = np.isnan(xf) & np.isnan(yf)
        d = np.where(both_nan, 0.0, np.abs(xf - yf))
        d = np.where(np.isnan(d), math.inf, d)
        worst = max(worst, float(d.max()))
    return worst


def replay_episode(env: Any, episode: Any) -> EpisodeReplay:
    """Replay one captured episode (an :class:`~.reader.EpisodeData`) on ``env``.

    Args:
        env: A single Gymnasium env on the backend to replay on (reset here, not closed).
        episode: The captured episode.

    Returns:
        The per-step divergence (see the module doc).
    """
    steps = len(episode)
    seed = int(episode.metadata.get("seed", -1))
    seed_or_none = None if seed < 0 else seed
    infos = episode.infos
    applied = infos.get("applied_action")
    captured_cmd = infos.get("applied_command")
    div = {q: np.full(steps, math.inf) for q in QUANTITIES}
    env.reset(seed=seed_or_none)
    done_at = steps
    for t in range(steps):
        action = _row(applied, t + 1) if applied is not None else _row(episode.actions, t)
        obs, reward, terminated, truncated, info = env.step(action)
        div["observation"][t] = difference(_row(episode.observations, t + 1), obs)
        div["reward"][t] = difference(float(episode.rewards[t]), float(reward))
        got = info.get("applied_command")
        if captured_cmd is None or got is None:
            div["applied_command"][t] = math.nan
        else:
            div["applied_command"][t] = difference(_row(captured_cmd, t + 1), got)
        if (terminated or truncated) and t + 1 < steps:
            done_at = t + 1
            break
    return EpisodeReplay(int(episode.id), seed_or_none, steps, done_at, div)


def replay_dataset(
    dataset: Any,
    make_env: Callable[[], Any],
    episodes: Iterable[int] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[EpisodeReplay]:
    """Replay episodes of a dataset (a :class:`~.reader.Dataset`), each on a fresh reset.

    Args:
        dataset: The capture.
        make_env: Makes the env to replay on (called once; closed at the end).
        episodes: Positions of the episodes to replay (default: all).
        progress: Called as ``progress(done, total)`` after each episode.
    """
    chosen = list(range(len(dataset))) if episodes is None else [int(i) for i in episodes]
    out: list[EpisodeReplay] = []
    env = make_env()
    try:
        for k, i in enumerate(chosen, start=1):
            out.append(replay_episode(env, dataset[i]))
            if progress is not None:
                progress(k, len(chosen))
    finally:
        env.close()
    return out
