"""validate: check every raw file against the data contract; publish the contract and typed data.

The typed tables (parquet) are what later stages read, so the raw files are parsed once.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tabml.atomic import write_text_atomic, write_with
from tabml.config import load_params
from tabml.data import read_raw
from tabml.stages._runner import run_stage
from tabml.validation import DataContractError, validate_raw


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
    for split, spec in sorted(dataset.files.items()):
        path = args.data / spec.name
        try:
            frame = validate_raw(read_raw(path, contract, spec.skip_rows), contract, str(path))
        except DataContractError as exc:
            failures.append(str(exc))
            continue
        typed[split] = frame
        label = frame[contract.label.column]
        report[split] = {
            "file": spec.name,
            "rows": len(frame),
            "positive_rate": round(float((label == contract.label.positive).mean()), 6),
            "nulls": {col: int(n) for col, n in frame.isna().sum().items() if n},
        }
    if failures:
        raise DataContractError("\n".join(failures))
    for split, frame in typed.items():
        write_with(
            args.out / f"{split}.parquet", lambda tmp, f=frame: f.to_parquet(tmp, index=False)
        )
    contract.save(args.contract)
    write_text_atomic(args.report, json.dumps(report, indent=2, sort_keys=True) + "\n")
    print(json.dumps(report, sort_keys=True))


if __name__ == "__main__":
    run_stage("validate", main)
