"""The robot-skill interface of a mobile manipulator, its wire protocol, and its twin contract.

A home robot in LLaRP's Language Rearrangement [Szot et al., ICLR 2024, arXiv 2310.17722]
exposes skills, not joints: navigate to a target, pick an object of a category, place what it
holds on a receptacle, open or close an articulated object, do nothing. What twinloop needs
from such a robot: ``hello`` with its skill catalog (every skill and the names it takes),
``execute`` one skill by name and argument, which answers success or failure, how long the
skill took, the new symbolic observation (what the robot's perception reports: the ``sim``
backend's measurement layout, :data:`~twinloop.sim.rearrange.kernel.MEASUREMENT`) and, on
request, an RGB frame from its camera; ``stop`` (the safe state: no skill running, the arm
holds what it holds); and (the twin only) ``reset`` to an episode of a split. Implementations:
the simulated robot (:mod:`.fake`), served by ``twinloop serve skills`` (:mod:`.server`), its
network client (:mod:`.remote`), which :mod:`.backend` turns into the ``skills`` backend of
``twinloop/LangRearrange-v0``.

Wire protocol, version 1: the microscope's transport and envelope, unchanged (ZeroMQ
request-reply over TCP, ``[empty, msgpack map]``; never pickle; checked by the one envelope
path of every twin, :mod:`twinloop.hardware.wire`)::

    request  {"v": 1, "id": <int>, "op": <str>, "args": {<str>: <value>}, "token": <str|nil>}
    response {"v": 1, "id": <same int>, "ok": true,  "result": <value>}
           | {"v": 1, "id": <same int|nil>, "ok": false, "error": {"type": <str>, "message": <str>}}

Operations (:data:`OPERATIONS`): ``hello`` (protocol, ``catalog``: skill -> the names it takes
(:data:`CATALOG`), ``splits``: split -> episodes, ``measurement``: the observation's fields
and shapes, ``frame_px``: the frame sides accepted, identity), ``ping``, ``state`` {frame_px}
(the last report again, nothing executed; since version 2 with a frame if asked: the first
view of an episode), ``execute`` {seq, skill, target, frame_px}, ``stop``,
``reset`` {split, episode, seed} (twin only). ``skill`` is one of :data:`SKILLS` and
``target`` one of the catalog's names for it (``""`` for ``noop``); ``seq`` an integer in
[0, 2^63); ``frame_px`` 0 (no frame) or an integer in [64, 224]; ``split`` ``""`` (the twin's
configured split) or a split name; ``episode`` -1 (drawn from the twin's stream) or an index
in the split; ``seed`` -1 (the twin's stream continues) or an integer in [0, 2^63). Booleans
are not integers; strings are at most :data:`MAX_NAME_CHARS` characters. Request keys and
argument names are exactly those listed.

A report (the result of ``state``, ``stop``, ``reset``, and ``execute``) is ``{"mode", "seq",
"observation": {<field>: <int or list of ints>}, "frame": nil | {"pixels": <bytes, uint8
RGB, row-major>, "shape": [h, w, 3]}}``; ``execute`` adds ``skill``, ``target``,
``success`` (bool), ``duration_s`` (the skill's execution time on the robot) and ``repeat``
(true when ``seq`` repeated the last executed skill: its reply again, nothing executed twice).
``mode`` is ``ready`` or ``stopped`` (set by ``stop`` and by every refusal; the next accepted
``execute`` or ``reset`` leaves it). A failed skill leaves the world as it was and reports
``success`` false and ``skill_ok`` 0, whether its preconditions failed or the robot fumbled.
A frame is at most 224 x 224 x 3 = 150,528 bytes; a reply at most :data:`MAX_REPLY_BYTES`.

Error types (:data:`REFUSALS`): ``bad_request``, ``version``, ``unauthorized``,
``unsupported`` as the microscope's; ``internal`` is a fault of the twin itself.

The contract. A skills twin keeps every guarantee of the contract in
:mod:`twinloop.hardware.microscope.protocol` (numbered the same), with ``stop`` as its safe
state: 1. one request, one reply, to its sender (the shared transport,
:mod:`twinloop.hardware.zmtp`); 2. one validation path, :func:`decode_request`, checks every
field (types, domains, a target the catalog names for its skill, an episode inside its split,
a frame size) before anything executes; 3. a refusal carries the request's id whenever one can
be read and logs one line; 4. every refusal, and every connection closed for breaking the
transport or a bound, stops the robot before the reply goes out, and nothing of the refused
request executes; 5. only accepted requests feed the idle timeout (there is no watchdog: a
skill runs only inside its request, so between requests no skill is running); 6. bounded
resources per peer, loopback by default; 7. the token is compared in constant time
(``--token-file``/``$TWINLOOP_TOKEN``); 8. the client caps the reply size, validates every
reply (ids, fields, shapes, ranges, the frame's size) and the backend stops the robot on any
fault. The twin's failure draws and perception errors come from a hidden seed the client
never sees and are never reported.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from twinloop.core.backend import BackendFault
from twinloop.hardware import wire
from twinloop.hardware.wire import (
    MAX_FRAMES,
    MAX_ID,
    MAX_REQUEST_BYTES,
    Arg,
    Refusal,
    Request,
    Text,
    show,
)
from twinloop.sim.rearrange import catalog as C
from twinloop.sim.rearrange import episodes as E
from twinloop.sim.rearrange import kernel as K

__all__ = [
    "CATALOG",
    "MAX_FRAMES",
    "MAX_REQUEST_BYTES",
    "OPERATIONS",
    "PROTOCOL_VERSION",
    "REFUSALS",
    "SKILLS",
    "Refusal",
    "Request",
    "SkillsFault",
    "decode_request",
    "error_reply",
    "ok_reply",
]

PROTOCOL_VERSION = 2
#: Error types a skills twin answers to what a client sent (``internal`` is its own fault).
REFUSALS = ("bad_request", "version", "unauthorized", "unsupported")
MODES = ("ready", "stopped")
#: Skill kinds, in the grounded action table's order.
SKILLS = ("nav", "pick", "place", "open", "close", "noop")
#: The names each skill takes (the benchmark's catalog; ``noop`` takes none).
CATALOG: dict[str, tuple[str, ...]] = {
    "nav": C.NAV_TARGETS,
    "pick": C.CATEGORIES,
    "place": C.RECEPTACLES,
    "open": C.ARTICULATED,
    "close": C.ARTICULATED,
    "noop": (),
}
_BLOCK = {"nav": C.A_NAV, "pick": C.A_PICK, "place": C.A_PLACE, "open": C.A_OPEN}
_BLOCK |= {"close": C.A_CLOSE, "noop": C.A_NOOP}
#: Frame sides a robot renders (px), as the simulator's camera [MM1: the encoder's axis].
MIN_FRAME_PX, MAX_FRAME_PX = 64, 224
#: Longest string argument (characters).
MAX_NAME_CHARS = 64
#: Largest reply a client accepts: the biggest frame plus the observation, with room.
MAX_REPLY_BYTES = 256 * 1024


def grounded_action(skill: str, target: str) -> int:
    """The grounded action index of ``skill(target)`` (see :mod:`~twinloop.sim.rearrange.catalog`).

    Raises:
        ValueError: ``skill`` or ``target`` is not in :data:`CATALOG`.
    """
    if skill not in CATALOG:
        raise ValueError(f"unknown skill {skill!r}; skills: {', '.join(SKILLS)}")
    if skill == "noop":
        if target:
            raise ValueError(f"noop takes no target, got {target!r}")
        return C.A_NOOP
    names = CATALOG[skill]
    if target not in names:
        raise ValueError(f"{skill} takes one of {len(names)} names, got {target!r}")
    return _BLOCK[skill] + names.index(target)


def skill_of(action: int) -> tuple[str, str]:
    """``(skill, target)`` of a grounded action index (inverse of :func:`grounded_action`).

    Raises:
        ValueError: ``action`` is outside ``[0, N_ACTIONS)``.
    """
    if not 0 <= action < C.N_ACTIONS:
        raise ValueError(f"action {action} is outside [0, {C.N_ACTIONS})")
    for skill in reversed(SKILLS):
        if action >= _BLOCK[skill]:
            names = CATALOG[skill]
            return skill, names[action - _BLOCK[skill]] if names else ""
    raise AssertionError("unreachable")


# --- the one validation path ------------------------------------------------------------------
_NAME = Text(MAX_NAME_CHARS)
#: Operations of protocol version 1 and the arguments each takes.
OPERATIONS: dict[str, dict[str, Arg | Text]] = {
    "hello": {},
    "ping": {},
    "state": {"frame_px": Arg(int, 0, MAX_FRAME_PX)},
    "execute": {
        "seq": Arg(int, 0, MAX_ID),
        "skill": _NAME,
        "target": _NAME,
        "frame_px": Arg(int, 0, MAX_FRAME_PX),
    },
    "stop": {},
    "reset": {"split": _NAME, "episode": Arg(int, -1, MAX_ID), "seed": Arg(int, -1, MAX_ID)},
}


def ok_reply(rid: int, result: Any) -> dict[str, Any]:
    """The reply to an executed request, in this protocol's version."""
    return wire.ok_reply(rid, result, version=PROTOCOL_VERSION)


