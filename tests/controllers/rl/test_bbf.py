"""BBF's ingredients and QDagger's distillation, each against a direct computation."""

from __future__ import annotations

import copy
import itertools

import gymnasium as gym
import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="the 'learn' extra (jax, optax) trains agents")
jnp = jax.numpy

from twinloop.controllers.rl.bbf import fresh_params, gamma_at, n_step_at, spr_loss  # noqa: E402
from twinloop.controllers.rl.dqn import BBFConfig, DQNConfig, make_optimizer  # noqa: E402
from twinloop.controllers.rl.losses import distillation_loss, normalized_l2  # noqa: E402
from twinloop.controllers.rl.networks import (  # noqa: E402
    EncoderConfig,
    encoder_apply,
    encoder_init,
)
from twinloop.controllers.rl.replay import ReplayBuffer  # noqa: E402
from twinloop.controllers.rl.train import make_agent  # noqa: E402

SMALL = {"hidden": (8,), "learning_starts": 0, "batch_size": 4, "buffer_size": 64,
         "quantiles": 3, "spr_steps": 2, "spr_dim": 5, "n_step_start": 4}  # fmt: skip


def _agent(**overrides):
    obs_space = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
    return make_agent("bbf", obs_space, gym.spaces.Discrete(2), 2, 1000, 5, {**SMALL, **overrides})


def _feed(agent, steps: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(2, 3)).astype(np.float32)
    for t in range(steps):
        agent.act(obs)
        nxt = rng.normal(size=(2, 3)).astype(np.float32)
        agent.observe(obs, rng.normal(size=2), np.array([t % 5 == 4, False]), np.zeros(2, bool),
                      nxt)  # fmt: skip
        obs = nxt


# --- n-step schedule ---------------------------------------------------------------------------
def test_n_step_anneals_exponentially_from_10_to_3_then_stays() -> None:
    values = [n_step_at(u, 10, 3, 100) for u in range(0, 201, 10)]
    assert values[0] == 10 and values[10] == 3 and set(values[10:]) == {3}
    assert all(a >= b for a, b in itertools.pairwise(values))
    assert n_step_at(50, 10, 3, 100) == round(10 * 0.3**0.5)  # halfway: geometric mean, 5
    assert n_step_at(7, 0, 3, 100) == 3  # no anneal: fixed n


def test_the_agents_n_restarts_at_every_reset() -> None:
    agent = _agent(n_step_start=10, n_step_anneal=10, reset_interval=20)
    seen = []
    for u in (0, 10, 19, 20, 30, 40):
        agent.updates = u
        seen.append(agent.n_step())
    assert seen == [10, 3, 3, 10, 3, 10]


# --- gamma schedule ----------------------------------------------------------------------------
def test_gamma_anneals_from_097_to_0997_exponentially_in_the_horizon_then_stays() -> None:
    values = [gamma_at(u, 0.97, 0.997, 100) for u in range(0, 201, 10)]
    assert values[0] == pytest.approx(0.97) and values[10] == pytest.approx(0.997)
    assert set(values[10:]) == {values[10]}
    assert all(a < b for a, b in itertools.pairwise(values[:11]))  # strictly rising
    # halfway the horizon 1/(1-gamma) is the geometric mean of 33.3 and 333.3 steps
    half = gamma_at(50, 0.97, 0.997, 100)
    assert 1 / (1 - half) == pytest.approx((1 / 0.03 * 1 / 0.003) ** 0.5, rel=1e-9)
    assert gamma_at(7, 0.0, 0.99, 100) == 0.99  # gamma_start 0: fixed gamma
    with pytest.raises(ValueError, match=r"gamma < 1, got 1.0"):
        gamma_at(7, 0.9, 1.0, 100)


def test_the_agents_gamma_restarts_at_every_reset_and_bbf_uses_bbfs_values() -> None:
    d = BBFConfig()
    assert (d.gamma_start, d.gamma, d.n_step_anneal) == (0.97, 0.997, 10_000)
    assert DQNConfig().gamma_start == 0.0  # dqn and qr-dqn keep a fixed gamma
    agent = _agent(gamma_start=0.9, gamma=0.99, n_step_anneal=10, reset_interval=20)
    seen = []
    for u in (0, 5, 10, 19, 20, 25, 40):
        agent.updates = u
        seen.append(agent.gamma())
    assert seen == pytest.approx([0.9, 1 - 0.1 * 0.1**0.5, 0.99, 0.99, 0.9, seen[1], 0.9])
    with pytest.raises(ValueError, match=r"gamma_start=0.9 anneals towards gamma=1.0"):
        _agent(gamma_start=0.9, gamma=1.0)


