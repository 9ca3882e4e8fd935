"""``twinloop serve robot --profile``: a robot whose own physics differ from the simulator's.

The profile sets the plant's fixed values (:class:`PlantConfig`) from the prior of
:mod:`twinloop.sim.locomotion.profile`; the twin announces the profile's name, never its values,
and runs exactly the simulator with those values applied.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

pytest.importorskip("mujoco", reason="the 'locomotion' extra is needed")
pytest.importorskip("zmq", reason="the 'microscope' extra (pyzmq, msgpack) is needed")

import twinloop
from tests.hardware.robot.helpers import ID, NO_HIDDEN, TOKEN, plant_config
from twinloop.core.profile import DeviceProfile, parse_profile
from twinloop.hardware.robot import cli
from twinloop.hardware.robot.fake import SimRobot, robot_model
from twinloop.hardware.robot.server import RobotServer
from twinloop.sim.locomotion.profile import PRIORS


def _profile(seed: int = 3) -> DeviceProfile:
    return parse_profile(f"random:{seed}", plant_config(), PRIORS)


def test_random_profiles_draw_every_plant_value_within_the_prior_reproducibly() -> None:
    a, b, c = _profile(3), _profile(3), _profile(4)
    assert a.values == b.values and a.values != c.values
    assert sorted(a.values) == sorted(p.path for p in PRIORS)
    nominal = plant_config().plant
    for p in PRIORS:
        lo, hi = p.bounds(getattr(nominal, p.path.split(".")[1]))
        assert lo <= a.values[p.path] <= hi, p.path
        assert a.values[p.path] != getattr(nominal, p.path.split(".")[1])


def _episode(env: object, seed: int, steps: int = 40) -> np.ndarray:
    rng = np.random.default_rng(seed)
    env.reset(seed=seed)
    out = []
    for _ in range(steps):
        env.step(rng.uniform(-0.3, 0.3, 12).astype(np.float32))
        out.append(env.last_measurement.copy())
    return np.array(out)


def test_the_twin_runs_the_simulator_with_the_profile_applied_and_shows_only_its_name() -> None:
    profile = _profile(3)
    server = RobotServer(SimRobot(plant_config(), profile=profile), port=0, token=TOKEN).start()
    try:
        env = twinloop.make(ID, backend="robot", address=server.address, token=TOKEN, **NO_HIDDEN)
        device = _episode(env, seed=5)
        told = env.backend.robot  # everything hello told the client: the model and identity
        assert told.model == robot_model(plant_config(), server.watchdog_s)  # the nominal facts
        assert told.server["profile"] == "random:3"
        assert set(told.server) == {"kind", "model", "mujoco", "profile", "twin"}
        env.close()
    finally:
        server.stop()
    truth = twinloop.make(ID, **NO_HIDDEN, **profile.values)
    nominal = twinloop.make(ID, **NO_HIDDEN)
    np.testing.assert_allclose(device, _episode(truth, seed=5), rtol=0, atol=1e-9)
    gap = np.abs(device - _episode(nominal, seed=5)).max()
    assert gap > 1e-3  # the device is not the simulator


def test_the_plants_actuation_delay_is_the_latency_configs_millisecond_delay() -> None:
    """``plant.actuation_delay_ms`` adds physics steps to the action delay like ``latency``'s."""
    plant = twinloop.make(ID, **NO_HIDDEN, **{"plant.actuation_delay_ms": 10.0})
    lat = twinloop.make(
        ID,
        **{**NO_HIDDEN, "latency.action_enabled": True},
        latency={
            "action_delay_min_steps": 0,
            "action_delay_max_steps": 0,
            "action_delay_min_ms": 10.0,
            "action_delay_max_ms": 10.0,
        },
    )
    np.testing.assert_array_equal(_episode(plant, 2, 20), _episode(lat, 2, 20))
    assert plant.reset(seed=0)[1]["true/action_delay_ms"] == 10.0


def test_payload_and_mass_reach_the_model() -> None:
    env = twinloop.make(
        ID, **NO_HIDDEN, **{"plant.added_base_mass_kg": 2.0, "plant.mass_scale": 1.1}
    )
    env.reset(seed=0)
    m = env.backend.physics.model
    base = twinloop.make(ID, **NO_HIDDEN)
    base.reset(seed=0)
    m0 = base.backend.physics.model
    np.testing.assert_allclose(m.body_mass[2:], 1.1 * m0.body_mass[2:])
    assert m.body_mass[1] == pytest.approx(1.1 * m0.body_mass[1] + 2.0)


def test_serve_robot_takes_a_profile_and_refuses_a_bad_one(monkeypatch, tmp_path) -> None:
    seen: list[DeviceProfile | None] = []

    def serve_forever(self: RobotServer) -> None:
        seen.append(self.robot.profile)
        self.stop()

    monkeypatch.setattr(RobotServer, "serve_forever", serve_forever)
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    base = ["--port", "0", "--token", TOKEN]
    assert cli.main(parser.parse_args([*base, "--profile", "random:9"])) == 0
    assert seen[-1] is not None and seen[-1].name == "random:9"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"plant.motor_strength": 7.0}))
    assert cli.main(parser.parse_args([*base, "--profile", str(bad)])) == 2
    shown = tmp_path / "shown.json"
    shown.write_text(json.dumps({"control.kp_nm_per_rad": 40.0}))  # not the robot's physics
    assert cli.main(parser.parse_args([*base, "--profile", str(shown)])) == 2
    assert len(seen) == 1
