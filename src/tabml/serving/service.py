"""The prediction service's state: the served model versions (champion, optional challenger,
route; `tabml.serving.versions`), provenance, metrics, live monitoring, shadow scoring, reload,
readiness.

Built once per process by `create_app`; the routes only translate HTTP to calls on it.

About 410 lines: the one object the routes call, so everything a request touches is
reachable from here; the work itself is in the modules it delegates to.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import InitVar, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic_core import to_json
from starlette.concurrency import run_in_threadpool

from tabml.environment import environment
from tabml.layout import CONTRACT_FILE, MODEL_FILE
from tabml.serving import logs, provenance
from tabml.serving.explanations import ExplainOptions
from tabml.serving.live_monitor import LiveMonitor
from tabml.serving.metrics import MonitorCollector, ServiceMetrics, multiprocess_dir
from tabml.serving.monitor_state import ServedModel
from tabml.serving.predictor import Predictor, RequestRejected, TrainedModel
from tabml.serving.reload import Reloader
from tabml.serving.settings import ServingSettings
from tabml.serving.shadow import ShadowJob, ShadowScorer
from tabml.serving.traffic_split import routing_key
from tabml.serving.versions import (
    ModelSources,
    ModelVersion,
    ServedModels,
    WarmUpError,
    load_served_models,
)

log = logging.getLogger("tabml.serving")

#: Above this body size the work moves off the event loop (so /health answers during a batch).
INLINE_BODY_BYTES = 16 * 1024


# Packages whose versions decide what the service computes, reported by /metadata.
SERVING_PACKAGES = ("lightgbm", "numpy", "scipy", "fastapi", "pydantic", "uvicorn")


@dataclass
class Readiness:
    ready: bool = False
    reason: str = "warm-up prediction not run yet"


def _served_model(version: ModelVersion) -> ServedModel:
    label = version.model.contract.label
    return ServedModel(
        version.name,
        version.id,
        version.model.profile,
        version.profile_md5,
        version.threshold,
        negative=label.negative,
        positive=label.positive,
    )


@dataclass
class PredictionService:
    """The versions served (`models`: one snapshot, replaced whole by a reload) and what
    watches them. `model`, `predictor`, `name`, `version` and `examples` are the champion's."""

    settings: ServingSettings
    metrics: ServiceMetrics
    monitor: LiveMonitor
    git_commit: str | None
    test_metrics: dict[str, Any] | None
    initial: InitVar[ServedModels]
    readiness: Readiness = field(default_factory=Readiness)
    reloader: Reloader = field(init=False)
    shadow: ShadowScorer = field(init=False)
    _shadow_counters: dict[tuple[str, str], Any] = field(init=False, default_factory=dict)

    def __post_init__(self, initial: ServedModels) -> None:
        sources = ModelSources.from_settings(self.settings)
        self.reloader = Reloader(
            initial,
            lambda generation: load_served_models(sources, generation=generation),
            on_swap=lambda _, new: self._swapped(new),
            on_outcome=lambda outcome: self.metrics.reloads.labels(
                "ok" if outcome.ok else "refused"
            ).inc(),
        )
        self.shadow = ShadowScorer(
            self._shadow_scored,
            capacity=self.settings.prediction_log_queue,
            on_dropped=lambda rows: self._count_shadow(None, "dropped", rows),
            on_failed=lambda version, rows: self._count_shadow(version, "failed", rows),
            on_cpu=self.metrics.background_cpu.labels("shadow").inc,
        )
        self._serving(initial)

    @classmethod
    def load(cls, settings: ServingSettings) -> PredictionService:
        """Load and verify the served versions (`tabml.serving.versions`); set up validation,
        metrics and monitoring. Warm-up runs later (`warm_up`)."""
        served = load_served_models(ModelSources.from_settings(settings), warm_up=False)
        champion = served.champion
        metrics = ServiceMetrics(champion.model.contract.feature_names)
        shared = multiprocess_dir()
        monitor = LiveMonitor(settings, metrics, Path(shared) if shared else None)
        metrics.add_collector(MonitorCollector(monitor.snapshot))
        commit = (
            settings.git_commit
            or (champion.provenance.git_commit if champion.provenance else None)
            or provenance.git_commit(Path(settings.dvc_lock).parent)
        )
        return cls(
            settings, metrics, monitor, commit, _read_test_metrics(settings.metrics_file), served
        )

    def _serving(self, served: ServedModels) -> None:
        """Tell metrics and monitoring which versions serve now (at start and after a swap)."""
        self.metrics.set_models(
            (
                version.name,
                version.id,
                version.model_md5,
                version.model.metadata.lightgbm_version,
                role,
            )
            for role, version in zip(("champion", "challenger"), served.versions, strict=False)
        )
        self.monitor.serve([_served_model(version) for version in served.versions])

    def _swapped(self, served: ServedModels) -> None:
        """After a reload: the new versions are warmed up, so the service is ready (also when
        the versions it started with failed their warm-up)."""
        self._serving(served)
        if not self.readiness.ready:
            self.readiness = Readiness(True, "ready")
            self.metrics.ready.set(1)

    # the champion, for the routes and documents that describe one model ---------------------

    @property
    def models(self) -> ServedModels:
        """The snapshot serving now; a request reads it once and keeps it to its end."""
        return self.reloader.current

    @property
    def champion(self) -> ModelVersion:
        return self.reloader.current.champion

    @property
    def model(self) -> TrainedModel:
        return self.champion.model

    @property
    def predictor(self) -> Predictor:
        return self.champion.predictor

    @property
    def name(self) -> str:
        return self.champion.name

    @property
    def version(self) -> str:
        return self.champion.id

    @property
    def examples(self) -> list[dict[str, Any]]:
        return self.champion.examples

    # readiness ----------------------------------------------------------------------------

    def warm_up(self) -> None:
        """Score the example records end to end with every version; only then is the service
        ready (a reload warms its versions up before they serve)."""
        models = self.models
        try:
            models.warm_up()
        except WarmUpError as exc:
            self.readiness = Readiness(False, str(exc))
            log.exception("warm-up prediction failed")
            return
        self.readiness = Readiness(True, "ready")
        self.metrics.ready.set(1)
        log.info(
            "ready: model %s, %s (route %s)",
            self.name,
            ", ".join(f"{role} {v}" for role, v in models.roles().items()),
            models.effective_route,
        )

    # prediction ---------------------------------------------------------------------------

    def answering(self) -> tuple[ServedModels, ModelVersion]:
        """The snapshot and the version that answer the current request (its routing key)."""
        models = self.reloader.current
        return models, models.answering(routing_key.get())

    def answered(
        self,
        models: ServedModels,
        version: ModelVersion,
        records: Sequence[Any],
        probabilities: np.ndarray,
        started: float,
    ) -> None:
        """After scoring a request: score metrics, monitoring, and the shadow copy."""
        self.metrics.observe_scores(probabilities, version.threshold, version.id)
        recorded = self.monitor.observe(version.id, records, probabilities, started)
        shadow = models.shadow
        if shadow is not None and version is models.champion:
            revalidate = (
                shadow.predictor.validate_records
                if shadow.files[CONTRACT_FILE] != version.files[CONTRACT_FILE]
                else None
            )
            self.shadow.submit(
                ShadowJob(
                    shadow,
                    records,
                    logs.request_id.get() or "",
                    time.time(),
                    version.id,
                    revalidate,
                    recorded,
                )
            )

    def _shadow_scored(self, job: ShadowJob, probabilities: np.ndarray, seconds: float) -> None:
        self._count_shadow(job.version.id, "scored", len(probabilities))
        self.monitor.observe_shadow(
            job.version.id,
            job.records,
            probabilities,
            job.request_id,
            job.ts,
            seconds * 1e3,
            job.recorded,
        )

    def _count_shadow(self, version: str | None, result: str, rows: int) -> None:
        if version is None:  # dropped before a version was looked at: the current challenger
            challenger = self.reloader.current.challenger
            version = challenger.id if challenger is not None else "(none)"
        counter = self._shadow_counters.get((version, result))
        if counter is None:  # labels are bounded: versions served, three results
            counter = self.metrics.shadow_rows.labels(version, result)
            self._shadow_counters = {**self._shadow_counters, (version, result): counter}
        counter.inc(rows)

    def render(
        self,
        version: ModelVersion,
        probabilities: np.ndarray,
        explanations: list[dict[str, Any]] | None = None,
    ) -> bytes:
        labels = version.predictor.label_of(probabilities)
        predictions: list[dict[str, Any]] = [
            {"probability": p, "label": label}
            for p, label in zip(probabilities.tolist(), labels, strict=True)
        ]
        if explanations is not None:
            for prediction, explanation in zip(predictions, explanations, strict=True):
                prediction["explanation"] = explanation
        response = {
            "model_name": version.name,
            "model_version": version.id,
            "threshold": version.threshold,
            "predictions": predictions,
        }
        # pydantic-core's serializer: ~4x json.dumps; floats are shortest round-trip reprs
        return to_json(response)

    def predict_json(
        self,
        body: bytes,
        started: float,
        answering: tuple[ServedModels, ModelVersion] | None = None,
        explain: ExplainOptions | None = None,
    ) -> tuple[bytes, int, str]:
        """A /predict body → (response body, rows, version that answered), synchronously.
        Raises RequestRejected. `started` (perf_counter) is when the request arrived, for the
        prediction log; `answering` the snapshot and version chosen for it (default: now);
        `explain`: add each prediction's explanation, by the version that answered."""
        models, version = answering or self.answering()
        records = version.predictor.parse_json(body)
        if explain is not None:
            self.check_explained(len(records))
        self.metrics.observe_batch(len(records), version.id)
        if explain is None:
            probabilities = version.score(records)
            explanations = None
        else:
            probabilities, explained = version.predictor.predict_explained(records)
            explanations = explained.as_dicts(explain.top_k)
            self.metrics.explained_rows.labels(version.id).inc(len(records))
        self.answered(models, version, records, probabilities, started)
        return self.render(version, probabilities, explanations), len(records), version.id

    async def predict_json_async(
        self, body: bytes, started: float, explain: ExplainOptions | None = None
    ) -> tuple[bytes, int, str]:
        """As `predict_json`, on the event loop: small requests are scored together with other
        concurrent ones for the same version (`MicroBatcher`), large ones in a worker thread,
        and so are explanations (TreeSHAP: about 2 ms of CPU a record, 65x scoring it)."""
        models, version = self.answering()
        if explain is not None or len(body) > INLINE_BODY_BYTES:
            return await run_in_threadpool(
                self.predict_json, body, started, (models, version), explain
            )
        records = version.predictor.parse_json(body)
        self.metrics.observe_batch(len(records), version.id)
        probabilities = await version.score_coalesced(records)
        self.answered(models, version, records, probabilities, started)
        return self.render(version, probabilities), len(records), version.id

    def check_explained(self, rows: int) -> None:
        """Refuse (413) to explain more records at once than TABML_MAX_EXPLAIN_BATCH."""
        limit = self.settings.max_explain_batch
        if rows > limit:
            raise RequestRejected(
                413,
                f"batch of {rows} records exceeds the maximum of {limit} explained per "
                "request (TABML_MAX_EXPLAIN_BATCH); split it, or leave out explain",
            )

    def count_rejected(self, exc: RequestRejected) -> None:
        if isinstance(exc.detail, list):
            self.metrics.observe_rejected([e.get("field") for e in exc.detail])
        else:
            self.metrics.observe_rejected([None])

    # provenance ---------------------------------------------------------------------------

    def data_md5(self, version: ModelVersion) -> str | None:
        """md5 of the training data of `version`: from its dvc.lock or its bundle provenance."""
        if version.lock is not None:
            found = version.lock.inputs.get("data")
            return found.removesuffix(".dir") if found else None
        return version.provenance.data_md5 if version.provenance else None

    def metadata(self) -> dict[str, Any]:
        models = self.models
        champion = models.champion
        meta = champion.model.metadata
        md5 = champion.files
        monitor, settings = champion.model.profile.monitor, self.settings
        data: dict[str, str] | None
        if champion.lock is not None:
            data = champion.lock.inputs
        else:
            found = champion.provenance
            data = {"data": found.data_md5} if found and found.data_md5 else None
        return {
            "model": {
                "name": champion.name,
                "version": champion.id,
                "md5": md5[MODEL_FILE],
                "dataset": meta.dataset,
                "lightgbm_version": meta.lightgbm_version,
                "best_iteration": meta.best_iteration,
                "threshold": champion.threshold,
                "trained_threshold": meta.threshold,
                "feature_names": meta.feature_names,
                "categorical_features": meta.categorical_features,
                "params": meta.params,
            },
            "artifacts": {
                "dvc_lock": str(champion.lock.path) if champion.lock else None,
                "bundle": None if champion.provenance is None else models.source,
                "verified": champion.verified,
                "files": [c.to_dict() for c in champion.checks],
            },
            "data": {"md5": data},
            # the versions loaded, their roles and the route (champion, canary:<f>, shadow)
            "serving": models.describe(),
            "git_commit": self.git_commit,
            # The serving process's own environment (the training one is on the MLflow run).
            "environment": environment(SERVING_PACKAGES),
            "test_metrics": self.test_metrics,
            "input_schema": champion.predictor.Record.model_json_schema(),
            "policy": {
                "max_batch": champion.predictor.max_batch,
                "nullable_fields": [c.name for c in champion.model.contract.columns if c.nullable],
                "null": "JSON null (or omitting the field) in a nullable field means missing, "
                "like the raw data's missing marker; other fields are required",
                "unknown_category": "rejected (422)",
                "category_not_seen_in_training": "accepted; encoded as missing (NaN) as in "
                "offline prediction",
                "out_of_range_or_wrong_type": "rejected (422)",
            },
            "monitoring": {
                "live": self.monitor.live,
                # conf/monitor as the pipeline built the reference profile with it
                "settings": monitor.model_dump(mode="json") if monitor else None,
                "prediction_log_dir": settings.prediction_log_dir
                and str(settings.prediction_log_dir),
                "prediction_log_sample": settings.prediction_log_sample,
                "feedback_index_size": settings.feedback_index_size,
            },
        }


def _read_test_metrics(path: Path | None) -> dict[str, Any] | None:
    if path is None or not Path(path).is_file():
        return None
    try:
        metrics = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable metrics file %s: %s", path, exc)
        return None
    return metrics.get("test", metrics) if isinstance(metrics, dict) else None
