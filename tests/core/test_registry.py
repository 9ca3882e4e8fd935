from __future__ import annotations

import subprocess
import sys

import gymnasium as gym
import pytest

import twinloop
from twinloop.core.config import ConfigError


def test_registry_lists_specs() -> None:
    assert "twinloop/StemSteer-v0" in twinloop.registry
    s = twinloop.spec("twinloop/StemSteer-v0")
    assert s.backend_names[0] == "sim"
    assert len(twinloop.registry) == len(list(twinloop.registry))


def test_unknown_id_lists_registered_ids() -> None:
    with pytest.raises(ValueError, match=r"unknown env id 'twinloop/Nope-v0'.*StemSteer-v0"):
        twinloop.make("twinloop/Nope-v0")


def test_unknown_backend_lists_valid_backends() -> None:
    with pytest.raises(ValueError, match=r"has no backend 'quantum'; valid backends: sim"):
        twinloop.make("twinloop/StemSteer-v0", backend="quantum")


def test_unknown_config_key_lists_valid_keys() -> None:
    with pytest.raises(ConfigError, match=r"no field 'voltage'.*beam_energy_kev"):
        twinloop.make("twinloop/StemSteer-v0", voltage=60)


def test_config_overrides_reach_the_env() -> None:
    env = twinloop.make("twinloop/StemSteer-v0", max_steps=3, beam_current_na=0.0)
    assert env.unwrapped.config.task.max_steps == 3
    env.reset(seed=0)
    for _ in range(3):
        _, _, term, trunc, _ = env.step(env.action_space.sample())
    assert trunc and not term, "max_steps=3 truncates at the third step (no current: no hops)"


def test_gymnasium_kwargs_reach_the_env() -> None:
    env = gym.make("twinloop/StemSteer-v0", max_steps=2)
    assert env.unwrapped.config.task.max_steps == 2
    venv = gym.make_vec("twinloop/StemSteer-v0", num_envs=2, max_steps=2)
    assert venv.unwrapped.cfg.task.max_steps == 2


def test_make_vec_rejects_unknown_backends() -> None:
    with pytest.raises(ValueError, match="valid backends: sim"):
        twinloop.make_vec("twinloop/StemSteer-v0", 2, backend="quantum")


def test_import_is_light() -> None:
    """``import twinloop`` must not import numba, JAX, MuJoCo or any simulator module."""
    code = (
        "import sys, twinloop; "
        "bad = [m for m in ('numba', 'jax', 'mujoco', 'twinloop.sim.stem.kernel', 'h5py') "
        "if m in sys.modules]; print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
