"""Quadruped system identification: a robot's plant values from its joint trajectories.

What a robot reports per step is enough (``twinloop/QuadrupedVelocity-v0`` captures): the
observation (joint positions and velocities, relative to the default pose, with the config's
noise and observation delay) and the joint targets that reached the robot (``info
["applied_command"]``); gains, physics step, decimation, noise and observation delay bounds come
from the capture's recorded config. ``true/...`` infos are never read; the device profile in a
capture's privileged metadata is used by :mod:`twinloop.sysid.base` for scoring only.

The fit re-simulates every captured episode in MuJoCo with the simulator's own plant
(:class:`~twinloop.sim.locomotion.velocity.QuadrupedPhysics`, no second copy of the physics):
the robot is posed at the first observation's joint angles, feet on the floor and at rest (as
a reset leaves it), and driven open loop by the captured targets; the predicted joint
positions and velocities, shifted by the episode's observation delay, are compared with the
observed ones. A capture of a standing robot that moves its joints (random targets around the
default pose, :func:`excitation_actions`) keeps the replay close to the robot for seconds: the
PD loops and the stance make the dynamics dissipative, so an error in the initial state fades.

* The observation delay of an episode is read exactly: the first observation fills the delay
  line, so the first ``d + 1`` frames are identical copies.
* The residuals are the observed minus replayed joint angles and velocities, each channel in
  units of its observation noise's standard deviation, after a burn-in of
  :data:`BURN_IN_STEPS` control steps.
* Each episode's initial joint angles are fitted too (:meth:`Replayer.refine_starts`): the
  first observation's carry the sensor noise, and a replay from a wrong stance sags
  differently, which biases the plant values (measured: +0.5 kg of payload at 24 episodes).
  Starts and plant values are fitted in turn (:data:`START_ROUNDS`).
* Continuous parameters (motor strength, joint friction scale and the floor's friction in
  log, added base mass in kg) by Nelder-Mead on the least-squares sum (the replay's contacts
  and joint friction make the sum rough at fine steps, which stalls finite-difference
  Gauss-Newton); the actuation delay on the simulator's own grid (it rounds the delay to
  whole physics steps, 5 ms by default) by walking the grid from the best of a scan.
* The floor's friction is fitted with the plant, not held at nominal: MuJoCo's contacts are
  soft, a loaded foot creeps at a rate its friction sets, and on a slippery floor the feet
  slip as the joints move. Held at nominal it biased the rest beyond their intervals
  (measured, 10 episodes of 2 s of robots drawn from the prior: on floors of friction
  0.64-0.68 the replay's residual rms was 1.4-1.7 noise sds against ~1.1 near nominal, the
  motor strength up to 19 % and the payload up to 1.5 kg off; one robot's rms at its true
  plant values fell from 1.90 with the nominal floor to 1.24 with its own). Where the sum is
  flat along it (the feet did not slip measurably) it is held at the fit's value and
  reported as not identified.
* Intervals (``boot = 0``): a normal approximation, its curvature from a quadratic fitted to
  each episode's least-squares sum around the optimum (:data:`HESSIAN_STEP`), its variance
  the larger of the cluster-robust sandwich (the spread of the episodes' gradients: it holds
  when residuals within an episode are correlated and when the replay is off in ways that
  differ between episodes) and the naive variance scaled by the median robust-to-naive
  ratio, with a Student-t quantile on ``episodes - parameters`` degrees of freedom; the
  interval is the union of those around the fits at every delay kept (the motor strength
  trades off against the delay one grid step off). When the floor's friction is flat it is
  held and the rest's curvature measured again without it; a parameter along which the sum
  is still flat is reported as not identified. The delay's interval is the set of grid
  values whose deviance, scaled by the same ratio, is within the 95 % chi-square bound of
  the best, widened by half a grid step (every delay in a grid cell simulates alike).
  Measured over 24 robots drawn from the prior (10 episodes of 2 s each, the slow test
  ``test_intervals_cover_random_robots_over_repeats``): 91 of 96 intervals hold the truth
  (94.8 %; median widths: motor strength 0.27, payload 1.75 kg, joint friction 0.76, delay
  5 ms), the floor's friction identified for 20, all covered. With the floor held at nominal
  and the variance scaled by one median factor it was 50 of 64 over 16 of them (78 %; widths
  0.24, 1.30 kg, 0.57, 5 ms): the misses were bias, not width.
  ``boot = N``: percentile intervals of N refits on episodes resampled with replacement
  (the refits keep the starts fitted on all the data and start at its optimum: narrower
  than they should be; prefer 0).
* A capture the open-loop replay cannot follow (a walking or stumbling robot: residual rms
  above :data:`MAX_RMS` noise sds) is refused with a message saying what to capture.

Identifiability (from joint data of a standing robot): scaling every mass, the motor strength
and the joint friction by one factor leaves the dynamics unchanged (up to the rotors'
armature), so ``plant.mass_scale`` is not identified: it is held at nominal and the intervals
of motor strength, joint friction and added mass (which scale with it) are widened by its
prior range (the floor's friction, a coefficient, does not scale). Per-episode randomisation
on the device (a twin with hidden effects) is not modelled: captures for identification are
taken without it (as a real robot, whose physics are fixed); a random action latency on top
of the plant's would be absorbed into the fitted delay.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from twinloop.core.config import from_dict, override
from twinloop.sim.locomotion.velocity_config import RANDOM_EFFECT_SWITCHES
from twinloop.sysid.base import ParameterEstimate, Progress, SysidResult

#: The continuous parameters the fit moves: path, log scale?
CONTINUOUS = (
    ("plant.motor_strength", True),
    ("plant.added_base_mass_kg", False),
    ("plant.joint_friction_scale", True),
    ("plant.floor_friction", True),
)
#: The floor's friction: fitted (feet slip on a slippery floor), not scaled by the mass scale.
FLOOR = "plant.floor_friction"
FLOOR_INDEX = len(CONTINUOUS) - 1
DELAY = "plant.actuation_delay_ms"
#: The prior range of ``plant.mass_scale`` relative to nominal (see the sim's profile).
MASS_SCALE_PATH = "plant.mass_scale"
#: Fewest episodes for a fit (the interval's t quantile needs episodes > parameters + 1).
MIN_EPISODES = 5
#: Fewest control steps of an episode to use it.
MIN_STEPS = 20
#: Observation-noise floors (a noise-free capture still has model error): rad, rad/s.
SIGMA_FLOOR = (0.005, 0.2)
#: Control steps at an episode's start left out of the residuals: the replay starts from the
#: first observation's noisy joint angles, and the error it makes fades over these.
BURN_IN_STEPS = 25
#: Control steps of an episode's start that fit its initial joint angles (0.6 s at 50 Hz).
START_HORIZON_STEPS = 30
#: Scale of the fit coordinates (log motor strength, kg, log joint friction scale, log floor
#: friction).
X_SCALE = (0.05, 0.5, 0.2, 0.2)
#: Steps of the quadratic fitted to the least-squares sum for the intervals (fit coordinates).
HESSIAN_STEP = (0.06, 1.0, 0.2, 0.2)
#: Rounds of fitting the episodes' initial joint angles and the parameters in turn.
START_ROUNDS = 2
#: Largest residual rms (in noise standard deviations) at the best fit for the replay to count
#: as following the robot (a good replay of a standing robot: ~1.1).
MAX_RMS = 2.0
#: Largest actuation delay the fit considers, in physics steps beyond the prior's top.
DELAY_MARGIN_STEPS = 2


@dataclasses.dataclass
class Episode:
    """One captured episode, as the fit uses it.

    Attributes:
        dataset: Index of its dataset (its model config).
        q0: ``(12,)`` joint angles of the first observation (rad, absolute).
        targets: ``(T, 12)`` joint targets that reached the robot (rad).
        q: ``(T, 12)`` observed joint angles after each step (rad, absolute).
        qd: ``(T, 12)`` observed joint velocities after each step (rad/s).
        obs_delay: Observation delay in control steps (read from the leading repeats).
        start: ``(12,)`` the replay's initial joint angles: ``q0``, refined by the fit.
    """

    dataset: int
    q0: np.ndarray
    targets: np.ndarray
    q: np.ndarray
    qd: np.ndarray
    obs_delay: int
    start: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))

    def __post_init__(self) -> None:
        """Start the replay at the first observation."""
        if self.start.size == 0:
            self.start = self.q0.copy()


@dataclasses.dataclass(frozen=True)
class Capture:
    """What one dataset's recorded config fixes: the model config and the residual weights."""

    cfg: Any
    sigma_q: float
    sigma_qd: float
    half_width_q: float


