"""The STEM task with a frame: a HAADF crop around the Si (``observation_mode="frame"``).

The flat observation (:mod:`~twinloop.sim.stem.task`) hands a controller the Si's neighbours as
numbers that an image pipeline extracted. In ``frame`` mode the observation is a Dict that adds
what the pipeline looked at, so a learned agent can read the lattice from pixels:

========================  =====================  ===============================================
key                       space                  what
========================  =====================  ===============================================
``frame``                 ``(P, P)`` uint8       HAADF counts of a square of ``W`` A centred on
                                                 the measured Si (``frame_crop_pixels`` P,
                                                 ``frame_crop_angstrom`` W); row 0 at the
                                                 bottom, as the microscope's frames
``goal_offset_angstrom``  ``(2,)`` float32       the goal relative to the measured Si (A)
``vector``                the flat observation   every field of the ``vector`` mode
========================  =====================  ===============================================

A visual agent reads ``frame`` and ``goal_offset_angstrom`` (``obs_keys``); ``vector`` keeps
classical controllers and captures whole. Rewards, termination and infos are the flat task's.

Where the crop comes from:

- **an image backend** (``sim-image``, ``remote``, ``nion``): the backend's last frame (the one
  its measurement came from), resampled around the detected Si: each crop pixel averages a
  ``k x k`` grid of bilinear samples (``k`` = crop pixel / frame pixel, rounded up) and is
  scaled by the area ratio, so its counts are those of a detector pixel of the crop's size;
- **the simulator** (``sim``): the renderer (:func:`twinloop.sim.stem.render.render`) draws the
  same square of the true sample at the crop's pixel size with the dose per area of the
  configured frames (pixel time times the area ratio), line jitter, drift shear and shot noise;
  no flyback distortion (the crop sits inside the frame's lines). Its shot noise comes from a
  stream of its own (seeded from the episode's seed, spawn key :data:`FRAME_STREAM`), so the
  physics, the measurement and every other observation field are those of ``vector`` mode.

Counts become bytes on a fixed scale, :data:`SI_LEVEL` at the Si's expected peak
(:func:`counts_per_level`); C columns come out near ``SI_LEVEL / 4.6`` (the Z contrast).

The vector env in this mode (:func:`twinloop.sim.stem.env.make_vec_env`) is a
:class:`gymnasium.vector.SyncVectorEnv` of single envs with ``SAME_STEP`` autoreset (a rendered
crop needs the sample of each ended episode before it is reset, which the kernel's in-loop
autoreset does not keep); env ``i`` of ``reset(seed=s)`` gets ``s + i``, as everywhere, so it
equals ``n`` single envs.
"""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np

from twinloop.core.jit import njit
from twinloop.core.rng import STREAM_SENSOR, new_entropy, new_streams, stream_state
from twinloop.core.task import TaskStep
from twinloop.sim.stem import kernel as K
from twinloop.sim.stem import render as R
from twinloop.sim.stem import task as T
from twinloop.sim.stem.config import StemConfig

#: Spawn key of the crop's shot-noise stream (beyond the env's own streams 0-2).
FRAME_STREAM = 7
#: Byte value of the Si's expected peak count.
SI_LEVEL = 200.0


def frame_space(cfg: StemConfig) -> gym.spaces.Dict:
    """One env's observation in ``frame`` mode (see the module docstring)."""
    layout = T.observation_layout(cfg)
    p = cfg.task.frame_crop_pixels
    bound = T.goal_bound_angstrom(cfg)
    return gym.spaces.Dict(
        {
            "frame": gym.spaces.Box(0, 255, (p, p), dtype=np.uint8),
            "goal_offset_angstrom": gym.spaces.Box(-bound, bound, (2,), dtype=np.float32),
            "vector": layout.space(np.float32),
        }
    )


def crop_pixel_ratio(cfg: StemConfig) -> float:
    """Side of a crop pixel over that of a pixel of the configured frames."""
    frame_px = cfg.microscope.fov_angstrom / cfg.imaging.frame_pixels
    crop_px = cfg.task.frame_crop_angstrom / cfg.task.frame_crop_pixels
    return crop_px / frame_px


def crop_pixel_time_s(cfg: StemConfig) -> float:
    """Pixel time of a crop pixel with the dose per area of the configured frames."""
    return cfg.pixel_time_s * crop_pixel_ratio(cfg) ** 2


def counts_per_level(cfg: StemConfig) -> float:
    """Detected electrons per byte level of a crop pixel (the Si's peak maps to SI_LEVEL)."""
    ip = R.imaging_params(cfg)
    peak = ip[R.IP_E_PER_S] * crop_pixel_time_s(cfg) * (ip[R.IP_SI_YIELD] + ip[R.IP_BG_YIELD])
    return max(peak, 1e-12) / SI_LEVEL


