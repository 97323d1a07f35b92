"""Why retrain now: each trigger says whether it fired and the evidence it judged.

Four reasons, thresholds from conf/loop/ and conf/monitor/ (the same numbers the service's
alerts use): enough new labelled data, drift of a feature or of the scores over the recent
window, realized accuracy below the floor, and a model older than the maximum age. The drift
and accuracy figures come from `tabml.monitoring`, so they are the numbers `/metrics` shows.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from tabml.config import LoopConfig, MonitorConfig
from tabml.monitoring import DriftWindow, RealizedWindow, ReferenceProfile
from tabml.monitoring.events import FEEDBACK, PREDICTION

NEW_LABELS = "new_labels"
DRIFT = "drift"
ACCURACY = "accuracy"
MODEL_AGE = "model_age"


@dataclass(frozen=True)
class Trigger:
    name: str
    fired: bool
    evidence: str


def new_labels_trigger(new_rows: int, config: LoopConfig) -> Trigger:
    return Trigger(
        NEW_LABELS,
        new_rows >= config.min_new_labels,
        f"{new_rows} labelled prediction(s) not yet in a data version "
        f"(retrain at {config.min_new_labels})",
    )


def drift_trigger(
    events: Iterable[dict[str, Any]],
    version: str,
    profile: ReferenceProfile,
    monitor: MonitorConfig,
) -> Trigger:
    """PSI of the last `window_size` predictions of `version` against the reference profile."""
    window = DriftWindow(profile, monitor.window_size, monitor.epsilon)
    records, scores = [], []
    for event in events:
        if event["type"] == PREDICTION and event["model_version"] == version:
            records.append(event["record"])
            scores.append(event["probability"])
    records, scores = records[-monitor.window_size :], scores[-monitor.window_size :]
    if records:
        window.add(records, scores)
    if window.records < monitor.min_window_records:
        return Trigger(
            DRIFT,
            False,
            f"{window.records} recent prediction(s) of {version}: fewer than "
            f"{monitor.min_window_records}, drift not judged",
        )
    psi = {**window.feature_psi(), "(score)": window.prediction_psi()}
    drifted = {name: value for name, value in psi.items() if value >= monitor.psi_alert}
    worst = max(psi, key=lambda name: psi[name])
    shown = drifted or {worst: psi[worst]}
    described = ", ".join(f"{name} PSI {value:.3f}" for name, value in sorted(shown.items()))
    return Trigger(
        DRIFT,
        bool(drifted),
        f"last {window.records} predictions of {version}: {described} "
        f"(alert at {monitor.psi_alert})",
    )


def accuracy_trigger(
    events: Iterable[dict[str, Any]],
    version: str,
    threshold: float,
    positive: str,
    monitor: MonitorConfig,
) -> Trigger:
    """Realized accuracy of `version` over its last `realized_window_size` labelled predictions
    (`positive`: the contract's positive label; a score at or above `threshold` predicts it)."""
    scores: dict[tuple[str, int], float] = {}
    labelled: list[tuple[float, str]] = []
    seen: set[tuple[str, int]] = set()
    for event in events:
        key = (str(event["request_id"]), int(event.get("index", 0)))
        if event["type"] == PREDICTION and event["model_version"] == version:
            scores[key] = float(event["probability"])
        elif event["type"] == FEEDBACK and key in scores and key not in seen:
            seen.add(key)
            labelled.append((scores[key], event["label"]))
    window = RealizedWindow(monitor.realized_window_size, threshold)
    if labelled:
        window.add([s for s, _ in labelled], [int(label == positive) for _, label in labelled])
    value = window.accuracy()
    if window.count < monitor.min_realized_labels or value is None:
        return Trigger(
            ACCURACY,
            False,
            f"{window.count} labelled prediction(s) of {version}: fewer than "
            f"{monitor.min_realized_labels}, accuracy not judged",
        )
    return Trigger(
        ACCURACY,
        value < monitor.accuracy_floor,
        f"realized accuracy of {version} {value:.4f} over its last {window.count} labelled "
        f"predictions (floor {monitor.accuracy_floor})",
    )


def age_trigger(age_days: float, config: LoopConfig) -> Trigger:
    if math.isnan(age_days):
        return Trigger(MODEL_AGE, False, "model age unknown (no commit of dvc.lock)")
    return Trigger(
        MODEL_AGE,
        age_days > config.max_model_age_days,
        f"model is {age_days:.1f} day(s) old (retrain after {config.max_model_age_days})",
    )