def test_the_discount_of_each_sampled_batch_follows_the_gamma_schedule() -> None:
    """The update sees gamma through the batch: one-step returns, no terminal step."""
    agent = _agent(gamma_start=0.5, gamma=0.9, n_step=1, n_step_start=0, spr_steps=0,
                   n_step_anneal=4, replay_ratio=1.0)  # fmt: skip
    seen: list[tuple[int, np.ndarray]] = []
    real = agent._update

    def spy(state, batch, index, weight):
        seen.append((int(index), np.asarray(batch["discount"])))
        return real(state, batch, index, weight)

    agent._update = spy
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(2, 3)).astype(np.float32)
    for _ in range(4):
        agent.act(obs)
        nxt = rng.normal(size=(2, 3)).astype(np.float32)
        agent.observe(obs, rng.normal(size=2), np.zeros(2, bool), np.zeros(2, bool), nxt)
        obs = nxt
    assert [i for i, _ in seen] == list(range(8))
    for i, discount in seen:
        want = np.float32(gamma_at(i, 0.5, 0.9, 4))
        np.testing.assert_array_equal(discount, np.full(4, want), err_msg=f"update {i}")
    assert seen[0][1][0] == np.float32(0.5) and seen[-1][1][0] == np.float32(0.9)


# --- shrink and perturb, resets ----------------------------------------------------------------
def test_reset_shrinks_and_perturbs_the_encoder_and_reinitialises_the_last_layers() -> None:
    agent = _agent(shrink_alpha=0.3)
    _feed(agent, 6)
    assert agent.updates > 0
    before = jax.tree_util.tree_map(np.asarray, agent.learner_state())
    rng = copy.deepcopy(agent.rng)  # the same draws as the reset's fresh phi
    phi = fresh_params(rng, agent.obs_dim, agent.spec, agent._spr)
    agent.reset_network()
    after = jax.tree_util.tree_map(np.asarray, agent.learner_state())
    theta = before["params"]

    def close(a, b) -> None:
        for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
            np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)

    mix = jax.tree_util.tree_map(lambda t, f: 0.3 * t + 0.7 * f, theta["encoder"], phi["encoder"])
    close(after["params"]["encoder"], mix)
    dyn = jax.tree_util.tree_map(
        lambda t, f: 0.3 * t + 0.7 * f, theta["spr"]["dynamics"], phi["spr"]["dynamics"]
    )
    close(after["params"]["spr"]["dynamics"], dyn)
    close(after["params"]["head"], phi["head"])  # re-initialised in full
    close(after["params"]["spr"]["projection"], phi["spr"]["projection"])
    close(after["params"]["spr"]["prediction"], phi["spr"]["prediction"])
    close(after["target"], before["target"])  # the target network is untouched
    assert not np.allclose(after["params"]["head"]["w"], theta["head"]["w"])


def test_resets_happen_every_reset_interval_updates() -> None:
    agent = _agent(reset_interval=3, replay_ratio=1.0)
    calls = []
    real = agent.reset_network
    agent.reset_network = lambda: (calls.append(agent.updates), real())[1]
    _feed(agent, 8)  # windows of 4: 2 rows x 5 sampleable steps = 10 updates at ratio 1
    assert agent.updates == 10 and calls == [3, 6, 9]


# --- SPR ---------------------------------------------------------------------------------------
def test_normalized_l2_is_zero_for_equal_directions_and_positive_otherwise() -> None:
    rng = np.random.default_rng(0)
    p = jnp.asarray(rng.normal(size=(6, 4)), jnp.float32)
    np.testing.assert_allclose(normalized_l2(p, p), 0.0, atol=1e-6)
    np.testing.assert_allclose(normalized_l2(p, 3.0 * p), 0.0, atol=1e-6)
    np.testing.assert_allclose(normalized_l2(p, -p), 4.0, rtol=1e-5)
    q = jnp.asarray(rng.normal(size=(6, 4)), jnp.float32)
    assert (np.asarray(normalized_l2(p, q)) > 0).all()


def _spr_batch(agent, rng):
    b, k = 16, agent.config.spr_steps
    return {
        "obs": jnp.asarray(rng.normal(size=(b, 3)), jnp.float32),
        "seq_action": jnp.asarray(rng.integers(0, 2, size=(b, k))),
        "seq_next_obs": jnp.asarray(rng.normal(size=(b, k, 3)), jnp.float32),
        "seq_mask": jnp.ones((b, k), jnp.float32),
    }


