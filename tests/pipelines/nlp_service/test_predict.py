"""The dialogue engine: turns, state across turns, the store across restarts, escalation,
the long-conversation policy and every kind of bad message."""

from __future__ import annotations

import sqlite3

import pytest

from core.errors import DataError
from pipelines.nlp_service.config import DialogueConfig
from pipelines.nlp_service.predict import DialogueEngine, clean_text

pytestmark = pytest.mark.xdist_group("nlp_model")


@pytest.fixture
def engine(trained, tmp_path):
    e = DialogueEngine(trained["model"], tmp_path / "conv.sqlite")
    yield e
    e.close()


KEYS = {"intent", "confidence", "slots", "state", "reply", "escalate", "escalate_reason", "context"}


def test_a_turn_answers_every_field_and_persists(engine, trained, tmp_path):
    cid = engine.start()
    assert len(cid) == 32 and cid != engine.start()
    r = engine.message(cid, "hello")
    assert set(r) >= KEYS and isinstance(r["reply"], str) and r["reply"]
    engine.message(cid, "where is my order 4829133")
    conv = engine.conversation(cid)
    assert [t["role"] for t in conv["turns"]] == ["user", "assistant"] * 2
    assert conv["turns"][2]["text"] == "where is my order 4829133"
    engine.close()
    # a restarted service continues the conversation where it stopped
    again = DialogueEngine(trained["model"], tmp_path / "conv.sqlite")
    after = again.conversation(cid)
    assert after["turns"] == conv["turns"] and after["state"] == conv["state"]
    again.message(cid, "thanks, bye")
    assert len(again.conversation(cid)["turns"]) == 6
    again.close()


def test_a_failed_write_leaves_the_conversation_as_it_was(engine, monkeypatch):
    cid = engine.start()
    engine.message(cid, "hi")
    before = engine.conversation(cid)

    real = engine.store._db

    class Flaky:  # the disk fails after the user's row is written, before the reply's
        def execute(self, sql, *a):
            if sql.startswith("INSERT INTO turns") and "assistant" in sql:
                raise sqlite3.OperationalError("disk I/O error")
            return real.execute(sql, *a)

    monkeypatch.setattr(engine.store, "_db", Flaky())
    with pytest.raises(sqlite3.OperationalError):
        engine.message(cid, "where is order 555")
    monkeypatch.setattr(engine.store, "_db", real)
    assert engine.conversation(cid) == before  # the user's row was rolled back with the rest


def test_bad_messages_and_ids(engine):
    cid = engine.start()
    with pytest.raises(DataError, match="empty message"):
        engine.message(cid, "   ")
    with pytest.raises(DataError, match="exceeds the limit"):
        engine.message(cid, "x" * 1_000_000)  # 1 MB
    with pytest.raises(DataError, match="tokens exceeds"):
        engine.message(cid, "order " * 400)  # under the character limit, over the token one
    with pytest.raises(DataError, match="not a conversation id"):
        engine.message("1", "hi")
    with pytest.raises(DataError, match="not a conversation id"):
        engine.message("../../etc/passwd", "hi")
    with pytest.raises(KeyError):
        engine.message("0" * 32, "hi")
    r = engine.message(cid, b"my card \xff\xfe was stolen")  # invalid UTF-8
    assert "invalid UTF-8 replaced by U+FFFD" in r["notes"]
    r = engine.message(cid, "hi\x00\x07 there\ud800")
    assert (
        "control characters removed" in r["notes"] and "invalid code points replaced" in r["notes"]
    )
    assert len(engine.conversation(cid)["turns"]) == 4  # refused turns wrote nothing


def test_clean_text_keeps_newlines_and_tabs():
    assert clean_text("a\tb\nc", 100) == ("a\tb\nc", [])


def test_a_100k_token_conversation_keeps_the_last_16k(trained, tmp_path):
    cfg = DialogueConfig(max_turn_chars=40_000, max_turn_tokens=5000, history_tokens=16384)
    e = DialogueEngine(trained["model"], tmp_path / "long.sqlite", cfg)
    cid = e.start()
    text = "so about my order " + "and then the courier said something else " * 640
    n = len(e.analyzer.tok(text, add_special_tokens=False)["input_ids"])
    assert 4000 < n <= 5000
    turns = -(-100_000 // n)
    for _ in range(turns):
        r = e.message(cid, text)
    ctx = r["context"]
    assert ctx["tokens"] <= 16384 and ctx["tokens"] > 16384 - n
    assert ctx["dropped_turns"] == turns - ctx["tokens"] // n
    assert "16384" in ctx["policy"] and ctx["truncated_message"]
    assert len(e.conversation(cid)["turns"]) == 2 * turns  # the store keeps everything
    e.close()


def test_escalation_rules():
    from pipelines.nlp_service.conversation import escalation

    assert escalation("speak_to_human", False, 0, 2) == "the customer asked for a person"
    assert escalation("out_of_scope", False, 2, 2) == "2 turns in a row not understood"
    assert escalation("order_status", True, 1, 2) is not None
    assert escalation("order_status", False, 0, 2) is None


def test_replies_fill_slots_or_ask_for_them():
    from pipelines.nlp_service.conversation import reply

    text, missing = reply("cancel_order", {})
    assert missing == ["order_id"] and "order number" in text
    text, missing = reply("cancel_order", {"order_id": "A-77"})
    assert missing == [] and "A-77" in text
    text, _ = reply("card_lost_or_stolen", {"card_last4": "4821"})
    assert "ending 4821" in text


def test_checking_messages_while_the_model_runs_a_batch(engine):
    """Request threads check (tokenize) turns while the model thread pads a batch: the two
    must not share tokenizer state (they did: ragged batches, 500s under load)."""
    import threading

    cid = engine.start()
    stop = threading.Event()
    errors = []

    def checker():
        while not stop.is_set():
            try:
                engine.check(cid, "where is my order 12345 " * 3)
            except Exception as exc:  # pragma: no cover - the failure being tested for
                errors.append(exc)

    threads = [threading.Thread(target=checker) for _ in range(2)]
    for t in threads:
        t.start()
    texts = ["hi", "blah " * 200 + "order 5", "my card ending 4821 was declined"]
    try:
        for _ in range(40):
            out = engine.analyzer.analyze(texts)
            assert [len(a.top) for a in out] == [3, 3, 3]
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors
