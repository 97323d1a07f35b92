"""Session fixtures shared by every test directory; the helpers they use are in tests/support."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.support.project import REPO_ROOT, clone_repo, train


@pytest.fixture(scope="session")
def trained_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh clone without data/ on which `python src/train.py` has run once.

    The first run fetches the pinned data and pushes to the clone's own test remote; its output
    is kept in `first_run.log` next to the repo. Shared: tests that change it work on a copy.
    """
    repo = clone_repo(tmp_path_factory.mktemp("trained") / "repo", with_data=False)
    result = train(repo)
    (repo.parent / "first_run.log").write_text(result.stdout + result.stderr)
    return repo


@pytest.fixture(scope="session")
def pipeline_outputs() -> Path:
    """Bring the main checkout's pipeline outputs (models/, reports/) up to date once per session.

    Requested only by tests that use these artifacts (serving, container, the manifests' route
    check): on a fresh clone this runs the whole pipeline, afterwards it is a no-op of about a
    second. Unit tests never trigger it.
    """
    train(REPO_ROOT)
    return REPO_ROOT / "models"
