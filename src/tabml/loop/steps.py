"""The loop's steps, each safe to repeat: what it does is decided by the state of the world
(the data directory against data.dvc, the working tree against HEAD, the registry's aliases and
tags), not by a note of how far an earlier run got. A run killed after any step is therefore
continued by the next one, which finds the step's effect and goes on from there.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tabml.config import DatasetConfig, Params
from tabml.errors import TabmlError
from tabml.layout import (
    CURVES_FILE,
    DVC_YAML,
    LOCK_FILE,
    METRICS_FILE,
    PARAMS_FILE,
    SLICES_FILE,
    VALIDATION_REPORT,
)

Say = Callable[[str], None]
#: What a retrain commits besides the dataset's data version and validate reference
#: (`committed_paths`): the lock, the parameters and the git-tracked reports.
COMMITTED = (
    LOCK_FILE,
    PARAMS_FILE,
    DVC_YAML,
    METRICS_FILE,
    SLICES_FILE,
    CURVES_FILE,
    VALIDATION_REPORT,
)
CHALLENGER = "challenger"
#: The subject every retrain commit starts with (how a later run recognises one).
COMMIT_SUBJECT = "Retrain (tabml-loop)"
DECISION_TAG = "loop.decision"


class LoopStepError(TabmlError):
    """A loop step could not complete; the champion keeps serving and the next run retries."""


def git(*args: str, check: bool = True) -> str:
    result = subprocess.run(["git", *args], capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise LoopStepError(f"git {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout.strip()


def committed_paths(dataset: DatasetConfig) -> tuple[Path, ...]:
    """What a retrain commits: the dataset's data version and validate reference, and COMMITTED."""
    return (dataset.dvc_file, *COMMITTED, Path(dataset.reference_profile))


def data_version_pending(dataset: DatasetConfig) -> bool:
    """The data directory differs from the version its .dvc file pins: a data version was
    written, not trained."""
    from tabml import data

    return data.data_version_pending(Path(dataset.data_dir), dataset.dvc_file)


def uncommitted_outputs(dataset: DatasetConfig) -> list[str]:
    """The dataset's .dvc file or dvc.lock differ from HEAD: a retrain not committed yet.
    (params.yaml differs from HEAD whenever the loop runs with overrides, so it is committed,
    not a sign.)"""
    evidence = (dataset.dvc_file, LOCK_FILE)
    status = git("status", "--porcelain", "--", *(p.as_posix() for p in evidence))
    return [line[3:] for line in status.splitlines()]


def retrain(overrides: list[str], say: Say) -> None:
    """`python src/train.py --no-promote` in this process: only changed stages run, the new
    model is tracked, registered and gated, and `champion` does not move (the loop decides that
    after a canary)."""
    from tabml.train_cli import main as train

    say(f"retrain: python src/train.py --no-promote --no-push {' '.join(overrides)}".rstrip())
    status = train(["--no-promote", "--no-push", *overrides])
    if status != 0:
        raise LoopStepError(f"the pipeline exited {status}; outputs of earlier runs are kept")


def commit(message: str, dataset: DatasetConfig, branch: str, say: Say) -> str:
    """Commit the retrain (data.dvc, dvc.lock, params.yaml, reports) on `branch` (empty: the
    current one); return the commit. An ordinary commit: `git checkout <it> && dvc checkout`
    restores its data and model, `python src/train.py --verify` reproduces it."""
    if branch and git("branch", "--show-current") != branch:
        exists = git("rev-parse", "--verify", "--quiet", f"refs/heads/{branch}", check=False)
        git("switch", *([] if exists else ["-c"]), branch)
    git("add", "--", *(p.as_posix() for p in committed_paths(dataset) if p.exists()))
    git("commit", "--quiet", "-m", message)
    sha = git("rev-parse", "HEAD")
    say(f"commit: {sha[:12]} on {git('branch', '--show-current') or 'a detached HEAD'}")
    return sha


def push(say: Say) -> None:
    from tabml.pipeline import push as dvc_push

    say(f"push: {dvc_push()}")


def hours_since_last_retrain(now: float | None = None) -> float:
    """Hours since the loop's last retrain commit (infinite when there is none)."""
    pattern = "^" + re.sub(r"([()])", r"\\\1", COMMIT_SUBJECT)  # an extended regex
    stamp = git("log", "-1", "-E", f"--grep={pattern}", "--format=%ct", check=False)
    return ((now or time.time()) - int(stamp)) / 3600 if stamp else float("inf")


def model_age_days(now: float | None = None) -> float:
    """Days since the commit that last changed dvc.lock (when the served model was trained)."""
    stamp = git("log", "-1", "--format=%ct", "--", LOCK_FILE.as_posix(), check=False)
    if not stamp:
        return float("nan")
    return ((now or time.time()) - int(stamp)) / 86400


@dataclass(frozen=True)
class VersionState:
    """Where the workspace model stands in the registry."""

    name: str
    version: str
    run_id: str
    gate: str  # "passed" or "failed"
    decision: str | None  # the loop's verdict once it gave one: promoted / rejected
    champion: str | None
    challenger: str | None


def workspace_version(params: Params) -> VersionState:
    """The registered version of the workspace model, its gate decision and the aliases."""
    from mlflow import MlflowClient

    from tabml.lineage import git_lineage
    from tabml.registry import CHAMPION, current_alias
    from tabml.track import raw_params_of, track_model
    from tabml.tracking_store import resolve_tracking_uri

    uri = resolve_tracking_uri(params.tracking.uri)
    tracked = track_model(params, raw_params_of(PARAMS_FILE), uri, git_lineage(), promote=False)
    client = MlflowClient(uri, registry_uri=uri)
    name = params.tracking.registered_model
    version = client.get_run(tracked.run_id).data.tags["registered_version"]
    tags = client.get_model_version(name, version).tags
    return VersionState(
        name,
        version,
        tracked.run_id,
        tags.get("gate.decision", "failed"),
        tags.get(DECISION_TAG),
        current_alias(client, name, CHAMPION),
        current_alias(client, name, CHALLENGER),
    )


def record_decision(params: Params, version: str, decision: str, evidence: dict[str, Any]) -> None:
    """The loop's verdict on a version, as tags on the model version (with its evidence)."""
    import json

    from mlflow import MlflowClient

    from tabml.tracking_store import resolve_tracking_uri

    uri = resolve_tracking_uri(params.tracking.uri)
    client = MlflowClient(uri, registry_uri=uri)
    name = params.tracking.registered_model
    client.set_model_version_tag(name, version, DECISION_TAG, decision)
    client.set_model_version_tag(
        name, version, "loop.evidence", json.dumps(evidence, sort_keys=True)[:5000]
    )


def log_dir_of(params: Params, root: Path = Path(".")) -> Path:
    return root / params.loop.log_dir
