"""Reproducibility audit: rebuild the current commit from scratch and compare with `dvc.lock`.

`python src/train.py --verify` clones HEAD into a temporary directory, obtains the pinned data
(DVC remote or pinned download), reruns every stage there with an empty cache, and compares each
output's md5 with the one the commit's `dvc.lock` records, stage by stage. Any difference is a
non-zero exit: the commit does not reproduce.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tabml.lockfile import parse_lock


@dataclass(frozen=True)
class OutputCheck:
    stage: str
    path: str
    expected: str
    actual: str | None

    @property
    def ok(self) -> bool:
        return self.expected == self.actual


def locked_outputs(lock_text: str) -> dict[tuple[str, str], str]:
    """(stage, output path) → md5, from the text of a dvc.lock file."""
    return {
        (stage, path): md5
        for stage, outs in parse_lock(lock_text).stage_outputs.items()
        for path, md5 in outs.items()
    }


def compare(
    expected: dict[tuple[str, str], str], actual: dict[tuple[str, str], str]
) -> list[OutputCheck]:
    return [
        OutputCheck(stage, path, md5, actual.get((stage, path)))
        for (stage, path), md5 in expected.items()
    ]


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=repo, capture_output=True, text=True, check=True
    ).stdout.strip()


def reproduce_in_clone(repo: Path, workdir: Path) -> Path:
    """Clone HEAD of `repo` into `workdir` and run the pipeline there with a fresh DVC cache."""
    clone = workdir / "clone"
    subprocess.run(["git", "clone", "--quiet", str(repo), str(clone)], check=True)
    if (repo / ".dvc" / "config.local").exists():
        # The user's local remote settings (credentials, endpoint) apply to the audit too.
        (clone / ".dvc" / "config.local").write_bytes((repo / ".dvc" / "config.local").read_bytes())
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    result = subprocess.run(
        [sys.executable, "src/train.py", "--no-push"],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"the pipeline failed in the clean clone:\n{result.stdout}\n{result.stderr}"
        )
    return clone


def audit(repo: Path) -> list[OutputCheck]:
    """Reproduce HEAD from scratch and compare every output md5 with HEAD's dvc.lock."""
    expected = locked_outputs(_git(repo, "show", "HEAD:dvc.lock"))
    with tempfile.TemporaryDirectory(prefix="tabml-verify-") as tmp:
        clone = reproduce_in_clone(repo, Path(tmp))
        actual = locked_outputs((clone / "dvc.lock").read_text())
    return compare(expected, actual)


def print_report(checks: list[OutputCheck], commit: str, out=sys.stdout) -> bool:
    print(f"reproducibility audit of commit {commit}", file=out)
    for check in checks:
        status = "ok" if check.ok else "DIFFERS"
        detail = check.expected if check.ok else f"locked {check.expected}, got {check.actual}"
        print(f"  {status:<8}{check.stage:<11}{check.path:<34}{detail}", file=out)
    bad = [c for c in checks if not c.ok]
    verdict = "reproduces exactly" if not bad else f"{len(bad)} output(s) differ"
    print(f"{len(checks)} outputs checked: {verdict}", file=out)
    return not bad


def run_audit(repo: Path = Path(".")) -> int:
    repo = repo.resolve()
    if _git(repo, "status", "--porcelain", "--untracked-files=no"):
        print("note: uncommitted changes are not audited; the audit rebuilds HEAD", file=sys.stderr)
    checks = audit(repo)
    return 0 if print_report(checks, _git(repo, "rev-parse", "--short", "HEAD")) else 1
