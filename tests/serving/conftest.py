"""Fixtures for the prediction service tests: a frozen copy of the trained artifacts, the test set
as raw records with its offline probabilities, and real `tabml-serve` processes on loopback.

The artifacts are copied (with `dvc.lock`) once per session and checked against that lock, so a
pipeline run elsewhere in the working tree cannot change them half-way through the tests.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.support.artifacts import snapshot_serving_artifacts
from tests.support.processes import background_process, free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
MODELS = REPO_ROOT / "models"
PREPARED_TEST = REPO_ROOT / "artifacts" / "prepared" / "test.parquet"
VENV_BIN = Path(sys.executable).parent
SERVE = [sys.executable, "-m", "tabml.serving.cli"]


@dataclass(frozen=True)
class Workspace:
    """A directory laid out like the repository root, as far as serving is concerned."""

    root: Path

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def dvc_lock(self) -> Path:
        return self.root / "dvc.lock"

    @property
    def metrics(self) -> Path:
        return self.root / "reports" / "metrics.json"

    def settings(self, **overrides: Any) -> Any:
        from tabml.serving.settings import ServingSettings

        values = {
            "model_dir": self.models,
            "dvc_lock": self.dvc_lock,
            "metrics_file": self.metrics,
            **overrides,
        }
        return ServingSettings(**values)

    def copy(self, dest: Path) -> Workspace:
        shutil.copytree(self.root, dest)
        return Workspace(dest)


def _snapshot(dest: Path) -> Workspace:
    try:
        return Workspace(snapshot_serving_artifacts(dest))
    except RuntimeError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def workspace(tmp_path_factory: pytest.TempPathFactory, pipeline_outputs: Path) -> Workspace:
    """A frozen copy of the artifacts, taken after the session's pipeline run produced them."""
    return _snapshot(tmp_path_factory.mktemp("serving") / "repo")


@dataclass(frozen=True)
class TestSet:
    records: list[dict[str, Any]]
    probabilities: np.ndarray


@pytest.fixture(scope="session")
def test_set(workspace: Workspace) -> TestSet:
    """Every test row as a JSON-ready raw record, and its offline probability: the pipeline's
    own feature transform on the prepared (typed) test split, then `predict_proba`."""
    from tabml.columnar import read_columns
    from tabml.contract import DataContract
    from tabml.features import FeatureTransform
    from tabml.model import load_booster, predict_proba

    contract = DataContract.load(workspace.models / "contract.json")
    transform = FeatureTransform.load(workspace.models / "feature_transform.json", contract)
    booster = load_booster(workspace.models / "model.txt")
    columns = read_columns(PREPARED_TEST)
    probabilities = predict_proba(booster, transform.transform(columns))
    names = contract.feature_names
    lists = {name: columns[name].tolist() for name in names}
    records = [dict(zip(names, row, strict=True)) for row in zip(*lists.values(), strict=True)]
    return TestSet(records, probabilities)


def child_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TABML_", "PROMETHEUS_MULTIPROC", "MLFLOW_"))
    }
    env["PATH"] = os.pathsep.join([str(VENV_BIN), env.get("PATH", "")])
    env.update(extra)
    return env


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for line in self.log.read_text().splitlines():
            with contextlib.suppress(ValueError):
                lines.append(json.loads(line))
        return lines


@contextlib.contextmanager
def serve(
    workspace: Workspace,
    *options: str,
    timeout: float = 60.0,
    env: dict[str, str] | None = None,
) -> Iterator[Server]:
    """`tabml-serve` in its own process on a free loopback port, with extra environment `env`
    (e.g. TABML_ADMIN_TOKEN); yields once /ready is 200."""
    port = free_port()
    log = workspace.root / f"serve-{port}.log"
    url = f"http://127.0.0.1:{port}"
    with background_process(
        [*SERVE, "--port", str(port), *options],
        log=log,
        ready_url=f"{url}/ready",
        cwd=workspace.root,
        env=child_env(**(env or {})),
        timeout=timeout,
    ) as process:
        yield Server(url, process, log)


def run_serve(workspace: Workspace, *options: str) -> subprocess.CompletedProcess[str]:
    """`tabml-serve` expected to fail at start-up: its exit status and output."""
    return subprocess.run(
        [*SERVE, "--port", str(free_port()), *options],
        cwd=workspace.root,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="session")
def start_server() -> Any:
    """`start_server(workspace, *options)`: context manager yielding a ready `Server`."""
    return serve


@pytest.fixture(scope="session")
def start_failing_server() -> Any:
    """`start_failing_server(workspace, *options)`: the finished process of a failed start."""
    return run_serve
