"""What the Language Rearrangement world is made of: receptacles, objects and grounded skills.

Facts from Szot et al., "Large Language Models as Generalizable Policies for Embodied Tasks"
(LLaRP, ICLR 2024, arXiv 2310.17722), as summarised in ``shared/reference/rearrange.md``:
the 11 receptacles (three of them articulated: the fridge and two drawers), the 33 object
categories of which 5 are held out for evaluation, and one ``Discrete`` space of about 70
grounded high-level skills (navigate to 16 targets, pick 33 categories, place on 11
receptacles, open and close a fridge and 4 drawers, noop).

The grounded action table (71 actions; our exact mapping, the benchmark's sizes):

========  =====================================================================
index     skill
========  =====================================================================
0-15      ``nav(target)``: the 11 receptacles, the top and bottom kitchen drawers
          (articulated, not receptacles) and three room markers
16-48     ``pick(category)``: the 33 categories in :data:`CATEGORIES` order
49-59     ``place(receptacle)``: the 11 receptacles in :data:`RECEPTACLES` order
60-64     ``open(articulated)``: fridge, left drawer, right drawer, top drawer, bottom drawer
65-69     ``close(articulated)``: same order
70        ``noop``
========  =====================================================================
"""

from __future__ import annotations

#: The benchmark's 11 receptacles [LLaRP]; the last three are articulated containers.
RECEPTACLES = (
    "chair",
    "black table",
    "brown table",
    "tv stand",
    "sink",
    "right counter",
    "left counter",
    "sofa",
    "fridge",
    "left drawer",
    "right drawer",
)
N_RECEPTACLES = len(RECEPTACLES)
#: Receptacles that are always open (clutter lies only on these [LLaRP]).
N_OPEN_RECEPTACLES = 8
#: How many objects each receptacle holds (ours: the benchmark places 30 clutter objects).
CAPACITY = (4, 6, 6, 6, 4, 8, 8, 6, 6, 4, 4)

#: Articulated objects (open/close): the fridge and 4 kitchen drawers [LLaRP, 10 actions].
ARTICULATED = ("fridge", "left drawer", "right drawer", "top drawer", "bottom drawer")
N_ARTICULATED = len(ARTICULATED)
#: The receptacle each articulated object is (-1: a drawer that holds nothing here).
ARTICULATED_RECEPTACLE = (8, 9, 10, -1, -1)

#: Room markers (ours; the benchmark navigates to 16 receptacles and markers).
ROOMS = ("kitchen", "living room", "bedroom", "bathroom", "hallway")
N_MARKER_ROOMS = 3
#: The 16 navigation targets: receptacles, the two drawers that are not receptacles, markers.
NAV_TARGETS = (*RECEPTACLES, "top drawer", "bottom drawer", *ROOMS[:N_MARKER_ROOMS])
N_NAV = len(NAV_TARGETS)
#: The navigation target of each articulated object (where the robot opens it).
ARTICULATED_NAV = (8, 9, 10, 11, 12)

#: The 33 object categories [LLaRP]; the last 5 are held out for evaluation.
CATEGORIES = (
    "ball",
    "clamp",
    "hammer",
    "screwdriver",
    "padlock",
    "scissors",
    "block",
    "drill",
    "spatula",
    "knife",
    "spoon",
    "plate",
    "sponge",
    "cleanser",
    "plum",
    "pear",
    "peach",
    "apple",
    "lemon",
    "can",
    "box",
    "banana",
    "strawberry",
    "lego",
    "rubik's cube",
    "book",
    "bowl",
    "cup",
    "mug",
    "orange",
    "lid",
    "toy airplane",
    "wrench",
)
#: Plural names, for "all the X" instructions.
CATEGORY_PLURALS = tuple(
    {
        "scissors": "scissors",
        "knife": "knives",
        "box": "boxes",
        "peach": "peaches",
        "strawberry": "strawberries",
        "rubik's cube": "rubik's cubes",
        "cleanser": "cleansers",
        "lego": "legos",
    }.get(c, c + "s")
    for c in CATEGORIES
)
N_CATEGORIES = len(CATEGORIES)
#: Categories held out of training [LLaRP]: mug, orange, lid, toy airplane, wrench.
HELD_OUT_CATEGORIES = ("mug", "orange", "lid", "toy airplane", "wrench")
N_TRAIN_CATEGORIES = N_CATEGORIES - len(HELD_OUT_CATEGORIES)
assert CATEGORIES[N_TRAIN_CATEGORIES:] == HELD_OUT_CATEGORIES

# --- the grounded action table --------------------------------------------------------------
A_NAV = 0
A_PICK = A_NAV + N_NAV
A_PLACE = A_PICK + N_CATEGORIES
A_OPEN = A_PLACE + N_RECEPTACLES
A_CLOSE = A_OPEN + N_ARTICULATED
A_NOOP = A_CLOSE + N_ARTICULATED
N_ACTIONS = A_NOOP + 1
assert N_ACTIONS == 71

#: Skill kinds as the kernel numbers them.
SKILL_NAV, SKILL_PICK, SKILL_PLACE, SKILL_OPEN, SKILL_CLOSE, SKILL_NOOP = range(6)


def action_names() -> tuple[str, ...]:
    """One name per grounded action, e.g. ``nav(sofa)``, ``pick(apple)``, ``noop``."""
    return (
        *(f"nav({t})" for t in NAV_TARGETS),
        *(f"pick({c})" for c in CATEGORIES),
        *(f"place({r})" for r in RECEPTACLES),
        *(f"open({a})" for a in ARTICULATED),
        *(f"close({a})" for a in ARTICULATED),
        "noop",
    )


def action_table() -> dict[str, int]:
    """Where each skill's block of actions starts (controllers read it from metadata)."""
    return {
        "nav": A_NAV,
        "pick": A_PICK,
        "place": A_PLACE,
        "open": A_OPEN,
        "close": A_CLOSE,
        "noop": A_NOOP,
        "n_actions": N_ACTIONS,
    }
