"""What the evaluate stage reports beyond the overall test metrics: per-slice metrics, fairness
of the decisions for the sensitive attributes, and the logistic-regression baseline.

Slices need the raw columns (an age, not its encoding), which the prepared test split holds;
the model scores the featurized one. featurize encodes the prepared rows one for one, in order,
and `check_aligned` proves it for each run (the label and every numeric input must agree row by
row) instead of trusting it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from tabml import fairness, slices
from tabml.config import Params
from tabml.errors import TabmlError
from tabml.features import TARGET


class AlignmentError(TabmlError, ValueError):
    """The raw and the encoded test rows are not the same rows in the same order."""


def check_aligned(
    raw: Mapping[str, np.ndarray], encoded: Mapping[str, np.ndarray], params: Params
) -> None:
    """Raise `AlignmentError` naming the first differing row unless the raw and encoded test
    splits hold the same rows in the same order (label and numeric inputs equal)."""
    if len(raw[TARGET]) != len(encoded[TARGET]):
        raise AlignmentError(
            f"prepared test split has {len(raw[TARGET])} rows, featurized {len(encoded[TARGET])}: "
            "rerun the pipeline (`python src/train.py`)"
        )
    numeric = [c.name for c in params.dataset.columns if c.type != "category"]
    for name in [TARGET, *numeric]:
        a = np.asarray(raw[name], dtype=np.float64)
        b = np.asarray(encoded[name], dtype=np.float64)
        differ = ~((a == b) | (np.isnan(a) & np.isnan(b)))
        if differ.any():
            row = int(np.flatnonzero(differ)[0])
            raise AlignmentError(
                f"test row {row}: column {name!r} is {a[row]} in the prepared split but "
                f"{b[row]} in the featurized one; the splits are not row-aligned "
                "(rerun the pipeline: `python src/train.py`)"
            )


def slices_json(report: slices.SliceReport) -> str:
    """reports/slices.json: keys in slice order (bands ascending), not sorted as text."""
    return json.dumps(report, indent=1) + "\n"


@dataclass(frozen=True)
class QualityReport:
    #: sections added to reports/metrics.json (flat numbers: DVC metrics, MLflow, the gate)
    metric_sections: dict[str, dict[str, Any]]
    #: reports/slices.json: slice → value → metrics
    slices: slices.SliceReport
    #: reports/plots/slices.json
    plot: list[dict[str, Any]]


def assess(
    raw: Mapping[str, np.ndarray],
    encoded: Mapping[str, np.ndarray],
    proba: np.ndarray,
    threshold: float,
    params: Params,
    baseline: Mapping[str, Any],
) -> QualityReport:
    """Slices, fairness and the baseline for test probabilities `proba` (rows of `encoded`)."""
    check_aligned(raw, encoded, params)
    config = params.evaluate
    y_true = np.asarray(encoded[TARGET]).astype(int)
    report = slices.sliced_metrics(
        raw, config.slices, y_true, proba, threshold, config.calibration_bins
    )
    predicted = (proba >= threshold).astype(int)
    gaps = fairness.fairness_metrics(y_true, predicted, raw, config.sensitive)
    worst = slices.worst_slice(report, config.min_slice_rows)
    sections: dict[str, dict[str, Any]] = {
        "baseline": dict(baseline),
        "fairness": fairness.flat(gaps),
    }
    if worst is not None:
        sections["slices"] = {"worst_roc_auc": worst[1]}
    return QualityReport(sections, report, slices.plot_rows(report))
