"""``twinloop sysid`` on the quadruped: a fit recovers a known robot from in-process captures.

A "device" is the simulator run with a device profile (hidden plant values) behind the nominal
config, as ``twinloop serve robot --profile`` runs it: the capture's recorded config is the
nominal one and the profile's values sit only in the privileged metadata, which the fit uses
for scoring, never for fitting. The captures are taken as one would on a real robot for
identification: no per-episode randomisation (the twin's hidden effects off), observation
noise and observation delay as configured, the robot standing and moving its joints to random
targets around the default pose, held for a few control steps each.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mujoco", reason="the 'locomotion' extra is needed")
pytest.importorskip("scipy", reason="scipy is needed")

from twinloop.core.profile import DeviceProfile, load_profile
from twinloop.core.registry import make_config
from twinloop.sim.locomotion.velocity_config import RANDOM_EFFECT_SWITCHES

ENV_ID = "twinloop/QuadrupedVelocity-v0"
#: The capture's config: randomisation (hidden on a twin, absent on a real robot) off.
CAPTURE = {
    **dict.fromkeys(RANDOM_EFFECT_SWITCHES, False),
}
#: A robot clearly off nominal (nominal: 1.0, 0 kg, 1.0, 0 ms), inside the prior's range.
DEVICE = {
    "plant.motor_strength": 0.85,
    "plant.added_base_mass_kg": 2.0,
    "plant.joint_friction_scale": 1.6,
    "plant.actuation_delay_ms": 10.0,
}
IDENTIFIED = {
    "plant.motor_strength",
    "plant.added_base_mass_kg",
    "plant.joint_friction_scale",
    "plant.actuation_delay_ms",
}
#: Off nominal by more than the interval's half-width at 6 episodes of 1.6 s.
CLEARLY_OFF = (
    "plant.added_base_mass_kg",
    "plant.joint_friction_scale",
    "plant.actuation_delay_ms",
)
#: How close the estimates come at 6 episodes of 1.6 s (measured: 0.8 %, 0.10 kg, 0.4 %; with
#: the floor's friction held at nominal they were 7 %, 0.98 kg and 19 % off).
CLOSE = {
    "plant.motor_strength": 0.04 * 0.85,
    "plant.added_base_mass_kg": 0.5,
    "plant.joint_friction_scale": 0.1 * 1.6,
}


def capture(
    directory: Path,
    profile: DeviceProfile,
    n_episodes: int,
    seed: int,
    steps: int = 100,
    amplitude: float = 0.3,
) -> Path:
    """Record ``n_episodes`` of joint excitation on a simulated robot with ``profile``.

    The targets (:func:`twinloop.sysid.robot.excitation_actions`) are held for 4-10 control
    steps; ``amplitude`` 0.3 keeps the robot standing, 0.8 makes it stumble.
    """
    from twinloop.datasets import record
    from twinloop.sim.locomotion.velocity import make_env, make_sim_backend
    from twinloop.sysid.robot import excitation_actions

    cfg = make_config(ENV_ID, **CAPTURE, max_steps=steps)
    env = make_env(cfg, backend=make_sim_backend(profile.apply(cfg)))
    rec = record(env, directory, dataset_id="twinloop/robot-device-v0", mode="create")
    rec.writer.env_info["device_profile"] = {"name": profile.name}
    rec.writer.env_info["privileged"] = {"device_profile": profile.privileged()}
    rng = np.random.default_rng(seed)
    try:
        for e in range(n_episodes):
            rec.reset(seed=seed * 100_000 + e)
            for action in excitation_actions(rng, steps, amplitude):
                _, _, term, trunc, _ = rec.step(action)
                if term or trunc:
                    break
    finally:
        rec.close()
    return directory


def device_profile(root: Path, values: dict[str, float]) -> DeviceProfile:
    """A profile read from a JSON file, as ``--profile FILE`` reads it."""
    spec = root / "device.json"
    spec.write_text(json.dumps(values))
    return load_profile(spec, make_config(ENV_ID, **CAPTURE))


def _fit(directory: Path, **kwargs: object) -> object:
    from twinloop.sysid.base import open_datasets, true_profile
    from twinloop.sysid.robot import fit_robot

    datasets = open_datasets(ENV_ID, [directory])
    try:
        res = fit_robot(datasets, **kwargs)
        name, truth = true_profile(datasets)
    finally:
        for ds in datasets:
            ds.close()
    assert truth is not None
    return res, name, truth


@pytest.fixture(scope="module")
def device_capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 episodes (1.6 s each) of the DEVICE, its profile read from a JSON file."""
    root = tmp_path_factory.mktemp("robot_sysid")
    return capture(root / "capture", device_profile(root, DEVICE), 6, seed=1, steps=80)


def test_fit_recovers_the_robots_plant_within_its_intervals(device_capture: Path) -> None:
    res, name, truth = _fit(device_capture)
    assert name == "device" and res.n_episodes == 6 and res.n_transitions == 480
    identified = {e.path for e in res.estimates if e.identified}
    assert IDENTIFIED <= identified <= IDENTIFIED | {"plant.floor_friction"}
    for e in res.estimates:
        if e.identified:
            t = truth[e.path]
            assert e.low <= t <= e.high, f"{e.path}: {t} not in [{e.low}, {e.high}]"
            assert e.low <= e.estimate <= e.high
        else:  # reported as such, with the reason, never a value
            assert np.isnan(e.estimate) and e.note
    # the estimates come close to the robot (the floor's friction fitted with them: held at
    # nominal, the feet's creep biased them); clearly off nominal: the interval excludes the
    # simulator's value
    for path, tol in CLOSE.items():
        assert abs(res.estimate(path).estimate - truth[path]) < tol, path
    for path in CLEARLY_OFF:
        e = res.estimate(path)
        assert not e.low <= e.nominal <= e.high, f"{path}: did not move off nominal"
    floor = res.estimate("plant.floor_friction")
    assert floor.identified or "slip" in floor.note
    assert "one factor" in res.estimate("plant.mass_scale").note
    # the delay sits on the simulator's physics-step grid
    assert res.estimate("plant.actuation_delay_ms").estimate == pytest.approx(10.0)
    assert res.samples.shape == (2000, len(identified))
    assert res.sample_paths[-1] == "plant.actuation_delay_ms"
    for k, path in enumerate(res.sample_paths):
        e = res.estimate(path)
        assert e.low <= np.median(res.samples[:, k]) <= e.high


