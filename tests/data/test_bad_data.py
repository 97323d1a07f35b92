"""Data tests: the validate stage on every kind of bad raw data, run as the pipeline runs it.

Each case corrupts a copy of the real `adult.data` and runs `python -m tabml.stages.validate`
over outputs of an earlier good run: the stage must exit 1 with a message naming the file, the
column and the line where the fault has one, and leave every earlier output byte-identical.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from tests.support.project import PYTHON, REPO_ROOT, command_env, run

# The fixture brings the checkout's pipeline outputs up to date (on a fresh clone: a full run).
pytestmark = pytest.mark.slow

RAW = "adult.data"
SEPARATOR = ", "


def _lines(text: str) -> list[str]:
    return text.splitlines(keepends=True)


def _set_field(text: str, line_no: int, field: int, value: str) -> str:
    lines = _lines(text)
    fields = lines[line_no - 1].rstrip("\n").split(SEPARATOR)
    fields[field] = value
    lines[line_no - 1] = SEPARATOR.join(fields) + "\n"
    return "".join(lines)


def _every_row(text: str, edit: Callable[[list[str]], list[str]]) -> str:
    return "".join(
        SEPARATOR.join(edit(line.rstrip("\n").split(SEPARATOR))) + "\n" if line.strip() else line
        for line in _lines(text)
    )


HEADER = (
    "age, workclass, fnlwgt, education, education-num, marital-status, occupation, "
    "relationship, race, sex, capital-gain, capital-loss, hours-per-week, native-country, "
    "income\n"
)


def _header_inside(text: str) -> str:
    lines = _lines(text)
    return "".join([*lines[:1000], HEADER, *lines[1000:]])


def _latin1_at_line_12(text: str) -> bytes:
    """A country written by a Latin-1 editor (the rest of the file is ASCII)."""
    return _set_field(text, 12, 13, "México").encode("latin-1")


def _extra_column(text: str) -> str:
    lines = _lines(text)
    lines[2] = lines[2].rstrip("\n") + ", 1\n"
    return "".join(lines)


def _truncated(text: str) -> str:
    body = text.rstrip("\n")
    return body[: body.rindex("\n") + 40]


# kind → (corruption of adult.data's text, fragments the error message must contain)
CORRUPTIONS: dict[str, tuple[Callable[[str], str | bytes], list[str]]] = {
    "missing column": (
        lambda t: _every_row(t, lambda f: f[1:]),
        ["line 1: expected 15 fields", "found 14", "missing column?"],
    ),
    "non-numeric value": (
        lambda t: _set_field(t, 10, 0, "forty"),
        ["column 'age'", "coerce_dtype('int64')", "line 10: 'forty'"],
    ),
    "label outside the contract": (
        lambda t: _set_field(t, 20, 14, "maybe"),
        ["column 'income'", "isin(['<=50K', '>50K'])", "line 20: 'maybe'"],
    ),
    "truncated mid-line": (_truncated, ["line 32561: expected 15 fields"]),
    "empty file": (lambda t: "", ["no data rows (an empty file)"]),
    "blank lines only": (lambda t: "\n\n", ["no data rows (an empty file)"]),
    "header-only file": (lambda t: HEADER, ["no data rows (only a header row, line 1)"]),
    "header row inside the data": (
        _header_inside,
        ["1 header row(s) (the column names) among the data, line 1001", "remove them"],
    ),
    "all-null required column": (
        lambda t: _every_row(t, lambda f: [*f[:3], "?", *f[4:]]),
        ["column 'education' rule 'not_nullable': all 32561 rows", "line 1: missing"],
    ),
    "new category": (
        lambda t: _set_field(t, 5, 1, "Gig-worker"),
        ["column 'workclass'", "line 5: 'Gig-worker'"],
    ),
    "out-of-range value": (
        lambda t: _set_field(t, 7, 0, "150"),
        ["column 'age'", "in_range(17.0, 100.0)", "line 7: 150"],
    ),
    "not UTF-8": (
        _latin1_at_line_12,
        ["line 12: not UTF-8 (column 'native_country', byte 0xe9", "must be UTF-8"],
    ),
    "comma separator": (
        lambda t: t.replace(", ", ","),
        ["line 1: expected 15 fields separated by ', ', found 1", "split on ','"],
    ),
    "tab separator": (lambda t: t.replace(", ", "\t"), ["line 1:", "split on '\\t'"]),
    "extra column": (_extra_column, ["line 3: expected 15 fields", "found 16 (extra column?)"]),
    "one label value only": (
        lambda t: t.replace(">50K", "<=50K"),
        ["train split (data/adult.data): every one of its 32561 rows has income '<=50K'"],
    ),
}


def md5_tree(root: Path) -> dict[str, str]:
    return {
        path.relative_to(root).as_posix(): hashlib.md5(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


@pytest.fixture
def workspace(pipeline_outputs: Path, tmp_path: Path) -> Path:
    """The real raw files and params.yaml, plus the outputs of the last good validate run."""
    (tmp_path / "data").mkdir()
    for name in (RAW, "adult.test"):
        shutil.copy2(REPO_ROOT / "data" / name, tmp_path / "data" / name)
    shutil.copy2(REPO_ROOT / "params.yaml", tmp_path / "params.yaml")
    shutil.copytree(REPO_ROOT / "reference", tmp_path / "reference")
    out = tmp_path / "outputs"
    shutil.copytree(REPO_ROOT / "artifacts" / "validated", out / "validated")
    shutil.copy2(REPO_ROOT / "models" / "contract.json", out / "contract.json")
    shutil.copy2(REPO_ROOT / "reports" / "data_validation.json", out / "data_validation.json")
    return tmp_path


def validate(workspace: Path):
    out = workspace / "outputs"
    args = [PYTHON, "-m", "tabml.stages.validate", "--data", "data"]
    args += ["--contract", str(out / "contract.json"), "--reference", "reference/profile.json"]
    args += ["--report", str(out / "data_validation.json"), "--out", str(out / "validated")]
    return run(args, cwd=workspace, check=False, env=command_env(PYTHONPATH=str(REPO_ROOT / "src")))


def test_the_real_data_passes_with_no_distribution_warning(workspace: Path) -> None:
    result = validate(workspace)
    assert result.returncode == 0, result.stderr
    report = json.loads((workspace / "outputs" / "data_validation.json").read_text())
    assert report["train"]["rows"] == 32561 and report["test"]["rows"] == 16281
    distribution = report["distribution"]
    assert distribution["warnings"] == [] and "warning" not in result.stderr
    for name in (RAW, "adult.test"):
        psi = distribution["files"][name]["psi"]
        assert distribution["files"][name]["judged"]
        assert set(psi) >= {"age", "education", "hours_per_week"}
        assert max(psi.values()) < 0.01, (name, psi)  # the same population as the reference


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_bad_data_fails_validation_clearly_and_loses_nothing(workspace: Path, kind: str) -> None:
    corrupt, fragments = CORRUPTIONS[kind]
    raw = workspace / "data" / RAW
    bad = corrupt(raw.read_text())
    raw.write_bytes(bad if isinstance(bad, bytes) else bad.encode())
    before = md5_tree(workspace / "outputs")

    result = validate(workspace)

    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.startswith("stage validate failed: "), result.stderr
    assert "Traceback" not in result.stderr
    assert f"data/{RAW}" in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, (fragment, result.stderr)
    assert md5_tree(workspace / "outputs") == before


def _shifted_ages_batch(workspace: Path, rows: int = 1000) -> Path:
    """Real rows whose ages are moved 30 years up (capped by the contract's maximum)."""
    lines = _lines((workspace / "data" / RAW).read_text())[:rows]
    shifted = _every_row("".join(lines), lambda f: [str(min(int(f[0]) + 30, 100)), *f[1:]])
    batch = workspace / "data" / "batches" / "shifted-ages.data"
    batch.parent.mkdir()
    batch.write_text(shifted)
    return batch


def test_a_shifted_batch_warns_naming_the_feature(workspace: Path) -> None:
    _shifted_ages_batch(workspace)
    result = validate(workspace)
    assert result.returncode == 0, result.stderr
    assert "warning: data/batches/shifted-ages.data: column 'age' PSI" in result.stderr
    report = json.loads((workspace / "outputs" / "data_validation.json").read_text())
    batch = report["distribution"]["files"]["batches/shifted-ages.data"]
    assert batch["rows"] == 1000 and batch["shifted"] == ["age"]
    assert batch["psi"]["age"] >= report["distribution"]["psi_alert"]
    assert all(psi < 0.1 for name, psi in batch["psi"].items() if name != "age")
    assert report["distribution"]["files"][RAW]["shifted"] == []
    assert len(report["distribution"]["warnings"]) == 1
    assert report["train"]["batches"] == ["batches/shifted-ages.data"]


def test_a_shifted_batch_fails_with_the_fail_setting_and_loses_nothing(workspace: Path) -> None:
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    params["validation"]["distribution_shift"] = "fail"
    (workspace / "params.yaml").write_text(yaml.safe_dump(params))
    _shifted_ages_batch(workspace)
    before = md5_tree(workspace / "outputs")

    result = validate(workspace)

    assert result.returncode == 1
    assert "stage validate failed: data/batches/shifted-ages.data: column 'age'" in result.stderr
    assert "(validation.distribution_shift: fail)" in result.stderr
    assert md5_tree(workspace / "outputs") == before


def test_a_small_batch_is_profiled_but_not_judged(workspace: Path) -> None:
    _shifted_ages_batch(workspace, rows=100)  # below monitor.min_window_records
    result = validate(workspace)
    assert result.returncode == 0, result.stderr
    report = json.loads((workspace / "outputs" / "data_validation.json").read_text())
    batch = report["distribution"]["files"]["batches/shifted-ages.data"]
    assert batch["judged"] is False and batch["shifted"] == []
    assert batch["psi"]["age"] >= 0.25  # reported, so a reader can still see it
