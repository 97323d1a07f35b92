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
from tests.support.processes import free_port
from tests.support.project import run, stages_run
from tests.tracking.conftest import registry_cli, train

from tabml.data import file_md5, pinned_dir_md5
from tabml.layout import MODEL_CARD_FILES
from tabml.layout import SERVING_FILES as MODEL_FILES
from tabml.tracking import flatten

pytestmark = pytest.mark.slow

# Quick to train: these tests check bookkeeping, not model quality.
QUICK = "train.num_boost_round=40"
WEAK = ("train.num_boost_round=2", "model.num_leaves=2")  # two stumps: fails the gate


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


def imported_mlflow(result) -> bool:
    """Whether a run started with PYTHONPROFILEIMPORTTIME imported MLflow."""
    return any(
        line.rstrip().endswith((" mlflow", "| mlflow")) for line in result.stderr.splitlines()
    )


def test_exactly_one_run_per_model_whatever_dvc_ran(repo_copy: Path) -> None:
    client = MlflowClient(f"sqlite:///{repo_copy}/mlflow.db")

    first = train(repo_copy, QUICK)
    assert stages_run(first.stdout) == ["train", "evaluate", "model_card", "profile"]
    assert "logged run" in first.stdout
    (logged,) = runs(client)

    # A no-op finds the run without importing MLflow, and logs nothing.
    noop = train(repo_copy, QUICK, env_extra={"PYTHONPROFILEIMPORTTIME": "1"})
    assert stages_run(noop.stdout) == []
    assert "already logged" in noop.stdout and not imported_mlflow(noop)
    assert len(runs(client)) == 1

    # Back to the default parameters: DVC restores train and evaluate from its run cache (the
    # template trained them), and runs no stage for tracking; the store has not seen that model,
    # so it gets its run.
    default = train(repo_copy)
    output = default.stdout + default.stderr
    assert "Stage 'train' is cached" in output and "Stage 'evaluate' is cached" in output
    assert "logged run" in default.stdout
    assert len(runs(client)) == 2

    # And again to the quick model, restored from the run cache: already logged.
    restored = train(repo_copy, QUICK)
    assert "Stage 'train' is cached" in restored.stdout + restored.stderr
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
        for folder in ("", "reports", "plots")
        for a in client.list_artifacts(logged.info.run_id, folder)
    }
    for path in (
        "reports/metrics.json",
        "reports/training_curve.json",
        "reports/plots",
        "plots/roc.png",
        "params.yaml",
        "dvc.lock",
    ):
        assert path in artifacts, path
    # The model is stored once: as the registered pyfunc, whose artifacts are models/'s files
    # (its card included, so a bundle exported from the registry serves it).
    (logged_model,) = client.search_logged_models(
        experiment_ids=[logged.info.experiment_id],
        filter_string=f"source_run_id = '{logged.info.run_id}'",
    )
    assert logged_model.name == "model"
    with mlflow_uri(client):
        info = get_model_info(f"models:/{logged_model.model_id}")
        local = Path(mlflow.artifacts.download_artifacts(f"models:/{logged_model.model_id}"))
    assert "python_function" in info.flavors
    assert info.signature is not None and info.saved_input_example_info is not None
    stored = sorted(p.name for p in (local / "artifacts").iterdir())
    assert stored == sorted((*MODEL_FILES, *MODEL_CARD_FILES))
    assert file_md5(local / "artifacts" / "model.txt") == model_md5
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
    assert ": roc_auc 0.926416 >= minimum 0.91; no current champion; worst slice" in (
        first_champion
    )
    assert first_champion.endswith(
        "roc_auc 0.926416 >= logistic-regression baseline 0.905556 + margin 0.01"
    )

    # A no-op logs nothing, on the server too, and asks it without importing MLflow.
    noop = train(
        repo_copy,
        *names,
        "model.learning_rate=0.1",
        uri=mlflow_server,
        env_extra={"PYTHONPROFILEIMPORTTIME": "1"},
    )
    assert stages_run(noop.stdout) == []
    assert "already logged" in noop.stdout and not imported_mlflow(noop)
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

    # `tabml-registry track` (the same tracking after a plain `dvc repro`) fails as clearly.
    track = registry_cli(repo_copy, "track", uri=dead, check=False)
    assert track.returncode == 2
    assert f"MLflow tracking server {dead} is unreachable" in track.stderr
    assert {path: path.read_bytes() for path in watched} == before


def test_no_promote_registers_and_gates_but_keeps_the_champion(repo_copy: Path) -> None:
    client = MlflowClient(f"sqlite:///{repo_copy}/mlflow.db")
    first = train(repo_copy)
    assert "tabml-adult v1 promoted to champion" in first.stdout
    review = train(repo_copy, "model.learning_rate=0.1", "--no-promote")
    assert "registered tabml-adult v2: gate passed" in review.stdout
    assert "tabml-adult v2 stays candidate: --no-promote" in review.stdout
    model = client.get_registered_model("tabml-adult")
    assert {k: str(v) for k, v in model.aliases.items()} == {"champion": "1", "candidate": "2"}
    assert client.get_model_version("tabml-adult", "2").tags["gate.decision"] == "passed"
