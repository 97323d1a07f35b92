"""The workspace's trained model (models/ after `python src/train.py`, frozen and checked against
dvc.lock) and the prepared splits its behaviour is measured on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tests.artifacts import REPO_ROOT, snapshot_serving_artifacts
from tests.model.behaviour import Model

PREPARED = REPO_ROOT / "artifacts" / "prepared"


@pytest.fixture(scope="session")
def model(pipeline_outputs: Path, tmp_path_factory: pytest.TempPathFactory) -> Model:
    try:
        frozen = snapshot_serving_artifacts(tmp_path_factory.mktemp("behaviour") / "repo")
    except RuntimeError as exc:
        pytest.fail(str(exc))
    return Model.load(frozen / "models")


@pytest.fixture(scope="session")
def held_out(pipeline_outputs: Path) -> dict[str, Any]:
    """The test split (UCI's adult.test), typed by the contract: never seen in training."""
    from tabml.columnar import read_columns

    return read_columns(PREPARED / "test.parquet")


@pytest.fixture(scope="session")
def training(pipeline_outputs: Path) -> dict[str, Any]:
    from tabml.columnar import read_columns

    return read_columns(PREPARED / "train.parquet")
