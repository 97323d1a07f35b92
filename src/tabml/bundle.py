"""Model bundles: the versions a service serves (a champion, optionally a challenger), each with
its artifacts and where they came from, in one directory that is checked file by file on load.

    <bundle>/bundle.json            {"format": 1, "champion": "v3", "challenger": "v4",
                                     "route": "canary:0.1",   (optional)
                                     "versions": {"v3": {"provenance_md5": "..."}, ...}}
    <bundle>/v3/provenance.json     md5 of every file, model md5 from its commit's dvc.lock,
                                    data md5, git commit, registered name/version/aliases, metrics
    <bundle>/v3/model.txt, ...      the artifact files (`layout.ARTIFACT_FILES` and any other file
                                    dvc.lock recorded next to them, e.g. the reference profile)

The chain of md5s runs bundle.json → provenance.json → each file, so no byte of a bundle can
change unnoticed; the model file's md5 must also be the one its dvc.lock recorded. A plain
`models/` directory checked against its checkout's `dvc.lock` is a valid one-version bundle.

The optional `route` (`champion`, `canary:<fraction>`, `shadow`; `tabml.serving.traffic_split`)
travels with the versions it splits, so a reload changes the routing together with them (a
service started with `--route`/`TABML_ROUTE` keeps that one instead). A route other than
`champion` needs a challenger.

`write_bundle` builds a new generation in a hidden sibling directory and publishes it by
atomically replacing a symlink, so a reader (a service reloading on SIGHUP) sees the old bundle
or the new one, never a mix, and a failed write leaves the old one in place. Files and hashes
only (no MLflow, no FastAPI): the registry CLI writes bundles and the service reads them.

About 500 lines: the format (the md5 chain), reading and verifying it, and publishing a new
generation atomically are one contract between writers and readers; `bundle_export` (MLflow)
and `bundle_check` (image builds) are its clients.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tabml.data import file_md5
from tabml.errors import TabmlError
from tabml.layout import (
    ARTIFACT_FILES,
    LOCK_FILE,
    METRICS_FILE,
    MODEL_FILE,
    MODEL_STAGE,
    MODELS_DIR,
)
from tabml.lockfile import Lock, LockFileError, read_lock
from tabml.serving.traffic_split import CHAMPION_ONLY, parse_route

FORMAT = 1
MANIFEST_FILE = "bundle.json"
PROVENANCE_FILE = "provenance.json"
CHAMPION = "champion"
CHALLENGER = "challenger"
# Version ids name directories: no separators, no leading dot.
VERSION_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_MD5 = r"^[0-9a-f]{32}$"


class BundleError(TabmlError):
    """A bundle (or a models directory read as one) is incomplete, inconsistent or tampered
    with; the message names the file and, for a hash, both md5s."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Provenance(_Strict):
    """Where one version's files came from, and the md5 of each of them."""

    version_id: str = Field(pattern=VERSION_ID)
    model_md5: str = Field(pattern=_MD5)
    files: dict[str, str]
    data_md5: str | None = None
    git_commit: str | None = None
    registered_model: str | None = None
    registered_version: str | None = None
    aliases: tuple[str, ...] = ()
    run_id: str | None = None
    metrics: dict[str, float] = {}
    source: str


class _VersionEntry(_Strict):
    provenance_md5: str = Field(pattern=_MD5)


class _Manifest(_Strict):
    format: Literal[1]
    champion: str
    challenger: str | None = None
    route: str | None = None
    versions: dict[str, _VersionEntry]

    @field_validator("route")
    @classmethod
    def _known_route(cls, value: str | None) -> str | None:
        return None if value is None else str(parse_route(value))


@dataclass(frozen=True)
class BundleVersion:
    """One complete model version: its files under `directory`, described by `provenance`."""

    directory: Path
    provenance: Provenance

    @property
    def id(self) -> str:
        return self.provenance.version_id

    def file(self, name: str) -> Path:
        return self.directory / name


@dataclass(frozen=True)
class Bundle:
    """A verified bundle: `path` is the resolved directory it was read from."""

    path: Path
    champion: str
    challenger: str | None
    versions: dict[str, BundleVersion]
    #: the route bundle.json states, or None (the service's own setting, or champion)
    route: str | None = None

    @property
    def roles(self) -> dict[str, str]:
        """Role → version id, for the roles that are filled."""
        roles = {CHAMPION: self.champion}
        if self.challenger is not None:
            roles[CHALLENGER] = self.challenger
        return roles

    def version(self, role: str) -> BundleVersion:
        return self.versions[self.roles[role]]


