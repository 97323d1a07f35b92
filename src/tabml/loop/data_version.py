"""Label feedback → a new data version: logged inputs joined with their labels, as a batch file.

The service logs every validated input (`prediction` events) and `/feedback` appends the labels
that came back (`feedback` events). Joined on (request_id, index), each labelled record becomes a
raw training line in `data/<batches_dir>/feedback-<time>.data`, the raw format of the training
file, so the pipeline's validate stage checks it with the same contract as everything else.
Rows that break the contract are reported and left out, never fixed.

Exactly once: next to each batch, `<batch>.keys.json` lists the (request_id, index) keys it
holds and those it rejected (with the reason); feedback already in any batch is never ingested
or reported again. Both files are inside `data/`,
so they belong to the data version `data.dvc` pins.

The holdout: batches only ever extend the training split; the test file is never written, so
the gate keeps judging every model on the same fixed rows.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tabml.atomic import write_text_atomic
from tabml.contract import DataContract
from tabml.monitoring.events import FEEDBACK, PREDICTION, read_events

Key = tuple[str, int]
KEYS_SUFFIX = ".keys.json"


@dataclass
class LabelledFeedback:
    """Logged inputs with their returned labels, and what could not be joined."""

    rows: dict[Key, tuple[dict[str, Any], str]] = field(default_factory=dict)
    unmatched: int = 0
    duplicates: int = 0
    conflicting: int = 0


def join_feedback(events: Iterable[dict[str, Any]]) -> LabelledFeedback:
    """(request_id, index) → (record, label) for every prediction whose label came back.

    Feedback for an unknown prediction is counted as unmatched; a repeated label as a duplicate;
    two different labels for one prediction as conflicting, and that prediction is left out.
    """
    predictions: dict[Key, dict[str, Any]] = {}
    labels: dict[Key, str] = {}
    conflicts: set[Key] = set()
    result = LabelledFeedback()
    for event in events:
        key = (str(event["request_id"]), int(event.get("index", 0)))
        if event["type"] == PREDICTION:
            predictions.setdefault(key, event["record"])
        elif key in labels:
            if labels[key] == event["label"]:
                result.duplicates += 1
            else:
                conflicts.add(key)
        else:
            labels[key] = event["label"]
    for key, label in labels.items():
        if key in conflicts:
            result.conflicting += 1
        elif key in predictions:
            result.rows[key] = (predictions[key], label)
        else:
            result.unmatched += 1
    return result


def ingested_keys(batches: Path) -> set[Key]:
    """Every (request_id, index) already in a batch of this data directory."""
    keys: set[Key] = set()
    for manifest in sorted(batches.glob(f"*{KEYS_SUFFIX}")):
        held = json.loads(manifest.read_text())
        for rid, idx, *_ in [*held["rows"], *held["rejected"]]:
            keys.add((str(rid), int(idx)))
    return keys


def new_labelled_rows(
    log_dir: Path, batches: Path, events: Iterable[dict[str, Any]] | None = None
) -> tuple[LabelledFeedback, set[Key]]:
    """Joined feedback from the log (or from its `events`, when the caller has read them),
    minus what earlier batches hold; and those held keys."""
    joined = join_feedback(
        read_events(log_dir, (PREDICTION, FEEDBACK)) if events is None else events
    )
    held = ingested_keys(batches)
    joined.rows = {k: v for k, v in joined.rows.items() if k not in held}
    return joined, held


def _raw_value(value: Any, contract: DataContract) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return contract.missing_marker
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def raw_line(record: dict[str, Any], label: str, contract: DataContract) -> str:
    """A training line in the raw format; the contract's ignored columns get the missing marker
    (a served request never carries them)."""
    values = {name: _raw_value(record.get(name), contract) for name in contract.feature_names}
    raw = [values.get(name, contract.missing_marker) for name in contract.raw_names[:-1]]
    return contract.separator.join([*raw, label])


@dataclass(frozen=True)
class Batch:
    path: Path
    rows: int
    rejected: list[str]


def write_batch(
    rows: dict[Key, tuple[dict[str, Any], str]],
    contract: DataContract,
    batches: Path,
    now: datetime | None = None,
) -> Batch | None:
    """Validate the rows with the contract, then write the batch and its key manifest.

    Returns None when there is nothing to write. The manifest is written after the data file,
    so a crash between the two leaves a batch whose rows the next run ingests again under a new
    name (the orphan file is replaced: see `remove_orphans`) rather than keys without rows.
    """
    import pandas as pd

    from tabml.validation import keep_valid_rows

    known = set(contract.feature_names)
    unknown = {
        key: f"feedback batch: row {key}: unknown column(s) {sorted(set(record) - known)}"
        for key, (record, _) in rows.items()
        if set(record) - known
    }
    keys = sorted(key for key in rows if key not in unknown)
    frame = pd.DataFrame(
        [
            [
                None if (v := rows[k][0].get(n)) is None else _raw_value(v, contract)
                for n in contract.feature_names
            ]
            + [rows[k][1]]
            for k in keys
        ],
        columns=contract.labelled_names,
        index=pd.RangeIndex(1, len(keys) + 1, name="line"),
        dtype=object,
    ).replace({contract.missing_marker: None})
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%S%fZ")
    path = batches / f"feedback-{stamp}.data"
    valid, problems = keep_valid_rows(frame, contract, f"feedback batch {path.name}")
    if not rows:
        return None
    kept = [keys[line - 1] for line in valid.index]
    rejected = [[*keys[line - 1], problem] for line, problem in problems.items()]
    rejected += [[*key, problem] for key, problem in sorted(unknown.items())]
    batches.mkdir(parents=True, exist_ok=True)
    remove_orphans(batches)
    if kept:
        write_text_atomic(path, "".join(raw_line(*rows[key], contract) + "\n" for key in kept))
    manifest = {"rows": [list(key) for key in kept], "rejected": rejected}
    write_text_atomic(path.with_suffix(KEYS_SUFFIX), json.dumps(manifest, indent=0) + "\n")
    return Batch(path, len(kept), [problem for *_, problem in rejected])


def remove_orphans(batches: Path) -> list[Path]:
    """Batch files without a key manifest (a crash between the two writes): their rows were
    never recorded as ingested, so they are deleted and come back in the next batch."""
    orphans = [p for p in batches.glob("*.data") if not p.with_suffix(KEYS_SUFFIX).exists()]
    for orphan in orphans:
        orphan.unlink()
    return orphans
