"""The transfer report: controllers built on the nominal simulator meet a device, then its data.

``twinloop transfer twinloop/StemSteer-v0 --profile random:7 --out DIR`` answers the question
sim-to-real work is about, on a microscope twin whose physics differ from the simulator's in
ways the user is not told (a device profile, :mod:`twinloop.core.profile`)::

    nominal   random dwells on the nominal simulator -> a rate model (what one would build
              before touching the instrument)
    gap       each controller on the simulator and on the device, same seeds (same goals)
    identify  random dwells captured on the device -> a rate model learned from the device,
              and the simulator's parameters fitted to the same capture (``twinloop sysid``)
    closed    each controller on the device again, with the model learned from the device;
              and on the simulator calibrated with the fitted parameters

Every comparison is paired by seed (:func:`~twinloop.eval.compare.paired_difference`): the
gap of a controller is its success on the device minus on the simulator, episode by episode.
``greedy-neighbor`` uses no model, so its gap is the physics alone; ``greedy-learned`` and
``planner`` aim the beam where the model puts the optimum, so a model of the wrong device
costs them success, and a model of the right one gives it back.

Files in ``DIR``: the two captures (``nominal-capture``, ``device-capture``: Minari layout, the
device's profile values in the capture's privileged section so that identification can be
scored), the two models, ``sysid.json`` (when fitted), ``results.json``, ``report.md`` and
``figures/transfer.png``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from twinloop.demo import ENV_ID, capture, identify, microscope_twin, train

#: Controllers the report compares.
CONTROLLERS = ("greedy-neighbor", "greedy-learned", "planner")
#: Controllers that take a rate model.
MODEL_CONTROLLERS = ("greedy-learned", "planner")

Progress = Callable[[str, int, int], None]


@dataclasses.dataclass(frozen=True, kw_only=True)
class TransferConfig:
    """What the transfer report does (defaults: a few minutes on 2 cores).

    Attributes:
        profile: The device's hidden physics, as ``twinloop serve microscope --profile``
            takes it (``random:SEED`` or a JSON file).
        out: Output folder.
        transitions: Random dwells in each capture (nominal simulator, device).
        episodes: Episodes per controller and condition (episode ``e``: seed ``seed + e``).
        goal_hops: Hops from the Si to its goal.
        seed: Seed of captures, training and episodes.
        train_steps: Optimiser steps of each rate model.
        ensemble: Models in each rate-model ensemble.
        controllers: Controllers compared.
        address: A running twin started with this profile (None: start one on loopback).
        sim_backend: The simulator the controllers run on: ``sim`` (exact measurements,
            fast) or ``sim-image`` (frames and perception, as the device's twin reports).
        sysid: Also fit the simulator's parameters to the device capture (``twinloop.sysid``)
            and run the controllers on the calibrated simulator.
        overwrite: Replace the contents of ``out``.
    """

    profile: str = "random:7"
    out: str = "twinloop-transfer"
    transitions: int = 2000
    episodes: int = 60
    goal_hops: int = 5
    seed: int = 0
    train_steps: int = 2000
    ensemble: int = 5
    controllers: tuple[str, ...] = CONTROLLERS
    address: str | None = None
    sim_backend: str = "sim"
    sysid: bool = True
    overwrite: bool = False

    def __post_init__(self) -> None:
        """Check the counts and names before anything runs."""
        if self.sim_backend not in ("sim", "sim-image"):
            raise ValueError(f"sim_backend {self.sim_backend!r}: give 'sim' or 'sim-image'")
        _check_settings(self, ("transitions", "episodes", "goal_hops", "train_steps", "ensemble"))


def _episodes(
    backend: str,
    controller: str,
    model: str | Path | None,
    cfg: TransferConfig,
    address: str | None,
    overrides: Mapping[str, Any],
    label: str,
    progress: Progress | None,
) -> list[Any]:
    """``controller`` for ``cfg.episodes`` episodes on ``backend`` (seeds from ``cfg.seed``)."""
    import twinloop
    from twinloop.controllers import make_controller
    from twinloop.eval.rollout import run_single

    options = {"address": address} if backend == "remote" else {}
    env = twinloop.make(ENV_ID, backend=backend, goal_hops=cfg.goal_hops, **options, **overrides)
    try:
        kwargs = {"model": str(model)} if controller in MODEL_CONTROLLERS else {}
        ctrl = make_controller(controller, env, **kwargs)
        report = (lambda d, n: progress(label, d, n)) if progress else None
        return run_single(env, ctrl, cfg.episodes, cfg.seed + 100_000, report)
    finally:
        env.close()


def _rate(results: Sequence[Any]) -> dict[str, Any]:
    from twinloop.eval.bootstrap import bootstrap_ci
    from twinloop.eval.rollout import wilson_interval

    wins = sum(bool(r.success) for r in results)
    lo, hi = wilson_interval(wins, len(results))
    times = np.array([r.time_s for r in results], dtype=np.float64)
    return {
        "success_rate": wins / len(results),
        "ci95": [lo, hi],
        "mean_time_s": float(times.mean()),
        "mean_time_ci95": list(bootstrap_ci(times)),
        "episodes": len(results),
    }


#: What the STEM gaps compare, per episode: success (a fraction) and the microscope time an
#: episode took (s): a device slower than the simulator shows in time before it shows in
#: success.
STEM_MEASURES: dict[str, Callable[[Any], float]] = {
    "success": lambda r: float(r.success),
    "time_s": lambda r: r.time_s,
}


def _paired(
    a: Sequence[Any], b: Sequence[Any], measures: Mapping[str, Callable[[Any], float]]
) -> dict[str, dict[str, float]]:
    """``a`` minus ``b`` in each of ``measures``, paired by seed, with 95 % bootstrap intervals."""
    from twinloop.eval.compare import paired_difference

    if [r.seed for r in a] != [r.seed for r in b]:
        raise ValueError("a transfer comparison ran different seeds: this is a bug")
    out = {}
    for key, get in measures.items():
        i = paired_difference([get(r) for r in a], [get(r) for r in b])
        out[key] = {"point": i.point, "low": i.low, "high": i.high}
    return out


def _check_settings(cfg: Any, counts: Sequence[str], agents: bool = False) -> None:
    """Every field in ``counts`` is >= 1 and every controller is known (``agent:DIR`` too)."""
    from twinloop.controllers import AGENT_PREFIX
    from twinloop.controllers import CONTROLLERS as KNOWN

    for name in counts:
        value = getattr(cfg, name)
        if int(value) < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    unknown = [
        c for c in cfg.controllers if c not in KNOWN and not (agents and c.startswith(AGENT_PREFIX))
    ]
    if unknown or not cfg.controllers:
        also = f" or {AGENT_PREFIX}DIR" if agents else ""
        raise ValueError(
            f"controllers {unknown or '()'}: give at least one of {', '.join(KNOWN)}{also}"
        )


def _out_dir(cfg: Any) -> Path:
    """``cfg.out``, created; refused when it holds files and ``cfg.overwrite`` is off."""
    out = Path(cfg.out)
    if out.exists() and any(out.iterdir()) and not cfg.overwrite:
        raise FileExistsError(f"{out} exists and is not empty; pass --overwrite or --out DIR")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _conditions(
    runs: Mapping[tuple[str, str], Sequence[Any]], summary: Callable[[Sequence[Any]], Any]
) -> dict[str, dict[str, Any]]:
    """``{condition: {controller: summary(episodes)}}`` in the order the runs were made."""
    out: dict[str, dict[str, Any]] = {}
    for (condition, c), eps in runs.items():
        out.setdefault(condition, {})[c] = summary(eps)
    return out


def run_transfer(cfg: TransferConfig, progress: Progress | None = None) -> dict[str, Any]:
    """Capture, learn, evaluate before and after identification, and report.

    Returns:
        What ``results.json`` holds: per condition and controller the success rate with its
        Wilson interval, and the paired gaps (device minus simulator) before and after.

    Raises:
        FileExistsError: ``out`` holds files and ``overwrite`` is off.
        ValueError: A bad profile (the message names it) or a bad setting.
    """
    import twinloop
    from twinloop.core.profile import parse_profile
    from twinloop.eval.stem import rate_model_errors

    started = time.time()
    out = _out_dir(cfg)
    nominal_cfg = twinloop.make_config(ENV_ID)
    profile = parse_profile(cfg.profile, nominal_cfg)
    device_cfg = profile.apply(nominal_cfg)

    nominal_capture, device_capture = out / "nominal-capture", out / "device-capture"
    nominal_model, device_model = out / "nominal-model.npz", out / "device-model.npz"
    capture("sim", cfg.transitions, nominal_capture, seed=cfg.seed, overwrite=cfg.overwrite,
            progress=progress)  # fmt: skip
    train(nominal_capture, nominal_model, steps=cfg.train_steps, ensemble=cfg.ensemble,
          seed=cfg.seed, progress=progress)  # fmt: skip

    results: dict[str, Any] = {"profile": profile.name, "conditions": {}, "gaps": {}}
    conditions = results["conditions"]
    runs: dict[tuple[str, str], list[Any]] = {}
    twin = microscope_twin(["--profile", cfg.profile]) if cfg.address is None else None
    with twin if twin is not None else contextlib.nullcontext(cfg.address) as address:
        for c in cfg.controllers:
            runs["sim, nominal model", c] = _episodes(
                cfg.sim_backend, c, nominal_model, cfg, None, {}, f"sim {c}", progress
            )
            runs["device, nominal model", c] = _episodes(
                "remote", c, nominal_model, cfg, address, {}, f"device {c}", progress
            )
        capture("remote", cfg.transitions, device_capture, address=address,
                seed=cfg.seed + 1, overwrite=cfg.overwrite, progress=progress,
                device_profile=profile)  # fmt: skip
        train(device_capture, device_model, steps=cfg.train_steps, ensemble=cfg.ensemble,
              seed=cfg.seed, progress=progress)  # fmt: skip
        for c in cfg.controllers:
            if c in MODEL_CONTROLLERS:
                runs["device, device model", c] = _episodes(
                    "remote", c, device_model, cfg, address, {}, f"device {c} (learned)", progress
                )
    calibrated = None
    if cfg.sysid:
        calibrated, results["sysid"] = identify(ENV_ID, device_capture, out / "sysid.json")
    else:
        results["sysid"] = {"skipped": "switched off (--no-sysid)"}
    if calibrated is not None:
        for c in cfg.controllers:
            model = device_model if c in MODEL_CONTROLLERS else None
            runs["calibrated sim, device model", c] = _episodes(
                cfg.sim_backend, c, model, cfg, None, calibrated, f"calibrated sim {c}", progress
            )
    for (condition, c), eps in runs.items():
        conditions.setdefault(condition, {})[c] = _rate(eps)
    for c in cfg.controllers:
        device_nominal = runs["device, nominal model", c]
        gaps = {"before": _paired(device_nominal, runs["sim, nominal model", c], STEM_MEASURES)}
        if ("device, device model", c) in runs:
            gaps["closed_by_device_model"] = _paired(
                runs["device, device model", c], device_nominal, STEM_MEASURES
            )
        if ("calibrated sim, device model", c) in runs:
            device = runs.get(("device, device model", c), device_nominal)
            gaps["after_calibration"] = _paired(
                device, runs["calibrated sim, device model", c], STEM_MEASURES
            )
        results["gaps"][c] = gaps
    from twinloop.controllers.rates import RateModel

    results["rate_models"] = {
        name: rate_model_errors(RateModel.load(path), device_cfg)
        for name, path in (("nominal", nominal_model), ("device", device_model))
    }
    results["wall_time_s"] = time.time() - started
    results["config"] = dataclasses.asdict(cfg)
    _write_report(out, results, runs)
    return results


def _fmt_gap(g: Mapping[str, Mapping[str, float]]) -> str:
    s, t = g["success"], g["time_s"]
    return (
        f"{s['point']:+.2f} [{s['low']:+.2f}, {s['high']:+.2f}]; "
        f"{t['point']:+.0f} s [{t['low']:+.0f}, {t['high']:+.0f}]"
    )


def _write_report(out: Path, results: dict[str, Any], runs: Mapping[tuple[str, str], Any]) -> None:
    from twinloop.core.text import table
    from twinloop.eval.report import write_json

    figures = out / "figures"
    figures.mkdir(exist_ok=True)
    write_json(results, out / "results.json")
    conditions = results["conditions"]
    controllers = list(results["gaps"])
    rows = []
    for condition, per in conditions.items():
        for c in controllers:
            if c in per:
                r = per[c]
                lo, hi = r["ci95"]
                t_lo, t_hi = r["mean_time_ci95"]
                rows.append(
                    (
                        condition,
                        c,
                        f"{r['success_rate']:.2f} [{lo:.2f}, {hi:.2f}]",
                        f"{r['mean_time_s']:.0f} [{t_lo:.0f}, {t_hi:.0f}]",
                    )
                )
    success = table(
        rows, ("condition", "controller", "success (95% Wilson)", "mean episode time, s (95% CI)")
    )
    gap_rows = []
    for c, g in results["gaps"].items():
        gap_rows.append(
            (
                c,
                _fmt_gap(g["before"]),
                _fmt_gap(g["closed_by_device_model"]) if "closed_by_device_model" in g else "-",
                _fmt_gap(g["after_calibration"]) if "after_calibration" in g else "-",
            )
        )
    gaps = table(
        gap_rows,
        ("controller", "device - sim (nominal)", "device model - nominal", "device - calib. sim"),
    )
    models = []
    for name, e in results["rate_models"].items():
        models.append(
            (
                name,
                f"{e['optimum_error_angstrom']:.3f}",
                f"{100 * e['rate_map_error']:.1f} %",
                f"{e['peak_ratio']:.2f}",
            )
        )
    model_table = table(models, ("rate model", "optimum error (A)", "rate-map error", "peak ratio"))
    fig = _plot(results, figures / "transfer.png", "success_rate", "ci95",
                "success rate (95% Wilson CI)", "nominal simulator")  # fmt: skip
    sysid_text = _sysid_text(results.get("sysid", {}))
    text = f"""# twinloop transfer: nominal simulator -> device profile {results["profile"]!r}

Wall time: {results["wall_time_s"]:.0f} s. Every controller ran the same seeds (the same
goals) in every condition; success rates carry 95 % Wilson intervals and the gaps are paired
differences (95 % bootstrap over episodes) of success and of the microscope time an episode
took, written `success; time`. A gap interval without 0 is a real difference at this sample
size.

## Success per condition

```
{success}
```

## Gaps

`device - sim (nominal)`: what the device costs a controller built on the nominal simulator.
`device model - nominal`: on the device, the model learned from the device's capture minus
the nominal model (the gap closed). `device - calib. sim`: the device minus the simulator
calibrated with the fitted parameters (the residual sim-vs-device gap).

```
{gaps}
```

## Rate models against the device's true rates

```
{model_table}
```

{sysid_text}

![transfer]({fig.relative_to(out)})
"""
    (out / "report.md").write_text(text)


def _g(value: float | None) -> str:
    """A number in 4 significant digits, or ``-`` for a missing one (NaN is stored as null)."""
    return "-" if value is None else f"{value:.4g}"


def _sysid_text(sysid: Mapping[str, Any]) -> str:
    """The identification section: each parameter's estimate, interval and true value."""
    from twinloop.core.text import table

    if "skipped" in sysid or not sysid:
        return f"Simulator parameters were not fitted: {sysid.get('skipped', 'not asked')}."
    rows = []
    for e in sysid["estimates"]:
        if not e["identified"]:
            rows.append((e["path"], "not identified", "-", "-", e["note"][:60]))
            continue
        covers = {True: "yes", False: "NO", None: "-"}[e["covers"]]
        interval = f"[{_g(e['low'])}, {_g(e['high'])}]"
        rows.append((e["path"], _g(e["estimate"]), interval, _g(e["true"]), covers))
    header = ("parameter", "estimate", "95% interval", "true (profile)", "covered")
    return (
        f"Simulator parameters fitted to the device capture ({sysid['n_episodes']} episodes, "
        f"{sysid['method'].split(':')[0]}), written to `sysid.json`:\n\n```\n"
        f"{table(rows, header)}\n```"
    )


def _plot(
    results: Mapping[str, Any], path: Path, key: str, ci_key: str, ylabel: str, title: str
) -> Path:
    """One group of bars per controller, one bar per condition, with their intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conditions = list(results["conditions"])
    controllers = list(results["gaps"])
    fig, ax = plt.subplots(figsize=(8, 4.2))
    width = 0.8 / max(1, len(conditions))
    for k, condition in enumerate(conditions):
        per = results["conditions"][condition]
        shown = [(i, per[c]) for i, c in enumerate(controllers) if c in per]
        xs = [i + (k - (len(conditions) - 1) / 2) * width for i, _ in shown]
        ys = np.array([r[key] for _, r in shown])
        ci = np.array([r[ci_key] for _, r in shown]).reshape(-1, 2)
        ax.bar(xs, ys, width=width, label=condition, alpha=0.8)
        err = np.clip([ys - ci[:, 0], ci[:, 1] - ys], 0, None)
        ax.errorbar(xs, ys, yerr=err, fmt="none", color="k", capsize=3)
    ax.set_xticks(range(len(controllers)), controllers)
    ax.set_ylabel(ylabel)
    ax.set_title(f"{title} vs device profile {results['profile']!r}", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --- the balloon ---------------------------------------------------------------------------------
BALLOON_ID = "twinloop/BalloonStationKeeping-v0"
#: Balloon controllers the report compares.
BALLOON_CONTROLLERS = ("station-seeker", "altitude-hold")


@dataclasses.dataclass(frozen=True, kw_only=True)
class BalloonTransferConfig:
    """The balloon's transfer report: a controller tuned on generative winds meets a device.

    Attributes:
        profile: The vehicle's hidden physics (``twinloop serve balloon --profile``).
        out: Output folder.
        episodes: Flights per controller and condition (flight ``e``: seed ``seed + e``).
        capture_episodes: Flights of ``station-seeker`` captured on the device for
            identification.
        max_steps: Steps of 3 minutes per flight (960: BLE's 48 h).
        device_winds: The device's atmosphere: ``ble-vae`` (BLE's wind model, needs its
            wheel) or ``generative``. The forecast the controller reads describes the
            device's atmosphere, as a weather service's would.
        seed: Seed of everything.
        controllers: Controllers compared.
        sysid: Fit the simulator's vehicle to the device capture and fly the calibrated one.
        overwrite: Replace the contents of ``out``.
    """

    profile: str = "random:7"
    out: str = "twinloop-transfer"
    episodes: int = 20
    capture_episodes: int = 10
    max_steps: int = 960
    device_winds: str = "ble-vae"
    seed: int = 0
    controllers: tuple[str, ...] = BALLOON_CONTROLLERS
    sysid: bool = True
    overwrite: bool = False

    def __post_init__(self) -> None:
        """Check the counts, the winds and the controller names before anything runs."""
        if self.device_winds not in ("ble-vae", "generative"):
            raise ValueError(
                f"device_winds {self.device_winds!r}: give 'ble-vae' (BLE's wind model) or "
                "'generative'"
            )
        _check_settings(self, ("episodes", "capture_episodes", "max_steps"))


def _run_controller(
    env: Any, controller: str, cfg: Any, label: str, progress: Progress | None
) -> list[Any]:
    """``controller`` for ``cfg.episodes`` episodes of ``env`` (seeds from ``cfg.seed``), closed."""
    from twinloop.controllers import make_controller
    from twinloop.eval.rollout import run_single

    try:
        ctrl = make_controller(controller, env)
        report = (lambda d, n: progress(label, d, n)) if progress else None
        return run_single(env, ctrl, cfg.episodes, cfg.seed + 100_000, report)
    finally:
        env.close()


def _twr(results: Sequence[Any]) -> dict[str, Any]:
    from twinloop.eval.bootstrap import bootstrap_ci

    twr = np.array([r.metrics.get("twr50", np.nan) for r in results], dtype=np.float64)
    return {
        "twr50": float(np.mean(twr)),
        "twr50_ci95": list(bootstrap_ci(twr)),
        "episodes": len(results),
    }


def _paired_twr(a: Sequence[Any], b: Sequence[Any]) -> dict[str, float]:
    return _paired(a, b, {"twr50": lambda r: r.metrics["twr50"]})["twr50"]


def run_balloon_transfer(
    cfg: BalloonTransferConfig, progress: Progress | None = None
) -> dict[str, Any]:
    """Fly the controllers on the simulator, the device and (after identification) again.

    Conditions, every one on the same seeds: ``sim, generative winds`` (what the controllers
    were tuned on), ``sim, device winds`` (the device's atmosphere, the nominal vehicle: the
    winds' share of the gap), ``device`` (the MAVLink twin with the profile's vehicle, reached
    as a flight controller would be) and, when ``twinloop.sysid`` fits the balloon,
    ``calibrated sim`` (the device's winds and the fitted vehicle). The gaps are paired
    differences of TWR50.

    Raises:
        FileExistsError: ``out`` holds files and ``overwrite`` is off.
        ValueError: A bad profile or setting.
    """
    import twinloop
    from twinloop.core.profile import parse_profile
    from twinloop.datasets import record
    from twinloop.hardware.balloon.fake import running_twin

    started = time.time()
    out = _out_dir(cfg)
    steps = {"task.max_steps": cfg.max_steps}
    winds = {**steps, "wind.source": cfg.device_winds}
    device_base = twinloop.make_config(BALLOON_ID, **winds)
    profile = parse_profile(cfg.profile, device_base)
    runs: dict[tuple[str, str], list[Any]] = {}
    for c in cfg.controllers:
        runs["sim, generative winds", c] = _run_controller(
            twinloop.make(BALLOON_ID, **steps), c, cfg, f"sim {c}", progress
        )
        runs["sim, device winds", c] = _run_controller(
            twinloop.make(BALLOON_ID, **winds), c, cfg, f"sim+winds {c}", progress
        )
    capture_dir = out / "device-capture"
    with running_twin(device_base, profile=profile) as (_, address):
        for c in cfg.controllers:
            env = twinloop.make(BALLOON_ID, backend="mavlink", address=address, **winds)
            runs["device", c] = _run_controller(env, c, cfg, f"device {c}", progress)
        env = twinloop.make(BALLOON_ID, backend="mavlink", address=address, **winds)
        rec = record(env, capture_dir, dataset_id="twinloop/balloon-device-capture-v0",
                     mode="overwrite" if cfg.overwrite else "create",
                     tags={"controller": "station-seeker", "stage": "identify"})  # fmt: skip
        rec.writer.note_device_profile(profile)
        capture_cfg = dataclasses.replace(cfg, episodes=cfg.capture_episodes)
        _run_controller(rec, "station-seeker", capture_cfg, "device capture", progress)
    results: dict[str, Any] = {"system": BALLOON_ID, "profile": profile.name}
    calibrated = None
    if cfg.sysid:
        calibrated, results["sysid"] = identify(BALLOON_ID, capture_dir, out / "sysid.json")
    else:
        results["sysid"] = {"skipped": "switched off (--no-sysid)"}
    if calibrated is not None:
        for c in cfg.controllers:
            env = twinloop.make(BALLOON_ID, **{**winds, **calibrated})
            runs["calibrated sim", c] = _run_controller(env, c, cfg, f"calibrated {c}", progress)
    results["conditions"] = _conditions(runs, _twr)
    results["gaps"] = {}
    for c in cfg.controllers:
        device = runs["device", c]
        gaps = {
            "device_minus_sim": _paired_twr(device, runs["sim, generative winds", c]),
            "device_minus_sim_device_winds": _paired_twr(device, runs["sim, device winds", c]),
        }
        if ("calibrated sim", c) in runs:
            gaps["device_minus_calibrated"] = _paired_twr(device, runs["calibrated sim", c])
        results["gaps"][c] = gaps
    results["wall_time_s"] = time.time() - started
    results["config"] = dataclasses.asdict(cfg)
    _write_balloon_report(out, results)
    return results


def _write_balloon_report(out: Path, results: dict[str, Any]) -> None:
    from twinloop.core.text import table
    from twinloop.eval.report import write_json

    figures = out / "figures"
    figures.mkdir(exist_ok=True)
    write_json(results, out / "results.json")
    rows = []
    for condition, per in results["conditions"].items():
        for c, r in per.items():
            lo, hi = r["twr50_ci95"]
            rows.append((condition, c, f"{r['twr50']:.3f} [{lo:.3f}, {hi:.3f}]"))
    twr = table(rows, ("condition", "controller", "TWR50 (95% bootstrap CI)"))

    def fmt(g: Mapping[str, float] | None) -> str:
        return "-" if g is None else f"{g['point']:+.3f} [{g['low']:+.3f}, {g['high']:+.3f}]"

    gap_rows = [
        (
            c,
            fmt(g["device_minus_sim"]),
            fmt(g["device_minus_sim_device_winds"]),
            fmt(g.get("device_minus_calibrated")),
        )
        for c, g in results["gaps"].items()
    ]
    gaps = table(
        gap_rows, ("controller", "device - sim", "device - sim (device winds)", "device - calib.")
    )
    sysid_text = _sysid_text(results.get("sysid", {}))
    fig = _plot(results, figures / "transfer.png", "twr50", "twr50_ci95",
                "TWR50 (95% bootstrap CI)", "balloon: simulator")  # fmt: skip
    title = f"the balloon, nominal simulator -> device profile {results['profile']!r}"
    text = f"""# twinloop transfer: {title}

Wall time: {results["wall_time_s"]:.0f} s. Every condition flew the same seeds. TWR50 (the
fraction of the flight within 50 km of the station) carries a 95 % bootstrap interval; the gaps
are paired differences of TWR50 (95 % bootstrap over flights; an interval without 0 is a real
difference at this sample size). `device` is the MAVLink twin with the profile's vehicle and
the device's winds, flown through the flight-controller protocol.

```
{twr}
```

`device - sim`: the whole gap against the simulator the controllers were tuned on.
`device - sim (device winds)`: what is left once the simulator has the device's atmosphere (the
vehicle's share). `device - calib.`: what is left after identification.

```
{gaps}
```

{sysid_text}

![transfer]({fig.relative_to(out)})
"""
    (out / "report.md").write_text(text)


# --- the quadruped -------------------------------------------------------------------------------
ROBOT_ID = "twinloop/QuadrupedVelocity-v0"
#: Robot controllers the report compares.
ROBOT_CONTROLLERS = ("trot", "stand")

#: What the robot's gaps compare, per episode: the velocity tracking error (the task's episode
#: metric, m/s), the return, and whether the robot fell.
ROBOT_MEASURES: dict[str, Callable[[Any], float]] = {
    "lin_vel_error_m_per_s": lambda r: r.metrics["lin_vel_error_m_per_s"],
    "return": lambda r: r.episode_return,
    "fell": lambda r: float(r.terminated),
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class RobotTransferConfig:
    """The quadruped's transfer report: controllers built on the nominal plant meet a robot.

    Every condition runs with the simulator's per-episode randomisation off (a real robot's
    physics are fixed; the device's differences are its profile), so that one robot is
    compared with one simulator, episode by episode, on the same commands.

    Attributes:
        profile: The robot's hidden plant (``twinloop serve robot --profile``).
        out: Output folder.
        episodes: Episodes per controller and condition (episode ``e``: seed ``seed + e``).
        capture_episodes: Standing-excitation episodes captured on the robot for
            identification (:func:`twinloop.sysid.robot.excitation_actions`).
        max_steps: Control steps (20 ms) per episode.
        capture_steps: Control steps per identification episode.
        seed: Seed of everything.
        controllers: Controllers compared (names, or ``agent:DIR``).
        sysid: Fit the simulator's plant to the robot's capture and run the calibrated one.
        overwrite: Replace the contents of ``out``.
    """

    profile: str = "random:7"
    out: str = "twinloop-transfer"
    episodes: int = 10
    capture_episodes: int = 8
    max_steps: int = 250
    capture_steps: int = 100
    seed: int = 0
    controllers: tuple[str, ...] = ROBOT_CONTROLLERS
    sysid: bool = True
    overwrite: bool = False

    def __post_init__(self) -> None:
        """Check the counts and the controller names before anything runs."""
        _check_settings(
            self, ("episodes", "capture_episodes", "max_steps", "capture_steps"), agents=True
        )


def _tracking(results: Sequence[Any]) -> dict[str, Any]:
    from twinloop.eval.bootstrap import bootstrap_ci
    from twinloop.eval.rollout import wilson_interval

    err = np.array([r.metrics["lin_vel_error_m_per_s"] for r in results], dtype=np.float64)
    ret = np.array([r.episode_return for r in results], dtype=np.float64)
    falls = sum(bool(r.terminated) for r in results)
    return {
        "lin_vel_error_m_per_s": float(err.mean()),
        "lin_vel_error_ci95": list(bootstrap_ci(err)),
        "yaw_rate_error_rad_per_s": float(
            np.mean([r.metrics["yaw_rate_error_rad_per_s"] for r in results])
        ),
        "return": float(ret.mean()),
        "return_ci95": list(bootstrap_ci(ret)),
        "fall_rate": falls / len(results),
        "fall_rate_ci95": list(wilson_interval(falls, len(results))),
        "episodes": len(results),
    }


def _robot_capture(
    env: Any, cfg: RobotTransferConfig, directory: Path, profile: Any, progress: Progress | None
) -> Path:
    """Standing excitation on the robot, recorded as ``twinloop sysid`` reads it."""
    from twinloop.datasets import record
    from twinloop.sysid.robot import excitation_actions

    rec = record(env, directory, dataset_id="twinloop/robot-device-capture-v0",
                 mode="overwrite" if cfg.overwrite else "create",
                 tags={"controller": "excitation", "stage": "identify"})  # fmt: skip
    rec.writer.note_device_profile(profile)
    rng = np.random.default_rng(cfg.seed)
    try:
        for e in range(cfg.capture_episodes):
            rec.reset(seed=cfg.seed + 200_000 + e)
            for action in excitation_actions(rng, cfg.capture_steps):
                if rec.step(action)[2]:
                    break
            if progress:
                progress("device capture", e + 1, cfg.capture_episodes)
    finally:
        rec.close()
    return directory


def run_robot_transfer(
    cfg: RobotTransferConfig, progress: Progress | None = None
) -> dict[str, Any]:
    """Run the controllers on the simulator, the robot twin and (after identification) again.

    Conditions, every one on the same seeds and so the same velocity commands: ``sim`` (the
    nominal plant the controllers were built on), ``device`` (the robot twin with the
    profile's plant, reached over the robot's joint protocol) and, when ``twinloop.sysid``
    identifies the plant from a standing-excitation capture on the device, ``calibrated sim``.
    The gaps are paired differences of the tracking error, the return and the fall rate.

    Raises:
        FileExistsError: ``out`` holds files and ``overwrite`` is off.
        ValueError: A bad profile or setting.
    """
    import secrets

    import twinloop
    from twinloop.core.profile import parse_profile
    from twinloop.hardware.robot.fake import SimRobot
    from twinloop.hardware.robot.server import RobotServer
    from twinloop.sim.locomotion.velocity_config import RANDOM_EFFECT_SWITCHES

    started = time.time()
    out = _out_dir(cfg)
    fixed = {**dict.fromkeys(RANDOM_EFFECT_SWITCHES, False), "max_steps": cfg.max_steps}
    base = twinloop.make_config(ROBOT_ID, **fixed)
    profile = parse_profile(cfg.profile, base)
    runs: dict[tuple[str, str], list[Any]] = {}
    for c in cfg.controllers:
        env = twinloop.make(ROBOT_ID, **fixed)
        runs["sim", c] = _run_controller(env, c, cfg, f"sim {c}", progress)
    token = secrets.token_hex(16)
    server = RobotServer(SimRobot(base, profile=profile), port=0, token=token).start()
    capture_dir = out / "device-capture"
    try:

        def device(**extra: Any) -> Any:
            options = {**fixed, **extra}
            return twinloop.make(
                ROBOT_ID, backend="robot", address=server.address, token=token, **options
            )

        for c in cfg.controllers:
            runs["device", c] = _run_controller(device(), c, cfg, f"device {c}", progress)
        env = device(max_steps=cfg.capture_steps)
        try:
            _robot_capture(env, cfg, capture_dir, profile, progress)
        finally:
            env.close()
    finally:
        server.stop()
    results: dict[str, Any] = {"system": ROBOT_ID, "profile": profile.name}
    calibrated = None
    if cfg.sysid:
        calibrated, results["sysid"] = identify(ROBOT_ID, capture_dir, out / "sysid.json")
    else:
        results["sysid"] = {"skipped": "switched off (--no-sysid)"}
    if calibrated is not None:
        for c in cfg.controllers:
            env = twinloop.make(ROBOT_ID, **{**fixed, **calibrated})
            runs["calibrated sim", c] = _run_controller(env, c, cfg, f"calibrated {c}", progress)
    results["conditions"] = _conditions(runs, _tracking)
    results["gaps"] = {}
    for c in cfg.controllers:
        gaps = {"device_minus_sim": _paired(runs["device", c], runs["sim", c], ROBOT_MEASURES)}
        if ("calibrated sim", c) in runs:
            gaps["device_minus_calibrated"] = _paired(
                runs["device", c], runs["calibrated sim", c], ROBOT_MEASURES
            )
        results["gaps"][c] = gaps
    results["wall_time_s"] = time.time() - started
    results["config"] = dataclasses.asdict(cfg)
    _write_robot_report(out, results)
    return results


def _write_robot_report(out: Path, results: dict[str, Any]) -> None:
    from twinloop.core.text import table
    from twinloop.eval.report import write_json

    figures = out / "figures"
    figures.mkdir(exist_ok=True)
    write_json(results, out / "results.json")
    rows = []
    for condition, per in results["conditions"].items():
        for c, r in per.items():
            (elo, ehi), (flo, fhi) = r["lin_vel_error_ci95"], r["fall_rate_ci95"]
            rows.append((
                condition, c,
                f"{r['lin_vel_error_m_per_s']:.3f} [{elo:.3f}, {ehi:.3f}]",
                f"{r['return']:.2f}",
                f"{r['fall_rate']:.2f} [{flo:.2f}, {fhi:.2f}]",
            ))  # fmt: skip
    header = ("condition", "controller", "velocity error m/s (95% CI)", "return", "fall rate")
    conditions = table(rows, header)

    def fmt(g: Mapping[str, Mapping[str, float]] | None, key: str, digits: int) -> str:
        if g is None:
            return "-"
        v = g[key]
        return f"{v['point']:+.{digits}f} [{v['low']:+.{digits}f}, {v['high']:+.{digits}f}]"

    gap_rows = []
    for c, g in results["gaps"].items():
        for label, key in (("device - sim", "device_minus_sim"),
                           ("device - calibrated", "device_minus_calibrated")):  # fmt: skip
            if key in g:
                gap_rows.append((c, label, fmt(g[key], "lin_vel_error_m_per_s", 3),
                                 fmt(g[key], "return", 2), fmt(g[key], "fell", 2)))  # fmt: skip
    gaps = table(gap_rows, ("controller", "gap", "velocity error m/s", "return", "fell"))
    ylabel = "velocity tracking error, m/s (95% bootstrap CI)"
    fig = _plot(results, figures / "transfer.png", "lin_vel_error_m_per_s", "lin_vel_error_ci95",
                ylabel, "quadruped: simulator")  # fmt: skip
    title = f"the quadruped, nominal simulator -> device profile {results['profile']!r}"
    text = f"""# twinloop transfer: {title}

Wall time: {results["wall_time_s"]:.0f} s. Every condition ran the same seeds, so the same
velocity commands, with the simulator's per-episode randomisation off (one robot against one
simulator). The velocity error is the episode's mean distance of the trunk's planar velocity
from the command (m/s; lower is better), with a 95 % bootstrap interval; the fall rate has a
Wilson interval. `device` is the robot twin with the profile's plant, driven over the robot's
joint protocol.

```
{conditions}
```

Gaps: paired differences per episode (95 % bootstrap over episodes; an interval without 0 is a
real difference at this sample size). `device - calibrated` is what is left after
identification from a standing-excitation capture on the device.

```
{gaps}
```

{_sysid_text(results.get("sysid", {}))}

![transfer]({fig.relative_to(out)})
"""
    (out / "report.md").write_text(text)


# --- the mobile manipulator (language rearrangement) ---------------------------------------------
REARRANGE_ID = "twinloop/LangRearrange-v0"
#: Rearrangement controllers the report compares.
REARRANGE_CONTROLLERS = ("oracle", "scripted")

#: What the rearrangement gaps compare, per episode: success, the return, the actions taken.
REARRANGE_MEASURES: dict[str, Callable[[Any], float]] = {
    "success": lambda r: float(r.success),
    "return": lambda r: r.episode_return,
    "steps": lambda r: float(r.steps),
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class RearrangeTransferConfig:
    """The skills robot's transfer report: controllers built on the simulator meet a robot.

    The device is the skills twin with a profile (:mod:`twinloop.sim.rearrange.profile`):
    skills that fail although their preconditions hold, and a detector that mislabels objects.
    The simulator has no model of either (they exist on the twin only), so there is nothing to
    calibrate and ``twinloop sysid`` has no fitter for this system: the report shows the gap.

    Attributes:
        profile: The robot's hidden imperfections (``twinloop serve skills --profile``).
        out: Output folder.
        episodes: Episodes per controller and condition (episode ``e``: seed ``seed + e``).
        split: The split episodes are drawn from.
        seed: Seed of everything.
        controllers: Controllers compared (names, or ``agent:DIR``).
        overwrite: Replace the contents of ``out``.
    """

    profile: str = "random:7"
    out: str = "twinloop-transfer"
    episodes: int = 40
    split: str = "train"
    seed: int = 0
    controllers: tuple[str, ...] = REARRANGE_CONTROLLERS
    overwrite: bool = False

    def __post_init__(self) -> None:
        """Check the count, the split and the controller names before anything runs."""
        from twinloop.sim.rearrange.episodes import SPLITS

        if self.split not in SPLITS:
            raise ValueError(f"split {self.split!r}: give one of {', '.join(SPLITS)}")
        _check_settings(self, ("episodes",), agents=True)


def _outcomes(results: Sequence[Any]) -> dict[str, Any]:
    from twinloop.eval.bootstrap import bootstrap_ci
    from twinloop.eval.rollout import wilson_interval

    wins = sum(bool(r.success) for r in results)
    ret = np.array([r.episode_return for r in results], dtype=np.float64)
    return {
        "success_rate": wins / len(results),
        "ci95": list(wilson_interval(wins, len(results))),
        "return": float(ret.mean()),
        "return_ci95": list(bootstrap_ci(ret)),
        "mean_steps": float(np.mean([r.steps for r in results])),
        "episodes": len(results),
    }


def run_rearrange_transfer(
    cfg: RearrangeTransferConfig, progress: Progress | None = None
) -> dict[str, Any]:
    """Run the controllers on the simulator and on the skills twin, same episodes.

    Conditions: ``sim`` (the simulator the controllers were built on) and ``device`` (the
    skills twin with the profile's imperfections, over the robot-skill protocol). The gaps are
    paired differences of success, return and actions taken.

    Raises:
        FileExistsError: ``out`` holds files and ``overwrite`` is off.
        ValueError: A bad profile or setting.
    """
    import secrets

    import twinloop
    from twinloop.core.profile import parse_profile
    from twinloop.hardware.skills.fake import SimSkillsRobot, SkillsDeviceConfig
    from twinloop.hardware.skills.server import SkillsServer
    from twinloop.sim.rearrange.profile import PRIORS

    started = time.time()
    out = _out_dir(cfg)
    profile = parse_profile(cfg.profile, SkillsDeviceConfig.of({}, 0.0), PRIORS)
    task = {"split": cfg.split}
    runs: dict[tuple[str, str], list[Any]] = {}
    for c in cfg.controllers:
        env = twinloop.make(REARRANGE_ID, **task)
        runs["sim", c] = _run_controller(env, c, cfg, f"sim {c}", progress)
    token = secrets.token_hex(16)
    robot = SimSkillsRobot(twinloop.make_config(REARRANGE_ID, **task), profile=profile)
    server = SkillsServer(robot, port=0, token=token).start()
    try:
        for c in cfg.controllers:
            env = twinloop.make(
                REARRANGE_ID, backend="skills", address=server.address, token=token, **task
            )
            runs["device", c] = _run_controller(env, c, cfg, f"device {c}", progress)
    finally:
        server.stop()
    results: dict[str, Any] = {
        "system": REARRANGE_ID,
        "profile": profile.name,
        "sysid": {
            "skipped": "the simulator has no model of skill failures or mislabels to calibrate, "
            "so twinloop sysid has no fitter for the skills robot"
        },
        "conditions": _conditions(runs, _outcomes),
        "gaps": {},
    }
    for c in cfg.controllers:
        results["gaps"][c] = {
            "device_minus_sim": _paired(runs["device", c], runs["sim", c], REARRANGE_MEASURES)
        }
    results["wall_time_s"] = time.time() - started
    results["config"] = dataclasses.asdict(cfg)
    _write_rearrange_report(out, results)
    return results


def _write_rearrange_report(out: Path, results: dict[str, Any]) -> None:
    from twinloop.core.text import table
    from twinloop.eval.report import write_json

    figures = out / "figures"
    figures.mkdir(exist_ok=True)
    write_json(results, out / "results.json")
    rows = []
    for condition, per in results["conditions"].items():
        for c, r in per.items():
            lo, hi = r["ci95"]
            rows.append((condition, c, f"{r['success_rate']:.2f} [{lo:.2f}, {hi:.2f}]",
                         f"{r['return']:.2f}", f"{r['mean_steps']:.1f}"))  # fmt: skip
    conditions = table(rows, ("condition", "controller", "success (95% CI)", "return", "actions"))
    gap_rows = []
    for c, g in results["gaps"].items():
        d = g["device_minus_sim"]
        gap_rows.append((c, *(
            f"{d[k]['point']:+.2f} [{d[k]['low']:+.2f}, {d[k]['high']:+.2f}]"
            for k in ("success", "return", "steps")
        )))  # fmt: skip
    gaps = table(gap_rows, ("controller", "success", "return", "actions"))
    fig = _plot(results, figures / "transfer.png", "success_rate", "ci95",
                "success rate (95% Wilson CI)", "skills robot: simulator")  # fmt: skip
    split = results["config"]["split"]
    title = f"the skills robot, simulator -> device profile {results['profile']!r}"
    text = f"""# twinloop transfer: {title}

Wall time: {results["wall_time_s"]:.0f} s. Every condition ran the same episodes of the
`{split}` split (same seeds, so the same scenes and instructions). `device` is the skills twin
with the profile's imperfections (skills that fail although their preconditions hold, a
detector that mislabels objects), driven over the robot-skill protocol. Success carries a
Wilson interval.

```
{conditions}
```

Gaps (device - sim), paired per episode (95 % bootstrap over episodes; an interval without 0
is a real difference at this sample size):

```
{gaps}
```

{_sysid_text(results["sysid"])}

![transfer]({fig.relative_to(out)})
"""
    (out / "report.md").write_text(text)