def excitation_actions(
    rng: np.random.Generator, steps: int, amplitude: float = 0.3, hold: tuple[int, int] = (4, 10)
) -> np.ndarray:
    """Actions for an identification capture: random joint targets around the default pose.

    Each target (``default pose + action_scale * action``, the action uniform in
    ``[-amplitude, amplitude]`` per joint) is held for ``hold`` control steps (inclusive,
    drawn uniformly): steps excite the delay and the motors, holds show the sag under load.
    0.3 (0.15 rad at the default action scale) keeps the robot standing; 0.5 makes it stumble,
    and the open-loop replay of a stumble does not follow the robot.

    Raises:
        ValueError: ``amplitude`` outside ``(0, 1]`` or a bad ``hold``.
    """
    if not 0.0 < amplitude <= 1.0:
        raise ValueError(f"amplitude = {amplitude} must be in (0, 1] (actions are in [-1, 1])")
    if not 1 <= hold[0] <= hold[1]:
        raise ValueError(f"hold = {hold} must be (low, high) with 1 <= low <= high control steps")
    out = np.zeros((steps, 12), dtype=np.float32)
    t = 0
    while t < steps:
        n = int(rng.integers(hold[0], hold[1] + 1))
        out[t : t + n] = rng.uniform(-amplitude, amplitude, 12)
        t += n
    return out


def _field(obs: np.ndarray, layout: dict[str, Any], name: str) -> np.ndarray:
    entry = layout[name]
    return obs[:, entry["start"] : entry["stop"]].astype(np.float64)


