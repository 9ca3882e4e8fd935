"""StemSteer's frame observation (``observation_mode="frame"``, ``sim/stem/frames.py``).

The crop must show what a microscope shows around the Si: the Si brightest at the centre (HAADF
Z contrast, intensity ~ Z^1.7-1.9, Si/C peak ratio ~4.6: ``shared/reference/stem.md``), its
three C neighbours where the flat observation says they are, and the same picture whether the
simulator renders it or an image backend's frame is cropped. Adding it must leave the physics,
the measurement and the reward of ``vector`` mode untouched.
"""

from __future__ import annotations

import numpy as np
import pytest

import twinloop
from twinloop.sim.stem import frames as F
from twinloop.sim.stem import task as T

ENV = "twinloop/StemSteer-v0"
N = 48
CROP = 8.0


def _pixel(dx: float, dy: float) -> tuple[int, int]:
    """(row, col) of a point at (dx, dy) A from the crop's centre (row 0 at the bottom)."""
    px = CROP / N
    return int(round(dy / px + N / 2 - 0.5)), int(round(dx / px + N / 2 - 0.5))


def _patch(frame: np.ndarray, dx: float, dy: float) -> float:
    r, c = _pixel(dx, dy)
    return float(frame[r - 1 : r + 2, c - 1 : c + 2].astype(float).mean())


def _contrast(env, seeds) -> tuple[list[float], list[float], list[float]]:
    """Mean 3x3 level at the Si, at its neighbours, and at the hexagon centres beside it."""
    si, nbr, hollow = [], [], []
    for s in seeds:
        obs, _ = env.reset(seed=s)
        f, v = obs["frame"], obs["vector"]
        n = v[T.O_NBR : T.O_NBR + 6].reshape(3, 2)
        si.append(_patch(f, 0.0, 0.0))
        nbr.extend(_patch(f, *n[k]) for k in range(3))
        # a hexagon's centre lies one bond from the Si, opposite each neighbour's bond
        hollow.extend(_patch(f, *(-n[k])) for k in range(3))
    return si, nbr, hollow


def test_frame_mode_leaves_physics_measurement_and_reward_unchanged():
    """Same seed and actions: ``vector`` of frame mode == the flat observation, same rewards."""
    a = twinloop.make(ENV)
    b = twinloop.make(ENV, observation_mode="frame")
    oa, _ = a.reset(seed=11)
    ob, _ = b.reset(seed=11)
    assert b.observation_space.contains(ob)
    assert ob["frame"].shape == (N, N) and ob["frame"].dtype == np.uint8
    rng = np.random.default_rng(0)
    for _ in range(30):
        np.testing.assert_array_equal(oa, ob["vector"])
        np.testing.assert_array_equal(ob["goal_offset_angstrom"], oa[T.O_GOAL : T.O_GOAL + 2])
        act = rng.uniform(-1.5, 1.5, 2).astype(np.float32)
        oa, ra, ta, tra, _ = a.step(act)
        ob, rb, tb, trb, _ = b.step(act)
        assert (ra, ta, tra) == (rb, tb, trb)
        if ta or tra:
            oa, _ = a.reset(seed=12)
            ob, _ = b.reset(seed=12)


def test_sim_crop_shows_the_si_at_the_centre_and_its_neighbours_where_measured():
    """Z contrast: Si ~4.6x a C column; C atoms at the flat observation's neighbour offsets.

    The neighbours' offsets come from the flat observation, so this also fixes the crop's axes
    (x to the right, row 0 at the bottom) to the observation's.
    """
    env = twinloop.make(ENV, observation_mode="frame")
    si, nbr, hollow = _contrast(env, range(8))
    ratio = np.mean(si) / np.mean(nbr)
    assert 2.5 < ratio < 6.0, ratio
    assert np.mean(nbr) > 2.0 * np.mean(hollow), (np.mean(nbr), np.mean(hollow))
    # every episode: the Si sits at the crop's centre, near its expected peak level
    assert min(si) > 0.5 * F.SI_LEVEL, si


def test_image_backend_crop_matches_the_rendered_one():
    """A crop of ``sim-image``'s frame shows the same picture as the simulator's render."""
    sim = twinloop.make(ENV, observation_mode="frame")
    img = twinloop.make(ENV, backend="sim-image", observation_mode="frame")
    try:
        _, s_nbr, _ = _contrast(sim, range(4))
        i_si, i_nbr, i_hollow = _contrast(img, range(4))
        obs, _ = img.reset(seed=0)
        mean_img = obs["frame"].mean()
        obs, _ = sim.reset(seed=0)
        mean_sim = obs["frame"].mean()
    finally:
        img.close()
    assert abs(mean_img / mean_sim - 1.0) < 0.15, (mean_img, mean_sim)
    assert abs(np.mean(i_nbr) / np.mean(s_nbr) - 1.0) < 0.25
    assert np.mean(i_si) / np.mean(i_nbr) > 2.5
    assert np.mean(i_nbr) > 2.0 * np.mean(i_hollow)


