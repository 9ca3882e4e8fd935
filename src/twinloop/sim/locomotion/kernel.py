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
* a reset runs ``mj_resetData`` and ``mj_forward`` with actuation disabled, draws the initial
  state by the domain's rule and ``mj_forward`` with actuation disabled again. Cheetah, walker
  and hopper draw the joints (:func:`randomize_joints`, dm_control's
  ``randomize_limited_and_rotational_joints`` rules; cheetah then settles 200 physics steps with
  zero control, time back to 0); humanoid redraws the joints until no geoms touch
  (``ncon == 0``); quadruped draws a uniformly random orientation of its root (a normalised
  normal 4-vector) and raises the root from z = 0 in 0.01 m steps, from a fresh
  ``mj_resetData`` each time, until no geoms touch. Both searches give up after
  :data:`MAX_PLACEMENT_TRIES` with a ``RuntimeError`` (dm_control: 10,000 for the quadruped,
  no limit for the humanoid).

The quadruped's model is dm_control's ``quadruped.xml`` with what its walk and run tasks remove
(the four walls, the ball, the target site, the terrain geom, the rangefinders) removed through
MuJoCo's ``MjSpec`` and the floor sized to ``time limit x speed`` (10 m walk, 100 m run); the
compiled model's numeric arrays equal dm_control's.

