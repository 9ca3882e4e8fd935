"""Each evaluation split differs from training in the way it states and in no other."""

from __future__ import annotations

import pytest

from twinloop.sim.rearrange import catalog as C
from twinloop.sim.rearrange import episodes as E

HELD_OUT = set(C.HELD_OUT_CATEGORIES)


def _profile(spec: E.EpisodeSpec) -> dict:
    """Every way a spec can differ from training, as comparable values."""
    goal_cats = set(spec.goal_categories)
    other = {c for c, _ in spec.objects} - goal_cats
    return {
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


#: What each split changes (the stated difference): key -> the split's only values.
CHANGES = {
    "rephrasing": {"held_out_phrasing": {True}, "type": {"single"}, "n_atoms": {1}},
    "novel_objects": {"held_out_goal_category": {True}, "type": {"single"}, "n_atoms": {1}},
    "multiple_rearrangements": {"type": {"all_of"}, "count_above_1": {True}, "n_atoms": {1}},
    "multiple_objects": {"type": {"three_objects"}, "n_atoms": {3}},
    "conditional": {"type": {"conditional"}, "n_atoms": {1}},
    "new_scenes": {"held_out_scene": {True}},
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
        E.episode_spec("irrelevant_text", 0)
