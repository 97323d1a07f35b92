"""Champion against challenger on served traffic: realized metrics per version with confidence
intervals, and a decision — promote, collect or reject — with the rule that gave it.

  tabml-monitor compare --log /var/log/tabml --bundle /srv/tabml/bundle [--json compare.json]
  tabml-monitor compare --log LOG --champion v3 --challenger v4 [--contract models/contract.json]

Reads every closed segment of the prediction log, joins each feedback label to the predictions
with its (request_id, index) — one per version when the challenger ran in shadow — and reports
per model version: requests, predictions, labelled predictions and requests, realized accuracy
(the served label against the feedback label: what the client acted on, whatever threshold the
version used) with its Wilson interval, ROC AUC with DeLong's interval, score quantiles and
request latency (p50/p99). The roles come from the bundle (or are named); the positive label
from the champion's data contract; the rule's parameters from params.yaml `compare`
(conf/compare/).

The decision is a fixed-horizon non-inferiority test on accuracy. The horizon is
`min_labelled` labelled predictions per version: before both versions reach it the answer is
`collect`. Then the first `min_labelled` labels of each version, in the order they came back,
decide: `promote` if the one-sided `confidence` lower bound of accuracy(challenger) -
accuracy(champion) (Newcombe's interval) is above -`margin`, otherwise `reject`. Fixing the
sample is what keeps the stated error rate: a test re-run on all labels every hour, stopping at
the first `promote`, would promote a worse challenger far more often than 1 - confidence (the
peeking problem). With the horizon fixed, later runs give the same decision. A sequential test
(mSPRT, alpha spending) could stop earlier on a clear difference; at the traffic this service
sees the fixed horizon is reached in days and is simpler to explain and audit.

Exit status 0 for any computed decision (collect included), 2 when the input cannot be used
(the file, and for the log the line, is named).

One module of about 450 lines: reading the log into per-version traffic, the intervals
(`tabml.monitoring.intervals`) applied to it, the decision rule and its command line are one
review's worth of logic, and the rule must be read next to what it is computed from.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tabml.errors import TabmlError
from tabml.monitoring.events import FEEDBACK, PREDICTION
from tabml.monitoring.intervals import (
    delong_auc,
    newcombe_difference,
    wilson,
    z_one_sided,
    z_two_sided,
)
from tabml.monitoring.report import LogError, _events, _segments

if TYPE_CHECKING:
    from tabml.config import CompareConfig

FORMAT = 1
PROMOTE, COLLECT, REJECT = "promote", "collect", "reject"

Key = tuple[str, int]
_NUMBER = frozenset({int, float})
_PREDICTION_FIELDS: dict[str, frozenset[type]] = {
    "ts": _NUMBER,
    "request_id": frozenset({str}),
    "index": frozenset({int}),
    "model_name": frozenset({str}),
    "model_version": frozenset({str}),
    "probability": _NUMBER,
    "label": frozenset({str}),
    "latency_ms": _NUMBER,
}
_FEEDBACK_FIELDS: dict[str, frozenset[type]] = {
    "ts": _NUMBER,
    "request_id": frozenset({str}),
    "index": frozenset({int}),
    "label": frozenset({str}),
}


def _check(where: str, event: Mapping[str, Any], fields: Mapping[str, frozenset[type]]) -> None:
    # json.loads makes exact types: `type(v) is int` keeps true/false out of the numbers.
    for name, kinds in fields.items():
        if type(event.get(name)) not in kinds:
            raise LogError(f"{where}: {event['type']} event field {name!r} is {event.get(name)!r}")


@dataclass
class _Version:
    """One model version's predictions, in log order (duplicates of a key dropped)."""

    names: set[str] = field(default_factory=set)
    rows: dict[Key, int] = field(default_factory=dict)
    scores: list[float] = field(default_factory=list)
    served: list[int] = field(default_factory=list)
    request_of_row: list[str] = field(default_factory=list)
    latency_of_request: dict[str, float] = field(default_factory=dict)


@dataclass
class Traffic:
    """A log reduced to what the comparison needs."""

    versions: dict[str, _Version]
    #: key → (0/1 label, feedback time, position in the log): the first feedback per key
    feedback: dict[Key, tuple[int, float, int]]
    segments: int
    duplicate_predictions: int = 0
    duplicate_feedback: int = 0

    @property
    def unmatched_feedback(self) -> int:
        matched = set().union(*(v.rows for v in self.versions.values()))
        return sum(key not in matched for key in self.feedback)


