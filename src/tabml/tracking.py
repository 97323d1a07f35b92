"""MLflow experiment tracking: where runs go, the lineage they carry, and logging one run per model.

Importing this module is cheap: `python src/train.py` resolves the tracking URI and checks a
tracking server is reachable *before* training, so MLflow (about 1.8 s to import) is imported only
by the functions that log.

One run per model: every run is tagged with the md5 of the model file and of the data. Before
logging, the experiment is searched for a finished run with the same pair, so a no-op, a forced
rerun of a deterministic pipeline or a DVC run-cache restore logs nothing new.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import yaml

from tabml.data import file_md5, pinned_dir_md5
from tabml.environment import environment, package_version

if TYPE_CHECKING:
    from mlflow import MlflowClient

DEFAULT_STORE = "mlflow.db"
# DVC runs queued and `--temp` experiments in copies of the repo under this directory.
DVC_EXPS_DIR = (".dvc", "tmp", "exps")
LOCK_FILE = Path("dvc.lock")
DATA_DVC = Path("data.dvc")
MODEL_STAGE = "train"
# Tags on every run. TAG_MODEL_MD5 + TAG_DATA_MD5 identify a model: one finished run per pair.
TAG_MODEL_MD5 = "model_md5"
TAG_DATA_MD5 = "data_md5"
TAG_PARAMS_MD5 = "params_md5"
TAG_DVC_EXP = "dvc_exp_name"
KEY_PACKAGES = ("lightgbm", "numpy", "pandas", "scikit-learn", "dvc", "hydra-core", "mlflow")
# What the logged LightGBM model needs to be loaded again; passing it explicitly saves MLflow
# about 4 s of inferring it.
MODEL_PACKAGES = ("lightgbm", "numpy", "pandas", "scikit-learn")


class TrackingUnavailableError(RuntimeError):
    """The configured tracking server does not answer."""


def repo_root(start: Path | None = None) -> Path:
    """The main repository's root, also from inside one of DVC's experiment workspaces.

    DVC sets DVC_ROOT for every stage command, and for queued and temp experiments points it at
    the main repository rather than the workspace copy under `.dvc/tmp/exps/`. Outside DVC, the
    nearest directory holding `.dvc/` is the root (skipping experiment workspaces).
    """
    if os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]).resolve()
    path = (start or Path.cwd()).resolve()
    parts = path.parts
    for i in range(len(parts) - len(DVC_EXPS_DIR) + 1):
        if parts[i : i + len(DVC_EXPS_DIR)] == DVC_EXPS_DIR:
            return Path(*parts[:i])
    for candidate in (path, *path.parents):
        if (candidate / ".dvc").is_dir():
            return candidate
    return path


def in_experiment_workspace() -> bool:
    """Whether this runs in one of DVC's queued or `--temp` experiment workspaces."""
    return Path.cwd().resolve() != repo_root()


