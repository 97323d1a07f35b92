"""Under a canary route, an explanation is that of the version that answered: equal, value for
value, to the offline TreeSHAP of that version's model, on /predict and on OIP infer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.model_versions import PREPARED, bundle_of
from tests.serving.champion_challenger.conftest import serve_checkout
from tests.serving.champion_challenger.test_champion_challenger import oip_body, version_id

from tabml.serving.traffic_split import ROUTING_KEY_HEADER

pytestmark = pytest.mark.slow

ROWS = slice(0, 40)


def offline_explanations(checkout: Path) -> list[dict[str, Any]]:
    from tabml.columnar import read_columns
    from tabml.contract import DataContract
    from tabml.explain import RawAttribution
    from tabml.features import FeatureTransform
    from tabml.model import load_booster

    contract = DataContract.load(checkout / "models" / "contract.json")
    transform = FeatureTransform.load(checkout / "models" / "feature_transform.json", contract)
    booster = load_booster(checkout / "models" / "model.txt")
    columns = {k: v[ROWS] for k, v in read_columns(PREPARED / "test.parquet").items()}
    features = transform.transform(columns)
    return RawAttribution(transform.feature_names_).explain(booster, features).as_dicts()


def test_explanations_come_from_the_version_that_answered(
    champion_checkout: Path, challenger_checkout: Path, holdout: Any, tmp_path: Path
) -> None:
    expected = {
        version_id(checkout): offline_explanations(checkout)
        for checkout in (champion_checkout, challenger_checkout)
    }
    champion, challenger = expected
    assert expected[champion] != expected[challenger]
    records = holdout.records[ROWS]
    bundle = bundle_of(tmp_path / "pair", champion_checkout, challenger_checkout)
    seen = set()
    with (
        serve_checkout(champion_checkout, "--bundle", str(bundle), "--route", "canary:0.5") as s,
        httpx.Client(base_url=s.url, timeout=60) as http,
    ):
        for key in (f"customer-{i}" for i in range(12)):
            headers = {ROUTING_KEY_HEADER: key}
            response = http.post("/predict?explain=true", json=records, headers=headers)
            assert response.status_code == 200, response.text
            version = response.headers["x-model-version"]
            seen.add(version)
            got = [p["explanation"] for p in response.json()["predictions"]]
            assert got == expected[version]
            body = {**oip_body(records), "parameters": {"explain": True}}
            infer = http.post("/v2/models/adult/infer", json=body, headers=headers)
            assert infer.headers["x-model-version"] == version  # sticky
            [explanations] = [o for o in infer.json()["outputs"] if o["name"] == "explanation"]
            assert [json.loads(e) for e in explanations["data"]] == expected[version]
    assert seen == {champion, challenger}
