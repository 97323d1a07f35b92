"""Which profile the validate stage's distribution check compares a new data version with."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tabml.layout import VALIDATION_REFERENCE
from tabml.pipeline import refresh_validation_reference

PROFILE = Path("models/reference_profile.json")


def _lock(profile_md5: str) -> str:
    return (
        "schema: '2.0'\nstages:\n  profile:\n    cmd: x\n    outs:\n"
        f"    - path: {PROFILE.as_posix()}\n      hash: md5\n      md5: {profile_md5}\n"
    )


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    PROFILE.parent.mkdir()
    PROFILE.write_text('{"rows": 2}\n')
    VALIDATION_REFERENCE.parent.mkdir()
    VALIDATION_REFERENCE.write_text('{"rows": 1}\n')
    return tmp_path


def test_the_locked_profile_of_the_workspace_model_becomes_the_reference(workspace: Path) -> None:
    Path("dvc.lock").write_text(_lock(hashlib.md5(PROFILE.read_bytes()).hexdigest()))
    assert refresh_validation_reference() == b'{"rows": 1}\n'  # what to restore on failure
    assert VALIDATION_REFERENCE.read_bytes() == PROFILE.read_bytes()
    assert refresh_validation_reference() is None  # already current: nothing to restore


def test_a_profile_dvc_lock_does_not_pin_is_not_a_reference(workspace: Path) -> None:
    Path("dvc.lock").write_text(_lock("0" * 32))  # e.g. a profile stage that is half-way through
    assert refresh_validation_reference() is None
    assert VALIDATION_REFERENCE.read_text() == '{"rows": 1}\n'


def test_without_a_model_the_committed_reference_stays(workspace: Path) -> None:
    PROFILE.unlink()
    assert refresh_validation_reference() is None
    assert VALIDATION_REFERENCE.read_text() == '{"rows": 1}\n'
