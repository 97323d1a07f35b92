"""profile: the reference the service's drift monitoring compares live traffic with.

Binned distributions of every monitored contract feature and of the model's scores, on the
validation split: rows of the training distribution that the model did not fit, scored exactly
as the service scores requests (raw columns → fitted transform → booster), so un-drifted traffic
matches them and a score shift means the inputs moved, not that the model memorised its rows.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tabml.lean_imports import optional_libraries_hidden

with optional_libraries_hidden("pandas", "sklearn"):
    import lightgbm  # noqa: F401  (loaded lean here, then used through tabml.model)

from tabml.columnar import read_columns
from tabml.config import load_params
from tabml.contract import DataContract
from tabml.features import FeatureTransform
from tabml.model import load_booster, predict_proba
from tabml.monitoring import build_profile
from tabml.stages._runner import run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prepared", type=Path, required=True)
    parser.add_argument("--contract", type=Path, required=True)
    parser.add_argument("--transform", type=Path, required=True)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    params = load_params()
    contract = DataContract.load(args.contract)
    transform = FeatureTransform.load(args.transform, contract)
    columns = read_columns(args.prepared / "valid.parquet")
    scores = predict_proba(load_booster(args.model), transform.transform(columns))
    profile = build_profile(columns, contract, scores, params.monitor)
    profile.save(args.out)
    print(f"reference profile of {profile.rows} validation rows, {len(profile.features)} features")


if __name__ == "__main__":
    run_stage("profile", main)
