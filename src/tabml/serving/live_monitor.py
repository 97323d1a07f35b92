"""Live monitoring in the service: drift and realized-metric windows per model version, the
feedback index and the prediction log, all fed off the request path.

A prediction request only appends (version, records, probabilities, request id, timing) to a
bounded queue: about two microseconds. For everything queued at once, the queue's reader slides
each version's drift window (vectorised, ~1 µs a record, where one update per request would cost
~17 µs of numpy overhead), indexes the recorded predictions for /feedback and encodes their log
events. A full queue drops (counted); no request ever waits.

Who reads the queue was measured (bench/serve_monitoring_benchmark.py), because it competes with
requests for the GIL:

* small requests (up to `LOOP_RECORDS` records), the bulk of single-record traffic: the event
  loop, every `TICK` seconds, in slices of `CHUNK_RECORDS` records between requests. A Python
  thread doing it instead handed the GIL back and forth with the loop on every socket call:
  18 % of the throughput and 1.5x the p99 at ~5,000 requests/s, for ~4 % of CPU work;
* large requests (already scored off the loop): the monitor thread, which holds the GIL for
  milliseconds at a time, often while LightGBM (which releases it) scores the next batch. On
  the loop, 1,000-record batches lost 20-30 % of their throughput to the slices.

The monitor thread also writes the encoded events to disk every `IO_TICK` seconds and publishes
the snapshot other workers read, so a slow or full disk never holds up the loop.

What a request contributes: every scored record enters its version's drift window; a sampled
share of requests (`prediction_log_sample`) is *recorded*: logged, and labellable on /feedback.

Why one module of about 600 lines: the queue, its two readers (the loop's slices and the
monitor thread) and the state they update (windows, index, encoded events, their counts)
share one lock discipline and one accounting of what is queued; split apart, each invariant
would span files. What stands on its own lives elsewhere: joining labels across workers
(`label_join`), the index (`prediction_index`), the log files (`prediction_log`), the state
shared with peers (`worker_state`) and the windows themselves (`tabml.monitoring`).
"""

from __future__ import annotations

import asyncio
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
from tabml.serving import label_join, logs, worker_state
from tabml.serving.label_join import FeedbackLabel
from tabml.serving.metrics import ServiceMetrics, VersionMonitoring
from tabml.serving.prediction_index import PredictionRing, prediction_key, prediction_keys
from tabml.serving.prediction_log import PredictionLines, SegmentWriter, feedback_line
from tabml.serving.predictor import RequestRejected
from tabml.serving.settings import ServingSettings
from tabml.serving.worker_state import VersionInfo

log = logging.getLogger("tabml.serving.monitor")

#: Seconds between drains: about the most a window or the index lags behind a response. Most
#: of a drain's cost is per numpy call, not per record, so records are taken in bulk: measured
#: on a real server under single-record load (the monitor's own CPU per request,
#: tabml_background_cpu_seconds_total), 0.1 s costs about half of 0.02 s, and 0.2 s no less.
TICK = 0.1
#: Records per slice of a drain on the loop; requests are served between slices. A slice costs
#: about 110 us plus 8 us a record (in process): the same CPU per record from 64 to 256, 1.7x
#: at 32, so 64 is the shortest stall (about 0.6 ms) at the lowest cost.
CHUNK_RECORDS = 64
#: Seconds between a drain's slices. Back to back, a request in flight during a drain met a
#: slice at each of its loop iterations (p99 1.7x monitoring off, quiet machine); spaced, most
#: requests finish between two slices. Never more than `DRAIN_SPREAD` for the whole drain.
SLICE_GAP = 0.002
#: The longest a drain is spread over (seconds): with more slices queued, the gaps shrink.
DRAIN_SPREAD = TICK / 2
#: Records per piece of a large request on the monitor thread (it holds the GIL that long,
#: about 1 ms, while LightGBM often scores the next batch without it).
THREAD_CHUNK_RECORDS = 256
#: Requests with more records go to the monitor thread: they are scored off the loop too, and a
#: thread busy for milliseconds at a time costs the loop few GIL hand-overs.
LOOP_RECORDS = 64
#: Seconds between the I/O thread's writes (one write for everything encoded meanwhile; waking
#: it for each slice would cost the loop a GIL hand-over each time).
IO_TICK = 0.1
#: Seconds between snapshots for the other workers (multi-worker only).
PUBLISH_SECONDS = 1.0
#: Most seconds /feedback waits for this process's queue to be indexed.
SYNC_TIMEOUT = 2.0


def _shadow_last(group: tuple[str, bool]) -> bool:
    return group[1]


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