def read_traffic(log_dir: Path, codes: Mapping[str, int]) -> Traffic:
    """Every closed segment under `log_dir`; `codes` maps each label to 0 or 1."""
    segments = _segments(Path(log_dir))
    traffic = Traffic({}, {}, len(segments))
    for position, (where, event) in enumerate(_events(segments)):
        kind = event.get("type")
        if kind == PREDICTION:
            _add_prediction(traffic, where, event, codes)
        elif kind == FEEDBACK:
            _check(where, event, _FEEDBACK_FIELDS)
            if event["label"] not in codes:
                raise LogError(
                    f"{where}: feedback label {event['label']!r} is not one of {list(codes)}"
                )
            key = (event["request_id"], event["index"])
            if key in traffic.feedback:
                traffic.duplicate_feedback += 1  # the first label counts, as in the report
            else:
                traffic.feedback[key] = (codes[event["label"]], float(event["ts"]), position)
    return traffic


def _add_prediction(
    traffic: Traffic, where: str, event: Mapping[str, Any], codes: Mapping[str, int]
) -> None:
    _check(where, event, _PREDICTION_FIELDS)
    score, label = event["probability"], event["label"]
    if not 0.0 <= score <= 1.0:
        raise LogError(f"{where}: prediction probability {score!r} is outside [0, 1]")
    if label not in codes:
        raise LogError(f"{where}: prediction label {label!r} is not one of {list(codes)}")
    version = traffic.versions.setdefault(event["model_version"], _Version())
    key = (event["request_id"], event["index"])
    if key in version.rows:
        traffic.duplicate_predictions += 1
        return
    version.names.add(event["model_name"])
    version.rows[key] = len(version.scores)
    version.scores.append(float(score))
    version.served.append(codes[label])
    version.request_of_row.append(event["request_id"])
    version.latency_of_request.setdefault(event["request_id"], float(event["latency_ms"]))


# ------------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class Labelled:
    """A version's labelled predictions, in the order their labels came back."""

    scores: np.ndarray
    served: np.ndarray
    labels: np.ndarray
    requests: list[str]

    def first(self, n: int) -> Labelled:
        return Labelled(self.scores[:n], self.served[:n], self.labels[:n], self.requests[:n])

    @property
    def correct(self) -> int:
        return int(np.count_nonzero(self.served == self.labels))


def labelled(version: _Version, feedback: Mapping[Key, tuple[int, float, int]]) -> Labelled:
    joined = sorted(
        (feedback[key][1:], row, feedback[key][0])
        for key, row in version.rows.items()
        if key in feedback
    )
    rows = np.array([row for _, row, _ in joined], dtype=np.int64)
    return Labelled(
        np.asarray(version.scores, dtype=np.float64)[rows],
        np.asarray(version.served, dtype=np.int8)[rows],
        np.array([label for *_, label in joined], dtype=np.int8),
        [version.request_of_row[row] for row in rows.tolist()],
    )


def summarize_version(
    name: str, version: _Version, joined: Labelled, z: float, quantiles: Iterable[float]
) -> dict[str, Any]:
    scores = np.asarray(version.scores, dtype=np.float64)
    latencies = np.fromiter(version.latency_of_request.values(), dtype=np.float64)
    accuracy = wilson(joined.correct, joined.labels.size, z)
    auc = delong_auc(joined.scores, joined.labels, z)
    return {
        "version": name,
        "model_names": sorted(version.names),
        "requests": len(version.latency_of_request),
        "predictions": int(scores.size),
        "labelled": int(joined.labels.size),
        "labelled_requests": len(set(joined.requests)),
        "accuracy": accuracy.to_dict() if accuracy else None,
        "roc_auc": auc.to_dict() if auc else None,
        "score": (
            {
                "mean": float(scores.mean()),
                "positive_share": float(np.mean(version.served)),
                "quantiles": {f"{q:g}": float(np.quantile(scores, q)) for q in quantiles},
            }
            if scores.size
            else None
        ),
        "latency_ms": (
            {"p50": float(np.quantile(latencies, 0.5)), "p99": float(np.quantile(latencies, 0.99))}
            if latencies.size
            else None
        ),
    }


