"""The feature transform: one code path for DataFrames and JSON-decoded lists."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tabml.contract import ColumnSpec, DataContract, LabelSpec
from tabml.features import FeatureTransform

CONTRACT = DataContract(
    name="toy",
    separator=", ",
    missing_marker="?",
    label=LabelSpec(column="y", positive="1", negative="0"),
    columns=[
        ColumnSpec(name="capital_gain", type="int", min=0),
        ColumnSpec(name="capital_loss", type="int", min=0),
        ColumnSpec(
            name="color", type="category", nullable=True, categories=["blue", "red", "teal"]
        ),
    ],
)


def fitted() -> FeatureTransform:
    train = {"capital_gain": [5, 0, 7], "capital_loss": [0, 2, 0], "color": ["red", None, "blue"]}
    return FeatureTransform(CONTRACT, ["capital_net"]).fit(train)


def test_fit_learns_sorted_levels_seen_in_training() -> None:
    assert fitted().categories_ == {"color": ["blue", "red"]}
    assert fitted().feature_names_ == ["capital_gain", "capital_loss", "color", "capital_net"]


def test_missing_and_unseen_categories_become_nan() -> None:
    matrix = fitted().transform(
        {"capital_gain": [1, 2, 3], "capital_loss": [0, 1, 5], "color": ["red", None, "teal"]}
    )
    np.testing.assert_array_equal(matrix[:, 2][:1], [1.0])
    assert math.isnan(matrix[1, 2]) and math.isnan(matrix[2, 2])
    np.testing.assert_array_equal(matrix[:, 3], [1.0, 1.0, -2.0])


def test_dataframe_and_lists_give_identical_matrices() -> None:
    records = {"capital_gain": [1, 0], "capital_loss": [0, 3], "color": ["blue", None]}
    frame = pd.DataFrame(records).astype({"color": "str"})
    frame.loc[1, "color"] = np.nan
    np.testing.assert_array_equal(fitted().transform(frame), fitted().transform(records))


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "transform.json"
    fitted().save(path)
    loaded = FeatureTransform.load(path, CONTRACT)
    records = {"capital_gain": [9], "capital_loss": [1], "color": ["blue"]}
    np.testing.assert_array_equal(loaded.transform(records), fitted().transform(records))


def test_unknown_derived_feature_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown derived feature"):
        FeatureTransform(CONTRACT, ["age_squared"])
