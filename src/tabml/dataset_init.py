"""`tabml init-dataset`: turn a user's CSV into a dataset of the pipeline.

It writes `conf/dataset/NAME.yaml` (the inferred contract, the source and the split policy),
copies the CSV into `datasets/NAME/` and tracks that directory with DVC (`datasets/NAME.dvc`,
pinned by md5). Everything is read and checked before anything is written; a failure while
writing removes what this run created, so a refused CSV leaves the repository as it was.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from tabml.csv_inference import Inferred, infer_contract
from tabml.csv_reading import CsvTable, read_csv_table
from tabml.data import file_md5
from tabml.errors import TabmlError
from tabml.layout import data_dvc_file, dataset_data_dir, dataset_reference_profile

if TYPE_CHECKING:
    from tabml.config import DatasetConfig

CONF_DATASET_DIR = Path("conf") / "dataset"
#: The default share of the rows held out as the test set when there is no test file.
TEST_HOLDOUT = 0.2
#: Line width of the written YAML (the repository's line length).
WIDTH = 100
_DATASET_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class InitDatasetError(TabmlError, ValueError):
    """The dataset cannot be created (name taken, not a DVC repository, files disagree)."""


@dataclass(frozen=True)
class DatasetRequest:
    csv: Path
    label: str
    name: str
    test_csv: Path | None = None
    positive: str | None = None
    drop_unlabelled: bool = False
    separator: str | None = None
    test_holdout: float = TEST_HOLDOUT


@dataclass(frozen=True)
class CreatedDataset:
    config_file: Path
    data_dir: Path
    dvc_file: Path
    inferred: Inferred
    config: dict[str, Any]


def _combined(train: CsvTable, test: CsvTable) -> CsvTable:
    """Both files as one table (the contract must admit both), rows located by file and line."""
    import pandas as pd

    if test.columns != train.columns:
        raise InitDatasetError(
            f"{test.path} line 1: columns {test.columns} differ from {train.path}'s "
            f"{train.columns}; the test file needs the same header"
        )
    if test.separator != train.separator:
        raise InitDatasetError(
            f"{test.path}: separator {test.separator!r}, {train.path} uses {train.separator!r}"
        )
    return CsvTable(
        path=Path(f"{train.path} + {test.path}"),
        separator=train.separator,
        frame=pd.concat([train.frame, test.frame], ignore_index=True),
        lines=[f"{t.path.name}:{n}" for t in (train, test) for n in t.lines],
    )


def _column_entry(spec: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": spec.name, "type": spec.type, "nullable": spec.nullable}
    if spec.type == "category":
        entry["categories"] = spec.categories
    else:
        entry["min"], entry["max"] = spec.min, spec.max
    return entry


def dataset_config(request: DatasetRequest, inferred: Inferred) -> dict[str, Any]:
    """`conf/dataset/NAME.yaml` as data: validated as a `DatasetConfig` before it is written."""
    files = {"train": {"name": request.csv.name, "md5": file_md5(request.csv), "skip_rows": 1}}
    if request.test_csv is not None:
        files["test"] = {
            "name": request.test_csv.name,
            "md5": file_md5(request.test_csv),
            "skip_rows": 1,
        }
    label: dict[str, Any] = inferred.label.model_dump(exclude={"strip_suffix", "unlabelled"})
    if inferred.unlabelled_lines:
        label["unlabelled"] = "drop"
    config: dict[str, Any] = {
        "name": request.name,
        "data_dir": dataset_data_dir(request.name).as_posix(),
        "reference_profile": dataset_reference_profile(request.name).as_posix(),
        "source": {
            "kind": "path",
            "paths": [str(p.resolve()) for p in (request.csv, request.test_csv) if p is not None],
        },
        "files": files,
        "test_holdout": None if request.test_csv is not None else request.test_holdout,
        "separator": inferred.separator,
        "missing_marker": inferred.missing_marker,
        "label": label,
        "columns": [_column_entry(spec) for spec in inferred.columns],
    }
    if inferred.file_columns != [*(c.name for c in inferred.columns), inferred.label.column]:
        config["file_columns"] = inferred.file_columns
    return config


def _yaml_text(request: DatasetRequest, inferred: Inferred, config: dict[str, Any]) -> str:
    sources = " and ".join(str(p) for p in (request.csv, request.test_csv) if p is not None)
    split = (
        f"the test set is {request.test_csv.name}"
        if request.test_csv is not None
        else f"no test file, so a stratified holdout of {request.test_holdout:.0%} of the rows, "
        "seeded by `seed`, is the test set"
    )
    prose = (
        f"Dataset {request.name}: written by `tabml init-dataset` from {sources} "
        f"({inferred.rows} rows). The contract below is inferred from the data (types, null "
        "policy, category levels, ranges widened by a 10 % margin): review it, then run "
        f"`python src/train.py dataset={request.name}`. Split: {split}."
    )
    header = textwrap.wrap(prose, width=WIDTH - 2, break_on_hyphens=False)
    if inferred.review:
        header.append("To review:")
        for finding in inferred.review:
            header += textwrap.wrap(
                finding,
                width=WIDTH - 2,
                initial_indent="  - ",
                subsequent_indent="    ",
                break_on_hyphens=False,
            )
    body = yaml.safe_dump(config, sort_keys=False, default_flow_style=None, width=WIDTH)
    return "".join(f"# {line}\n" for line in header) + body


def _check_targets(request: DatasetRequest, root: Path) -> None:
    if not _DATASET_NAME.match(request.name):
        raise InitDatasetError(
            f"--name {request.name!r}: use lower-case letters, digits and '_', starting with a "
            "letter (it names conf/dataset/NAME.yaml, datasets/NAME and the registered model)"
        )
    if not (root / ".dvc").is_dir():
        raise InitDatasetError(
            f"{root.resolve()} is not a DVC repository (no .dvc/): run it in the project's root"
        )
    data_dir = dataset_data_dir(request.name)
    for path in (CONF_DATASET_DIR / f"{request.name}.yaml", data_dir, data_dvc_file(data_dir)):
        if (root / path).exists():
            raise InitDatasetError(
                f"{path} exists: dataset {request.name!r} is already defined (choose another "
                "--name, or remove it first)"
            )
    if request.test_csv is not None and request.test_csv.name == request.csv.name:
        raise InitDatasetError(
            f"{request.csv} and {request.test_csv} have the same file name: rename one"
        )
    if not 0 < request.test_holdout < 1:
        raise InitDatasetError(f"--test-fraction must be in (0, 1), got {request.test_holdout}")


def infer_dataset(
    request: DatasetRequest, root: Path = Path(".")
) -> tuple[Inferred, dict[str, Any]]:
    """Read and infer without writing: the inferred contract and the config it makes."""
    from tabml.config import DatasetConfig

    _check_targets(request, root)
    table = read_csv_table(request.csv, request.separator)
    if request.test_csv is not None:
        table = _combined(table, read_csv_table(request.test_csv, table.separator))
    inferred = infer_contract(table, request.label, request.positive, request.drop_unlabelled)
    config = dataset_config(request, inferred)
    check_with_the_pipeline(request, DatasetConfig.model_validate(config))
    return inferred, config


def check_with_the_pipeline(request: DatasetRequest, dataset: DatasetConfig) -> None:
    """Run the validate stage's own checks on the files with the inferred contract, so that a
    disagreement between inference and pipeline is found here, before anything is written."""
    from tabml.data import RawFormatError, read_raw
    from tabml.validation import DataContractError, drop_unlabelled, validate_raw

    contract = dataset.contract()
    for path in (request.csv, request.test_csv):
        if path is None:
            continue
        try:
            raw, _ = drop_unlabelled(read_raw(path, contract, skip_rows=1), contract)
            validate_raw(raw, contract, str(path))
        except (RawFormatError, DataContractError) as exc:
            raise InitDatasetError(
                f"the inferred contract fails the pipeline's own validation of {path} (a gap in "
                f"the inference: edit the CSV or report it):\n{exc}"
            ) from None


def _track_with_dvc(root: Path, data_dir: Path) -> None:
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    # DVC's own advice ("To track the changes with git, run: ...") is replaced by the summary's.
    dvc_log = logging.getLogger("dvc")
    level = dvc_log.level
    dvc_log.setLevel(logging.WARNING)
    try:
        with Repo(str(root)) as repo:
            repo.add(str((root / data_dir).resolve()))
    except DvcException as exc:
        raise InitDatasetError(f"dvc add {data_dir} failed: {exc}") from None
    finally:
        dvc_log.setLevel(level)


def create_dataset(request: DatasetRequest, root: Path = Path(".")) -> CreatedDataset:
    """Infer, then copy the CSV(s) into datasets/NAME/, `dvc add` it and write the config."""
    from tabml.atomic import write_text_atomic

    inferred, config = infer_dataset(request, root)
    data_dir = dataset_data_dir(request.name)
    dvc_file = data_dvc_file(data_dir)
    config_file = CONF_DATASET_DIR / f"{request.name}.yaml"
    gitignore = root / data_dir.parent / ".gitignore"
    previous_ignore = gitignore.read_text() if gitignore.exists() else None
    created_parent = not (root / data_dir.parent).exists()
    (root / data_dir.parent).mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{request.name}.", dir=root / data_dir.parent))
    try:
        for source in (request.csv, request.test_csv):
            if source is not None:
                shutil.copyfile(source, staging / source.name)
        staging.rename(root / data_dir)
        _track_with_dvc(root, data_dir)
        write_text_atomic(root / config_file, _yaml_text(request, inferred, config))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(root / data_dir, ignore_errors=True)
        (root / dvc_file).unlink(missing_ok=True)
        if previous_ignore is None:
            gitignore.unlink(missing_ok=True)
        else:
            gitignore.write_text(previous_ignore)
        if created_parent:
            shutil.rmtree(root / data_dir.parent, ignore_errors=True)
        raise
    return CreatedDataset(config_file, data_dir, dvc_file, inferred, config)
