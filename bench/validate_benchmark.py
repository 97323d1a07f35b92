"""What the validate stage's checks cost on the real data, phase by phase, in one process.

Baseline, measured in the same run: parsing both raw files with pandas and validating them with
the contract's pandera schema (the stage's work before the raw-line and distribution checks).
Added on top: the raw-line check (`check_raw_lines`: encoding, header rows, field counts, empty
files) and the distribution check (`file_skew`: PSI of every feature against the reference).
Medians of several rounds; ratios are added cost / baseline.

usage: python bench/validate_benchmark.py [--rounds 7]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

from tabml.config import load_params
from tabml.data import check_raw_lines, parse_raw, read_raw
from tabml.data_skew import file_skew
from tabml.layout import VALIDATION_REFERENCE
from tabml.monitoring import ReferenceProfile
from tabml.validation import validate_raw

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.timing import median_seconds  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "validate.json"
BASELINE = "baseline: pandas parse + pandera contract"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    params = load_params()
    contract = params.dataset.contract()
    reference = ReferenceProfile.load(VALIDATION_REFERENCE)
    files = [(Path("data") / spec.name, spec.skip_rows) for spec in params.dataset.files.values()]
    typed = [validate_raw(read_raw(p, contract, s), contract, str(p)) for p, s in files]

    def baseline() -> None:
        for path, skip in files:
            frame = parse_raw(path, contract, skip)
            validate_raw(frame, contract, str(path))

    def raw_lines() -> None:
        for path, skip in files:
            check_raw_lines(path, contract, skip)

    def skew() -> None:
        for frame, (path, _) in zip(typed, files, strict=True):
            file_skew(frame, reference, params.monitor, str(path))

    phases = {
        name: median_seconds(work, args.rounds)
        for name, work in [
            (BASELINE, baseline),
            ("raw-line check", raw_lines),
            ("distribution check", skew),
        ]
    }
    base = phases[BASELINE]
    result = {
        "rows": sum(len(frame) for frame in typed),
        "rounds": args.rounds,
        "python": platform.python_version(),
        "seconds": {name: round(value, 4) for name, value in phases.items()},
        "added_over_baseline": {
            name: round(value / base, 3) for name, value in phases.items() if name != BASELINE
        },
    }
    for name, value in phases.items():
        ratio = "" if name == BASELINE else f"  ({value / base:.2f}x baseline)"
        print(f"{name:<44} {value * 1000:8.1f} ms{ratio}")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(f"saved {RESULTS}")


if __name__ == "__main__":
    main()
