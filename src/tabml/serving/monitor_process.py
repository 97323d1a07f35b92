"""The monitor process: one per server worker, started by it (`tabml.serving.live_monitor`),
doing all the monitoring work (`tabml.serving.monitor_state`) off the worker's CPU time and GIL.

Why a process: in the worker, the windows, the index and the log encoding cost about 12 µs a
record of GIL time, taken from the event loop in slices; at single-record load the slices
put p99 latency at 1.3-1.4x monitoring off. Here they cost the worker only the pickling of
what it answered (about 1 µs a record), and at nice 19 the process takes only CPU time the
requests leave (docs/monitoring.md, "Where the monitoring work runs").

The wire: two pipes. The worker sends, every tick, one pickled list of messages in the order
it queued them; so a /feedback label or a scrape (a call, answered by call id) is handled
after every prediction answered before it. The process answers with the counters that moved
and the calls' results. It ignores SIGINT, SIGTERM and SIGHUP (they are the worker's to act
on) and stops at the end of its input: the worker closed it at shutdown, or died.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import logging.config
import os
import pickle
import signal
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from tabml.serving.logs import logging_config
from tabml.serving.monitor_state import LabelsRefused, MonitorState, Scored

log = logging.getLogger("tabml.serving.monitor")

#: Scheduling priority of the monitor process. In the prototype at nice 0 it competed with the
#: worker for the cores at full load: p99 1.19x monitoring off; at 19, 1.15x and requests/s
#: 1.05x (12 paired rounds); SCHED_IDLE measured no better (docs/monitoring.md). It keeps up
#: while the worker leaves it any CPU time; if it cannot, the worker's queue fills and events
#: are dropped (counted), never a request delayed.
NICE = 19
#: Seconds the process gathers what the worker sends before handling it all at once, unless a
#: call (a label, a scrape) comes first: that is handled at once, after what came before it.
#: Each handling is a burst of work next to the worker's. Gathering 0.5 s gave p99 1.07x,
#: 1.20x and 1.09x monitoring off in three A/B runs (12-16 paired rounds, single records at
#: c=8), handling each 0.1 s message as it came 1.30x and 1.16x: within the noise, so the
#: choice rests on fewer wake-ups and a log at most half a second behind.
GATHER_SECONDS = 0.5

SCORED, SERVE, FEEDBACK, SNAPSHOT = "scored", "serve", "feedback", "snapshot"
CPU = ("background_cpu", "monitor")


def encode_scored(items: Sequence[Scored]) -> tuple[str, list[tuple[Any, ...]], np.ndarray]:
    """Answered requests as one message: their probabilities in one array (a small numpy array
    each would cost 3 µs to pickle, four times the rest of the request)."""
    rows = [
        (i.version, i.ts, i.request_id, i.records, i.latency_ms, i.recorded, i.shadow)
        for i in items
    ]
    return SCORED, rows, np.concatenate([i.probabilities for i in items])


def decode_scored(rows: list[tuple[Any, ...]], probabilities: np.ndarray) -> list[Scored]:
    items, start = [], 0
    for version, ts, request_id, records, latency_ms, recorded, shadow in rows:
        end = start + len(records)
        items.append(
            Scored(
                version,
                ts,
                request_id,
                records,
                probabilities[start:end],
                latency_ms,
                recorded,
                shadow,
            )
        )
        start = end
    return items


class _Failures:
    """Logs the first failure of each kind: a bug must not stop monitoring, nor spam the log."""

    def __init__(self) -> None:
        self._seen: set[str] = set()

    def log(self, kind: str) -> None:
        if kind not in self._seen:
            self._seen.add(kind)
            log.exception("live monitoring failed on %s (logged once)", kind)


def handle(
    state: MonitorState, messages: list[tuple[Any, ...]], failures: _Failures
) -> list[tuple[int, bool, Any]]:
    """Apply one batch of messages in order; the results of its calls."""
    replies: list[tuple[int, bool, Any]] = []
    for kind, *payload in messages:
        try:
            if kind == SCORED:
                state.process(decode_scored(*payload))
            elif kind == SERVE:
                state.serve(payload[0])
            elif kind == FEEDBACK:
                call, labels = payload
                try:
                    replies.append((call, True, state.record_feedback(labels)))
                except LabelsRefused as refused:
                    replies.append((call, False, (refused.status, refused.detail, refused.count)))
            elif kind == SNAPSHOT:
                replies.append((payload[0], True, state.snapshot()))
        except Exception:
            failures.log(kind)
            if kind in (FEEDBACK, SNAPSHOT):
                replies.append((payload[0], False, None))
    return replies


def gather(inbox: Connection, most_records: int) -> tuple[list[tuple[Any, ...]], bool]:
    """What the worker sends within GATHER_SECONDS (less if a call or `most_records` records
    arrive first), runs of answered requests merged; and whether the input is still open."""
    messages: list[tuple[Any, ...]] = []
    records = 0
    deadline = time.monotonic() + GATHER_SECONDS
    while records < most_records and inbox.poll(max(0.0, deadline - time.monotonic())):
        try:
            batch = pickle.loads(inbox.recv_bytes())
        except EOFError:
            return _merged(messages), False
        messages.extend(batch)
        if any(kind in (FEEDBACK, SNAPSHOT) for kind, *_ in batch):
            break
        records += sum(len(rows) for kind, rows, *_ in batch if kind == SCORED)
    return _merged(messages), True


def _merged(messages: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Consecutive answered-request messages as one (one window update, one write)."""
    merged: list[tuple[Any, ...]] = []
    for scored, run in itertools.groupby(messages, key=lambda message: message[0] == SCORED):
        if scored:
            parts = list(run)
            rows = [row for _, part_rows, _ in parts for row in part_rows]
            merged.append((SCORED, rows, np.concatenate([p for _, _, p in parts])))
        else:
            merged.extend(run)
    return merged


def run(inbox: Connection, outbox: Connection) -> None:
    config, models = pickle.loads(inbox.recv_bytes())
    logging.config.dictConfig(logging_config(config.log_level))
    state = MonitorState(config, os.getpid())
    state.serve(models)
    state.publish_if_due(force=True)
    failures = _Failures()
    cpu = time.process_time()
    open_input = True
    while open_input:
        messages, open_input = gather(inbox, config.queue_records)
        replies = handle(state, messages, failures)
        try:
            state.flush()
            state.publish_if_due()
        except Exception:
            failures.log("writing")
        now = time.process_time()
        state.counts[CPU] += now - cpu
        cpu = now
        if replies or any(key != CPU for key in state.counts) or state.counts[CPU] >= 0.01:
            try:
                outbox.send_bytes(pickle.dumps((dict(state.counts), replies), protocol=5))
            except OSError:  # the worker is gone
                break
            state.counts.clear()
    state.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("inbox", type=int, help="file descriptor the worker writes to")
    parser.add_argument("outbox", type=int, help="file descriptor the worker reads")
    args = parser.parse_args(argv)
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    os.nice(NICE)
    run(Connection(args.inbox, writable=False), Connection(args.outbox, readable=False))


if __name__ == "__main__":
    main()
