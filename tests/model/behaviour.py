"""Behavioural checks of a trained model (invariance, directional expectations, minimum
functionality; Ribeiro et al.'s CheckList, as Made-With-ML's model tests use it), as functions
of any model, so the same measure can be pointed at a deliberately broken one.

Each check perturbs the held-out (test) rows, scores them before and after with the model's own
feature transform, and returns per-row measurements; the tests hold them to the tolerances and
shares below, which are the product's statement of how the model must behave.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

Columns = dict[str, Any]

#: fnlwgt (the census sampling weight, no property of the person): each held-out row's value
#: replaced by one drawn from the training split moves the probability by less than this ...
FNLWGT_TOLERANCE = 0.15
#: ... for at least this share of rows.
FNLWGT_SHARE = 0.95
#: More capital_gain (+10,000) or education_num (+1, at most 16) lowers the probability by at
#: most this ...
DIRECTION_TOLERANCE = 0.02
#: ... for at least this share of rows.
DIRECTION_SHARE = 0.99
#: Clear-cut records: probability at least this for ">50K", at most 1 - this for "<=50K".
CLEAR_CUT_CONFIDENCE = 0.9
#: Held-out rows in a clear-cut slice classified as the slice's label: at least this share.
CLEAR_CUT_SLICE_SHARE = 0.97


@dataclass(frozen=True)
class Model:
    """A trained model as the pipeline leaves it: contract, fitted transform, booster."""

    transform: Any
    booster: Any
    threshold: float

    @classmethod
    def load(cls, models: Path) -> Model:
        from tabml.contract import DataContract
        from tabml.features import FeatureTransform
        from tabml.model import load_booster
        from tabml.model_metadata import ModelMetadata

        contract = DataContract.load(models / "contract.json")
        transform = FeatureTransform.load(models / "feature_transform.json", contract)
        threshold = ModelMetadata.load(models / "model_metadata.json").threshold
        return cls(transform, load_booster(models / "model.txt"), threshold)

    def probability(self, columns: Columns) -> np.ndarray:
        from tabml.model import predict_proba

        return predict_proba(self.booster, self.transform.transform(columns))


def fnlwgt_resampled(model: Model, test: Columns, train: Columns, seed: int = 0) -> np.ndarray:
    """|Δ probability| per held-out row when its fnlwgt is replaced by a training value."""
    draw = np.random.default_rng(seed).choice(train["fnlwgt"], len(test["fnlwgt"]))
    return np.abs(model.probability({**test, "fnlwgt": draw}) - model.probability(test))


def raised(model: Model, test: Columns, column: str, by: int, ceiling: int) -> np.ndarray:
    """Drop of the probability per held-out row (positive: lowered) when `column` rises by
    `by`, capped at `ceiling` (the contract's maximum)."""
    more = np.minimum(test[column] + by, ceiling)
    return model.probability(test) - model.probability({**test, column: more})


def _record(**values: Any) -> dict[str, Any]:
    return {"fnlwgt": 190_000, "capital_loss": 0, "native_country": "United-States", **values}


#: Records whose label no reasonable census income model gets wrong.
CLEAR_CUT_RECORDS: list[tuple[str, dict[str, Any]]] = [
    (
        ">50K",
        _record(
            age=45,
            workclass="Self-emp-inc",
            education="Doctorate",
            education_num=16,
            marital_status="Married-civ-spouse",
            occupation="Prof-specialty",
            relationship="Husband",
            race="White",
            sex="Male",
            capital_gain=15024,
            hours_per_week=60,
        ),
    ),
    (
        ">50K",
        _record(
            age=50,
            workclass="Private",
            education="Masters",
            education_num=14,
            marital_status="Married-civ-spouse",
            occupation="Exec-managerial",
            relationship="Husband",
            race="White",
            sex="Male",
            capital_gain=99999,
            hours_per_week=50,
        ),
    ),
    (
        ">50K",
        _record(
            age=40,
            workclass="Federal-gov",
            education="Bachelors",
            education_num=13,
            marital_status="Married-civ-spouse",
            occupation="Exec-managerial",
            relationship="Wife",
            race="Black",
            sex="Female",
            capital_gain=7688,
            hours_per_week=45,
        ),
    ),
    (
        "<=50K",
        _record(
            age=18,
            workclass="Private",
            education="11th",
            education_num=7,
            marital_status="Never-married",
            occupation="Other-service",
            relationship="Own-child",
            race="White",
            sex="Female",
            capital_gain=0,
            hours_per_week=20,
        ),
    ),
    (
        "<=50K",
        _record(
            age=22,
            workclass="Private",
            education="HS-grad",
            education_num=9,
            marital_status="Never-married",
            occupation="Handlers-cleaners",
            relationship="Own-child",
            race="White",
            sex="Male",
            capital_gain=0,
            hours_per_week=30,
            native_country="Mexico",
        ),
    ),
    (
        "<=50K",
        _record(
            age=30,
            workclass=None,
            education="7th-8th",
            education_num=4,
            marital_status="Divorced",
            occupation=None,
            relationship="Unmarried",
            race="Black",
            sex="Female",
            capital_gain=0,
            hours_per_week=25,
            native_country=None,
        ),
    ),
]


def clear_cut_probabilities(model: Model) -> np.ndarray:
    records = [record for _, record in CLEAR_CUT_RECORDS]
    return model.probability({name: [r[name] for r in records] for name in records[0]})


#: Held-out slices that are clear-cut in the data (their share of ">50K" labels: 98.9 % of 529
#: rows and 0.16 % of 1,213): a capital gain of at least 7,688, and an age under 21.
CLEAR_CUT_SLICES = {
    "capital_gain >= 7688": (">50K", lambda c: c["capital_gain"] >= 7688),
    "age < 21": ("<=50K", lambda c: c["age"] < 21),
}


def slice_agreement(model: Model, test: Columns, name: str) -> tuple[float, int]:
    """Share of the slice's held-out rows classified as its label, and the slice's size."""
    label, select = CLEAR_CUT_SLICES[name]
    chosen = select(test)
    probability = model.probability({k: v[chosen] for k, v in test.items()})
    positive = probability >= model.threshold
    agree = positive if label == ">50K" else ~positive
    return float(agree.mean()), int(chosen.sum())
