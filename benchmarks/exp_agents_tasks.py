"""Evidence 5 and 6 of issue 17 (section 3): locomotion on the robot twin, rearrangement splits.

Run through ``benchmarks/exp_agents.py``::

    python benchmarks/exp_agents.py rearrangement --seeds 5 --lang-steps 400000 --n-envs 64
    python benchmarks/exp_agents.py locomotion --seeds 5 --loco-steps 1000000 --n-envs 16

**Rearrangement** (``rearrangement``): PPO learns an instruction-conditioned policy on the
training split of ``twinloop/LangRearrange-v0``, then every seed's greedy policy runs
episodes ``0..n-1`` of each of LLaRP's ten evaluation splits, as do the ``oracle`` (plans over
the true state and goal) and the ``scripted`` parser (tokens only, no world state), on the same
episodes and reset seeds. The env's cheapest observation is the symbolic one (a flat vector
with the tokens, ``is_holding`` and the privileged ``true/`` world state *and goal*); the rgb
mode renders at ~33 env steps/s on a CPU. The agent sees the symbolic observation through
:class:`LangStateObs`: the instruction as token ids (a GRU encodes them), ``is_holding``,
``last_skill_ok``, ``time_fraction`` and the world state re-coded as one-hots (where the robot
is, what it holds, which doors are open, how many objects of each category lie on each
receptacle), never ``true/goal``: what to move where comes from the instruction alone.
Success per split: a 95 % Wilson interval per controller (the agent's pools its seeds) and the
IQM over seeds with a 95 % bootstrap interval (:mod:`twinloop.eval.metrics`).

**Locomotion** (``locomotion``): PPO on ``twinloop/QuadrupedVelocity-v0`` with the env's
domain randomisation as it ships (every effect on: friction, masses, payload, centre of mass,
motor strength and offset, joint friction, gains, pushes, noise, action and observation
delay), the sim clipping joint-target steps as the twin does (``safety.max_command_step``).
Each seed's greedy policy, ``stand`` and ``trot`` then run the same episodes (reset seeds
80,000 + e: the same commands) on the sim env and on an in-process robot twin
(:class:`~twinloop.hardware.robot.fake.SimRobot` behind a
:class:`~twinloop.hardware.robot.server.RobotServer`, ``--backend robot``) whose physics is a
hidden device profile (``random:SEED``, :mod:`twinloop.sim.locomotion.profile`) plus its own
hidden randomisation draws. Tracking error = the episode's mean planar distance between the
true trunk velocity and the command (m/s, the env's ``lin_vel_error_m_per_s``); the sim-to-twin
gap is the paired difference (twin - sim) per episode with a 95 % bootstrap interval
(:func:`twinloop.eval.compare.paired_difference`), per seed, pooled, and as an IQM over seeds.

Writes ``benchmarks/results/exp_agents_<name>.json`` and a PNG.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from exp_plots import iqm_band, pyplot, save

LANG = "twinloop/LangRearrange-v0"
RESULTS = Path(__file__).resolve().parent / "results"


# --- rearrangement: observation ----------------------------------------------------------------
class LangStateObs:
    """Symbolic rearrangement observations as a Dict of token ids and world-state one-hots.

    The goal (``true/goal``), the scene and the rooms are dropped; the rest of ``true/`` is
    re-coded so a small MLP reads it: robot location (one-hot over -1..15), held category
    (one-hot over -1..32), the 5 open flags, and the count of objects of each category on each
    receptacle (33 x 11, clipped at 3, / 3).
    """

    def __init__(self) -> None:
        """Read the observation's index table from the task module."""
        from twinloop.sim.rearrange import catalog as C
        from twinloop.sim.rearrange import episodes as E
        from twinloop.sim.rearrange import language as L
        from twinloop.sim.rearrange import task as T

        self.n_tokens = L.MAX_TOKENS
        self.vocab = len(L.vocabulary())
        self.n_nav, self.n_cat = C.N_NAV, C.N_CATEGORIES
        self.n_rec, self.n_art, self.n_obj = C.N_RECEPTACLES, C.N_ARTICULATED, E.MAX_OBJECTS
        self.o_world = T.O_WORLD
        self.size = 3 + (self.n_nav + 1) + (self.n_cat + 1) + self.n_art + self.n_cat * self.n_rec
        self.space = gym.spaces.Dict(
            {
                "instruction": gym.spaces.Box(0, self.vocab - 1, (self.n_tokens,), np.int64),
                "state": gym.spaces.Box(-np.inf, np.inf, (self.size,), np.float32),
            }
        )

    def __call__(self, obs: np.ndarray) -> dict[str, np.ndarray]:
        """Batch ``(n, 133)`` -> ``{"instruction": (n, 30) int64, "state": (n, size)}``."""
        obs = np.asarray(obs, np.float32)
        single = obs.ndim == 1
        obs = np.atleast_2d(obs)
        n = obs.shape[0]
        rows = np.arange(n)
        w = self.o_world
        loc = obs[:, w].astype(np.int64) + 1
        held = obs[:, w + 1].astype(np.int64) + 1
        art = obs[:, w + 2 : w + 2 + self.n_art]
        cat = obs[:, w + 2 + self.n_art : w + 2 + self.n_art + self.n_obj].astype(np.int64)
        rec = obs[:, w + 2 + self.n_art + self.n_obj : w + 2 + self.n_art + 2 * self.n_obj]
        rec = rec.astype(np.int64)
        counts = np.zeros((n, self.n_cat, self.n_rec), np.float32)
        ok = (cat >= 0) & (rec >= 0)
        r_i, s_i = np.nonzero(ok)
        np.add.at(counts, (r_i, cat[r_i, s_i], rec[r_i, s_i]), 1.0)
        onehot_loc = np.zeros((n, self.n_nav + 1), np.float32)
        onehot_loc[rows, loc] = 1.0
        onehot_held = np.zeros((n, self.n_cat + 1), np.float32)
        onehot_held[rows, held] = 1.0
        state = np.concatenate(
            [obs[:, self.n_tokens : self.n_tokens + 3], onehot_loc, onehot_held, art,
             np.minimum(counts, 3.0).reshape(n, -1) / 3.0],
            axis=1,
        )  # fmt: skip
        out = {"instruction": obs[:, : self.n_tokens].astype(np.int64), "state": state}
        return {k: v[0] for k, v in out.items()} if single else out


