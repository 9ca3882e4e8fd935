"""Instructions: the shipped vocabulary, token limits, text, determinism from (split, index)."""

from __future__ import annotations

import numpy as np
import pytest

from twinloop.sim.rearrange import catalog as C
from twinloop.sim.rearrange import episodes as E
from twinloop.sim.rearrange import language as L


def test_shipped_vocabulary_is_the_generated_one() -> None:
    assert L.vocabulary() == L.build_vocabulary()
    assert L.vocabulary()[:2] == ("<pad>", "<unk>")


def test_every_instruction_fits_30_tokens_and_reads_back() -> None:
    worst = 0
    for split in E.SPLITS:
        for k in range(100 if split != "train" else 1000):
            row = E.generate_row(split, k)
            worst = max(worst, int(row[E.SP_N_TOK]))
            spec = E.episode_spec(split, k)
            n = int(row[E.SP_N_TOK])
            assert (spec.tokens[n:] == L.PAD).all() and (spec.tokens[:n] > L.UNK).all()
            np.testing.assert_array_equal(L.tokenize(spec.instruction), spec.tokens[:n])
    assert worst <= L.MAX_TOKENS


def test_instruction_names_the_goal() -> None:
    """Every category and place of the goal is named, but "find"'s place (unknown)."""
    kinds = set()
    for k in range(300):
        spec = E.episode_spec("train", k)
        text = f" {' '.join(L.split_words(spec.instruction))} "
        for atom in spec.goal:
            kinds.add(atom.kind)
            assert (atom.kind == "on_here") == (atom.place == ""), spec
            for name in (atom.category, atom.place):
                assert not name or f" {name} " in text, (name, spec.instruction)
    assert kinds == set(E.GOAL_KINDS)


def test_specs_are_reproducible_and_differ() -> None:
    a = [E.generate_row("train", k) for k in range(50)]
    b = [E.generate_row("train", k) for k in range(50)]
    np.testing.assert_array_equal(np.stack(a), np.stack(b))
    assert len({r.tobytes() for r in a}) == 50
    assert not np.array_equal(E.generate_row("train", 3), E.generate_row("rephrasing", 3))


def test_every_template_is_used_by_its_phrasing_set() -> None:
    ranges = L.tables()["template_range"]
    types = [L.INSTRUCTION_TYPES.index(t) for t in E.TRAINING_MIX]

    def rows(held_out: int) -> set[int]:
        return {r for t in types for r in range(ranges[t, held_out, 0], ranges[t, held_out, 1])}

    train = {E.episode_spec("train", k).template for k in range(1000)}
    assert train == rows(0) and not any(L.is_held_out_template(t) for t in train)
    rephrased = {E.episode_spec("rephrasing", k).template for k in range(100)}
    assert rephrased <= rows(1) and all(L.is_held_out_template(t) for t in rephrased)
    assert len(rephrased) > len(rows(1)) // 2


def test_a_template_that_can_exceed_30_tokens_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    train, held = L.TEMPLATES["context"]
    long = "{ctx} Please, if you can, " + train[0][len("{ctx} ") :] + " Also tidy up the {tgt2}."
    assert L.longest_instruction(long) > L.MAX_TOKENS
    monkeypatch.setitem(L.TEMPLATES, "context", ((*train, long), held))
    with pytest.raises(ValueError, match=r"can reach \d+ tokens .* limited to 30"):
        L.tables.__wrapped__()


def test_filler_data_names_what_it_should_and_nothing_else() -> None:
    names = [*C.CATEGORIES, *C.RECEPTACLES, *C.ARTICULATED]
    for data in (L.REFERRING, L.CONTEXT):
        assert len(set(data.values())) == C.N_CATEGORIES  # one distinct phrase per category
        for phrase in data.values():
            words = f" {' '.join(L.split_words(phrase))} "
            assert not any(f" {n} " in words for n in C.CATEGORIES), phrase
    for sentence in L.DISTRACTORS:
        words = f" {' '.join(L.split_words(sentence))} "
        assert not any(f" {n} " in words for n in names), sentence
