"""Reviewer decisions on a model's results, in one SQLite file that survives restarts.

A domain records the results a person should look at as *items* (an alert, a detection, a
nodule), each with a kind, an id, a score, an optional group (the user an alert belongs to),
a time and a JSON payload. A reviewer's *decision* on an item (a verdict such as ``fraud`` or
``right``, a note, who and when) is appended, never overwritten: the latest decision is the
item's verdict and the earlier ones stay as its history. Every write is one transaction,
committed before the call returns (WAL, ``synchronous=NORMAL``: a commit survives the
process being killed at any point; only a power cut may lose the last ones).

Not here: what an item means or what a decision does to a model (the domain's ``serve.py``),
HTTP (``core.serve``).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    kind TEXT NOT NULL, id TEXT NOT NULL, grp TEXT, score REAL, at REAL NOT NULL,
    payload TEXT NOT NULL, PRIMARY KEY (kind, id));
CREATE INDEX IF NOT EXISTS items_by_score ON items (kind, score DESC);
CREATE INDEX IF NOT EXISTS items_by_group ON items (kind, grp, at DESC);
CREATE TABLE IF NOT EXISTS decisions (
    n INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, id TEXT NOT NULL,
    verdict TEXT NOT NULL, note TEXT, reviewer TEXT, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS decisions_by_item ON decisions (kind, id, n);
"""


