"""The project under test: its root, its real commands (`python src/train.py`, `dvc`) with this
interpreter's environment, and a fresh clone of it in a temp git repo."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable


def command_env(**extra: str) -> dict[str, str]:
    """The environment for child commands: this interpreter's venv first on PATH."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(PYTHON).parent), env.get("PATH", "")])
    env.pop("MLFLOW_TRACKING_URI", None)
    env.update(extra)
    return env


def run(
    args: list[str], cwd: Path, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        args, cwd=cwd, capture_output=True, text=True, env=env or command_env(), check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{args} exited {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        )
    return result


def train(repo: Path, *overrides: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run([PYTHON, "src/train.py", *overrides], cwd=repo, check=check)


def dvc(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run([PYTHON, "-m", "dvc", *args], cwd=repo, check=check)


def stages_run(output: str) -> list[str]:
    """The stages a `python src/train.py` run reports it ran (its "stages run:" line)."""
    (line,) = [line for line in output.splitlines() if line.startswith("stages run:")]
    names = line.removeprefix("stages run:").strip()
    return [] if names.startswith("none") else names.split(", ")


def clone_repo(dest: Path, with_data: bool = True) -> Path:
    """A fresh `git clone` of the committed project, with its own empty DVC cache.

    The working tree's uncommitted edits to tracked files are carried over so tests exercise the
    code under test; data/ is copied from the main checkout when it is there (it is pinned by
    data.dvc, so this only saves the download).
    """
    run(["git", "clone", "--quiet", str(REPO_ROOT), str(dest)], cwd=REPO_ROOT)
    changed = run(["git", "diff", "--name-only", "HEAD"], cwd=REPO_ROOT).stdout.split()
    # Data versions a census-KDD (or other) run wrote into this checkout's datasets/ are its
    # state, not code under test: a clone that copied such a .dvc file without its data would
    # report it missing (docs/datasets.md).
    untracked = [
        name
        for name in run(
            ["git", "ls-files", "--others", "--exclude-standard"], cwd=REPO_ROOT
        ).stdout.split()
        if not name.startswith("datasets/")
    ]
    for name in [*changed, *untracked]:
        source = REPO_ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
        elif not source.exists():
            (dest / name).unlink(missing_ok=True)
    if with_data and (REPO_ROOT / "data").is_dir():
        shutil.copytree(REPO_ROOT / "data", dest / "data")
    run(["git", "config", "user.email", "tests@example.invalid"], cwd=dest)
    run(["git", "config", "user.name", "tabml tests"], cwd=dest)
    run(["git", "add", "-A"], cwd=dest)
    run(["git", "commit", "--quiet", "--allow-empty", "-m", "test snapshot"], cwd=dest)
    # An isolated remote so tests never push into the user's default one.
    dvc(dest, "remote", "add", "--local", "-f", "-d", "testremote", str(dest.parent / "remote"))
    return dest
