"""KernelVectorEnv: a ``gymnasium.vector.VectorEnv`` over a batch-first kernel.

The base class owns everything that is the same for every system: the state (a system's
:mod:`~twinloop.core.bundle` class, allocated here for ``n_envs``), seeding (environment ``i``
of ``reset(seed=s)`` is seeded ``s + i``, as Gymnasium's ``SyncVectorEnv`` does, so N single
envs and one vector env of N agree step for step), action validation with precise errors,
and the Gymnasium info conventions of the ``SAME_STEP`` autoreset mode (``final_obs``,
``final_info`` and ``_key`` masks). A system declares, as class attributes, its ``State``
bundle and two kernels, and passes its parameters bundle::

    reset_kernel(state, params, mask, options, out: ResetOut)
    step_kernel(state, params, actions: Actions, out: StepOut)

Both fill preallocated outputs. Auto-reset happens inside the step kernel, with a fresh reset
drawn from each environment's continuing random stream. Every ``State`` holds the rows core
manages: ``rng`` (:data:`STREAMS`), and the safety layer's ``prev_cmd`` and ``has_prev``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

import gymnasium as gym
import numba
import numpy as np
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

from twinloop.core.bundle import Rows, allocate, require_fields
from twinloop.core.jit import njit
from twinloop.core.layout import Layout
from twinloop.core.rng import N_STREAMS, new_entropy, seed_streams
from twinloop.core.safety import SafetyConfig, check_action, rate_limits

#: Sentinel in the per-env seed array meaning "continue this env's stream".
NO_SEED = -1
#: A step kernel runs on at most ``num_envs // ENVS_PER_THREAD`` threads (at least one): a
#: smaller batch is done before a second thread would be worth waking, and a thread left
#: spinning between steps takes a core from whatever else runs (e.g. a capture companion).
ENVS_PER_THREAD = 128


#: A state field holding every row's random streams (seeded by :meth:`KernelVectorEnv.reset`).
STREAMS = Rows((N_STREAMS, 2), np.uint64)
#: Fields every system's ``State`` bundle has for core: streams and the safety layer's rows.
CORE_ROWS = ("rng", "prev_cmd", "has_prev")


def core_rows(command_size: int) -> dict[str, Rows]:
    """The :data:`CORE_ROWS` fields of a state bundle whose commands have ``command_size``."""
    return {
        "rng": STREAMS,  # the row's random streams, seeded by reset(seed=...)
        "prev_cmd": Rows((command_size,)),  # the safety layer's last command
        "has_prev": Rows((), np.bool_),  # whether it has one (rate limits apply)
    }


class CommandLimits(NamedTuple):
    """The safety layer's command limits, part of a system's parameters bundle.

    Attributes:
        low: Per-element lower bound of a command.
        high: Per-element upper bound.
        max_step: Per-element largest change per step (``inf``: none).
    """

    low: np.ndarray
    high: np.ndarray
    max_step: np.ndarray


def command_limits(command_space: gym.spaces.Box, safety: SafetyConfig) -> CommandLimits:
    """The limits a kernel's safety rows check commands against."""
    low = np.ascontiguousarray(command_space.low, dtype=np.float64).ravel()
    high = np.ascontiguousarray(command_space.high, dtype=np.float64).ravel()
    return CommandLimits(low, high, rate_limits(safety, low.size))


class Actions(NamedTuple):
    """A step kernel's input: validated actions and which rows were clipped."""

    values: np.ndarray
    clipped: np.ndarray


class ResetOut(NamedTuple):
    """What a reset kernel fills: observations and the info rows of the reset envs."""

    obs: np.ndarray
    info_f: np.ndarray
    info_i: np.ndarray
    info_b: np.ndarray


class StepOut(NamedTuple):
    """What a step kernel fills (see :meth:`KernelVectorEnv.step` for the conventions).

    For an env that ended, the kernel writes its last observation into ``final_obs``, its step
    infos into the ``fin_*`` rows and its reset observation into ``obs``; the ``top_*`` rows
    get the reset-info fields and zeros elsewhere. For a live env the ``top_*`` rows hold its
    step infos and its ``fin_*`` rows are zero (Gymnasium's ``SyncVectorEnv`` conventions).
    """

    obs: np.ndarray
    reward: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    final_obs: np.ndarray
    top_f: np.ndarray
    top_i: np.ndarray
    top_b: np.ndarray
    fin_f: np.ndarray
    fin_i: np.ndarray
    fin_b: np.ndarray