**Unstable physics.** MuJoCo answers a bad state (a NaN, infinite or huge (> 1e10) position,
velocity or acceleration) by counting a warning and resetting the data (``mj_resetData``)
inside the step; dm_control then raises ``PhysicsError`` (on any new warning). Here
:meth:`Physics.step` detects it (a warning count changed, or the time did not advance by the
control timestep, which is what MuJoCo's reset leaves behind) and sets the measurement's
``physics_unstable`` flag; the task then ends the episode (truncated, zero reward,
``info["physics_unstable"] = True``) and the observation is that of the state MuJoCo reset to.
MuJoCo's warning text goes to this module's logger, never to stdout or ``MUJOCO_LOG.TXT``
(:func:`route_mujoco_warnings`).

**Cost per step.** Setting the controls and gathering the measurement are one cached array
view and one ``np.take`` each: every quantity the measurement reads lives in the one buffer
that ``mj_makeData`` allocates, so a float64 view over the span of the fields used, made once
per ``MjData``, turns the gather into precomputed flat indices (:class:`Physics`).

What the task reads is a flat *measurement* per env (:func:`measurement_layout`): joint
positions, velocities and applied controls, plus the few body quantities a domain's reward
and observation need (torso sub-tree linear velocity, orientations, heights, touch forces).
Random draws come from the env's :mod:`twinloop.core.rng` streams, so N single envs and one
vector env of N start from identical states.

[DMC] Tassa et al., "DeepMind Control Suite", arXiv:1801.00690 (2018); dm_control 1.0.50
(``mujoco/engine.py``: ``Physics.step``, ``reset_context``; ``suite/utils/randomizers.py``).
"""

from __future__ import annotations

import ctypes
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
CONTROL_TIMESTEP_S = {
    "cheetah": 0.01,
    "walker": 0.025,
    "hopper": 0.02,
    "humanoid": 0.025,
    "quadruped": 0.02,
}
#: Physics steps with zero control after the joints are drawn (cheetah's "stabilize").
SETTLE_STEPS = {"cheetah": 200, "walker": 0, "hopper": 0, "humanoid": 0, "quadruped": 0}
#: How the initial state is drawn: joints, joints until nothing touches, root orientation.
INIT_JOINTS, INIT_JOINTS_FREE_OF_CONTACT, INIT_ORIENTATION_ABOVE_FLOOR = 0, 1, 2
INIT_RULE = {
    "cheetah": INIT_JOINTS,
    "walker": INIT_JOINTS,
    "hopper": INIT_JOINTS,
    "humanoid": INIT_JOINTS_FREE_OF_CONTACT,
    "quadruped": INIT_ORIENTATION_ABOVE_FLOOR,
}
#: Tries of the humanoid's and the quadruped's placement searches (dm_control: 10,000 heights).
MAX_PLACEMENT_TRIES = 10_000
#: The quadruped's placement search raises its root by this much per try (m) [DMC].
QUADRUPED_LIFT_M = 0.01
#: Floor half-size of the quadruped's tasks: time limit (20 s) x target speed (m) [DMC].
QUADRUPED_FLOOR_M = {"walk": 20 * 0.5, "run": 20 * 5.0}
#: What quadruped.xml holds for other tasks, removed for walk and run [DMC make_model].
QUADRUPED_REMOVED_GEOMS = ("wall_px", "wall_py", "wall_nx", "wall_ny", "terrain")
#: MuJoCo data fields whose entries the measurement gathers (all in mj_makeData's buffer).
GATHERED = ("qpos", "qvel", "act", "ctrl", "xpos", "xmat", "xipos", "sensordata")


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
    """The MJCF file of ``domain`` (``cheetah``, ``walker``, ``hopper``, ``humanoid``, ...).

    Raises:
        ValueError: Unknown domain (lists the known ones).
    """
    if domain not in CONTROL_TIMESTEP_S:
        raise ValueError(
            f"unknown control-suite domain {domain!r}; known: {', '.join(CONTROL_TIMESTEP_S)}"
        )
    return suite_dir() / f"{domain}.xml"


def load_model(domain: str, task: str = "") -> Any:
    """A fresh ``mujoco.MjModel`` of ``domain`` (each env owns its model: resets toggle flags).

    ``task`` matters for the quadruped only (its floor size; ``""``: walk's). MuJoCo's
    compiler warnings (cheetah's deprecated ``settotalmass``, which MuJoCo would print) go to
    this module's logger while the model loads.

    Raises:
        ValueError: A quadruped task other than walk or run.
    """
    mj = mujoco_module()
    path = model_path(domain)
    previous = mj.get_mju_user_warning()
    mj.set_mju_user_warning(lambda msg: log.debug("MuJoCo, loading %s: %s", path.name, msg))
    try:
        if domain != "quadruped":
            return mj.MjModel.from_xml_path(str(path))
        return _quadruped_model(mj, path, task or "walk")
    finally:
        mj.set_mju_user_warning(previous)


def _quadruped_model(mj: ModuleType, path: Path, task: str) -> Any:
    """quadruped.xml without what the walk and run tasks remove, its floor sized for ``task``."""
    if task not in QUADRUPED_FLOOR_M:
        raise ValueError(
            f"quadruped task {task!r} has no model here; known: {', '.join(QUADRUPED_FLOOR_M)}"
        )
    spec = mj.MjSpec.from_file(str(path))
    for name in QUADRUPED_REMOVED_GEOMS:
        spec.delete(spec.geom(name))
    spec.delete(spec.body("ball"))
    spec.delete(spec.site("target"))
    for sensor in list(spec.sensors):
        if sensor.type == mj.mjtSensor.mjSENS_RANGEFINDER:
            spec.delete(sensor)
    half = QUADRUPED_FLOOR_M[task]
    spec.geom("floor").size = [half, half, 0.5]
    return spec.compile()


def _log_mujoco_warning(msg: str) -> None:
    log.warning("MuJoCo: %s", msg)


def route_mujoco_warnings() -> None:
    """Send MuJoCo's warnings to this module's logger unless the process set its own handler.

    Without a handler MuJoCo prints them and appends them to ``MUJOCO_LOG.TXT`` in the working
    directory (an unstable state warns once per episode); a library must do neither.
    """
    mj = mujoco_module()
    if mj.get_mju_user_warning() is None:
        mj.set_mju_user_warning(_log_mujoco_warning)


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

        def sensors_of(*types: Any) -> np.ndarray:
            ids = [k for k in range(int(model.nsensor)) if int(model.sensor_type[k]) in types]
            return np.concatenate(
                [np.arange(model.sensor_adr[k], model.sensor_adr[k] + model.sensor_dim[k])
                 for k in ids]
            )  # fmt: skip

        nq, nv, nu, na = int(model.nq), int(model.nv), int(model.nu), int(model.na)
        ctrl_lo = float(np.min(model.actuator_ctrlrange[:, 0]))
        ctrl_hi = float(np.max(model.actuator_ctrlrange[:, 1]))
        gather: list[tuple[str, str, np.ndarray]] = [
            ("qpos", "qpos", np.arange(nq)),
            ("qvel", "qvel", np.arange(nv)),
            ("ctrl", "ctrl", np.arange(nu)),
        ]
        fields = [
            Field("qpos", (nq,), doc="joint positions (m, rad)"),
            Field("qvel", (nv,), doc="joint velocities (m/s, rad/s)"),
            Field("ctrl", (nu,), ctrl_lo, ctrl_hi, doc="applied controls"),
        ]
        # field 3 is the velocity the reward reads: the torso's own frame for the quadruped
        if domain == "quadruped":
            gather.append(("torso_velocimeter_m_per_s", "sensordata", sensor("velocimeter")))
            fields.append(Field("torso_velocimeter_m_per_s", (3,), doc="torso velocity, own frame"))
        else:
            gather.append(
                ("torso_subtree_linvel_m_per_s", "sensordata", sensor("torso_subtreelinvel"))
            )
            fields.append(
                Field("torso_subtree_linvel_m_per_s", (3,), doc="torso sub-tree linear velocity")
            )
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
        elif domain == "humanoid":
            torso = body("torso")
            limbs = [
                body(f"{side}_{limb}") for side in ("left", "right") for limb in ("hand", "foot")
            ]
            gather += [
                ("head_height_m", "xpos", np.array([3 * body("head") + 2])),
                ("torso_xmat", "xmat", np.arange(9 * torso, 9 * torso + 9)),
                ("torso_xpos_m", "xpos", np.arange(3 * torso, 3 * torso + 3)),
                (
                    "extremity_xpos_m",
                    "xpos",
                    np.concatenate([np.arange(3 * b, 3 * b + 3) for b in limbs]),
                ),
            ]
            fields += [
                Field("head_height_m", doc="head frame height (m)"),
                Field("torso_xmat", (9,), -1.0, 1.0, doc="torso frame, row-major (xx .. zz)"),
                Field("torso_xpos_m", (3,), doc="torso frame position (m)"),
                Field(
                    "extremity_xpos_m",
                    (4, 3),
                    doc="left hand, left foot, right hand, right foot (m)",
                ),
            ]
        elif domain == "quadruped":
            torso = body("torso")
            hinges = [j for j in range(int(model.njnt)) if int(model.jnt_type[j]) == JNT_HINGE]
            s = mj.mjtSensor
            gather += [
                ("hinge_qpos", "qpos", np.array([int(model.jnt_qposadr[j]) for j in hinges])),
                ("hinge_qvel", "qvel", np.array([int(model.jnt_dofadr[j]) for j in hinges])),
                ("act", "act", np.arange(na)),
                ("torso_upright", "xmat", np.array([9 * torso + 8])),
                ("imu", "sensordata", sensors_of(s.mjSENS_GYRO, s.mjSENS_ACCELEROMETER)),
                ("force_torque", "sensordata", sensors_of(s.mjSENS_FORCE, s.mjSENS_TORQUE)),
            ]
            n_imu, n_ft = gather[-2][2].size, gather[-1][2].size
            fields += [
                Field("hinge_qpos", (len(hinges),), doc="hinge joint angles (rad)"),
                Field("hinge_qvel", (len(hinges),), doc="hinge joint velocities (rad/s)"),
                Field("act", (na,), doc="actuator activations (filtered controls)"),
                Field("torso_upright", (), -1.0, 1.0, doc="zz of the torso frame"),
                Field("imu", (n_imu,), doc="gyro (rad/s) and accelerometer (m/s^2), sensor order"),
                Field("force_torque", (n_ft,), doc="toe force (N) and torque (N m) sensors"),
            ]
        fields.append(
            Field("physics_unstable", (), 0.0, 1.0, doc="1: MuJoCo reset a bad state this step")
        )
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


@njit
def _draw_orientation(i: int, rng: np.ndarray, quat: np.ndarray) -> None:
    """A uniformly random unit quaternion: a normal 4-vector over its norm (dm_control's rule)."""
    for k in range(4):
        quat[k] = normal(rng, i, STREAM_BACKEND)
    norm = math.sqrt(quat[0] ** 2 + quat[1] ** 2 + quat[2] ** 2 + quat[3] ** 2)
    for k in range(4):
        quat[k] /= norm


def _buffer_view(data: Any, fields: tuple[str, ...]) -> tuple[np.ndarray, dict[str, int]]:
    """A float64 view over the span of ``data``'s ``fields`` and where each starts in it.

    All of them live in the one buffer that ``mj_makeData`` allocates for the lifetime of the
    ``MjData`` (MuJoCo aligns every field to 8 bytes or more), so the view stays valid as long
    as the ``MjData`` does; the caller keeps a reference to it.
    """
    arrays = {f: getattr(data, f) for f in fields}
    used = {f: a for f, a in arrays.items() if a.size}
    base = min(a.ctypes.data for a in used.values())
    end = max(a.ctypes.data + a.nbytes for a in used.values())
    offsets = {}
    for f, a in arrays.items():
        gap = a.ctypes.data - base if a.size else 0
        if a.dtype != np.float64 or gap % 8 or not a.flags.c_contiguous:
            raise RuntimeError(f"MjData.{f} is not an aligned float64 array in MuJoCo's buffer")
        offsets[f] = gap // 8
    view = np.ctypeslib.as_array((ctypes.c_double * ((end - base) // 8)).from_address(base))
    return view, offsets


class Physics:
    """One MuJoCo model and data driven as dm_control's ``Physics`` drives them.

    Args:
        domain: The control-suite domain.
        task: The task (selects the quadruped's floor size; ignored by the other domains).
    """

    def __init__(self, domain: str, task: str = "") -> None:
        """Load the model (a private copy) and make its data."""
        mj = mujoco_module()
        route_mujoco_warnings()
        self._mj = mj
        self.facts = model_facts(domain)
        self.model = load_model(domain, task)
        self.data = mj.MjData(self.model)
        m, d = self.model, self.data
        self._joints = (
            np.ascontiguousarray(m.jnt_type, dtype=np.int64),
            np.ascontiguousarray(m.jnt_limited, dtype=np.int64),
            np.ascontiguousarray(m.jnt_range, dtype=np.float64),
            np.ascontiguousarray(m.jnt_qposadr, dtype=np.int64),
        )
        self._no_actuation = int(mj.mjtDisableBit.mjDSBL_ACTUATION)
        self._settle = SETTLE_STEPS[domain]
        self._init = INIT_RULE[domain]
        self._qpos = np.empty(self.facts.nq)
        self._quat = np.empty(4)
        self._root = int(m.jnt_qposadr[0]) if int(m.njnt) and int(m.jnt_type[0]) == JNT_FREE else -1
        # the whole measurement (but its last entry, the stability flag) is one np.take
        self._buffer, starts = _buffer_view(d, GATHERED)
        self._take = np.concatenate([starts[attr] + idx for _, attr, idx in self.facts.gather])
        self._n_take = self._take.size
        self._ctrl = d.ctrl
        self._warnings = d.warning.number
        self._warnings_before = self._warnings.tobytes()
        self._control_dt = self.facts.timestep_s * self.facts.n_sub_steps
        self._unstable = False

    def _forward_without_actuation(self) -> None:
        m = self.model
        flags = m.opt.disableflags
        m.opt.disableflags = flags | self._no_actuation
        try:
            self._mj.mj_forward(m, self.data)
        finally:
            m.opt.disableflags = flags

    def reset(self, rng: np.ndarray, i: int, settle: bool = True) -> None:
        """New episode: default state, initial state drawn from stream row ``i`` of ``rng``.

        ``settle=False`` runs only the first of the domain's settling steps (cheetah's; the one
        that acts on the position stage from before the draw, as dm_control's does) and leaves
        the others to the caller (a batch runs them for many envs at once, then sets the time
        back to 0).

        Raises:
            RuntimeError: No contact-free placement in :data:`MAX_PLACEMENT_TRIES` tries.
        """
        mj, m, d = self._mj, self.model, self.data
        mj.mj_resetData(m, d)
        self._forward_without_actuation()
        if self._init == INIT_ORIENTATION_ABOVE_FLOOR:
            self._place_above_floor(rng, i)
        else:
            q = self._qpos
            for _ in range(MAX_PLACEMENT_TRIES):
                q[:] = d.qpos
                randomize_joints(i, rng, *self._joints, q)
                d.qpos[:] = q
                if self._init == INIT_JOINTS:
                    break
                self._forward_without_actuation()
                if d.ncon == 0:
                    break
            else:
                raise RuntimeError(
                    f"{self.facts.domain}: no contact-free joint draw in "
                    f"{MAX_PLACEMENT_TRIES} tries"
                )
        if self._settle and settle:
            self._legacy_step(self._settle)
            d.time = 0.0
        elif self._settle:
            mj.mj_step2(m, d)  # the first settling step; the caller runs the rest
        self._forward_without_actuation()
        self._warnings_before = self._warnings.tobytes()
        self._unstable = False

    def _place_above_floor(self, rng: np.ndarray, i: int) -> None:
        """Random root orientation, lowest contact-free height on a 0.01 m grid (from 0)."""
        mj, m, d = self._mj, self.model, self.data
        _draw_orientation(i, rng, self._quat)
        a = self._root
        for k in range(MAX_PLACEMENT_TRIES):
            mj.mj_resetData(m, d)
            d.qpos[a : a + 3] = (0.0, 0.0, k * QUADRUPED_LIFT_M)
            d.qpos[a + 3 : a + 7] = self._quat
            self._forward_without_actuation()
            if d.ncon == 0:
                return
        raise RuntimeError(
            f"{self.facts.domain}: no contact-free height in {MAX_PLACEMENT_TRIES} tries "
            f"of {QUADRUPED_LIFT_M} m"
        )

    def _legacy_step(self, n: int) -> None:
        mj, m, d = self._mj, self.model, self.data
        mj.mj_step2(m, d)
        if n > 1:
            mj.mj_step(m, d, n - 1)
        mj.mj_step1(m, d)

    def step(self, ctrl: np.ndarray) -> None:
        """One control step: set ``ctrl`` and advance ``n_sub_steps`` physics steps.

        Afterwards :attr:`unstable` says whether MuJoCo met a bad state (and reset the data)
        or counted any other warning during the step.
        """
        d = self.data
        t0 = d.time
        self._ctrl[:] = ctrl
        self._legacy_step(self.facts.n_sub_steps)
        # MuJoCo's reset on a bad state zeroes the time: it then advanced by less than a step
        self._unstable = (
            d.time - t0 < 0.5 * self._control_dt
            or self._warnings.tobytes() != self._warnings_before
        )
        if self._unstable:
            self._warnings_before = self._warnings.tobytes()

    @property
    def unstable(self) -> bool:
        """Whether the last control step met a MuJoCo warning (see the module docstring)."""
        return self._unstable

    def measure(self, out: np.ndarray) -> None:
        """Write the measurement (:func:`measurement_layout`) of the current state into ``out``."""
        n = self._n_take
        np.take(self._buffer, self._take, out=out[:n])
        out[n] = 1.0 if self._unstable else 0.0
        if self._unstable and not np.isfinite(out[:n]).all():  # never hand on NaN or inf
            self.reset_to_default()
            np.take(self._buffer, self._take, out=out[:n])

    def reset_to_default(self) -> None:
        """MuJoCo's default state (``mj_resetData``), derived fields without actuation."""
        self._mj.mj_resetData(self.model, self.data)
        self._forward_without_actuation()

    def gather(self, out: np.ndarray) -> None:
        """Write the measurement's entries but the stability flag into ``out[:-1]``."""
        np.take(self._buffer, self._take, out=out[: self._n_take])

    def measurement(self) -> np.ndarray:
        """A new array holding the measurement of the current state."""
        out = np.empty(self._n_take + 1)
        self.measure(out)
        return out

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


def batch_module() -> ModuleType:
    """MuJoCo's ``mujoco.batch`` (MuJoCo >= 3.17), with a precise error when it is missing."""
    mj = mujoco_module()
    try:
        import mujoco.batch as batch
    except ImportError as exc:  # pragma: no cover - depends on the installed MuJoCo
        raise ImportError(
            f"the vector env steps its envs with mujoco.batch (MuJoCo >= 3.17); MuJoCo "
            f"{mj.__version__} lacks it: pip install -U 'twinloop[locomotion]'"
        ) from exc
    return batch


class BatchPhysics:
    """``n`` copies of one domain's model stepped together on MuJoCo's thread pool.

    The same physics as ``n`` :class:`Physics` objects, bit for bit, without Python per env
    on the step path: one ``mujoco.batch.Batch`` (persistent: one ``MjData`` per env) runs
    ``n_sub_steps`` x ``mj_step`` and then the position and velocity stages
    (``mjSTAGE_VEL``, what ``mj_step1`` computes) for every env on ``threads`` threads with
    the GIL released. For the Euler integrator that every domain uses this is dm_control's
    legacy step: ``mj_step2`` after ``mj_step1`` of the same state is one ``mj_step``. A
    reset draws the initial state on one scratch :class:`Physics` (the same code and draws
    as the single env), copies its integration state (``mjSTATE_INTEGRATION``: time, qpos,
    qvel, act, warm start, ctrl ...) into the env's row and takes the row's first
    measurement from the scratch physics, whose derived fields are those of
    :meth:`Physics.reset` (actuation disabled).

    Args:
        domain: The control-suite domain.
        task: The task (see :class:`Physics`).
        n: Number of envs.
        threads: Threads of the pool, the calling thread included.
    """

    def __init__(self, domain: str, task: str, n: int, threads: int) -> None:
        """Load the model, make the batch and bind the fields the measurement reads."""
        mj = mujoco_module()
        self._mj = mj
        self.scratch = Physics(domain, task)
        self.facts = self.scratch.facts
        self.n = n
        self.batch = batch_module().Batch(self.scratch.model, n, nthread=threads, persistent=True)
        b = self.batch
        self._spec = int(mj.mjtState.mjSTATE_INTEGRATION)
        if b.nstate != mj.mj_stateSize(self.scratch.model, self._spec):  # pragma: no cover
            raise RuntimeError("mujoco.batch's state rows are not mjSTATE_INTEGRATION")
        self._vel = int(mj.mjtStage.mjSTAGE_VEL)
        plan, col = [], 0
        for _, attr, idx in self.facts.gather:
            plan.append((b.bind(attr).reshape(n, -1), idx, slice(col, col + idx.size)))
            col += idx.size
        self._plan = plan
        self._n_take = col
        self.ctrl = b.bind("ctrl")
        self._time = b.bind("time")
        self._warnings = b.warning[..., 1]
        self._warnings_before = self._warnings.copy()
        self._control_dt = self.facts.timestep_s * self.facts.n_sub_steps
        self.unstable = np.zeros(n, dtype=np.bool_)
        # cheetah settles 200 physics steps after its draw: on the batch's threads, unless the
        # measurement reads a sensor of the acceleration stage (stale after mjSTAGE_VEL)
        m = self.scratch.model
        self._settle = SETTLE_STEPS[domain]
        read = [k for _, attr, idx in self.facts.gather if attr == "sensordata" for k in idx]
        owner = np.searchsorted(np.asarray(m.sensor_adr), read, side="right") - 1
        late = bool(read) and bool(np.any(np.asarray(m.sensor_needstage)[owner] > self._vel))
        self._settle_here = bool(self._settle) and not late
        b.reset()
        b.forward(stage=self._vel)

    def reset(self, rows: np.ndarray, rng: np.ndarray, meas: np.ndarray) -> None:
        """New episodes in ``rows``: draw each from its stream row, write its measurement."""
        if rows.size == 0:
            return
        s, st = self.scratch, self.batch.state
        here = self._settle_here
        for i in rows:
            s.reset(rng, int(i), settle=not here)
            self._mj.mj_getState(s.model, s.data, st[i], self._spec)
            if not here:
                s.measure(meas[i])
        if here:  # Physics.reset's settling, for every row at once: n x mj_step, time to 0
            self.batch.step(rows, nstep=self._settle - 1, stage=self._vel)
            self._time[rows] = 0.0
            for src, idx, cols in self._plan:
                meas[np.ix_(rows, np.arange(cols.start, cols.stop))] = src[rows][:, idx]
            meas[rows, self._n_take] = 0.0
        else:
            self.batch.forward(rows, stage=self._vel)
        self._warnings_before[rows] = self._warnings[rows]
        self.unstable[rows] = False

    def step(self, ctrl: np.ndarray, meas: np.ndarray) -> None:
        """One control step of every env with controls ``ctrl`` (n, nu); measure into ``meas``.

        Afterwards :attr:`unstable` flags the envs whose step met a MuJoCo warning (see
        :meth:`Physics.step`); their measurement carries the flag, and an env whose state is
        not finite is measured in MuJoCo's default state, as :meth:`Physics.measure` does.
        """
        t0 = self._time.copy()
        self.ctrl[:] = ctrl
        self.batch.step(nstep=self.facts.n_sub_steps, stage=self._vel)
        w = self._warnings
        unstable = np.any(w != self._warnings_before, axis=1)
        unstable |= self._time - t0 < 0.5 * self._control_dt
        self.unstable = unstable
        if unstable.any():
            self._warnings_before[unstable] = w[unstable]
        for src, idx, cols in self._plan:
            meas[:, cols] = src[:, idx]
        n = self._n_take
        meas[:, n] = unstable
        for i in np.flatnonzero(unstable):
            if not np.isfinite(meas[i, :n]).all():  # never hand on NaN or inf
                s = self.scratch
                s.reset_to_default()
                self._mj.mj_getState(s.model, s.data, self.batch.state[i], self._spec)
                s.gather(meas[i])
                self.batch.forward([int(i)], stage=self._vel)
                self._warnings_before[i] = w[i]
