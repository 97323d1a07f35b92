"""The FastAPI app: `create_app(settings)` loads and verifies the model, then wires the routes.

Routes are thin: they move bytes between HTTP and `PredictionService`. The prediction body is
read and validated straight from bytes by pydantic-core (no intermediate `json.loads`, no
pandas), and the OpenAPI document still shows the contract-generated schema with real examples.
The prediction endpoints take a short path through the request middleware
(`tabml.serving.routing`; off with TABML_SHORT_PATH=false); their FastAPI routes document them
and are the fallback.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from tabml.serving import admin, feedback, model_card, oip, reload
from tabml.serving.explanations import QUERY_PARAMETERS, options_from_query
from tabml.serving.middleware import RequestContextMiddleware
from tabml.serving.predictor import RequestRejected
from tabml.serving.routing import (
    MODEL_VERSION_RESPONSE_HEADER,
    BodyReader,
    Handler,
    HandlerResult,
    ShortPath,
    rejection_body,
)
from tabml.serving.schemas import ErrorResponse, PredictionResponse, inline_schema, one_or_many_body
from tabml.serving.service import PredictionService
from tabml.serving.settings import ServingSettings


def _predict_openapi(service: PredictionService) -> dict[str, Any]:
    record = inline_schema(service.predictor.Record)
    examples = service.examples
    return {
        "parameters": QUERY_PARAMETERS,
        "requestBody": one_or_many_body(
            record,
            service.predictor.max_batch,
            {
                "one record": {
                    "summary": "One record (a row of the test set)",
                    "value": examples[0],
                },
                "batch": {
                    "summary": "A batch; null marks a missing value in a nullable field",
                    "value": examples,
                },
            },
        ),
    }


def predict_handler(service: PredictionService) -> Handler:
    """POST /predict: one JSON object (one record) or an array of up to TABML_MAX_BATCH
    records, keyed by the raw input columns. Errors name the record index and field.
    `?explain=true[&top_k=K]` adds explanations (`tabml.serving.explanations`)."""

    async def predict(read_body: BodyReader, params: dict[str, Any], query: bytes) -> HandlerResult:
        started = time.perf_counter()
        try:
            explain = options_from_query(query)
            content, rows, version = await service.predict_json_async(
                await read_body(), started, explain
            )
        except RequestRejected as exc:
            service.count_rejected(exc)
            return HandlerResult(exc.status, rejection_body(exc))
        return HandlerResult(200, content, rows, version)

    return predict


def short_paths(service: PredictionService) -> list[ShortPath]:
    limit = service.settings.max_body_bytes
    return [
        ShortPath("POST", "/predict", predict_handler(service), limit),
        *oip.short_paths(service),
    ]


def prediction_router(service: PredictionService, predict: ShortPath) -> APIRouter:
    router = APIRouter()
    errors = {"model": ErrorResponse}
    router.add_api_route(
        "/predict",
        predict.endpoint(),
        methods=["POST"],
        tags=["prediction"],
        response_model=None,
        openapi_extra=_predict_openapi(service),
        summary="Probability and label for one record or a batch of raw records",
        responses={
            200: {
                "model": PredictionResponse,
                "headers": {**feedback.REQUEST_ID_RESPONSE_HEADER, **MODEL_VERSION_RESPONSE_HEADER},
                "links": feedback.links(service.model.contract),
            },
            400: errors,
            413: errors,
            422: errors,
        },
    )

    @router.get("/health", tags=["operations"], summary="The process is alive")
    async def health() -> dict[str, str]:
        return {"status": "alive"}

    @router.get(
        "/ready",
        tags=["operations"],
        summary="Model loaded and a warm-up prediction succeeded (503 before)",
        responses={503: {"description": "not ready yet (or warm-up failed)"}},
    )
    async def ready() -> JSONResponse:
        state = service.readiness
        body = {
            "ready": state.ready,
            "reason": state.reason,
            "model_name": service.name,
            "model_version": service.version,
        }
        return JSONResponse(body, status_code=200 if state.ready else 503)

    @router.get(
        "/metadata",
        tags=["operations"],
        summary="Model identity and provenance: md5 vs dvc.lock, git commit, data md5, "
        "parameters, test metrics, input schema",
    )
    async def metadata() -> dict[str, Any]:
        return service.metadata()

    @router.get(
        "/metrics", tags=["operations"], summary="Prometheus metrics", response_class=Response
    )
    async def metrics() -> Response:
        await run_in_threadpool(service.monitor.refresh)  # waits for the monitor process
        return Response(service.metrics.exposition(), media_type=service.metrics.content_type)

    return router


def create_app(settings: ServingSettings | None = None) -> FastAPI:
    """Build the service for `settings` (default: from TABML_* environment variables).

    Loading fails loudly: a missing or corrupt artifact raises an error naming the file, and
    artifacts whose md5 differs from `dvc.lock` are refused unless allowed. /ready turns 200
    once the warm-up prediction, started with the server, has succeeded.
    """
    settings = settings or ServingSettings()
    service = PredictionService.load(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        service.monitor.start()
        service.shadow.start(loop)
        reload.install_sighup(service.reloader, loop)
        warm_up = asyncio.ensure_future(run_in_threadpool(service.warm_up))
        yield
        reload.remove_sighup(loop)
        await warm_up
        # After the last request (uvicorn's graceful shutdown): score the queued shadow copies,
        # then write the queued log events.
        service.shadow.stop()
        service.monitor.stop()
        service.metrics.process_exiting()

    app = FastAPI(title="tabml prediction service", lifespan=lifespan)
    versions: list[str] = []  # the version ids the OpenAPI document lists: those served now
    _describe(app, service, versions)
    app.state.service = service
    predict, *infer = short_paths(service)
    app.include_router(prediction_router(service, predict))
    app.include_router(oip.router(service, infer, versions))
    app.include_router(admin.router(service.reloader, _secret(settings)))
    app.include_router(model_card.router(service))
    serving = service.reloader.on_swap

    def swapped(old: Any, new: Any) -> None:
        if serving is not None:
            serving(old, new)
        _describe(app, service, versions)  # the OpenAPI document names the versions served

    service.reloader.on_swap = swapped
    app.include_router(
        feedback.router(
            service.model.contract,
            service.monitor,
            settings.max_batch,
            settings.max_body_bytes,
        )
    )
    app.add_middleware(
        RequestContextMiddleware,
        metrics=service.metrics,
        short_paths=[predict, *infer] if settings.short_path else [],
    )

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        detail = [
            {
                "index": None,
                "field": ".".join(map(str, e["loc"])),
                "type": e["type"],
                "message": e["msg"],
            }
            for e in exc.errors()
        ]
        return JSONResponse({"detail": detail, "error_count": len(detail)}, status_code=422)

    return app


def _describe(app: FastAPI, service: PredictionService, documented: list[str]) -> None:
    models = service.models
    versions = ", ".join(f"{role} {version}" for role, version in models.roles().items())
    app.version = service.version
    app.summary = (
        f"Predictions of model '{service.name}' ({versions}; route {models.effective_route}), "
        "identical to offline ones; validation from the training data contract."
    )
    documented[:] = [version.id for version in models.versions]
    app.openapi_schema = None  # regenerated on the next request for it


def _secret(settings: ServingSettings) -> str | None:
    return settings.admin_token.get_secret_value() if settings.admin_token else None
