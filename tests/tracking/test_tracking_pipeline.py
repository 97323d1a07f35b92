"""Tracking and registry with real parts: `python src/train.py` and `dvc` on a temp git repo,
logging to the embedded SQLite default and to a real `mlflow server` on loopback."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
import pytest
import yaml
from mlflow import MlflowClient
from mlflow.models import get_model_info
from tests.conftest import PYTHON, run
from tests.processes import free_port
from tests.tracking.conftest import registry_cli, tracking_env, train

from tabml.data import file_md5, pinned_dir_md5
from tabml.tracking import flatten

pytestmark = pytest.mark.slow

# Quick to train: these tests check bookkeeping, not model quality.
QUICK = "train.num_boost_round=40"
WEAK = ("train.num_boost_round=2", "model.num_leaves=2")  # two stumps: fails the gate


def stages_run(output: str) -> list[str]:
    (line,) = [line for line in output.splitlines() if line.startswith("stages run:")]
    names = line.removeprefix("stages run:").strip()
    return [] if names.startswith("none") else names.split(", ")


def runs(client: MlflowClient, experiment: str = "tabml-adult") -> list:
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    return client.search_runs([found.experiment_id], order_by=["attributes.start_time ASC"])


def locked_model_md5(repo: Path) -> str:
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    (out,) = [o for o in lock["stages"]["train"]["outs"] if o["path"] == "models/model.txt"]
    return out["md5"]


@contextmanager
def mlflow_uri(client: MlflowClient) -> Iterator[None]:
    """Point MLflow's fluent API (get_model_info) at the client's store for a moment."""
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(client.tracking_uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)


def head(repo: Path) -> str:
    return run(["git", "rev-parse", "HEAD"], cwd=repo).stdout.strip()


def test_one_run_per_retrain_none_for_noop_or_run_cache_restore(repo_copy: Path) -> None:
    client = MlflowClient(f"sqlite:///{repo_copy}/mlflow.db")

    first = train(repo_copy, QUICK)
    assert stages_run(first.stdout) == ["train", "evaluate", "register"]
    assert "logged run" in first.stdout
    (logged,) = runs(client)

    noop = train(repo_copy, QUICK)
    assert stages_run(noop.stdout) == []
    assert len(runs(client)) == 1

    # Back to the default parameters: a model this store has not seen, so one new run.
    default = train(repo_copy)
    assert "register" in stages_run(default.stdout)
    assert len(runs(client)) == 2

    # And again to the quick model: DVC restores train and evaluate from its run cache (saved by
    # the first run above), which reruns register; that model is already logged: nothing new.
    restored = train(repo_copy, QUICK)
    output = restored.stdout + restored.stderr
    assert "Stage 'train' is cached" in output and "Stage 'evaluate' is cached" in output
    assert "register" in stages_run(restored.stdout)
    assert "nothing logged" in restored.stdout
    assert len(runs(client)) == 2

    # The run holds what the issue lists, with lineage that matches dvc.lock and data.dvc.
    run_ = client.get_run(logged.info.run_id)
    tags, params, metrics = run_.data.tags, run_.data.params, run_.data.metrics
    model_md5 = file_md5(repo_copy / "models" / "model.txt")
    assert tags["model_md5"] == locked_model_md5(repo_copy) == model_md5
    assert tags["data_md5"] == pinned_dir_md5(repo_copy / "data.dvc")
    assert tags["dataset"] == "adult"
    assert tags["git_commit"] == head(repo_copy)
    # Only the QUICK override differs from the commit (params.yaml); outputs do not count.
    assert tags["git_dirty"] == "true" and tags["git_dirty_files"] == "params.yaml"
    assert tags["python_version"] == sys.version.split()[0]
    assert tags["package.lightgbm"] and tags["package.mlflow"]
    assert "dvc_exp_name" not in tags

    assert params == flatten(yaml.safe_load((repo_copy / "params.yaml").read_text()))
    assert params["train.num_boost_round"] == "40"
    expected = json.loads((repo_copy / "reports/metrics.json").read_text())["test"]
    for name, value in expected.items():
        assert metrics[f"test_{name}"] == pytest.approx(value), name
    curve = json.loads((repo_copy / "reports/training_curve.json").read_text())
    history = client.get_metric_history(logged.info.run_id, "valid_auc")
    assert [m.step for m in history] == [row["iteration"] for row in curve]
    assert [m.value for m in history] == pytest.approx([row["valid_auc"] for row in curve])

    artifacts = {
        a.path
        for folder in ("", "reports", "models", "plots")
        for a in client.list_artifacts(logged.info.run_id, folder)
    }
    for path in (
        "reports/metrics.json",
        "reports/training_curve.json",
        "reports/plots",
        "models/contract.json",
        "models/feature_transform.json",
        "models/model.txt",
        "plots/roc.png",
        "params.yaml",
        "dvc.lock",
    ):
        assert path in artifacts, path
    logged_models = client.search_logged_models(
        experiment_ids=[logged.info.experiment_id],
        filter_string=f"source_run_id = '{logged.info.run_id}'",
    )
    by_name = {model.name: model for model in logged_models}
    assert set(by_name) == {"lightgbm", "model"}  # the flavour, and the registered pyfunc
    with mlflow_uri(client):
        info = get_model_info(f"models:/{by_name['lightgbm'].model_id}")
    assert "lightgbm" in info.flavors
    assert info.signature is not None and info.saved_input_example_info is not None
    # Artifacts stay next to the store, not in a workspace DVC may delete.
    assert (repo_copy / "mlartifacts").is_dir()

    # Both models were registered; the default one (better) is champion.
    listing = registry_cli(repo_copy, "list").stdout.splitlines()
    rows = {line.split()[0]: line.split()[1:3] for line in listing[1:]}
    assert rows == {"v1": ["-", "passed"], "v2": ["candidate,champion", "passed"]}


def test_gate_registry_cli_and_rollback_against_a_real_server(
    repo_copy: Path, mlflow_server: str
) -> None:
    names = ("tracking.experiment=gate-test", "tracking.registered_model=gate-model")
    client = MlflowClient(mlflow_server, registry_uri=mlflow_server)

    # v1: the default model, restored from the run cache, registered on the server.
    good = train(repo_copy, *names, uri=mlflow_server)
    assert "gate-model v1 promoted to champion" in good.stdout
    # v2: two stumps. Registered as candidate; the gate refuses it and says why.
    weak = train(repo_copy, *names, *WEAK, uri=mlflow_server)
    assert "gate-model v2 stays candidate (champion unchanged)" in weak.stdout
    assert "< minimum 0.91" in weak.stdout and "< champion v1" in weak.stdout
    # v3: good enough (within the margin of v1), becomes champion.
    better = train(repo_copy, *names, "model.learning_rate=0.1", uri=mlflow_server)
    assert "gate-model v3 promoted to champion" in better.stdout

    model = client.get_registered_model("gate-model")
    assert model.aliases == {"champion": "3", "candidate": "3"}
    v2 = client.get_model_version("gate-model", "2")
    assert v2.tags["gate.decision"] == "failed"
    assert "< minimum 0.91" in v2.tags["gate.reasons"]
    assert v2.tags["gate.champion_version"] == "1"
    v3 = client.get_model_version("gate-model", "3")
    assert v3.tags["gate.decision"] == "passed"
    assert client.get_run(v3.run_id).data.tags["model_md5"] == locked_model_md5(repo_copy)
    assert len(runs(client, "gate-test")) == 3

    # The CLI: list, refuse to promote a gate failure, roll back, history.
    listing = registry_cli(repo_copy, "list", uri=mlflow_server).stdout
    assert "gate-model" not in listing  # rows name versions, not the model
    rows = {line.split()[0]: line.split() for line in listing.splitlines()[1:]}
    assert rows["v3"][1] == "candidate,champion" and rows["v2"][2] == "failed"

    refused = registry_cli(repo_copy, "promote", "2", uri=mlflow_server, check=False)
    assert refused.returncode == 1 and "failed its quality gate" in refused.stderr
    assert client.get_registered_model("gate-model").aliases["champion"] == "3"

    rolled = registry_cli(repo_copy, "rollback", "--reason", "incident 42", uri=mlflow_server)
    assert "champion v3 -> v1 (rollback)" in rolled.stdout
    assert client.get_registered_model("gate-model").aliases["champion"] == "1"
    again = registry_cli(repo_copy, "rollback", uri=mlflow_server, check=False)
    assert again.returncode == 1 and "first champion" in again.stderr

    forced = registry_cli(repo_copy, "promote", "2", "--force", uri=mlflow_server)
    assert "champion v1 -> v2" in forced.stdout
    registry_cli(repo_copy, "rollback", uri=mlflow_server)
    assert client.get_registered_model("gate-model").aliases["champion"] == "1"

    history = registry_cli(repo_copy, "history", uri=mlflow_server).stdout.splitlines()
    champion_moves = [line.split()[2:5] for line in history if " champion " in line]
    assert champion_moves == [
        ["-", "->", "v1"],
        ["v1", "->", "v3"],
        ["v3", "->", "v1"],
        ["v1", "->", "v2"],
        ["v2", "->", "v1"],
    ]
    assert any("incident 42" in line for line in history)
    first_champion = next(line for line in history if " champion " in line)
    assert first_champion.endswith("roc_auc 0.926416 >= minimum 0.91; no current champion")

    # A no-op logs nothing, on the server too.
    noop = train(repo_copy, *names, "model.learning_rate=0.1", uri=mlflow_server)
    assert stages_run(noop.stdout) == []
    assert len(runs(client, "gate-test")) == 3


def test_unreachable_server_fails_before_training_and_keeps_outputs(repo_copy: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    watched = [repo_copy / "dvc.lock", *sorted((repo_copy / "models").glob("*.*"))]
    before = {path: path.read_bytes() for path in watched}

    result = train(repo_copy, QUICK, uri=dead, check=False)

    assert result.returncode == 2
    assert f"MLflow tracking server {dead} is unreachable" in result.stderr
    assert "Running stage" not in result.stdout + result.stderr
    assert {path: path.read_bytes() for path in watched} == before

    # The register stage on its own fails just as clearly (e.g. under `dvc repro`).
    stage = run(
        [
            PYTHON,
            "-m",
            "tabml.stages.register",
            "--models",
            "models",
            "--metrics",
            "reports/metrics.json",
            "--plots",
            "reports/plots",
            "--curves",
            "reports/training_curve.json",
            "--features",
            "artifacts/features",
        ],
        cwd=repo_copy,
        env=tracking_env(repo_copy, dead),
        check=False,
    )
    assert stage.returncode == 1
    assert f"stage register failed: MLflow tracking server {dead} is unreachable" in stage.stderr
    assert {path: path.read_bytes() for path in watched} == before
