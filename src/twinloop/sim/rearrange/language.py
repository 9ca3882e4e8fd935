"""Instructions: typed templates with train and held-out phrasings, and the shipped vocabulary.

LLaRP's Language Rearrangement task [LLaRP, arXiv 2310.17722] has 17 instruction types
written from about 287 templates, with training phrasings and held-out evaluation phrasings
(e.g. train "Move a {obj} from the {src} to the {tgt}", evaluation "Hey, on the {src}, I
accidentally left my {obj}, can you bring it to the {tgt}?"). This module holds our own
templates for the types built so far (:data:`INSTRUCTION_TYPES`), each split into training
phrasings and held-out phrasings, and turns them into the integer tables that the episode
generator (:mod:`~twinloop.sim.rearrange.episodes`) fills inside numba.

Slots: ``{obj}``, ``{obj2}``, ``{obj3}`` (categories), ``{objs}`` (a category's plural),
``{src}``, ``{tgt}``, ``{tgt2}`` (receptacles), ``{art}`` (an articulated object) and
``{state}`` (``open`` or ``closed``).

Tokens: lower-case words, with ``, . ; ? !`` as tokens of their own; ids index
``vocab.txt`` (shipped with the package): 0 is ``<pad>``, 1 ``<unk>``, then the words in
sorted order. An instruction is at most :data:`MAX_TOKENS` tokens (LLaRP: 30).
"""

from __future__ import annotations

import functools
import re
from importlib import resources

import numpy as np

from twinloop.sim.rearrange import catalog as C

MAX_TOKENS = 30
PAD, UNK = 0, 1
#: Template arrays end with this; slots are the negative codes below it.
END = -1
SLOTS = ("obj", "obj2", "obj3", "objs", "src", "tgt", "tgt2", "art", "state")
SLOT_CODE = {name: -2 - k for k, name in enumerate(SLOTS)}
#: Words filling the ``{state}`` slot, by open flag.
STATE_WORDS = ("closed", "open")

#: Instruction types built so far, in id order (LLaRP has 17; see the system README).
INSTRUCTION_TYPES = ("single", "two_objects", "all_of", "three_objects", "conditional")
TYPE_SINGLE, TYPE_TWO, TYPE_ALL, TYPE_THREE, TYPE_CONDITIONAL = range(5)

#: ``type -> (training phrasings, held-out phrasings)``.
TEMPLATES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "single": (
        (
            "Move a {obj} from the {src} to the {tgt}.",
            "Take the {obj} on the {src} and put it on the {tgt}.",
            "Pick up the {obj} from the {src} and place it on the {tgt}.",
            "Bring the {obj} from the {src} to the {tgt}.",
            "Put the {obj} that is on the {src} onto the {tgt}.",
            "Find the {obj} on the {src} and move it to the {tgt}.",
        ),
        (
            "Hey, on the {src}, I accidentally left my {obj}, can you bring it to the {tgt}?",
            "The {obj} belongs on the {tgt}, not on the {src}; please fix that.",
            "Could you relocate the {obj} sitting on the {src} to the {tgt}?",
            "I need the {obj} from the {src} over at the {tgt}.",
        ),
    ),
    "two_objects": (
        (
            "Move the {obj} and the {obj2} to the {tgt}.",
            "Put the {obj} and the {obj2} on the {tgt}.",
            "Bring both the {obj} and the {obj2} to the {tgt}.",
        ),
        ("Could you gather the {obj} and the {obj2} at the {tgt}?",),
    ),
    "all_of": (
        (
            "Move all the {objs} to the {tgt}.",
            "Put every {obj} on the {tgt}.",
            "Bring all of the {objs} to the {tgt}.",
        ),
        ("Gather up all the {objs} and leave them on the {tgt}.",),
    ),
    "three_objects": (
        (
            "Move the {obj}, the {obj2} and the {obj3} to the {tgt}.",
            "Put the {obj}, the {obj2} and the {obj3} on the {tgt}.",
        ),
        ("Could you bring the {obj}, the {obj2} and the {obj3} over to the {tgt}?",),
    ),
    "conditional": (
        (
            "If the {art} is {state}, move the {obj} to the {tgt}; otherwise move it to the "
            "{tgt2}.",
            "Put the {obj} on the {tgt} if the {art} is {state}, else on the {tgt2}.",
        ),
        ("In case the {art} is {state}, the {obj} goes to the {tgt}; if not, to the {tgt2}.",),
    ),
}
assert tuple(TEMPLATES) == INSTRUCTION_TYPES

_TOKEN = re.compile(r"\{[a-z0-9]+\}|[a-z0-9']+|[,.;?!]")
_PUNCT = frozenset(",.;?!")


