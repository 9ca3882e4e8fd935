"""Success per evaluation split of the Language Rearrangement benchmark, in LLaRP's layout.

Rows: LLaRP's 10 evaluation splits (Szot et al., ICLR 2024, arXiv 2310.17722), ``overall``
(their 1,000 episodes together) and our ``compositional`` split; columns: success (%) of each
controller with a 95 % percentile-bootstrap interval over the split's 100 episodes
(``twinloop.eval.bootstrap``). Each episode k of a split runs once, from the same reset.

    python benchmarks/rearrange_splits.py                      # oracle, scripted, random
    python benchmarks/rearrange_splits.py --controllers scripted --episodes 50
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import twinloop
from twinloop.controllers import make_controller
from twinloop.eval.bootstrap import bootstrap_ci
from twinloop.sim.rearrange import episodes as E

ENV_ID = "twinloop/LangRearrange-v0"


def split_success(split: str, controller: str, n: int) -> np.ndarray:
    """Success (0/1) of episodes 0..n-1 of ``split``, one per row of a vector env."""
    vec = twinloop.make_vec(ENV_ID, n)
    ctrl = make_controller(controller, vec)
    ctrl.reset(n, np.arange(n))
    obs, _ = vec.reset(seed=0, options={"backend": {"split": split, "episode": np.arange(n)}})
    done = np.zeros(n, bool)
    success = np.zeros(n, bool)
    while not done.all():
        obs, _, term, trunc, info = vec.step(ctrl.act(obs))
        ended = (term | trunc) & ~done
        if ended.any():
            success[ended] = info["final_info"]["is_success"][ended]
        done |= ended
    vec.close()
    return success.astype(np.float64)


def cell(values: np.ndarray) -> str:
    """``mean [low, high]`` in percent."""
    low, high = bootstrap_ci(values, n_resamples=2000)
    return f"{100 * values.mean():5.1f} [{100 * low:5.1f}, {100 * high:5.1f}]"


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--controllers", nargs="+", default=["oracle", "scripted", "random"])
    parser.add_argument("--episodes", type=int, default=E.N_EVAL_EPISODES)
    args = parser.parse_args()
    start = time.perf_counter()
    rows = [*E.BENCHMARK_SPLITS, "overall", "compositional"]
    results: dict[str, dict[str, np.ndarray]] = {c: {} for c in args.controllers}
    for c in args.controllers:
        for split in (*E.BENCHMARK_SPLITS, "compositional"):
            results[c][split] = split_success(split, c, args.episodes)
        results[c]["overall"] = np.concatenate([results[c][s] for s in E.BENCHMARK_SPLITS])
    width = 26
    heads = " | ".join(f"{c} (%, 95 % CI)" for c in args.controllers)
    print(f"| {'split':<{width}} | {heads} |")
    print(f"|{'-' * (width + 2)}|" + "|".join("-" * 22 for _ in args.controllers) + "|")
    for split in rows:
        cells = " | ".join(cell(results[c][split]) for c in args.controllers)
        print(f"| {split:<{width}} | {cells} |")
    print(f"\n{args.episodes} episodes per split; {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
