"""Reincarnation (QDagger): the performance decay, image teacher data, an rgb student.

The performance-based decay of the distillation weight, the teacher's data packed as the
student stores its own observations, and image students reincarnated through the trainer.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest

pytest.importorskip("jax", reason="the 'learn' extra (jax, optax) trains agents")

from twinloop.cli import main
from twinloop.controllers.base import Controller
from twinloop.controllers.rl.checkpoint import latest_checkpoint, read_part
from twinloop.controllers.rl.encoders import ObsLayout
from twinloop.controllers.rl.reincarnate import (
    pack_episode_observations,
    teacher_replay,
    teacher_return,
)
from twinloop.controllers.rl.train import make_agent, train

from .tasks import BrightQuadrant, quadrant_vec

BOX = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
#: A small rgb-rearrangement-like observation: an image, token ids, a flag, privileged state.
DICT = gym.spaces.Dict(
    {
        "image": gym.spaces.Box(0, 255, (8, 8, 3), np.uint8),
        "instruction": gym.spaces.Box(0, 20, (5,), np.int64),
        "is_holding": gym.spaces.MultiBinary(1),
        "symbolic": gym.spaces.Box(-1.0, 40.0, (4,), np.float32),
    }
)


def _dqn(**overrides):
    small = {"hidden": (8,), "learning_starts": 0, "batch_size": 4, "buffer_size": 64}
    return make_agent("dqn", BOX, gym.spaces.Discrete(2), 2, 1000, 5, {**small, **overrides})


# --- QDagger's performance-based decay ---------------------------------------------------------
def test_performance_decay_holds_lambda0_at_zero_return_and_ends_at_the_teachers() -> None:
    agent = _dqn(distill_decay="performance", distill_weight=3.0, distill_updates=100)
    agent.teacher = True
    agent.set_teacher_return(8.0)
    assert agent.distill_weight() == 3.0  # no student return yet: G_S counts as 0
    agent.record_return(0.0)
    assert agent.distill_weight() == 3.0  # the student scores 0: full weight
    agent.updates = 50  # time alone does not decay it (unlike "linear")
    assert agent.distill_weight() == 3.0
    agent.record_return(float("nan"))  # no finished episode yet: ignored
    agent.record_return(2.0)
    assert agent.distill_weight() == pytest.approx(3.0 * (1 - 2.0 / 8.0))
    agent.record_return(-5.0)  # a negative return does not raise it above lambda_0
    assert agent.distill_weight() == 3.0
    agent.record_return(8.0)  # the student reaches the teacher
    assert agent.distill_weight() == 0.0
    agent.record_return(1.0)  # and the weight stays 0 (latched, as QDagger's code does)
    assert agent.distill_weight() == 0.0

    # the cutoff: 0 from distill_updates on, whatever the returns
    other = _dqn(distill_decay="performance", distill_weight=3.0, distill_updates=100)
    other.teacher = True
    other.set_teacher_return(8.0)
    other.record_return(2.0)
    other.updates = 99
    assert other.distill_weight() == pytest.approx(2.25)
    other.updates = 100
    assert other.distill_weight() == 0.0


def test_performance_decay_state_survives_a_checkpoint_and_needs_a_positive_teacher() -> None:
    agent = _dqn(distill_decay="performance", distill_updates=100)
    agent.teacher = True
    agent.set_teacher_return(4.0)
    agent.record_return(1.0)
    meta, arrays = agent.state()
    meta = json.loads(json.dumps(meta))  # what a checkpoint's JSON gives back
    fresh = _dqn(distill_decay="performance", distill_updates=100)
    fresh.load_state(meta, arrays)
    assert (fresh.teacher, fresh.teacher_return, fresh.student_return) == (True, 4.0, 1.0)
    assert fresh.distill_weight() == pytest.approx(0.75) == agent.distill_weight()
    with pytest.raises(ValueError, match=r"mean episode return is > 0, got -2"):
        fresh.set_teacher_return(-2.0)
    with pytest.raises(ValueError, match="finite"):
        fresh.set_teacher_return(float("inf"))
    _dqn().set_teacher_return(-2.0)  # the linear decay does not use it: accepted
    with pytest.raises(ValueError, match="distill_decay"):
        _dqn(distill_decay="bogus")


# --- the teacher's data packed as the student stores it ---------------------------------------
def _dict_episode(length: int, seed: int, terminated: bool) -> SimpleNamespace:
    rng = np.random.default_rng(seed)
    obs = {
        "image": rng.integers(0, 256, (length + 1, 8, 8, 3)).astype(np.uint8),
        "instruction": rng.integers(0, 21, (length + 1, 5)).astype(np.int64),
        "is_holding": rng.integers(0, 2, (length + 1, 1)).astype(np.int8),
        "symbolic": rng.normal(size=(length + 1, 4)).astype(np.float32),
    }
    ends = np.zeros(length, bool)
    ends[-1] = terminated
    return SimpleNamespace(
        observations=obs, actions=rng.integers(0, 3, length), rewards=rng.normal(size=length),
        terminations=ends, truncations=np.zeros(length, bool),
    )  # fmt: skip


def test_teacher_data_with_images_and_tokens_is_packed_into_the_students_uint8_rows() -> None:
    layout = ObsLayout(DICT)
    episodes = [_dict_episode(4, 0, True), _dict_episode(3, 1, False)]
    buf = teacher_replay(episodes, layout, {"kind": "discrete", "n": 3, "start": 0}, window=2)
    assert buf.obs.dtype == np.uint8 and buf.obs.shape[-1] == layout.width
    assert layout.width == 8 * 8 * 3 + 5 + 1  # image bytes, 5 uint8 token ids, a uint8 flag
    t = 0
    for ep in episodes:
        rows = layout.pack(ep.observations)
        for k in range(len(ep.rewards)):
            np.testing.assert_array_equal(buf.obs[t, 0], rows[k])
            np.testing.assert_array_equal(buf.next_obs[t, 0], rows[k + 1])
            assert buf.teacher_action[t, 0] == buf.action[t, 0] == ep.actions[k]
            t += 1
    assert buf.written == 7
    # the first episode ended terminated; the second's capture stopped: truncated at its end
    assert buf.terminated[3, 0] and not buf.truncated[3, 0] and buf.truncated[6, 0]
    # the image bytes come back as the frame (the symbolic entry is left out, as by the agent)
    assert "symbolic" not in layout.keys
    frame = np.asarray(buf.obs[0, 0, : 8 * 8 * 3]).reshape(8, 8, 3)
    np.testing.assert_array_equal(frame, episodes[0].observations["image"][0])
    assert teacher_return(episodes) == pytest.approx(np.mean([ep.rewards.sum() for ep in episodes]))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda o: {**o, "image": o["image"][:, :6, :6]},
         r"observation 'image' of shape \(6, 6, 3\), the student's are \(8, 8, 3\)"),
        (lambda o: {**o, "image": o["image"].astype(np.float32)},
         r"observation 'image' as float32 images; the student stores uint8"),
        (lambda o: {k: v for k, v in o.items() if k != "instruction"},
         r"lacks observation keys instruction"),
        (lambda o: o["symbolic"], r"ndarray observations; the student sees a Dict with keys"),
    ],
)  # fmt: skip
def test_teacher_data_that_does_not_fit_the_student_is_refused_precisely(change, message) -> None:
    ep = _dict_episode(3, 2, True)
    with pytest.raises(ValueError, match=message):
        pack_episode_observations(change(ep.observations), ObsLayout(DICT))
    box = ObsLayout(BOX)
    with pytest.raises(ValueError, match=r"Dict observations \(keys image"):
        pack_episode_observations(ep.observations, box)
    with pytest.raises(ValueError, match=r"observations of shape \(4,\), the student's are \(3,\)"):
        pack_episode_observations(ep.observations["symbolic"], box)
    ep.actions = np.array([0, 5, 1])
    with pytest.raises(ValueError, match=r"actions 0..5, outside the student's 0..2"):
        teacher_replay([ep], ObsLayout(DICT), {"kind": "discrete", "n": 3, "start": 0}, 2)


# --- image students reincarnated through the trainer ------------------------------------------
class BrightestQuadrant(Controller):
    """BrightQuadrant's teacher: the quadrant of the frame with the most light."""

    name = "brightest-quadrant"

    def act(self, obs: np.ndarray) -> np.ndarray:
        img = np.asarray(obs, np.float64)[..., 0]
        h = img.shape[1] // 2
        sums = [img[:, :h, :h], img[:, :h, h:], img[:, h:, :h], img[:, h:, h:]]
        return np.argmax(np.stack([q.sum(axis=(1, 2)) for q in sums], axis=1), axis=1)


