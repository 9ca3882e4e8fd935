"""Each evaluation split differs from training in the way it states and in no other."""

from __future__ import annotations

import pytest

from twinloop.sim.rearrange import catalog as C
from twinloop.sim.rearrange import episodes as E
from twinloop.sim.rearrange import language as L

HELD_OUT = set(C.HELD_OUT_CATEGORIES)
COMBINATIONS = set(E.held_out_combination_names())


def _combinations(spec: E.EpisodeSpec) -> set[tuple[str, str, str]]:
    return {(spec.instruction_type, c, r) for c, r, _ in spec.goal}


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
        "count_above_1": any(n > 1 for _, _, n in spec.goal),
    }


def _support(split: str, n: int) -> dict[str, set]:
    out: dict[str, set] = {}
    for k in range(n):
        for key, v in _profile(E.episode_spec(split, k)).items():
            out.setdefault(key, set()).add(v)
    return out


@pytest.fixture(scope="module")
def train() -> dict[str, set]:
    return _support("train", 1000)


def test_training_support(train: dict[str, set]) -> None:
    assert train["type"] == {"single", "two_objects"}
    assert train["held_out_phrasing"] == train["held_out_scene"] == {False}
    assert train["held_out_goal_category"] == train["held_out_clutter"] == {False}
    assert train["n_atoms"] == {1, 2} and train["count_above_1"] == {False}
    assert train["object_named_by"] == {"name"} and train["target_named_by"] == {"name"}
    assert train["distractor"] == train["held_out_combination"] == {False}


#: What each split changes (the stated difference): key -> the split's only values.
CHANGES = {
    "rephrasing": {"held_out_phrasing": {True}, "type": {"single"}, "n_atoms": {1}},
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
    "multiple_rearrangements": {"type": {"all_of"}, "count_above_1": {True}, "n_atoms": {1}},
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
    scenes = {E.episode_spec("new_scenes", k).scene for k in range(100)}
    assert scenes == set(range(E.N_TRAIN_SCENES, E.N_SCENES))
    types = {E.episode_spec("new_scenes", k).instruction_type for k in range(100)}
    assert types == {"single", "two_objects"}


def test_conditional_goal_follows_the_condition() -> None:
    for k in range(E.N_EVAL_EPISODES):
        spec = E.episode_spec("conditional", k)
        s = spec.slots
        holds = spec.articulated_open[s["art"]] == bool(s["state"])
        want = s["tgt"] if holds else s["tgt2"]
        assert spec.goal[0][1] == C.RECEPTACLES[want]
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
        (cat, _, _), text = spec.goal[0], f" {spec.instruction.lower()} "
        assert f" {L.REFERRING[cat]} " in text
        assert not any(f" {c} " in text for c in C.CATEGORIES), spec.instruction


def test_context_implies_the_category_without_naming_it() -> None:
    for k in range(E.N_EVAL_EPISODES):
        spec = E.episode_spec("context", k)
        cat = spec.goal[0][0]
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
        assert spec.goal[0][1] == C.RECEPTACLES[s["tgt"]]
        phrase = f"the {kind} {rel} the {C.RECEPTACLES[anchor]}"
        assert phrase in spec.instruction.lower()
        assert f"the {C.RECEPTACLES[s['tgt']]}." not in spec.instruction.lower()


def test_irrelevant_text_is_a_training_instruction_plus_a_distractor() -> None:
    train = {L.template_text(E.episode_spec("train", k).template) for k in range(300)}
    for k in range(E.N_EVAL_EPISODES):
        spec = E.episode_spec("irrelevant_text", k)
        template = L.template_text(spec.template)
        assert template.replace("{dis}", "").strip() in train
        assert L.DISTRACTORS[spec.slots["dis"]].lower() in spec.instruction.lower()


def test_compositional_holds_out_combinations_of_seen_parts() -> None:
    train = [E.episode_spec("train", k) for k in range(4000)]
    seen = set().union(*(_combinations(s) for s in train))
    assert not seen & COMBINATIONS  # no held-out combination ever occurs in training
    for typ, cat, rec in COMBINATIONS:  # but each part and each pair of parts does
        assert any(t == typ and c == cat for t, c, _ in seen), (typ, cat)
        assert any(t == typ and r == rec for t, _, r in seen), (typ, rec)
        assert any(c == cat and r == rec for _, c, r in seen), (cat, rec)
    held = [_combinations(E.episode_spec("compositional", k)) & COMBINATIONS for k in range(100)]
    assert all(held) and len(set().union(*held)) > len(COMBINATIONS) // 2
    assert len(COMBINATIONS) == E.N_HELD_OUT_COMBINATIONS
