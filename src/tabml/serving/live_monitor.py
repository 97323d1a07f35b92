"""Live monitoring, the worker's side: what every answered request contributes, handed to the
worker's monitor process (`tabml.serving.monitor_process`) off the request path.

A prediction request only appends (version, records, probabilities, request id, timing) to a
bounded queue: about two microseconds. Every `TICK` seconds a thread pickles everything queued
at once and sends it to the monitor process, which slides the drift windows, indexes the
recorded predictions for /feedback and writes their log events. A full queue drops (counted);
no request ever waits. A /feedback request and a scrape are calls to the monitor process,
queued behind what was answered before them, so a label finds a prediction answered
milliseconds earlier and a scrape counts every request answered before it.

What a request contributes: every scored record enters its version's drift window; a sampled
share of requests (`prediction_log_sample`) is *recorded*: logged, and labellable on /feedback.

Why a process: docs/monitoring.md, "Where the monitoring work runs" (monitoring in the worker,
on the event loop, measured p99 1.3-1.4x monitoring off at single-record load).
"""

from __future__ import annotations

import itertools
import logging
import os
import pickle
import random
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from tabml.serving import logs
from tabml.serving import monitor_process as wire
from tabml.serving.label_join import FeedbackLabel
from tabml.serving.metrics import ServiceMetrics, VersionMonitoring
from tabml.serving.monitor_state import (
    FEEDBACK_RECEIVED,
    FEEDBACK_UNMATCHED,
    LOG_DROPPED,
    LOG_EVENTS,
    MonitorConfig,
    Scored,
    ServedModel,
)
from tabml.serving.predictor import RequestRejected
from tabml.serving.settings import ServingSettings

log = logging.getLogger("tabml.serving.monitor")

#: Seconds between sends to the monitor process: about the most a window or the log lags behind
#: a response. Pickling costs per message as well as per record; 0.1 s makes one message of
#: about 500 requests at full single-record load (about 0.5 ms of the GIL).
TICK = 0.1
#: Most seconds /feedback waits for the monitor process (it is niced: at full load it may be
#: behind by up to a queue's worth of records).
FEEDBACK_TIMEOUT = 10.0
#: Most seconds a scrape waits for fresh numbers before it reports the last ones.
SNAPSHOT_TIMEOUT = 5.0
#: Most seconds shutdown waits for the monitor process to write what it was sent.
STOP_TIMEOUT = 30.0


class _Call(NamedTuple):
    """A call to the monitor process, queued behind the requests answered before it."""

    message: tuple[Any, ...]
    done: threading.Event
    result: list[Any]  # [(ok, payload)] once answered; left empty if the process is gone


