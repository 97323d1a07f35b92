"""The MLflow pyfunc the pipeline registers: raw records in, offline probabilities out, both
loaded in-process and behind a real `mlflow models serve --env-manager local`."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from tests.support.processes import background_process, free_port, mlflow_models_serve_cmd

pytestmark = pytest.mark.slow

MODEL_NAME = "tabml-serving-test"
ROWS = slice(0, 2000)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, workspace: Any) -> Iterator[str]:
    """A temp sqlite tracking store with the pyfunc logged, registered and aliased champion."""
    import mlflow
    from mlflow import MlflowClient

    from tabml.pyfunc_model import log_pyfunc_model

    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        mlflow.set_experiment("serving-tests")
        with mlflow.start_run():
            info = log_pyfunc_model(workspace.models, registered_model_name=MODEL_NAME)
        assert info.registered_model_version == 1
        MlflowClient().set_registered_model_alias(MODEL_NAME, "champion", "1")
        yield uri
    finally:
        mlflow.set_tracking_uri(previous)


def test_logged_model_carries_contract_signature_and_pins(registry: Any) -> None:
    import mlflow

    model_uri = f"models:/{MODEL_NAME}@champion"
    info = mlflow.models.get_model_info(model_uri)
    inputs = {c["name"]: c for c in info.signature.inputs.to_dict()}
    assert inputs["age"]["type"] == "long" and inputs["education"]["type"] == "string"
    assert inputs["workclass"]["required"] is False and inputs["sex"]["required"] is True
    requirements = Path(mlflow.artifacts.download_artifacts(model_uri)) / "requirements.txt"
    pins = requirements.read_text().split()
    assert any(p.startswith("lightgbm==") for p in pins) and any(
        p.startswith("mlflow==") for p in pins
    )


def test_pyfunc_in_process_equals_offline(registry: Any, test_set: Any) -> None:
    import mlflow
    import pandas as pd

    model = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@champion")
    frame = pd.DataFrame(test_set.records[ROWS])
    assert frame["workclass"].isna().any()  # the slice has missing values
    np.testing.assert_array_equal(model.predict(frame), test_set.probabilities[ROWS])


@contextlib.contextmanager
def mlflow_serve(tracking_uri: str, workdir: Path) -> Iterator[str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_TRACKING_URI"] = tracking_uri
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    url = f"http://127.0.0.1:{port}"
    with background_process(
        [*mlflow_models_serve_cmd(f"models:/{MODEL_NAME}@champion"), "-p", str(port)],
        log=workdir / "mlflow-serve.log",
        ready_url=f"{url}/ping",
        cwd=workdir,
        env=env,
        timeout=120,
    ):
        yield url


def test_mlflow_models_serve_answers_raw_records(
    registry: str, test_set: Any, tmp_path: Path
) -> None:
    """`mlflow models serve -m models:/<name>@champion` (the peer a user would pick) answers
    correctly on raw JSON records, nulls included."""
    records = test_set.records[ROWS]
    with mlflow_serve(registry, tmp_path) as url:
        response = httpx.post(f"{url}/invocations", json={"dataframe_records": records}, timeout=60)
        assert response.status_code == 200, response.text
        got = response.json()["predictions"]
        one = httpx.post(f"{url}/invocations", json={"dataframe_records": records[4:5]})
    np.testing.assert_allclose(got, test_set.probabilities[ROWS], rtol=0, atol=1e-12)
    assert one.json()["predictions"] == [test_set.probabilities[4]]