def test_frames_are_reproducible_and_their_noise_is_their_own():
    """Same seed, same bytes; the crop's shot noise differs between steps of a still sample."""
    a = twinloop.make(ENV, observation_mode="frame")
    b = twinloop.make(ENV, observation_mode="frame")
    fa = a.reset(seed=4)[0]["frame"]
    fb = b.reset(seed=4)[0]["frame"]
    np.testing.assert_array_equal(fa, fb)
    assert not np.array_equal(fa, a.reset(seed=5)[0]["frame"])


def test_frame_vector_env_equals_single_envs():
    """``make_vec`` in frame mode == n single envs with seeds s + i, through autoresets."""
    n, seed = 3, 20
    kw = {"observation_mode": "frame", "max_steps": 4}
    vec = twinloop.make_vec(ENV, n, **kw)
    singles = [twinloop.make(ENV, **kw) for _ in range(n)]
    assert vec.metadata["autoreset_mode"].name == "SAME_STEP"
    obs, _ = vec.reset(seed=seed)
    sobs = [e.reset(seed=seed + i)[0] for i, e in enumerate(singles)]
    rng = np.random.default_rng(1)
    for _ in range(9):
        for i in range(n):
            np.testing.assert_array_equal(obs["frame"][i], sobs[i]["frame"])
            np.testing.assert_array_equal(obs["vector"][i], sobs[i]["vector"])
        acts = rng.uniform(-1.5, 1.5, (n, 2)).astype(np.float32)
        obs, rew, term, trunc, info = vec.step(acts)
        for i, e in enumerate(singles):
            o, r, t, tr, _ = e.step(acts[i])
            assert r == pytest.approx(rew[i]) and (t, tr) == (term[i], trunc[i])
            if t or tr:
                np.testing.assert_array_equal(info["final_obs"][i]["frame"], o["frame"])
                o, _ = e.reset()
            sobs[i] = o
    vec.close()


def test_crop_image_geometry_and_dose():
    """A uniform frame keeps its dose per area; a bright spot lands where it lies in the view."""
    fov, w = 20.0, 256
    uniform = np.full((w, w), 3.0)
    crop = F.crop_image(uniform, fov, 0.0, 0.0, CROP, N)
    ratio = (CROP / N) / (fov / w)
    np.testing.assert_allclose(crop, 3.0 * ratio**2, rtol=1e-9)
    spot = np.zeros((w, w))
    x, y = 2.3, -1.7  # A in the view
    col = int((x + fov / 2) / (fov / w))
    row = int((y + fov / 2) / (fov / w))
    spot[row, col] = 1.0
    crop = F.crop_image(spot, fov, x, y, CROP, N)
    r, c = np.unravel_index(np.argmax(crop), crop.shape)
    assert abs(r - (N / 2 - 0.5)) <= 1 and abs(c - (N / 2 - 0.5)) <= 1
    edge = F.crop_image(uniform, fov, 9.5, 0.0, CROP, N)  # half outside: zeros there
    assert edge[:, -1].max() < 1e-6 < edge[:, 0].min()


def test_crop_wider_than_the_view_is_refused():
    """The crop must fit the field of view; the message names both values."""
    with pytest.raises(ValueError, match=r"frame_crop_angstrom = 30.0 exceeds the field of view"):
        twinloop.make(ENV, observation_mode="frame", frame_crop_angstrom=30.0)


def test_sim_crop_draws_the_backends_own_probe():
    """The crop shows the backend's sample with the backend's physics, not the task's.

    A device profile may widen the probe (``physics.probe_fwhm_angstrom``): the same task on
    a backend with a 1.5x wider probe blurs the lattice, so the hexagon centres fill in and the
    contrast of the C neighbours over them drops.
    """
    from twinloop.core.registry import make_config
    from twinloop.sim.stem.env import StemSimBackend, make_env

    cfg = make_config(ENV, observation_mode="frame")
    wide = make_config(
        ENV, observation_mode="frame", probe_fwhm_angstrom=1.5 * cfg.physics.probe_fwhm_angstrom
    )
    contrast = []
    for device in (cfg, wide):
        _, nbr, hollow = _contrast(make_env(cfg, backend=StemSimBackend(device)), range(6))
        contrast.append(np.mean(nbr) / np.mean(hollow))
    assert contrast[1] < 0.8 * contrast[0], contrast
