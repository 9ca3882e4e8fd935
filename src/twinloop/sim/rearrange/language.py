"""Instructions: typed templates with train and held-out phrasings, and the shipped vocabulary.

LLaRP's Language Rearrangement task [LLaRP, arXiv 2310.17722] has 17 instruction types
written from about 287 templates, with training phrasings and held-out evaluation phrasings
(e.g. train "Move a {obj} from the {src} to the {tgt}", evaluation "Hey, on the {src}, I
accidentally left my {obj}, can you bring it to the {tgt}?"). This module holds our own
templates for all of them (:data:`INSTRUCTION_TYPES`; :data:`LLARP_TYPES` maps each to the
benchmark's instruction it stands for), each split into training phrasings and held-out
phrasings, and turns them into the integer tables that the episode generator
(:mod:`~twinloop.sim.rearrange.episodes`) fills inside numba.

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
SLOTS = (
    "obj", "obj2", "obj3", "objs", "src", "tgt", "tgt2", "art", "state",
    "ref", "ctx", "dis", "kind", "rel", "anchor",
)  # fmt: skip
SLOT_CODE = {name: -2 - k for k, name in enumerate(SLOTS)}
#: Words filling the ``{state}`` slot, by open flag.
STATE_WORDS = ("closed", "open")

#: Instruction types in id order (ids are stable: new types are appended).
INSTRUCTION_TYPES = (
    "single",
    "two_objects",
    "all_of",
    "three_objects",
    "conditional",
    "referring",
    "spatial",
    "context",
    "irrelevant_text",
    "no_source",
    "remove",
    "swap",
    "all_from",
    "close",
    "open",
    "go_to",
    "find",
)
(
    TYPE_SINGLE,
    TYPE_TWO,
    TYPE_ALL,
    TYPE_THREE,
    TYPE_CONDITIONAL,
    TYPE_REFERRING,
    TYPE_SPATIAL,
    TYPE_CONTEXT,
    TYPE_IRRELEVANT,
    TYPE_NO_SOURCE,
    TYPE_REMOVE,
    TYPE_SWAP,
    TYPE_ALL_FROM,
    TYPE_CLOSE,
    TYPE_OPEN,
    TYPE_GO_TO,
    TYPE_FIND,
) = range(len(INSTRUCTION_TYPES))

#: What each type asks for, and the instruction of LLaRP's instruction set
#: (``llarp/dataset/configs/instructions.yaml`` in apple/ml-llarp, by its id) it stands for.
#: LLaRP's 17 ids map onto 16 of our types (its two conditional ids, for a fridge found open
#: or closed, are one ``conditional`` type here); ``irrelevant_text`` is LLaRP's distraction
#: phrasings, which it lists as a phrasing set of one type rather than a type of its own.
LLARP_TYPES = {
    "single": ("42f1b012", "one object from a named source receptacle to a target"),
    "two_objects": ("fd8dd56c", "two objects, sources unnamed, to one target"),
    "all_of": ("3ef02c70", "every object of a category to a target"),
    "three_objects": ("db3119cd", "three objects to a target"),
    "conditional": ("5d5460d6, e75d9d69", "a target that depends on an articulated state"),
    "referring": ("8a66dec9", "one object named by its looks"),
    "spatial": ("93b2ef41", "a target named by a spatial relation"),
    "context": ("21e2ce5f", "one object implied by what it is for"),
    "irrelevant_text": ("f0917e29 (distraction)", "a single rearrangement plus a distractor"),
    "no_source": ("f0917e29", "one object, source unnamed, to a target"),
    "remove": ("9a1dd6ee", "no object of a category left on a receptacle"),
    "swap": ("6e7f4383", "two objects exchange their receptacles"),
    "all_from": ("92bcf9b3", "every object of a category from a named source to a target"),
    "close": ("6e3da8a1", "close an articulated object that is open"),
    "open": ("68216d8c", "open an articulated object that is closed"),
    "go_to": ("311525c5", "the robot at a receptacle"),
    "find": ("2f2d797d", "the robot at a receptacle that holds an object of a category"),
}

#: Referring expressions: each category named by its attributes, never by its name (ours,
#: after LLaRP's "a yellow curved fruit" for banana). Filler of ``{ref}``.
REFERRING = {
    "ball": "round bouncy toy",
    "clamp": "metal gripping tool",
    "hammer": "heavy pounding tool",
    "screwdriver": "slim tool with a flat tip",
    "padlock": "small metal lock",
    "scissors": "pair of cutting blades",
    "block": "wooden toy cube",
    "drill": "electric power tool",
    "spatula": "flat kitchen turner",
    "knife": "sharp kitchen blade",
    "spoon": "small stirring utensil",
    "plate": "flat round dish",
    "sponge": "soft yellow scrubber",
    "cleanser": "bottle of cleaning liquid",
    "plum": "small purple fruit",
    "pear": "green bell shaped fruit",
    "peach": "fuzzy pink fruit",
    "apple": "crunchy red fruit",
    "lemon": "sour yellow fruit",
    "can": "metal soda container",
    "box": "cardboard container",
    "banana": "yellow curved fruit",
    "strawberry": "small red berry",
    "lego": "plastic toy brick",
    "rubik's cube": "colourful puzzle cube",
    "book": "bound stack of pages",
    "bowl": "deep round dish",
    "cup": "small drinking vessel",
    "mug": "coffee vessel with a handle",
    "orange": "round citrus fruit",
    "lid": "flat pot cover",
    "toy airplane": "small flying toy",
    "wrench": "metal bolt turner",
}
#: Context sentences that imply a category without naming it (ours, after LLaRP's "I want to
#: play a sport" for ball). Filler of ``{ctx}``.
CONTEXT = {
    "ball": "I want to play a sport.",
    "clamp": "I need to hold two boards together.",
    "hammer": "I need to drive a nail into the wall.",
    "screwdriver": "I need to turn a small screw.",
    "padlock": "I want to lock my locker.",
    "scissors": "I need to cut some paper.",
    "block": "My child wants to stack wooden toys.",
    "drill": "I need to make a hole in the wall.",
    "spatula": "I need to flip the pancakes.",
    "knife": "I need to slice some bread.",
    "spoon": "I want to stir my soup.",
    "plate": "I need something to serve dinner on.",
    "sponge": "I need to scrub the dishes.",
    "cleanser": "I need to disinfect the tiles.",
    "plum": "I am craving a small purple fruit.",
    "pear": "I feel like a bell shaped fruit.",
    "peach": "I want a fuzzy fruit.",
    "apple": "I want a fruit that keeps the doctor away.",
    "lemon": "I need something sour for my tea.",
    "can": "I want a soda.",
    "box": "I need something to pack my things in.",
    "banana": "I want the fruit that monkeys love.",
    "strawberry": "I want a small red berry.",
    "lego": "I want to snap plastic bricks together.",
    "rubik's cube": "I want to solve a colourful puzzle.",
    "book": "I want something to read.",
    "bowl": "I need something to eat my cereal from.",
    "cup": "I am thirsty.",
    "mug": "I want to drink hot coffee.",
    "orange": "I want to squeeze some juice.",
    "lid": "I need to cover the pot.",
    "toy airplane": "My child wants a toy that flies.",
    "wrench": "I need to tighten a bolt.",
}
#: Irrelevant sentences placed before or after an instruction (ours; LLaRP has 3 distraction
#: templates). They name no category, receptacle or articulated object (a test checks).
DISTRACTORS = (
    "The weather is lovely today.",
    "My neighbour just got a new dog.",
    "I had a long day at work.",
    "We are expecting guests tonight.",
    "Thank you so much for your help.",
    "I think the game starts at eight.",
    "The music upstairs is quite loud.",
    "My favourite colour is green.",
)
#: The kind of each receptacle, as a spatial relationship names it (``{kind}``): the two
#: tables, counters and drawers share a kind, so only the relation tells them apart.
KINDS = (
    "chair", "table", "table", "tv stand", "sink", "counter", "counter", "sofa", "fridge",
    "drawer", "drawer",
)  # fmt: skip
#: Filler of ``{rel}`` by relation code (0 unused): along the apartment's x axis, on which the
#: rooms lie side by side, "left" is the smaller x.
RELATIONS = ("", "left of", "right of")
REL_LEFT, REL_RIGHT = 1, 2

#: Training phrasings of a single rearrangement, the base of the irrelevant-text type.
_SINGLE_TRAIN = (
    "Move a {obj} from the {src} to the {tgt}.",
    "Take the {obj} on the {src} and put it on the {tgt}.",
    "Pick up the {obj} from the {src} and place it on the {tgt}.",
    "Bring the {obj} from the {src} to the {tgt}.",
    "Put the {obj} that is on the {src} onto the {tgt}.",
    "Find the {obj} on the {src} and move it to the {tgt}.",
)

#: ``type -> (training phrasings, held-out phrasings)``.
TEMPLATES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "single": (
        _SINGLE_TRAIN,
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
    "referring": (
        (
            "Move the {ref} from the {src} to the {tgt}.",
            "Take the {ref} on the {src} and put it on the {tgt}.",
            "Bring the {ref} from the {src} to the {tgt}.",
        ),
        ("Could you relocate the {ref} sitting on the {src} to the {tgt}?",),
    ),
    "spatial": (
        (
            "Move the {obj} from the {src} to the {kind} {rel} the {anchor}.",
            "Take the {obj} on the {src} and put it on the {kind} {rel} the {anchor}.",
            "Bring the {obj} from the {src} to the {kind} {rel} the {anchor}.",
        ),
        ("The {obj} on the {src} belongs on the {kind} {rel} the {anchor}.",),
    ),
    "context": (
        (
            "{ctx} Bring what I need from the {src} to the {tgt}.",
            "{ctx} Move the right thing from the {src} to the {tgt}.",
            "{ctx} Could you take what I need from the {src} to the {tgt}?",
        ),
        ("{ctx} There is something for that on the {src}; put it on the {tgt}.",),
    ),
    "irrelevant_text": (
        (*(f"{{dis}} {t}" for t in _SINGLE_TRAIN), *(f"{t} {{dis}}" for t in _SINGLE_TRAIN)),
        ("{dis} Could you relocate the {obj} sitting on the {src} to the {tgt}?",),
    ),
    "no_source": (
        (
            "Bring a {obj} over to the {tgt}.",
            "Put a {obj} on the {tgt}.",
            "Get a {obj} and leave it on the {tgt}.",
            "Carry a {obj} to the {tgt}.",
        ),
        (
            "I would like a {obj} on the {tgt}, please.",
            "Could you track down a {obj} and set it on the {tgt}?",
        ),
    ),
    "remove": (
        (
            "Take the {obj} off the {src}.",
            "Clear the {obj} away from the {src}.",
            "Get the {obj} off the {src}.",
        ),
        (
            "I do not want the {obj} on the {src} anymore.",
            "The {src} should have no {obj} on it.",
        ),
    ),
    "swap": (
        (
            "Swap the {obj} on the {src} with the {obj2} on the {tgt}.",
            "Exchange the places of the {obj} on the {src} and the {obj2} on the {tgt}.",
            "Switch the {obj} on the {src} and the {obj2} on the {tgt}.",
        ),
        (
            "The {obj} on the {src} and the {obj2} on the {tgt} are in each other's places; "
            "swap them.",
        ),
    ),
    "all_from": (
        (
            "Move all the {objs} from the {src} to the {tgt}.",
            "Take every {obj} on the {src} to the {tgt}.",
            "Carry all of the {objs} on the {src} over to the {tgt}.",
        ),
        ("Clear every {obj} off the {src} and put them on the {tgt}.",),
    ),
    "close": (
        (
            "Close the {art}.",
            "Please shut the {art}.",
            "Could you close the {art} for me?",
        ),
        ("Someone left the {art} open; could you take care of it?",),
    ),
    "open": (
        (
            "Open the {art}.",
            "Please open the {art}.",
            "Could you open the {art} for me?",
        ),
        ("My hands are full and I need the {art} open.",),
    ),
    "go_to": (
        (
            "Go to the {tgt}.",
            "Walk over to the {tgt}.",
            "Head for the {tgt}.",
            "Navigate to the {tgt}.",
        ),
        ("Please wait for me by the {tgt}.",),
    ),
    "find": (
        (
            "Find a {obj}.",
            "Look for a {obj}.",
            "Search the apartment for a {obj}.",
            "Go and locate a {obj}.",
        ),
        ("Show me where a {obj} is.",),
    ),
}
assert tuple(TEMPLATES) == INSTRUCTION_TYPES == tuple(LLARP_TYPES)
assert tuple(REFERRING) == tuple(CONTEXT) == C.CATEGORIES
assert len(KINDS) == C.N_RECEPTACLES

_TOKEN = re.compile(r"\{[a-z0-9]+\}|[a-z0-9']+|[,.;?!]")
_PUNCT = frozenset(",.;?!")
_SENTENCE_END = frozenset(".?!")


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


def slot_fillers() -> dict[str, tuple[str, ...]]:
    """What each slot can be filled with, by slot value (``{rel}``: by relation code)."""
    categories, receptacles = C.CATEGORIES, C.RECEPTACLES
    return {
        "obj": categories,
        "obj2": categories,
        "obj3": categories,
        "objs": C.CATEGORY_PLURALS,
        "src": receptacles,
        "tgt": receptacles,
        "tgt2": receptacles,
        "art": C.ARTICULATED,
        "state": STATE_WORDS,
        "ref": tuple(REFERRING.values()),
        "ctx": tuple(CONTEXT.values()),
        "dis": DISTRACTORS,
        "kind": KINDS,
        "rel": RELATIONS,
        "anchor": receptacles,
    }


def build_vocabulary() -> tuple[str, ...]:
    """The vocabulary the templates and names need: ``<pad>``, ``<unk>``, sorted words."""
    words: set[str] = set()
    for train, held_out in TEMPLATES.values():
        for template in (*train, *held_out):
            words.update(w for w in split_words(template) if not w.startswith("{"))
    for fillers in slot_fillers().values():
        for name in fillers:
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
    """The text of token ids (padding dropped), sentences capitalised, punctuation attached."""
    vocab = vocabulary()
    out = ""
    start = True
    for t in np.asarray(tokens).astype(np.int64).tolist():
        if t == PAD:
            continue
        if not 0 <= t < len(vocab):
            raise ValueError(f"token id {t} is outside the vocabulary of {len(vocab)} tokens")
        word = "I" if vocab[t] == "i" else vocab[t]
        if start and word not in _PUNCT:
            word = word[:1].upper() + word[1:]
        out += word if (word in _PUNCT or not out) else " " + word
        start = word in _SENTENCE_END if word in _PUNCT else False
    return out


def _fill_table() -> np.ndarray:
    """``(n_slots, rows, width)`` token ids of every slot's fillers, padded with ``END``."""
    ids = _ids()
    fillers = slot_fillers()
    words = {slot: [split_words(f) for f in names] for slot, names in fillers.items()}
    rows = max(len(names) for names in fillers.values())
    width = max(len(w) for ws in words.values() for w in ws)
    table = np.full((len(SLOTS), rows, width), END, dtype=np.int64)
    for s, slot in enumerate(SLOTS):
        for k, ws in enumerate(words[slot]):
            table[s, k, : len(ws)] = [ids[w] for w in ws]
    return table


