"""Live monitoring in the service: drift and realized-metric windows, the feedback index and the
prediction log, all fed off the request path.

A prediction request only appends (records, probabilities, request id, timing) to a bounded
queue: about a microsecond. One thread per process drains it every `TICK` seconds and handles
everything that arrived meanwhile at once: slides the drift window (vectorised, ~2 µs a record,
where one update per request would cost ~17 µs of numpy overhead on the event loop), indexes the
recorded predictions for /feedback and writes their log events. A full queue drops the request
(counted); no request ever waits for the thread or the disk.

What a request contributes: every scored record enters the drift window; a sampled share of
requests (`prediction_log_sample`) is *recorded*: logged, and labellable through /feedback.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from tabml.monitoring import DriftWindow, RealizedWindow, ReferenceProfile, accuracy, roc_auc
from tabml.monitoring.events import FEEDBACK, PREDICTION
from tabml.serving import logs, worker_state
from tabml.serving.metrics import ServiceMetrics, VersionMonitoring
from tabml.serving.prediction_index import PredictionRing, prediction_key, prediction_keys
from tabml.serving.prediction_log import SegmentWriter, feedback_line, prediction_lines
from tabml.serving.predictor import RequestRejected
from tabml.serving.settings import ServingSettings

log = logging.getLogger("tabml.serving.monitor")

#: Seconds between the thread's drains: the most a window or the index lags behind a response.
TICK = 0.02
#: Seconds between snapshots for the other workers (multi-worker only).
PUBLISH_SECONDS = 1.0
#: Most seconds /feedback waits for this process's queue to be indexed.
SYNC_TIMEOUT = 2.0


@dataclass(frozen=True)
class ServedModel:
    """What monitoring needs to know about the served model."""

    name: str
    version: str
    profile: ReferenceProfile
    profile_md5: str
    threshold: float
    negative: str
    positive: str


class FeedbackLabel(NamedTuple):
    request_id: str
    index: int
    label: str


@dataclass(frozen=True)
class _Scored:
    ts: float
    request_id: str
    records: Sequence[Any]
    probabilities: np.ndarray
    latency_ms: float
    recorded: bool


@dataclass(frozen=True)
class _Labels:
    lines: list[bytes]


class _Found(NamedTuple):
    ring: PredictionRing
    slot: int
    probability: float
    version: str
    labelled: bool


class LiveMonitor:
    def __init__(
        self,
        settings: ServingSettings,
        model: ServedModel,
        metrics: ServiceMetrics,
        shared_dir: Path | None,
    ) -> None:
        config = model.profile.monitor
        assert config is not None  # TrainedModel.load refuses a profile without settings
        self.model = model
        self.config = config
        self.metrics = metrics
        self.live = settings.live_monitoring
        self.sample = settings.prediction_log_sample
        self.capacity = settings.prediction_log_queue
        self.shared_dir = shared_dir
        self.pid = os.getpid()
        self.writer = (
            SegmentWriter(
                settings.prediction_log_dir,
                max_bytes=settings.prediction_log_segment_bytes,
                max_seconds=settings.prediction_log_segment_seconds,
            )
            if settings.prediction_log_dir is not None
            else None
        )
        self.active = self.live or self.writer is not None
        self.window: DriftWindow | None = None
        self.ring: PredictionRing | None = None
        if self.live:
            self.window = DriftWindow(model.profile, config.window_size, config.epsilon)
            self.ring = (
                PredictionRing.create(
                    worker_state.ring_path(shared_dir, self.pid), settings.feedback_index_size
                )
                if shared_dir is not None
                else PredictionRing.in_memory(settings.feedback_index_size)
            )
        self.versions = [model.version]  # the index's version slots
        self._realized: dict[str, RealizedWindow] = {}
        self._pending: list[Any] = []
        self._queued = 0
        self._lock = threading.Lock()
        self._feedback_lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._dirty = True
        self._published = 0.0
        self._peer_rings: dict[int, PredictionRing] = {}
        self._failed_once = False

    # lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        if not self.active or self._thread is not None:
            return
        self._publish()
        self._thread = threading.Thread(target=self._run, name="tabml-monitor", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Write what is queued, close the log segment, withdraw the shared snapshot."""
        if self._thread is None:
            return
        self._stopping.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("prediction log writer did not finish within %s s", timeout)
        self._thread = None

    # request path -------------------------------------------------------------------------

    def observe(self, records: Sequence[Any], probabilities: np.ndarray, started: float) -> None:
        """One answered prediction request (any thread); never blocks, never raises."""
        if not self.active:
            return
        recorded = self.sample >= 1.0 or random.random() < self.sample
        if not recorded and not self.live:
            return
        item = _Scored(
            time.time(),
            logs.request_id.get() or logs.accept_or_make_request_id(None),
            records,
            probabilities,
            round((time.perf_counter() - started) * 1e3, 3),
            recorded,
        )
        if not self._enqueue(item, len(records)) and recorded and self.writer is not None:
            self.metrics.log_dropped.labels("queue_full").inc(len(records))

    def _enqueue(self, item: Any, size: int) -> bool:
        with self._lock:
            if self._queued + size > self.capacity:
                return False
            self._queued += size
            self._pending.append(item)
        return True

    # the thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping.wait(TICK):
            self._tick()
        self._tick()  # what the last requests queued before the stop
        if self.writer is not None:
            self.writer.close()
        if self.shared_dir is not None:
            worker_state.remove(self.shared_dir, self.pid)

    def _tick(self) -> None:
        with self._lock:
            batch, self._pending, self._queued = self._pending, [], 0
        try:
            if batch:
                self._process(batch)
            if self.writer is not None:
                self.writer.rotate_if_due()
            due = time.monotonic() - self._published >= PUBLISH_SECONDS
            if self.shared_dir is not None and self._dirty and due:
                self._publish()
        except Exception:  # a bug here must not stop monitoring for good, nor spam the log
            if not self._failed_once:
                log.exception("live monitoring failed on a batch (logged once)")
                self._failed_once = True
        finally:
            for item in batch:
                if isinstance(item, threading.Event):
                    item.set()

    def _process(self, batch: list[Any]) -> None:
        scored = [item for item in batch if isinstance(item, _Scored)]
        if scored and self.window is not None:
            self.window.add(
                [record for item in scored for record in item.records],
                np.concatenate([item.probabilities for item in scored]),
            )
            self._dirty = True
        recorded = [item for item in scored if item.recorded]
        if recorded and self.ring is not None:
            self.ring.append(
                np.concatenate([prediction_keys(i.request_id, len(i.records)) for i in recorded]),
                np.concatenate([item.probabilities for item in recorded]),
                version=0,
            )
        if self.writer is not None:
            self._write(batch)

    def _write(self, batch: list[Any]) -> None:
        model, threshold = self.model, self.model.threshold
        lines: list[bytes] = []
        counts = {PREDICTION: 0, FEEDBACK: 0}
        for item in batch:
            if isinstance(item, _Scored) and item.recorded:
                probabilities = item.probabilities.tolist()
                lines += prediction_lines(
                    ts=item.ts,
                    request_id=item.request_id,
                    model_name=model.name,
                    model_version=model.version,
                    records=item.records,
                    probabilities=probabilities,
                    labels=[
                        model.positive if p >= threshold else model.negative for p in probabilities
                    ],
                    latency_ms=item.latency_ms,
                )
                counts[PREDICTION] += len(probabilities)
            elif isinstance(item, _Labels):
                lines += item.lines
                counts[FEEDBACK] += len(item.lines)
        if not lines:
            return
        written = self.writer is not None and self.writer.write(b"".join(lines))
        for kind, count in counts.items():
            if count and written:
                self.metrics.log_events.labels(kind).inc(count)
            elif count:
                self.metrics.log_dropped.labels("write_error").inc(count)

    def _publish(self) -> None:
        if self.shared_dir is None:
            return
        drift = {}
        if self.window is not None:
            drift[self.model.version] = worker_state.DriftCounts(
                self.model.profile_md5, self.window.records, self.window.counts()
            )
        state = worker_state.WorkerState(
            self.pid,
            self.versions,
            drift,
            {version: window.pairs() for version, window in self._realized.items()},
        )
        worker_state.publish(self.shared_dir, state)
        self._published, self._dirty = time.monotonic(), False

    # feedback -----------------------------------------------------------------------------

    def record_feedback(self, labels: Sequence[FeedbackLabel]) -> int:
        """Join labels with their predictions and count them in the realized windows: all of
        them, or (RequestRejected, naming each bad item) none. Runs in a worker thread."""
        if not self.live:
            raise RequestRejected(
                503, "live monitoring is off (TABML_LIVE_MONITORING=0): no predictions to label"
            )
        self._sync()
        keys = np.array([prediction_key(x.request_id, x.index) for x in labels], dtype=np.uint64)
        with self._feedback_lock:
            found = self._find(keys)
            problems = _problems(labels, keys, found)
            unknown = sum(p["type"] == UNKNOWN for p in problems)
            self.metrics.feedback.inc(len(labels))
            if unknown:
                self.metrics.feedback_unmatched.inc(unknown)
            if problems:
                raise RequestRejected(404 if unknown else 409, problems, len(problems))
            by_version: dict[str, tuple[list[float], list[int]]] = {}
            for label, hit in zip(labels, found, strict=True):
                assert hit is not None
                hit.ring.mark_labelled(np.array([hit.slot]))
                scores, ys = by_version.setdefault(hit.version, ([], []))
                scores.append(hit.probability)
                ys.append(int(label.label == self.model.positive))
            for version, (scores, ys) in by_version.items():
                self._realized_window(version).add(scores, ys)
            self._dirty = True
        if self.writer is not None:
            now = time.time()
            lines = [feedback_line(now, x.request_id, x.index, x.label) for x in labels]
            if not self._enqueue(_Labels(lines), len(lines)):
                self.metrics.log_dropped.labels("queue_full").inc(len(lines))
        return len(labels)

    def _realized_window(self, version: str) -> RealizedWindow:
        window = self._realized.get(version)
        if window is None:
            window = RealizedWindow(self.config.realized_window_size, self.model.threshold)
            self._realized[version] = window
        return window

    def _sync(self) -> None:
        """Wait until what this process queued so far is indexed (a label may follow its
        prediction within milliseconds)."""
        if self._thread is None:
            return
        done = threading.Event()
        with self._lock:
            self._pending.append(done)
        done.wait(SYNC_TIMEOUT)

    def _rings(self) -> list[tuple[PredictionRing, list[str]]]:
        assert self.ring is not None
        rings = [(self.ring, self.versions)]
        if self.shared_dir is None:
            return rings
        attached, self._peer_rings = self._peer_rings, {}
        for state in worker_state.other_workers(self.shared_dir, self.pid):
            ring = attached.get(state.pid)
            if ring is None:
                try:
                    ring = PredictionRing.attach(worker_state.ring_path(self.shared_dir, state.pid))
                except (OSError, ValueError):  # the worker is starting or stopping
                    continue
            self._peer_rings[state.pid] = ring
            rings.append((ring, state.versions))
        return rings

    def _find(self, keys: np.ndarray) -> list[_Found | None]:
        found: list[_Found | None] = [None] * len(keys)
        for ring, versions in self._rings():
            missing = [i for i, hit in enumerate(found) if hit is None]
            if not missing:
                break
            slots, entries = ring.find(keys[missing])
            for i, slot, entry in zip(missing, slots.tolist(), entries, strict=True):
                if slot >= 0 and entry["version"] < len(versions):
                    found[i] = _Found(
                        ring,
                        slot,
                        float(entry["probability"]),
                        versions[entry["version"]],
                        bool(entry["labelled"]),
                    )
        return found

    # scrape -------------------------------------------------------------------------------

    def snapshot(self) -> list[VersionMonitoring]:
        """Drift and realized numbers per model version, over this process and its peers."""
        if not self.live or self.window is None:
            return []
        peers = (
            worker_state.other_workers(self.shared_dir, self.pid)
            if self.shared_dir is not None
            else []
        )
        counts, records = self.window.counts(), self.window.records
        for peer in peers:
            theirs = peer.drift.get(self.model.version)
            if theirs and theirs.profile_md5 == self.model.profile_md5:
                counts, records = counts + theirs.counts, records + theirs.records
        pairs: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {self.model.version: []}
        for version, window in list(self._realized.items()):
            pairs.setdefault(version, []).append(window.pairs())
        for peer in peers:
            for version, pair in peer.realized.items():
                pairs.setdefault(version, []).append(pair)
        result = []
        for version, held in sorted(pairs.items()):
            scores = np.concatenate([s for s, _ in held]) if held else np.zeros(0)
            ys = np.concatenate([y for _, y in held]) if held else np.zeros(0, np.int8)
            enough = scores.size >= self.config.min_realized_labels
            drift = version == self.model.version
            result.append(
                VersionMonitoring(
                    model_version=version,
                    records=records if drift else None,
                    feature_psi=self.window.feature_psi(counts) if drift else {},
                    prediction_psi=self.window.prediction_psi(counts) if drift else float("nan"),
                    labels=int(scores.size),
                    accuracy=accuracy(scores, ys, self.model.threshold) if enough else None,
                    roc_auc=roc_auc(scores, ys) if enough else None,
                )
            )
        return result

    def memory_bytes(self) -> int:
        """Drift window and feedback index of this process (the realized window is ~9 kB)."""
        window = self.window.memory_bytes() if self.window is not None else 0
        return window + (self.ring.nbytes if self.ring is not None else 0)


UNKNOWN = "unknown_prediction"
DUPLICATE = "duplicate_feedback"


def _problems(
    labels: Sequence[FeedbackLabel], keys: np.ndarray, found: Sequence[_Found | None]
) -> list[dict[str, Any]]:
    """Why items cannot be recorded, each naming its position in the request."""
    problems, seen = [], set()
    for position, (label, key, hit) in enumerate(zip(labels, keys.tolist(), found, strict=True)):
        where = f"request_id {label.request_id!r}, index {label.index}"
        if hit is None:
            kind, message = UNKNOWN, f"no recent recorded prediction has {where}"
        elif hit.labelled:
            kind, message = DUPLICATE, f"a label for {where} is already recorded"
        elif key in seen:
            kind, message = DUPLICATE, f"{where} is labelled twice in this request"
        else:
            seen.add(key)
            continue
        problems.append(
            {
                "index": position,
                "field": "request_id",
                "type": kind,
                "message": message,
                "input": label.request_id,
            }
        )
    return problems
