"""The simple model a LightGBM model must beat: logistic regression on the same features.

If a linear model does as well, the boosted trees only add cost and opacity; the gate refuses
them (`gate.baseline_margin`). The baseline sees exactly the model's encoded matrix: category
codes are one-hot encoded (a missing or unseen category is its own all-zero pattern), numbers
are median-imputed and standardised, as a linear model needs. lbfgs is deterministic and the
seed is fixed, so its metrics are byte-stable in `dvc.lock`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from tabml.config import BaselineConfig

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline


def fit_baseline(
    x_train: np.ndarray,
    y_train: np.ndarray,
    feature_names: list[str],
    categorical: list[str],
    config: BaselineConfig,
    seed: int,
) -> Pipeline:
    """A fitted scikit-learn pipeline: encode, then `LogisticRegression(C, max_iter)`."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    categorical_idx = [i for i, name in enumerate(feature_names) if name in categorical]
    numeric_idx = [i for i, name in enumerate(feature_names) if name not in categorical]
    encode = ColumnTransformer(
        [
            (
                "categorical",
                make_pipeline(
                    SimpleImputer(strategy="constant", fill_value=-1.0),
                    OneHotEncoder(handle_unknown="ignore"),
                ),
                categorical_idx,
            ),
            (
                "numeric",
                make_pipeline(SimpleImputer(strategy="median"), StandardScaler()),
                numeric_idx,
            ),
        ]
    )
    model = make_pipeline(
        encode, LogisticRegression(C=config.C, max_iter=config.max_iter, random_state=seed)
    )
    return model.fit(x_train, y_train)


def baseline_proba(model: Pipeline, x: np.ndarray) -> np.ndarray:
    return np.asarray(model.predict_proba(x)[:, 1], dtype=np.float64)
