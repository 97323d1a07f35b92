"""Example requests for the OpenAPI docs, the MLflow input example and the warm-up prediction.

Real rows of the UCI Adult test file (one per policy case: complete, nulls in nullable fields);
for another dataset the example is built from its contract so it always validates.
"""

from __future__ import annotations

from typing import Any

from tabml.contract import DataContract

Record = dict[str, Any]

_RECORDS: dict[str, list[Record]] = {
    "adult": [
        {
            "age": 28,
            "workclass": "Local-gov",
            "fnlwgt": 336951,
            "education": "Assoc-acdm",
            "education_num": 12,
            "marital_status": "Married-civ-spouse",
            "occupation": "Protective-serv",
            "relationship": "Husband",
            "race": "White",
            "sex": "Male",
            "capital_gain": 0,
            "capital_loss": 0,
            "hours_per_week": 40,
            "native_country": "United-States",
        },
        {
            "age": 18,
            "workclass": None,
            "fnlwgt": 103497,
            "education": "Some-college",
            "education_num": 10,
            "marital_status": "Never-married",
            "occupation": None,
            "relationship": "Own-child",
            "race": "White",
            "sex": "Female",
            "capital_gain": 0,
            "capital_loss": 0,
            "hours_per_week": 30,
            "native_country": "United-States",
        },
    ],
}


def _from_contract(contract: DataContract) -> Record:
    record: Record = {}
    for spec in contract.columns:
        if spec.type == "category":
            record[spec.name] = spec.categories[0] if spec.categories else None
        else:
            value = spec.min if spec.min is not None else (spec.max if spec.max is not None else 0)
            record[spec.name] = int(value) if spec.type == "int" else float(value)
    return record


def example_records(contract: DataContract) -> list[Record]:
    """At least one valid raw record for this contract."""
    records = _RECORDS.get(contract.name)
    if records and all(set(r) == set(contract.feature_names) for r in records):
        return [dict(r) for r in records]
    return [_from_contract(contract)]
