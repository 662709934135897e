"""Dialogue state: slot values normalized, carried across turns, corrected and referred back to.

:func:`normalize` turns a tagged surface string into the value the state keeps (``"three"`` ->
``"3"``, ``"$45.20"`` -> ``"45.20"``, ``"#4821"`` -> ``"4821"``, ``"£"``/``"pounds"`` ->
``"GBP"``). :class:`StateTracker` applies one turn (its text, intent and slot spans from the
tagger) to the state:

* a new value for a slot replaces the old one (corrections such as "actually make that
  three" need nothing more once the tagger marks "three"); every value given is appended to
  the slot's history (mention order; references do not append);
* references to an earlier value bring it back: "the first order" is the first mentioned,
  "the order I mentioned before" / "the previous one" the last mentioned that is not current;
* the active intent is the last one that is not small talk (greeting, goodbye,
  out_of_scope), so "it's order 123" keeps working on the refund asked about before.

Not here: the tagger that finds the spans (``model.py``), persistence (``deploy.py``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from pipelines.nlp_service.config import SLOTS

_NUM = {
    w: str(i + 1)
    for i, w in enumerate(
        ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
    )
}
_NUM.update({"eleven": "11", "twelve": "12", "a": "1", "an": "1", "single": "1", "couple": "2"})
_CURRENCY = {
    "$": "USD",
    "usd": "USD",
    "dollar": "USD",
    "dollars": "USD",
    "£": "GBP",
    "gbp": "GBP",
    "pound": "GBP",
    "pounds": "GBP",
    "€": "EUR",
    "eur": "EUR",
    "euro": "EUR",
    "euros": "EUR",
}
SMALL_TALK = ("greeting", "goodbye", "out_of_scope")


def normalize(slot: str, surface: str) -> str:
    """The canonical value of a slot's surface text."""
    s = surface.strip().strip(".,;:!?")
    low = s.lower()
    if slot == "quantity":
        return _NUM.get(low, re.sub(r"\D", "", low) or low)
    if slot == "amount":
        m = re.search(r"\d+(?:[.,]\d{1,2})?", s.replace(",", "") if "." in s else s)
        return m.group(0).replace(",", ".") if m else low
    if slot == "currency":
        return _CURRENCY.get(low, s.upper())
    if slot == "order_id":
        return re.sub(r"[^A-Za-z0-9-]", "", s).upper()
    if slot in ("card_last4", "phone"):
        d = re.sub(r"\D", "", s)
        return d[-4:] if slot == "card_last4" else d
    if slot == "email":
        return low
    return re.sub(r"\s+", " ", low)


_PREV = re.compile(
    r"\b(mentioned (before|earlier)|(the )?(previous|other|earlier|last) (one|order)|"
    r"(i )?(gave|told) you (before|earlier)|from before)\b",
    re.I,
)
_FIRST = re.compile(r"\bfirst (order|one)\b", re.I)


@dataclass
class StateTracker:
    """One conversation's state; ``to_json``/``from_json`` round-trip it for the store."""

    slots: dict[str, str] = field(default_factory=dict)
    history: dict[str, list[str]] = field(default_factory=dict)
    intent: str | None = None  # the active task
    failures: int = 0  # consecutive low-confidence / out-of-scope turns
    turns: int = 0

    def update(self, text: str, intent: str, spans: list[tuple[str, str]]) -> dict[str, str]:
        """Apply one turn; ``spans`` are ``(slot, surface)`` pairs in text order."""
        self.turns += 1
        if intent not in SMALL_TALK:
            self.intent = intent
        given = set()
        for slot, surface in spans:
            if slot not in SLOTS:
                continue
            value = normalize(slot, surface)
            if not value:
                continue
            self.slots[slot] = value
            given.add(slot)
            self.history.setdefault(slot, []).append(value)
        if "order_id" not in given:
            self._resolve(text, "order_id")
        return dict(self.slots)

    def _resolve(self, text: str, slot: str) -> None:
        hist = self.history.get(slot) or []
        cur = self.slots.get(slot)
        if _FIRST.search(text) and hist:
            self.slots[slot] = hist[0]
        elif _PREV.search(text) and any(v != cur for v in hist):
            self.slots[slot] = [v for v in hist if v != cur][-1]

    def to_json(self) -> dict[str, Any]:
        return {
            "slots": self.slots,
            "history": self.history,
            "intent": self.intent,
            "failures": self.failures,
            "turns": self.turns,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> StateTracker:
        return cls(
            dict(d.get("slots", {})),
            {k: list(v) for k, v in d.get("history", {}).items()},
            d.get("intent"),
            int(d.get("failures", 0)),
            int(d.get("turns", 0)),
        )
