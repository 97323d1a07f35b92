"""Slice metrics, fairness gaps, the baseline and the raw/encoded row alignment, each checked
against an independent computation (scikit-learn or plain Python on the masked rows)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import yaml
from sklearn import metrics
from tests.support.project import REPO_ROOT

from tabml import fairness, slices
from tabml.baseline import baseline_proba, fit_baseline
from tabml.config import BaselineConfig, ConfigError, SliceConfig, parse_params
from tabml.features import TARGET
from tabml.model_quality import AlignmentError, check_aligned


def _toy(rows: int = 4000, seed: int = 7) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    age = rng.integers(17, 91, rows)
    sex = rng.choice(np.array(["Female", "Male"], dtype=object), rows, p=[0.35, 0.65])
    race = rng.choice(np.array(["A", "B", "C"], dtype=object), rows, p=[0.8, 0.15, 0.05])
    logit = (age - 40) / 12 + (sex == "Male") * 0.8 - (race == "C") * 0.5 + rng.normal(0, 1, rows)
    y = (logit > 0.6).astype(int)
    proba = 1 / (1 + np.exp(-(logit + rng.normal(0, 0.8, rows))))
    return {"age": age, "sex": sex, "race": race, "y": y, "proba": proba}


def test_band_labels_read_as_ranges() -> None:
    assert slices.band_labels([25, 35, 65]) == ["<25", "25-34", "35-64", "65+"]
    assert slices.band_labels([2.5, 3.5]) == ["<2.5", "[2.5, 3.5)", ">=3.5"]


def test_slice_masks_cover_every_row_once_bands_in_order_missing_last() -> None:
    age = np.array([17, 24, 25, 34, 35, 90, None], dtype=object)
    masks = slices.slice_masks(SliceConfig(name="age_band", column="age", edges=[25, 35]), age)
    assert list(masks) == ["<25", "25-34", "35+", slices.MISSING]
    assert [np.flatnonzero(m).tolist() for m in masks.values()] == [[0, 1], [2, 3], [4, 5], [6]]
    colour = np.array(["red", "blue", None, "red"], dtype=object)
    masks = slices.slice_masks(SliceConfig(name="colour", column="colour"), colour)
    assert list(masks) == ["blue", "red", slices.MISSING]
    assert sum(m.sum() for m in masks.values()) == len(colour)


def test_calibration_error_equals_a_loop_over_bins() -> None:
    toy = _toy()
    y, p = toy["y"], toy["proba"]
    expected = 0.0
    for i in range(10):
        upper = p <= (i + 1) / 10 if i == 9 else p < (i + 1) / 10
        in_bin = (p >= i / 10) & upper
        if in_bin.any():
            expected += in_bin.sum() / len(p) * abs(p[in_bin].mean() - y[in_bin].mean())
    assert slices.calibration_error(y, p, 10) == pytest.approx(expected, abs=1e-12)
    assert slices.calibration_error(np.array([0, 1]), np.array([0.0, 1.0]), 10) == 0.0


def test_slice_metrics_equal_scikit_learn_on_the_masked_rows() -> None:
    toy = _toy()
    specs = [
        SliceConfig(name="sex", column="sex"),
        SliceConfig(name="age_band", column="age", edges=[30, 50], labels=["young", "mid", "old"]),
    ]
    report = slices.sliced_metrics(toy, specs, toy["y"], toy["proba"], 0.5, 10)
    assert list(report) == ["sex", "age_band"]
    assert list(report["age_band"]) == ["young", "mid", "old"]
    for value in ("Female", "Male"):
        mask = toy["sex"] == value
        y, p = toy["y"][mask], toy["proba"][mask]
        found = report["sex"][value]
        assert found["rows"] == mask.sum()
        assert found["positive_rate"] == pytest.approx(y.mean(), abs=1e-6)
        assert found["predicted_positive_rate"] == pytest.approx((p >= 0.5).mean(), abs=1e-6)
        assert found["roc_auc"] == pytest.approx(metrics.roc_auc_score(y, p), abs=1e-6)
        assert found["accuracy"] == pytest.approx(metrics.accuracy_score(y, p >= 0.5), abs=1e-6)
        assert found["f1"] == pytest.approx(metrics.f1_score(y, p >= 0.5), abs=1e-6)
    old = toy["age"] >= 50
    assert report["age_band"]["old"]["rows"] == old.sum()


def test_a_one_class_slice_has_no_auc_and_is_never_the_worst() -> None:
    y = np.array([0, 0, 0, 1, 0, 1, 1, 0])
    proba = np.array([0.1, 0.2, 0.3, 0.9, 0.4, 0.35, 0.8, 0.7])
    group = np.array(["a", "a", "a", "b", "b", "b", "b", "b"], dtype=object)
    report = slices.sliced_metrics(
        {"g": group}, [SliceConfig(name="g", column="g")], y, proba, 0.5, 10
    )
    assert report["g"]["a"]["roc_auc"] is None
    assert report["g"]["b"]["roc_auc"] == pytest.approx(
        metrics.roc_auc_score(y[3:], proba[3:]), abs=1e-6
    )
    assert slices.worst_slice(report, min_rows=1) == ("g=b", report["g"]["b"]["roc_auc"])
    assert slices.worst_slice(report, min_rows=6) is None  # b has 5 rows
    assert [row["slice"] for row in slices.plot_rows(report)] == ["g=b"]


def test_slicing_refuses_a_missing_or_misaligned_column() -> None:
    y, proba = np.array([0, 1]), np.array([0.2, 0.7])
    spec = [SliceConfig(name="sex", column="sex")]
    with pytest.raises(slices.SliceError, match="no column 'sex'"):
        slices.sliced_metrics({}, spec, y, proba, 0.5, 10)
    with pytest.raises(slices.SliceError, match="3 rows, the scored test set 2"):
        slices.sliced_metrics({"sex": np.array(["F", "M", "F"])}, spec, y, proba, 0.5, 10)


def test_fairness_gaps_equal_the_definitions_computed_by_hand() -> None:
    toy = _toy()
    y, predicted = toy["y"], (toy["proba"] >= 0.5).astype(int)
    report = fairness.fairness_metrics(y, predicted, toy, ["sex", "race"])
    for attribute in ("sex", "race"):
        groups = np.unique(toy[attribute])
        selection = [predicted[toy[attribute] == g].mean() for g in groups]
        tpr = [predicted[(toy[attribute] == g) & (y == 1)].mean() for g in groups]
        fpr = [predicted[(toy[attribute] == g) & (y == 0)].mean() for g in groups]
        found = report[attribute]
        parity = max(selection) - min(selection)
        odds = max(max(tpr) - min(tpr), max(fpr) - min(fpr))
        assert found["demographic_parity_difference"] == pytest.approx(parity, abs=1e-6)
        assert found["equalized_odds_difference"] == pytest.approx(odds, abs=1e-6)
    assert (
        fairness.flat(report)["race_equalized_odds_difference"]
        == (report["race"]["equalized_odds_difference"])
    )
    parity_only = fairness.fairness_metrics(y, np.ones_like(y), toy, ["sex"])
    assert parity_only["sex"]["demographic_parity_difference"] == 0.0


def _encoded_toy(rows: int = 3000) -> tuple[np.ndarray, np.ndarray]:
    """Columns: a numeric feature, and a category code with missing values (NaN)."""
    rng = np.random.default_rng(3)
    number = rng.normal(0, 1, rows)
    code = rng.integers(0, 4, rows).astype(float)
    code[rng.random(rows) < 0.05] = math.nan
    logit = 1.5 * number + np.where(code == 2, 1.2, -0.3) + rng.normal(0, 0.5, rows)
    return np.column_stack([number, code]), (logit > 0).astype(int)


def test_baseline_is_deterministic_handles_missing_codes_and_learns() -> None:
    x, y = _encoded_toy()
    config = BaselineConfig(C=1.0, max_iter=1000)
    names, categorical = ["number", "code"], ["code"]
    first = baseline_proba(fit_baseline(x, y, names, categorical, config, seed=42), x)
    second = baseline_proba(fit_baseline(x, y, names, categorical, config, seed=42), x)
    assert np.array_equal(first, second)
    assert metrics.roc_auc_score(y, first) > 0.9
    unseen = np.array([[0.0, 9.0], [0.0, math.nan]])  # a code never seen, a missing one
    assert np.isfinite(
        baseline_proba(fit_baseline(x, y, names, categorical, config, 42), unseen)
    ).all()


def test_alignment_check_accepts_the_same_rows_and_names_the_first_difference() -> None:
    params = parse_params(yaml.safe_load((REPO_ROOT / "params.yaml").read_text()))
    numeric = [c.name for c in params.dataset.columns if c.type != "category"]
    rng = np.random.default_rng(0)
    raw = {name: rng.integers(1, 90, 50) for name in numeric} | {TARGET: rng.integers(0, 2, 50)}
    encoded = {name: values.astype(float) for name, values in raw.items()}
    check_aligned(raw, encoded, params)
    shuffled = {name: values[::-1].copy() for name, values in encoded.items()}
    with pytest.raises(AlignmentError, match=r"test row 0: column '\w+'"):
        check_aligned(raw, shuffled, params)
    with pytest.raises(AlignmentError, match="50 rows, featurized 49"):
        check_aligned(raw, {k: v[:49] for k, v in encoded.items()}, params)


def _params_with(**evaluate: object) -> dict:
    raw = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    raw["evaluate"] |= evaluate
    return raw


@pytest.mark.parametrize(
    ("evaluate", "message"),
    [
        ({"slices": [{"name": "a", "column": "age", "edges": [30, 20]}]}, "strictly increasing"),
        (
            {"slices": [{"name": "a", "column": "age", "edges": [30], "labels": ["x"]}]},
            "1 edges make 2 bands, but 1 labels",
        ),
        ({"slices": [{"name": "a", "column": "height"}]}, "unknown column 'height'"),
        ({"slices": [{"name": "a", "column": "sex", "edges": [1]}]}, "'sex' is categorical"),
        ({"sensitive": ["age"]}, "'age' is not a categorical column"),
        ({"slices": [{"name": "a", "column": "sex"}, {"name": "a", "column": "race"}]}, "unique"),
    ],
)
def test_bad_slice_configuration_is_refused_naming_it(evaluate: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_params(_params_with(**evaluate))
