"""LightGBM training and prediction, configured for byte-identical, reproducible models.

Determinism needs `deterministic=True`, a forced histogram layout, a fixed thread count and fixed
seeds. OpenMP's default busy-waiting can stall multi-threaded training for minutes on a shared
machine, so a passive wait policy is set before LightGBM (and its OpenMP runtime) loads.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np

from tabml.atomic import atomic_path
from tabml.errors import TabmlError


@dataclass(frozen=True)
class TrainingResult:
    booster: lgb.Booster
    best_iteration: int
    curves: dict[str, dict[str, list[float]]]


def booster_params(model_params: dict[str, Any], seed: int, num_threads: int) -> dict[str, Any]:
    return {
        "objective": "binary",
        "metric": ["auc", "binary_logloss"],
        "deterministic": True,
        "force_row_wise": True,
        "num_threads": num_threads,
        "seed": seed,
        "verbosity": -1,
        **model_params,
    }


def train_booster(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_valid: np.ndarray,
    y_valid: np.ndarray,
    *,
    feature_names: list[str],
    categorical_features: list[str],
    params: dict[str, Any],
    num_boost_round: int,
    early_stopping_rounds: int,
) -> TrainingResult:
    """Fit with early stopping on the validation split, recording per-iteration metrics."""
    train_set = lgb.Dataset(
        x_train,
        y_train,
        feature_name=feature_names,
        categorical_feature=categorical_features,
        free_raw_data=False,
    )
    valid_set = train_set.create_valid(x_valid, y_valid)
    curves: dict[str, dict[str, list[float]]] = {}
    booster = lgb.train(
        params,
        train_set,
        num_boost_round=num_boost_round,
        valid_sets=[train_set, valid_set],
        valid_names=["train", "valid"],
        callbacks=[
            lgb.early_stopping(early_stopping_rounds, verbose=False),
            lgb.record_evaluation(curves),
        ],
    )
    return TrainingResult(booster, booster.best_iteration, curves)


def save_booster(booster: lgb.Booster, path: Path, num_iteration: int) -> None:
    with atomic_path(path) as tmp:
        booster.save_model(str(tmp), num_iteration=num_iteration)


class ModelFileError(TabmlError, RuntimeError):
    """A model file is missing or unreadable."""


def load_booster(path: Path) -> lgb.Booster:
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file {path} does not exist")
    try:
        return lgb.Booster(model_file=str(path))
    except lgb.basic.LightGBMError as exc:
        raise ModelFileError(
            f"model file {path} is corrupt or not a LightGBM model: {exc}"
        ) from None


def predict_proba(booster: lgb.Booster, features: np.ndarray) -> np.ndarray:
    """Probability of the positive class; one thread, as serving runs it."""
    return np.asarray(booster.predict(features, num_threads=1))
