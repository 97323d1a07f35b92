"""A dataset brought as a CSV (`source: {kind: path}`): a clone whose DVC remote lacks the data
copies the user's files again, md5-checked, and says clearly when they are gone or changed."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tabml.config import DatasetConfig
from tabml.data import DataIntegrityError, fetch_pinned


def _dataset(csv: Path, md5: str) -> DatasetConfig:
    return DatasetConfig.model_validate(
        {
            "name": "shop",
            "data_dir": "datasets/shop",
            "reference_profile": "reference/shop/profile.json",
            "source": {"kind": "path", "paths": [str(csv)]},
            "files": {"train": {"name": csv.name, "md5": md5, "skip_rows": 1}},
            "test_holdout": 0.2,
            "separator": ",",
            "missing_marker": "",
            "label": {"column": "y", "positive": "1", "negative": "0"},
            "columns": [{"name": "a", "type": "int", "min": 0, "max": 9}],
        }
    )


def test_the_users_file_is_copied_and_checked(tmp_path):
    csv = tmp_path / "shop.csv"
    csv.write_text("a,y\n1,0\n2,1\n")
    dataset = _dataset(csv, hashlib.md5(csv.read_bytes()).hexdigest())
    (written,) = fetch_pinned(dataset, tmp_path / "out")
    assert written.read_bytes() == csv.read_bytes()
    assert "the local file(s) `" in dataset.source.describe()


def test_a_changed_or_missing_file_is_refused(tmp_path):
    csv = tmp_path / "shop.csv"
    csv.write_text("a,y\n1,0\n2,1\n")
    with pytest.raises(DataIntegrityError, match=r"shop\.csv from the local file\(s\) .*: md5 "):
        fetch_pinned(_dataset(csv, "0" * 32), tmp_path / "out")
    gone = _dataset(tmp_path / "gone.csv", "0" * 32)
    with pytest.raises(DataIntegrityError, match=r"gone\.csv is neither in the DVC remote nor at"):
        fetch_pinned(gone, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_the_test_set_is_a_file_or_a_holdout(tmp_path):
    csv = tmp_path / "shop.csv"
    raw = _dataset(csv, "0" * 32).model_dump()
    with pytest.raises(ValueError, match="either a 'test' file or a test_holdout share"):
        DatasetConfig.model_validate({**raw, "test_holdout": None})
    files = {**raw["files"], "test": raw["files"]["train"]}
    with pytest.raises(ValueError, match="either a 'test' file or a test_holdout share"):
        DatasetConfig.model_validate({**raw, "files": files})
