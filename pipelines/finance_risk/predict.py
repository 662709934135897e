"""The fraud scorer a customer imports: :class:`FraudScorer` (one model directory in).

Online: :meth:`FraudScorer.score_event` takes one transaction (``data.parse_event`` rules),
computes its features from the per-user state (``features.OnlineFeatures``), scores it with
the ONNX ensemble (``deploy.Ensemble``) and returns the calibrated score, the decision at its
segment's threshold and the top contributing features. :meth:`FraudScorer.add_label` makes a
label known (merchant risk uses it from then on).

State survives restarts. With a ``state_dir``, every applied event is appended to
``events.jsonl`` (one line, written to the OS before the answer returns) with its sequence
number and decision; every ``snapshot_every`` events the state goes to ``state.json``
atomically and the log restarts. Opening the scorer again restores the snapshot and replays
the log lines after it (a torn last line, from a kill mid-write, was never answered and is
dropped). A transaction id already scored is answered from memory, not counted again, so a
client that resends after a crash cannot double-count. A power loss can lose what the OS
had not written to disk (``fsync_every`` bounds it).

Batch: :meth:`FraudScorer.score_file` streams a file's events, in time order with their
labels at their label times, through :meth:`score_event` (the same code path as online);
:meth:`FraudScorer.score_frame` scores a table with the batch features (the fast path the
evaluation uses; equal to the online path). Identifiers are never logged raw: logs carry a
salted BLAKE2 hash (:func:`hash_id`). Not here: HTTP (``serve.py``).
"""

from __future__ import annotations

import datetime as dt
import gc
import hashlib
import json
import logging
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from core.atomic import atomic_write_text
from core.errors import DataError
from pipelines.finance_risk.config import EVENT_FIELDS, IngestConfig
from pipelines.finance_risk.data import parse_event, read_transactions
from pipelines.finance_risk.deploy import Ensemble, model_features, score_frame
from pipelines.finance_risk.features import OnlineFeatures, replay_order

log = logging.getLogger(__name__)
_SALT = os.environ.get("DV_ID_SALT", "deepverticals").encode()


def hash_id(value: Any) -> str:
    """A 12-hex-digit salted BLAKE2b of an identifier, for logs (``DV_ID_SALT`` sets the salt)."""
    return hashlib.blake2b(str(value).encode(), key=_SALT[:64], digest_size=6).hexdigest()


def _us(t: dt.datetime) -> int:
    d = t - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return (d.days * 86400 + d.seconds) * 1_000_000 + d.microseconds


