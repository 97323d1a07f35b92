"""The training entry point's engine: compose conf/ → params.yaml, make sure the pinned data is
present, run `dvc repro` and report what ran.

DVC composes Hydra configs only for `dvc exp run`; for `dvc repro` this module composes them,
writing exactly what DVC's own Hydra integration writes, so both paths produce the same file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

from tabml.atomic import write_text_atomic, write_with
from tabml.config import PARAMS_FILE, DatasetConfig, Params, load_params, parse_params
from tabml.data import (
    DataIntegrityError,
    data_version_pending,
    dir_md5,
    fetch_pinned,
    file_md5,
    pinned_dir_md5,
)
from tabml.layout import DVC_YAML, MODELS_DIR, PROFILE_FILE
from tabml.lockfile import locked_md5

log = logging.getLogger(__name__)

CONF_DIR = Path("conf")
CONFIG_NAME = "config"
METRICS_FILE = Path("reports/metrics.json")
COMPOSE_STAMP = Path(".dvc/tmp/tabml-compose.json")


def compose(overrides: list[str], conf_dir: Path = CONF_DIR) -> tuple[Params, str]:
    """Compose conf/ with Hydra overrides; return the validated params and their YAML text."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from tabml.config import ConfigError

    try:
        with initialize_config_dir(config_dir=str(conf_dir.resolve()), version_base=None):
            cfg = hydra_compose(config_name=CONFIG_NAME, overrides=overrides)
        OmegaConf.resolve(cfg)
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(f"invalid override: {exc}") from None
    params = parse_params(OmegaConf.to_container(cfg))  # type: ignore[arg-type]
    return params, OmegaConf.to_yaml(cfg)


def write_params(text: str, path: Path = PARAMS_FILE) -> bool:
    """Write params.yaml only when its content changes (keeps DVC's no-op fast)."""
    if path.exists() and path.read_text() == text:
        return False
    write_text_atomic(path, text)
    return True


def _compose_key(overrides: list[str], conf_dir: Path) -> str:
    digest = hashlib.md5(json.dumps(overrides).encode())
    for path in sorted(p for p in conf_dir.rglob("*") if p.is_file()):
        digest.update(path.relative_to(conf_dir).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def compose_params(
    overrides: list[str], conf_dir: Path = CONF_DIR, path: Path = PARAMS_FILE
) -> tuple[Params, bool]:
    """Compose into params.yaml and return (params, whether the file changed).

    Hydra costs about half a second to import, so when neither conf/ nor the overrides nor
    params.yaml changed since the last composition (a stamp records their hashes), the file is
    only re-read and re-validated.
    """
    key = _compose_key(overrides, conf_dir)
    if COMPOSE_STAMP.exists() and path.exists():
        stamp = json.loads(COMPOSE_STAMP.read_text())
        if stamp == {"key": key, "params_md5": file_md5(path)}:
            return load_params(path), False
    params, text = compose(overrides, conf_dir)
    changed = write_params(text, path)
    write_text_atomic(COMPOSE_STAMP, json.dumps({"key": key, "params_md5": file_md5(path)}))
    return params, changed


class DataState(NamedTuple):
    #: How the dataset's raw files were obtained ("workspace": they were there already).
    source: str
    #: The data directory differs from its .dvc file: a new data version, validated before it
    #: is recorded.
    new_version: bool = False


def ensure_data(params: Params) -> DataState:
    """Make sure the dataset's data directory exists: keep it, `dvc pull` it, or fetch the
    pinned source; and that its validate reference exists (`ensure_validation_reference`).

    Obtained data must match the .dvc file exactly; a dataset without one yet (its first run)
    gets one for the fetched files, which are pinned by md5 file by file. Data already in the
    workspace that differs from the .dvc file is a new data version: `reproduce` validates it,
    and records it only if it passes.
    """
    dataset = params.dataset
    ensure_validation_reference(dataset)
    data_dir, dvc_file = Path(dataset.data_dir), dataset.dvc_file
    if not dvc_file.is_file():
        return DataState(_fetch_and_add(params, data_dir, dvc_file))
    expected = pinned_dir_md5(dvc_file)
    names = [spec.name for spec in dataset.files.values()]
    if all((data_dir / name).is_file() for name in names):
        actual = dir_md5(data_dir)
        if actual != expected:
            return DataState(
                f"workspace (new data version: md5 {actual}, {dvc_file} pinned {expected})", True
            )
        return DataState("workspace")
    source = _pull_or_fetch(params, data_dir, dvc_file)
    actual = dir_md5(data_dir)
    if actual != expected:
        raise DataIntegrityError(
            f"{data_dir}/ {source} has md5 {actual}, but {dvc_file} pins {expected}"
        )
    return DataState(source)


def _fetch_and_add(params: Params, data_dir: Path, dvc_file: Path) -> str:
    """A dataset's first run: fetch its pinned files and start its data version (`dvc add`)."""
    from dvc.repo import Repo

    fetch_pinned(params.dataset, data_dir)
    with Repo() as repo:
        repo.add(data_dir.as_posix())
    return (
        f"obtained by pinned download of {params.dataset.source.describe()}; "
        f"new data version {dvc_file} (commit it)"
    )


def _pull_or_fetch(params: Params, data_dir: Path, dvc_file: Path) -> str:
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    with Repo() as repo:
        try:
            repo.pull(targets=[str(dvc_file)])
            return "obtained by dvc pull"
        except DvcException as exc:
            log.info("dvc pull of %s failed (%s); fetching the pinned source", dvc_file, exc)
        fetch_pinned(params.dataset, data_dir)
        repo.commit(str(dvc_file), force=True)
    return f"obtained by pinned download of {params.dataset.source.describe()}"


@dataclass
class ReproResult:
    stages_run: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)


