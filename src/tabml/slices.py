"""Metrics per slice of the test set (sex, race, age bands, education level: `conf/evaluate/`).

One overall ROC AUC hides a model that is poor for a group. Each slice reports its rows, its
actual and predicted positive rates, ROC AUC, accuracy, F1 and calibration error, computed with
scikit-learn on the slice's rows exactly as `tabml.evaluation` computes the overall figures.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from sklearn import metrics

from tabml.config import SliceConfig
from tabml.errors import TabmlError
from tabml.evaluation import DIGITS

#: The label of rows whose slicing column is missing.
MISSING = "(missing)"

#: slice name → slice value → metric → value (None when undefined, e.g. AUC of one class)
SliceReport = dict[str, dict[str, dict[str, float | int | None]]]


class SliceError(TabmlError, ValueError):
    """The test rows cannot be sliced as configured."""


def band_labels(edges: list[float]) -> list[str]:
    """`[25, 35]` → `["<25", "25-34", "35+"]` for whole-number edges (integer columns),
    `["<2.5", "[2.5, 3.5)", ">=3.5"]` otherwise."""
    whole = all(float(e).is_integer() for e in edges)
    text = [f"{int(e)}" if whole else f"{e:g}" for e in edges]
    middle = [
        f"{a}-{int(b) - 1}" if whole else f"[{a}, {c})"
        for a, b, c in zip(text, edges[1:], text[1:], strict=False)
    ]
    return [f"<{text[0]}", *middle, f"{text[-1]}+" if whole else f">={text[-1]}"]


def slice_masks(spec: SliceConfig, column: np.ndarray) -> dict[str, np.ndarray]:
    """Slice value → boolean row mask, in a stable order: bands in order, categories sorted,
    the missing value last. Values without rows are left out."""
    missing = np.array([v is None or (isinstance(v, float) and np.isnan(v)) for v in column])
    masks: dict[str, np.ndarray] = {}
    if spec.edges is not None:
        values = np.where(missing, np.nan, column).astype(float)
        band = np.searchsorted(np.asarray(spec.edges, dtype=float), values, side="right")
        labels = spec.labels or band_labels(spec.edges)
        for i, label in enumerate(labels):
            masks[label] = ~missing & (band == i)
    else:
        present = column[~missing]
        for value in sorted({str(v) for v in present}):
            masks[value] = ~missing & (column.astype(str) == value)
    masks[MISSING] = missing
    return {value: mask for value, mask in masks.items() if mask.any()}


def calibration_error(y_true: np.ndarray, proba: np.ndarray, bins: int) -> float:
    """Expected calibration error: the row-weighted mean |mean predicted - fraction positive|
    over equal-width probability bins (the bins of the calibration plot). scikit-learn has the
    curve (`calibration_curve`) but not this summary of it."""
    index = np.clip((proba * bins).astype(int), 0, bins - 1)
    counts = np.bincount(index, minlength=bins)
    predicted = np.bincount(index, weights=proba, minlength=bins)
    positive = np.bincount(index, weights=y_true, minlength=bins)
    filled = counts > 0
    gaps = np.abs(predicted[filled] - positive[filled]) / counts[filled]
    return float(np.sum(gaps * counts[filled]) / len(y_true))


def _round(value: float) -> float:
    return round(float(value), DIGITS)


def slice_metrics(
    y_true: np.ndarray, proba: np.ndarray, threshold: float, bins: int
) -> dict[str, float | int | None]:
    """The metrics of one slice; ROC AUC is None when the slice holds only one class."""
    predicted = (proba >= threshold).astype(int)
    both_classes = 0 < int(y_true.sum()) < len(y_true)
    return {
        "rows": len(y_true),
        "positive_rate": _round(y_true.mean()),
        "predicted_positive_rate": _round(predicted.mean()),
        "roc_auc": _round(metrics.roc_auc_score(y_true, proba)) if both_classes else None,
        "accuracy": _round(metrics.accuracy_score(y_true, predicted)),
        "f1": _round(metrics.f1_score(y_true, predicted, zero_division=0)),
        "calibration_error": _round(calibration_error(y_true, proba, bins)),
    }


def sliced_metrics(
    columns: Mapping[str, np.ndarray],
    specs: list[SliceConfig],
    y_true: np.ndarray,
    proba: np.ndarray,
    threshold: float,
    bins: int,
) -> SliceReport:
    """Every configured slicing of the rows in `columns` (raw values, aligned with `y_true`)."""
    report: SliceReport = {}
    for spec in specs:
        if spec.column not in columns:
            raise SliceError(f"slice {spec.name!r}: the test rows have no column {spec.column!r}")
        column = np.asarray(columns[spec.column], dtype=object)
        if len(column) != len(y_true):
            raise SliceError(
                f"slice {spec.name!r}: column {spec.column!r} has {len(column)} rows, "
                f"the scored test set {len(y_true)}"
            )
        report[spec.name] = {
            value: slice_metrics(y_true[mask], proba[mask], threshold, bins)
            for value, mask in slice_masks(spec, column).items()
        }
    return report


def worst_slice(report: SliceReport, min_rows: int) -> tuple[str, float] | None:
    """`("<slice>=<value>", roc_auc)` of the lowest ROC AUC among slices with at least
    `min_rows` rows and both classes; None if there is none. Ties go to the first listed."""
    candidates = [
        (f"{name}={value}", float(m["roc_auc"]))
        for name, values in report.items()
        for value, m in values.items()
        if m["roc_auc"] is not None and int(m["rows"] or 0) >= min_rows
    ]
    return min(candidates, key=lambda c: c[1]) if candidates else None


def plot_rows(report: SliceReport) -> list[dict[str, str | float | int | None]]:
    """One row per slice with a ROC AUC, for the DVC bar plot of ROC AUC by slice."""
    return [
        {"slice": f"{name}={value}", "rows": m["rows"], "roc_auc": m["roc_auc"]}
        for name, values in report.items()
        for value, m in values.items()
        if m["roc_auc"] is not None
    ]
