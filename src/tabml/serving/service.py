"""The prediction service's state: verified artifacts, predictor, provenance, metrics, live
monitoring, readiness.

Built once per process by `create_app`; the routes only translate HTTP to calls on it.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic_core import to_json
from starlette.concurrency import run_in_threadpool

from tabml.environment import environment
from tabml.layout import MODEL_FILE, PROFILE_FILE, SERVING_FILES
from tabml.serving import provenance
from tabml.serving.batching import MicroBatcher
from tabml.serving.examples import example_records
from tabml.serving.live_monitor import LiveMonitor, ServedModel
from tabml.serving.metrics import MonitorCollector, ServiceMetrics, multiprocess_dir
from tabml.serving.predictor import ArtifactError, Predictor, RequestRejected, TrainedModel
from tabml.serving.settings import ServingSettings

log = logging.getLogger("tabml.serving")

#: Above this body size the work moves off the event loop (so /health answers during a batch).
INLINE_BODY_BYTES = 16 * 1024


def load_verified_model(
    settings: ServingSettings,
) -> tuple[TrainedModel, list[provenance.FileCheck], provenance.LockInfo | None]:
    """Check every artifact exists and matches dvc.lock, then load them.

    Raises `ArtifactError` (missing/corrupt file, naming it) or
    `provenance.ArtifactIntegrityError` (md5 differs from dvc.lock and that is not allowed).
    """
    files = [Path(settings.model_dir) / name for name in SERVING_FILES]
    for file in files:
        if not file.is_file():
            raise ArtifactError(
                f"artifact {file} does not exist (train the model first: "
                "`python src/train.py`, or set TABML_MODEL_DIR)"
            )
    checks, lock = provenance.verify_artifacts(
        files, settings.dvc_lock, allow_mismatch=settings.allow_md5_mismatch
    )
    for check in checks:
        if not check.matches:
            log.warning(
                "serving unverified artifact %s: md5 %s, dvc.lock %s",
                check.path,
                check.md5,
                check.expected_md5,
            )
    return TrainedModel.load(settings.model_dir), checks, lock


# Packages whose versions decide what the service computes, reported by /metadata.
SERVING_PACKAGES = ("lightgbm", "numpy", "scipy", "fastapi", "pydantic", "uvicorn")


@dataclass
class Readiness:
    ready: bool = False
    reason: str = "warm-up prediction not run yet"


@dataclass
class PredictionService:
    settings: ServingSettings
    model: TrainedModel
    predictor: Predictor
    metrics: ServiceMetrics
    name: str
    version: str
    checks: list[provenance.FileCheck]
    lock: provenance.LockInfo | None
    git_commit: str | None
    test_metrics: dict[str, Any] | None
    examples: list[dict[str, Any]]
    monitor: LiveMonitor
    readiness: Readiness = field(default_factory=Readiness)
    batcher: MicroBatcher = field(init=False)

    def __post_init__(self) -> None:
        self.batcher = MicroBatcher(self.score)

    @classmethod
    def load(cls, settings: ServingSettings) -> PredictionService:
        """Load verified artifacts (`load_verified_model`); set up validation and metrics."""
        model, checks, lock = load_verified_model(settings)
        examples = example_records(model.contract)
        predictor = Predictor(
            model, threshold=settings.threshold, max_batch=settings.max_batch, example=examples[0]
        )
        md5 = {Path(c.path).name: c.md5 for c in checks}
        name = settings.model_name or model.contract.name
        version = settings.model_version or md5[MODEL_FILE][:12]
        metrics = ServiceMetrics(model.contract.feature_names)
        metrics.set_model(name, version, md5[MODEL_FILE], model.metadata.lightgbm_version)
        commit = settings.git_commit or provenance.git_commit(Path(settings.dvc_lock).parent)
        label = model.contract.label
        served = ServedModel(
            name,
            version,
            model.profile,
            md5[PROFILE_FILE],
            predictor.threshold,
            negative=label.negative,
            positive=label.positive,
        )
        shared = multiprocess_dir()
        monitor = LiveMonitor(settings, metrics, Path(shared) if shared else None)
        monitor.serve([served])
        metrics.add_collector(MonitorCollector(monitor.snapshot))
        return cls(
            settings,
            model,
            predictor,
            metrics,
            name,
            version,
            checks,
            lock,
            commit,
            _read_test_metrics(settings.metrics_file),
            examples,
            monitor,
        )

    # readiness ----------------------------------------------------------------------------

    def warm_up(self) -> None:
        """Score the example records end to end; only then is the service ready."""
        try:
            records = self.predictor.parse_json(json.dumps(self.examples).encode())
            probabilities = self.predictor.predict(records)
            if not all(0.0 <= p <= 1.0 and math.isfinite(p) for p in probabilities.tolist()):
                raise ValueError(f"warm-up produced invalid probabilities {probabilities}")
        except Exception as exc:
            self.readiness = Readiness(False, f"warm-up prediction failed: {exc}")
            log.exception("warm-up prediction failed")
            return
        self.readiness = Readiness(True, "ready")
        self.metrics.ready.set(1)
        log.info("ready: model %s version %s", self.name, self.version)

    # prediction ---------------------------------------------------------------------------

    def score(self, records: list[Any]) -> np.ndarray:
        """Probabilities for validated records (any thread); recorded in the score metrics."""
        probabilities = self.predictor.predict(records)
        self.metrics.observe_scores(probabilities, self.predictor.threshold)
        return probabilities

    def render(self, probabilities: np.ndarray) -> bytes:
        labels = self.predictor.label_of(probabilities)
        predictions = [
            {"probability": p, "label": label}
            for p, label in zip(probabilities.tolist(), labels, strict=True)
        ]
        response = {
            "model_name": self.name,
            "model_version": self.version,
            "threshold": self.predictor.threshold,
            "predictions": predictions,
        }
        # pydantic-core's serializer: ~4x json.dumps; floats are shortest round-trip reprs
        return to_json(response)

    def predict_json(self, body: bytes, started: float) -> tuple[bytes, int]:
        """A /predict body → (response body, rows), synchronously. Raises RequestRejected.

        `started` (perf_counter) is when the request arrived, for the prediction log.
        """
        records = self.predictor.parse_json(body)
        self.metrics.observe_batch(len(records))
        probabilities = self.score(records)
        self.monitor.observe(self.version, records, probabilities, started)
        return self.render(probabilities), len(records)

    async def predict_json_async(self, body: bytes, started: float) -> tuple[bytes, int]:
        """As `predict_json`, on the event loop: small requests are scored together with other
        concurrent ones (`MicroBatcher`), large ones in a worker thread."""
        if len(body) > INLINE_BODY_BYTES:
            return await run_in_threadpool(self.predict_json, body, started)
        records = self.predictor.parse_json(body)
        self.metrics.observe_batch(len(records))
        probabilities = await self.batcher.score(records)
        self.monitor.observe(self.version, records, probabilities, started)
        return self.render(probabilities), len(records)

    def count_rejected(self, exc: RequestRejected) -> None:
        if isinstance(exc.detail, list):
            self.metrics.observe_rejected([e.get("field") for e in exc.detail])
        else:
            self.metrics.observe_rejected([None])

    # provenance ---------------------------------------------------------------------------

    def metadata(self) -> dict[str, Any]:
        meta = self.model.metadata
        md5 = {Path(c.path).name: c.md5 for c in self.checks}
        monitor, settings = self.model.profile.monitor, self.settings
        return {
            "model": {
                "name": self.name,
                "version": self.version,
                "md5": md5[MODEL_FILE],
                "dataset": meta.dataset,
                "lightgbm_version": meta.lightgbm_version,
                "best_iteration": meta.best_iteration,
                "threshold": self.predictor.threshold,
                "trained_threshold": meta.threshold,
                "feature_names": meta.feature_names,
                "categorical_features": meta.categorical_features,
                "params": meta.params,
            },
            "artifacts": {
                "dvc_lock": str(self.settings.dvc_lock),
                "verified": all(c.matches for c in self.checks),
                "files": [c.to_dict() for c in self.checks],
            },
            "data": {"md5": self.lock.inputs if self.lock else None},
            "git_commit": self.git_commit,
            # The serving process's own environment (the training one is on the MLflow run).
            "environment": environment(SERVING_PACKAGES),
            "test_metrics": self.test_metrics,
            "input_schema": self.predictor.Record.model_json_schema(),
            "policy": {
                "max_batch": self.predictor.max_batch,
                "nullable_fields": [c.name for c in self.model.contract.columns if c.nullable],
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
