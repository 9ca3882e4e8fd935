"""Evidence for the agents (issue 17, section 3): an experiment, not a test.

Usage::

    python benchmarks/exp_agents.py reincarnation [--seeds 5] [--steps 20000]

Implemented so far:

1. **Balloon, reincarnation** (``reincarnation``): a QR-DQN student reincarnated from
   ``station-seeker`` (QDagger: offline pretraining on the teacher's captured flights, then
   online training with a distillation term that decays to 0) against the same agent tabula
   rasa, at equal env steps, on ``twinloop/BalloonStationKeeping-v0``. Every agent is then
   flown greedily on the same held-out seeds as the teacher; TWR50 per seed, aggregated with
   the IQM and a 95 % stratified bootstrap interval over seeds (rliable's definitions,
   :mod:`twinloop.eval.metrics`), and the learning curves (recent training return) with
   bands. CPU-sized: the published agents train for days on many cores.
2. **STEM, the paper's pipeline** (``stem``, in ``exp_agents_stem.py``): capture on the
   microscope twin with hidden physics, rate model + sysid, PPO trained in the calibrated
   (and nominal) simulator, agents vs ``planner`` / ``greedy-learned`` on the twin on the
   same seeds.
3. **Resets x replay ratio** (``resets``; cross-check ``resets-cartpole``; in
   ``exp_agents_resets.py``): ``dqn`` without resets, with BBF's shrink-and-perturb + head
   reset every 3,200 updates, or every 4,000 env steps, at replay ratios 1, 4, 16 and equal env
   steps, on 12-h balloon flights (CartPole-v1 as a cross-check); held-out greedy TWR50
   (return) per seed, IQM with 95 % stratified bootstrap intervals, probability of
   improvement, learning curves.
4. **SEM on and off** (``sem``, in ``exp_agents_stem.py``): PPO with a simplicial embedding
   on the encoder vs none, on StemSteer's HAADF crop (``observation_mode="frame"``: the agent
   must find the C neighbours in pixels); LangRearrange's rgb view with ``--stem-sem-task
   rearrange``.
5. **Locomotion on the robot twin** (``locomotion``, in ``exp_agents_tasks.py``): PPO with
   domain randomisation on ``twinloop/QuadrupedVelocity-v0``, then the same episodes on an
   in-process robot twin with a hidden device profile; the sim-to-twin gap in velocity
   tracking error with paired bootstrap intervals, beside ``stand`` and ``trot``.
6. **Rearrangement splits** (``rearrangement``, in ``exp_agents_tasks.py``): PPO on
   LangRearrange's training split (tokens + world state, no goal), success per LLaRP split
   against ``oracle`` and ``scripted`` on the same episodes.

What each run showed, failures included, is in ``benchmarks/README.md`` (Evidence 1-6).

Prints a table and writes ``benchmarks/results/exp_agents_<name>.json`` and a PNG.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from exp_plots import iqm_band, pyplot, save

BALLOON = "twinloop/BalloonStationKeeping-v0"
RESULTS = Path(__file__).resolve().parent / "results"


def _twr50(controller_factory, episodes: int, first_seed: int) -> np.ndarray:
    """TWR50 of each held-out flight (seeds ``first_seed + e``)."""
    import twinloop
    from twinloop.eval.rollout import run_single

    env = twinloop.make(BALLOON)
    try:
        results = run_single(env, controller_factory(env), episodes, first_seed)
    finally:
        env.close()
    return np.array([r.metrics["twr50"] for r in results])


def _curve(run_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(env_step, return_recent)`` of a run's log rows."""
    rows = json.loads((run_dir / "metrics.json").read_text())["log"]
    steps = np.array([r["env_step"] for r in rows], dtype=np.float64)
    ret = np.array([r["return_recent"] for r in rows], dtype=np.float64)
    return steps, ret


