"""`tabml-monitor`: batch monitoring reports over a prediction log.

  tabml-monitor report --log /var/log/tabml --out reports/monitoring

reads every closed segment under --log (any depth, so a directory shipped from several replicas
works as it is), joins the feedback labels with their predictions and writes `summary.json` and
a self-contained `report.html` into --out. The reference profile, the contract and the
thresholds (params.yaml `monitor` and `decision.threshold`) default to the workspace's.
Exit status 2 names the file (and line) that could not be used.

  tabml-monitor compare --log /var/log/tabml --bundle /srv/tabml/bundle [--json compare.json]

compares the champion with the challenger on the same log: realized accuracy and ROC AUC with
confidence intervals, scores and latency per version, and a promote / collect / reject decision
(`tabml.monitoring.compare`, rule in params.yaml `compare`; `tabml-monitor compare --help`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from tabml.atomic import write_text_atomic
from tabml.config import Params, load_params
from tabml.contract import DataContract
from tabml.errors import TabmlError
from tabml.layout import CONTRACT_FILE, MODELS_DIR, PARAMS_FILE, PROFILE_FILE
from tabml.monitoring import ReferenceProfile
from tabml.monitoring.report import scan_log, summarize
from tabml.monitoring.report_html import render_html

DEFAULT_PROFILE = MODELS_DIR / PROFILE_FILE
SUMMARY_FILE = "summary.json"
HTML_FILE = "report.html"
COMPARE = "compare"


class InputError(TabmlError):
    """The profile, contract or params file is missing or unusable."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tabml-monitor",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    report = commands.add_parser("report", help="drift and realized metrics of a whole log")
    report.add_argument("--log", type=Path, required=True, help="prediction log directory")
    report.add_argument("--out", type=Path, required=True, help="where the report goes")
    report.add_argument(
        "--profile",
        type=Path,
        default=DEFAULT_PROFILE,
        help="reference profile of the served model (default: %(default)s)",
    )
    report.add_argument(
        "--contract",
        type=Path,
        default=MODELS_DIR / CONTRACT_FILE,
        help="data contract, for the feedback labels (default: %(default)s)",
    )
    report.add_argument(
        "--params",
        type=Path,
        default=PARAMS_FILE,
        help="thresholds: `monitor` and `decision.threshold` (default: %(default)s)",
    )
    # Listed here for --help; its arguments are tabml.monitoring.compare's own.
    commands.add_parser(
        COMPARE, add_help=False, help="champion vs challenger: realized metrics and a decision"
    )
    return parser


def _load(path: Path, what: str, loader: Any) -> Any:
    if not path.is_file():
        raise InputError(f"{what} {path} does not exist")
    try:
        return loader(path)
    except TabmlError:
        raise
    except (ValueError, KeyError, TypeError, OSError, yaml.YAMLError) as exc:
        raise InputError(f"{what} {path} is unreadable or invalid: {exc}") from None


def _inputs(args: argparse.Namespace) -> tuple[ReferenceProfile, DataContract, Params]:
    profile: ReferenceProfile = _load(args.profile, "reference profile", ReferenceProfile.load)
    contract: DataContract = _load(args.contract, "contract", DataContract.load)
    params: Params = _load(args.params, "params file", load_params)
    unknown = sorted(set(profile.features) - set(contract.feature_names))
    if unknown:
        raise InputError(
            f"reference profile {args.profile} has feature(s) {unknown} that contract "
            f"{args.contract} does not: they belong to different datasets"
        )
    return profile, contract, params


def report(args: argparse.Namespace) -> dict[str, Any]:
    """Compute the report and write both files into --out; returns the summary."""
    profile, contract, params = _inputs(args)
    label = contract.label
    scan = scan_log(args.log, profile, {label.negative: 0, label.positive: 1})
    summary = summarize(scan, profile, params.monitor, params.decision.threshold, args.log)
    write_text_atomic(
        args.out / SUMMARY_FILE, json.dumps(summary, indent=2, allow_nan=False) + "\n"
    )
    write_text_atomic(args.out / HTML_FILE, render_html(summary))
    return summary


def _shifts(entries: dict[str, dict[str, Any]]) -> str:
    return ", ".join(
        f"{name} {e['psi']:.3f} {e['verdict']}"
        for name, e in entries.items()
        if e["verdict"] not in (None, "stable")
    )


def _describe(summary: dict[str, Any]) -> list[str]:
    """A few lines for the terminal: the whole log, then the days whose drift stands out."""
    if summary["no_predictions"]:
        return ["no predictions in this log"]
    enough = summary["thresholds"]["min_window_records"]
    lines = []
    for model in summary["models"]:
        realized, score = model["realized"], model["score"]
        accuracy = "-" if realized["accuracy"] is None else f"{realized['accuracy']:.4f}"
        drift = _shifts({f["name"]: f for f in model["features"]})
        lines.append(
            f"{model['model_name']} {model['model_version']}: {model['records']:,} records, "
            f"{model['labelled']:,} labelled, accuracy {accuracy}; "
            f"score PSI {score['psi']:.3f} {score['verdict']}; "
            f"drift: {drift or 'all features stable'}"
        )
        for day in model["by_day"]:
            shifted = _shifts({**day["drift"]["features"], "score": day["drift"]["score"]})
            if shifted and day["records"] >= enough:
                lines.append(f"  {day['day']} ({day['records']:,} records): {shifted}")
    return lines


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [COMPARE]:
        from tabml.monitoring.compare import main as compare

        return compare(argv[1:], prog=f"tabml-monitor {COMPARE}")
    args = build_parser().parse_args(argv)
    try:
        summary = report(args)
    except TabmlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for line in _describe(summary):
        print(line)
    print(f"wrote {args.out / SUMMARY_FILE} and {args.out / HTML_FILE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
