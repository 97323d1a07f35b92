"""MLflow calls: connect to a store, find a model's run, and log one run's contents.

Everything here imports MLflow (about a second); `tabml.tracking_store` answers the questions a
no-op needs without it. The model is stored once per run: as the registered pyfunc, whose
artifacts are exactly the files of `models/` (`tabml.pyfunc_model`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tabml.layout import (
    CURVES_FILE,
    LOCK_FILE,
    METRICS_FILE,
    MODEL_FILE,
    MODELS_DIR,
    PARAMS_FILE,
    PLOTS_DIR,
    SLICES_FILE,
)
from tabml.tracking_store import tag_filter

if TYPE_CHECKING:
    from mlflow import MlflowClient


@dataclass(frozen=True)
class RunFiles:
    """The pipeline outputs a run records, under a root laid out like the repository (the
    workspace itself, or a sweep experiment's outputs materialised elsewhere)."""

    root: Path = Path(".")

    @property
    def models(self) -> Path:
        return self.root / MODELS_DIR

    @property
    def model_file(self) -> Path:
        return self.models / MODEL_FILE

    @property
    def metrics(self) -> Path:
        return self.root / METRICS_FILE

    @property
    def slices(self) -> Path:
        return self.root / SLICES_FILE

    @property
    def curves(self) -> Path:
        return self.root / CURVES_FILE

    @property
    def plots(self) -> Path:
        return self.root / PLOTS_DIR

    @property
    def params(self) -> Path:
        return self.root / PARAMS_FILE

    @property
    def lock(self) -> Path:
        return self.root / LOCK_FILE


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested params → {"model.learning_rate": "0.05", "dataset.columns.0.name": "age", ...}.

    Lists of mappings are indexed by position; lists of scalars are kept as one JSON value.
    """
    flat: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat |= flatten(value, f"{name}.")
        elif isinstance(value, list) and any(isinstance(v, Mapping) for v in value):
            flat |= flatten({str(i): v for i, v in enumerate(value)}, f"{name}.")
        elif isinstance(value, list):
            flat[name] = json.dumps(value)
        else:
            flat[name] = "null" if value is None else str(value)
    return flat


def artifact_location(uri: str) -> str | None:
    """Where a new experiment keeps artifacts: next to a SQLite store (MLflow's default,
    ./mlruns, is relative to the working directory); a tracking server decides for itself."""
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()


def connect(uri: str, experiment: str) -> tuple[MlflowClient, str]:
    """Point MLflow at `uri`; return a client and the experiment id (created if needed)."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = mlflow.MlflowClient(uri, registry_uri=uri)
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        return client, found.experiment_id
    return client, client.create_experiment(experiment, artifact_location(uri))


def find_logged_run(
    client: MlflowClient, experiment_id: str, identity: dict[str, str]
) -> str | None:
    """The id of a finished run carrying these identity tags, if any."""
    runs = client.search_runs([experiment_id], filter_string=tag_filter(identity), max_results=1)
    return runs[0].info.run_id if runs else None


def log_metrics_and_curves(
    client: MlflowClient, run_id: str, metrics: Mapping[str, Mapping[str, Any]], curve: list[dict]
) -> None:
    """Evaluation metrics as `<split>_<name>`; the training curve as per-iteration steps."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    entries = [
        Metric(f"{split}_{name}", float(value), now, 0)
        for split, scores in metrics.items()
        for name, value in scores.items()
        if isinstance(value, int | float)
    ]
    entries += [
        Metric(name, float(value), now, int(row["iteration"]))
        for row in curve
        for name, value in row.items()
        if name != "iteration"
    ]
    client.log_batch(run_id, metrics=entries, synchronous=True)


def log_run_contents(
    client: MlflowClient, run_id: str, files: RunFiles, raw_params: Mapping[str, Any]
) -> None:
    """Everything but the model: params, metrics, curves, the DVC plot data and their PNG
    figures, params.yaml and dvc.lock. The active run must be `run_id`."""
    import mlflow
    from mlflow.entities import Param

    from tabml.run_figures import render_plots

    params = [Param(k, v) for k, v in flatten(raw_params).items()]
    client.log_batch(run_id, params=params, synchronous=True)
    curve = json.loads(files.curves.read_text())
    log_metrics_and_curves(client, run_id, json.loads(files.metrics.read_text()), curve)
    folders: list[tuple[Path, str | None]] = [
        (files.metrics, METRICS_FILE.parent.as_posix()),
        (files.slices, SLICES_FILE.parent.as_posix()),
        (files.curves, CURVES_FILE.parent.as_posix()),
        (files.params, None),
        (files.lock, None),
    ]
    for path, folder in folders:
        if path.exists():
            mlflow.log_artifact(str(path), artifact_path=folder)
    mlflow.log_artifacts(str(files.plots), artifact_path=PLOTS_DIR.as_posix())
    for name, figure in render_plots(files.plots, curve).items():
        mlflow.log_figure(figure, f"plots/{name}.png")
