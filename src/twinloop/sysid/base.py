"""System identification, the system-independent part: results, the fitter registry, ``fit``.

A fit reads one or more captured datasets of one env id, hands them to the fitter of the
env's config class (:data:`FITTERS`, ``"module:function"`` loaded lazily, like
:data:`twinloop.core.profile.PRIORS_FOR_CONFIG`), and returns a :class:`SysidResult`: per
parameter of the system's device prior an estimate with a 95 % interval, or a note saying why
the data cannot identify it. When the captures carry the device's profile in their
privileged metadata (``twinloop run --record ... --device-profile``), the true values are
attached for scoring; the fitter never sees them.

The override file (:meth:`SysidResult.write_overrides`) is a flat JSON object of dotted config
paths -> fitted values, the format ``--profile FILE`` (:func:`twinloop.core.profile.
load_profile`) and ``twinloop run --config FILE`` read.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from twinloop.core.text import json_ready

#: Config class (``"module:qualname"``) -> its system's fitter (``"module:function"``).
FITTERS: dict[str, str] = {
    "twinloop.sim.stem.config:StemConfig": "twinloop.sysid.stem:fit_stem",
    "twinloop.sim.balloon.config:BalloonConfig": "twinloop.sysid.balloon:fit_balloon",
    "twinloop.sim.locomotion.velocity_config:QuadrupedVelocityConfig": (
        "twinloop.sysid.robot:fit_robot"
    ),
}

#: ``progress(stage, done, total)``, rendered by the command line as a progress bar.
Progress = Callable[[str, int, int], None]


@dataclasses.dataclass(frozen=True)
class ParameterEstimate:
    """One parameter of a device: estimate, 95 % interval, nominal and (when known) true value.

    Attributes:
        path: Dotted config path (``"physics.probe_fwhm_angstrom"``).
        estimate: Fitted value; NaN when the data cannot identify the parameter.
        low: Lower end of the 95 % interval (NaN when not identified).
        high: Upper end of the 95 % interval (NaN when not identified).
        nominal: The simulator's value in the capture's (nominal) config.
        true: The device's value when its profile is known (scoring only), else None.
        units: Units of the value (the config field's).
        identified: Whether the data identify the parameter (else see ``note``).
        note: How the interval was obtained, or why the parameter is not identified.
        kind: The prior's kind: ``"log"`` (a scale: errors are relative) or ``"shift"`` (an
            offset: errors are in the field's units).
    """

    path: str
    estimate: float
    low: float
    high: float
    nominal: float
    true: float | None = None
    units: str = ""
    identified: bool = True
    note: str = ""
    kind: str = "log"

    @property
    def covers(self) -> bool | None:
        """Whether the interval holds the true value (None when either is unknown)."""
        if self.true is None or not self.identified:
            return None
        return bool(self.low <= self.true <= self.high)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (NaN as None)."""
        out = dataclasses.asdict(self)
        for key in ("estimate", "low", "high"):
            if isinstance(out[key], float) and not math.isfinite(out[key]):
                out[key] = None
        out["covers"] = self.covers
        return out


@dataclasses.dataclass
class SysidResult:
    """What a fit found.

    Attributes:
        env_id: The env id of the captures.
        n_episodes: Episodes used.
        n_transitions: Steps (transitions) used by the fit.
        estimates: One entry per parameter of the device prior (identified or not).
        samples: ``(n_samples, n_identified)`` posterior or bootstrap samples of the
            identified parameters, columns in ``sample_paths`` order.
        sample_paths: Dotted path of each column of ``samples``.
        method: How the intervals were obtained (``"laplace"``, ``"bootstrap"``), in words.
        datasets: The dataset folders read.
        profile_name: The device profile named by the captures, if any.
        details: Fitter-specific counts (events, dropped steps, log-likelihood ...).
    """

    env_id: str
    n_episodes: int
    n_transitions: int
    estimates: list[ParameterEstimate]
    samples: np.ndarray
    sample_paths: list[str]
    method: str
    datasets: list[str] = dataclasses.field(default_factory=list)
    profile_name: str | None = None
    details: dict[str, Any] = dataclasses.field(default_factory=dict)

    def overrides(self) -> dict[str, Any]:
        """Dotted path -> fitted value, for the identified parameters only.

        A table parameter (its estimate is the table's mean) takes the whole fitted table
        from ``details["table_overrides"]`` when the fitter gives it there.
        """
        tables = self.details.get("table_overrides") or {}
        return {
            e.path: list(tables[e.path]) if e.path in tables else float(e.estimate)
            for e in self.estimates
            if e.identified
        }

    def estimate(self, path: str) -> ParameterEstimate:
        """The entry of ``path``.

        Raises:
            KeyError: No such parameter (the message lists them).
        """
        for e in self.estimates:
            if e.path == path:
                return e
        raise KeyError(f"no estimate of {path!r}; have {[e.path for e in self.estimates]}")

    def to_dict(self) -> dict[str, Any]:
        """Everything but the samples, JSON-ready (sample count and paths included)."""
        return {
            "env_id": self.env_id,
            "n_episodes": self.n_episodes,
            "n_transitions": self.n_transitions,
            "method": self.method,
            "datasets": list(self.datasets),
            "profile_name": self.profile_name,
            "estimates": [e.to_dict() for e in self.estimates],
            "n_samples": int(self.samples.shape[0]),
            "sample_paths": list(self.sample_paths),
            "details": json_ready(self.details),
        }

    def to_json(self) -> str:
        """:meth:`to_dict` as indented JSON."""
        return json.dumps(self.to_dict(), indent=1)

    def write_overrides(self, path: str | Path) -> Path:
        """Write :meth:`overrides` as JSON (the ``--profile FILE`` format); return the path.

        Raises:
            ValueError: No parameter was identified (an empty override file means nothing).
        """
        values = self.overrides()
        if not values:
            raise ValueError(
                "no parameter was identified, so there is nothing to write; capture more "
                "episodes (see each parameter's note)"
            )
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        return path


# --- datasets ----------------------------------------------------------------------------------
def dataset_folders(paths: Sequence[str | Path]) -> list[Path]:
    """Dataset folders under ``paths``: each is a dataset or a root holding several.

    A dataset is a folder with ``data/metadata.json`` (Minari's layout); a root is searched
    recursively. Raises ValueError when a path is missing or holds no dataset.
    """
    if not paths:
        raise ValueError("no --data given: name a dataset folder or a root of datasets")
    found: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if not p.exists():
            raise ValueError(f"--data {p}: no such folder")
        if (p / "data" / "metadata.json").is_file():
            found.append(p)
            continue
        inner = sorted(m.parent.parent for m in p.rglob("data/metadata.json"))
        if not inner:
            raise ValueError(
                f"--data {p}: no dataset here (a dataset folder holds data/metadata.json; "
                "record one with 'twinloop run ID --record ROOT')"
            )
        found.extend(inner)
    return list(dict.fromkeys(found))


def open_datasets(env_id: str, paths: Sequence[str | Path]) -> list[Any]:
    """Open every dataset under ``paths`` and check that each is a capture of ``env_id``.

    Raises:
        ValueError: A dataset of another env, or one without a recorded config.
    """
    from twinloop.datasets.reader import open_dataset

    out = []
    for folder in dataset_folders(paths):
        ds = open_dataset(folder)
        tl = ds.metadata.get("twinloop") or {}
        got = tl.get("env_id")
        if got != env_id:
            raise ValueError(
                f"{folder} is a capture of {got!r}, not {env_id!r}: fit it with "
                f"'twinloop sysid {got} --data {folder}', or leave it out"
            )
        if not isinstance(tl.get("env_config"), dict):
            raise ValueError(f"{folder}: no recorded config (twinloop.env_config); cannot fit")
        out.append(ds)
    return out


def config_key(env_id: str) -> str:
    """The ``"module:qualname"`` of ``env_id``'s config class (the :data:`FITTERS` key)."""
    from twinloop.core.registry import spec

    return spec(env_id).config_entry_point


def fitter_for(env_id: str) -> Callable[..., SysidResult]:
    """The fitter of ``env_id``'s system.

    Raises:
        ValueError: No fitter exists for its config class (the message lists those that do).
    """
    key = config_key(env_id)
    entry = FITTERS.get(key)
    if entry is None:
        have = ", ".join(sorted(FITTERS))
        raise ValueError(f"no system identification for {env_id} ({key}) yet; fitters: {have}")
    module, attr = entry.split(":")
    return getattr(importlib.import_module(module), attr)


def true_profile(datasets: Sequence[Any]) -> tuple[str | None, dict[str, Any] | None]:
    """The device profile the captures name, and its values when recorded (scoring only).

    Values come from ``twinloop.privileged.device_profile`` (``--device-profile``); captures
    that disagree give ``None`` values (no single truth to score against). A field that the
    profile does not name has its nominal value on the device.
    """
    names, values = set(), []
    for ds in datasets:
        tl = ds.metadata.get("twinloop") or {}
        priv = ((tl.get("privileged") or {}).get("device_profile")) or {}
        name = priv.get("name") or (tl.get("device_profile") or {}).get("name")
        names.add(name)
        values.append(priv.get("values"))
    name = names.pop() if len(names) == 1 else None
    if any(v is None for v in values) or any(v != values[0] for v in values):
        return name, None
    return name, dict(values[0])


def fit(
    env_id: str,
    dataset_dirs: Sequence[str | Path],
    *,
    boot: int = 0,
    seed: int = 0,
    max_episodes: int | None = None,
    progress: Progress | None = None,
) -> SysidResult:
    """Fit ``env_id``'s device parameters to the captures under ``dataset_dirs``.

    Args:
        env_id: A registered env id whose system has a fitter (:data:`FITTERS`).
        dataset_dirs: Dataset folders or roots holding several.
        boot: 0: intervals from a Laplace approximation of the likelihood; N > 0: from N
            bootstrap resamples of the episodes (percentile intervals).
        seed: Seed of the bootstrap and of the posterior samples.
        max_episodes: Use only the first N episodes (in dataset order), e.g. to see how the
            error shrinks with data.
        progress: ``progress(stage, done, total)``.

    Raises:
        ValueError: Bad arguments, datasets of another env, or too little data (the message
            says what to capture).
    """
    if isinstance(boot, bool) or not isinstance(boot, int) or boot < 0:
        raise ValueError(f"boot = {boot!r} must be an integer >= 0 (0: Laplace intervals)")
    if boot and boot < 20:
        raise ValueError(f"boot = {boot} is too few for 95 % intervals: use 0 or >= 20")
    if max_episodes is not None and (not isinstance(max_episodes, int) or max_episodes < 1):
        raise ValueError(f"max_episodes = {max_episodes!r} must be an integer >= 1")
    datasets = open_datasets(env_id, dataset_dirs)
    try:
        fitter = fitter_for(env_id)
    except ValueError:
        for ds in datasets:
            ds.close()
        raise
    try:
        result = fitter(
            datasets, boot=boot, seed=seed, max_episodes=max_episodes, progress=progress
        )
    finally:
        for ds in datasets:
            ds.close()
    result.env_id = env_id
    result.datasets = [str(ds.path) for ds in datasets]
    name, values = true_profile(datasets)
    result.profile_name = name
    if values:  # a field the profile leaves alone keeps the capture's nominal value
        result.estimates = [
            dataclasses.replace(e, true=_as_float(values.get(e.path, e.nominal)))
            for e in result.estimates
        ]
    return result


def _as_float(value: Any) -> float | None:
    """A scalar, or a table's mean (a table's estimate is its mean), else None."""
    if isinstance(value, tuple | list) and value and all(isinstance(v, int | float) for v in value):
        return float(np.mean(value))
    return float(value) if isinstance(value, int | float) else None
