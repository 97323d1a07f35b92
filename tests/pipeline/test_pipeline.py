"""The pipeline's promises, checked with real `dvc` and `python src/train.py` on a temp git repo."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from tests.support.project import PYTHON, dvc, run, stages_run, train

from tabml.data import dir_md5, pinned_dir_md5

pytestmark = pytest.mark.slow

MODEL_FILES = ("contract.json", "feature_transform.json", "model.txt", "model_metadata.json")
MODEL_FILES += ("model_card.md", "model_card.html")


@pytest.fixture
def repo_copy(trained_repo: Path, tmp_path: Path) -> Path:
    """A private copy of the trained repo (git history, DVC cache and outputs included)."""
    return Path(shutil.copytree(trained_repo, tmp_path / "repo", symlinks=True))


def snapshot(repo: Path) -> dict[str, bytes]:
    """What a failed run must leave as it was: the model, the lock, the recorded data version
    (data.dvc), the validation report and its reference."""
    files = [repo / "models" / name for name in MODEL_FILES]
    files += [repo / "dvc.lock", repo / "data.dvc", repo / "reports" / "metrics.json"]
    files += [repo / "reports" / "data_validation.json", repo / "reference" / "profile.json"]
    files += [repo / "reports" / "slices.json"]
    return {str(path.relative_to(repo)): path.read_bytes() for path in files}


def test_first_run_builds_every_stage_and_meets_the_quality_bar(trained_repo: Path) -> None:
    metrics = json.loads((trained_repo / "reports" / "metrics.json").read_text())["test"]
    assert metrics["rows"] == 16281
    assert metrics["roc_auc"] >= 0.92
    for name in ("pr_auc", "log_loss", "accuracy", "f1", "brier"):
        assert 0 < metrics[name] < 1, name
    # A fresh clone reproduces the committed lock file exactly.
    run(["git", "diff", "--exit-code", "dvc.lock"], cwd=trained_repo)


def test_the_reference_profile_describes_the_validation_split(trained_repo: Path) -> None:
    profile = json.loads((trained_repo / "models" / "reference_profile.json").read_text())
    contract = json.loads((trained_repo / "models" / "contract.json").read_text())
    assert profile["rows"] == 6512  # the validation split prepare printed
    assert [f["name"] for f in profile["features"]] == [c["name"] for c in contract["columns"]]
    for histogram in [*profile["features"], profile["score"]]:
        assert sum(histogram["fractions"]) == pytest.approx(1.0)


def test_nothing_changed_runs_no_stage(trained_repo: Path) -> None:
    result = train(trained_repo)
    assert stages_run(result.stdout) == []
    assert "roc_auc" in result.stdout


def test_model_parameter_change_runs_only_train_evaluate_card_and_profile(repo_copy: Path) -> None:
    """Not the baseline: it depends on the features only."""
    result = train(repo_copy, "model.learning_rate=0.07")
    assert stages_run(result.stdout) == ["train", "evaluate", "model_card", "profile"]
    assert "learning_rate: 0.07" in (repo_copy / "params.yaml").read_text()
    lock = (repo_copy / "dvc.lock").read_text()
    assert "learning_rate: 0.07" in lock


def test_forced_rerun_is_byte_identical(repo_copy: Path) -> None:
    before = snapshot(repo_copy)
    dvc(repo_copy, "repro", "--force")
    assert snapshot(repo_copy) == before


def _drop_first_column(text: str) -> str:
    return "".join(
        line.split(", ", 1)[-1] if line.strip() else line for line in text.splitlines(True)
    )


def _replace_field(text: str, line_no: int, field: int, value: str) -> str:
    lines = text.splitlines(True)
    fields = lines[line_no - 1].rstrip("\n").split(", ")
    fields[field] = value
    lines[line_no - 1] = ", ".join(fields) + "\n"
    return "".join(lines)


def _truncate_mid_line(text: str) -> str:
    body = text.rstrip("\n")
    return body[: body.rindex("\n") + 40]


CORRUPTIONS = {
    "missing column": (_drop_first_column, ["line 1", "expected 15 fields", "found 14"]),
    "non-numeric age": (
        lambda t: _replace_field(t, 10, 0, "forty"),
        ["column 'age'", "coerce_dtype('int64')", "line 10: 'forty'"],
    ),
    "unknown label": (
        lambda t: _replace_field(t, 20, 14, "maybe"),
        ["column 'income'", "isin", "line 20: 'maybe'"],
    ),
    "truncated mid-line": (_truncate_mid_line, ["line 32561", "expected 15 fields"]),
    "empty file": (lambda t: "", ["no data rows (an empty file)"]),
    "header-only file": (
        lambda t: (
            "age, workclass, fnlwgt, education, education-num, marital-status, "
            "occupation, relationship, race, sex, capital-gain, capital-loss, hours-per-week, "
            "native-country, income\n"
        ),
        ["no data rows (only a header row, line 1)"],
    ),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_corrupt_data_fails_validation_and_keeps_previous_outputs(
    repo_copy: Path, case: str
) -> None:
    corrupt, expected_fragments = CORRUPTIONS[case]
    before = snapshot(repo_copy)
    raw = repo_copy / "data" / "adult.data"
    raw.write_text(corrupt(raw.read_text()))

    result = train(repo_copy, check=False)

    assert result.returncode == 1
    assert "stage validate failed: data/adult.data" in result.stderr
    for fragment in expected_fragments:
        assert fragment in result.stderr, (fragment, result.stderr)
    assert "Traceback" not in result.stderr
    assert "data/ was not recorded as a data version: data.dvc still pins" in result.stderr
    assert "Running stage 'prepare'" not in result.stdout
    assert snapshot(repo_copy) == before


def test_a_file_that_fails_validation_never_becomes_the_data_version(repo_copy: Path) -> None:
    """The new user's report: an empty adult.data passed validate, crashed prepare with a
    TypeError, and data.dvc already pointed at it. Now data.dvc moves only to validated data,
    the reference the check used is put back, and `dvc checkout` restores the last good data."""
    reference = repo_copy / "reference" / "profile.json"
    # A reference older than the workspace model's profile: the run refreshes it, then restores.
    reference.write_text(json.dumps(json.loads(reference.read_text()), indent=1))
    run(["git", "commit", "--quiet", "-am", "older reference"], cwd=repo_copy)
    dvc(repo_copy, "commit", "--force", "validate")
    run(["git", "commit", "--quiet", "-am", "validated against it"], cwd=repo_copy)
    (repo_copy / "data" / "adult.data").write_text("")
    before = snapshot(repo_copy)
    status_before = dvc(repo_copy, "status", "--json").stdout

    failed = train(repo_copy, check=False)

    assert failed.returncode == 1
    assert "data/adult.data: no data rows (an empty file)" in failed.stderr
    assert "TypeError" not in failed.stderr and "Running stage 'prepare'" not in failed.stdout
    assert snapshot(repo_copy) == before
    assert dvc(repo_copy, "status", "--json").stdout == status_before
    assert run(["git", "status", "--porcelain"], cwd=repo_copy).stdout == ""

    dvc(repo_copy, "checkout", "--force", "data.dvc")
    assert json.loads(dvc(repo_copy, "status", "--json").stdout) == {}
    assert snapshot(repo_copy) == before
    assert stages_run(train(repo_copy).stdout) == []


def test_a_sharply_shifted_batch_fails_with_the_fail_setting(repo_copy: Path) -> None:
    batches = repo_copy / "data" / "batches"
    batches.mkdir()
    lines = (repo_copy / "data" / "adult.data").read_text().splitlines(keepends=True)[:1000]
    ages_and_rest = [line.split(", ", 1) for line in lines]
    older = [f"{min(int(age) + 30, 100)}, {rest}" for age, rest in ages_and_rest]
    (batches / "older.data").write_text("".join(older))
    before = snapshot(repo_copy)

    failed = train(repo_copy, "validation.distribution_shift=fail", check=False)

    assert failed.returncode == 1
    assert "data/batches/older.data: column 'age' PSI" in failed.stderr
    assert "(validation.distribution_shift: fail)" in failed.stderr
    assert snapshot(repo_copy) == before


def test_invalid_overrides_fail_before_anything_runs(trained_repo: Path) -> None:
    params_before = (trained_repo / "params.yaml").read_bytes()
    wrong_type = train(trained_repo, "model.num_leaves=many", check=False)
    unknown_key = train(trained_repo, "model.leaves=3", check=False)
    unknown_added = train(trained_repo, "+model.leaves=3", check=False)

    assert wrong_type.returncode == 2
    assert "model.num_leaves" in wrong_type.stderr and "'many'" in wrong_type.stderr
    assert unknown_key.returncode == 2 and "model.leaves" in unknown_key.stderr
    assert unknown_added.returncode == 2 and "model.leaves" in unknown_added.stderr
    assert "Extra inputs are not permitted" in unknown_added.stderr
    for result in (wrong_type, unknown_key, unknown_added):
        assert "Running stage" not in result.stdout + result.stderr
    assert (trained_repo / "params.yaml").read_bytes() == params_before


def test_help_explains_usage(trained_repo: Path) -> None:
    result = run([PYTHON, "src/train.py", "--help"], cwd=trained_repo)
    assert "usage: python src/train.py" in result.stdout
    assert "model.learning_rate=0.1" in result.stdout


def test_dvc_plots_render_every_plot(trained_repo: Path, tmp_path: Path) -> None:
    out = tmp_path / "plots"
    dvc(trained_repo, "plots", "show", "--out", str(out))
    html = (out / "index.html").read_text()
    for title in (
        "ROC curve",
        "Precision-recall",
        "Confusion matrix",
        "Calibration",
        "Feature importance (gain)",
        "Feature importance (mean |TreeSHAP contribution|",
        "ROC AUC by slice",
        "AUC by boosting iteration",
    ):
        assert title in html, title


def _edit(repo: Path, module: str, old: str, new: str) -> None:
    path = repo / "src" / "tabml" / module
    text = path.read_text()
    assert old in text, f"{module} no longer contains {old!r}"
    path.write_text(text.replace(old, new))


def test_a_change_to_code_a_stage_imports_reruns_it(repo_copy: Path) -> None:
    """The defect that once reached the gate: `predict_proba` inverted, only `train` reran, the
    model bytes were unchanged, so `evaluate` was skipped and stale metrics were reported."""
    before = json.loads((repo_copy / "reports" / "metrics.json").read_text())["test"]
    _edit(
        repo_copy,
        "model.py",
        "return np.asarray(booster.predict(",
        "return 1.0 - np.asarray(booster.predict(",
    )
    result = train(repo_copy)
    assert "evaluate" in stages_run(result.stdout)
    after = json.loads((repo_copy / "reports" / "metrics.json").read_text())["test"]
    assert after["roc_auc"] == pytest.approx(1 - before["roc_auc"], abs=1e-6)


def test_a_change_used_only_at_evaluation_reruns_only_the_evaluating_stages(
    repo_copy: Path,
) -> None:
    """tabml.evaluation scores the model and the baseline; the card shows their metrics."""
    before = json.loads((repo_copy / "reports" / "metrics.json").read_text())["test"]
    _edit(repo_copy, "evaluation.py", '"accuracy":', '"accuracy_renamed":')
    result = train(repo_copy)
    assert stages_run(result.stdout) == ["baseline", "evaluate", "model_card"]
    after = json.loads((repo_copy / "reports" / "metrics.json").read_text())["test"]
    assert "accuracy_renamed" in after and "accuracy" not in after
    assert after["accuracy_renamed"] == before["accuracy"]


def test_a_change_to_code_no_stage_imports_reruns_nothing(repo_copy: Path) -> None:
    _edit(repo_copy, "registry_cli.py", '"""`tabml-registry`:', '"""`tabml-registry` (edited):')
    before = snapshot(repo_copy)
    result = train(repo_copy)
    assert stages_run(result.stdout) == []
    assert snapshot(repo_copy) == before


def test_a_labelled_batch_extends_the_training_split_and_never_the_holdout(
    repo_copy: Path,
) -> None:
    batches = repo_copy / "data" / "batches"
    batches.mkdir()
    lines = (repo_copy / "data" / "adult.data").read_text().splitlines(keepends=True)[:300]
    (batches / "feedback-1.data").write_text("".join(lines))
    result = train(repo_copy)
    assert "new data version" in result.stdout
    # Validated before DVC records it in data.dvc.
    assert stages_run(result.stdout)[:3] == ["validate", "data.dvc", "prepare"]
    assert pinned_dir_md5(repo_copy / "data.dvc") == dir_md5(repo_copy / "data")
    report = json.loads((repo_copy / "reports" / "data_validation.json").read_text())
    assert report["train"]["rows"] == 32561 + 300
    assert report["train"]["batches"] == ["batches/feedback-1.data"]
    # 300 rows are profiled against the reference but too few to judge a shift from.
    assert report["distribution"]["files"]["batches/feedback-1.data"]["judged"] is False
    assert report["test"]["rows"] == 16281
    metrics = json.loads((repo_copy / "reports" / "metrics.json").read_text())["test"]
    assert metrics["rows"] == 16281

    # A batch that breaks the contract fails validate, naming the file and the line.
    (batches / "feedback-2.data").write_text(lines[0].replace("39, ", "390, ", 1))
    before = snapshot(repo_copy)
    failed = train(repo_copy, check=False)
    assert failed.returncode == 1
    assert "feedback-2.data" in failed.stderr and "line 1" in failed.stderr
    assert snapshot(repo_copy) == before
