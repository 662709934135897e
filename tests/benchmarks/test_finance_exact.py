"""The finance benchmark's exact recheck: it must find the side that is off, whichever it is."""

from __future__ import annotations

import numpy as np
import polars as pl

from benchmarks.finance_risk import _exact_window_stat, exact_recheck
from pipelines.finance_risk.config import FeatureConfig, SynthConfig
from pipelines.finance_risk.features import compute_features
from pipelines.finance_risk.synth import generate
from tests.pipelines.finance_risk.pandas_reference import reference_features


def test_exact_window_stats_are_rational_arithmetic():
    # 1e8 + small values: a naive sum of squares loses every digit of this variance
    xs = [1e8 + 0.1, 1e8 + 0.2, 1e8 + 0.3]
    assert abs(_exact_window_stat(xs, "std") - 0.1) < 1e-8
    assert _exact_window_stat([2.0], "std") != _exact_window_stat([2.0], "std")  # NaN: n < 2
    assert _exact_window_stat([], "sum") == 0.0


def test_the_recheck_blames_the_side_that_was_perturbed():
    cfg = FeatureConfig()
    frame = generate(SynthConfig(n_users=40, days=20, seed=3))
    ours = compute_features(frame, cfg)
    pdf = frame.to_pandas()
    ref = reference_features(pdf, cfg)
    clean = exact_recheck(ours, ref, pdf, cfg, k=5)
    assert clean["ours_max_abs_error"] < 1e-6 and clean["pandas_max_abs_error"] < 1e-6
    # spoil one of our values and one of pandas', in different rows and features
    std = ours["std_24h"].to_numpy().copy()
    i = int(np.flatnonzero(~np.isnan(std))[7])
    std[i] += 1e-3
    spoiled = ours.with_columns(pl.Series("std_24h", std))
    ref2 = ref.copy()
    j = int(np.flatnonzero(~np.isnan(ref2["mean_7d"].to_numpy()))[11])
    ref2.loc[j, "mean_7d"] += 2e-3
    got = exact_recheck(spoiled, ref2, pdf, cfg, k=5)
    assert abs(got["per_feature"]["std_24h"]["ours"] - 1e-3) < 1e-6
    assert got["per_feature"]["std_24h"]["pandas"] < 1e-6
    assert abs(got["per_feature"]["mean_7d"]["pandas"] - 2e-3) < 1e-6
    assert got["per_feature"]["mean_7d"]["ours"] < 1e-6
