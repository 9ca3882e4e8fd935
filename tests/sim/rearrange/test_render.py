"""The rendered egocentric view (observation_mode="rgb"): shapes, determinism, what it shows."""

from __future__ import annotations

import numpy as np
import pytest

import twinloop
from twinloop.controllers import make_controller
from twinloop.sim.rearrange import catalog as C
from twinloop.sim.rearrange import episodes as E
from twinloop.sim.rearrange import render as R
from twinloop.sim.rearrange import task as T

ENV_ID = "twinloop/LangRearrange-v0"
FRIDGE = C.RECEPTACLES.index("fridge")
O_ART = T.O_WORLD + 2
O_CAT = O_ART + C.N_ARTICULATED
O_REC = O_CAT + E.MAX_OBJECTS


def _rgb(res: int = 64, **kw):
    return twinloop.make(ENV_ID, observation_mode="rgb", resolution=res, **kw)


@pytest.mark.parametrize("res", [64, 100, 224])
def test_observation_shape_and_dtype(res: int) -> None:
    env = _rgb(res)
    obs, _ = env.reset(seed=0)
    assert obs["image"].shape == (res, res, 3) and obs["image"].dtype == np.uint8
    assert obs["instruction"].dtype == np.int64 and obs["instruction"].shape == (30,)
    assert obs in env.observation_space
    assert obs["image"].std() > 10  # a picture, not a flat fill
    np.testing.assert_array_equal(obs["instruction"], obs["symbolic"][: T.O_HOLDING])


def test_symbolic_mode_is_unchanged() -> None:
    env = twinloop.make(ENV_ID)
    assert env.observation_space.shape == (T.N_OBS,) and env.metadata["resolution"] is None
    obs, _ = env.reset(seed=0)
    assert isinstance(obs, np.ndarray) and obs.dtype == np.float32


def test_frames_are_deterministic_per_seed() -> None:
    a, b, c = _rgb(), _rgb(), _rgb()
    fa, fb, fc = (e.reset(seed=s)[0]["image"] for e, s in ((a, 3), (b, 3), (c, 4)))
    np.testing.assert_array_equal(fa, fb)
    assert not np.array_equal(fa, fc)
    for action in (C.A_NAV + 5, C.A_NAV + 8, C.A_OPEN, C.A_NAV + 14):
        np.testing.assert_array_equal(a.step(action)[0]["image"], b.step(action)[0]["image"])


def _changed(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.any(x != y, axis=-1).mean())


def test_frame_changes_when_the_robot_navigates_picks_and_opens() -> None:
    env = _rgb(96)
    spec = E.episode_spec("train", 0)
    obs, _ = env.reset(seed=0, options={"backend": {"split": "train", "episode": 0}})
    src = spec.slots["src"]
    before = obs["image"]
    at_src = env.step(C.A_NAV + src)[0]["image"]
    assert _changed(before, at_src) > 0.3
    if src >= C.N_OPEN_RECEPTACLES and not spec.articulated_open[src - C.N_OPEN_RECEPTACLES]:
        at_src = env.step(C.A_OPEN + src - C.N_OPEN_RECEPTACLES)[0]["image"]
    picked = env.step(C.A_PICK + spec.slots["obj"])
    assert picked[4]["invalid_action"] is False
    assert 0.002 < _changed(at_src, picked[0]["image"]) < 0.3  # the object moves to the hand
    # the fridge: a shut door, then the open shell
    env.step(C.A_NAV + FRIDGE)
    if spec.articulated_open[0]:
        env.step(C.A_CLOSE)
    shut = env.step(C.A_NOOP)[0]["image"]
    opened = env.step(C.A_OPEN)[0]["image"]
    assert _changed(shut, opened) > 0.05


def _start_obs(split: str = "train", episode: int = 2) -> np.ndarray:
    env = twinloop.make(ENV_ID)
    obs, _ = env.reset(seed=0, options={"backend": {"split": split, "episode": episode}})
    return obs


def test_held_object_is_in_view_at_the_lower_right() -> None:
    obs = _start_obs()
    obs[T.O_WORLD] = C.RECEPTACLES.index("sofa")
    empty = R.render(obs, 128)
    frames = {}
    for cat in ("apple", "banana", "book"):
        held = obs.copy()
        held[T.O_WORLD + 1] = C.CATEGORIES.index(cat)
        frames[cat] = R.render(held, 128)
        diff = np.any(frames[cat] != empty, axis=-1)
        ys, xs = np.nonzero(diff)
        assert diff.sum() > 40, cat
        assert ys.min() >= 64 and xs.min() >= 64, cat  # only the lower-right quadrant
    assert not np.array_equal(frames["apple"], frames["banana"])
    look = R.CATEGORY_LOOK["apple"][4]
    red = frames["apple"][..., 0].astype(int) - frames["apple"][..., 1]
    assert look[0] > look[1] and (red[64:, 64:] > 120).sum() > 20


