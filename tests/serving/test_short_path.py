"""The short path (`tabml.serving.routing`): POST /predict and the v2 infer endpoints dispatched by
the request middleware past FastAPI's routing, kept because it is measurably faster
(docs/DESIGN-NOTES.md). It must answer every request exactly as FastAPI's routing of the same
routes does (`TABML_SHORT_PATH=false`): whatever is added to those routes later and runs only
under FastAPI's routing (a dependency such as auth or a rate limit, an exception handler for what
one raises) changes FastAPI's answers and fails the comparison here, instead of being skipped
silently. The last tests show that the comparison catches exactly that, and that middleware (the
place for request-wide concerns) sees the short path's requests."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient
from starlette.types import Message, Receive, Scope, Send
from tests.support.waiting import wait_for

from tabml.serving import app as app_module
from tabml.serving.app import create_app
from tabml.serving.routing import ShortPath

TOKEN = "t0ken"
#: Sent with the GETs (/ready, /v2/models/adult), which the auth of the last tests also guards.
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# Small limits, so that both 413s (too many records, too many bytes) are among the requests.
LIMITS = {"max_batch": 5, "max_body_bytes": 4096}


@pytest.fixture
def short_path_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths the short path answered (its `serve`, observed and called through)."""
    calls: list[str] = []
    serve = ShortPath.serve

    async def observed(self: ShortPath, *args: Any) -> int | None:
        calls.append(self.path)
        return await serve(self, *args)

    monkeypatch.setattr(ShortPath, "serve", observed)
    return calls


def oip_request(records: list[dict[str, Any]], datatypes: dict[str, str]) -> dict[str, Any]:
    return {
        "id": "r1",
        "inputs": [
            {
                "name": name,
                "shape": [len(records)],
                "datatype": datatype,
                "data": [r[name] for r in records],
            }
            for name, datatype in datatypes.items()
        ],
    }


def requests(client: TestClient, test_set: Any) -> list[tuple[str, dict[str, Any]]]:
    """One of each answer the short-path endpoints give: 200 (explained too), 400, 404, 413
    (twice), 422 (a bad query parameter too)."""
    meta = client.get("/v2/models/adult", headers=AUTH).json()
    version, datatypes = meta["versions"][0], {t["name"]: t["datatype"] for t in meta["inputs"]}
    one, few = test_set.records[0], test_set.records[:4]
    infer = {"json": oip_request(few, datatypes)}
    return [
        ("/predict", {"json": one}),
        ("/predict?explain=true&top_k=3", {"json": few}),
        ("/predict?explain=maybe", {"json": one}),
        ("/predict", {"json": few, "headers": {"Authorization": "Bearer wrong"}}),
        ("/predict", {"json": [one, {**one, "age": 12}]}),
        ("/predict", {"json": []}),
        ("/predict", {"content": b"{", "headers": {"Content-Type": "application/json"}}),
        ("/predict", {"json": test_set.records[:6]}),
        ("/predict", {"json": test_set.records[:40]}),
        ("/v2/models/adult/infer", infer),
        (f"/v2/models/adult/versions/{version}/infer", infer),
        ("/v2/models/adult/versions/nope/infer", infer),
        ("/v2/models/other/infer", infer),
    ]


def answers(app: FastAPI, test_set: Any) -> list[tuple[Any, ...]]:
    """Each request's status, the headers clients read, and the JSON body."""
    with TestClient(app) as client:
        ready = "/ready answering 200"
        wait_for(lambda: client.get("/ready", headers=AUTH).status_code == 200, 30, what=ready)
        result = []
        for i, (path, kwargs) in enumerate(requests(client, test_set)):
            headers = {"X-Request-ID": f"req-{i}", **kwargs.get("headers", {})}
            body = {k: v for k, v in kwargs.items() if k != "headers"}
            response = client.post(path, headers=headers, **body)
            result.append(
                (
                    path,
                    response.status_code,
                    response.headers.get("content-type"),
                    response.headers.get("x-model-version"),
                    response.headers.get("x-request-id"),
                    response.json(),
                )
            )
        return result


def test_short_path_answers_exactly_as_fastapi_routing(
    workspace: Any, test_set: Any, short_path_calls: list[str]
) -> None:
    fast = answers(create_app(workspace.settings(**LIMITS)), test_set)
    assert len(short_path_calls) == len(fast)  # every one of them took the short path
    short_path_calls.clear()
    routed = answers(create_app(workspace.settings(**LIMITS, short_path=False)), test_set)
    assert short_path_calls == []
    assert {status for _, status, *_ in fast} == {200, 400, 404, 413, 422}
    for a, b in zip(fast, routed, strict=True):
        assert a == b


class Unauthorized(Exception):
    pass


def require_token(request: Request) -> None:
    if request.headers.get("authorization") != f"Bearer {TOKEN}":
        raise Unauthorized


def test_the_comparison_fails_when_a_dependency_would_be_skipped(
    workspace: Any, test_set: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Auth added to /predict as FastAPI users add it (a router dependency raising an exception
    that an exception handler turns into 401) runs under FastAPI's routing only: the answers
    differ, so the test above would fail, naming the request."""
    unguarded = app_module.prediction_router

    def guarded(*args: Any) -> APIRouter:
        router = APIRouter(dependencies=[Depends(require_token)])
        router.include_router(unguarded(*args))
        return router

    monkeypatch.setattr(app_module, "prediction_router", guarded)

    def app(**settings: Any) -> FastAPI:
        built = create_app(workspace.settings(**LIMITS, **settings))

        async def unauthorized(_: Request, exc: Exception) -> JSONResponse:
            return JSONResponse({"error": "unauthorized"}, status_code=401)

        built.add_exception_handler(Unauthorized, unauthorized)
        return built

    fast, routed = answers(app(), test_set), answers(app(short_path=False), test_set)
    assert fast[0][1] == 200  # skipped on the short path ...
    assert routed[0][1] == 401 and routed[0][-1] == {"error": "unauthorized"}  # ... not here
    assert fast != routed


class Audited:
    """A pure ASGI middleware that marks every response, as an auth or audit middleware would
    see every request."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def marked(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-audited", b"yes")]
            await send(message)

        await self.app(scope, receive, marked)


def test_middleware_added_to_the_app_sees_short_path_requests(
    workspace: Any, test_set: Any, short_path_calls: list[str]
) -> None:
    app = create_app(workspace.settings())
    app.add_middleware(Audited)
    with TestClient(app) as client:
        wait_for(lambda: client.get("/ready").status_code == 200, 30, what="/ready answering 200")
        response = client.post("/predict", json=test_set.records[0])
    assert response.status_code == 200 and response.headers["x-audited"] == "yes"
    assert short_path_calls == ["/predict"]
