"""Each retraining trigger fires on its own evidence, and none on un-drifted traffic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tabml.config import load_params
from tabml.loop import triggers
from tabml.monitoring import ReferenceProfile, build_profile

REPO_ROOT = Path(__file__).resolve().parents[2]
PARAMS = load_params(REPO_ROOT / "params.yaml")
CONTRACT = PARAMS.dataset.contract()
MONITOR = PARAMS.monitor.model_copy(update={"min_window_records": 200, "min_realized_labels": 50})
RNG = np.random.default_rng(7)


def records(n: int, shift_age: int = 0) -> list[dict]:
    """Adult-shaped records: every feature drawn from one fixed distribution (age shiftable)."""
    rows = []
    for _ in range(n):
        row: dict = {}
        for spec in CONTRACT.columns:
            if spec.categories is not None:
                row[spec.name] = spec.categories[int(RNG.integers(0, min(3, len(spec.categories))))]
            elif spec.name == "age":
                row[spec.name] = int(min(100, RNG.integers(20, 60) + shift_age))
            else:
                low = spec.min or 0
                row[spec.name] = int(RNG.integers(low, low + 10))
        rows.append(row)
    return rows


@pytest.fixture(scope="module")
def profile() -> ReferenceProfile:
    reference = records(4000)
    columns = {name: [r[name] for r in reference] for name in CONTRACT.feature_names}
    return build_profile(columns, CONTRACT, RNG.uniform(size=4000), MONITOR)


def predictions(rows: list[dict], version: str = "v1") -> list[dict]:
    return [
        {
            "type": "prediction",
            "request_id": f"r{i}",
            "index": 0,
            "model_version": version,
            "record": row,
            "probability": float(RNG.uniform()),
        }
        for i, row in enumerate(rows)
    ]


def test_no_drift_on_traffic_like_the_reference(profile: ReferenceProfile) -> None:
    fired = triggers.drift_trigger(predictions(records(1000)), "v1", profile, MONITOR)
    assert not fired.fired and "last 1000 predictions of v1" in fired.evidence


def test_drift_fires_naming_the_shifted_feature(profile: ReferenceProfile) -> None:
    fired = triggers.drift_trigger(predictions(records(1000, shift_age=30)), "v1", profile, MONITOR)
    assert fired.fired and "age PSI" in fired.evidence
    assert "education_num" not in fired.evidence  # only what drifted is named


def test_drift_needs_enough_records_of_the_judged_version(profile: ReferenceProfile) -> None:
    other = predictions(records(1000, shift_age=30), version="v2")
    few = triggers.drift_trigger(other, "v1", profile, MONITOR)
    assert not few.fired and "0 recent prediction(s) of v1" in few.evidence


def labelled(scores: list[float], labels: list[str]) -> list[dict]:
    events = []
    for i, (score, label) in enumerate(zip(scores, labels, strict=True)):
        key = {"request_id": f"q{i}", "index": 0}
        events.append(
            {"type": "prediction", **key, "model_version": "v1", "probability": score, "record": {}}
        )
        events.append({"type": "feedback", **key, "label": label})
    return events


def test_accuracy_trigger_fires_below_the_floor_only() -> None:
    scores = [0.9] * 60 + [0.1] * 60
    right = [">50K"] * 60 + ["<=50K"] * 60
    wrong = ["<=50K"] * 30 + [">50K"] * 30 + ["<=50K"] * 60  # 90 of 120 right: 0.75
    ok = triggers.accuracy_trigger(labelled(scores, right), "v1", 0.5, ">50K", MONITOR)
    assert not ok.fired and "1.0000" in ok.evidence
    low = triggers.accuracy_trigger(labelled(scores, wrong), "v1", 0.5, ">50K", MONITOR)
    assert low.fired and "0.7500 over its last 120" in low.evidence


def test_new_labels_and_age_triggers() -> None:
    assert triggers.new_labels_trigger(PARAMS.loop.min_new_labels, PARAMS.loop).fired
    assert not triggers.new_labels_trigger(PARAMS.loop.min_new_labels - 1, PARAMS.loop).fired
    assert triggers.age_trigger(PARAMS.loop.max_model_age_days + 1, PARAMS.loop).fired
    assert not triggers.age_trigger(1.0, PARAMS.loop).fired
    assert not triggers.age_trigger(float("nan"), PARAMS.loop).fired
