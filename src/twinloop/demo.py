"""The main job: learn Si transition rates from captured data, steer atoms with them, evaluate.

What the STEM paper (Schwarzer et al., arXiv:2311.17894) did on a microscope, end to end on a
laptop. Every stage reads and writes files, so each can also run alone::

    capture   random beam positions and dwells -> an HDF5 dataset (Minari layout)
    train     the dataset -> a rate model (.npz)
    evaluate  each controller on the same goals -> one dataset per controller and backend
    report    the datasets and the model -> results.json, report.md, figures/*.png

``run_demo`` chains them against a microscope twin started in the background on loopback and
reached through the ``remote`` backend, as a real instrument would be; ``backend="sim"`` or
``"nion"`` swaps the instrument.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ENV_ID = "twinloop/StemSteer-v0"
#: Env settings of random data collection: dwell is part of the action, 1-20 s [S23].
CAPTURE_SETTINGS: dict[str, Any] = {
    "action_dwell": True,
    "dwell_min_s": 1.0,
    "dwell_max_s": 20.0,
    "max_steps": 40,
}
#: Controllers compared by the demo.
CONTROLLERS = ("greedy-neighbor", "greedy-learned", "planner")
#: The demo twin's device profile: of seeds 1-15 of the STEM prior, the device furthest from
#: the nominal simulator (peak rate x0.62, optimum 0.25 A further out, knock-out x0.77).
DEFAULT_PROFILE = "random:7"

Progress = Callable[[str, int, int], None]


@dataclasses.dataclass(frozen=True, kw_only=True)
class DemoConfig:
    """What the demo does (defaults run in a few minutes on 2 cores)."""

    out: str = "twinloop-demo"
    backend: str = "remote"
    transitions: int = 2000
    episodes: int = 100
    goal_hops: int = 5
    seed: int = 0
    train_steps: int = 2000
    ensemble: int = 5
    compare_sim: bool = True  # also run every controller on the simulator with the same seeds
    overwrite: bool = False
    #: A running microscope twin for ``backend="remote"`` (e.g. ``tcp://127.0.0.1:5555``);
    #: None starts one on a free loopback port for the length of the demo.
    address: str | None = None
    #: The hidden physics of the twin the demo starts (``--profile`` of ``twinloop serve
    #: microscope``): a device that differs from the nominal simulator, so the sim-vs-device
    #: gap is real. None: a nominal twin (the gap is then zero by construction). Ignored for
    #: a twin at ``address`` and for other backends.
    profile: str | None = DEFAULT_PROFILE
    #: With a profile: fit the simulator's parameters to the capture (``twinloop.sysid``)
    #: and run the controllers on the calibrated simulator too (backend ``sim-calibrated``).
    calibrate: bool = True


@contextlib.contextmanager
def microscope_twin(extra_args: Sequence[str] = ()) -> Iterator[str]:
    """Start ``twinloop serve microscope`` on a free loopback port; yield its address."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "twinloop.cli",
            "serve",
            "microscope",
            "--port",
            str(port),
            *extra_args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        if "listening on" not in line:
            err = proc.stderr.read() if proc.stderr else ""
            raise RuntimeError(f"the microscope twin did not start: {line}{err}")
        yield f"tcp://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def _make(backend: str, address: str | None, **overrides: Any) -> Any:
    import twinloop

    options = {"address": address} if backend == "remote" and address else {}
    return twinloop.make(ENV_ID, backend=backend, **options, **overrides)


def capture(
    backend: str,
    n_transitions: int,
    directory: str | Path,
    *,
    address: str | None = None,
    seed: int = 0,
    overwrite: bool = False,
    progress: Progress | None = None,
    device_profile: Any = None,
    **overrides: Any,
) -> Path:
    """Record random-beam dwells until ``n_transitions`` steps are captured.

    ``device_profile`` (a :class:`~twinloop.core.profile.DeviceProfile`): the profile the twin
    was started with; its values go to the capture's privileged section, so that
    identification from the capture can be scored (as ``twinloop run --device-profile``).

    Returns:
        The dataset directory.
    """
    from twinloop.controllers import make_controller
    from twinloop.datasets import RecordEpisodes

    if n_transitions < 1:
        raise ValueError(f"n_transitions must be >= 1, got {n_transitions}")
    env = _make(backend, address, **{**CAPTURE_SETTINGS, **overrides})
    rec = RecordEpisodes(
        env,
        directory,
        dataset_id="twinloop/stem-capture-v0",
        mode="overwrite" if overwrite else "create",
        tags={"controller": "random", "backend": backend, "stage": "capture"},
    )
    if device_profile is not None:
        rec.writer.note_device_profile(device_profile)
    controller = make_controller("random", rec)
    steps, episode = 0, 0
    try:
        while steps < n_transitions:
            s = seed + episode
            obs, _ = rec.reset(seed=s)
            controller.reset(1, np.array([s]))
            while steps < n_transitions:
                obs, _, term, trunc, _ = rec.step(controller.act_one(obs))
                steps += 1
                if progress:
                    progress("capture", steps, n_transitions)
                if term or trunc:
                    break
            episode += 1
    finally:
        rec.close()
    return Path(directory)