def capture_of(dataset: Any) -> Capture:
    """The fit's model config of a quadruped capture (randomisation off) and its weights.

    Raises:
        ValueError: Not a QuadrupedVelocity capture, or observation-delay jitter (the delay of
            each step would be unknown).
    """
    from twinloop.sim.locomotion.velocity_config import QuadrupedVelocityConfig

    tl = dataset.metadata.get("twinloop") or {}
    raw = tl.get("env_config")
    meta = tl.get("env_metadata") or {}
    layout = meta.get("observation_layout") or {}
    if (
        meta.get("system") != "locomotion"
        or not isinstance(raw, dict)
        or "joint_pos_rad" not in (layout)
    ):
        raise ValueError(f"{dataset.path} is not a QuadrupedVelocity capture (no joint layout)")
    cfg = from_dict(QuadrupedVelocityConfig, raw)
    if cfg.latency.observation_enabled and cfg.latency.observation_jitter_steps:
        raise ValueError(
            f"{dataset.path}: captured with latency.observation_jitter_steps = "
            f"{cfg.latency.observation_jitter_steps}; the fit needs a fixed observation delay "
            "per episode (capture with it at 0)"
        )
    cfg = override(cfg, **dict.fromkeys(RANDOM_EFFECT_SWITCHES, False))
    noise = cfg.noise
    level = noise.level if noise.enabled else 0.0
    # uniform noise U(-h, h) has standard deviation h / sqrt(3)
    sq = max(level * noise.joint_pos_rad / math.sqrt(3.0), SIGMA_FLOOR[0])
    sqd = max(level * noise.joint_vel_rad_per_s / math.sqrt(3.0), SIGMA_FLOOR[1])
    return Capture(cfg, sq, sqd, level * noise.joint_pos_rad)


def observation_delay(frames: np.ndarray, low: int, high: int) -> int:
    """An episode's observation delay: how many frames after the first repeat it exactly.

    Args:
        frames: ``(T + 1, k)`` the newest proprioceptive frame of each observation.
        low: The config's smallest delay.
        high: The config's largest delay.

    Raises:
        ValueError: The repeats disagree with the config's bounds.
    """
    d = 0
    while d + 1 < frames.shape[0] and np.array_equal(frames[d + 1], frames[0]):
        d += 1
    if not low <= d <= high and d + 1 < frames.shape[0]:
        raise ValueError(
            f"an episode's first {d + 1} observations are identical, so its observation delay "
            f"is {d} steps, outside the recorded config's {low}..{high}: is this the config "
            "it was captured with?"
        )
    return d


def read_captures(
    datasets: Sequence[Any], max_episodes: int | None = None
) -> tuple[list[Episode], list[Capture], dict[str, int]]:
    """Every usable episode (the first ``max_episodes`` only, if given) and each capture's model.

    Raises:
        ValueError: No usable episode, or captures without ``applied_command`` infos.
    """
    from twinloop.sim.locomotion.velocity import DEFAULT_POSE

    captures = [capture_of(ds) for ds in datasets]
    episodes: list[Episode] = []
    dropped = {"too_short": 0}
    for j, ds in enumerate(datasets):
        layout = ds.metadata["twinloop"]["env_metadata"]["observation_layout"]
        lat = captures[j].cfg.latency
        lo, hi = (
            (lat.observation_delay_min_steps, lat.observation_delay_max_steps)
            if lat.observation_enabled
            else (0, 0)
        )
        for ep in ds.iterate_episodes():
            if max_episodes is not None and len(episodes) >= max_episodes:
                break
            if len(ep) < MIN_STEPS:
                dropped["too_short"] += 1
                continue
            infos = ep.infos
            if "applied_command" not in infos:
                raise ValueError(f"{ds.path}: episodes have no 'applied_command' info; cannot fit")
            obs = np.asarray(ep.observations)
            q = _field(obs, layout, "joint_pos_rad") + DEFAULT_POSE
            qd = _field(obs, layout, "joint_vel_rad_per_s")
            d = observation_delay(np.hstack([q, qd]), lo, hi)
            episodes.append(
                Episode(
                    dataset=j,
                    q0=q[0].copy(),
                    targets=np.asarray(infos["applied_command"], dtype=np.float64)[1:],
                    q=q[1:],
                    qd=qd[1:],
                    obs_delay=d,
                )
            )
    if len(episodes) < MIN_EPISODES:
        raise ValueError(
            f"{len(episodes)} usable episodes (of >= {MIN_STEPS} steps), {MIN_EPISODES} needed: "
            "capture more (e.g. 'twinloop run twinloop/QuadrupedVelocity-v0 --record DIR')"
        )
    return episodes, captures, dropped