def to_bytes(counts: np.ndarray, per_level: float) -> np.ndarray:
    """Counts to uint8 on the fixed scale (clipped at 255)."""
    return np.clip(np.rint(counts / per_level), 0, 255).astype(np.uint8)


def views(obs: np.ndarray, frame: np.ndarray) -> dict[str, np.ndarray]:
    """The Dict observation of a flat observation and its crop."""
    goal = obs[T.O_GOAL : T.O_GOAL + 2].astype(np.float32)
    return {"frame": frame, "goal_offset_angstrom": goal, "vector": obs}


@njit
def render_crop(
    centre_x: float,
    centre_y: float,
    width: float,
    n: int,
    pixel_time_s: float,
    line_s: float,
    f_row: np.ndarray,
    i_rows: np.ndarray,
    hole_rows: np.ndarray,
    params: np.ndarray,
    ip: np.ndarray,
    rng: np.ndarray,
    out: np.ndarray,
) -> None:
    """Render the ``width``-A square of one env's sample centred on ``(centre_x, centre_y)``.

    ``f_row`` is a scratch copy of the env's float state row whose view centre is moved to the
    crop's centre; ``i_rows``, ``hole_rows`` and ``rng`` are the env's rows as ``(1, ...)``
    slices. Rows follow each other every ``line_s`` seconds.
    """
    fs = f_row.reshape((1, f_row.shape[0]))
    fs[0, K.F_FOV_X] = centre_x
    fs[0, K.F_FOV_Y] = centre_y
    p = params.copy()
    p[K.P_FOV] = width
    flyback = max(line_s - n * pixel_time_s, 0.0)
    R.render(0, n, pixel_time_s, flyback, fs, i_rows, hole_rows, p, ip, rng, out)


class SimCropper:
    """Renders crops of a :class:`~twinloop.sim.stem.env.StemSimBackend`'s sample.

    The crop's geometry and byte scale are the task's (``cfg``); the sample is drawn with the
    backend's own physics and imaging (its ``cfg``, which a device profile may have changed).

    Args:
        cfg: The system config of the task.
        backend: The simulated backend (its ``state`` and ``cfg`` are read).
    """

    def __init__(self, cfg: StemConfig, backend: Any) -> None:
        """Precompute the renderer's parameters; the noise stream is seeded per episode."""
        self.cfg = cfg
        self.backend = backend
        device = getattr(backend, "cfg", cfg)
        ip = R.imaging_params(device)
        ip[R.IP_FLYBACK_A] = 0.0  # the crop lies inside the frame's lines
        self.ip = ip
        self.params = K.physics_params(device)
        self.n = cfg.task.frame_crop_pixels
        self.width = cfg.task.frame_crop_angstrom
        self.pixel_time_s = crop_pixel_time_s(cfg)
        # a crop row spans this many frame lines
        frame_line_s = cfg.microscope.frame_time_s / cfg.imaging.frame_pixels
        self.line_s = frame_line_s * crop_pixel_ratio(cfg)
        self.per_level = counts_per_level(cfg)
        self.rng = new_streams(1)
        self.seed(new_entropy())
        self._counts = np.empty((self.n, self.n), dtype=np.float32)

    def seed(self, seed: int) -> None:
        """Seed the shot noise of the crops from an episode's seed."""
        self.rng[0, STREAM_SENSOR] = stream_state(int(seed), FRAME_STREAM)

    def __call__(self, measurement: np.ndarray) -> np.ndarray:
        """The crop around the measured Si of the backend's current sample."""
        st = self.backend.state
        f_row = st.f[0].copy()
        # the measured Si in the sample frame: the true view centre plus its view position
        cx = f_row[K.F_FOV_X] + measurement[K.M_SI]
        cy = f_row[K.F_FOV_Y] + measurement[K.M_SI + 1]
        render_crop(
            cx,
            cy,
            self.width,
            self.n,
            self.pixel_time_s,
            self.line_s,
            f_row,
            st.i[0:1],
            st.holes[0:1],
            self.params,
            self.ip,
            self.rng,
            self._counts,
        )
        return to_bytes(self._counts, self.per_level)


class FrameCropper:
    """Crops an image backend's last frame around the detected Si.

    Args:
        cfg: The system config.
        backend: A backend with ``last_frame`` (``image`` ``(h, w)`` float32 counts, row 0 at
            the bottom; ``metadata["fov_angstrom"]``), as the microscope backends have.
    """

    def __init__(self, cfg: StemConfig, backend: Any) -> None:
        """Keep the crop's geometry and byte scale."""
        self.cfg = cfg
        self.backend = backend
        self.n = cfg.task.frame_crop_pixels
        self.width = cfg.task.frame_crop_angstrom
        self.per_level = counts_per_level(cfg)

    def seed(self, seed: int) -> None:
        """Nothing to seed: the frame carries its own noise."""

    def __call__(self, measurement: np.ndarray) -> np.ndarray:
        """The crop of the last frame around the measured Si (zeros outside the frame)."""
        frame = self.backend.last_frame
        if frame is None:
            raise RuntimeError(
                "observation_mode='frame': the backend has not acquired a frame yet "
                "(reset the env first)"
            )
        image = np.asarray(frame.image, dtype=np.float64)
        fov = float(frame.metadata.get("fov_angstrom", self.cfg.microscope.fov_angstrom))
        cx, cy = measurement[K.M_SI], measurement[K.M_SI + 1]
        return to_bytes(crop_image(image, fov, cx, cy, self.width, self.n), self.per_level)


