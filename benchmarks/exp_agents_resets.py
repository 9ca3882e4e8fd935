"""Experiment 3 of issue 17: resets x replay ratio, run by ``exp_agents.py``.

Usage::

    python benchmarks/exp_agents.py resets [--seeds 5] [--rr-steps 10000] [--rr-workers 2]
    python benchmarks/exp_agents.py resets-cartpole [--seeds 3] ...   # the cross-check

The primacy-bias paper (Nikishin et al. 2022, ICML) finds that periodic resets of part of
the network let an agent turn a higher replay ratio (gradient updates per env step) into a
higher score, where without resets more updates per step stop paying or hurt. D'Oro et al.
(2023, ICLR) push the same idea to higher replay ratios with shrink-and-perturb resets.

Design: ``dqn`` (the preset's defaults: Huber TD, a hard target copy every 500 updates,
Adam) with a small MLP, at each replay ratio of ``--rr-ratios``, ``--seeds`` seeds per
cell, all at equal env steps, in three arms (``--rr-arms``):

* ``no resets``;
* ``resets``: every ``--rr-reset-interval`` *updates* (``reset_interval``), the encoder is
  shrunk and perturbed, ``alpha * theta + (1 - alpha) * fresh`` with ``alpha = 0.5``, and
  the Q head re-initialised (BBF's reset, :func:`twinloop.controllers.rl.bbf.reset_params`,
  with a fresh optimiser; the target network is kept). The interval counts updates, as
  BBF's does, so a higher replay ratio resets more often per env step;
* ``resets xRR``: the same reset every ``--rr-reset-env-steps`` *env steps* (an interval of
  that times the replay ratio in updates), so every replay ratio gets the same resets at
  the same points of its data and more updates to recover from each.

Every agent then plays the same held-out episodes greedily (seeds 90,000 on); a run's
score is its mean TWR50 over them (balloon; its mean return too) or its mean return
(CartPole). Cells are aggregated with the IQM and a 95 % stratified bootstrap interval over
seeds (one task, so one stratum; :func:`twinloop.eval.metrics.aggregate`), with the
probability that each reset arm beats no resets at each replay ratio
(:func:`~twinloop.eval.metrics.probability_of_improvement`).

Why the balloon: our value-based agents take ``Discrete`` actions only, and nothing in the
toolkit discretises the DeepMind Control tasks' ``Box`` actions (no action-bin wrapper), so
the DMC tasks would need a new feature. ``BalloonStationKeeping-v0`` is discrete (down,
stay, up) and its simulator steps fast enough that the learner's updates dominate the cost.
Flights are shortened to ``--rr-flight-steps`` (240 = 12 h; the task's own are 48 h) so
that a CPU-sized run of ten thousand env steps still sees about 40 finished flights.
``resets-cartpole`` runs the same design on Gymnasium's ``CartPole-v1`` (not a twinloop env:
the task the test suite uses to show that ``dqn`` learns), a cross-check where the agent
does learn within the budget.

Each run writes ``result.json`` in its folder under ``--work``; a later call with the same
``--work`` reuses finished runs (resume, or add an arm or seeds).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from exp_plots import pyplot, save

BALLOON = "twinloop/BalloonStationKeeping-v0"
CARTPOLE = "CartPole-v1"
RESULTS = Path(__file__).resolve().parent / "results"
#: The arms: no resets; resets every ``--rr-reset-interval`` updates at every replay ratio;
#: resets every ``--rr-reset-env-steps`` env steps (``that x replay ratio`` updates).
ARMS = ("no resets", "resets", "resets xRR")
#: ``--rr-arms`` names of the arms.
ARM_IDS = {"none": "no resets", "updates": "resets", "env": "resets xRR"}
COLOURS = {"no resets": "tab:blue", "resets": "tab:orange", "resets xRR": "tab:green"}
#: What a run's score is on each task.
SCORE_NAMES = {"balloon": "TWR50", "cartpole": "return"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of this experiment (prefix ``--rr-``)."""
    g = parser.add_argument_group("resets x replay ratio (experiments 'resets', 'resets-cartpole')")
    g.add_argument(
        "--rr-steps", type=int, default=10_000, help="env steps per run (default: 10000)"
    )
    g.add_argument(
        "--rr-ratios", default="1,4,16", help="replay ratios, comma-separated (default: 1,4,16)"
    )
    g.add_argument(
        "--rr-reset-interval",
        type=int,
        default=3200,
        help="updates between resets in the 'resets' arm (default: 3200)",
    )
    g.add_argument(
        "--rr-reset-env-steps",
        type=int,
        default=4000,
        help="env steps between resets in the 'resets xRR' arm, whose interval is this x the "
        "replay ratio in updates (0: leave that arm out; default: 4000)",
    )
    g.add_argument(
        "--rr-arms",
        default="none,updates,env",
        help="arms to run: none (no resets), updates (every --rr-reset-interval updates), env "
        "(every --rr-reset-env-steps env steps); finished runs in --work are reused "
        "(default: all three)",
    )
    g.add_argument("--rr-agent", default="dqn", help="value-based agent preset (default: dqn)")
    g.add_argument(
        "--rr-hidden", default="64,64", help="MLP widths of the encoder (default: 64,64)"
    )
    g.add_argument("--rr-batch", type=int, default=32, help="batch size (default: 32)")
    g.add_argument(
        "--rr-learning-starts", type=int, default=500, help="env steps before learning (500)"
    )
    g.add_argument(
        "--rr-flight-steps",
        type=int,
        default=240,
        help="3-min steps per flight, training and evaluation (default: 240 = 12 h)",
    )
    g.add_argument(
        "--rr-eval", type=int, default=20, help="held-out greedy flights per agent (default: 20)"
    )
    g.add_argument(
        "--rr-workers", type=int, default=1, help="runs trained in parallel processes (default: 1)"
    )