class LangStateVec(gym.vector.VectorWrapper):
    """A rearrangement vector env re-coded by :class:`LangStateObs` (``final_obs`` too)."""

    def __init__(self, env: gym.vector.VectorEnv) -> None:
        """Wrap ``env`` (symbolic mode)."""
        super().__init__(env)
        self._code = LangStateObs()
        self.single_observation_space = self._code.space
        self.observation_space = gym.vector.utils.batch_space(self._code.space, env.num_envs)

    def _info(self, info: dict[str, Any]) -> dict[str, Any]:
        if "final_obs" in info:
            info = dict(info)
            info["final_obs"] = np.array(
                [None if o is None else self._code(np.asarray(o)) for o in info["final_obs"]],
                dtype=object,
            )
        return info

    def reset(self, **kwargs: Any) -> tuple[dict, dict]:
        """Reset and re-code."""
        obs, info = self.env.reset(**kwargs)
        return self._code(obs), self._info(info)

    def step(self, actions: Any) -> tuple:
        """Step and re-code."""
        obs, reward, term, trunc, info = self.env.step(actions)
        return self._code(obs), reward, term, trunc, self._info(info)


# --- rearrangement: experiment -----------------------------------------------------------------
def _lang_vec(n: int, wrap: bool) -> gym.vector.VectorEnv:
    """A symbolic-mode vector env of ``n`` rows, re-coded for the agent when ``wrap``."""
    import twinloop

    vec = twinloop.make_vec(LANG, n)
    return LangStateVec(vec) if wrap else vec


