"""Prometheus metrics of the service (prometheus-client), one registry per app.

With several uvicorn workers, `tabml-serve` sets PROMETHEUS_MULTIPROC_DIR so that every worker
writes its samples there and `/metrics` aggregates all of them (prometheus-client's
multiprocess mode); a single process exposes its own registry plus process metrics.
The live monitoring gauges (drift, realized metrics) are computed at scrape time by the
worker's monitor process from the windows of every worker (`tabml.serving.worker_state`) and
exposed by `MonitorCollector`.

About 340 lines, mostly the declaration of each series with its help text: the list of what
the service exposes, read in one place (the dashboard test reads it from here).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
SCORE_BUCKETS = tuple(round(0.1 * i, 1) for i in range(1, 11))


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class ServiceMetrics:
    """Request counts by route and status, latency, batch sizes, scores, model version info."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, fields: Iterable[str] = ()) -> None:
        self._fields = frozenset(fields)
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.requests = Counter(
            "tabml_http_requests",
            "HTTP requests by route template, method and status code",
            ["route", "method", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "tabml_http_request_duration_seconds",
            "Time to answer a request, by route",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        # Prediction series carry the version that answered (`model_version`).
        self.batch_rows = Histogram(
            "tabml_prediction_batch_rows",
            "Records per prediction request",
            ["model_version"],
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.rows = Counter(
            "tabml_predicted_rows", "Records scored", ["model_version"], registry=registry
        )
        self.scores = Histogram(
            "tabml_prediction_score",
            "Predicted probability of the positive class",
            ["model_version"],
            buckets=SCORE_BUCKETS,
            registry=registry,
        )
        self.explained_rows = Counter(
            "tabml_explained_rows",
            "Records explained (/predict?explain=true, OIP parameters.explain): TreeSHAP costs "
            "some 65 times scoring",
            ["model_version"],
            registry=registry,
        )
        self.positives = Counter(
            "tabml_predicted_positive",
            "Records labelled positive at the threshold",
            ["model_version"],
            registry=registry,
        )
        self.validation_errors = Counter(
            "tabml_validation_errors",
            "Rejected field values by field",
            ["field"],
            registry=registry,
        )
        self.model_info = Gauge(
            "tabml_model_info",
            "The served model versions (1; 0 once replaced by a reload), labelled with their "
            "identity and role (champion, challenger)",
            ["model_name", "model_version", "model_md5", "lightgbm_version", "role"],
            registry=registry,
            # live: the files of a worker that stopped are removed (`process_exiting`), so a
            # version replaced by a rolling restart does not linger
            multiprocess_mode="livemax",
        )
        self.shadow_rows = Counter(
            "tabml_shadow_rows",
            "Records of champion-answered requests the challenger scored in shadow, by result: "
            "scored, dropped (queue full), failed (the challenger raised)",
            ["model_version", "result"],
            registry=registry,
        )
        self.reloads = Counter(
            "tabml_model_reloads",
            "Reloads of the served versions (SIGHUP, POST /admin/reload) by outcome: ok, or "
            "refused (the previous versions kept serving)",
            ["outcome"],
            registry=registry,
        )
        for outcome in ("ok", "refused"):
            self.reloads.labels(outcome)
        self.ready = Gauge(
            "tabml_ready",
            "1 once the warm-up prediction succeeded",
            registry=registry,
            multiprocess_mode="livemin",
        )
        self.log_events = Counter(
            "tabml_prediction_log_events",
            "Events written to the prediction log, by type",
            ["type"],
            registry=registry,
        )
        self.log_dropped = Counter(
            "tabml_prediction_log_dropped",
            "Prediction log events dropped: the queue was full, the disk refused them, or the "
            "monitor process had exited",
            ["reason"],
            registry=registry,
        )
        for kind in ("prediction", "feedback"):
            self.log_events.labels(kind)
        for reason in ("queue_full", "write_error", "monitor_exited"):
            self.log_dropped.labels(reason)
        self.background_cpu = Counter(
            "tabml_background_cpu_seconds",
            "CPU time of the work done off the response path, by task: monitor (drift windows, "
            "feedback index, prediction log encoding and writing), shadow (challenger scoring)",
            ["task"],
            registry=registry,
        )
        for task in ("monitor", "shadow"):
            self.background_cpu.labels(task)
        self.feedback = Counter(
            "tabml_feedback",
            "Labels received on /feedback (valid items, recorded or refused)",
            registry=registry,
        )
        self.feedback_unmatched = Counter(
            "tabml_feedback_unmatched",
            "Labels for a request id and index the feedback index does not hold",
            registry=registry,
        )
        self._collectors: list[Any] = []
        if multiprocess_dir() is None:
            from prometheus_client import GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR

            for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
                registry.register(collector)
        self._score_bounds = np.asarray(self.scores._upper_bounds)
        self._request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._version_children: dict[str, tuple[Any, Any, Any, Any]] = {}
        self._served: set[tuple[str, ...]] = set()

    def set_models(self, served: Iterable[tuple[str, str, str, str, str]]) -> None:
        """The versions served now, as (name, version, md5, lightgbm version, role); those
        served before and not now go to 0."""
        now = {tuple(labels) for labels in served}
        for labels in self._served - now:
            self.model_info.labels(*labels).set(0)
        for labels in now:
            self.model_info.labels(*labels).set(1)
        self._served = now

    def process_exiting(self) -> None:
        """Multi-process mode: withdraw this worker's live gauges (its model info and
        readiness) as it stops, so the survivors' and successors' values are what /metrics
        shows."""
        directory = multiprocess_dir()
        if directory is not None:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid(), directory)

    def _of_version(self, version: str) -> tuple[Any, Any, Any, Any]:
        found = self._version_children.get(version)
        if found is not None:
            return found
        children = (  # labels are bounded: the versions served
            self.batch_rows.labels(version),
            self.rows.labels(version),
            self.scores.labels(version),
            self.positives.labels(version),
        )
        self._version_children = {**self._version_children, version: children}
        return children

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        children = self._request_children.get(key)
        if children is None:  # labels are bounded: route templates, methods, status codes
            children = (
                self.requests.labels(route, method, str(status)),
                self.latency.labels(route),
            )
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def observe_batch(self, rows: int, version: str) -> None:
        """One prediction request of `rows` records, answered by `version`."""
        batch_rows, counted, _, _ = self._of_version(version)
        batch_rows.observe(rows)
        counted.inc(rows)

    def observe_scores(self, probabilities: np.ndarray, threshold: float, version: str) -> None:
        _, _, scores, positives = self._of_version(version)
        if len(probabilities) <= 32:  # numpy's per-call overhead exceeds the loop's cost
            values = probabilities.tolist()
            positives.inc(sum(v >= threshold for v in values))
            for value in values:
                scores.observe(value)
            return
        positives.inc(int(np.count_nonzero(probabilities >= threshold)))
        # One histogram update per bucket instead of per row (a 10,000-row batch costs ~50 µs).
        counts = np.bincount(
            np.searchsorted(self._score_bounds, probabilities, side="left"),
            minlength=len(self._score_bounds),
        )
        buckets = getattr(scores, "_buckets", None)
        if buckets is None or len(buckets) != len(counts):  # pragma: no cover - other versions
            for p in probabilities.tolist():
                scores.observe(p)
            return
        for bucket, count in zip(buckets, counts.tolist(), strict=True):
            if count:
                bucket.inc(count)
        scores._sum.inc(float(probabilities.sum()))

    def observe_rejected(self, fields: list[str | None]) -> None:
        """Count rejected values by contract field (anything else is "(other)": bounded labels)."""
        for field in fields:
            label = field if field in self._fields else "(body)" if field is None else "(other)"
            self.validation_errors.labels(label).inc()

    def add_collector(self, collector: Any) -> None:
        """A collector computed at scrape time, in single- and multi-process mode alike."""
        self._collectors.append(collector)
        self.registry.register(collector)

    def exposition(self) -> bytes:
        directory = multiprocess_dir()
        if directory is None:
            return generate_latest(self.registry)
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=directory)
        for collector in self._collectors:
            registry.register(collector)
        return generate_latest(registry)


@dataclass(frozen=True)
class VersionMonitoring:
    """One model version's live monitoring numbers, combined over the instance's workers."""

    model_version: str
    records: int | None  # in the drift window; None: not served here (labels only)
    feature_psi: dict[str, float]  # NaN while the window is empty
    prediction_psi: float
    labels: int  # in the realized window
    accuracy: float | None  # None until enough labels are held
    roc_auc: float | None  # None until enough labels of both classes are held


class MonitorCollector:
    """Drift and realized-metric gauges, computed when scraped."""

    def __init__(self, versions: Callable[[], list[VersionMonitoring]]) -> None:
        self._versions = versions

    def describe(self) -> list[Metric]:
        return []  # nothing to check at registration; names are fixed

    def collect(self) -> Iterator[Metric]:
        records = GaugeMetricFamily(
            "tabml_drift_window_records",
            "Records in the live drift window (all workers)",
            labels=["model_version"],
        )
        feature = GaugeMetricFamily(
            "tabml_feature_psi",
            "Population stability index of a feature over the live window vs the reference",
            labels=["feature", "model_version"],
        )
        score = GaugeMetricFamily(
            "tabml_prediction_psi",
            "Population stability index of the predicted scores vs the validation split's",
            labels=["model_version"],
        )
        labels = GaugeMetricFamily(
            "tabml_realized_labels",
            "Labelled predictions in the realized window (all workers)",
            labels=["model_version"],
        )
        accuracy = GaugeMetricFamily(
            "tabml_realized_accuracy",
            "Accuracy of the labelled predictions in the realized window",
            labels=["model_version"],
        )
        auc = GaugeMetricFamily(
            "tabml_realized_roc_auc",
            "ROC AUC of the labelled predictions in the realized window",
            labels=["model_version"],
        )
        for v in self._versions():
            if v.records is not None:
                records.add_metric([v.model_version], v.records)
            for name, psi in v.feature_psi.items():
                if not math.isnan(psi):
                    feature.add_metric([name, v.model_version], psi)
            if not math.isnan(v.prediction_psi):
                score.add_metric([v.model_version], v.prediction_psi)
            labels.add_metric([v.model_version], v.labels)
            if v.accuracy is not None:
                accuracy.add_metric([v.model_version], v.accuracy)
            if v.roc_auc is not None:
                auc.add_metric([v.model_version], v.roc_auc)
        yield from (records, feature, score, labels, accuracy, auc)
