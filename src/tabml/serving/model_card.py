"""GET /model-card: the served model's card, HTML by default, Markdown on request.

The card files (`models/model_card.md` and `.html`, the `model_card` stage) are verified like
the other artifacts: against dvc.lock for a models directory, by the bundle's provenance for a
bundle version. They hold no volatile lineage (they are reproducible DVC outputs), so the
service appends what it knows of the version it serves: version id, md5s, verification,
registered version, git commit. HTML was rendered by the pipeline (`markdown` is not a serving
dependency); the appended table is escaped HTML.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, HTTPException, Query
from fastapi.responses import Response

from tabml.layout import MODEL_CARD_FILE, MODEL_CARD_FILES, MODEL_CARD_HTML_FILE, MODEL_FILE
from tabml.model_card import with_lineage
from tabml.serving import provenance
from tabml.serving.schemas import ErrorResponse

log = logging.getLogger("tabml.serving")

MARKDOWN_TYPE = "text/markdown; charset=utf-8"
HTML_TYPE = "text/html; charset=utf-8"


@dataclass(frozen=True)
class ModelCard:
    """Both forms of one version's card, as the pipeline wrote them (md5-checked)."""

    markdown: str
    html: str


def load_models_dir_card(
    model_dir: Path, dvc_lock: Path, *, allow_mismatch: bool
) -> tuple[ModelCard | None, list[provenance.FileCheck]]:
    """The card of a plain models directory, checked against `dvc_lock` like its artifacts
    (`ArtifactIntegrityError` on a mismatch unless allowed); None if the directory has none
    (a model trained before the card existed)."""
    files = [Path(model_dir) / name for name in MODEL_CARD_FILES]
    if not all(f.is_file() for f in files):
        return None, []
    checks, _ = provenance.verify_artifacts(files, dvc_lock, allow_mismatch=allow_mismatch)
    return _read(files), checks


def load_bundle_card(directory: Path, files: dict[str, str]) -> ModelCard | None:
    """The card of a bundle version whose provenance (verified by `load_bundle`) lists it."""
    if not all(name in files for name in MODEL_CARD_FILES):
        return None
    return _read([Path(directory) / name for name in MODEL_CARD_FILES])


def _read(files: list[Path]) -> ModelCard:
    markdown_file, html_file = files
    return ModelCard(markdown_file.read_text(encoding="utf-8"), html_file.read_text("utf-8"))


def served_lineage(version: Any, git_commit: str | None, data_md5: str | None) -> dict[str, Any]:
    """What the service knows about the version it serves, for the card's last table."""
    found = version.provenance
    registered = found.registered_version if found else None
    return {
        "served version": version.id,
        "model md5": version.files.get(MODEL_FILE),
        "verified": "yes" if version.verified else "no (TABML_ALLOW_MD5_MISMATCH)",
        "registered version": registered and f"{found.registered_model} v{registered}",
        "MLflow run": found.run_id if found else None,
        "git commit": (found.git_commit if found else None) or git_commit,
        "data md5": data_md5,
        "source": str(version.source),
    }


def wants_markdown(format: str | None, accept: str | None) -> bool:
    """`?format=` wins; otherwise Markdown only if the Accept header asks for it."""
    if format is not None:
        return format == "md"
    return "text/markdown" in (accept or "")


def router(service: Any) -> APIRouter:
    routes = APIRouter()

    @routes.get(
        "/model-card",
        tags=["operations"],
        summary="The served model's card: intended use, data, parameters, metrics overall and "
        "per slice, fairness, baseline, limitations, lineage",
        description="HTML by default; Markdown with `?format=md` or `Accept: text/markdown` "
        "(`?format=` wins over the header). `version` picks another served version "
        "(e.g. the challenger); the default is the champion.",
        response_class=Response,
        responses={
            200: {
                "content": {"text/html": {}, "text/markdown": {}},
                "description": "the card, with the serving lineage appended",
            },
            404: {
                "model": ErrorResponse,
                "description": "no such served version, or the version has no model card",
            },
            422: {"model": ErrorResponse, "description": "`format` is neither html nor md"},
        },
    )
    async def model_card(
        format: Annotated[
            Literal["html", "md"] | None, Query(description="html (default) or md")
        ] = None,
        version: Annotated[
            str | None, Query(description="a served version id (default: the champion)")
        ] = None,
        accept: Annotated[str | None, Header()] = None,
    ) -> Response:
        models = service.models
        served = models.champion if version is None else models.get(version)
        if served is None:
            served_ids = [v.id for v in models.versions]
            raise HTTPException(404, f"no served version {version!r}; served: {served_ids}")
        card = served.card
        if card is None:
            raise HTTPException(
                404,
                f"version {served.id} has no model card ({MODEL_CARD_FILE} and "
                f"{MODEL_CARD_HTML_FILE} next to the model; the pipeline's model_card stage "
                "writes them)",
            )
        lineage = served_lineage(served, service.git_commit, service.data_md5(served))
        markdown_card, html_card = with_lineage(
            card.markdown, card.html, "Served by (added by the service)", lineage
        )
        if wants_markdown(format, accept):
            return Response(markdown_card, media_type=MARKDOWN_TYPE)
        return Response(html_card, media_type=HTML_TYPE)

    return routes
