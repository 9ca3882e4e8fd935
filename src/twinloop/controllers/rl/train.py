"""Train an agent on a vector env: checkpoints, exact resume, metrics, a learning curve.

Data flow of one vector step (``SAME_STEP`` auto-reset)::

    obs ──agent.act──> actions ──env.step──> obs2, reward, terminated, truncated, info
     │                                         │ rows that ended: final_obs from info
     └──────────── agent.observe(obs, reward, terminated, truncated, next_obs) ── learns

A run is cut into segments of ``checkpoint_every`` env steps (rounded up to whole rollouts
or vector steps). Every segment starts with ``env.reset(seed=segment_seed(seed, k))`` and
ends with a checkpoint, and episodes still running at a segment's end count as truncated
(bootstrapped, as a time limit is). Because the env state at a segment's start depends only
on the seed and the segment's index, a run resumed from a checkpoint after a kill continues
bit for bit as the uninterrupted run would have (the checkpoint holds the learner, the
replay buffer, the normaliser and every random state). The price is that episodes longer
than a segment are cut: keep ``checkpoint_every`` well above ``n_envs`` times an episode.

Files in the run folder: ``run.json`` (what was asked), ``checkpoint-<step>/`` (the newest
two), ``metrics.csv`` (one row per log interval: env steps/s, learner updates, recent
return, losses), ``episodes.csv`` (every finished episode), ``metrics.json`` (both, plus a
summary) and ``learning_curve.png`` (when matplotlib is installed).

Reincarnation (``teacher=``, value-based agents; :mod:`~twinloop.controllers.rl.reincarnate`):
a fresh run first pretrains offline on the teacher's captured data (any observation the
student encodes: vectors, images, Dicts), then the teacher's action on every state the
student visits is stored with the transition for the distillation term. The agent is told
the teacher's mean return once and the student's recent return (:data:`RECENT` episodes)
after every step that ends an episode, for QDagger's performance-based decay; both are in
its checkpointed state.
The teacher is reset with the envs at each segment's start and per row when an episode ends,
so a resumed run asks it the same questions.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from twinloop.controllers.base import Controller
from twinloop.controllers.rl import AGENTS
from twinloop.controllers.rl.agent import Agent
from twinloop.controllers.rl.checkpoint import latest_checkpoint, read_part, save_checkpoint
from twinloop.core.config import override
from twinloop.core.registry import load

#: Called with each log row (a dict: ``env_step``, ``total_steps``, ``env_steps_per_s``,
#: ``return_recent``, ``episodes``, ``updates`` and the learner's statistics).
ProgressFn = Callable[[dict[str, Any]], None]
#: Finished episodes averaged into ``return_recent``.
RECENT = 20


def make_agent(
    name: str,
    observation_space: gym.Space,
    action_space: gym.Space,
    n_envs: int,
    total_steps: int,
    seed: int,
    overrides: Mapping[str, Any] | None = None,
) -> Agent:
    """Build agent ``name`` with its default config changed by ``overrides``.

    Raises:
        ValueError: Unknown agent (the message lists valid ones) or a bad override.
    """
    if name not in AGENTS:
        raise ValueError(f"unknown agent {name!r}; valid agents: {', '.join(AGENTS)}")
    cls = load(AGENTS[name])
    config = override(cls.Config(), **dict(overrides or {}))
    return cls(observation_space, action_space, n_envs, total_steps, config, seed)


def segment_seed(seed: int, segment: int) -> int:
    """The env seed of segment ``segment`` of a run seeded ``seed`` (segment 0: ``seed``)."""
    if segment == 0:
        return int(seed)
    state = np.random.SeedSequence(int(seed), spawn_key=(int(segment),)).generate_state(1)
    return int(state[0] >> 1)  # 31 bits: env i gets seed + i


@dataclasses.dataclass
class TrainResult:
    """What a run did.

    Attributes:
        run_dir: The run's folder.
        env_steps: Env steps done in all (including those before a resume).
        episodes: Episodes finished.
        return_recent: Mean return of the last finished episodes (NaN if none).
        resumed_from: Env step of the checkpoint the run continued from (0: a fresh run).
        wall_s: Seconds this call took.
        env_s: Seconds of it spent inside ``env.step``.
        agent_s: Seconds spent in the agent (acting and learning).
        updates: Learner updates in all.
        curve: The learning-curve PNG, or None (with ``note`` saying why).
        note: Anything the caller should tell the user.
    """

    run_dir: Path
    env_steps: int
    episodes: int
    return_recent: float
    resumed_from: int
    wall_s: float
    env_s: float
    agent_s: float
    updates: int
    curve: Path | None
    note: str = ""


def _check_env(env: gym.vector.VectorEnv) -> None:
    from gymnasium.vector import AutoresetMode

    mode = env.metadata.get("autoreset_mode")
    if mode not in (AutoresetMode.SAME_STEP, "same-step", "SameStep"):
        raise ValueError(
            f"training needs a vector env with autoreset_mode SAME_STEP (twinloop.make_vec "
            f"gives one), not {mode!r}"
        )


def _round_up(value: int, unit: int) -> int:
    return max(unit, int(math.ceil(value / unit)) * unit)


def train(
    env: gym.vector.VectorEnv,
    agent_name: str,
    steps: int,
    seed: int,
    run_dir: str | Path,
    *,
    overrides: Mapping[str, Any] | None = None,
    env_id: str = "",
    env_overrides: Mapping[str, Any] | None = None,
    checkpoint_every: int = 50_000,
    resume: bool = True,
    progress: ProgressFn | None = None,
    log_every: int | None = None,
    teacher: Controller | None = None,
    teacher_data: Sequence[Any] | None = None,
    teacher_name: str = "",
) -> TrainResult:
    """Train ``agent_name`` on ``env`` for ``steps`` env steps (see the module docstring).

    Args:
        env: A ``SAME_STEP`` vector env (``twinloop.make_vec``); not closed here.
        agent_name: One of :data:`~twinloop.controllers.rl.AGENTS`.
        steps: Env steps in all, rounded up to whole rollouts (PPO) or vector steps.
        seed: Seeds the agent and every segment's env reset.
        run_dir: Folder for checkpoints and metrics.
        overrides: Agent config fields to change (``{"lr": 1e-3}``).
        env_id: Recorded in ``run.json`` and the policy.
        env_overrides: The env config changes ``env`` was made with (recorded; a resumed run
            must give the same).
        checkpoint_every: Env steps per segment (rounded up like ``steps``).
        resume: Continue from the newest checkpoint in ``run_dir`` when there is one; a fresh
            run otherwise. False refuses a folder that holds checkpoints.
        progress: Called with every log row.
        log_every: Env steps between log rows (default: about 1 % of the run).
        teacher: Reincarnate the (value-based) agent from this controller (QDagger).
        teacher_data: The teacher's captured episodes (needed with ``teacher``): a
            :class:`twinloop.datasets.Dataset`'s episodes, e.g. ``list(open_dataset(path))``.
        teacher_name: Recorded in ``run.json`` (a resumed run must name the same teacher).

    Returns:
        A :class:`TrainResult`.

    Raises:
        ValueError: Bad arguments, or a checkpoint written for another run.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be >= 1, got {checkpoint_every}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    _check_env(env)
    run_dir = Path(run_dir)
    n = env.num_envs
    overrides = dict(overrides or {})
    agent = make_agent(
        agent_name, env.single_observation_space, env.single_action_space, n, steps, seed,
        overrides,
    )  # fmt: skip
    if teacher is not None:
        if not hasattr(agent, "pretrain"):
            raise ValueError(
                f"--teacher needs a value-based agent (dqn, qr-dqn, bbf), not {agent_name}"
            )
        if teacher_data is None:
            raise ValueError("a teacher needs its captured data (teacher_data)")
    chunk = int(getattr(agent, "rollout_steps", n))
    total = _round_up(steps, chunk)
    segment = _round_up(checkpoint_every, chunk)
    log_every = _round_up(log_every or max(1, total // 100), n)
    run = {
        "env_id": env_id,
        "agent": agent_name,
        "seed": int(seed),
        "n_envs": n,
        "steps": total,
        "checkpoint_every": segment,
        "overrides": _plain(overrides),
        "env_overrides": _plain(dict(env_overrides or {})),
        **({"teacher": teacher_name or getattr(teacher, "name", "")} if teacher else {}),
    }
    history: dict[str, Any] = {"log": [], "episodes": [], "wall_s": 0.0}
    found = latest_checkpoint(run_dir)
    if found is not None and not resume:
        raise ValueError(
            f"{run_dir} already holds checkpoints ({found.name}); resume or use a new folder"
        )
    if found is None and getattr(agent.config, "init_encoder", ""):
        from twinloop.controllers.rl.pretrain import install_encoder, load_pretrained

        install_encoder(agent, load_pretrained(agent.config.init_encoder))
    if found is not None:
        meta, arrays = read_part(found, "state")
        saved = meta["trainer"]["run"]
        different = {k: (saved.get(k), v) for k, v in run.items() if saved.get(k) != v}
        if different:
            raise ValueError(
                f"{found} belongs to another run; differing settings (saved, now): {different}"
            )
        agent.load_state(meta, arrays)
        history = meta["trainer"]["history"]
    elif teacher is not None:
        from twinloop.controllers.rl.reincarnate import teacher_replay, teacher_return

        data = teacher_replay(teacher_data, agent.layout, agent.action, agent.config.window)
        agent.set_teacher_return(teacher_return(teacher_data))
        history["pretrain"] = agent.pretrain(data, agent.config.pretrain_updates)
    run_dir.mkdir(parents=True, exist_ok=True)
    _atomic_text(run_dir / "run.json", json.dumps(run, indent=1))
    resumed_from = agent.env_steps

    t_start = time.perf_counter()
    wall0 = float(history["wall_s"])
    env_s = agent_s = 0.0
    episodes: list[list[float]] = history["episodes"]
    stats: dict[str, float] = {}
    last_log_step = history["log"][-1]["env_step"] if history["log"] else 0
    last_log_time, last_log_env_step = t_start, agent.env_steps
    returns = np.zeros(n)
    lengths = np.zeros(n, np.int64)
    # the student's recent return, for a decay that follows it (QDagger's performance decay)
    record_return = getattr(agent, "record_return", None)
    step = agent.env_steps
    while step < total:
        k = step // segment
        seg_end = min((k + 1) * segment, total)
        env_seed = segment_seed(seed, k)
        obs, _ = env.reset(seed=env_seed)
        seeds = env_seed + np.arange(n)
        if teacher is not None:
            teacher.reset(n, seeds)
        returns[:] = 0.0
        lengths[:] = 0
        while step < seg_end:
            t0 = time.perf_counter()
            actions = agent.act(obs)
            extra = {}
            if teacher is not None:
                extra["teacher_action"] = np.asarray(teacher.act(obs)) - agent.action["start"]
            t1 = time.perf_counter()
            obs2, reward, terminated, truncated, info = env.step(actions)
            t2 = time.perf_counter()
            ended = np.asarray(terminated) | np.asarray(truncated)
            next_obs = with_final_obs(obs2, info, ended)
            s = agent.observe(obs, reward, terminated, truncated, next_obs, **extra)
            if teacher is not None and ended.any():
                teacher.reset(n, seeds, mask=ended)
            t3 = time.perf_counter()
            env_s += t2 - t1
            agent_s += (t1 - t0) + (t3 - t2)
            stats = s or stats
            step = agent.env_steps
            returns += reward
            lengths += 1
            for i in np.flatnonzero(ended):
                episodes.append([step, float(returns[i]), int(lengths[i])])
                returns[i], lengths[i] = 0.0, 0
            if record_return is not None and ended.any():
                record_return(_recent(episodes))
            obs = obs2
            if step - last_log_step >= log_every or step >= total:
                now = time.perf_counter()
                row = {
                    "env_step": step,
                    "total_steps": total,
                    "wall_s": wall0 + now - t_start,
                    "env_steps_per_s": (step - last_log_env_step) / max(now - last_log_time, 1e-9),
                    "updates": agent.updates,
                    "episodes": len(episodes),
                    "return_recent": _recent(episodes),
                    **stats,
                }
                history["log"].append(row)
                last_log_step, last_log_time, last_log_env_step = step, now, step
                if progress is not None:
                    progress(row)
        agent.end_segment()
        history["wall_s"] = wall0 + time.perf_counter() - t_start
        history["episodes"] = episodes
        policy = agent.policy()
        policy[0]["env_id"] = env_id
        state_meta, state_arrays = agent.state()
        state_meta["trainer"] = {"run": run, "history": history}
        save_checkpoint(run_dir, step, policy, (state_meta, state_arrays))
        _write_metrics(run_dir, run, history)
    curve, note = write_learning_curve(run_dir, history, title=f"{agent_name} on {env_id or 'env'}")
    return TrainResult(
        run_dir=run_dir,
        env_steps=agent.env_steps,
        episodes=len(episodes),
        return_recent=_recent(episodes),
        resumed_from=resumed_from,
        wall_s=time.perf_counter() - t_start,
        env_s=env_s,
        agent_s=agent_s,
        updates=agent.updates,
        curve=curve,
        note=note,
    )


def with_final_obs(obs: Any, info: Mapping[str, Any], ended: np.ndarray) -> Any:
    """``obs`` with the final observation (``info["final_obs"]``) in the rows that ``ended``.

    ``obs`` is a batch array or a Dict of batch arrays (each final observation then a dict);
    it is returned unchanged (not copied) when no row ended.
    """
    if not ended.any():
        return obs
    rows = np.flatnonzero(ended)
    final = info["final_obs"]
    if isinstance(obs, Mapping):
        out = {k: np.array(v, copy=True) for k, v in obs.items()}
        for i in rows:
            for k in out:
                out[k][i] = final[i][k]
        return out
    out = np.array(obs, copy=True)
    for i in rows:
        out[i] = final[i]
    return out


def _plain(values: dict[str, Any]) -> dict[str, Any]:
    """JSON's view of override values (tuples as lists), so saved and new runs compare."""
    return json.loads(json.dumps(values, default=list))


def _recent(episodes: list[list[float]]) -> float:
    if not episodes:
        return math.nan
    return float(np.mean([e[1] for e in episodes[-RECENT:]]))


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _csv_text(rows: list[dict[str, Any]], columns: list[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _write_metrics(run_dir: Path, run: dict[str, Any], history: dict[str, Any]) -> None:
    log = history["log"]
    columns = list(dict.fromkeys(k for row in log for k in row))
    _atomic_text(run_dir / "metrics.csv", _csv_text(log, columns))
    eps = [{"env_step": e[0], "return": e[1], "length": e[2]} for e in history["episodes"]]
    _atomic_text(run_dir / "episodes.csv", _csv_text(eps, ["env_step", "return", "length"]))
    summary = {
        "env_steps": log[-1]["env_step"] if log else 0,
        "episodes": len(eps),
        "return_recent": _recent(history["episodes"]),
        "wall_s": history["wall_s"],
    }
    payload = _no_nan({"run": run, "summary": summary, "log": log, "episodes": eps})
    _atomic_text(run_dir / "metrics.json", json.dumps(payload, indent=1, allow_nan=False))


def _no_nan(value: Any) -> Any:
    """``value`` with NaN floats as None (strict JSON)."""
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_no_nan(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def write_learning_curve(
    run_dir: Path, history: dict[str, Any], title: str = ""
) -> tuple[Path | None, str]:
    """``learning_curve.png``: episode returns and their running mean against env steps.

    Returns:
        ``(path, "")``, or ``(None, why)`` when matplotlib (the ``plot`` extra) is missing or
        no episode finished.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None, "no learning_curve.png: matplotlib is missing (pip install 'twinloop[plot]')"
    eps = np.asarray(history["episodes"], dtype=np.float64).reshape(-1, 3)
    if eps.shape[0] == 0:
        return None, "no learning_curve.png: no episode finished"
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(eps[:, 0], eps[:, 1], ".", alpha=0.3, ms=3, label="episode return")
    window = min(RECENT, eps.shape[0])
    mean = np.convolve(eps[:, 1], np.ones(window) / window, mode="valid")
    ax.plot(eps[window - 1 :, 0], mean, "-", lw=2, label=f"mean of {window}")
    ax.set_xlabel("env steps")
    ax.set_ylabel("return")
    ax.set_title(title)
    ax.legend(loc="best")
    fig.tight_layout()
    path = run_dir / "learning_curve.png"
    tmp = run_dir / ".learning_curve.png.tmp"
    fig.savefig(tmp, format="png")
    plt.close(fig)
    os.replace(tmp, path)
    return path, ""
