"""Si transitions from recorded STEM episodes: extraction, the paper's filters, C3v augmentation.

Schwarzer et al., arXiv:2311.17894 (``shared/reference/stem.md``, rate learning): a transition
is one dwell with the beam at an offset from the Si, followed by an image. The data are
filtered as the paper did, one rule each (:data:`FILTERS`): exactly one 3-fold Si before and
after (no failure), a single hop or none (multi-hop dropped), and consistent alignment (the
neighbours after the dwell must sit on the same lattice; a misalignment of more than half a
bond drops the transition). Coordinates are canonicalised: the beam offset is divided by the
bond length (1.42 A) and rotated so that neighbour 0 of the Si lies on +x, with neighbours 1
and 2 at +120 and +240 degrees; the label is the neighbour hopped to (-1: no hop).

The displacement of the Si in the sample frame is read from the observation without any
view-centre bookkeeping: the goal is fixed, so ``displacement = goal_offset_before -
goal_offset_after``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

BOND_ANGSTROM = 1.42
HALF_BOND = 0.71
NO_HOP = -1


@dataclasses.dataclass
class Transitions:
    """Canonicalised transitions (one row each).

    Attributes:
        beam: ``(n, 2)`` beam offset from the Si in bond lengths, neighbour 0 on +x.
        dwell_s: ``(n,)`` dwell time.
        current_na: ``(n,)`` beam current while parked.
        voltage_kv: ``(n,)`` beam energy.
        label: ``(n,)`` neighbour hopped to (0, 1, 2) in canonical order, or -1 (no hop).
    """

    beam: np.ndarray
    dwell_s: np.ndarray
    current_na: np.ndarray
    voltage_kv: np.ndarray
    label: np.ndarray

    def __len__(self) -> int:
        """Number of transitions."""
        return int(self.label.size)

    def subset(self, idx: np.ndarray) -> Transitions:
        """Rows ``idx``."""
        return Transitions(
            self.beam[idx],
            self.dwell_s[idx],
            self.current_na[idx],
            self.voltage_kv[idx],
            self.label[idx],
        )

    @staticmethod
    def concatenate(parts: Iterable[Transitions]) -> Transitions:
        """Join several sets."""
        parts = list(parts)
        if not parts:
            return Transitions(
                np.zeros((0, 2)), np.zeros(0), np.zeros(0), np.zeros(0), np.zeros(0, np.int64)
            )
        return Transitions(
            np.concatenate([p.beam for p in parts]),
            np.concatenate([p.dwell_s for p in parts]),
            np.concatenate([p.current_na for p in parts]),
            np.concatenate([p.voltage_kv for p in parts]),
            np.concatenate([p.label for p in parts]).astype(np.int64),
        )

    def hop_fraction(self) -> float:
        """Fraction of transitions with a hop."""
        return float((self.label >= 0).mean()) if len(self) else math.nan


@dataclasses.dataclass
class RawStep:
    """What one recorded step provides (arrays of length n, one row per step).

    Attributes:
        nbrs_before: ``(n, 3, 2)`` neighbour offsets before the dwell (A).
        nbrs_after: ``(n, 3, 2)`` neighbour offsets after.
        si_before: ``(n, 2)`` Si position in the view before (A).
        goal_before: ``(n, 2)`` goal offset from the Si before (A).
        goal_after: ``(n, 2)`` after.
        command: ``(n, 3)`` applied command: probe x, y in the view (A), dwell (s).
        failure: ``(n,)`` failure code after the step (0: none).
        current_na: ``(n,)`` parking current.
        voltage_kv: ``(n,)`` beam energy.
    """

    nbrs_before: np.ndarray
    nbrs_after: np.ndarray
    si_before: np.ndarray
    goal_before: np.ndarray
    goal_after: np.ndarray
    command: np.ndarray
    failure: np.ndarray
    current_na: np.ndarray
    voltage_kv: np.ndarray


def steps_from_episode(
    observations: np.ndarray,
    applied_command: np.ndarray,
    failure: np.ndarray,
    layout: Mapping[str, Mapping[str, Any]],
    current_na: float,
    voltage_kv: float,
) -> RawStep:
    """Read the fields the rate model needs from one recorded episode.

    Args:
        observations: ``(T + 1, D)`` flat observations.
        applied_command: ``(T, 3)`` probe x, y (view, A), dwell (s) as executed.
        failure: ``(T,)`` failure code of each step (0: none).
        layout: The env's ``metadata["observation_layout"]``.
        current_na: Parking current of the run.
        voltage_kv: Beam energy of the run.
    """

    def field(name: str) -> np.ndarray:
        entry = layout[name]
        part = observations[:, entry["start"] : entry["stop"]]
        return part.reshape(observations.shape[0], *entry["shape"]).astype(np.float64)

    nbrs = field("neighbor_offsets_angstrom")
    goal = field("goal_offset_angstrom")
    si = field("si_position_angstrom")
    t = applied_command.shape[0]
    if observations.shape[0] != t + 1:
        raise ValueError(
            f"an episode has one more observation than commands: got {observations.shape[0]} "
            f"observations for {t} commands"
        )
    return RawStep(
        nbrs_before=nbrs[:-1],
        nbrs_after=nbrs[1:],
        si_before=si[:-1],
        goal_before=goal[:-1],
        goal_after=goal[1:],
        command=np.asarray(applied_command, dtype=np.float64),
        failure=np.asarray(failure, dtype=np.int64),
        current_na=np.full(t, float(current_na)),
        voltage_kv=np.full(t, float(voltage_kv)),
    )


# --- filters: each returns the rows to keep ---------------------------------------------------
def keep_no_failure(s: RawStep) -> np.ndarray:
    """Exactly one 3-fold Si before and after: drop steps that ended in any failure."""
    return s.failure == 0


def keep_three_fold(s: RawStep) -> np.ndarray:
    """Three neighbours at a bond's length before and after (finite, 1.42 A +- 0.3)."""
    ok = np.ones(s.failure.shape, dtype=bool)
    for nb in (s.nbrs_before, s.nbrs_after):
        d = np.linalg.norm(nb, axis=-1)
        ok &= np.isfinite(d).all(axis=1) & (np.abs(d - BOND_ANGSTROM) < 0.3).all(axis=1)
    return ok