def version_id(model_md5: str, registered_version: str | None = None) -> str:
    """`v<n>` for registered version n, else the model md5's first 12 hex digits (what the
    service reports for an unregistered model)."""
    return f"v{registered_version}" if registered_version is not None else model_md5[:12]


# ------------------------------------------------------------------------------- describing


def _lock_prefix(directory: Path, lock: Lock) -> str:
    """The directory's path as dvc.lock writes it (relative to the lock's directory)."""
    return Path(os.path.relpath(directory.resolve(), lock.path.parent.resolve())).as_posix()


def _locked_files(directory: Path, lock: Lock, prefix: str) -> list[str]:
    """The artifact files, plus every other file of `directory` the lock records."""
    extra = {
        path.name
        for path in directory.iterdir()
        if path.is_file() and lock.output_md5(f"{prefix}/{path.name}") is not None
    }
    return sorted(set(ARTIFACT_FILES) | extra)


def describe_version(
    directory: Path,
    lock: Lock,
    *,
    files: Sequence[str] | None = None,
    lock_prefix: str | None = None,
    source: str | None = None,
    git_commit: str | None = None,
    registered_model: str | None = None,
    registered_version: str | None = None,
    aliases: Sequence[str] = (),
    run_id: str | None = None,
    metrics: Mapping[str, float] | None = None,
) -> BundleVersion:
    """Hash the files of one model version and check each against `lock`, the dvc.lock of the
    commit that produced them; refuse any file the lock does not record or records otherwise.

    `files` defaults to the artifact files plus every other file of `directory` the lock
    records; `lock_prefix` is the directory's path in the lock (default: its path relative to
    the lock file's directory, `models` in a checkout).
    """
    directory = Path(directory)
    prefix = lock_prefix if lock_prefix is not None else _lock_prefix(directory, lock)
    names = sorted(files) if files is not None else _locked_files(directory, lock, prefix)
    missing = sorted(set(ARTIFACT_FILES) - set(names))
    if missing:
        raise BundleError(f"{directory} lacks artifact file(s) {missing}")
    hashes: dict[str, str] = {}
    for name in names:
        path = directory / name
        if not path.is_file():
            raise BundleError(f"{path} does not exist")
        expected = lock.output_md5(f"{prefix}/{name}")
        actual = file_md5(path)
        if expected is None:
            raise BundleError(
                f"{lock.path} does not record {prefix}/{name}: cannot vouch for {path}"
            )
        if actual != expected:
            raise BundleError(f"{path}: md5 {actual}, but {lock.path} records {expected}")
        hashes[name] = actual
    model_md5 = lock.output_md5(f"{prefix}/{MODEL_FILE}", MODEL_STAGE)
    if model_md5 is None:
        raise BundleError(f"{lock.path} has no {MODEL_STAGE} stage output {prefix}/{MODEL_FILE}")
    data = lock.data_md5()
    provenance = Provenance(
        version_id=version_id(model_md5, registered_version),
        model_md5=model_md5,
        files=hashes,
        data_md5=data,
        git_commit=git_commit,
        registered_model=registered_model,
        registered_version=registered_version,
        aliases=tuple(aliases),
        run_id=run_id,
        metrics=dict(metrics or {}),
        source=source or str(directory),
    )
    return BundleVersion(directory, provenance)


def _checkout_metrics(lock: Lock) -> dict[str, float]:
    """Test metrics of the checkout, as the MLflow run names them (`test_<name>`), if dvc.lock
    vouches for reports/metrics.json; otherwise none (they would describe another model)."""
    path = lock.path.parent / METRICS_FILE
    if not path.is_file() or lock.output_md5(METRICS_FILE.as_posix()) != file_md5(path):
        return {}
    test = json.loads(path.read_text()).get("test", {})
    return {
        f"test_{name}": float(value)
        for name, value in test.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }


def bundle_from_models_dir(
    models_dir: Path = MODELS_DIR,
    dvc_lock: Path | None = None,
    *,
    git_commit: str | None = None,
    lock_prefix: str | None = None,
) -> Bundle:
    """A plain models directory as a one-version bundle (champion only), every file checked
    against its checkout's dvc.lock (default: `<models_dir>/../dvc.lock`).

    `git_commit` is recorded when the caller knows it (this module runs no git); `lock_prefix`
    is the directory's path in the lock when it was copied elsewhere (see `describe_version`).
    """
    models_dir = Path(models_dir)
    if not models_dir.is_dir():
        raise BundleError(f"models directory {models_dir} does not exist")
    lock_path = Path(dvc_lock) if dvc_lock is not None else models_dir.parent / LOCK_FILE
    try:
        lock = read_lock(lock_path)
    except LockFileError as exc:
        raise BundleError(str(exc)) from None
    version = describe_version(
        models_dir,
        lock,
        git_commit=git_commit,
        lock_prefix=lock_prefix,
        metrics=_checkout_metrics(lock),
        source=str(models_dir.resolve()),
    )
    return Bundle(models_dir.resolve(), version.id, None, {version.id: version})


