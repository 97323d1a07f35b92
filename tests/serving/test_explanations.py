"""Explanations on the service as it runs (real uvicorn on loopback): `?explain=true&top_k=K`
on /predict and `parameters.explain` on OIP infer. Additivity over thousands of held-out rows,
top_k, the unchanged default response, and the 422s for bad parameters."""

from __future__ import annotations

import json
import math
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.slow

#: every 8th test row: 2,036 held-out rows (TreeSHAP takes about 2 ms of CPU a row here)
STRIDE = 8
BATCH = 250
TOLERANCE = 1e-9


@pytest.fixture(scope="module")
def server(workspace: Any, start_server: Any) -> Any:
    with start_server(workspace) as server:
        yield server


def logit(p: float) -> float:
    return math.log(p) - math.log1p(-p)


def explained(http: httpx.Client, records: list[dict[str, Any]], query: str) -> list[Any]:
    predictions = []
    for start in range(0, len(records), BATCH):
        response = http.post(f"/predict?{query}", json=records[start : start + BATCH])
        assert response.status_code == 200, response.text
        predictions.extend(response.json()["predictions"])
    return predictions


def test_contributions_plus_base_value_equal_the_logit_of_the_probability(
    server: Any, test_set: Any
) -> None:
    rows = list(range(0, len(test_set.records), STRIDE))
    records = [test_set.records[i] for i in rows]
    features = set(records[0])
    with httpx.Client(base_url=server.url, timeout=120) as http:
        predictions = explained(http, records, "explain=true")
    assert len(predictions) == len(rows) > 2000
    errors = []
    for prediction, expected in zip(predictions, test_set.probabilities[rows], strict=True):
        assert prediction["probability"] == expected  # the same probability as without
        explanation = prediction["explanation"]
        contributions = explanation["contributions"]
        assert {c["feature"] for c in contributions} == features and len(contributions) == 14
        margin = explanation["base_value"] + math.fsum(c["value"] for c in contributions)
        errors.append(abs(margin - logit(prediction["probability"])))
    print(f"max |base + sum - logit(p)| over {len(rows)} rows: {max(errors):.2e}")
    assert max(errors) <= TOLERANCE
    # the explanation is not a constant: the largest contribution differs between rows
    assert len({p["explanation"]["contributions"][0]["feature"] for p in predictions}) >= 4


def test_top_k_returns_the_k_largest_contributions(server: Any, test_set: Any) -> None:
    records = test_set.records[:400:4]
    with httpx.Client(base_url=server.url, timeout=60) as http:
        everything = explained(http, records, "explain=true&top_k=0")
        three = explained(http, records, "explain=true&top_k=3")
        many = explained(http, records, "explain=true&top_k=1000")
    for whole, top in zip(everything, three, strict=True):
        sizes = [abs(c["value"]) for c in whole["explanation"]["contributions"]]
        assert sizes == sorted(sizes, reverse=True)
        assert top["explanation"]["contributions"] == whole["explanation"]["contributions"][:3]
        assert top["explanation"]["base_value"] == whole["explanation"]["base_value"]
    assert many == everything
    with httpx.Client(base_url=server.url, timeout=30) as http:
        exposition = http.get("/metrics").text
    explained_rows = [
        float(line.split()[-1])
        for line in exposition.splitlines()
        if line.startswith("tabml_explained_rows_total{")
    ]
    assert sum(explained_rows) >= 3 * len(records)


def test_the_default_response_is_unchanged(server: Any, test_set: Any) -> None:
    """Without explain=true the body is byte for byte what /predict always returned."""
    records = test_set.records[:5]
    with httpx.Client(base_url=server.url, timeout=30) as http:
        plain = http.post("/predict", json=records)
        metadata = http.get("/metadata").json()["model"]
        for query in ("explain=false", "top_k=3", "unrelated=1"):
            assert http.post(f"/predict?{query}", json=records).content == plain.content
        single = http.post("/predict", json=records[0]).content
    threshold = metadata["threshold"]
    predictions = [
        {"probability": p, "label": ">50K" if p >= threshold else "<=50K"}
        for p in test_set.probabilities[:5].tolist()
    ]

    def expected(rows: list[Any]) -> bytes:
        body = {
            "model_name": metadata["name"],
            "model_version": metadata["version"],
            "threshold": threshold,
            "predictions": rows,
        }
        return json.dumps(body, separators=(",", ":")).encode()

    assert plain.content == expected(predictions)
    assert single == expected(predictions[:1])


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("explain=true&top_k=-1", "top_k"),
        ("explain=true&top_k=2.5", "top_k"),
        ("explain=true&top_k=all", "top_k"),
        ("explain=sure", "explain"),
    ],
)
def test_bad_parameters_are_a_422_naming_them(
    server: Any, test_set: Any, query: str, field: str
) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as http:
        response = http.post(f"/predict?{query}", json=test_set.records[0])
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["field"] == field and f"query parameter '{field}'" in error["message"]


