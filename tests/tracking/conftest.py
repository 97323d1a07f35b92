"""Fixtures for the tracking tests: a trained temp git repo and a real `mlflow server`.

The repo is a `git clone` of the project (uncommitted edits carried over) with a copy of the main
checkout's DVC cache, so the pipeline's stages are restored from DVC's run cache instead of
retrained; only what a test changes actually trains.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.support.processes import background_process, free_port, mlflow_server_cmd
from tests.support.project import PYTHON, REPO_ROOT, clone_repo, command_env, run


def tracking_env(repo: Path, uri: str | None = None, **extra: str) -> dict[str, str]:
    """Child environment: the repo's own code first, no DVC analytics, and MLFLOW_TRACKING_URI
    set to `uri` (absent: the pipeline's default, sqlite:///<repo>/mlflow.db)."""
    env = command_env(PYTHONPATH=str(repo / "src"), DVC_NO_ANALYTICS="1", **extra)
    if uri is not None:
        env["MLFLOW_TRACKING_URI"] = uri
    return env


def train(
    repo: Path,
    *overrides: str,
    uri: str | None = None,
    check: bool = True,
    env_extra: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """`python src/train.py OVERRIDE...` without pushing to the DVC remote."""
    return run(
        [PYTHON, "src/train.py", "--no-push", *overrides],
        cwd=repo,
        env=tracking_env(repo, uri, **(env_extra or {})),
        check=check,
    )


def registry_cli(
    repo: Path, *args: str, uri: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return run(
        [PYTHON, "-m", "tabml.registry_cli", *args],
        cwd=repo,
        env=tracking_env(repo, uri),
        check=check,
    )


def commit_all(repo: Path, message: str) -> None:
    run(["git", "add", "-A"], cwd=repo)
    run(["git", "commit", "--quiet", "--allow-empty", "-m", message], cwd=repo)


@pytest.fixture(scope="session")
def tracking_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A committed clone on which the default pipeline has run, with no MLflow store in it
    (its one registration went to a throwaway store), so every copy starts empty."""
    repo = clone_repo(tmp_path_factory.mktemp("tracking") / "repo")
    shutil.rmtree(repo / ".dvc" / "cache", ignore_errors=True)
    shutil.copytree(REPO_ROOT / ".dvc" / "cache", repo / ".dvc" / "cache")
    throwaway = repo.parent / "template-store"
    train(repo, uri=f"sqlite:///{throwaway}/mlflow.db")
    commit_all(repo, "pipeline run")
    return repo


@pytest.fixture
def repo_copy(tracking_template: Path, tmp_path: Path) -> Path:
    """A private copy of the template (git history, DVC cache and outputs included)."""
    return Path(shutil.copytree(tracking_template, tmp_path / "repo", symlinks=True))


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `mlflow server` on a free loopback port (SQLite backend, proxied artifacts)."""
    home = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    cmd = mlflow_server_cmd(f"sqlite:///{home}/server.db", str(home / "artifacts"), port)
    with background_process(
        cmd,
        log=home / "server.log",
        ready_url=f"{uri}/health",
        cwd=home,
        env=command_env(),
        timeout=180,
    ):
        yield uri