def rule_text(config: CompareConfig) -> str:
    return (
        f"fixed horizon of {config.min_labelled} labelled predictions per version; then "
        f"promote if the one-sided {config.confidence:g} lower bound of accuracy(challenger) - "
        f"accuracy(champion) (Newcombe) is above -{config.margin:g}, otherwise reject"
    )


def decide(
    champion: str, challenger: str, joined: Mapping[str, Labelled], config: CompareConfig
) -> dict[str, Any]:
    """The fixed-horizon non-inferiority decision (see the module docstring)."""
    horizon = config.min_labelled
    counts = {
        role: joined[v].labels.size if v in joined else 0
        for role, v in (("champion", champion), ("challenger", challenger))
    }
    decision: dict[str, Any] = {
        "champion": champion,
        "challenger": challenger,
        "rule": rule_text(config),
        "labelled": counts,
    }
    short = [f"{role} {counts[role]}" for role in counts if counts[role] < horizon]
    if short:
        return decision | {
            "decision": COLLECT,
            "reason": f"fewer than {horizon} labelled predictions: {', '.join(short)}",
            "horizon": None,
        }
    a, b = joined[challenger].first(horizon), joined[champion].first(horizon)
    difference = newcombe_difference(
        a.correct, horizon, b.correct, horizon, z_one_sided(config.confidence)
    )
    assert difference is not None  # both samples hold `horizon` >= 2 labels
    lower, floor = difference.low, -config.margin
    promote = lower > floor
    verdict = (
        f"lower bound {lower:+.4f} > -{config.margin:g}: not worse by more than the margin"
        if promote
        else f"lower bound {lower:+.4f} <= -{config.margin:g}: may be worse by more than the margin"
    )
    return decision | {
        "decision": PROMOTE if promote else REJECT,
        "reason": (
            f"on the first {horizon} labels of each: accuracy challenger "
            f"{a.correct / horizon:.4f}, champion {b.correct / horizon:.4f}, difference "
            f"{difference.value:+.4f}; {verdict}"
        ),
        "horizon": {
            "labelled_per_version": horizon,
            "champion_accuracy": b.correct / horizon,
            "challenger_accuracy": a.correct / horizon,
            "difference": difference.value,
            "lower_bound": lower,
        },
    }


def compare(
    traffic: Traffic, champion: str, challenger: str, config: CompareConfig, log_dir: Path
) -> dict[str, Any]:
    """The comparison as a JSON-ready dict: every version in the log, then the decision."""
    z = z_two_sided(config.interval_level)
    joined = {name: labelled(v, traffic.feedback) for name, v in traffic.versions.items()}
    roles = {champion: "champion", challenger: "challenger"}
    order = sorted(traffic.versions, key=lambda v: (v not in roles, v != champion, v))
    versions = [
        summarize_version(name, traffic.versions[name], joined[name], z, config.score_quantiles)
        | {"role": roles.get(name)}
        for name in order
    ]
    return {
        "format": FORMAT,
        "log": {"dir": str(log_dir), "segments": traffic.segments},
        "feedback": {
            "events": len(traffic.feedback) + traffic.duplicate_feedback,
            "duplicate": traffic.duplicate_feedback,
            "unmatched": traffic.unmatched_feedback,
        },
        "duplicate_predictions": traffic.duplicate_predictions,
        "intervals": {
            "level": config.interval_level,
            "accuracy": "Wilson score",
            "roc_auc": "DeLong",
        },
        "parameters": config.model_dump(mode="json"),
        "missing_versions": [v for v in (champion, challenger) if v not in traffic.versions],
        "versions": versions,
        "decision": decide(champion, challenger, joined, config),
    }


# -------------------------------------------------------------------------------- the command


def _estimate(entry: Mapping[str, float] | None) -> str:
    if entry is None:
        return "-"
    return f"{entry['value']:.4f} [{entry['low']:.4f}, {entry['high']:.4f}]"


