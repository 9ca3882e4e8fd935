"""The physics of the control-suite domains: dm_control's MJCF models on C MuJoCo.

The models are the XML files that ship inside the installed ``dm_control`` package
(``dm_control/suite/<domain>.xml``); they are read from there with MuJoCo's own loader, and
``dm_control`` itself is never imported here. MuJoCo (official bindings, imported lazily by
:func:`mujoco_module`) does all the physics; this module only drives it the way dm_control's
``Physics`` does [DMC], so that a trajectory here equals dm_control's bit for bit:

* a control step sets ``ctrl`` and then runs ``mj_step2``, ``mj_step`` x (n_sub_steps - 1) and
  ``mj_step1`` (dm_control's "legacy step" for the Euler integrator, which every domain here
  uses): the position- and velocity-dependent fields (``xpos``, ``xmat``, ``xipos``, the
  position and velocity sensors) are those of the new state; acceleration-stage sensors
  (touch) are those of the last substep's start, as in dm_control;
* a reset runs ``mj_resetData`` and ``mj_forward`` with actuation disabled, draws the joints
  (:func:`randomize_joints`, dm_control's ``randomize_limited_and_rotational_joints`` rules),
  runs the domain's settling steps (cheetah: 200 physics steps with zero control, then time 0)
  and ``mj_forward`` with actuation disabled again.

What the task reads is a flat *measurement* per env (:func:`measurement_layout`): joint
positions, velocities and applied controls, plus the few body quantities a domain's reward
and observation need (torso sub-tree linear velocity, orientations, heights, touch forces).
Random draws come from the env's :mod:`twinloop.core.rng` streams, so N single envs and one
vector env of N start from identical states.

[DMC] Tassa et al., "DeepMind Control Suite", arXiv:1801.00690 (2018); dm_control 1.0.50
(``mujoco/engine.py``: ``Physics.step``, ``reset_context``; ``suite/utils/randomizers.py``).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import logging
import math
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from twinloop.core.jit import njit
from twinloop.core.layout import Field, Layout
from twinloop.core.rng import STREAM_BACKEND, normal, uniform, uniform_range

log = logging.getLogger(__name__)

#: MuJoCo joint types (``mjtJoint``).
JNT_FREE, JNT_BALL, JNT_SLIDE, JNT_HINGE = 0, 1, 2, 3

#: Control timestep of each domain (s) [DMC task files]; cheetah steps once per control step.
CONTROL_TIMESTEP_S = {"cheetah": 0.01, "walker": 0.025, "hopper": 0.02}
#: Physics steps with zero control after the joints are drawn (cheetah's "stabilize").
SETTLE_STEPS = {"cheetah": 200, "walker": 0, "hopper": 0}


def mujoco_module() -> ModuleType:
    """Import MuJoCo's Python bindings (the ``locomotion`` extra), with a precise error."""
    try:
        import mujoco
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        raise ImportError(
            f"twinloop.sim.locomotion needs MuJoCo ({exc}); "
            "install it with: pip install 'twinloop[locomotion]'"
        ) from exc
    return mujoco


def suite_dir() -> Path:
    """The folder of the control suite's MJCF models inside the installed dm_control.

    Raises:
        ImportError: dm_control is not installed (names the pip extra).
    """
    spec = importlib.util.find_spec("dm_control")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "the control-suite models ship with dm_control, which is not installed; "
            "install it with: pip install 'twinloop[locomotion]'"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "suite"


def model_path(domain: str) -> Path:
    """The MJCF file of ``domain`` (``cheetah``, ``walker``, ``hopper``).

    Raises:
        ValueError: Unknown domain (lists the known ones).
    """
    if domain not in CONTROL_TIMESTEP_S:
        raise ValueError(
            f"unknown control-suite domain {domain!r}; known: {', '.join(CONTROL_TIMESTEP_S)}"
        )
    return suite_dir() / f"{domain}.xml"


def load_model(domain: str) -> Any:
    """A fresh ``mujoco.MjModel`` of ``domain`` (each env owns its model: resets toggle flags).

    MuJoCo's compiler warnings (cheetah's deprecated ``settotalmass``, which MuJoCo would
    print) go to this module's logger while the model loads.
    """
    mj = mujoco_module()
    path = model_path(domain)
    previous = mj.get_mju_user_warning()
    mj.set_mju_user_warning(lambda msg: log.debug("MuJoCo, loading %s: %s", path.name, msg))
    try:
        return mj.MjModel.from_xml_path(str(path))
    finally:
        mj.set_mju_user_warning(previous)


@functools.cache
def model_facts(domain: str) -> ModelFacts:
    """Sizes, limits and indices of ``domain``'s model (loaded once per process)."""
    return ModelFacts.of(domain, load_model(domain))


