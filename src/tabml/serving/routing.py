"""A short path for the prediction endpoints.

`POST /predict` and `POST /v2/models/{name}[/versions/{version}]/infer` are dispatched by the
request middleware straight to their handlers, past FastAPI's exception and exit-stack
middlewares, its router and Starlette's Request/Response objects: about 70 µs, a third of the
in-process cost of a single-record request. The same handlers are also mounted as ordinary
FastAPI routes, which document them in OpenAPI and serve them should a request miss the short
path (for instance under a mount prefix).

A handler takes a body reader, the path parameters and the raw query string (b"" when there is
none, so options read from it cost nothing without them) and returns status, JSON body and the
number of rows scored; it turns `RequestRejected` (bad body, too large, invalid records) into
its own error response.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from re import Pattern
from typing import Any

from pydantic_core import to_json
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import compile_path
from starlette.types import Receive, Scope, Send

from tabml.serving.predictor import RequestRejected

JSON_HEADERS = [(b"content-type", b"application/json")]
#: Every prediction response names the model version that answered it.
MODEL_VERSION_HEADER = b"x-model-version"
#: ... and documents it in OpenAPI (the body's `model_version` says the same).
MODEL_VERSION_RESPONSE_HEADER = {
    MODEL_VERSION_HEADER.decode(): {
        "description": "the model version that answered (champion or challenger, as routed)",
        "schema": {"type": "string"},
    }
}


def rejection_body(exc: RequestRejected) -> bytes:
    """The JSON error body of a refused request: `detail`, and `error_count` when counted."""
    body: dict[str, Any] = {"detail": exc.detail}
    if exc.error_count is not None:
        body["error_count"] = exc.error_count
    return to_json(body)


@dataclass(frozen=True)
class HandlerResult:
    status: int
    body: bytes
    rows: int | None = None
    #: the version that answered (`X-Model-Version`), for a prediction
    model_version: str | None = None


BodyReader = Callable[[], Awaitable[bytes]]
Handler = Callable[[BodyReader, dict[str, Any], bytes], Awaitable[HandlerResult]]


def _too_large(limit: int) -> RequestRejected:
    return RequestRejected(
        413, f"request body exceeds the limit of {limit} bytes (TABML_MAX_BODY_BYTES)"
    )


async def receive_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The request body from ASGI messages, refusing (413) more than `limit` bytes."""
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit() and int(value) > limit:
            raise _too_large(limit)
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise RequestRejected(400, "client disconnected before sending the whole body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


@dataclass
class ShortPath:
    """One prediction endpoint: its method and path template, and its handler."""

    method: str
    path: str
    handle: Handler
    max_body_bytes: int
    _regex: Pattern[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._regex = compile_path(self.path)[0]

    def match(self, scope: Scope) -> dict[str, Any] | None:
        """Path parameters if the request is for this endpoint, else None."""
        if scope["method"] != self.method:
            return None
        found = self._regex.match(scope["path"])
        return found.groupdict() if found else None

    async def serve(
        self, scope: Scope, receive: Receive, send: Send, params: dict[str, Any]
    ) -> int | None:
        """Answer the request as a raw ASGI app; returns the rows scored (for the access log)."""
        result = await self.handle(
            lambda: receive_body(scope, receive, self.max_body_bytes),
            params,
            scope.get("query_string", b""),
        )
        headers = [*JSON_HEADERS, (b"content-length", str(len(result.body)).encode())]
        if result.model_version is not None:
            headers.append((MODEL_VERSION_HEADER, result.model_version.encode()))
        await send({"type": "http.response.start", "status": result.status, "headers": headers})
        await send({"type": "http.response.body", "body": result.body})
        return result.rows

    def endpoint(self) -> Callable[[Request], Awaitable[Response]]:
        """The same handler as a Starlette/FastAPI endpoint."""

        async def endpoint(request: Request) -> Response:
            result = await self.handle(
                lambda: receive_body(request.scope, request.receive, self.max_body_bytes),
                dict(request.path_params),
                request.scope.get("query_string", b""),
            )
            if result.rows is not None:
                request.state.rows = result.rows
            headers = (
                {MODEL_VERSION_HEADER.decode(): result.model_version}
                if result.model_version is not None
                else None
            )
            return Response(
                result.body, result.status, headers=headers, media_type="application/json"
            )

        return endpoint