def _hop_label(s: RawStep) -> np.ndarray:
    """Neighbour index hopped to (-1 none, -2 no single-hop match) in the measurement's order."""
    disp = s.goal_before - s.goal_after
    dist_none = np.linalg.norm(disp, axis=-1)
    dist_k = np.linalg.norm(disp[:, None, :] - s.nbrs_before, axis=-1)
    k = dist_k.argmin(axis=1)
    label = np.full(disp.shape[0], -2, dtype=np.int64)
    label[dist_k[np.arange(k.size), k] < HALF_BOND] = k[dist_k[np.arange(k.size), k] < HALF_BOND]
    label[dist_none < HALF_BOND] = NO_HOP
    return label


def keep_single_hop(s: RawStep) -> np.ndarray:
    """The Si stayed or moved to one of its neighbours (multi-hop dwells dropped)."""
    return _hop_label(s) >= NO_HOP


def keep_aligned(s: RawStep) -> np.ndarray:
    """The neighbours after lie on the lattice of before (same or opposite bond directions).

    A hop flips the sublattice, so the bond directions after are the negatives of before;
    a view misaligned by more than half a bond shows as neighbours that match neither.
    """
    label = _hop_label(s)
    sign = np.where(label >= 0, -1.0, 1.0)[:, None, None]
    expected = sign * s.nbrs_before
    # compare as sets: each neighbour after must be within half a bond of one expected
    d = np.linalg.norm(s.nbrs_after[:, :, None, :] - expected[:, None, :, :], axis=-1)
    return (d.min(axis=2) < HALF_BOND).all(axis=1)


#: The exclusion rules, in the order they are applied (name -> rule).
FILTERS: dict[str, Callable[[RawStep], np.ndarray]] = {
    "failure": keep_no_failure,
    "three_fold": keep_three_fold,
    "single_hop": keep_single_hop,
    "aligned": keep_aligned,
}


def filter_steps(s: RawStep) -> tuple[np.ndarray, dict[str, int]]:
    """Rows passing every filter, and how many rows each rule dropped (in order)."""
    keep = np.ones(s.failure.shape, dtype=bool)
    dropped: dict[str, int] = {}
    for name, rule in FILTERS.items():
        ok = rule(s)
        dropped[name] = int((keep & ~ok).sum())
        keep &= ok
    return keep, dropped