def test_explaining_more_than_the_limit_is_a_413(server: Any, test_set: Any) -> None:
    """TABML_MAX_EXPLAIN_BATCH (1,000): an explained record costs about 2 ms of CPU."""
    with httpx.Client(base_url=server.url, timeout=60) as http:
        ok = http.post("/predict?explain=true", json=test_set.records[:1000])
        too_many = http.post("/predict?explain=true", json=test_set.records[:1001])
        plain = http.post("/predict", json=test_set.records[:1001])
        infer = http.post(
            "/v2/models/adult/infer", json=oip_request(test_set.records[:1001], {"explain": True})
        )
    assert ok.status_code == 200 and len(ok.json()["predictions"]) == 1000
    assert too_many.status_code == 413
    assert "1001 records exceeds the maximum of 1000 explained" in too_many.json()["detail"]
    assert "TABML_MAX_EXPLAIN_BATCH" in too_many.json()["detail"]
    assert plain.status_code == 200
    assert infer.status_code == 413 and "TABML_MAX_EXPLAIN_BATCH" in infer.json()["error"]


def oip_request(records: list[dict[str, Any]], parameters: dict[str, Any]) -> dict[str, Any]:
    def datatype(name: str) -> str:
        return "BYTES" if any(isinstance(r[name], str) for r in records) else "INT64"

    return {
        "parameters": parameters,
        "inputs": [
            {
                "name": name,
                "shape": [len(records)],
                "datatype": datatype(name),
                "data": [r[name] for r in records],
            }
            for name in records[0]
        ],
    }


def test_oip_infer_explains_through_request_parameters(server: Any, test_set: Any) -> None:
    records = test_set.records[100:160]
    with httpx.Client(base_url=server.url, timeout=60) as http:
        predicted = explained(http, records, "explain=true&top_k=2")
        infer = http.post(
            "/v2/models/adult/infer",
            json=oip_request(records, {"explain": True, "top_k": 2, "content_type": "pd"}),
        )
        assert infer.status_code == 200, infer.text
        outputs = {o["name"]: o for o in infer.json()["outputs"]}
        only = http.post(
            "/v2/models/adult/infer",
            json={
                **oip_request(records, {"explain": True}),
                "outputs": [{"name": "probability"}],
            },
        ).json()["outputs"]
        plain = http.post("/v2/models/adult/infer", json=oip_request(records, {"explain": False}))
        bad = http.post(
            "/v2/models/adult/infer", json=oip_request(records, {"explain": True, "top_k": -1})
        )
        not_bool = http.post(
            "/v2/models/adult/infer", json=oip_request(records, {"explain": "yes"})
        )
    assert list(outputs) == ["probability", "label", "explanation"]
    explanation = outputs["explanation"]
    assert explanation["datatype"] == "BYTES" and explanation["shape"] == [len(records)]
    assert [json.loads(e) for e in explanation["data"]] == [p["explanation"] for p in predicted]
    assert outputs["probability"]["data"] == [p["probability"] for p in predicted]
    assert [o["name"] for o in only] == ["probability", "explanation"]
    assert len(json.loads(only[1]["data"][0])["contributions"]) == 14
    assert [o["name"] for o in plain.json()["outputs"]] == ["probability", "label"]
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["field"] == "parameters.top_k"
    assert not_bool.status_code == 422
    assert not_bool.json()["detail"][0]["field"] == "parameters.explain"


def test_explanations_are_documented_in_openapi(server: Any) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as http:
        document = http.get("/openapi.json").json()
    parameters = {p["name"]: p for p in document["paths"]["/predict"]["post"]["parameters"]}
    assert parameters["explain"]["schema"] == {"type": "boolean", "default": False}
    assert parameters["top_k"]["schema"]["minimum"] == 0
    schemas = document["components"]["schemas"]
    assert "explanation" in schemas["Prediction"]["properties"]
    assert set(schemas["Explanation"]["properties"]) == {"base_value", "contributions"}
    infer = document["paths"]["/v2/models/{model_name}/infer"]["post"]
    body = infer["requestBody"]["content"]["application/json"]["schema"]
    [options] = [s for s in body["properties"]["parameters"]["anyOf"] if s.get("type") == "object"]
    assert set(options["properties"]) == {"explain", "top_k"}
