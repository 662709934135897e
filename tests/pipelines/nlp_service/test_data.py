"""Reading intent files: every kind of bad line is refused with its file and line number;
the two hand-written sets load, cover the taxonomy, and stay apart from the generator."""

from __future__ import annotations

import json

import pytest

from core.errors import DataError
from pipelines.nlp_service.config import INTENTS, SynthConfig
from pipelines.nlp_service.data import independent_set, read_examples, seed_set, taxonomy
from pipelines.nlp_service.synth import messages


def _jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


GOOD = [{"text": "where is my parcel", "intent": "order_status"}] * 2


def test_a_valid_file_loads_with_slots(tmp_path):
    rows = [
        *GOOD,
        {
            "text": "cancel order 123",
            "intent": "cancel_order",
            "slots": [{"slot": "order_id", "start": 13, "end": 16}],
        },
        {"text": "cancel it", "intent": "cancel_order"},
    ]
    ex = read_examples(_jsonl(tmp_path / "a.jsonl", rows))
    assert len(ex) == 4 and ex[2].slots[0].slot == "order_id"
    assert ex[2].text[ex[2].slots[0].start : ex[2].slots[0].end] == "123"


@pytest.mark.parametrize(
    ("bad", "needle"),
    [
        ({"text": "hello", "intent": "make_coffee"}, "unknown intent 'make_coffee'"),
        ({"text": "   ", "intent": "greeting"}, "empty or missing text"),
        ({"intent": "greeting"}, "empty or missing text"),
        ('{"text": "hi", "intent": ', "invalid JSON"),
        (
            {"text": "hi", "intent": "greeting", "slots": [{"slot": "pet", "start": 0, "end": 1}]},
            "slot",
        ),
        (
            {
                "text": "hi",
                "intent": "greeting",
                "slots": [{"slot": "email", "start": 0, "end": 9}],
            },
            "outside the text",
        ),
    ],
)
def test_bad_lines_name_the_line(tmp_path, bad, needle):
    p = _jsonl(tmp_path / "bad.jsonl", [*GOOD, bad, *GOOD])
    with pytest.raises(DataError, match=needle) as err:
        read_examples(p)
    assert f"{p}:3" in str(err.value)


def test_a_label_with_one_example_is_refused_with_its_line(tmp_path):
    p = _jsonl(tmp_path / "one.jsonl", [*GOOD, {"text": "bye now", "intent": "goodbye"}])
    with pytest.raises(DataError, match=r"goodbye \(line 3\)"):
        read_examples(p)


def test_invalid_utf8_names_the_line(tmp_path):
    p = tmp_path / "bin.jsonl"
    p.write_bytes(
        b'{"text": "a", "intent": "greeting"}\n{"text": "\xff\xfe", "intent": "greeting"}\n'
    )
    with pytest.raises(DataError, match="invalid UTF-8") as err:
        read_examples(p)
    assert f"{p}:2" in str(err.value)


def test_csv_and_own_taxonomy(tmp_path):
    p = tmp_path / "mine.csv"
    p.write_text(
        "text,intent\nbook a table,book\nreserve for two,book\nmenu please,menu\nwhat's on the menu,menu\n"
    )
    ex = read_examples(p, intents=None)
    assert taxonomy(ex) == ("book", "menu", "out_of_scope")
    with pytest.raises(DataError, match=r"unknown intent 'book'.*mine.csv:2"):
        read_examples(p)
    (tmp_path / "nocol.csv").write_text("message,label\nhi,greeting\n")
    with pytest.raises(DataError, match="columns text and intent"):
        read_examples(tmp_path / "nocol.csv")


def test_empty_and_missing_files(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_examples(tmp_path / "nope.jsonl")
    (tmp_path / "e.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match="no examples"):
        read_examples(tmp_path / "e.jsonl")


def test_hand_written_sets_cover_the_taxonomy_and_stay_apart_from_the_generator():
    ind, seed = independent_set(), seed_set()
    assert {e.intent for e in ind} == set(INTENTS) == {e.intent for e in seed}
    norm = lambda t: " ".join(t.lower().split())  # noqa: E731
    generated = {norm(e.text) for e in messages(SynthConfig(per_intent=400, typo_rate=0.0))}
    ind_texts = {norm(e.text) for e in ind}
    assert not ind_texts & {norm(e.text) for e in seed}
    # a hand-written message the templates can produce verbatim would not be independent
    overlap = ind_texts & generated
    # only one- and two-word small talk ("hi", "good evening") may coincide
    assert all(len(t.split()) <= 2 for t in overlap), overlap
