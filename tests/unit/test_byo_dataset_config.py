"""What a dataset brought as a CSV adds to the configuration and the contract: the path source
(a clone whose DVC remote lacks the data copies the user's files again, md5-checked), the test
holdout, the file's column order, unlabelled rows dropped; and Adult's contract file unchanged."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml
from tests.support.project import REPO_ROOT

from tabml.config import DatasetConfig
from tabml.contract import DataContract
from tabml.data import DataIntegrityError, fetch_pinned, parse_raw
from tabml.validation import drop_unlabelled, validate_raw


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


def test_label_first_file_with_unlabelled_rows_validates(tmp_path):
    """`file_columns` reads a file whose label comes first; `label.unlabelled: drop` leaves the
    unlabelled row out; the validated table is the inputs then the label."""
    contract = DataContract.model_validate(
        {
            "name": "shop",
            "separator": ",",
            "missing_marker": "NA",
            "label": {"column": "y", "positive": "1", "negative": "0", "unlabelled": "drop"},
            "columns": [{"name": "a", "type": "int", "min": 0, "max": 9}],
            "file_columns": ["y", "a"],
        }
    )
    raw = tmp_path / "shop.csv"
    raw.write_text("y,a\n1,3\nNA,4\n0,5\n")
    frame, dropped = drop_unlabelled(parse_raw(raw, contract, skip_rows=1), contract)
    typed = validate_raw(frame, contract, str(raw))
    assert dropped == 1
    assert list(typed.columns) == ["a", "y"]
    assert typed["a"].tolist() == [3, 5] and list(typed.index) == [2, 4]
    with pytest.raises(ValueError, match=r"file_columns .* must name every column and the label"):
        DataContract.model_validate({**contract.model_dump(), "file_columns": ["a"]})


def test_adults_contract_file_has_none_of_the_new_fields(tmp_path):
    """At their defaults, `file_columns` and `label.unlabelled` stay out of contract.json, so
    Adult's contract (and every stage after validate in dvc.lock) is byte-identical."""
    raw = yaml.safe_load((REPO_ROOT / "conf" / "dataset" / "adult.yaml").read_text())
    contract = DatasetConfig.model_validate(raw).contract()
    contract.save(tmp_path / "contract.json")
    saved = json.loads((tmp_path / "contract.json").read_text())
    assert "file_columns" not in saved and "unlabelled" not in saved["label"]
    assert DataContract.load(tmp_path / "contract.json") == contract