def _split_results(controller_name: str, wrap: bool, splits: list[str], args: argparse.Namespace):
    """``{split: [EpisodeResult]}``: episodes ``0..n-1`` of each split, reset seeds 70,000 + e."""
    from twinloop.controllers import make_controller
    from twinloop.eval.rollout import run_vector
    from twinloop.eval.splits import reset_options

    out = {}
    vec = _lang_vec(min(args.lang_episodes, 50), wrap)
    try:
        controller = make_controller(controller_name, vec)
        for split in splits:
            _, options = reset_options(split)
            out[split] = run_vector(
                vec, controller, args.lang_episodes, 70_000, reset_options=options
            )
    finally:
        vec.close()
    return out


def _success(results: list) -> np.ndarray:
    return np.array([float(bool(r.success)) for r in results])


def rearrangement(args: argparse.Namespace) -> dict:
    """Experiment 6: PPO on LangRearrange's training split, success per LLaRP split."""
    from twinloop.controllers.rl.train import train
    from twinloop.eval.metrics import aggregate
    from twinloop.eval.rollout import wilson_interval
    from twinloop.sim.rearrange.episodes import BENCHMARK_SPLITS

    splits = list(BENCHMARK_SPLITS)
    out = Path(args.work or tempfile.mkdtemp(prefix="exp_lang_"))
    overrides = {
        "text_encoder": args.lang_text_encoder,
        "hidden": (256, 256),
        "n_steps": 32,
        "ent_coef": 0.01,
        "lr": 5e-4,
        "normalize_obs": False,  # the state is one-hots and counts in [0, 1] already
    }
    t0 = time.perf_counter()
    per_seed: list[dict[str, np.ndarray]] = []
    curves = []
    train_s = []
    for seed in range(args.seeds):
        run = out / "ppo" / f"seed-{seed}"
        t1 = time.perf_counter()
        vec = _lang_vec(args.n_envs, wrap=True)
        try:
            train(
                vec, "ppo", args.lang_steps, seed, run, overrides=overrides, env_id=LANG,
                checkpoint_every=args.lang_steps,
            )  # fmt: skip
        finally:
            vec.close()
        train_s.append(time.perf_counter() - t1)
        res = _split_results(f"agent:{run}", True, splits, args)
        per_seed.append({s: _success(r) for s, r in res.items()})
        curves.append(_curve(run))
        rate = np.mean([per_seed[-1][s].mean() for s in splits])
        print(f"ppo seed {seed}: trained {train_s[-1]:.0f} s, mean success over splits {rate:.3f}")
    baselines = {name: _split_results(name, False, splits, args) for name in ("oracle", "scripted")}
    table: dict[str, dict] = {}
    for split in [*splits, "overall"]:
        pick = splits if split == "overall" else [split]
        row: dict[str, Any] = {}
        for name, res in baselines.items():
            s = np.concatenate([_success(res[p]) for p in pick])
            row[name] = {"rate": s.mean(), "wilson": wilson_interval(int(s.sum()), s.size)}
        seed_rates = [float(np.mean(np.concatenate([d[p] for p in pick]))) for d in per_seed]
        pooled = np.concatenate([d[p] for d in per_seed for p in pick])
        agg = aggregate(seed_rates, metrics=("iqm", "mean"), n_resamples=5000)
        row["ppo"] = {
            "rate_per_seed": seed_rates,
            "iqm": [agg["iqm"].point, agg["iqm"].low, agg["iqm"].high],
            "mean": [agg["mean"].point, agg["mean"].low, agg["mean"].high],
            "pooled_wilson": wilson_interval(int(pooled.sum()), pooled.size),
        }
        table[split] = row
    print(f"\n{'split':24s} {'oracle':>16s} {'scripted':>18s} {'PPO IQM over seeds [95% CI]':>30s}"
          f" {'PPO pooled [Wilson]':>22s}")  # fmt: skip
    for split, row in table.items():
        o, sc, p = row["oracle"], row["scripted"], row["ppo"]
        print(
            f"{split:24s} {_pct(o['rate'], o['wilson'])} {_pct(sc['rate'], sc['wilson'])}"
            f"   {_pct(p['iqm'][0], p['iqm'][1:])}"
            f"   {_pct(np.mean(p['rate_per_seed']), p['pooled_wilson'])}"
        )
    _plot_lang(table, curves, splits, RESULTS / "exp_agents_rearrangement.png", args)
    return {
        "experiment": "rearrangement",
        "settings": vars(args),
        "agent": {"name": "ppo", "overrides": overrides, "train_wall_s": train_s},
        "observation": "symbolic re-coded by LangStateObs: tokens + world-state one-hots, no goal",
        "episodes": f"0..{args.lang_episodes - 1} of each split, reset seeds 70000 + e, all arms",
        "table": table,
        "wall_s": time.perf_counter() - t0,
        "work_dir": str(out),
    }


