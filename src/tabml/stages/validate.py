"""validate: check every raw file against the data contract; publish the contract and typed data.

The typed tables (parquet) are what later stages read, so the raw files are parsed once. Each
file is also compared with the reference profile (`tabml.data_skew`); a sharp shift warns or
fails, by `validation.distribution_shift`. A dataset's first run has no reference (the file
holds `null`): the check is skipped and the report's `reference_rows` is null.
"""

from __future__ import annotations

import argparse
import json
import sys
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd

from tabml.atomic import write_text_atomic, write_with
from tabml.config import Params, load_params
from tabml.contract import DataContract
from tabml.data import RawFormatError, read_raw
from tabml.data_skew import DistributionShiftError, FileSkew, file_skew
from tabml.monitoring import ReferenceProfile
from tabml.stages._runner import run_stage
from tabml.validation import DataContractError, drop_unlabelled, validate_raw

#: The split that labelled batches extend; the test file stays the fixed holdout.
TRAIN_SPLIT = "train"


def _sources(data: Path, params: Params) -> dict[str, list[tuple[str, int]]]:
    """split → [(file name under data/, header lines to skip)]; batches extend the training."""
    dataset = params.dataset
    sources = {split: [(spec.name, spec.skip_rows)] for split, spec in dataset.files.items()}
    batches = sorted((data / dataset.batches_dir).glob("*.data"))
    sources[TRAIN_SPLIT] += [(path.relative_to(data).as_posix(), 0) for path in batches]
    return sources


def _label_problem(
    frame: pd.DataFrame, contract: DataContract, split: str, paths: list[str]
) -> str | None:
    """A split with one label value passes every row rule, but no model or ROC AUC comes of it."""
    label = contract.label
    present = sorted(frame[label.column].unique())
    if len(present) > 1:
        return None
    return (
        f"{split} split ({', '.join(paths)}): every one of its {len(frame)} rows has "
        f"{label.column} {present[0]!r}; it needs both {label.negative!r} and "
        f"{label.positive!r} rows"
    )


def _summary(frame: pd.DataFrame, contract: DataContract, files: list[str]) -> dict[str, Any]:
    label = frame[contract.label.column]
    return {
        "file": files[0],
        **({"batches": files[1:]} if len(files) > 1 else {}),
        "rows": len(frame),
        "positive_rate": round(float((label == contract.label.positive).mean()), 6),
        "nulls": {col: int(n) for col, n in frame.isna().sum().items() if n},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--contract", type=Path, required=True)
    parser.add_argument("--reference", type=Path, required=True, help="reference profile")
    parser.add_argument("--report", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="directory for typed parquet")
    args = parser.parse_args()

    params = load_params()
    contract = params.dataset.contract()
    # `null`: the dataset has no model yet, so nothing to compare with (tabml.pipeline).
    reference = (
        None
        if json.loads(args.reference.read_text()) is None
        else ReferenceProfile.load(args.reference)
    )
    report: dict[str, Any] = {}
    failures: list[str] = []
    typed: dict[str, pd.DataFrame] = {}
    skews: dict[str, FileSkew] = {}
    unlabelled: dict[str, int] = {}
    for split, files in sorted(_sources(args.data, params).items()):
        frames = []
        for name, skip_rows in files:
            path = args.data / name
            try:
                raw, dropped = drop_unlabelled(read_raw(path, contract, skip_rows), contract)
                frame = validate_raw(raw, contract, str(path))
            except (RawFormatError, DataContractError) as exc:
                failures.append(str(exc))
                continue
            unlabelled[split] = unlabelled.get(split, 0) + dropped
            frames.append(frame)
            if reference is not None:
                skews[name] = file_skew(frame, reference, params.monitor, str(path))
        if len(frames) != len(files):
            continue
        frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
        problem = _label_problem(frame, contract, split, [str(args.data / n) for n, _ in files])
        if problem:
            failures.append(problem)
            continue
        typed[split] = frame
        report[split] = _summary(frame, contract, [name for name, _ in files])
        if unlabelled[split]:
            report[split]["unlabelled_dropped"] = unlabelled[split]
    if failures:
        raise DataContractError("\n".join(failures))
    shifts = [message for skew in skews.values() for message in skew.messages(params.monitor)]
    setting = params.validation.distribution_shift
    if shifts and setting == "fail":
        raise DistributionShiftError("\n".join([*shifts, "(validation.distribution_shift: fail)"]))
    report["distribution"] = {
        "reference": args.reference.as_posix(),
        "reference_rows": None if reference is None else reference.rows,
        "on_shift": setting,
        "psi_alert": params.monitor.psi_alert,
        "files": {name: skew.to_dict() for name, skew in sorted(skews.items())},
        "warnings": shifts,
    }
    for split, frame in typed.items():
        write_with(args.out / f"{split}.parquet", partial(frame.to_parquet, index=False))
    contract.save(args.contract)
    write_text_atomic(args.report, json.dumps(report, indent=2, sort_keys=True) + "\n")
    for message in shifts:
        print(f"warning: {message}", file=sys.stderr)
    print(json.dumps({split: report[split] for split in typed}, sort_keys=True))


if __name__ == "__main__":
    run_stage("validate", main)