# ---------------------------------------------------------------------------------- loading


_Document = TypeVar("_Document", bound=_Strict)


def _parse(model: type[_Document], path: Path, text: bytes) -> _Document:
    try:
        return model.model_validate_json(text)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(document)'}: {err['msg']}"
            for err in exc.errors()
        )
        raise BundleError(f"{path} is invalid: {problems}") from None


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise BundleError(f"cannot read {path}: {exc.strerror or exc}") from None


def _check_md5(path: Path, expected: str, vouched_by: Path) -> None:
    if not path.is_file():
        raise BundleError(f"{path} is missing ({vouched_by} lists it)")
    actual = file_md5(path)
    if actual != expected:
        raise BundleError(f"{path}: md5 {actual}, but {vouched_by} records {expected}")


def _load_version(root: Path, version: str, entry: _VersionEntry) -> BundleVersion:
    directory = root / version
    provenance_file = directory / PROVENANCE_FILE
    _check_md5(provenance_file, entry.provenance_md5, root / MANIFEST_FILE)
    provenance = _parse(Provenance, provenance_file, _read(provenance_file))
    if provenance.version_id != version:
        raise BundleError(f"{provenance_file}: version_id {provenance.version_id!r} != {version!r}")
    missing = sorted(set(ARTIFACT_FILES) - set(provenance.files))
    if missing:
        raise BundleError(f"{provenance_file} lists no {missing}: not a complete model")
    if provenance.files[MODEL_FILE] != provenance.model_md5:
        raise BundleError(
            f"{provenance_file}: {MODEL_FILE} md5 {provenance.files[MODEL_FILE]} is not the "
            f"model md5 {provenance.model_md5} of its dvc.lock"
        )
    for name, md5 in sorted(provenance.files.items()):
        if Path(name).name != name:
            raise BundleError(f"{provenance_file}: file name {name!r} is not a plain name")
        _check_md5(directory / name, md5, provenance_file)
    return BundleVersion(directory, provenance)


def load_bundle(path: Path, dvc_lock: Path | None = None) -> Bundle:
    """Read and verify a bundle, or a plain models directory (`bundle_from_models_dir`, checked
    against `dvc_lock`) when `path` has no bundle.json. Any md5 that differs fails, naming the
    file, the md5 expected and the md5 found."""
    path = Path(path)
    manifest_file = path / MANIFEST_FILE
    if not manifest_file.is_file():
        if not path.is_dir():
            raise BundleError(f"bundle {path} does not exist")
        return bundle_from_models_dir(path, dvc_lock)
    root = path.resolve()  # one generation throughout, even if the bundle is replaced meanwhile
    manifest = _parse(_Manifest, manifest_file, _read(root / MANIFEST_FILE))
    _check_roles(list(manifest.versions), manifest.champion, manifest.challenger, manifest_file)
    _check_route(manifest.route, manifest.challenger, manifest_file)
    versions = {v: _load_version(root, v, entry) for v, entry in manifest.versions.items()}
    return Bundle(root, manifest.champion, manifest.challenger, versions, manifest.route)


def _check_roles(ids: list[str], champion: str, challenger: str | None, where: object) -> None:
    bad = [v for v in ids if not re.fullmatch(VERSION_ID, v)]
    if bad:
        raise BundleError(f"{where}: version id(s) {bad} are not directory names")
    if len(set(ids)) != len(ids):
        raise BundleError(f"{where}: version ids {ids} repeat")
    if champion not in ids:
        raise BundleError(f"{where}: champion {champion!r} is not one of the versions {ids}")
    if challenger is not None and (challenger not in ids or challenger == champion):
        raise BundleError(
            f"{where}: challenger {challenger!r} must be one of {ids} other than the champion"
        )
    roleless = sorted(set(ids) - {champion, challenger})
    if roleless:
        raise BundleError(f"{where}: version(s) {roleless} are neither champion nor challenger")


def _check_route(route: str | None, challenger: str | None, where: object) -> None:
    if route is not None and str(parse_route(route)) != CHAMPION_ONLY and challenger is None:
        raise BundleError(f"{where}: route {route} needs a challenger, and there is none")


