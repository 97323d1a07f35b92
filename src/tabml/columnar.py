"""Parquet in and out as plain numpy columns, without pandas, to keep model stages light."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tabml.atomic import write_with


def read_columns(path: Path) -> dict[str, np.ndarray]:
    """Every column as a numpy array; strings become object arrays with None for missing."""
    table = pq.read_table(path)
    return {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}


def write_columns(path: Path, columns: dict[str, np.ndarray]) -> None:
    table = pa.table(columns)
    write_with(path, lambda tmp: pq.write_table(table, tmp))
