"""tabml.monitoring: binning, PSI, the drift and realized windows, and the reference profile.

Every number is checked against an independent computation (a hand-written formula, numpy over
the raw values, or scikit-learn), on the real Adult training file when it is present.
"""

from __future__ import annotations

import itertools
import math
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, roc_auc_score

from tabml.config import ConfigError, MonitorConfig, load_params, parse_params
from tabml.monitoring import (
    CategoryBins,
    DriftWindow,
    FeatureBinner,
    NumericBins,
    RealizedWindow,
    ReferenceProfile,
    accuracy,
    bin_counts,
    build_profile,
    population_stability_index,
    roc_auc,
    verdict,
)

# Not tests.support: this module also runs under a bare `pytest` (no repository on sys.path).
REPO_ROOT = Path(__file__).resolve().parents[2]
PARAMS = load_params(REPO_ROOT / "params.yaml")
CONTRACT = PARAMS.dataset.contract()
CONFIG = PARAMS.monitor
ADULT = REPO_ROOT / "data" / "adult.data"
EPS = CONFIG.epsilon

Columns = dict[str, list[Any]]


def adult_columns() -> Columns:
    """The raw Adult training file as request-shaped columns, or synthetic ones like it."""
    if REAL_DATA:
        import pandas as pd

        from tabml.data import read_raw
        from tabml.validation import validate_raw

        frame = validate_raw(read_raw(ADULT, CONTRACT, skip_rows=0), CONTRACT, ADULT.name)
        return {
            spec.name: [None if pd.isna(v) else v for v in frame[spec.name].tolist()]
            for spec in CONTRACT.columns
        }
    rng = np.random.default_rng(0)
    rows = 5000
    columns: Columns = {}
    for spec in CONTRACT.columns:
        if spec.categories is not None:
            weights = rng.dirichlet(np.full(len(spec.categories), 0.3))
            values: list[Any] = list(rng.choice(spec.categories, size=rows, p=weights))
        else:
            low, high = int(spec.min or 0), int(spec.max or 100)
            drawn = rng.integers(low, min(high, low + 80), size=rows)
            # A point mass at the minimum, like capital_gain's zeros.
            values = np.where(rng.random(rows) < 0.6, low, drawn).tolist()
        if spec.nullable:
            values = [None if rng.random() < 0.05 else v for v in values]
        columns[spec.name] = values
    return columns


#: Whether COLUMNS are the real file: decided once, at import, because the file may appear later
#: in the session (a pipeline test obtains the data) while COLUMNS stay what they were.
REAL_DATA = ADULT.exists()
COLUMNS = adult_columns()
ROWS = len(COLUMNS["age"])


def synthetic_scores(columns: Columns, seed: int = 1) -> np.ndarray:
    """Scores that depend on the record (like a model's), with ties from rounding."""
    rng = np.random.default_rng(seed)
    logit = 0.4 * (np.asarray(columns["education_num"], float) - 10) + rng.normal(size=ROWS)
    return np.round(1 / (1 + np.exp(-logit)), 3)


SCORES = synthetic_scores(COLUMNS)
PROFILE = build_profile(COLUMNS, CONTRACT, SCORES, CONFIG)


def records(columns: Columns, rows: range) -> list[dict[str, Any]]:
    """Request records; missing nullable values are left out, as clients may do."""
    return [
        {name: values[i] for name, values in columns.items() if values[i] is not None} for i in rows
    ]


def scratch_psi(columns: Columns, scores: np.ndarray, rows: range) -> tuple[dict, float]:
    """PSI of `rows` recomputed from the raw values with numpy, without any window."""
    features = {
        name: population_stability_index(
            hist.fractions, bin_counts(hist.bins, [columns[name][i] for i in rows]), EPS
        )
        for name, hist in PROFILE.features.items()
    }
    score = population_stability_index(
        PROFILE.score.fractions, bin_counts(PROFILE.score.bins, scores[rows.start : rows.stop]), EPS
    )
    return features, score


# --- PSI ---------------------------------------------------------------------------------------


