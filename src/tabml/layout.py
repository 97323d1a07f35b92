"""Where the pipeline puts things: every path and artifact file name, in one place.

Paths are relative to the repository root, exactly as `dvc.yaml` and `dvc.lock` write them.
"""

from __future__ import annotations

from pathlib import Path

DATA_DIR = Path("data")
DATA_DVC = Path("data.dvc")
PARAMS_FILE = Path("params.yaml")
LOCK_FILE = Path("dvc.lock")
DVC_YAML = Path("dvc.yaml")

MODELS_DIR = Path("models")
# The model's artifacts (what scoring needs, and what the MLflow pyfunc carries), as file names
# under a models directory.
CONTRACT_FILE = "contract.json"
TRANSFORM_FILE = "feature_transform.json"
MODEL_FILE = "model.txt"
METADATA_FILE = "model_metadata.json"
ARTIFACT_FILES = (CONTRACT_FILE, TRANSFORM_FILE, MODEL_FILE, METADATA_FILE)
# The reference live traffic is compared with (the `profile` stage), with its monitor settings.
PROFILE_FILE = "reference_profile.json"
# What the service loads and verifies against dvc.lock (and the image carries).
SERVING_FILES = (*ARTIFACT_FILES, PROFILE_FILE)
# The model card (the `model_card` stage); served at /model-card when present, and verified.
MODEL_CARD_FILE = "model_card.md"
MODEL_CARD_HTML_FILE = "model_card.html"
MODEL_CARD_FILES = (MODEL_CARD_FILE, MODEL_CARD_HTML_FILE)

# What the validate stage compares raw files with: a git-tracked copy of the profile of the model
# trained on the previous data version (see tabml.pipeline.refresh_validation_reference).
VALIDATION_REFERENCE = Path("reference") / "profile.json"

REPORTS_DIR = Path("reports")
METRICS_FILE = REPORTS_DIR / "metrics.json"
SLICES_FILE = REPORTS_DIR / "slices.json"
CURVES_FILE = REPORTS_DIR / "training_curve.json"
VALIDATION_REPORT = REPORTS_DIR / "data_validation.json"
PLOTS_DIR = REPORTS_DIR / "plots"

# The stage that writes the model (its outputs identify a model in dvc.lock).
MODEL_STAGE = "train"

# Datasets (docs/datasets.md). Adult, the default, keeps its raw files in DATA_DIR (data/,
# versioned by data.dvc, with the loop's labelled batches in data/batches); every other dataset
# keeps them in datasets/<name>/, outside data/ because DVC outputs may not overlap. The
# current dataset's paths are `params.dataset.data_dir`, `.dvc_file` and `.reference_profile`.
DATASETS_DIR = Path("datasets")


def data_dvc_file(data_dir: str | Path) -> Path:
    """The .dvc file that versions a data directory: `<data_dir>.dvc`, as `dvc add` names it."""
    return Path(f"{Path(data_dir).as_posix()}.dvc")


def dataset_data_dir(name: str) -> Path:
    """Where a dataset other than Adult keeps its raw files."""
    return DATASETS_DIR / name


def dataset_reference_profile(name: str) -> Path:
    """The validate stage's reference profile of a dataset other than Adult."""
    return VALIDATION_REFERENCE.parent / name / VALIDATION_REFERENCE.name