def test_train_reincarnates_an_image_student_from_uint8_teacher_data(tmp_path) -> None:
    """Fast: image teacher data (no capture), pretraining, distillation, an exact resume."""
    teacher = BrightestQuadrant(None, None)
    episodes = _one_step_episodes(BrightQuadrant(), teacher, 6)
    settings = {"hidden": (16,), "cnn_channels": (4, 8), "cnn_kernels": (3, 3),
                "cnn_strides": (2, 1), "learning_starts": 8, "batch_size": 8,
                "buffer_size": 64, "pretrain_updates": 3, "distill_decay": "performance",
                "distill_updates": 1000}  # fmt: skip
    kw = {"overrides": settings, "teacher": teacher, "teacher_data": episodes,
          "teacher_name": "brightest", "checkpoint_every": 12}  # fmt: skip
    result = train(quadrant_vec(2), "dqn", 24, 0, tmp_path / "whole", **kw)
    assert result.updates > 0
    meta, arrays = read_part(latest_checkpoint(tmp_path / "whole"), "state")
    extra = meta["extra"]
    assert extra["teacher_return"] == 1.0  # the teacher always finds the square
    assert arrays["extra/obs"].dtype == np.uint8 and arrays["extra/obs"].shape[-1] == 144
    teacher_actions = arrays["extra/teacher_action"][: int(arrays["extra/written"])]
    assert (teacher_actions >= 0).all()
    recent, factor = _decay_replayed(meta["trainer"]["history"]["episodes"], 1.0)
    assert extra["student_return"] == pytest.approx(recent)
    assert extra["distill_factor"] == pytest.approx(factor)

    # cut after the first checkpoint and resumed: the decay's state and every array agree
    class Stop(Exception):
        pass

    def stop_at_16(row: dict) -> None:
        if row["env_step"] >= 16:
            raise Stop

    with pytest.raises(Stop):
        train(quadrant_vec(2), "dqn", 24, 0, tmp_path / "cut", progress=stop_at_16,
              log_every=2, **kw)  # fmt: skip
    assert latest_checkpoint(tmp_path / "cut").name == "checkpoint-000000000012"
    train(quadrant_vec(2), "dqn", 24, 0, tmp_path / "cut", **kw)
    meta_b, arrays_b = read_part(latest_checkpoint(tmp_path / "cut"), "state")
    assert meta_b["extra"] == extra
    for k in arrays:
        np.testing.assert_array_equal(arrays[k], arrays_b[k], err_msg=k)


