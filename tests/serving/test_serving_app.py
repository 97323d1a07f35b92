"""The FastAPI app in-process (TestClient / httpx on the ASGI app): every endpoint, the error
contract, observability, and start-up refusals."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from tests.support.waiting import wait_for

from tabml.model import ModelFileError
from tabml.serving.app import create_app
from tabml.serving.provenance import ArtifactIntegrityError, read_dvc_lock


def wait_ready(client: TestClient, timeout: float = 10.0) -> None:
    """The warm-up prediction runs in the background after start-up; wait for it."""
    wait_for(lambda: client.get("/ready").status_code == 200, timeout, what="/ready", poll=0.01)


@pytest.fixture(scope="module")
def client(workspace: Any) -> Any:
    with TestClient(create_app(workspace.settings())) as client:
        wait_ready(client)
        yield client


@pytest.fixture
def record(test_set: Any) -> dict[str, Any]:
    return dict(test_set.records[0])


def test_health_and_ready_before_and_after_warm_up(workspace: Any) -> None:
    app = create_app(workspace.settings())
    cold = TestClient(app)  # no lifespan: the warm-up prediction has not run
    assert cold.get("/health").json() == {"status": "alive"}
    response = cold.get("/ready")
    assert response.status_code == 503 and response.json()["ready"] is False
    assert cold.get("/v2/health/ready").status_code == 503
    assert cold.get("/v2/health/live").status_code == 200
    with TestClient(app) as warm:
        wait_ready(warm)
        assert warm.get("/ready").json()["reason"] == "ready"
        assert warm.get("/v2/health/ready").json() == {"ready": True}


def test_predict_one_record_and_a_batch(client: Any, test_set: Any) -> None:
    one = client.post("/predict", json=test_set.records[0])
    assert one.status_code == 200 and one.headers["content-type"] == "application/json"
    body = one.json()
    assert body["model_name"] == "adult" and len(body["model_version"]) == 12
    assert body["predictions"][0]["probability"] == test_set.probabilities[0]
    batch = client.post("/predict", json=test_set.records[:300]).json()["predictions"]
    got = np.array([p["probability"] for p in batch])
    np.testing.assert_array_equal(got, test_set.probabilities[:300])
    labels = {p["label"] for p in batch}
    assert labels == {">50K", "<=50K"}
    assert all((p["label"] == ">50K") == (p["probability"] >= 0.5) for p in batch)


def test_validation_error_names_index_and_field(client: Any, record: dict[str, Any]) -> None:
    response = client.post("/predict", json=[record, {**record, "age": 12}])
    assert response.status_code == 422
    body = response.json()
    assert body["error_count"] == 1
    assert body["detail"][0]["index"] == 1 and body["detail"][0]["field"] == "age"


@pytest.mark.parametrize("body", [b"{", b'[{"age": 30,}]', b"\xff\xfe", b""])
def test_malformed_json_is_400_never_500(client: Any, body: bytes) -> None:
    response = client.post("/predict", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.json()["detail"][0]["type"] == "json_invalid"


def test_too_many_records_is_413(workspace: Any, record: dict[str, Any]) -> None:
    with TestClient(create_app(workspace.settings(max_batch=3))) as small:
        assert small.post("/predict", json=[record] * 3).status_code == 200
        response = small.post("/predict", json=[record] * 4)
        assert response.status_code == 413
        assert "TABML_MAX_BATCH" in response.json()["detail"]
    with TestClient(create_app(workspace.settings(max_body_bytes=2048))) as tight:
        response = tight.post("/predict", json=[record] * 20)
        assert response.status_code == 413 and "bytes" in response.json()["detail"]


def test_request_id_is_echoed_or_made(client: Any, record: dict[str, Any]) -> None:
    echoed = client.post("/predict", json=record, headers={"X-Request-ID": "order-42.a"})
    assert echoed.headers["x-request-id"] == "order-42.a"
    made = client.get("/health").headers["x-request-id"]
    assert len(made) == 32 and made != client.get("/health").headers["x-request-id"]
    # an ID that could break a log line is replaced, not echoed
    odd = client.get("/health", headers={"X-Request-ID": "a b\tc"}).headers["x-request-id"]
    assert odd != "a b\tc" and len(odd) == 32
    assert client.post("/predict", content=b"{").headers["x-request-id"]  # errors carry it too


def test_access_log_carries_request_id(
    client: Any, record: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    from tabml.serving.logs import RequestIdFilter

    with caplog.at_level("INFO", logger="tabml.serving.access"):
        caplog.handler.addFilter(RequestIdFilter())
        client.post("/predict", json=[record, record], headers={"X-Request-ID": "trace-7"})
    (entry,) = [r for r in caplog.records if r.name == "tabml.serving.access"]
    assert entry.request_id == "trace-7"
    assert (entry.status, entry.rows, entry.path) == (200, 2, "/predict")


def test_metadata_reports_provenance(client: Any, workspace: Any) -> None:
    meta = client.get("/metadata").json()
    lock = read_dvc_lock(workspace.dvc_lock)
    assert meta["model"]["md5"] == lock.outputs["models/model.txt"]
    assert meta["model"]["version"] == meta["model"]["md5"][:12]
    assert meta["artifacts"]["verified"] is True
    assert {f["path"] for f in meta["artifacts"]["files"]} == {
        "models/contract.json",
        "models/feature_transform.json",
        "models/model.txt",
        "models/model_metadata.json",
        "models/reference_profile.json",
        "models/model_card.md",
        "models/model_card.html",
    }
    assert meta["data"]["md5"]["data"] == lock.inputs["data"]
    assert "git_commit" in meta
    assert meta["model"]["params"]["objective"] == "binary"
    assert meta["test_metrics"]["rows"] == 16281
    assert "age" in meta["input_schema"]["properties"]
    assert meta["policy"]["nullable_fields"] == ["workclass", "occupation", "native_country"]
    import platform

    import lightgbm

    assert meta["environment"]["python_version"] == platform.python_version()
    assert meta["environment"]["package.lightgbm"] == lightgbm.__version__


def test_metrics_exposition(workspace: Any, test_set: Any) -> None:
    with TestClient(create_app(workspace.settings())) as fresh:
        wait_ready(fresh)
        fresh.post("/predict", json=test_set.records[:10])
        fresh.post("/predict", json=test_set.records[10])
        fresh.post("/predict", json=test_set.records[11:111])  # > 32 rows: bulk histogram update
        fresh.post("/predict", json={**test_set.records[0], "sex": "?"})
        response = fresh.get("/metrics")  # after the monitor process took the requests in
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    samples = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    assert samples['tabml_http_requests_total{method="POST",route="/predict",status="200"}'] == 3
    assert samples['tabml_http_requests_total{method="POST",route="/predict",status="422"}'] == 1
    assert samples['tabml_http_request_duration_seconds_count{route="/predict"}'] == 4
    # prediction series carry the version that answered
    version = f'model_version="{fresh.app.state.service.version}"'
    assert samples[f"tabml_prediction_batch_rows_count{{{version}}}"] == 3
    assert samples[f"tabml_prediction_batch_rows_sum{{{version}}}"] == 111
    assert samples[f"tabml_predicted_rows_total{{{version}}}"] == 111
    assert samples[f'tabml_prediction_score_bucket{{le="+Inf",{version}}}'] == 111
    expected = test_set.probabilities[:111]
    assert samples[f"tabml_prediction_score_sum{{{version}}}"] == pytest.approx(expected.sum())
    for bound in ("0.1", "0.5", "0.9"):
        key = f'tabml_prediction_score_bucket{{le="{bound}",{version}}}'
        assert samples[key] == np.sum(expected <= float(bound))
    assert samples[f"tabml_predicted_positive_total{{{version}}}"] == np.sum(expected >= 0.5)
    assert samples['tabml_background_cpu_seconds_total{task="shadow"}'] == 0  # no challenger
    # the monitor's own CPU (windows, index: the monitor process) reaches the worker's metrics
    assert samples['tabml_background_cpu_seconds_total{task="monitor"}'] > 0
    assert samples['tabml_validation_errors_total{field="sex"}'] == 1
    assert samples["tabml_ready"] == 1
    assert any(k.startswith("tabml_model_info{") and 'model_name="adult"' in k for k in samples)
    assert "process_resident_memory_bytes" in text


def test_open_inference_protocol_v2(client: Any, test_set: Any, workspace: Any) -> None:
    meta = client.get("/v2/models/adult").json()
    assert meta["platform"] == "lightgbm"
    inputs = {t["name"]: t["datatype"] for t in meta["inputs"]}
    assert inputs["age"] == "INT64" and inputs["workclass"] == "BYTES"
    assert [t["name"] for t in meta["outputs"]] == ["probability", "label"]
    version = meta["versions"][0]
    assert client.get(f"/v2/models/adult/versions/{version}").status_code == 200
    assert client.get("/v2/models/adult/ready").status_code == 200
    assert client.get("/v2/models/other").status_code == 404
    assert client.get("/v2").json()["name"] == "tabml"

    rows = test_set.records[:50]
    request = {
        "id": "r1",
        "inputs": [
            {
                "name": name,
                "shape": [len(rows)],
                "datatype": inputs[name],
                "data": [r[name] for r in rows],
            }
            for name in inputs
        ],
    }
    response = client.post("/v2/models/adult/infer", json=request)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == "r1" and body["model_name"] == "adult"
    outputs = {o["name"]: o for o in body["outputs"]}
    assert outputs["probability"]["shape"] == [50] and outputs["probability"]["datatype"] == "FP64"
    np.testing.assert_array_equal(outputs["probability"]["data"], test_set.probabilities[:50])
    assert len(outputs["label"]["data"]) == 50
    versioned = client.post(f"/v2/models/adult/versions/{version}/infer", json=request)
    assert versioned.status_code == 200
    assert client.post("/v2/models/adult/versions/nope/infer", json=request).status_code == 404

    # [n, 1] tensors with nested data, and a requested output subset
    nested = {
        "inputs": [
            {**t, "shape": [50, 1], "data": [[v] for v in t["data"]]} for t in request["inputs"]
        ],
        "outputs": [{"name": "probability"}],
    }
    body = client.post("/v2/models/adult/infer", json=nested).json()
    assert [o["name"] for o in body["outputs"]] == ["probability"]


def test_open_inference_protocol_errors(client: Any, test_set: Any) -> None:
    row = test_set.records[3]
    types = {"int": "INT64", "category": "BYTES"}
    from tabml.contract import DataContract

    contract = DataContract.model_validate(client.app.state.service.model.contract.model_dump())

    def tensors(**changes: Any) -> list[dict[str, Any]]:
        out = []
        for c in contract.columns:
            tensor = {
                "name": c.name,
                "shape": [2],
                "datatype": types[c.type],
                "data": [row[c.name], row[c.name]],
            }
            tensor.update(changes.get(c.name, {}))
            out.append(tensor)
        return out

    def error(inputs: list[dict[str, Any]]) -> tuple[int, dict[str, Any]]:
        response = client.post("/v2/models/adult/infer", json={"inputs": inputs})
        return response.status_code, response.json()

    status, body = error(tensors(age={"data": [30, 5]}))
    assert status == 422 and body["detail"][0]["index"] == 1
    assert body["detail"][0]["field"] == "age" and "row 1" in body["error"]
    status, body = error(tensors(age={"datatype": "BYTES"}))
    assert status == 422 and body["detail"][0]["field"] == "age"
    status, body = error(tensors(age={"shape": [3]}))
    assert status == 422 and "shape" in body["error"]
    status, body = error([t for t in tensors() if t["name"] != "sex"])
    assert status == 422 and body["detail"][0]["field"] == "sex"
    status, body = error([t for t in tensors() if t["name"] != "workclass"])
    assert status == 200  # nullable input may be left out
    status, body = error(
        [*tensors(), {"name": "income", "shape": [2], "datatype": "BYTES", "data": ["a", "b"]}]
    )
    assert status == 422 and body["detail"][0]["field"] == "income"
    response = client.post("/v2/models/adult/infer", content=b"{")
    assert response.status_code == 400 and "error" in response.json()
    response = client.post("/v2/models/adult/infer", json={"inputs": "x"})
    assert response.status_code == 422
    response = client.post(
        "/v2/models/adult/infer", json={"inputs": tensors(), "outputs": [{"name": "score"}]}
    )
    assert response.status_code == 422 and response.json()["detail"][0]["field"] == "outputs.0.name"


def test_openapi_documents_contract_schema_and_examples(client: Any) -> None:
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
    assert set(body["examples"]) == {"one record", "batch"}
    assert body["examples"]["one record"]["value"]["education"] == "Assoc-acdm"
    one, many = body["schema"]["oneOf"]
    assert "native_country" in one["properties"] and many["maxItems"] == 10_000
    assert "/v2/models/{model_name}/infer" in spec["paths"]
    assert client.get("/docs").status_code == 200


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [ref for item in node for ref in _refs(item)]
    return []


def _target(spec: dict[str, Any], ref: str) -> Any:
    """What a local reference (`#/a/b`) points at in `spec`, or None if nothing."""
    node: Any = spec
    for part in ref.removeprefix("#/").split("/"):
        if not ref.startswith("#/") or not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def test_openapi_has_no_dangling_reference(client: Any) -> None:
    """Schemas pasted in by hand (request bodies) keep no `#/$defs/...` of their own models."""
    spec = client.get("/openapi.json").json()
    refs = set(_refs(spec))
    assert "#/components/schemas/FieldError" in refs
    assert [ref for ref in sorted(refs) if _target(spec, ref) is None] == []
    infer = spec["paths"]["/v2/models/{model_name}/infer"]["post"]["requestBody"]
    tensor = infer["content"]["application/json"]["schema"]["properties"]["inputs"]["items"]
    assert tensor["required"] == ["name", "shape", "datatype", "data"]


def test_openapi_documents_each_error_body_as_sent(client: Any) -> None:
    """Open Inference Protocol routes answer errors as {"error": ...}, /predict as
    {"detail": ...}: every documented 4xx says which."""
    spec = client.get("/openapi.json").json()
    documented = 0
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if status.startswith("4"):
                    ref = response["content"]["application/json"]["schema"]["$ref"]
                    key = "error" if path.startswith("/v2/") else "detail"
                    assert key in _target(spec, ref)["required"], (method, path, status)
                    documented += 1
    # /predict: 400, 413, 422; model metadata and readiness: 404; both infer: 400, 404, 413, 422;
    # /feedback: 400, 404, 409, 413, 422; /admin/reload: 401, 404, 409; /model-card: 404, 422
    assert documented == 3 + 4 + 2 * 4 + 5 + 3 + 2


def test_unknown_model_or_version_is_a_documented_404(client: Any) -> None:
    spec = client.get("/openapi.json").json()
    version = client.get("/v2/models/adult").json()["versions"][0]
    templates = [p for p in spec["paths"] if "{model_name}" in p]
    assert len(templates) == 6
    for template in templates:
        (method,) = spec["paths"][template]
        wrong = [template.format(model_name="other", model_version=version)]
        if "{model_version}" in template:
            wrong.append(template.format(model_name="adult", model_version="nope"))
        for url in wrong:
            response = client.request(method, url, json={"inputs": []})
            assert response.status_code == 404, url
            assert set(response.json()) == {"error"} and "not found" in response.json()["error"]
        assert "404" in spec["paths"][template][method]["responses"], template


def test_infer_takes_integral_floats_for_int_inputs(client: Any, test_set: Any) -> None:
    """An FP64 tensor of integral values (a pandas float column) fits an INT64 input and
    scores as the integers do; a fractional value is refused naming row and input."""
    contract = client.app.state.service.model.contract
    rows = test_set.records[:30]
    inputs = [
        {
            "name": c.name,
            "shape": [30],
            "datatype": "FP64" if c.type == "int" else "BYTES",
            "data": [float(r[c.name]) if c.type == "int" else r[c.name] for r in rows],
        }
        for c in contract.columns
    ]
    response = client.post("/v2/models/adult/infer", json={"inputs": inputs})
    assert response.status_code == 200, response.text
    probability = response.json()["outputs"][0]["data"]
    np.testing.assert_array_equal(probability, test_set.probabilities[:30])
    (education_num,) = [t for t in inputs if t["name"] == "education_num"]
    education_num["data"][7] = 13.5
    response = client.post("/v2/models/adult/infer", json={"inputs": inputs})
    body = response.json()
    assert response.status_code == 422 and body["error"].startswith("1 error(s); first: row 7")
    assert body["detail"][0]["field"] == "education_num" and "13.5" in body["error"]


def test_concurrent_single_records_are_scored_exactly(workspace: Any, test_set: Any) -> None:
    """Concurrent small requests are coalesced into shared scoring calls; each still gets its
    own row's offline probability."""
    app = create_app(workspace.settings())
    rows = list(range(0, 4000, 7))

    async def run() -> list[float]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            responses = await asyncio.gather(
                *(http.post("/predict", json=test_set.records[i]) for i in rows)
            )
        return [r.json()["predictions"][0]["probability"] for r in responses]

    got = asyncio.run(run())
    np.testing.assert_array_equal(got, test_set.probabilities[rows])


