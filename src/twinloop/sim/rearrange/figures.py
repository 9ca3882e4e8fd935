"""Sample frames of the rendered view, as in the system README (``frames/*.png``).

Regenerate them with ``python -m twinloop.sim.rearrange.figures [OUT_DIR]`` (default: the
``frames`` folder beside this module). Each frame comes from a real episode, stepped through
the env with ``observation_mode="rgb"``: the frames are what a policy sees.
"""

from __future__ import annotations

import struct
import sys
import zlib
from pathlib import Path

import numpy as np

from twinloop.sim.rearrange import catalog as C
from twinloop.sim.rearrange import episodes as E

ENV_ID = "twinloop/LangRearrange-v0"
FRIDGE = C.RECEPTACLES.index("fridge")


def png_bytes(image: np.ndarray) -> bytes:
    """A minimal RGB PNG (8 bits per channel, no filtering) of ``image`` ``(H, W, 3)`` uint8."""
    h, w, _ = image.shape
    raw = b"".join(b"\x00" + image[y].tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )


def sample_frames(resolution: int = 128) -> dict[str, np.ndarray]:
    """Three frames of training episodes: an open fridge, carrying an object, the sofa.

    Returns:
        ``name -> (resolution, resolution, 3)`` uint8 frame.
    """
    import twinloop

    env = twinloop.make(ENV_ID, observation_mode="rgb", resolution=resolution)
    k = next(i for i in range(1000) if E.episode_spec("train", i).slots["src"] == FRIDGE)
    spec = E.episode_spec("train", k)
    env.reset(seed=0, options={"backend": {"split": "train", "episode": k}})
    env.step(C.A_NAV + FRIDGE)
    obs = env.step(C.A_OPEN + 0)[0] if not spec.articulated_open[0] else env.step(C.A_NOOP)[0]
    frames = {"fridge_open": obs["image"]}
    env.step(C.A_PICK + spec.slots["obj"])
    frames["carrying"] = env.step(C.A_NAV + spec.slots["tgt"])[0]["image"]
    sofa = C.RECEPTACLES.index("sofa")
    j = next(
        i
        for i in range(1000)
        if sum(r == "sofa" for _, r in E.episode_spec("train", i).objects) > 2
    )
    env.reset(seed=0, options={"backend": {"split": "train", "episode": j}})
    frames["sofa"] = env.step(C.A_NAV + sofa)[0]["image"]
    return frames


def write_sample_frames(out_dir: str | Path, resolution: int = 128) -> list[Path]:
    """Write :func:`sample_frames` as PNGs into ``out_dir``; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, image in sample_frames(resolution).items():
        path = out / f"{name}.png"
        path.write_bytes(png_bytes(image))
        paths.append(path)
    return paths


if __name__ == "__main__":
    write_sample_frames(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "frames")