# ---------------------------------------------------------------------------------- writing


def _json(document: object) -> bytes:
    return (json.dumps(document, indent=2, sort_keys=True) + "\n").encode()


def _build(generation: Path, versions: Sequence[BundleVersion], header: dict[str, str]) -> None:
    """`header`: the manifest's roles (and route) to write before its versions."""
    entries = {}
    for version in versions:
        target = generation / version.id
        target.mkdir()
        for name, md5 in sorted(version.provenance.files.items()):
            shutil.copyfile(version.file(name), target / name)
            copied = file_md5(target / name)
            if copied != md5:
                raise BundleError(
                    f"{version.file(name)}: md5 {copied}, but its provenance records {md5} "
                    "(changed since it was described?)"
                )
        provenance = _json(version.provenance.model_dump(mode="json"))
        (target / PROVENANCE_FILE).write_bytes(provenance)
        entries[version.id] = {"provenance_md5": file_md5(target / PROVENANCE_FILE)}
    manifest = {"format": FORMAT, **header, "versions": entries}
    (generation / MANIFEST_FILE).write_bytes(_json(manifest))


@contextmanager
def _publish_lock(dest: Path) -> Iterator[None]:
    """One writer at a time swaps and prunes a destination's generations."""
    with open(dest.parent / f".{dest.name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _generations(dest: Path) -> list[Path]:
    return sorted(p for p in dest.parent.glob(f".{dest.name}.gen-*") if p.is_dir())


def _publish(dest: Path, generation: Path) -> None:
    """Point `dest` at `generation` atomically; keep the generation it replaces (a reader may
    still be loading it) and delete older ones."""
    previous: Path | None = None
    if dest.is_symlink():
        previous = dest.parent / os.readlink(dest)
    elif dest.exists():
        if not (dest / MANIFEST_FILE).is_file():
            raise BundleError(f"refusing to replace {dest}: it exists and is not a bundle")
        # A bundle directory written some other way: moved aside once, then symlinked.
        previous = dest.parent / f".{dest.name}.gen-moved-{time.time_ns()}"
        os.rename(dest, previous)
    link = dest.parent / f".{dest.name}.link-{os.getpid()}-{time.time_ns()}"
    os.symlink(generation.name, link)
    os.replace(link, dest)
    keep = {generation.resolve(), previous.resolve() if previous else None}
    for old in _generations(dest):
        if old.resolve() not in keep:
            shutil.rmtree(old, ignore_errors=True)


def write_bundle(
    dest: Path,
    versions: Sequence[BundleVersion],
    champion: str,
    challenger: str | None = None,
    route: str | None = None,
) -> Bundle:
    """Copy `versions` (each exactly the champion or the challenger) into a new bundle at
    `dest`, verify it, and publish it atomically; an existing bundle stays until the new one is
    complete. `dest` becomes a symlink to a hidden sibling `.<name>.gen-*` directory. `route`
    (optional) is written as given, normalised (`canary:0.10` → `canary:0.1`)."""
    dest = Path(dest).absolute()
    _check_roles([v.id for v in versions], champion, challenger, "bundle")
    if route is not None:
        try:
            route = str(parse_route(route))
        except ValueError as exc:
            raise BundleError(str(exc)) from None
    _check_route(route, challenger, "bundle")
    header = {CHAMPION: champion}
    header |= ({CHALLENGER: challenger} if challenger else {}) | ({"route": route} if route else {})
    dest.parent.mkdir(parents=True, exist_ok=True)
    generation = Path(tempfile.mkdtemp(prefix=f".{dest.name}.gen-", dir=dest.parent))
    try:
        os.chmod(generation, 0o755)  # readable by a service running as another user
        _build(generation, versions, header)
        load_bundle(generation)
        with _publish_lock(dest):
            _publish(dest, generation)
    except BaseException:
        shutil.rmtree(generation, ignore_errors=True)
        raise
    return load_bundle(dest)


def reroute_bundle(dest: Path, route: str | None) -> Bundle:
    """The bundle at `dest` with the same versions and a new route (None: no route of its
    own); published like any other bundle, so a reload picks it up."""
    if not (Path(dest) / MANIFEST_FILE).is_file():
        raise BundleError(f"{dest} is not a bundle (no {MANIFEST_FILE}): it cannot hold a route")
    current = load_bundle(dest)
    versions = list(current.versions.values())
    return write_bundle(dest, versions, current.champion, current.challenger, route)