def _pct(rate: float, ci) -> str:
    """``"95.0 [90.1, 98.2]"`` of a rate and its interval, in per cent."""
    return f"{100 * rate:5.1f} [{100 * ci[0]:5.1f}, {100 * ci[1]:5.1f}]"


def _curve(run_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(env_step, return_recent)`` of a run's log rows."""
    rows = json.loads((run_dir / "metrics.json").read_text())["log"]
    steps = np.array([r["env_step"] for r in rows], dtype=np.float64)
    ret = np.array([r["return_recent"] for r in rows], dtype=np.float64)
    return steps, ret


def _plot_lang(table: dict, curves: list, splits: list[str], path: Path, args) -> None:
    """Success per split (three arms, intervals) and PPO's learning curve (IQM, min-max band)."""
    plt = pyplot()
    if plt is None:
        return

    names = [*splits, "overall"]
    x = np.arange(len(names))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.4), gridspec_kw={"width_ratios": [2.2, 1]})
    for k, (arm, key) in enumerate((("oracle", "wilson"), ("scripted", "wilson"), ("ppo", "iqm"))):
        if arm == "ppo":
            pts = np.array([table[n][arm]["iqm"] for n in names])
            y, lo, hi = pts[:, 0], pts[:, 1], pts[:, 2]
            label = f"PPO (IQM of {args.seeds} seeds, bootstrap 95 %)"
        else:
            y = np.array([table[n][arm]["rate"] for n in names])
            ci = np.array([table[n][arm][key] for n in names])
            lo, hi = ci[:, 0], ci[:, 1]
            label = f"{arm} (Wilson 95 %)"
        ax1.bar(x + (k - 1) * 0.27, y, 0.27, label=label, alpha=0.8)
        ax1.errorbar(x + (k - 1) * 0.27, y, yerr=np.clip([y - lo, hi - y], 0, None), fmt="none",
                     color="k", capsize=2)  # fmt: skip
    ax1.set_xticks(x, names, fontsize=7, rotation=35, ha="right")
    ax1.set_ylim(0, 1.05)
    ax1.set_ylabel("success rate")
    ax1.legend(fontsize=7)
    grid = np.linspace(0, args.lang_steps, 40)
    iqm_band(ax2, grid, curves, "PPO")
    ax2.set_xlabel("env steps (skills)")
    ax2.set_ylabel("recent training return (last 20 episodes)")
    ax2.legend(fontsize=7)
    fig.suptitle("LangRearrange-v0: PPO on tokens + world state vs oracle and scripted parser",
                 fontsize=9)  # fmt: skip
    save(fig, path)


# --- locomotion ---------------------------------------------------------------------------------
LOCO = "twinloop/QuadrupedVelocity-v0"
#: The robot twin clips each joint target to velocity limit x control period of the last
#: (Go1: 0.6 rad hip and thigh, 0.4 rad calf per 20 ms); the sim env does the same with this.
GO1_TARGET_STEP = (0.6, 0.6, 0.4) * 4
TWIN_TOKEN = "exp-agents-twin"
#: The twin's lease (s); see :func:`locomotion`.
WATCHDOG_S = 30.0


