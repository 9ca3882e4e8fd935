"""Dataset capture throughput: twinloop.datasets vs no recording vs minari.DataCollector.

Measures, on the STEM env (random actions, pre-drawn so sampling costs nothing):

1. vector env steps/s without and with ``RecordVectorEpisodes`` at several ``n_envs``, both
   through the capture companion (the default) and inline, the recording overhead, the
   bytes written per step and the CPU time of each process;
2. the same single-env capture through ``RecordEpisodes`` and through
   ``minari.DataCollector`` (same env, actions and steps, written to disk), and their ratio;
3. write throughput of image observations (MB/s of raw pixels before compression);
4. transition sampling (``Dataset.sample``) from datasets of growing episode counts: the
   time per sampled transition should not grow with the number of episodes; and the time to
   check every episode's checksums (what the first read of each episode costs, all at once).

Runs alternate (plain, recorded, plain, ...) and each figure is the best of ``--repeats``, so a
burst of load from another process does not bias one side. Prints a table and writes JSON to
``benchmarks/results/datasets.json``.

    python benchmarks/bench_datasets.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numba
import numpy as np

import twinloop
from twinloop.datasets import DatasetWriter, RecordEpisodes, RecordVectorEpisodes
from twinloop.datasets.schema import FieldSpec

ENV_ID = "twinloop/StemSteer-v0"
RESULTS = Path(__file__).parent / "results" / "datasets.json"


def _du(path: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in path.rglob("*") if p.is_file())


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def vector_run(
    n_envs: int, steps: int, root: Path | None, capture: str = "auto"
) -> tuple[float, int, float, float]:
    """Steps/s, bytes written and CPU seconds per vector step (this process, the companion).

    ``steps`` vector steps are timed after a warm-up. With a companion the timed span ends
    when it has committed every step (``sync``).
    """
    env = twinloop.make_vec(ENV_ID, n_envs)
    if root is not None:
        shutil.rmtree(root, ignore_errors=True)
        env = RecordVectorEpisodes(env, root / "bench" / f"vec{n_envs}-v0", capture=capture)
    env.action_space.seed(0)
    actions = [env.action_space.sample() for _ in range(64)]
    env.reset(seed=0)
    for k in range(200):
        env.step(actions[k % 64])
    link = getattr(env, "_link", None)
    if link is not None:
        env.sync()
    pid = link.proc.pid if link is not None else None
    c0 = _cpu_s(pid) if pid else 0.0
    m0 = time.process_time()
    t0 = time.perf_counter()
    for k in range(steps):
        env.step(actions[k % 64])
    if link is not None:
        env.sync()
    dt = time.perf_counter() - t0
    main_cpu = (time.process_time() - m0) / steps
    companion_cpu = (_cpu_s(pid) - c0) / steps if pid else 0.0
    env.close()
    size = _du(root) if root is not None else 0
    return steps * n_envs / dt, size, main_cpu, companion_cpu


def bench_vector(sizes: list[int], steps: int, repeats: int, tmp: Path) -> list[dict[str, Any]]:
    """Plain, companion and inline capture, alternating; each figure the best of repeats."""
    rows = []
    for n in sizes:
        k = max(200, steps // n)
        best: dict[str, tuple[float, int, float, float]] = {}
        for _ in range(repeats):
            for kind in ("plain", "companion", "inline"):
                r = vector_run(n, k, None if kind == "plain" else tmp / "vec", kind)
                if kind not in best or r[0] > best[kind][0]:
                    best[kind] = r
        recorded_steps = (k + 200) * n  # recorded episodes cover warm-up and timed steps
        plain = best["plain"][0]
        row: dict[str, Any] = {"n_envs": n, "vector_steps": k, "steps_per_s_plain": plain}
        for kind in ("companion", "inline"):
            sps, size, main_cpu, comp_cpu = best[kind]
            row[kind] = {
                "steps_per_s": sps,
                "overhead_pct": 100 * (plain / sps - 1),
                "bytes_per_step": size / recorded_steps,
                "cpu_us_per_vector_step_main": 1e6 * main_cpu,
                "cpu_us_per_vector_step_companion": 1e6 * comp_cpu,
            }
        rows.append(row)
    return rows


def _single_actions(n: int) -> list:
    env = twinloop.make(ENV_ID)
    env.action_space.seed(0)
    return [env.action_space.sample() for _ in range(n)]


def single_run(kind: str, steps: int, actions: list, tmp: Path) -> float:
    """Env steps/s of one env run for ``steps`` steps: plain, twinloop or minari capture."""
    shutil.rmtree(tmp / kind, ignore_errors=True)
    env = twinloop.make(ENV_ID)
    collector = None
    if kind == "twinloop":
        env = RecordEpisodes(env, tmp / kind / "bench" / "single-v0")
    elif kind == "minari":
        import minari

        os.environ["MINARI_DATASETS_PATH"] = str(tmp / kind)
        # infos stay off: Minari requires reset and step infos of the same structure, which
        # STEM's are not; this favours Minari (it writes less than twinloop does)
        collector = minari.DataCollector(env, record_infos=False)
        env = collector
    t0 = time.perf_counter()
    done, ep = 0, 0
    while done < steps:
        env.reset(seed=ep)
        ep += 1
        while done < steps:
            _, _, term, trunc, _ = env.step(actions[done])
            done += 1
            if term or trunc:
                break
    if collector is not None:
        collector.create_dataset(dataset_id="bench/single-v0", algorithm_name="random")
    env.close()
    return steps / (time.perf_counter() - t0)


def bench_single(steps: int, repeats: int, tmp: Path) -> dict[str, Any]:
    actions = _single_actions(steps)
    best: dict[str, float] = {}
    for _ in range(repeats):
        for kind in ("plain", "twinloop", "minari"):
            best[kind] = max(best.get(kind, 0.0), single_run(kind, steps, actions, tmp))
    cost = {k: 1 / best[k] - 1 / best["plain"] for k in ("twinloop", "minari")}
    return {
        "steps": steps,
        "steps_per_s_plain": best["plain"],
        "steps_per_s_twinloop": best["twinloop"],
        "steps_per_s_minari": best["minari"],
        "recording_us_per_step_twinloop": 1e6 * cost["twinloop"],
        "recording_us_per_step_minari": 1e6 * cost["minari"],
        "minari_over_twinloop_recording_cost": cost["minari"] / cost["twinloop"],
        "minari_over_twinloop_wall_time": best["twinloop"] / best["minari"],
    }


def _frames(n: int, shape: tuple[int, int], seed: int) -> np.ndarray:
    """HAADF-like frames: bright Gaussian atoms on a dark lattice background plus noise."""
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.zeros(shape)
    for cy in range(8, h, 16):
        for cx in range(8 + (cy // 16 % 2) * 8, w, 16):
            base += 120 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 18.0)
    out = np.empty((n, h, w), np.uint8)
    for k in range(n):
        drift = np.roll(base, (k % 5, k % 3), axis=(0, 1))
        out[k] = np.clip(drift + rng.poisson(8, shape), 0, 255)
    return out


def bench_images(
    shape: tuple[int, int], frames: int, episodes: int, repeats: int, tmp: Path
) -> dict:
    import gymnasium as gym

    obs = gym.spaces.Box(0, 255, shape, np.uint8)
    act = gym.spaces.Box(-1, 1, (2,), np.float32)
    data = _frames(frames + 1, shape, 0)
    values = [
        data,
        np.zeros((frames, 2), np.float32),
        np.zeros(frames),
        np.eye(1, frames, frames - 1, dtype=bool)[0],
        np.zeros(frames, bool),
        np.zeros(frames + 1),
    ]
    best = 0.0
    size = 0
    for _ in range(repeats):
        path = tmp / "img" / "bench" / "images-v0"
        shutil.rmtree(tmp / "img", ignore_errors=True)
        w = DatasetWriter(path, observation_space=obs, action_space=act)
        w.begin(list[FieldSpec]())
        t0 = time.perf_counter()
        for _ in range(episodes):
            w.write_fields(values)
        dt = time.perf_counter() - t0
        w.close()
        best = max(best, episodes * data.nbytes / dt / 1e6)
        size = _du(path)
    raw = episodes * data.nbytes
    return {
        "frame_shape": list(shape),
        "frames_per_episode": frames + 1,
        "episodes": episodes,
        "raw_mb_per_s": best,
        "compression_ratio": raw / max(size, 1),
    }


def bench_sampling(
    vector_steps: list[int], batch: int, repeats: int, tmp: Path
) -> list[dict[str, Any]]:
    """Microseconds per sampled transition from STEM datasets of growing size."""
    from twinloop.datasets import open_dataset

    rows = []
    for n_steps in vector_steps:
        path = tmp / "sampling" / f"s{n_steps}-v0"
        shutil.rmtree(path, ignore_errors=True)
        env = RecordVectorEpisodes(twinloop.make_vec(ENV_ID, 256), path)
        env.action_space.seed(0)
        env.reset(seed=0)
        for _ in range(n_steps):
            env.step(env.action_space.sample())
        env.close()
        ds = open_dataset(path)
        # the checksums a first read checks (every dataset's bytes and headers), all at once
        t0 = time.perf_counter()
        ds._store.ensure_intact(ds.indices)
        verify_s = time.perf_counter() - t0
        rng = np.random.default_rng(0)
        ds.sample(batch, rng)  # builds the step index
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(20):
                ds.sample(batch, rng)
            best = min(best, (time.perf_counter() - t0) / (20 * batch))
        # the lookup alone (global step -> episode, step), on a large batch
        from twinloop.datasets.reader import _locate

        index = ds._step_index
        g = rng.integers(0, index.total, size=1 << 20)
        _locate(g[:16], index.bounds, index.guide, index.shift)
        t0 = time.perf_counter()
        _locate(g, index.bounds, index.guide, index.shift)
        locate_ns = 1e9 * (time.perf_counter() - t0) / g.size
        rows.append(
            {
                "episodes": len(ds),
                "steps": ds.total_steps,
                "file_mb": ds.path.stat().st_size / 1e6,
                "batch": batch,
                "us_per_transition": 1e6 * best,
                "locate_ns_per_sample": locate_ns,
                "verify_ms": 1e3 * verify_s,
                "verify_mb_per_s": ds.path.stat().st_size / 1e6 / verify_s,
            }
        )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer steps and repeats")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args()
    repeats = args.repeats or (2 if args.quick else 5)
    vec_steps = 60_000 if args.quick else 400_000
    single_steps = 3_000 if args.quick else 10_000
    tmp = Path(tempfile.mkdtemp(prefix="bench_datasets_"))
    try:
        vector = bench_vector([16, 64, 256], vec_steps, repeats, tmp)
        single = bench_single(single_steps, repeats, tmp)
        images = bench_images((256, 256), 99, 20 if args.quick else 60, repeats, tmp)
        sampling = bench_sampling([100, 1_000] if args.quick else [100, 1_000, 8_000], 256, 3, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"STEM vector env, random actions (best of {repeats})")
    print(
        f"{'n_envs':>6}  {'plain steps/s':>14}  {'capture':>9}  {'recording steps/s':>18}  "
        f"{'overhead':>8}  {'bytes/step':>10}  {'CPU us/vec step: main':>21}  {'companion':>9}"
    )
    for r in vector:
        for kind in ("companion", "inline"):
            c = r[kind]
            print(
                f"{r['n_envs']:>6}  {r['steps_per_s_plain']:>14,.0f}  {kind:>9}  "
                f"{c['steps_per_s']:>18,.0f}  {c['overhead_pct']:>7.1f}%  "
                f"{c['bytes_per_step']:>10.1f}  {c['cpu_us_per_vector_step_main']:>21.1f}  "
                f"{c['cpu_us_per_vector_step_companion']:>9.1f}"
            )
    print(
        f"\nsingle env, {single['steps']} steps: plain {single['steps_per_s_plain']:,.0f} steps/s, "
        f"twinloop {single['steps_per_s_twinloop']:,.0f}, minari.DataCollector "
        f"{single['steps_per_s_minari']:,.0f}"
    )
    print(
        f"  recording cost per step: twinloop {single['recording_us_per_step_twinloop']:.1f} us, "
        f"minari {single['recording_us_per_step_minari']:.1f} us "
        f"(minari / twinloop = {single['minari_over_twinloop_recording_cost']:.1f}x)"
    )
    print(
        f"\nimages {images['frame_shape']} uint8, {images['frames_per_episode']} frames/episode: "
        f"{images['raw_mb_per_s']:.0f} MB/s of raw pixels, compression "
        f"{images['compression_ratio']:.2f}x"
    )
    print(f"\ntransition sampling, batches of {sampling[0]['batch']}")
    print(
        f"{'episodes':>9}  {'steps':>10}  {'file MB':>8}  {'us/transition':>13}  {'locate ns':>9}"
        f"  {'checksums: ms':>13}  {'MB/s':>6}"
    )
    for r in sampling:
        print(
            f"{r['episodes']:>9,}  {r['steps']:>10,}  {r['file_mb']:>8.0f}  "
            f"{r['us_per_transition']:>13.2f}  {r['locate_ns_per_sample']:>9.1f}"
            f"  {r['verify_ms']:>13.1f}  {r['verify_mb_per_s']:>6.0f}"
        )
    result = {
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "numba_threads": numba.get_num_threads(),
            "python": platform.python_version(),
        },
        "vector": vector,
        "single_env_vs_minari": single,
        "images": images,
        "sampling": sampling,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
