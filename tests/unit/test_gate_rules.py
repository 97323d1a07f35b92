"""The gate's quality rules: worst slice, fairness gaps, the margin over the baseline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.support.project import REPO_ROOT

from tabml.config import GateConfig, load_params
from tabml.gate_rules import QualityEvidence, flat_metrics
from tabml.registry import evaluate_gate

PLAIN = {"metric": "roc_auc", "minimum": 0.91, "max_drop_from_champion": 0.002}
RULES = {
    "min_worst_slice_roc_auc": 0.84,
    "max_fairness_gap": {"demographic_parity_difference": 0.25, "equalized_odds_difference": 0.25},
    "baseline_margin": 0.01,
}
#: What the evaluate stage recorded for the Adult model (reports/metrics.json), as MLflow logs it.
RECORDED = {
    "test_roc_auc": 0.926416,
    "baseline_roc_auc": 0.905556,
    "slices_worst_roc_auc": 0.858852,
    "fairness_sex_demographic_parity_difference": 0.177394,
    "fairness_sex_equalized_odds_difference": 0.071399,
    "fairness_race_demographic_parity_difference": 0.172406,
    "fairness_race_equalized_odds_difference": 0.150376,
}


def gate(**changes: object) -> GateConfig:
    return GateConfig.model_validate(PLAIN | RULES | changes)


def test_the_committed_gate_passes_the_committed_model_with_a_reason_per_rule() -> None:
    # The gate as composed for the committed (Adult) pipeline: conf/gate/ + the dataset's settings.
    committed = load_params(REPO_ROOT / "params.yaml").gate
    metrics = json.loads((REPO_ROOT / "reports" / "metrics.json").read_text())
    evidence = QualityEvidence.from_files(
        REPO_ROOT / "reports" / "metrics.json", REPO_ROOT / "reports" / "slices.json", 100
    )
    decision = evaluate_gate(metrics["test"]["roc_auc"], committed, evidence=evidence)
    assert decision.passed, decision.reasons
    assert (
        len(decision.reasons) == 2 + 1 + 4 + 1
    )  # minimum, champion, slice, 2x2 fairness, baseline
    assert any(r.startswith("worst slice (age_band=") for r in decision.reasons)


def test_a_model_that_does_not_beat_the_baseline_by_the_margin_is_refused() -> None:
    evidence = QualityEvidence(RECORDED)
    decision = evaluate_gate(0.926416, gate(baseline_margin=0.5), evidence=evidence)
    assert not decision.passed
    assert (
        "roc_auc 0.926416 < logistic-regression baseline 0.905556 + margin 0.5" in decision.reasons
    )
    # A crippled model: good enough for the minimum, no better than the baseline.
    crippled = evaluate_gate(0.912, gate(), evidence=evidence)
    assert not crippled.passed
    assert "roc_auc 0.912000 < logistic-regression baseline 0.905556 + margin 0.01" in (
        crippled.reasons
    )
    assert evaluate_gate(0.926416, gate(), evidence=evidence).passed


def test_worst_slice_and_fairness_rules_refuse_naming_slice_and_attribute() -> None:
    evidence = QualityEvidence(RECORDED, worst_slice="age_band=65+")
    decision = evaluate_gate(
        0.926416,
        gate(
            min_worst_slice_roc_auc=0.9,
            max_fairness_gap={"equalized_odds_difference": 0.1},
        ),
        evidence=evidence,
    )
    assert not decision.passed
    assert "worst slice (age_band=65+) roc_auc 0.858852 < minimum 0.9" in decision.reasons
    assert "race equalized_odds_difference 0.150376 > maximum 0.1" in decision.reasons
    assert "sex equalized_odds_difference 0.071399 <= maximum 0.1" in decision.reasons


def test_a_configured_rule_without_recorded_figures_fails() -> None:
    decision = evaluate_gate(0.93, gate(), evidence=QualityEvidence({"test_roc_auc": 0.93}))
    assert not decision.passed
    assert "no worst-slice roc_auc recorded (minimum 0.84)" in decision.reasons
    assert "no demographic_parity_difference recorded (maximum 0.25)" in decision.reasons
    assert "no baseline roc_auc recorded (margin 0.01)" in decision.reasons
    assert not evaluate_gate(0.93, gate()).passed  # no evidence at all


def test_rules_switched_off_add_no_reason_and_no_tag() -> None:
    plain = GateConfig.model_validate(PLAIN)
    decision = evaluate_gate(0.93, plain)
    assert decision.passed and decision.reasons == [
        "roc_auc 0.930000 >= minimum 0.91",
        "no current champion",
    ]
    assert not any("baseline" in key or "fairness" in key for key in decision.tags(plain))
    tags = evaluate_gate(0.93, gate(), evidence=QualityEvidence(RECORDED)).tags(gate())
    assert tags["gate.baseline_margin"] == "0.01"
    assert json.loads(tags["gate.max_fairness_gap"])["equalized_odds_difference"] == 0.25


def test_evidence_reads_the_flat_names_mlflow_logs(tmp_path: Path) -> None:
    metrics = {
        "test": {"roc_auc": 0.9, "rows": 10},
        "baseline": {"roc_auc": 0.8},
        "fairness": {"sex_demographic_parity_difference": 0.1},
        "slices": {"worst_roc_auc": 0.7},
    }
    assert flat_metrics(metrics) == {
        "test_roc_auc": 0.9,
        "test_rows": 10.0,
        "baseline_roc_auc": 0.8,
        "fairness_sex_demographic_parity_difference": 0.1,
        "slices_worst_roc_auc": 0.7,
    }
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    slice_report = {"sex": {"F": {"rows": 5, "roc_auc": 0.7}, "M": {"rows": 5, "roc_auc": 0.9}}}
    (tmp_path / "slices.json").write_text(json.dumps(slice_report))
    evidence = QualityEvidence.from_files(tmp_path / "metrics.json", tmp_path / "slices.json", 5)
    assert evidence.worst_slice == "sex=F"
    assert evidence.metrics["slices_worst_roc_auc"] == 0.7


@pytest.mark.parametrize(
    "bad", [{"max_fairness_gap": {"gap": 0.1}}, {"min_worst_slice_roc_auc": 2}]
)
def test_bad_rule_configuration_is_refused(bad: dict) -> None:
    with pytest.raises(ValueError):
        GateConfig.model_validate(PLAIN | bad)


class _RecordingClient:
    """Stands in for MlflowClient.log_batch only: what tracking would send to the store."""

    def __init__(self) -> None:
        self.metrics: dict[str, float] = {}

    def log_batch(self, run_id: str, metrics: list, synchronous: bool) -> None:
        self.metrics |= {m.key: m.value for m in metrics if m.step == 0}


def test_the_names_mlflow_logs_are_the_names_the_gate_reads() -> None:
    """A sweep's best model is judged from its run's metrics (`tabml.sweep.promote_best`)."""
    from tabml.tracking import log_metrics_and_curves

    metrics = json.loads((REPO_ROOT / "reports" / "metrics.json").read_text())
    client = _RecordingClient()
    log_metrics_and_curves(client, "run", metrics, curve=[])
    assert client.metrics == flat_metrics(metrics)
    from_run = evaluate_gate(
        metrics["test"]["roc_auc"], gate(), evidence=QualityEvidence(client.metrics)
    )
    assert from_run.passed and len(from_run.reasons) == 8