def test_spr_loss_vanishes_when_every_step_is_masked_and_when_predictions_hit_targets() -> None:
    agent = _agent()
    params = agent.learner_state()["params"]
    batch = _spr_batch(agent, np.random.default_rng(1))
    assert float(spr_loss(params, params, batch, agent.spec)) > 0
    masked = {**batch, "seq_mask": jnp.zeros_like(batch["seq_mask"])}
    assert float(spr_loss(params, params, masked, agent.spec)) == 0.0
    # prediction = projection's inverse direction check: identity prediction head, dynamics
    # that copy the latent, and next observations equal to the first: predictions == targets
    d = agent.spec.encoder.out_dim
    same = jax.tree_util.tree_map(lambda x: x, params)
    same["spr"] = dict(params["spr"])
    same["spr"]["prediction"] = {"w": jnp.eye(5), "b": jnp.zeros(5)}
    eye = jnp.concatenate([jnp.eye(d), jnp.zeros((2, d))])
    same["spr"]["dynamics"] = [{"w": eye, "b": jnp.zeros(d)}, {"w": jnp.eye(d), "b": jnp.zeros(d)}]
    copies = {**batch, "seq_next_obs": jnp.repeat(batch["obs"][:, None], 2, axis=1)}
    assert float(spr_loss(same, same, copies, agent.spec)) == pytest.approx(0.0, abs=1e-5)


def test_spr_gradient_reaches_the_encoder_and_dynamics_but_not_the_q_head_or_target() -> None:
    agent = _agent()
    params = agent.learner_state()["params"]
    batch = _spr_batch(agent, np.random.default_rng(2))
    g_online, g_target = jax.grad(spr_loss, argnums=(0, 1))(params, params, batch, agent.spec)

    def norm(tree) -> float:
        return float(sum(jnp.sum(jnp.abs(x)) for x in jax.tree_util.tree_leaves(tree)))

    assert norm(g_online["encoder"]) > 0 and norm(g_online["spr"]["dynamics"]) > 0
    assert norm(g_online["spr"]["prediction"]) > 0
    assert norm(g_online["head"]) == 0.0
    assert norm(g_target) == 0.0  # targets are stop-gradient


def test_replay_sequences_mask_the_steps_after_an_episode_end() -> None:
    buf = ReplayBuffer(capacity=8, n_envs=1, obs_dim=1, n_step=3)
    for t in range(6):  # the episode ends at step 1
        buf.add([[t]], [t], [0.0], [t == 1], [False], [[t + 1.0]])
    batch = buf.sample(np.random.default_rng(0), 64, 0.9, n=1, sequence=3)
    for obs, act, nxt, mask in zip(batch["obs"][:, 0], batch["seq_action"],
                                   batch["seq_next_obs"][:, :, 0], batch["seq_mask"],
                                   strict=True):  # fmt: skip
        t = int(obs)
        np.testing.assert_array_equal(act, [t, t + 1, t + 2])
        np.testing.assert_array_equal(nxt, [t + 1, t + 2, t + 3])
        want = {0: [1, 1, 0], 1: [1, 0, 0]}.get(t, [1, 1, 1])
        np.testing.assert_array_equal(mask, want)
    assert batch["discount"].max() == pytest.approx(0.9)  # n=1 returns from a 3-step window


# --- weight decay ------------------------------------------------------------------------------
def test_weight_decay_shrinks_weights_by_lr_times_decay_per_step() -> None:
    params = {"w": jnp.full((3,), 2.0)}
    zero = {"w": jnp.zeros(3)}
    for decay, factor in ((0.1, 1 - 0.01 * 0.1), (0.0, 1.0)):
        opt = make_optimizer(DQNConfig(lr=0.01, weight_decay=decay))
        state = opt.init(params)
        p = params
        for _ in range(5):
            change, state = opt.update(zero, state, p)
            p = jax.tree_util.tree_map(lambda a, b: a + b, p, change)
        np.testing.assert_allclose(p["w"], 2.0 * factor**5, rtol=1e-6)


def test_width_scale_multiplies_the_hidden_widths_and_bbf_turns_everything_on() -> None:
    cfg = BBFConfig(hidden=(16, 8), width_scale=3)
    assert cfg.encoder.hidden == (48, 24)
    d = BBFConfig()
    assert d.n_step_start == 10 and d.n_step == 3 and d.spr_steps > 0 and d.weight_decay > 0
    assert d.target_ema_tau > 0 and d.reset_interval > 0 and d.window == 10