class FraudScorer:
    """Scores transactions with one model directory; optional durable state in ``state_dir``."""

    def __init__(
        self,
        model_dir: str | os.PathLike[str],
        state_dir: str | os.PathLike[str] | None = None,
        *,
        threads: int | None = 1,
        snapshot_every: int = 10_000,
        fsync_every: int = 100,
        top_features: int = 5,
        remember: int = 200_000,
    ) -> None:
        self.ensemble = Ensemble(model_dir, threads)
        self.names = self.ensemble.names
        self.extra = tuple(self.ensemble.config.get("extra_features", ()))
        ing = self.ensemble.config.get("ingest", {})
        self.ingest = IngestConfig(
            preset=ing.get("preset"),
            column_map=ing.get("column_map") or {},
            timezone=ing.get("timezone", "UTC"),
        )
        self.top = top_features
        self.snapshot_every = snapshot_every
        self.fsync_every = fsync_every
        self.remember = remember
        self.seen: OrderedDict[str, dict[str, Any]] = OrderedDict()  # txn id -> decision
        self.seq = 0  # events applied (transactions and labels)
        self.features = OnlineFeatures(self.ensemble.feature_cfg, self.extra)
        self.state_dir = Path(state_dir) if state_dir else None
        self._log = None
        self._since_sync = 0
        if self.state_dir:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            self._recover()
            self._log = (self.state_dir / "events.jsonl").open("a", encoding="utf-8")
        # the restored state is millions of long-lived objects: keep the cyclic garbage
        # collector from walking them on every collection (latency spikes)
        gc.freeze()

    # ---------------------------------------------------------------- persistence
    def _recover(self) -> None:
        assert self.state_dir is not None
        snap = self.state_dir / "state.json"
        if snap.is_file():
            try:
                s = json.loads(snap.read_text())
            except ValueError as exc:
                raise DataError(
                    f"the scorer state is unreadable ({exc})",
                    where=str(snap),
                    fix="restore it from a backup, or delete the state folder to start cold",
                ) from exc
            self.features = OnlineFeatures.from_state(
                s["features"], self.ensemble.feature_cfg, str(snap)
            )
            self.seq = int(s["seq"])
            self.seen = OrderedDict(s["seen"])
        path = self.state_dir / "events.jsonl"
        replayed = 0
        if path.is_file():
            lines = path.read_text(encoding="utf-8").split("\n")
            for i, line in enumerate(lines):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except ValueError:
                    if i >= len(lines) - 2:  # a torn last line: never answered
                        log.warning("dropping a torn last log line in %s", path)
                        continue
                    raise DataError(
                        f"the event log is corrupt at line {i + 1}",
                        where=str(path),
                        fix="restore it",
                    ) from None
                if rec["seq"] <= self.seq:
                    continue  # already in the snapshot
                self._apply(rec)
                replayed += 1
            # rewrite without a torn tail so appends start on a clean line
            atomic_write_text(path, "".join(ln + "\n" for ln in lines if _is_json(ln)))
        if replayed:
            log.info("restored scorer state: %d events replayed after the snapshot", replayed)

    def _apply(self, rec: dict[str, Any]) -> None:
        ev = dict(rec["event"])
        ev["timestamp"] = int(ev["timestamp"])
        if rec["kind"] == "tx":
            self.features.apply(ev, rec.get("features"))
            self._remember(ev["transaction_id"], rec["decision"])
        else:
            self.features.add_label(ev.get("merchant_id"), int(ev["label"]))
        self.seq = int(rec["seq"])

    def _remember(self, tid: str, decision: dict[str, Any]) -> None:
        self.seen[tid] = decision
        while len(self.seen) > self.remember:
            self.seen.popitem(last=False)

    def _write(self, rec: dict[str, Any]) -> None:
        if self._log is None:
            return
        self._log.write(json.dumps(rec, separators=(",", ":")) + "\n")
        self._log.flush()  # in the OS before the answer: a killed process loses nothing
        self._since_sync += 1
        if self._since_sync >= self.fsync_every:
            os.fsync(self._log.fileno())
            self._since_sync = 0

    def _applied(self) -> None:
        """After an event is in the state: snapshot when it is time (never between the log
        line and the state change, or the snapshot would miss the event the log drops)."""
        if self._log is not None and self.seq % self.snapshot_every == 0:
            self.snapshot()

    def snapshot(self) -> Path | None:
        """Write the state atomically and restart the log (no-op without a state_dir)."""
        if not self.state_dir:
            return None
        path = self.state_dir / "state.json"
        state = {
            "seq": self.seq,
            "features": self.features.state(),
            "seen": list(self.seen.items()),
        }
        atomic_write_text(path, json.dumps(state, separators=(",", ":")))
        if self._log is not None:
            self._log.close()
        atomic_write_text(self.state_dir / "events.jsonl", "")  # everything is in the snapshot
        self._log = (self.state_dir / "events.jsonl").open("a", encoding="utf-8")
        return path

    def close(self) -> None:
        if self._log is not None:
            self._log.flush()
            os.fsync(self._log.fileno())
            self._log.close()
            self._log = None

    # ---------------------------------------------------------------- scoring
    def score_event(self, event: dict[str, Any]) -> dict[str, Any]:
        """Score one transaction; it then joins the user's state. A transaction id scored
        before returns its first decision with ``duplicate: true``."""
        ev = parse_event(event, self.ingest, self.extra)
        tid = ev["transaction_id"]
        if tid in self.seen:
            return {**self.seen[tid], "duplicate": True}
        feats = self.features.features(ev)
        x = np.asarray([feats], np.float32)
        seq = self.features.sequence(ev, feats) if self.ensemble.sequence is not None else None
        seg = ev.get(self.ensemble.segment_by) if self.ensemble.segment_by else None
        segs = np.array(["" if seg is None else seg], object) if self.ensemble.segment_by else None
        prob, stack, alert = self.ensemble.score(x, seq, segs)
        decision = {
            "transaction_id": tid,
            "score": round(float(prob[0]), 6),
            "stack": float(stack[0]),
            "alert": bool(alert[0]),
            "segment": seg,
            "merchant_id": ev.get("merchant_id"),
            "top_features": [
                {"feature": n, "contribution": c}
                for n, c in self.ensemble.contributions(x[0], self.top)
            ],
            "duplicate": False,
        }
        self.seq += 1
        ev_json = {**ev, "timestamp": _us(ev["timestamp"])}
        self._write(
            {
                "seq": self.seq,
                "kind": "tx",
                "event": ev_json,
                "features": feats,
                "decision": decision,
            }
        )
        self.features.apply(ev, feats, seq[0, -1, :-1] if seq is not None else None)
        self._remember(tid, decision)
        self._applied()
        if decision["alert"]:
            log.info(
                "alert: transaction %s of user %s, score %.3f",
                hash_id(tid),
                hash_id(ev["user_id"]),
                prob[0],
            )
        return decision

    def add_label(self, transaction_id: str, label: int, merchant_id: str | None = None) -> None:
        """A label became known now. The merchant comes from the scored transaction, or from
        ``merchant_id`` for one this scorer has not seen."""
        if label not in (0, 1):
            raise DataError(f"label {label!r} is not 0 or 1", where="label")
        known = self.seen.get(str(transaction_id))
        m = merchant_id if merchant_id is not None else (known or {}).get("merchant_id")
        self.seq += 1
        self._write(
            {
                "seq": self.seq,
                "kind": "label",
                "event": {"merchant_id": m, "label": label, "timestamp": 0},
            }
        )
        self.features.add_label(m, label)
        self._applied()

    def score_file(
        self,
        path: str | os.PathLike[str],
        out: str | os.PathLike[str],
        ingest: IngestConfig | None = None,
        progress: bool = True,
    ) -> dict[str, Any]:
        """Score every transaction of a file through :meth:`score_event` (labels applied at
        their label times); writes ``out`` (CSV or Parquet by suffix). Returns counts."""
        tx = read_transactions(path, ingest or self.ingest)
        events = replay_order(tx.frame)
        rows = []
        from rich.progress import Progress

        with Progress(disable=not progress, transient=True) as bar:
            task = bar.add_task("scoring", total=len(events))
            for i, (kind, r) in enumerate(events):
                if kind == "tx":
                    ev = {k: r.get(k) for k in EVENT_FIELDS}
                    ev.update({x[2:]: r[x] for x in self.extra})
                    d = self.score_event(ev)
                    rows.append(
                        {
                            "transaction_id": d["transaction_id"],
                            "score": d["score"],
                            "alert": d["alert"],
                            "segment": d["segment"],
                            "duplicate": d["duplicate"],
                        }
                    )
                else:
                    self.add_label(r["transaction_id"], int(r["label"]), r.get("merchant_id"))
                if i % 2000 == 0:
                    bar.update(task, completed=i)
        result = pl.DataFrame(
            rows,
            schema={
                "transaction_id": pl.String,
                "score": pl.Float64,
                "alert": pl.Boolean,
                "segment": pl.String,
                "duplicate": pl.Boolean,
            },
        )
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        from core.atomic import atomic_file

        with atomic_file(out) as tmp:
            if out.suffix.lower() in (".parquet", ".pq"):
                result.write_parquet(tmp)
            else:
                result.write_csv(tmp)
        return {
            "scored": result.height,
            "alerts": int(result["alert"].sum()),
            "rejected": tx.rejected,
            "out": str(out),
        }

    def score_frame(self, frame: pl.DataFrame) -> pl.DataFrame:
        """Batch scores of a canonical transactions table (features computed in batch)."""
        return score_frame(self.ensemble, model_features(self.ensemble, frame))


def _is_json(line: str) -> bool:
    if not line.strip():
        return False
    try:
        json.loads(line)
    except ValueError:
        return False
    return True
