"""Evidence 2 (issue 17, section 3): the STEM paper's pipeline, with an agent in the loop.

Run through ``exp_agents.py``::

    python benchmarks/exp_agents.py stem [--seeds 5] [--stem-steps 800000] [--stem-episodes 30]

What Schwarzer et al. (arXiv:2311.17894) did on a microscope, at CPU scale, against the
microscope twin with hidden physics (``--stem-profile``, default ``random:7`` as the demo):

1. **Capture and learn** (:mod:`twinloop.demo`): random-beam dwells captured on the twin
   through the ``remote`` backend, the rate model (``stem-rates`` ensemble) fitted to them,
   and the simulator's parameters identified from the same capture (``twinloop sysid``):
   the calibrated simulator config.
2. **Train** an agent (PPO by default) on ``twinloop/StemSteer-v0`` in the *calibrated*
   simulator, one run per seed; the second arm trains the same agent on the *nominal*
   simulator (what calibration buys).
3. **Evaluate** every trained agent and the model-based controllers ``planner`` and
   ``greedy-learned`` (with the rate model learned from the device capture) on the twin, on
   the same episode seeds (hence the same goals; :func:`twinloop.transfer._episodes`).

Per agent seed: the success rate and the median microscope time to goal of its successful
episodes, aggregated over seeds with the IQM and a 95 % bootstrap interval over seeds
(rliable's stratified bootstrap with a single task: :func:`twinloop.eval.metrics.aggregate`).
Per controller (deterministic given the seeds): the success rate with its Wilson interval and
the median time to goal with a bootstrap interval over episodes. Paired by episode seed: each
arm's success (mean over its seeds) minus the planner's. Each agent also runs in the
simulator it was trained in (the sim-to-device gap of the agent itself).

The agents learn from a shaped reward (:data:`TRAIN_REWARD`); only success and microscope
time are scored. Writes ``benchmarks/results/exp_agents_stem.json`` and ``.png``.

Experiment 4 (``sem``, :func:`sem`): PPO with and without a simplicial embedding on a visual
task, StemSteer's HAADF crop (``observation_mode="frame"``) by default, LangRearrange's rgb
view with ``--stem-sem-task rearrange``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from exp_plots import iqm_band, pyplot, save

RESULTS = Path(__file__).resolve().parent / "results"

#: The task's reward for training only (the evaluation reads success and microscope time).
#: The task's default (-0.01 per microscope second, -1 on a knock-out) pays an agent that has
#: not found the goal yet to end the episode early by knocking the Si out (seen in probes:
#: knock-outs rose as the return improved), so training rewards progress towards the goal
#: (1 per A, the decrease of the measured Si-goal distance: a potential difference, which
#: leaves the optimal policy unchanged for gamma -> 1, Ng et al. 1999), a success bonus of 2,
#: and time at 0.0005 per second.
TRAIN_REWARD: dict[str, float] = {
    "reward_progress_per_angstrom": 1.0,
    "reward_success": 2.0,
    "reward_time_per_s": 0.0005,
}
#: PPO settings changed from its defaults, chosen in short probes on the nominal simulator:
#: a Gaussian of std 1 in the normalised action box spreads the beam over +-3 A, where the
#: hop rate is near zero outside ~0.5 A of three points, so the policy starts narrow.
PPO_SETTINGS: dict[str, Any] = {"init_log_std": -1.5, "lr": 1e-3, "gamma": 0.95}
#: Model-based controllers compared with the agents (they take the rate model).
BASELINES = ("planner", "greedy-learned")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the ``stem`` experiment (all start with ``--stem-``)."""
    g = parser.add_argument_group("experiment 'stem' (the STEM pipeline)")
    g.add_argument("--stem-profile", default="random:7", help="the twin's hidden physics")
    g.add_argument(
        "--stem-steps", type=int, default=800_000, help="env steps per agent (default: 800000)"
    )
    g.add_argument("--stem-n-envs", type=int, default=16, help="training envs (default: 16)")
    g.add_argument(
        "--stem-episodes",
        type=int,
        default=30,
        help="episodes on the twin per agent (default: 30; about 40 ms a step under load)",
    )
    g.add_argument(
        "--stem-baseline-episodes",
        type=int,
        default=100,
        help="episodes on the twin per controller; the first --stem-episodes are the "
        "agents' (default: 100)",
    )
    g.add_argument(
        "--stem-transitions", type=int, default=2000, help="dwells captured (default: 2000)"
    )
    g.add_argument("--stem-goal-hops", type=int, default=5, help="goal distance in hops")
    g.add_argument(
        "--stem-arms",
        default="calibrated,nominal",
        help="simulators the agents train in, comma-separated (default: calibrated,nominal)",
    )
    g.add_argument("--stem-agent", default="ppo", help="agent to train (default: ppo)")
    g.add_argument(
        "--stem-set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="agent setting on top of the experiment's (repeatable)",
    )
    h = parser.add_argument_group("experiment 'sem' (simplicial embeddings on and off)")
    h.add_argument(
        "--stem-sem-task",
        choices=("stem", "rearrange"),
        default="stem",
        help="visual task: StemSteer's HAADF crop (default) or LangRearrange's rgb view",
    )
    h.add_argument(
        "--stem-sem-steps", type=int, default=150_000, help="env steps per run (default: 150000)"
    )
    h.add_argument("--stem-sem-n-envs", type=int, default=8, help="training envs (default: 8)")
    h.add_argument(
        "--stem-sem-simplices", type=int, default=8, help="simplices L of the 'on' arm (default: 8)"
    )
    h.add_argument("--stem-sem-dim", type=int, default=8, help="simplex dimension V (default: 8)")
    h.add_argument(
        "--stem-sem-resolution",
        type=int,
        default=48,
        help="frame side, px: the STEM crop or the rgb view (default: 48)",
    )
    h.add_argument(
        "--stem-sem-eval", type=int, default=50, help="greedy episodes per agent (default: 50)"
    )


