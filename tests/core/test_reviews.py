"""core.reviews: items and reviewers' decisions in SQLite. Decisions are appended (the latest is
the verdict, the rest its history), survive a process killed right after answering, and the
queue's filters, order and per-day counts are right."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from core.reviews import ReviewStore

DAY = 86400.0


def test_items_filters_order_and_history(tmp_path):
    store = ReviewStore(tmp_path / "r.sqlite")
    assert store.add("alert", "a", {"amount": 5}, score=0.4, group="u1", at=10 * DAY)
    assert not store.add("alert", "a", {"amount": 99}, score=0.9)  # the first one stays
    rows = [
        ("alert", "b", {"n": 1}, 0.9, "u2", 10 * DAY + 60),
        ("alert", "c", {}, 0.7, "u1", 11 * DAY),
    ]
    assert store.add_many(rows) == 2 and store.add_many(rows) == 0
    store.add("tx", "a", {}, group="u1", at=10 * DAY)  # another kind, same id: separate
    assert [i["id"] for i in store.items("alert")] == ["b", "c", "a"]  # by score
    assert [i["id"] for i in store.items("alert", order="time")] == ["c", "b", "a"]
    assert [i["id"] for i in store.items("alert", group="u1")] == ["c", "a"]
    assert store.item("alert", "a")["payload"] == {"amount": 5}

    store.decide("alert", "b", "fraud", note="first look", reviewer="ana")
    store.decide("alert", "b", "not_fraud", reviewer="bo")
    b = store.item("alert", "b")
    assert b["decision"]["verdict"] == "not_fraud" and b["decision"]["reviewer"] == "bo"
    assert [h["verdict"] for h in b["history"]] == ["fraud", "not_fraud"]
    assert [i["id"] for i in store.items("alert", "open")] == ["c", "a"]
    decided = store.items("alert", "decided")
    assert [i["id"] for i in decided] == ["b"] and decided[0]["decision"]["verdict"] == "not_fraud"
    assert store.count("alert", "open") == 2 and store.count("alert", "decided") == 1
    assert store.count("alert") == 3 and store.count("tx") == 1
    assert store.per_day("alert") == [
        {"day": "1970-01-11", "items": 2, "decided": 1, "verdicts": {"not_fraud": 1}},
        {"day": "1970-01-12", "items": 1, "decided": 0, "verdicts": {}},
    ]
    assert [d["day"] for d in store.per_day("alert", days=1)] == ["1970-01-12"]
    with pytest.raises(KeyError):
        store.decide("alert", "zzz", "fraud")
    with pytest.raises(ValueError):
        store.items("alert", status="maybe")
    assert store.count("alert", "decided") == 1  # the failed decision left nothing


def test_a_decision_survives_the_process_being_killed_after_answering(tmp_path):
    path = tmp_path / "r.sqlite"
    ReviewStore(path).add("alert", "a", {}, score=1.0)
    child = textwrap.dedent(
        f"""
        import os
        from core.reviews import ReviewStore
        s = ReviewStore({str(path)!r})
        s.decide("alert", "a", "fraud", note="kept")
        print("answered", flush=True)
        os._exit(9)  # killed: no close, no clean shutdown
        """
    )
    res = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=60)
    assert res.returncode == 9 and "answered" in res.stdout, res.stderr
    again = ReviewStore(path).item("alert", "a")
    assert again["decision"]["verdict"] == "fraud" and again["decision"]["note"] == "kept"


def test_in_memory_store_works_without_a_path():
    store = ReviewStore(None)
    store.add("x", "1", {"k": [1, 2]})
    assert store.item("x", "1")["payload"] == {"k": [1, 2]} and store.path is None
