"""Bundles from the MLflow registry: resolve aliases to versions, download each version's
logged pyfunc artifacts and the dvc.lock logged with its run, and write a verified bundle.

Every downloaded file is checked against that run's dvc.lock (`bundle.describe_version`), and
the lock's model md5 against the run's `model_md5` tag (the data md5 likewise), so a bundle only
ever holds exactly what the pipeline locked and the registry tracked. The provenance comes from
the run: its identity and git tags, its `test_*` metrics, the version's aliases.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from tabml.bundle import (
    CHALLENGER,
    Bundle,
    BundleError,
    BundleVersion,
    describe_version,
    load_bundle,
    write_bundle,
)
from tabml.layout import LOCK_FILE, MODELS_DIR
from tabml.lockfile import read_lock
from tabml.registry import CHAMPION, RegistryError, current_alias
from tabml.tracking_store import TAG_DATA_MD5, TAG_MODEL_MD5

if TYPE_CHECKING:
    from mlflow import MlflowClient

#: The pyfunc flavour's section of an MLmodel file, listing its artifacts.
_PYFUNC = "python_function"


def resolve_alias(client: MlflowClient, name: str, alias: str) -> str:
    version = current_alias(client, name, alias)
    if version is None:
        raise RegistryError(f"{name} has no version with the alias {alias!r}")
    return version


def _download(uri: str, dest: Path, tracking_uri: str) -> Path:
    from mlflow.artifacts import download_artifacts

    return Path(download_artifacts(artifact_uri=uri, dst_path=str(dest), tracking_uri=tracking_uri))


def export_version(client: MlflowClient, name: str, version: str, workdir: Path) -> BundleVersion:
    """Download version `version` of `name` into `workdir` and describe it, verified."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from mlflow.exceptions import MlflowException

    model_version = client.get_model_version(name, version)
    if not model_version.run_id:
        raise BundleError(f"{name} v{version} has no run: its provenance is unknown")
    run = client.get_run(model_version.run_id)
    where = f"{name} v{version} (run {run.info.run_id})"
    uri = client.tracking_uri
    model_uri = f"models:/{name}/{version}"
    mlmodel = yaml.safe_load(_download(f"{model_uri}/MLmodel", workdir / "meta", uri).read_text())
    artifacts = mlmodel.get("flavors", {}).get(_PYFUNC, {}).get("artifacts") or {}
    if not artifacts:
        raise BundleError(f"{where}: its logged model lists no pyfunc artifacts")
    files = workdir / "files"
    for artifact in artifacts.values():
        downloaded = _download(f"{model_uri}/{artifact['path']}", workdir / "download", uri)
        files.mkdir(exist_ok=True)
        downloaded.rename(files / downloaded.name)
    try:
        lock_file = _download(f"runs:/{run.info.run_id}/{LOCK_FILE}", workdir / "lock", uri)
    except (MlflowException, OSError) as exc:
        raise BundleError(f"{where}: no {LOCK_FILE} logged with the run ({exc})") from None
    tags = run.data.tags
    described = describe_version(
        files,
        read_lock(lock_file),
        files=sorted(p.name for p in files.iterdir()),
        lock_prefix=MODELS_DIR.as_posix(),
        source=f"{model_uri} (run {run.info.run_id})",
        git_commit=tags.get("git_commit"),
        registered_model=name,
        registered_version=str(version),
        aliases=sorted(model_version.aliases),
        run_id=run.info.run_id,
        metrics={k: v for k, v in sorted(run.data.metrics.items()) if k.startswith("test_")},
    )
    provenance = described.provenance
    for tag, locked in ((TAG_MODEL_MD5, provenance.model_md5), (TAG_DATA_MD5, provenance.data_md5)):
        if tags.get(tag) not in (None, locked):
            raise BundleError(f"{where}: tag {tag} {tags[tag]} but its {LOCK_FILE} has {locked}")
    return described


def export_bundle(
    client: MlflowClient,
    name: str,
    champion: str,
    challenger: str | None,
    dest: Path,
    route: str | None = None,
) -> Bundle:
    """Write a bundle of registered versions `champion` (and `challenger`) of `name` to `dest`,
    with `route` in its manifest if given."""
    if challenger == champion:
        raise BundleError(f"champion and challenger are both {name} v{champion}")
    numbers = [champion] if challenger is None else [champion, challenger]
    with tempfile.TemporaryDirectory(prefix="tabml-export-") as tmp:
        versions = [export_version(client, name, number, Path(tmp) / number) for number in numbers]
        ids = [version.id for version in versions]
        return write_bundle(dest, versions, ids[0], ids[1] if challenger else None, route)


def export_aliases(
    client: MlflowClient, name: str, aliases: list[str], dest: Path, route: str | None = None
) -> Bundle:
    """The first alias's version is the champion, the second's (if any) the challenger."""
    if not 1 <= len(aliases) <= 2:
        raise BundleError(f"give one or two aliases (champion, then challenger), not {aliases}")
    numbers = [resolve_alias(client, name, alias) for alias in aliases]
    if len(numbers) == 2 and numbers[0] == numbers[1]:
        raise BundleError(f"aliases {aliases[0]!r} and {aliases[1]!r} both point at v{numbers[0]}")
    challenger = numbers[1] if len(numbers) == 2 else None
    return export_bundle(client, name, numbers[0], challenger, dest, route)


def rewrite_bundle(client: MlflowClient, name: str, dest: Path) -> Bundle:
    """After `champion` moved: the registry's champion, and the bundle's challenger unless it
    has just become champion (promoting the challenger empties the slot). The bundle's route
    stays while there is a challenger to route to, and goes with it."""
    champion = resolve_alias(client, name, CHAMPION)
    challenger = route = None
    if Path(dest).exists():
        current = load_bundle(dest)
        if current.challenger is not None:
            kept = current.version(CHALLENGER).provenance
            if kept.registered_model != name or kept.registered_version is None:
                raise BundleError(
                    f"{dest}: challenger {current.challenger} is not a registered version of "
                    f"{name}; export the bundle afresh"
                )
            challenger = kept.registered_version if kept.registered_version != champion else None
        route = current.route if challenger is not None else None
    return export_bundle(client, name, champion, challenger, dest, route)
