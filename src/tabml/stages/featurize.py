"""featurize: fit the feature transform on the training split and encode every split."""

from __future__ import annotations

import argparse
from pathlib import Path

from tabml.columnar import read_columns, write_columns
from tabml.config import load_params
from tabml.contract import DataContract
from tabml.features import TARGET, FeatureTransform
from tabml.stages._runner import run_stage

SPLITS = ("train", "valid", "test")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prepared", type=Path, required=True)
    parser.add_argument("--contract", type=Path, required=True)
    parser.add_argument("--transform", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    params = load_params()
    splits = {name: read_columns(args.prepared / f"{name}.parquet") for name in SPLITS}
    transform = FeatureTransform(DataContract.load(args.contract), params.features.derived)
    transform.fit(splits["train"])
    for name, columns in splits.items():
        matrix = transform.transform(columns)
        encoded = {feature: matrix[:, i] for i, feature in enumerate(transform.feature_names_)}
        write_columns(args.out / f"{name}.parquet", {**encoded, TARGET: columns[TARGET]})
    transform.save(args.transform)
    print(
        f"{len(transform.feature_names_)} features, categorical: {transform.categorical_features_}"
    )


if __name__ == "__main__":
    run_stage("featurize", main)