class StageFailedError(RuntimeError):
    """A pipeline stage failed; its own message was printed above DVC's summary."""


def use_this_interpreter() -> None:
    """Stage commands say `python`: make that the interpreter (and venv) running this program."""
    bin_dir = str(Path(sys.executable).parent)
    if os.environ.get("PATH", "").split(os.pathsep)[0] != bin_dir:
        os.environ["PATH"] = os.pathsep.join([bin_dir, os.environ.get("PATH", "")])


def _write_bytes(path: Path, data: bytes) -> None:
    write_with(path, partial(Path.write_bytes, data=data))


#: What a dataset's reference profile holds before its first model exists: validate then
#: skips the distribution check (tabml.stages.validate).
NO_REFERENCE = b"null\n"


def ensure_validation_reference(dataset: DatasetConfig) -> bool:
    """Give a dataset without a reference profile (its first run) the `null` placeholder, so
    the validate stage's declared dependency exists; True when it was written."""
    reference = Path(dataset.reference_profile)
    if reference.is_file():
        return False
    _write_bytes(reference, NO_REFERENCE)
    return True


def refresh_validation_reference(dataset: DatasetConfig) -> bytes | None:
    """Make the validate stage's reference the profile of the workspace model; return what the
    reference held before (None when unchanged).

    Only a profile that dvc.lock pins, from a pipeline run on this dataset's data directory,
    counts: it belongs to the model the pipeline last built, trained on the data version the
    dataset's .dvc file pins, which is what a new version should resemble.
    """
    reference = Path(dataset.reference_profile)
    profile = MODELS_DIR / PROFILE_FILE
    if not profile.is_file() or file_md5(profile) != locked_md5(profile.as_posix()):
        return None
    if not _locked_for(dataset):
        return None
    previous = reference.read_bytes() if reference.is_file() else b""
    current = profile.read_bytes()
    if current == previous:
        return None
    _write_bytes(reference, current)
    return previous


def _locked_for(dataset: DatasetConfig) -> bool:
    """dvc.lock records a pipeline run on this dataset's data directory."""
    from tabml.lockfile import LockFileError, read_lock

    try:
        return dataset.data_dir in read_lock().stage_deps.get("validate", {})
    except LockFileError:
        return False


