"""evaluate: score the test split; write DVC metrics and the data for DVC plots.

Besides the overall metrics: per-slice metrics, fairness of the decisions and the baseline
stage's scores (`tabml.model_quality`), on the raw test rows of the prepared split.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tabml.lean_imports import optional_libraries_hidden

# Scoring needs numpy and scikit-learn's metrics, not pandas: skip LightGBM's pandas import.
with optional_libraries_hidden("pandas"):
    import lightgbm  # noqa: F401  (loaded lean here, then used through tabml.model)

from tabml import evaluation, model_quality
from tabml.atomic import write_text_atomic
from tabml.columnar import read_columns
from tabml.config import load_params
from tabml.explain import mean_abs_contributions
from tabml.features import TARGET
from tabml.model import load_booster, predict_proba
from tabml.model_metadata import ModelMetadata
from tabml.stages._runner import run_stage


def _dump(path: Path, payload: object) -> None:
    write_text_atomic(path, json.dumps(payload, indent=1, sort_keys=True) + "\n")


def main() -> None:
    import numpy as np

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--features", type=Path, required=True)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--metadata", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--plots", type=Path, required=True)
    parser.add_argument("--prepared", type=Path, required=True, help="raw rows, for slices")
    parser.add_argument("--baseline", type=Path, required=True, help="the baseline's metrics")
    parser.add_argument("--slices", type=Path, required=True, help="per-slice metrics out")
    args = parser.parse_args()

    params = load_params()
    meta = ModelMetadata.load(args.metadata)
    booster = load_booster(args.model)
    columns = read_columns(args.features / "test.parquet")
    x_test = np.column_stack([columns[f] for f in meta.feature_names])
    y_test = columns[TARGET].astype(int)
    proba = predict_proba(booster, x_test)

    scores = evaluation.rounded(
        evaluation.classification_metrics(y_test, proba, meta.threshold)
        | {"best_iteration": meta.best_iteration}
    )
    gain = booster.feature_importance(importance_type="gain")
    plots = {
        "roc": evaluation.roc_points(y_test, proba),
        "precision_recall": evaluation.precision_recall_points(y_test, proba),
        "confusion": evaluation.confusion_rows(y_test, proba, meta.threshold),
        "calibration": evaluation.calibration_points(
            y_test, proba, params.evaluate.calibration_bins
        ),
        "feature_importance": [
            {"feature": f, "gain": round(float(g), 3)}
            for f, g in zip(meta.feature_names, gain, strict=True)
        ],
        "contribution_importance": mean_abs_contributions(
            booster,
            x_test,
            meta.feature_names,
            rows=params.evaluate.importance_rows,
            seed=params.seed,
            num_threads=params.train.num_threads,
        ),
    }
    quality = model_quality.assess(
        read_columns(args.prepared / "test.parquet"),
        columns,
        proba,
        meta.threshold,
        params,
        json.loads(args.baseline.read_text()),
    )
    plots["slices"] = quality.plot
    write_text_atomic(args.slices, model_quality.slices_json(quality.slices))
    for name, rows in plots.items():
        _dump(args.plots / f"{name}.json", rows)
    _dump(args.metrics, {"test": scores, **quality.metric_sections})
    print(json.dumps(scores, sort_keys=True))


if __name__ == "__main__":
    run_stage("evaluate", main)
