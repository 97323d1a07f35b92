"""The model registry's rules: the quality gate, alias moves and their history.

Every newly registered version gets the alias `candidate`. It becomes `champion` only if the gate
(`conf/gate/`) passes: its test metric is at least the minimum and not more than a margin below
the current champion's, and the optional quality rules hold (worst slice, fairness gaps, the
baseline: `tabml.gate_rules`). The decision and its reasons are tags on the model version.

MLflow keeps only where an alias points now, so every move is also appended to a history kept
as tags on the registered model (`alias_history/<time ns>` → JSON), which works the same on the
local SQLite store and on a tracking server. `rollback` replays that history to find the
previous champion.
"""

from __future__ import annotations

import getpass
import json
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from tabml.config import GateConfig
from tabml.gate_rules import QualityEvidence, quality_checks, rule_tags

if TYPE_CHECKING:
    from mlflow import MlflowClient

CANDIDATE = "candidate"
CHAMPION = "champion"
HISTORY_PREFIX = "alias_history/"


class RegistryError(RuntimeError):
    """A registry operation cannot be done as asked; the message says why."""


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    metric: str
    value: float
    reasons: list[str]
    champion_version: str | None = None
    champion_value: float | None = None

    def tags(self, gate: GateConfig) -> dict[str, str]:
        tags = {
            "gate.decision": "passed" if self.passed else "failed",
            "gate.reasons": "; ".join(self.reasons),
            "gate.metric": self.metric,
            "gate.value": str(self.value),
            "gate.minimum": str(gate.minimum),
            "gate.max_drop_from_champion": str(gate.max_drop_from_champion),
            **rule_tags(gate),
        }
        if self.champion_version is not None:
            tags["gate.champion_version"] = self.champion_version
            tags["gate.champion_value"] = str(self.champion_value)
        return tags


def evaluate_gate(
    value: float,
    gate: GateConfig,
    champion_version: str | None = None,
    champion_value: float | None = None,
    evidence: QualityEvidence | None = None,
) -> GateDecision:
    """Pass if `value` >= the minimum and >= champion - margin, and every configured quality
    rule holds on `evidence`; every check gives a reason."""
    metric, reasons, passed = gate.metric, [], True
    if value >= gate.minimum:
        reasons.append(f"{metric} {value:.6f} >= minimum {gate.minimum}")
    else:
        passed = False
        reasons.append(f"{metric} {value:.6f} < minimum {gate.minimum}")
    if champion_version is None:
        reasons.append("no current champion")
    elif champion_value is None:
        reasons.append(f"champion v{champion_version} has no {metric} to compare with")
    else:
        floor = champion_value - gate.max_drop_from_champion
        comparison = (
            f"champion v{champion_version} {metric} {champion_value:.6f} "
            f"- max drop {gate.max_drop_from_champion}"
        )
        if value >= floor:
            reasons.append(f"{metric} {value:.6f} >= {comparison}")
        else:
            passed = False
            reasons.append(f"{metric} {value:.6f} < {comparison}")
    for ok, reason in quality_checks(metric, value, evidence or QualityEvidence(), gate):
        passed = passed and ok
        reasons.append(reason)
    return GateDecision(passed, metric, value, reasons, champion_version, champion_value)


@dataclass(frozen=True)
class AliasMove:
    """One entry of the alias history."""

    at: str
    alias: str
    version: str
    previous: str | None
    action: str  # "gate", "promote" or "rollback"
    reason: str
    by: str


def alias_history(client: MlflowClient, name: str) -> list[AliasMove]:
    """Every recorded alias move of a registered model, oldest first."""
    tags = client.get_registered_model(name).tags
    return [
        AliasMove(**json.loads(tags[key]))
        for key in sorted(k for k in tags if k.startswith(HISTORY_PREFIX))
    ]


def current_alias(client: MlflowClient, name: str, alias: str) -> str | None:
    """The version `alias` points at, as a string (stores differ: SQLite gives an int)."""
    version = client.get_registered_model(name).aliases.get(alias)
    return None if version is None else str(version)