def _arms(args: argparse.Namespace) -> tuple[str, ...]:
    """The arms this call runs (``--rr-arms``; 'resets xRR' only with a positive interval)."""
    ids = [a.strip() for a in args.rr_arms.split(",") if a.strip()]
    bad = [a for a in ids if a not in ARM_IDS]
    if bad:
        raise ValueError(f"unknown arm(s) {bad}; valid: {', '.join(ARM_IDS)}")
    arms = tuple(arm for i, arm in ARM_IDS.items() if i in ids)
    return arms if args.rr_reset_env_steps > 0 else tuple(a for a in arms if a != "resets xRR")


def _reset_interval(args: argparse.Namespace, ratio: float, arm: str) -> int:
    """Updates between resets of ``arm`` at replay ratio ``ratio`` (0: none)."""
    if arm == "resets":
        return args.rr_reset_interval
    if arm == "resets xRR":
        return round(args.rr_reset_env_steps * ratio)
    return 0


def _overrides(args: argparse.Namespace, ratio: float, arm: str) -> dict[str, Any]:
    """Agent settings of one cell: only ``replay_ratio`` and ``reset_interval`` differ."""
    return {
        "hidden": tuple(int(h) for h in args.rr_hidden.split(",")),
        "batch_size": args.rr_batch,
        "learning_starts": args.rr_learning_starts,
        "buffer_size": max(args.rr_steps, args.rr_batch),  # the whole run fits
        "replay_ratio": float(ratio),
        "reset_interval": _reset_interval(args, ratio, arm),
    }