def _agent_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The experiment's agent settings with ``--stem-set`` on top (values parsed as JSON)."""
    settings = dict(PPO_SETTINGS) if args.stem_agent == "ppo" else {}
    for item in args.stem_set:
        name, _, text = item.partition("=")
        try:
            settings[name] = json.loads(text)
        except json.JSONDecodeError:
            settings[name] = text
    return settings


def _curve(run_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(env_step, return_recent)`` of a run's log rows."""
    rows = json.loads((run_dir / "metrics.json").read_text())["log"]
    steps = np.array([r["env_step"] for r in rows], dtype=np.float64)
    ret = np.array([r["return_recent"] for r in rows], dtype=np.float64)
    return steps, ret


def _time_to_goal(results: Sequence[Any]) -> np.ndarray:
    """Microscope time (s) of the successful episodes."""
    return np.array([r.time_s for r in results if r.success], dtype=np.float64)


def _per_run(results: Sequence[Any]) -> dict[str, Any]:
    """Success rate (Wilson 95 %) and median time to goal (bootstrap 95 %) of one run."""
    from twinloop.eval.bootstrap import bootstrap_ci
    from twinloop.eval.rollout import wilson_interval

    wins = sum(bool(r.success) for r in results)
    times = _time_to_goal(results)
    failures: dict[str, int] = {}
    for r in results:
        if r.failure != "none":
            failures[r.failure] = failures.get(r.failure, 0) + 1
    median = float(np.median(times)) if times.size else float("nan")
    ci = list(bootstrap_ci(times, statistic=np.median)) if times.size > 1 else [np.nan] * 2
    return {
        "episodes": len(results),
        "success_rate": wins / len(results),
        "success_ci95": list(wilson_interval(wins, len(results))),
        "median_time_to_goal_s": median,
        "median_time_to_goal_ci95": ci,
        "mean_steps": float(np.mean([r.steps for r in results])),
        "failures": failures,
        "truncated": int(sum(bool(r.truncated) for r in results)),
    }


def _over_seeds(values: Sequence[float]) -> dict[str, Any]:
    """IQM and mean over seeds with 95 % bootstrap intervals (NaN seeds left out)."""
    from twinloop.eval.metrics import aggregate

    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return {"iqm": [np.nan] * 3, "mean": [np.nan] * 3, "seeds": 0}
    agg = aggregate(x, metrics=("iqm", "mean"), n_resamples=5000)
    return {
        "iqm": [agg["iqm"].point, agg["iqm"].low, agg["iqm"].high],
        "mean": [agg["mean"].point, agg["mean"].low, agg["mean"].high],
        "seeds": int(x.size),
    }


def _identify_device(args: argparse.Namespace, out: Path) -> tuple[dict[str, Any], dict, Path]:
    """Capture on the twin, learn the rate model, fit the simulator (demo's functions)."""
    import twinloop
    from twinloop.core.profile import parse_profile
    from twinloop.demo import ENV_ID, capture, identify, microscope_twin
    from twinloop.demo import train as fit_rates

    profile = parse_profile(args.stem_profile, twinloop.make_config(ENV_ID))
    capture_dir, model = out / "device-capture", out / "device-model.npz"
    with microscope_twin(["--profile", args.stem_profile]) as address:
        capture("remote", args.stem_transitions, capture_dir, address=address, seed=0,
                overwrite=True, device_profile=profile)  # fmt: skip
    info = fit_rates(capture_dir, model, seed=0)
    calibrated, sysid = identify(ENV_ID, capture_dir, out / "sysid.json")
    if calibrated is None:
        raise RuntimeError(f"the device capture identified nothing: {sysid}")
    return calibrated, {"sysid": sysid, "rate_model": info}, model


def _train_arm(
    args: argparse.Namespace, arm: str, physics: Mapping[str, Any], out: Path
) -> tuple[list[Path], list, float]:
    """One agent per seed in the simulator with ``physics`` overrides; runs, curves, wall s."""
    import twinloop
    from twinloop.controllers.rl.train import train
    from twinloop.demo import ENV_ID

    env_overrides = {"goal_hops": args.stem_goal_hops, **TRAIN_REWARD, **physics}
    runs, curves = [], []
    t0 = time.perf_counter()
    for seed in range(args.seeds):
        run = out / arm / f"seed-{seed}"
        vec = twinloop.make_vec(ENV_ID, args.stem_n_envs, **env_overrides)
        try:
            r = train(
                vec, args.stem_agent, args.stem_steps, seed, run,
                overrides=_agent_settings(args), env_id=ENV_ID, env_overrides=env_overrides,
                checkpoint_every=args.stem_steps,
            )  # fmt: skip
        finally:
            vec.close()
        runs.append(run)
        curves.append(_curve(run))
        print(
            f"train {arm:10s} seed {seed}: recent return {r.return_recent:.2f} ({r.wall_s:.0f} s)"
        )
    return runs, curves, time.perf_counter() - t0


def stem(args: argparse.Namespace) -> dict:
    """Experiment 2: agents trained in the calibrated (and nominal) simulator on the twin."""
    from twinloop.demo import microscope_twin
    from twinloop.eval.compare import paired_difference
    from twinloop.transfer import TransferConfig, _episodes

    started = time.perf_counter()
    out = Path(args.work or tempfile.mkdtemp(prefix="exp_stem_"))
    out.mkdir(parents=True, exist_ok=True)
    calibrated, identification, model = _identify_device(args, out)
    print(f"identified: {json.dumps(calibrated)}")
    physics = {"calibrated": calibrated, "nominal": {}}
    arms = [a.strip() for a in args.stem_arms.split(",") if a.strip()]
    unknown = [a for a in arms if a not in physics]
    if unknown:
        raise ValueError(f"--stem-arms {unknown}: give calibrated and/or nominal")
    runs, curves, wall = {}, {}, {}
    for arm in arms:
        runs[arm], curves[arm], wall[arm] = _train_arm(args, arm, physics[arm], out)

    n = args.stem_episodes
    cfg = TransferConfig(profile=args.stem_profile, out=str(out), episodes=n,
                         goal_hops=args.stem_goal_hops, seed=0)  # fmt: skip
    base_cfg = TransferConfig(profile=args.stem_profile, out=str(out),
                              episodes=max(n, args.stem_baseline_episodes),
                              goal_hops=args.stem_goal_hops, seed=0)  # fmt: skip
    device: dict[str, list] = {}
    sim: dict[str, list] = {}
    t0 = time.perf_counter()
    with microscope_twin(["--profile", args.stem_profile]) as address:
        for c in BASELINES:
            device[c] = _episodes("remote", c, model, base_cfg, address, {}, c, None)
            print(f"device {c:15s}: {_per_run(device[c])['success_rate']:.2f} success")
        for arm in arms:
            device[arm] = []
            for seed, run in enumerate(runs[arm]):
                eps = _episodes("remote", f"agent:{run}", None, cfg, address, {}, arm, None)
                device[arm].append(eps)
                print(f"device {arm:10s} seed {seed}: {_per_run(eps)['success_rate']:.2f} success")
    eval_wall = time.perf_counter() - t0
    for arm in arms:
        sim[arm] = [
            _episodes("sim", f"agent:{run}", None, cfg, None, physics[arm], arm, None)
            for run in runs[arm]
        ]

    summary: dict[str, Any] = {}
    for c in BASELINES:
        summary[c] = {"device": _per_run(device[c]), "device_first_n": _per_run(device[c][:n])}
    planner_success = np.array([float(r.success) for r in device["planner"][:n]])
    for arm in arms:
        per_seed = [_per_run(eps) for eps in device[arm]]
        per_seed_sim = [_per_run(eps) for eps in sim[arm]]
        success = np.array([[float(r.success) for r in eps] for eps in device[arm]])
        pooled = [r for eps in device[arm] for r in eps]
        diff = paired_difference(success.mean(axis=0), planner_success)
        summary[arm] = {
            "success_per_seed": [p["success_rate"] for p in per_seed],
            "time_to_goal_per_seed": [p["median_time_to_goal_s"] for p in per_seed],
            "success": _over_seeds([p["success_rate"] for p in per_seed]),
            "time_to_goal_s": _over_seeds([p["median_time_to_goal_s"] for p in per_seed]),
            "pooled": _per_run(pooled),
            "success_minus_planner_paired": [diff.point, diff.low, diff.high],
            "sim_success_per_seed": [p["success_rate"] for p in per_seed_sim],
            "sim_success": _over_seeds([p["success_rate"] for p in per_seed_sim]),
            "sim_time_to_goal_s": _over_seeds([p["median_time_to_goal_s"] for p in per_seed_sim]),
            "train_wall_s": wall[arm],
            "per_seed": per_seed,
        }
    _print_table(summary, arms, n, args)
    _plot(summary, curves, arms, RESULTS / "exp_agents_stem.png", args)
    return {
        "experiment": "stem",
        "settings": vars(args),
        "agent_settings": _agent_settings(args),
        "train_reward": TRAIN_REWARD,
        "calibrated_overrides": calibrated,
        "identification": identification,
        "summary": summary,
        "eval_wall_s": eval_wall,
        "wall_s": time.perf_counter() - started,
        "work_dir": str(out),
    }


def _fmt(ci: Sequence[float], digits: int = 2) -> str:
    return f"{ci[0]:.{digits}f} [{ci[1]:.{digits}f}, {ci[2]:.{digits}f}]"


def _print_table(summary: Mapping[str, Any], arms: Sequence[str], n: int, args: Any) -> None:
    """The result table: agents (IQM over seeds) and controllers (over episodes)."""
    print(f"\n{args.seeds} seeds per arm, {n} twin episodes each; controllers on the same seeds")
    print(
        f"{'arm':26s} {'success IQM [95% CI]':>24s} {'time to goal, s':>24s} {'sim success':>22s}"
    )
    for arm in arms:
        s = summary[arm]
        print(
            f"{arm + ' (' + args.stem_agent + ')':26s} {_fmt(s['success']['iqm']):>24s} "
            f"{_fmt(s['time_to_goal_s']['iqm'], 0):>24s} {_fmt(s['sim_success']['iqm']):>22s}"
        )
    for c in BASELINES:
        for key, label in (("device_first_n", f"first {n}"), ("device", "all")):
            d = summary[c][key]
            lo, hi = d["success_ci95"]
            tlo, thi = d["median_time_to_goal_ci95"]
            print(
                f"{c + ' (' + label + ')':26s} {d['success_rate']:8.2f} [{lo:.2f}, {hi:.2f}]  "
                f"{d['median_time_to_goal_s']:8.0f} [{tlo:.0f}, {thi:.0f}]"
            )
    for arm in arms:
        diff = _fmt(summary[arm]["success_minus_planner_paired"])
        print(f"{arm} success minus planner (paired over episodes): {diff}")


def _plot(
    summary: Mapping[str, Any], curves: Mapping[str, list], arms: Sequence[str], path: Path, args
) -> None:
    """Learning curves (IQM, min-max band) and success on the twin per arm and controller."""
    plt = pyplot()
    if plt is None:
        return

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.0))
    grid = np.linspace(0, args.stem_steps, 50)
    for arm in arms:
        iqm_band(ax, grid, curves[arm], f"{arm} sim")
    ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 0))
    ax.set_xlabel("env steps")
    ax.set_ylabel("recent training return (shaped)")
    ax.set_title(f"{args.stem_agent} on StemSteer-v0", fontsize=9)
    ax.legend(fontsize=7)
    names, points, lows, highs = [], [], [], []
    for arm in arms:
        p, lo, hi = summary[arm]["success"]["iqm"]
        names.append(f"{arm}\n{args.stem_agent} (IQM)")
        points.append(p), lows.append(lo), highs.append(hi)
    for c in BASELINES:
        d = summary[c]["device"]
        names.append(c)
        points.append(d["success_rate"]), lows.append(d["success_ci95"][0])
        highs.append(d["success_ci95"][1])
    y = np.array(points)
    err = np.clip([y - np.array(lows), np.array(highs) - y], 0, None)
    bx.bar(range(len(y)), y, alpha=0.8)
    bx.errorbar(range(len(y)), y, yerr=err, fmt="none", color="k", capsize=3)
    bx.set_xticks(range(len(y)), names, fontsize=7)
    bx.set_ylabel("success on the twin (95% CI)")
    bx.set_title(f"microscope twin, profile {args.stem_profile}", fontsize=9)
    save(fig, path)


