"""Raw-file parsing, the data contract's error messages, hashing and the split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tests.support.project import REPO_ROOT

from tabml import data
from tabml.config import load_params
from tabml.data import FieldCountError, dir_md5, pinned_dir_md5, read_raw
from tabml.stages.prepare import stratified_split
from tabml.validation import DataContractError, validate_raw

CONTRACT = load_params(REPO_ROOT / "params.yaml").dataset.contract()
GOOD = (
    "39, State-gov, 77516, Bachelors, 13, Never-married, Adm-clerical, Not-in-family, White, "
    "Male, 2174, 0, 40, United-States, <=50K\n"
)


def write(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "raw.data"
    path.write_text("".join(lines))
    return path


def test_valid_rows_are_typed_and_missing_marker_becomes_null(tmp_path: Path) -> None:
    row = GOOD.replace("State-gov", "?").replace("<=50K", ">50K.")
    frame = read_raw(write(tmp_path, "|junk header\n", GOOD, row), CONTRACT, skip_rows=1)
    typed = validate_raw(frame, CONTRACT, "raw.data")
    assert list(typed.index) == [2, 3]
    assert typed["age"].dtype == np.int64
    assert typed["workclass"].isna().tolist() == [False, True]
    assert typed["income"].tolist() == ["<=50K", ">50K"]


def test_every_violation_is_reported_with_column_rule_and_line(tmp_path: Path) -> None:
    bad = [
        GOOD.replace("39,", "thirty,"),
        GOOD.replace("White", "Martian"),
        GOOD.replace(", 40,", ", 120,"),
        GOOD.replace("Adm-clerical", "?").replace("Bachelors", "?"),
    ]
    frame = read_raw(write(tmp_path, GOOD, *bad), CONTRACT, skip_rows=0)
    with pytest.raises(DataContractError) as error:
        validate_raw(frame, CONTRACT, "raw.data")
    message = str(error.value)
    assert "column 'age' rule \"coerce_dtype('int64')\": 1 row(s), e.g. line 2: 'thirty'" in message
    assert "column 'race'" in message and "line 3: 'Martian'" in message
    assert "column 'hours_per_week'" in message and "line 4: 120" in message
    assert "column 'education'" in message and "not_nullable" in message
    assert "column 'occupation'" not in message  # nullable by contract


def test_wrong_field_count_names_the_line(tmp_path: Path) -> None:
    with pytest.raises(FieldCountError, match=r"line 2: expected 15 fields .* found 7"):
        read_raw(write(tmp_path, GOOD, GOOD[:60] + "\n"), CONTRACT, skip_rows=0)


@pytest.mark.parametrize(
    ("value", "fast"),
    [
        ("Adm-clerical ", True),  # a level ending in a space, as census-KDD's do
        ("", True),  # an empty field
        ("?", True),  # the missing marker
        ("Adm,clerical", False),  # a comma that separates nothing
        (" Adm-clerical", False),  # a value starting with a space
        ('O"Brien', False),  # a quote, which the Python parser ignores
    ],
)
def test_the_c_parser_reads_what_the_python_parser_reads_or_is_not_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str, fast: bool
) -> None:
    path = write(tmp_path, GOOD, GOOD.replace("Adm-clerical", value), GOOD)
    assert data.c_engine_separator(path, CONTRACT.separator) == ("," if fast else None)
    frame = read_raw(path, CONTRACT, skip_rows=0)
    read = frame.loc[2, "occupation"]
    assert pd.isna(read) if value == "?" else read == value
    monkeypatch.setattr(data, "c_engine_separator", lambda path, separator: None)
    pd.testing.assert_frame_equal(frame, read_raw(path, CONTRACT, skip_rows=0))


def test_a_line_starting_or_ending_with_a_space_is_left_to_the_python_parser(
    tmp_path: Path,
) -> None:
    assert data.c_engine_separator(write(tmp_path, GOOD, " " + GOOD), CONTRACT.separator) is None
    trailing = write(tmp_path, GOOD, GOOD.replace("<=50K\n", "<=50K \n"))
    assert data.c_engine_separator(trailing, CONTRACT.separator) is None
    assert read_raw(trailing, CONTRACT, skip_rows=0).loc[2, "income"] == "<=50K"
    assert data.c_engine_separator(write(tmp_path, GOOD, GOOD), CONTRACT.separator) == ","
    assert data.c_engine_separator(write(tmp_path, GOOD), ",") is None  # one character already


def test_dir_md5_matches_what_dvc_pins() -> None:
    data = REPO_ROOT / "data"
    if not data.is_dir():
        pytest.skip("data/ not present (run python src/train.py)")
    assert dir_md5(data) == pinned_dir_md5(REPO_ROOT / "data.dvc")


def test_stratified_split_is_seeded_and_keeps_class_balance() -> None:
    labels = np.array([0] * 750 + [1] * 250)
    mask = stratified_split(labels, 0.2, seed=1)
    assert mask.sum() == 200 and labels[mask].sum() == 50
    np.testing.assert_array_equal(mask, stratified_split(labels, 0.2, seed=1))
    assert not np.array_equal(mask, stratified_split(labels, 0.2, seed=2))