def canonicalize(s: RawStep, keep: np.ndarray | None = None) -> Transitions:
    """Rotate each kept step into the frame with neighbour 0 on +x; label in that order."""
    keep = np.ones(s.failure.shape, dtype=bool) if keep is None else keep
    nb = s.nbrs_before[keep]
    angle0 = np.arctan2(nb[:, 0, 1], nb[:, 0, 0])
    c, sn = np.cos(-angle0), np.sin(-angle0)
    beam = s.command[keep, :2] - s.si_before[keep]
    bx = (c * beam[:, 0] - sn * beam[:, 1]) / BOND_ANGSTROM
    by = (sn * beam[:, 0] + c * beam[:, 1]) / BOND_ANGSTROM
    # canonical index of each measured neighbour: its angle from neighbour 0 in thirds of a turn
    rel = np.arctan2(nb[..., 1], nb[..., 0]) - angle0[:, None]
    canon = np.mod(np.rint(rel / (2 * np.pi / 3)), 3).astype(np.int64)
    raw = _hop_label(s)[keep]
    label = np.where(raw >= 0, canon[np.arange(raw.size), np.maximum(raw, 0)], NO_HOP)
    return Transitions(
        beam=np.stack([bx, by], axis=1),
        dwell_s=s.command[keep, 2],
        current_na=s.current_na[keep],
        voltage_kv=s.voltage_kv[keep],
        label=label.astype(np.int64),
    )


_ROT120 = np.array(
    [
        [math.cos(2 * math.pi / 3), -math.sin(2 * math.pi / 3)],
        [math.sin(2 * math.pi / 3), math.cos(2 * math.pi / 3)],
    ]
)


def augment_c3v(t: Transitions) -> Transitions:
    """The six C3v images of every transition (3 rotations x mirror), labels permuted.

    Rotating the beam by +120 degrees turns neighbour k's role into neighbour k + 1's; the
    mirror y -> -y swaps neighbours 1 and 2 and keeps 0.
    """
    parts = []
    for mirror in (False, True):
        beam = t.beam * np.array([1.0, -1.0]) if mirror else t.beam
        label = np.where(t.label > 0, 3 - t.label, t.label) if mirror else t.label
        for r in range(3):
            rot = np.linalg.matrix_power(_ROT120, r)
            parts.append(
                Transitions(
                    beam=beam @ rot.T,
                    dwell_s=t.dwell_s,
                    current_na=t.current_na,
                    voltage_kv=t.voltage_kv,
                    label=np.where(label >= 0, (label + r) % 3, label),
                )
            )
    return Transitions.concatenate(parts)


def from_dataset(dataset: Any) -> tuple[Transitions, dict[str, int]]:
    """Filtered, canonicalised transitions of every episode of a recorded STEM dataset.

    Works on any backend's recording (simulator, twin, instrument): it reads only the
    observations and the applied commands and failures stored in the infos.

    Args:
        dataset: A :class:`twinloop.datasets.Dataset`.

    Returns:
        ``(transitions, dropped)``: ``dropped`` counts the rows each filter removed.
    """
    meta = dataset.metadata.get("twinloop", dataset.metadata)
    env_meta = meta.get("env_metadata", {})
    layout = env_meta.get("observation_layout")
    if not layout or env_meta.get("system") != "stem":
        raise ValueError(f"{dataset.path} is not a STEM recording (no STEM observation layout)")
    beam = env_meta.get("beam", {})
    current, voltage = float(beam.get("current_na", 0.1)), float(beam.get("voltage_kv", 60.0))
    parts, dropped = [], dict.fromkeys(FILTERS, 0)
    for ep in dataset.iterate_episodes():
        if len(ep) == 0:
            continue
        steps = steps_from_episode(
            np.asarray(ep.observations),
            np.asarray(ep.infos["applied_command"])[1:],
            np.asarray(ep.infos["failure"])[1:],
            layout,
            current,
            voltage,
        )
        keep, d = filter_steps(steps)
        for k, v in d.items():
            dropped[k] += v
        parts.append(canonicalize(steps, keep))
    return Transitions.concatenate(parts), dropped
