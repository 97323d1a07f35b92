"""The feature transform shared by training and serving.

scikit-learn style: configuration in `__init__`, learning in `fit`, fitted state in attributes
ending in `_`, a pure `transform`. It works column-wise on any mapping of column name → sequence
(a pandas DataFrame or the lists decoded from a JSON request), so offline and online prediction run
the same code and produce the same float matrix. Categorical values become the integer code of the
category learned in `fit`; anything else (missing, or a category never seen in training) becomes
NaN, which LightGBM routes as missing.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tabml.atomic import write_text_atomic
from tabml.contract import DataContract
from tabml.errors import TabmlError

Columns = Mapping[str, Sequence[Any] | np.ndarray]

# Name of the 0/1 label column in prepared and feature tables.
TARGET = "target"


def _capital_net(cols: Mapping[str, np.ndarray]) -> np.ndarray:
    return cols["capital_gain"] - cols["capital_loss"]


DERIVED_FEATURES: dict[
    str, tuple[tuple[str, ...], Callable[[Mapping[str, np.ndarray]], np.ndarray]]
]
DERIVED_FEATURES = {
    # name: (numeric inputs, function of those columns)
    "capital_net": (("capital_gain", "capital_loss"), _capital_net),
}


class FeatureSpecError(TabmlError, ValueError):
    """A derived feature that does not exist, or a fitted state that does not fit the contract."""


class FeatureTransform:
    """Raw columns → float64 matrix with categorical codes; fitted state is JSON-serialisable."""

    def __init__(self, contract: DataContract, derived: Sequence[str] = ()) -> None:
        unknown = sorted(set(derived) - set(DERIVED_FEATURES))
        if unknown:
            raise FeatureSpecError(
                f"unknown derived feature(s) {unknown}; known: {sorted(DERIVED_FEATURES)}"
            )
        self.contract = contract
        self.derived = list(derived)

    def fit(self, columns: Columns) -> FeatureTransform:
        """Learn the category levels seen in training, sorted for a stable code assignment."""
        self.categories_ = {
            spec.name: sorted({v for v in columns[spec.name] if isinstance(v, str)})
            for spec in self.contract.columns
            if spec.type == "category"
        }
        self._index_categories()
        return self

    def _index_categories(self) -> None:
        self._codes = {
            name: {level: float(i) for i, level in enumerate(levels)}
            for name, levels in self.categories_.items()
        }

    @property
    def feature_names_(self) -> list[str]:
        return [*self.contract.feature_names, *self.derived]

    @property
    def categorical_features_(self) -> list[str]:
        return list(self.categories_)

    def transform(self, columns: Columns) -> np.ndarray:
        """Return an (n_rows, n_features) float64 matrix in `feature_names_` order."""
        out: dict[str, np.ndarray] = {}
        for spec in self.contract.columns:
            values = columns[spec.name]
            if spec.type == "category":
                codes = self._codes[spec.name]
                out[spec.name] = np.fromiter(
                    (codes.get(v, math.nan) for v in values), dtype=np.float64, count=len(values)
                )
            else:
                out[spec.name] = np.asarray(values, dtype=np.float64)
        for name in self.derived:
            _, function = DERIVED_FEATURES[name]
            out[name] = function(out)
        return np.column_stack([out[name] for name in self.feature_names_])

    def to_dict(self) -> dict[str, Any]:
        return {
            "derived": self.derived,
            "categories": self.categories_,
            "feature_names": self.feature_names_,
        }

    def save(self, path: Path) -> None:
        write_text_atomic(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: Path, contract: DataContract) -> FeatureTransform:
        state = json.loads(Path(path).read_text())
        transform = cls(contract, state["derived"])
        transform.categories_ = state["categories"]
        transform._index_categories()
        if transform.feature_names_ != state["feature_names"]:
            raise FeatureSpecError(
                f"{path}: feature names {state['feature_names']} do not match the "
                f"contract's {transform.feature_names_}"
            )
        return transform
