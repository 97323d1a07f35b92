"""Request validation generated from the data contract, and the prediction path behind it."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from tabml.contract import DataContract
from tabml.serving.predictor import Predictor, RequestRejected, TrainedModel


@pytest.fixture(scope="module")
def model(workspace: Any) -> TrainedModel:
    return TrainedModel.load(workspace.models)


@pytest.fixture(scope="module")
def predictor(model: TrainedModel) -> Predictor:
    return Predictor(model, max_batch=50)


@pytest.fixture
def record(test_set: Any) -> dict[str, Any]:
    return dict(test_set.records[2])


def rejected(predictor: Predictor, body: Any) -> RequestRejected:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    with pytest.raises(RequestRejected) as caught:
        predictor.parse_json(raw)
    return caught.value


def only_error(exc: RequestRejected) -> dict[str, Any]:
    assert isinstance(exc.detail, list) and len(exc.detail) == 1, exc.detail
    return exc.detail[0]


def test_schema_has_every_contract_column_with_its_rules(predictor: Predictor) -> None:
    contract = predictor.model.contract
    schema = predictor.Record.model_json_schema()
    assert list(schema["properties"]) == contract.feature_names
    nullable = {c.name for c in contract.columns if c.nullable}
    assert set(schema["required"]) == set(contract.feature_names) - nullable
    age = contract.column("age")
    assert schema["properties"]["age"]["minimum"] == age.min
    assert schema["properties"]["age"]["maximum"] == age.max
    assert schema["additionalProperties"] is False
    assert schema["examples"]  # a real record, shown in /docs


def test_documented_schema_is_the_validated_schema(predictor: Predictor) -> None:
    """Requests are validated as TypedDicts for speed; the model shown in OpenAPI has the same
    fields, types, bounds and required set."""
    from pydantic import TypeAdapter

    from tabml.serving.schemas import record_dict

    documented = predictor.Record.model_json_schema()
    validated = TypeAdapter(record_dict(predictor.model.contract)).json_schema()
    documented.pop("examples")
    for schema in (documented, validated):
        for prop in schema["properties"].values():
            prop.pop("default", None)
    assert validated == documented


def test_valid_record_and_batch(predictor: Predictor, record: dict[str, Any]) -> None:
    assert len(predictor.parse_json(json.dumps(record).encode())) == 1
    assert len(predictor.parse_json(json.dumps([record] * 3).encode())) == 3
    assert len(predictor.parse_json(b"  \n" + json.dumps(record).encode())) == 1


@pytest.mark.parametrize("field", ["workclass", "occupation", "native_country"])
def test_nullable_field_takes_null_or_may_be_omitted(
    predictor: Predictor, record: dict[str, Any], field: str
) -> None:
    assert predictor.model.contract.column(field).nullable
    as_null = predictor.parse_json(json.dumps({**record, field: None}).encode())
    omitted = predictor.parse_json(
        json.dumps({k: v for k, v in record.items() if k != field}).encode()
    )
    assert as_null[0][field] is None and field not in omitted[0]
    assert predictor.predict(as_null)[0] == predictor.predict(omitted)[0]


@pytest.mark.parametrize(
    ("field", "value", "kind", "words"),
    [
        ("age", 16, "greater_than_equal", "out of range"),
        ("age", 101, "less_than_equal", "out of range"),
        ("hours_per_week", 0, "greater_than_equal", "out of range"),
        ("age", "39", "int_type", "wrong type"),
        ("age", 39.5, "int_type", "wrong type"),
        ("education_num", 13.5, "int_type", "wrong type: expected an integer, got float 13.5"),
        ("age", float("inf"), "int_type", "wrong type"),
        ("age", True, "int_type", "wrong type"),
        ("education", 9, "literal_error", "wrong type"),
        ("education", "Bachelor", "literal_error", "unknown category 'Bachelor'"),
        ("sex", "male", "literal_error", "unknown category"),
        ("native_country", "?", "literal_error", "unknown category"),
        ("education", None, "literal_error", "must not be null"),
        ("age", None, "int_type", "must not be null"),
    ],
)
def test_bad_value_is_422_naming_index_and_field(
    predictor: Predictor, record: dict[str, Any], field: str, value: Any, kind: str, words: str
) -> None:
    batch = [record, record, {**record, field: value}]
    error = only_error(rejected(predictor, batch))
    assert (error["index"], error["field"], error["type"]) == (2, field, kind)
    assert words in error["message"]
    single = only_error(rejected(predictor, {**record, field: value}))
    assert (single["index"], single["field"]) == (0, field)


def int_columns(predictor: Predictor) -> list[str]:
    return [c.name for c in predictor.model.contract.columns if c.type == "int"]


def test_integral_floats_in_int_fields_are_those_integers(
    predictor: Predictor, test_set: Any
) -> None:
    """`json.dumps` writes a pandas float column as 13.0, and to JSON Schema 13.0 is an integer:
    it is accepted as 13 and scores exactly as 13 does."""
    big = Predictor(predictor.model, max_batch=1000)
    rows = test_set.records[:1000]
    ints = int_columns(big)
    as_floats = [{**row, **{name: float(row[name]) for name in ints}} for row in rows]
    body = json.dumps(as_floats).encode()
    assert b'"education_num": 13.0,' in body
    records = big.parse_json(body)
    assert records == big.parse_json(json.dumps(rows).encode())
    assert {type(r[name]) for r in records for name in ints} == {int}
    np.testing.assert_array_equal(big.predict(records), test_set.probabilities[:1000])


def test_missing_and_unknown_fields(predictor: Predictor, record: dict[str, Any]) -> None:
    missing = {k: v for k, v in record.items() if k != "education_num"}
    error = only_error(rejected(predictor, [record, missing]))
    assert error == {
        "index": 1,
        "field": "education_num",
        "type": "missing",
        "message": "required field is missing",
    }
    error = only_error(rejected(predictor, [{**record, "income": ">50K"}]))
    assert (error["index"], error["field"], error["type"]) == (0, "income", "extra_forbidden")


def test_every_error_is_reported_with_a_count(predictor: Predictor, record: dict[str, Any]) -> None:
    exc = rejected(predictor, [{**record, "age": 5}, record, {**record, "sex": "?", "age": 500}])
    assert exc.status == 422 and exc.error_count == 3
    assert [(e["index"], e["field"]) for e in exc.detail] == [(0, "age"), (2, "age"), (2, "sex")]


@pytest.mark.parametrize("body", [b"{", b"[1,", b"", b"nope", b'{"age": }'])
def test_malformed_json_is_400(predictor: Predictor, body: bytes) -> None:
    exc = rejected(predictor, body)
    assert exc.status == 400
    assert only_error(exc)["type"] == "json_invalid"


@pytest.mark.parametrize("body", [b"5", b'"x"', b"null", b"[5]", b"[[1]]"])
def test_body_that_is_not_records_is_422(predictor: Predictor, body: bytes) -> None:
    exc = rejected(predictor, body)
    assert exc.status == 422


def test_too_large_and_empty_batches(predictor: Predictor, record: dict[str, Any]) -> None:
    exc = rejected(predictor, [record] * 51)
    assert exc.status == 413
    assert "51 records exceeds the maximum of 50" in exc.detail
    assert len(predictor.parse_json(json.dumps([record] * 50).encode())) == 50
    assert rejected(predictor, []).status == 422


def test_column_input_is_validated_by_row(predictor: Predictor, record: dict[str, Any]) -> None:
    columns = {name: [value, value] for name, value in record.items()}
    assert len(predictor.parse_columns(columns, 2)) == 2
    columns["race"] = ["White", "Martian"]
    with pytest.raises(RequestRejected) as caught:
        predictor.parse_columns(columns, 2)
    error = only_error(caught.value)
    assert (error["index"], error["field"]) == (1, "race")


def test_column_input_takes_integral_floats(predictor: Predictor, test_set: Any) -> None:
    """The OIP path (columns, validated from Python values) follows the same integer rule."""
    rows = test_set.records[:20]
    ints = int_columns(predictor)
    columns = {name: [row[name] for row in rows] for name in rows[0]}
    as_floats = {n: [float(v) for v in col] if n in ints else col for n, col in columns.items()}
    records = predictor.parse_columns(as_floats, 20)
    assert records == predictor.parse_columns(columns, 20)
    np.testing.assert_array_equal(predictor.predict(records), test_set.probabilities[:20])
    as_floats["education_num"] = [*as_floats["education_num"][:19], 13.5]
    with pytest.raises(RequestRejected) as caught:
        predictor.parse_columns(as_floats, 20)
    error = only_error(caught.value)
    assert (error["index"], error["field"], error["type"]) == (19, "education_num", "int_type")
    assert caught.value.status == 422 and "13.5" in error["message"]


def test_prediction_equals_offline_for_every_test_row(predictor: Predictor, test_set: Any) -> None:
    """The in-process path (JSON bytes → records → transform → LightGBM) gives the offline
    probabilities bit for bit."""
    body = json.dumps(test_set.records[:5000]).encode()
    big = Predictor(predictor.model, max_batch=10_000)
    probabilities = big.predict(big.parse_json(body))
    np.testing.assert_array_equal(probabilities, test_set.probabilities[:5000])


def test_category_allowed_but_never_seen_in_training_is_missing(
    workspace: Any, tmp_path: Any, record: dict[str, Any]
) -> None:
    """Policy: a category the contract allows but training never saw is accepted and encoded
    as NaN, the same value the offline transform gives it, so it scores like a null."""
    copy = workspace.copy(tmp_path / "repo")
    contract = DataContract.load(copy.models / "contract.json")
    columns = [
        c.model_copy(update={"categories": [*c.categories, "Atlantis"]})
        if c.name == "native_country"
        else c
        for c in contract.columns
    ]
    contract.model_copy(update={"columns": columns}).save(copy.models / "contract.json")
    predictor = Predictor(TrainedModel.load(copy.models))
    atlantis = predictor.parse_json(json.dumps({**record, "native_country": "Atlantis"}).encode())
    unknown = predictor.parse_json(json.dumps({**record, "native_country": None}).encode())
    assert np.isnan(predictor.encode(atlantis)[0, predictor.feature_names.index("native_country")])
    assert predictor.predict(atlantis)[0] == predictor.predict(unknown)[0]
    offline = predictor.model.transform.transform(
        {k: [v] for k, v in {**record, "native_country": "Atlantis"}.items()}
    )
    np.testing.assert_array_equal(predictor.encode(atlantis), offline)


def test_threshold_decides_the_label(predictor: Predictor, test_set: Any) -> None:
    model = predictor.model
    probabilities = test_set.probabilities[:200]
    label = model.contract.label
    expected = [label.positive if p >= 0.5 else label.negative for p in probabilities]
    assert Predictor(model, threshold=0.5).label_of(probabilities) == expected
    everything = Predictor(model, threshold=0.0).label_of(probabilities)
    assert set(everything) == {label.positive}