def test_psi_of_identical_distributions_is_zero() -> None:
    assert population_stability_index([0.2, 0.3, 0.5], [20, 30, 50], EPS) == pytest.approx(0)
    hist = PROFILE.features["age"]
    counts = np.round(np.asarray(hist.fractions) * PROFILE.rows)
    assert population_stability_index(hist.fractions, counts, EPS) == pytest.approx(0, abs=1e-12)


def test_psi_matches_a_hand_computation() -> None:
    # 20 records: actual fractions 0.6, 0.35, 0.05.
    expected = (0.6 - 0.4) * math.log(0.6 / 0.4) + (0.35 - 0.3) * math.log(0.35 / 0.3)
    expected += (0.05 - 0.3) * math.log(0.05 / 0.3)
    assert population_stability_index([0.4, 0.3, 0.3], [12, 7, 1], EPS) == pytest.approx(
        expected, rel=1e-12
    )


def test_psi_floors_empty_bins_at_epsilon() -> None:
    # Empty on the actual side: the expected 0.1 meets the floor instead of log(0).
    floored = (EPS - 0.1) * math.log(EPS / 0.1) + (1.0 - 0.9) * math.log(1.0 / 0.9)
    assert population_stability_index([0.1, 0.9], [0, 10], EPS) == pytest.approx(floored)
    assert population_stability_index([0.1, 0.9], [0, 10], EPS) >= CONFIG.psi_alert
    # Empty on both sides: no contribution at all.
    assert population_stability_index([0.5, 0.5, 0.0], [3, 3, 0], EPS) == pytest.approx(0)
    assert math.isnan(population_stability_index([0.5, 0.5], [0, 0], EPS))
    with pytest.raises(ValueError, match="3 expected fractions but 2"):
        population_stability_index([0.2, 0.3, 0.5], [1, 1], EPS)


def test_verdict_bands() -> None:
    assert [verdict(p, CONFIG) for p in (0.0, 0.0999, 0.1, 0.2499, 0.25, 3.0)] == [
        "stable",
        "stable",
        "moderate",
        "moderate",
        "significant",
        "significant",
    ]
    with pytest.raises(ValueError, match="NaN"):
        verdict(math.nan, CONFIG)


# --- binning -----------------------------------------------------------------------------------


def test_numeric_bins_are_right_closed_with_a_missing_bin() -> None:
    bins = NumericBins((0.0, 10.0))
    values = [-1, 0, 0.5, 10, 10.5, 1e9, None, math.nan]
    assert [bins.index(v) for v in values] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert bins.indices(values).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert bin_counts(bins, values).tolist() == [2, 2, 2, 2]


def test_numeric_point_mass_keeps_the_values_above_it_apart() -> None:
    values = [0] * 92 + list(range(1, 9))  # like capital_gain: 92 % zeros
    bins = NumericBins.fit(values, bins=10)
    assert bins.edges == (0.0,)
    assert bin_counts(bins, values).tolist() == [92, 8, 0]
    assert NumericBins.fit([None, math.nan], bins=10).edges == ()


def test_numeric_edges_are_observed_quantiles() -> None:
    values = np.random.default_rng(3).integers(0, 1000, size=2000)
    bins = NumericBins.fit(values, bins=4)
    assert bins.edges == tuple(float(np.sort(values)[k * 500 - 1]) for k in (1, 2, 3))


def test_categorical_levels_other_and_missing() -> None:
    values = ["a"] * 50 + ["b"] * 45 + ["c"] + [None] * 4
    bins = CategoryBins.fit(values, categories=["b", "a", "c", "d"], min_share=0.02)
    assert bins.levels == ("b", "a")  # contract order; "c" is too rare, "d" unseen
    probes = ["a", "b", "c", "d", "never-in-contract", None, math.nan]
    assert [bins.index(v) for v in probes] == [1, 0, 2, 2, 2, 3, 3]
    assert bin_counts(bins, values).tolist() == [45, 50, 1, 4]


