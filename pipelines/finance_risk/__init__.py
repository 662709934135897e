"""finance_risk: fraud scoring on transaction streams (events -> point-in-time features -> risk).

Reading CSV/Parquet in the canonical layout, a user's own layout (a column mapping) or a
public one (presets), with per-row validation and a quarantine (``data``); a seeded stream
with fraud scenarios and delayed labels (``synth``); point-in-time features in batch with
polars and online event by event (``features``).
"""

from pipelines.finance_risk.config import FeatureConfig, IngestConfig, SynthConfig, parse_mapping
from pipelines.finance_risk.data import PRESETS, Transactions, read_transactions
from pipelines.finance_risk.features import (
    OnlineFeatures,
    compute_features,
    feature_names,
    replay_order,
)
from pipelines.finance_risk.synth import generate, write_dataset

__all__ = [
    "PRESETS",
    "FeatureConfig",
    "IngestConfig",
    "OnlineFeatures",
    "SynthConfig",
    "Transactions",
    "compute_features",
    "feature_names",
    "generate",
    "parse_mapping",
    "read_transactions",
    "replay_order",
    "write_dataset",
]
