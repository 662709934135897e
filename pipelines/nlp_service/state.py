"""Dialogue state: slot values normalized, carried across turns, corrected and referred back to.

:func:`normalize` turns a tagged surface string into the value the state keeps (``"three"`` ->
``"3"``, ``"$45.20"`` -> ``"45.20"``, ``"#4821"`` -> ``"4821"``, ``"£"``/``"pounds"`` ->
``"GBP"``, ``"the 3rd of May"``/``"May 3rd"`` -> ``"3 may"``), or into ``""`` when the text
cannot be a value of that slot (a tagger's stray piece: an amount ``"EUR"``, a date ``"-"``);
:func:`retype` gives a mistyped value the slot its form names. :class:`StateTracker` applies
one turn (its text, intent and slot spans from the tagger) to the state:

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


_MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august",
           "september", "october", "november", "december")  # fmt: skip
_DATE_WORDS = re.compile(
    r"\b(today|tonight|yesterday|tomorrow|morning|afternoon|evening|night|week|weekend|month|"
    r"year|ago|(mon|tues|wednes|thurs|fri|satur|sun)day|jan(uary)?|feb(ruary)?|mar(ch)?|"
    r"apr(il)?|may|june?|july?|aug(ust)?|sep(t(ember)?)?|oct(ober)?|nov(ember)?|dec(ember)?)\b",
    re.I,
)


def _date(low: str) -> str:
    """``"the 3rd of May"``, ``"May 3rd"``, ``"3 may"`` -> ``"3 may"``; others lose only
    leading "on"/"the", ordinal suffixes and extra spaces."""
    s = re.sub(r"^(on\s+)?(the\s+)?", "", re.sub(r"\s+", " ", low))
    s = re.sub(r"(\d)(st|nd|rd|th)\b", r"\1", s)
    s = re.sub(r" of ", " ", s)
    words = s.split(" ")
    for i, w in enumerate(words):  # "sept" / "sep." -> "september"
        w = w.rstrip(".")
        full = [m for m in _MONTHS if len(w) >= 3 and m.startswith(w)]
        if full:
            words[i] = full[0]
    if len(words) == 2 and words[0] in _MONTHS and words[1].isdigit():
        words.reverse()
    return " ".join(words)


_NUMERIC_DATE = re.compile(r"\d{1,4}([./-])\d{1,2}(\1\d{1,4})?|\d{1,2}(st|nd|rd|th)?")
# an amount: one number (thousands groups, up to two decimals), a currency sign or word around it
_AMOUNT = re.compile(
    r"([a-z]{3}\s?|[$£€]\s?)?(\d{1,3}(,\d{3})+|\d+)([.,]\d{1,2})?(\s?[a-z]+)?", re.I
)


def _valid(slot: str, surface: str, value: str) -> bool:
    """Whether ``surface`` (normalized: ``value``) can be a value of ``slot`` — what a
    tagger's stray or mistyped piece (an amount ``"EUR"`` or ``"22.1.2026"``, a date ``"-"``,
    a phone number with letters in it) is not."""
    s = surface.strip().strip(".,;:!?")
    digits = sum(c.isdigit() for c in value)
    if slot == "order_id":
        return digits > 0
    if slot == "amount":
        return _AMOUNT.fullmatch(s) is not None
    if slot == "card_last4":
        return len(value) == 4 and value.isdigit()
    if slot == "phone":
        return digits >= 7 and re.fullmatch(r"[+()\d\s./-]+", s) is not None
    if slot == "quantity":
        return value.isdigit()
    if slot == "email":
        return re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", value) is not None
    if slot == "date":
        return _DATE_WORDS.search(value) is not None or _NUMERIC_DATE.fullmatch(value) is not None
    return any(c.isalpha() for c in value)


def normalize(slot: str, surface: str) -> str:
    """The canonical value of a slot's surface text; ``""`` when the text cannot be a value
    of that slot (an order id or amount without a number, a card number that is not four
    digits, an e-mail without a domain, a date that is neither a calendar form nor a day
    word, ...)."""
    value = _normalize(slot, surface)
    return value if value and _valid(slot, surface, value) else ""


# the slots whose form alone names them, tried in this order when the tagger's slot does not fit
_BY_FORM = ("date", "email", "order_id")


def retype(slot: str, surface: str) -> str | None:
    """The slot a tagged text is: the tagger's when the text can be one of it, else the first
    of :data:`_BY_FORM` it can be (``"25.5.2026"`` tagged as an amount is a date,
    ``"SO-2026-81216"`` tagged as a phone number an order id), else ``None``."""
    if normalize(slot, surface):
        return slot
    return next((s for s in _BY_FORM if s != slot and normalize(s, surface)), None)


def _normalize(slot: str, surface: str) -> str:
    s = surface.strip().strip(".,;:!?")
    low = s.lower()
    if slot == "quantity":
        return _NUM.get(low, re.sub(r"\D", "", low) or _NUM.get(low.split(" ")[-1], low))
    if slot == "amount":
        m = re.search(r"\d+(?:[.,]\d{1,2})?", s.replace(",", "") if "." in s else s)
        return m.group(0).replace(",", ".") if m else low
    if slot == "currency":
        return _CURRENCY.get(low, s.upper())
    if slot == "order_id":  # one word: "number 4821" -> "4821"
        words = [w for w in s.split() if any(c.isdigit() for c in w)] or [s]
        return re.sub(r"[^A-Za-z0-9-]", "", words[-1]).upper()
    if slot in ("card_last4", "phone"):
        d = re.sub(r"\D", "", s)
        return d[-4:] if slot == "card_last4" else d
    if slot == "email":
        return low
    if slot == "date":
        return _date(low)
    return re.sub(r"\s+", " ", low)


_PREV = re.compile(
    r"\b(mentioned (before|earlier)|(the )?(previous|other|earlier|prior|last|old) (one|order)|"
    r"(i )?(gave|told) you (before|earlier)|from (before|earlier))\b",
    re.I,
)
_FIRST = re.compile(r"\b(first|original|initial|earliest) (order|one)\b", re.I)


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
