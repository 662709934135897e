"""Reading intent data sets: JSONL or CSV of ``{"text", "intent"[, "slots"]}``, validated.

A line is ``{"text": str, "intent": str}``, optionally with ``"slots": [{"slot", "start",
"end"}]`` (character offsets into ``text``, end exclusive). CSV files have a header with at
least ``text`` and ``intent``. Every problem is reported with its file and line number:
invalid UTF-8 or JSON, a missing or empty text, an intent outside the taxonomy, a slot type
outside ``config.SLOTS`` or offsets outside the text, and an intent with a single example
(nothing to learn from, nothing to validate on). Also the two hand-written sets shipped in
``resources/``: ``seed.jsonl`` (may be trained on) and ``independent.jsonl`` (never trained
on; written without looking at the generator's templates). Not here: generation
(``synth.py``), tokenization and tags (``model.py``).
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import DataError
from pipelines.nlp_service.config import INTENTS, SLOTS

RESOURCES = Path(__file__).with_name("resources")


@dataclass(frozen=True)
class Span:
    """One slot value: ``text[start:end]`` is a ``slot``."""

    slot: str
    start: int
    end: int


@dataclass
class Example:
    text: str
    intent: str
    slots: list[Span] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"text": self.text, "intent": self.intent}
        if self.slots:
            d["slots"] = [{"slot": s.slot, "start": s.start, "end": s.end} for s in self.slots]
        return d


def _example(obj: Any, where: str, intents: tuple[str, ...] | None) -> Example:
    if not isinstance(obj, dict):
        raise DataError("a line must be a JSON object with text and intent", where=where)
    text, intent = obj.get("text"), obj.get("intent")
    if not isinstance(text, str) or not text.strip():
        raise DataError("empty or missing text", where=where, fix="every line needs a message")
    if not isinstance(intent, str) or not intent.strip():
        raise DataError("empty or missing intent", where=where)
    intent = intent.strip()
    if intents is not None and intent not in intents:
        raise DataError(
            f"unknown intent {intent!r}",
            where=where,
            fix="use the taxonomy's names (pipelines.nlp_service.INTENTS) or pass your own taxonomy",
        )
    spans = []
    for s in obj.get("slots") or []:
        if not isinstance(s, dict) or s.get("slot") not in SLOTS:
            raise DataError(f"slot {s!r} is not one of {', '.join(SLOTS)}", where=where)
        a, b = s.get("start"), s.get("end")
        if not (isinstance(a, int) and isinstance(b, int) and 0 <= a < b <= len(text)):
            raise DataError(f"slot offsets {a}..{b} lie outside the text", where=where)
        spans.append(Span(s["slot"], a, b))
    return Example(text, intent, sorted(spans, key=lambda s: s.start))


def read_examples(
    path: str | os.PathLike[str],
    intents: tuple[str, ...] | None = INTENTS,
    min_per_intent: int = 2,
) -> list[Example]:
    """The examples of a JSONL (``.jsonl``/``.json``) or CSV file, validated line by line.

    ``intents``: the taxonomy labels must come from; None takes the file's own labels."""
    p = Path(path)
    if not p.is_file():
        raise DataError("no such file", where=str(p), fix="pass a JSONL or CSV file")
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError("invalid UTF-8", where=f"{p}:{line}", fix="save the file as UTF-8") from exc
    out: list[Example] = []
    lines: list[int] = []
    if p.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        if not reader.fieldnames or not {"text", "intent"} <= set(reader.fieldnames):
            raise DataError("a CSV needs the columns text and intent", where=f"{p}:1")
        for row in reader:
            n = reader.line_num
            out.append(_example(row, f"{p}:{n}", intents))
            lines.append(n)
    else:
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"invalid JSON ({exc.msg})", where=f"{p}:{n}") from exc
            out.append(_example(obj, f"{p}:{n}", intents))
            lines.append(n)
    if not out:
        raise DataError("no examples", where=str(p), fix="the file is empty")
    counts = Counter(e.intent for e in out)
    few = sorted(k for k, c in counts.items() if c < min_per_intent)
    if few:
        first = {k: lines[next(i for i, e in enumerate(out) if e.intent == k)] for k in few}
        raise DataError(
            "intent(s) with fewer than "
            f"{min_per_intent} examples: " + ", ".join(f"{k} (line {first[k]})" for k in few),
            where=str(p),
            fix="add examples or drop the label",
        )
    return out


def write_examples(examples: list[Example], path: str | os.PathLike[str]) -> Path:
    """Write JSONL atomically (temp file, then rename)."""
    from core.atomic import atomic_write_text

    p = Path(path)
    atomic_write_text(p, "".join(json.dumps(e.to_json()) + "\n" for e in examples))
    return p


def seed_set() -> list[Example]:
    """The hand-written seed messages (a few per intent; may be trained on)."""
    return read_examples(RESOURCES / "seed.jsonl")


def independent_set() -> list[Example]:
    """The hand-written evaluation messages: never trained on, never used to tune."""
    return read_examples(RESOURCES / "independent.jsonl")


def taxonomy(examples: list[Example], default: tuple[str, ...] = INTENTS) -> tuple[str, ...]:
    """The label set: the default taxonomy when every label is in it, else the file's own
    labels (sorted), always with ``out_of_scope`` last."""
    labels = {e.intent for e in examples}
    if labels <= set(default):
        return default
    from pipelines.nlp_service.config import OOS

    return (*sorted(labels - {OOS}), OOS)
