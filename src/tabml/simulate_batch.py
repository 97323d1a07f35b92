"""Simulate the arrival of a new labelled batch by appending rows to the raw training file.

The Adult data has no later releases, so a "new batch" here is a seeded sample of existing
training lines appended to `data/adult.data`. That is enough to exercise the data-versioning
workflow end to end: the next `python src/train.py` validates the new data version, records it in
data.dvc and retrains; committing data.dvc and dvc.lock versions both, and `git checkout <commit>` +
`dvc checkout` returns to any earlier version exactly.

usage: python -m tabml.simulate_batch [--rows 1000] [--seed 1] [--file data/adult.data]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from tabml.atomic import write_text_atomic


def append_batch(path: Path, rows: int, seed: int) -> int:
    """Append `rows` lines sampled (seeded, with replacement) from the file; return its new size."""
    text = path.read_text()
    lines = [line for line in text.splitlines(keepends=True) if line.strip()]
    picks = np.random.default_rng(seed).integers(0, len(lines), size=rows)
    batch = "".join(lines[i] if lines[i].endswith("\n") else lines[i] + "\n" for i in picks)
    write_text_atomic(path, "".join(lines) + batch)
    return len(lines) + rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--file", type=Path, default=Path("data/adult.data"))
    args = parser.parse_args()
    total = append_batch(args.file, args.rows, args.seed)
    print(
        f"appended {args.rows} rows to {args.file} ({total} rows now); "
        "run `python src/train.py` to validate and record the new data version and retrain"
    )


if __name__ == "__main__":
    main()
