"""The batch monitoring report: a whole prediction log against the reference profile.

The service's `/metrics` shows sliding windows; this reads every closed segment of a log (a
local one or one shipped from production), joins the feedback labels and computes drift and
realized metrics per model version and per UTC day. It bins with the service's
`FeatureBinner` and scores with the same `population_stability_index`, `accuracy` and `roc_auc`,
so the report and the gauges cannot disagree. Events are streamed: a prediction is kept as one
small integer per feature plus its score, time and key, never as a dict, so a million logged
records fit in a few hundred MiB. Pure numpy and the standard library, like the rest of
`tabml.monitoring`.

One module of about 430 lines: the streaming scan and the summaries it feeds share the
compact per-event layout (`_Scan`); the HTML is `report_html`.
"""

from __future__ import annotations

import json
import math
from array import array
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tabml.errors import TabmlError
from tabml.monitoring.bins import Bins, NumericBins
from tabml.monitoring.drift import FeatureBinner, population_stability_index, verdict
from tabml.monitoring.events import FEEDBACK, PREDICTION, closed_segments
from tabml.monitoring.profile import Histogram, ReferenceProfile
from tabml.monitoring.realized import accuracy, roc_auc

if TYPE_CHECKING:
    from tabml.config import MonitorConfig

FORMAT = 1
SECONDS_PER_DAY = 86_400
# Predictions binned per numpy conversion: big enough to amortise it, small enough to stay tiny.
_CHUNK = 65_536

Key = tuple[str, int]


class LogError(TabmlError):
    """The log cannot be read: no directory, no closed segment, or a bad line (file:line)."""


def _segments(log_dir: Path) -> list[Path]:
    if not log_dir.is_dir():
        raise LogError(f"log directory {log_dir} does not exist")
    segments = closed_segments(log_dir)
    if not segments:
        raise LogError(
            f"{log_dir} holds no closed segment (*.jsonl); open ones (*.jsonl.open) are "
            "still being written and are never read"
        )
    return segments


def _events(segments: Sequence[Path]) -> Iterator[tuple[str, dict[str, Any]]]:
    """`(file:line, event)` for every non-blank line of the segments, in order.

    Like `events.read_events`, but each event carries its position, so a corrupt line is
    reported as the exact file and line instead of a bare JSON error.
    """
    for segment in segments:
        with open(segment, "rb") as lines:
            for line_no, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                where = f"{segment}:{line_no}"
                try:
                    event = json.loads(line)
                except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                    raise LogError(f"{where}: not a JSON event ({exc})") from None
                if not isinstance(event, dict):
                    raise LogError(f"{where}: an event must be a JSON object")
                yield where, event


# The fields the report reads, and the JSON types they must have (json.loads makes exact types,
# so `type(v) is int` is the check, and it keeps true/false out of the numbers).
_NUMBER = frozenset({int, float})
_PREDICTION_FIELDS: dict[str, frozenset[type]] = {
    "request_id": frozenset({str}),
    "index": frozenset({int}),
    "model_name": frozenset({str}),
    "model_version": frozenset({str}),
    "ts": _NUMBER,
    "probability": _NUMBER,
    "record": frozenset({dict}),
}
_FEEDBACK_FIELDS = {name: _PREDICTION_FIELDS[name] for name in ("request_id", "index")} | {
    "label": frozenset({str})
}


def _reject(where: str, event: Mapping[str, Any], fields: Mapping[str, frozenset[type]]) -> None:
    """Raise for the first field of `event` that is missing or of the wrong type."""
    for name, kinds in fields.items():
        if type(event.get(name)) not in kinds:
            raise LogError(f"{where}: {event['type']} event field {name!r} is {event.get(name)!r}")