def _validate_new_data_version(repo: Any, dataset: DatasetConfig) -> list[str]:
    """Run the validate stage on its own before DVC may record a new data/ in data.dvc.

    `dvc repro` verifies data sources first: it records a changed data/ in data.dvc before any
    stage runs, so a file that then fails validation would already be the workspace's data
    version. Reproducing `validate` alone (single_item) leaves data.dvc as it is; only when it
    passes does the full `dvc repro` record the new version. A failure restores the previous
    reference, so the workspace differs from before the run only by the data/ it was given.
    """
    from dvc.exceptions import ReproductionError

    previous = refresh_validation_reference(dataset)
    try:
        stages = repo.reproduce("validate", single_item=True)
    except ReproductionError as exc:
        if previous is not None:
            _write_bytes(Path(dataset.reference_profile), previous)
        dvc_file = dataset.dvc_file
        raise StageFailedError(
            f"{exc} ({exc.__cause__}); {dataset.data_dir}/ was not recorded as a data version: "
            f"{dvc_file} still pins md5 {pinned_dir_md5(dvc_file)} "
            f"(`dvc checkout --force {dvc_file}` restores that data)"
        ) from None
    return [stage.addressing for stage in stages]


def reproduce(
    force: bool = False,
    new_data_version: bool | None = None,
    dataset: DatasetConfig | None = None,
) -> ReproResult:
    """`dvc repro` in-process (no second interpreter start-up); returns the stages that ran.

    A new data version (`ensure_data` says whether the data directory is one; None: find out)
    is validated before DVC records it (`_validate_new_data_version`). `dataset` defaults to
    params.yaml's.
    """
    from dvc.exceptions import ReproductionError
    from dvc.repo import Repo

    dataset = dataset or load_params().dataset
    if new_data_version is None:
        new_data_version = data_version_pending(Path(dataset.data_dir), dataset.dvc_file)
    use_this_interpreter()
    with Repo() as repo:
        ran = _validate_new_data_version(repo, dataset) if new_data_version else []
        try:
            stages = repo.reproduce(force=force)
        except ReproductionError as exc:
            restore_missing_outputs(repo)
            raise StageFailedError(f"{exc} ({exc.__cause__})") from None
    ran += [stage.addressing for stage in stages if stage.addressing not in ran]
    result = ReproResult(stages_run=ran)
    if METRICS_FILE.exists():
        result.metrics = json.loads(METRICS_FILE.read_text())
    return result


def restore_missing_outputs(repo: Any) -> list[str]:
    """Put back, from the DVC cache, the outputs dvc.lock records that are missing.

    DVC deletes a stage's outputs before it runs the command; when the command then fails (a
    Dask worker lost mid-training, say), the last good model would be gone although dvc.lock
    still names it. Only missing files are restored: nothing a run wrote is overwritten.
    """
    from dvc.exceptions import DvcException

    missing = [
        str(out)
        for stage in repo.index.stages
        for out in stage.outs
        if out.use_cache and not out.exists
    ]
    if missing:
        try:
            repo.checkout(targets=missing)
        except DvcException as exc:
            log.warning("could not restore %s from the DVC cache: %s", ", ".join(missing), exc)
    return missing


def push(dataset: DatasetConfig | None = None) -> str:
    """Push the dataset's data, the pipeline's outputs and the run cache to the default remote,
    so other clones can pull.

    The run cache alone records commands and hashes, not the outputs, so both are pushed. Only
    the current dataset's data (default: params.yaml's): another dataset's `.dvc` file names
    data this clone may never have fetched. A missing or unreachable remote is reported, not
    fatal: the local results stand.
    """
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    dataset = dataset or load_params().dataset
    targets = [dataset.dvc_file.as_posix(), DVC_YAML.as_posix()]
    with Repo() as repo:
        remote = repo.config["core"].get("remote")
        if not remote:
            return "push skipped: no default DVC remote configured"
        try:
            pushed = repo.push(targets=targets, run_cache=True)
        except DvcException as exc:
            return f"warning: push to DVC remote '{remote}' failed: {exc}"
    return f"pushed {pushed} file(s) to DVC remote '{remote}'"


def print_summary(result: ReproResult, out=sys.stdout) -> None:
    if result.stages_run:
        print(f"stages run: {', '.join(result.stages_run)}", file=out)
    else:
        print("stages run: none (pipeline up to date)", file=out)
    for split, scores in result.metrics.items():
        print(f"{split} metrics:", file=out)
        for name, value in scores.items():
            print(f"  {name:>15}: {value}", file=out)
