"""Benchmarks and the shared helpers depend on tests/support only: a benchmark that imports a test
module or a conftest runs that module's import-time work and breaks when tests are reorganised."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.support.project import REPO_ROOT


def imported_tests_modules(path: Path) -> set[str]:
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
        elif isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
    return {m for m in modules if m == "tests" or m.startswith("tests.")}


def test_benchmarks_and_support_import_only_tests_support() -> None:
    files = sorted((REPO_ROOT / "bench").glob("*.py"))
    files += sorted((REPO_ROOT / "tests" / "support").glob("*.py"))
    assert len(files) > 10
    wrong = {
        f"{path.relative_to(REPO_ROOT)}: {module}"
        for path in files
        for module in imported_tests_modules(path)
        if not module.startswith("tests.support")
    }
    assert not wrong, sorted(wrong)


def test_benchmarks_use_the_support_package() -> None:
    """The check above sees the imports it is meant to police."""
    load_test = REPO_ROOT / "bench" / "load_test.py"
    assert "tests.support.processes" in imported_tests_modules(load_test)
