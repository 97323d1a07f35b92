"""What the monitor process (`tabml.serving.monitor_process`) keeps and does: drift and
realized-metric windows per model version, the feedback index and the prediction log.

It runs in a process of its own, one per server worker, fed what the worker answered. In that
process nothing competes with requests for the GIL, so everything a batch of answered
requests needs is done at once, vectorised: one window update per version, one index update,
one serialisation and one write (docs/monitoring.md, "Where the monitoring work runs").

Counters (log events written and dropped, labels received) are counted in `counts` and
carried to the worker's /metrics by the monitor process.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from tabml.monitoring import DriftWindow, RealizedWindow, ReferenceProfile, accuracy, roc_auc
from tabml.monitoring.events import FEEDBACK, PREDICTION
from tabml.serving import label_join, worker_state
from tabml.serving.label_join import FeedbackLabel
from tabml.serving.metrics import VersionMonitoring
from tabml.serving.prediction_index import PredictionRing, prediction_key, prediction_keys
from tabml.serving.prediction_log import PredictionLines, SegmentWriter, feedback_line
from tabml.serving.worker_state import VersionInfo

log = logging.getLogger("tabml.serving.monitor")

#: Seconds between snapshots for the other workers (multi-worker only).
PUBLISH_SECONDS = 1.0

#: Most requests of a version not served yet kept until its `serve` message arrives.
EARLY_ITEMS = 10_000
#: Keys of `MonitorState.counts`: (counter, label) as the worker's metrics name them.
LOG_EVENTS, LOG_DROPPED, FEEDBACK_RECEIVED, FEEDBACK_UNMATCHED = (
    "log_events",
    "log_dropped",
    "feedback",
    "feedback_unmatched",
)


@dataclass(frozen=True)
class MonitorConfig:
    """The service settings the monitor process needs."""

    live: bool
    log_dir: Path | None
    segment_bytes: int
    segment_seconds: float
    index_size: int
    queue_records: int  # the most records the monitor process gathers before handling them
    shared_dir: Path | None  # the workers' shared directory (multi-worker only)
    log_level: str


@dataclass(frozen=True)
class ServedModel:
    """What monitoring needs to know about one served model version."""

    name: str
    version: str
    profile: ReferenceProfile
    profile_md5: str
    threshold: float
    negative: str
    positive: str

    @property
    def info(self) -> VersionInfo:
        config = self.profile.monitor
        assert config is not None  # TrainedModel.load refuses a profile without settings
        return VersionInfo(
            self.version,
            self.threshold,
            self.positive,
            config.realized_window_size,
            config.min_realized_labels,
        )


class Scored(NamedTuple):
    """One answered request (or a challenger's shadow scores of one)."""

    version: str
    ts: float
    request_id: str
    records: Sequence[Any]
    probabilities: np.ndarray
    latency_ms: float
    recorded: bool  # logged and labellable (`prediction_log_sample`)
    shadow: bool = False  # a challenger's shadow score: logged, in its drift window, not indexed


class LabelsRefused(Exception):
    """Labels /feedback refuses (none of the request's labels is recorded)."""

    def __init__(self, status: int, detail: list[dict[str, Any]] | str, count: int | None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.count = status, detail, count


def _shadow_last(group: tuple[str, bool]) -> bool:
    return group[1]


class MonitorState:
    def __init__(self, config: MonitorConfig, pid: int) -> None:
        self.config = config
        self.live = config.live
        self.shared_dir = config.shared_dir
        self.pid = pid
        self.counts: defaultdict[tuple[str, str], float] = defaultdict(float)
        self.writer = (
            SegmentWriter(
                config.log_dir,
                max_bytes=config.segment_bytes,
                max_seconds=config.segment_seconds,
            )
            if config.log_dir is not None
            else None
        )
        self.ring: PredictionRing | None = None
        if self.live:
            self.ring = (
                PredictionRing.create(
                    worker_state.ring_path(self.shared_dir, pid), config.index_size
                )
                if self.shared_dir is not None
                else PredictionRing.in_memory(config.index_size)
            )
            self.peer_rings = label_join.PeerRings(self.ring, self.shared_dir, pid)
        self._windows: dict[str, DriftWindow] = {}  # of the versions served now
        self._known: dict[str, ServedModel] = {}  # every version served so far
        self._encoders: dict[tuple[str, bool], PredictionLines] = {}  # (version, shadow)
        # Every version this process served: the feedback index's version slots.
        self._slots: list[VersionInfo] = []
        self._slot_of: dict[str, int] = {}
        self._realized: dict[str, RealizedWindow] = {}
        # Requests answered by a version whose `serve` message is still on its way (a reload
        # swaps the versions a moment before it tells monitoring).
        self._early: list[Scored] = []
        self._encoded: list[bytes] = []
        self._encoded_counts: Counter[str] = Counter()
        self._dirty = True
        self._published = 0.0

    def serve(self, models: Sequence[ServedModel]) -> None:
        """The versions served from now on (at start and after every reload): a version kept
        keeps its drift window, a new one starts empty, one no longer served stops drifting
        (labels for its predictions still count)."""
        windows = {}
        for model in models:
            config = model.profile.monitor
            assert config is not None
            if self.live:
                windows[model.version] = self._windows.get(model.version) or DriftWindow(
                    model.profile, config.window_size, config.epsilon
                )
            if model.version not in self._slot_of:
                self._slot_of[model.version] = len(self._slots)
                self._slots.append(model.info)
            self._known[model.version] = model
            for shadow in (False, True):
                if (model.version, shadow) not in self._encoders:
                    self._encoders[model.version, shadow] = PredictionLines(
                        model.name,
                        model.version,
                        model.threshold,
                        model.negative,
                        model.positive,
                        shadow=shadow,
                    )
        self._windows = windows
        self._dirty = True
        early, self._early = self._early, []
        self.process(early)

    def process(self, scored: Sequence[Scored]) -> None:
        """Answered requests: into the drift windows, the feedback index and the log."""
        if any(item.version not in self._known for item in scored):
            early = [item for item in scored if item.version not in self._known]
            room = max(0, EARLY_ITEMS - len(self._early))
            self._early.extend(early[:room])
            for item in early[room:]:
                if item.recorded:
                    self.counts[LOG_DROPPED, "queue_full"] += len(item.records)
            scored = [item for item in scored if item.version in self._known]
        for version in {item.version for item in scored}:
            window = self._windows.get(version)
            mine = [item for item in scored if item.version == version]
            if window is not None:
                window.add(
                    [record for item in mine for record in item.records],
                    np.concatenate([item.probabilities for item in mine]),
                )
                self._dirty = True
        recorded = [item for item in scored if item.recorded]
        answered = [item for item in recorded if not item.shadow]
        if answered and self.ring is not None:
            sizes = [len(item.records) for item in answered]
            slots = [self._slot_of[item.version] for item in answered]
            keys = prediction_keys(
                [item.request_id for item in answered], sizes, [0] * len(answered)
            )
            self.ring.append(
                keys,
                np.concatenate([item.probabilities for item in answered]),
                np.repeat(np.asarray(slots, dtype=np.uint16), sizes),
            )
        if self.writer is not None and recorded:
            self._encoded.extend(
                self._encoders[version, shadow].lines(
                    [
                        (i.ts, i.request_id, 0, i.records, i.probabilities, i.latency_ms)
                        for i in recorded
                        if i.version == version and i.shadow == shadow
                    ]
                )
                # answered events before shadow ones: a reader joining a label to the first
                # event of its (request_id, index) joins it to the answer
                for version, shadow in sorted(
                    {(i.version, i.shadow) for i in recorded}, key=_shadow_last
                )
            )
            self._encoded_counts[PREDICTION] += sum(len(item.records) for item in recorded)

    def record_feedback(self, labels: Sequence[FeedbackLabel]) -> int:
        """Join labels with their predictions and count them in the realized windows: all of
        them, or (LabelsRefused, naming each bad item) none. Live monitoring only."""
        keys = np.array([prediction_key(x.request_id, x.index) for x in labels], dtype=np.uint64)
        found = self.peer_rings.find(keys, self._slots)
        problems = label_join.problems(labels, keys, found)
        unknown = sum(p["type"] == label_join.UNKNOWN for p in problems)
        self.counts[FEEDBACK_RECEIVED, ""] += len(labels)
        if unknown:
            self.counts[FEEDBACK_UNMATCHED, ""] += unknown
        if problems:
            raise LabelsRefused(404 if unknown else 409, problems, len(problems))
        by_version: dict[VersionInfo, tuple[list[float], list[int]]] = {}
        for label, hit in zip(labels, found, strict=True):
            assert hit is not None
            hit.ring.mark_labelled(np.array([hit.slot]))
            scores, ys = by_version.setdefault(hit.version, ([], []))
            scores.append(hit.probability)
            ys.append(int(label.label == hit.version.positive))
        for version, (scores, ys) in by_version.items():
            self._realized_window(version).add(scores, ys)
        self._dirty = True
        if self.writer is not None:
            now = time.time()
            self._encoded.extend(feedback_line(now, x.request_id, x.index, x.label) for x in labels)
            self._encoded_counts[FEEDBACK] += len(labels)
        return len(labels)

    def _realized_window(self, version: VersionInfo) -> RealizedWindow:
        window = self._realized.get(version.id)
        if window is None:
            window = self._realized[version.id] = RealizedWindow(
                version.realized_window_size, version.threshold
            )
        return window

    # the log and the shared snapshot ---------------------------------------------------------

    def flush(self) -> None:
        """Write what was encoded since the last flush (one write), rotate when due."""
        if self.writer is None:
            return
        if self._encoded:
            written = self.writer.write(b"".join(self._encoded))
            for kind, count in self._encoded_counts.items():
                if written:
                    self.counts[LOG_EVENTS, kind] += count
                else:
                    self.counts[LOG_DROPPED, "write_error"] += count
            self._encoded, self._encoded_counts = [], Counter()
        self.writer.rotate_if_due()

    def publish_if_due(self, force: bool = False) -> None:
        """Publish the windows and index slots for the other workers (multi-worker only)."""
        if self.shared_dir is None or not (force or self._dirty):
            return
        if not force and time.monotonic() - self._published < PUBLISH_SECONDS:
            return
        drift = {
            version: worker_state.DriftCounts(
                self._known[version].profile_md5, window.records, window.counts()
            )
            for version, window in self._windows.items()
        }
        realized = {version: window.pairs() for version, window in self._realized.items()}
        state = worker_state.WorkerState(self.pid, self._slots, drift, realized)
        worker_state.publish(self.shared_dir, state)
        self._published, self._dirty = time.monotonic(), False

    def close(self) -> None:
        """At shutdown: write what is encoded, close the segment, withdraw the snapshot."""
        self.flush()
        if self.writer is not None:
            self.writer.close()
        if self.shared_dir is not None:
            worker_state.remove(self.shared_dir, self.pid)

    # scrape -------------------------------------------------------------------------------

    def snapshot(self) -> list[VersionMonitoring]:
        """Drift and realized numbers per model version, over this process and its peers."""
        if not self.live:
            return []
        peers = (
            worker_state.other_workers(self.shared_dir, self.pid)
            if self.shared_dir is not None
            else []
        )
        known, windows = self._known, self._windows
        infos = {v.id: v for peer in peers for v in peer.versions} | {v.id: v for v in self._slots}
        pairs: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {v: [] for v in windows}
        for version, window in self._realized.items():
            pairs.setdefault(version, []).append(window.pairs())
        for peer in peers:
            for version, pair in peer.realized.items():
                pairs.setdefault(version, []).append(pair)
        result = []
        for version, held in sorted(pairs.items()):
            info = infos.get(version)
            if info is None:
                continue
            scores = np.concatenate([s for s, _ in held]) if held else np.zeros(0)
            ys = np.concatenate([y for _, y in held]) if held else np.zeros(0, np.int8)
            enough = scores.size >= info.min_realized_labels
            drift = windows.get(version)
            records, features, score = None, {}, float("nan")
            if drift is not None:
                counts, records = drift.counts(), drift.records
                for peer in peers:
                    theirs = peer.drift.get(version)
                    if theirs and theirs.profile_md5 == known[version].profile_md5:
                        counts, records = counts + theirs.counts, records + theirs.records
                features, score = drift.feature_psi(counts), drift.prediction_psi(counts)
            result.append(
                VersionMonitoring(
                    model_version=version,
                    records=records,
                    feature_psi=features,
                    prediction_psi=score,
                    labels=int(scores.size),
                    accuracy=accuracy(scores, ys, info.threshold) if enough else None,
                    roc_auc=roc_auc(scores, ys) if enough else None,
                )
            )
        return result
