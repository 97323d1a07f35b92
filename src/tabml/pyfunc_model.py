"""The model as MLflow logs and registers it: a pyfunc carrying the feature transform.

A plain LightGBM flavour cannot serve this model: its signature turns the categorical columns into
strings, which LightGBM rejects (stock `mlflow models serve` answers 400 to every request). This
pyfunc takes raw records (a DataFrame keyed by the contract's columns, as in the data), encodes
them with the fitted `tabml.features.FeatureTransform` and scores them with
`tabml.model.predict_proba`: the same calls as offline evaluation and the FastAPI service, so
`mlflow models serve -m models:/<name>@champion` returns the same probabilities.
"""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow.pyfunc
import numpy as np
import pandas as pd  # MLflow imports it anyway
from mlflow.pyfunc import PythonModel

from tabml.layout import (
    CONTRACT_FILE,
    METADATA_FILE,
    MODEL_CARD_FILE,
    MODEL_CARD_HTML_FILE,
    MODEL_FILE,
    PROFILE_FILE,
    TRANSFORM_FILE,
)

if TYPE_CHECKING:
    from mlflow.models.model import ModelInfo

#: The pyfunc's artifacts: the files of `models/`, stored once per run. The reference profile
#: is not needed to score, but travels with the model so a bundle exported from the registry
#: can be served with its drift monitoring.
ARTIFACTS = {
    "contract": CONTRACT_FILE,
    "feature_transform": TRANSFORM_FILE,
    "model": MODEL_FILE,
    "model_metadata": METADATA_FILE,
    "reference_profile": PROFILE_FILE,
}
#: Logged too when the models directory has them (one trained before the card existed has
#: not): the model card as the pipeline wrote it, so a bundle exported from the registry
#: answers /model-card like the workspace's service.
OPTIONAL_ARTIFACTS = {"model_card": MODEL_CARD_FILE, "model_card_html": MODEL_CARD_HTML_FILE}
#: What loading the model needs besides MLflow itself (pinned to this environment's versions).
REQUIREMENTS = ("lightgbm", "numpy", "scipy", "pandas", "pydantic")
_MLFLOW_TYPES = {"int": "long", "float": "double", "category": "string"}


class TabmlPyfuncModel(PythonModel):
    """Raw records → probability of the positive class (one float per row)."""

    def load_context(self, context: Any) -> None:
        from tabml.contract import DataContract
        from tabml.features import FeatureTransform
        from tabml.model import load_booster

        paths = {key: Path(path) for key, path in context.artifacts.items()}
        self.contract = DataContract.load(paths["contract"])
        self.transform = FeatureTransform.load(paths["feature_transform"], self.contract)
        self.booster = load_booster(paths["model"])

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> np.ndarray:
        from tabml.model import predict_proba

        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        missing = [
            c.name for c in self.contract.columns if c.name not in frame.columns and not c.nullable
        ]
        if missing:
            raise ValueError(f"missing input column(s) {missing}")
        columns = {}
        for spec in self.contract.columns:
            if spec.name not in frame.columns:  # an omitted nullable column is all missing
                columns[spec.name] = [None] * len(frame)
            elif spec.type == "category":
                # object values, whatever dtype schema enforcement produced; NaN/None → missing
                columns[spec.name] = frame[spec.name].astype(object).tolist()
            else:
                columns[spec.name] = frame[spec.name].to_numpy(
                    dtype="float64", na_value=float("nan")
                )
        return predict_proba(self.booster, self.transform.transform(columns))


def _signature(contract: Any) -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    inputs = Schema(
        [ColSpec(_MLFLOW_TYPES[c.type], c.name, required=not c.nullable) for c in contract.columns]
    )
    return ModelSignature(inputs=inputs, outputs=Schema([ColSpec("double")]))


def pip_requirements() -> list[str]:
    return [f"mlflow=={version('mlflow')}", *(f"{name}=={version(name)}" for name in REQUIREMENTS)]


def log_pyfunc_model(
    models_dir: Path, name: str = "model", registered_model_name: str | None = None
) -> ModelInfo:
    """Log the pyfunc (artifacts from `models_dir`, the `tabml` code alongside) to the active
    tracking store; register it under `registered_model_name` if given. Returns the ModelInfo.

    The requirements are given explicitly (MLflow's inference of them costs seconds), with an
    input example of real raw records and a signature generated from the data contract.
    """
    import tabml
    from tabml.contract import DataContract
    from tabml.serving.examples import example_records

    models_dir = Path(models_dir)
    artifacts = {key: str(models_dir / file) for key, file in ARTIFACTS.items()}
    for path in artifacts.values():
        if not Path(path).is_file():
            raise FileNotFoundError(f"model artifact {path} does not exist")
    artifacts |= {
        key: str(models_dir / file)
        for key, file in OPTIONAL_ARTIFACTS.items()
        if (models_dir / file).is_file()
    }
    contract = DataContract.load(models_dir / ARTIFACTS["contract"])
    return mlflow.pyfunc.log_model(
        name=name,
        python_model=TabmlPyfuncModel(),
        artifacts=artifacts,
        code_paths=[str(Path(tabml.__file__).parent)],
        signature=_signature(contract),
        input_example=pd.DataFrame(example_records(contract)),
        pip_requirements=pip_requirements(),
        registered_model_name=registered_model_name,
    )
