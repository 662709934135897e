"""The :mod:`core.serve` predictor of a finance_risk model: :class:`RiskPredictor`.

A request is JSON: one transaction event (the canonical fields, ``data.parse_event``), or
``{"events": [...]}`` with up to ``max_events`` of them, or a label that became known,
``{"type": "label", "transaction_id": ..., "label": 0|1}`` (optionally ``merchant_id``).
The answer holds one decision per event (score, alert, segment, top features, ``duplicate``)
in the order sent. Events are applied to the per-user state in the order they arrive, one
at a time, whatever the server batches. A malformed event is a 422 naming its position and
field; the other events of that request are not applied (a request is all or nothing).

The analyst's alert queue (``ROUTES``; the review page ``UI`` at ``/ui/`` uses only these)::

    GET  /v1/alerts?status=open|decided|all&limit=100&offset=0
         -> {"alerts": [...highest score first], "open", "decided", "budget_per_day"}
    GET  /v1/alerts/per-day?days=30 -> {"days": [{day, alerts, decided, verdicts}], "budget_per_day"}
    GET  /v1/alerts/{transaction_id} -> the alert, its decisions, the user's recent transactions
    POST /v1/alerts/{transaction_id}/decision  {"label": 1 (fraud) | 0, "note"?, "reviewer"?}
         -> the decision, which becomes a label (``FraudScorer.add_label``) at its time

Every scored transaction and every alert is kept in ``reviews.sqlite`` beside the scorer's
state (``core.reviews``; or where ``reviews`` says; in memory without either), by event time. A decision is
final: the same decision again is answered as before (``duplicate``), the other one is a 409,
since the first has already become a label.
Not here: the scoring itself (``predict.py``), HTTP, batching and metrics (``core.serve``).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from core.errors import DataError
from core.reviews import ReviewStore
from core.serve.predictor import (
    Conflict,
    NotFound,
    Ready,
    RequestError,
    Route,
    RouteCall,
    query_choice,
    query_int,
    review_body,
)
from core.serve.ui import UiPage
from pipelines.finance_risk.data import parse_event
from pipelines.finance_risk.predict import FraudScorer

ROUTES = (
    Route("GET", "/v1/alerts", "alerts"),
    Route("GET", "/v1/alerts/per-day", "per_day"),  # before {transaction_id}: matched first
    Route("GET", "/v1/alerts/{transaction_id}", "alert"),
    Route("POST", "/v1/alerts/{transaction_id}/decision", "decide"),
)
# an analyst's screen: the queue by score, why each alert fired, the user's recent
# transactions, a decision that becomes a label, and alerts per day against the budget
UI = UiPage("Alert queue", "pipelines.finance_risk")
VERDICTS = {1: "fraud", 0: "not_fraud"}
RECENT = 20  # the user's transactions shown beside an alert


def _err(loc: list[Any], msg: str) -> RequestError:
    return RequestError([{"loc": loc, "msg": msg}])


def _no_alert(tid: str) -> NotFound:
    return NotFound(
        [{"loc": ["path", "transaction_id"], "msg": f"no alert for transaction {tid!r}"}]
    )


def _record(ev: dict[str, Any], decision: dict[str, Any]) -> dict[str, Any]:
    """What the queue shows of a scored transaction."""
    keep = ("user_id", "amount", "merchant_id", "merchant_category", "country", "channel")
    return {
        "transaction_id": ev["transaction_id"],
        "timestamp": ev["timestamp"].isoformat(),
        **{k: ev.get(k) for k in keep},
        "score": decision["score"],
        "alert": decision["alert"],
        "segment": decision["segment"],
    }


class RiskPredictor:
    """Serves a :class:`FraudScorer`; state persists in ``state_dir`` when given, the alert
    queue in ``reviews`` (default ``state_dir/reviews.sqlite``; in memory without either)."""

    def __init__(
        self,
        model_dir: str | os.PathLike[str],
        name: str | None = None,
        version: str = "1",
        state_dir: str | os.PathLike[str] | None = None,
        max_events: int = 1000,
        reviews: str | os.PathLike[str] | None = None,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.name = name or self.model_dir.name
        self.version = str(version)
        self.state_dir = state_dir
        self.max_events = max_events
        self.scorer: FraudScorer | None = None
        self.reviews_path = reviews
        self.reviews: ReviewStore | None = None
        self._lock = threading.Lock()  # one state: events are applied one at a time

    def load(self) -> None:
        self.scorer = FraudScorer(self.model_dir, self.state_dir)
        where = self.reviews_path
        if where is None and self.state_dir is not None:
            where = Path(self.state_dir) / "reviews.sqlite"
        self.reviews = ReviewStore(where)

    def warmup(self) -> None:
        assert self.scorer is not None
        import numpy as np

        ens = self.scorer.ensemble
        x = np.zeros((1, len(ens.names)), np.float32)
        seq = None
        if ens.sequence is not None:
            from pipelines.finance_risk.features import SEQ_FEATURES

            seq = np.zeros(
                (1, ens.feature_cfg.sequence_length + 1, len(SEQ_FEATURES) + 1), np.float32
            )
        ens.score(x, seq)  # state untouched

    def _route(self, call: RouteCall) -> list[Any]:
        """The alert queue's routes: reads are answered here (``Ready``: no queue), decisions
        go to the batch, under the lock."""
        assert self.reviews is not None and self.scorer is not None
        q, budget = call.query, self.scorer.ensemble.head.budget_per_day
        if call.route == "alerts":
            status = query_choice(q, "status", ("open", "decided", "all"))
            limit, offset = query_int(q, "limit", 100, 1, 1000), query_int(q, "offset", 0, 0, 10**9)
            rows = self.reviews.items("alert", status, limit=limit, offset=offset)
            counts = {k: self.reviews.count("alert", k) for k in ("open", "decided")}
            return [Ready({"alerts": rows, **counts, "budget_per_day": budget})]
        if call.route == "per_day":
            days = self.reviews.per_day("alert", query_int(q, "days", 30, 1, 366))
            rows = [{"alerts": d.pop("items"), **d} for d in days]
            return [Ready({"days": rows, "budget_per_day": budget})]
        tid = call.params["transaction_id"]
        item = self.reviews.item("alert", tid)
        if item is None:
            raise _no_alert(tid)
        if call.route == "alert":
            recent = self.reviews.items("tx", group=item["group"], order="time", limit=RECENT)
            return [Ready({"alert": item, "recent_transactions": recent})]
        label, note, reviewer = review_body(
            call.body, "label", (0, 1), 'send {"label": 1} for fraud or {"label": 0} for not fraud'
        )
        return [("decide", (tid, label, note, reviewer))]

    def _decide(self, tid: str, label: int, note: str | None, reviewer: str | None) -> Any:
        """Under the lock: record the decision, then make it a label (a decision is never lost
        once answered; a label is added once)."""
        assert self.reviews is not None and self.scorer is not None
        item = self.reviews.item("alert", tid)
        if item is None:
            return _no_alert(tid)
        verdict, before = VERDICTS[label], item["decision"]
        if before is not None:
            if before["verdict"] != verdict:
                return Conflict([{"loc": ["body", "label"], "msg": (
                    f"already decided {before['verdict']} and made a label; a decision is final")}])  # fmt: skip
            return {"transaction_id": tid, "label": label, **before, "duplicate": True}
        decision = self.reviews.decide("alert", tid, verdict, note, reviewer)
        self.scorer.add_label(tid, label, item["payload"].get("merchant_id"))
        return {"transaction_id": tid, "label": label, **decision, "duplicate": False}

    def decode(self, body: Any) -> list[Any]:
        assert self.scorer is not None
        if isinstance(body, RouteCall):
            return self._route(body)
        if isinstance(body, dict) and body.get("type") == "label":
            tid, label = body.get("transaction_id"), body.get("label")
            if not isinstance(tid, str) or not tid:
                raise _err(["body", "transaction_id"], "a label needs the transaction_id")
            if label not in (0, 1) or isinstance(label, bool):
                raise _err(["body", "label"], "label must be 0 or 1")
            return [("label", (tid, int(label), body.get("merchant_id")))]
        if isinstance(body, dict) and "events" in body:
            events = body["events"]
            if not isinstance(events, list) or not events:
                raise _err(["body", "events"], "events must be a non-empty list")
            if len(events) > self.max_events:
                raise _err(
                    ["body", "events"], f"{len(events)} events, over the limit of {self.max_events}"
                )
            loc_of = lambda i: ["body", "events", i]  # noqa: E731
        elif isinstance(body, dict):
            events = [body]
            loc_of = lambda i: ["body"]  # noqa: E731
        else:
            raise _err(["body"], "send one event object, {'events': [...]}, or a label")
        items = []
        for i, ev in enumerate(events):
            try:  # checked before any is applied
                parsed = parse_event(ev, self.scorer.ingest, self.scorer.extra)
            except DataError as exc:
                raise _err([*loc_of(i), exc.where or "event"], exc.what) from exc
            items.append((parsed, ev))
        return [("request", items)]

    def predict_batch(self, items: list[Any]) -> list[Any]:
        assert self.scorer is not None
        assert self.reviews is not None
        out: list[Any] = []
        with self._lock:
            for kind, payload in items:
                if kind == "decide":
                    out.append(self._decide(*payload))
                elif kind == "label":
                    tid, label, merchant = payload
                    self.scorer.add_label(tid, label, merchant)
                    out.append({"label": "recorded", "transaction_id": tid})
                else:
                    decisions = [self.scorer.score_event(ev) for _, ev in payload]
                    self._keep(payload, decisions)
                    out.append(decisions)
        return out

    def _keep(
        self, events: list[tuple[dict[str, Any], Any]], decisions: list[dict[str, Any]]
    ) -> None:
        """Every new transaction for the user's history, every new alert for the queue."""
        assert self.reviews is not None
        rows = []
        for (ev, _), d in zip(events, decisions, strict=True):
            if d["duplicate"]:
                continue
            rec, at, user = _record(ev, d), ev["timestamp"].timestamp(), str(ev["user_id"])
            rows.append(("tx", d["transaction_id"], rec, d["score"], user, at))
            if d["alert"]:
                alert = {**rec, "top_features": d["top_features"]}
                rows.append(("alert", d["transaction_id"], alert, d["score"], user, at))
        self.reviews.add_many(rows)

    def encode(self, outputs: list[Any]) -> dict[str, Any]:
        res = outputs[0]
        if isinstance(res, dict):
            return {"model": self.name, "version": self.version, **res}
        return {"model": self.name, "version": self.version, "decisions": res}
