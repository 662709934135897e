"""Conversations: the SQLite store, the reply templates and the escalation policy.

:class:`ConversationStore` keeps every conversation in one SQLite file (WAL journal): a row
per conversation (its tracker state as JSON, token count) and a row per turn. A turn is
written in one transaction — the user's message, the analysis, the reply and the new state
land together or not at all — so a service killed at any moment restarts with every
conversation exactly where its last complete turn left it. Ids are 128-bit random
(``secrets``), never sequential; an id that is not 32 hex characters is refused before any
lookup.

:func:`reply` picks the answer template of the intent and fills it from the dialogue state;
a template whose slots are missing asks for them instead. :func:`escalation` says whether a
human should take over, and why: the user asked for one, the model is unsure of this message
(its best intent fell below the out-of-scope threshold), or ``escalate_after_failures``
consecutive turns were out of scope or unsure.
Not here: the model (``model.py``), the state rules (``state.py``), HTTP (``serve.py``).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from core.errors import DataError
from pipelines.nlp_service.config import OOS
from pipelines.nlp_service.state import StateTracker

ID_RE = re.compile(r"[0-9a-f]{32}")

#: Answer templates by intent: ``(text, slots it needs)``; ``{slot}`` is filled from state.
TEMPLATES: dict[str, tuple[str, tuple[str, ...]]] = {
    "card_lost_or_stolen": (
        "I've frozen your card{card_suffix}. A replacement will be posted within 5 working days.",
        (),
    ),
    "card_declined": (
        "Card payments can be declined for limits, a wrong PIN or a merchant block. "
        "I can check the last declined payment{card_suffix} for you.",
        (),
    ),
    "dispute_transaction": (
        "I've opened a dispute for the payment of {amount}. You'll hear from us within 10 days.",
        ("amount",),
    ),
    "refund_status": ("The refund for order {order_id} is being processed.", ("order_id",)),
    "order_status": (
        "Order {order_id} is on its way; you'll get tracking by email.",
        ("order_id",),
    ),
    "cancel_order": ("Order {order_id} has been cancelled.", ("order_id",)),
    "change_address": ("Your address is now {address}.", ("address",)),
    "reset_password": ("I've sent a password reset link to the email on your account.", ()),
    "account_locked": (
        "For your security the account was locked. I've sent an unlock link to your email.",
        (),
    ),
    "update_contact_details": ("Your contact details are updated.", ()),
    "cancel_subscription": ("Your subscription will end at the close of this billing cycle.", ()),
    "upgrade_plan": ("You can upgrade in Settings > Plan; the change applies at once.", ()),
    "billing_question": ("Your latest invoice is in Billing; I can explain any line on it.", ()),
    "payment_failed": (
        "The payment didn't go through. Please check the card details or try another method.",
        (),
    ),
    "transfer_money": ("I can send {amount} once you confirm the recipient.", ("amount",)),
    "check_balance": ("Your balance is shown in the app under Accounts.", ()),
    "report_fraud": (
        "Thank you for reporting it. I've blocked further payments and a fraud specialist "
        "will contact you today.",
        (),
    ),
    "return_item": ("I've started a return{product_suffix}; a label is on its way.", ()),
    "damaged_item": (
        "Sorry it arrived damaged. I've arranged a replacement{product_suffix}.",
        (),
    ),
    "speak_to_human": ("I'm connecting you to a member of our team.", ()),
    "opening_hours": ("We're open Monday to Saturday, 8:00 to 20:00.", ()),
    "greeting": ("Hello! How can I help you today?", ()),
    "goodbye": ("Thanks for getting in touch. Goodbye!", ()),
    OOS: ("Sorry, I can't help with that here. I can help with cards, orders and accounts.", ()),
}
_ASK = {
    "order_id": "your order number",
    "amount": "the amount",
    "address": "the new address",
}


def reply(intent: str, state: dict[str, str]) -> tuple[str, list[str]]:
    """The reply text and the slots still missing (asked for in the text)."""
    text, needs = TEMPLATES.get(intent, TEMPLATES[OOS])
    missing = [s for s in needs if s not in state]
    if missing:
        return "Could you give me " + " and ".join(_ASK.get(s, s) for s in missing) + "?", missing
    fill = dict(state)
    fill["card_suffix"] = f" ending {state['card_last4']}" if "card_last4" in state else ""
    fill["product_suffix"] = f" for the {state['product']}" if "product" in state else ""
    return text.format(**fill), []


def escalation(intent: str, low_confidence: bool, failures: int, limit: int) -> str | None:
    """Why a human should take over now, or None."""
    if intent == "speak_to_human":
        return "the customer asked for a person"
    if failures >= limit:
        return f"{failures} turns in a row not understood"
    if low_confidence:
        return "the model is not confident about this message"
    return None


def check_id(conversation_id: str) -> str:
    if not isinstance(conversation_id, str) or not ID_RE.fullmatch(conversation_id):
        raise DataError(
            "not a conversation id",
            where="conversation_id",
            fix="use the id POST /v1/conversations returned",
        )
    return conversation_id


class ConversationStore:
    """Conversations in one SQLite file; safe across threads of one process and restarts."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # WAL + NORMAL: a commit survives the process being killed at any point (the case a
        # restarted service meets); only a power cut may lose the last commits, never
        # consistency. FULL would add an fsync per turn.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(
            """
            CREATE TABLE IF NOT EXISTS conversations (
                id TEXT PRIMARY KEY, created REAL, updated REAL, state TEXT, tokens INTEGER,
                dropped_turns INTEGER DEFAULT 0, meta TEXT, context TEXT DEFAULT '[]');
            CREATE INDEX IF NOT EXISTS conversations_by_update ON conversations (updated);
            CREATE TABLE IF NOT EXISTS turns (
                conversation TEXT, n INTEGER, role TEXT, text TEXT, tokens INTEGER,
                analysis TEXT, created REAL, PRIMARY KEY (conversation, n));
            """
        )

    def create(self, meta: dict[str, Any] | None = None) -> str:
        cid = secrets.token_hex(16)
        now = time.time()
        with self._lock:
            self._db.execute(
                "INSERT INTO conversations VALUES (?, ?, ?, ?, 0, 0, ?, '[]')",
                (cid, now, now, json.dumps(StateTracker().to_json()), json.dumps(meta or {})),
            )
        return cid

    def exists(self, cid: str) -> bool:
        with self._lock:
            row = self._db.execute("SELECT 1 FROM conversations WHERE id = ?", (cid,)).fetchone()
        return row is not None

    def load(self, cid: str) -> tuple[StateTracker, int, int, list[int]] | None:
        """``(tracker, tokens, dropped_turns, context)`` or None for an unknown id; ``context``
        holds the token counts of the user turns still in context, oldest first."""
        with self._lock:
            row = self._db.execute(
                "SELECT state, tokens, dropped_turns, context FROM conversations WHERE id = ?",
                (cid,),
            ).fetchone()
        if row is None:
            return None
        tracker = StateTracker.from_json(json.loads(row[0]))
        return tracker, int(row[1]), int(row[2]), json.loads(row[3])

    def append_turn(
        self,
        cid: str,
        user_text: str,
        user_tokens: int,
        analysis: dict[str, Any],
        reply_text: str,
        tracker: StateTracker,
        tokens: int,
        dropped: int,
        context: list[int],
    ) -> None:
        """The user's turn, the reply and the new state in one transaction."""
        now = time.time()
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                n = db.execute(
                    "SELECT COALESCE(MAX(n), -1) + 1 FROM turns WHERE conversation = ?", (cid,)
                ).fetchone()[0]
                db.execute(
                    "INSERT INTO turns VALUES (?, ?, 'user', ?, ?, ?, ?)",
                    (cid, n, user_text, user_tokens, json.dumps(analysis), now),
                )
                db.execute(
                    "INSERT INTO turns VALUES (?, ?, 'assistant', ?, 0, NULL, ?)",
                    (cid, n + 1, reply_text, now),
                )
                db.execute(
                    "UPDATE conversations SET updated = ?, state = ?, tokens = ?, dropped_turns = ?,"
                    " context = ? WHERE id = ?",
                    (now, json.dumps(tracker.to_json()), tokens, dropped, json.dumps(context), cid),
                )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def recent(self, limit: int = 50, offset: int = 0) -> list[dict[str, Any]]:
        """Conversations, most recently active first: id, times, user turns, the last user
        message and whether any turn was escalated."""
        with self._lock:
            rows = self._db.execute(
                "SELECT c.id, c.created, c.updated,"
                " (SELECT COUNT(*) FROM turns t WHERE t.conversation = c.id AND t.role = 'user'),"
                " (SELECT text FROM turns t WHERE t.conversation = c.id AND t.role = 'user'"
                "  ORDER BY t.n DESC LIMIT 1),"
                " (SELECT MAX(json_extract(t.analysis, '$.escalate')) FROM turns t"
                "  WHERE t.conversation = c.id)"
                " FROM conversations c ORDER BY c.updated DESC LIMIT ? OFFSET ?",
                (limit, offset),
            ).fetchall()
        return [
            {
                "id": cid,
                "created": created,
                "updated": updated,
                "user_turns": n,
                "last_message": last,
                "escalated": bool(esc),
            }
            for cid, created, updated, n, last, esc in rows
        ]

    def turns(self, cid: str) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT n, role, text, tokens, analysis FROM turns WHERE conversation = ? ORDER BY n",
                (cid,),
            ).fetchall()
        return [
            {
                "n": n,
                "role": role,
                "text": text,
                "tokens": tok,
                **({"analysis": json.loads(a)} if a else {}),
            }
            for n, role, text, tok, a in rows
        ]

    def close(self) -> None:
        with self._lock:
            self._db.close()
