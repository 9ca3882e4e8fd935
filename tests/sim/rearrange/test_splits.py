"""Each evaluation split differs from training in the way it states and in no other."""

from __future__ import annotations

import functools
from collections import Counter

import pytest

from twinloop.sim.rearrange import catalog as C
from twinloop.sim.rearrange import episodes as E
from twinloop.sim.rearrange import language as L

HELD_OUT = set(C.HELD_OUT_CATEGORIES)
COMBINATIONS = set(E.held_out_combination_names())


@functools.cache
def _specs(split: str, n: int) -> tuple[E.EpisodeSpec, ...]:
    return tuple(E.episode_spec(split, k) for k in range(n))


def _combinations(spec: E.EpisodeSpec) -> set[tuple[str, str, str]]:
    return {(spec.instruction_type, a.category, a.place) for a in spec.goal if a.kind == "on"}


def _profile(spec: E.EpisodeSpec) -> dict:
    """Every way a spec can differ from training, as comparable values."""
    goal_cats = set(spec.goal_categories)
    other = {c for c, _ in spec.objects} - goal_cats
    template = L.template_text(spec.template)
    named = "attributes" if "{ref}" in template else "context" if "{ctx}" in template else "name"
    return {
        "object_named_by": named,
        "target_named_by": "relation" if "{kind}" in template else "name",
        "distractor": "{dis}" in template,
        "held_out_combination": bool(_combinations(spec) & COMBINATIONS),
        "type": spec.instruction_type,
        "held_out_phrasing": spec.held_out_phrasing,
        "held_out_scene": spec.scene >= E.N_TRAIN_SCENES,
        "held_out_goal_category": bool(goal_cats & HELD_OUT),
        "held_out_clutter": bool(other & HELD_OUT),
        "n_atoms": len(spec.goal),
        "count_above_1": any(a.count > 1 for a in spec.goal if a.kind == "on"),
        "goal_kinds": frozenset(a.kind for a in spec.goal),
        "source_named": "{src}" in template,
    }


def _support(split: str, n: int) -> dict[str, set]:
    out: dict[str, set] = {}
    for spec in _specs(split, n):
        for key, v in _profile(spec).items():
            out.setdefault(key, set()).add(v)
    return out


@pytest.fixture(scope="module")
def train() -> dict[str, set]:
    return _support("train", 1000)


def test_training_support(train: dict[str, set]) -> None:
    assert train["type"] == set(E.TRAINING_MIX)
    assert train["held_out_phrasing"] == train["held_out_scene"] == {False}
    assert train["held_out_goal_category"] == train["held_out_clutter"] == {False}
    assert train["n_atoms"] == {1, 2} and train["count_above_1"] == {False}
    assert train["object_named_by"] == {"name"} and train["target_named_by"] == {"name"}
    assert train["distractor"] == train["held_out_combination"] == {False}
    assert train["source_named"] == {True, False}
    kinds = {"on", "none_on", "on_here", "articulated", "at"}
    assert set().union(*train["goal_kinds"]) == kinds == set(E.GOAL_KINDS)


def test_training_mixture_follows_its_weights() -> None:
    n = 4000
    got = Counter(s.instruction_type for s in _specs("train", n))
    total = sum(E.TRAINING_MIX.values())
    for typ, weight in E.TRAINING_MIX.items():
        p = weight / total
        sd = (n * p * (1 - p)) ** 0.5
        assert abs(got[typ] - n * p) < 4 * sd, (typ, got[typ], n * p)


def test_llarps_seventeen_instruction_types_are_all_here() -> None:
    ids = set()
    for typ, (llarp_ids, _) in L.LLARP_TYPES.items():
        if typ != "irrelevant_text":  # LLaRP's distraction phrasings, not an id of its own
            ids.update(i.strip() for i in llarp_ids.split(","))
    assert len(ids) == 17 and all(len(i) == 8 for i in ids)
    assert len(L.INSTRUCTION_TYPES) == 17