def test_binner_maps_records_and_agrees_with_the_profile_counts() -> None:
    binner = FeatureBinner(PROFILE)
    assert binner.features == tuple(CONTRACT.feature_names)
    # One record at a time (the service's path) reproduces the profile's vectorised counts.
    per_record = np.array([binner.bin_record(r) for r in records(COLUMNS, range(ROWS))])
    for j, (name, hist) in enumerate(PROFILE.features.items()):
        counts = np.bincount(per_record[:, j], minlength=hist.bins.size)
        assert np.allclose(counts / ROWS, hist.fractions, rtol=0, atol=1e-15), name
    scores = [binner.bin_score(s) for s in SCORES]
    assert np.bincount(scores, minlength=PROFILE.score.bins.size).tolist() == (
        bin_counts(PROFILE.score.bins, SCORES).tolist()
    )


def test_binner_bins_many_records_as_it_bins_one() -> None:
    binner = FeatureBinner(PROFILE)
    stream = records(COLUMNS, range(2000))
    stream[0] = {**stream[0], "native_country": "Atlantis", "workclass": math.nan}
    rows = binner.bin_records(stream, SCORES[:2000])
    one_by_one = [
        [*binner.bin_record(r), binner.bin_score(s)]
        for r, s in zip(stream, SCORES[:2000], strict=True)
    ]
    assert rows.tolist() == one_by_one


def test_binner_bins_edge_values_and_absent_columns_as_it_bins_one() -> None:
    """The vectorised path (numpy per column) on what it could get wrong: values exactly at,
    just above and beyond the edges, missing numbers, unknown levels and NaN categories, and
    records without some columns (the value-by-value fallback)."""
    binner = FeatureBinner(PROFILE)
    template = records(COLUMNS, range(1))[0]
    numeric = {n: h.bins for n, h in PROFILE.features.items() if isinstance(h.bins, NumericBins)}
    stream = []
    for name, bins in numeric.items():
        for value in (*bins.edges, *(e + 0.5 for e in bins.edges), -1e12, math.inf, None):
            stream.append({**template, name: value})
    stream.append({**template, "workclass": math.nan, "native_country": "Atlantis"})
    scores = np.linspace(0, 1, len(stream))
    expected = [
        [*binner.bin_record(r), binner.bin_score(s)] for r, s in zip(stream, scores, strict=True)
    ]
    assert binner.bin_records(stream, scores).tolist() == expected
    absent = [{k: v for k, v in r.items() if k not in ("workclass", "age")} for r in stream]
    expected = [
        [*binner.bin_record(r), binner.bin_score(s)] for r, s in zip(absent, scores, strict=True)
    ]
    assert binner.bin_records(absent, scores).tolist() == expected


def test_category_indices_agree_with_index_on_every_kind_of_value() -> None:
    bins = CategoryBins(("a", "b"))
    values = ["a", "b", "z", None, math.nan, np.float64("nan"), "A"]
    assert bins.indices(values).tolist() == [bins.index(v) for v in values] == [0, 1, 2, 3, 3, 3, 2]


def test_binner_treats_absent_nullable_columns_and_unknown_levels() -> None:
    binner = FeatureBinner(PROFILE)
    record = records(COLUMNS, range(1))[0]
    record.pop("workclass", None)
    record["native_country"] = "Atlantis"
    bins = dict(zip(binner.features, binner.bin_record(record), strict=True))
    assert bins["workclass"] == PROFILE.features["workclass"].bins.missing
    country = PROFILE.features["native_country"].bins
    assert isinstance(country, CategoryBins) and bins["native_country"] == country.other


# --- drift window ------------------------------------------------------------------------------


def test_drift_window_slides_over_the_last_size_records() -> None:
    size = 300
    window = DriftWindow(PROFILE, size, EPS)
    assert window.records == 0 and math.isnan(window.prediction_psi())
    stream = records(COLUMNS, range(ROWS))
    added = 0
    for batch in (1, 7, 120, 400, 13, 1, 299, 64):  # one batch larger than the window
        window.add(stream[added : added + batch], list(SCORES[added : added + batch]))
        added += batch
        assert window.records == min(size, added)
        features, score = scratch_psi(COLUMNS, SCORES, range(max(0, added - size), added))
        assert window.feature_psi() == features
        assert window.prediction_psi() == score