def error_reply(rid: int | None, kind: str, message: str) -> dict[str, Any]:
    """The reply to a refused (or failed) request, with its id when one was read."""
    return wire.error_reply(rid, kind, message, version=PROTOCOL_VERSION)


def decode_request(frames: list[bytes], token: str | None) -> Request:
    """Validate one request message, every field of it; the only way a request is read.

    The envelope and every argument are checked by :func:`twinloop.hardware.wire.decode_request`
    against :data:`OPERATIONS`; then ``execute``'s skill, target and frame size against
    :data:`CATALOG` and the camera's sides, and ``reset``'s split and episode.

    Args:
        frames: The message's frames after any routing id (a valid one: ``[b"", map]``).
        token: The secret the twin requires (None: none).

    Raises:
        Refusal: ``bad_request`` (malformed, or a skill, target, frame size, split or episode
            the catalog and camera do not admit), ``version`` or ``unauthorized``; its ``rid``
            is the request's id whenever one can be read.
    """
    req = wire.decode_request(frames, token, operations=OPERATIONS, version=PROTOCOL_VERSION)
    try:
        if req.op == "execute":
            _check_execute(req.args)
        elif req.op == "state":
            _check_frame("state", req.args["frame_px"])
        elif req.op == "reset":
            _check_reset(req.args)
    except Refusal as exc:
        exc.rid = req.id
        raise
    return req