def reincarnation(args: argparse.Namespace) -> dict:
    """Experiment 1: QR-DQN reincarnated from station-seeker vs tabula rasa (see module doc)."""
    import twinloop
    from twinloop.controllers import make_controller
    from twinloop.controllers.rl.cli import capture_teacher
    from twinloop.controllers.rl.train import train
    from twinloop.datasets import open_dataset
    from twinloop.eval.metrics import aggregate

    out = Path(args.work or tempfile.mkdtemp(prefix="exp_agents_"))
    env = twinloop.make(BALLOON)
    teacher = make_controller("station-seeker", env)
    data_dir = capture_teacher(env, teacher, out / "teacher-data", args.teacher_episodes, 7_000)
    with open_dataset(data_dir) as ds:
        teacher_data = list(ds)
    overrides = {"pretrain_updates": args.pretrain_updates, "distill_updates": args.steps // 8}
    arms = {"tabula rasa": None, "reincarnated": teacher}
    finals: dict[str, list[float]] = {name: [] for name in arms}
    curves: dict[str, list] = {name: [] for name in arms}
    timing: dict[str, float] = {}
    for name, t in arms.items():
        t0 = time.perf_counter()
        for seed in range(args.seeds):
            run = out / name.replace(" ", "-") / f"seed-{seed}"
            vec = twinloop.make_vec(BALLOON, args.n_envs)
            try:
                train(
                    vec, "qr-dqn", args.steps, seed, run, overrides=overrides, env_id=BALLOON,
                    checkpoint_every=args.steps, teacher=t,
                    teacher_data=teacher_data if t is not None else None,
                    teacher_name="station-seeker" if t is not None else "",
                )  # fmt: skip
            finally:
                vec.close()
            twr = _twr50(lambda e, run=run: make_controller(f"agent:{run}", e), args.eval, 90_000)
            finals[name].append(float(twr.mean()))
            curves[name].append(_curve(run))
            print(f"{name:13s} seed {seed}: TWR50 {twr.mean():.3f} over {args.eval} flights")
        timing[name] = time.perf_counter() - t0
    teacher_twr = _twr50(lambda e: make_controller("station-seeker", e), args.eval, 90_000)
    summary = {}
    for name, values in finals.items():
        agg = aggregate(values, metrics=("iqm", "mean"), n_resamples=5000)
        summary[name] = {
            "twr50_per_seed": values,
            "iqm": [agg["iqm"].point, agg["iqm"].low, agg["iqm"].high],
            "mean": [agg["mean"].point, agg["mean"].low, agg["mean"].high],
            "wall_s": timing[name],
        }
    summary["teacher (station-seeker)"] = {"twr50": float(teacher_twr.mean())}
    print(f"\n{'arm':26s} {'IQM TWR50 [95% CI]':>28s} {'mean':>8s}")
    for name in arms:
        iqm, mean = summary[name]["iqm"], summary[name]["mean"]
        print(f"{name:26s} {iqm[0]:8.3f} [{iqm[1]:.3f}, {iqm[2]:.3f}]   {mean[0]:8.3f}")
    print(f"{'teacher (station-seeker)':26s} {teacher_twr.mean():8.3f} (same held-out flights)")
    _plot_curves(curves, RESULTS / "exp_agents_reincarnation.png", args)
    return {
        "experiment": "reincarnation",
        "settings": vars(args),
        "summary": summary,
        "work_dir": str(out),
    }


def _plot_curves(curves: dict, path: Path, args: argparse.Namespace) -> None:
    """Recent training return against env steps: IQM over seeds with the min-max band."""
    plt = pyplot()
    if plt is None:
        return

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    grid = np.linspace(0, args.steps, 40)
    for name, runs in curves.items():
        iqm_band(ax, grid, runs, name)
    ax.set_xlabel("env steps")
    ax.set_ylabel("recent training return (last 20 flights)")
    ax.set_title("QR-DQN on the balloon: reincarnated from station-seeker vs tabula rasa")
    ax.legend(fontsize=7)
    save(fig, path)


EXPERIMENTS = {"reincarnation": reincarnation}

#: Sibling modules that add experiments: each defines ``EXPERIMENTS`` (name -> function of the
#: parsed arguments returning the result dict) and may define ``add_arguments(parser)``.
EXPERIMENT_MODULES = ("exp_agents_stem", "exp_agents_resets", "exp_agents_tasks")


def _modules() -> list:
    """The experiment modules beside this script that exist."""
    import importlib
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    found = []
    for name in EXPERIMENT_MODULES:
        if (Path(__file__).resolve().parent / f"{name}.py").exists():
            found.append(importlib.import_module(name))
    return found


def main() -> None:
    """Run one experiment and write its JSON."""
    experiments = dict(EXPERIMENTS)
    modules = _modules()
    for module in modules:
        experiments.update(module.EXPERIMENTS)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("experiment", choices=list(experiments), help="which experiment to run")
    p.add_argument("--seeds", type=int, default=5, help="training seeds per arm (default: 5)")
    p.add_argument("--steps", type=int, default=20_000, help="env steps per run (default: 20000)")
    p.add_argument("--n-envs", type=int, default=8, help="rows of the vector env (default: 8)")
    p.add_argument("--eval", type=int, default=10, help="held-out flights per agent (default: 10)")
    p.add_argument(
        "--teacher-episodes", type=int, default=10, help="teacher flights captured (default: 10)"
    )
    p.add_argument(
        "--pretrain-updates", type=int, default=2000, help="offline updates (default: 2000)"
    )
    p.add_argument("--work", default=None, help="folder for runs (default: a temporary one)")
    for module in modules:
        if hasattr(module, "add_arguments"):
            module.add_arguments(p)
    args = p.parse_args()
    result = experiments[args.experiment](args)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"exp_agents_{args.experiment}.json"
    path.write_text(json.dumps(result, indent=1, default=str))
    print(f"results: {path}")


if __name__ == "__main__":
    main()
