"""Batch monitoring report on a million logged predictions: wall time and peak memory.

    python bench/monitor_report_benchmark.py                  # about 40 s
    python bench/monitor_report_benchmark.py --records 100000

Writes a realistic prediction log into a temp directory: records sampled from the real test
file (data/adult.test, parsed and validated with the contract) and scored by the workspace
model, batched requests from two model versions (90 % / 10 %) over seven UTC days, the last two
with older visitors (a drift the report should flag), labels fed back for 30 % of the
predictions plus repeated labels and labels for unknown requests. Then, each in its own child
process, one after the other:

- baseline: `tabml.monitoring.events.read_events` over the same segments, json-parsing every
  line and nothing else (the floor for any reader of this log format);
- `tabml-monitor report` on the log.

Peak RSS is `getrusage(RUSAGE_CHILDREN).ru_maxrss` in a small launcher process whose only
child is the measured command.
Results: bench/results/monitor_report.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from tabml.atomic import write_text_atomic
from tabml.config import Params, load_params
from tabml.data import read_raw
from tabml.model import predict_proba
from tabml.serving.predictor import TrainedModel
from tabml.validation import validate_raw

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "monitor_report.json"
PROFILE = REPO / "models" / "reference_profile.json"  # the pipeline's profile stage writes it
DAYS = 7
SEGMENT_EVENTS = 100_000
LABELLED_SHARE = 0.3
BUDGET_GIB = 24

# Linux starts a child's peak RSS at its parent's at fork time, so the measured command is
# started by this small launcher (about 10 MiB), not by the benchmark with the test data loaded.
LAUNCHER = """
import json, resource, subprocess, sys, time
began = time.perf_counter()
with open(sys.argv[1], "wb") as out:
    code = subprocess.call(sys.argv[2:], stdout=out, stderr=subprocess.STDOUT)
