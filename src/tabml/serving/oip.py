"""The Open Inference Protocol (KServe/Seldon "v2") subset: health, model metadata and `infer`
with one named tensor per input column, so the same image runs under those platforms.

Tensors are validated by the same contract-generated record schema as /predict (errors name the
row index and the input), and scored by the same predictor. The request's `parameters` (the
protocol's place for request options) take `explain` and `top_k`, as /predict's query does; the
explanation comes back as one more output, `explanation` (BYTES: one JSON string per row, the
object /predict returns), whatever `outputs` lists.

About 460 lines: the Open Inference Protocol subset is one specification (its request and
response models, tensor conversions, errors, routes and OpenAPI), kept whole so it can be read
against the protocol's text.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from pydantic_core import to_json
from starlette.concurrency import run_in_threadpool

from tabml.contract import DataContract
from tabml.serving.explanations import ExplainOptions, options_from_parameters
from tabml.serving.predictor import Record, RequestRejected
from tabml.serving.routing import (
    MODEL_VERSION_RESPONSE_HEADER,
    BodyReader,
    Handler,
    HandlerResult,
    ShortPath,
)
from tabml.serving.schemas import (
    InferenceRequest,
    InferenceResponse,
    InferenceTensor,
    LiveResponse,
    ModelMetadataResponse,
    OipErrorResponse,
    OutputName,
    ReadyResponse,
    ServerMetadataResponse,
    field_errors,
    inline_schema,
)
from tabml.serving.service import INLINE_BODY_BYTES, PredictionService
from tabml.serving.versions import ModelVersion, ServedModels

INPUT_DATATYPES = {"int": "INT64", "float": "FP64", "category": "BYTES"}
# Any numeric tensor fits a numeric column: its values are what is checked, so an `int` column
# takes an FP64 tensor of integral values (a pandas float column), as /predict takes 13.0.
_NUMERIC = {
    *("INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"),
    *("FP16", "FP32", "FP64"),
}
ACCEPTED_DATATYPES = {"int": _NUMERIC, "float": _NUMERIC, "category": {"BYTES"}}
OUTPUTS: dict[OutputName, str] = {"probability": "FP64", "label": "BYTES"}
#: The output `parameters.explain` adds: per row, the explanation of /predict as a JSON string.
EXPLANATION = "explanation"
OUTPUT_DATATYPES: dict[str, str] = {str(name): kind for name, kind in OUTPUTS.items()}
OUTPUT_DATATYPES[EXPLANATION] = "BYTES"

#: OpenAPI responses of a route, by status
Responses = dict[int | str, dict[str, Any]]


def _error(status: int, message: str, detail: list[dict[str, Any]] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": message}
    if detail is not None:
        body["detail"] = detail
    return JSONResponse(body, status_code=status)


def _reject(field: str | None, message: str, kind: str = "invalid_tensor") -> RequestRejected:
    return RequestRejected(
        422, [{"index": None, "field": field, "type": kind, "message": message}], 1
    )


def _column(tensor: InferenceTensor) -> tuple[list[Any], int]:
    """Values of a [n] or [n, 1] tensor (flat or nested JSON data) and n."""
    shape = tensor.shape
    if not shape or len(shape) > 2 or (len(shape) == 2 and shape[1] != 1) or shape[0] < 0:
        raise _reject(tensor.name, f"shape {shape}: expected [n] or [n, 1] (one value per row)")
    data = tensor.data
    if len(shape) == 2 and data and isinstance(data[0], list):
        if any(not isinstance(row, list) or len(row) != 1 for row in data):
            raise _reject(tensor.name, "nested data must hold one value per row")
        data = [row[0] for row in data]
    if len(data) != shape[0]:
        raise _reject(tensor.name, f"shape {shape} but {len(data)} values")
    return data, shape[0]


def tensors_to_columns(
    contract: DataContract, request: InferenceRequest
) -> tuple[dict[str, list[Any]], int]:
    specs = {c.name: c for c in contract.columns}
    columns: dict[str, list[Any]] = {}
    rows: int | None = None
    for tensor in request.inputs:
        spec = specs.get(tensor.name)
        if spec is None:
            raise _reject(
                tensor.name, "unknown input: not a column of the data contract", "extra_forbidden"
            )
        if tensor.name in columns:
            raise _reject(tensor.name, "input given twice")
        if tensor.datatype.upper() not in ACCEPTED_DATATYPES[spec.type]:
            raise _reject(
                tensor.name,
                f"datatype {tensor.datatype} does not fit a {spec.type} "
                f"column (expected {INPUT_DATATYPES[spec.type]})",
            )
        data, n = _column(tensor)
        if rows is not None and n != rows:
            raise _reject(tensor.name, f"{n} rows, but other inputs have {rows}")
        rows = n
        columns[tensor.name] = data
    assert rows is not None  # InferenceRequest requires at least one input
    missing = [c.name for c in contract.columns if c.name not in columns and not c.nullable]
    if missing:
        raise RequestRejected(
            422,
            [
                {
                    "index": None,
                    "field": name,
                    "type": "missing",
                    "message": "required input is missing",
                }
                for name in missing
            ],
            len(missing),
        )
    return columns, rows


@dataclass(frozen=True)
class ParsedInfer:
    """An infer request validated against the answering version's contract."""

    request: InferenceRequest
    records: list[Record]
    rows: int
    explain: ExplainOptions | None


