"""POST /admin/reload: load the bundle (and challenger) again from disk, without downtime.

Off unless `TABML_ADMIN_TOKEN` is set: then the endpoint answers 404 like any unknown path, so
an unconfigured service exposes nothing. With a token, a request must carry
`Authorization: Bearer <token>` (401 otherwise, compared in constant time). The reload itself
(`tabml.serving.reload`) runs in a worker thread: requests keep being answered by the current
versions until the new ones are loaded, verified and warmed up, and a refused reload (409) leaves
them serving. With `--workers N` it reloads only the worker that answers; docs/serving.md says
how to reload them all.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from tabml.serving.reload import ADMIN_PATH, Reloader, admin_reload


class VersionDescription(BaseModel):
    version: str
    model_md5: str
    verified: bool
    source: str
    registered_model: str | None
    registered_version: str | None
    git_commit: str | None


class ServingDescription(BaseModel):
    generation: int = Field(description="0 at start, +1 for every reload that took effect")
    source: str = Field(description="where the versions were read from")
    route: str = Field(description="the configured route: champion, canary:<fraction>, shadow")
    route_from: str = Field(
        description="where the route came from: setting (--route, TABML_ROUTE), bundle.json "
        "(followed on reload) or default"
    )
    effective_route: str = Field(description="what applies: champion when there is no challenger")
    champion: VersionDescription
    challenger: VersionDescription | None


class ReloadResponse(BaseModel):
    reloaded: bool = Field(description="false: refused, the previous versions keep serving")
    trigger: str
    seconds: float = Field(description="time to load, verify and warm up")
    serving: ServingDescription = Field(description="what serves now")
    detail: str | None = Field(None, description="why the reload was refused")


class ReloadRefused(ReloadResponse):
    detail: str = Field(description="why the reload was refused; the previous versions serve")


class AdminError(BaseModel):
    detail: str


#: Documents the bearer scheme in OpenAPI; the header is checked by `reload.admin_refusal`.
_bearer = HTTPBearer(auto_error=False, description="the service's TABML_ADMIN_TOKEN")


def router(reloader: Reloader, token: str | None) -> APIRouter:
    api = APIRouter(tags=["operations"])

    @api.post(
        ADMIN_PATH,
        summary="Reload the model versions from disk (bundle, challenger); needs the admin token",
        response_model=ReloadResponse,
        responses={
            401: {"model": AdminError, "description": "missing or wrong admin token"},
            404: {"model": AdminError, "description": "no admin token configured: endpoint off"},
            409: {
                "model": ReloadRefused,
                "description": "reload refused (e.g. a file fails its md5 check); the previous "
                "versions keep serving",
            },
        },
        dependencies=[Depends(_bearer)],  # documents the scheme; never refuses by itself
    )
    async def reload(request: Request) -> Any:
        authorization = request.headers.get("authorization")
        status, body = await run_in_threadpool(admin_reload, reloader, token, authorization)
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return JSONResponse(body, status_code=status, headers=headers)

    return api