def move_alias(
    client: MlflowClient, name: str, alias: str, version: str, action: str, reason: str
) -> AliasMove:
    """Point `alias` at `version` and append the move to the history."""
    move = AliasMove(
        at=datetime.now(UTC).isoformat(timespec="seconds"),
        alias=alias,
        version=str(version),
        previous=current_alias(client, name, alias),
        action=action,
        reason=reason,
        by=_user(),
    )
    client.set_registered_model_alias(name, alias, str(version))
    key = f"{HISTORY_PREFIX}{time.time_ns():020d}"
    client.set_registered_model_tag(name, key, json.dumps(asdict(move), sort_keys=True))
    return move


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def version_metric(client: MlflowClient, name: str, version: str, metric: str) -> float | None:
    """A version's test metric: from the run that logged it, else from its gate tag."""
    model_version = client.get_model_version(name, version)
    if model_version.run_id:
        value = client.get_run(model_version.run_id).data.metrics.get(f"test_{metric}")
        if value is not None:
            return float(value)
    tagged = model_version.tags.get("gate.value")
    if tagged is not None and model_version.tags.get("gate.metric") == metric:
        return float(tagged)
    return None


def apply_gate(
    client: MlflowClient,
    name: str,
    version: str,
    value: float,
    gate: GateConfig,
    promote: bool = True,
    context: str = "",
    evidence: QualityEvidence | None = None,
) -> GateDecision:
    """Judge `version` against the gate and the current champion, record the decision as tags
    on the version, and make it `champion` if it passes and `promote` is set. `evidence` holds
    what the quality rules judge (none recorded: a configured rule fails).

    `context` says why: it prefixes the alias-history reason of a promotion, and explains in
    `gate.note` why a version that passed was not promoted.
    """
    champion = current_alias(client, name, CHAMPION)
    champion_value = (
        version_metric(client, name, champion, gate.metric) if champion is not None else None
    )
    decision = evaluate_gate(value, gate, champion, champion_value, evidence)
    tags = decision.tags(gate)
    if decision.passed and not promote:
        tags["gate.note"] = f"passed, champion not moved: {context}"
    for key, tag in tags.items():
        client.set_model_version_tag(name, version, key, tag)
    if decision.passed and promote and champion != str(version):
        reason = "; ".join(decision.reasons)
        move_alias(
            client, name, CHAMPION, version, "gate", f"{context}: {reason}" if context else reason
        )
    return decision


def register_with_gate(
    client: MlflowClient,
    name: str,
    version: str,
    value: float,
    gate: GateConfig,
    promote: bool = True,
    context: str = "",
    evidence: QualityEvidence | None = None,
) -> GateDecision:
    """Give a new version `candidate`, then `apply_gate`."""
    move_alias(client, name, CANDIDATE, version, "gate", "newly registered version")
    return apply_gate(client, name, version, value, gate, promote, context, evidence)


def promote(
    client: MlflowClient, name: str, version: str, reason: str, force: bool = False
) -> AliasMove:
    """Make `version` champion by hand. A version that failed its gate needs `force`."""
    model_version = client.get_model_version(name, version)
    if model_version.tags.get("gate.decision") == "failed" and not force:
        raise RegistryError(
            f"{name} v{version} failed its quality gate "
            f"({model_version.tags.get('gate.reasons', 'no reasons recorded')}); "
            "use --force to promote it anyway"
        )
    if current_alias(client, name, CHAMPION) == str(version):
        raise RegistryError(f"{name} v{version} is already champion")
    return move_alias(client, name, CHAMPION, version, "promote", reason)


def champion_stack(history: list[AliasMove], current: str | None) -> list[str]:
    """Champions in the order they took over, with rolled-back ones removed.

    A promotion (by the gate or by hand) pushes a version, a rollback pops one; so rolling back
    twice goes back two champions rather than bouncing between the last two. If the alias was
    moved outside this tool, the version it points at now counts as the latest champion.
    """
    stack: list[str] = []
    for move in history:
        if move.alias != CHAMPION:
            continue
        if move.action == "rollback":
            if stack:
                stack.pop()
            if not stack or stack[-1] != move.version:
                stack.append(move.version)
        elif not stack or stack[-1] != move.version:
            stack.append(move.version)
    if current is not None and (not stack or stack[-1] != current):
        stack.append(current)
    return stack


def rollback(client: MlflowClient, name: str, reason: str) -> AliasMove:
    """Move `champion` back to the version that held it before the current one."""
    current = current_alias(client, name, CHAMPION)
    if current is None:
        raise RegistryError(f"{name} has no champion to roll back")
    stack = champion_stack(alias_history(client, name), current)
    if len(stack) < 2:
        raise RegistryError(f"{name} v{current} is the first champion; nothing to roll back to")
    return move_alias(client, name, CHAMPION, stack[-2], "rollback", reason)
