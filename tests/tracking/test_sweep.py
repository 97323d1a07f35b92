"""A Hydra-multirun sweep run as DVC queued experiments, checked against `dvc exp show` and
the MLflow runs the experiments logged (embedded SQLite default at the main repo's root)."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from tests.support.project import PYTHON, run
from tests.tracking.conftest import commit_all, tracking_env, train

pytestmark = pytest.mark.slow

RATES = ("0.05", "0.1", "0.15", "0.2", "0.3")


def exp_show(repo: Path) -> dict[str, dict]:
    """Experiment name → test metrics and params, from the real `dvc exp show --json`."""
    shown = json.loads(run([PYTHON, "-m", "dvc", "exp", "show", "--json"], cwd=repo).stdout)
    found = {}
    for baseline in shown:
        for experiment in baseline.get("experiments") or []:
            for rev in experiment["revs"]:
                data = rev["data"]
                found[rev["name"]] = {
                    "metrics": data["metrics"]["reports/metrics.json"]["data"]["test"],
                    "params": data["params"]["params.yaml"]["data"],
                }
    return found


def test_sweep_of_five_runs_matches_dvc_exp_show_and_mlflow(repo_copy: Path) -> None:
    commit_all(repo_copy, "baseline for the sweep")  # queued runs see committed files only
    # One combination trained (and tracked) beforehand: the sweep restores it from DVC's run
    # cache, and must link it to that run rather than leave it without one or log a duplicate.
    before = train(repo_copy, "model.learning_rate=0.05", "train.num_boost_round=30")
    assert "logged run" in before.stdout
    run(["git", "checkout", "--quiet", "params.yaml", "dvc.lock"], cwd=repo_copy)
    client = MlflowClient(f"sqlite:///{repo_copy}/mlflow.db")
    experiment_id = client.get_experiment_by_name("tabml-adult").experiment_id
    (earlier,) = client.search_runs([experiment_id])
    started = time.monotonic()
    result = run(
        [
            PYTHON,
            "src/train.py",
            "-m",
            f"model.learning_rate={','.join(RATES)}",
            "train.num_boost_round=30",
        ],
        cwd=repo_copy,
        env=tracking_env(repo_copy),
    )
    elapsed = time.monotonic() - started
    print(f"5-run sweep: {elapsed:.1f} s\n{result.stdout}")

    # The summary: one row per experiment, sorted by test ROC AUC, and how to apply the best.
    lines = result.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("name "))
    rows = [line.split() for line in lines[header + 1 : header + 1 + len(RATES)]]
    names = [row[0] for row in rows]
    aucs = [float(row[4]) for row in rows]
    assert all(row[3] == "Success" for row in rows)
    assert aucs == sorted(aucs, reverse=True)
    assert f"dvc exp apply {names[0]}" in result.stdout
    prefix = re.match(r"(sweep-\d{8}-\d{6})-\d+$", names[0]).group(1)
    assert sorted(names) == [f"{prefix}-{i}" for i in range(1, 6)]

    # Every experiment is in `dvc exp show`, with the summary's metric and its own parameters.
    shown = exp_show(repo_copy)
    by_rate = {}
    for row in rows:
        experiment = shown[row[0]]
        assert experiment["metrics"]["roc_auc"] == pytest.approx(float(row[4]))
        assert experiment["params"]["train"]["num_boost_round"] == 30
        by_rate[str(experiment["params"]["model"]["learning_rate"])] = row[0]
    assert sorted(by_rate) == sorted(RATES)

    # ... and has exactly one MLflow run in the main repo's store, with the same metrics: four
    # new ones, and the restored combination linked to the run logged before the sweep.
    restored = by_rate["0.05"]
    linked = client.get_run(earlier.info.run_id)
    assert linked.data.tags[f"dvc_exp.{restored}"] == "same model"
    assert f"{restored}: linked to run {earlier.info.run_id}" in result.stdout
    mlflow_runs = client.search_runs(
        [experiment_id], filter_string=f"tags.dvc_exp_name LIKE '{prefix}-%'"
    )
    assert len(mlflow_runs) == len(RATES) - 1
    assert len(client.search_runs([experiment_id])) == len(RATES)
    for mlflow_run in mlflow_runs:
        name = mlflow_run.data.tags["dvc_exp_name"]
        assert mlflow_run.info.run_name == name
        metrics = shown[name]["metrics"]
        assert mlflow_run.data.metrics["test_roc_auc"] == pytest.approx(metrics["roc_auc"])
        assert mlflow_run.data.metrics["test_log_loss"] == pytest.approx(metrics["log_loss"])
        assert by_rate[mlflow_run.data.params["model.learning_rate"]] == name
        assert mlflow_run.data.tags["git_commit"] == mlflow_run.data.tags["dvc_exp_baseline_rev"]
    # Experiments ran in DVC's temporary workspaces; nothing was logged inside them.
    assert not list((repo_copy / ".dvc" / "tmp").rglob("mlflow.db"))

    # Each registered a candidate without promoting itself; the best became champion at the end
    # in one alias move (the run logged before the sweep was promoted when it was logged).
    version_of = {
        r.data.tags["dvc_exp_name"]: r.data.tags["registered_version"] for r in mlflow_runs
    } | {restored: linked.data.tags["registered_version"]}
    model = client.get_registered_model("tabml-adult")
    assert str(model.aliases["champion"]) == version_of[names[0]]  # SQLite gives an int
    best = f"tabml-adult v{version_of[names[0]]} ({names[0]})"
    if names[0] == restored:  # promoted by its own run before the sweep
        assert f"{best} is already champion" in result.stdout
    else:
        assert f"{best}, best of the sweep: promoted" in result.stdout
    history = [json.loads(v) for k, v in sorted(model.tags.items()) if k.startswith("alias_")]
    champion_moves = [move for move in history if move["alias"] == "champion"]
    sweep_moves = [move for move in champion_moves if f"best of {prefix}" in move["reason"]]
    assert len(champion_moves) <= 2 and len(sweep_moves) == (names[0] != restored)
    for name in names[1:]:
        if name != restored:
            note = client.get_model_version("tabml-adult", version_of[name]).tags["gate.note"]
            assert note.startswith(f"passed, champion not moved: one of {prefix}")
