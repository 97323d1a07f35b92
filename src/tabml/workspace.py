"""Which repository this process works for, also from inside DVC's experiment workspaces."""

from __future__ import annotations

import os
from pathlib import Path

# DVC runs queued and `--temp` experiments in copies of the repo under this directory.
DVC_EXPS_DIR = (".dvc", "tmp", "exps")


def repo_root(start: Path | None = None) -> Path:
    """The main repository's root, also from inside one of DVC's experiment workspaces.

    DVC sets DVC_ROOT for every stage command, and for queued and temp experiments points it at
    the main repository rather than the workspace copy under `.dvc/tmp/exps/`. Outside DVC, the
    nearest directory holding `.dvc/` is the root (skipping experiment workspaces).
    """
    if os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]).resolve()
    path = (start or Path.cwd()).resolve()
    parts = path.parts
    for i in range(len(parts) - len(DVC_EXPS_DIR) + 1):
        if parts[i : i + len(DVC_EXPS_DIR)] == DVC_EXPS_DIR:
            return Path(*parts[:i])
    for candidate in (path, *path.parents):
        if (candidate / ".dvc").is_dir():
            return candidate
    return path


def in_experiment_workspace() -> bool:
    """Whether this runs in one of DVC's queued or `--temp` experiment workspaces."""
    return Path.cwd().resolve() != repo_root()