def parse_infer(body: bytes, version: ModelVersion) -> ParsedInfer:
    """The envelope, the tensors and their values, validated. Raises RequestRejected."""
    try:
        request = InferenceRequest.model_validate_json(body)
    except ValidationError as exc:
        raise _request_errors(exc) from None
    columns, rows = tensors_to_columns(version.model.contract, request)
    records = version.predictor.parse_columns(columns, rows)
    return ParsedInfer(request, records, rows, options_from_parameters(request.parameters))


def score_infer(
    service: PredictionService,
    parsed: ParsedInfer,
    started: float,
    answering: tuple[ServedModels, ModelVersion],
) -> dict[str, Any]:
    """The response to a parsed request: its outputs (and `explanation` if asked for)."""
    models, version = answering
    request, records, rows = parsed.request, parsed.records, parsed.rows
    if parsed.explain is not None:
        service.check_explained(rows)
    service.metrics.observe_batch(rows, version.id)
    wanted: list[str] = [o.name for o in request.outputs] if request.outputs else list(OUTPUTS)
    if parsed.explain is None:
        probabilities = version.score(records)
    else:
        probabilities, explained = version.predictor.predict_explained(records)
        service.metrics.explained_rows.labels(version.id).inc(rows)
        wanted.append(EXPLANATION)
    service.answered(models, version, records, probabilities, started)
    data = {
        "probability": probabilities.tolist(),
        "label": version.predictor.label_of(probabilities),
    }
    if parsed.explain is not None:
        data[EXPLANATION] = [to_json(e).decode() for e in explained.as_dicts(parsed.explain.top_k)]
    outputs = [
        {"name": name, "datatype": OUTPUT_DATATYPES[name], "shape": [rows], "data": data[name]}
        for name in wanted
    ]
    return {
        "model_name": version.name,
        "model_version": version.id,
        "id": request.id,
        "outputs": outputs,
    }


def infer(
    service: PredictionService,
    body: bytes,
    started: float,
    answering: tuple[ServedModels, ModelVersion],
) -> tuple[dict[str, Any], int]:
    """An infer body → (response, rows), scored by the version chosen for the request."""
    parsed = parse_infer(body, answering[1])
    return score_infer(service, parsed, started, answering), parsed.rows


def _request_errors(exc: ValidationError) -> RequestRejected:
    """Errors in the request envelope (not in the values): located by their JSON path."""
    errors = exc.errors(include_url=False)
    if errors and errors[0]["type"] == "json_invalid":
        detail, count = field_errors(exc, single_record=False)
        return RequestRejected(400, detail, count)
    detail = [
        {
            "index": None,
            "field": ".".join(map(str, e["loc"])) or None,
            "type": e["type"],
            "message": e["msg"],
        }
        for e in errors
    ]
    return RequestRejected(422, detail, len(detail))


