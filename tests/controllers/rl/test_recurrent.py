"""Recurrent PPO (a GRU core, its state carried per env row) and PPO's shared image encoder.

The task that needs memory, :class:`CueRecall`, shows a cue only at an episode's first step
and rewards the action that matches it at the last step, so any memoryless policy earns 0.5
per episode on average; a policy that remembers the cue earns 1.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode

jax = pytest.importorskip("jax", reason="the 'learn' extra (jax, optax) trains agents")
jnp = jax.numpy

from twinloop.controllers.rl.checkpoint import (  # noqa: E402
    flatten,
    latest_checkpoint,
    read_part,
    save_checkpoint,
)
from twinloop.controllers.rl.controller import AgentController  # noqa: E402
from twinloop.controllers.rl.encoders import (  # noqa: E402
    gru_cell,
    gru_init,
    tokens_apply,
    tokens_init,
)
from twinloop.controllers.rl.policy import PolicySpec  # noqa: E402
from twinloop.controllers.rl.ppo import forward_sequence, log_prob, next_values  # noqa: E402
from twinloop.controllers.rl.train import make_agent, train  # noqa: E402
from twinloop.eval.rollout import run_single  # noqa: E402

from .tasks import BrightQuadrant, quadrant_vec  # noqa: E402


class CueRecall(gym.Env):
    """A cue at the first step decides which action is rewarded at the last one.

    The observation is ``[cue, t / LENGTH]``: the cue is -1 or +1 (drawn at reset) at step 0
    and 0 afterwards, so only a policy with memory knows it later. Actions are Discrete(2);
    the episode ends (terminated) after ``LENGTH`` steps and its last action earns 1 if it is
    the cue's (0 for -1, 1 for +1), else 0. A memoryless policy earns 0.5 on average.
    """

    metadata: dict[str, Any] = {}  # noqa: RUF012
    LENGTH = 6

    def __init__(self) -> None:  # noqa: D107
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self._cue = 0
        self._t = 0

    def _obs(self) -> np.ndarray:
        cue = 2.0 * self._cue - 1.0 if self._t == 0 else 0.0
        return np.array([cue, self._t / self.LENGTH], np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._cue = int(self.np_random.integers(2))
        self._t = 0
        return self._obs(), {}

    def step(self, action):
        self._t += 1
        last = self._t >= self.LENGTH
        reward = float(last and int(action) == self._cue)
        return self._obs(), reward, last, False, {}


def cue_vec(n_envs: int) -> gym.vector.VectorEnv:
    """A SAME_STEP vector env of :class:`CueRecall`."""
    return gym.vector.SyncVectorEnv(
        [CueRecall for _ in range(n_envs)], autoreset_mode=AutoresetMode.SAME_STEP
    )


#: Learns CueRecall in 6k env steps with a GRU (seeds 0-5 tried: 1.0 greedily, shared or not);
#: one torso for actor and critic compiles faster.
CUE = {"hidden": (32,), "n_steps": 16, "minibatches": 2, "lr": 3e-3, "rnn_hidden": 16,
       "shared_encoder": True}  # fmt: skip
SMALL_CNN = {"cnn_channels": (8, 16), "cnn_kernels": (3, 3), "cnn_strides": (2, 1)}


def _greedy_success(run_dir, episodes: int = 200) -> float:
    env = CueRecall()
    agent = AgentController(env.observation_space, env.action_space, {}, path=run_dir)
    return float(np.mean([r.episode_return for r in run_single(env, agent, episodes, 7)]))


def test_the_carried_gru_cell_is_the_token_encoders_gru() -> None:
    """Stepping :func:`gru_cell` over embeddings gives the text encoder's last state."""
    rng = np.random.default_rng(0)
    params = tokens_init(rng, 20, "gru", 5, 7)
    assert {k: v.shape for k, v in gru_init(rng, 5, 7).items()} == {
        k: v.shape for k, v in params["gru"].items()
    }
    ids = rng.integers(1, 20, (4, 6))
    g = params["gru"]
    h = np.zeros((4, 7), np.float32)
    for t in range(6):
        h = gru_cell(np, g, params["embed"][ids[:, t]] @ g["wx"] + g["bx"], h)
    np.testing.assert_allclose(h, tokens_apply(np, params, "gru", ids), atol=1e-6)
    assert np.abs(h).max() > 0.1


@pytest.mark.parametrize("recurrent", ["gru", "none"])
def test_only_recurrent_ppo_learns_to_remember_the_cue(tmp_path, recurrent) -> None:
    """Same budget and settings: the GRU earns > 0.9, the feed-forward policy about 0.5."""
    train(cue_vec(16), "ppo", 6144, 0, tmp_path, overrides={**CUE, "recurrent": recurrent},
          checkpoint_every=6144)  # fmt: skip
    success = _greedy_success(tmp_path)  # through the NumPy controller, reset every episode
    if recurrent == "gru":
        assert success > 0.9, success
    else:  # greedy and memoryless: one fixed action at the last step, right for half the cues
        assert 0.35 < success < 0.65, success