class _Kernel:
    """A kernel called through the compiled entry point of its (fixed) signature.

    The arguments of a vector env's kernel have the same types at every call, so after the
    first call (through numba's dispatcher, which compiles or loads it) the entry point of
    that signature is called directly: bundles of arrays then cost less per call than loose
    arrays through the dispatcher (~1.1 against ~1.6 µs for 20 arrays, measured here).
    """

    def __init__(self, dispatcher: Any) -> None:
        self.dispatcher = dispatcher
        self.entry: Callable[..., None] | None = None

    def __call__(self, *args: Any) -> None:
        if self.entry is not None:
            self.entry(*args)
            return
        self.dispatcher(*args)
        signature = tuple(numba.typeof(a) for a in args)
        overload = self.dispatcher.overloads.get(signature)
        if overload is not None:
            self.entry = overload.entry_point


@njit(cache=False)  # numba cannot cache it (it calls through ctypes pointers)
def swap_num_threads(n: int) -> int:
    """Set this thread's numba thread count to ``n``; return the previous one."""
    prev = numba.get_num_threads()
    numba.set_num_threads(n)
    return prev


@njit
def validate_box_actions(
    actions: np.ndarray,
    low: np.ndarray,
    high: np.ndarray,
    clip: bool,
    out: np.ndarray,
    clipped: np.ndarray,
) -> int:
    """Copy ``(n, d)`` actions into float64 ``out``, clipping if asked; flag clipped rows.

    Returns:
        The first row that is non-finite, or out of bounds while ``clip`` is False; -1 if none.
    """
    for i in range(actions.shape[0]):
        outside = False
        for j in range(actions.shape[1]):
            v = float(actions[i, j])
            if not np.isfinite(v):
                return i
            if v < low[j]:
                outside = True
                v = low[j]
            elif v > high[j]:
                outside = True
                v = high[j]
            out[i, j] = v
        if outside and not clip:
            return i
        clipped[i] = outside
    return -1


@njit
def validate_discrete_actions(
    actions: np.ndarray, lo: int, hi: int, clip: bool, out: np.ndarray, clipped: np.ndarray
) -> int:
    """Copy integer actions into int64 ``out`` (clipping to ``[lo, hi]`` if asked)."""
    for i in range(actions.shape[0]):
        v = actions[i]
        outside = v < lo or v > hi
        if outside and not clip:
            return i
        out[i] = min(max(v, lo), hi)
        clipped[i] = outside
    return -1


@njit(inline="always")
def zero_row(arr: np.ndarray, i: int) -> None:
    """Set row ``i`` of a 2-D array to zero (kernels use it for masked-out info rows)."""
    for j in range(arr.shape[1]):
        arr[i, j] = 0


