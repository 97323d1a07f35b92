"""What each worker of `tabml-serve --workers N` shares so /metrics and /feedback see them all.

uvicorn workers are separate processes; whichever one answers a scrape or a label must still
report the whole instance. Each worker keeps its windows in memory and, in the directory the
workers share (PROMETHEUS_MULTIPROC_DIR), publishes about once a second a small JSON snapshot
(`tabml-monitor-<pid>.json`: drift counts and realized pairs per model version) next to its
feedback index (`tabml-monitor-<pid>.ring`, memory-mapped, see `prediction_index`). Readers add
the drift counts and concatenate the realized pairs: one window per instance, not per worker.
Snapshots of processes that no longer exist are ignored and removed.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tabml.atomic import write_text_atomic
from tabml.serving.prediction_log import process_alive

PREFIX = "tabml-monitor-"


def state_path(directory: Path, pid: int) -> Path:
    return Path(directory) / f"{PREFIX}{pid}.json"


def ring_path(directory: Path, pid: int) -> Path:
    return Path(directory) / f"{PREFIX}{pid}.ring"


@dataclass(frozen=True)
class VersionInfo:
    """What a worker that never served a version needs to count labels for it."""

    id: str
    threshold: float
    positive: str  # the label value that counts as 1
    realized_window_size: int
    min_realized_labels: int


@dataclass(frozen=True)
class DriftCounts:
    profile_md5: str
    records: int
    counts: np.ndarray


@dataclass(frozen=True)
class WorkerState:
    pid: int
    #: the model version of each version slot of the worker's feedback index
    versions: list[VersionInfo]
    drift: dict[str, DriftCounts] = field(default_factory=dict)
    #: model version → (scores, 0/1 labels) of the worker's realized window
    realized: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    def to_json(self) -> str:
        document: dict[str, Any] = {
            "pid": self.pid,
            "versions": [vars(v) for v in self.versions],
            "drift": {
                version: {
                    "profile_md5": d.profile_md5,
                    "records": d.records,
                    "counts": d.counts.tolist(),
                }
                for version, d in self.drift.items()
            },
            "realized": {
                version: {"scores": scores.tolist(), "labels": labels.tolist()}
                for version, (scores, labels) in self.realized.items()
            },
        }
        return json.dumps(document)

    @classmethod
    def from_json(cls, text: str) -> WorkerState:
        raw = json.loads(text)
        return cls(
            pid=int(raw["pid"]),
            versions=[VersionInfo(**v) for v in raw["versions"]],
            drift={
                version: DriftCounts(
                    str(d["profile_md5"]), int(d["records"]), np.asarray(d["counts"], np.int64)
                )
                for version, d in raw["drift"].items()
            },
            realized={
                version: (
                    np.asarray(r["scores"], dtype=np.float64),
                    np.asarray(r["labels"], dtype=np.int8),
                )
                for version, r in raw["realized"].items()
            },
        )


def publish(directory: Path, state: WorkerState) -> None:
    write_text_atomic(state_path(directory, state.pid), state.to_json())


def remove(directory: Path, pid: int) -> None:
    for path in (state_path(directory, pid), ring_path(directory, pid)):
        with contextlib.suppress(OSError):
            path.unlink()


def other_workers(directory: Path, own_pid: int) -> list[WorkerState]:
    """The snapshots of the other live workers (an unreadable one is skipped, not fatal)."""
    states = []
    for path in sorted(Path(directory).glob(f"{PREFIX}*.json")):
        pid_text = path.stem.removeprefix(PREFIX)
        if not pid_text.isdigit() or int(pid_text) == own_pid:
            continue
        if not process_alive(int(pid_text)):
            remove(directory, int(pid_text))
            continue
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            states.append(WorkerState.from_json(path.read_text()))
    return states
