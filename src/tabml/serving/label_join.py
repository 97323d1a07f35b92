"""Joining /feedback labels to the predictions they label, across the workers of an instance.

A label names its prediction by (request id, index). The prediction's probability and version
are in the feedback index (`prediction_index.PredictionRing`) of the worker that served it:
this process's own ring, or a peer's memory-mapped one in the workers' shared directory
(`worker_state`). `PeerRings` walks them, own first; `problems` says, per label, why it cannot
be recorded (unknown prediction, already labelled, labelled twice in the request), naming its
position in the request as the 4xx error items do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from tabml.serving import worker_state
from tabml.serving.prediction_index import PredictionRing
from tabml.serving.worker_state import VersionInfo

UNKNOWN = "unknown_prediction"
DUPLICATE = "duplicate_feedback"


@dataclass(frozen=True, slots=True)
class FeedbackLabel:
    request_id: str
    index: int
    label: str


class Found(NamedTuple):
    """A label's prediction: where it is indexed, its probability and version."""

    ring: PredictionRing
    slot: int
    probability: float
    version: VersionInfo
    labelled: bool


class PeerRings:
    """This process's feedback index and those of its peers (attached once, dropped when the
    peer is gone)."""

    def __init__(self, own: PredictionRing, shared_dir: Path | None, pid: int) -> None:
        self.own = own
        self.shared_dir = shared_dir
        self.pid = pid
        self._peers: dict[int, PredictionRing] = {}

    def rings(self, own_versions: list[VersionInfo]) -> list[tuple[PredictionRing, list[Any]]]:
        """Every ring with the versions its slots refer to, this process's first."""
        rings: list[tuple[PredictionRing, list[Any]]] = [(self.own, own_versions)]
        if self.shared_dir is None:
            return rings
        attached, self._peers = self._peers, {}
        for state in worker_state.other_workers(self.shared_dir, self.pid):
            ring = attached.get(state.pid)
            if ring is None:
                try:
                    ring = PredictionRing.attach(worker_state.ring_path(self.shared_dir, state.pid))
                except (OSError, ValueError):  # the worker is starting or stopping
                    continue
            self._peers[state.pid] = ring
            rings.append((ring, state.versions))
        return rings

    def find(self, keys: np.ndarray, own_versions: list[VersionInfo]) -> list[Found | None]:
        """The prediction of each key, or None where no ring holds it."""
        found: list[Found | None] = [None] * len(keys)
        for ring, versions in self.rings(own_versions):
            missing = [i for i, hit in enumerate(found) if hit is None]
            if not missing:
                break
            slots, entries = ring.find(keys[missing])
            for i, slot, entry in zip(missing, slots.tolist(), entries, strict=True):
                if slot >= 0 and entry["version"] < len(versions):
                    found[i] = Found(
                        ring,
                        slot,
                        float(entry["probability"]),
                        versions[entry["version"]],
                        bool(entry["labelled"]),
                    )
        return found


def problems(
    labels: Sequence[FeedbackLabel], keys: np.ndarray, found: Sequence[Found | None]
) -> list[dict[str, Any]]:
    """Why items cannot be recorded, each naming its position in the request."""
    result, seen = [], set()
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
        result.append(
            {
                "index": position,
                "field": "request_id",
                "type": kind,
                "message": message,
                "input": label.request_id,
            }
        )
    return result
