"""The train stage with `train.engine=dask` on a real 2-worker LocalCluster, on a sample of the
pipeline's own features: the model file it writes, serving parity, repeatability, and that the
default engine never imports Dask."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from tests.support.project import PYTHON, REPO_ROOT, command_env, run

pytestmark = pytest.mark.slow

# Rows of each split in the sample; boosting rounds and a learning rate at which early stopping
# acts well before the last round.
SAMPLE_ROWS = {"train": 6000, "valid": 2000, "test": 4000}
ROUNDS, PATIENCE, LEARNING_RATE = 150, 15, 0.3


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def write_params(workdir: Path, engine: str, **train: Any) -> None:
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["model"]["learning_rate"] = LEARNING_RATE
    params["train"].update(
        engine=engine, num_boost_round=ROUNDS, early_stopping_rounds=PATIENCE, **train
    )
    (workdir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory, pipeline_outputs: Path) -> Path:
    """A workdir with the first rows of each encoded and prepared split, and the model inputs."""
    workdir = tmp_path_factory.mktemp("dask-sample")
    for kind in ("features", "prepared"):
        for split, rows in SAMPLE_ROWS.items():
            table = pq.read_table(REPO_ROOT / "artifacts" / kind / f"{split}.parquet")
            (workdir / kind).mkdir(exist_ok=True)
            pq.write_table(table.slice(0, rows), workdir / kind / f"{split}.parquet")
    for name in ("contract.json", "feature_transform.json", "reference_profile.json"):
        (workdir / "models").mkdir(exist_ok=True)
        (workdir / "models" / name).write_bytes((pipeline_outputs / name).read_bytes())
    return workdir


def train_stage(workdir: Path, out: str, check: bool = True, **env: str):
    models = workdir / out
    models.mkdir(exist_ok=True)
    return run(
        [
            PYTHON,
            *env.pop("python_flags", "").split(),
            "-m",
            "tabml.stages.train_model",
            "--features",
            "features",
            "--transform",
            "models/feature_transform.json",
            "--model",
            f"{out}/model.txt",
            "--metadata",
            f"{out}/model_metadata.json",
            "--curves",
            f"{out}/training_curve.json",
        ],
        cwd=workdir,
        check=check,
        env=command_env(PYTHONPATH=str(REPO_ROOT / "src"), OMP_WAIT_POLICY="PASSIVE", **env),
    )


def roc_auc_of(workdir: Path, models: Path) -> float:
    from sklearn.metrics import roc_auc_score

    from tabml.model import load_booster, predict_proba

    names = json.loads((models / "model_metadata.json").read_text())["feature_names"]
    table = pq.read_table(workdir / "features" / "test.parquet")
    x = np.column_stack([table.column(n).to_numpy() for n in names])
    proba = predict_proba(load_booster(models / "model.txt"), x)
    return float(roc_auc_score(table.column("target").to_numpy(), proba))


@pytest.fixture(scope="module")
def trained(sample: Path) -> dict[str, Path]:
    """The sample trained locally and on a 2-worker LocalCluster (two runs: repeatability)."""
    write_params(sample, "local")
    train_stage(sample, "local")
    write_params(sample, "dask")
    for out in ("dask", "dask-again"):
        train_stage(sample, out)
    return {name: sample / name for name in ("local", "dask", "dask-again")}


def test_dask_model_is_an_ordinary_lightgbm_model_file(trained: dict[str, Path]) -> None:
    text = (trained["dask"] / "model.txt").read_text()
    assert text.startswith("tree\nversion=v4")
    assert "[tree_learner: data]" in text and "[num_machines: 2]" in text
    # The run's random socket ports are not part of the model.
    assert "[machines: ]" in text and "[local_listen_port: 12400]" in text
    meta = json.loads((trained["dask"] / "model_metadata.json").read_text())
    assert meta["params"]["tree_learner"] == "data" and meta["params"]["num_machines"] == 2
    assert meta["params"]["num_threads"] == 1  # one thread per LocalCluster worker
    curve = json.loads((trained["dask"] / "training_curve.json").read_text())
    # Early stopping acted: PATIENCE rounds past the best iteration, within ROUNDS.
    assert len(curve) == meta["best_iteration"] + PATIENCE < ROUNDS
    assert set(curve[0]) == {
        "iteration",
        "train_auc",
        "train_binary_logloss",
        "valid_auc",
        "valid_binary_logloss",
    }


def test_dask_and_local_models_score_the_test_rows_alike(
    sample: Path, trained: dict[str, Path]
) -> None:
    local, dask = roc_auc_of(sample, trained["local"]), roc_auc_of(sample, trained["dask"])
    assert abs(local - dask) < 0.005, (local, dask)


def test_validation_curve_is_the_whole_split_on_every_worker(trained: dict[str, Path]) -> None:
    """The recorded validation AUC is LightGBM's on all validation rows: rescoring the saved
    model's first `best_iteration` trees on the whole split gives the same number."""
    from sklearn.metrics import roc_auc_score

    from tabml.model import load_booster

    meta = json.loads((trained["dask"] / "model_metadata.json").read_text())
    curve = json.loads((trained["dask"] / "training_curve.json").read_text())
    table = pq.read_table(trained["dask"].parent / "features" / "valid.parquet")
    x = np.column_stack([table.column(n).to_numpy() for n in meta["feature_names"]])
    proba = load_booster(trained["dask"] / "model.txt").predict(x)
    auc = roc_auc_score(table.column("target").to_numpy(), proba)
    assert curve[meta["best_iteration"] - 1]["valid_auc"] == pytest.approx(auc, abs=1e-6)


def test_repeated_runs_on_the_same_cluster_shape_are_byte_identical(
    trained: dict[str, Path],
) -> None:
    for name in ("model.txt", "model_metadata.json", "training_curve.json"):
        assert md5(trained["dask"] / name) == md5(trained["dask-again"] / name), name


def test_service_scores_the_dask_model_like_offline_prediction(
    sample: Path, trained: dict[str, Path]
) -> None:
    from tabml.columnar import read_columns
    from tabml.model import load_booster, predict_proba
    from tabml.serving.predictor import Predictor, TrainedModel

    models = sample / "served"
    models.mkdir()
    for source in (sample / "models", trained["dask"]):
        for path in source.glob("*.json"):
            (models / path.name).write_bytes(path.read_bytes())
    (models / "model.txt").write_bytes((trained["dask"] / "model.txt").read_bytes())
    (models / "training_curve.json").unlink()
    predictor = Predictor(TrainedModel.load(models))

    prepared = read_columns(sample / "prepared" / "test.parquet")
    names = predictor.feature_names
    records = [
        dict(zip(names, row, strict=True))
        for row in zip(*(prepared[n].tolist() for n in names), strict=True)
    ]
    served = predictor.predict(predictor.validate_records(records))

    meta = json.loads((models / "model_metadata.json").read_text())
    features = read_columns(sample / "features" / "test.parquet")
    offline = predict_proba(
        load_booster(models / "model.txt"),
        np.column_stack([features[n] for n in meta["feature_names"]]),
    )
    np.testing.assert_array_equal(served, offline)


def test_default_engine_never_imports_dask(sample: Path) -> None:
    write_params(sample, "local")
    result = train_stage(sample, "local-importtime", python_flags="-X importtime")
    imported = {
        line.split("|")[-1].strip().split(".")[0]
        for line in result.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert "lightgbm" in imported  # the trace is real: the stage trained
    assert not imported & {"dask", "distributed"}, sorted(imported & {"dask", "distributed"})