def test_objects_in_a_closed_fridge_are_hidden() -> None:
    obs = _start_obs()
    obs[T.O_WORLD] = FRIDGE
    bare = obs.copy()
    bare[O_CAT:O_REC][bare[O_REC : O_REC + E.MAX_OBJECTS] == FRIDGE] = -1
    stocked = obs.copy()
    free = np.flatnonzero(stocked[O_CAT:O_REC] < 0)[:3]
    stocked[O_CAT + free] = C.CATEGORIES.index("apple")
    stocked[O_REC + free] = FRIDGE
    for state, visible in ((0.0, False), (1.0, True)):
        bare[O_ART] = stocked[O_ART] = state
        assert (not np.array_equal(R.render(bare, 96), R.render(stocked, 96))) == visible


def test_vector_frames_equal_single_env_frames() -> None:
    n = 3
    vec = twinloop.make_vec(ENV_ID, n, observation_mode="rgb", resolution=64)
    singles = [_rgb() for _ in range(n)]
    obs, _ = vec.reset(seed=7)
    for i, env in enumerate(singles):
        np.testing.assert_array_equal(env.reset(seed=7 + i)[0]["image"], obs["image"][i])
    ctrl = make_controller("oracle", vec)
    ctrl.reset(n, np.arange(n))
    rng = np.random.default_rng(0)
    ended_seen = 0
    for t in range(40):
        acts = ctrl.act(obs) if t % 3 else rng.integers(0, C.N_ACTIONS, n)
        obs, _, _, _, info = vec.step(acts)
        for i, env in enumerate(singles):
            one, _, t1, tr1, _ = env.step(int(acts[i]))
            if t1 or tr1:
                ended_seen += 1
                np.testing.assert_array_equal(info["final_obs"][i]["image"], one["image"])
                one, _ = env.reset()
            np.testing.assert_array_equal(one["image"], obs["image"][i])
            np.testing.assert_array_equal(one["symbolic"], obs["symbolic"][i])
    assert ended_seen > 0


def test_oracle_solves_in_rgb_mode() -> None:
    env = _rgb()
    oracle = make_controller("oracle", env)
    for k in range(3):
        obs, _ = env.reset(seed=0, options={"backend": {"split": "conditional", "episode": k}})
        for _ in range(32):
            obs, _, term, trunc, info = env.step(int(oracle.act_one(obs)))
            if term or trunc:
                break
        assert term and info["is_success"]


def test_resolution_bounds_are_validated() -> None:
    for bad in (32, 63, 225, 512):
        with pytest.raises(ValueError, match=rf"resolution = {bad} is outside \[64, 224\]"):
            _rgb(bad)
    with pytest.raises(ValueError, match="must be an integer"):
        _rgb(64.5)
    with pytest.raises(ValueError, match=r"resolution = 300 px must be an int in \[64, 224\]"):
        R.render(_start_obs(), 300)
    cfg = twinloop.make(ENV_ID).unwrapped.config
    assert type(cfg.task).__dataclass_fields__["resolution"].default == R.MAX_RESOLUTION


def test_furniture_stands_apart_inside_its_room() -> None:
    layout = R.furniture_layout()
    edges = E.room_edges()
    half = np.array([w for _, w, _ in R.FURNITURE])
    for s in range(E.N_SCENES):
        spans = []
        for k in range(R.N_ITEMS):
            x, wall, _, scale, room = layout[s, k]
            lo, hi = x - half[k] * scale, x + half[k] * scale
            assert edges[s, int(room)] < lo and hi < edges[s, int(room) + 1], (s, k)
            spans.append((wall, lo, hi))
        for a in range(R.N_ITEMS):
            for b in range(a):
                wa, la, ha = spans[a]
                wb, lb, hb = spans[b]
                assert wa != wb or ha <= lb or hb <= la, (s, a, b)


def test_every_receptacle_is_seen_from_its_navigation_target() -> None:
    obs = _start_obs("new_scenes", 4)
    for r in range(C.N_RECEPTACLES):
        obs[T.O_WORLD] = r
        at = R.render(obs, 64)
        for k, (parts, *_) in enumerate(R.FURNITURE):  # the item's colours fill the centre
            if k == r:
                colours = {tuple(np.round(np.array(p[6]) * 255)) for p in parts}
        centre = at[24:40, 24:40].reshape(-1, 3).astype(float)
        close = [
            np.abs(centre / np.maximum(centre.max(1, keepdims=True), 1) - np.array(c) / max(c))
            .max(1)
            .min()
            for c in colours
        ]
        assert min(close) < 0.08, (r, C.RECEPTACLES[r])