class _Count(logging.Handler):
    """Counts log records whose message contains ``word``."""

    def __init__(self, word: str) -> None:
        super().__init__()
        self.word, self.n = word, 0

    def emit(self, record: logging.LogRecord) -> None:
        """Count one record if it matches."""
        self.n += self.word in record.getMessage()


def _loco_overrides() -> dict[str, Any]:
    """Sim env config: the default randomisation (every effect on) and the twin's clipping.

    Two reward weights are lowered: with legged_gym's weights and no termination penalty
    (nor its clip of the step reward at 0), a first run (300k steps, 5 seeds) learned to fall
    within ~18 steps, since a step's reward is negative while the gait is poor. The
    air-time term (negative for short steps) is off and the action-rate penalty is 1/5.
    """
    return {
        "safety.max_command_step": GO1_TARGET_STEP,
        "reward.feet_air_time": 0.0,
        "reward.action_rate": -0.002,
    }


def _tracking(results: list) -> dict[str, np.ndarray]:
    """Per-episode planar velocity error (m/s), yaw-rate error (rad/s), fall flag, length."""
    return {
        "lin": np.array([r.metrics["lin_vel_error_m_per_s"] for r in results]),
        "yaw": np.array([r.metrics["yaw_rate_error_rad_per_s"] for r in results]),
        "fell": np.array([float(r.terminated) for r in results]),
        "steps": np.array([r.steps for r in results], dtype=np.float64),
    }


def _loco_eval(name: str, env: Any, args: argparse.Namespace) -> dict[str, np.ndarray]:
    """Episodes ``0..eval-1`` of controller ``name`` on ``env`` (reset seeds 80,000 + e)."""
    from twinloop.controllers import make_controller
    from twinloop.eval.rollout import run_single

    return _tracking(run_single(env, make_controller(name, env), args.eval, 80_000))


