"""Two real model versions for champion/challenger tests: the session's trained artifacts
(copied and checked against their dvc.lock, without running the pipeline) and a second booster
trained from them in about a second (`tests.support.model_versions`), with the held-out test
rows and each version's offline probabilities for them."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.serving.conftest import Server, Workspace, serve
from tests.support.artifacts import snapshot_serving_artifacts
from tests.support.model_versions import PREPARED, train_challenger


@pytest.fixture(scope="session")
def champion_checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """models/ + dvc.lock + reports/ of the main checkout, frozen for the session."""
    try:
        return snapshot_serving_artifacts(tmp_path_factory.mktemp("champion") / "repo")
    except RuntimeError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def challenger_checkout(champion_checkout: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_challenger(champion_checkout, tmp_path_factory.mktemp("challenger") / "repo")


@dataclass(frozen=True)
class Holdout:
    """The test split as raw JSON-ready records, and each checkout's offline probabilities."""

    records: list[dict[str, Any]]
    champion: np.ndarray
    challenger: np.ndarray


def offline_probabilities(checkout: Path, columns: Any) -> np.ndarray:
    from tabml.contract import DataContract
    from tabml.features import FeatureTransform
    from tabml.model import load_booster, predict_proba

    contract = DataContract.load(checkout / "models" / "contract.json")
    transform = FeatureTransform.load(checkout / "models" / "feature_transform.json", contract)
    booster = load_booster(checkout / "models" / "model.txt")
    return predict_proba(booster, transform.transform(columns))


@pytest.fixture(scope="session")
def holdout(champion_checkout: Path, challenger_checkout: Path) -> Holdout:
    from tabml.columnar import read_columns
    from tabml.contract import DataContract

    columns = read_columns(PREPARED / "test.parquet")
    names = DataContract.load(champion_checkout / "models" / "contract.json").feature_names
    lists = [columns[name].tolist() for name in names]
    records = [dict(zip(names, row, strict=True)) for row in zip(*lists, strict=True)]
    return Holdout(
        records,
        offline_probabilities(champion_checkout, columns),
        offline_probabilities(challenger_checkout, columns),
    )


def serve_checkout(
    root: Path, *options: str, env: dict[str, str] | None = None, timeout: float = 60.0
) -> contextlib.AbstractContextManager[Server]:
    """`tabml-serve *options` with its working directory `root` (a checkout: models/ and
    dvc.lock) and extra environment `env`; yields once /ready is 200."""
    return serve(Workspace(root), *options, env=env, timeout=timeout)
