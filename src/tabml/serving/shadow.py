"""Shadow scoring: the challenger scores a copy of champion-answered requests, off the response
path, for the prediction log only.

A request answered by the champion hands its validated records to `ShadowScorer.submit`: an
append to a bounded list under a lock (about a microsecond); the response does not wait for the
challenger. Every `TICK` seconds the queue is drained on the event loop, between requests, in
slices of `MAX_ROWS_PER_CALL` rows: one challenger call per slice and version (so many
single-record requests cost one LightGBM call, not one each), and each request's
probabilities go to `on_scored` (the service logs them as prediction events marked
`"shadow": true`, with the request id of the champion's answer).

Why the loop and not a worker thread (bench/serve_routing_benchmark.py): a thread doing this
contends with the loop for the GIL, and the hand-overs cost the loop several times the
challenger's own scoring; on the loop, in slices, the work costs what it costs. Copies of large
requests (over `LOOP_JOB_ROWS` rows: rare, and one long call that would hold up every request on
the loop) go to a daemon thread instead. Without a loop (`start()` with none: scripts, unit
tests) that thread drains everything.

Nothing the challenger does reaches a client:

* a full queue (more than `capacity` rows waiting) drops the copy and counts its rows;
* a challenger that raises is counted (rows) and logged: the first failure of each version with
  its traceback, then one summary line per `FAILURE_LOG_SECONDS`. When a combined call fails,
  each request of it is retried alone, so one bad request does not cost the others' scores;
* records the champion validated are validated again by the challenger's own schema when the
  two data contracts differ (`revalidate`); a record it refuses counts as a failure.

Jobs carry the challenger version they were submitted for, so a reload never scores a request
with a version that was not serving when it was answered.

About 360 lines, half of them the failure and backpressure handling that keeps a challenger
from ever reaching a client; it stays next to the queue it protects.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import numpy as np

log = logging.getLogger("tabml.serving.shadow")

#: Most rows scored in one challenger call (one slice on the loop: about 1 ms).
MAX_ROWS_PER_CALL = 256
#: Copies of requests with more rows are scored on the thread, not on the loop (a long call
#: there would hold up every request; LightGBM releases the GIL while it predicts).
LOOP_JOB_ROWS = 64
#: Seconds between summary lines while a challenger keeps failing.
FAILURE_LOG_SECONDS = 60.0
#: Seconds between drains. They are not run per request: at thousands of requests a second, a
#: wake-up (and GIL hand-over) per request costs the event loop more than the challenger's
#: scoring itself; every TICK everything queued is taken at once, and the longer the tick the
#: more rows share each challenger call (as for the live monitor's drains).
TICK = 0.1


class ShadowVersion(Protocol):
    """What shadow scoring needs of a model version (`tabml.serving.versions.ModelVersion`)."""

    id: str

    def score(self, records: Sequence[Any]) -> np.ndarray: ...


class ShadowJob(NamedTuple):  # a tuple: the cheapest object to make on the request path
    """A copy of one answered request, for the challenger."""

    version: ShadowVersion
    records: Sequence[Any]
    request_id: str
    #: when the champion's answer was produced (unix seconds)
    ts: float
    #: the version that answered the client
    answered_by: str
    #: validate the records again with this (the challenger's own schema), or None
    revalidate: Callable[[list[Any]], list[Any]] | None = None
    #: whether the champion's answer was recorded (logged): its shadow events are too
    recorded: bool = True


@dataclass
class ShadowStats:
    """Rows submitted, scored, dropped (queue full) and failed (challenger error)."""

    submitted: int = 0
    scored: int = 0
    dropped: int = 0
    failed: int = 0


OnScored = Callable[[ShadowJob, np.ndarray, float], None]


@dataclass
class _FailureLog:
    logged_once: set[str] = field(default_factory=set)
    since_summary: int = 0
    last_summary: float = 0.0


class ShadowScorer:
    """Bounded queue + one thread scoring shadow copies with the challenger."""

    def __init__(
        self,
        on_scored: OnScored,
        *,
        capacity: int,
        on_dropped: Callable[[int], None] | None = None,
        on_failed: Callable[[str, int], None] | None = None,
        on_cpu: Callable[[float], None] | None = None,
        max_rows_per_call: int = MAX_ROWS_PER_CALL,
        tick: float = TICK,
    ) -> None:
        """`on_scored(job, probabilities, seconds)` runs on the thread for each scored job
        (`seconds`: the challenger's scoring time of the call it was in); `on_dropped(rows)` and
        `on_failed(version_id, rows)` feed counters, `on_cpu(seconds)` the CPU time of each
        drain (its thread's: what shadow scoring costs the process). `capacity` is in rows."""
        if capacity < 1:
            raise ValueError("capacity must be at least one row")
        self.capacity = capacity
        self.max_rows_per_call = max_rows_per_call
        self.tick = tick
        self.stats = ShadowStats()
        self._on_scored = on_scored
        self._on_dropped = on_dropped
        self._on_failed = on_failed
        self._on_cpu = on_cpu
        self._pending: list[ShadowJob] = []
        #: with a loop: jobs of more than LOOP_JOB_ROWS rows, for the thread
        self._large: list[ShadowJob] = []
        self._queued_rows = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._idle = threading.Condition(self._lock)
        self._busy = 0  # drains in progress (the loop's slice, the thread's)
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.Handle | None = None
        self._failures = _FailureLog()

    # lifecycle ------------------------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Drain every `tick` seconds on `loop`, in slices of at most `max_rows_per_call` rows
        with requests served between them (the service), or on a thread of its own."""
        if self.running:
            return
        self._stopping = False
        if loop is not None:
            self._loop = loop
            self._timer = loop.call_later(self.tick, self._drain_slice)
        self._thread = threading.Thread(target=self._run, name="tabml-shadow", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Score what is queued (within `timeout`), then stop draining. With a loop, call it on
        the loop, after the last request."""
        deadline = time.monotonic() + timeout
        if self._loop is not None:
            if self._timer is not None:
                self._timer.cancel()
            self._loop = self._timer = None
            while (jobs := self._take(None)) and time.monotonic() < deadline:
                self._process(jobs)
        thread = self._thread
        if thread is None:
            return
        self._stopping = True
        self._wake.set()
        thread.join(max(deadline - time.monotonic(), 0.1))
        if thread.is_alive():
            log.error("shadow scoring did not finish within %s s", timeout)
        self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None or self._loop is not None

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Block until everything submitted so far is scored (tests and benchmarks)."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._pending or self._large or self._busy:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle.wait(remaining)
        return True

    # request path -----------------------------------------------------------------------------

    def submit(self, job: ShadowJob) -> bool:
        """Queue a copy (any thread); never blocks, never raises. False: dropped, queue full."""
        rows = len(job.records)
        large = rows > LOOP_JOB_ROWS and self._loop is not None
        with self._lock:
            accepted = self._queued_rows + rows <= self.capacity
            if accepted:
                self._queued_rows += rows
                (self._large if large else self._pending).append(job)
                self.stats.submitted += rows
            else:
                self.stats.dropped += rows
        if large and accepted:
            self._wake.set()  # a large request is rare; its copy is scored right away
        if not accepted:
            if self._on_dropped is not None:
                try:
                    self._on_dropped(rows)
                except Exception:  # a counter must not fail a request
                    log.exception("counting a dropped shadow request failed")
            return False
        return True

    # draining ---------------------------------------------------------------------------------

    def _take(self, rows: int | None, large: bool = False) -> list[ShadowJob]:
        """The oldest queued jobs, up to `rows` rows (at least one job), or all of them; of the
        large jobs' queue if `large`, else of the other (all queues when `rows` is None)."""
        with self._lock:
            if rows is None:
                pending, self._large = self._pending + self._large, []
            else:
                pending = self._large if large else self._pending
            if rows is None:
                taken = len(pending)
            else:
                taken, size = 0, 0
                while taken < len(pending) and (
                    taken == 0 or size + len(pending[taken].records) <= rows
                ):
                    size += len(pending[taken].records)
                    taken += 1
            jobs = pending[:taken]
            if large and rows is not None:
                self._large = pending[taken:]
            else:
                self._pending = pending[taken:]
            self._queued_rows -= sum(len(job.records) for job in jobs)
            self._busy += bool(jobs)
        return jobs

    def _process(self, jobs: list[ShadowJob]) -> None:
        started = time.thread_time()
        try:
            if jobs:
                self._score_all(jobs)
                if self._on_cpu is not None:
                    self._on_cpu(time.thread_time() - started)
        except Exception:  # a bug here must not end shadow scoring for good
            log.exception("shadow scoring failed on a batch")
        finally:
            with self._idle:
                self._busy -= bool(jobs)
                self._idle.notify_all()

    def _drain_slice(self) -> None:
        """On the loop: one slice; the next right after the requests ready now, or next tick."""
        self._process(self._take(self.max_rows_per_call))
        loop = self._loop
        if loop is None:
            return
        if self._pending:
            self._timer = loop.call_soon(self._drain_slice)
        else:
            self._timer = loop.call_later(self.tick, self._drain_slice)

    def _run(self) -> None:
        """The thread: everything (no loop), or the large jobs (with a loop, the rest is the
        loop's)."""
        while True:
            self._wake.wait(self.tick)
            self._wake.clear()
            stopping = self._stopping
            jobs = self._take(self.max_rows_per_call, large=True) if self._loop else []
            if self._loop is None:
                jobs = self._take(None)
            self._process(jobs)
            if stopping:
                if not jobs:
                    return
                self._wake.set()  # take what arrived meanwhile without waiting

    def _score_all(self, jobs: list[ShadowJob]) -> None:
        by_version: dict[int, list[ShadowJob]] = {}
        for job in jobs:
            by_version.setdefault(id(job.version), []).append(job)
        for group in by_version.values():
            call: list[ShadowJob] = []
            rows = 0
            for job in group:
                if call and rows + len(job.records) > self.max_rows_per_call:
                    self._score_call(call)
                    call, rows = [], 0
                call.append(job)
                rows += len(job.records)
            if call:
                self._score_call(call)

    def _score_call(self, jobs: list[ShadowJob]) -> None:
        version = jobs[0].version
        started = time.perf_counter()
        try:
            records = [r for job in jobs for r in self._records(job)]
            probabilities = version.score(records)
        except Exception as exc:
            if len(jobs) > 1:  # find the requests that fail; score the others
                for job in jobs:
                    self._score_call([job])
                return
            self._failed(jobs[0], exc)
            return
        seconds = time.perf_counter() - started
        start = 0
        for job in jobs:
            end = start + len(job.records)
            self.stats.scored += len(job.records)
            try:
                self._on_scored(job, probabilities[start:end], seconds)
            except Exception:
                log.exception("recording a shadow score failed")
            start = end

    @staticmethod
    def _records(job: ShadowJob) -> list[Any]:
        records = list(job.records)
        return job.revalidate(records) if job.revalidate is not None else records

    def _failed(self, job: ShadowJob, exc: Exception) -> None:
        rows = len(job.records)
        self.stats.failed += rows
        if self._on_failed is not None:
            try:
                self._on_failed(job.version.id, rows)
            except Exception:
                log.exception("counting a failed shadow request failed")
        failures, now = self._failures, time.monotonic()
        failures.since_summary += 1
        if job.version.id not in failures.logged_once:
            failures.logged_once.add(job.version.id)
            failures.last_summary, failures.since_summary = now, 0
            log.error(
                "challenger %s failed to score a shadow request (request %s); clients are not "
                "affected. Further failures are summarised every %.0f s",
                job.version.id,
                job.request_id,
                FAILURE_LOG_SECONDS,
                exc_info=exc,
            )
        elif now - failures.last_summary >= FAILURE_LOG_SECONDS:
            log.error(
                "challenger %s failed on %d more shadow request(s) in the last %.0f s; last: %s",
                job.version.id,
                failures.since_summary,
                now - failures.last_summary,
                exc,
            )
            failures.last_summary, failures.since_summary = now, 0
