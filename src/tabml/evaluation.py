"""Test-set metrics and the data behind the evaluation plots (scikit-learn's implementations)."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn import metrics

DIGITS = 6


def _round(values: np.ndarray) -> list[float]:
    return [round(float(v), DIGITS) for v in values]


def classification_metrics(y_true: np.ndarray, proba: np.ndarray, threshold: float) -> dict:
    predicted = (proba >= threshold).astype(int)
    return {
        "roc_auc": metrics.roc_auc_score(y_true, proba),
        "pr_auc": metrics.average_precision_score(y_true, proba),
        "log_loss": metrics.log_loss(y_true, proba),
        "brier": metrics.brier_score_loss(y_true, proba),
        "accuracy": metrics.accuracy_score(y_true, predicted),
        "f1": metrics.f1_score(y_true, predicted),
        "precision": metrics.precision_score(y_true, predicted),
        "recall": metrics.recall_score(y_true, predicted),
        "threshold": threshold,
        "rows": len(y_true),
    }


def rounded(values: dict[str, Any]) -> dict[str, Any]:
    return {k: round(float(v), DIGITS) if isinstance(v, float) else v for k, v in values.items()}


def roc_points(y_true: np.ndarray, proba: np.ndarray) -> list[dict[str, float]]:
    fpr, tpr, _ = metrics.roc_curve(y_true, proba)
    return [{"fpr": f, "tpr": t} for f, t in zip(_round(fpr), _round(tpr), strict=True)]


def precision_recall_points(y_true: np.ndarray, proba: np.ndarray) -> list[dict[str, float]]:
    precision, recall, _ = metrics.precision_recall_curve(y_true, proba)
    return [
        {"recall": r, "precision": p}
        for r, p in zip(_round(recall), _round(precision), strict=True)
    ]


def confusion_rows(y_true: np.ndarray, proba: np.ndarray, threshold: float) -> list[dict[str, int]]:
    predicted = (proba >= threshold).astype(int)
    return [{"actual": int(a), "predicted": int(p)} for a, p in zip(y_true, predicted, strict=True)]


def calibration_points(y_true: np.ndarray, proba: np.ndarray, bins: int) -> list[dict[str, float]]:
    from sklearn.calibration import calibration_curve

    fraction, mean_predicted = calibration_curve(y_true, proba, n_bins=bins)
    return [
        {"mean_predicted": m, "fraction_positive": f}
        for m, f in zip(_round(mean_predicted), _round(fraction), strict=True)
    ]
