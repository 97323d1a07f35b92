"""Per-request bookkeeping as a plain ASGI middleware (cheaper than Starlette's BaseHTTPMiddleware):
request ID in and out, access log line, request metrics, and a JSON 500 that never loses the ID;
the routing key (`X-Routing-Key`) made available to the version choice (`traffic_split`).
It also dispatches the prediction endpoints on their short path (`tabml.serving.routing`)."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tabml.serving import logs, traffic_split
from tabml.serving.metrics import ServiceMetrics
from tabml.serving.routing import ShortPath

access_log = logging.getLogger("tabml.serving.access")
error_log = logging.getLogger("tabml.serving.error")

_HEADER = logs.REQUEST_ID_HEADER.encode()
_ROUTING_KEY = traffic_split.ROUTING_KEY_HEADER.lower().encode()


class RequestContextMiddleware:
    def __init__(
        self, app: ASGIApp, metrics: ServiceMetrics, short_paths: list[ShortPath] | None = None
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.short_paths = short_paths or []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        incoming = key = None
        for name, value in scope["headers"]:
            if name == _HEADER:
                incoming = value.decode("latin-1")
            elif name == _ROUTING_KEY:
                key = value
        request_id = logs.accept_or_make_request_id(incoming)
        token = logs.request_id.set(request_id)
        key_token = traffic_split.routing_key.set(key)
        header = (_HEADER, request_id.encode())
        response: dict[str, Any] = {"status": 500, "started": False}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                response["status"] = message["status"]
                response["started"] = True
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        short, params, rows = None, None, None
        for candidate in self.short_paths:
            params = candidate.match(scope)
            if params is not None:
                short = candidate
                break
        try:
            if short is not None:
                rows = await short.serve(scope, receive, send_with_id, params or {})
            else:
                await self.app(scope, receive, send_with_id)
        except Exception:
            error_log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            if not response["started"]:
                body = json.dumps({"detail": "internal error", "request_id": request_id}).encode()
                await send_with_id(
                    {
                        "type": "http.response.start",
                        "status": 500,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                        ],
                    }
                )
                await send_with_id({"type": "http.response.body", "body": body})
        finally:
            seconds = time.perf_counter() - started
            if short is not None:
                template = short.path
            else:
                template = getattr(scope.get("route"), "path", None) or "(unmatched)"
                rows = scope.get("state", {}).get("rows")
            status = response["status"]
            self.metrics.observe_request(template, scope["method"], status, seconds)
            extra: dict[str, Any] = {
                "method": scope["method"],
                "path": scope["path"],
                "status": status,
                "duration_ms": round(seconds * 1e3, 3),
            }
            if rows is not None:
                extra["rows"] = rows
            access_log.info("%s %s %s", scope["method"], scope["path"], status, extra=extra)
            logs.request_id.reset(token)
            traffic_split.routing_key.reset(key_token)
