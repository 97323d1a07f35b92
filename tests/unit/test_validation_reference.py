"""Which profile the validate stage's distribution check compares a new data version with."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from tests.support.project import REPO_ROOT

from tabml.config import DatasetConfig, load_params
from tabml.pipeline import NO_REFERENCE, ensure_validation_reference, refresh_validation_reference

PROFILE = Path("models/reference_profile.json")
#: The committed (Adult) dataset: its reference is reference/profile.json, its data data/.
ADULT = load_params(REPO_ROOT / "params.yaml").dataset
REFERENCE = Path(ADULT.reference_profile)


def _lock(profile_md5: str, data_dir: str = ADULT.data_dir) -> str:
    return (
        "schema: '2.0'\nstages:\n"
        f"  validate:\n    cmd: x\n    deps:\n    - path: {data_dir}\n      hash: md5\n"
        f"      md5: {'1' * 32}.dir\n"
        "  profile:\n    cmd: x\n    outs:\n"
        f"    - path: {PROFILE.as_posix()}\n      hash: md5\n      md5: {profile_md5}\n"
    )


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    PROFILE.parent.mkdir()
    PROFILE.write_text('{"rows": 2}\n')
    REFERENCE.parent.mkdir()
    REFERENCE.write_text('{"rows": 1}\n')
    return tmp_path


def _profile_md5() -> str:
    return hashlib.md5(PROFILE.read_bytes()).hexdigest()


def test_the_locked_profile_of_the_workspace_model_becomes_the_reference(workspace: Path) -> None:
    Path("dvc.lock").write_text(_lock(_profile_md5()))
    assert refresh_validation_reference(ADULT) == b'{"rows": 1}\n'  # what to restore on failure
    assert REFERENCE.read_bytes() == PROFILE.read_bytes()
    assert refresh_validation_reference(ADULT) is None  # already current: nothing to restore


def test_a_profile_dvc_lock_does_not_pin_is_not_a_reference(workspace: Path) -> None:
    Path("dvc.lock").write_text(_lock("0" * 32))  # e.g. a profile stage that is half-way through
    assert refresh_validation_reference(ADULT) is None
    assert REFERENCE.read_text() == '{"rows": 1}\n'


def test_without_a_model_the_committed_reference_stays(workspace: Path) -> None:
    PROFILE.unlink()
    assert refresh_validation_reference(ADULT) is None
    assert REFERENCE.read_text() == '{"rows": 1}\n'


def test_the_profile_of_another_datasets_model_is_not_a_reference(workspace: Path) -> None:
    Path("dvc.lock").write_text(_lock(_profile_md5(), data_dir="datasets/census_kdd"))
    assert refresh_validation_reference(ADULT) is None
    assert REFERENCE.read_text() == '{"rows": 1}\n'


def _other_dataset(name: str) -> DatasetConfig:
    return ADULT.model_copy(
        update={
            "name": name,
            "data_dir": f"datasets/{name}",
            "reference_profile": f"reference/{name}/profile.json",
        }
    )


def test_a_dataset_without_a_reference_gets_the_placeholder_and_keeps_a_real_one(
    workspace: Path,
) -> None:
    other = _other_dataset("census_kdd")
    assert ensure_validation_reference(other)
    assert Path(other.reference_profile).read_bytes() == NO_REFERENCE == b"null\n"
    assert not ensure_validation_reference(ADULT)  # a committed reference is left as it is
    assert REFERENCE.read_text() == '{"rows": 1}\n'
