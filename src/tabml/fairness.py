"""Group-fairness metrics of the model's decisions for the sensitive attributes in `conf/`.

fairlearn's definitions: the demographic parity difference is the largest gap in the rate of
positive decisions between two groups of an attribute; the equalized odds difference the larger
of the largest gaps in true positive rate and in false positive rate. 0 means parity.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from tabml.evaluation import DIGITS

METRICS = ("demographic_parity_difference", "equalized_odds_difference")


def fairness_metrics(
    y_true: np.ndarray,
    predicted: np.ndarray,
    columns: Mapping[str, np.ndarray],
    sensitive: list[str],
) -> dict[str, dict[str, float]]:
    """attribute → metric → value, for the 0/1 decisions `predicted` (rows aligned)."""
    from fairlearn.metrics import demographic_parity_difference, equalized_odds_difference

    functions = {
        "demographic_parity_difference": demographic_parity_difference,
        "equalized_odds_difference": equalized_odds_difference,
    }
    report: dict[str, dict[str, float]] = {}
    for attribute in sensitive:
        groups = np.asarray(columns[attribute], dtype=object).astype(str)
        report[attribute] = {
            name: round(float(function(y_true, predicted, sensitive_features=groups)), DIGITS)
            for name, function in functions.items()
        }
    return report


def flat(report: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """`{"sex": {"demographic_parity_difference": x}}` → `{"sex_demographic_parity_difference":
    x}`: the names under which reports/metrics.json, MLflow and the gate know them."""
    return {f"{attribute}_{name}": v for attribute, m in report.items() for name, v in m.items()}