def longest_instruction(template: str) -> int:
    """The most tokens ``template`` can produce, each slot filled with its longest filler."""
    longest = {
        slot: max(len(split_words(f)) for f in names) for slot, names in slot_fillers().items()
    }
    return sum(longest[w[1:-1]] if w.startswith("{") else 1 for w in split_words(template))


@functools.cache
def tables() -> dict[str, np.ndarray]:
    """The integer tables of templates and fillers that the numba episode generator reads.

    ``templates`` ``(n, width)``: token ids, slot codes (``SLOT_CODE``), then ``END``;
    ``template_range`` ``(n_types, 2, 2)``: ``[type, held_out] -> [start, stop)`` rows;
    ``fillers`` ``(n_slots, rows, width)``: token ids of slot ``s`` filled with value ``v``
    (:func:`slot_fillers`), padded with ``END``.

    Raises:
        ValueError: A template can produce more than :data:`MAX_TOKENS` tokens.
    """
    ids = _ids()
    rows: list[list[int]] = []
    ranges = np.zeros((len(INSTRUCTION_TYPES), 2, 2), dtype=np.int64)
    for t, name in enumerate(INSTRUCTION_TYPES):
        for held_out, group in enumerate(TEMPLATES[name]):
            ranges[t, held_out, 0] = len(rows)
            for template in group:
                n = longest_instruction(template)
                if n > MAX_TOKENS:
                    raise ValueError(
                        f"template {template!r} ({name}) can reach {n} tokens with its longest "
                        f"fillers; instructions are limited to {MAX_TOKENS} [LLaRP]"
                    )
                row = []
                for w in split_words(template):
                    row.append(SLOT_CODE[w[1:-1]] if w.startswith("{") else ids[w])
                rows.append(row)
            ranges[t, held_out, 1] = len(rows)
    width = max(len(r) for r in rows) + 1
    templates = np.full((len(rows), width), END, dtype=np.int64)
    for k, r in enumerate(rows):
        templates[k, : len(r)] = r
    return {"templates": templates, "template_range": ranges, "fillers": _fill_table()}


def grammar() -> dict[str, object]:
    """The instruction grammar as plain data, for env metadata (parsers read it there).

    ``templates``: ``type -> [training phrasings, held-out phrasings]``; ``fillers``: ``slot
    -> filler per value`` (:func:`slot_fillers`); ``max_tokens``.
    """
    return {
        "templates": {k: [list(tr), list(ho)] for k, (tr, ho) in TEMPLATES.items()},
        "fillers": {k: list(v) for k, v in slot_fillers().items()},
        "max_tokens": MAX_TOKENS,
    }


def template_text(template: int) -> str:
    """The template string of row ``template`` of :func:`tables` (for specs and docs)."""
    flat = [t for train, held in TEMPLATES.values() for t in (*train, *held)]
    return flat[template]


def is_held_out_template(template: int) -> bool:
    """Whether template row ``template`` is a held-out (evaluation) phrasing."""
    ranges = tables()["template_range"]
    return any(ranges[t, 1, 0] <= template < ranges[t, 1, 1] for t in range(ranges.shape[0]))
