"""The pure pieces of the agents against direct, hand-written computations."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="the 'learn' extra (jax, optax) trains agents")
jnp = jax.numpy

from twinloop.controllers.rl.checkpoint import (  # noqa: E402
    flatten,
    latest_checkpoint,
    read_part,
    save_checkpoint,
    unflatten,
)
from twinloop.controllers.rl.losses import (  # noqa: E402
    ema_update,
    quantile_fractions,
    quantile_huber_loss,
)
from twinloop.controllers.rl.networks import EncoderConfig, encoder_apply, encoder_init  # noqa: E402
from twinloop.controllers.rl.normalize import RunningNorm  # noqa: E402
from twinloop.controllers.rl.policy import action_spec, to_env_action  # noqa: E402
from twinloop.controllers.rl.replay import ReplayBuffer  # noqa: E402
from twinloop.controllers.rl.returns import gae, nstep_targets  # noqa: E402


def _episode_flags(rng: np.random.Generator, shape: tuple[int, ...]) -> tuple[np.ndarray, ...]:
    ends = rng.random(shape) < 0.2
    term = ends & (rng.random(shape) < 0.5)
    return term, ends & ~term


# --- n-step returns ----------------------------------------------------------------------------
def test_nstep_targets_match_a_hand_written_loop() -> None:
    rng = np.random.default_rng(0)
    b, n, gamma = 200, 5, 0.9
    rewards = rng.normal(size=(b, n))
    term, trunc = _episode_flags(rng, (b, n))
    got_ret, got_disc, got_last = nstep_targets(rewards, term, trunc, gamma)
    for i in range(b):
        ret, k = 0.0, 0
        while True:
            ret += gamma**k * rewards[i, k]
            if term[i, k] or trunc[i, k] or k == n - 1:
                break
            k += 1
        disc = 0.0 if term[i, k] else gamma ** (k + 1)
        assert got_last[i] == k
        assert got_ret[i] == pytest.approx(ret, rel=1e-12)
        assert got_disc[i] == pytest.approx(disc, rel=1e-12)
    assert (got_disc == 0).any() and (got_last < n - 1).any()  # the flags were exercised


def test_replay_windows_stop_at_episode_ends_and_bootstrap_from_the_final_observation() -> None:
    buf = ReplayBuffer(capacity=8, n_envs=1, obs_dim=1, n_step=3)
    # one env: step t has obs t, reward 1; the episode is truncated at step 1, then terminates
    # at step 4; next_obs of step 1 is a final observation (100)
    for t in range(6):
        nxt = 100.0 if t == 1 else t + 1.0
        buf.add([[t]], [0], [1.0], [t == 4], [t == 1], [[nxt]])
    assert buf.sampleable == 4  # windows start at 0..3
    rng = np.random.default_rng(0)
    batch = buf.sample(rng, 64, gamma=0.5)
    for obs, ret, disc, nxt in zip(
        batch["obs"][:, 0], batch["returns"], batch["discount"], batch["next_obs"][:, 0],
        strict=True,
    ):  # fmt: skip
        expected = {  # start: (return, discount, next observation)
            0: (1.5, 0.25, 100.0),  # truncated at step 1: bootstrapped from the final obs
            1: (1.0, 0.5, 100.0),
            2: (1.75, 0.0, 5.0),  # terminated at step 4: no bootstrap
            3: (1.5, 0.0, 5.0),
        }[int(obs)]
        assert (ret, disc, nxt) == pytest.approx(expected)


def test_replay_ring_overwrites_the_oldest_steps() -> None:
    buf = ReplayBuffer(capacity=4, n_envs=2, obs_dim=1, n_step=1)
    for t in range(10):
        buf.add([[t], [t]], [0, 0], [0.0, 0.0], [False] * 2, [False] * 2, [[t], [t]])
    batch = buf.sample(np.random.default_rng(1), 256, gamma=0.9)
    assert set(np.unique(batch["obs"])) == {6.0, 7.0, 8.0, 9.0}


# --- GAE ---------------------------------------------------------------------------------------
def test_gae_matches_the_direct_sum_of_discounted_deltas() -> None:
    rng = np.random.default_rng(1)
    t_len, n, gamma, lam = 30, 4, 0.97, 0.9
    rewards = rng.normal(size=(t_len, n)).astype(np.float32)
    values = rng.normal(size=(t_len, n)).astype(np.float32)
    next_values = rng.normal(size=(t_len, n)).astype(np.float32)
    term, trunc = _episode_flags(rng, (t_len, n))
    adv, ret = gae(rewards, values, next_values, term, trunc, gamma, lam)
    want = np.zeros((t_len, n))
    for j in range(n):
        for t in range(t_len):
            total, k = 0.0, t
            while k < t_len:
                delta = rewards[k, j] + gamma * (1 - term[k, j]) * next_values[k, j] - values[k, j]
                total += (gamma * lam) ** (k - t) * delta
                if term[k, j] or trunc[k, j]:
                    break
                k += 1
            want[t, j] = total
    np.testing.assert_allclose(np.asarray(adv), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(ret), want + values, rtol=1e-5, atol=1e-5)


# --- losses ------------------------------------------------------------------------------------
def test_quantile_huber_loss_is_zero_only_at_the_target_and_non_negative() -> None:
    taus = quantile_fractions(4)
    z = jnp.full((3, 4), 2.0)
    assert float(quantile_huber_loss(z, z, taus)) == 0.0
    rng = np.random.default_rng(2)
    for _ in range(5):
        pred = jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)
        target = jnp.asarray(rng.normal(size=(3, 6)), jnp.float32)
        assert float(quantile_huber_loss(pred, target, taus)) > 0.0


def test_quantile_huber_loss_is_asymmetric_by_tau() -> None:
    tau = jnp.array([0.9])
    target = jnp.zeros((1, 1))
    under = float(quantile_huber_loss(jnp.array([[-1.0]]), target, tau))  # below the target
    over = float(quantile_huber_loss(jnp.array([[1.0]]), target, tau))
    assert under == pytest.approx(9 * over)  # weights 0.9 vs 0.1


def test_quantile_huber_loss_minimiser_is_the_quantile() -> None:
    """Gradient descent on one estimate per fraction lands on the sample's quantiles."""
    rng = np.random.default_rng(3)
    samples = jnp.asarray(rng.exponential(size=(1, 2001)), jnp.float32)
    taus = quantile_fractions(5)
    grad = jax.jit(jax.grad(lambda p: quantile_huber_loss(p, samples, taus, kappa=1e-3)))
    pred = jnp.zeros((1, 5))
    for i in range(3000):
        pred = pred - (0.05 if i < 2000 else 0.005) * grad(pred)
    want = np.quantile(np.asarray(samples[0]), np.asarray(taus))
    np.testing.assert_allclose(np.asarray(pred[0]), want, atol=0.02)


