"""The :mod:`core.serve` predictor of a finance_risk model: :class:`RiskPredictor`.

A request is JSON: one transaction event (the canonical fields, ``data.parse_event``), or
``{"events": [...]}`` with up to ``max_events`` of them, or a label that became known,
``{"type": "label", "transaction_id": ..., "label": 0|1}`` (optionally ``merchant_id``).
The answer holds one decision per event (score, alert, segment, top features, ``duplicate``)
in the order sent. Events are applied to the per-user state in the order they arrive, one
at a time, whatever the server batches. A malformed event is a 422 naming its position and
field; the other events of that request are not applied (a request is all or nothing).
Not here: the scoring itself (``predict.py``), HTTP, batching and metrics (``core.serve``).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from core.errors import DataError
from pipelines.finance_risk.data import parse_event
from pipelines.finance_risk.predict import FraudScorer


def _err(loc: list[Any], msg: str) -> Exception:
    from core.serve.predictor import RequestError

    return RequestError([{"loc": loc, "msg": msg}])


class RiskPredictor:
    """Serves a :class:`FraudScorer`; state persists in ``state_dir`` when given."""

    def __init__(
        self,
        model_dir: str | os.PathLike[str],
        name: str | None = None,
        version: str = "1",
        state_dir: str | os.PathLike[str] | None = None,
        max_events: int = 1000,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.name = name or self.model_dir.name
        self.version = str(version)
        self.state_dir = state_dir
        self.max_events = max_events
        self.scorer: FraudScorer | None = None
        self._lock = threading.Lock()  # one state: events are applied one at a time

    def load(self) -> None:
        self.scorer = FraudScorer(self.model_dir, self.state_dir)

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

    def decode(self, body: Any) -> list[Any]:
        assert self.scorer is not None
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
            try:
                parse_event(
                    ev, self.scorer.ingest, self.scorer.extra
                )  # checked before any is applied
            except DataError as exc:
                raise _err([*loc_of(i), exc.where or "event"], exc.what) from exc
            items.append(("tx", ev))
        return [("request", items)]

    def predict_batch(self, items: list[Any]) -> list[Any]:
        assert self.scorer is not None
        out = []
        with self._lock:
            for kind, payload in items:
                if kind == "label":
                    tid, label, merchant = payload
                    self.scorer.add_label(tid, label, merchant)
                    out.append({"label": "recorded", "transaction_id": tid})
                else:
                    out.append([self.scorer.score_event(ev) for _, ev in payload])
        return out

    def encode(self, outputs: list[Any]) -> dict[str, Any]:
        res = outputs[0]
        if isinstance(res, dict):
            return {"model": self.name, "version": self.version, **res}
        return {"model": self.name, "version": self.version, "decisions": res}