def test_drift_window_sees_a_shift() -> None:
    window = DriftWindow(PROFILE, 1000, EPS)
    stream = records(COLUMNS, range(1000))
    window.add(stream, list(SCORES[:1000]))
    assert verdict(window.feature_psi()["age"], CONFIG) == "stable"
    older = [{**r, "age": 90} for r in stream]
    window.add(older, [0.99] * len(older))
    assert verdict(window.feature_psi()["age"], CONFIG) == "significant"
    assert verdict(window.prediction_psi(), CONFIG) == "significant"
    assert verdict(window.feature_psi()["sex"], CONFIG) == "stable"


def test_drift_windows_combine_by_adding_their_counts() -> None:
    """Two workers' windows summed are the window of all their records (the service's
    multi-worker /metrics)."""
    stream = records(COLUMNS, range(1500))
    first, second = DriftWindow(PROFILE, 1000, EPS), DriftWindow(PROFILE, 1000, EPS)
    first.add(stream[:900], list(SCORES[:900]))
    second.add(stream[900:], list(SCORES[900:1500]))
    combined = first.counts() + second.counts()
    features, score = scratch_psi(COLUMNS, SCORES, range(1500))
    assert first.feature_psi(combined) == pytest.approx(features, abs=1e-12)
    assert second.prediction_psi(combined) == pytest.approx(score, abs=1e-12)
    assert first.feature_psi() == pytest.approx(scratch_psi(COLUMNS, SCORES, range(900))[0])


def test_drift_window_rejects_mismatched_batches() -> None:
    with pytest.raises(ValueError, match="2 records but 1 scores"):
        DriftWindow(PROFILE, 10, EPS).add(records(COLUMNS, range(2)), [0.5])


def test_drift_window_memory_is_one_small_integer_per_record_and_feature() -> None:
    window = DriftWindow(PROFILE, CONFIG.window_size, EPS)
    total_bins = sum(h.bins.size for h in [*PROFILE.features.values(), PROFILE.score])
    index_bytes = 1 if total_bins <= 256 else 2  # the smallest integer holding every bin index
    columns = len(PROFILE.features) + 1
    assert window.memory_bytes() == CONFIG.window_size * columns * index_bytes + total_bins * 8
    assert window.memory_bytes() < 200_000