def _unknown_model_message(
    service: PredictionService, model_name: str, model_version: str | None = None
) -> str | None:
    models = service.models
    if model_name != models.champion.name:
        return f"model {model_name!r} not found; this server serves {models.champion.name!r}"
    if model_version is not None and models.get(model_version) is None:
        served = ", ".join(repr(v.id) for v in models.versions)
        return f"version {model_version!r} of model {model_name!r} not found; serving {served}"
    return None


def _unknown_model(
    service: PredictionService, model_name: str, model_version: str | None = None
) -> JSONResponse | None:
    message = _unknown_model_message(service, model_name, model_version)
    return None if message is None else _error(404, message)


def infer_handler(service: PredictionService) -> Handler:
    async def infer_v2(read_body: BodyReader, params: dict[str, Any], _: bytes) -> HandlerResult:
        started = time.perf_counter()
        unknown = _unknown_model_message(service, **params)
        if unknown is not None:
            return HandlerResult(404, to_json({"error": unknown}))
        # a version named in the path answers; otherwise the route decides, as for /predict
        models, version = service.answering()
        if params.get("model_version") is not None:
            version = models.get(params["model_version"]) or version
        chosen = (models, version)
        try:
            body = await read_body()
            if len(body) <= INLINE_BODY_BYTES:
                parsed = parse_infer(body, version)
                rows = parsed.rows
                if parsed.explain is None:
                    result = score_infer(service, parsed, started, chosen)
                else:  # TreeSHAP: about 2 ms of CPU a row, off the event loop
                    result = await run_in_threadpool(score_infer, service, parsed, started, chosen)
            else:
                result, rows = await run_in_threadpool(infer, service, body, started, chosen)
        except RequestRejected as exc:
            service.count_rejected(exc)
            if isinstance(exc.detail, str):
                return HandlerResult(exc.status, to_json({"error": exc.detail}))
            message = f"{exc.error_count} error(s); first: {_describe(exc.detail[0])}"
            return HandlerResult(exc.status, to_json({"error": message, "detail": exc.detail}))
        return HandlerResult(200, to_json(result), rows, version.id)

    return infer_v2


def short_paths(service: PredictionService) -> list[ShortPath]:
    """The infer endpoints, served on the short path (`tabml.serving.routing`)."""
    handler = infer_handler(service)
    limit = service.settings.max_body_bytes
    return [
        ShortPath("POST", "/v2/models/{model_name}/infer", handler, limit),
        ShortPath("POST", "/v2/models/{model_name}/versions/{model_version}/infer", handler, limit),
    ]