def crop_image(
    image: np.ndarray, fov_angstrom: float, cx: float, cy: float, width: float, n: int
) -> np.ndarray:
    """Counts of an ``n x n`` crop of ``width`` A centred on ``(cx, cy)`` (view frame, A).

    Each crop pixel is the mean of a ``k x k`` grid of bilinear samples of ``image`` times the
    area ratio of a crop pixel to a frame pixel; samples outside the frame count 0.
    """
    h, w = image.shape
    frame_px = fov_angstrom / w
    crop_px = width / n
    k = max(1, math.ceil(crop_px / frame_px))
    sub = (np.arange(n * k) + 0.5) / k  # sample positions in crop pixels
    coords = (sub - 0.5 * n) * crop_px  # relative to the crop's centre (A)
    # frame pixel coordinates (pixel centres at integer + 0.5): x = -fov/2 at column 0's edge
    col = (cx + coords + 0.5 * fov_angstrom) / frame_px - 0.5
    row = (cy + coords + 0.5 * fov_angstrom * h / w) / frame_px - 0.5
    padded = np.zeros((h + 2, w + 2))
    padded[1:-1, 1:-1] = image
    c = np.clip(col + 1.0, 0.0, w + 1.0 - 1e-9)
    r = np.clip(row + 1.0, 0.0, h + 1.0 - 1e-9)
    c0, r0 = np.floor(c).astype(int), np.floor(r).astype(int)
    wc, wr = c - c0, r - r0
    c1, r1 = np.minimum(c0 + 1, w + 1), np.minimum(r0 + 1, h + 1)
    top = padded[np.ix_(r0, c0)] * (1 - wc) + padded[np.ix_(r0, c1)] * wc
    bottom = padded[np.ix_(r1, c0)] * (1 - wc) + padded[np.ix_(r1, c1)] * wc
    samples = top * (1 - wr)[:, None] + bottom * wr[:, None]
    mean = samples.reshape(n, k, n, k).mean(axis=(1, 3))
    return mean * (crop_px / frame_px) ** 2


class FrameViewTask:
    """The STEM task with the frame crop: the flat task, then a crop of the sample.

    Args:
        task: The flat task.
        source: Returns the crop (``(P, P)`` uint8) for a measurement; has ``seed(seed)``.
    """

    def __init__(self, task: T.StemTask, source: Any) -> None:
        """Wrap ``task``; crops from ``source``."""
        self.task = task
        self.source = source
        self.cfg = task.cfg
        self.layout = task.layout
        self.action_space = task.action_space
        self.action_labels = task.action_labels
        self.reward_scales = task.reward_scales
        self.observation_space = frame_space(task.cfg)

    @property
    def goal_angstrom(self) -> np.ndarray:
        """The current goal site in the sample frame (A)."""
        return self.task.goal_angstrom

    def reset(
        self, measurement: np.ndarray, seed: int | None, options: dict[str, Any] | None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """First observation (with its crop); ``seed`` also seeds a simulator's crop noise."""
        obs, info = self.task.reset(measurement, seed, options)
        if seed is not None:
            self.source.seed(int(seed))
        return views(obs, self.source(measurement)), info

    def command(self, action: np.ndarray, measurement: np.ndarray) -> np.ndarray:
        """The flat task's command."""
        return self.task.command(action, measurement)

    def step(self, measurement: np.ndarray, applied_command: np.ndarray) -> TaskStep:
        """The flat task's step, its observation with the new crop."""
        ts = self.task.step(measurement, applied_command)
        ts.observation = views(ts.observation, self.source(measurement))
        return ts


def frame_task(cfg: StemConfig, backend: Any) -> FrameViewTask:
    """The frame task on ``backend``: crops of its frames, or rendered from a simulator.

    Raises:
        ValueError: The backend neither acquires frames nor exposes a simulated sample.
    """
    if hasattr(backend, "last_frame"):
        source: Any = FrameCropper(cfg, backend)
    elif getattr(backend, "kind", None) == "sim" and hasattr(backend, "state"):
        source = SimCropper(cfg, backend)
    else:
        raise ValueError(
            f"observation_mode='frame' needs a backend that acquires frames (sim-image, remote, "
            f"nion) or the simulator (sim); {type(backend).__name__} does neither"
        )
    return FrameViewTask(T.StemTask(cfg), source)
