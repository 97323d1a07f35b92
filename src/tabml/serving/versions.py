"""The model versions a service process serves: each loaded, verified and warmed up, and held
together with the route in one immutable snapshot.

Where the versions come from (`ModelSources`):

* `--bundle DIR` (`TABML_BUNDLE`): a bundle (`tabml.bundle`), every file md5-checked on load; its
  `champion` role answers, its `challenger` role (if any) is the challenger;
* default: the models directory (`TABML_MODEL_DIR`, `models/`) as a one-version bundle, checked
  against `TABML_DVC_LOCK` exactly as before bundles existed (`TABML_ALLOW_MD5_MISMATCH` and
  `TABML_MODEL_VERSION` apply to a plain models directory only). A plain models directory given
  as `--bundle` is checked the same way against `DIR/../dvc.lock`, and a models directory that
  holds a `bundle.json` is read as the bundle it is;
* `--challenger DIR` (`TABML_CHALLENGER`): one more version, overriding the bundle's challenger:
  a plain models directory copied from another checkout, checked against
  `--challenger-dvc-lock` (`TABML_CHALLENGER_DVC_LOCK`, default `DIR/../dvc.lock`), or a bundle,
  whose champion is taken.

The route is the one configured (`--route`, `TABML_ROUTE`) or else the bundle's (`route` in
bundle.json, so a reload of a rewritten bundle changes the routing too), or else `champion`.

A challenger identical to the champion (same version id and model md5) is dropped with a warning:
that is what a reload right after a promotion sees when `--challenger` still names the promoted
directory. Two different models under one version id are refused (their metrics and log events
could not be told apart).

`ServedModels` is the snapshot a request reads once, at its start, and keeps to its end; a reload
builds a complete new one off the request path and replaces the reference in one assignment
(`tabml.serving.reload`), so no request ever sees half of a swap.

About 420 lines: where versions come from, how each is loaded and verified, and the
immutable snapshot a request reads are one lifecycle; reload (`reload`) and routing
(`traffic_split`) are their own modules.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tabml.bundle import (
    CHALLENGER,
    CHAMPION,
    MANIFEST_FILE,
    BundleError,
    BundleVersion,
    Provenance,
    bundle_from_models_dir,
    load_bundle,
)
from tabml.errors import TabmlError
from tabml.layout import LOCK_FILE, MODEL_FILE, MODELS_DIR, PROFILE_FILE, SERVING_FILES
from tabml.serving import provenance
from tabml.serving.batching import MicroBatcher
from tabml.serving.examples import example_records
from tabml.serving.model_card import ModelCard, load_bundle_card, load_models_dir_card
from tabml.serving.predictor import ArtifactError, Predictor, Record, TrainedModel
from tabml.serving.traffic_split import Route, parse_route

log = logging.getLogger("tabml.serving")


class WarmUpError(TabmlError):
    """Scoring the example records end to end failed or gave invalid probabilities."""


class VersionConflictError(TabmlError):
    """The champion and the challenger cannot be served together."""


@dataclass(eq=False)
class ModelVersion:
    """One loaded model version: its artifacts in memory, its validating predictor, the md5 of
    each file (verified against dvc.lock or its bundle's provenance) and where it came from."""

    id: str
    name: str
    model: TrainedModel
    predictor: Predictor
    #: file name → md5, as verified
    files: dict[str, str]
    #: every file matched what vouches for it (False only with TABML_ALLOW_MD5_MISMATCH)
    verified: bool
    checks: list[provenance.FileCheck]
    #: the dvc.lock a plain models directory was checked against (None for a bundle version)
    lock: provenance.LockInfo | None
    #: the bundle's provenance record (None for a plain models directory read directly)
    provenance: Provenance | None
    source: Path
    examples: list[Record]
    #: the model card (GET /model-card); None for a model trained before the card existed
    card: ModelCard | None = None
    batcher: MicroBatcher = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.batcher = MicroBatcher(self.score)

    @property
    def model_md5(self) -> str:
        return self.files[MODEL_FILE]

    @property
    def profile_md5(self) -> str:
        return self.files[PROFILE_FILE]

    @property
    def threshold(self) -> float:
        return self.predictor.threshold

    def score(self, records: Sequence[Record]) -> np.ndarray:
        """Probabilities of validated records (any thread): exactly offline prediction."""
        return self.predictor.predict(records)

    async def score_coalesced(self, records: Sequence[Record]) -> np.ndarray:
        """As `score`, on the event loop, together with other requests for this version."""
        return await self.batcher.score(records)

    def warm_up(self) -> None:
        """Validate and score the example records end to end; raise `WarmUpError` if that fails
        or gives anything but finite probabilities in [0, 1]."""
        try:
            records = self.predictor.parse_json(json.dumps(self.examples).encode())
            probabilities = self.score(records).tolist()
        except Exception as exc:
            raise WarmUpError(f"warm-up prediction of version {self.id} failed: {exc}") from exc
        if len(probabilities) != len(records) or not all(
            0.0 <= p <= 1.0 and math.isfinite(p) for p in probabilities
        ):
            raise WarmUpError(
                f"warm-up prediction of version {self.id} gave invalid probabilities "
                f"{probabilities}"
            )

    def describe(self) -> dict[str, Any]:
        """Identity and origin, as /admin/reload and /metadata report them."""
        found = self.provenance
        return {
            "version": self.id,
            "model_md5": self.model_md5,
            "verified": self.verified,
            "source": str(self.source),
            "registered_model": found.registered_model if found else None,
            "registered_version": found.registered_version if found else None,
            "git_commit": found.git_commit if found else None,
        }


def _predictor(model: TrainedModel, threshold: float | None, max_batch: int) -> Predictor:
    examples = example_records(model.contract)
    return Predictor(model, threshold=threshold, max_batch=max_batch, example=examples[0])


def load_models_dir_version(
    model_dir: Path,
    dvc_lock: Path,
    *,
    allow_md5_mismatch: bool = False,
    name: str | None = None,
    version: str | None = None,
    threshold: float | None = None,
    max_batch: int = 10_000,
) -> ModelVersion:
    """A plain models directory checked against `dvc_lock` (the service's original path).

    Raises `ArtifactError` (a missing or corrupt file, naming it) or
    `provenance.ArtifactIntegrityError` (an md5 differs from dvc.lock and that is not allowed).
    """
    model_dir = Path(model_dir)
    files = [model_dir / file_name for file_name in SERVING_FILES]
    for file in files:
        if not file.is_file():
            raise ArtifactError(
                f"artifact {file} does not exist (train the model first: "
                "`python src/train.py`, or set TABML_MODEL_DIR)"
            )
    checks, lock = provenance.verify_artifacts(files, dvc_lock, allow_mismatch=allow_md5_mismatch)
    card, card_checks = load_models_dir_card(model_dir, dvc_lock, allow_mismatch=allow_md5_mismatch)
    checks += card_checks
    for check in checks:
        if not check.matches:
            log.warning(
                "serving unverified artifact %s: md5 %s, dvc.lock %s",
                check.path,
                check.md5,
                check.expected_md5,
            )
    model = TrainedModel.load(model_dir)
    md5 = {Path(c.path).name: c.md5 for c in checks}
    predictor = _predictor(model, threshold, max_batch)
    return ModelVersion(
        id=version or md5[MODEL_FILE][:12],
        name=name or model.contract.name,
        model=model,
        predictor=predictor,
        files=md5,
        verified=all(c.matches for c in checks),
        checks=checks,
        lock=lock,
        provenance=None,
        source=model_dir,
        examples=example_records(model.contract),
        card=card,
    )


def load_bundle_version(
    version: BundleVersion,
    *,
    name: str | None = None,
    threshold: float | None = None,
    max_batch: int = 10_000,
) -> ModelVersion:
    """One version of a bundle `load_bundle` has verified (every md5 of its provenance)."""
    missing = [n for n in SERVING_FILES if n not in version.provenance.files]
    if missing:
        raise ArtifactError(
            f"{version.directory}: version {version.id} has no {missing} (a bundle served "
            f"needs {list(SERVING_FILES)}; export it from a checkout whose dvc.lock records them)"
        )
    model = TrainedModel.load(version.directory)
    files = dict(version.provenance.files)
    checks = [
        provenance.FileCheck(f"{version.id}/{file_name}", md5, md5)
        for file_name, md5 in sorted(files.items())
    ]
    return ModelVersion(
        id=version.id,
        name=name or model.contract.name,
        model=model,
        predictor=_predictor(model, threshold, max_batch),
        files=files,
        verified=True,
        checks=checks,
        lock=None,
        provenance=version.provenance,
        source=version.directory,
        examples=example_records(model.contract),
        card=load_bundle_card(version.directory, files),
    )


def challenger_bundle_version(directory: Path, dvc_lock: Path | None = None) -> BundleVersion:
    """The version `--challenger DIR` names, verified: a bundle's champion, or a plain models
    directory checked against `dvc_lock` (default `DIR/../dvc.lock`), where the pipeline records
    its files as `models/<name>` whatever the directory is called now."""
    directory = Path(directory)
    if (directory / MANIFEST_FILE).is_file():
        return load_bundle(directory).version(CHAMPION)
    try:
        bundle = bundle_from_models_dir(directory, dvc_lock, lock_prefix=MODELS_DIR.as_posix())
    except BundleError as exc:
        raise BundleError(f"challenger {directory}: {exc}") from None
    return bundle.version(CHAMPION)


@dataclass(frozen=True)
class ModelSources:
    """Where a service process reads its versions and route from (see the module docstring)."""

    bundle: Path | None = None
    model_dir: Path = MODELS_DIR
    dvc_lock: Path = LOCK_FILE
    allow_md5_mismatch: bool = False
    challenger: Path | None = None
    challenger_dvc_lock: Path | None = None
    #: the route configured for the process; None: the bundle's, else champion
    route: Route | None = None
    model_name: str | None = None
    model_version: str | None = None
    threshold: float | None = None
    max_batch: int = 10_000

    @classmethod
    def from_settings(cls, settings: Any) -> ModelSources:
        """From `ServingSettings` (typed loosely: settings import this module's neighbours)."""
        return cls(
            bundle=settings.bundle,
            model_dir=settings.model_dir,
            dvc_lock=settings.dvc_lock,
            allow_md5_mismatch=settings.allow_md5_mismatch,
            challenger=settings.challenger,
            challenger_dvc_lock=settings.challenger_dvc_lock,
            route=parse_route(settings.route) if settings.route is not None else None,
            model_name=settings.model_name,
            model_version=settings.model_version,
            threshold=settings.threshold,
            max_batch=settings.max_batch,
        )

    def describe(self) -> str:
        where = f"bundle {self.bundle}" if self.bundle else f"models directory {self.model_dir}"
        return where + (f" + challenger {self.challenger}" if self.challenger else "")


@dataclass(frozen=True)
class ServedModels:
    """What one process serves at one moment: immutable; replaced whole by a reload."""

    champion: ModelVersion
    challenger: ModelVersion | None
    #: the route as configured; `effective_route` is what applies (champion without challenger)
    route: Route
    source: str
    #: 0 for the models loaded at start, +1 for each reload that took effect
    generation: int = 0
    #: where `route` came from: "setting" (--route / TABML_ROUTE), "bundle.json" or "default"
    route_from: str = "default"
    loaded_at: float = field(default_factory=time.time)

    @property
    def effective_route(self) -> Route:
        return self.route if self.challenger is not None else Route()

    @property
    def versions(self) -> list[ModelVersion]:
        return [self.champion] + ([self.challenger] if self.challenger is not None else [])

    @property
    def shadow(self) -> ModelVersion | None:
        """The version that scores copies of champion-answered requests, if any."""
        return self.challenger if self.effective_route.shadow else None

    def answering(self, routing_key: bytes | None) -> ModelVersion:
        """The version that answers a request with this routing key (None: no key)."""
        challenger = self.challenger
        if challenger is not None and self.route.to_challenger(routing_key):
            return challenger
        return self.champion

    def get(self, version_id: str) -> ModelVersion | None:
        """A loaded version by id (the OIP path `/versions/{id}` addresses one directly)."""
        for version in self.versions:
            if version.id == version_id:
                return version
        return None

    def roles(self) -> dict[str, str]:
        roles = {CHAMPION: self.champion.id}
        if self.challenger is not None:
            roles[CHALLENGER] = self.challenger.id
        return roles

    def describe(self) -> dict[str, Any]:
        return {
            "generation": self.generation,
            "source": self.source,
            "route": str(self.route),
            "route_from": self.route_from,
            "effective_route": str(self.effective_route),
            CHAMPION: self.champion.describe(),
            CHALLENGER: self.challenger.describe() if self.challenger else None,
        }

    def warm_up(self) -> None:
        """Warm up every version; raises `WarmUpError` naming the first that fails."""
        for version in self.versions:
            version.warm_up()


def load_served_models(
    sources: ModelSources, *, generation: int = 0, warm_up: bool = True
) -> ServedModels:
    """Load, verify and (by default) warm up every version `sources` names.

    Raises `tabml.bundle.BundleError`, `ArtifactError`, `provenance.ArtifactIntegrityError`,
    `WarmUpError` or `VersionConflictError`; never returns something half-loaded.
    """
    common: dict[str, Any] = {"threshold": sources.threshold, "max_batch": sources.max_batch}
    challenger: ModelVersion | None = None
    route, route_from = sources.route, "setting"
    directory = Path(sources.bundle if sources.bundle is not None else sources.model_dir)
    if sources.bundle is not None and not directory.is_dir():
        raise BundleError(f"bundle {directory} does not exist")
    if (directory / MANIFEST_FILE).is_file():
        if sources.model_version is not None:
            log.warning("TABML_MODEL_VERSION is ignored: the bundle names its versions")
        bundle = load_bundle(directory)
        champion = load_bundle_version(bundle.version(CHAMPION), name=sources.model_name, **common)
        if bundle.challenger is not None and sources.challenger is None:
            challenger = load_bundle_version(
                bundle.version(CHALLENGER), name=champion.name, **common
            )
        source = str(bundle.path)
        if route is None and bundle.route is not None:
            route, route_from = parse_route(bundle.route), MANIFEST_FILE
    else:  # a plain models directory, checked as the service always did
        champion = load_models_dir_version(
            directory,
            sources.dvc_lock if sources.bundle is None else directory.parent / LOCK_FILE,
            allow_md5_mismatch=sources.allow_md5_mismatch,
            name=sources.model_name,
            version=sources.model_version,
            **common,
        )
        source = str(directory)
    if sources.challenger is not None:
        other = challenger_bundle_version(sources.challenger, sources.challenger_dvc_lock)
        challenger = load_bundle_version(other, name=champion.name, **common)
        source += f" + {other.directory}"
    if challenger is not None and challenger.id == champion.id:
        if challenger.model_md5 != champion.model_md5:
            raise VersionConflictError(
                f"champion ({champion.source}) and challenger ({challenger.source}) are "
                f"different models under one version id {champion.id!r}"
            )
        log.warning(
            "challenger %s is the champion itself (%s): serving the champion only",
            challenger.id,
            challenger.source,
        )
        challenger = None
    if route is None:
        route, route_from = Route(), "default"
    if challenger is None and route.mode != "champion":
        log.warning("route %s without a challenger: the champion answers everything", route)
    served = ServedModels(champion, challenger, route, source, generation, route_from)
    if warm_up:
        served.warm_up()
    return served
