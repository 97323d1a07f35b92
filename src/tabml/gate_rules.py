"""The gate's optional quality rules (`conf/gate/`): the worst slice, fairness, the baseline.

They judge what the evaluate stage recorded in reports/metrics.json, by the flat names MLflow
logs them under (`baseline_roc_auc`, `slices_worst_roc_auc`, `fairness_sex_<metric>`), so a
decision reads the same numbers from the workspace files and from a logged run. A rule that is
configured but has nothing to judge fails: a model evaluated before the rule existed is not
waved through.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tabml.config import GateConfig

BASELINE_PREFIX = "baseline_"
WORST_SLICE_ROC_AUC = "slices_worst_roc_auc"
FAIRNESS_PREFIX = "fairness_"


def flat_metrics(metrics: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """reports/metrics.json as MLflow logs it: `<section>_<name>` → value, numbers only."""
    return {
        f"{section}_{name}": float(value)
        for section, scores in metrics.items()
        for name, value in scores.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }


@dataclass(frozen=True)
class QualityEvidence:
    """The recorded figures the quality rules judge; empty when none were recorded."""

    metrics: dict[str, float] = field(default_factory=dict)
    #: `<slice>=<value>` of the worst slice, when known (named in the reason)
    worst_slice: str | None = None

    @classmethod
    def from_files(cls, metrics_file: Path, slices_file: Path, min_rows: int) -> QualityEvidence:
        from tabml.slices import worst_slice

        metrics = flat_metrics(json.loads(Path(metrics_file).read_text()))
        worst = None
        if Path(slices_file).is_file():
            found = worst_slice(json.loads(Path(slices_file).read_text()), min_rows)
            worst = found[0] if found else None
        return cls(metrics, worst)


def quality_checks(
    metric: str, value: float, evidence: QualityEvidence, gate: GateConfig
) -> list[tuple[bool, str]]:
    """(passed, reason) for every configured rule, in a stable order."""
    checks: list[tuple[bool, str]] = []
    found = evidence.metrics
    if gate.min_worst_slice_roc_auc is not None:
        minimum = gate.min_worst_slice_roc_auc
        worst = found.get(WORST_SLICE_ROC_AUC)
        where = f" ({evidence.worst_slice})" if evidence.worst_slice else ""
        if worst is None:
            checks.append((False, f"no worst-slice roc_auc recorded (minimum {minimum})"))
        elif worst >= minimum:
            checks.append((True, f"worst slice{where} roc_auc {worst:.6f} >= minimum {minimum}"))
        else:
            checks.append((False, f"worst slice{where} roc_auc {worst:.6f} < minimum {minimum}"))
    for name, maximum in sorted(gate.max_fairness_gap.items()):
        values = {
            key.removeprefix(FAIRNESS_PREFIX).removesuffix(f"_{name}"): v
            for key, v in sorted(found.items())
            if key.startswith(FAIRNESS_PREFIX) and key.endswith(f"_{name}")
        }
        if not values:
            checks.append((False, f"no {name} recorded (maximum {maximum})"))
        for attribute, gap in values.items():
            ok = gap <= maximum
            sign = "<=" if ok else ">"
            checks.append((ok, f"{attribute} {name} {gap:.6f} {sign} maximum {maximum}"))
    if gate.baseline_margin is not None:
        margin = gate.baseline_margin
        baseline = found.get(BASELINE_PREFIX + metric)
        if baseline is None:
            checks.append((False, f"no baseline {metric} recorded (margin {margin})"))
        else:
            ok = value >= baseline + margin
            sign = ">=" if ok else "<"
            checks.append(
                (
                    ok,
                    f"{metric} {value:.6f} {sign} logistic-regression baseline {baseline:.6f} "
                    f"+ margin {margin}",
                )
            )
    return checks


def rule_tags(gate: GateConfig) -> dict[str, str]:
    """The configured quality rules, as tags next to the decision."""
    tags = {}
    if gate.min_worst_slice_roc_auc is not None:
        tags["gate.min_worst_slice_roc_auc"] = str(gate.min_worst_slice_roc_auc)
    if gate.max_fairness_gap:
        tags["gate.max_fairness_gap"] = json.dumps(gate.max_fairness_gap, sort_keys=True)
    if gate.baseline_margin is not None:
        tags["gate.baseline_margin"] = str(gate.baseline_margin)
    return tags