def train(
    dataset_dir: str | Path,
    model_path: str | Path,
    *,
    steps: int = 2000,
    ensemble: int = 5,
    seed: int = 0,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Fit the rate model on a capture; return data counts and training info."""
    from twinloop.controllers.rates import RateTrainingConfig
    from twinloop.controllers.rates import train as fit
    from twinloop.controllers.transitions import from_dataset
    from twinloop.datasets import open_dataset

    ds = open_dataset(dataset_dir)
    data, dropped = from_dataset(ds)
    cfg = RateTrainingConfig(steps=steps, ensemble=ensemble, seed=seed)
    model = fit(data, cfg, progress=(lambda t, n, _: progress("train", t, n)) if progress else None)
    model.info["dropped_by_filter"] = dropped
    model.info["dataset"] = str(dataset_dir)
    model.save(model_path)
    return model.info


def evaluate(
    backend: str,
    controllers: Sequence[str],
    episodes: int,
    directory: str | Path,
    *,
    model_path: str | Path | None = None,
    address: str | None = None,
    seed: int = 1000,
    goal_hops: int = 5,
    overwrite: bool = False,
    progress: Progress | None = None,
    label: str | None = None,
    **overrides: Any,
) -> dict[str, Path]:
    """Run each controller for ``episodes`` episodes (episode ``e``: seed ``seed + e``).

    The same seeds give the same goals on every controller and backend. Each run is recorded
    in its own dataset under ``directory/<label>-<controller>``, where ``label`` (default:
    ``backend``) names the condition in the report, e.g. ``sim-calibrated`` for the simulator
    with fitted ``overrides``.
    """
    from twinloop.controllers import make_controller
    from twinloop.datasets import RecordEpisodes
    from twinloop.eval.rollout import run_single

    out: dict[str, Path] = {}
    label = label or backend
    for name in controllers:
        env = _make(backend, address, goal_hops=goal_hops, **overrides)
        path = Path(directory) / f"{label}-{name}"
        rec = RecordEpisodes(
            env,
            path,
            dataset_id=f"twinloop/stem-{label}-{name}-v0",
            mode="overwrite" if overwrite else "create",
            tags={"controller": name, "backend": label, "stage": "evaluate"},
        )
        kwargs = {"model": str(model_path)} if name in ("greedy-learned", "planner") else {}
        controller = make_controller(name, rec, **kwargs)
        try:
            run_single(
                rec,
                controller,
                episodes,
                seed,
                (lambda d, n, name=name: progress(f"{label} {name}", d, n)) if progress else None,
            )
        finally:
            rec.close()
        out[f"{label}/{name}"] = path
    return out


def report(
    out_dir: str | Path,
    eval_dirs: dict[str, Path],
    *,
    model_path: str | Path | None = None,
    capture_dir: str | Path | None = None,
    started: float | None = None,
    extra: dict[str, Any] | None = None,
    device_profile: Any = None,
) -> dict[str, Any]:
    """Write ``results.json``, ``report.md`` and ``figures/*.png``; return the results.

    ``device_profile``: the hidden physics of the device the model was learned on; the model
    is scored against that device's true rates (default: the nominal simulator's).
    """
    import twinloop
    from twinloop.controllers.rates import RateModel
    from twinloop.datasets import open_dataset
    from twinloop.eval.report import (
        format_tables,
        plot_runs,
        run_from_dataset,
        summarize_runs,
        write_json,
    )
    from twinloop.eval.stem import plot_rate_maps, plot_trajectories, rate_model_errors

    out = Path(out_dir)
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    datasets = {k: open_dataset(p) for k, p in eval_dirs.items()}
    runs = [run_from_dataset(ds) for ds in datasets.values()]
    summary = summarize_runs(runs)
    results: dict[str, Any] = {"evaluation": summary, **(extra or {})}
    figs = {"controllers": plot_runs(runs, summary, figures / "controllers.png")}
    figs["trajectories"] = plot_trajectories(datasets, figures / "trajectories.png")
    if model_path is not None:
        model = RateModel.load(model_path)
        cfg = twinloop.make_config(ENV_ID)
        if device_profile is not None:
            cfg = device_profile.apply(cfg)
        results["rate_model"] = {**rate_model_errors(model, cfg), "info": model.info}
        figs["rate_map"] = plot_rate_maps(model, cfg, figures / "rate_map.png")
    if started is not None:
        results["wall_time_s"] = time.time() - started
    write_json(results, out / "results.json")
    (out / "report.md").write_text(
        _markdown(results, format_tables(summary), figs, out, capture_dir, model_path)
    )
    return results


def _markdown(
    results: dict[str, Any],
    tables: str,
    figs: dict[str, Path],
    out: Path,
    capture_dir: str | Path | None,
    model_path: str | Path | None,
) -> str:
    lines = ["# twinloop demo: learn Si transition rates, steer atoms, evaluate", ""]
    if "wall_time_s" in results:
        lines.append(f"Wall time: {results['wall_time_s']:.0f} s.")
    if capture_dir:
        lines.append(
            f"Capture dataset: `{Path(capture_dir).relative_to(out)}` "
            "(Minari layout; `twinloop data info` summarises it)."
        )
    rm = results.get("rate_model")
    if rm:
        info = rm["info"]
        lines += [
            "",
            "## Rate model",
            "",
            f"Trained on {info['transitions']} transitions after filtering "
            f"(dropped: {info.get('dropped_by_filter')}), {info['config']['ensemble']} "
            f"ensemble members, hop fraction {info['hop_fraction']:.3f}. Against the "
            "simulator's true rates:",
            "",
            f"- optimum location error: **{rm['optimum_error_angstrom']:.3f} A** (learned "
            f"{np.round(rm['learned_optimum_angstrom'], 3).tolist()}, true "
            f"{np.round(rm['true_optimum_angstrom'], 3).tolist()} A from the Si)",
            f"- rate-map error: {100 * rm['rate_map_error']:.1f} % of the true peak (RMS over "
            "beam offsets within 3 A)",
            f"- peak rate: learned {rm['learned_peak_per_s']:.3f}/s vs true "
            f"{rm['true_peak_per_s']:.3f}/s (ratio {rm['peak_ratio']:.2f}; multi-hop dwells "
            "are filtered out, which biases fast rates low)",
            "",
            f"![rate map]({figs['rate_map'].relative_to(out)})",
        ]
    if model_path:
        lines.append(f"\nModel: `{Path(model_path).relative_to(out)}`.")
    dp = results.get("device_profile")
    if dp:
        cal = results.get("calibration", {})
        lines += [
            "",
            "## The device",
            "",
            f"The microscope twin ran hidden physics (device profile `{dp['name']}`; its values "
            "are never sent to a client, see `twinloop info ID --backend remote`). The backend "
            "gaps below therefore measure a real sim-to-real gap: the nominal simulator against "
            "a device it does not describe. The rate model above is scored against the "
            "device's true rates.",
        ]
        if "overrides" in cal:
            lines.append(
                "\n`sim-calibrated` is the simulator with the parameters `twinloop sysid` fitted "
                f"to the capture (`{Path(cal['file']).name}`); its gap to `remote` is what "
                "remains after identification."
            )
        elif cal:
            lines.append(f"\nNo calibrated simulator: {cal['skipped']}.")
    lines += [
        "",
        "## Controllers",
        "",
        "Same seeds, hence the same goals, for every controller and backend. Success rates "
        "carry 95 % Wilson intervals; median times to goal (successful episodes) and all "
        "differences carry 95 % percentile-bootstrap intervals. Each interval is 95 % on its "
        "own: among the dozen-odd comparisons below, about one is expected to exclude 0 by "
        "chance, so read a single borderline difference with care (more episodes: "
        "`--episodes`).",
        "",
        "```",
        tables,
        "```",
        "",
        f"![controllers]({figs['controllers'].relative_to(out)})",
        "",
        f"![trajectories]({figs['trajectories'].relative_to(out)})",
        "",
    ]
    return "\n".join(lines)


def run_demo(cfg: DemoConfig, progress: Progress | None = None) -> dict[str, Any]:
    """Capture, train, evaluate and report; see the module docstring."""
    started = time.time()
    out = Path(cfg.out)
    if out.exists() and any(out.iterdir()) and not cfg.overwrite:
        raise FileExistsError(f"{out} exists and is not empty; pass --overwrite or --out DIR")
    out.mkdir(parents=True, exist_ok=True)
    capture_dir = out / "dataset"
    model_path = out / "model.npz"
    eval_root = out / "eval"
    start_twin = cfg.backend == "remote" and cfg.address is None
    profile = None
    if start_twin and cfg.profile:
        import twinloop
        from twinloop.core.profile import parse_profile

        profile = parse_profile(cfg.profile, twinloop.make_config(ENV_ID))
    twin_args = ["--profile", cfg.profile] if profile is not None else []
    twin = microscope_twin(twin_args) if start_twin else contextlib.nullcontext(cfg.address)
    with twin as address:
        capture(
            cfg.backend,
            cfg.transitions,
            capture_dir,
            address=address,
            seed=cfg.seed,
            overwrite=cfg.overwrite,
            progress=progress,
            device_profile=profile,
        )
        info = train(
            capture_dir,
            model_path,
            steps=cfg.train_steps,
            ensemble=cfg.ensemble,
            seed=cfg.seed,
            progress=progress,
        )
        eval_dirs = _evaluate_all(cfg, cfg.backend, eval_root, model_path, progress, address)
    if cfg.compare_sim and cfg.backend != "sim":
        eval_dirs.update(_evaluate_all(cfg, "sim", eval_root, model_path, progress))
    extra: dict[str, Any] = {"config": dataclasses.asdict(cfg), "training": info}
    if profile is not None:
        extra["device_profile"] = {"name": profile.name, "hidden_from_clients": True}
        if cfg.calibrate:
            extra["calibration"] = _calibrate(cfg, capture_dir, eval_root, model_path, eval_dirs,
                                              progress)  # fmt: skip
    return report(
        out,
        eval_dirs,
        model_path=model_path,
        capture_dir=capture_dir,
        started=started,
        extra=extra,
        device_profile=profile,
    )


def identify(
    env_id: str, capture_dir: Path, out_file: Path
) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """Fit ``env_id``'s simulator to a device capture (``twinloop sysid``); write the overrides.

    Returns:
        The fitted config overrides (None when nothing could be fitted) and what to record:
        the fit (:meth:`~twinloop.sysid.SysidResult.to_dict`), or ``{"skipped": reason}``
        when the system has no fitter yet or the capture is too small to fit.
    """
    from twinloop.sysid import fit

    try:
        fitted = fit(env_id, [capture_dir])
    except ValueError as exc:  # no fitter for this system, or too little data
        return None, {"skipped": f"identification of {env_id} failed: {exc}"}
    overrides = fitted.overrides()
    if not overrides:
        return None, {"skipped": "the capture identified no parameter (capture more)"}
    out_file.write_text(json.dumps(overrides, indent=2))
    return overrides, fitted.to_dict()


def _evaluate_all(
    cfg: DemoConfig,
    backend: str,
    eval_root: Path,
    model_path: Path,
    progress: Progress | None,
    address: str | None = None,
    label: str | None = None,
    **overrides: Any,
) -> dict[str, Path]:
    """:func:`evaluate` of the demo's controllers on the demo's goals (seeds from 100000)."""
    return evaluate(
        backend,
        CONTROLLERS,
        cfg.episodes,
        eval_root,
        model_path=model_path,
        address=address,
        seed=cfg.seed + 100_000,
        goal_hops=cfg.goal_hops,
        overwrite=cfg.overwrite,
        progress=progress,
        label=label,
        **overrides,
    )


def _calibrate(
    cfg: DemoConfig,
    capture_dir: Path,
    eval_root: Path,
    model_path: Path,
    eval_dirs: dict[str, Path],
    progress: Progress | None,
) -> dict[str, Any]:
    """Fit the simulator to the device capture; rerun the controllers on it (``sim-calibrated``).

    Returns:
        The fitted overrides and where they were written, or why nothing was fitted.
    """
    path = Path(cfg.out) / "sysid.json"
    overrides, record = identify(ENV_ID, capture_dir, path)
    if overrides is None:
        return record
    eval_dirs.update(
        _evaluate_all(
            cfg, "sim", eval_root, model_path, progress, label="sim-calibrated", **overrides
        )
    )
    return {"overrides": overrides, "file": str(path)}