class LiveMonitor:
    def __init__(
        self, settings: ServingSettings, metrics: ServiceMetrics, shared_dir: Path | None
    ) -> None:
        self.metrics = metrics
        # pickling and sending here, plus all of the monitor process's CPU time
        self._cpu = metrics.background_cpu.labels("monitor")
        self.live = settings.live_monitoring
        self.logging = settings.prediction_log_dir is not None
        self.active = self.live or self.logging
        self.sample = settings.prediction_log_sample
        self.capacity = settings.prediction_log_queue
        self._config = MonitorConfig(
            live=self.live,
            log_dir=settings.prediction_log_dir,
            segment_bytes=settings.prediction_log_segment_bytes,
            segment_seconds=settings.prediction_log_segment_seconds,
            index_size=settings.feedback_index_size,
            queue_records=settings.prediction_log_queue,
            shared_dir=shared_dir,
            log_level=settings.log_level,
        )
        self._models: list[ServedModel] = []
        self._pending: list[Any] = []  # Scored and _Call, in the order they came
        self._queued = 0  # records in _pending
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._calls: dict[int, _Call] = {}
        self._call_ids = itertools.count()
        self._process: subprocess.Popen[bytes] | None = None
        self._threads: list[threading.Thread] = []
        self._snapshot: list[VersionMonitoring] = []
        self._exited = threading.Event()

    def serve(self, models: Sequence[ServedModel]) -> None:
        """The versions served from now on (at start and after every reload): a version kept
        keeps its drift window, a new one starts empty, one no longer served stops drifting
        (labels for its predictions still count)."""
        with self._lock:
            self._models = list(models)
            if self._process is not None:
                self._pending.append((wire.SERVE, self._models))

    # lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the monitor process and the threads that talk to it (at start-up, in the
        process that serves: each worker has its own)."""
        if not self.active or self._process is not None:
            return
        inbox_read, inbox_write = os.pipe()
        outbox_read, outbox_write = os.pipe()
        self._process = subprocess.Popen(
            [sys.executable, "-m", wire.__name__, str(inbox_read), str(outbox_write)],
            pass_fds=(inbox_read, outbox_write),
            stdin=subprocess.DEVNULL,
            # its own session: a signal to the worker's process group (Ctrl-C, a supervisor's
            # killpg) would kill it while it is still importing, before it ignores signals
            start_new_session=True,
        )
        os.close(inbox_read)
        os.close(outbox_write)
        outbox = Connection(inbox_write, readable=False)
        inbox = Connection(outbox_read, writable=False)
        with self._lock:
            outbox.send_bytes(pickle.dumps((self._config, self._models), protocol=5))
        self._threads = [
            threading.Thread(target=self._send, args=(outbox,), name="tabml-monitor-send"),
            threading.Thread(target=self._receive, args=(inbox,), name="tabml-monitor-receive"),
        ]
        for thread in self._threads:
            thread.daemon = True
            thread.start()

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """After the last request: send what is queued, close the monitor process's input and
        wait for it to write everything and close the log segment."""
        if self._process is None:
            return
        self._stopping.set()
        self._wake.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        try:
            self._process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.error("the monitor process did not finish within %s s: stopped", timeout)
            self._process.kill()
            self._process.wait()
        self._process = None

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
        self._enqueue(
            Scored(
                version,
                time.time(),
                logs.request_id.get() or logs.accept_or_make_request_id(None),
                records,
                probabilities,
                (time.perf_counter() - started) * 1e3,
                recorded,
            )
        )
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
        self._enqueue(
            Scored(version, ts, request_id, records, probabilities, latency_ms, recorded, True)
        )

    def _enqueue(self, item: Scored) -> None:
        size = len(item.records)
        with self._lock:
            if self._queued + size <= self.capacity and not self._exited.is_set():
                self._queued += size
                self._pending.append(item)
                return
        if item.recorded and self.logging:
            reason = "monitor_exited" if self._exited.is_set() else "queue_full"
            self.metrics.log_dropped.labels(reason).inc(size)

    # the threads that talk to the monitor process ---------------------------------------------

    def _send(self, outbox: Connection) -> None:
        while True:
            self._wake.wait(TICK)
            self._wake.clear()
            stopping = self._stopping.is_set()
            with self._lock:
                batch, self._pending, self._queued = self._pending, [], 0
            if batch and not self._exited.is_set():
                started = time.thread_time()
                try:
                    outbox.send_bytes(pickle.dumps(_messages(batch), protocol=5))
                except OSError:
                    self._lost(batch)
                self._cpu.inc(time.thread_time() - started)
            elif batch:
                self._lost(batch)
            if stopping:
                break
        outbox.close()

    def _receive(self, inbox: Connection) -> None:
        while True:
            try:
                counts, replies = pickle.loads(inbox.recv_bytes())
            except (EOFError, OSError):
                break
            self._count(counts)
            for call_id, ok, payload in replies:
                call = self._calls.pop(call_id, None)
                if call is not None:
                    call.result.append((ok, payload))
                    call.done.set()
        self._exited.set()
        if not self._stopping.is_set():
            log.error(
                "the monitor process exited: monitoring and the prediction log stop until the "
                "worker restarts (events are counted as dropped)"
            )
        for call in list(self._calls.values()):
            call.done.set()

    def _count(self, counts: dict[tuple[str, str], float]) -> None:
        for (name, label), value in counts.items():
            if name == LOG_EVENTS:
                self.metrics.log_events.labels(label).inc(value)
            elif name == LOG_DROPPED:
                self.metrics.log_dropped.labels(label).inc(value)
            elif name == FEEDBACK_RECEIVED:
                self.metrics.feedback.inc(value)
            elif name == FEEDBACK_UNMATCHED:
                self.metrics.feedback_unmatched.inc(value)
            elif (name, label) == wire.CPU:
                self._cpu.inc(value)

    def _lost(self, batch: list[Any]) -> None:
        """What could not be sent: the monitor process is gone."""
        self._exited.set()
        lost = sum(len(i.records) for i in batch if type(i) is Scored and i.recorded)
        if lost and self.logging:
            self.metrics.log_dropped.labels("monitor_exited").inc(lost)
        for item in batch:
            if type(item) is _Call:
                item.done.set()

    def _call(self, kind: str, timeout: float, *args: Any) -> tuple[bool, Any] | None:
        """Ask the monitor process, after everything queued before: (ok, payload), or None if
        it did not answer in time or is gone."""
        call_id = next(self._call_ids)
        call = _Call((kind, call_id, *args), threading.Event(), [])
        with self._lock:
            if self._process is None or self._exited.is_set():
                return None
            self._calls[call_id] = call
            self._pending.append(call)
        self._wake.set()
        call.done.wait(timeout)
        self._calls.pop(call_id, None)
        return call.result[0] if call.result else None

    # feedback and scrape ------------------------------------------------------------------

    def record_feedback(self, labels: Sequence[FeedbackLabel]) -> int:
        """Join labels with their predictions and count them in the realized windows: all of
        them, or (RequestRejected, naming each bad item) none. Runs in a worker thread."""
        if not self.live:
            raise RequestRejected(
                503, "live monitoring is off (TABML_LIVE_MONITORING=0): no predictions to label"
            )
        answer = self._call(wire.FEEDBACK, FEEDBACK_TIMEOUT, list(labels))
        if answer is None:
            raise RequestRejected(
                503,
                f"the monitor process did not answer within {FEEDBACK_TIMEOUT:g} s; the labels "
                "may be recorded: a retry is refused as a duplicate (409) for those that are",
            )
        ok, payload = answer
        if ok:
            return int(payload)
        if payload is None:
            raise RequestRejected(503, "the monitor process failed on these labels: see its log")
        raise RequestRejected(*payload)

    def refresh(self) -> None:
        """Before a scrape: fresh drift and realized numbers from the monitor process, and the
        counters it moved (the last numbers stay if it does not answer in time)."""
        if not self.live:
            return
        answer = self._call(wire.SNAPSHOT, SNAPSHOT_TIMEOUT)
        if answer is not None and answer[0]:
            self._snapshot = answer[1]

    def snapshot(self) -> list[VersionMonitoring]:
        """Drift and realized numbers per model version, over this worker and its peers, as of
        the last `refresh`."""
        return self._snapshot


def _messages(batch: list[Any]) -> list[tuple[Any, ...]]:
    """The queue as wire messages, in order: each run of answered requests as one."""
    messages: list[tuple[Any, ...]] = []
    for scored, run in itertools.groupby(batch, key=lambda item: type(item) is Scored):
        if scored:
            messages.append(wire.encode_scored(list(run)))
        else:
            messages.extend(item.message if type(item) is _Call else item for item in run)
    return messages
