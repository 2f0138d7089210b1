"""Tests of gpmkit.datasets.cyclic: determinism, cycle structure, aspect labels, splits and accuracy helpers."""

from __future__ import annotations

import itertools
import math

import pytest
from gpmkit.datasets import cyclic
from gpmkit.exceptions import ArgumentError, ShapeError


@pytest.fixture(scope="module")
def replicas() -> dict:
    return cyclic.paper_replicas(seed=0)


@pytest.fixture(scope="module")
def general() -> dict:
    return cyclic.generalisation(seed=0, n_train=60, n_heldout=30)


def test_deterministic_and_seed_dependent(replicas):
    again = cyclic.paper_replicas(seed=0)
    assert again == replicas
    assert cyclic.paper_replica("cyclic_no3", seed=0) == replicas["cyclic_no3"]
    other = cyclic.paper_replicas(seed=1)
    assert other["cyclic_no1"] != replicas["cyclic_no1"]
    g1 = cyclic.generalisation(seed=3, n_train=10, n_heldout=5)
    assert g1 == cyclic.generalisation(seed=3, n_train=10, n_heldout=5)
    assert g1 != cyclic.generalisation(seed=4, n_train=10, n_heldout=5)


def test_sizes_in_the_papers_range(replicas):
    lo, hi = cyclic.PAPER_SIZES
    for name, rows in replicas.items():
        assert len(rows) % 3 == 0
        assert lo <= len(rows) // 3 <= hi, (name, len(rows) // 3)


def test_every_triple_is_a_cycle_labelled_by_the_papers_aspects(replicas):
    for name, rows in replicas.items():
        a1, a2, a3 = cyclic.PAPER_CYCLES[name]
        for _t, edges in cyclic.cycle_triples(rows).items():
            assert len(edges) == 3
            ab, bc, ca = edges
            # the three edges close a cycle A ≻ B ≻ C ≻ A over three distinct responses of one prompt
            assert ab["rejected_id"] == bc["chosen_id"] and bc["rejected_id"] == ca["chosen_id"]
            assert ca["rejected_id"] == ab["chosen_id"]
            assert len({ab["chosen_id"], bc["chosen_id"], ca["chosen_id"]}) == 3
            assert len({e["prompt"] for e in edges}) == 1 and len({e["prompt_id"] for e in edges}) == 1
            # each edge is decided by its aspect, in the order of the data set's definition
            assert [e["aspect"] for e in edges] == [a1, a2, a3]
            for e in edges:
                assert e["chosen_ratings"][e["aspect"]] > e["rejected_ratings"][e["aspect"]]
                assert e["dataset"] == name
                assert e["chosen"] != e["rejected"]


def test_paper_aspect_assignments():
    # Table 1 caption: the base cycle IF ≻ honesty ≻ truthfulness ≻ helpfulness with one aspect left out
    base = cyclic.ASPECTS
    expected = [tuple(a for a in base if a != left) for left in base]
    assert sorted(cyclic.PAPER_CYCLES.values()) == sorted(expected)
    assert cyclic.PAPER_CYCLES["cyclic_no1"] == ("honesty", "truthfulness", "helpfulness")
    assert cyclic.PAPER_CYCLES["cyclic_no3"] == ("instruction_following", "honesty", "helpfulness")
    assert cyclic.PAPER_TABLE1["cyclic_no3"] == {"bt": 50.0, "gpm": 100.0}


def test_edges_never_contradict_within_a_data_set(replicas):
    for rows in replicas.values():
        edges = {(r["chosen_id"], r["rejected_id"]) for r in rows}
        assert not any((b, a) in edges for a, b in edges)


def test_find_cycles_matches_a_brute_force_count():
    pool = cyclic.rated_pool(n_prompts=20, responses_per_prompt=3, seed=5)
    aspects = cyclic.PAPER_CYCLES["cyclic_no2"]
    for _, responses in pool:
        brute = [
            (a.id, b.id, c.id)
            for a, b, c in itertools.permutations(responses, 3)
            if a.ratings[aspects[0]] > b.ratings[aspects[0]]
            and b.ratings[aspects[1]] > c.ratings[aspects[1]]
            and c.ratings[aspects[2]] > a.ratings[aspects[2]]
        ]
        found = [(a.id, b.id, c.id) for a, b, c in cyclic.find_cycles(responses, aspects)]
        assert set(found) <= set(brute)
        assert bool(found) == bool(brute)


def test_text_is_readable_and_reflects_the_ratings():
    pool = cyclic.rated_pool(n_prompts=40, seed=0)
    for prompt, responses in pool:
        assert prompt.strip() and all(ch.isprintable() for ch in prompt)
        assert len({r.text for r in responses}) == len(responses)
        for r in responses:
            words = r.text.split()
            assert len(words) >= 5 and all(w.isascii() for w in words)
            if r.ratings["honesty"] == 1:
                assert "absolutely certain" in r.text
            if r.ratings["helpfulness"] == 1:
                assert "depends on many things" in r.text
            if r.ratings["instruction_following"] <= 2:
                assert "something else first" in r.text