#: What each split changes (the stated difference): key -> the split's only values.
CHANGES = {
    "rephrasing": {"held_out_phrasing": {True}},
    "referring_expressions": {
        "object_named_by": {"attributes"},
        "type": {"referring"},
        "n_atoms": {1},
    },
    "spatial_relationships": {
        "target_named_by": {"relation"},
        "type": {"spatial"},
        "n_atoms": {1},
    },
    "context": {"object_named_by": {"context"}, "type": {"context"}, "n_atoms": {1}},
    "irrelevant_text": {"distractor": {True}, "type": {"irrelevant_text"}, "n_atoms": {1}},
    "novel_objects": {"held_out_goal_category": {True}, "type": {"single"}, "n_atoms": {1}},
    "multiple_rearrangements": {
        "type": {"all_of", "all_from"},
        "count_above_1": {True},
        "n_atoms": {1},
    },
    "multiple_objects": {"type": {"three_objects"}, "n_atoms": {3}},
    "conditional": {"type": {"conditional"}, "n_atoms": {1}},
    "new_scenes": {"held_out_scene": {True}},
    "compositional": {"held_out_combination": {True}},
}


@pytest.mark.parametrize("split", E.EVAL_SPLITS)
def test_split_differs_only_as_stated(split: str, train: dict[str, set]) -> None:
    got = _support(split, E.N_EVAL_EPISODES)
    changes = CHANGES[split]
    for key, values in got.items():
        if key in changes:
            assert values == changes[key], (split, key, values)
        else:
            assert values <= train[key], (split, key, values, train[key])
    # the stated difference is new: it never occurs in training
    new = [k for k, v in changes.items() if not v <= train[k]]
    assert new, f"{split} changes nothing that training lacks"


def test_new_scenes_use_every_held_out_scene_and_training_mix() -> None:
    scenes = {s.scene for s in _specs("new_scenes", 100)}
    assert scenes == set(range(E.N_TRAIN_SCENES, E.N_SCENES))
    types = {s.instruction_type for s in _specs("new_scenes", 100)}
    assert {"single", "no_source", "remove", "two_objects", "swap"} <= types
    assert types <= set(E.TRAINING_MIX)


def test_conditional_goal_follows_the_condition() -> None:
    for k in range(E.N_EVAL_EPISODES):
        spec = E.episode_spec("conditional", k)
        s = spec.slots
        holds = spec.articulated_open[s["art"]] == bool(s["state"])
        want = s["tgt"] if holds else s["tgt2"]
        assert spec.goal[0].place == C.RECEPTACLES[want]
        assert C.ARTICULATED[s["art"]] in spec.instruction.lower()


def test_split_sizes_and_unknown_split() -> None:
    assert E.split_size("train") == 150_000
    assert all(E.split_size(s) == 100 for s in E.EVAL_SPLITS)
    with pytest.raises(ValueError, match=r"must be in \[0, 100\)"):
        E.episode_spec("conditional", 100)
    with pytest.raises(ValueError, match="unknown split"):
        E.episode_spec("irrelevant", 0)


def test_benchmark_splits_are_llarps_ten() -> None:
    assert len(E.BENCHMARK_SPLITS) == 10 and E.SPLITS_NOT_BUILT == ()
    assert set(E.EVAL_SPLITS) == {*E.BENCHMARK_SPLITS, "compositional"}


def test_referring_expressions_name_attributes_never_the_category() -> None:
    for k in range(E.N_EVAL_EPISODES):
        spec = E.episode_spec("referring_expressions", k)
        cat, text = spec.goal[0].category, f" {spec.instruction.lower()} "
        assert f" {L.REFERRING[cat]} " in text
        assert not any(f" {c} " in text for c in C.CATEGORIES), spec.instruction


def test_context_implies_the_category_without_naming_it() -> None:
    for k in range(E.N_EVAL_EPISODES):
        spec = E.episode_spec("context", k)
        cat = spec.goal[0].category
        assert spec.instruction.startswith(L.CONTEXT[cat])
        text = f" {spec.instruction.lower().replace('.', ' ')} "
        assert not any(f" {c} " in text for c in C.CATEGORIES), spec.instruction


def test_spatial_relationship_is_true_and_unique_in_the_apartment() -> None:
    xy = E.scene_layouts()[2]
    for k in range(E.N_EVAL_EPISODES):
        spec = E.episode_spec("spatial_relationships", k)
        s = spec.slots
        kind, rel, anchor = L.KINDS[s["kind"]], L.RELATIONS[s["rel"]], s["anchor"]
        x = xy[spec.scene, :, 0]
        sign = -1 if rel == "left of" else 1
        named = [r for r in range(C.N_RECEPTACLES) if L.KINDS[r] == kind and r != anchor]
        assert [r for r in named if sign * (x[r] - x[anchor]) > 0] == [s["tgt"]]
        assert spec.goal[0].place == C.RECEPTACLES[s["tgt"]]
        phrase = f"the {kind} {rel} the {C.RECEPTACLES[anchor]}"
        assert phrase in spec.instruction.lower()
        assert f"the {C.RECEPTACLES[s['tgt']]}." not in spec.instruction.lower()