def test_fit_refuses_too_little_data_and_bad_arguments(device_capture: Path) -> None:
    from twinloop.sysid.base import open_datasets
    from twinloop.sysid.robot import MIN_EPISODES, excitation_actions, fit_robot

    rng = np.random.default_rng(0)
    acts = excitation_actions(rng, 50)
    assert acts.shape == (50, 12) and np.abs(acts).max() <= 0.3
    assert 50 // 10 <= len(np.unique(acts[:, 0])) <= 50 // 4 + 1  # held 4-10 steps each
    with pytest.raises(ValueError, match="amplitude"):
        excitation_actions(rng, 10, amplitude=1.5)

    datasets = open_datasets(ENV_ID, [device_capture])
    try:
        with pytest.raises(ValueError, match=f"{MIN_EPISODES} needed"):
            fit_robot(datasets, max_episodes=MIN_EPISODES - 1)
        with pytest.raises(ValueError, match="too few"):
            fit_robot(datasets, boot=5)
        with pytest.raises(ValueError, match="integer >= 0"):
            fit_robot(datasets, boot=-1)
    finally:
        for ds in datasets:
            ds.close()


def test_fit_refuses_captures_its_replay_does_not_follow(tmp_path: Path) -> None:
    """A stumbling robot: the open-loop replay diverges, and the fit says so, not a value."""
    from twinloop.sysid.robot import MIN_EPISODES

    profile = device_profile(tmp_path, DEVICE)
    root = capture(tmp_path / "c", profile, MIN_EPISODES, seed=2, steps=80, amplitude=0.8)
    with pytest.raises(ValueError, match="does not follow"):
        _fit(root)


@pytest.mark.slow
def test_intervals_cover_random_robots_over_repeats(tmp_path: Path) -> None:
    """24 robots drawn from the prior (every plant value off nominal): coverage per parameter.

    Measured (these seeds, 10 episodes of 2 s each; ~20 s of CPU per robot): 91 of 96
    intervals hold the truth (motor strength 24/24, added mass 21/24, joint friction 23/24,
    delay 23/24), every parameter identified; the floor's friction identified for 20 robots,
    20/20 covered. Before the floor's friction was fitted and the variance made cluster-robust:
    50 of 64 over 16 of these robots (20 of 24 over the first 6). 96 intervals cannot tell
    95 % from 90 % apart: this guards at 90 %, not a proof of nominal coverage.
    """
    from twinloop.core.profile import parse_profile
    from twinloop.sim.locomotion.profile import PRIORS

    cfg = make_config(ENV_ID, **CAPTURE)
    hits = dict.fromkeys(IDENTIFIED, 0)
    repeats = 24
    for r in range(repeats):
        profile = parse_profile(f"random:{100 + r}", cfg, PRIORS)
        root = capture(tmp_path / f"c{r}", profile, 10, seed=10 + r)
        res, _, truth = _fit(root)
        for path in IDENTIFIED:
            e = res.estimate(path)
            hits[path] += bool(e.low <= truth[path] <= e.high)  # not identified: a miss
            print(
                f"repeat {r} {path}: true {truth[path]:.4g} est {e.estimate:.4g} "
                f"[{e.low:.4g}, {e.high:.4g}]"
            )
    assert all(h >= repeats - 4 for h in hits.values()), hits
    assert sum(hits.values()) >= 0.9 * len(IDENTIFIED) * repeats, hits


@pytest.mark.slow
def test_intervals_shrink_with_more_episodes(tmp_path: Path) -> None:
    """6 vs 24 episodes of one robot: every interval narrows, the estimates stay near the truth.

    Measured: at 24 episodes the added mass comes out 2.43 kg [2.02, 2.86] for a true 2.0 and
    the joint friction 1.73 [1.53, 1.94] for 1.6 (a bias along the strength-payload ridge that
    more data does not remove; before the floor's friction was fitted: 2.34 kg [2.01, 2.70]),
    so closeness is asserted within the interval's full width, not coverage.
    """
    root = capture(tmp_path / "c", device_profile(tmp_path, DEVICE), 24, seed=3)
    few, _, truth = _fit(root, max_episodes=6)
    many, _, _ = _fit(root)
    assert many.n_episodes == 24
    for path in ("plant.motor_strength", "plant.added_base_mass_kg", "plant.joint_friction_scale"):
        a, b = few.estimate(path), many.estimate(path)
        width = b.high - b.low
        print(
            f"{path}: true {truth[path]:.4g}; 6 episodes {a.estimate:.4g} [{a.low:.4g}, "
            f"{a.high:.4g}]; 24 episodes {b.estimate:.4g} [{b.low:.4g}, {b.high:.4g}]"
        )
        assert width < 0.8 * (a.high - a.low), path
        assert abs(b.estimate - truth[path]) < width, path