def run_threads(target: Any, count: int) -> None:
    threads = [threading.Thread(target=target, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def test_drift_window_is_consistent_under_concurrent_adds() -> None:
    threads, per_thread = 4, 400
    stream = records(COLUMNS, range(threads * per_thread))
    big = DriftWindow(PROFILE, threads * per_thread, EPS)

    def add_own_slice(i: int) -> None:
        for start in range(i * per_thread, (i + 1) * per_thread, 3):
            stop = min(start + 3, (i + 1) * per_thread)
            big.add(stream[start:stop], list(SCORES[start:stop]))

    run_threads(add_own_slice, threads)
    assert big.records == threads * per_thread
    features, score = scratch_psi(COLUMNS, SCORES, range(threads * per_thread))
    assert big.feature_psi() == pytest.approx(features, abs=1e-12)
    assert big.prediction_psi() == pytest.approx(score, abs=1e-12)

    # A small window evicting concurrently. It starts full of record 2; every add is the pair
    # (record 0, record 1), so whatever the interleaving it ends as 50 copies of each.
    small = DriftWindow(PROFILE, 100, EPS)
    small.add([stream[2]] * 100, [SCORES[2]] * 100)
    run_threads(lambda i: [small.add(stream[:2], list(SCORES[:2])) for _ in range(300)], threads)
    pairs = {name: values[:2] * 50 for name, values in COLUMNS.items()}
    features, score = scratch_psi(pairs, np.tile(SCORES[:2], 50), range(100))
    assert small.records == 100
    assert small.feature_psi() == pytest.approx(features, abs=1e-12)
    assert small.prediction_psi() == pytest.approx(score, abs=1e-12)


# --- realized metrics --------------------------------------------------------------------------


def labelled(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=n)
    scores = np.clip(np.round(0.3 * labels + rng.random(n) * 0.7, 2), 0, 1)  # many ties
    return scores, labels


@pytest.mark.parametrize("n", [2, 17, 1000, 20000])
def test_realized_metrics_equal_scikit_learn(n: int) -> None:
    scores, labels = labelled(n, seed=n)
    labels[:2] = [0, 1]
    threshold = PARAMS.decision.threshold
    assert accuracy(scores, labels, threshold) == pytest.approx(
        accuracy_score(labels, (scores >= threshold).astype(int)), abs=1e-15
    )
    assert roc_auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_realized_metrics_edge_cases() -> None:
    assert roc_auc([0.3, 0.3, 0.3], [0, 1, 1]) == 0.5  # all tied
    assert roc_auc([0.1, 0.9], [0, 1]) == 1.0
    assert roc_auc([0.2, 0.8], [1, 1]) is None  # one class: undefined
    assert accuracy([], [], 0.5) is None
    assert accuracy([0.5, 0.49], [1, 0], 0.5) == 1.0  # at the threshold is positive, as served
    with pytest.raises(ValueError, match="0 or 1"):
        roc_auc([0.1, 0.2], [0, 2])
    with pytest.raises(ValueError, match="equal-length"):
        accuracy([0.1], [0, 1], 0.5)


def test_realized_window_keeps_the_last_size_labels() -> None:
    scores, labels = labelled(2500, seed=7)
    labels[:2] = [0, 1]  # both classes from the first batch on
    window = RealizedWindow(1000, PARAMS.decision.threshold)
    assert window.count == 0 and window.accuracy() is None and window.roc_auc() is None
    added = 0
    for batch in (5, 600, 1200, 1, 694):
        window.add(list(scores[added : added + batch]), list(labels[added : added + batch]))
        added += batch
        last = slice(max(0, added - 1000), added)
        assert window.count == min(1000, added)
        assert window.accuracy() == accuracy(scores[last], labels[last], window.threshold)
        assert window.roc_auc() == pytest.approx(
            roc_auc_score(labels[last], scores[last]), abs=1e-12
        )


def test_realized_windows_combine_by_concatenating_their_pairs() -> None:
    scores, labels = labelled(700, seed=5)
    first, second = RealizedWindow(500, 0.5), RealizedWindow(500, 0.5)
    first.add(list(scores[:400]), list(labels[:400]))
    second.add(list(scores[400:]), list(labels[400:]))
    (s1, y1), (s2, y2) = first.pairs(), second.pairs()
    assert sorted(np.concatenate([s1, s2])) == sorted(scores)
    assert roc_auc(np.concatenate([s1, s2]), np.concatenate([y1, y2])) == pytest.approx(
        roc_auc_score(labels, scores), abs=1e-12
    )


def test_realized_window_is_consistent_under_concurrent_adds() -> None:
    scores, labels = labelled(2000, seed=11)
    window = RealizedWindow(2000, 0.5)
    run_threads(
        lambda i: [
            window.add(scores[j : j + 5].tolist(), labels[j : j + 5].tolist())
            for j in range(i * 500, (i + 1) * 500, 5)
        ],
        4,
    )
    assert window.count == 2000
    assert window.roc_auc() == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


# --- profile -----------------------------------------------------------------------------------


def independent_fractions(values: Sequence[Any], hist_bins: Any) -> list[float]:
    """Bin fractions from the raw values by plain comparisons (no bisect, no searchsorted)."""
    n = len(values)
    if isinstance(hist_bins, NumericBins):
        present = np.array([v for v in values if v is not None], dtype=float)
        bounds = [-math.inf, *hist_bins.edges, math.inf]
        inner = [np.sum((present > lo) & (present <= hi)) for lo, hi in itertools.pairwise(bounds)]
        return [c / n for c in inner] + [(n - present.size) / n]
    levels = list(hist_bins.levels)
    missing = sum(v is None for v in values)
    own = [sum(v == level for v in values) for level in levels]
    return [c / n for c in own] + [(n - missing - sum(own)) / n, missing / n]


def test_profile_of_adult_shaped_data() -> None:
    assert PROFILE.rows == ROWS
    assert list(PROFILE.features) == CONTRACT.feature_names
    for spec in CONTRACT.columns:
        hist = PROFILE.features[spec.name]
        values = COLUMNS[spec.name]
        assert sum(hist.fractions) == pytest.approx(1)
        assert hist.fractions == pytest.approx(independent_fractions(values, hist.bins), abs=1e-15)
        if isinstance(hist.bins, NumericBins):
            assert len(hist.bins.edges) <= CONFIG.numeric_bins - 1
            assert list(hist.bins.edges) == sorted(set(hist.bins.edges))
        else:
            present = [v for v in values if v is not None]
            frequent = [
                c
                for c in spec.categories or []
                if present.count(c) and present.count(c) >= CONFIG.min_category_share * ROWS
            ]
            assert list(hist.bins.levels) == frequent
    score = PROFILE.score
    assert len(score.bins.edges) == CONFIG.score_bins - 1
    assert max(score.fractions[:-1]) < 2 / CONFIG.score_bins  # quantile bins: roughly equal
    if REAL_DATA:
        zeros = sum(v == 0 for v in COLUMNS["capital_gain"]) / ROWS
        assert PROFILE.features["capital_gain"].bins == NumericBins((0.0,))
        assert PROFILE.features["capital_gain"].fractions[0] == pytest.approx(zeros)
        assert PROFILE.features["workclass"].fractions[-1] > 0.05  # '?' in about 5.6 %


def test_profile_json_round_trip_is_byte_identical(tmp_path: Path) -> None:
    path = tmp_path / "profile.json"
    PROFILE.save(path)
    loaded = ReferenceProfile.load(path)
    assert loaded == PROFILE
    assert loaded.monitor == CONFIG  # the settings the service applies travel with the bins
    again = tmp_path / "again.json"
    build_profile(COLUMNS, CONTRACT, SCORES, CONFIG).save(again)
    assert path.read_bytes() == again.read_bytes()
    loaded.save(again)
    assert path.read_bytes() == again.read_bytes()
    with pytest.raises(ValueError, match="format"):
        ReferenceProfile.from_json('{"format": 99}')
    bare = ReferenceProfile(PROFILE.rows, PROFILE.features, PROFILE.score)
    assert ReferenceProfile.from_json(bare.to_json()).monitor is None


def test_profile_excludes_features_and_checks_its_inputs() -> None:
    config = CONFIG.model_copy(update={"exclude_features": ["fnlwgt"]})
    profile = build_profile(COLUMNS, CONTRACT, SCORES, config)
    assert "fnlwgt" not in profile.features and len(profile.features) == len(CONTRACT.columns) - 1
    bad = CONFIG.model_copy(update={"exclude_features": ["nope"]})
    with pytest.raises(ValueError, match="unknown column"):
        build_profile(COLUMNS, CONTRACT, SCORES, bad)
    with pytest.raises(ValueError, match="rows, scores"):
        build_profile(COLUMNS, CONTRACT, SCORES[:-1], CONFIG)


# --- configuration and imports -----------------------------------------------------------------


def test_monitor_config_rejects_inconsistent_thresholds() -> None:
    raw = CONFIG.model_dump()
    with pytest.raises(ValueError, match="psi_warn must be below psi_alert"):
        MonitorConfig.model_validate({**raw, "psi_warn": 0.3})
    with pytest.raises(ValueError, match="min_window_records exceeds"):
        MonitorConfig.model_validate({**raw, "min_window_records": raw["window_size"] + 1})
    params = PARAMS.model_dump()
    params["monitor"]["exclude_features"] = ["agee"]
    with pytest.raises(ConfigError, match="agee"):
        parse_params(params)


def test_monitoring_imports_no_pandas_prometheus_or_fastapi() -> None:
    code = (
        "import sys, tabml.monitoring; "
        "print(sorted({'pandas', 'prometheus_client', 'fastapi'} & set(sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO_ROOT
    )
    assert result.stdout.strip() == "[]"
