"""Learner updates/s and env steps/s of each agent, and the share of wall time in the env.

Runs each agent for a fixed number of env steps on a twinloop vector env (PPO on STEM with
continuous actions, feed-forward and with a GRU core, DQN, QR-DQN and BBF on the balloon with
discrete ones, image agents on LangRearrange's rgb observation at 64 px: DQN and PPO with
the Nature CNN, DQN with the IMPALA ResNet, each with the GRU over the instruction, and PPO
with the Nature CNN on StemSteer's 48-px HAADF crop), after a short warm-up run that compiles
the jitted functions, and prints a table; ``--json`` also writes it; ``--only`` picks rows by a
substring of their name (``--only rgb``)::

    JAX_PLATFORMS=cpu .venv/bin/python benchmarks/bench_agents.py --steps 20000 --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time

import twinloop
from twinloop.controllers.rl.train import train
from twinloop.core.text import table

LANG = "twinloop/LangRearrange-v0"
#: LangRearrange's rgb observation: image (64 px), instruction tokens, is_holding.
RGB64 = {"observation_mode": "rgb", "resolution": 64}
#: Replay of 10k transitions of rgb observations: 2 x 12,349 bytes each, 247 MB.
IMAGE_REPLAY = {"learning_starts": 0, "buffer_size": 10_000}

#: StemSteer's frame observation (a 48-px HAADF crop of 8 A around the Si) and what PPO sees.
STEM_FRAME = {"observation_mode": "frame"}
STEM_FRAME_KEYS = {"obs_keys": "frame,goal_offset_angstrom"}

#: (row name, agent, env id, agent settings, env settings): CPU-sized defaults of each agent.
CASES = [
    ("ppo", "ppo", "twinloop/StemSteer-v0", {}, {}),
    ("ppo gru", "ppo", "twinloop/StemSteer-v0", {"recurrent": "gru"}, {}),  # GRU of 64
    ("dqn", "dqn", "twinloop/BalloonStationKeeping-v0", {"learning_starts": 0}, {}),
    ("qr-dqn", "qr-dqn", "twinloop/BalloonStationKeeping-v0", {"learning_starts": 0}, {}),
    ("bbf", "bbf", "twinloop/BalloonStationKeeping-v0", {"learning_starts": 0}, {}),
    ("dqn cnn rgb64", "dqn", LANG, IMAGE_REPLAY, RGB64),
    ("dqn impala rgb64", "dqn", LANG, {**IMAGE_REPLAY, "image_encoder": "impala"}, RGB64),
    ("ppo cnn rgb64", "ppo", LANG, {}, RGB64),
    ("ppo cnn stem-frame48", "ppo", "twinloop/StemSteer-v0", STEM_FRAME_KEYS, STEM_FRAME),
]


def bench(
    name: str, agent: str, env_id: str, overrides: dict, env_kw: dict, steps: int, n_envs: int
) -> dict:
    env = twinloop.make_vec(env_id, n_envs, **env_kw)
    try:
        with tempfile.TemporaryDirectory() as warm:  # compile outside the timing
            train(env, agent, 2 * 128 * n_envs, 0, warm, overrides=overrides)
        with tempfile.TemporaryDirectory() as out:
            t0 = time.perf_counter()
            r = train(env, agent, steps, 0, out, overrides=overrides, checkpoint_every=steps)
            wall = time.perf_counter() - t0
    finally:
        env.close()
    return {
        "name": name,
        "agent": agent,
        "env_id": env_id + "".join(f" {k}={v}" for k, v in env_kw.items()),
        "n_envs": n_envs,
        "env_steps": r.env_steps,
        "updates": r.updates,
        "wall_s": wall,
        "env_steps_per_s": r.env_steps / wall,
        "updates_per_s": r.updates / wall,
        "env_fraction": r.env_s / wall,
        "agent_fraction": r.agent_s / wall,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20_000, help="env steps per agent")
    p.add_argument("--n-envs", type=int, default=8, help="rows of the vector env")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--only", default="", help="run the rows whose name contains this")
    args = p.parse_args()
    cases = [c for c in CASES if args.only in c[0]]
    results = [bench(*c, args.steps, args.n_envs) for c in cases]
    rows = [
        (r["name"], r["env_id"], r["env_steps"], r["updates"], f"{r['env_steps_per_s']:.0f}",
         f"{r['updates_per_s']:.0f}", f"{r['env_fraction']:.0%}", f"{r['agent_fraction']:.0%}")
        for r in results
    ]  # fmt: skip
    print(f"machine: {platform.machine()}, {platform.processor() or '?'}, python "
          f"{platform.python_version()}")  # fmt: skip
    print(table(rows, ("agent", "env", "env steps", "updates", "env steps/s", "updates/s",
                       "time in env", "time in agent")))  # fmt: skip
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"machine": platform.platform(), "results": results}, fh, indent=1)


if __name__ == "__main__":
    main()
