"""What `tabml init-dataset` costs on a large CSV, phase by phase, in one process.

The data: Palmer penguins (from the pinned wheel, as tests/byo uses it) repeated to `--rows`
rows, so the work grows with rows times columns as for a real file (the repeated rows keep the
category levels few). Baseline, measured in the same run: pandas' C reader loading the file as
strings, the least any inference must do. The phases: reading (UTF-8 check, separator sniff,
field counts, pandas' reader), inferring the contract, and the validate stage's own checks of
the file with that contract (run before anything is written). Medians of several rounds;
ratios are phase / baseline.

usage: python bench/init_dataset_benchmark.py [--rows 300000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

import pandas as pd

from tabml.csv_inference import infer_contract
from tabml.csv_reading import read_csv_table
from tabml.dataset_init import DatasetRequest, check_with_the_pipeline, dataset_config

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.pinned_files import PENGUINS, fetch_member  # noqa: E402
from tests.support.timing import median_seconds  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "init_dataset.json"
BASELINE = "baseline: pandas C reader, strings"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    from tabml.config import DatasetConfig

    header, *rows = fetch_member(PENGUINS).decode().splitlines()
    with tempfile.TemporaryDirectory(prefix="tabml-init-bench-") as tmp:
        path = Path(tmp) / "penguins.csv"
        repeated = (rows * (args.rows // len(rows) + 1))[: args.rows]
        path.write_text("\n".join([header, *repeated]) + "\n")
        request = DatasetRequest(csv=path, label="sex", name="penguins", drop_unlabelled=True)
        table = read_csv_table(path)
        inferred = infer_contract(table, "sex", drop_unlabelled=True)
        dataset = DatasetConfig.model_validate(dataset_config(request, inferred))
        phases = {
            name: median_seconds(work, args.rounds)
            for name, work in [
                (BASELINE, lambda: pd.read_csv(path, dtype=str, keep_default_na=False)),
                ("read (UTF-8, sniff, field counts, pandas)", lambda: read_csv_table(path)),
                ("infer the contract", lambda: infer_contract(table, "sex", drop_unlabelled=True)),
                ("the validate stage's checks", lambda: check_with_the_pipeline(request, dataset)),
            ]
        }
        size = path.stat().st_size
    base = phases[BASELINE]
    result = {
        "rows": args.rows,
        "columns": len(table.columns),
        "bytes": size,
        "rounds": args.rounds,
        "python": platform.python_version(),
        "seconds": {name: round(value, 4) for name, value in phases.items()},
        "total_seconds": round(sum(v for n, v in phases.items() if n != BASELINE), 4),
        "over_baseline": {
            name: round(value / base, 2) for name, value in phases.items() if name != BASELINE
        },
    }
    for name, value in phases.items():
        ratio = "" if name == BASELINE else f"  ({value / base:.1f}x baseline)"
        print(f"{name:<44} {value:8.3f} s{ratio}")
    total = "init-dataset in all (without copy and dvc add)"
    print(f"{total:<44} {result['total_seconds']:8.3f} s")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(f"saved {RESULTS}")


if __name__ == "__main__":
    main()
