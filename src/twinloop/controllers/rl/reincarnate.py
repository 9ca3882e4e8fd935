"""Reincarnation (QDagger): a teacher's captured episodes as offline data for a student.

Agarwal et al. 2022, "Reincarnating Reinforcement Learning: Reusing Prior Computation to
Accelerate Progress", start a value-based student from a teacher policy in two phases:

1. offline: the student is trained on the teacher's data with its TD loss plus a
   distillation term (:func:`~twinloop.controllers.rl.losses.distillation_loss`);
2. online: the student collects its own data and keeps the distillation term, its weight
   decaying to 0, so the student can outgrow the teacher.

Any twinloop controller is a teacher (classical, or ``agent:DIR``). Its data is captured
with the datasets recorder (what ``twinloop run --record`` writes; ``twinloop agent train
--teacher`` captures it in :func:`twinloop.controllers.rl.cli.capture_teacher`), read back
with :func:`twinloop.datasets.open_dataset`, and turned into a replay buffer here
(:func:`teacher_replay`; this layer reads no files). The trainer asks the same controller
for its actions on the student's states during the online phase.

The teacher's observations are stored as the student stores its own (its
:class:`~twinloop.controllers.rl.encoders.ObsLayout`): float32 rows for a vector Box, packed
uint8 rows (images as bytes, token ids, vectors) for an image Box or a Dict, so an rgb
environment reincarnates as a vector one does. :func:`teacher_return` gives the teacher's
mean episode return, the ``G_T`` of QDagger's performance-based decay
(:meth:`~twinloop.controllers.rl.dqn.DQNAgent.distill_weight`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from twinloop.controllers.rl.encoders import IMAGE, ObsLayout
from twinloop.controllers.rl.replay import ReplayBuffer

#: Dataset id of a capture made by ``twinloop agent train --teacher``.
TEACHER_DATASET = "twinloop/teacher-v0"


def pack_episode_observations(
    observations: Any, layout: ObsLayout, name: str = "of the teacher"
) -> np.ndarray:
    """An episode's ``L + 1`` observations as the student's stored rows ``(L + 1, width)``.

    Args:
        observations: An array (Box) or a mapping of arrays (Dict), ``L + 1`` rows each, as
            :class:`twinloop.datasets.EpisodeData` holds them.
        layout: The student's observation layout.
        name: Names the data in error messages.

    Raises:
        ValueError: The observations do not fit the student's layout: a missing Dict key, a
            part of another shape, an image that is not uint8 (the message names the part,
            its shape or dtype, and the student's).
    """
    if layout.dict:
        if not isinstance(observations, Mapping):
            raise ValueError(
                f"data {name} has {type(observations).__name__} observations; the student "
                f"sees a Dict with keys {', '.join(layout.keys)}"
            )
        missing = [k for k in layout.keys if k not in observations]
        if missing:
            raise ValueError(
                f"data {name} lacks observation keys {', '.join(missing)} that the student "
                f"sees (it has {', '.join(observations)})"
            )
        parts = {k: np.asarray(observations[k]) for k in layout.keys}
    else:
        if isinstance(observations, Mapping):
            raise ValueError(
                f"data {name} has Dict observations (keys {', '.join(observations)}); the "
                f"student sees a Box of shape {layout.parts[0].shape}"
            )
        parts = {"": np.asarray(observations)}
    for p in layout.parts:
        arr = parts[p.key]
        label = f"observation {p.key!r}" if p.key else "observations"
        if arr.shape[1:] != p.shape:
            raise ValueError(
                f"data {name} has {label} of shape {arr.shape[1:]}, the student's are {p.shape}"
            )
        if p.kind == IMAGE and arr.dtype != np.uint8:
            raise ValueError(
                f"data {name} has {label} as {arr.dtype} images; the student stores uint8 "
                f"images of shape {p.shape}"
            )
    obs = parts if layout.dict else parts[""]
    return layout.pack(obs)


def teacher_replay(
    episodes: Sequence[Any],
    layout: ObsLayout,
    action: dict[str, Any],
    window: int,
    name: str = "of the teacher",
) -> ReplayBuffer:
    """The transitions of captured episodes as a one-row replay buffer.

    ``episodes`` are :class:`twinloop.datasets.EpisodeData` (or anything with its
    ``observations``, ``actions``, ``rewards``, ``terminations`` and ``truncations``).
    Observations are packed into ``layout``'s rows (:func:`pack_episode_observations`), so
    the buffer's dtype and width are the student's own replay's. Every transition's teacher
    action is its recorded action (agent units). An episode whose capture stopped before it
    ended counts as truncated.

    Raises:
        ValueError: The episodes' observations or actions do not fit the student, or they
            hold no transition.
    """
    steps = sum(len(e.rewards) for e in episodes)
    if steps == 0:
        raise ValueError(f"data {name} holds no transition")
    buf = ReplayBuffer(max(steps, window), 1, layout.width, window, layout.dtype)
    for ep in episodes:
        length = len(ep.rewards)
        if length == 0:
            continue
        rows = pack_episode_observations(ep.observations, layout, name)
        if rows.shape[0] != length + 1:
            raise ValueError(
                f"data {name} has an episode of {length} steps with {rows.shape[0]} "
                f"observations; expected {length + 1}"
            )
        acts = np.asarray(ep.actions).astype(np.int64).reshape(-1) - int(action["start"])
        if acts.min() < 0 or acts.max() >= int(action["n"]):
            raise ValueError(
                f"data {name} has actions {acts.min() + action['start']}.."
                f"{acts.max() + action['start']}, outside the student's "
                f"{action['start']}..{action['start'] + action['n'] - 1}"
            )
        for t in range(length):
            last = t == length - 1
            trunc = bool(ep.truncations[t]) or (last and not bool(ep.terminations[t]))
            buf.add(
                rows[t : t + 1], acts[t : t + 1], [float(ep.rewards[t])],
                [bool(ep.terminations[t])], [trunc], rows[t + 1 : t + 2], acts[t : t + 1],
            )  # fmt: skip
    return buf


def teacher_return(episodes: Sequence[Any], name: str = "of the teacher") -> float:
    """The mean undiscounted return of captured episodes (QDagger's ``G_T``).

    Raises:
        ValueError: No episode.
    """
    if not episodes:
        raise ValueError(f"data {name} holds no episode")
    return float(np.mean([float(np.sum(e.rewards)) for e in episodes]))