def test_target_ema() -> None:
    online = {"w": jnp.ones(3), "b": [jnp.full(2, 4.0)]}
    target = {"w": jnp.zeros(3), "b": [jnp.zeros(2)]}
    np.testing.assert_array_equal(ema_update(target, online, 1.0)["w"], online["w"])
    np.testing.assert_array_equal(ema_update(target, online, 0.0)["b"][0], target["b"][0])
    t = target
    for _ in range(10):
        t = ema_update(t, online, 0.1)
    # the gap to the online net shrinks by (1 - tau) per update
    np.testing.assert_allclose(t["b"][0], 4.0 * (1 - 0.9**10), rtol=1e-6)


# --- encoder -----------------------------------------------------------------------------------
@pytest.mark.parametrize("tau", [0.1, 1.0, 5.0])
def test_simplicial_embedding_gives_l_blocks_each_summing_to_one(tau: float) -> None:
    cfg = EncoderConfig(hidden=(16,), sem_simplices=5, sem_dim=4, sem_tau=tau)
    params = encoder_init(np.random.default_rng(0), 7, cfg)
    x = np.random.default_rng(1).normal(size=(11, 7)).astype(np.float32)
    out = encoder_apply(np, params, cfg, x)
    assert out.shape == (11, 20) and cfg.out_dim == 20
    blocks = out.reshape(11, 5, 4)
    assert (blocks >= 0).all()
    np.testing.assert_allclose(blocks.sum(axis=-1), 1.0, rtol=1e-6)
    # the same function on JAX arrays gives the same features
    out_jax = encoder_apply(jnp, jax.tree_util.tree_map(jnp.asarray, params), cfg, jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(out_jax), out, rtol=1e-5, atol=1e-6)


