"""Observation encoders: layouts and packing, each encoder in NumPy and JAX, image agents."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="the 'learn' extra (jax, optax) trains agents")
jnp = jax.numpy

import twinloop  # noqa: E402
from twinloop.cli import main  # noqa: E402
from twinloop.controllers.classical.random import RandomController  # noqa: E402
from twinloop.controllers.rl.checkpoint import (  # noqa: E402
    latest_checkpoint,
    read_part,
    save_checkpoint,
)
from twinloop.controllers.rl.controller import AgentController  # noqa: E402
from twinloop.controllers.rl.encoders import (  # noqa: E402
    ObsLayout,
    conv2d,
    image_out_shape,
    max_pool,
    tokens_apply,
    tokens_init,
)
from twinloop.controllers.rl.networks import (  # noqa: E402
    EncoderConfig,
    encoder_apply,
    encoder_init,
    encoder_trunk,
)
from twinloop.controllers.rl.policy import PolicySpec  # noqa: E402
from twinloop.controllers.rl.train import make_agent, train  # noqa: E402
from twinloop.eval.rollout import run_single  # noqa: E402

from .tasks import BrightQuadrant, quadrant_vec  # noqa: E402

VOCAB = 334
#: LangRearrange-v0's rgb observation at 64 px (a shorter symbolic vector).
LANG = gym.spaces.Dict(
    {
        "image": gym.spaces.Box(0, 255, (64, 64, 3), np.uint8),
        "instruction": gym.spaces.Box(0, VOCAB - 1, (30,), np.int64),
        "is_holding": gym.spaces.MultiBinary(1),
        "symbolic": gym.spaces.Box(-1.0, 40.0, (7,), np.float32),
    }
)
IMAGE_BYTES = 64 * 64 * 3
#: A small image encoder for the 12x12 frames of BrightQuadrant.
SMALL_CNN = {"cnn_channels": (8, 16), "cnn_kernels": (3, 3), "cnn_strides": (2, 1)}


def _lang_obs(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A batch of LANG observations; instructions of 5-25 tokens, then pads."""
    ids = rng.integers(1, VOCAB, (n, 30))
    ids[np.arange(30) >= rng.integers(5, 26, (n, 1))] = 0
    return {
        "image": rng.integers(0, 256, (n, 64, 64, 3)).astype(np.uint8),
        "instruction": ids.astype(np.int64),
        "is_holding": rng.integers(0, 2, (n, 1)).astype(np.int8),
        "symbolic": rng.uniform(-1, 40, (n, 7)).astype(np.float32),
    }


# --- layouts and packing ---------------------------------------------------------------------
def test_layout_gives_each_part_its_kind_and_leaves_privileged_keys_out() -> None:
    lay = ObsLayout(LANG)
    assert lay.keys == ("image", "instruction", "is_holding")  # not "symbolic"
    assert [(s.key, s.kind, s.shape, s.vocab) for s in lay.inputs] == [
        ("image", "image", (64, 64, 3), 0),
        ("instruction", "tokens", (30,), VOCAB),
    ]
    assert lay.in_dim == 1 and not lay.flat
    # bytes: the frame, 30 uint16 token ids (334 ids > 256), one byte of is_holding
    assert lay.dtype == np.uint8 and lay.width == IMAGE_BYTES + 60 + 1
    asked = ObsLayout(LANG, ("symbolic", "image"))
    assert asked.keys == ("symbolic", "image") and asked.in_dim == 7
    flat = ObsLayout(gym.spaces.Box(-1, 1, (3, 2), np.float32))
    assert flat.flat and flat.width == 6 and flat.dtype == np.float32 and flat.inputs == ()
    grey = ObsLayout(gym.spaces.Box(0, 255, (10, 12), np.uint8))
    assert not grey.flat and grey.inputs[0].shape == (10, 12, 1) and grey.in_dim == 0


@pytest.mark.parametrize(
    ("space", "keys", "message"),
    [
        (LANG, ("image", "camera"), "obs_keys names 'camera', not a key of the observation"),
        (LANG, ("image", "image"), "obs_keys repeats a key"),
        (gym.spaces.Box(0, 1, (3,)), ("image",), "given for a Box observation"),
        (gym.spaces.Dict({"t": gym.spaces.Text(5)}), (), "is not a Box, MultiBinary or Discrete"),
    ],
)
def test_layout_rejects_keys_and_spaces_it_cannot_encode(space, keys, message) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        ObsLayout(space, keys)


