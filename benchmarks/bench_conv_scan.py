"""Why PPO unrolls its epochs and minibatches with image inputs: XLA:CPU convolutions in a scan.

One PPO update of the defaults is 4 epochs x 4 minibatches of gradient steps. Written as
``jax.lax.scan`` (one compiled loop), each step's convolution gradients run inside an XLA while
loop; unrolled, they are top-level ops. This script times the same 16 gradient steps of the
Nature CNN (8x8/4, 4x4/2, 3x3/1; 32/64/64 channels) on minibatches of uint8 frames three ways
(a scan, the scan unrolled, and a Python loop over one jitted step) and prints a table with the
ratio to the unrolled scan::

    JAX_PLATFORMS=cpu .venv/bin/python benchmarks/bench_conv_scan.py [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from typing import Any

import numpy as np


def _time(fn: Any, *args: Any, repeats: int) -> float:
    import jax

    jax.block_until_ready(fn(*args))  # compile
    t = time.perf_counter()
    for _ in range(repeats):
        jax.block_until_ready(fn(*args))
    return (time.perf_counter() - t) / repeats


def bench(pixels: int, batch: int, steps: int, repeats: int) -> list[dict]:
    import jax
    import jax.numpy as jnp

    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    shapes = [(8, 1, 32), (4, 32, 64), (3, 64, 64)]
    params = [
        {"w": jax.random.normal(k, (s, s, i, o)) * 0.05, "b": jnp.zeros(o)}
        for k, (s, i, o) in zip(keys, shapes, strict=True)
    ]
    strides = (4, 2, 1)

    def loss(p: Any, x: Any) -> Any:
        x = x.astype(jnp.float32) / 255.0
        for layer, s in zip(p, strides, strict=True):
            y = jax.lax.conv_general_dilated(
                x, layer["w"], (s, s), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
            )
            x = jax.nn.relu(y + layer["b"])
        return (x**2).mean()

    def step(p: Any, x: Any) -> tuple[Any, float]:
        g = jax.grad(loss)(p, x)
        return jax.tree_util.tree_map(lambda a, b: a - 1e-3 * b, p, g), 0.0

    scan = jax.jit(lambda p, xs: jax.lax.scan(step, p, xs)[0])
    unrolled = jax.jit(lambda p, xs: jax.lax.scan(step, p, xs, unroll=True)[0])
    one = jax.jit(lambda p, x: step(p, x)[0])

    def loop(p: Any, xs: Any) -> Any:
        for k in range(xs.shape[0]):
            p = one(p, xs[k])
        return p

    rng = np.random.default_rng(0)
    xs = jnp.asarray(rng.integers(0, 256, (steps, batch, pixels, pixels, 1)), jnp.uint8)
    times = {
        "scan": _time(scan, params, xs, repeats=repeats),
        "scan, unrolled": _time(unrolled, params, xs, repeats=repeats),
        "python loop of one jitted step": _time(loop, params, xs, repeats=repeats),
    }
    base = times["scan, unrolled"]
    return [
        {"way": k, "pixels": pixels, "batch": batch, "steps": steps, "seconds": v,
         "ratio_to_unrolled": v / base}
        for k, v in times.items()
    ]  # fmt: skip


def main() -> None:
    """Print the table (and write JSON with ``--json``)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pixels", type=int, default=48, help="frame side (default: 48)")
    p.add_argument("--batch", type=int, default=256, help="minibatch size (default: 256)")
    p.add_argument("--steps", type=int, default=16, help="gradient steps (default: 16)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats (default: 3)")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args()
    import jax

    rows = bench(args.pixels, args.batch, args.steps, args.repeats)
    print(f"machine: {platform.machine()}, jax {jax.__version__}, {jax.devices()[0].platform}")
    print(f"{'way':32s} {'s per update':>13s} {'x unrolled':>11s}")
    for r in rows:
        print(f"{r['way']:32s} {r['seconds']:13.3f} {r['ratio_to_unrolled']:11.1f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"jax": jax.__version__, "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
