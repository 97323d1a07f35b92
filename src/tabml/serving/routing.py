"""Request plumbing shared by the routes: bounded body reading, and plain Starlette routes for
the hot endpoints (see `tabml.serving.app`)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.routing import Match, Route
from starlette.types import Scope

from tabml.serving.predictor import RequestRejected


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) more than `limit` bytes without reading them all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestRejected(
            413,
            f"request body of {declared} bytes exceeds the limit of "
            f"{limit} bytes (TABML_MAX_BODY_BYTES)",
        )
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestRejected(
                413, f"request body exceeds the limit of {limit} bytes (TABML_MAX_BODY_BYTES)"
            )
        chunks.append(chunk)
    return b"".join(chunks)


class FastRoute(Route):
    """A Starlette route that records itself in the scope, like FastAPI's routes do, so the
    request metrics label it with its path template."""

    def matches(self, scope: Scope) -> tuple[Match, dict[str, Any]]:
        match, child_scope = super().matches(scope)
        if match is not Match.NONE:
            child_scope["route"] = self
        return match, child_scope