def router(
    service: PredictionService, infer_paths: list[ShortPath], versions: list[str]
) -> APIRouter:
    """The OIP routes; `versions` is the list of served version ids the document shows (the
    app updates it in place after a reload)."""
    api = APIRouter(prefix="/v2", tags=["Open Inference Protocol v2"])
    error: dict[str, Any] = {"model": OipErrorResponse}
    not_found: Responses = {404: {**error, "description": "no such model or version here"}}
    not_ready: Responses = {503: {"model": ReadyResponse, "description": "warm-up not done yet"}}
    contract = service.model.contract

    # Path parameters are documented, not declared: a declared one makes FastAPI document a 422
    # that no request can get (any string is a name), where the protocol answers 404. The one
    # model and version served are their only documented values, so clients and fuzzers see them.
    name = _path_parameter("model_name", [service.name], "the served model")
    version = _path_parameter("model_version", versions, "a version served (champion, challenger)")
    of_model, of_version = {"parameters": [name]}, {"parameters": [name, version]}

    def model_metadata() -> dict[str, Any]:
        return {
            "name": service.name,
            "versions": [v.id for v in service.models.versions],
            "platform": "lightgbm",
            "inputs": [
                {"name": c.name, "datatype": INPUT_DATATYPES[c.type], "shape": [-1]}
                for c in contract.columns
            ],
            "outputs": [
                {"name": name, "datatype": datatype, "shape": [-1]}
                for name, datatype in OUTPUTS.items()
            ],
        }

    def readiness() -> JSONResponse:
        ready = service.readiness.ready
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

    @api.get("", response_model=ServerMetadataResponse, summary="Server metadata")
    async def server_metadata() -> dict[str, Any]:
        return {"name": "tabml", "version": _package_version(), "extensions": []}

    @api.get("/health/live", response_model=LiveResponse, summary="Server is live")
    async def live() -> dict[str, bool]:
        return {"live": True}

    @api.get(
        "/health/ready",
        responses={200: {"model": ReadyResponse}, **not_ready},
        summary="Server is ready (warm-up prediction succeeded)",
    )
    async def server_ready() -> JSONResponse:
        return readiness()

    @api.get(
        "/models/{model_name}",
        response_model=ModelMetadataResponse,
        responses=not_found,
        openapi_extra=of_model,
        summary="Model metadata: input and output tensors",
    )
    async def metadata(request: Request) -> Any:
        return _unknown_model(service, **request.path_params) or model_metadata()

    @api.get(
        "/models/{model_name}/versions/{model_version}",
        response_model=ModelMetadataResponse,
        responses=not_found,
        openapi_extra=of_version,
        summary="Metadata of a model version",
    )
    async def version_metadata(request: Request) -> Any:
        return _unknown_model(service, **request.path_params) or model_metadata()

    @api.get(
        "/models/{model_name}/ready",
        responses={200: {"model": ReadyResponse}, **not_found, **not_ready},
        openapi_extra=of_model,
        summary="Model is ready",
    )
    async def model_ready(request: Request) -> JSONResponse:
        return _unknown_model(service, **request.path_params) or readiness()

    @api.get(
        "/models/{model_name}/versions/{model_version}/ready",
        responses={200: {"model": ReadyResponse}, **not_found, **not_ready},
        openapi_extra=of_version,
        summary="Version is ready",
    )
    async def version_ready(request: Request) -> JSONResponse:
        return _unknown_model(service, **request.path_params) or readiness()

    example = service.examples
    example_request = {
        "id": "42",
        "inputs": [
            {
                "name": c.name,
                "shape": [len(example)],
                "datatype": INPUT_DATATYPES[c.type],
                "data": [r[c.name] for r in example],
            }
            for c in contract.columns
        ],
    }
    model_endpoint, version_endpoint = (path.endpoint() for path in infer_paths)
    responses: Responses = {
        200: {"model": InferenceResponse, "headers": MODEL_VERSION_RESPONSE_HEADER},
        400: {**error, "description": "malformed JSON"},
        **not_found,
        413: {**error, "description": "body or batch too large"},
        422: {**error, "description": "invalid request or values (`detail` names row and input)"},
    }
    body_doc = {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": inline_schema(InferenceRequest),
                    "example": example_request,
                }
            },
        }
    }

    # Routes for OpenAPI; requests normally take the short path to the same handler.
    @api.post(
        "/models/{model_name}/infer",
        response_model=None,
        responses=responses,
        openapi_extra={**of_model, **body_doc},
        summary="Score rows given as one named tensor per input column",
    )
    async def model_infer(request: Request) -> Response:
        return await model_endpoint(request)

    @api.post(
        "/models/{model_name}/versions/{model_version}/infer",
        response_model=None,
        responses=responses,
        openapi_extra={**of_version, **body_doc},
        summary="Score rows with a given model version",
    )
    async def version_infer(request: Request) -> Response:
        return await version_endpoint(request)

    return api


def _path_parameter(name: str, values: list[str], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string", "enum": values},
    }


def _describe(error: dict[str, Any]) -> str:
    where = []
    if error.get("index") is not None:
        where.append(f"row {error['index']}")
    if error.get("field") is not None:
        where.append(f"input {error['field']!r}")
    return f"{', '.join(where) or 'request'}: {error['message']}"


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tabml")
    except PackageNotFoundError:
        return "unknown"