def test_lower_temperature_sharpens_the_simplices() -> None:
    def peak(tau: float) -> float:
        cfg = EncoderConfig(hidden=(16,), sem_simplices=3, sem_dim=8, sem_tau=tau)
        params = encoder_init(np.random.default_rng(0), 5, cfg)
        x = np.random.default_rng(1).normal(size=(50, 5)).astype(np.float32)
        return float(encoder_apply(np, params, cfg, x).reshape(50, 3, 8).max(axis=-1).mean())

    assert peak(0.05) > peak(1.0) > peak(20.0)


def test_encoder_config_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="sem_tau must be > 0"):
        EncoderConfig(sem_simplices=2, sem_tau=0.0)
    with pytest.raises(ValueError, match="activation 'gelu'"):
        EncoderConfig(activation="gelu")


# --- normalisation and actions -----------------------------------------------------------------
def test_running_norm_equals_the_statistics_of_all_batches() -> None:
    rng = np.random.default_rng(4)
    batches = [rng.normal(3.0, 2.0, size=(k, 3)) for k in (1, 7, 50, 2)]
    norm = RunningNorm(3)
    for b in batches:
        norm.update(b)
    allx = np.concatenate(batches)
    np.testing.assert_allclose(norm.mean, allx.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(norm.var, allx.var(axis=0), rtol=1e-12)
    z = norm(allx)
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-5)


def test_box_actions_map_onto_the_bounds() -> None:
    spec = action_spec(
        gym.spaces.Box(np.array([-3.0, 0.0]), np.array([3.0, 10.0]), dtype=np.float32)
    )
    a = to_env_action(spec, np.array([[-1.0, 1.0], [0.0, 0.0], [5.0, -5.0]]))
    np.testing.assert_allclose(a, [[-3.0, 10.0], [0.0, 5.0], [3.0, 0.0]])
    d = action_spec(gym.spaces.Discrete(3, start=2))
    np.testing.assert_array_equal(to_env_action(d, np.array([0, 2])), [2, 4])
    with pytest.raises(TypeError, match="Discrete and Box"):
        action_spec(gym.spaces.MultiBinary(3))


# --- checkpoints -------------------------------------------------------------------------------
def _trained_dqn_state() -> tuple[object, dict]:
    from twinloop.controllers.rl.train import make_agent

    obs_space = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
    agent = make_agent(
        "qr-dqn", obs_space, gym.spaces.Discrete(2), 2, 1000, 5,
        {"hidden": (8,), "learning_starts": 0, "batch_size": 4, "replay_ratio": 1.0,
         "quantiles": 3, "buffer_size": 64},
    )  # fmt: skip
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(2, 3)).astype(np.float32)
    for _ in range(6):
        agent.act(obs)
        nxt = rng.normal(size=(2, 3)).astype(np.float32)
        agent.observe(obs, rng.normal(size=2), np.array([False, True]), np.zeros(2, bool), nxt)
        obs = nxt
    return agent, agent.learner_state()


def test_checkpoint_round_trip_is_bit_exact(tmp_path) -> None:
    agent, learner = _trained_dqn_state()
    assert agent.updates > 0
    arrays = flatten(learner)
    assert "params/encoder/layers/0/w" in arrays and any(k.startswith("opt/") for k in arrays)
    policy = agent.policy()
    state = agent.state()
    save_checkpoint(tmp_path, 12, policy, state)
    found = latest_checkpoint(tmp_path)
    assert found is not None and found.name == "checkpoint-000000000012"
    meta, loaded = read_part(found, "state")
    assert meta["step"] == 12 and set(loaded) == set(state[1])
    for k, v in state[1].items():
        assert loaded[k].dtype == v.dtype
        np.testing.assert_array_equal(loaded[k], v, err_msg=k)
    back = unflatten(learner, loaded, "learner/")
    for a, b in zip(
        jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(learner), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # a second agent restored from it continues identically
    other, _ = _trained_dqn_state()
    other.load_state(meta, loaded)
    obs = np.ones((2, 3), np.float32)
    np.testing.assert_array_equal(agent.act(obs), other.act(obs))


def test_checkpoint_keeps_the_newest_two_and_rejects_a_wrong_shape(tmp_path) -> None:
    agent, learner = _trained_dqn_state()
    for step in (4, 8, 12):
        save_checkpoint(tmp_path, step, agent.policy(), agent.state())
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint-000000000008",
        "checkpoint-000000000012",
    ]
    arrays = flatten(learner)
    arrays["params/head/w"] = np.zeros((1, 1), np.float32)
    with pytest.raises(ValueError, match="params/head/w"):
        unflatten(learner, arrays)
