"""GET /model-card on a real `tabml-serve` (uvicorn on loopback): HTML by default, Markdown on
request, the pipeline's card plus the lineage of the version served, verified like the model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(workspace: Any, start_server: Any) -> Any:
    with start_server(workspace) as server:
        yield server


def _locked_md5(workspace: Any, path: str) -> str:
    lock = yaml.safe_load(workspace.dvc_lock.read_text())
    return next(
        out["md5"]
        for stage in lock["stages"].values()
        for out in stage.get("outs", [])
        if out["path"] == path
    )


def test_html_by_default_is_the_pipelines_card_plus_the_served_lineage(
    server: Any, workspace: Any
) -> None:
    with httpx.Client(base_url=server.url) as http:
        response = http.get("/model-card")
        version = http.get("/metadata").json()["model"]["version"]
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    page = (workspace.models / "model_card.html").read_text()
    head, _, tail = page.rpartition("</body>")
    assert response.text.startswith(head) and response.text.endswith("</body>" + tail)
    served = response.text[len(head) :]
    assert "<h3>Served by (added by the service)</h3>" in served
    assert f"<td>served version</td><td><code>{version}</code></td>" in served
    model_md5 = _locked_md5(workspace, "models/model.txt")
    assert f"<td>model md5</td><td><code>{model_md5}</code></td>" in served
    assert "<td>verified</td><td><code>yes</code></td>" in served
    assert "<script" not in response.text


def test_markdown_by_query_or_accept_header_and_the_query_wins(server: Any, workspace: Any) -> None:
    card = (workspace.models / "model_card.md").read_text().rstrip("\n")
    with httpx.Client(base_url=server.url) as http:
        by_query = http.get("/model-card", params={"format": "md"})
        by_header = http.get("/model-card", headers={"Accept": "text/markdown"})
        query_wins = http.get(
            "/model-card", params={"format": "html"}, headers={"Accept": "text/markdown"}
        )
    for response in (by_query, by_header):
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/markdown; charset=utf-8"
        assert response.text.startswith(card)
        assert "### Served by (added by the service)" in response.text[len(card) :]
    assert by_query.text == by_header.text
    assert query_wins.headers["content-type"].startswith("text/html")
    model_md5 = _locked_md5(workspace, "models/model.txt")
    assert f"| model md5 | `{model_md5}` |" in by_query.text


def test_bad_format_unknown_version_and_openapi(server: Any) -> None:
    with httpx.Client(base_url=server.url) as http:
        bad_format = http.get("/model-card", params={"format": "pdf"})
        unknown = http.get("/model-card", params={"version": "nope"})
        spec = http.get("/openapi.json").json()
    assert bad_format.status_code == 422
    assert bad_format.json()["detail"][0]["field"] == "query.format"
    assert unknown.status_code == 404 and "no served version 'nope'" in unknown.json()["detail"]
    operation = spec["paths"]["/model-card"]["get"]
    assert set(operation["responses"]["200"]["content"]) == {"text/html", "text/markdown"}
    assert {p["name"] for p in operation["parameters"]} >= {"format", "version"}


def test_a_model_without_a_card_answers_404_naming_the_files(
    workspace: Any, tmp_path: Path, start_server: Any
) -> None:
    copy = workspace.copy(tmp_path / "repo")
    (copy.models / "model_card.md").unlink()
    (copy.models / "model_card.html").unlink()
    with start_server(copy) as server, httpx.Client(base_url=server.url) as http:
        response = http.get("/model-card")
        assert http.post("/predict", json={}).status_code == 422  # still serving
    assert response.status_code == 404
    assert "model_card.md" in response.json()["detail"]


def test_a_tampered_card_is_refused_like_a_tampered_model(
    workspace: Any, tmp_path: Path, start_failing_server: Any
) -> None:
    copy = workspace.copy(tmp_path / "repo")
    with (copy.models / "model_card.md").open("a") as card:
        card.write("\nROC AUC 0.99 on every slice.\n")
    result = start_failing_server(copy)
    assert result.returncode == 2
    assert "models/model_card.md: md5" in result.stderr and "dvc.lock" in result.stderr
