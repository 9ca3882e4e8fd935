"""SGI-style pretraining from captures: the objectives learn, the encoder drops into an agent.

Captures are recorded in-process with :func:`twinloop.datasets.record` from random actions
on Gymnasium's CartPole (whose action is identifiable from a transition: it pushes the cart's
velocity up or down) and on the one-step image task of :mod:`.tasks`.
"""

from __future__ import annotations

import argparse
import json

import gymnasium as gym
import numpy as np
import pytest

pytest.importorskip("jax", reason="the 'learn' extra (jax, optax) trains agents")

from twinloop.controllers.rl.dqn import DQNAgent, DQNConfig
from twinloop.controllers.rl.pretrain import (
    PretrainConfig,
    Pretrainer,
    encoder_lr_scaled,
    install_encoder,
    load_pretrained,
    pretrain_encoder,
    save_pretrained,
    with_objectives,
)
from twinloop.controllers.rl.pretrain_cli import register_pretrain
from twinloop.datasets import open_dataset, record

from .tasks import BrightQuadrant

#: Small and quick: 2-step SPR windows, goals within 10 steps, a fast learning rate.
QUICK = {"spr_steps": 2, "goal_window": 10, "lr": 1e-3, "proj_dim": 32, "goal_hidden": 64,
         "inverse_hidden": 64}  # fmt: skip
SMALL_CNN = {"hidden": (16,), "cnn_channels": (8,), "cnn_kernels": (3,), "cnn_strides": (2,)}
#: The cheapest graph to compile: one objective, one step.
INVERSE_ONLY = with_objectives(PretrainConfig(**{**QUICK, "spr_steps": 1}), ["inverse"])


def _capture(path, make_env, episodes: int, seed: int) -> list:
    """Record ``episodes`` episodes of uniformly random actions; return them as read back."""
    env = record(make_env(), path)
    rng = np.random.default_rng(seed)
    try:
        for e in range(episodes):
            env.reset(seed=seed + e)
            while True:
                _, _, terminated, truncated, _ = env.step(int(rng.integers(env.action_space.n)))
                if terminated or truncated:
                    break
    finally:
        env.close()
    with open_dataset(path) as data:
        return list(data)


@pytest.fixture(scope="module")
def cartpole(tmp_path_factory) -> dict:
    """Two random-policy CartPole captures: one to pretrain on, one held out."""
    root = tmp_path_factory.mktemp("captures")
    make = lambda: gym.make("CartPole-v1")  # noqa: E731
    train = _capture(root / "ns" / "train-v0", make, 30, 0)
    held = _capture(root / "ns" / "held-v0", make, 10, 1000)
    env = make()
    return {"train": train, "held": held, "root": root, "obs": env.observation_space,
            "act": env.action_space}  # fmt: skip


def test_each_objective_loss_falls_and_inverse_dynamics_beats_chance(cartpole) -> None:
    """On held-out batches (goal noise fixed), every loss falls; a_t is read from (s_t, s_t+1)."""
    trainer = Pretrainer(cartpole["obs"], cartpole["act"], PretrainConfig(**QUICK),
                         DQNConfig(hidden=(32,)), seed=0)  # fmt: skip
    data = trainer.windows(cartpole["train"])
    trainer.fit_norm(data)
    held = trainer.windows(cartpole["held"])
    rng = np.random.default_rng(1)
    batches = [trainer.batch(held, rng) for _ in range(8)]

    def evaluate() -> dict[str, float]:
        stats = [trainer.evaluate(b, seed=i) for i, b in enumerate(batches)]
        return {k: float(np.mean([s[k] for s in stats])) for k in stats[0]}

    before = evaluate()
    for _ in range(150):
        trainer.update(trainer.batch(data))
    after = evaluate()
    for key in ("spr_loss", "inverse_loss", "goal_loss"):
        assert after[key] < 0.8 * before[key], (key, before[key], after[key])
    # two actions: chance is 0.5
    assert before["inverse_accuracy"] < 0.75 < 0.9 < after["inverse_accuracy"], (before, after)