@dataclasses.dataclass(frozen=True)
class ModelFacts:
    """What the env needs to know about a model without holding one.

    Attributes:
        domain: The domain name.
        nq: Generalised positions.
        nv: Degrees of freedom.
        nu: Actuators (= action size).
        ctrl_low: Lower control bound of each actuator.
        ctrl_high: Upper control bound of each actuator.
        actuator_names: Actuator names (action labels).
        n_sub_steps: Physics steps per control step.
        timestep_s: Physics timestep (s).
        gather: ``(field, MjData attribute, flat indices)`` that fill the measurement.
        layout: The measurement layout.
    """

    domain: str
    nq: int
    nv: int
    nu: int
    ctrl_low: np.ndarray
    ctrl_high: np.ndarray
    actuator_names: tuple[str, ...]
    n_sub_steps: int
    timestep_s: float
    gather: tuple[tuple[str, str, np.ndarray], ...]
    layout: Layout

    @classmethod
    def of(cls, domain: str, model: Any) -> ModelFacts:
        """Read the facts of ``domain`` from its compiled ``model``."""
        mj = mujoco_module()
        dt = float(model.opt.timestep)
        ratio = CONTROL_TIMESTEP_S[domain] / dt
        n_sub = round(ratio)
        if abs(ratio - n_sub) > 1e-6 * ratio or n_sub < 1:  # dm_control checks the same
            raise ValueError(
                f"{domain}: control timestep {CONTROL_TIMESTEP_S[domain]} s is not a multiple "
                f"of the physics timestep {dt} s"
            )

        def body(name: str) -> int:
            return int(mj.mj_name2id(model, mj.mjtObj.mjOBJ_BODY, name))

        def sensor(name: str) -> np.ndarray:
            k = int(mj.mj_name2id(model, mj.mjtObj.mjOBJ_SENSOR, name))
            adr, dim = int(model.sensor_adr[k]), int(model.sensor_dim[k])
            return np.arange(adr, adr + dim)

        nq, nv, nu = int(model.nq), int(model.nv), int(model.nu)
        gather: list[tuple[str, str, np.ndarray]] = [
            ("qpos", "qpos", np.arange(nq)),
            ("qvel", "qvel", np.arange(nv)),
            ("ctrl", "ctrl", np.arange(nu)),
            ("torso_subtree_linvel_m_per_s", "sensordata", sensor("torso_subtreelinvel")),
        ]
        fields = [
            Field("qpos", (nq,), doc="joint positions (m, rad)"),
            Field("qvel", (nv,), doc="joint velocities (m/s, rad/s)"),
            Field("ctrl", (nu,), -1.0, 1.0, doc="applied controls"),
            Field("torso_subtree_linvel_m_per_s", (3,), doc="torso sub-tree linear velocity"),
        ]
        if domain == "walker":
            nb = int(model.nbody) - 1  # every body but the world: xx and xz of its frame
            xmat = np.array([[9 * b, 9 * b + 2] for b in range(1, nb + 1)]).ravel()
            torso = body("torso")
            gather += [
                ("orientations", "xmat", xmat),
                ("torso_height_m", "xpos", np.array([3 * torso + 2])),
                ("torso_upright", "xmat", np.array([9 * torso + 8])),
            ]
            fields += [
                Field("orientations", (nb, 2), -1.0, 1.0, doc="xx, xz of each body frame"),
                Field("torso_height_m", doc="torso frame height (m)"),
                Field("torso_upright", (), -1.0, 1.0, doc="zz of the torso frame"),
            ]
        elif domain == "hopper":
            torso, foot = body("torso"), body("foot")
            touch = np.concatenate([sensor("touch_toe"), sensor("touch_heel")])
            gather += [
                ("touch_n", "sensordata", touch),
                ("torso_foot_com_z_m", "xipos", np.array([3 * torso + 2, 3 * foot + 2])),
            ]
            fields += [
                Field("touch_n", (2,), 0.0, math.inf, doc="toe and heel touch sensors (N)"),
                Field("torso_foot_com_z_m", (2,), doc="heights of torso and foot centres (m)"),
            ]
        names = tuple(
            mj.mj_id2name(model, mj.mjtObj.mjOBJ_ACTUATOR, k) or f"actuator {k}" for k in range(nu)
        )
        return cls(
            domain=domain,
            nq=nq,
            nv=nv,
            nu=nu,
            ctrl_low=np.asarray(model.actuator_ctrlrange[:, 0], dtype=np.float64).copy(),
            ctrl_high=np.asarray(model.actuator_ctrlrange[:, 1], dtype=np.float64).copy(),
            actuator_names=names,
            n_sub_steps=n_sub,
            timestep_s=dt,
            gather=tuple(gather),
            layout=Layout(fields),
        )


def measurement_layout(domain: str) -> Layout:
    """The measurement's named fields for ``domain``."""
    return model_facts(domain).layout


