"""Where the served model came from: md5 of the artifacts checked against `dvc.lock`, the data
md5 recorded there, and the git commit.

`dvc.lock` is read as plain YAML (no DVC import): `stages.<stage>.outs[].{path, md5}` are the
pipeline's outputs, and a dependency no stage produces (the `data` directory) is an input whose
md5 identifies the training data.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tabml.data import file_md5


class ArtifactIntegrityError(RuntimeError):
    """An artifact's md5 does not match `dvc.lock`, or `dvc.lock` cannot vouch for it."""


@dataclass(frozen=True)
class FileCheck:
    path: str
    md5: str
    expected_md5: str | None

    @property
    def matches(self) -> bool:
        return self.md5 == self.expected_md5

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "md5": self.md5,
            "dvc_lock_md5": self.expected_md5,
            "match": self.matches,
        }


@dataclass(frozen=True)
class LockInfo:
    """The parts of `dvc.lock` the service reports: output md5s by path, input (data) md5s."""

    path: Path
    outputs: dict[str, str]
    inputs: dict[str, str]


def read_dvc_lock(path: Path) -> LockInfo:
    try:
        document = yaml.safe_load(Path(path).read_text())
        stages = document["stages"]
        outputs: dict[str, str] = {}
        dependencies: dict[str, str] = {}
        for stage in stages.values():
            for out in stage.get("outs", []):
                outputs[out["path"]] = out["md5"]
            for dep in stage.get("deps", []):
                if "md5" in dep:
                    dependencies[dep["path"]] = dep["md5"]
    except (OSError, yaml.YAMLError, KeyError, TypeError, AttributeError) as exc:
        raise ArtifactIntegrityError(f"cannot read {path}: {exc}") from None
    inputs = {
        p: md5
        for p, md5 in dependencies.items()
        if p not in outputs and not p.startswith(("src/", "conf/"))
    }
    return LockInfo(Path(path), outputs, inputs)


def _lock_key(file: Path, lock_dir: Path) -> str:
    """The path under which `dvc.lock` records `file` (relative to the lock's directory)."""
    try:
        return Path(os.path.relpath(file.resolve(), lock_dir.resolve())).as_posix()
    except ValueError:  # different drive (Windows)
        return file.as_posix()


def check_artifacts(files: list[Path], lock: LockInfo | None) -> list[FileCheck]:
    """md5 of every file next to what `dvc.lock` records for it (None if not recorded)."""
    checks = []
    for file in files:
        key = _lock_key(file, lock.path.parent) if lock else file.as_posix()
        expected = lock.outputs.get(key) if lock else None
        checks.append(FileCheck(key, file_md5(file), expected))
    return checks


def verify_artifacts(
    files: list[Path], lock_path: Path, *, allow_mismatch: bool
) -> tuple[list[FileCheck], LockInfo | None]:
    """Refuse artifacts that `dvc.lock` does not vouch for, unless explicitly allowed."""
    lock: LockInfo | None
    try:
        lock = read_dvc_lock(lock_path)
    except ArtifactIntegrityError:
        if not allow_mismatch:
            raise
        lock = None
    checks = check_artifacts(files, lock)
    bad = [c for c in checks if not c.matches]
    if bad and not allow_mismatch:
        lines = [
            f"{c.path}: md5 {c.md5} != dvc.lock {c.expected_md5 or '(not recorded)'}" for c in bad
        ]
        raise ArtifactIntegrityError(
            f"artifacts do not match {lock_path}: "
            + "; ".join(lines)
            + ". Rebuild with the pipeline (or `dvc checkout`), or set "
            "TABML_ALLOW_MD5_MISMATCH=1 to serve them anyway."
        )
    return checks, lock


def git_commit(repo_dir: Path) -> str | None:
    """HEAD of the repository holding `repo_dir`, or None outside a git checkout."""
    try:
        result = subprocess.run(
            ["git", "-C", str(repo_dir), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = result.stdout.strip()
    return commit if result.returncode == 0 and commit else None
