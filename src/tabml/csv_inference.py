"""Infer a data contract from a user's CSV (`tabml init-dataset`).

Each column becomes `int`, `float` or `category` with its levels, range (with a margin) and null
policy; the label must have exactly two classes. What the data cannot settle (a numeric column
that may be a code, an identifier, a category with many levels) is not guessed away: it is
returned as a finding for the user to review. Anything that would make the contract wrong (no
label, one class or three, a column mixing numbers and text, two ways of writing "missing") is
an error naming the column and a line.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tabml.contract import ColumnSpec, LabelSpec
from tabml.errors import TabmlError
from tabml.features import TARGET

if TYPE_CHECKING:
    import pandas as pd

    from tabml.csv_reading import CsvTable

#: Field values read as missing. A file may use one of them (the contract has one marker).
MISSING_TOKENS = ("", "NA", "N/A", "NaN", "nan", "null", "NULL", "None", "?")
#: Ranges are widened by this share of the observed span on each side (never below 0 for a
#: column that is never negative), so new data slightly beyond the training extremes passes.
RANGE_MARGIN = 0.1
#: Review thresholds: a numeric column with at most this many distinct values may be a code;
#: a category with more levels than this is high-cardinality.
FEW_NUMERIC_VALUES = 5
MANY_LEVELS = 50
#: Label value pairs whose positive class is evident (lower-cased); otherwise the minority class.
POSITIVE_OF = {
    frozenset({"0", "1"}): "1",
    frozenset({"false", "true"}): "true",
    frozenset({"no", "yes"}): "yes",
    frozenset({"n", "y"}): "y",
    frozenset({"f", "t"}): "t",
    frozenset({"-1", "1"}): "1",
    frozenset({"negative", "positive"}): "positive",
}
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_INT = re.compile(r"^[+-]?\d+$")
_LEADING_ZERO = re.compile(r"^[+-]?0\d")
MAX_LISTED = 5


class InferenceError(TabmlError, ValueError):
    """The CSV cannot be turned into a contract; the message names the column and a line."""


@dataclass(frozen=True)
class Inferred:
    """What `infer_contract` found: the contract's parts and what the user should review."""

    separator: str
    missing_marker: str
    label: LabelSpec
    columns: list[ColumnSpec]
    #: The file's column order (the label among them).
    file_columns: list[str]
    rows: int
    class_counts: dict[str, int]
    #: Rows without a label, as file lines (kept out of training only with drop_unlabelled).
    unlabelled_lines: list[str]
    review: list[str] = field(default_factory=list)


def _lines(lines: list[str], mask: pd.Series) -> str:
    hits = [lines[i] for i in mask.to_numpy().nonzero()[0][:MAX_LISTED]]
    more = int(mask.sum()) - len(hits)
    return ", ".join(hits) + (f" and {more} more" if more > 0 else "")


def _missing_marker(table: CsvTable) -> str:
    """The one token the file uses for missing values ("" when it has none)."""
    used: dict[str, tuple[str, str]] = {}
    for name in table.columns:
        values = table.frame[name]
        for token in MISSING_TOKENS:
            hits = (values == token).to_numpy().nonzero()[0]
            if len(hits) and token not in used:
                used[token] = (name, table.lines[hits[0]])
    if len(used) > 1:
        shown = "; ".join(f"{t!r} (column {c!r}, line {n})" for t, (c, n) in used.items())
        raise InferenceError(
            f"{table.path}: missing values are written in {len(used)} ways: {shown}; the "
            "contract has one missing marker: write every missing value the same way"
        )
    return next(iter(used), "")


def _check_names(table: CsvTable, label: str) -> None:
    if label not in table.columns:
        raise InferenceError(
            f"{table.path}: no label column {label!r}; the columns are {table.columns}"
        )
    bad = [n for n in table.columns if not _NAME.match(n) or n == TARGET]
    if bad:
        raise InferenceError(
            f"{table.path} line 1: column name(s) {bad} cannot be API field names: use letters, "
            f"digits and '_', starting with a letter, and not {TARGET!r} (rename them)"
        )
    if len(table.columns) < 2:
        raise InferenceError(f"{table.path}: only the label column; a model needs features")


def _label(
    table: CsvTable, label: str, missing: str, positive: str | None
) -> tuple[LabelSpec, dict[str, int], list[str]]:
    values = table.frame[label]
    absent = values == missing
    counts = values[~absent].value_counts()
    classes = sorted(str(v) for v in counts.index)
    where = f"{table.path}: label column {label!r}"
    if len(classes) < 2:
        what = f"only the class {classes[0]!r}" if classes else "no values"
        raise InferenceError(f"{where} has {what}; a binary label needs two classes")
    if len(classes) > 2:
        shown = ", ".join(f"{v!r} ({counts[v]} rows)" for v in classes[:MAX_LISTED])
        raise InferenceError(
            f"{where} has {len(classes)} classes "
            f"({shown}{', ...' if len(classes) > MAX_LISTED else ''}); "
            "only binary labels are supported: map it to two classes first"
        )
    if positive is None:
        evident = POSITIVE_OF.get(frozenset(c.lower() for c in classes))
        positive = next((c for c in classes if c.lower() == evident), None)
    if positive is None:  # the rarer class; on a tie, the second in sorted order
        positive = min(classes, key=lambda c: (counts[c], classes.index(c) == 0))
    elif positive not in classes:
        raise InferenceError(f"{where}: --positive {positive!r} is not one of {classes}")
    negative = next(c for c in classes if c != positive)
    unlabelled = [table.lines[i] for i in absent.to_numpy().nonzero()[0]]
    spec = LabelSpec(column=label, positive=positive, negative=negative)
    return spec, {c: int(counts[c]) for c in classes}, unlabelled


