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
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from twinloop.controllers.rl.networks import flat_dim
from twinloop.controllers.rl.replay import ReplayBuffer

#: Dataset id of a capture made by ``twinloop agent train --teacher``.
TEACHER_DATASET = "twinloop/teacher-v0"


def teacher_replay(
    episodes: Sequence[Any],
    observation_shape: tuple[int, ...],
    action: dict[str, Any],
    window: int,
    name: str = "of the teacher",
) -> ReplayBuffer:
    """The transitions of captured episodes as a one-row replay buffer.

    ``episodes`` are :class:`twinloop.datasets.EpisodeData` (or anything with its
    ``observations``, ``actions``, ``rewards``, ``terminations`` and ``truncations``). Every
    transition's teacher action is its recorded action (agent units). An episode whose
    capture stopped before it ended counts as truncated.

    Raises:
        ValueError: The episodes' observations or actions do not fit the student.
    """
    obs_dim = flat_dim(observation_shape)
    steps = sum(len(e.rewards) for e in episodes)
    if steps == 0:
        raise ValueError(f"data {name} holds no transition")
    buf = ReplayBuffer(max(steps, window), 1, obs_dim, window)
    for ep in episodes:
        obs = np.asarray(ep.observations, np.float32)
        if obs.shape[1:] != tuple(observation_shape):
            raise ValueError(
                f"data {name} has observations of shape {obs.shape[1:]}, the "
                f"student's are {tuple(observation_shape)}"
            )
        acts = np.asarray(ep.actions).astype(np.int64).reshape(-1) - int(action["start"])
        if acts.min() < 0 or acts.max() >= int(action["n"]):
            raise ValueError(f"data {name} has actions outside the student's")
        length = len(ep.rewards)
        for t in range(length):
            last = t == length - 1
            trunc = bool(ep.truncations[t]) or (last and not bool(ep.terminations[t]))
            buf.add(
                obs[t].reshape(1, obs_dim), acts[t : t + 1], [float(ep.rewards[t])],
                [bool(ep.terminations[t])], [trunc], obs[t + 1].reshape(1, obs_dim),
                acts[t : t + 1],
            )  # fmt: skip
    return buf