def locomotion(args: argparse.Namespace) -> dict:
    """Experiment 5: PPO with domain randomisation on QuadrupedVelocity, then on the robot twin."""
    import twinloop
    from twinloop.controllers.rl.train import train
    from twinloop.core.profile import parse_profile
    from twinloop.eval.compare import paired_difference
    from twinloop.eval.metrics import aggregate
    from twinloop.hardware.robot.fake import SimRobot
    from twinloop.hardware.robot.server import RobotServer
    from twinloop.sim.locomotion.profile import PRIORS

    out = Path(args.work or tempfile.mkdtemp(prefix="exp_loco_"))
    env_over = _loco_overrides()
    overrides = {
        "hidden": (128, 128),
        "n_steps": 64,
        "minibatches": 4,
        "epochs": 5,
        "lr": 3e-4,
        "init_log_std": -1.0,  # actions of +-0.18 rad at first: it starts near the stance
    }
    t0 = time.perf_counter()
    runs, curves, train_s = [], [], []
    for seed in range(args.seeds):
        run = out / "ppo" / f"seed-{seed}"
        t1 = time.perf_counter()
        vec = twinloop.make_vec(LOCO, args.n_envs, **env_over)
        try:
            train(
                vec, "ppo", args.loco_steps, seed, run, overrides=overrides, env_id=LOCO,
                env_overrides=env_over, checkpoint_every=args.loco_steps,
            )  # fmt: skip
        finally:
            vec.close()
        train_s.append(time.perf_counter() - t1)
        runs.append(run)
        curves.append(_curve(run))
        print(f"ppo seed {seed}: trained {train_s[-1]:.0f} s", flush=True)
    cfg = twinloop.make_config(LOCO)
    profile = parse_profile(f"random:{args.loco_profile}", cfg, PRIORS)
    # A 0.5 s watchdog (a real robot's) fires on this loaded 2-core VM when a process stalls;
    # the twin's lease is widened so that damping never cuts an episode, and counted.
    server = RobotServer(
        SimRobot(cfg, hidden_seed=args.loco_hidden_seed, watchdog_s=WATCHDOG_S, profile=profile),
        port=0,
        token=TWIN_TOKEN,
        watchdog_s=WATCHDOG_S,
    ).start()
    damped = _Count("watchdog")
    logging.getLogger("twinloop.hardware.robot.server").addHandler(damped)
    arms = {f"ppo seed {k}": f"agent:{run}" for k, run in enumerate(runs)}
    arms.update({"stand": "stand", "trot": "trot"})
    per_arm: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    try:
        for arm, name in arms.items():
            t1 = time.perf_counter()
            sim = twinloop.make(LOCO, **env_over)
            try:
                on_sim = _loco_eval(name, sim, args)
            finally:
                sim.close()
            robot = twinloop.make(
                LOCO, backend="robot", address=server.address, token=TWIN_TOKEN, timeout_s=10.0
            )
            try:  # connected (and acquired) just before its episodes
                on_twin = _loco_eval(name, robot, args)
            finally:
                robot.close()
            per_arm[arm] = {"sim": on_sim, "twin": on_twin}
            print(
                f"{arm:12s} lin error sim {on_sim['lin'].mean():.3f} twin "
                f"{on_twin['lin'].mean():.3f} m/s; falls sim {on_sim['fell'].mean():.2f} twin "
                f"{on_twin['fell'].mean():.2f} ({time.perf_counter() - t1:.0f} s)",
                flush=True,
            )
    finally:
        server.stop()
        logging.getLogger("twinloop.hardware.robot.server").removeHandler(damped)
    print(f"watchdog damping events on the twin: {damped.n}")
    summary: dict[str, Any] = {}
    for arm, d in per_arm.items():
        row: dict[str, Any] = {}
        for metric in ("lin", "yaw", "fell"):
            gap = paired_difference(d["twin"][metric], d["sim"][metric], n_resamples=5000)
            row[metric] = {
                "sim": float(d["sim"][metric].mean()),
                "twin": float(d["twin"][metric].mean()),
                "gap_twin_minus_sim": [gap.point, gap.low, gap.high],
                "sim_per_episode": d["sim"][metric].tolist(),
                "twin_per_episode": d["twin"][metric].tolist(),
            }
        summary[arm] = row
    agents = [a for a in per_arm if a.startswith("ppo")]
    pooled: dict[str, Any] = {}
    for metric in ("lin", "yaw", "fell"):
        for where in ("sim", "twin"):
            vals = [summary[a][metric][where] for a in agents]
            agg = aggregate(vals, metrics=("iqm",), n_resamples=5000)["iqm"]
            pooled[f"{metric}_{where}_iqm"] = [agg.point, agg.low, agg.high]
        gaps = [summary[a][metric]["gap_twin_minus_sim"][0] for a in agents]
        agg = aggregate(gaps, metrics=("iqm",), n_resamples=5000)["iqm"]
        pooled[f"{metric}_gap_iqm"] = [agg.point, agg.low, agg.high]
        a = np.concatenate([per_arm[x]["twin"][metric] for x in agents])
        b = np.concatenate([per_arm[x]["sim"][metric] for x in agents])
        g = paired_difference(a, b, n_resamples=5000)
        pooled[f"{metric}_gap_pooled_paired"] = [g.point, g.low, g.high]
    summary["ppo (all seeds)"] = pooled
    print(f"\n{'arm':16s} {'lin err sim':>12s} {'lin err twin':>13s} "
          f"{'gap twin-sim [95% paired CI]':>30s} {'falls sim/twin':>15s}")  # fmt: skip
    for arm in per_arm:
        r = summary[arm]
        g = r["lin"]["gap_twin_minus_sim"]
        print(
            f"{arm:16s} {r['lin']['sim']:12.3f} {r['lin']['twin']:13.3f} "
            f"{g[0]:+10.3f} [{g[1]:+.3f}, {g[2]:+.3f}]   "
            f"{r['fell']['sim']:.2f}/{r['fell']['twin']:.2f}"
        )
    p = pooled
    print(
        f"{'PPO IQM seeds':16s} {p['lin_sim_iqm'][0]:12.3f} {p['lin_twin_iqm'][0]:13.3f} "
        f"{p['lin_gap_iqm'][0]:+10.3f} [{p['lin_gap_iqm'][1]:+.3f}, {p['lin_gap_iqm'][2]:+.3f}]"
        f"  (sim [{p['lin_sim_iqm'][1]:.3f}, {p['lin_sim_iqm'][2]:.3f}],"
        f" twin [{p['lin_twin_iqm'][1]:.3f}, {p['lin_twin_iqm'][2]:.3f}])"
    )
    _plot_loco(curves, summary, agents, RESULTS / "exp_agents_locomotion.png", args)
    return {
        "experiment": "locomotion",
        "settings": vars(args),
        "agent": {"name": "ppo", "overrides": overrides, "train_wall_s": train_s},
        "env_overrides": env_over,
        "twin": {
            "profile": f"random:{args.loco_profile}",
            "hidden_seed": args.loco_hidden_seed,
            "profile_values": profile.values,
        },
        "episodes": f"reset seeds 80000 + e, e < {args.eval}, same for sim and twin, every arm",
        "summary": summary,
        "twin_watchdog_damping_events": damped.n,
        "wall_s": time.perf_counter() - t0,
        "work_dir": str(out),
    }