# --- distillation ------------------------------------------------------------------------------
def test_distillation_loss_is_minimised_by_ranking_the_teachers_action_first() -> None:
    values = jnp.array([3.0, 1.0, 0.0, -1.0])
    teacher = jnp.array([2])
    losses = [float(distillation_loss(jnp.roll(values, s)[None], teacher, 0.5)) for s in range(4)]
    best = int(np.argmin(losses))
    assert int(jnp.argmax(jnp.roll(values, best))) == 2  # the teacher's action has the top Q
    # gradient descent on free Q values makes the teacher's action the greedy one
    q = jnp.zeros((5, 3))
    ta = jnp.array([0, 1, 2, 1, 0])
    grad = jax.jit(jax.grad(lambda q: distillation_loss(q, ta, 0.1)))
    for _ in range(50):
        q = q - 0.05 * grad(q)
    np.testing.assert_array_equal(np.argmax(q, axis=1), ta)
    # rows without a teacher action contribute nothing
    none = jnp.array([-1, -1, -1, -1, -1])
    assert float(distillation_loss(q, none, 0.1)) == 0.0


def test_distillation_weight_decays_linearly_to_zero_with_online_updates() -> None:
    agent = _agent(distill_weight=2.0, distill_updates=100)
    assert agent.distill_weight() == 0.0  # no teacher
    agent.teacher = True
    got = []
    for u in (0, 25, 50, 100, 150):
        agent.updates = u
        got.append(agent.distill_weight())
    assert got == pytest.approx([2.0, 1.5, 1.0, 0.0, 0.0])


# --- simplicial embedding ----------------------------------------------------------------------
def test_simplicial_embedding_stays_unsaturated_however_large_its_logits_grow() -> None:
    """The first slice's collapse: logits grew until every softmax sat on one vertex."""
    cfg = EncoderConfig(hidden=(16,), sem_simplices=4, sem_dim=8, sem_tau=1.0)
    params = encoder_init(np.random.default_rng(0), 5, cfg)
    params["sem"]["w"] = params["sem"]["w"] * 100.0  # what training did to the projection
    x = np.random.default_rng(1).normal(size=(64, 5)).astype(np.float32)
    f = encoder_apply(np, params, cfg, x).reshape(64, 4, 8)
    assert f.max(axis=-1).mean() < 0.9  # not one-hot
    assert f.std(axis=0).mean() > 0.01  # the features still depend on the observation


@pytest.mark.slow
def test_bbf_policy_loads_as_a_controller_without_the_spr_modules(tmp_path) -> None:
    from twinloop.controllers.rl.checkpoint import save_checkpoint
    from twinloop.controllers.rl.controller import AgentController

    agent = _agent()
    _feed(agent, 6)
    meta, arrays = agent.policy()
    assert not any(k.startswith("params/spr") for k in arrays)
    save_checkpoint(tmp_path, 8, (meta, arrays), agent.state())
    c = AgentController(gym.spaces.Box(-1.0, 1.0, (3,), np.float32), gym.spaces.Discrete(2),
                        {}, path=tmp_path)  # fmt: skip
    obs = np.random.default_rng(3).normal(size=(5, 3)).astype(np.float32)
    greedy = agent._greedy(agent.policy_params(), agent.normalized(obs))
    np.testing.assert_array_equal(c.act(obs), np.asarray(greedy))


@pytest.mark.slow
def test_pretrain_makes_the_student_imitate_a_teacher_on_its_data() -> None:
    agent = _agent(pretrain_updates=300, lr=3e-3, batch_size=32, distill_temperature=0.1,
                   distill_weight=5.0)  # fmt: skip
    rng = np.random.default_rng(4)
    data = ReplayBuffer(256, 1, 3, agent.config.window)
    obs = rng.normal(size=(200, 3)).astype(np.float32)
    teacher = (obs[:, 0] > 0).astype(np.int64)  # the teacher's rule: sign of feature 0
    for t in range(199):
        data.add(obs[t : t + 1], teacher[t : t + 1], [0.0], [False], [False], obs[t + 1 : t + 2],
                 teacher[t : t + 1])  # fmt: skip
    agent.pretrain(data, agent.config.pretrain_updates)
    test = rng.normal(size=(200, 3)).astype(np.float32)
    greedy = np.asarray(agent._greedy(agent.policy_params(), agent.normalized(test)))
    assert agent.updates == 0 and agent.teacher
    assert (greedy == (test[:, 0] > 0)).mean() > 0.9
