"""The inference object a customer imports: :class:`DialogueEngine`, one model directory in,
turn results out.

``engine.start()`` opens a conversation and returns its id; ``engine.message(id, text)``
reads the message (intent, confidence, slots), applies it to the conversation's state,
writes the turn to the store and returns ``{intent, confidence, slots, state, reply,
escalate, escalate_reason, context}``. ``engine.messages([(id, text), ...])`` does the same
for many conversations with one encoder forward (what the server's dynamic batching calls).

Untrusted text: invalid UTF-8 (bytes) is decoded with replacement characters and said so;
control characters other than newline and tab are removed; a message longer than
``DialogueConfig.max_turn_chars`` characters or ``DialogueConfig.max_turn_tokens`` tokens is refused
(:class:`core.errors.DataError`), as is an empty one. Long conversations: the store keeps
every turn; the context the state is built from is the last ``history_tokens`` tokens, and
once turns fall out of it the response says so (``context.dropped_turns``, ``policy``).
Not here: the network (``model.py``), HTTP (``serve.py``).
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from typing import Any

from core.errors import DataError
from pipelines.nlp_service.config import OOS, DialogueConfig
from pipelines.nlp_service.conversation import ConversationStore, check_id, escalation, reply
from pipelines.nlp_service.model import Analysis, Analyzer
from pipelines.nlp_service.state import SMALL_TALK

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def clean_text(text: str | bytes, max_chars: int) -> tuple[str, list[str]]:
    """The message as the model reads it, and notes on what was changed; DataError when it
    is empty or too long."""
    notes = []
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            text = text.decode("utf-8", errors="replace")
            notes.append("invalid UTF-8 replaced by U+FFFD")
    if not isinstance(text, str):
        raise DataError("the message must be text", where="text")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates ("\ud800" in JSON): not text
        text = text.encode("utf-8", errors="replace").decode("utf-8")
        notes.append("invalid code points replaced")
    if len(text) > max_chars:
        raise DataError(
            f"message of {len(text)} characters exceeds the limit of {max_chars}",
            where="text",
            fix="send a shorter message",
        )
    cleaned = _CONTROL.sub("", text)
    if cleaned != text:
        notes.append("control characters removed")
    if not cleaned.strip():
        raise DataError("empty message", where="text", fix="send some text")
    return cleaned, notes


class DialogueEngine:
    """Intent + slots + state + reply for conversations kept in a SQLite store."""

    def __init__(
        self,
        model_dir: str | os.PathLike[str],
        store: str | os.PathLike[str] | None = None,
        dialogue: DialogueConfig | None = None,
        prefer: str = "onnx",
        threads: int | None = None,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.cfg = dialogue or DialogueConfig()
        self.analyzer = Analyzer(self.model_dir, prefer=prefer, threads=threads)
        # a fast tokenizer keeps its padding/truncation settings on the shared Rust object: a
        # count on a request thread while the model thread pads a batch gave ragged batches
        # (500s under load), so counting has a tokenizer (and a lock) of its own
        from pipelines.nlp_service.model import load_tokenizer

        self._counter = load_tokenizer(self.model_dir)
        self._count_lock = threading.Lock()
        self.max_chars = self.cfg.max_turn_chars
        self.store = ConversationStore(store or self.cfg.store)
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    # -------------------------------------------------------------- checks
    def check(self, conversation_id: str, text: str | bytes) -> tuple[str, list[str], int]:
        """Validate one turn before anything runs: ``(clean text, notes, tokens)``."""
        check_id(conversation_id)
        if not self.store.exists(conversation_id):
            raise KeyError(conversation_id)
        cleaned, notes = clean_text(text, self.max_chars)
        with self._count_lock:
            n = len(self._counter(cleaned, add_special_tokens=False)["input_ids"])
        if n > self.cfg.max_turn_tokens:
            raise DataError(
                f"message of {n} tokens exceeds the limit of {self.cfg.max_turn_tokens}",
                where="text",
                fix="split it into several messages",
            )
        return cleaned, notes, n

    def start(self, meta: dict[str, Any] | None = None) -> str:
        return self.store.create(meta)

    def conversations(self, limit: int = 50, offset: int = 0) -> list[dict[str, Any]]:
        """The most recently active conversations (``ConversationStore.recent``)."""
        return self.store.recent(limit, offset)

    def conversation(self, conversation_id: str) -> dict[str, Any] | None:
        check_id(conversation_id)
        loaded = self.store.load(conversation_id)
        if loaded is None:
            return None
        tracker, tokens, dropped, _ = loaded
        return {
            "id": conversation_id,
            "state": tracker.slots,
            "intent": tracker.intent,
            "tokens": tokens,
            "dropped_turns": dropped,
            "turns": self.store.turns(conversation_id),
        }

    # -------------------------------------------------------------- turns
    def message(self, conversation_id: str, text: str | bytes) -> dict[str, Any]:
        cleaned, notes, n = self.check(conversation_id, text)
        return self.messages([(conversation_id, cleaned, notes, n)])[0]

    def messages(self, turns: list[tuple[str, str, list[str], int]]) -> list[dict[str, Any]]:
        """Checked turns ``(id, clean text, notes, tokens)`` -> results, one encoder forward."""
        analyses = self.analyzer.analyze([t[1] for t in turns])
        out = []
        for (cid, text, notes, n), a in zip(turns, analyses, strict=True):
            with self._lock(cid):
                out.append(self._apply(cid, text, notes, n, a))
        return out

    def _lock(self, cid: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(cid, threading.Lock())

    def _apply(self, cid: str, text: str, notes: list[str], n: int, a: Analysis) -> dict[str, Any]:
        loaded = self.store.load(cid)
        if loaded is None:  # removed between check and apply
            raise KeyError(cid)
        tracker, tokens, dropped, context = loaded
        unsure = a.intent == OOS and a.top[0][0] != OOS
        state = tracker.update(text, a.intent, a.slots)
        tracker.failures = tracker.failures + 1 if a.intent == OOS else 0
        reason = escalation(a.intent, unsure, tracker.failures, self.cfg.escalate_after_failures)
        # small talk that carries slots ("it's order 123") continues the active task
        task = tracker.intent if a.intent in SMALL_TALK and a.slots and tracker.intent else a.intent
        answer, missing = reply(task, state)
        tokens += n
        context = [*context, n]
        while tokens > self.cfg.history_tokens and len(context) > 1:
            tokens -= context.pop(0)
            dropped += 1
        result = {
            "intent": a.intent,
            "confidence": round(a.confidence, 4),
            "top_intents": [{"intent": k, "confidence": round(p, 4)} for k, p in a.top],
            "slots": [{"slot": s, "value": v} for s, v in a.slots],
            "state": state,
            "active_intent": tracker.intent,
            "reply": answer,
            "missing_slots": missing,
            "escalate": reason is not None,
            "escalate_reason": reason,
            "context": {
                "tokens": tokens,
                "dropped_turns": dropped,
                "policy": f"keep the last {self.cfg.history_tokens} tokens",
                "truncated_message": a.truncated,
            },
            "notes": notes,
        }
        self.store.append_turn(
            cid,
            text,
            n,
            {k: result[k] for k in ("intent", "confidence", "slots", "escalate")},
            answer,
            tracker,
            tokens,
            dropped,
            context,
        )
        return result

    def close(self) -> None:
        self.store.close()