def test_packing_keeps_every_part_exactly_and_images_as_bytes() -> None:
    rng = np.random.default_rng(0)
    obs = _lang_obs(5, rng)
    lay = ObsLayout(LANG, ("image", "instruction", "is_holding", "symbolic"))
    rows = lay.pack(obs)
    assert rows.dtype == np.uint8 and rows.shape == (5, IMAGE_BYTES + 60 + 1 + 28)
    x = lay.net_inputs(rows, lay.vector(rows))
    image, ids = x["parts"]
    assert image.dtype == np.uint8 and np.array_equal(image, obs["image"])
    assert ids.dtype == np.int32 and np.array_equal(ids, obs["instruction"])
    want = np.concatenate([obs["is_holding"].astype(np.float32), obs["symbolic"]], axis=1)
    assert np.array_equal(x["vector"], want)  # float32 bytes round-trip exactly
    # leading axes (replay's SPR sequences) unpack the same
    stacked = lay.net_inputs(rows.reshape(1, 5, -1), lay.vector(rows).reshape(1, 5, -1))
    assert np.array_equal(stacked["parts"][0][0], obs["image"])
    with pytest.raises(ValueError, match=r"'image' of shape \(32, 32, 3\) given to an agent"):
        lay.pack({**obs, "image": obs["image"][:, :32, :32]})


# --- layers ------------------------------------------------------------------------------------
def _direct_conv(x, w, b, stride, pad):
    top, bottom, left, right = pad
    x = np.pad(x.astype(np.float64), ((0, 0), (top, bottom), (left, right), (0, 0)))
    k = w.shape[0]
    ho = (x.shape[1] - k) // stride + 1
    wo = (x.shape[2] - k) // stride + 1
    out = np.zeros((x.shape[0], ho, wo, w.shape[3]))
    for i in range(ho):
        for j in range(wo):
            patch = x[:, i * stride : i * stride + k, j * stride : j * stride + k, :]
            out[:, i, j] = np.einsum("bhwc,hwco->bo", patch, w) + b
    return out


@pytest.mark.parametrize(("stride", "pad"), [(1, (1, 1, 1, 1)), (2, (1, 0, 2, 1)), (3, (0,) * 4)])
def test_conv2d_in_numpy_and_jax_equals_a_direct_sum(stride, pad) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 9, 11, 3)).astype(np.float32)
    p = {"w": rng.normal(size=(3, 3, 3, 4)).astype(np.float32), "b": rng.normal(size=4)}
    p["b"] = p["b"].astype(np.float32)
    want = _direct_conv(x, p["w"], p["b"], stride, pad)
    got_np = conv2d(np, x, p, stride, pad)
    got_jax = np.asarray(conv2d(jnp, jnp.asarray(x), p, stride, pad))
    assert got_np.shape == want.shape
    np.testing.assert_allclose(got_np, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_jax, want, rtol=1e-5, atol=1e-5)


def test_max_pool_takes_the_max_of_each_same_padded_window() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 7, 8, 3)).astype(np.float32)
    # SAME, 3x3, stride 2: 7 -> 4 rows (1 pad row each side), 8 -> 4 columns (1 pad after)
    want = np.full((2, 4, 4, 3), -np.inf, np.float32)
    for i in range(4):
        for j in range(4):
            rows = slice(max(2 * i - 1, 0), min(2 * i + 2, 7))
            cols = slice(max(2 * j, 0), min(2 * j + 3, 8))
            want[:, i, j] = x[:, rows, cols].max(axis=(1, 2))
    assert np.array_equal(max_pool(np, x), want)
    assert np.array_equal(np.asarray(max_pool(jnp, jnp.asarray(x))), want)