def resolve_tracking_uri(configured: str | None, root: Path | None = None) -> str:
    """MLFLOW_TRACKING_URI, else `tracking.uri` from params, else sqlite:///<repo root>/mlflow.db.

    A relative SQLite path is made absolute against the repository root, so every workspace
    (main, queued, temp) writes to one store.
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI") or configured
    if not uri:
        return f"sqlite:///{(root or repo_root()) / DEFAULT_STORE}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{(root or repo_root()) / uri.removeprefix('sqlite:///')}"
    return uri


def check_reachable(uri: str, *, require_server: bool = False, timeout: float = 5.0) -> None:
    """Fail fast, without importing MLflow, when a tracking server does not answer.

    Only http(s) URIs are checked (`GET <uri>/health`, which `mlflow server` answers). Any HTTP
    answer below 500 counts as reachable: authentication is MLflow's business, not this check's.
    With `require_server` (the production profile), a local store is refused outright.
    """
    if urlsplit(uri).scheme not in ("http", "https"):
        if require_server:
            raise TrackingUnavailableError(
                f"this profile needs a shared MLflow tracking server (tracking.require_server), "
                f"but runs would go to {uri}. Set MLFLOW_TRACKING_URI=http(s)://<server>."
            )
        return
    import urllib.error
    import urllib.request

    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout):
            return
    except urllib.error.HTTPError as exc:
        if exc.code < 500:
            return
        problem = f"answers {url} with HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        problem = f"is unreachable ({getattr(exc, 'reason', exc)})"
    raise TrackingUnavailableError(
        f"MLflow tracking server {uri} {problem}. Start it, or point MLFLOW_TRACKING_URI "
        f"(or tracking.uri in conf/tracking/) at a reachable server; unset both to log to "
        f"the local {DEFAULT_STORE}."
    )


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


def params_md5(raw: Mapping[str, Any]) -> str:
    return hashlib.md5(json.dumps(raw, sort_keys=True).encode()).hexdigest()


def locked_md5(path: str, stage: str = MODEL_STAGE, lock_file: Path = LOCK_FILE) -> str | None:
    """The md5 `dvc.lock` records for one output of a stage (None if not recorded)."""
    if not lock_file.exists():
        return None
    entry = (yaml.safe_load(lock_file.read_text()) or {}).get("stages", {}).get(stage, {})
    for out in entry.get("outs", []):
        if out["path"] == path:
            return str(out["md5"])
    return None


def pipeline_outputs(dvc_yaml: Path = Path("dvc.yaml")) -> set[str]:
    """Every path the pipeline writes (outs, metrics, plots of all stages), plus dvc.lock."""
    stages = yaml.safe_load(dvc_yaml.read_text()).get("stages", {})
    paths = {str(LOCK_FILE)}
    for stage in stages.values():
        for kind in ("outs", "metrics", "plots"):
            for out in stage.get(kind, []):
                paths.add(next(iter(out)) if isinstance(out, dict) else str(out))
    return paths


def _git(*args: str) -> str | None:
    try:
        result = subprocess.run(["git", *args], capture_output=True, text=True, check=False)
    except OSError:
        return None
    return result.stdout if result.returncode == 0 else None


def git_lineage() -> dict[str, str]:
    """Commit and dirty flag. Files the pipeline itself writes (its outputs and dvc.lock) do not
    count as dirty: this very run has just rewritten them. Anything else that differs from the
    commit (code, conf/, params.yaml, data.dvc) does, and is listed."""
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=all")
    if commit is None or status is None:
        return {"git_commit": "unknown", "git_dirty": "unknown"}
    outputs = pipeline_outputs()
    changed = sorted(
        path
        for path in (line[3:].split(" -> ")[-1].strip('"') for line in status.splitlines())
        if not any(path == out or path.startswith(out.rstrip("/") + "/") for out in outputs)
    )
    tags = {
        "git_commit": commit.strip(),
        "mlflow.source.git.commit": commit.strip(),
        "git_dirty": str(bool(changed)).lower(),
    }
    if changed:
        tags["git_dirty_files"] = ", ".join(changed)[:4000]
    return tags


@dataclass(frozen=True)
class Lineage:
    model_md5: str
    data_md5: str
    tags: dict[str, str]


def collect_lineage(model_file: Path, dataset: str, raw_params: Mapping[str, Any]) -> Lineage:
    """Tags tying a run to its exact data, model, parameters, code and environment."""
    model_md5 = file_md5(model_file)
    locked = locked_md5(model_file.as_posix())
    if locked is not None and locked != model_md5:
        print(
            f"warning: {model_file} has md5 {model_md5} but dvc.lock records {locked}; "
            "tagging the file's own md5",
            file=sys.stderr,
        )
    data_md5 = pinned_dir_md5(DATA_DVC)
    tags = {
        TAG_MODEL_MD5: model_md5,
        TAG_DATA_MD5: data_md5,
        TAG_PARAMS_MD5: params_md5(raw_params),
        "dataset": dataset,
        **environment(KEY_PACKAGES),
        **git_lineage(),
    }
    if os.environ.get("DVC_EXP_NAME"):
        tags[TAG_DVC_EXP] = os.environ["DVC_EXP_NAME"]
    if os.environ.get("DVC_EXP_BASELINE_REV"):
        tags["dvc_exp_baseline_rev"] = os.environ["DVC_EXP_BASELINE_REV"]
    return Lineage(model_md5, data_md5, tags)


@dataclass
class Stopwatch:
    """Seconds spent per named step, to report what tracking costs next to training."""

    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def time(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def summary(self) -> str:
        total = sum(self.seconds.values())
        parts = ", ".join(f"{name} {secs:.2f}" for name, secs in self.seconds.items())
        return f"{total:.2f} s ({parts})"


def artifact_location(uri: str) -> str | None:
    """Where a new experiment keeps artifacts: next to a SQLite store (MLflow's default,
    ./mlruns, is relative to the working directory, which for a queued DVC experiment is a
    workspace deleted afterwards); a tracking server decides for itself."""
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
    client: MlflowClient, experiment_id: str, model_md5: str, data_md5: str
) -> str | None:
    """The id of a finished run that already holds this model trained on this data, if any."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=(
            f"tags.{TAG_MODEL_MD5} = '{model_md5}' "
            f"and tags.{TAG_DATA_MD5} = '{data_md5}' "
            "and attributes.status = 'FINISHED'"
        ),
        max_results=1,
    )
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


