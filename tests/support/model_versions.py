"""A second trained model version beside the session's, for champion/challenger tests and
benchmarks, without running the pipeline again.

`train_challenger` copies a checkout (models/, dvc.lock, reports/) and replaces its model with a
booster trained in about a second on the same prepared splits and the same fitted feature
transform, with other parameters; it rebuilds the version's reference profile as the `profile`
stage would and rewrites the md5s in the copy's dvc.lock, as a pipeline run in another checkout
leaves them. `bundle_of` publishes checkouts as a bundle with `tabml.bundle`.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from tests.support.project import REPO_ROOT

from tabml.layout import METADATA_FILE, MODEL_FILE, PROFILE_FILE

PREPARED = REPO_ROOT / "artifacts" / "prepared"
#: Parameters of the challenger: a smaller, faster-learning model than the champion.
CHALLENGER_PARAMS = {"num_leaves": 7, "learning_rate": 0.2, "min_data_in_leaf": 50, "seed": 7}


def train_challenger(champion: Path, dest: Path, *, rounds: int = 60) -> Path:
    """A checkout at `dest` like `champion` (a directory holding models/ and dvc.lock) whose
    model is another booster; returns `dest`."""
    from tabml.columnar import read_columns
    from tabml.contract import DataContract
    from tabml.data import file_md5
    from tabml.features import TARGET, FeatureTransform
    from tabml.model import predict_proba, save_booster, train_booster
    from tabml.model_metadata import ModelMetadata
    from tabml.monitoring import ReferenceProfile, build_profile

    shutil.copytree(champion, dest, ignore=shutil.ignore_patterns("*.log"))
    models = dest / "models"
    contract = DataContract.load(models / "contract.json")
    transform = FeatureTransform.load(models / "feature_transform.json", contract)
    metadata = ModelMetadata.load(models / METADATA_FILE)
    old = {name: file_md5(models / name) for name in (MODEL_FILE, METADATA_FILE, PROFILE_FILE)}

    train, valid = (
        read_columns(PREPARED / "train.parquet"),
        read_columns(PREPARED / "valid.parquet"),
    )
    params = {**metadata.params, **CHALLENGER_PARAMS, "num_threads": 1}
    result = train_booster(
        transform.transform(train),
        np.asarray(train[TARGET]),
        transform.transform(valid),
        np.asarray(valid[TARGET]),
        feature_names=metadata.feature_names,
        categorical_features=metadata.categorical_features,
        params=params,
        num_boost_round=rounds,
        early_stopping_rounds=10,
    )
    save_booster(result.booster, models / MODEL_FILE, result.best_iteration)
    metadata.model_copy(update={"params": params, "best_iteration": result.best_iteration}).save(
        models / METADATA_FILE
    )
    reference = ReferenceProfile.load(models / PROFILE_FILE)
    scores = predict_proba(result.booster, transform.transform(valid))
    build_profile(valid, contract, scores, reference.monitor).save(models / PROFILE_FILE)

    lock = (dest / "dvc.lock").read_text()
    for name, before in old.items():
        lock = lock.replace(before, file_md5(models / name))
    (dest / "dvc.lock").write_text(lock)
    return dest


def bundle_of(dest: Path, champion: Path, challenger: Path | None = None) -> Path:
    """Publish checkouts (directories holding models/ and dvc.lock) as the bundle `dest`: the
    first as champion, the second (if any) as challenger."""
    from tabml.bundle import bundle_from_models_dir, write_bundle

    first = bundle_from_models_dir(champion / "models").version("champion")
    versions = [first]
    second = None
    if challenger is not None:
        second = bundle_from_models_dir(challenger / "models").version("champion")
        versions.append(second)
    write_bundle(dest, versions, first.id, second.id if second else None)
    return dest
