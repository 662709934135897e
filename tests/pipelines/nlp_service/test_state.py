"""The state tracker: normalization, corrections, references back, small talk, round trip;
and the generator's gold states, which a tracker fed the gold spans must reproduce."""

from __future__ import annotations

import pytest

from pipelines.nlp_service.config import SynthConfig
from pipelines.nlp_service.state import StateTracker, normalize, retype
from pipelines.nlp_service.synth import dialogues


@pytest.mark.parametrize(
    ("slot", "surface", "value"),
    [
        ("quantity", "three", "3"),
        ("quantity", "12", "12"),
        ("amount", "$45.20", "45.20"),
        ("amount", "€1,250.50", "1250.50"),
        ("currency", "£", "GBP"),
        ("currency", "euros", "EUR"),
        ("order_id", "#48213", "48213"),
        ("order_id", "a-77", "A-77"),
        ("card_last4", "ending 4821", "4821"),
        ("phone", "(555) 123 4567", "5551234567"),
        ("email", "Sam@Example.COM", "sam@example.com"),
    ],
)
def test_normalize(slot, surface, value):
    assert normalize(slot, surface) == value


def test_corrections_replace_and_references_bring_values_back():
    t = StateTracker()
    t.update("where is order 111", "order_status", [("order_id", "111")])
    t.update("i ordered two", "order_status", [("quantity", "two")])
    assert t.update("actually make that three", "order_status", [("quantity", "three")]) == {
        "order_id": "111",
        "quantity": "3",
    }
    t.update("sorry, it's order 222", "order_status", [("order_id", "222")])
    t.update("and 333 too", "order_status", [("order_id", "333")])
    assert t.update("the order i mentioned before", "order_status", [])["order_id"] == "222"
    # "before" relative to the current one: from 222 it goes back to 333 (the last other)
    assert t.update("no, the previous one", "order_status", [])["order_id"] == "333"
    assert t.update("let's go with the first order", "order_status", [])["order_id"] == "111"
    # a message with no reference and no slot leaves the state alone
    assert t.update("ok thanks", "goodbye", [])["order_id"] == "111"


def test_small_talk_keeps_the_active_task_and_state_round_trips():
    t = StateTracker()
    t.update("i want a refund", "refund_status", [])
    t.update("hello?", "greeting", [])
    t.update("what's the weather", "out_of_scope", [])
    assert t.intent == "refund_status"
    t.update("order 9", "refund_status", [("order_id", "9"), ("nonsense", "x")])
    back = StateTracker.from_json(t.to_json())
    assert back == t and back.slots == {"order_id": "9"}


def test_gold_states_follow_from_gold_spans():
    """The generator's states and the tracker's rules agree: fed the gold spans, the tracker
    reproduces every gold state (so joint goal accuracy measures the tagger and the rules,
    not a disagreement between two definitions)."""
    ds = dialogues(SynthConfig(dialogues=300, seed=3))
    ok = n = 0
    for d in ds:
        t = StateTracker()
        for turn in d.turns:
            got = t.update(
                turn.text, turn.intent, [(s.slot, turn.text[s.start : s.end]) for s in turn.slots]
            )
            n += 1
            ok += got == turn.state
    assert n > 900 and ok == n


def test_same_seed_same_dialogues():
    a = [d.to_json() for d in dialogues(SynthConfig(dialogues=20, seed=1))]
    assert a == [d.to_json() for d in dialogues(SynthConfig(dialogues=20, seed=1))]
    assert a != [d.to_json() for d in dialogues(SynthConfig(dialogues=20, seed=2))]


@pytest.mark.parametrize(
    ("slot", "surfaces", "value"),
    [
        ("date", ("the 3rd of May", "May 3rd", "3 may", "on the 3rd of may"), "3 may"),
        ("date", ("Sept 3", "3 sep.", "the 3rd of September"), "3 september"),
        ("date", ("the day before yesterday", "day before yesterday"), "day before yesterday"),
        ("order_id", ("number 262848", "#262848", "262848"), "262848"),
    ],
)
def test_one_value_however_it_is_written(slot, surfaces, value):
    assert {normalize(slot, s) for s in surfaces} == {value}


@pytest.mark.parametrize(
    ("slot", "surface"),
    [
        ("amount", "EUR"),
        ("date", "-"),
        ("order_id", "number"),
        ("card_last4", "12"),
        ("email", "sam@"),
        ("phone", "555"),
        ("quantity", "some"),
    ],
)
def test_a_piece_that_cannot_be_a_value_is_no_value(slot, surface):
    assert normalize(slot, surface) == ""
    t = StateTracker()
    t.update("order 5", "order_status", [("order_id", "5"), ("amount", "12")])
    assert t.update("x", "order_status", [(slot, surface)]) == {"order_id": "5", "amount": "12"}


def test_other_words_for_the_first_and_the_previous_value():
    t = StateTracker()
    for v in ("111", "222", "333"):
        t.update(f"order {v}", "order_status", [("order_id", v)])
    assert t.update("the original order, please", "order_status", [])["order_id"] == "111"
    assert t.update("go with the one from earlier", "order_status", [])["order_id"] == "333"


@pytest.mark.parametrize(
    ("slot", "surface", "kind"),
    [
        ("amount", "25.5.2026", "date"),  # a calendar form is no amount
        ("phone", "SO-2026-81216", "order_id"),  # a phone number has no letters
        ("date", "SO-2026-16993", "order_id"),  # digits alone do not make a date
        ("date", "market", None),  # neither a date nor any form-named slot
        ("amount", "EUR", None),
        ("amount", "USD 49.99", "amount"),  # fits its slot: kept
        ("date", "22.1.2026", "date"),
        ("order_id", "sam@mail.net", "email"),
    ],
)
def test_a_mistyped_value_is_retyped_by_its_form(slot, surface, kind):
    assert retype(slot, surface) == kind
