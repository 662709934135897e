"""The :mod:`core.serve` predictor of an nlp_service model: :class:`DialoguePredictor`.

Endpoints (``ROUTES``, beside the stateless ``POST /v1/models/{name}/predict`` with
``{"text": ...}`` or ``{"texts": [...]}``, which reads messages without a conversation)::

    POST /v1/conversations                       {} or {"text": first message}
         -> {"conversation_id", ...the first turn's result when text was sent}
    POST /v1/conversations/{id}/messages         {"text": ...}
         -> {intent, confidence, slots, state, reply, escalate, escalate_reason, context}
    GET  /v1/conversations/{id}                  -> the conversation: state and turns
    GET  /v1/conversations?limit=50&offset=0     -> the most recently active conversations
    GET  /ui/                                    the review page (``UI``): chat + transcripts

Messages of concurrent conversations share one encoder forward (the server's dynamic
batching). Every turn is checked before it is queued: a bad id is a 422, an unknown one a
404, an empty, over-long (characters or tokens) or non-text message a 422 naming the field.
Not here: the engine (``predict.py``), HTTP and batching (``core.serve``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from core.errors import DataError
from core.serve.predictor import NotFound, Ready, RequestError, Route, RouteCall, query_int
from core.serve.ui import UiPage
from pipelines.nlp_service.config import DialogueConfig
from pipelines.nlp_service.predict import DialogueEngine, clean_text

ROUTES = (
    Route("GET", "/v1/conversations", "list"),
    Route("POST", "/v1/conversations", "create"),
    Route("POST", "/v1/conversations/{conversation_id}/messages", "message"),
    Route("GET", "/v1/conversations/{conversation_id}", "get"),
)

# a support lead's screen: a chat panel against the live service (intent, confidence, slots,
# state and escalation after each turn) and a transcript browser; files in ui/
UI = UiPage("Conversations", "pipelines.nlp_service")


def _err(loc: list[Any], msg: str) -> RequestError:
    return RequestError([{"loc": loc, "msg": msg}])


class DialoguePredictor:
    """Serves a :class:`DialogueEngine` whose conversations live in ``store``."""

    def __init__(
        self,
        model_dir: str | os.PathLike[str],
        name: str | None = None,
        version: str = "1",
        store: str | os.PathLike[str] | None = None,
        dialogue: DialogueConfig | None = None,
        max_texts: int = 64,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.name = name or self.model_dir.name
        self.version = str(version)
        self.store = store
        self.dialogue = dialogue
        self.max_texts = max_texts
        self.engine: DialogueEngine | None = None

    def load(self) -> None:
        self.engine = DialogueEngine(self.model_dir, self.store, self.dialogue)

    def warmup(self) -> None:
        assert self.engine is not None
        self.engine.analyzer.analyze(["hello", "where is my order 12345"])

    # -------------------------------------------------------------- decode
    def _text(self, body: Any, loc: list[Any]) -> str:
        if not isinstance(body, dict) or "text" not in body:
            raise _err(loc, 'send {"text": "..."}')
        if not isinstance(body["text"], str):
            raise _err([*loc, "text"], "text must be a string")
        return body["text"]

    def _turn(self, cid: str, text: str, loc: list[Any]) -> tuple[str, str, list[str], int]:
        assert self.engine is not None
        try:
            return (cid, *self.engine.check(cid, text))
        except KeyError:
            raise NotFound(
                [{"loc": ["path", "conversation_id"], "msg": "no such conversation"}]
            ) from None
        except DataError as exc:
            where = (
                ["path", "conversation_id"] if exc.where == "conversation_id" else [*loc, "text"]
            )
            raise _err(where, exc.what) from exc

    def decode(self, body: Any) -> list[Any]:
        assert self.engine is not None
        if isinstance(body, RouteCall):
            if body.route == "list":
                limit = query_int(body.query, "limit", 50, 1, 500)
                offset = query_int(body.query, "offset", 0, 0, 10**9)
                return [Ready({"conversations": self.engine.conversations(limit, offset)})]
            if body.route == "get":
                cid = body.params["conversation_id"]
                try:
                    conv = self.engine.conversation(cid)
                except DataError as exc:
                    raise _err(["path", "conversation_id"], exc.what) from exc
                if conv is None:
                    raise NotFound(
                        [{"loc": ["path", "conversation_id"], "msg": "no such conversation"}]
                    )
                return [Ready(conv)]
            if body.route == "create":
                payload = body.body if body.body is not None else {}
                if not isinstance(payload, dict):
                    raise _err(["body"], 'send {} or {"text": ...}')
                text = self._text(payload, ["body"]) if "text" in payload else None
                if text is not None:
                    clean_text(text, self.engine.max_chars)  # refuse before creating
                cid = self.engine.start()
                if text is None:
                    return [Ready({"conversation_id": cid})]
                return [("turn", self._turn(cid, text, ["body"]))]
            cid = body.params["conversation_id"]
            return [("turn", self._turn(cid, self._text(body.body, ["body"]), ["body"]))]
        # stateless reading: /v1/models/{name}/predict
        if isinstance(body, dict) and "texts" in body:
            texts = body["texts"]
            if not isinstance(texts, list) or not texts or len(texts) > self.max_texts:
                raise _err(
                    ["body", "texts"], f"texts must be a list of 1..{self.max_texts} strings"
                )
        else:
            texts = [self._text(body, ["body"])]
        items = []
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise _err(["body", "texts", i], "must be a string")
            try:
                items.append(("read", clean_text(t, self.engine.max_chars)[0]))
            except DataError as exc:
                raise _err(["body", "texts", i], exc.what) from exc
        return items

    # -------------------------------------------------------------- batch
    def predict_batch(self, items: list[Any]) -> list[Any]:
        assert self.engine is not None
        out: list[Any] = [None] * len(items)
        turns = [(i, p) for i, (k, p) in enumerate(items) if k == "turn"]
        reads = [(i, p) for i, (k, p) in enumerate(items) if k == "read"]
        if turns:
            for (i, p), r in zip(turns, self.engine.messages([p for _, p in turns]), strict=True):
                out[i] = {"conversation_id": p[0], **r}
        if reads:
            for (i, _), a in zip(
                reads, self.engine.analyzer.analyze([p for _, p in reads]), strict=True
            ):
                out[i] = {
                    "intent": a.intent,
                    "confidence": round(a.confidence, 4),
                    "slots": [{"slot": s, "value": v} for s, v in a.slots],
                }
        return out

    def encode(self, outputs: list[Any]) -> dict[str, Any]:
        if len(outputs) == 1:
            return {"model": self.name, "version": self.version, **outputs[0]}
        return {"model": self.name, "version": self.version, "results": outputs}
