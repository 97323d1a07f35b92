"""Stage code dependencies are derived from imports, so `dvc.yaml` cannot go stale."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tabml import stage_deps

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """dvc.yaml and src/ of this checkout, in a scratch directory the test may edit."""
    shutil.copy(REPO_ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    shutil.copytree(REPO_ROOT / "src", tmp_path / "src")
    return tmp_path


def test_the_committed_dvc_yaml_lists_every_module_each_stage_imports() -> None:
    stale = stage_deps.stale_stages(REPO_ROOT)
    assert stale == {}, "run `python -m tabml.stage_deps --write`"


def test_imports_are_followed_transitively_lazily_and_through_packages() -> None:
    deps = {
        p.relative_to(REPO_ROOT).as_posix()
        for p in stage_deps.code_dependencies("tabml.stages.evaluate", REPO_ROOT / "src")
    }
    # evaluate imports tabml.model and tabml.features; features imports tabml.contract ...
    assert {"src/tabml/model.py", "src/tabml/features.py", "src/tabml/contract.py"} <= deps
    # ... the stage module and the packages that importing it runs ...
    assert {"src/tabml/stages/evaluate.py", "src/tabml/stages/__init__.py"} <= deps
    assert "src/tabml/__init__.py" in deps
    # ... and nothing it never imports.
    assert not any(d.startswith("src/tabml/serving/") for d in deps)
    assert "src/tabml/registry.py" not in deps


def test_type_checking_imports_do_not_count(tmp_path: Path) -> None:
    package = tmp_path / "tabml"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "used.py").write_text("")
    (package / "typed.py").write_text("")
    (package / "lazy.py").write_text("")
    (package / "entry.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "from tabml import used\n"
        "if TYPE_CHECKING:\n    from tabml import typed\n"
        "def f():\n    from . import lazy\n"
    )
    found = {p.name for p in stage_deps.code_dependencies("tabml.entry", tmp_path)}
    assert found == {"__init__.py", "entry.py", "used.py", "lazy.py"}


def test_a_missing_dependency_is_reported_and_written_back(project: Path) -> None:
    dvc_yaml = project / "dvc.yaml"
    # The hand-kept list this replaced: evaluate without model.py (stale metrics reached the gate).
    head, evaluate = dvc_yaml.read_text().split("\n  evaluate:\n")
    evaluate = evaluate.replace("      - src/tabml/model.py\n", "", 1)
    dvc_yaml.write_text(f"{head}\n  evaluate:\n{evaluate}")
    assert stage_deps.main(["--check", "--project", str(project)]) == 1
    stale = stage_deps.stale_stages(project)
    assert list(stale) == ["evaluate"] and "src/tabml/model.py" in stale["evaluate"]

    comments = [line for line in dvc_yaml.read_text().splitlines() if "#" in line]
    assert stage_deps.update_dvc_yaml(project) == ["evaluate"]
    assert stage_deps.stale_stages(project) == {}
    assert stage_deps.main(["--check", "--project", str(project)]) == 0
    # Only the deps lists changed: every comment and command line is as it was.
    assert [line for line in dvc_yaml.read_text().splitlines() if "#" in line] == comments


def test_a_new_import_becomes_a_dependency(project: Path) -> None:
    src = project / "src"
    (src / "tabml" / "new_helper.py").write_text("VALUE = 1\n")
    stage = src / "tabml" / "stages" / "prepare.py"
    stage.write_text(stage.read_text() + "\nfrom tabml import new_helper  # noqa: E402,F401\n")
    stale = stage_deps.stale_stages(project)
    assert list(stale) == ["prepare"]
    assert "src/tabml/new_helper.py" in stale["prepare"]
