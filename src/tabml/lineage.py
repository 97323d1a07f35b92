"""The lineage a tracked model carries: which data, model, parameters, code and environment.

Read from files and git only (no MLflow), so the tracking fast path can compute a model's
identity before deciding whether MLflow is needed at all.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tabml.data import file_md5, pinned_dir_md5
from tabml.environment import environment
from tabml.layout import DVC_YAML, LOCK_FILE, MODEL_STAGE
from tabml.lockfile import locked_md5
from tabml.tracking_store import identity_tags

TAG_PARAMS_MD5 = "params_md5"
TAG_DVC_EXP = "dvc_exp_name"
KEY_PACKAGES = ("lightgbm", "numpy", "pandas", "scikit-learn", "dvc", "hydra-core", "mlflow")


def params_md5(raw: Mapping[str, Any]) -> str:
    return hashlib.md5(json.dumps(raw, sort_keys=True).encode()).hexdigest()


def pipeline_outputs(dvc_yaml: Path = DVC_YAML) -> set[str]:
    """Every path the pipeline writes (outs, metrics, plots of all stages), plus dvc.lock."""
    stages = yaml.safe_load(dvc_yaml.read_text()).get("stages", {})
    paths = {str(LOCK_FILE)}
    for stage in stages.values():
        for kind in ("outs", "metrics", "plots"):
            for out in stage.get(kind, []):
                paths.add(next(iter(out)) if isinstance(out, dict) else str(out))
    return paths


def _git(*args: str) -> str | None:
    try:
        result = subprocess.run(["git", *args], capture_output=True, text=True, check=False)
    except OSError:
        return None
    return result.stdout if result.returncode == 0 else None


def git_lineage() -> dict[str, str]:
    """Commit and dirty flag of the working tree. Files the pipeline itself writes (its outputs
    and dvc.lock) do not count as dirty: the run has just rewritten them. Anything else that
    differs from the commit (code, conf/, params.yaml, data.dvc) does, and is listed."""
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=all")
    if commit is None or status is None:
        return {"git_commit": "unknown", "git_dirty": "unknown"}
    outputs = pipeline_outputs()
    changed = sorted(
        path
        for path in (line[3:].split(" -> ")[-1].strip('"') for line in status.splitlines())
        if not any(path == out or path.startswith(out.rstrip("/") + "/") for out in outputs)
    )
    return commit_tags(commit.strip(), changed)


def commit_tags(commit: str, changed: list[str] | None = None) -> dict[str, str]:
    tags = {
        "git_commit": commit,
        "mlflow.source.git.commit": commit,
        "git_dirty": str(bool(changed)).lower(),
    }
    if changed:
        tags["git_dirty_files"] = ", ".join(changed)[:4000]
    return tags


@dataclass(frozen=True)
class Lineage:
    model_md5: str
    data_md5: str
    #: the tags that identify the model in the store (see `tracking_store.identity_tags`)
    identity: dict[str, str]
    tags: dict[str, str]


def collect_lineage(
    model_file: Path,
    data_dvc: Path,
    dataset: str,
    registered_model: str,
    raw_params: Mapping[str, Any],
    git_tags: dict[str, str],
    lock_file: Path = LOCK_FILE,
    model_path: str | None = None,
) -> Lineage:
    """Tags tying a run to its exact data, model, parameters, code and environment.

    `model_path` is the model's path as dvc.lock records it (default: `model_file` itself).
    """
    model_md5 = file_md5(model_file)
    locked = locked_md5(model_path or model_file.as_posix(), MODEL_STAGE, lock_file)
    if locked is not None and locked != model_md5:
        print(
            f"warning: {model_file} has md5 {model_md5} but dvc.lock records {locked}; "
            "tagging the file's own md5",
            file=sys.stderr,
        )
    data_md5 = pinned_dir_md5(data_dvc)
    identity = identity_tags(model_md5, data_md5, registered_model)
    tags = {
        **identity,
        TAG_PARAMS_MD5: params_md5(raw_params),
        "dataset": dataset,
        **environment(KEY_PACKAGES),
        **git_tags,
    }
    return Lineage(model_md5, data_md5, identity, tags)
