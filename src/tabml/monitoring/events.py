"""The prediction log's format: what the service writes and the batch tools read.

A log directory holds segment files of JSON lines, one event per line. The service writes each
segment as `<name>.jsonl.open` and renames it to `<name>.jsonl` when it closes it (rotation or
shutdown), so readers take only closed segments and never see half a line. Segment names
(`segment_name`) start with the writer's UTC start time, host and pid, so several workers (or
replicas sharing a volume) never write the same file and names sort by time.

Two event types share the log:

* `prediction` (one per scored record; a batch of N gives N events with one request id):
  `{"type": "prediction", "ts": <unix seconds>, "request_id": str, "index": int,
  "model_name": str, "model_version": str, "record": {<validated raw input>},
  "probability": float, "label": str, "latency_ms": float}`. `model_version` is the version
  that answered (a bundle's version id, e.g. `v3`). In shadow routing the challenger's score of
  the same record is a second event with the same `request_id` and `index`, its own
  `model_version`, `"shadow": true` (absent on answered predictions) and as `latency_ms` the
  challenger's scoring time (the client never waited for it).
* `feedback` (a label that came back for a logged prediction):
  `{"type": "feedback", "ts": <unix seconds>, "request_id": str, "index": int, "label": str}`
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SEGMENT_SUFFIX = ".jsonl"
OPEN_SUFFIX = ".jsonl.open"
PREDICTION = "prediction"
FEEDBACK = "feedback"

_SEGMENT_NAME = re.compile(
    r"(?P<started>\d{8}T\d{6}Z)-(?P<host>.+)-(?P<pid>\d+)-(?P<sequence>\d{6})"
)


def safe_host(host: str) -> str:
    """The host as it appears in segment names: letters, digits, dots and dashes only."""
    return re.sub(r"[^A-Za-z0-9.-]", "_", host) or "host"


def segment_name(started: float, host: str, pid: int, sequence: int) -> str:
    """`<UTC start>-<host>-<pid>-<sequence>` (no suffix), e.g. `20261201T193319Z-web-1-17-000003`.

    The sequence tells apart the segments one writer starts within the same second.
    """
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(started))
    return f"{stamp}-{safe_host(host)}-{pid}-{sequence:06d}"


def parse_segment_name(name: str) -> tuple[str, int] | None:
    """(host, pid) of a segment name made by `segment_name` (suffix removed), else None."""
    found = _SEGMENT_NAME.fullmatch(name)
    return (found["host"], int(found["pid"])) if found else None


def closed_segments(log_dir: Path) -> list[Path]:
    """Closed segment files under `log_dir` (any depth), oldest first."""
    return sorted(Path(log_dir).rglob(f"*{SEGMENT_SUFFIX}"), key=lambda p: (p.name, str(p)))


def read_events(
    log_dir: Path, kinds: tuple[str, ...] = (PREDICTION, FEEDBACK)
) -> Iterator[dict[str, Any]]:
    """Every event of the given types from the closed segments, in segment order."""
    wanted = set(kinds)
    for segment in closed_segments(log_dir):
        with open(segment, encoding="utf-8") as lines:
            for line in lines:
                if line.strip():
                    event = json.loads(line)
                    if event.get("type") in wanted:
                        yield event