class KernelVectorEnv(gym.vector.VectorEnv):
    """Base class of batched envs whose physics and task run in one kernel call per step.

    A subclass sets the class attributes ``State`` (its state bundle class, with the
    :data:`CORE_ROWS` fields), ``reset_kernel`` and ``step_kernel`` (see the module
    docstring), and overrides :meth:`reset_options` if its reset takes options. A system whose
    step is not one numba kernel (MuJoCo's batch stepping, say) leaves the kernels ``None``
    and overrides :meth:`reset_rows` and :meth:`step_rows` instead, with the same arguments.

    Args:
        n_envs: Batch size.
        observation_layout: Layout of one env's flat float32 observation.
        single_action_space: Action space of one env (``Box`` or ``Discrete``).
        info_float: Layout of float64 info fields (one row per env).
        info_int: Layout of int64 info fields.
        info_bool: Layout of bool info fields.
        reset_info: Names of the info fields a reset reports (a subset of the layouts).
        params: The system's parameters bundle (passed to every kernel call).
        config: The system config (for state shapes that depend on it).
        env_id: Registered id, for error messages.
        clip_actions: Clip out-of-bounds actions instead of raising.
        action_labels: Labels of action elements for error messages.
    """

    metadata: dict[str, Any] = {  # noqa: RUF012 (gymnasium convention)
        "autoreset_mode": AutoresetMode.SAME_STEP,
        "render_modes": [],
    }
    #: The system's state bundle class (:mod:`twinloop.core.bundle`).
    State: ClassVar[type]
    #: ``reset_kernel(state, params, mask, options, out: ResetOut)`` (None: see reset_rows).
    reset_kernel: ClassVar[Callable[..., None] | None]
    #: ``step_kernel(state, params, actions: Actions, out: StepOut)`` (None: see step_rows).
    step_kernel: ClassVar[Callable[..., None] | None]

    def __init__(
        self,
        n_envs: int,
        observation_layout: Layout,
        single_action_space: gym.Space,
        info_float: Layout,
        info_int: Layout,
        info_bool: Layout,
        reset_info: tuple[str, ...],
        *,
        params: Any,
        config: Any = None,
        env_id: str,
        clip_actions: bool = False,
        action_labels: tuple[str, ...] = (),
    ) -> None:
        """Set up spaces and info layouts and allocate the state bundle."""
        if isinstance(n_envs, bool) or not isinstance(n_envs, int | np.integer) or n_envs < 1:
            raise ValueError(f"{env_id}: n_envs must be a positive int, got {n_envs!r}")
        self.num_envs = int(n_envs)
        self.env_id = env_id
        self.observation_layout = observation_layout
        self.single_observation_space = observation_layout.space(np.float32)
        self.single_action_space = single_action_space
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.info_float, self.info_int, self.info_bool = info_float, info_int, info_bool
        all_names = {*info_float.names, *info_int.names, *info_bool.names}
        missing = set(reset_info) - all_names
        if missing:
            raise ValueError(f"reset_info names not in the info layouts: {sorted(missing)}")
        self.reset_info = tuple(reset_info)
        self._reset_names = frozenset(reset_info)
        # (name, which matrix 0/1/2, slice, shape) for every info field, computed once
        self._columns = [
            (f.name, k, layout.slice(f.name), f.shape)
            for k, layout in enumerate((info_float, info_int, info_bool))
            for f in layout
        ]
        self.clip_actions = clip_actions
        self.action_labels = action_labels
        self._started = False
        self._needs_reset = True
        self._step_plan: tuple[int, list] | None = None
        self._last_block: np.ndarray | None = None  # the block of the last step's outputs
        self._last_obs: np.ndarray | None = None
        self._reset_rows_flag = np.zeros(self.num_envs, dtype=np.bool_)
        cap = max(1, self.num_envs // ENVS_PER_THREAD)
        self._thread_cap = cap if cap < numba.config.NUMBA_NUM_THREADS else 0
        if isinstance(single_action_space, gym.spaces.Box):
            self._act_low = np.ascontiguousarray(single_action_space.low, dtype=np.float64)
            self._act_high = np.ascontiguousarray(single_action_space.high, dtype=np.float64)
        elif not isinstance(single_action_space, gym.spaces.Discrete):
            raise TypeError("KernelVectorEnv supports Box and Discrete action spaces")
        require_fields(self.State, CORE_ROWS, "KernelVectorEnv")
        self.config = config
        self.params = params
        self.state = allocate(self.State, self.num_envs, config)
        kinds = type(self)
        self._reset_kernel = _Kernel(kinds.reset_kernel) if kinds.reset_kernel else None
        self._step_kernel = _Kernel(kinds.step_kernel) if kinds.step_kernel else None

    # subclass hooks ----------------------------------------------------------------------------
    def reset_rows(
        self, state: Any, params: Any, mask: np.ndarray, options: Any, out: ResetOut
    ) -> None:
        """Reset the rows in ``mask`` and write their first observations (default: the kernel)."""
        assert self._reset_kernel is not None, "set reset_kernel or override reset_rows"
        self._reset_kernel(state, params, mask, options, out)

    def step_rows(self, state: Any, params: Any, actions: Actions, out: StepOut) -> None:
        """Step every row, auto-resetting ended ones (default: the kernel)."""
        assert self._step_kernel is not None, "set step_kernel or override step_rows"
        self._step_kernel(state, params, actions, out)

    def reset_options(self, options: dict[str, Any]) -> Any:
        """The reset kernel's ``options`` argument from ``reset(options=...)`` (default: none).

        A system whose reset takes options (e.g. a goal) returns them as a bundle of arrays
        with one row per env, after checking them.
        """
        return ()

    # seeding -----------------------------------------------------------------------------------
    def _seed_array(self, seed: int | list[int | None] | None) -> np.ndarray:
        n = self.num_envs
        if seed is None:
            if self._started:
                return np.full(n, NO_SEED, dtype=np.int64)
            seed = new_entropy() % (2**62)
        if isinstance(seed, int | np.integer) and not isinstance(seed, bool):
            if seed < 0:
                raise ValueError(f"{self.env_id}: seed must be >= 0, got {seed}")
            return np.arange(int(seed), int(seed) + n, dtype=np.int64)
        seeds = list(seed)
        if len(seeds) != n:
            raise ValueError(f"{self.env_id}: got {len(seeds)} seeds for {n} envs")
        out = np.full(n, NO_SEED, dtype=np.int64)
        for i, s in enumerate(seeds):
            if s is None:
                if not self._started:
                    out[i] = new_entropy() % (2**62)
            elif isinstance(s, bool) or not isinstance(s, int | np.integer) or s < 0:
                raise ValueError(f"{self.env_id}: seed[{i}] = {s!r} must be a non-negative int")
            else:
                out[i] = int(s)
        return out

    # gymnasium API -----------------------------------------------------------------------------
    def reset(
        self,
        *,
        seed: int | list[int | None] | None = None,
        options: dict[str, Any] | None = None,
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Reset all envs, or those in ``options["reset_mask"]``."""
        options = dict(options or {})
        mask = options.pop("reset_mask", None)
        if mask is None:
            mask = np.ones(self.num_envs, dtype=np.bool_)
        else:
            mask = np.asarray(mask, dtype=np.bool_)
            if mask.shape != (self.num_envs,):
                raise ValueError(
                    f"{self.env_id}: reset_mask has shape {mask.shape}, expected ({self.num_envs},)"
                )
            if not self._started and not mask.all():
                raise ValueError(f"{self.env_id}: the first reset must reset every env")
        seeds = self._seed_array(seed)
        kernel_options = self.reset_options(options)
        self._started = True
        for i in np.flatnonzero(mask & (seeds != NO_SEED)):
            seed_streams(self.state.rng, int(i), int(seeds[i]))
        out = self._alloc_reset()
        self.reset_rows(self.state, self.params, mask, kernel_options, out)
        info_f, info_i, info_b = out.info_f, out.info_i, out.info_b
        obs = out.obs
        self._needs_reset = False
        infos: dict[str, Any] = {}
        for name in self.reset_info:
            infos[name] = self._column(name, info_f, info_i, info_b)
            infos[f"_{name}"] = mask.copy()
        return obs, infos

    def step(
        self, actions: Any
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Step every env (auto-resetting ended ones in the same step)."""
        if self._needs_reset:
            raise RuntimeError(f"{self.env_id}: call reset() before step()")
        actions, clipped = self._validate(actions)
        n = self.num_envs
        out = self._alloc_step()
        obs, reward, terminated, truncated, final_obs = out[:5]
        top_f, top_i, top_b, fin_f, fin_i, fin_b = out[5:]
        prev = swap_num_threads(self._thread_cap) if self._thread_cap else 0
        try:
            self.step_rows(self.state, self.params, Actions(actions, clipped), out)
        finally:
            if prev:
                swap_num_threads(prev)
        ended = terminated | truncated
        live = ~ended
        all_rows = np.ones(n, dtype=np.bool_)
        infos: dict[str, Any] = {}
        top = (top_f, top_i, top_b)
        any_live = bool(live.any())
        for name, k, sl, shape in self._columns:
            if name in self._reset_names:
                infos[name] = top[k][:, sl].reshape((n, *shape))
                infos[f"_{name}"] = all_rows
            elif any_live:  # as in SyncVectorEnv: a key no env reported this step is absent
                infos[name] = top[k][:, sl].reshape((n, *shape))
                infos[f"_{name}"] = live
        if ended.any():
            rows = np.flatnonzero(ended)
            fobs = np.empty(n, dtype=object)  # object arrays start as None
            fobs[rows] = list(final_obs[rows])
            infos["final_obs"] = fobs
            infos["_final_obs"] = ended
            fin = (fin_f, fin_i, fin_b)
            final_info: dict[str, Any] = {}
            for name, k, sl, shape in self._columns:
                final_info[name] = fin[k][:, sl].reshape((n, *shape))
                final_info[f"_{name}"] = ended
            infos["final_info"] = final_info
            infos["_final_info"] = ended
        return obs, reward, terminated, truncated, infos

    # helpers -----------------------------------------------------------------------------------
    def _info_names(self) -> tuple[str, ...]:
        return self.info_float.names + self.info_int.names + self.info_bool.names

    def _alloc_step(self) -> StepOut:
        """Every output array of one step, carved from a single fresh allocation.

        One block of the same size every step lets the allocator reuse it without page
        faults (ten separate arrays of mixed sizes made glibc hand ~2 MB back to the kernel
        and fault it in again at 4096 envs, up to 0.6 ms a step). The arrays are fresh each
        step: an info kept by the caller keeps its block alive and never changes.
        """
        if self._step_plan is None:
            n, d = self.num_envs, self.observation_layout.size
            nf, ni, nb = self.info_float.size, self.info_int.size, self.info_bool.size
            specs = [
                ((n, d), np.float32),
                ((n, d), np.float32),
                ((n,), np.float64),
                ((n,), np.bool_),
                ((n,), np.bool_),
                ((n, nf), np.float64),
                ((n, ni), np.int64),
                ((n, nb), np.bool_),
                ((n, nf), np.float64),
                ((n, ni), np.int64),
                ((n, nb), np.bool_),
            ]
            plan, offset = [], 0
            for shape, dt in specs:
                size = int(np.prod(shape)) * np.dtype(dt).itemsize
                plan.append((offset, offset + size, np.dtype(dt), shape))
                offset += (size + 63) // 64 * 64  # 64-byte aligned
            self._step_plan = (offset + 64, plan)
        total, plan = self._step_plan
        block = np.empty(total, dtype=np.uint8)
        base = (-block.ctypes.data) % 64
        blk = block[base : base + total - 64]
        obs, final_obs, reward, term, trunc, tf, ti, tb, ff, fi, fb = (
            blk[a:b].view(dt).reshape(shape) for a, b, dt, shape in plan
        )
        self._last_block, self._last_obs = blk, obs
        return StepOut(obs, reward, term, trunc, final_obs, tf, ti, tb, ff, fi, fb)

    def step_record_layout(self) -> dict[str, tuple[int, int, int, int, np.dtype, tuple]]:
        """Where a step's outputs lie in its block, for recorders that copy a step at once.

        After :meth:`step`, :attr:`last_step_block` is the 64-byte aligned ``uint8`` block
        that every output array of that step views. Returns ``name -> (offset,
        final_offset, row_stride, row_bytes, dtype, shape)`` (bytes from the block's start;
        ``final_offset`` is -1 when there is none) for ``"obs"`` (final: ``final_obs``),
        ``"reward"``, ``"terminated"``, ``"truncated"`` and each info column (final: its
        ``final_info`` column). The layout is the same for every step.
        """
        if self._step_plan is None:
            self._alloc_step()
        assert self._step_plan is not None
        plan = self._step_plan[1]
        out: dict[str, tuple[int, int, int, int, np.dtype, tuple]] = {}
        d = self.observation_layout.size
        f32 = np.dtype(np.float32)
        out["obs"] = (plan[0][0], plan[1][0], d * 4, d * 4, f32, (d,))
        for name, k in (("reward", 2), ("terminated", 3), ("truncated", 4)):
            dt = plan[k][2]
            out[name] = (plan[k][0], -1, dt.itemsize, dt.itemsize, dt, ())
        widths = (self.info_float.size, self.info_int.size, self.info_bool.size)
        for name, k, sl, shape in self._columns:
            dt = plan[5 + k][2]
            col = sl.start * dt.itemsize
            out[name] = (
                plan[5 + k][0] + col,
                plan[8 + k][0] + col,
                widths[k] * dt.itemsize,
                (sl.stop - sl.start) * dt.itemsize,
                dt,
                tuple(shape),
            )
        return out

    @property
    def last_step_block(self) -> np.ndarray | None:
        """The block of the last step's outputs (see :meth:`step_record_layout`)."""
        return self._last_block

    @property
    def last_step_observations(self) -> np.ndarray | None:
        """The observation array the last step returned (a view of :attr:`last_step_block`)."""
        return self._last_obs

    def _alloc_reset(self) -> ResetOut:
        """Observation and zeroed info rows of a reset (rows not reset keep zeros)."""
        n = self.num_envs
        return ResetOut(
            np.empty((n, self.observation_layout.size), dtype=np.float32),
            np.zeros((n, self.info_float.size), dtype=np.float64),
            np.zeros((n, self.info_int.size), dtype=np.int64),
            np.zeros((n, self.info_bool.size), dtype=np.bool_),
        )

    def _column(self, name: str, f: np.ndarray, i: np.ndarray, b: np.ndarray) -> np.ndarray:
        for layout, arr in ((self.info_float, f), (self.info_int, i), (self.info_bool, b)):
            if name in layout:
                return layout.get(arr, name)
        raise KeyError(name)

    def _validate(self, actions: Any) -> tuple[np.ndarray, np.ndarray]:
        n = self.num_envs
        space = self.single_action_space
        raw = np.asarray(actions)
        clipped = np.empty(n, dtype=np.bool_)
        if isinstance(space, gym.spaces.Box):
            if raw.shape != (n, *space.shape):
                raise ValueError(
                    f"{self.env_id}: actions have shape {raw.shape}, expected "
                    f"{(n, *space.shape)} for {n} envs of {space}"
                )
            if raw.dtype.kind not in "fiub":
                raise ValueError(f"{self.env_id}: actions must be numbers, got dtype {raw.dtype}")
            out = np.empty((n, self._act_low.size), dtype=np.float64)
            bad = validate_box_actions(
                raw.reshape(n, -1),
                self._act_low.ravel(),
                self._act_high.ravel(),
                self.clip_actions,
                out,
                clipped,
            )
            if bad >= 0:
                self._raise_for(bad, raw[bad])
            return out.reshape(n, *space.shape), clipped
        if raw.shape != (n,):
            raise ValueError(
                f"{self.env_id}: actions have shape {raw.shape}, expected ({n},) for {space}"
            )
        if raw.dtype.kind not in "iub":
            as_float = raw.astype(np.float64)
            ok = np.isfinite(as_float) & (as_float == np.round(as_float))
            if not ok.all():
                bad = int(np.flatnonzero(~ok)[0])
                self._raise_for(bad, raw[bad])
            raw = as_float
        out_i = np.empty(n, dtype=np.int64)
        lo, hi = int(space.start), int(space.start + space.n - 1)
        bad = validate_discrete_actions(
            raw.astype(np.int64), lo, hi, self.clip_actions, out_i, clipped
        )
        if bad >= 0:
            self._raise_for(bad, int(raw[bad]))
        return out_i, clipped

    def _raise_for(self, index: int, action: Any) -> None:
        try:
            check_action(self.env_id, self.single_action_space, action, labels=self.action_labels)
        except ValueError as exc:
            raise ValueError(f"{exc} (env index {index} of {self.num_envs})") from None
        raise ValueError(f"{self.env_id}: invalid action {action!r} at env index {index}")

    def close_extras(self, **kwargs: Any) -> None:
        """Nothing to release: the state is plain arrays."""