def split_words(text: str) -> list[str]:
    """Lower-case word and punctuation tokens of ``text`` (slots such as ``{obj}`` kept whole).

    Raises:
        ValueError: ``text`` holds a character that is neither a word, punctuation nor space.
    """
    low = text.lower()
    tokens = _TOKEN.findall(low)
    rest = _TOKEN.sub("", low)
    if rest.strip():
        raise ValueError(f"cannot tokenise {rest.strip()!r} in {text!r}")
    return tokens


def build_vocabulary() -> tuple[str, ...]:
    """The vocabulary the templates and names need: ``<pad>``, ``<unk>``, sorted words."""
    words: set[str] = set(STATE_WORDS)
    for train, held_out in TEMPLATES.values():
        for template in (*train, *held_out):
            words.update(w for w in split_words(template) if not w.startswith("{"))
    for name in (*C.CATEGORIES, *C.CATEGORY_PLURALS, *C.RECEPTACLES, *C.ARTICULATED):
        words.update(split_words(name))
    return ("<pad>", "<unk>", *sorted(words))


@functools.cache
def vocabulary() -> tuple[str, ...]:
    """The shipped vocabulary (``vocab.txt``), one token per id."""
    text = resources.files("twinloop.sim.rearrange").joinpath("vocab.txt").read_text("utf-8")
    return tuple(line for line in text.splitlines() if line)


@functools.cache
def _ids() -> dict[str, int]:
    return {w: k for k, w in enumerate(vocabulary())}


def tokenize(text: str) -> np.ndarray:
    """Token ids of ``text`` (unknown words map to ``<unk>``), as int64."""
    ids = _ids()
    return np.array([ids.get(w, UNK) for w in split_words(text)], dtype=np.int64)


def detokenize(tokens: np.ndarray) -> str:
    """The text of token ids (padding dropped), capitalised, punctuation attached."""
    vocab = vocabulary()
    out = ""
    for t in np.asarray(tokens).astype(np.int64).tolist():
        if t == PAD:
            continue
        if not 0 <= t < len(vocab):
            raise ValueError(f"token id {t} is outside the vocabulary of {len(vocab)} tokens")
        word = "I" if vocab[t] == "i" else vocab[t]
        out += word if (word in _PUNCT or not out) else " " + word
    return out[:1].upper() + out[1:]


def _name_table(names: tuple[str, ...], width: int) -> np.ndarray:
    ids = _ids()
    table = np.full((len(names), width), END, dtype=np.int64)
    for k, name in enumerate(names):
        words = split_words(name)
        if len(words) > width:
            raise ValueError(f"name {name!r} has more than {width} tokens")
        table[k, : len(words)] = [ids[w] for w in words]
    return table


@functools.cache
def tables() -> dict[str, np.ndarray]:
    """The integer tables of templates and names that the numba episode generator reads.

    ``templates`` ``(n, 32)``: token ids, slot codes (``SLOT_CODE``), then ``END``;
    ``template_range`` ``(n_types, 2, 2)``: ``[type, held_out] -> [start, stop)`` rows;
    ``category_names``/``category_plurals`` ``(33, 3)``, ``receptacle_names`` ``(11, 2)``,
    ``articulated_names`` ``(5, 2)``, ``state_names`` ``(2, 1)``: token ids padded with END.
    """
    ids = _ids()
    rows: list[list[int]] = []
    ranges = np.zeros((len(INSTRUCTION_TYPES), 2, 2), dtype=np.int64)
    for t, name in enumerate(INSTRUCTION_TYPES):
        for held_out, group in enumerate(TEMPLATES[name]):
            ranges[t, held_out, 0] = len(rows)
            for template in group:
                row = []
                for w in split_words(template):
                    row.append(SLOT_CODE[w[1:-1]] if w.startswith("{") else ids[w])
                rows.append(row)
            ranges[t, held_out, 1] = len(rows)
    width = max(len(r) for r in rows) + 1
    templates = np.full((len(rows), width), END, dtype=np.int64)
    for k, r in enumerate(rows):
        templates[k, : len(r)] = r
    return {
        "templates": templates,
        "template_range": ranges,
        "category_names": _name_table(C.CATEGORIES, 3),
        "category_plurals": _name_table(C.CATEGORY_PLURALS, 3),
        "receptacle_names": _name_table(C.RECEPTACLES, 3),
        "articulated_names": _name_table(C.ARTICULATED, 3),
        "state_names": _name_table(STATE_WORDS, 3),
    }


def template_text(template: int) -> str:
    """The template string of row ``template`` of :func:`tables` (for specs and docs)."""
    flat = [t for train, held in TEMPLATES.values() for t in (*train, *held)]
    return flat[template]


def is_held_out_template(template: int) -> bool:
    """Whether template row ``template`` is a held-out (evaluation) phrasing."""
    ranges = tables()["template_range"]
    return any(ranges[t, 1, 0] <= template < ranges[t, 1, 1] for t in range(ranges.shape[0]))