def test_a_recurrent_run_interrupted_and_resumed_ends_with_the_same_parameters(tmp_path) -> None:
    """Rollouts of 5 steps and segments of 15 cut episodes of 6: states reset mid-episode.

    Actor and critic each have their GRU here (the learning test shares one).
    """
    overrides = {"hidden": (8,), "n_steps": 5, "minibatches": 2, "epochs": 2,
                 "recurrent": "gru", "rnn_hidden": 8}  # fmt: skip
    kw = {"overrides": overrides, "checkpoint_every": 60, "log_every": 4}
    whole = train(cue_vec(4), "ppo", 200, 3, tmp_path / "whole", **kw)

    class Stop(Exception):
        pass

    def stop(row: dict) -> None:
        if row["env_step"] >= 100:
            raise Stop

    with pytest.raises(Stop):
        train(cue_vec(4), "ppo", 200, 3, tmp_path / "cut", progress=stop, **kw)
    assert latest_checkpoint(tmp_path / "cut").name.endswith("060")
    resumed = train(cue_vec(4), "ppo", 200, 3, tmp_path / "cut", **kw)
    assert resumed.resumed_from == 60 and resumed.updates == whole.updates > 0
    a = read_part(latest_checkpoint(tmp_path / "whole"), "state")[1]
    b = read_part(latest_checkpoint(tmp_path / "cut"), "state")[1]
    assert set(a) == set(b) and "extra/h/actor" in a and "learner/train/params/actor/rnn/wh" in a
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _scaled_agent(shared: bool, n_envs: int = 2, **extra: Any):
    """A recurrent PPO agent for 3 features and 3 actions, its heads scaled to O(1) outputs."""
    box = gym.spaces.Box(-5.0, 5.0, (3,), np.float32)
    settings = {"hidden": (16,), "recurrent": "gru", "rnn_hidden": 8, "n_steps": 8,
                "minibatches": 2, "shared_encoder": shared, **extra}  # fmt: skip
    agent = make_agent("ppo", box, gym.spaces.Discrete(3), n_envs, 1000, 0, settings)
    params = agent._state["params"]
    for head in ("actor", "critic"):
        params[head]["head"]["w"] = params[head]["head"]["w"] * 100.0
    return agent, box


@pytest.mark.parametrize("shared", [False, True])
def test_the_numpy_controller_equals_the_jax_policy_across_an_episode_boundary(
    tmp_path, shared
) -> None:
    agent, box = _scaled_agent(shared)
    rng = np.random.default_rng(3)
    obs = rng.normal(0.0, 2.0, (7, 2, 3)).astype(np.float32)
    agent.update_norm(agent.flat(obs.reshape(-1, 3)))  # a non-trivial normaliser, saved too
    save_checkpoint(tmp_path, 7, agent.policy(), agent.state())
    ctrl = AgentController(box, gym.spaces.Discrete(3), {}, path=tmp_path)
    ctrl.reset(2, np.array([0, 1]))
    got = []
    for t in range(7):
        if t == 3:  # row 0's episode ends after step 2; row 1's goes on
            ctrl.reset(2, np.array([5, 1]), mask=np.array([True, False]))
        got.append(ctrl.outputs(obs[t]))
    got = np.stack(got)
    x = jnp.asarray(agent.normalized(agent.flat(obs.reshape(-1, 3))).reshape(7, 2, 3))
    h0 = {g: jnp.ones((2, 8)) for g in (("shared",) if shared else ("actor", "critic"))}
    start = np.zeros((7, 2), bool)
    start[0] = True  # h0 (ones) is discarded: every row starts an episode at step 0
    start[3, 0] = True
    spec, cfg = agent.spec, agent.config
    want = np.asarray(forward_sequence(agent._state["params"], spec, cfg, x, h0, start)[0][0])
    assert np.abs(want).max() > 0.5  # outputs of order 1, so 1e-5 is a tight tolerance
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    # without the reset row 0 would act differently after the boundary; row 1 would not
    start[3, 0] = False
    carried = np.asarray(forward_sequence(agent._state["params"], spec, cfg, x, h0, start)[0][0])
    assert np.abs(carried[3:, 0] - got[3:, 0]).min() > 1e-3
    np.testing.assert_allclose(carried[:, 1], got[:, 1], atol=1e-5, rtol=0)
    # greedy actions are the outputs' argmax; a batch of another size starts from zeros
    ctrl.reset(2, np.array([0, 1]))
    assert np.array_equal(ctrl.act(obs[0]), want[0].argmax(axis=-1))
    np.testing.assert_allclose(ctrl.outputs(obs[0][:1]), want[0][:1], atol=1e-5, rtol=0)


