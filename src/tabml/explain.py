"""Per-prediction explanations by raw input column, from LightGBM's TreeSHAP (`pred_contrib`).

Shared by the service (`?explain=true`) and the evaluate stage (global importance), so a
contribution means the same thing in a response and in the report. numpy only: the service
imports no pandas or scikit-learn.

The model sees encoded features (`tabml.features`): each contract column becomes one column
(categories as codes), and a derived feature (`capital_net = capital_gain - capital_loss`) is
computed from several raw inputs. TreeSHAP attributes the raw margin to the encoded columns;
here a contract column keeps its own contribution, and a derived feature's contribution is
shared among its inputs in proportion to their absolute values in that row (equal shares when
all are zero): a row with `capital_gain` 15024 and `capital_loss` 0 owes its `capital_net` to
the gain. The shares sum to the derived contribution, so base value plus the contributions of
the raw inputs still equals the raw margin (the logit of the probability).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tabml.features import DERIVED_FEATURES


@dataclass(frozen=True)
class Explanations:
    """TreeSHAP of n rows: `base_values` (n,) and `contributions` (n, len(features))."""

    features: list[str]
    base_values: np.ndarray
    contributions: np.ndarray

    def margins(self) -> np.ndarray:
        """Base value plus every contribution: the model's raw margin of each row."""
        return self.base_values + self.contributions.sum(axis=1)

    def as_dicts(self, top_k: int = 0) -> list[dict[str, Any]]:
        """One `{"base_value", "contributions": [{"feature", "value"}, ...]}` per row, the
        `top_k` largest |value| first (ties in feature order); `top_k` 0: every feature."""
        k = len(self.features) if top_k <= 0 else min(top_k, len(self.features))
        order = np.argsort(-np.abs(self.contributions), axis=1, kind="stable")[:, :k]
        names = self.features
        return [
            {
                "base_value": base,
                "contributions": [
                    {"feature": names[j], "value": v} for j, v in zip(columns, values, strict=True)
                ],
            }
            for base, columns, values in zip(
                self.base_values.tolist(),
                order.tolist(),
                np.take_along_axis(self.contributions, order, axis=1).tolist(),
                strict=True,
            )
        ]


class RawAttribution:
    """Maps TreeSHAP over the encoded features (`feature_names`, the model's order) to the raw
    input columns: the non-derived features, in that order."""

    def __init__(self, feature_names: Sequence[str]) -> None:
        names = list(feature_names)
        self.features = [n for n in names if n not in DERIVED_FEATURES]
        raw_index = {n: i for i, n in enumerate(self.features)}
        self._direct = np.array([names.index(n) for n in self.features], dtype=np.intp)
        self._derived: list[tuple[int, np.ndarray, np.ndarray]] = []
        for position, name in enumerate(names):
            if name in DERIVED_FEATURES:
                inputs = DERIVED_FEATURES[name][0]
                self._derived.append(
                    (
                        position,
                        np.array([raw_index[i] for i in inputs], dtype=np.intp),
                        np.array([names.index(i) for i in inputs], dtype=np.intp),
                    )
                )

    def explain(self, booster: Any, features: np.ndarray, num_threads: int = 1) -> Explanations:
        """TreeSHAP of the encoded `features` (n, n_encoded), by raw input column. Rows are
        independent, so `num_threads` changes the time, not the values."""
        shap = np.asarray(booster.predict(features, pred_contrib=True, num_threads=num_threads))
        return self.to_raw(shap, features)

    def to_raw(self, shap: np.ndarray, features: np.ndarray) -> Explanations:
        """`shap`: (n, n_encoded + 1), the last column the base value, as LightGBM returns it."""
        contributions = shap[:, self._direct].copy()
        for position, raw_columns, input_columns in self._derived:
            weights = np.nan_to_num(np.abs(features[:, input_columns]))
            totals = weights.sum(axis=1, keepdims=True)
            shares = np.divide(
                weights,
                totals,
                out=np.full_like(weights, 1.0 / len(input_columns)),
                where=totals > 0,
            )
            contributions[:, raw_columns] += shares * shap[:, [position]]
        return Explanations(self.features, shap[:, -1].copy(), contributions)


def mean_abs_contributions(
    booster: Any,
    features: np.ndarray,
    feature_names: Sequence[str],
    *,
    rows: int,
    seed: int,
    num_threads: int,
) -> list[dict[str, Any]]:
    """Global importance: mean |contribution| of each raw input over `rows` rows of `features`
    drawn without replacement by `seed` (0 or more than there are: every row), largest first.

    TreeSHAP costs about 2 ms of CPU a row here (251 trees), so the whole test set (16,281
    rows) took 28 s on two shared threads; 2,000 rows keep every feature within 5 % of it, in
    the same order (measured; docs/DESIGN-NOTES.md).
    """
    if 0 < rows < len(features):
        chosen = np.sort(np.random.default_rng(seed).choice(len(features), rows, replace=False))
        features = features[chosen]
    explained = RawAttribution(feature_names).explain(booster, features, num_threads)
    importance = np.abs(explained.contributions).mean(axis=0)
    order = np.argsort(-importance, kind="stable")
    return [
        {
            "feature": explained.features[j],
            "mean_abs_contribution": round(float(importance[j]), 6),
        }
        for j in order.tolist()
    ]