def _one_run(cell: dict[str, Any]) -> dict[str, Any]:
    """Train one (arm, replay ratio, seed) and fly it on the held-out flights.

    Top-level so that a spawned worker process can run it. The result is also written to
    ``result.json`` in the run's folder, and a run whose folder has one is not run again, so
    an interrupted experiment resumes with the same ``--work``.
    """
    from twinloop.controllers import make_controller
    from twinloop.controllers.rl.train import train
    from twinloop.eval.rollout import run_single

    run = Path(cell["run_dir"])
    done = run / "result.json"
    if done.exists():  # finished by an earlier call with the same --work: reuse
        return json.loads(done.read_text())
    balloon = cell["task"] == "balloon"
    t0 = time.perf_counter()
    vec = _vec_env(cell["task"], cell["n_envs"], cell["flight_steps"])
    try:
        train(
            vec, cell["agent"], cell["steps"], cell["seed"], run, overrides=cell["overrides"],
            env_id=BALLOON if balloon else "", checkpoint_every=cell["steps"],
            log_every=cell["steps"] // 40,
        )  # fmt: skip
    finally:
        vec.close()
    train_s = time.perf_counter() - t0
    env = _env(cell["task"], cell["flight_steps"])
    try:
        flights = run_single(env, make_controller(f"agent:{run}", env), cell["eval"], 90_000)
    finally:
        env.close()
    metrics = json.loads((run / "metrics.json").read_text())
    rows = metrics["log"]
    updates = int(rows[-1]["updates"]) if rows else 0
    interval = cell["overrides"]["reset_interval"]
    result = {
        **{k: cell[k] for k in ("arm", "ratio", "seed")},
        "score": _score(cell["task"], flights),
        "return": float(np.mean([f.episode_return for f in flights])),
        "updates": updates,
        "resets": updates // interval if interval else 0,
        "updates_since_reset": updates % interval if interval else updates,
        "curve": [[r["env_step"], _finite(r["return_recent"])] for r in rows],
        "train_s": train_s,
        "wall_s": time.perf_counter() - t0,
    }
    done.write_text(json.dumps(result))
    return result


def _vec_env(task: str, n_envs: int, flight_steps: int) -> Any:
    """The training vector env of ``task`` (``SAME_STEP`` auto-reset)."""
    if task == "balloon":
        import twinloop

        return twinloop.make_vec(BALLOON, n_envs, max_steps=flight_steps)
    import gymnasium as gym

    return gym.make_vec(
        CARTPOLE,
        num_envs=n_envs,
        vectorization_mode="sync",
        vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP},
    )


def _env(task: str, flight_steps: int) -> Any:
    """A single env of ``task`` for the held-out episodes."""
    if task == "balloon":
        import twinloop

        return twinloop.make(BALLOON, max_steps=flight_steps)
    import gymnasium as gym

    return gym.make(CARTPOLE)


def _score(task: str, episodes: list) -> float:
    """A run's score: mean TWR50 (balloon) or mean return (CartPole) of its episodes."""
    if task == "balloon":
        return float(np.mean([e.metrics["twr50"] for e in episodes]))
    return float(np.mean([e.episode_return for e in episodes]))


def _finite(x: float | None) -> float | None:
    """``x``, or ``None`` when it is missing or NaN (no finished flight yet): plain JSON."""
    return float(x) if x is not None and np.isfinite(float(x)) else None


def _cells(args: argparse.Namespace, out: Path, task: str) -> list[dict[str, Any]]:
    """Every run, the costliest (highest replay ratio) first so parallel workers finish together."""
    ratios = sorted((float(r) for r in args.rr_ratios.split(",")), reverse=True)
    cells = []
    for ratio in ratios:
        for seed in range(args.seeds):
            for arm in _arms(args):
                cells.append(
                    {
                        "task": task,
                        "arm": arm,
                        "ratio": ratio,
                        "seed": seed,
                        "agent": args.rr_agent,
                        "steps": args.rr_steps,
                        "n_envs": args.n_envs,
                        "flight_steps": args.rr_flight_steps,
                        "eval": args.rr_eval,
                        "overrides": _overrides(args, ratio, arm),
                        "run_dir": str(out / arm.replace(" ", "-") / f"rr{ratio:g}" / f"s{seed}"),
                    }
                )
    return cells


def _run_all(cells: list[dict[str, Any]], workers: int) -> list[dict[str, Any]]:
    """Run the cells inline or in ``workers`` spawned processes, printing each as it ends."""

    def show(r: dict[str, Any]) -> None:
        print(
            f"{r['arm']:9s} RR {r['ratio']:4g} seed {r['seed']}: score {r['score']:.3f} "
            f"return {r['return']:7.2f} ({r['updates']} updates, {r['resets']} resets, "
            f"{r['wall_s']:.0f} s)",
            flush=True,
        )

    if workers <= 1:
        results = []
        for c in cells:
            results.append(_one_run(c))
            show(results[-1])
        return results
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    ctx = multiprocessing.get_context("spawn")  # no fork after JAX started its threads
    results = []
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        for fut in as_completed([pool.submit(_one_run, c) for c in cells]):
            results.append(fut.result())
            show(results[-1])
    return results


