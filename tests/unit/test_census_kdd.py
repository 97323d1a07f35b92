"""Census-KDD through the same code as Adult, on a committed sample of 120 training lines
(15 positive): its configuration, raw format, contract, features and loop batches."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
from tests.support.project import REPO_ROOT

from tabml.contract import DataContract
from tabml.data import FieldCountError, read_raw
from tabml.features import FeatureTransform
from tabml.loop.data_version import raw_line
from tabml.pipeline import compose
from tabml.validation import DataContractError, validate_raw

SAMPLE = REPO_ROOT / "tests" / "fixtures" / "census_kdd" / "sample.csv"
PARAMS, _ = compose(["dataset=census_kdd"], REPO_ROOT / "conf")
CONTRACT = PARAMS.dataset.contract()


def test_the_dataset_has_its_own_paths_registry_name_and_settings() -> None:
    dataset = PARAMS.dataset
    assert (dataset.data_dir, dataset.dvc_file.as_posix()) == (
        "datasets/census_kdd",
        "datasets/census_kdd.dvc",
    )
    assert dataset.reference_profile == "reference/census_kdd/profile.json"
    # its data version starts with its first run (`dvc add`), so Adult-only clones never see it
    assert not _tracked(dataset.dvc_file)
    assert PARAMS.tracking.registered_model == PARAMS.tracking.experiment == "tabml-census_kdd"
    assert PARAMS.evaluate.sensitive == ["sex", "race"]
    assert PARAMS.features.derived == []  # Adult's capital_net names Adult's columns
    assert PARAMS.gate.minimum == 0.94


def _tracked(path: Path) -> bool:
    listed = subprocess.run(
        ["git", "ls-files", "--", path.as_posix()], cwd=REPO_ROOT, capture_output=True, text=True
    )
    return bool(listed.stdout.strip())


def test_adult_keeps_its_paths_and_settings() -> None:
    adult, _ = compose([], REPO_ROOT / "conf")
    assert (adult.dataset.data_dir, adult.dataset.dvc_file.as_posix()) == ("data", "data.dvc")
    assert adult.dataset.reference_profile == "reference/profile.json"
    assert adult.tracking.registered_model == "tabml-adult"
    assert adult.features.derived == ["capital_net"]
    assert [s.name for s in adult.evaluate.slices] == ["sex", "race", "age_band", "education_level"]


def test_the_raw_layout_is_ucis_with_the_instance_weight_as_column_25() -> None:
    assert len(CONTRACT.raw_names) == 42  # 41 attributes and the label
    assert CONTRACT.raw_names[24] == "instance_weight"
    assert "instance_weight" not in CONTRACT.feature_names
    assert len(CONTRACT.feature_names) == 40
    assert CONTRACT.raw_names[-1] == CONTRACT.label.column == "income"


def test_the_sample_parses_and_validates_without_the_weight(tmp_path: Path) -> None:
    frame = validate_raw(read_raw(SAMPLE, CONTRACT, 0), CONTRACT, str(SAMPLE))
    assert len(frame) == 120
    assert list(frame.columns) == CONTRACT.labelled_names
    assert sorted(frame["income"].unique()) == ["- 50000", "50000+"]  # the dot stripped
    assert int((frame["income"] == "50000+").sum()) == 15
    assert frame["age"].dtype == np.int64
    # "?" is a null; "Not in universe" is a level of its own
    assert frame["migration_code_change_in_msa"].isna().any()
    assert (frame["class_of_worker"] == "Not in universe").any()


def _lines() -> list[str]:
    return SAMPLE.read_text().splitlines(keepends=True)


def test_a_line_without_the_weight_is_a_field_count_error_naming_the_line(tmp_path: Path) -> None:
    lines = _lines()
    fields = lines[2].split(", ")
    lines[2] = ", ".join(fields[:24] + fields[25:])
    path = tmp_path / "train.csv"
    path.write_text("".join(lines))
    with pytest.raises(FieldCountError, match=r"train.csv line 3: expected 42 fields .* found 41"):
        read_raw(path, CONTRACT, 0)


def test_a_category_outside_the_contract_is_reported_by_column_and_line(tmp_path: Path) -> None:
    lines = _lines()
    fields = lines[4].split(", ")
    fields[CONTRACT.raw_names.index("education")] = "Kindergarten"
    lines[4] = ", ".join(fields)
    path = tmp_path / "train.csv"
    path.write_text("".join(lines))
    with pytest.raises(DataContractError) as error:
        validate_raw(read_raw(path, CONTRACT, 0), CONTRACT, str(path))
    message = str(error.value)
    assert "1 contract violation(s)" in message and "column 'education'" in message
    assert "e.g. line 5: 'Kindergarten'" in message


def test_the_weight_is_not_checked_so_any_value_there_passes(tmp_path: Path) -> None:
    """Ignored means read past: the weight is never an input, so its value is not judged."""
    lines = _lines()
    fields = lines[0].split(", ")
    fields[24] = "not-a-number"
    lines[0] = ", ".join(fields)
    path = tmp_path / "train.csv"
    path.write_text("".join(lines))
    assert len(validate_raw(read_raw(path, CONTRACT, 0), CONTRACT, str(path))) == 120


def test_the_feature_transform_fits_the_sample_and_round_trips(tmp_path: Path) -> None:
    frame = validate_raw(read_raw(SAMPLE, CONTRACT, 0), CONTRACT, str(SAMPLE))
    columns = {name: frame[name].to_numpy() for name in CONTRACT.feature_names}
    transform = FeatureTransform(CONTRACT, PARAMS.features.derived).fit(columns)
    matrix = transform.transform(columns)
    assert matrix.shape == (120, 40)
    transform.save(tmp_path / "transform.json")
    again = FeatureTransform.load(tmp_path / "transform.json", CONTRACT).transform(columns)
    np.testing.assert_array_equal(matrix, again)


def test_a_feedback_line_writes_the_missing_marker_for_the_weight(tmp_path: Path) -> None:
    """The loop turns served requests (which never carry the weight) into raw training lines."""
    frame = read_raw(SAMPLE, CONTRACT, 0)
    record = {name: frame[name].iloc[0] for name in CONTRACT.feature_names}
    line = raw_line(record, "50000+", CONTRACT)
    fields = line.split(", ")
    assert len(fields) == 42 and fields[24] == "?"
    path = tmp_path / "batch.data"
    path.write_text(line + "\n")
    typed = validate_raw(read_raw(path, CONTRACT, 0), CONTRACT, str(path))
    assert typed["income"].tolist() == ["50000+"]


def test_a_contract_whose_ignored_column_follows_no_input_is_refused() -> None:
    raw = CONTRACT.model_dump()
    raw["ignored_columns"] = [{"name": "w", "after": "nope", "reason": "r"}]
    with pytest.raises(ValueError, match="after 'nope' is not an input column"):
        DataContract.model_validate(raw)
    raw["ignored_columns"] = [{"name": "age", "after": "sex", "reason": "r"}]
    with pytest.raises(ValueError, match="'age' is also an input or the label"):
        DataContract.model_validate(raw)


def test_the_contract_survives_its_json_round_trip(tmp_path: Path) -> None:
    CONTRACT.save(tmp_path / "contract.json")
    assert DataContract.load(tmp_path / "contract.json") == CONTRACT
