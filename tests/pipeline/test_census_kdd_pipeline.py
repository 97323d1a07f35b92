"""A second dataset through the same pipeline, on a real git + DVC repo: a census-KDD sample
(6,000 + 3,000 rows of the pinned files) as its own dataset beside Adult. Switching datasets
and back restores each one's model from DVC's run cache instead of retraining it, `dvc.lock`
stays reproducible, and `tabml-serve` serves whichever dataset was trained last."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
from tests.support.census_kdd import census_raw_files, lock_stage_data, write_sized_dataset
from tests.support.project import dvc, run, train
from tests.support.served_model import offline_predictions, serving

pytestmark = pytest.mark.slow

NAME = "census_kdd_sample"


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _output(result) -> str:  # type: ignore[no-untyped-def]
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def two_datasets(trained_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the Adult-trained clone with the sample dataset committed beside it."""
    root = tmp_path_factory.mktemp("census")
    repo = Path(shutil.copytree(trained_repo, root / "repo", symlinks=True))
    write_sized_dataset(repo, NAME, census_raw_files(root / "raw"), 6000, 3000, seed=16)
    run(["git", "add", "-A"], cwd=repo)
    run(["git", "commit", "--quiet", "-m", f"dataset {NAME}"], cwd=repo)
    return repo


def test_switching_datasets_and_back_retrains_nothing(
    two_datasets: Path,
) -> None:
    repo = two_datasets
    adult_model, adult_lock = _md5(repo / "models" / "model.txt"), (repo / "dvc.lock").read_text()
    data_dvc = (repo / "data.dvc").read_text()

    first = train(repo, f"dataset={NAME}")
    assert "Running stage 'train'" in _output(first)
    census_model, census_lock = _md5(repo / "models" / "model.txt"), (repo / "dvc.lock").read_text()
    assert census_model != adult_model
    assert f"datasets/{NAME}" in lock_stage_data(repo)  # the lock names the dataset's data
    assert "data" not in lock_stage_data(repo)
    assert f"registered tabml-{NAME} v1" in first.stdout  # its own registered model
    assert (repo / "data.dvc").read_text() == data_dvc  # Adult's data version untouched

    back = train(repo)  # Adult again: validate reruns (its outputs persist), the rest is cached
    assert "Running stage 'validate'" in _output(back)
    for stage in ("prepare", "featurize", "train", "baseline", "evaluate", "profile"):
        assert f"Stage '{stage}' is cached" in _output(back), stage
        assert f"Running stage '{stage}'" not in _output(back), stage
    assert _md5(repo / "models" / "model.txt") == adult_model
    assert (repo / "dvc.lock").read_text() == adult_lock
    run(["git", "diff", "--exit-code", "dvc.lock", "params.yaml"], cwd=repo)
    assert "already logged" in back.stdout  # MLflow holds both models: nothing logged again
    assert "Missing cache files" not in back.stderr  # a push names the current dataset only

    again = train(repo, f"dataset={NAME}")
    assert "Running stage 'train'" not in _output(again)
    assert _md5(repo / "models" / "model.txt") == census_model
    assert (repo / "dvc.lock").read_text() == census_lock


def test_the_second_datasets_lock_is_reproducible_and_served_with_parity(
    two_datasets: Path,
) -> None:
    repo = two_datasets
    train(repo, f"dataset={NAME}")
    lock = (repo / "dvc.lock").read_text()
    dvc(repo, "repro", "--force")
    assert (repo / "dvc.lock").read_text() == lock  # byte-identical on a forced rerun

    records, offline = offline_predictions(repo)
    assert len(records) == 3000
    with serving(repo) as url, httpx.Client(base_url=url, timeout=60) as http:
        model = http.get("/metadata").json()["model"]
        assert model["dataset"] == NAME and len(model["feature_names"]) == 40
        served: list[float] = []
        for start in range(0, len(records), 1000):
            response = http.post("/predict", json=records[start : start + 1000])
            assert response.status_code == 200, response.text
            served += [p["probability"] for p in response.json()["predictions"]]
        assert np.array_equal(served, offline)
        bad = dict(records[0], education="Kindergarten")
        refused = http.post("/predict", json=bad)
        assert refused.status_code == 422
        assert "education" in refused.text
        # the ignored survey weight is no request field either
        assert http.post("/predict", json=dict(records[0], instance_weight=1.0)).status_code == 422