def test_fastapi_routes_serve_the_same_handlers(workspace: Any, test_set: Any) -> None:
    """Under a mount prefix the short path does not match; the FastAPI routes (the ones in
    OpenAPI) then serve the same handlers, with the same answers and errors."""
    from starlette.applications import Starlette
    from starlette.routing import Mount

    service_app = create_app(workspace.settings())
    outer = Starlette(routes=[Mount("/api", app=service_app)])
    with TestClient(outer) as http:
        body = http.post("/api/predict", json=test_set.records[:20]).json()
        got = [p["probability"] for p in body["predictions"]]
        np.testing.assert_array_equal(got, test_set.probabilities[:20])
        assert http.post("/api/predict", content=b"{").status_code == 400
        bad = http.post("/api/predict", json=[test_set.records[0], {}])
        assert bad.status_code == 422 and bad.json()["detail"][0]["index"] == 1
        inputs = [
            {
                "name": k,
                "shape": [1],
                "datatype": "BYTES" if isinstance(v, str) else "INT64",
                "data": [v],
            }
            for k, v in test_set.records[0].items()
        ]
        infer = http.post("/api/v2/models/adult/infer", json={"inputs": inputs})
        assert infer.json()["outputs"][0]["data"] == [test_set.probabilities[0]]
        assert http.post("/api/v2/models/other/infer", json={"inputs": inputs}).status_code == 404
        metrics = http.get("/api/metrics").text
    assert 'route="/predict",status="200"' in metrics


