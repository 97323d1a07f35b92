"""Synthetic traffic for the loop's simulation: census records, a documented shift, true labels.

Records are rows of the *training* file (`adult.data`), never of the test file: the test file is
the fixed holdout the gate judges on, and traffic turns into training data once its labels come
back, so replaying holdout rows would leak it into training.

The shift ("a new segment"): from `shift_step` on, a share `shift_share` of the records are
rewritten into a segment the training data barely has, unpaid workers (`workclass` =
`Without-pay`: 14 of 32,561 training rows, 7 of the 16,281 test rows), whose income follows a
rule of its own: `>50K` exactly when `education_num` >= 13 (a degree). Everything else about
the record stays as sampled. The champion has learnt that unpaid work means `<=50K`, so it is
wrong on every graduate of the segment; retraining on the segment's labelled traffic learns the
rule, and since the holdout holds only 7 such rows the gate's holdout metrics barely move.
The drift shows as a PSI jump of `workclass` (the reference has almost no `Without-pay`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tabml.contract import DataContract

SEGMENT_FEATURE, SEGMENT_VALUE = "workclass", "Without-pay"
DEGREE_EDUCATION_NUM = 13


@dataclass(frozen=True)
class Labelled:
    record: dict[str, Any]
    label: str
    shifted: bool


def load_rows(data_file: Path, contract: DataContract) -> list[Labelled]:
    """Every row of the raw training file as a JSON-ready record and its label."""
    from tabml.data import read_raw
    from tabml.validation import validate_raw

    frame = validate_raw(read_raw(data_file, contract, 0), contract, str(data_file))
    rows = []
    for values in frame.itertuples(index=False):
        row = dict(zip(frame.columns, values, strict=True))
        label = row.pop(contract.label.column)
        record = {spec.name: _json_value(row[spec.name], spec.type) for spec in contract.columns}
        rows.append(Labelled(record, str(label), False))
    return rows


def _json_value(value: Any, kind: str) -> Any:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if kind == "int":
        return int(value)
    if kind == "float":
        return float(value)
    return str(value)


def shifted(row: Labelled, contract: DataContract) -> Labelled:
    """The row moved into the new segment, labelled by the segment's own rule."""
    record = dict(row.record) | {SEGMENT_FEATURE: SEGMENT_VALUE}
    degree = record["education_num"] >= DEGREE_EDUCATION_NUM
    label = contract.label.positive if degree else contract.label.negative
    return Labelled(record, label, True)


class TrafficSource:
    """Seeded draws of records; after the shift a share of each step's records is shifted."""

    def __init__(self, rows: list[Labelled], contract: DataContract, seed: int) -> None:
        self.rows = rows
        self.contract = contract
        self.rng = np.random.default_rng(seed)

    def step(self, size: int, shift_share: float) -> list[Labelled]:
        """`size` records; each has its survey weight `fnlwgt` redrawn within ±10 %, so the
        traffic is new people like the sampled ones rather than copies of training rows (exact
        copies would reach both sides of the retrain's train/validation split and make early
        stopping optimistic)."""
        picks = self.rng.integers(0, len(self.rows), size=size)
        moved = self.rng.uniform(size=size) < shift_share
        weights = self.rng.uniform(0.9, 1.1, size=size)
        rows = []
        for i, move, weight in zip(picks.tolist(), moved.tolist(), weights.tolist(), strict=True):
            row = shifted(self.rows[i], self.contract) if move else self.rows[i]
            record = row.record | {"fnlwgt": max(1, round(row.record["fnlwgt"] * weight))}
            rows.append(Labelled(record, row.label, row.shifted))
        return rows