def _bounds(low: float, high: float, integral: bool) -> tuple[float, float]:
    span = high - low
    margin = RANGE_MARGIN * span if span > 0 else max(RANGE_MARGIN * abs(high), 1.0)
    lower = low - margin if low < 0 or low - margin >= 0 else 0.0
    upper = high + margin
    if integral:
        return float(math.floor(lower)), float(math.ceil(upper))
    return _round_out(lower, math.floor), _round_out(upper, math.ceil)


def _round_out(value: float, direction: Callable[[float], int]) -> float:
    """`value` to 4 significant digits, rounded away from the observed data (readable YAML)."""
    if value == 0:
        return 0.0
    scale = 10.0 ** (math.floor(math.log10(abs(value))) - 3)
    steps = value / scale
    # 0.8999999999 is 0.9 computed in floating point, not a value to round away from
    steps = round(steps) if abs(steps - round(steps)) < 1e-6 else direction(steps)
    return float(f"{steps * scale:.4g}")


def _column(table: CsvTable, name: str, missing: str, review: list[str]) -> ColumnSpec:
    import pandas as pd

    values = table.frame[name]
    absent = values == missing
    present = values[~absent]
    where = f"{table.path}: column {name!r}"
    if present.empty:
        raise InferenceError(f"{where} has no values (every row is missing): drop the column")
    numbers = pd.to_numeric(present, errors="coerce")
    numeric = numbers.notna() & numbers.abs().lt(math.inf)
    nullable = bool(absent.any())
    n_numeric, n_text = int(numeric.sum()), int((~numeric).sum())
    if n_numeric and n_text and n_numeric >= n_text:
        bad = ~values.index.isin(present.index[numeric]) & ~absent
        example = values[bad].iloc[0]
        raise InferenceError(
            f"{where} mixes numbers and text: {n_text} value(s) that are not numbers, e.g. "
            f"{example!r} on line(s) {_lines(table.lines, bad)}, among {n_numeric} numbers; "
            f"fix them or write them as missing"
        )
    codes = bool(n_numeric) and present.str.match(_LEADING_ZERO.pattern).any()
    distinct = present.nunique()
    if n_text or codes:
        levels = sorted(present.unique().tolist())
        if codes:
            review.append(f"{name}: numbers with leading zeros (e.g. {levels[0]!r}), read as codes")
        if distinct > MANY_LEVELS:
            review.append(
                f"{name}: high-cardinality category ({distinct} levels); the service refuses "
                "levels it was not given: drop it or group rare levels"
            )
        if distinct == len(present) and len(present) > 1:
            review.append(f"{name}: every value distinct, looks like an identifier: drop it?")
        spec = ColumnSpec(name=name, type="category", nullable=nullable, categories=levels)
    else:
        integral = bool(present.str.match(_INT.pattern).all())
        low, high = _bounds(float(numbers.min()), float(numbers.max()), integral)
        # The pipeline's int columns cannot hold a missing value: integers with gaps are floats.
        typed = "int" if integral and not nullable else "float"
        spec = ColumnSpec(name=name, type=typed, nullable=nullable, min=low, max=high)
        if integral and nullable:
            review.append(f"{name}: integers with missing values, typed float (int cannot be null)")
        if integral and distinct == len(present) and len(present) > 1:
            review.append(f"{name}: every value distinct, looks like an identifier: drop it?")
        elif distinct <= FEW_NUMERIC_VALUES:
            shown = sorted(numbers.unique().tolist())
            review.append(
                f"{name}: numeric with only {distinct} distinct value(s) {shown}: "
                "a code or a year? make it a category if the order means nothing"
            )
    if distinct == 1:
        review.append(f"{name}: constant ({present.iloc[0]!r}), it cannot help the model")
    if nullable and spec.type == "category" and missing != "":
        review.append(f"{name}: {missing!r} read as missing ({int(absent.sum())} rows)")
    return spec


def infer_contract(
    table: CsvTable, label: str, positive: str | None = None, drop_unlabelled: bool = False
) -> Inferred:
    """Infer the contract of `table` with label column `label` (raises InferenceError)."""
    _check_names(table, label)
    missing = _missing_marker(table)
    label_spec, counts, unlabelled = _label(table, label, missing, positive)
    if unlabelled and not drop_unlabelled:
        raise InferenceError(
            f"{table.path}: label column {label!r} is missing on {len(unlabelled)} row(s), "
            f"line(s) {', '.join(unlabelled[:MAX_LISTED])}"
            f"{' ...' if len(unlabelled) > MAX_LISTED else ''}; a model cannot learn from them: "
            "remove them, or pass --drop-unlabelled to keep them out of training"
        )
    review: list[str] = []
    if positive is None:
        review.append(
            f"{label} (label): positive class {label_spec.positive!r}, negative "
            f"{label_spec.negative!r}; pass --positive to choose the other"
        )
    if unlabelled:
        review.append(f"{label} (label): {len(unlabelled)} unlabelled row(s) left out of training")
    columns = [_column(table, n, missing, review) for n in table.columns if n != label]
    return Inferred(
        separator=table.separator,
        missing_marker=missing,
        label=label_spec,
        columns=columns,
        file_columns=table.columns,
        rows=len(table.frame),
        class_counts=counts,
        unlabelled_lines=unlabelled,
        review=review,
    )