def _plot_loco(curves: list, summary: dict, agents: list[str], path: Path, args) -> None:
    """Learning curve (IQM, min-max band) and tracking error on sim and twin per arm."""
    plt = pyplot()
    if plt is None:
        return

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2))
    grid = np.linspace(0, args.loco_steps, 40)
    iqm_band(ax1, grid, curves, "PPO")
    ax1.set_xlabel("env steps (50 Hz)")
    ax1.set_ylabel("recent training return (last 20 episodes)")
    ax1.legend(fontsize=7)
    arms = [*agents, "stand", "trot"]
    x = np.arange(len(arms))
    for k, where in enumerate(("sim", "twin")):
        y = np.array([summary[a]["lin"][where] for a in arms])
        ax2.bar(x + (k - 0.5) * 0.38, y, 0.38, label=where, alpha=0.8)
    for i, a in enumerate(arms):
        g = summary[a]["lin"]["gap_twin_minus_sim"]
        ax2.annotate(f"{g[0]:+.2f}\n[{g[1]:+.2f},{g[2]:+.2f}]", (i, 0.02), ha="center", fontsize=6)
    ax2.set_xticks(x, arms, fontsize=7, rotation=30, ha="right")
    ax2.set_ylabel("planar velocity tracking error (m/s)")
    ax2.legend(fontsize=7)
    fig.suptitle("QuadrupedVelocity-v0: PPO with domain randomisation, sim vs robot twin "
                 "(gap twin - sim, paired 95 % CI)", fontsize=9)  # fmt: skip
    save(fig, path)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """This module's options (prefixes ``--lang-`` and ``--loco-``)."""
    parser.add_argument(
        "--lang-steps",
        type=int,
        default=400_000,
        help="rearrangement: env steps (skills) per seed (default: 400000)",
    )
    parser.add_argument(
        "--lang-episodes",
        type=int,
        default=100,
        help="rearrangement: episodes per split, <= 100 (default: 100)",
    )
    parser.add_argument(
        "--lang-text-encoder", default="mean", choices=("mean", "gru"),
        help="rearrangement: token encoder (default: mean; gru is ~13x slower on a CPU)",
    )  # fmt: skip
    parser.add_argument(
        "--loco-steps",
        type=int,
        default=1_000_000,
        help="locomotion: env steps per seed (default: 1000000)",
    )
    parser.add_argument(
        "--loco-profile",
        type=int,
        default=1,
        help="locomotion: the twin's profile random:SEED (default: 1)",
    )
    parser.add_argument(
        "--loco-hidden-seed", type=int, default=20_251_205,
        help="locomotion: the twin's hidden seed (its randomised effects)",
    )  # fmt: skip


EXPERIMENTS = {"rearrangement": rearrangement, "locomotion": locomotion}