def test_text_encoders_skip_pads_and_only_the_gru_reads_word_order() -> None:
    rng = np.random.default_rng(3)
    ids = np.array([[5, 9, 7, 0, 0, 0], [5, 0, 9, 0, 7, 0], [7, 9, 5, 0, 0, 0]], np.int32)
    for encoder in ("gru", "mean"):
        p = tokens_init(rng, 12, encoder, 8, 16)
        out = tokens_apply(np, p, encoder, ids)
        assert out.shape == (3, 16 if encoder == "gru" else 8) and np.isfinite(out).all()
        np.testing.assert_allclose(out[0], out[1], rtol=1e-6)  # pads anywhere are skipped
        reordered = np.abs(out[0] - out[2]).max()
        assert reordered > 1e-3 if encoder == "gru" else reordered < 1e-6
        got_jax = np.asarray(tokens_apply(jnp, p, encoder, jnp.asarray(ids)))
        np.testing.assert_allclose(got_jax, out, rtol=1e-5, atol=1e-5)
    empty = tokens_apply(np, tokens_init(rng, 12, "mean", 4, 4), "mean", np.zeros((1, 6), int))
    assert np.array_equal(empty, np.zeros((1, 4)))


@pytest.mark.parametrize(
    ("image_encoder", "text_encoder", "sem", "feature_map"),
    [("cnn", "gru", 0, (4, 4, 64)), ("impala", "mean", 6, (8, 8, 32))],
)
def test_encoders_agree_in_numpy_and_jax(image_encoder, text_encoder, sem, feature_map) -> None:
    lay = ObsLayout(LANG, ("image", "instruction", "is_holding", "symbolic"))
    cfg = EncoderConfig(
        hidden=(32, 16), inputs=lay.inputs, image_encoder=image_encoder,
        text_encoder=text_encoder, sem_simplices=sem, sem_dim=4, sem_tau=0.5,
    )  # fmt: skip
    assert image_out_shape(cfg.image_net, (64, 64, 3)) == feature_map
    rng = np.random.default_rng(4)
    params = encoder_init(rng, lay.in_dim, cfg)
    rows = lay.pack(_lang_obs(3, rng))
    x = lay.net_inputs(rows, lay.vector(rows) / 40.0)
    trunk_np = encoder_trunk(np, params, cfg, x)
    out_np = encoder_apply(np, params, cfg, x)
    trunk_jax = jax.jit(lambda p, x: encoder_trunk(jnp, p, cfg, x))(params, x)
    out_jax = jax.jit(lambda p, x: encoder_apply(jnp, p, cfg, x))(params, x)
    assert trunk_np.shape == (3, 16) and out_np.shape == (3, cfg.out_dim)
    assert np.isfinite(out_np).all() and trunk_np.std() > 0
    np.testing.assert_allclose(np.asarray(trunk_jax), trunk_np, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(out_jax), out_np, rtol=1e-5, atol=1e-5)
    if sem:  # every simplex a probability vector
        np.testing.assert_allclose(out_np.reshape(3, sem, 4).sum(-1), 1.0, rtol=1e-5)


