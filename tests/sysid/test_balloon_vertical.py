"""Balloon identification of the vertical physics and of BLE's wind noise, from captures.

Devices are the simulator behind a device profile, as in ``test_balloon_sysid``; the
profile's values are read from the capture's privileged metadata for scoring only. The
episodes start where their seeds put them (no reset options), so the fitter can replay them.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest

from twinloop.core.profile import DeviceProfile, load_profile, parse_profile
from twinloop.core.registry import make_config
from twinloop.datasets import open_dataset
from twinloop.sysid import balloon_vertical as V
from twinloop.sysid.balloon import BLE_NOISE_PATH, ble_noise_residuals, fit_ble_noise

from .test_balloon_sysid import ENV_ID, capture

#: A device whose first start converges (checked): 3 hours of random commands suffice.
DEVICE_SEED = 4


def _true(values: dict, path: str) -> float:
    """The device's value (a table's mean: its estimate is the mean)."""
    return float(np.mean(values[path]))


def _fit(directory: Path, seed: int) -> tuple[V.VerticalFit, V.VerticalData]:
    ds = open_dataset(directory)
    try:
        data = V.read_vertical([ds])
    finally:
        ds.close()
    return V.fit_vertical(data, np.random.default_rng(seed)), data


@pytest.fixture(scope="module")
def vertical_capture(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, DeviceProfile]:
    """One 3-hour episode of random commands on the ``random:4`` device."""
    profile = parse_profile(f"random:{DEVICE_SEED}", make_config(ENV_ID))
    root = tmp_path_factory.mktemp("balloon_vertical") / "ds"
    return capture(root, profile, 1, seed=DEVICE_SEED, **{"task.max_steps": 60}), profile


def test_vertical_parameters_recovered_within_intervals(vertical_capture) -> None:
    """All seven replay parameters: intervals hold the truth and exclude nominal values."""
    directory, profile = vertical_capture
    fit, data = _fit(directory, 0)
    assert data.dropped == {} and data.n_observations == 61
    assert fit.converged and fit.rms < V.ACCEPT_RMS, (fit.rms, fit.starts)
    cfg = data.cfg
    fitted, reasons, samples, paths = V.estimates(fit, cfg, np.random.default_rng(1), 2000)
    assert reasons == {} and paths == list(V.VERTICAL_PATHS)
    for q, path in enumerate(V.VERTICAL_PATHS):
        est, lo, hi, _ = fitted[path]
        true = _true(profile.values, path)
        nominal = float(np.mean(getattr(cfg.vehicle, path.split(".")[1])))
        assert lo <= true <= hi, (path, lo, est, hi, true)
        if abs(math.log(true / nominal)) > 1e-3:
            assert not lo <= nominal <= hi, (path, nominal, lo, hi)
        lo_s, hi_s = np.percentile(samples[:, q], [2.5, 97.5])
        assert lo_s == pytest.approx(lo, rel=1e-4) and hi_s == pytest.approx(hi, rel=1e-4)
    table = V.fitted_table(cfg, fit)
    assert table == pytest.approx(list(profile.values[V.ACS_PATH]), rel=1e-3)


def test_a_wrong_vehicle_does_not_replay_the_telemetry(vertical_capture) -> None:
    """The nominal vehicle misses the device's telemetry by far more than its rounding."""
    directory, profile = vertical_capture
    ds = open_dataset(directory)
    try:
        data = V.read_vertical([ds])
    finally:
        ds.close()
    true = np.log(
        [
            _true(profile.values, p) / np.mean(getattr(data.cfg.vehicle, p.split(".")[1]))
            for p in V.VERTICAL_PATHS
        ]
    )
    at_truth = V.residuals(data.params, data.episodes, true)
    at_nominal = V.residuals(data.params, data.episodes, np.zeros(len(V.VERTICAL_PATHS)))
    assert math.sqrt(np.mean(at_truth**2)) < 2.0  # the float32 rounding, nothing else
    assert math.sqrt(np.mean(at_nominal**2)) > 1e3


