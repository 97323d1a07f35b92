"""The data contract: which columns exist, their types, allowed values, ranges and null policy.

Defined once (in `conf/dataset/*.yaml`), enforced on raw files by the validate stage and on
requests by the prediction API. It is plain pydantic so serving can load it without pandas.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ColumnSpec(_Strict):
    """One input column. Categorical columns list every allowed value; others may bound a range."""

    name: str
    type: Literal["int", "float", "category"]
    nullable: bool = False
    min: float | None = None
    max: float | None = None
    categories: list[str] | None = None

    @model_validator(mode="after")
    def _categories_iff_categorical(self) -> ColumnSpec:
        if (self.type == "category") != (self.categories is not None):
            raise ValueError(
                f"column {self.name!r}: 'categories' is required for, and only for, type 'category'"
            )
        return self


class LabelSpec(_Strict):
    column: str
    positive: str
    negative: str
    strip_suffix: str = ""
    #: Rows whose label is missing: `error` fails validation; `drop` leaves them out of
    #: training and evaluation (counted in reports/data_validation.json).
    unlabelled: Literal["error", "drop"] = "error"


class IgnoredColumn(_Strict):
    """A raw-file column that is read past: never validated, never a model input or a request
    field (e.g. census-KDD's survey weight). `after` is the input column it follows."""

    name: str
    after: str
    reason: str = Field(min_length=1)


class DataContract(_Strict):
    """Raw-data layout plus per-column rules; `columns` are the model inputs in file order."""

    name: str
    separator: str
    missing_marker: str
    label: LabelSpec
    columns: list[ColumnSpec]
    ignored_columns: list[IgnoredColumn] = []
    #: The order of a raw file's fields when it is not the inputs followed by the label (a CSV
    #: whose label column is not the last one): every input, the label and the ignored columns.
    file_columns: list[str] | None = None

    @model_validator(mode="after")
    def _ignored_columns_fit(self) -> DataContract:
        names = [*self.feature_names, self.label.column]
        for ignored in self.ignored_columns:
            if ignored.after not in self.feature_names:
                raise ValueError(
                    f"ignored column {ignored.name!r}: after {ignored.after!r} is not an input "
                    "column"
                )
            if ignored.name in names:
                raise ValueError(f"ignored column {ignored.name!r} is also an input or the label")
            names.append(ignored.name)
        if len(names) != len(set(names)):
            raise ValueError("ignored column names must be unique")
        if self.file_columns is not None and sorted(self.file_columns) != sorted(names):
            raise ValueError(
                f"file_columns {self.file_columns} must name every column and the label once"
            )
        return self

    @property
    def feature_names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def labelled_names(self) -> list[str]:
        """The inputs followed by the label: the columns of a validated table."""
        return [*self.feature_names, self.label.column]

    @property
    def raw_names(self) -> list[str]:
        """Column names of a raw file, in file order: `file_columns` if given, else the inputs
        (with the ignored columns where they stand) followed by the label."""
        if self.file_columns is not None:
            return list(self.file_columns)
        following: dict[str, list[str]] = {}
        for ignored in self.ignored_columns:
            following.setdefault(ignored.after, []).append(ignored.name)
        names = [n for name in self.feature_names for n in (name, *following.get(name, []))]
        return [*names, self.label.column]

    def column(self, name: str) -> ColumnSpec:
        for spec in self.columns:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def save(self, path: Path) -> None:
        from tabml.atomic import write_text_atomic

        # Fields added for later datasets are left out at their defaults, so the contract files
        # of the first ones (and every stage downstream in dvc.lock) stay byte-identical.
        exclude: dict[str, Any] = {}
        if self.file_columns is None:
            exclude["file_columns"] = True
        if self.label.unlabelled == "error":
            exclude["label"] = {"unlabelled"}
        text = json.dumps(self.model_dump(exclude=exclude), indent=2, sort_keys=True)
        write_text_atomic(path, text + "\n")

    @classmethod
    def load(cls, path: Path) -> DataContract:
        return cls.model_validate_json(Path(path).read_text())