def log_lightgbm_model(model_file: Path, feature_names: list[str], example_file: Path) -> Any:
    """The booster with the `mlflow.lightgbm` flavour: signature and input example over the
    encoded feature matrix (a few test rows), explicit pip requirements."""
    import mlflow.lightgbm
    import pandas as pd
    from mlflow.models import infer_signature

    from tabml.columnar import read_columns
    from tabml.model import load_booster

    booster = load_booster(model_file)
    columns = read_columns(example_file)
    example = pd.DataFrame({name: columns[name][:5] for name in feature_names}).astype("float64")
    signature = infer_signature(example, booster.predict(example.to_numpy(), num_threads=1))
    return mlflow.lightgbm.log_model(
        booster,
        name="lightgbm",
        signature=signature,
        input_example=example,
        pip_requirements=[f"{name}=={package_version(name)}" for name in MODEL_PACKAGES],
    )


def render_plots(plots_dir: Path, curve: list[dict]) -> dict[str, Any]:
    """PNG figures of the DVC plot data (MLflow shows images, not Vega specs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def load(name: str) -> list[dict]:
        return json.loads((plots_dir / f"{name}.json").read_text())

    figures = {}

    def xy(name, rows, x, y, title, diagonal=False):
        fig, ax = plt.subplots(figsize=(5, 4))
        ax.plot([r[x] for r in rows], [r[y] for r in rows])
        if diagonal:
            ax.plot([0, 1], [0, 1], linestyle=":", color="grey")
        ax.set(xlabel=x, ylabel=y, title=title)
        figures[name] = fig

    xy("roc", load("roc"), "fpr", "tpr", "ROC curve (test)", diagonal=True)
    xy("precision_recall", load("precision_recall"), "recall", "precision", "Precision-recall")
    xy(
        "calibration",
        load("calibration"),
        "mean_predicted",
        "fraction_positive",
        "Calibration (test)",
        diagonal=True,
    )
    importance = sorted(load("feature_importance"), key=lambda r: r["gain"])
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.barh([r["feature"] for r in importance], [r["gain"] for r in importance])
    ax.set(xlabel="gain", title="Feature importance")
    fig.tight_layout()
    figures["feature_importance"] = fig
    fig, ax = plt.subplots(figsize=(5, 4))
    for key in ("train_auc", "valid_auc"):
        ax.plot([r["iteration"] for r in curve], [r[key] for r in curve], label=key)
    ax.set(xlabel="iteration", ylabel="AUC", title="AUC by boosting iteration")
    ax.legend()
    figures["training_curve"] = fig
    return figures


@dataclass(frozen=True)
class RunFiles:
    """The pipeline outputs a run records (paths as dvc.yaml names them)."""

    models: Path
    metrics: Path
    plots: Path
    curves: Path
    features: Path

    @property
    def model_file(self) -> Path:
        return self.models / "model.txt"


def log_run_contents(
    client: MlflowClient, run_id: str, files: RunFiles, raw_params: Mapping[str, Any]
) -> None:
    """Everything but the registered model: params, metrics, curves, plots, artifacts, and the
    booster logged with the `mlflow.lightgbm` flavour. The active run must be `run_id`."""
    import mlflow

    from tabml.model_metadata import ModelMetadata

    params = flatten(raw_params)
    client.log_batch(run_id, params=[_param(k, v) for k, v in params.items()], synchronous=True)
    metrics = json.loads(files.metrics.read_text())
    curve = json.loads(files.curves.read_text())
    log_metrics_and_curves(client, run_id, metrics, curve)
    for path in (files.metrics, files.curves, Path("params.yaml"), LOCK_FILE):
        if path.exists():
            mlflow.log_artifact(str(path), artifact_path=_parent(path))
    mlflow.log_artifacts(str(files.plots), artifact_path=files.plots.as_posix())
    mlflow.log_artifacts(str(files.models), artifact_path=files.models.as_posix())
    for name, figure in render_plots(files.plots, curve).items():
        mlflow.log_figure(figure, f"plots/{name}.png")
    feature_names = ModelMetadata.load(files.models / "model_metadata.json").feature_names
    log_lightgbm_model(files.model_file, feature_names, files.features / "test.parquet")


def _param(key: str, value: str):
    from mlflow.entities import Param

    return Param(key, value)


def _parent(path: Path) -> str | None:
    parent = path.parent.as_posix()
    return None if parent == "." else parent
