"""POST /feedback: true labels for recorded predictions, which feed the realized metrics.

A prediction's response carries its request ID (`x-request-id`); a label names it, plus the
record's position in the request for a batch. The body is one label or a list, validated like
/predict (errors name the item and field) and applied all or nothing: unknown predictions are a
404, labels already given a 409, each naming the item, and then nothing is recorded.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, create_model
from pydantic_core import to_json
from starlette.concurrency import run_in_threadpool

from tabml.contract import DataContract
from tabml.serving.label_join import FeedbackLabel
from tabml.serving.live_monitor import LiveMonitor
from tabml.serving.logs import REQUEST_ID_HEADER, REQUEST_ID_PATTERN
from tabml.serving.predictor import RequestRejected
from tabml.serving.routing import BodyReader, Handler, HandlerResult, ShortPath, rejection_body
from tabml.serving.schemas import (
    ErrorResponse,
    IntegralNumber,
    field_errors,
    inline_schema,
    one_or_many_body,
)

OPERATION_ID = "post_feedback"

#: How a prediction response documents the ID its labels must name.
REQUEST_ID_RESPONSE_HEADER = {
    REQUEST_ID_HEADER: {
        "description": "the request's ID (the caller's, if well-formed): label the prediction "
        "with it on POST /feedback",
        "schema": {"type": "string", "pattern": REQUEST_ID_PATTERN},
    }
}


def links(contract: DataContract) -> dict[str, Any]:
    """OpenAPI links from a prediction response to the label of its first record."""
    return {
        "label the prediction": {
            "operationId": OPERATION_ID,
            "description": "Send the true label of record 0 once it is known.",
            "requestBody": {
                "request_id": f"$response.header.{REQUEST_ID_HEADER}",
                "label": contract.label.positive,
                "index": 0,
            },
        }
    }


class FeedbackResponse(BaseModel):
    recorded: int = Field(description="labels recorded (all of the request's)")


def feedback_item_model(contract: DataContract, max_batch: int) -> type[BaseModel]:
    """One label, its values from the data contract."""
    label = contract.label
    fields: dict[str, Any] = {
        "request_id": (
            str,
            Field(
                pattern=REQUEST_ID_PATTERN,
                description="the `x-request-id` response header of the prediction request",
            ),
        ),
        "label": (
            Literal[label.negative, label.positive],
            Field(description="the true class of the record"),
        ),
        "index": (
            Annotated[int, IntegralNumber(0, max_batch - 1)],
            Field(0, description="position of the record in that request (0 for one record)"),
        ),
    }
    config = ConfigDict(extra="forbid", frozen=True, title="FeedbackItem")
    return create_model("FeedbackItem", __config__=config, **fields)


class FeedbackParser:
    def __init__(self, contract: DataContract, max_batch: int) -> None:
        self.item = feedback_item_model(contract, max_batch)
        self.max_batch = max_batch
        many: Any = Annotated[list[self.item], Field(min_length=1, max_length=max_batch)]  # type: ignore[name-defined]
        self._one: TypeAdapter[Any] = TypeAdapter(self.item)
        self._many: TypeAdapter[list[Any]] = TypeAdapter(many)
        label = contract.label
        self._labels = (label.negative, label.positive)

    def parse(self, body: bytes) -> list[FeedbackLabel]:
        start = body.lstrip()[:1]
        single = start == b"{"
        try:
            items = [self._one.validate_json(body)] if single else self._many.validate_json(body)
        except ValidationError as exc:
            raise self._rejected(exc, single) from None
        return [FeedbackLabel(i.request_id, i.index, i.label) for i in items]

    def _rejected(self, exc: ValidationError, single: bool) -> RequestRejected:
        errors = exc.errors(include_url=False, include_input=False)
        if errors and errors[0]["loc"] == () and errors[0]["type"] == "too_long":
            return RequestRejected(413, f"more than {self.max_batch} labels (TABML_MAX_BATCH)")
        detail, count = field_errors(exc, single_record=single)
        for entry in detail:
            if entry["field"] == "label" and entry["type"] == "literal_error":
                entry["message"] = f"unknown label; allowed: {' or '.join(map(repr, self._labels))}"
            elif entry["type"] == "extra_forbidden":
                entry["message"] = "unknown field: a label has request_id, label and index"
            elif entry["type"] in ("model_type", "list_type"):
                entry["message"] = "the body must be a label object or a list of them"
        if detail and detail[0]["type"] == "json_invalid":
            return RequestRejected(400, detail, count)
        return RequestRejected(422, detail, count)


def feedback_handler(parser: FeedbackParser, monitor: LiveMonitor) -> Handler:
    async def feedback(read_body: BodyReader, params: dict[str, Any], _: bytes) -> HandlerResult:
        try:
            labels = parser.parse(await read_body())
            recorded = await run_in_threadpool(monitor.record_feedback, labels)
        except RequestRejected as exc:
            return HandlerResult(exc.status, rejection_body(exc))
        return HandlerResult(200, to_json({"recorded": recorded}))

    return feedback


def router(contract: DataContract, monitor: LiveMonitor, max_batch: int, limit: int) -> APIRouter:
    parser = FeedbackParser(contract, max_batch)
    path = ShortPath("POST", "/feedback", feedback_handler(parser, monitor), limit)
    item = inline_schema(parser.item)
    label = contract.label
    example = {"request_id": "3f9c2a7e1b8d4c6fa0e5d2b1c4a7f9e0", "label": label.positive}
    examples = {
        "one label": {"summary": "The label of a one-record request", "value": example},
        "batch": {
            "summary": "Labels of records 0 and 2 of a batch request",
            "value": [{**example, "index": 0}, {**example, "index": 2, "label": label.negative}],
        },
    }
    body = {"requestBody": one_or_many_body(item, max_batch, examples)}
    errors = {"model": ErrorResponse}
    api = APIRouter()
    api.add_api_route(
        "/feedback",
        path.endpoint(),
        methods=["POST"],
        operation_id=OPERATION_ID,
        tags=["monitoring"],
        response_model=None,
        openapi_extra=body,
        summary="True labels of recorded predictions (feed the realized accuracy and ROC AUC)",
        description=(
            "Every item names a prediction by the `x-request-id` header of its response and the "
            "record's `index` in that request. Applied all or nothing: a request with an unknown "
            "prediction (never recorded, sampled out, or older than the feedback index holds) "
            "gets 404, one with a label already given 409; `detail` names each such item."
        ),
        responses={
            200: {"model": FeedbackResponse},
            400: {**errors, "description": "malformed JSON"},
            404: {**errors, "description": "an item names no recent recorded prediction"},
            409: {**errors, "description": "an item's prediction is already labelled"},
            413: {**errors, "description": "body or list too large"},
            422: {**errors, "description": "invalid items (`detail` names item and field)"},
            503: {**errors, "description": "live monitoring is off"},
        },
    )
    return api