class _Scored(NamedTuple):  # a tuple: the cheapest object to make on the request path
    version: str
    ts: float
    request_id: str
    records: Sequence[Any]
    probabilities: np.ndarray
    latency_ms: float
    recorded: bool
    first: int = 0  # index of records[0] in its request (a large request is split up)
    shadow: bool = False  # a challenger's shadow score: logged, in its drift window, not indexed

    def split(self, head: int) -> tuple[_Scored, _Scored]:
        return (
            self._replace(records=self.records[:head], probabilities=self.probabilities[:head]),
            self._replace(
                records=self.records[head:],
                probabilities=self.probabilities[head:],
                first=self.first + head,
            ),
        )


class _Labels(NamedTuple):
    lines: list[bytes]


class LiveMonitor:
    def __init__(
        self, settings: ServingSettings, metrics: ServiceMetrics, shared_dir: Path | None
    ) -> None:
        self.metrics = metrics
        # what the windows, the index and the log cost (the enqueue on the request path aside)
        self._cpu = metrics.background_cpu.labels("monitor")
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
        self.ring: PredictionRing | None = None
        if self.live:
            size = settings.feedback_index_size
            self.ring = (
                PredictionRing.create(worker_state.ring_path(shared_dir, self.pid), size)
                if shared_dir is not None
                else PredictionRing.in_memory(size)
            )
            self.peer_rings = label_join.PeerRings(self.ring, shared_dir, self.pid)
        # Replaced, never mutated, by `serve` (another thread may be reading them): the
        # versions served now, with their drift windows, and every version served so far.
        self._windows: dict[str, DriftWindow] = {}
        self._known: dict[str, ServedModel] = {}
        self._encoders: dict[str, PredictionLines] = {}
        self._shadow_encoders: dict[str, PredictionLines] = {}
        # Every version this process served: the feedback index's version slots.
        self._slots: list[VersionInfo] = []
        self._slot_of: dict[str, int] = {}
        self._realized: dict[str, RealizedWindow] = {}
        self._pending: list[Any] = []  # for the loop
        self._bulk: list[Any] = []  # for the monitor thread: large requests
        self._queued = 0
        self._lock = threading.Lock()
        self._ring_lock = threading.Lock()
        self._wake = threading.Event()
        self._feedback_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.Handle | None = None
        self._backlog: list[Any] = []  # drained, not yet handled (the loop's own)
        # Encoded events waiting for the disk: (bytes, predictions, feedback), and their count.
        self._encoded: list[tuple[bytes, int, int]] = []
        self._unwritten = 0
        self._io: threading.Thread | None = None
        self._stopping = threading.Event()
        self._dirty = True
        self._published = 0.0
        self._failed_once = False

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
                self._slot_of = {**self._slot_of, model.version: len(self._slots)}
                self._slots = [*self._slots, model.info]
        self._known = {**self._known, **{model.version: model for model in models}}
        self._encoders = {
            **self._encoders,
            **{
                m.version: PredictionLines(m.name, m.version, m.threshold, m.negative, m.positive)
                for m in models
                if m.version not in self._encoders
            },
        }
        self._shadow_encoders = {
            **self._shadow_encoders,
            **{
                m.version: PredictionLines(
                    m.name, m.version, m.threshold, m.negative, m.positive, shadow=True
                )
                for m in models
                if m.version not in self._shadow_encoders
            },
        }
        self._windows = windows
        self._dirty = True

    # lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Begin draining: call on the event loop, at start-up."""
        if not self.active or self._loop is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._publish()
        self._io = threading.Thread(target=self._io_run, name="tabml-monitor", daemon=True)
        self._io.start()
        self._timer = self._loop.call_later(TICK, self._drain)

    def stop(self, timeout: float = 30.0) -> None:
        """On the event loop, after the last request: take in what is queued, write it, close
        the log segment and withdraw the shared snapshot."""
        if self._loop is None:
            return
        if self._timer is not None:
            self._timer.cancel()
        with self._lock:
            batch, self._pending, self._queued = self._backlog + self._pending, [], 0
        self._backlog = []
        self._process_safely(batch)
        self._loop = None
        if self._io is not None:
            self._stopping.set()
            self._wake.set()
            self._io.join(timeout)
            if self._io.is_alive():
                log.error("prediction log writer did not finish within %s s", timeout)
            self._io = None

    # request path -------------------------------------------------------------------------

    def observe(
        self, version: str, records: Sequence[Any], probabilities: np.ndarray, started: float
    ) -> bool:
        """One answered prediction request (any thread); never blocks, never raises.
        `started` is the request's arrival (perf_counter), for the logged latency. Returns
        whether the request is recorded (logged), which its shadow copy follows."""
        if not self.active:
            return False
        recorded = self.sample >= 1.0 or random.random() < self.sample
        if not recorded and not self.live:
            return False
        item = _Scored(
            version,
            time.time(),
            logs.request_id.get() or logs.accept_or_make_request_id(None),
            records,
            probabilities,
            (time.perf_counter() - started) * 1e3,
            recorded,
        )
        if not self._enqueue(item, len(records)) and recorded and self.writer is not None:
            self.metrics.log_dropped.labels("queue_full").inc(len(records))
        return recorded

    def observe_shadow(
        self,
        version: str,
        records: Sequence[Any],
        probabilities: np.ndarray,
        request_id: str,
        ts: float,
        latency_ms: float,
        recorded: bool,
    ) -> None:
        """A challenger's shadow scores of a champion-answered request (the shadow thread):
        into the challenger's drift window and, if the answer was recorded, the log as events
        with the answer's request id and `"shadow": true`. `latency_ms` is the challenger's
        scoring time. Never indexed for /feedback: a label joins the answered prediction."""
        if not self.active or (not recorded and not self.live):
            return
        item = _Scored(
            version, ts, request_id, records, probabilities, latency_ms, recorded, shadow=True
        )
        if not self._enqueue(item, len(records)) and recorded and self.writer is not None:
            self.metrics.log_dropped.labels("queue_full").inc(len(records))

    def _enqueue(self, item: Any, size: int) -> bool:
        bulk = size > LOOP_RECORDS
        with self._lock:
            if self._queued + size > self.capacity:
                return False
            self._queued += size
            (self._bulk if bulk else self._pending).append(item)
        if bulk:
            self._wake.set()
        return True

    # the drain, on the event loop ------------------------------------------------------------

    def _drain(self) -> None:
        with self._lock:
            self._backlog += self._pending
            self._pending = []
        self._slice()

    def _slice(self) -> None:
        """Handle the first CHUNK_RECORDS records of the backlog; leave the rest for after the
        requests that are ready now; once it is empty, wait for the next tick."""
        batch = self._backlog
        taken = size = 0
        while taken < len(batch) and size < CHUNK_RECORDS:
            item = batch[taken]
            if type(item) is _Scored and _size(item) > CHUNK_RECORDS - size:  # its head, now
                batch[taken : taken + 1] = item.split(max(CHUNK_RECORDS - size, 1))
                item = batch[taken]
            size += _size(item)
            taken += 1
        self._backlog = batch[taken:]
        with self._lock:
            self._queued -= size
        self._process_safely(batch[:taken])
        assert self._loop is not None
        if self._backlog:
            slices = -(-len(self._backlog) // CHUNK_RECORDS)  # at least; items may hold more
            self._timer = self._loop.call_later(min(SLICE_GAP, DRAIN_SPREAD / slices), self._slice)
        else:
            self._timer = self._loop.call_later(TICK, self._drain)

    def _process_safely(self, batch: list[Any]) -> None:
        started = time.thread_time()
        try:
            self._process(batch)
            self._cpu.inc(time.thread_time() - started)
        except Exception:  # a bug here must not stop monitoring for good, nor spam the log
            if not self._failed_once:
                log.exception("live monitoring failed on a batch (logged once)")
                self._failed_once = True
        finally:
            for item in batch:
                if isinstance(item, threading.Event):
                    item.set()

    def _process(self, batch: list[Any]) -> None:
        """A chunk of the queue at once: one window update per version, one index update,
        one serialisation and one write."""
        scored = [item for item in batch if type(item) is _Scored]
        windows = self._windows
        for version in {item.version for item in scored}:
            window = windows.get(version)
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
                [item.request_id for item in answered], sizes, [item.first for item in answered]
            )
            with self._ring_lock:  # appended by the loop and the monitor thread
                self.ring.append(
                    keys,
                    np.concatenate([item.probabilities for item in answered]),
                    np.repeat(np.asarray(slots, dtype=np.uint16), sizes),
                )
        if self.writer is not None:
            self._write(recorded, [item for item in batch if type(item) is _Labels])

    def _write(self, recorded: list[_Scored], labels: list[_Labels]) -> None:
        """Encode the events and pass them to the I/O thread (dropped, counted, if the disk is
        more than a queue's worth behind)."""
        predictions = sum(len(item.records) for item in recorded)
        feedback = sum(len(item.lines) for item in labels)
        events = predictions + feedback
        if not events:
            return
        with self._lock:
            room = self._unwritten + events <= self.capacity
            if room:
                self._unwritten += events
        if not room:
            self.metrics.log_dropped.labels("queue_full").inc(events)
            return
        encoders = {False: self._encoders, True: self._shadow_encoders}
        chunks = [
            encoders[shadow][version].lines(
                [
                    (i.ts, i.request_id, i.first, i.records, i.probabilities, i.latency_ms)
                    for i in recorded
                    if i.version == version and i.shadow == shadow
                ]
            )
            # answered events before shadow ones: a reader joining a label to the first event
            # of its (request_id, index) joins it to the answer
            for version, shadow in sorted(
                {(i.version, i.shadow) for i in recorded}, key=_shadow_last
            )
        ]
        chunks += [line for item in labels for line in item.lines]
        with self._lock:
            self._encoded.append((b"".join(chunks), predictions, feedback))

    # the I/O thread: disk writes, rotation, snapshots -----------------------------------------

    def _io_run(self) -> None:
        while True:
            self._wake.wait(IO_TICK)
            self._wake.clear()
            stopping = self._stopping.is_set()
            with self._lock:
                bulk, self._bulk = self._bulk, []
                self._queued -= sum(map(_size, bulk))
            for item in bulk:  # a large request in pieces, letting requests have the GIL
                while type(item) is _Scored and _size(item) > THREAD_CHUNK_RECORDS:
                    head, item = item.split(THREAD_CHUNK_RECORDS)
                    self._process_safely([head])
                    time.sleep(0)
                self._process_safely([item])
            started = time.thread_time()
            self._write_encoded()
            if self.writer is not None:
                self.writer.rotate_if_due()
            due = time.monotonic() - self._published >= PUBLISH_SECONDS
            if self.shared_dir is not None and self._dirty and due:
                self._publish()
            self._cpu.inc(time.thread_time() - started)
            if stopping:
                break
        if self.writer is not None:
            self.writer.close()
        if self.shared_dir is not None:
            worker_state.remove(self.shared_dir, self.pid)

    def _write_encoded(self) -> None:
        with self._lock:
            encoded, self._encoded = self._encoded, []
        if not encoded:
            return
        assert self.writer is not None
        written = self.writer.write(b"".join(data for data, _, _ in encoded))
        predictions = sum(p for _, p, _ in encoded)
        feedback = sum(f for _, _, f in encoded)
        with self._lock:
            self._unwritten -= predictions + feedback
        for kind, count in ((PREDICTION, predictions), (FEEDBACK, feedback)):
            if count:
                counter = self.metrics.log_events if written else self.metrics.log_dropped
                counter.labels(kind if written else "write_error").inc(count)

    def _publish(self) -> None:
        if self.shared_dir is None:
            return
        known = self._known
        drift = {
            version: worker_state.DriftCounts(
                known[version].profile_md5, window.records, window.counts()
            )
            for version, window in self._windows.items()
        }
        realized = {version: window.pairs() for version, window in list(self._realized.items())}
        state = worker_state.WorkerState(self.pid, self._slots, drift, realized)
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
            found = self.peer_rings.find(keys, self._slots)
            problems = label_join.problems(labels, keys, found)
            unknown = sum(p["type"] == label_join.UNKNOWN for p in problems)
            self.metrics.feedback.inc(len(labels))
            if unknown:
                self.metrics.feedback_unmatched.inc(unknown)
            if problems:
                raise RequestRejected(404 if unknown else 409, problems, len(problems))
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
            lines = [feedback_line(now, x.request_id, x.index, x.label) for x in labels]
            if not self._enqueue(_Labels(lines), len(lines)):
                self.metrics.log_dropped.labels("queue_full").inc(len(lines))
        return len(labels)

    def _realized_window(self, version: VersionInfo) -> RealizedWindow:
        window = self._realized.get(version.id)
        if window is None:
            window = RealizedWindow(version.realized_window_size, version.threshold)
            self._realized = {**self._realized, version.id: window}
        return window

    def _sync(self) -> None:
        """Wait until what this process queued so far is indexed (a label may follow its
        prediction within milliseconds)."""
        if self._loop is None:
            return
        loop_done, thread_done = threading.Event(), threading.Event()
        with self._lock:
            self._pending.append(loop_done)
            self._bulk.append(thread_done)
        self._wake.set()
        deadline = time.monotonic() + SYNC_TIMEOUT
        for done in (loop_done, thread_done):
            done.wait(max(0.0, deadline - time.monotonic()))

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
        for version, window in list(self._realized.items()):
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


def _size(item: Any) -> int:
    """What a queued item counts against the queue's capacity."""
    if type(item) is _Scored:
        return len(item.records)
    return len(item.lines) if type(item) is _Labels else 0  # a /feedback sync marker: 0
