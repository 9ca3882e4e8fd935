"""Control-suite throughput: our envs against a bare MuJoCo loop, dm_control and mujoco.rollout.

Usage::

    python benchmarks/bench_locomotion.py [--tasks walker-walk cheetah-run humanoid-run]
        [--seconds 2] [--n-envs 64] [--threads 2] [--no-ant]

For each task, in one run and on one machine:

* ``raw``: a bare Python loop of what one control step costs MuJoCo (set ``ctrl``,
  ``mj_step2``, ``mj_step`` x (n_sub_steps - 1), ``mj_step1``), no task, no validation;
* ``single``: ``twinloop.make(id).step`` (validation, safety, physics, measurement, task);
  the overhead is ``raw / single - 1`` in time per step (target <= 10 %);
* ``dm_control``: ``dm_control.suite.load(domain, task).step`` on the same model;
* ``vector``: ``twinloop.make_vec(id, n_envs, threads=...)`` physics steps/s (resets
  included), against ``mujoco.rollout.rollout`` of ``n_envs`` rollouts (one MjData per thread),
  same model, from the vector env's own mid-episode states with its random controls, 20
  control steps per call; both with 1 thread as well, for the scaling with threads (``xT``:
  rate at ``--threads`` over rate at 1);
* ``QuadrupedVelocity-v0``: its plant's bare physics, the single env (all effects on), the
  vector env and the env over the robot twin on loopback (:func:`bench_quadruped`);
* ``Ant-v5``: Gymnasium's MuJoCo Ant (``gymnasium[mujoco]``) against a bare loop of
  ``mj_step(model, data, frame_skip)`` on its own model, the same overhead measure (the row
  says why when the import fails).

The measures of a task run in ``--rounds`` alternating rounds; rates are medians over the
rounds and ratios medians of the per-round ratios, so that load from other processes on a
shared machine hits both sides of a ratio alike. Random actions (fixed seed) everywhere.
Prints a table and writes
``benchmarks/results/locomotion.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import mujoco
import numpy as np
from mujoco import rollout

import twinloop
from twinloop.sim.locomotion.kernel import load_model, model_facts

HERE = Path(__file__).parent


def _rate(step: Callable[[], object], seconds: float) -> float:
    """Calls per second of ``step()`` over about ``seconds``."""
    n, t0 = 0, time.perf_counter()
    while True:
        for _ in range(50):
            step()
        n += 50
        dt = time.perf_counter() - t0
        if dt >= seconds:
            return n / dt


def _interleaved(
    measures: dict[str, Callable[[], object]], seconds: float, rounds: int
) -> list[dict[str, float]]:
    """Rates of each measure in ``rounds`` alternating rounds of ``seconds / rounds`` each.

    On a shared machine the load changes within seconds; pairing the measures round by round
    and taking the median of the per-round ratios keeps the ratios honest.
    """
    return [{k: _rate(f, seconds / rounds) for k, f in measures.items()} for _ in range(rounds)]


def _median(rounds: list[dict[str, float]], key: str) -> float:
    return float(np.median([r[key] for r in rounds]))


def _median_ratio(rounds: list[dict[str, float]], a: str, b: str) -> float:
    return float(np.median([r[a] / r[b] for r in rounds]))


def _rollout_rate(m: object, vec: object, vacts: np.ndarray, threads: int, n_sub: int) -> Callable:
    """A callable running one ``mujoco.rollout`` call of 20 control steps of the vector env's envs.

    The same comparison as the vector env's: its envs' current states (after a warm-up, so
    mid-episode, with the contacts that brings) and its random controls, held for each
    control step's ``n_sub`` physics steps.
    """
    n = vec.num_envs
    for k in range(200):  # mid-episode states, as the vector env steps through them
        vec.step(vacts[k % len(vacts)])
    sig = mujoco.mjtState.mjSTATE_FULLPHYSICS
    init = np.empty((n, mujoco.mj_stateSize(m, sig)))
    for i in range(n):
        mujoco.mj_getState(m, vec.physics.batch.get_data(i), init[i], sig)
    per_step = np.stack([vacts[k % len(vacts)] for k in range(ROLLOUT_CONTROL_STEPS)], axis=1)
    control = np.repeat(per_step, n_sub, axis=1)  # (n, steps x n_sub, nu)
    datas = [mujoco.MjData(m) for _ in range(threads)]
    r = rollout.Rollout(nthread=threads)
    r.rollout([m] * n, datas, init, control)  # warm up

    def call() -> None:
        r.rollout([m] * n, datas, init, control)

    return call


#: Control steps per ``mujoco.rollout`` call (its rate is scaled to physics steps per second).
ROLLOUT_CONTROL_STEPS = 20


def bench_task(
    domain: str, task: str, seconds: float, n_envs: int, threads: int, rounds: int
) -> dict:
    env_id = f"twinloop/dmc-{domain}-{task}-v0"
    facts = model_facts(domain)
    rng = np.random.default_rng(0)
    acts = rng.uniform(-1, 1, (4096, facts.nu)).astype(np.float32)

    m = load_model(domain)
    d = mujoco.MjData(m)
    mujoco.mj_forward(m, d)
    n_sub, k = facts.n_sub_steps, [0]

    def raw() -> None:
        d.ctrl[:] = acts[k[0] % 4096]
        k[0] += 1
        mujoco.mj_step2(m, d)
        if n_sub > 1:
            mujoco.mj_step(m, d, n_sub - 1)
        mujoco.mj_step1(m, d)

    env = twinloop.make(env_id)
    env.reset(seed=0)

    def single() -> None:
        k[0] += 1
        _, _, term, trunc, _ = env.step(acts[k[0] % 4096])
        if term or trunc:
            env.reset()

    from dm_control import suite

    dm = suite.load(domain, task, task_kwargs={"random": 0})
    dm.reset()

    def dm_step() -> None:
        k[0] += 1
        if dm.step(acts[k[0] % 4096]).last():
            dm.reset()

    vecs, measures = {}, {"raw": raw, "single": single, "dm_control": dm_step}
    for t in sorted({1, threads}):
        vec = twinloop.make_vec(env_id, n_envs, threads=t)
        vec.reset(seed=0)
        vacts = rng.uniform(-1, 1, (8, n_envs, facts.nu))

        def vstep(vec: object = vec, vacts: np.ndarray = vacts) -> None:
            k[0] += 1
            vec.step(vacts[k[0] % 8])

        vecs[t] = vec
        measures[f"vector_{t}"] = vstep
        roll = _rollout_rate(m, vec, vacts, t, n_sub)
        measures[f"rollout_{t}"] = roll
    res = _interleaved(measures, seconds * len(measures), rounds)
    for vec in vecs.values():
        vec.close()
    phys = {
        **{f"vector_{t}": n_envs * n_sub for t in vecs},
        **{f"rollout_{t}": n_envs * ROLLOUT_CONTROL_STEPS * n_sub for t in vecs},
    }
    for r in res:
        for key, per_call in phys.items():
            r[key] *= per_call
    out = {
        "id": env_id,
        "n_sub_steps": n_sub,
        "rounds": res,
        "raw_steps_per_s": _median(res, "raw"),
        "single_steps_per_s": _median(res, "single"),
        "single_overhead": _median_ratio(res, "raw", "single") - 1.0,
        "dm_control_steps_per_s": _median(res, "dm_control"),
        "single_vs_dm_control": _median_ratio(res, "single", "dm_control"),
        "vector_physics_steps_per_s": _median(res, f"vector_{threads}"),
        "rollout_physics_steps_per_s": _median(res, f"rollout_{threads}"),
        "vector_vs_rollout": _median_ratio(res, f"vector_{threads}", f"rollout_{threads}"),
    }
    if threads > 1:
        out["vector_thread_scaling"] = _median_ratio(res, f"vector_{threads}", "vector_1")
        out["rollout_thread_scaling"] = _median_ratio(res, f"rollout_{threads}", "rollout_1")
    return out


def bench_quadruped(seconds: float, n_envs: int, threads: int, rounds: int) -> dict:
    """QuadrupedVelocity-v0: its plant's bare physics, the single env, the vector env, the twin.

    ``raw`` is a loop of what a control step costs MuJoCo on the same model (set ``ctrl``,
    ``mj_step`` x decimation); ``single`` is ``env.step`` with every sim-to-real effect on (the
    defaults); ``vector`` is the vector env's env-steps/s; ``robot`` is ``env.step`` over
    ``twinloop serve robot``'s server on loopback, run in this process on a thread (so it
    shares the GIL with the client: a separate process is faster), latency 0.
    """
    from twinloop.hardware.robot.cli import HIDDEN_SWITCHES
    from twinloop.hardware.robot.fake import SimRobot
    from twinloop.hardware.robot.server import RobotServer
    from twinloop.sim.locomotion import velocity as V

    env_id = V.ENV_ID
    rng = np.random.default_rng(0)
    acts = rng.uniform(-0.3, 0.3, (4096, V.NJ)).astype(np.float32)
    cfg = twinloop.make_config(env_id)
    m = V.load_model(cfg)
    d = mujoco.MjData(m)
    d.qpos[7:] = V.DEFAULT_POSE
    mujoco.mj_forward(m, d)
    dec, k = cfg.control.decimation, [0]

    def raw() -> None:
        d.ctrl[:] = V.DEFAULT_POSE + 0.5 * acts[k[0] % 4096]
        k[0] += 1
        mujoco.mj_step(m, d, dec)

    def stepper(env: object) -> Callable[[], None]:
        env.reset(seed=0)

        def step() -> None:
            k[0] += 1
            _, _, term, trunc, _ = env.step(acts[k[0] % 4096])
            if term or trunc:
                env.reset()

        return step

    single = twinloop.make(env_id)
    vec = twinloop.make_vec(env_id, n_envs, threads=threads)
    vec.reset(seed=0)
    vacts = rng.uniform(-0.3, 0.3, (8, n_envs, V.NJ)).astype(np.float32)

    def vstep() -> None:
        k[0] += 1
        vec.step(vacts[k[0] % 8])

    plant = twinloop.make_config(env_id, **dict.fromkeys(HIDDEN_SWITCHES, False))
    server = RobotServer(SimRobot(plant), port=0, token="bench", watchdog_s=600.0).start()
    robot = twinloop.make(
        env_id, backend="robot", address=server.address, token="bench", timeout_s=5.0
    )
    try:
        measures = {"raw": raw, "single": stepper(single), "vector": vstep}
        measures["robot"] = stepper(robot)
        res = _interleaved(measures, seconds * len(measures), rounds)
    finally:
        robot.close()
        server.stop()
        vec.close()
        single.close()
    for r in res:
        r["vector"] *= n_envs
    return {
        "id": env_id,
        "n_sub_steps": dec,
        "rounds": res,
        "raw_steps_per_s": _median(res, "raw"),
        "single_steps_per_s": _median(res, "single"),
        "single_overhead": _median_ratio(res, "raw", "single") - 1.0,
        "vector_env_steps_per_s": _median(res, "vector"),
        "vector_vs_raw": _median_ratio(res, "vector", "raw"),
        "robot_steps_per_s": _median(res, "robot"),
        "robot_vs_single": _median_ratio(res, "robot", "single"),
    }


def bench_gym_ant(seconds: float) -> dict:
    """Gymnasium's Ant-v5 ``env.step`` against ``mj_step(model, data, frame_skip)``."""
    try:
        import gymnasium as gym

        env = gym.make("Ant-v5")
    except Exception as exc:  # gymnasium[mujoco] missing or broken: say so in the table
        return {"id": "gymnasium/Ant-v5", "skipped": f"{type(exc).__name__}: {exc}"}
    env.reset(seed=0)
    base = env.unwrapped
    m, skip = base.model, base.frame_skip
    d = mujoco.MjData(m)
    mujoco.mj_forward(m, d)
    rng = np.random.default_rng(0)
    acts = rng.uniform(-1, 1, (4096, m.nu)).astype(np.float32)
    k = [0]

    def raw() -> None:
        d.ctrl[:] = acts[k[0] % 4096]
        k[0] += 1
        mujoco.mj_step(m, d, skip)

    def step() -> None:
        k[0] += 1
        _, _, term, trunc, _ = env.step(acts[k[0] % 4096])
        if term or trunc:
            env.reset()

    raw_rate = _rate(raw, seconds)
    gym_rate = _rate(step, seconds)
    env.close()
    return {
        "id": "gymnasium/Ant-v5",
        "n_sub_steps": skip,
        "raw_steps_per_s": raw_rate,
        "single_steps_per_s": gym_rate,
        "single_overhead": raw_rate / gym_rate - 1.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tasks",
        nargs="+",
        default=["walker-walk", "cheetah-run", "humanoid-run"],
        help="control-suite tasks as domain-task",
    )
    parser.add_argument("--no-ant", action="store_true", help="skip Gymnasium's Ant-v5 row")
    parser.add_argument(
        "--no-quadruped",
        action="store_true",
        help="skip the QuadrupedVelocity-v0 row (single, vector, robot twin)",
    )
    parser.add_argument(
        "--seconds", type=float, default=2.0, help="seconds of measurement per measure and task"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="alternating rounds the seconds are split into (ratios: median over rounds)",
    )
    parser.add_argument("--n-envs", type=int, default=64, help="envs of the vector rows")
    parser.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="threads of the vector env and of mujoco.rollout (both also run with 1)",
    )
    args = parser.parse_args()
    rows = [
        bench_task(*t.split("-", 1), args.seconds, args.n_envs, args.threads, args.rounds)
        for t in args.tasks
    ]
    head = (
        f"{'task':<28}{'raw/s':>9}{'single/s':>10}{'overhead':>9}{'dm_ctrl/s':>10}"
        f"{'x dm':>6}{'vec phys/s':>12}{'rollout/s':>11}{'x roll':>7}{'vec xT':>7}{'roll xT':>8}"
    )
    print(head)
    for r in rows:
        print(
            f"{r['id'].split('/')[1]:<28}{r['raw_steps_per_s']:>9.0f}"
            f"{r['single_steps_per_s']:>10.0f}{r['single_overhead']:>9.1%}"
            f"{r['dm_control_steps_per_s']:>10.0f}{r['single_vs_dm_control']:>6.2f}"
            f"{r['vector_physics_steps_per_s']:>12.0f}{r['rollout_physics_steps_per_s']:>11.0f}"
            f"{r['vector_vs_rollout']:>7.2f}{r.get('vector_thread_scaling', 1.0):>7.2f}"
            f"{r.get('rollout_thread_scaling', 1.0):>8.2f}"
        )
    if not args.no_quadruped:
        q = bench_quadruped(args.seconds, args.n_envs, args.threads, args.rounds)
        rows.append(q)
        print(
            f"{'QuadrupedVelocity-v0':<28}{q['raw_steps_per_s']:>9.0f}"
            f"{q['single_steps_per_s']:>10.0f}{q['single_overhead']:>9.1%}"
            f"   vector {q['vector_env_steps_per_s']:.0f} env-steps/s "
            f"({q['vector_vs_raw']:.2f}x one raw loop), robot twin "
            f"{q['robot_steps_per_s']:.0f} steps/s ({q['robot_vs_single']:.2f}x single)"
        )
    if not args.no_ant:
        ant = bench_gym_ant(args.seconds)
        rows.append(ant)
        if "skipped" in ant:
            print(f"{ant['id']:<28}skipped: {ant['skipped']}")
        else:
            print(
                f"{ant['id']:<28}{ant['raw_steps_per_s']:>9.0f}"
                f"{ant['single_steps_per_s']:>10.0f}{ant['single_overhead']:>9.1%}"
                "   (Gymnasium's own env.step in the single column)"
            )
    out = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "mujoco": mujoco.__version__,
        "n_envs": args.n_envs,
        "threads": args.threads,
        "results": rows,
    }
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "locomotion.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