@dataclass(frozen=True)
class ScannedLog:
    """A log reduced to arrays: row i is the i-th prediction event."""

    segments: int
    bins: np.ndarray  # (rows, features + 1): feature bins in profile order, then the score bin
    scores: np.ndarray
    times: np.ndarray
    groups: np.ndarray  # index into `models`
    models: list[tuple[str, str]]  # (model_name, model_version)
    labelled_rows: np.ndarray  # rows whose feedback came back (each once)
    labels: np.ndarray  # their 0/1 labels
    feedback_events: int
    duplicate_feedback: int
    unmatched_feedback: int
    duplicate_predictions: int


class _Scan:
    """Accumulates a log event by event; `finish` joins the feedback with the predictions."""

    def __init__(self, profile: ReferenceProfile, label_codes: Mapping[str, int]) -> None:
        self._binner = FeatureBinner(profile)
        self._codes = dict(label_codes)
        sizes = [h.bins.size for h in (*profile.features.values(), profile.score)]
        self._dtype = np.min_scalar_type(max(sizes) - 1)
        self._width = len(sizes)
        self._chunk: list[list[int]] = []
        self._bins: list[np.ndarray] = []
        self._scores = array("d")
        self._times = array("d")
        self._groups = array("l")
        self._models: dict[tuple[str, str], int] = {}
        self._rows: dict[Key, int] = {}
        self._feedback: dict[Key, int] = {}
        self.feedback_events = 0
        self.duplicate_feedback = 0
        self.duplicate_predictions = 0

    def add(self, where: str, event: Mapping[str, Any]) -> None:
        kind = event.get("type")
        if kind == PREDICTION:
            self._prediction(where, event)
        elif kind == FEEDBACK:
            self._feedback_event(where, event)
        # other event types are not the report's business (as for events.read_events)

    def _prediction(self, where: str, event: Mapping[str, Any]) -> None:
        # One inline type check: this runs once per logged record.
        get: Callable[[str], Any] = event.get
        request_id, index, model_name = get("request_id"), get("index"), get("model_name")
        model_version, ts, score, record = (
            get("model_version"),
            get("ts"),
            get("probability"),
            get("record"),
        )
        if not (
            type(request_id) is str
            and type(index) is int
            and type(model_name) is str
            and type(model_version) is str
            and type(ts) in _NUMBER
            and type(score) in _NUMBER
            and type(record) is dict
        ):
            _reject(where, event, _PREDICTION_FIELDS)
        if not math.isfinite(ts):
            raise LogError(f"{where}: prediction ts {ts!r} is not a time")
        if not 0.0 <= score <= 1.0:
            raise LogError(f"{where}: prediction probability {score!r} is outside [0, 1]")
        try:
            row = self._binner.bin_record(record)
        except TypeError as exc:
            raise LogError(f"{where}: record values of the wrong type ({exc})") from None
        row.append(self._binner.bin_score(score))
        key = (request_id, index)
        if key in self._rows:
            self.duplicate_predictions += 1  # still a scored record for drift; joins once
        else:
            self._rows[key] = len(self._scores)
        self._chunk.append(row)
        if len(self._chunk) == _CHUNK:
            self._flush()
        self._scores.append(score)
        self._times.append(ts)
        self._groups.append(self._models.setdefault((model_name, model_version), len(self._models)))

    def _feedback_event(self, where: str, event: Mapping[str, Any]) -> None:
        _reject(where, event, _FEEDBACK_FIELDS)
        label = event["label"]
        if label not in self._codes:
            raise LogError(f"{where}: feedback label {label!r} is not one of {list(self._codes)}")
        self.feedback_events += 1
        key = (event["request_id"], event["index"])
        if key in self._feedback:
            self.duplicate_feedback += 1  # the first label counts, the repeat never does
        else:
            self._feedback[key] = self._codes[label]

    def _flush(self) -> None:
        if self._chunk:
            self._bins.append(np.asarray(self._chunk, dtype=self._dtype))
            self._chunk = []

    def finish(self, segments: int) -> ScannedLog:
        self._flush()
        labelled = [(self._rows.get(key), label) for key, label in self._feedback.items()]
        matched = [(row, label) for row, label in labelled if row is not None]
        rows = np.fromiter((r for r, _ in matched), dtype=np.int64, count=len(matched))
        return ScannedLog(
            segments=segments,
            bins=(
                np.concatenate(self._bins)
                if self._bins
                else np.zeros((0, self._width), dtype=self._dtype)
            ),
            scores=np.frombuffer(self._scores, dtype=np.float64),
            times=np.frombuffer(self._times, dtype=np.float64),
            groups=np.frombuffer(self._groups, dtype=np.int_),
            models=list(self._models),
            labelled_rows=rows,
            labels=np.fromiter((y for _, y in matched), dtype=np.int8, count=len(matched)),
            feedback_events=self.feedback_events,
            duplicate_feedback=self.duplicate_feedback,
            unmatched_feedback=len(labelled) - len(matched),
            duplicate_predictions=self.duplicate_predictions,
        )


