"""Slices, fairness, the baseline, the gate's quality rules and the model card, through the real
pipeline: `python src/train.py` and `dvc metrics` on a temp clone, MLflow on its SQLite store."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from tests.support.project import dvc, train

pytestmark = pytest.mark.slow


@pytest.fixture
def repo_copy(trained_repo: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(trained_repo, tmp_path / "repo", symlinks=True))


def test_dvc_metrics_show_the_slices_fairness_and_baseline(trained_repo: Path) -> None:
    shown = json.loads(dvc(trained_repo, "metrics", "show", "--json").stdout)
    (workspace,) = shown.values()
    files = workspace["data"]
    metrics = files["reports/metrics.json"]["data"]
    slices = files["reports/slices.json"]["data"]
    assert set(slices) == {"sex", "race", "age_band", "education_level"}
    assert set(slices["sex"]) == {"Female", "Male"}
    assert list(slices["age_band"]) == ["<25", "25-34", "35-44", "45-54", "55-64", "65+"]
    assert sum(s["rows"] for s in slices["race"].values()) == metrics["test"]["rows"] == 16281
    for value in slices["education_level"].values():
        assert set(value) == {
            "rows",
            "positive_rate",
            "predicted_positive_rate",
            "roc_auc",
            "accuracy",
            "f1",
            "calibration_error",
        }
    worst = min(s["roc_auc"] for group in slices.values() for s in group.values())
    assert metrics["slices"]["worst_roc_auc"] == worst  # every slice has >= 100 rows here
    assert set(metrics["fairness"]) == {
        f"{a}_{m}"
        for a in ("sex", "race")
        for m in ("demographic_parity_difference", "equalized_odds_difference")
    }
    assert 0.85 < metrics["baseline"]["roc_auc"] < metrics["test"]["roc_auc"]


def test_metrics_diff_shows_slice_metrics_of_a_retrained_model(repo_copy: Path) -> None:
    train(repo_copy, "model.learning_rate=0.07")
    diff = json.loads(dvc(repo_copy, "metrics", "diff", "--json").stdout)
    changed = diff["reports/slices.json"]
    assert "sex.Female.roc_auc" in changed
    assert changed["sex.Female.roc_auc"]["old"] != changed["sex.Female.roc_auc"]["new"]
    assert "fairness.sex_demographic_parity_difference" in diff["reports/metrics.json"]
    assert "baseline.roc_auc" not in diff["reports/metrics.json"]  # the baseline did not change


def _logged_card(repo: Path, run_id: str) -> str:
    """The card logged to the run (the experiment's artifact root may be the original clone)."""
    (card,) = repo.parent.parent.glob(f"**/mlartifacts/{run_id}/artifacts/model_card/model_card.md")
    return card.read_text()


def test_the_gate_refuses_a_model_that_does_not_beat_the_baseline_by_the_margin(
    repo_copy: Path,
) -> None:
    result = train(repo_copy, "model.learning_rate=0.07", "gate.baseline_margin=0.5")
    out = result.stdout
    assert re.search(r"registered tabml-adult v\d+: gate failed", out), out
    assert re.search(
        r"- roc_auc 0\.\d{6} < logistic-regression baseline 0\.\d{6} \+ margin 0\.5", out
    ), out
    assert "stays candidate (champion unchanged)" in out
    run_id = re.search(r"logged run (\w+) to", out)
    assert run_id, out
    card = _logged_card(repo_copy, run_id[1])
    assert f"| MLflow run | `{run_id[1]}` |" in card
    assert "| gate | `failed` |" in card
    workspace_card = (repo_copy / "models" / "model_card.md").read_text()
    assert card.startswith(workspace_card.rstrip("\n"))
    assert run_id[1] not in workspace_card  # the DVC output holds no run id
