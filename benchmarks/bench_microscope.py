"""Microscope path: HAADF render time, Si detection vs dose, and the twin's request rate.

Usage::

    python benchmarks/bench_microscope.py [--frames 200] [--seconds 5]

1. Render: median time of one 256 x 256 frame on one core (numba threads = 1), with exact
   Poisson shot noise at the default dose, and without noise (the geometry alone).
2. Perception: over a range of imaging currents (dose = current x pixel time), the fraction of
   frames in which exactly one 3-fold Si is found and the median / 95th-percentile error of
   its position against the simulator's truth (at the time the scan crossed it).
3. Twin: park + acquire(64 x 64) request pairs per second from one client to a twin running in
   its own process on loopback.

Prints tables and writes ``benchmarks/results/microscope.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numba
import numpy as np

from twinloop.core.config import override
from twinloop.core.rng import new_streams, seed_streams
from twinloop.sim.stem import kernel as K
from twinloop.sim.stem import perception as P
from twinloop.sim.stem import render as R
from twinloop.sim.stem.config import StemConfig


def _sample(cfg: StemConfig, seed: int):
    p = K.physics_params(cfg)
    f, i, h, m = K.new_state(1)
    rng = new_streams(1)
    seed_streams(rng, 0, seed)
    K.reset(0, f, i, h, p, rng, m)
    return p, (f, i, h), rng, R.imaging_params(cfg)


def bench_render(repeats: int) -> dict:
    out = {}
    for name, cfg in (
        ("default dose, Poisson noise", StemConfig()),
        ("no noise (geometry only)", override(StemConfig(), imaging_current_na=0.0)),
    ):
        p, state, rng, ip = _sample(cfg, 0)
        R.render_frame(cfg, 0, state, p, ip, rng)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            R.render_frame(cfg, 0, state, p, ip, rng)
            times.append(time.perf_counter() - t0)
        out[name] = {"median_ms": 1e3 * statistics.median(times)}
    return out


def _truth(cfg, f, i, n):
    x, y = K.site_xy(*map(int, i[0, :3]), f[0, K.F_COS], f[0, K.F_SIN])
    fov = cfg.microscope.fov_angstrom
    t = (y - f[0, K.F_FOV_Y] + fov / 2) / (fov / n) * cfg.microscope.frame_time_s / n
    return np.array(
        [x - f[0, K.F_FOV_X] - f[0, K.F_VX] * t, y - f[0, K.F_FOV_Y] - f[0, K.F_VY] * t]
    )


def bench_perception(frames: int, currents_pa: list[float]) -> list[dict]:
    rows = []
    for pa in currents_pa:
        cfg = override(StemConfig(), imaging_current_na=pa * 1e-3)
        ratio = (14 / 6) ** cfg.imaging.z_exponent
        electrons = pa * 1e-12 * cfg.pixel_time_s / 1.602176634e-19
        found, errors, statuses = 0, [], {}
        for seed in range(frames):
            p, (f, i, h), rng, ip = _sample(cfg, seed)
            img = R.render_frame(cfg, 0, (f, i, h), p, ip, rng)
            det = P.analyse(
                img, cfg.microscope.fov_angstrom, cfg.physics.probe_sigma_angstrom, ratio
            )
            statuses[det.status] = statuses.get(det.status, 0) + 1
            if det.status == P.OK:
                found += 1
                errors.append(
                    float(np.hypot(*(det.si_position_angstrom - _truth(cfg, f, i, img.shape[0]))))
                )
        rows.append(
            {
                "imaging_current_pa": pa,
                "electrons_per_pixel": electrons,
                "si_found_fraction": found / frames,
                "median_error_angstrom": float(np.median(errors)) if errors else float("nan"),
                "p95_error_angstrom": float(np.percentile(errors, 95)) if errors else float("nan"),
                "outcomes": statuses,
            }
        )
    return rows


def bench_twin(seconds: float) -> dict:
    from twinloop.hardware.microscope.remote import RemoteMicroscope

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "twinloop.cli", "serve", "microscope", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert "listening" in proc.stdout.readline()
        mic = RemoteMicroscope(f"tcp://127.0.0.1:{port}", timeout_s=10)
        mic.connect()
        for _ in range(20):  # warm-up (compilation in the twin)
            mic.park(1.0, 0.5)
            mic.acquire(64, 2e-6)
        n = 0
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            mic.park(1.0, 0.5)
            mic.acquire(64, 2e-6)
            n += 1
        rate = n / (time.perf_counter() - t0)
        mic.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    return {"park_acquire_64px_per_s": rate, "pairs": n}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=200)
    p.add_argument("--repeats", type=int, default=100)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--currents-pa", type=float, nargs="+", default=[1, 3, 10, 30, 100])
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "microscope.json"))
    args = p.parse_args()
    numba.set_num_threads(1)
    machine = {
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "processor": platform.processor() or platform.machine(),
    }

    render = bench_render(args.repeats)
    print("HAADF render, 256 x 256, one core (target <= 2 ms median)")
    for name, r in render.items():
        print(f"  {name:32s} {r['median_ms']:7.3f} ms")

    perception = bench_perception(args.frames, args.currents_pa)
    print(
        f"\nSi detection over {args.frames} frames per dose (targets at the default 30 pA: "
        ">= 99 % found, median error <= 0.2 A)"
    )
    print(f"  {'current':>8s} {'e-/pixel':>9s} {'found':>7s} {'median err':>11s} {'p95 err':>8s}")
    for r in perception:
        print(
            f"  {r['imaging_current_pa']:6.0f}pA {r['electrons_per_pixel']:9.0f} "
            f"{100 * r['si_found_fraction']:6.1f}% {r['median_error_angstrom']:9.3f} A "
            f"{r['p95_error_angstrom']:6.3f} A   {r['outcomes']}"
        )

    twin = bench_twin(args.seconds)
    print(
        f"\nTwin on loopback: {twin['park_acquire_64px_per_s']:.0f} park+acquire(64x64) "
        "pairs/s from one client (target >= 200)"
    )

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps(
            {"machine": machine, "render": render, "perception": perception, "twin": twin}, indent=2
        )
    )


if __name__ == "__main__":
    main()