def _experiment(args: argparse.Namespace, task: str) -> dict:
    """Run every cell on ``task``, aggregate, print the table, draw the figure."""
    from twinloop.eval.metrics import aggregate, probability_of_improvement

    name = "resets" if task == "balloon" else f"resets-{task}"
    out = Path(args.work or tempfile.mkdtemp(prefix="exp_resets_"))
    cells = _cells(args, out, task)
    t0 = time.perf_counter()
    results = _run_all(cells, args.rr_workers)
    wall = time.perf_counter() - t0
    ratios = sorted({c["ratio"] for c in cells})
    keys = ("score", "return") if task == "balloon" else ("score",)
    summary: dict[str, dict] = {}
    arms = _arms(args)
    for arm in arms:
        for ratio in ratios:
            runs = sorted(
                (r for r in results if r["arm"] == arm and r["ratio"] == ratio),
                key=lambda r: r["seed"],
            )
            cell: dict[str, Any] = {}
            for key in keys:
                values = [r[key] for r in runs]
                agg = aggregate(values, metrics=("iqm", "mean"), n_resamples=5000)
                cell[key] = {
                    "per_seed": values,
                    "iqm": [agg["iqm"].point, agg["iqm"].low, agg["iqm"].high],
                    "mean": [agg["mean"].point, agg["mean"].low, agg["mean"].high],
                }
            cell["updates"] = runs[0]["updates"]
            cell["resets"] = runs[0]["resets"]
            cell["updates_since_reset"] = runs[0]["updates_since_reset"]
            cell["train_s_mean"] = float(np.mean([r["train_s"] for r in runs]))
            summary[f"{arm} | RR {ratio:g}"] = cell
    poi = {}
    for ratio in ratios if "no resets" in arms else ():
        off = summary[f"no resets | RR {ratio:g}"]
        for arm in arms[1:]:
            on = summary[f"{arm} | RR {ratio:g}"]
            for key in keys:
                p = probability_of_improvement(on[key]["per_seed"], off[key]["per_seed"])
                poi[f"{arm} | RR {ratio:g} {key}"] = [p.point, p.low, p.high]
    score = SCORE_NAMES[task]
    print(f"\n{'cell':20s} {'IQM ' + score + ' [95% CI]':>30s}", end="")
    print(f" {'IQM return [95% CI]':>28s}" if "return" in keys else "", end="")
    print("  resets")
    for label, cell in summary.items():
        t = cell["score"]["iqm"]
        print(f"{label:20s} {t[0]:12.3f} [{t[1]:.3f}, {t[2]:.3f}]", end="")
        if "return" in keys:
            g = cell["return"]["iqm"]
            print(f"   {g[0]:8.2f} [{g[1]:.2f}, {g[2]:.2f}]", end="")
        print(f"   {cell['resets']:4d}")
    print("\nP(arm > no resets) [95% CI]:")
    for label, p in poi.items():
        print(f"  {label:28s} {p[0]:.2f} [{p[1]:.2f}, {p[2]:.2f}]")
    baselines = _baselines(args, task)
    shown = ", ".join(f"{k} {v[0]:.3f} (return {v[1]:.2f})" for k, v in baselines.items())
    print(f"baselines on the same held-out episodes, {score}: {shown}")
    print(f"wall time {wall:.0f} s (the runs' own: {sum(r['wall_s'] for r in results):.0f} s)")
    figure = RESULTS / f"exp_agents_{name}.png"
    _plot(summary, results, ratios, figure, args, task, keys, arms, baselines)
    return {
        "experiment": name,
        "task": task,
        "score": score,
        "settings": vars(args),
        "summary": summary,
        "probability_of_improvement": poi,
        "baselines": {k: {"score": v[0], "return": v[1]} for k, v in baselines.items()},
        "runs": results,
        "wall_s": wall,  # of this call: runs reused from --work take no time
        "runs_wall_s_sum": float(sum(r["wall_s"] for r in results)),
        "work_dir": str(out),
    }


def resets(args: argparse.Namespace) -> dict:
    """Experiment 3 on the balloon: resets on and off at replay ratios 1, 4, 16."""
    return _experiment(args, "balloon")


