"""TWR50 of BLE's own StationSeeker on BLE 1.0.1 (its VAE winds), one JSON line per seed.

Runs under a separate Python 3.10 environment that has BLE installed (it does not import on
Python >= 3.11). BLE's ``eval`` module imports every agent (and so Atari's ``ale_py``); this
script uses BLE's ``eval_lib.eval_agent`` with the StationSeeker agent directly, so it needs
only the balloon part of BLE:

    python3.10 benchmarks/ble_station_seeker_eval.py --first-seed 0 --n-seeds 100

Seeds 0..99 are BLE's ``small_eval`` suite (``big_eval`` is 0..9999), 960 steps each. Each
line is ``{"seed": s, "twr50": ..., "steps": ..., "failure": ...}``; BLE's TWR50 divides by
the steps flown, which is 960 unless the balloon failed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
warnings.simplefilter("ignore")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--n-seeds", type=int, default=100)
    parser.add_argument("--steps", type=int, default=960)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    from balloon_learning_environment.agents import station_seeker_agent
    from balloon_learning_environment.env import balloon_env
    from balloon_learning_environment.eval import eval_lib, suites

    env = balloon_env.BalloonEnv(seed=0)
    agent = station_seeker_agent.StationSeekerAgent(3, env.observation_space.shape)
    for seed in range(args.first_seed, args.first_seed + args.n_seeds):
        suite = suites.EvaluationSuite([seed], args.steps)
        (res,) = eval_lib.eval_agent(agent, env, suite)
        failure = (
            "out_of_power"
            if res.out_of_power
            else "burst"
            if res.envelope_burst
            else "zeropressure"
            if res.zeropressure
            else "none"
        )
        row = {
            "seed": seed,
            "twr50": res.time_within_radius,
            "steps": res.final_timestep,
            "failure": failure,
        }
        print(json.dumps(row), flush=True)
    print(json.dumps({"python": sys.version.split()[0]}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