def _check_execute(args: dict[str, Any]) -> None:
    """The skill and its target against :data:`CATALOG`; the frame size."""
    skill, target, px = args["skill"], args["target"], args["frame_px"]
    if skill not in CATALOG:
        raise Refusal(
            "bad_request", f"execute.skill {show(skill)} is not one of {', '.join(SKILLS)}"
        )
    names = CATALOG[skill]
    if (target != "") if skill == "noop" else target not in names:
        want = '""' if skill == "noop" else f"one of the {len(names)} names in the catalog"
        raise Refusal("bad_request", f"execute.target {show(target)} of {skill}: must be {want}")
    _check_frame("execute", px)


def _check_frame(op: str, px: int) -> None:
    """A frame side the camera gives: 0 (no frame) or [MIN_FRAME_PX, MAX_FRAME_PX]."""
    if px and not MIN_FRAME_PX <= px <= MAX_FRAME_PX:
        raise Refusal(
            "bad_request",
            f"{op}.frame_px = {px} must be 0 (no frame) or in [{MIN_FRAME_PX}, {MAX_FRAME_PX}]",
        )


def _check_reset(args: dict[str, Any]) -> None:
    """A known split; an episode inside it."""
    split, episode = args["split"], args["episode"]
    if split and split not in E.SPLITS:
        raise Refusal("bad_request", f"reset.split {show(split)} is not one of {E.SPLITS}")
    if episode >= 0:
        if not split:
            raise Refusal("bad_request", "reset.episode >= 0 needs a reset.split beside it")
        size = E.split_size(split)
        if episode >= size:
            raise Refusal(
                "bad_request",
                f"reset.episode = {episode} is outside split {split!r} of {size} episodes",
            )


# --- replies, validated by the client ---------------------------------------------------------
class SkillsFault(BackendFault):
    """The robot or the link to it failed (timeout, disconnect, refusal, a malformed reply)."""


def measurement_fields() -> list[list[Any]]:
    """``[[name, shape], ...]`` of the observation (the ``sim`` measurement's layout)."""
    return [[f.name, list(f.shape)] for f in K.MEASUREMENT]


def observation_to_wire(meas: np.ndarray) -> dict[str, Any]:
    """A measurement row as ``{field: int or list of ints}`` (every value is an integer)."""
    out: dict[str, Any] = {}
    for f in K.MEASUREMENT:
        part = meas[K.MEASUREMENT.slice(f.name)]
        out[f.name] = [int(x) for x in part] if f.shape else int(part[0])
    return out