wall = time.perf_counter() - began
kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"wall_s": wall, "kib": kib}))
sys.exit(code)
"""

BASELINE = """
import sys
from pathlib import Path
from tabml.monitoring.events import read_events
print(sum(1 for _ in read_events(Path(sys.argv[1]))))
"""


def load_rows(params: Params) -> tuple[list[dict[str, Any]], np.ndarray, list[str]]:
    """Test-file records (contract columns, None when missing), model scores and true labels."""
    test_file = params.dataset.files["test"]
    path = REPO / "data" / test_file.name
    for needed in (path, PROFILE):
        if not needed.is_file():
            sys.exit(f"error: {needed} is missing: run `python src/train.py` first")
    model = TrainedModel.load(REPO / "models")
    contract = model.contract
    frame = validate_raw(read_raw(path, contract, test_file.skip_rows), contract, path.name)
    records = [
        {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
        for row in frame[contract.feature_names].to_dict("records")
    ]
    columns = {name: [r[name] for r in records] for name in contract.feature_names}
    scores = predict_proba(model.booster, model.transform.transform(columns))
    return records, scores, frame[contract.label.column].tolist()


def write_log(
    log_dir: Path,
    records: list[dict[str, Any]],
    scores: np.ndarray,
    truth: list[str],
    total: int,
    model_name: str,
    threshold: float,
    label_names: tuple[str, str],
) -> dict[str, int]:
    """`total` prediction events plus feedback, in segments of SEGMENT_EVENTS lines."""
    rng = np.random.default_rng(12)
    start = datetime(2024, 5, 1, tzinfo=UTC).timestamp()
    encoded = [json.dumps(r) for r in records]  # each record's JSON once, as the service does
    ages = np.array([r["age"] for r in records])
    older = np.flatnonzero(ages > 50)
    times = start + np.sort(rng.random(total)) * DAYS * 86_400
    late = times >= start + (DAYS - 2) * 86_400
    picks = rng.integers(0, len(records), total)
    shifted = late & (rng.random(total) < 0.5)
    picks[shifted] = older[rng.integers(0, older.size, int(shifted.sum()))]
    versions = np.where(rng.random(total) < 0.9, "7", "8").tolist()
    stamps = times.tolist()
    negative, positive = label_names
    lines: list[str] = []
    keys: list[tuple[str, int]] = []
    position, request = 0, 0
    while position < total:
        size = min(int(rng.integers(1, 9)), total - position)
        rid = f"{request:032x}"
        for index in range(size):
            i = position + index
            row = int(picks[i])
            score = float(scores[row])
            lines.append(
                f'{{"type": "prediction", "ts": {stamps[i]!r}, "request_id": "{rid}", '
                f'"index": {index}, "model_name": {json.dumps(model_name)}, '
                f'"model_version": "{versions[position]}", "record": {encoded[row]}, '
                f'"probability": {score!r}, '
                f'"label": "{positive if score >= threshold else negative}", '
                f'"latency_ms": 0.5}}'
            )
            keys.append((rid, index))
        position += size
        request += 1
    labelled = np.flatnonzero(rng.random(total) < LABELLED_SHARE)
    repeated = labelled[rng.random(labelled.size) < 0.01]
    feedback = [(i, keys[i][0], keys[i][1], truth[int(picks[i])]) for i in [*labelled, *repeated]]
    feedback += [(total - 1, f"unknown-{j}", 0, positive) for j in range(total // 200)]
    feedback.sort(key=lambda f: f[0])  # a label arrives after its prediction
    merged: list[str] = []
    cursor = 0
    for i, rid, index, label in feedback:
        merged.extend(lines[cursor : i + 1])
        cursor = i + 1
        merged.append(
            f'{{"type": "feedback", "ts": {stamps[i] + 3600.0!r}, "request_id": "{rid}", '
            f'"index": {index}, "label": "{label}"}}'
        )
    merged.extend(lines[cursor:])
    log_dir.mkdir(parents=True)
    for n, begin in enumerate(range(0, len(merged), SEGMENT_EVENTS)):
        name = f"{datetime.fromtimestamp(start, UTC):%Y%m%dT%H%M%SZ}-bench-{n:04d}.jsonl"
        (log_dir / name).write_text("\n".join(merged[begin : begin + SEGMENT_EVENTS]) + "\n")
    return {
        "predictions": total,
        "feedback_events": len(feedback),
        "labelled": int(labelled.size),
        "repeated_labels": int(repeated.size),
        "unknown_labels": total // 200,
        "segments": math.ceil(len(merged) / SEGMENT_EVENTS),
        "log_bytes": sum(p.stat().st_size for p in log_dir.iterdir()),
    }


def shifts(model: dict[str, Any]) -> dict[str, Any]:
    """Every PSI over all records, and the days whose verdict is not stable."""
    overall = [*model["features"], model["score"]]
    return {
        "all_records_psi": {f["name"]: round(f["psi"], 4) for f in overall},
        "shifted_days": {
            day["day"]: {
                name: f"{e['verdict']} ({e['psi']:.3f})"
                for name, e in {**day["drift"]["features"], "score": day["drift"]["score"]}.items()
                if e["verdict"] != "stable"
            }
            for day in model["by_day"]
            if any(
                e["verdict"] != "stable"
                for e in [*day["drift"]["features"].values(), day["drift"]["score"]]
            )
        },
    }


def measure(command: list[str], output: Path) -> dict[str, Any]:
    """Run `command` under LAUNCHER: wall time and the command's own peak RSS."""
    launched = subprocess.run(
        [sys.executable, "-c", LAUNCHER, str(output), *command],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    if launched.returncode != 0:
        sys.exit(f"error: {command} failed:\n{launched.stderr}{output.read_text()}")
    figures = json.loads(launched.stdout)
    return {"wall_s": round(figures["wall_s"], 2), "peak_rss_mib": round(figures["kib"] / 1024, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    args = parser.parse_args()
    params = load_params(REPO / "params.yaml")
    label = params.dataset.label
    records, scores, truth = load_rows(params)
    with tempfile.TemporaryDirectory(prefix="tabml-monitor-bench-") as tmp:
        work = Path(tmp)
        began = time.perf_counter()
        log = write_log(
            work / "log",
            records,
            scores,
            truth,
            args.records,
            params.tracking.registered_model,
            params.decision.threshold,
            (label.negative, label.positive),
        )
        generate_s = time.perf_counter() - began
        print(
            f"wrote {log['predictions']:,} predictions, {log['feedback_events']:,} labels, "
            f"{log['log_bytes'] / 2**20:,.0f} MiB in {generate_s:.1f} s"
        )
        python = sys.executable
        baseline = measure([python, "-c", BASELINE, str(work / "log")], work / "baseline.txt")
        report = measure(
            [
                python,
                "-m",
                "tabml.monitor_cli",
                "report",
                "--log",
                str(work / "log"),
                "--out",
                str(work / "out"),
                "--profile",
                str(PROFILE),
                "--contract",
                str(REPO / "models" / "contract.json"),
                "--params",
                str(REPO / "params.yaml"),
            ],
            work / "report.txt",
        )
        summary = json.loads((work / "out" / "summary.json").read_text())
        print((work / "report.txt").read_text(), end="")
    expected = {
        "events": log["feedback_events"],
        "matched": log["labelled"],
        "duplicate": log["repeated_labels"],
        "unmatched": log["unknown_labels"],
    }
    if summary["feedback"] != expected or summary["log"]["predictions"] != args.records:
        sys.exit(f"error: the report counted {summary['feedback']}, expected {expected}")
    result = {
        "log": log,
        "profile": str(PROFILE.relative_to(REPO)),
        "baseline": {"name": "read_events + json.loads of every line, nothing else", **baseline},
        "report": {"name": "tabml-monitor report (summary.json + report.html)", **report},
        "wall_ratio_to_baseline": round(report["wall_s"] / baseline["wall_s"], 2),
        "memory_budget_gib": BUDGET_GIB,
        "within_budget": report["peak_rss_mib"] < BUDGET_GIB * 1024,
        "shifts": {f"v{m['model_version']}": shifts(m) for m in summary["models"]},
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_1m": round(os.getloadavg()[0], 2),
        },
    }
    write_text_atomic(RESULTS, json.dumps(result, indent=2) + "\n")
    print(
        f"baseline (read + parse): {baseline['wall_s']} s, {baseline['peak_rss_mib']} MiB; "
        f"report: {report['wall_s']} s, {report['peak_rss_mib']} MiB "
        f"({result['wall_ratio_to_baseline']}x the baseline's time); saved {RESULTS}"
    )


if __name__ == "__main__":
    main()