def test_threshold_override(workspace: Any, test_set: Any) -> None:
    with TestClient(create_app(workspace.settings(threshold=0.0, model_version="v7"))) as c:
        body = c.post("/predict", json=test_set.records[:5]).json()
    assert body["threshold"] == 0.0 and body["model_version"] == "v7"
    assert {p["label"] for p in body["predictions"]} == {">50K"}


# Start-up refusals -----------------------------------------------------------------------


def test_missing_model_file_is_named(workspace: Any, tmp_path: Path) -> None:
    copy = workspace.copy(tmp_path / "repo")
    (copy.models / "model.txt").unlink()
    with pytest.raises(ModelFileError, match=r"models/model\.txt does not exist"):
        create_app(copy.settings())


def test_corrupt_model_file_is_named(workspace: Any, tmp_path: Path) -> None:
    copy = workspace.copy(tmp_path / "repo")
    (copy.models / "model.txt").write_text("tree\nnot a model\n")
    with pytest.raises(ArtifactIntegrityError, match=r"models/model\.txt: md5"):
        create_app(copy.settings())
    with pytest.raises(ModelFileError, match=r"models/model\.txt is corrupt"):
        create_app(copy.settings(allow_md5_mismatch=True))


def test_profile_without_monitor_settings_is_refused(workspace: Any, tmp_path: Path) -> None:
    """The service takes its window sizes and thresholds from the verified profile only."""
    copy = workspace.copy(tmp_path / "repo")
    profile = copy.models / "reference_profile.json"
    profile.write_text(
        json.dumps({k: v for k, v in json.loads(profile.read_text()).items() if k != "monitor"})
    )
    with pytest.raises(
        ModelFileError, match=r"reference_profile\.json carries no monitor settings"
    ):
        create_app(copy.settings(allow_md5_mismatch=True))


