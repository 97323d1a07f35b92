"""train: fit LightGBM on the encoded training split, early-stopping on the validation split.

`train.engine` picks where: `local` (lgb.train in this process) or `dask` (tabml.train_dask on a
Dask cluster). Both write the same model file; Dask is imported only for `dask`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tabml.atomic import write_text_atomic
from tabml.columnar import read_columns
from tabml.config import Params, load_params
from tabml.features import TARGET
from tabml.lean_imports import optional_libraries_hidden
from tabml.model_metadata import ModelMetadata
from tabml.stages._runner import run_stage

if TYPE_CHECKING:
    from tabml.model import TrainingResult


def _matrix(path: Path, feature_names: list[str]):
    import numpy as np

    columns = read_columns(path)
    return np.column_stack([columns[f] for f in feature_names]), columns[TARGET]


def _fix_hash_seed() -> None:
    """Rerun this process with PYTHONHASHSEED=0 unless a hash seed is set already.

    lightgbm.dask ranks the workers in the iteration order of a set of task keys
    (`Client.who_has`), which Python's per-process string hashing randomizes; a worker's rank
    decides which rows the bin boundaries of its share of the features come from, so without a
    fixed seed two runs on the same cluster build different models (docs/distributed-training.md).
    """
    if os.environ.get("PYTHONHASHSEED", "random") != "random":
        return
    os.environ["PYTHONHASHSEED"] = "0"
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])


def _fit_locally(
    params: Params,
    features: Path,
    names: list[str],
    categorical: list[str],
    lgb_params: dict[str, Any],
) -> tuple[TrainingResult, dict[str, Any]]:
    from tabml.model import train_booster

    x_train, y_train = _matrix(features / "train.parquet", names)
    x_valid, y_valid = _matrix(features / "valid.parquet", names)
    result = train_booster(
        x_train,
        y_train,
        x_valid,
        y_valid,
        feature_names=names,
        categorical_features=categorical,
        params=lgb_params,
        num_boost_round=params.train.num_boost_round,
        early_stopping_rounds=params.train.early_stopping_rounds,
    )
    return result, lgb_params


def _fit_on_dask(
    params: Params,
    features: Path,
    names: list[str],
    categorical: list[str],
    lgb_params: dict[str, Any],
) -> tuple[TrainingResult, dict[str, Any]]:
    from tabml.train_dask import train_booster_on_dask

    return train_booster_on_dask(
        params.train.dask,
        str((features / "train.parquet").resolve()),
        str((features / "valid.parquet").resolve()),
        feature_names=names,
        categorical_features=categorical,
        params=lgb_params,
        num_boost_round=params.train.num_boost_round,
        early_stopping_rounds=params.train.early_stopping_rounds,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--features", type=Path, required=True)
    parser.add_argument("--transform", type=Path, required=True)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--metadata", type=Path, required=True)
    parser.add_argument("--curves", type=Path, required=True)
    args = parser.parse_args()

    params = load_params()
    if params.train.engine == "dask":
        _fix_hash_seed()
    # Local training works on numpy arrays: spare LightGBM's pandas and scikit-learn imports
    # (~2 s). lightgbm.dask is built on LightGBM's scikit-learn API, so the Dask engine keeps them.
    lean = ("pandas", "sklearn") if params.train.engine == "local" else ()
    with optional_libraries_hidden(*lean):
        import lightgbm as lgb

    from tabml.model import booster_params, save_booster

    state = json.loads(args.transform.read_text())
    names, categorical = state["feature_names"], sorted(state["categories"])
    lgb_params = booster_params(params.model.model_dump(), params.seed, params.train.num_threads)
    fit = _fit_on_dask if params.train.engine == "dask" else _fit_locally
    result, lgb_params = fit(params, args.features, names, categorical, lgb_params)

    save_booster(result.booster, args.model, result.best_iteration)
    ModelMetadata(
        dataset=params.dataset.name,
        feature_names=names,
        categorical_features=categorical,
        best_iteration=result.best_iteration,
        threshold=params.decision.threshold,
        lightgbm_version=lgb.__version__,
        params=lgb_params,
    ).save(args.metadata)
    curve = [
        {
            "iteration": i + 1,
            **{
                f"{split}_{metric}": round(values[i], 6)
                for split, metrics in sorted(result.curves.items())
                for metric, values in sorted(metrics.items())
            },
        }
        for i in range(len(result.curves["valid"]["auc"]))
    ]
    write_text_atomic(args.curves, json.dumps(curve, indent=1) + "\n")
    print(
        f"best iteration {result.best_iteration} of {len(curve)}, "
        f"valid AUC {result.curves['valid']['auc'][result.best_iteration - 1]:.5f}"
    )


if __name__ == "__main__":
    run_stage("train", main)
