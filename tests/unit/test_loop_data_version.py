"""Feedback becomes a data version: joined with logged inputs, validated, exactly once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tabml.config import load_params
from tabml.data import read_raw
from tabml.loop import data_version
from tabml.validation import validate_raw

REPO_ROOT = Path(__file__).resolve().parents[2]
CONTRACT = load_params(REPO_ROOT / "params.yaml").dataset.contract()
RECORD = {
    "age": 39,
    "workclass": "State-gov",
    "fnlwgt": 77516,
    "education": "Bachelors",
    "education_num": 13,
    "marital_status": "Never-married",
    "occupation": None,
    "relationship": "Not-in-family",
    "race": "White",
    "sex": "Male",
    "capital_gain": 2174,
    "capital_loss": 0,
    "hours_per_week": 40,
    "native_country": "United-States",
}


def prediction(request_id: str, index: int = 0, **changes: object) -> dict:
    return {
        "type": "prediction",
        "ts": 1.0,
        "request_id": request_id,
        "index": index,
        "record": RECORD | changes,
        "probability": 0.3,
        "label": "<=50K",
        "model_version": "v1",
    }


def feedback(request_id: str, label: str, index: int = 0) -> dict:
    return {"type": "feedback", "ts": 2.0, "request_id": request_id, "index": index, "label": label}


def write_log(log: Path, events: list[dict]) -> None:
    log.mkdir(parents=True, exist_ok=True)
    (log / "20261201T000000Z-host-1.jsonl").write_text(
        "".join(json.dumps(e) + "\n" for e in events)
    )


def test_feedback_is_joined_on_request_id_and_index() -> None:
    joined = data_version.join_feedback(
        [
            prediction("a"),
            prediction("b", 0),
            prediction("b", 1, age=50),
            feedback("b", ">50K", 1),
            feedback("b", ">50K", 1),  # duplicate: counted once
            feedback("a", ">50K"),
            feedback("a", "<=50K"),  # conflicting labels: left out
            feedback("zzz", ">50K"),  # no such prediction
        ]
    )
    assert joined.rows == {("b", 1): (RECORD | {"age": 50}, ">50K")}
    assert (joined.duplicates, joined.conflicting, joined.unmatched) == (1, 1, 1)


def test_a_batch_is_valid_raw_data_and_bad_rows_are_reported_not_fixed(tmp_path: Path) -> None:
    log, batches = tmp_path / "log", tmp_path / "data" / "batches"
    write_log(
        log,
        [
            prediction("r1"),
            prediction("r2", occupation="Tech-support", capital_gain=0.0),
            prediction("r3", age=250),  # outside the contract's range
            prediction("r4"),
            prediction("r5", favourite_colour="blue"),  # not a contract column
            feedback("r1", ">50K"),
            feedback("r2", "<=50K"),
            feedback("r3", ">50K"),
            feedback("r4", "rich"),  # not a label value
            feedback("r5", ">50K"),
        ],
    )
    joined, held = data_version.new_labelled_rows(log, batches)
    assert held == set() and len(joined.rows) == 5
    batch = data_version.write_batch(joined.rows, CONTRACT, batches)
    assert batch is not None and batch.rows == 2
    problems = "\n".join(batch.rejected)
    assert len(batch.rejected) == 3, problems
    assert "column 'age'" in problems and "'rich'" in problems
    assert "unknown column(s) ['favourite_colour']" in problems

    # The pipeline's own reader and contract accept the file as they accept adult.data.
    frame = validate_raw(read_raw(batch.path, CONTRACT, 0), CONTRACT, str(batch.path))
    assert list(frame["income"]) == [">50K", "<=50K"]
    assert frame["occupation"].isna().tolist() == [True, False]
    assert frame["capital_gain"].tolist() == [2174, 0]

    # Exactly once: the kept and the rejected rows are never ingested (or reported) again.
    again, held = data_version.new_labelled_rows(log, batches)
    assert again.rows == {} and held == {(f"r{i}", 0) for i in range(1, 6)}


def test_a_batch_without_its_manifest_is_removed_and_its_rows_come_back(tmp_path: Path) -> None:
    log, batches = tmp_path / "log", tmp_path / "batches"
    write_log(log, [prediction("r1"), feedback("r1", ">50K")])
    joined, _ = data_version.new_labelled_rows(log, batches)
    batch = data_version.write_batch(joined.rows, CONTRACT, batches)
    assert batch is not None
    batch.path.with_suffix(data_version.KEYS_SUFFIX).unlink()  # as if killed between the writes
    joined, held = data_version.new_labelled_rows(log, batches)
    assert held == set() and list(joined.rows) == [("r1", 0)]
    assert data_version.remove_orphans(batches) == [batch.path]


@pytest.mark.parametrize("value", [None, float("nan")])
def test_missing_values_use_the_raw_missing_marker(value: object) -> None:
    line = data_version.raw_line(RECORD | {"workclass": value}, ">50K", CONTRACT)
    assert line.split(", ")[1] == "?" and line.endswith(", >50K")