class ReviewStore:
    """Items to review and the decisions on them. ``path=None`` keeps them in memory only."""

    def __init__(self, path: str | os.PathLike[str] | None) -> None:
        self.path = None if path is None else Path(path)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            ":memory:" if self.path is None else str(self.path),
            check_same_thread=False,
            isolation_level=None,
        )
        if self.path is not None:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    # ------------------------------------------------------------------ items
    def add(
        self,
        kind: str,
        item_id: str,
        payload: dict[str, Any],
        score: float | None = None,
        group: str | None = None,
        at: float | None = None,
    ) -> bool:
        """Record an item; False (and nothing changed) when ``(kind, item_id)`` exists."""
        with self._lock:
            cur = self._db.execute(
                "INSERT OR IGNORE INTO items VALUES (?, ?, ?, ?, ?, ?)",
                (kind, item_id, group, score, time.time() if at is None else at,
                 json.dumps(payload)),
            )  # fmt: skip
        return cur.rowcount == 1

    def add_many(
        self, rows: list[tuple[str, str, dict[str, Any], float | None, str | None, float]]
    ) -> int:
        """``(kind, id, payload, score, group, at)`` rows in one transaction; existing items are
        left as they are. Returns how many were new."""
        if not rows:
            return 0
        with self._lock:
            db = self._db
            before = db.total_changes
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany(
                    "INSERT OR IGNORE INTO items VALUES (?, ?, ?, ?, ?, ?)",
                    [(k, i, g, sc, at, json.dumps(p)) for k, i, p, sc, g, at in rows],
                )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return db.total_changes - before

    def item(self, kind: str, item_id: str) -> dict[str, Any] | None:
        """The item with its latest decision (``decision``) and every one (``history``)."""
        with self._lock:
            row = self._db.execute(
                "SELECT id, grp, score, at, payload FROM items WHERE kind = ? AND id = ?",
                (kind, item_id),
            ).fetchone()
            if row is None:
                return None
            hist = self._db.execute(
                "SELECT verdict, note, reviewer, at FROM decisions WHERE kind = ? AND id = ?"
                " ORDER BY n",
                (kind, item_id),
            ).fetchall()
        out = _item(row)
        out["history"] = [_decision(h) for h in hist]
        out["decision"] = out["history"][-1] if hist else None
        return out

    def items(
        self,
        kind: str,
        status: str = "all",
        group: str | None = None,
        order: str = "score",
        limit: int = 100,
        offset: int = 0,
    ) -> list[dict[str, Any]]:
        """Items of ``kind`` with their latest decision; ``status`` is ``open`` (undecided),
        ``decided`` or ``all``; ``order`` is ``score`` (highest first) or ``time`` (newest
        first)."""
        if status not in ("open", "decided", "all") or order not in ("score", "time"):
            raise ValueError(f"status {status!r} / order {order!r}")
        where, args = ["i.kind = ?"], [kind]
        if group is not None:
            where.append("i.grp = ?")
            args.append(group)
        if status != "all":
            where.append(("" if status == "decided" else "NOT ") + "EXISTS (SELECT 1 FROM decisions d WHERE d.kind = i.kind AND d.id = i.id)")  # fmt: skip
        by = "i.score DESC, i.at DESC" if order == "score" else "i.at DESC"
        sql = (
            "SELECT i.id, i.grp, i.score, i.at, i.payload, d.verdict, d.note, d.reviewer, d.at"
            " FROM items i LEFT JOIN decisions d ON d.n = (SELECT MAX(n) FROM decisions x"
            " WHERE x.kind = i.kind AND x.id = i.id)"
            f" WHERE {' AND '.join(where)} ORDER BY {by} LIMIT ? OFFSET ?"
        )
        with self._lock:
            rows = self._db.execute(sql, (*args, limit, offset)).fetchall()
        out = []
        for r in rows:
            it = _item(r[:5])
            it["decision"] = None if r[5] is None else _decision(r[5:])
            out.append(it)
        return out

    def count(self, kind: str, status: str = "all") -> int:
        cond = {
            "all": "",
            "open": " AND NOT EXISTS (SELECT 1 FROM decisions d WHERE d.kind = i.kind AND d.id = i.id)",
            "decided": " AND EXISTS (SELECT 1 FROM decisions d WHERE d.kind = i.kind AND d.id = i.id)",
        }[status]  # fmt: skip
        with self._lock:
            return self._db.execute(
                f"SELECT COUNT(*) FROM items i WHERE i.kind = ?{cond}", (kind,)
            ).fetchone()[0]

    def per_day(self, kind: str, days: int = 30) -> list[dict[str, Any]]:
        """``[{day, items, decided, verdicts: {verdict: n}}]`` for the last ``days`` days that
        have items (UTC dates of the items' times), oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT date(i.at, 'unixepoch') AS day, COUNT(*),"
                " SUM(d.verdict IS NOT NULL), json_group_array(d.verdict)"
                " FROM items i LEFT JOIN decisions d ON d.n = (SELECT MAX(n) FROM decisions x"
                " WHERE x.kind = i.kind AND x.id = i.id)"
                " WHERE i.kind = ? GROUP BY day ORDER BY day DESC LIMIT ?",
                (kind, days),
            ).fetchall()
        out = []
        for day, n, decided, verdicts in reversed(rows):
            tally: dict[str, int] = {}
            for v in json.loads(verdicts):
                if v is not None:
                    tally[v] = tally.get(v, 0) + 1
            out.append({"day": day, "items": n, "decided": int(decided or 0), "verdicts": tally})
        return out

    # -------------------------------------------------------------- decisions
    def decide(
        self,
        kind: str,
        item_id: str,
        verdict: str,
        note: str | None = None,
        reviewer: str | None = None,
    ) -> dict[str, Any]:
        """Append a decision; KeyError for an unknown item. Returns the decision."""
        now = time.time()
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                known = db.execute(
                    "SELECT 1 FROM items WHERE kind = ? AND id = ?", (kind, item_id)
                ).fetchone()
                if known is None:
                    raise KeyError(item_id)
                db.execute(
                    "INSERT INTO decisions (kind, id, verdict, note, reviewer, at)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (kind, item_id, verdict, note, reviewer, now),
                )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return {"verdict": verdict, "note": note, "reviewer": reviewer, "at": now}

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _item(row: tuple[Any, ...]) -> dict[str, Any]:
    iid, grp, score, at, payload = row
    return {"id": iid, "group": grp, "score": score, "at": at, "payload": json.loads(payload)}


def _decision(row: tuple[Any, ...]) -> dict[str, Any]:
    verdict, note, reviewer, at = row
    return {"verdict": verdict, "note": note, "reviewer": reviewer, "at": at}
