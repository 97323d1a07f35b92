"""baseline: fit the logistic-regression baseline on the encoded training split and score it
on the test split (the evaluate stage reports it next to the model, the gate compares them).

A stage of its own, not part of `evaluate`: it depends on the features only, so a change of
the LightGBM parameters (a sweep) reuses it instead of refitting it (about 1.3 s) every time.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from tabml import evaluation
from tabml.atomic import write_text_atomic
from tabml.baseline import baseline_proba, fit_baseline
from tabml.columnar import read_columns
from tabml.config import load_params
from tabml.contract import DataContract
from tabml.features import TARGET, FeatureTransform
from tabml.stages._runner import run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--features", type=Path, required=True)
    parser.add_argument("--contract", type=Path, required=True)
    parser.add_argument("--transform", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    params = load_params()
    transform = FeatureTransform.load(args.transform, DataContract.load(args.contract))
    names = transform.feature_names_
    train, test = (read_columns(args.features / f"{split}.parquet") for split in ("train", "test"))
    model = fit_baseline(
        np.column_stack([train[f] for f in names]),
        train[TARGET].astype(int),
        names,
        transform.categorical_features_,
        params.evaluate.baseline,
        params.seed,
    )
    proba = baseline_proba(model, np.column_stack([test[f] for f in names]))
    scores = evaluation.rounded(
        evaluation.classification_metrics(
            test[TARGET].astype(int), proba, params.decision.threshold
        )
    )
    write_text_atomic(args.out, json.dumps(scores, indent=1, sort_keys=True) + "\n")
    print(f"logistic regression baseline: {json.dumps(scores, sort_keys=True)}")


if __name__ == "__main__":
    run_stage("baseline", main)
