"""The data contract: which columns exist, their types, allowed values, ranges and null policy.

Defined once (in `conf/dataset/*.yaml`), enforced on raw files by the validate stage and on
requests by the prediction API. It is plain pydantic so serving can load it without pandas.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, model_validator


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


class DataContract(_Strict):
    """Raw-data layout plus per-column rules; `columns` are the model inputs in file order."""

    name: str
    separator: str
    missing_marker: str
    label: LabelSpec
    columns: list[ColumnSpec]

    @property
    def feature_names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def raw_names(self) -> list[str]:
        """Column names of a raw file: the inputs followed by the label."""
        return [*self.feature_names, self.label.column]

    def column(self, name: str) -> ColumnSpec:
        for spec in self.columns:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def save(self, path: Path) -> None:
        from tabml.atomic import write_text_atomic

        write_text_atomic(path, json.dumps(self.model_dump(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: Path) -> DataContract:
        return cls.model_validate_json(Path(path).read_text())