# --- experiment 4: simplicial embeddings on and off on a visual task ---------------------------
STEM = "twinloop/StemSteer-v0"
REARRANGE = "twinloop/LangRearrange-v0"
#: The STEM visual task: the frame observation (a 48-px HAADF crop of 8 A around the Si) with
#: goals 3 hops away and 40 steps, the experiment's training reward. The agents see the crop and
#: the goal offset only (not the measured neighbours, which would make the task non-visual).
SEM_STEM_ENV: dict[str, Any] = {
    "observation_mode": "frame",
    "goal_hops": 3,
    "max_steps": 40,
    **TRAIN_REWARD,
}
SEM_STEM_KEYS = "frame,goal_offset_angstrom"
#: The rearrangement's: the egocentric frame, the instruction's tokens and is_holding (not the
#: symbolic world vector the rgb observation also carries).
SEM_REARRANGE_KEYS = "image,instruction,is_holding"
#: Reference arms (STEM), PPO without SEM: the goal's offset alone (no crop: how far the task
#: can be done blind), and the flat observation (the neighbours as the image pipeline measures
#: them: what the CNN has to find in the crop).
SEM_STEM_CONTROLS = {"PPO, goal only": "goal_offset_angstrom", "PPO, measured neighbours": "vector"}
#: Classical references run on the STEM task's flat observation (same episodes: frame mode
#: leaves the physics and the measurement as they are).
SEM_STEM_REFERENCES = ("greedy-neighbor", "random")
#: Evaluation episodes start at this seed (training resets use segment seeds far below it).
SEM_EVAL_SEED = 900_000


