"""prepare: type the raw files by the contract, encode the label, split train/valid, write parquet.

UCI's own `adult.test` stays the test set (comparable with published results); the training file
is split into train and validation (for early stopping), stratified by label and seeded.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from tabml.atomic import write_with
from tabml.config import load_params
from tabml.data import read_raw
from tabml.features import TARGET
from tabml.stages._runner import run_stage
from tabml.validation import validate_raw


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


def load_split(path: Path, skip_rows: int, params) -> pd.DataFrame:
    contract = params.dataset.contract()
    frame = validate_raw(read_raw(path, contract, skip_rows), contract, str(path))
    label = frame.pop(contract.label.column)
    frame[TARGET] = (label == contract.label.positive).astype("int8")
    return frame.reset_index(drop=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    params = load_params()
    files = params.dataset.files
    full = load_split(args.data / files["train"].name, files["train"].skip_rows, params)
    valid_mask = stratified_split(full[TARGET].to_numpy(), params.split.valid_fraction, params.seed)
    splits = {
        "train": full[~valid_mask].reset_index(drop=True),
        "valid": full[valid_mask].reset_index(drop=True),
        "test": load_split(args.data / files["test"].name, files["test"].skip_rows, params),
    }
    for name, frame in splits.items():
        write_with(
            args.out / f"{name}.parquet", lambda tmp, f=frame: f.to_parquet(tmp, index=False)
        )
        print(f"{name}: {len(frame)} rows, positive rate {frame[TARGET].mean():.4f}")


if __name__ == "__main__":
    run_stage("prepare", main)