def test_cli_writes_an_encoder_that_a_fresh_dqn_takes_and_another_width_refuses(
    cartpole, tmp_path, capsys
) -> None:
    parser = argparse.ArgumentParser()
    register_pretrain(parser.add_subparsers())
    out = tmp_path / "pre"
    args = parser.parse_args(
        ["pretrain", "CartPole-v1", "--data", str(cartpole["root"] / "ns" / "train-v0"),
         "--steps", "30", "--out", str(out), "--set", "hidden=32", "--objectives",
         "spr,goal,inverse", "--quiet", "--seed", "4",
         *[a for k, v in QUICK.items() for a in ("--set", f"{k}={v}")]]
    )  # fmt: skip
    assert args.func(args) == 0
    assert "init_encoder=" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["run"]["objectives"] == ["spr", "goal", "inverse"]
    assert metrics["log"][-1]["step"] == 30 and "goal_loss" in metrics["log"][-1]
    pytest.importorskip("matplotlib")
    assert (out / "loss_curve.png").stat().st_size > 0

    pre = load_pretrained(out)
    agent = DQNAgent(cartpole["obs"], cartpole["act"], 2, 1000, DQNConfig(hidden=(32,)), 9)
    fresh = np.asarray(agent.policy_params()["encoder"]["layers"][0]["w"])
    install_encoder(agent, pre)
    got = np.asarray(agent.policy_params()["encoder"]["layers"][0]["w"])
    want = pre.params["layers"][0]["w"]
    np.testing.assert_array_equal(got, want)
    assert not np.array_equal(fresh, want)
    target = agent.learner_state()["target"]["encoder"]["layers"][0]["w"]
    np.testing.assert_array_equal(np.asarray(target), want)
    np.testing.assert_allclose(agent.norm.mean, pre.norm["mean"])
    assert agent.act(np.zeros((2, 4), np.float32)).shape == (2,)

    wider = DQNAgent(cartpole["obs"], cartpole["act"], 2, 1000, DQNConfig(hidden=(48,)), 9)
    with pytest.raises(ValueError, match=r"hidden: pretrained \(32,\), agent \(48,\)"):
        install_encoder(wider, pre)


def test_train_starts_from_the_encoder_named_by_init_encoder(cartpole, tmp_path) -> None:
    """``--set init_encoder=DIR`` wires a pretrained encoder into a fresh run (no update yet)."""
    from twinloop.controllers.rl.checkpoint import latest_checkpoint, read_part
    from twinloop.controllers.rl.train import train

    from .tasks import cartpole_vec

    pre, _ = pretrain_encoder([cartpole["train"]], cartpole["obs"], cartpole["act"],
                              INVERSE_ONLY, DQNConfig(hidden=(32,)), 5, 0)  # fmt: skip
    save_pretrained(tmp_path / "pre", pre)
    overrides = {"hidden": (32,), "learning_starts": 10_000, "init_encoder": str(tmp_path / "pre")}
    run = tmp_path / "run"
    train(cartpole_vec(2), "dqn", 40, 0, run, overrides=overrides, checkpoint_every=40)
    _, arrays = read_part(latest_checkpoint(run), "policy")
    got = next(v for k, v in arrays.items() if k.endswith("encoder/layers/0/w"))
    np.testing.assert_array_equal(got, pre.params["layers"][0]["w"])
    with pytest.raises(ValueError, match=r"hidden: pretrained \(32,\), agent \(48,\)"):
        train(cartpole_vec(2), "dqn", 40, 0, tmp_path / "wide", checkpoint_every=40,
              overrides={**overrides, "hidden": (48,)})  # fmt: skip


def test_image_captures_pretrain_an_encoder_for_an_image_agent(tmp_path) -> None:
    """Images are stored and encoded as the agent would (uint8 rows, the CNN of its config)."""
    episodes = _capture(tmp_path / "ns" / "quad-v0", BrightQuadrant, 20, 0)
    env = BrightQuadrant()
    cfg = DQNConfig(**SMALL_CNN)
    pre, history = pretrain_encoder([episodes], env.observation_space, env.action_space,
                                    INVERSE_ONLY, cfg, 5, 0)  # fmt: skip
    assert history[-1]["step"] == 5 and np.isfinite(history[-1]["loss"])
    save_pretrained(tmp_path / "pre", pre)
    loaded = load_pretrained(tmp_path / "pre")
    agent = DQNAgent(env.observation_space, env.action_space, 1, 100, cfg, 0)
    install_encoder(agent, loaded)
    w = agent.policy_params()["encoder"]["parts"][0]["convs"][0]["w"]
    np.testing.assert_array_equal(np.asarray(w), pre.params["parts"][0]["convs"][0]["w"])
    other = DQNAgent(env.observation_space, env.action_space, 1, 100,
                     DQNConfig(**{**SMALL_CNN, "cnn_channels": (4,)}), 0)  # fmt: skip
    with pytest.raises(ValueError, match=r"cnn_channels: pretrained \(8,\), agent \(4,\)"):
        install_encoder(other, loaded)