def sem(args: argparse.Namespace) -> dict:
    """Experiment 4: PPO with and without a simplicial embedding on a visual task.

    ``--stem-sem-task stem`` (default): ``twinloop/StemSteer-v0`` in ``observation_mode=
    "frame"`` (:mod:`twinloop.sim.stem.frames`): the agent sees a HAADF crop around the Si and
    the goal's offset, so it must find the C neighbours in pixels to choose where to park the
    beam (Nature CNN). ``rearrange``: LangRearrange's egocentric rgb view with the instruction
    (mean of token embeddings) and is_holding; about 30x slower per step here.

    The 'on' arm puts ``L`` simplices of dimension ``V`` after the encoder torso (Lavoie et al.
    2022, SEM; Obando-Ceron et al. 2024 for deep RL); everything else is equal, seeds included.
    Per seed: success rate and mean return (training reward) of greedy episodes on held-out
    seeds; IQM over seeds with 95 % bootstrap intervals, the on - off difference of IQMs with its
    interval, the learning curves (IQM, min-max band), and for STEM two reference arms
    (:data:`SEM_STEM_CONTROLS`: PPO on the goal offset alone, and on the measured neighbours)
    and the classical references on the same episodes.
    """
    import twinloop
    from twinloop.controllers import make_controller
    from twinloop.controllers.rl.train import train
    from twinloop.eval.metrics import difference, probability_of_improvement
    from twinloop.eval.rollout import run_single

    started = time.perf_counter()
    out = Path(args.work or tempfile.mkdtemp(prefix="exp_sem_"))
    if args.stem_sem_task == "stem":
        env_id, env_overrides = STEM, dict(SEM_STEM_ENV)
        env_overrides["frame_crop_pixels"] = args.stem_sem_resolution
        base: dict[str, Any] = {**PPO_SETTINGS, "obs_keys": SEM_STEM_KEYS}
    else:
        env_id = REARRANGE
        env_overrides = {"observation_mode": "rgb", "resolution": args.stem_sem_resolution}
        base = {"obs_keys": SEM_REARRANGE_KEYS, "text_encoder": "mean"}
    arms = {
        "SEM off": base,
        "SEM on": {**base, "sem_simplices": args.stem_sem_simplices, "sem_dim": args.stem_sem_dim},
    }
    if args.stem_sem_task == "stem":  # references: is the crop used, and what does it hide?
        for name, keys in SEM_STEM_CONTROLS.items():
            arms[name] = {**PPO_SETTINGS, "obs_keys": keys}
    curves: dict[str, list] = {a: [] for a in arms}
    returns: dict[str, list[float]] = {a: [] for a in arms}
    success: dict[str, list[float]] = {a: [] for a in arms}
    wall: dict[str, float] = {}
    for arm, overrides in arms.items():
        t0 = time.perf_counter()
        for seed in range(args.seeds):
            run = out / arm.replace(" ", "-") / f"seed-{seed}"
            vec = twinloop.make_vec(env_id, args.stem_sem_n_envs, **env_overrides)
            try:
                train(vec, "ppo", args.stem_sem_steps, seed, run, overrides=overrides,
                      env_id=env_id, env_overrides=env_overrides,
                      checkpoint_every=args.stem_sem_steps, resume=True)  # fmt: skip
            finally:
                vec.close()
            curves[arm].append(_curve(run))
            env = twinloop.make(env_id, **env_overrides)
            try:
                res = run_single(env, make_controller(f"agent:{run}", env), args.stem_sem_eval,
                                 SEM_EVAL_SEED)  # fmt: skip
            finally:
                env.close()
            returns[arm].append(float(np.mean([r.episode_return for r in res])))
            success[arm].append(float(np.mean([r.success for r in res])))
            print(
                f"{arm} seed {seed}: return {returns[arm][-1]:.2f}, success {success[arm][-1]:.2f}"
                f" ({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
        wall[arm] = time.perf_counter() - t0
    summary: dict[str, Any] = {
        arm: {
            "return_per_seed": returns[arm],
            "success_per_seed": success[arm],
            "return": _over_seeds(returns[arm]),
            "success": _over_seeds(success[arm]),
            "settings": arms[arm],
            "wall_s": wall[arm],
        }
        for arm in arms
    }
    gap = {
        k: difference(v["SEM on"], v["SEM off"], statistic="iqm")
        for k, v in (("return", returns), ("success", success))
    }
    poi = probability_of_improvement(success["SEM on"], success["SEM off"])
    references: dict[str, Any] = {}
    if args.stem_sem_task == "stem":
        flat = {**env_overrides, "observation_mode": "vector"}
        env = twinloop.make(env_id, **flat)
        try:
            for name in SEM_STEM_REFERENCES:
                res = run_single(env, make_controller(name, env), args.stem_sem_eval, SEM_EVAL_SEED)
                references[name] = {
                    "return": float(np.mean([r.episode_return for r in res])),
                    "success": float(np.mean([r.success for r in res])),
                }
        finally:
            env.close()
    print(f"\n{args.seeds} seeds per arm, {args.stem_sem_eval} greedy episodes each ({env_id})")
    print(f"{'arm':24s} {'return, IQM [95% CI]':>26s} {'success, IQM [95% CI]':>26s}")
    for arm in arms:
        s = summary[arm]
        print(f"{arm:24s} {_fmt(s['return']['iqm']):>26s} {_fmt(s['success']['iqm']):>26s}")
    g = {k: [v.point, v.low, v.high] for k, v in gap.items()}
    print(f"{'on - off':24s} {_fmt(g['return']):>26s} {_fmt(g['success']):>26s}")
    print(f"P(SEM on > SEM off), success per seed: {poi}")
    for name, r in references.items():
        print(f"{name:24s} {r['return']:>26.2f} {r['success']:>26.2f}")
    _plot_sem(curves, RESULTS / "exp_agents_sem.png", args, env_id)
    return {
        "experiment": "sem",
        "settings": vars(args),
        "env_id": env_id,
        "env_overrides": env_overrides,
        "summary": summary,
        "on_minus_off_iqm": g,
        "p_on_better_success": [poi.point, poi.low, poi.high],
        "references": references,
        "wall_s": time.perf_counter() - started,
        "work_dir": str(out),
    }


def _plot_sem(
    curves: Mapping[str, list], path: Path, args: argparse.Namespace, env_id: str
) -> None:
    """Recent training return against env steps per arm: IQM over seeds, min-max band."""
    plt = pyplot()
    if plt is None:
        return

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    grid = np.linspace(0, args.stem_sem_steps, 40)
    for arm, runs in curves.items():
        iqm_band(ax, grid, runs, arm)
    ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 0))
    ax.set_xlabel("env steps")
    ax.set_ylabel("recent training return (last 20 episodes)")
    view = "HAADF crop" if env_id == STEM else "rgb view"
    ax.set_title(f"PPO on {env_id.split('/')[-1]} ({view}): SEM on vs off", fontsize=9)
    ax.legend(fontsize=7)
    save(fig, path)


EXPERIMENTS = {"stem": stem, "sem": sem}