def test_an_image_too_small_for_the_cnn_is_refused_with_the_layer_named() -> None:
    lay = ObsLayout(gym.spaces.Box(0, 255, (32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match=r"32x32 px is too small.*layer 3 sees 2x2 px"):
        EncoderConfig(inputs=lay.inputs)
    EncoderConfig(inputs=lay.inputs, image_encoder="impala")  # any size suits impala


# --- agents ------------------------------------------------------------------------------------
def _quadrant_env() -> BrightQuadrant:
    return BrightQuadrant()


def test_a_saved_image_agent_acts_in_numpy_as_its_jax_policy(tmp_path) -> None:
    rng = np.random.default_rng(5)
    settings = {"hidden": (16,), "cnn_channels": (4, 8, 8), "text_encoder": "gru",
                "token_dim": 8, "text_hidden": 8, "sem_simplices": 2, "sem_dim": 4,
                "buffer_size": 64, "batch_size": 8}  # fmt: skip
    agent = make_agent("dqn", LANG, gym.spaces.Discrete(71), 2, 100, 0, settings)
    obs = _lang_obs(6, rng)
    agent.update_norm(agent.flat(obs))
    meta, arrays = agent.policy()
    assert meta["observation"]["keys"] == ["image", "instruction", "is_holding"]
    assert PolicySpec.from_json(json.loads(json.dumps(meta["policy"]))) == agent.spec
    save_checkpoint(tmp_path, 6, (meta, arrays), agent.state())
    ctrl = AgentController(LANG, gym.spaces.Discrete(71), {}, path=tmp_path)
    want = np.asarray(agent._greedy(agent.policy_params(), agent.normalized(agent.flat(obs))))
    q_np = ctrl.act(obs)
    assert np.array_equal(q_np, want)
    assert ctrl.act_one({k: v[2] for k, v in obs.items()}) == want[2]
    # and the state round-trips (npz + json) into a fresh agent
    again = make_agent("dqn", LANG, gym.spaces.Discrete(71), 2, 100, 0, settings)
    again.load_state(*read_part(latest_checkpoint(tmp_path), "state"))
    got = np.asarray(again._greedy(again.policy_params(), again.normalized(again.flat(obs))))
    assert np.array_equal(got, want)
    other = gym.spaces.Dict({**LANG.spaces, "image": gym.spaces.Box(0, 255, (96, 96, 3), np.uint8)})
    with pytest.raises(ValueError, match="was trained on observations"):
        AgentController(other, gym.spaces.Discrete(71), {}, path=tmp_path)


def test_replay_and_rollouts_hold_images_as_bytes() -> None:
    env = _quadrant_env()
    dqn = make_agent("dqn", env.observation_space, env.action_space, 2, 100, 0,
                     {**SMALL_CNN, "buffer_size": 64, "batch_size": 4})  # fmt: skip
    assert dqn.replay.obs.dtype == np.uint8 and dqn.replay.obs.shape == (32, 2, 144)
    assert dqn.replay.next_obs.dtype == np.uint8
    frames = np.stack([env.reset(seed=s)[0] for s in (1, 2)])
    dqn.act(frames)
    dqn.observe(frames, np.zeros(2), np.ones(2, bool), np.zeros(2, bool), frames)
    assert np.array_equal(dqn.replay.obs[0].reshape(2, 12, 12, 1), frames)
    ppo = make_agent("ppo", env.observation_space, env.action_space, 2, 100, 0,
                     {**SMALL_CNN, "n_steps": 4, "minibatches": 2})  # fmt: skip
    ppo.act(frames)
    stored = ppo._rollout["obs"]["parts"][0]
    assert stored.dtype == np.uint8 and np.array_equal(stored[0], frames)


@pytest.mark.parametrize("agent", ["dqn", "ppo"])
def test_an_image_agent_learns_what_a_random_policy_cannot(tmp_path, agent) -> None:
    settings = {
        "dqn": {"learning_starts": 200, "batch_size": 32, "eps_decay_fraction": 0.3, "lr": 1e-3,
                "target_update_period": 50},
        "ppo": {"n_steps": 16, "lr": 1e-3, "activation": "relu"},
    }[agent]  # fmt: skip
    env = quadrant_vec(8)
    train(env, agent, 3000, 0, tmp_path, overrides={**SMALL_CNN, "hidden": (32,), **settings},
          checkpoint_every=3000)  # fmt: skip
    single = _quadrant_env()
    learned = AgentController(single.observation_space, single.action_space, {}, path=tmp_path)
    rand = RandomController(single.observation_space, single.action_space, {})
    mean = [np.mean([r.episode_return for r in run_single(single, c, 200, 7)])
            for c in (learned, rand)]  # fmt: skip
    assert mean[0] >= 0.9 and mean[1] <= 0.4, mean


def test_bbf_trains_on_images_with_impala_spr_resets_and_sem(tmp_path) -> None:
    settings = {"hidden": (16,), "image_encoder": "impala", "impala_channels": (4, 8),
                "width_scale": 2, "learning_starts": 16, "batch_size": 8, "buffer_size": 256,
                "n_step": 2, "n_step_start": 4, "n_step_anneal": 10, "spr_steps": 2,
                "spr_dim": 8, "reset_interval": 10, "sem_simplices": 2, "sem_dim": 4}  # fmt: skip
    result = train(quadrant_vec(4), "bbf", 96, 0, tmp_path, overrides=settings)
    assert result.updates >= 40
    _, arrays = read_part(latest_checkpoint(tmp_path), "policy")
    assert arrays["params/encoder/parts/0/stages/1/conv/w"].shape == (3, 3, 8, 16)  # x2 width
    assert all(np.isfinite(v).all() for v in arrays.values())


def test_dqn_on_lang_rearrange_rgb_runs_as_a_controller(tmp_path) -> None:
    env_id = "twinloop/LangRearrange-v0"
    rgb = ["observation_mode=rgb", "resolution=64"]
    out = tmp_path / "run"
    assert main([
        "agent", "train", env_id, "--agent", "dqn", "--steps", "256", "--n-envs", "4",
        *(a for s in rgb for a in ("--env-set", s)), "--set", "hidden=32",
        "--set", "learning_starts=64", "--set", "buffer_size=512", "--set", "batch_size=16",
        "--set", "text_encoder=mean", "--out", str(out), "--quiet",
    ]) == 0  # fmt: skip
    meta, _ = read_part(latest_checkpoint(out), "policy")
    assert meta["observation"]["keys"] == ["image", "instruction", "is_holding"]
    assert meta["env_id"] == env_id
    report = tmp_path / "r.json"
    assert main([
        "run", env_id, "--controller", f"agent:{out}", *(a for s in rgb for a in ("--set", s)),
        "--episodes", "2", "--quiet", "--json", str(report),
    ]) == 0  # fmt: skip
    assert len(json.loads(report.read_text())["episodes"]) == 2


def test_a_state_saved_before_the_encoder_settings_existed_still_loads() -> None:
    box, actions = gym.spaces.Box(-1, 1, (3,), np.float32), gym.spaces.Discrete(2)
    agent = make_agent("dqn", box, actions, 1, 100, 0, {"buffer_size": 64, "batch_size": 8})
    meta, arrays = agent.state()
    new = ("obs_keys", "image_encoder", "cnn_channels", "text_encoder", "token_dim")
    meta["config"] = {k: v for k, v in meta["config"].items() if k not in new}
    agent.load_state(meta, arrays)  # the missing settings are at their defaults: accepted
    other = make_agent("dqn", box, actions, 1, 100, 0,
                       {"buffer_size": 64, "batch_size": 8, "text_encoder": "mean"})  # fmt: skip
    with pytest.raises(ValueError, match="another agent config"):
        other.load_state(meta, arrays)


def test_a_dict_seen_through_vector_keys_only_trains_and_deploys(tmp_path) -> None:
    """``obs_keys`` that pick only vectors of a Dict feed the torso a flat vector.

    StemSteer's frame observation without its frame (the goal offset alone, a control arm of
    the SEM experiment) once reached the torso as a dict and failed in the first act.
    """
    env_id = "twinloop/StemSteer-v0"
    kw = {"observation_mode": "frame", "max_steps": 8}
    vec = twinloop.make_vec(env_id, 2, **kw)
    try:
        result = train(vec, "ppo", 64, 0, tmp_path, env_id=env_id, env_overrides=kw,
                       overrides={"obs_keys": "goal_offset_angstrom", "n_steps": 16,
                                  "hidden": (16,), "minibatches": 2})  # fmt: skip
    finally:
        vec.close()
    assert result.updates == 2 * 4 * 2  # 2 rollouts x 4 epochs x 2 minibatches
    meta, _ = read_part(latest_checkpoint(tmp_path), "policy")
    assert meta["observation"]["keys"] == ["goal_offset_angstrom"]
    env = twinloop.make(env_id, **kw)
    ctrl = AgentController(env.observation_space, env.action_space, {}, path=tmp_path)
    obs, _ = env.reset(seed=3)
    moved = obs["goal_offset_angstrom"] + 1.0
    a = ctrl.act_one(obs)
    b = ctrl.act_one({**obs, "goal_offset_angstrom": moved})
    c = ctrl.act_one({**obs, "frame": np.zeros_like(obs["frame"])})
    assert env.action_space.contains(np.asarray(a, np.float32))
    assert not np.array_equal(a, b) and np.array_equal(a, c)  # it reads the goal, not the frame
    # on the env without the training's settings the error says what to pass
    flat = twinloop.make(env_id)
    with pytest.raises(
        ValueError, match="run it with --set observation_mode=frame --set max_steps=8"
    ):
        AgentController(flat.observation_space, flat.action_space, {}, path=tmp_path)
