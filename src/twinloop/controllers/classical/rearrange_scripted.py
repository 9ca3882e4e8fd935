"""A scripted instruction parser for rearrangement: a strong baseline that learns nothing.

It sees what LLaRP's policies see and no more: the instruction's token ids, ``is_holding``,
and, in ``observation_mode="symbolic"``, the non-privileged ``last_skill_ok`` and
``time_fraction`` (in ``rgb`` mode it reads those two from the ``symbolic`` entry); never a
``true/`` field. From the env's metadata it takes the vocabulary, the action table and the
instruction grammar (``metadata["grammar"]``: every template, held-out phrasings included,
and every slot's fillers: names, attributes, context sentences, distractors, receptacle
kinds), so it reads every instruction the generator writes; where it fails, it fails for
want of perception, not of language.

Each episode it parses the instruction once (the first observation, ``time_fraction == 0``)
by matching it against the templates, with slots as alternatives of their fillers, into a
plan: goal categories, a target (or, for a spatial relationship, every receptacle of the
named kind except the anchor and the source: it cannot see which one the relation picks),
a source hint, a condition. Then it acts blind, learning only from each skill's success:

- fetch: try ``pick`` at the source hint, then at every other receptacle in turn (at a
  container whose state it does not know: ``pick``, and if that fails ``open`` and ``pick``
  again);
- deliver: ``nav`` and ``place`` at the target (opening a closed container first);
- a condition on an articulated object is probed with ``open``: the skill fails when the
  object was already open;
- "all the X": fetch and deliver until no receptacle yields one more;
- "swap": fetch the first object from where the instruction says it is and deliver it to the
  second one's receptacle, then the second one back;
- "take the X off the R": fetch it at R and deliver it to the next receptacle after R that
  takes it (a full one fails the ``place``; the next is tried);
- "find a X": visit the receptacles in turn (open ones first); the episode ends at the right
  one, which the parser cannot see;
- "go to the R": ``nav``; "open/close the A": ``nav`` to it and ``open``/``close``;
- if the episode goes on once every goal is delivered, the target was the wrong one of its
  kind: move the object on to the next candidate.

So it solves instructions that name the source in a few actions, and pays with a search of
the apartment, within LLaRP's 32 actions or not, for those that do not. Every type is read
from the instruction alone; what it cannot know is where unnamed objects lie and which
receptacle has room.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np

from twinloop.controllers.base import Controller

_TOKEN = re.compile(r"\{[a-z0-9]+\}|[a-z0-9']+|[,.;?!]")
#: Slots whose value is a category (``ref`` and ``ctx`` fillers come in category order).
_CATEGORY_SLOTS = ("obj", "obj2", "obj3", "objs", "ref", "ctx")
_MAX_CACHE = 4096


@dataclass
class Atom:
    """One goal as parsed: a category, candidate targets (first: the best guess), all of it.

    ``kind``: ``"on"`` (deliver to a target), ``"off"`` (take it off ``source``, leave it on
    a target that takes it) or ``"find"`` (stand where one lies; ``targets`` is empty).
    """

    category: int
    targets: list[int]
    all_of: bool = False
    source: int = -1  # the receptacle the instruction says it is on
    kind: str = "on"


@dataclass
class Plan:
    """What an instruction asks for, as far as words tell."""

    atoms: list[Atom]
    source: int = -1  # the receptacle the instruction says the (first) object is on
    condition: tuple[int, int, int] | None = None  # (articulated, state word, else target)
    parsed: bool = True
    articulated: tuple[int, bool] | None = None  # (articulated object, open it) to change
    go_to: int = -1  # the receptacle to go to


@dataclass
class _Belief:
    """What the robot knows of the world from its own skills' success."""

    loc: int = -1
    art_open: dict[int, bool] = field(default_factory=dict)