# --- joint randomisation (numba, from the env's backend stream) --------------------------------
@njit
def randomize_joints(
    i: int,
    rng: np.ndarray,
    jnt_type: np.ndarray,
    jnt_limited: np.ndarray,
    jnt_range: np.ndarray,
    jnt_qposadr: np.ndarray,
    qpos: np.ndarray,
) -> None:
    """Draw the joints of row ``i`` as dm_control's ``randomize_limited_and_rotational_joints``.

    Limited hinges and slides: uniform in their range. Unlimited hinges: uniform in
    [-pi, pi]. Unlimited balls: a normalised normal 4-vector; limited balls: a random axis and
    an angle uniform in [0, limit]. Free joints: their quaternion from a normalised uniform
    [0, 1)^4 vector (dm_control's rule), their position unchanged. Unlimited slides are kept.
    """
    for j in range(jnt_type.shape[0]):
        a = jnt_qposadr[j]
        t = jnt_type[j]
        if jnt_limited[j]:
            if t in (JNT_HINGE, JNT_SLIDE):
                qpos[a] = uniform_range(rng, i, STREAM_BACKEND, jnt_range[j, 0], jnt_range[j, 1])
            elif t == JNT_BALL:
                ax = np.empty(3)
                for k in range(3):
                    ax[k] = normal(rng, i, STREAM_BACKEND)
                norm = math.sqrt(ax[0] ** 2 + ax[1] ** 2 + ax[2] ** 2)
                angle = uniform(rng, i, STREAM_BACKEND) * jnt_range[j, 1]
                s = math.sin(0.5 * angle)
                qpos[a] = math.cos(0.5 * angle)
                for k in range(3):
                    qpos[a + 1 + k] = s * ax[k] / norm
        elif t == JNT_HINGE:
            qpos[a] = uniform_range(rng, i, STREAM_BACKEND, -math.pi, math.pi)
        elif t in (JNT_BALL, JNT_FREE):
            off = a if t == JNT_BALL else a + 3
            q = np.empty(4)
            for k in range(4):
                q[k] = (
                    normal(rng, i, STREAM_BACKEND)
                    if t == JNT_BALL
                    else uniform(rng, i, STREAM_BACKEND)
                )
            norm = math.sqrt(q[0] ** 2 + q[1] ** 2 + q[2] ** 2 + q[3] ** 2)
            for k in range(4):
                qpos[off + k] = q[k] / norm


class Physics:
    """One MuJoCo model and data driven as dm_control's ``Physics`` drives them.

    Args:
        domain: The control-suite domain.
    """

    def __init__(self, domain: str) -> None:
        """Load the model (a private copy) and make its data."""
        mj = mujoco_module()
        self._mj = mj
        self.facts = model_facts(domain)
        self.model = load_model(domain)
        self.data = mj.MjData(self.model)
        m = self.model
        self._joints = (
            np.ascontiguousarray(m.jnt_type, dtype=np.int64),
            np.ascontiguousarray(m.jnt_limited, dtype=np.int64),
            np.ascontiguousarray(m.jnt_range, dtype=np.float64),
            np.ascontiguousarray(m.jnt_qposadr, dtype=np.int64),
        )
        self._no_actuation = int(mj.mjtDisableBit.mjDSBL_ACTUATION)
        self._settle = SETTLE_STEPS[domain]
        self._qpos = np.empty(self.facts.nq)

    def _forward_without_actuation(self) -> None:
        m = self.model
        flags = m.opt.disableflags
        m.opt.disableflags = flags | self._no_actuation
        try:
            self._mj.mj_forward(m, self.data)
        finally:
            m.opt.disableflags = flags

    def reset(self, rng: np.ndarray, i: int) -> None:
        """New episode: default state, joints drawn from stream row ``i`` of ``rng``, settled."""
        mj, m, d = self._mj, self.model, self.data
        mj.mj_resetData(m, d)
        self._forward_without_actuation()
        q = self._qpos
        q[:] = d.qpos
        randomize_joints(i, rng, *self._joints, q)
        d.qpos[:] = q
        if self._settle:
            self._legacy_step(self._settle)
            d.time = 0.0
        self._forward_without_actuation()

    def _legacy_step(self, n: int) -> None:
        mj, m, d = self._mj, self.model, self.data
        mj.mj_step2(m, d)
        if n > 1:
            mj.mj_step(m, d, n - 1)
        mj.mj_step1(m, d)

    def step(self, ctrl: np.ndarray) -> None:
        """One control step: set ``ctrl`` and advance ``n_sub_steps`` physics steps."""
        self.data.ctrl[:] = ctrl
        self._legacy_step(self.facts.n_sub_steps)

    def measure(self, out: np.ndarray) -> None:
        """Write the measurement (:func:`measurement_layout`) of the current state into ``out``."""
        d = self.data
        k = 0
        for _, attr, idx in self.facts.gather:
            n = idx.size
            out[k : k + n] = getattr(d, attr).ravel()[idx]
            k += n

    def state(self) -> dict[str, Any]:
        """Copies of the physical state (time, qpos, qvel, act, ctrl)."""
        d = self.data
        return {
            "time_s": float(d.time),
            "qpos": d.qpos.copy(),
            "qvel": d.qvel.copy(),
            "act": d.act.copy(),
            "ctrl": d.ctrl.copy(),
        }

    def set_state(self, qpos: np.ndarray, qvel: np.ndarray, act: np.ndarray, ctrl: Any) -> None:
        """Set the state and recompute every derived quantity (``mj_forward``)."""
        d = self.data
        d.qpos[:] = qpos
        d.qvel[:] = qvel
        d.act[:] = act
        d.ctrl[:] = ctrl
        self._mj.mj_forward(self.model, d)