def scan_log(
    log_dir: Path, profile: ReferenceProfile, label_codes: Mapping[str, int]
) -> ScannedLog:
    """Read every closed segment once; `label_codes` maps a feedback label to 0 or 1."""
    segments = _segments(Path(log_dir))
    scan = _Scan(profile, label_codes)
    for where, event in _events(segments):
        scan.add(where, event)
    return scan.finish(len(segments))


def bin_labels(bins: Bins) -> list[str]:
    """Human-readable names of a histogram's bins, in bin order."""
    if isinstance(bins, NumericBins):
        edges = [f"{e:g}" for e in bins.edges]
        if not edges:
            return ["any value", "missing"]
        inner = [f"({lo}, {hi}]" for lo, hi in pairwise(edges)]
        return [f"<= {edges[0]}", *inner, f"> {edges[-1]}", "missing"]
    return [*bins.levels, "other", "missing"]


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def _time_range(times: np.ndarray) -> dict[str, str] | None:
    return {"first": _iso(times.min()), "last": _iso(times.max())} if times.size else None


def _psi(histogram: Histogram, counts: np.ndarray, config: MonitorConfig) -> dict[str, Any]:
    """PSI and verdict of `counts` against the reference; both None when there are no counts."""
    psi = population_stability_index(histogram.fractions, counts, config.epsilon)
    if math.isnan(psi):
        return {"psi": None, "verdict": None}
    return {"psi": psi, "verdict": verdict(psi, config)}


def _drift(
    name: str, histogram: Histogram, column: np.ndarray, config: MonitorConfig
) -> dict[str, Any]:
    counts = np.bincount(column, minlength=histogram.bins.size)
    return {
        "name": name,
        **_psi(histogram, counts, config),
        "bins": [
            {"label": label, "reference": fraction, "current": int(count)}
            for label, fraction, count in zip(
                bin_labels(histogram.bins), histogram.fractions, counts.tolist(), strict=True
            )
        ],
    }


def _drift_by_day(
    histograms: Sequence[Histogram],
    bins: np.ndarray,
    day_of_row: np.ndarray,
    days: int,
    config: MonitorConfig,
) -> list[list[dict[str, Any]]]:
    """Per day, each histogram's PSI entry: a shift that began yesterday is diluted in the total."""
    out: list[list[dict[str, Any]]] = [[] for _ in range(days)]
    for column, histogram in enumerate(histograms):
        size = histogram.bins.size
        counts = np.bincount(day_of_row * size + bins[:, column], minlength=days * size)
        for day, day_counts in enumerate(counts.reshape(days, size)):
            out[day].append(_psi(histogram, day_counts, config))
    return out


def _realized(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, Any]:
    return {
        "labelled": int(labels.size),
        "accuracy": accuracy(scores, labels, threshold),
        "roc_auc": roc_auc(scores, labels),
    }