def _decay_replayed(episodes: list, teacher: float) -> tuple[float, float]:
    """The last recent return and QDagger's factor, recomputed from a run's episode list."""
    factor, recent = 1.0, float("nan")
    for step in sorted({e[0] for e in episodes}):  # reported after each step ending episodes
        recent = float(np.mean([e[1] for e in episodes if e[0] <= step][-20:]))
        if factor > 0:
            factor = min(1.0, max(0.0, 1.0 - recent / teacher))
    return recent, factor


def _one_step_episodes(env: gym.Env, controller: Controller, n: int) -> list[SimpleNamespace]:
    """``n`` one-step episodes of ``controller`` as EpisodeData-like records (seeds 0..n-1)."""
    out = []
    for seed in range(n):
        obs, _ = env.reset(seed=seed)
        action = controller.act(obs[None])[0]
        nxt, reward, terminated, truncated, _ = env.step(action)
        out.append(SimpleNamespace(
            observations=np.stack([obs, nxt]), actions=np.array([action]),
            rewards=np.array([reward]), terminations=np.array([terminated]),
            truncations=np.array([truncated]),
        ))  # fmt: skip
    return out


# --- an rgb student reincarnated end to end ----------------------------------------------------
@pytest.mark.slow
def test_cli_reincarnates_an_rgb_rearrangement_student_from_the_oracle(tmp_path) -> None:
    """--teacher oracle on LangRearrange rgb: capture, uint8 pretraining, online, a controller."""
    env_id = "twinloop/LangRearrange-v0"
    rgb = ["observation_mode=rgb", "resolution=64", "max_steps=8"]
    out = tmp_path / "run"
    args = ["agent", "train", env_id, "--agent", "dqn", "--steps", "32", "--n-envs", "2",
            "--out", str(out), "--quiet", "--teacher", "oracle", "--teacher-episodes", "2",
            *(a for s in rgb for a in ("--env-set", s))]  # fmt: skip
    settings = {"hidden": 16, "cnn_channels": "4,8,8", "text_encoder": "mean", "token_dim": 8,
                "learning_starts": 8, "batch_size": 4, "buffer_size": 64, "pretrain_updates": 4,
                "distill_decay": "performance", "distill_updates": 1000}  # fmt: skip
    args += [f"--set={k}={v}" for k, v in settings.items()]
    assert main(args) == 0
    meta, arrays = read_part(latest_checkpoint(out), "state")
    extra = meta["extra"]
    assert extra["teacher"] is True and extra["teacher_return"] > 0  # the oracle succeeds
    assert "distill_loss" in meta["trainer"]["history"]["pretrain"]
    assert arrays["extra/obs"].dtype == np.uint8  # the student's replay holds bytes
    written = int(arrays["extra/written"])
    assert written == 16 and (arrays["extra/teacher_action"][:written] >= 0).all()
    # the decay followed the student's recent return, reported at every step ending episodes
    episodes = meta["trainer"]["history"]["episodes"]
    assert len(episodes) == 4  # 2 rows x 16 steps of 8-step episodes
    recent, factor = _decay_replayed(episodes, extra["teacher_return"])
    assert extra["student_return"] == pytest.approx(recent)
    assert extra["distill_factor"] == pytest.approx(factor)
    # the saved student runs as a controller on the rgb env
    report = tmp_path / "r.json"
    assert main(["run", env_id, "--controller", f"agent:{out}", "--episodes", "1", "--quiet",
                 *(a for s in rgb for a in ("--set", s)), "--json", str(report)]) == 0  # fmt: skip
    assert len(json.loads(report.read_text())["episodes"]) == 1