def render_table(result: Mapping[str, Any]) -> str:
    """The human summary: one row per version, then the decision and its rule."""
    level = f"{result['intervals']['level'] * 100:g} %"
    header = (
        "version", "role", "requests", "predictions", "labelled",
        f"accuracy ({level} Wilson)", f"ROC AUC ({level} DeLong)",
        "score p5/p50/p95", "latency p50/p99 ms",
    )  # fmt: skip
    rows = [header]
    for v in result["versions"]:
        quantiles = v["score"]["quantiles"] if v["score"] else {}
        scores = "/".join(f"{quantiles[q]:.3f}" for q in ("0.05", "0.5", "0.95") if q in quantiles)
        latency = v["latency_ms"]
        rows.append(
            (
                v["version"],
                v["role"] or "-",
                f"{v['requests']:,}",
                f"{v['predictions']:,}",
                f"{v['labelled']:,}",
                _estimate(v["accuracy"]),
                _estimate(v["roc_auc"]),
                scores or "-",
                f"{latency['p50']:.2f}/{latency['p99']:.2f}" if latency else "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    decision = result["decision"]
    for missing in result["missing_versions"]:
        lines.append(f"note: no prediction of {missing} in the log")
    lines += [
        f"decision: {decision['decision']} challenger {decision['challenger']} "
        f"(champion {decision['champion']})",
        f"  because {decision['reason']}",
        f"  rule: {decision['rule']}",
    ]
    return "\n".join(lines)


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--log", type=Path, required=True, help="prediction log directory")
    parser.add_argument(
        "--bundle", type=Path, help="the served bundle: its roles and the champion's contract"
    )
    parser.add_argument("--champion", help="champion's model_version (default: the bundle's)")
    parser.add_argument("--challenger", help="challenger's model_version (default: the bundle's)")
    parser.add_argument(
        "--contract",
        type=Path,
        help="data contract for the labels (default: the bundle's "
        "champion's, else models/contract.json)",
    )
    parser.add_argument(
        "--params", type=Path, default=Path("params.yaml"),
        help="the rule's parameters: `compare` (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument("--json", type=Path, help="also write the result as JSON here")
    return parser


def _inputs(args: argparse.Namespace) -> tuple[str, str, Path, CompareConfig]:
    """Champion, challenger, contract path and the `compare` config, from the arguments."""
    import yaml

    from tabml.bundle import CHALLENGER, CHAMPION, load_bundle
    from tabml.config import load_params
    from tabml.layout import CONTRACT_FILE, MODELS_DIR

    champion, challenger, contract = args.champion, args.challenger, args.contract
    if args.bundle is not None:
        bundle = load_bundle(args.bundle)
        if bundle.challenger is None and challenger is None:
            raise TabmlError(f"bundle {args.bundle} has no challenger: name one with --challenger")
        champion = champion or bundle.champion
        challenger = challenger or bundle.roles[CHALLENGER]
        contract = contract or bundle.version(CHAMPION).file(CONTRACT_FILE)
    if champion is None or challenger is None:
        raise TabmlError("name the versions: --bundle, or --champion and --challenger")
    if champion == challenger:
        raise TabmlError(f"champion and challenger are both {champion!r}")
    if not args.params.is_file():
        raise TabmlError(f"params file {args.params} does not exist")
    try:
        config = load_params(args.params).compare
    except TabmlError:
        raise
    except (OSError, ValueError, TypeError, yaml.YAMLError) as exc:
        raise TabmlError(f"params file {args.params} is unusable: {exc}") from None
    return champion, challenger, contract or MODELS_DIR / CONTRACT_FILE, config


def _label_codes(path: Path) -> dict[str, int]:
    from tabml.contract import DataContract

    if not path.is_file():
        raise TabmlError(f"contract {path} does not exist")
    try:
        label = DataContract.load(path).label
    except (OSError, ValueError) as exc:
        raise TabmlError(f"contract {path} is unreadable or invalid: {exc}") from None
    return {label.negative: 0, label.positive: 1}


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = build_parser(prog).parse_args(argv)
    try:
        champion, challenger, contract, config = _inputs(args)
        traffic = read_traffic(args.log, _label_codes(contract))
    except TabmlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result = compare(traffic, champion, challenger, config, args.log)
    print(render_table(result))
    if args.json is not None:
        from tabml.atomic import write_text_atomic

        write_text_atomic(args.json, json.dumps(result, indent=2, allow_nan=False) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
