"""Control steps per second of the Balloon Learning Environment (BLE 1.0.1), for comparison.

Runs under a separate Python 3.10 environment that has BLE installed (it does not import on
Python >= 3.11); ``bench_balloon.py`` starts it as a subprocess and reads one JSON line:

    python3.10 benchmarks/ble_step_rate.py --steps 200 --seed 0

The policy is a random walk (hold a uniformly drawn command for a geometric number of steps,
mean 10), the same policy ``bench_balloon.py`` times on twinloop; its cost is negligible next
to either simulator's step.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
warnings.simplefilter("ignore")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    import numpy as np
    from balloon_learning_environment.env import balloon_env

    t0 = time.perf_counter()
    env = balloon_env.BalloonEnv(seed=args.seed)
    env.reset()
    setup_s = time.perf_counter() - t0
    rng = np.random.default_rng(args.seed)
    action = int(rng.integers(3))
    steps = 0
    episodes = 0
    start = time.perf_counter()
    while steps < args.steps:
        if rng.random() < 0.1:
            action = int(rng.integers(3))
        _, _, done, _ = env.step(action)
        steps += 1
        if done:
            env.reset()
            episodes += 1
    elapsed = time.perf_counter() - start
    print(
        json.dumps(
            {
                "ble_steps_per_s": steps / elapsed,
                "steps": steps,
                "episodes_ended": episodes,
                "setup_s": setup_s,
                "python": sys.version.split()[0],
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