def test_irrelevant_text_is_a_training_instruction_plus_a_distractor() -> None:
    train = {L.template_text(s.template) for s in _specs("train", 1000)}
    for k in range(E.N_EVAL_EPISODES):
        spec = E.episode_spec("irrelevant_text", k)
        template = L.template_text(spec.template)
        assert template.replace("{dis}", "").strip() in train
        assert L.DISTRACTORS[spec.slots["dis"]].lower() in spec.instruction.lower()


def test_compositional_holds_out_combinations_of_seen_parts() -> None:
    train = _specs("train", 4000)
    seen = set().union(*(_combinations(s) for s in train))
    assert not seen & COMBINATIONS  # no held-out combination ever occurs in training
    for typ, cat, rec in COMBINATIONS:  # but each part and each pair of parts does
        assert any(t == typ and c == cat for t, c, _ in seen), (typ, cat)
        assert any(t == typ and r == rec for t, _, r in seen), (typ, rec)
        assert any(c == cat and r == rec for _, c, r in seen), (cat, rec)
    held = [_combinations(E.episode_spec("compositional", k)) & COMBINATIONS for k in range(100)]
    assert all(held) and len(set().union(*held)) > len(COMBINATIONS) // 2
    assert len(COMBINATIONS) == E.N_HELD_OUT_COMBINATIONS


def _on(spec: E.EpisodeSpec) -> list[tuple[str, str]]:
    """(category, receptacle) of each object at the start."""
    return list(spec.objects)


def test_new_types_start_and_end_as_their_instruction_says() -> None:
    """Swap, removal, all-from, find, open, close and go-to: start state, goal and words."""
    seen = Counter()
    specs = [*_specs("train", 1000), *_specs("multiple_rearrangements", 100)]
    for spec in specs:
        typ, slots, text = spec.instruction_type, spec.slots, spec.instruction.lower()
        rec = {k: C.RECEPTACLES[slots[k]] for k in ("src", "tgt") if slots[k] >= 0}
        seen[typ] += 1
        if typ == "swap":  # each object starts on the receptacle the other one goes to
            a, b = spec.goal
            assert (a.category, rec["src"]) in _on(spec) and (b.category, rec["tgt"]) in _on(spec)
            assert (a.place, b.place, a.count, b.count) == (rec["tgt"], rec["src"], 1, 1)
            assert rec["src"] != rec["tgt"]
        elif typ == "remove":
            (a,) = spec.goal
            assert a.kind == "none_on" and a.place == rec["src"] and "tgt" not in rec
            assert [r for c, r in _on(spec) if c == a.category] == [rec["src"]]
        elif typ == "all_from":  # every instance on the named source, the goal counts them
            (a,) = spec.goal
            where = [r for c, r in _on(spec) if c == a.category]
            assert a.kind == "on" and a.count == len(where) >= 2
            assert set(where) == {rec["src"]} and a.place == rec["tgt"] != rec["src"]
        elif typ == "find":  # one instance, on an open receptacle, never named
            (a,) = spec.goal
            where = [r for c, r in _on(spec) if c == a.category]
            assert a.kind == "on_here" and len(where) == 1
            assert C.RECEPTACLES.index(where[0]) < C.N_OPEN_RECEPTACLES
            assert f" {where[0]} " not in f" {text.rstrip('.')} "
        elif typ in ("open", "close"):
            (a,) = spec.goal
            art = slots["art"]
            assert a.kind == "articulated" and a.place == C.ARTICULATED[art]
            assert a.count == (typ == "open") != spec.articulated_open[art]
            assert C.ARTICULATED[art] in text
        elif typ == "go_to":
            (a,) = spec.goal
            assert a.kind == "at" and a.place == rec["tgt"] and rec["tgt"] in text
        elif typ == "no_source":
            assert "{src}" not in L.template_text(spec.template) and spec.goal[0].kind == "on"
    for typ in ("swap", "remove", "all_from", "find", "open", "close", "go_to", "no_source"):
        assert seen[typ] >= 10, (typ, seen[typ])