def observation_from_wire(data: Any) -> np.ndarray:
    """The measurement row of a reported observation, every field checked.

    Raises:
        SkillsFault: A field missing or extra, of the wrong length, not an integer, or out of
            its range.
    """
    if not isinstance(data, dict) or set(data) != set(K.MEASUREMENT.names):
        got = sorted(map(str, data))[:12] if isinstance(data, dict) else type(data).__name__
        raise SkillsFault(f"observation must have the fields {K.MEASUREMENT.names}, got {got}")
    out = np.empty(K.N_MEAS, dtype=np.float64)
    for f in K.MEASUREMENT:
        value = data[f.name]
        values = value if f.shape else [value]
        if not isinstance(values, list) or len(values) != f.size:
            raise SkillsFault(f"observation field {f.name} must have {f.size} value(s)")
        for v in values:
            if isinstance(v, bool) or not isinstance(v, int) or not f.low <= v <= f.high:
                raise SkillsFault(
                    f"observation field {f.name}: {show(v)} is not an integer in "
                    f"[{f.low:g}, {f.high:g}]"
                )
        out[K.MEASUREMENT.slice(f.name)] = values
    return out


def frame_to_wire(image: np.ndarray) -> dict[str, Any]:
    """An ``(h, w, 3)`` uint8 frame as raw bytes with its shape."""
    return {
        "pixels": np.ascontiguousarray(image, dtype=np.uint8).tobytes(),
        "shape": [*image.shape],
    }


def frame_from_wire(data: Any, frame_px: int) -> np.ndarray | None:
    """The frame of a report, checked against the size asked for (0: none expected).

    Raises:
        SkillsFault: A frame of another shape or byte count, or one that was not asked for.
    """
    if not frame_px:
        if data is not None:
            raise SkillsFault("the robot sent a frame that was not asked for")
        return None
    shape = [frame_px, frame_px, 3]
    if not isinstance(data, dict) or data.get("shape") != shape:
        raise SkillsFault(f"frame must have shape {shape}, got {show(data)}")
    pixels = data.get("pixels")
    if not isinstance(pixels, bytes) or len(pixels) != math.prod(shape):
        n = len(pixels) if isinstance(pixels, bytes) else show(pixels)
        raise SkillsFault(f"frame of shape {shape} must be {math.prod(shape)} bytes, got {n}")
    return np.frombuffer(pixels, dtype=np.uint8).reshape(shape).copy()


@dataclasses.dataclass(frozen=True)
class Report:
    """One validated report (see the module docstring)."""

    mode: str
    seq: int
    measurement: np.ndarray
    frame: np.ndarray | None

    @classmethod
    def from_wire(cls, data: Any, frame_px: int = 0) -> Report:
        """Decode and validate a report.

        Raises:
            SkillsFault: Anything missing, malformed or out of range.
        """
        if not isinstance(data, dict):
            raise SkillsFault(f"report must be a map, got {show(data)}")
        mode, seq = data.get("mode"), data.get("seq")
        if mode not in MODES:
            raise SkillsFault(f"report mode {show(mode)} is not one of {MODES}")
        if isinstance(seq, bool) or not isinstance(seq, int) or not -1 <= seq <= MAX_ID:
            raise SkillsFault(f"report seq {show(seq)} is not an int in [-1, 2^63)")
        meas = observation_from_wire(data.get("observation"))
        return cls(mode, seq, meas, frame_from_wire(data.get("frame"), frame_px))


@dataclasses.dataclass(frozen=True)
class SkillResult:
    """One validated ``execute`` result: the report, success, duration and repeat flag."""

    report: Report
    success: bool
    duration_s: float
    repeat: bool

    @classmethod
    def from_wire(cls, data: Any, seq: int, frame_px: int) -> SkillResult:
        """Decode and validate the result of ``execute`` {seq, ..., frame_px}.

        Raises:
            SkillsFault: Malformed, or the report is of another ``seq``.
        """
        report = Report.from_wire(data, frame_px)
        success, duration, repeat = data.get("success"), data.get("duration_s"), data.get("repeat")
        if not isinstance(success, bool) or not isinstance(repeat, bool):
            raise SkillsFault("'success' and 'repeat' of a skill result must be booleans")
        if (
            isinstance(duration, bool)
            or not isinstance(duration, int | float)
            or not 0.0 <= duration < math.inf
        ):
            raise SkillsFault(f"duration_s must be a finite number >= 0, got {show(duration)}")
        if report.seq != seq:
            raise SkillsFault(f"the robot executed skill {report.seq}, not {seq}")
        if bool(report.measurement[K.M_OK]) != success:
            raise SkillsFault("the report's skill_ok disagrees with 'success'")
        return cls(report, success, float(duration), repeat)