def _model_summary(
    scan: ScannedLog,
    group: int,
    profile: ReferenceProfile,
    config: MonitorConfig,
    threshold: float,
) -> dict[str, Any]:
    name, version = scan.models[group]
    mine = scan.groups == group
    bins = scan.bins[mine]
    times = scan.times[mine]
    in_group = scan.groups[scan.labelled_rows] == group
    rows, labels = scan.labelled_rows[in_group], scan.labels[in_group]
    scores, label_days = scan.scores[rows], scan.times[rows] // SECONDS_PER_DAY
    days = times // SECONDS_PER_DAY
    unique_days = np.unique(days)
    drift_by_day = _drift_by_day(
        [*profile.features.values(), profile.score],
        bins,
        np.searchsorted(unique_days, days),
        unique_days.size,
        config,
    )
    by_day = []
    for day, drift in zip(unique_days, drift_by_day, strict=True):
        on_day = label_days == day
        by_day.append(
            {
                "day": datetime.fromtimestamp(day * SECONDS_PER_DAY, UTC).date().isoformat(),
                "records": int(np.count_nonzero(days == day)),
                **_realized(scores[on_day], labels[on_day], threshold),
                "drift": {
                    "features": dict(zip(profile.features, drift[:-1], strict=True)),
                    "score": drift[-1],
                },
            }
        )
    realized = _realized(scores, labels, threshold)
    notes = []
    if bins.shape[0] < config.min_window_records:
        notes.append(
            f"{bins.shape[0]} records, fewer than monitor.min_window_records "
            f"({config.min_window_records}): the PSIs are mostly sampling noise"
        )
    if realized["labelled"] < config.min_realized_labels:
        notes.append(
            f"{realized['labelled']} labelled records, fewer than monitor.min_realized_labels "
            f"({config.min_realized_labels}): realized metrics are not yet reliable"
        )
    elif realized["accuracy"] is not None and realized["accuracy"] < config.accuracy_floor:
        notes.append(
            f"realized accuracy {realized['accuracy']:.4f} is below monitor.accuracy_floor "
            f"({config.accuracy_floor})"
        )
    return {
        "model_name": name,
        "model_version": version,
        "records": int(bins.shape[0]),
        "labelled": realized["labelled"],
        "time_range": _time_range(times),
        "features": [
            _drift(feature, histogram, bins[:, i], config)
            for i, (feature, histogram) in enumerate(profile.features.items())
        ],
        "score": _drift("score", profile.score, bins[:, -1], config),
        "realized": realized,
        "by_day": by_day,
        "notes": notes,
    }


def _version_order(name: str, version: str) -> tuple[str, int, str]:
    """Registry versions are numbers in strings: 10 comes after 9."""
    return (name, int(version), "") if version.isdigit() else (name, -1, version)


def summarize(
    scan: ScannedLog,
    profile: ReferenceProfile,
    config: MonitorConfig,
    threshold: float,
    log_dir: Path,
) -> dict[str, Any]:
    """The report as a JSON-ready dict (no NaN: a value that cannot be computed is None)."""
    order = sorted(range(len(scan.models)), key=lambda g: _version_order(*scan.models[g]))
    return {
        "format": FORMAT,
        "log": {
            "dir": str(log_dir),
            "segments": scan.segments,
            "predictions": int(scan.scores.size),
        },
        "no_predictions": scan.scores.size == 0,
        "time_range": _time_range(scan.times),
        "reference_rows": profile.rows,
        "thresholds": {
            "psi_warn": config.psi_warn,
            "psi_alert": config.psi_alert,
            "decision_threshold": threshold,
            "accuracy_floor": config.accuracy_floor,
            "min_window_records": config.min_window_records,
            "min_realized_labels": config.min_realized_labels,
        },
        "feedback": {
            "events": scan.feedback_events,
            "matched": int(scan.labelled_rows.size),
            "duplicate": scan.duplicate_feedback,
            "unmatched": scan.unmatched_feedback,
        },
        "duplicate_predictions": scan.duplicate_predictions,
        "models": [_model_summary(scan, g, profile, config, threshold) for g in order],
    }
