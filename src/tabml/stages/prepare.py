"""prepare: encode the label, split train/valid, write parquet.

Reads the typed tables the validate stage wrote (pyarrow only: no CSV parsing, no pandas). A
dataset's own test file stays the test set (Adult's `adult.test`: comparable with published
results); a dataset without one (`dataset.test_holdout`) holds out a stratified, seeded share of
the training file instead. The rest is split into train and validation (for early stopping),
stratified by label and seeded.
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tabml.atomic import write_with
from tabml.config import load_params
from tabml.contract import LabelSpec
from tabml.features import TARGET
from tabml.stages._runner import run_stage


def stratified_split(labels: np.ndarray, valid_fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of validation rows: the same fraction of each class, chosen by a seeded RNG.

    Written with numpy rather than scikit-learn to keep this stage's start-up cheap.
    """
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(labels), dtype=bool)
    for value in np.unique(labels):
        rows = np.flatnonzero(labels == value)
        mask[rng.permutation(rows)[: round(valid_fraction * len(rows))]] = True
    return mask


def with_target(table: pa.Table, label: str, positive: str) -> pa.Table:
    """Replace the label column by a 0/1 int8 `target` column."""
    target = pc.equal(table.column(label), positive).cast(pa.int8())
    table = table.drop_columns([label]).append_column(TARGET, target)
    return table.replace_schema_metadata(None)  # pandas' metadata no longer describes it


def _labelled(path: Path, label: LabelSpec) -> pa.Table:
    return with_target(pq.read_table(path), label.column, label.positive)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--validated", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    params = load_params()
    dataset = params.dataset
    full = _labelled(args.validated / "train.parquet", dataset.label)
    if dataset.test_holdout is None:
        test = _labelled(args.validated / "test.parquet", dataset.label)
    else:
        # No test file: a stratified, seeded holdout of the training file is the test set. Its
        # seed differs from the validation split's, so the two draws are independent.
        test_mask = stratified_split(
            full.column(TARGET).to_numpy(), dataset.test_holdout, params.seed + 1
        )
        full, test = full.filter(pa.array(~test_mask)), full.filter(pa.array(test_mask))
    valid_mask = stratified_split(
        full.column(TARGET).to_numpy(), params.split.valid_fraction, params.seed
    )
    splits = {
        "train": full.filter(pa.array(~valid_mask)),
        "valid": full.filter(pa.array(valid_mask)),
        "test": test,
    }
    for name, table in splits.items():
        write_with(args.out / f"{name}.parquet", partial(pq.write_table, table))
        rate = pc.mean(table.column(TARGET)).as_py()
        print(f"{name}: {table.num_rows} rows, positive rate {rate:.4f}")


if __name__ == "__main__":
    run_stage("prepare", main)