def test_metadata_reports_the_monitoring_settings(client: Any, workspace: Any) -> None:
    monitoring = client.get("/metadata").json()["monitoring"]
    profile = json.loads((workspace.models / "reference_profile.json").read_text())
    assert monitoring["settings"] == profile["monitor"]  # conf/monitor, through the pipeline
    assert monitoring["live"] is True and monitoring["prediction_log_dir"] is None


def test_the_log_queue_must_hold_the_largest_batch(workspace: Any) -> None:
    with pytest.raises(ValueError, match=r"prediction_log_queue \(20000\) is below max_batch"):
        workspace.settings(max_batch=30_000)


def test_corrupt_json_artifact_is_named(workspace: Any, tmp_path: Path) -> None:
    copy = workspace.copy(tmp_path / "repo")
    (copy.models / "feature_transform.json").write_text("{")
    with pytest.raises(ModelFileError, match=r"feature_transform\.json is corrupt"):
        create_app(copy.settings(allow_md5_mismatch=True))


def test_md5_mismatch_refused_unless_allowed(workspace: Any, tmp_path: Path) -> None:
    copy = workspace.copy(tmp_path / "repo")
    metadata = copy.models / "model_metadata.json"
    state = json.loads(metadata.read_text())
    metadata.write_text(json.dumps({**state, "threshold": 0.4}, indent=1))
    with pytest.raises(ArtifactIntegrityError, match=r"models/model_metadata\.json: md5 \w+ != "):
        create_app(copy.settings())
    with TestClient(create_app(copy.settings(allow_md5_mismatch=True))) as client:
        meta = client.get("/metadata").json()
        assert meta["artifacts"]["verified"] is False
        assert meta["model"]["threshold"] == 0.4
        assert client.post("/predict", json={}).status_code == 422


def test_missing_dvc_lock_refused_unless_allowed(workspace: Any, tmp_path: Path) -> None:
    copy = workspace.copy(tmp_path / "repo")
    copy.dvc_lock.unlink()
    with pytest.raises(ArtifactIntegrityError, match=r"dvc\.lock"):
        create_app(copy.settings())
    app = create_app(copy.settings(allow_md5_mismatch=True))
    assert TestClient(app).get("/metadata").json()["artifacts"]["verified"] is False
