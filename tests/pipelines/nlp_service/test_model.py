"""Tokens and tags on the real tokenizer: spans become BIO tags and come back as the same
surface strings; a long message keeps its end; the generator's spans point at slot values."""

from __future__ import annotations

import pytest

from pipelines.nlp_service import model as M
from pipelines.nlp_service.config import TAGS, SynthConfig
from pipelines.nlp_service.data import Span
from pipelines.nlp_service.synth import messages


@pytest.fixture(scope="module")
def tok():
    return M.load_tokenizer()


def test_spans_to_tags_and_back(tok):
    text = "Send £45.20 to sam12@mail.net, order A-77812 please"
    spans = [Span("amount", 5, 11), Span("email", 15, 29), Span("order_id", 37, 44)]
    enc = M.encode_texts(tok, [text], 64)
    tags = M.tag_targets(enc["offsets"], enc["special"], [spans])
    names = [TAGS[t] for t in tags[0] if t != M.IGNORE]
    assert names.count("B-amount") == 1 and names.count("B-email") == 1
    assert "I-email" in names  # an email is several word pieces
    assert tags[0][0] == M.IGNORE  # [CLS]
    back = M.decode_tags([max(t, 0) for t in tags[0]], enc["offsets"][0], enc["special"][0], text)
    assert back == [("amount", "£45.20"), ("email", "sam12@mail.net"), ("order_id", "A-77812")]


def test_generated_spans_survive_the_round_trip(tok):
    ex = [e for e in messages(SynthConfig(per_intent=6, seed=5)) if e.slots][:40]
    enc = M.encode_texts(tok, [e.text for e in ex], 128)
    tags = M.tag_targets(enc["offsets"], enc["special"], [e.slots for e in ex])
    for b, e in enumerate(ex):
        back = M.decode_tags(
            [max(t, 0) for t in tags[b]], enc["offsets"][b], enc["special"][b], e.text
        )
        assert back == [(s.slot, e.text[s.start : s.end]) for s in e.slots]


def test_long_messages_keep_their_last_tokens(tok):
    text = "blah " * 300 + "where is my order"
    enc = M.encode_texts(tok, [text], 16)
    ids = enc["input_ids"][0]
    assert len(ids) == 16
    assert tok.decode(ids[-5:-1]).strip() == "where is my order"
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id


def test_a_model_dir_of_another_kind_is_refused(tmp_path):
    from core.errors import ModelLoadError

    (tmp_path / "config.json").write_text('{"kind": "vision_qc"}')
    with pytest.raises(ModelLoadError, match="not an nlp_service model"):
        M.load(tmp_path)
    with pytest.raises(ModelLoadError, match=r"no config\.json"):
        M.load(tmp_path / "missing")


def test_a_truncated_message_and_short_ones_share_a_batch(tok):
    """The served batch mixes lengths: one message over the limit, others short."""
    texts = ["hi", "blah " * 300 + "my email is sam@mail.net", "where is order 12345"]
    enc = M.encode_texts(tok, texts, 16)
    assert enc["input_ids"].shape == enc["special"].shape == (3, 16)
    assert enc["special"][0, 3:].all() and not enc["special"][1, 1:-1].any()
    spans = [[], [], [Span("order_id", 15, 20)]]
    tags = M.tag_targets(enc["offsets"], enc["special"], spans)
    back = M.decode_tags(
        [max(t, 0) for t in tags[2]], enc["offsets"][2], enc["special"][2], texts[2]
    )
    assert back == [("order_id", "12345")]


def _tagged(tok, text, pieces):
    """Tag ids for ``text`` where every token starting inside ``(substring, slot)`` gets
    ``B-slot`` (a tagger that broke a value into pieces)."""
    import numpy as np

    enc = M.encode_texts(tok, [text], 64)
    tags = np.zeros(enc["input_ids"].shape[1], np.int64)
    for sub, slot in pieces:
        a = text.index(sub)
        for t, (x, z) in enumerate(enc["offsets"][0]):
            if not enc["special"][0][t] and z > x and a <= x < a + len(sub):
                tags[t] = TAGS.index(f"B-{slot}")
    return M.decode_tags(tags, enc["offsets"][0], enc["special"][0], text)


def test_a_value_the_tagger_broke_into_pieces_is_read_whole(tok):
    # one word, its pieces called order id and date: the larger share names the whole word
    assert _tagged(
        tok, "it should be SO-2026-00417.", [("-2026", "date"), ("-00417", "order_id")]
    ) == [("order_id", "SO-2026-00417")]
    assert _tagged(
        tok, "that was on 22.1.2026", [("22", "date"), (".1", "amount"), (".2026", "date")]
    ) == [("date", "22.1.2026")]
    # a word mostly untagged keeps only its tagged stretch
    assert _tagged(tok, "see order#12345 now", [("12345", "order_id")]) == [("order_id", "12345")]
    # neighbouring words of one slot are one value; one untagged word between them joins a
    # phrase slot (a date) but splits a compact one (two order ids)
    assert _tagged(tok, "I paid 770.35 EUR for it", [("770.35", "amount"), ("EUR", "amount")]) == [
        ("amount", "770.35 EUR")
    ]
    assert _tagged(tok, "it is the 24th of May", [("24th", "date"), ("May", "date")]) == [
        ("date", "24th of May")
    ]
    assert _tagged(tok, "orders 111 and 222", [("111", "order_id"), ("222", "order_id")]) == [
        ("order_id", "111"),
        ("order_id", "222"),
    ]