def test_ble_noise_recovered_within_interval(tmp_path: Path) -> None:
    """BLE's noise variance of a device at 2x nominal: the interval covers it, not nominal."""
    pytest.importorskip("twinloop.sim.balloon.blevae")
    settings = {"wind.source": "ble-vae", "task.max_steps": 10}
    cfg = make_config(ENV_ID, **settings)
    true = 2.0 * cfg.wind.ble_noise_variance_m2_per_s2
    profile = DeviceProfile("noisy", {BLE_NOISE_PATH: true})
    d = capture(tmp_path / "ds", profile, 4, seed=11, **settings)
    ds = open_dataset(d)
    try:
        noise = ble_noise_residuals([ds])
    finally:
        ds.close()
    assert noise.n_episodes == 4 and noise.residual.shape == (40, 2)
    est, lo, hi, samples = fit_ble_noise(noise, np.random.default_rng(0), 1000)
    assert lo <= true <= hi, (lo, est, hi, true)
    nominal = cfg.wind.ble_noise_variance_m2_per_s2
    assert not lo <= nominal <= hi
    assert np.percentile(samples, 50) == pytest.approx(est, rel=1e-3)
    with pytest.raises(ValueError, match="fewer than"):
        fit_ble_noise(dataclasses.replace(noise, n_episodes=1), np.random.default_rng(0), 100)


@pytest.mark.slow
def test_vertical_coverage_over_random_devices(tmp_path: Path) -> None:
    """Over ``random:SEED`` devices (8-hour episodes) most fits converge and intervals cover.

    A fit that does not converge reports all seven unidentified (never a wrong interval).
    """
    cfg = make_config(ENV_ID)
    converged, hits, total = 0, 0, 0
    seeds = range(20, 32)
    for seed in seeds:
        profile = parse_profile(f"random:{seed}", cfg)
        d = capture(tmp_path / f"s{seed}", profile, 1, seed=seed, **{"task.max_steps": 160})
        fit, data = _fit(d, seed)
        fitted, reasons, _, _ = V.estimates(fit, data.cfg, np.random.default_rng(seed), 500)
        if not fit.converged:
            assert set(reasons) == set(V.VERTICAL_PATHS) and not fitted
            continue
        converged += 1
        for path, (_, lo, hi, _) in fitted.items():
            total += 1
            hits += lo <= _true(profile.values, path) <= hi
    assert converged >= 0.75 * len(seeds), converged
    assert hits / total >= 0.9, (hits, total)


def test_override_file_holds_the_fitted_table(tmp_path: Path) -> None:
    """The compressor's fitted table goes to the override file whole, and loads back."""
    from twinloop.sysid.base import ParameterEstimate, SysidResult

    cfg = make_config(ENV_ID)
    table = [1.1 * v for v in cfg.vehicle.acs_efficiency_kg_per_wh]
    est = ParameterEstimate(V.ACS_PATH, float(np.mean(table)), 0.1, 0.3, 0.165)
    result = SysidResult(
        "", 1, 1, [est], np.zeros((1, 1)), [V.ACS_PATH], "laplace",
        details={"table_overrides": {V.ACS_PATH: table}},
    )  # fmt: skip
    path = result.write_overrides(tmp_path / "fit.json")
    assert json.loads(path.read_text()) == {V.ACS_PATH: table}
    applied = load_profile(path, cfg).apply(cfg)
    assert applied.vehicle.acs_efficiency_kg_per_wh == pytest.approx(tuple(table))


@pytest.mark.slow
def test_ble_noise_coverage_over_random_devices(tmp_path: Path) -> None:
    """BLE's noise variance of ``random:SEED`` devices: every interval holds the truth."""
    pytest.importorskip("twinloop.sim.balloon.blevae")
    settings = {"wind.source": "ble-vae", "task.max_steps": 10}
    cfg = make_config(ENV_ID, **settings)
    for seed in range(40, 46):
        profile = parse_profile(f"random:{seed}", cfg)
        ds = open_dataset(capture(tmp_path / f"s{seed}", profile, 3, seed=seed, **settings))
        try:
            noise = ble_noise_residuals([ds])
        finally:
            ds.close()
        _, lo, hi, _ = fit_ble_noise(noise, np.random.default_rng(seed), 200)
        assert lo <= profile.values[BLE_NOISE_PATH] <= hi, (seed, lo, hi)
