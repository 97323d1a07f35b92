"""Request and response bodies. The record schema is generated from the data contract, the same
object the pipeline's validate stage enforces, so the API cannot drift from training.

Policy (consistent with how training treats the raw data):
- every contract column is a field; unknown fields are rejected (a typo would otherwise be lost);
- numbers are strict: `int` columns take JSON integers, and numbers with no fractional part as
  that integer (13.0: what `json.dumps` writes for a pandas float column, and an integer to JSON
  Schema); `float` columns integers or finite decimals; booleans, numeric strings and fractions
  (in `int` columns) are wrong types; values outside the contract's [min, max] are rejected;
- a categorical value must be one of the contract's categories (exact, case-sensitive);
  a category the contract allows but the training split never contained is accepted and encoded
  as missing (NaN), exactly as the offline feature transform does;
- nullable columns (the raw data's missing marker, "?") take JSON null or may be omitted; other
  columns must be present and non-null.

About 340 lines: the request and response models and the error items are generated from the
contract in one place, so the validated schema and the documented one cannot drift apart.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal, NotRequired

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    Strict,
    ValidationError,
    create_model,
    with_config,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, core_schema
from typing_extensions import TypedDict

from tabml.contract import ColumnSpec, DataContract

MAX_REPORTED_ERRORS = 100


class IntegralNumber:
    """An integer as JSON Schema's "integer" means it: a JSON integer or a number with no
    fractional part (13.0 becomes 13, so it scores exactly like 13), within [ge, le].

    Booleans, strings, fractions and non-finite numbers are `int_type` errors, as under
    `Strict()`. Built from pydantic-core validators alone, so no Python runs per value.
    """

    def __init__(self, ge: int | None = None, le: int | None = None) -> None:
        self.ge, self.le = ge, le

    def _bounded(self) -> CoreSchema:
        return core_schema.int_schema(ge=self.ge, le=self.le)

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        integral_float = core_schema.chain_schema(
            [core_schema.float_schema(strict=True, allow_inf_nan=False), core_schema.int_schema()]
        )
        number = core_schema.union_schema(
            [core_schema.int_schema(strict=True), integral_float], custom_error_type="int_type"
        )
        return core_schema.chain_schema([number, self._bounded()])

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return handler(self._bounded())


Integer = Annotated[int, IntegralNumber()]


def _annotation(spec: ColumnSpec) -> Any:
    bounds = {"ge": spec.min, "le": spec.max}
    if spec.type == "category":
        annotation: Any = Literal[tuple(spec.categories or ())]  # type: ignore[valid-type]
    elif spec.type == "int":
        ge = None if spec.min is None else math.ceil(spec.min)
        le = None if spec.max is None else math.floor(spec.max)
        annotation = Annotated[int, IntegralNumber(ge, le)]
    else:
        annotation = Annotated[float, Strict(), Field(allow_inf_nan=False, **bounds)]
    return annotation | None if spec.nullable else annotation


def _description(spec: ColumnSpec) -> str:
    parts = [f"{spec.type}"]
    if spec.min is not None or spec.max is not None:
        parts.append(f"range [{spec.min}, {spec.max}]")
    if spec.type == "category":
        parts.append(f"one of {len(spec.categories or ())} categories")
    parts.append("null allowed (missing)" if spec.nullable else "required, non-null")
    return "; ".join(parts)


def record_model(contract: DataContract, example: dict[str, Any] | None = None) -> type[BaseModel]:
    """A pydantic model of one raw input record, field by field from the contract: the schema
    of `/predict` in OpenAPI and `/metadata`."""
    fields: dict[str, Any] = {}
    for spec in contract.columns:
        default = None if spec.nullable else ...
        fields[spec.name] = (_annotation(spec), Field(default, description=_description(spec)))
    config = ConfigDict(
        extra="forbid",
        frozen=True,
        title="PredictionRecord",
        json_schema_extra={"examples": [example]} if example else None,
    )
    return create_model("PredictionRecord", __config__=config, **fields)


def record_dict(contract: DataContract) -> type:
    """The same record as a TypedDict, with the same field annotations as `record_model`:
    requests are validated into plain dicts, which is faster than model instances (a
    1,000-record batch: 2.6 ms instead of 4.3 ms) and lays out as columns faster."""
    fields: dict[str, Any] = {}
    for spec in contract.columns:
        annotation = Annotated[_annotation(spec), Field(description=_description(spec))]
        fields[spec.name] = NotRequired[annotation] if spec.nullable else annotation
    record = TypedDict("PredictionRecord", fields)  # type: ignore[operator]
    return with_config(ConfigDict(extra="forbid", title="PredictionRecord"))(record)


class Contribution(BaseModel):
    feature: str = Field(description="a raw input column")
    value: float = Field(description="its TreeSHAP contribution to the logit of the probability")


class Explanation(BaseModel):
    base_value: float = Field(description="the model's expected logit, before any feature")
    contributions: list[Contribution] = Field(
        description="largest |value| first; all of them plus base_value equal the logit of "
        "the probability (only the top_k largest when top_k is given)"
    )


class Prediction(BaseModel):
    probability: float = Field(description="probability of the positive class")
    label: str = Field(description="class at the configured threshold")
    explanation: Explanation | None = Field(
        None, description="only with ?explain=true: why, by raw input column (TreeSHAP)"
    )


class PredictionResponse(BaseModel):
    model_name: str
    model_version: str
    threshold: float
    predictions: list[Prediction] = Field(description="one per input record, in input order")


class FieldError(BaseModel):
    index: int | None = Field(description="position of the record in the request (0 for one)")
    field: str | None = Field(description="the offending field, if the error is about one")
    type: str = Field(description="machine-readable error kind (pydantic's error type)")
    message: str
    input: Any = Field(None, description="the rejected value, when it is a scalar")


class ErrorResponse(BaseModel):
    detail: list[FieldError] | str
    error_count: int | None = None


class OipErrorResponse(BaseModel):
    """An Open Inference Protocol error: the protocol's `error` string, plus this server's
    per-field `detail` when the error is about the values."""

    error: str
    detail: list[FieldError] | None = None


class InferenceTensor(BaseModel):
    """A named tensor of the Open Inference Protocol v2 (REST, JSON `data` in row-major order)."""

    name: str
    shape: list[Integer]
    datatype: str
    data: list[Any]
    parameters: dict[str, Any] | None = None


#: The outputs of `infer`, one tensor each.
OutputName = Literal["probability", "label"]


class RequestedOutput(BaseModel):
    name: OutputName
    parameters: dict[str, Any] | None = None


class InferenceParameters(BaseModel):
    """Request parameters of `infer`: the explanation option, and any others (ignored)."""

    model_config = ConfigDict(extra="allow")

    explain: Annotated[bool, Strict()] = Field(
        False,
        description="add the output `explanation`: per row, a JSON string of the TreeSHAP "
        "explanation by raw input column, as /predict?explain=true gives it",
    )
    top_k: Annotated[int, IntegralNumber(ge=0)] | None = Field(
        None,
        description="with explain: only the K largest |contributions| (0 or absent: all)",
    )


class InferenceRequest(BaseModel):
    id: str | None = None
    parameters: InferenceParameters | None = None
    inputs: list[InferenceTensor] = Field(min_length=1)
    outputs: list[RequestedOutput] | None = None


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[InferenceTensor]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadataResponse(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class ServerMetadataResponse(BaseModel):
    name: str
    version: str
    extensions: list[str]


class LiveResponse(BaseModel):
    live: bool


class ReadyResponse(BaseModel):
    ready: bool


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """`model`'s JSON schema with its `$defs` put in place of their references.

    For a fragment pasted into the OpenAPI document as is (`openapi_extra`): there a
    `#/$defs/...` reference would point at the document's root, where nothing is defined.
    The models here are not recursive.
    """
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                siblings = {key: value for key, value in node.items() if key != "$ref"}
                return {**inline(defs[node["$ref"].rsplit("/", 1)[-1]]), **siblings}
            return {key: inline(value) for key, value in node.items()}
        if isinstance(node, list):
            return [inline(item) for item in node]
        return node

    return inline(schema)


# Error translation: pydantic's errors → one entry per (record index, field) with a plain message.


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, bool | int | float | str)


def _message(error: dict[str, Any], field: str | None) -> str:
    kind, value = error["type"], error.get("input")
    if kind == "missing":
        return "required field is missing"
    if kind == "extra_forbidden":
        return "unknown field: not a column of the data contract"
    if value is None and field is not None:
        return "must not be null"
    if kind == "literal_error":
        if not isinstance(value, str):
            return f"wrong type: expected a category string, got {type(value).__name__}"
        return f"unknown category {value!r}; allowed: {error['ctx']['expected']}"
    if kind in ("int_type", "float_type", "int_from_float"):
        expected = "an integer" if kind != "float_type" else "a number"
        return f"wrong type: expected {expected}, got {type(value).__name__} {value!r}"
    if kind in ("greater_than_equal", "less_than_equal", "finite_number"):
        return f"out of range: {error['msg'].lower()}, got {value!r}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return "each record must be a JSON object"
    return str(error["msg"])


def field_errors(exc: ValidationError, *, single_record: bool) -> tuple[list[dict[str, Any]], int]:
    """Readable errors naming record index and field; at most MAX_REPORTED_ERRORS, plus the count.

    `single_record`: the body was one object, so error locations start at the field.
    """
    errors = exc.errors(include_url=False)
    described = []
    for error in errors[:MAX_REPORTED_ERRORS]:
        loc = list(error["loc"])
        index: int | None = 0 if single_record and error["type"] != "json_invalid" else None
        if not single_record and loc and isinstance(loc[0], int):
            index = loc.pop(0)
        field = str(loc[0]) if loc else None
        entry: dict[str, Any] = {
            "index": index,
            "field": field,
            "type": error["type"],
            "message": _message(error, field),
        }
        value = error.get("input")
        if error["type"] != "missing" and _is_scalar(value):
            entry["input"] = value
        described.append(entry)
    return described, len(errors)


def one_or_many_body(
    item: dict[str, Any], max_items: int, examples: dict[str, Any]
) -> dict[str, Any]:
    """The OpenAPI request body of an endpoint taking one JSON object or an array of up to
    `max_items` of them (/predict, /feedback), with named examples."""
    many = {"type": "array", "items": item, "minItems": 1, "maxItems": max_items}
    return {
        "required": True,
        "content": {"application/json": {"schema": {"oneOf": [item, many]}, "examples": examples}},
    }