def _words(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


class ScriptedParser(Controller):
    """Parses the instruction with the templates' grammar and acts on it blind (see module)."""

    name = "scripted"
    systems = ("rearrange",)

    def __init__(
        self,
        observation_space: gym.Space,
        action_space: gym.Space,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        """Compile the grammar and read the action table from the env's metadata."""
        super().__init__(observation_space, action_space, metadata)
        meta = self.metadata
        table = meta["action_table"]
        self._nav, self._pick, self._place = table["nav"], table["pick"], table["place"]
        self._open, self._close, self._noop = table["open"], table["close"], table["noop"]
        self._art_nav = tuple(int(v) for v in meta["articulated_nav"])
        self._n_rec = int(meta["n_receptacles"])
        self._rec_art = [-1] * self._n_rec
        for a, r in enumerate(meta["articulated_receptacle"]):
            if r >= 0:
                self._rec_art[r] = a
        self._vocab = tuple(meta["vocabulary"])
        grammar = meta["grammar"]
        self._fillers: dict[str, list[str]] = {
            slot: [" ".join(_words(f)) for f in names] for slot, names in grammar["fillers"].items()
        }
        self._patterns = [
            (typ, self._compile(template))
            for typ, groups in grammar["templates"].items()
            for group in groups
            for template in group
        ]
        self._cache: dict[bytes, Plan] = {}
        self._rows: list[Generator[int, tuple[bool, bool], None] | None] = []

    # --- parsing ---------------------------------------------------------------------------
    def _compile(self, template: str) -> re.Pattern[str]:
        parts = []
        for w in _words(template):
            if w.startswith("{"):
                slot = w[1:-1]
                options = sorted({f for f in self._fillers[slot] if f}, key=len, reverse=True)
                parts.append(f"(?P<{slot}>{'|'.join(re.escape(o) for o in options)})")
            else:
                parts.append(re.escape(w))
        return re.compile(" ".join(parts))

    def _text(self, tokens: np.ndarray) -> str:
        return " ".join(self._vocab[t] for t in tokens.astype(np.int64).tolist() if t > 0)

    def parse(self, tokens: np.ndarray) -> Plan:
        """The plan of an instruction's token ids (cached per instruction)."""
        key = np.asarray(tokens, dtype=np.int64).tobytes()
        plan = self._cache.get(key)
        if plan is None:
            if len(self._cache) >= _MAX_CACHE:
                self._cache.clear()
            plan = self._cache[key] = self._parse_text(self._text(np.asarray(tokens)))
        return plan

    def _value(self, slot: str, text: str) -> int:
        return self._fillers[slot].index(text)

    def _parse_text(self, text: str) -> Plan:
        for typ, pattern in self._patterns:
            m = pattern.fullmatch(text)
            if m is not None:
                return self._plan(typ, {k: v for k, v in m.groupdict().items() if v is not None})
        return self._fallback(text)

    def _plan(self, typ: str, slots: dict[str, str]) -> Plan:
        value = {slot: self._value(slot, text) for slot, text in slots.items()}
        source = value.get("src", -1)
        if typ == "go_to":
            return Plan([], go_to=value["tgt"])
        if typ in ("open", "close"):
            return Plan([], articulated=(value["art"], typ == "open"))
        if typ == "swap":
            a = Atom(value["obj"], [value["tgt"]], source=source)
            b = Atom(value["obj2"], [source], source=value["tgt"])
            return Plan([a, b], source)
        if typ == "remove":
            after = [(source + 1 + k) % self._n_rec for k in range(self._n_rec - 1)]
            return Plan([Atom(value["obj"], after, source=source, kind="off")], source)
        if typ == "find":
            return Plan([Atom(value["obj"], [], kind="find")])
        if "kind" in slots:  # every receptacle of the kind but the anchor and the source
            targets = [
                r
                for r, kind in enumerate(self._fillers["kind"])
                if kind == slots["kind"] and r not in (value["anchor"], source)
            ]
        else:
            targets = [value["tgt"]]
        cats = [value[s] for s in _CATEGORY_SLOTS if s in value]
        all_of = typ in ("all_of", "all_from")
        atoms = [Atom(c, list(targets), all_of=all_of) for c in dict.fromkeys(cats)]
        if atoms:
            atoms[0].source = source
        condition = None
        if "art" in value:
            condition = (value["art"], value["state"], value["tgt2"])
        return Plan(atoms, source, condition)

    def _fallback(self, text: str) -> Plan:
        """No template matches: the first category named, to the last receptacle named."""
        cats = [k for k, f in enumerate(self._fillers["obj"]) if f and f" {f} " in f" {text} "]
        recs = [
            (text.rfind(f" {f} "), r)
            for r, f in enumerate(self._fillers["tgt"])
            if f" {f} " in f" {text} "
        ]
        if not cats or not recs:
            return Plan([], parsed=False)
        return Plan([Atom(cats[0], [max(recs)[1]])], parsed=False)

    # --- acting ----------------------------------------------------------------------------
    def reset(self, n_envs: int, seeds: np.ndarray, mask: np.ndarray | None = None) -> None:
        """Forget the plans of the rows that start an episode."""
        if len(self._rows) != n_envs:
            self._rows = [None] * n_envs
        rows = range(n_envs) if mask is None else np.flatnonzero(mask)
        for i in rows:
            self._rows[int(i)] = None
        super().reset(n_envs, seeds, mask)

    def _observed(
        self, obs: np.ndarray | Mapping[str, np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Instruction tokens, is_holding, last_skill_ok, time_fraction: nothing else."""
        if isinstance(obs, Mapping):
            symbolic = np.asarray(obs["symbolic"])
            tokens = np.asarray(obs["instruction"])
            holding = np.asarray(obs["is_holding"]).reshape(tokens.shape[0])
        else:
            symbolic = np.asarray(obs)
            tokens = self.field(symbolic, "instruction")
            holding = self.field(symbolic, "is_holding")
        ok = self.field(symbolic, "last_skill_ok")
        time = self.field(symbolic, "time_fraction")
        return tokens, holding > 0.5, ok > 0.5, time

    def act(self, obs: np.ndarray | Mapping[str, np.ndarray]) -> np.ndarray:
        """One grounded action per row."""
        tokens, holding, ok, time = self._observed(obs)
        n = tokens.shape[0]
        if len(self._rows) != n:
            self._rows = [None] * n
        out = np.empty(n, dtype=np.int64)
        for i in range(n):
            row = self._rows[i]
            try:
                if row is None or time[i] == 0.0:  # a new episode: parse, start the script
                    row = self._rows[i] = self._script(self.parse(tokens[i]))
                    out[i] = next(row)
                else:
                    out[i] = row.send((bool(ok[i]), bool(holding[i])))
            except StopIteration:
                out[i] = self._noop
        return out

    def act_one(self, obs: np.ndarray | Mapping[str, np.ndarray]) -> np.ndarray:
        """Action for one observation (symbolic vector or rgb-mode dict)."""
        if isinstance(obs, Mapping):
            return self.act({k: np.asarray(v)[None] for k, v in obs.items()})[0]
        return self.act(np.asarray(obs)[None])[0]

    # The script: generators that yield actions and receive (skill ok, is_holding).
    def _do(self, action: int) -> Generator[int, tuple[bool, bool], bool]:
        ok, _ = yield action
        return ok

    def _goto(self, b: _Belief, target: int) -> Generator[int, tuple[bool, bool], None]:
        if b.loc != target:
            yield from self._do(self._nav + target)
            b.loc = target

    def _open_if_closed(self, b: _Belief, r: int) -> Generator[int, tuple[bool, bool], bool]:
        """At container ``r`` of unknown or closed state: open it; whether it was closed."""
        a = self._rec_art[r]
        if a < 0 or b.art_open.get(a, False):
            return False
        was_closed = yield from self._do(self._open + a)  # fails only if it was open
        b.art_open[a] = True
        return was_closed

    def _fetch(
        self, b: _Belief, cat: int, order: list[int], exclude: set[int]
    ) -> Generator[int, tuple[bool, bool], int]:
        """Pick an object of ``cat`` from the first receptacle of ``order`` that has one."""
        for r in order:
            if r in exclude:
                continue
            yield from self._goto(b, r)
            if (yield from self._do(self._pick + cat)):
                return r
            if (yield from self._open_if_closed(b, r)) and (yield from self._do(self._pick + cat)):
                return r
        return -1

    def _deliver(self, b: _Belief, tgt: int) -> Generator[int, tuple[bool, bool], bool]:
        yield from self._goto(b, tgt)
        if (yield from self._do(self._place + tgt)):
            return True
        if (yield from self._open_if_closed(b, tgt)):
            return (yield from self._do(self._place + tgt))
        return False

    def _script(self, plan: Plan) -> Generator[int, tuple[bool, bool], None]:
        b = _Belief()
        if plan.go_to >= 0:
            yield from self._goto(b, plan.go_to)
        if plan.articulated is not None:
            art, want_open = plan.articulated
            yield from self._goto(b, self._art_nav[art])
            yield from self._do((self._open if want_open else self._close) + art)
        for atom in plan.atoms:
            if atom.kind == "find":  # open receptacles first: containers seldom hold one
                order = sorted(range(self._n_rec), key=lambda r: self._rec_art[r] >= 0)
                for r in order:
                    yield from self._goto(b, r)
        targets = [list(atom.targets) for atom in plan.atoms]  # the cached plan stays as parsed
        if plan.condition is not None:  # probe the condition: open fails iff already open
            art, state, tgt2 = plan.condition
            yield from self._goto(b, self._art_nav[art])
            was_open = not (yield from self._do(self._open + art))
            b.art_open[art] = True
            if was_open != bool(state):
                targets = [[tgt2] for _ in plan.atoms]
        placed = [0] * len(plan.atoms)  # the candidate target each atom went to
        for k, atom in enumerate(plan.atoms):
            if atom.kind == "find":
                continue
            first = [atom.source] if atom.source >= 0 else []
            order = first + [r for r in range(self._n_rec) if r not in first]
            exclude = set() if atom.kind == "off" else {targets[k][0]}
            while True:
                src = yield from self._fetch(b, atom.category, order, exclude)
                if src < 0:
                    break
                for j, tgt in enumerate(targets[k]):  # the next candidate if one is full
                    if (yield from self._deliver(b, tgt)):
                        placed[k] = j
                        break
                if not atom.all_of:
                    break
                order = order[order.index(src) :]  # more may lie where this one was
        # still running: a target was the wrong receptacle of its kind; try the next ones
        for k, atom in enumerate(plan.atoms):
            if atom.kind != "on":
                continue
            cands = targets[k][placed[k] :]
            for prev, nxt in itertools.pairwise(cands):
                yield from self._goto(b, prev)
                if (yield from self._do(self._pick + atom.category)):
                    yield from self._deliver(b, nxt)
        while True:
            yield self._noop