def test_objectives_switch_off_by_weight_and_encoder_lr_scale_slows_the_encoder_alone() -> None:
    cfg = with_objectives(PretrainConfig(), ["goal"])
    assert cfg.objectives == ("goal",) and cfg.spr_weight == 0 == cfg.inverse_weight
    with pytest.raises(ValueError, match=r"unknown objective.*reward; valid: spr, goal, inverse"):
        with_objectives(PretrainConfig(), ["goal", "reward"])
    with pytest.raises(ValueError, match="goal_weight and inverse_weight are all 0"):
        PretrainConfig(spr_weight=0.0, goal_weight=0.0, inverse_weight=0.0)

    import jax.numpy as jnp
    import optax

    params = {"encoder": {"w": jnp.ones(3)}, "head": {"w": jnp.ones(2)}}
    grads = {"encoder": {"w": jnp.full(3, 0.5)}, "head": {"w": jnp.full(2, 0.5)}}
    opt = encoder_lr_scaled(optax.adam(0.1), 0.1)
    changes, _ = opt.update(grads, opt.init(params), params)
    np.testing.assert_allclose(changes["head"]["w"], -0.1, rtol=1e-4)
    np.testing.assert_allclose(changes["encoder"]["w"], -0.01, rtol=1e-4)
    with pytest.raises(ValueError, match=r"encoder_lr_scale must lie in \[0, 1\], got 2"):
        encoder_lr_scaled(optax.adam(0.1), 2.0)


#: test_learning's CartPole settings for DQN (learns within 10k env steps).
CARTPOLE = {"hidden": (64, 64), "lr": 1e-3, "replay_ratio": 0.5, "learning_starts": 500,
            "target_update_period": 100, "eps_decay_fraction": 0.2, "n_step": 3}  # fmt: skip


def _steps_to_reach(run_dir, threshold: float, window: int = 10) -> float:
    """First env step at which the mean of the last ``window`` episode returns >= threshold."""
    episodes = json.loads((run_dir / "metrics.json").read_text())["episodes"]
    returns = [e["return"] for e in episodes]
    for i in range(window, len(returns) + 1):
        if np.mean(returns[i - window : i]) >= threshold:
            return float(episodes[i - 1]["env_step"])
    return float("inf")


@pytest.mark.slow
def test_dqn_fine_tuned_from_a_pretrained_encoder_against_scratch(tmp_path, monkeypatch) -> None:
    """CartPole: encoder pretrained on 100 random-policy episodes, then DQN on 5 seeds each.

    Measures the env steps until the mean of 10 episodes reaches 100 (random: about 22)
    from scratch, from a fresh encoder whose normaliser starts from the captures' statistics
    (a control: :func:`install_encoder` installs those too), and from the pretrained encoder,
    at the same seeds and settings (figures printed with -s). Seen on one loaded CPU, seeds
    0-4: scratch 3548, never, 3524, never, 7428; normaliser only 2592, 3788, 2252, never,
    2960; pretrained 2444, 9376, 2348, 8368, 2852. So the pretrained agent beats scratch,
    but about as much as the normaliser alone does: on this task the encoder itself adds
    little. Asserted: pretrained beats scratch (median, and reaches 100 at least as often).
    """
    from twinloop.controllers.rl import train as train_module
    from twinloop.core.config import override

    from .tasks import cartpole_vec

    episodes = _capture(tmp_path / "ns" / "cp-v0", lambda: gym.make("CartPole-v1"), 100, 0)
    env = gym.make("CartPole-v1")
    cfg = override(DQNConfig(), **CARTPOLE)
    pre, history = pretrain_encoder([episodes], env.observation_space, env.action_space,
                                    PretrainConfig(), cfg, 3000, 0)  # fmt: skip
    build = train_module.make_agent

    def norm_only(*args, **kwargs):
        agent = build(*args, **kwargs)
        agent.norm.load_arrays(pre.norm)
        return agent

    save_pretrained(tmp_path / "pre", pre)
    pretrained = {**CARTPOLE, "init_encoder": str(tmp_path / "pre")}  # the real wiring
    steps = {"scratch": [], "norm_only": [], "pretrained": []}
    for name, make in zip(steps, (build, norm_only, build), strict=True):
        monkeypatch.setattr(train_module, "make_agent", make)
        for seed in range(5):
            run = tmp_path / f"{name}-{seed}"
            overrides = pretrained if name == "pretrained" else CARTPOLE
            train_module.train(cartpole_vec(4), "dqn", 10_000, seed, run, overrides=overrides,
                               checkpoint_every=10_000)  # fmt: skip
            steps[name].append(_steps_to_reach(run, 100.0))
    print("pretraining, last log:", {k: round(v, 3) for k, v in history[-1].items()})
    print("env steps to a mean return of 100 over 10 episodes:", steps)
    assert np.median(steps["pretrained"]) < np.median(steps["scratch"]), steps
    assert sum(np.isfinite(steps["pretrained"])) >= sum(np.isfinite(steps["scratch"])), steps