# --- the model -----------------------------------------------------------------------------------
class Replayer:
    """Re-simulates captured episodes for candidate plant values (one MuJoCo model per call).

    Args:
        episodes: The episodes.
        captures: Each dataset's model config and weights.
    """

    def __init__(self, episodes: Sequence[Episode], captures: Sequence[Capture]) -> None:
        """Remember the episodes; nothing is simulated yet."""
        self.episodes = list(episodes)
        self.captures = list(captures)
        self.evaluations = 0

    def sizes(self, episodes: Sequence[int]) -> list[int]:
        """Length of each episode's residual vector."""
        out = []
        for e in episodes:
            n = self.episodes[e].targets.shape[0]
            out.append(2 * 12 * (n - min(BURN_IN_STEPS, n // 2)))
        return out

    def _physics(self, cfg: Any, values: dict[str, float]) -> Any:
        from twinloop.sim.locomotion.velocity import QuadrupedPhysics

        return QuadrupedPhysics(override(cfg, **values))

    def _replay(self, ph: Any, ep: Episode, steps: int) -> tuple[np.ndarray, np.ndarray]:
        """Pose the robot at ``ep.start`` on the floor, at rest; drive it by the targets."""
        from twinloop.core.rng import new_streams
        from twinloop.sim.locomotion.kernel import mujoco_module
        from twinloop.sim.locomotion.velocity import FOOT_RADIUS_M, LEGS

        mj = mujoco_module()
        m, d = ph.model, ph.data
        ph.reset(new_streams(1), 0)  # nothing random is on: the draws are the nominal values
        feet = [int(mj.mj_name2id(m, mj.mjtObj.mjOBJ_GEOM, f"{leg}_foot")) for leg in LEGS]
        d.qpos[3:7] = (1.0, 0.0, 0.0, 0.0)  # the yaw does not matter on a flat floor
        d.qpos[7:] = ep.start
        d.qvel[:] = 0.0
        mj.mj_kinematics(m, d)
        lowest = min(float(d.geom_xpos[g, 2]) for g in feet)
        d.qpos[2] -= lowest - FOOT_RADIUS_M  # feet just on the floor, as a reset leaves them
        mj.mj_forward(m, d)
        q = np.empty((steps, 12))
        qd = np.empty((steps, 12))
        for t in range(steps):
            ph.step(ep.targets[t])
            q[t] = d.qpos[7:]
            qd[t] = d.qvel[6:]
        k = ep.obs_delay
        if k:  # observation t shows the state after step t - k (the first one before that)
            q = np.vstack([np.repeat(ep.q0[None], k, 0), q[: steps - k]])
            qd = np.vstack([np.zeros((k, 12)), qd[: steps - k]])
        return q, qd

    def _residual(self, ep: Episode, q: np.ndarray, qd: np.ndarray, first: int) -> np.ndarray:
        cap = self.captures[ep.dataset]
        n = q.shape[0]
        r = np.concatenate(
            [
                ((ep.q[first:n] - q[first:]) / cap.sigma_q).ravel(),
                ((ep.qd[first:n] - qd[first:]) / cap.sigma_qd).ravel(),
            ]
        )
        return np.nan_to_num(r, nan=1e6, posinf=1e6, neginf=-1e6)

    def residuals(self, values: dict[str, float], episodes: Sequence[int]) -> list[np.ndarray]:
        """Weighted residuals (observed - predicted) per episode, flattened, for ``values``."""
        self.evaluations += 1
        out: list[np.ndarray] = []
        phys_of: dict[int, Any] = {}
        for e in episodes:
            ep = self.episodes[e]
            if ep.dataset not in phys_of:
                phys_of[ep.dataset] = self._physics(self.captures[ep.dataset].cfg, values)
            n = ep.targets.shape[0]
            q, qd = self._replay(phys_of[ep.dataset], ep, n)
            out.append(self._residual(ep, q, qd, min(BURN_IN_STEPS, n // 2)))
        return out

    def refine_starts(self, values: dict[str, float], iterations: int = 3) -> None:
        """Fit each episode's initial joint angles to its first ``START_HORIZON_STEPS`` steps.

        The first observation's angles carry the sensor noise (uniform, half-width ``h``), so
        the true ones lie within ``h`` of them; the replay of the next steps, whose noise is
        independent, pins them down. Without this, the noise of the starting pose biases the
        fit (a replay from a wrong stance sags differently).
        """
        from scipy.optimize import least_squares

        phys_of: dict[int, Any] = {}
        for ep in self.episodes:
            cap = self.captures[ep.dataset]
            if cap.half_width_q <= 0.0:
                continue  # noise-free angles: the first observation is the start
            if ep.dataset not in phys_of:
                phys_of[ep.dataset] = self._physics(cap.cfg, values)
            ph = phys_of[ep.dataset]
            n = min(START_HORIZON_STEPS, ep.targets.shape[0])

            def fun(x: np.ndarray, ep: Episode = ep, ph: Any = ph, n: int = n) -> np.ndarray:
                ep.start = x
                return self._residual(ep, *self._replay(ph, ep, n), 0)

            h = cap.half_width_q
            sol = least_squares(
                fun, ep.q0.copy(), bounds=(ep.q0 - h, ep.q0 + h), diff_step=1e-3,
                x_scale=h, max_nfev=iterations,
            )  # fmt: skip
            ep.start = np.asarray(sol.x, dtype=np.float64)
            self.evaluations += 1


@dataclasses.dataclass
class _Fit:
    u: np.ndarray  # continuous parameters in fit coordinates
    delay_steps: int
    rss: float


def _values(u: np.ndarray, delay_steps: int, step_ms: float) -> dict[str, float]:
    out = {
        path: float(math.exp(x) if log else x) for (path, log), x in zip(CONTINUOUS, u, strict=True)
    }
    out[DELAY] = delay_steps * step_ms
    return out


def _bounds() -> tuple[np.ndarray, np.ndarray]:
    """Fit-coordinate bounds: well beyond the prior's range, within the config's limits."""
    lo = np.array([math.log(0.4), -3.0, math.log(0.05), math.log(0.1)])
    hi = np.array([math.log(2.0), 15.0, math.log(8.0), math.log(3.0)])
    return lo, hi


def _fit_at(
    rep: Replayer,
    episodes: Sequence[int],
    delay_steps: int,
    u0: np.ndarray,
    step_ms: float,
    size: float = 0.7,
    max_fev: int = 30,
) -> _Fit:
    """Minimise the least-squares sum over the continuous parameters at one delay.

    Nelder-Mead in coordinates scaled by :data:`X_SCALE`, from a simplex of ``size`` scaled
    units around ``u0`` (the floor's friction stepped down: above the friction at which the
    feet slip the sum is flat in it): the replay's contacts and joint friction make the sum
    rough at fine steps, which stalls derivative-based fits (finite-difference Jacobians) on
    the ridge where motor strength and payload trade off.
    """
    from scipy.optimize import minimize

    lo, hi = _bounds()
    scale = np.asarray(X_SCALE)

    def rss(z: np.ndarray) -> float:
        u = np.clip(z * scale, lo, hi)
        r = rep.residuals(_values(u, delay_steps, step_ms), episodes)
        return float(sum(float(x @ x) for x in r))

    z0 = np.clip(u0, lo, hi) / scale
    steps = size * np.eye(z0.size)
    steps[-1, -1] = -size  # the floor's friction (the last coordinate): down, towards slip
    simplex = np.vstack([z0, *(z0 + steps)])
    sol = minimize(
        rss, z0, method="Nelder-Mead",
        options={"initial_simplex": simplex, "maxfev": max_fev, "xatol": 0.05, "fatol": 1.0},
    )  # fmt: skip
    u = np.clip(np.asarray(sol.x) * scale, lo, hi)
    return _Fit(u, delay_steps, float(sol.fun))


def _design(p: int) -> list[np.ndarray]:
    """The quadratic's design points in steps: the centre, +-1 along each axis, the diagonals."""
    points = [np.zeros(p)]
    for i in range(p):
        for sgn in (1.0, -1.0):
            z = np.zeros(p)
            z[i] = sgn
            points.append(z)
    for i in range(p):
        for j in range(i):
            for a, b in ((1, 1), (1, -1), (-1, 1), (-1, -1)):
                z = np.zeros(p)
                z[i], z[j] = a, b
                points.append(z)
    return points


def _rss_quadratic(
    rep: Replayer,
    episodes: Sequence[int],
    best: _Fit,
    step_ms: float,
    free: Sequence[int] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hessian of the least-squares sum at ``best`` and each episode's gradient and sum.

    A quadratic is fitted to each episode's sum of squares at the centre, one step either way
    along each parameter and the four diagonal steps of each pair (:data:`HESSIAN_STEP`);
    the Hessian is the sum of the episodes'. Finite-difference Jacobians are not used: the
    replay's roughness decorrelates their columns and hides the ridge along which motor
    strength and payload trade off, which the quadratic sees. Only the ``free`` parameters
    (all by default) are stepped; the rest keep their rows and columns zero.

    Returns:
        ``(p, p)`` Hessian, ``(E, p)`` gradients and ``(E,)`` sums at ``best``.
    """
    idx = np.arange(best.u.size) if free is None else np.asarray(free, dtype=int)
    p = idx.size
    h = np.asarray(HESSIAN_STEP)[idx]
    lo, hi = _bounds()
    rows, ys = [], []
    for z in _design(p):
        u = best.u.copy()
        u[idx] = np.clip(best.u[idx] + z * h, lo[idx], hi[idx])
        x = (u[idx] - best.u[idx]) / h
        r = rep.residuals(_values(u, best.delay_steps, step_ms), episodes)
        ys.append([float(v @ v) for v in r])
        rows.append([1.0, *x, *(x[i] * x[j] for i in range(p) for j in range(i + 1))])
    coef = np.linalg.lstsq(np.asarray(rows), np.asarray(ys), rcond=None)[0]  # (terms, E)
    grads = coef[1 : 1 + p].T / h
    hess = np.zeros((p, p))
    k = 1 + p
    for i in range(p):
        for j in range(i + 1):
            c = float(coef[k].sum())
            k += 1
            if i == j:
                hess[i, i] = 2.0 * c
            else:
                hess[i, j] = hess[j, i] = c
    full_h = np.zeros((best.u.size, best.u.size))
    full_h[np.ix_(idx, idx)] = hess / np.outer(h, h)
    full_g = np.zeros((len(ys[0]), best.u.size))
    full_g[:, idx] = grads
    return full_h, full_g, np.asarray(ys[0])


def _covariances(
    hess: np.ndarray, grads: np.ndarray, sigma2: float, free: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Cluster-robust and naive covariances of the ``free`` parameters (the rest held).

    Robust: the sandwich ``A^-1 B A^-1`` with ``A`` the Hessian of the least-squares sum and
    ``B`` the spread of the episodes' gradients (episodes as clusters, [CR]: Cameron & Miller
    2015, "A practitioner's guide to cluster-robust inference", J. Human Resources 50(2)),
    times ``E / (E - p)``. It holds when the residuals within an episode are correlated and
    when the model is off in ways that differ between episodes. Naive: ``2 sigma^2 A^-1``
    (independent residuals of variance ``sigma^2``), which tells a flat direction.
    """
    idx = np.asarray(free, dtype=int)
    a = 0.5 * (hess[np.ix_(idx, idx)] + hess[np.ix_(idx, idx)].T)
    w, v = np.linalg.eigh(a)
    w = np.maximum(w, 1e-9 * max(float(w.max()), 1e-300))  # a flat direction: a huge variance
    a_inv = (v / w) @ v.T
    g = grads[:, idx] - grads[:, idx].mean(axis=0)
    e = grads.shape[0]
    robust = a_inv @ (g.T @ g) @ a_inv * e / max(e - idx.size, 1)
    return robust, 2.0 * sigma2 * a_inv


def _delay_grid(cfg: Any) -> tuple[float, int]:
    """The physics step (ms) and the largest delay the fit tries, in physics steps."""
    from twinloop.sim.locomotion.profile import PRIORS

    step_ms = 1000.0 * cfg.control.sim_dt_s
    top = next(p for p in PRIORS if p.path == DELAY).high
    return step_ms, int(math.ceil(top / step_ms)) + DELAY_MARGIN_STEPS


def _scan(
    rep: Replayer,
    episodes: Sequence[int],
    step_ms: float,
    top: int,
    u: np.ndarray,
    progress: Progress | None = None,
) -> int:
    """The grid delay (physics steps) that replays best at ``u``: the walk's start."""
    scan = {}
    for k in range(top + 1):
        r = rep.residuals(_values(u, k, step_ms), episodes)
        scan[k] = float(sum(float(x @ x) for x in r))
        if progress:
            progress("delay scan", k + 1, top + 1)
    return min(scan, key=scan.__getitem__)


def _walk(
    rep: Replayer,
    episodes: Sequence[int],
    step_ms: float,
    top: int,
    u_start: np.ndarray,
    k0: int,
) -> tuple[_Fit, dict[int, _Fit]]:
    """Fit at delay ``k0``, then walk the grid while a neighbour fits better.

    Returns the best fit and every fit by delay.
    """
    fits: dict[int, _Fit] = {k0: _fit_at(rep, episodes, k0, u_start, step_ms, max_fev=20)}
    best = fits[k0]
    while True:
        moved = False
        for k in (best.delay_steps - 1, best.delay_steps + 1):
            if 0 <= k <= top and k not in fits:
                fits[k] = _fit_at(rep, episodes, k, best.u, step_ms, max_fev=25)
                if fits[k].rss < best.rss:
                    best, moved = fits[k], True
        if not moved:
            break
    return best, fits


def _delay_interval(
    best: _Fit, rss: dict[int, float], factor: float, n: int, p: int, step_ms: float
) -> tuple[float, float, list[int]]:
    """Grid delays whose scaled deviance is within the 95 % bound; as an interval in ms."""
    sigma2 = best.rss / max(n - p - 1, 1)
    low = min(rss.values())
    keep = [k for k, v in rss.items() if (v - low) / (sigma2 * factor) < 3.841]
    lo = max(0.0, (min(keep) - 0.5) * step_ms)
    hi = (max(keep) + 0.5) * step_ms
    return lo, hi, sorted(keep)


def _check_follows(rms: float) -> None:
    """Refuse a fit whose replay does not follow the captures (residual rms in noise sds)."""
    if rms > MAX_RMS:
        raise ValueError(
            f"the simulator's replay does not follow the captures: residual rms {rms:.1f} noise "
            f"sd (> {MAX_RMS:g}) at the best fit. The fit replays episodes open loop; capture a "
            "standing robot moving its joints gently (targets within ~0.15 rad of the default "
            "pose, held 0.1-0.2 s), not walking or stumbling"
        )


def _t975(dof: int) -> float:
    from scipy.stats import t

    return float(t.ppf(0.975, max(dof, 1)))


def fit_robot(
    datasets: Sequence[Any],
    *,
    boot: int = 0,
    seed: int = 0,
    max_episodes: int | None = None,
    progress: Progress | None = None,
    n_samples: int = 2000,
) -> SysidResult:
    """Fit a quadruped's identifiable plant values to its joint trajectories (module doc).

    Args:
        datasets: Open ``twinloop/QuadrupedVelocity-v0`` captures of one robot.
        boot: 0 for normal-approximation intervals, else the number of bootstrap resamples
            of episodes (>= 20).
        seed: Seed of the samples and of the bootstrap.
        max_episodes: Use the first N episodes only.
        progress: ``progress(stage, done, total)``.
        n_samples: Posterior samples drawn from the normal approximation (``boot = 0``).

    Raises:
        ValueError: Bad arguments, too little data or an unusable capture (the message says
            what to do).
    """
    if isinstance(boot, bool) or not isinstance(boot, int) or boot < 0:
        raise ValueError(
            f"boot = {boot!r} must be an integer >= 0 (0: normal-approximation intervals)"
        )
    if boot and boot < 20:
        raise ValueError(f"boot = {boot} is too few for 95 % intervals: use 0 or >= 20")
    episodes, captures, dropped = read_captures(datasets, max_episodes)
    cfg0 = captures[0].cfg
    step_ms, top = _delay_grid(cfg0)
    if any(abs(1000.0 * c.cfg.control.sim_dt_s - step_ms) > 1e-9 for c in captures):
        raise ValueError("the captures differ in control.sim_dt_s: fit each on its own")
    rep = Replayer(episodes, captures)
    every = list(range(len(episodes)))
    nominal = cfg0.plant
    u_nom = np.array(
        [
            math.log(nominal.motor_strength),
            nominal.added_base_mass_kg,
            math.log(max(nominal.joint_friction_scale, 0.05)),
            math.log(min(max(nominal.floor_friction, 0.1), 3.0)),
        ]
    )

    k0 = _scan(rep, every, step_ms, top, u_nom, progress)
    fit0 = _fit_at(rep, every, k0, u_nom, step_ms, size=2.0, max_fev=60)
    _check_follows(math.sqrt(fit0.rss / sum(rep.sizes(every))))
    for _ in range(START_ROUNDS):  # the starts and the parameters, in turn
        rep.refine_starts(_values(fit0.u, k0, step_ms))
        fit0 = _fit_at(rep, every, k0, fit0.u, step_ms, max_fev=25)
        if progress:
            progress("fit", _ + 1, START_ROUNDS)
    best, fits = _walk(rep, every, step_ms, top, fit0.u, k0)
    n = sum(rep.sizes(every))
    rms = math.sqrt(best.rss / n)
    _check_follows(rms)
    hess, grads, _ = _rss_quadratic(rep, every, best, step_ms)
    p = len(CONTINUOUS)
    e = len(episodes)
    sigma2 = best.rss / max(n - p, 1)
    b_lo, b_hi = _bounds()
    free = list(range(p))
    while True:  # hold what the sum is flat along (the floor's friction where no foot slips)
        robust, naive = _covariances(hess, grads, sigma2, free)
        tq = _t975(e - len(free))
        ratio = np.diag(robust) / np.maximum(np.diag(naive), 1e-300)
        factor = float(max(1.0, np.median(ratio)))
        sd = np.sqrt(np.clip(np.maximum(np.diag(robust), factor * np.diag(naive)), 0.0, None))
        wide = [i for j, i in enumerate(free) if not 2.0 * tq * sd[j] < b_hi[i] - b_lo[i]]
        if FLOOR_INDEX not in wide or len(free) == 1:
            break
        # held at the fit's value; the rest's curvature measured again without it (the four-
        # parameter quadratic's cross terms with a flat direction make the rest's block rough)
        free.remove(FLOOR_INDEX)
        hess, grads, _ = _rss_quadratic(rep, every, best, step_ms, free)
    while True:  # fit the grid's neighbours of every kept delay until they are left out
        rss = {k: f.rss for k, f in fits.items()}
        d_lo, d_hi, d_keep = _delay_interval(best, rss, factor, n, len(free), step_ms)
        todo = {k for j in d_keep for k in (j - 1, j + 1) if 0 <= k <= top and k not in fits}
        if not todo:
            break
        for k in sorted(todo):
            fits[k] = _fit_at(rep, every, k, best.u, step_ms, max_fev=25)
    centres = np.array([fits[k].u for k in d_keep])  # the fit at every kept delay
    est: dict[str, tuple[float, float, float, str]] = {}
    for j, i in enumerate(free):
        path, log = CONTINUOUS[i]
        if i in wide:
            continue
        a = max(float(centres[:, i].min()) - tq * sd[j], b_lo[i] - 10.0)
        b = min(float(centres[:, i].max()) + tq * sd[j], b_hi[i] + 10.0)
        f = math.exp if log else float
        est[path] = (
            float(f(best.u[i])),
            float(f(a)),
            float(f(b)),
            f"normal approximation: curvature of the least-squares sum, the larger of the "
            f"cluster-robust (episodes) and the naive variance, t with {e - len(free)} dof; "
            f"the union over the {len(d_keep)} delay(s) kept",
        )
    est[DELAY] = (
        best.delay_steps * step_ms,
        d_lo,
        d_hi,
        f"profile over the {step_ms:g} ms grid (delays within one step simulate alike); "
        f"grid values kept: {[k * step_ms for k in d_keep]}",
    )
    flat_paths = {
        path: (
            "the feet did not slip (the least-squares sum is flat along the floor's friction): "
            "these captures do not identify it; held at the fit's value"
            if path == FLOOR
            else "the least-squares sum is flat along this parameter (its 95 % interval would "
            "span more than the fit's whole range): these captures do not identify it; capture "
            "more or longer episodes"
        )
        for i, (path, _) in enumerate(CONTINUOUS)
        if i not in free or i in wide
    }
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0x0B07,)))
    # a mixture over the kept delays: each sample picks one, and the fit's values there
    pick = rng.integers(0, len(d_keep), n_samples)
    r_sd = np.sqrt(np.clip(np.diag(robust), 1e-300, None))
    corr = robust / np.outer(r_sd, r_sd)  # the robust correlations, the variances reported
    np.fill_diagonal(corr, 1.0)
    cov = corr * np.outer(sd, sd)
    draws = centres[pick][:, free] + rng.multivariate_normal(
        np.zeros(len(free)), cov, size=n_samples, method="eigh"
    )
    # the mass scale is not identified: every sample takes a draw of it from its prior range
    c_lo, c_hi = _mass_scale_range()
    scale = rng.uniform(c_lo, c_hi, n_samples)
    cols = []
    for j, i in enumerate(free):
        path, log = CONTINUOUS[i]
        if i in wide:
            continue
        col = np.exp(draws[:, j]) if log else draws[:, j]
        cols.append(col if path == FLOOR else scale * col)
    delays = np.asarray(d_keep, dtype=np.float64)[pick]
    cols.append(
        np.clip(rng.uniform((delays - 0.5) * step_ms, (delays + 0.5) * step_ms), d_lo, d_hi)
    )
    samples = np.column_stack(cols)
    method = (
        "normal approximation: 95 % intervals from the curvature of the least-squares sum and "
        "the larger of the cluster-robust (episodes as clusters) and the naive variance, the "
        "union over the delays kept; delay: profile over the physics-step grid"
    )
    w = np.linalg.eigvalsh(0.5 * (hess + hess.T))
    details: dict[str, Any] = {
        "delay_rss": {f"{k * step_ms:g} ms": v for k, v in sorted(rss.items())},
        "delays_kept_ms": [k * step_ms for k in d_keep],
        "fit_at_kept_delays": {
            f"{k * step_ms:g} ms": _values(fits[k].u, k, step_ms) for k in d_keep
        },
        "correlation_factor": factor,
        "held_flat": sorted(flat_paths),
        "flat_direction": bool(np.any(w <= 0.0)),
        "curvature_eigenvalues": [float(x) for x in w],
        "hessian": hess.tolist(),
        "episode_gradients": grads.tolist(),
        "sd_robust": {
            CONTINUOUS[i][0]: float(math.sqrt(max(robust[j, j], 0.0))) for j, i in enumerate(free)
        },
        "sd_naive": {
            CONTINUOUS[i][0]: float(math.sqrt(max(naive[j, j], 0.0))) for j, i in enumerate(free)
        },
        "rss": best.rss,
        "residual_rms": rms,
        "residuals": n,
        "observation_delays": [ep.obs_delay for ep in episodes],
        "dropped_episodes": dropped,
        "simulations": rep.evaluations,
    }
    if boot:
        reps = []
        brng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0xB007,)))
        for b in range(boot):
            pick = [int(i) for i in brng.integers(0, e, e)]
            f_b, _ = _walk(rep, pick, step_ms, top, best.u, best.delay_steps)
            reps.append([*_values(f_b.u, f_b.delay_steps, step_ms).values()])
            if progress:
                progress("bootstrap", b + 1, boot)
        samples = np.asarray(reps, dtype=np.float64)
        paths = [path for path, _ in CONTINUOUS] + [DELAY]
        for k, path in enumerate(paths):
            if path not in est:
                continue
            lo, hi = np.percentile(samples[:, k], [2.5, 97.5])
            if path == DELAY:
                lo, hi = max(0.0, lo - 0.5 * step_ms), hi + 0.5 * step_ms
            est[path] = (est[path][0], float(lo), float(hi), f"bootstrap over episodes ({boot})")
        method = f"bootstrap: percentile 95 % intervals of {boot} refits on resampled episodes"
    est = _widen_for_mass_scale(est)
    sample_paths = [path for path, _ in CONTINUOUS if path not in flat_paths] + [DELAY]
    if boot:
        keep = [k for k, (path, _) in enumerate(CONTINUOUS) if path not in flat_paths]
        samples = samples[:, [*keep, len(CONTINUOUS)]]
    return SysidResult(
        env_id="",
        n_episodes=e,
        n_transitions=int(sum(ep.targets.shape[0] for ep in episodes)),
        estimates=_estimates(cfg0, est, flat_paths),
        samples=samples,
        sample_paths=sample_paths,
        method=method,
        details=details,
    )


def _mass_scale_range() -> tuple[float, float]:
    from twinloop.sim.locomotion.profile import PRIORS

    prior = next(p for p in PRIORS if p.path == MASS_SCALE_PATH)
    return float(prior.low), float(prior.high)


def _widen_for_mass_scale(
    est: dict[str, tuple[float, float, float, str]],
) -> dict[str, tuple[float, float, float, str]]:
    """Scale the intervals of what scales with the masses by the mass scale's prior range."""
    c_lo, c_hi = _mass_scale_range()
    out = dict(est)
    for path, _ in CONTINUOUS:
        if path not in est or path == FLOOR:
            continue
        v, lo, hi, note = est[path]
        ends = [c * x for c in (c_lo, c_hi) for x in (lo, hi)]
        out[path] = (
            v,
            min(ends),
            max(ends),
            note + f"; widened by the mass scale's prior {c_lo:g}-{c_hi:g} (x it, not identified)",
        )
    return out


def _estimates(
    cfg: Any, est: dict[str, tuple[float, float, float, str]], flat: dict[str, str]
) -> list[ParameterEstimate]:
    """One entry per prior parameter, in the prior's order (``flat``: path -> why not)."""
    from twinloop.sim.locomotion.profile import PRIORS

    reasons = {
        **flat,
        MASS_SCALE_PATH: (
            "scaling every mass, the motor strength and the joint friction by one factor leaves "
            "joint trajectories unchanged (up to rotor armature): held at nominal; the "
            "intervals of what scales with it are widened by its prior range"
        ),
    }
    out = []
    for prior in PRIORS:
        name = prior.path.split(".", 1)[1]
        nominal = float(getattr(cfg.plant, name))
        units = "ms" if name.endswith("_ms") else "kg" if name.endswith("_kg") else ""
        if prior.path in est:
            v, lo, hi, note = est[prior.path]
            out.append(
                ParameterEstimate(
                    prior.path, v, lo, hi, nominal, None, units, True, note, prior.kind
                )
            )
        else:
            why = reasons.get(prior.path, "not identified by these captures")
            out.append(
                ParameterEstimate(
                    prior.path, math.nan, math.nan, math.nan, nominal, None, units, False, why,
                    prior.kind,
                )
            )  # fmt: skip
    return out
