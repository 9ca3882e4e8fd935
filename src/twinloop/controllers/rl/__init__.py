"""Learned agents in JAX: PPO and the value-based family, reincarnation, SGI pretraining.

PPO is optionally recurrent (a GRU core); the value-based family is DQN, n-step, double,
QR-DQN and BBF; reincarnation starts a student from a teacher (QDagger); SGI pretrains an
encoder on unlabeled captures.

Nothing here imports JAX until an agent is built or trained, so ``import twinloop`` and
``import twinloop.controllers`` stay light. A trained agent is a folder of checkpoints
(npz + json, no pickle) that :class:`~twinloop.controllers.rl.controller.AgentController`
runs as a controller on any backend (``twinloop run ID --controller agent:DIR``), with NumPy
alone.

Modules, each one idea: ``encoders`` (observation layouts; CNN, IMPALA ResNet, GRU / mean
token encoders and the GRU cell in NumPy and JAX), ``networks`` (the encoder's MLP torso,
simplicial embedding), ``bbf`` (BBF's n-step and gamma schedules, SPR, resets), ``policy``
(the acting network with its optional GRU core, shared by JAX training and NumPy
deployment), ``returns`` (n-step returns, GAE), ``losses`` (Huber, quantile Huber, target
EMA, SPR's cosine, distillation), ``replay``, ``normalize``, ``agent`` (the shell every agent
shares), ``dqn``, ``ppo``, ``reincarnate`` (a teacher's captures as replay; QDagger's decay),
``pretrain`` (SGI pretraining of an encoder on unlabeled captures), ``checkpoint``, ``train``
(the loop that writes checkpoints, metrics and the learning curve), ``controller``, and the
command lines ``cli`` and ``pretrain_cli``.
"""

from __future__ import annotations

#: Agent name (``twinloop agent train --agent NAME``) -> ``"module:Class"``.
AGENTS: dict[str, str] = {
    "ppo": "twinloop.controllers.rl.ppo:PPOAgent",
    "dqn": "twinloop.controllers.rl.dqn:DQNAgent",
    "qr-dqn": "twinloop.controllers.rl.dqn:QRDQNAgent",
    "bbf": "twinloop.controllers.rl.dqn:BBFAgent",
}

__all__ = ["AGENTS"]