def resets_cartpole(args: argparse.Namespace) -> dict:
    """Experiment 3's cross-check on Gymnasium's CartPole-v1 (same agent and design)."""
    return _experiment(args, "cartpole")


def _baselines(args: argparse.Namespace, task: str) -> dict[str, tuple[float, float]]:
    """``(score, mean return)`` of the hand-made controllers on the same held-out episodes."""
    from twinloop.controllers import make_controller
    from twinloop.eval.rollout import run_single

    out = {}
    for name in ("random", "station-seeker") if task == "balloon" else ("random",):
        env = _env(task, args.rr_flight_steps)
        try:
            episodes = run_single(env, make_controller(name, env), args.rr_eval, 90_000)
        finally:
            env.close()
        out[name] = (_score(task, episodes), float(np.mean([e.episode_return for e in episodes])))
    return out


def _plot(
    summary: dict,
    results: list[dict],
    ratios: list[float],
    path: Path,
    args: argparse.Namespace,
    task: str,
    keys: tuple[str, ...],
    arms: tuple[str, ...],
    baselines: dict[str, tuple[float, float]],
) -> None:
    """Final score against replay ratio (IQM, CI band) and the learning curves per ratio."""
    plt = pyplot()
    if plt is None:
        return
    from twinloop.eval.metrics import iqm

    panels = len(keys) + len(ratios)
    fig, axes = plt.subplots(1, panels, figsize=(4.0 * panels, 3.6))
    labels = {"score": f"final greedy {SCORE_NAMES[task]}", "return": "final greedy return"}
    for ax, key in zip(axes, keys, strict=False):
        label = f"{labels[key]} (IQM, 95 % CI)"
        for arm in arms:
            pts = np.array([summary[f"{arm} | RR {r:g}"][key]["iqm"] for r in ratios])
            ax.plot(ratios, pts[:, 0], "o-", color=COLOURS[arm], label=arm)
            ax.fill_between(ratios, pts[:, 1], pts[:, 2], color=COLOURS[arm], alpha=0.2)
        for i, (name, values) in enumerate(baselines.items()):
            value = values[0] if key == "score" else values[1]
            ax.axhline(value, color="grey", ls=("--", ":")[i % 2], lw=1, label=name)
        ax.set_xscale("log", base=2)
        ax.set_xticks(ratios, [f"{r:g}" for r in ratios])
        ax.set_xlabel("replay ratio (updates per env step)")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    grid = np.linspace(0, args.rr_steps, 40)
    for ax, ratio in zip(axes[len(keys) :], ratios, strict=True):
        for arm in arms:
            ys = []
            for r in results:
                if r["arm"] != arm or r["ratio"] != ratio or not r["curve"]:
                    continue
                s, v = np.array(
                    [(a, np.nan if b is None else b) for a, b in r["curve"]], dtype=np.float64
                ).T
                ok = np.isfinite(v)
                if ok.any():
                    ys.append(np.interp(grid, s[ok], v[ok], left=np.nan))
            if not ys:
                continue
            y = np.array(ys)
            # IQM over seeds where every seed has finished flights; the band is min-max.
            full = ~np.isnan(y).any(axis=0)
            ax.plot(grid[full], iqm(y[:, full], axis=0), color=COLOURS[arm], label=arm)
            ax.fill_between(
                grid[full], y[:, full].min(axis=0), y[:, full].max(axis=0),
                color=COLOURS[arm], alpha=0.2,
            )  # fmt: skip
        ax.set_title(f"replay ratio {ratio:g}")
        ax.set_xlabel("env steps")
        ax.set_ylabel("training return (last 20 episodes)")
        ax.legend(fontsize=7)
    where = f"the balloon ({args.rr_flight_steps}-step flights)" if task == "balloon" else CARTPOLE
    fig.suptitle(
        f"{args.rr_agent} on {where}, {args.seeds} seeds, {args.rr_steps} env steps; "
        f"resets: every {args.rr_reset_interval} updates; resets xRR: every "
        f"{args.rr_reset_env_steps} env steps; bands: 95 % CI (scores), min-max (curves)",
        fontsize=9,
    )
    save(fig, path)


EXPERIMENTS = {"resets": resets, "resets-cartpole": resets_cartpole}
