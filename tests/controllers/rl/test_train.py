"""Training runs: files, exact resume after an interruption, the saved agent as a controller."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("jax", reason="the 'learn' extra (jax, optax) trains agents")

import twinloop
from twinloop.cli import main
from twinloop.controllers.rl.checkpoint import checkpoints, latest_checkpoint, read_part
from twinloop.controllers.rl.train import train

from .tasks import cartpole_vec

STEM = "twinloop/StemSteer-v0"
BALLOON = "twinloop/BalloonStationKeeping-v0"
PPO_SMALL = {"hidden": (16,), "n_steps": 8, "minibatches": 2, "epochs": 2}
DQN_SMALL = {
    "hidden": (16,),
    "learning_starts": 16,
    "batch_size": 8,
    "buffer_size": 256,
    "replay_ratio": 0.5,
    "n_step": 3,
    "quantiles": 4,
    "double_q": True,
    "target_update_period": 5,
}

#: Every BBF ingredient active within 240 steps: resets every 20 updates, n annealed 5 -> 2.
BBF_SMALL = {
    **DQN_SMALL,
    "n_step": 2,
    "n_step_start": 5,
    "n_step_anneal": 10,
    "spr_steps": 2,
    "spr_dim": 8,
    "reset_interval": 20,
    "replay_ratio": 0.5,
}


class Stop(Exception):
    """Raised from the progress callback to interrupt a run."""


def _final_state(run_dir) -> dict[str, np.ndarray]:
    return read_part(latest_checkpoint(run_dir), "state")[1]


def _interrupt_at(step: int):
    def progress(row: dict) -> None:
        if row["env_step"] >= step:
            raise Stop

    return progress


@pytest.mark.parametrize(
    ("agent", "make_env", "overrides", "steps", "every", "stop_at"),
    [
        ("ppo", lambda: twinloop.make_vec(STEM, 4), PPO_SMALL, 256, 96, 160),
        ("qr-dqn", lambda: cartpole_vec(4), DQN_SMALL, 240, 80, 120),
        ("bbf", lambda: cartpole_vec(4), BBF_SMALL, 240, 80, 120),
    ],
)
def test_a_run_interrupted_and_resumed_ends_with_the_same_parameters(
    tmp_path, agent, make_env, overrides, steps, every, stop_at
) -> None:
    """Bit-exact: the checkpoint holds every random state and segments start from fresh resets."""
    whole = train(
        make_env(), agent, steps, 7, tmp_path / "whole", overrides=overrides,
        checkpoint_every=every, log_every=8,
    )  # fmt: skip
    with pytest.raises(Stop):
        train(
            make_env(), agent, steps, 7, tmp_path / "cut", overrides=overrides,
            checkpoint_every=every, log_every=8, progress=_interrupt_at(stop_at),
        )  # fmt: skip
    saved = latest_checkpoint(tmp_path / "cut")
    assert saved is not None and 0 < int(saved.name.split("-")[1]) < stop_at
    resumed = train(
        make_env(), agent, steps, 7, tmp_path / "cut", overrides=overrides,
        checkpoint_every=every, log_every=8,
    )  # fmt: skip
    assert resumed.resumed_from == int(saved.name.split("-")[1])
    assert resumed.env_steps == whole.env_steps and resumed.updates == whole.updates > 0
    a, b = _final_state(tmp_path / "whole"), _final_state(tmp_path / "cut")
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    # the metrics files agree on every finished episode
    ea = json.loads((tmp_path / "whole" / "metrics.json").read_text())["episodes"]
    eb = json.loads((tmp_path / "cut" / "metrics.json").read_text())["episodes"]
    assert ea == eb


def test_a_different_seed_trains_differently(tmp_path) -> None:
    kw = {"overrides": PPO_SMALL, "checkpoint_every": 64}
    train(twinloop.make_vec(STEM, 4), "ppo", 64, 1, tmp_path / "a", **kw)
    train(twinloop.make_vec(STEM, 4), "ppo", 64, 2, tmp_path / "b", **kw)
    a, b = _final_state(tmp_path / "a"), _final_state(tmp_path / "b")
    assert not np.array_equal(
        a["learner/train/params/actor/head/w"], b["learner/train/params/actor/head/w"]
    )


def test_a_checkpoint_of_another_run_is_refused(tmp_path) -> None:
    train(twinloop.make_vec(STEM, 4), "ppo", 32, 1, tmp_path, overrides=PPO_SMALL)
    with pytest.raises(ValueError, match=r"another run.*seed"):
        train(twinloop.make_vec(STEM, 4), "ppo", 32, 2, tmp_path, overrides=PPO_SMALL)
    with pytest.raises(ValueError, match="already holds checkpoints"):
        train(twinloop.make_vec(STEM, 4), "ppo", 32, 1, tmp_path, overrides=PPO_SMALL, resume=False)


def test_cli_trains_writes_its_files_and_the_agent_runs_as_a_controller(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    args = ["agent", "train", STEM, "--agent", "ppo", "--steps", "400", "--seed", "3",
            "--out", str(out), "--n-envs", "4", "--checkpoint-every", "100", "--quiet",
            "--set", "hidden=16", "--set", "n_steps=25", "--set", "minibatches=2",
            "--set", "sem_simplices=2", "--set", "sem_dim=4",
            "--env-set", "max_steps=20"]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "learner updates" in printed and f"agent:{out}" in printed
    assert [p.name for p in checkpoints(out)] == [
        "checkpoint-000000000300",
        "checkpoint-000000000400",
    ]
    run = json.loads((out / "run.json").read_text())
    assert run["overrides"]["hidden"] == [16] and run["env_overrides"] == {"task.max_steps": 20}
    with open(out / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert int(rows[-1]["env_step"]) == 400 and float(rows[-1]["env_steps_per_s"]) > 0
    assert "policy_loss" in rows[-1]
    with open(out / "episodes.csv") as fh:
        episodes = list(csv.DictReader(fh))
    lengths = [int(e["length"]) for e in episodes]
    assert max(lengths) == 20 and min(lengths) >= 1  # --env-set max_steps=20 applied
    pytest.importorskip("matplotlib")
    assert (out / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # the saved agent is a controller, in single and vector envs alike
    run_args = ["run", STEM, "--controller", f"agent:{out}", "--episodes", "4", "--quiet"]
    assert main([*run_args, "--json", str(tmp_path / "a.json")]) == 0
    assert main([*run_args, "--n-envs", "2", "--json", str(tmp_path / "b.json")]) == 0
    a = json.loads((tmp_path / "a.json").read_text())["episodes"]
    b = json.loads((tmp_path / "b.json").read_text())["episodes"]
    assert a == b and len(a) == 4

    # --resume on a finished run does nothing more; on an empty folder it is an error
    assert main([*args, "--resume"]) == 0
    assert "resumed from step" in capsys.readouterr().out
    assert main(["agent", "train", STEM, "--agent", "ppo", "--steps", "8", "--out",
                 str(tmp_path / "empty"), "--resume", "--quiet"]) == 2  # fmt: skip
    assert "holds no checkpoint" in capsys.readouterr().err

    # an agent refuses an env whose observations differ
    assert main(["run", BALLOON, "--controller", f"agent:{out}", "--episodes", "1", "--quiet"]) == 2
    assert "trained on observations of shape (12,)" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--agent", "dqn"], "needs a Discrete action space"),
        (["--agent", "ppo", "--set", "bogus=1"], "bogus"),
        (["--agent", "ppo", "--set", "clip=-1"], "PPOConfig.clip = -1.0"),
        (["--agent", "ppo", "--env-set", "bogus=1"], "bogus"),
    ],
)
def test_cli_errors_name_the_value(tmp_path, capsys, args, message) -> None:
    base = ["agent", "train", STEM, "--steps", "8", "--out", str(tmp_path), "--quiet"]
    assert main([*base, *args]) == 2
    assert message in capsys.readouterr().err


def test_unknown_controller_mentions_saved_agents(capsys) -> None:
    assert main(["run", STEM, "--controller", "nope", "--quiet"]) == 2
    assert "agent:DIR" in capsys.readouterr().err
    assert main(["run", STEM, "--controller", "agent:/nonexistent/x", "--quiet"]) == 2
    assert "holds no agent checkpoint" in capsys.readouterr().err


def test_agent_settings_lists_the_config(capsys) -> None:
    assert main(["agent", "settings", "qr-dqn"]) == 0
    out = capsys.readouterr().out
    assert "quantiles" in out and "32" in out and "replay_ratio" in out and "sem_tau" in out


def test_importing_the_package_and_cli_and_running_an_agent_needs_no_jax(tmp_path) -> None:
    train(twinloop.make_vec(STEM, 2), "ppo", 16, 0, tmp_path, overrides=PPO_SMALL)
    code = (
        "import sys, numpy as np, twinloop, twinloop.controllers, twinloop.controllers.rl\n"
        "from twinloop.cli import build_parser\n"
        "build_parser()\n"
        "from twinloop.controllers import make_controller\n"
        f"env = twinloop.make('{STEM}')\n"
        f"c = make_controller('agent:{tmp_path}', env)\n"
        "obs, _ = env.reset(seed=0)\n"
        "a = c.act_one(obs)\n"
        "assert env.action_space.contains(a.astype(env.action_space.dtype)), a\n"
        "print(','.join(m for m in ('jax', 'optax') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_cli_trains_bbf_reincarnated_from_a_classical_teacher_and_resumes(
    tmp_path, capsys, monkeypatch
) -> None:
    """--agent bbf --teacher station-seeker: capture, pretraining, distillation, a resume."""
    out = tmp_path / "run"
    args = ["agent", "train", BALLOON, "--agent", "bbf", "--steps", "240", "--seed", "1",
            "--out", str(out), "--n-envs", "4", "--checkpoint-every", "80", "--quiet",
            "--teacher", "station-seeker", "--teacher-episodes", "2",
            "--env-set", "max_steps=40"]  # fmt: skip
    args += [f"--set={k}={v}" for k, v in {**BBF_SMALL, "hidden": 16, "pretrain_updates": 5,
                                           "distill_updates": 50}.items()]  # fmt: skip
    assert main(args) == 0
    capsys.readouterr()
    data = out / "teacher-data"
    assert any(data.rglob("main_data.hdf5"))  # the teacher's capture, through twinloop.datasets
    state = read_part(latest_checkpoint(out), "state")
    assert state[0]["extra"]["teacher"] is True
    assert "distill_loss" in state[0]["trainer"]["history"]["pretrain"]
    written = int(state[1]["extra/written"])
    teacher_actions = state[1]["extra/teacher_action"][:written]
    assert written == 60 and (teacher_actions >= 0).all()  # every transition has one
    run = json.loads((out / "run.json").read_text())
    assert run["teacher"] == "station-seeker" and run["agent"] == "bbf"
    # a run cut after its first checkpoint and resumed ends where the whole run ended
    cut = tmp_path / "cut"
    cut_args = [a if a != str(out) else str(cut) for a in args]
    import twinloop.controllers.rl.train as tr

    real = tr.train

    def interrupted(*a, **kw):
        kw["progress"] = _interrupt_at(120)
        return real(*a, **kw)

    with monkeypatch.context() as m:
        m.setattr(tr, "train", interrupted)
        with pytest.raises(Stop):
            main(cut_args)
    assert latest_checkpoint(cut).name == "checkpoint-000000000080"
    assert main(cut_args) == 0
    a, b = _final_state(out), _final_state(cut)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    # the saved student runs as a controller
    assert main(["run", BALLOON, "--controller", f"agent:{out}", "--episodes", "1", "--quiet",
                 "--set", "max_steps=10"]) == 0  # fmt: skip