def test_the_update_replays_the_rollout_with_the_states_it_acted_with() -> None:
    """The sequence pass over a stored rollout reproduces every acted value and log-prob.

    Episodes end mid-rollout in some rows (terminated and truncated): the stored start flags
    and the state entering the rollout must zero the GRU exactly where acting did, and a
    step's next observation must be read with the state after that step (so where the
    episode goes on, ``V(s'_t)`` is the value acted with at ``t + 1``).
    """
    agent, _ = _scaled_agent(shared=False, n_envs=3, normalize_obs=False)
    rng = np.random.default_rng(1)
    obs = rng.normal(0.0, 1.0, (3, 3)).astype(np.float32)
    # as if a rollout ended mid-episode in every row: a state carried into this one
    agent._h = {g: rng.normal(0.0, 1.0, (3, 8)).astype(np.float32) for g in agent._h}
    agent._start[:] = False
    term = np.zeros((7, 3), bool)
    trunc = np.zeros((7, 3), bool)
    term[2, 0] = trunc[4, 1] = True
    for t in range(7):  # the 8th step would start the update
        agent.act(obs)
        nxt = rng.normal(0.0, 1.0, (3, 3)).astype(np.float32)
        agent.observe(obs, np.zeros(3), term[t], trunc[t], nxt)
        obs = nxt
    r = {k: v[:7] for k, v in agent._rollout.items()}
    assert r["start"].sum() == 2 and r["start"][3, 0] and r["start"][5, 1]
    r["h0"] = agent._h0
    assert np.abs(r["h0"]["actor"]).min() > 0
    params, spec, cfg = agent._state["params"], agent.spec, agent.config
    dist, values, _ = forward_sequence(params, spec, cfg, r["obs"], r["h0"], r["start"])
    np.testing.assert_allclose(values, r["value"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(log_prob(spec, dist, r["action"]), r["logp"], atol=1e-5, rtol=0)
    v_next = np.asarray(next_values(params, spec, cfg, r))
    goes_on = ~(term[:6] | trunc[:6])
    np.testing.assert_allclose(v_next[:6][goes_on], r["value"][1:7][goes_on], atol=1e-5)
    # where an episode ended, the next value is not the next episode's first value
    assert abs(v_next[4, 1] - r["value"][5, 1]) > 1e-3


def test_recurrent_settings_are_checked_and_feed_forward_checkpoints_are_unchanged() -> None:
    box = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    with pytest.raises(ValueError, match="n_envs=2 must be >= minibatches=4"):
        make_agent("ppo", box, gym.spaces.Discrete(2), 2, 100, 0, {"recurrent": "gru"})
    with pytest.raises(ValueError, match="recurrent"):
        make_agent("ppo", box, gym.spaces.Discrete(2), 2, 100, 0, {"recurrent": "lstm"})
    ff = make_agent("ppo", box, gym.spaces.Discrete(2), 4, 100, 0, {})
    _, arrays = ff.state()
    assert not any(k.startswith("extra/") or "/rnn/" in k for k in arrays)
    saved = ff.policy()[0]["policy"]
    assert saved["rnn_hidden"] == 0
    older = {k: v for k, v in saved.items() if k != "rnn_hidden"}  # a policy saved before
    assert PolicySpec.from_json(older) == ff.spec and not ff.spec.recurrent


# --- shared encoder ----------------------------------------------------------------------------
def _n_params(agent) -> int:
    return sum(v.size for v in flatten(agent._state["params"]).values())


def test_a_shared_encoder_holds_one_cnn_and_fewer_parameters() -> None:
    env = BrightQuadrant()
    sizes, convs = {}, {}
    for shared in (False, True):
        agent = make_agent("ppo", env.observation_space, env.action_space, 2, 100, 0,
                           {**SMALL_CNN, "hidden": (32,), "n_steps": 4, "minibatches": 2,
                            "shared_encoder": shared})  # fmt: skip
        sizes[shared] = _n_params(agent)
        convs[shared] = [k for k in flatten(agent._state["params"]) if "/convs/" in k]
        policy = flatten(agent.policy_params())
    # two CNNs + two torsos + two heads against one CNN + one torso + two heads
    assert len(convs[False]) == 2 * len(convs[True]) == 8
    assert all(k.startswith("shared/") for k in convs[True])
    assert sizes[True] < 0.6 * sizes[False], sizes
    assert {k.split("/")[0] for k in policy} == {"encoder", "head"}  # deploys as any policy


def test_ppo_with_a_shared_encoder_learns_the_image_task(tmp_path) -> None:
    """test_encoders' image task (random: 0.25) with one CNN for actor and critic."""
    settings = {**SMALL_CNN, "hidden": (32,), "n_steps": 16, "lr": 1e-3, "activation": "relu",
                "shared_encoder": True}  # fmt: skip
    train(quadrant_vec(8), "ppo", 3000, 0, tmp_path, overrides=settings, checkpoint_every=3000)
    state = read_part(latest_checkpoint(tmp_path), "state")[1]
    assert "learner/train/params/shared/encoder/parts/0/convs/0/w" in state
    assert not any(k.startswith("learner/train/params/critic/encoder") for k in state)
    env = BrightQuadrant()
    agent = AgentController(env.observation_space, env.action_space, {}, path=tmp_path)
    success = np.mean([r.episode_return for r in run_single(env, agent, 200, 7)])
    assert success >= 0.9, success
