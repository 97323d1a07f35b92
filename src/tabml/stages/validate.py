"""validate: check every raw file against the data contract; publish the contract and typed data.

The typed tables (parquet) are what later stages read, so the raw files are parsed once.
"""

from __future__ import annotations

import argparse
import json
from functools import partial
from pathlib import Path

import pandas as pd

from tabml.atomic import write_text_atomic, write_with
from tabml.config import load_params
from tabml.data import read_raw
from tabml.stages._runner import run_stage
from tabml.validation import DataContractError, validate_raw

#: The split that labelled batches extend; the test file stays the fixed holdout.
TRAIN_SPLIT = "train"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--contract", type=Path, required=True)
    parser.add_argument("--report", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="directory for typed parquet")
    args = parser.parse_args()

    dataset = load_params().dataset
    contract = dataset.contract()
    report, failures, typed = {}, [], {}
    sources = {split: [(spec.name, spec.skip_rows)] for split, spec in dataset.files.items()}
    batches = sorted((args.data / dataset.batches_dir).glob("*.data"))
    sources[TRAIN_SPLIT] += [(path.relative_to(args.data).as_posix(), 0) for path in batches]
    for split, files in sorted(sources.items()):
        frames = []
        for name, skip_rows in files:
            path = args.data / name
            try:
                frames.append(
                    validate_raw(read_raw(path, contract, skip_rows), contract, str(path))
                )
            except DataContractError as exc:
                failures.append(str(exc))
        if len(frames) != len(files):
            continue
        frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
        typed[split] = frame
        label = frame[contract.label.column]
        report[split] = {
            "file": files[0][0],
            **({"batches": [name for name, _ in files[1:]]} if len(files) > 1 else {}),
            "rows": len(frame),
            "positive_rate": round(float((label == contract.label.positive).mean()), 6),
            "nulls": {col: int(n) for col, n in frame.isna().sum().items() if n},
        }
    if failures:
        raise DataContractError("\n".join(failures))
    for split, frame in typed.items():
        write_with(args.out / f"{split}.parquet", partial(frame.to_parquet, index=False))
    contract.save(args.contract)
    write_text_atomic(args.report, json.dumps(report, indent=2, sort_keys=True) + "\n")
    print(json.dumps(report, sort_keys=True))


if __name__ == "__main__":
    run_stage("validate", main)
