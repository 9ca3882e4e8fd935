"""``twinloop serve skills --profile``: a robot whose skills fail and whose eyes err unseen."""

from __future__ import annotations

import argparse
import json

import pytest

pytest.importorskip("zmq", reason="the 'microscope' extra (pyzmq, msgpack) is needed")

import twinloop
from tests.hardware.skills.helpers import ID, TOKEN, client
from twinloop.controllers import make_controller
from twinloop.core.profile import DeviceProfile, parse_profile, priors_for
from twinloop.hardware.skills import cli
from twinloop.hardware.skills.fake import SimSkillsRobot, SkillsDeviceConfig
from twinloop.hardware.skills.protocol import skill_of
from twinloop.hardware.skills.server import SkillsServer
from twinloop.sim.rearrange.profile import PRIORS


def test_random_profiles_draw_every_imperfection_within_the_prior() -> None:
    nominal = SkillsDeviceConfig.of({"nav": 0.05}, 0.0)
    assert priors_for(nominal) == PRIORS
    a, b = parse_profile("random:1", nominal, PRIORS), parse_profile("random:1", nominal, PRIORS)
    assert a.values == b.values
    assert a.values != parse_profile("random:2", nominal, PRIORS).values
    for p in PRIORS:
        lo, hi = p.bounds(getattr(nominal, p.path))
        assert lo <= a.values[p.path] <= hi and a.values[p.path] != getattr(nominal, p.path)


def _oracle_plan(n: int = 8) -> list[tuple[str, str]]:
    """The oracle's first skills on training episode 0, as (skill, target)."""
    env = twinloop.make(ID)
    oracle = make_controller("oracle", env)
    obs, _ = env.reset(seed=1, options={"backend": {"split": "train", "episode": 0}})
    plan = []
    for _ in range(n):
        a = int(oracle.act_one(obs))
        plan.append(skill_of(a))
        obs, _, term, trunc, _ = env.step(a)
        if term or trunc:
            break
    return plan


def test_a_profiled_twin_fails_as_its_profile_says_and_shows_only_its_name() -> None:
    plan = _oracle_plan()
    first_pick = next(k for k, (skill, _) in enumerate(plan) if skill == "pick")
    clumsy = DeviceProfile("clumsy", {"pick_failure": 1.0})
    outcomes = {}
    for name, profile in (("nominal", None), ("clumsy", clumsy)):
        robot = SimSkillsRobot(twinloop.make_config(ID), hidden_seed=0, profile=profile)
        robot.reset("train", 0, 1)
        outcomes[name] = [robot.execute(k, *plan[k])[0] for k in range(first_pick + 1)]
    assert all(outcomes["nominal"])  # the oracle's skills all work on the nominal robot
    assert outcomes["clumsy"] == [True] * first_pick + [False]  # the pick fails, as profiled
    server = SkillsServer(
        SimSkillsRobot(twinloop.make_config(ID), hidden_seed=0, profile=clumsy),
        port=0,
        token=TOKEN,
    ).start()
    try:
        c = client(server.address)
        assert c.server["profile"] == "clumsy"
        assert "pick_failure" not in json.dumps(c.server)  # the name, never the values
        c.close()
    finally:
        server.stop()


def test_serve_skills_takes_a_profile_and_refuses_a_bad_one(monkeypatch, tmp_path) -> None:
    seen: list[tuple] = []

    def serve_forever(self: SkillsServer) -> None:
        seen.append((self.robot.profile, dict(self.robot.failure_rates)))
        self.stop()

    monkeypatch.setattr(SkillsServer, "serve_forever", serve_forever)
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    base = ["--port", "0", "--token", TOKEN]
    assert cli.main(parser.parse_args([*base, "--profile", "random:4"])) == 0
    profile, rates = seen[-1]
    assert profile.name == "random:4" and rates["pick"] == profile.values["pick_failure"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"pick_failure": 2.0}))
    assert cli.main(parser.parse_args([*base, "--profile", str(bad)])) == 2
    assert len(seen) == 1
