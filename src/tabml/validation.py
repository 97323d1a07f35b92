"""Enforce the data contract on a raw frame with pandera and report violations readably.

Every rule violation is collected (lazy validation) and summarised per column and rule with
example lines, so one run shows everything wrong with a file.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import pandera.pandas as pa
from pandera.errors import SchemaErrors

from tabml.contract import ColumnSpec, DataContract
from tabml.errors import TabmlError

_DTYPES = {"int": "int64", "float": "float64", "category": "str"}
MAX_EXAMPLES = 5


class DataContractError(TabmlError, ValueError):
    """Raw data breaks the contract; the message names column, rule and example lines."""


def _column_schema(spec: ColumnSpec) -> pa.Column:
    checks = []
    if spec.categories is not None:
        checks.append(pa.Check.isin(spec.categories, name=f"allowed categories of {spec.name}"))
    if spec.min is not None or spec.max is not None:
        low = float("-inf") if spec.min is None else spec.min
        high = float("inf") if spec.max is None else spec.max
        checks.append(pa.Check.in_range(low, high, name=f"range [{spec.min}, {spec.max}]"))
    return pa.Column(_DTYPES[spec.type], checks=checks, nullable=spec.nullable, coerce=True)


def build_schema(contract: DataContract) -> pa.DataFrameSchema:
    columns = {spec.name: _column_schema(spec) for spec in contract.columns}
    label = contract.label
    columns[label.column] = pa.Column(
        "str",
        checks=pa.Check.isin([label.negative, label.positive], name="label values"),
        nullable=False,
    )
    return pa.DataFrameSchema(columns, strict=True, ordered=True, name=contract.name)


def drop_unlabelled(frame: pd.DataFrame, contract: DataContract) -> tuple[pd.DataFrame, int]:
    """The rows that have a label, and how many had none, when the contract says
    `label.unlabelled: drop`; otherwise the frame as it is (validation refuses missing labels)."""
    if contract.label.unlabelled != "drop":
        return frame, 0
    labelled = frame[contract.label.column].notna()
    return frame[labelled], int((~labelled).sum())


def _describe(errors: SchemaErrors, source: str, rows: int) -> str:
    cases = errors.failure_cases
    # A value that cannot be coerced also fails the dtype and range checks of its column;
    # report it once, under the coercion rule that names its line.
    coerced = set(cases.loc[cases["check"].astype(str).str.startswith("coerce_dtype"), "column"])
    redundant = cases["column"].isin(coerced) & ~cases["check"].astype(str).str.startswith(
        "coerce_dtype"
    )
    cases = cases[~redundant]
    lines = [f"{source}: {len(cases)} contract violation(s)"]
    for (column, check), group in cases.groupby(["column", "check"], sort=True, dropna=False):
        examples = ", ".join(
            f"line {int(idx)}: {_shown(val)}" if pd.notna(idx) else _shown(val)
            for idx, val in zip(
                group["index"].head(MAX_EXAMPLES),
                group["failure_case"].head(MAX_EXAMPLES),
                strict=True,
            )
        )
        # A column that fails on every row (all missing, say) is one fault, not many.
        count = f"all {rows} rows" if rows > 1 and len(group) == rows else f"{len(group)} row(s)"
        lines.append(f"  column {column!r} rule {check!r}: {count}, e.g. {examples}")
    return "\n".join(lines)


def _shown(value: Any) -> str:
    return "missing" if pd.isna(value) else repr(value)


def validate_raw(frame: pd.DataFrame, contract: DataContract, source: str) -> pd.DataFrame:
    """Return the frame with contract dtypes, or raise DataContractError listing every problem."""
    try:
        return build_schema(contract).validate(frame, lazy=True)
    except SchemaErrors as exc:
        raise DataContractError(_describe(exc, source, len(frame))) from None


def keep_valid_rows(
    frame: pd.DataFrame, contract: DataContract, source: str
) -> tuple[pd.DataFrame, dict[Any, str]]:
    """Split a frame into the rows that pass the contract and a message per failing row (by
    index).

    For data that must not block the rest (feedback turned into a batch): failing rows are
    reported and left out, never fixed. A problem with the frame as a whole (a missing column)
    still raises DataContractError.
    """
    try:
        return build_schema(contract).validate(frame, lazy=True), {}
    except SchemaErrors as exc:
        cases = exc.failure_cases
        if cases["index"].isna().any():
            raise DataContractError(_describe(exc, source, len(frame))) from None
        problems: dict[Any, str] = {}
        for idx, column, check, value in zip(
            cases["index"], cases["column"], cases["check"], cases["failure_case"], strict=True
        ):
            problems.setdefault(idx, f"{source}: row {idx}: column {column!r} {check!r}: {value!r}")
        kept = frame.drop(index=list(problems))
        return build_schema(contract).validate(kept, lazy=True), problems