def test_generalisation_rule_and_split(general):
    train, held = general["train"], general["heldout"]
    assert len(train) == 3 * 60 and len(held) == 3 * 30
    beats = {("list", "story"), ("story", "formal"), ("formal", "list")}
    for rows in (train, held):
        for _t, edges in cyclic.cycle_triples(rows).items():
            assert [(e["chosen_style"], e["rejected_style"]) for e in edges] == [
                ("list", "story"),
                ("story", "formal"),
                ("formal", "list"),
            ]
        assert all((r["chosen_style"], r["rejected_style"]) in beats for r in rows)
    # disjoint prompts, responses and topics
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in held}
    texts = lambda rows: {r["chosen"] for r in rows} | {r["rejected"] for r in rows}  # noqa: E731
    assert not texts(train) & texts(held)
    n_held = 10
    held_asks = {t.ask for t in cyclic.TOPICS[-n_held:]}
    assert all(any(a in r["prompt"] for a in held_asks) for r in held)
    assert not any(any(a in r["prompt"] for a in held_asks) for r in train)
    # held-out responses use the other half of the sentence templates: no opener line is shared
    first = lambda rows: {r["chosen"].split("\n")[0].split(". ")[0] for r in rows}  # noqa: E731
    assert not first(train) & first(held)
    assert {r["split"] for r in train} == {"train"} and {r["split"] for r in held} == {"heldout"}


def test_prompt_dependent_rule_reverses_quick_questions():
    g = cyclic.generalisation(seed=0, n_train=40, n_heldout=5, prompt_dependent=True)
    quick = [r for r in g["train"] if r["prompt"].startswith("Quick question:")]
    normal = [r for r in g["train"] if not r["prompt"].startswith("Quick question:")]
    assert quick and normal
    assert all((r["chosen_style"], r["rejected_style"]) != ("list", "story") for r in quick)
    assert any((r["chosen_style"], r["rejected_style"]) == ("story", "list") for r in quick)
    assert all((r["chosen_style"], r["rejected_style"]) != ("story", "list") for r in normal)


def test_accuracy_both_orders_by_hand():
    # pair 1 right both ways, pair 2 wrong both ways, pair 3 a tie (½ + ½), pair 4 right one way only
    acc = cyclic.accuracy_both_orders([1.0, -2.0, 0.0, 0.5], [-1.0, 2.0, 0.0, 0.5])
    assert acc == pytest.approx((2 + 0 + 1 + 1) / 8)
    assert math.isnan(cyclic.accuracy_both_orders([], []))
    with pytest.raises(ShapeError, match="backward"):
        cyclic.accuracy_both_orders([1.0], [])


def test_scalar_models_cannot_beat_two_thirds_on_a_cycle(replicas):
    rows = replicas["cyclic_no1"]
    constant = cyclic.evaluate(rows, lambda p, a, b: 0.0)
    assert constant == 0.5
    # any scalar reward: at most 2 of the 3 edges of every cycle
    reward = lambda text: float(len(text) % 7 + 0.01 * len(text))  # noqa: E731
    acc = cyclic.evaluate(rows, lambda p, a, b: reward(a) - reward(b))
    assert acc <= 2 / 3 + 1e-12
    # an oracle that knows the labelled edges gets 100 %
    wins = {(r["chosen"], r["rejected"]) for r in rows}
    oracle = lambda p, a, b: 1.0 if (a, b) in wins else -1.0  # noqa: E731
    assert cyclic.evaluate(rows, oracle) == 1.0


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: cyclic.paper_replica("cyclic_no5"), "name"),
        (lambda: cyclic.rated_pool(n_prompts=0), "n_prompts"),
        (lambda: cyclic.rated_pool(responses_per_prompt=2), "responses_per_prompt"),
        (lambda: cyclic.find_cycles([], ("honesty", "style", "helpfulness")), "aspects"),
        (lambda: cyclic.generalisation(n_train=0), "n_train"),
        (lambda: cyclic.generalisation(heldout_topics=0), "heldout_topics"),
    ],
)
def test_bad_arguments_raise_typed_errors(call, match):
    with pytest.raises(ArgumentError, match=match):
        call()


def test_rows_are_in_the_trl_preference_format(replicas, general):
    # TRL's explicit-prompt format: non-empty strings "prompt", "chosen", "rejected" (metadata rides along)
    for rows in (*replicas.values(), general["train"], general["heldout"]):
        for row in rows:
            for field in ("prompt", "chosen", "rejected"):
                assert isinstance(row[field], str) and row[field].strip()
            assert row["chosen"] != row["rejected"]
