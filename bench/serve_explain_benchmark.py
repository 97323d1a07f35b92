"""Explanation serving benchmark: `/predict?explain=true` against plain `/predict`.

    python bench/serve_explain_benchmark.py                          # about 3 minutes
    python bench/serve_explain_benchmark.py --baseline-ref 0dfbeb2   # + the code before explain
    python bench/serve_explain_benchmark.py --duration 2 --runs 3

One `tabml-serve` (one worker) answers, in rotation within each round, plain requests (the
baseline), `?explain=true` (every feature) and `?explain=true&top_k=3`, for single records at
concurrency 1 and 8 and for 20-record batches; ratios are medians over rounds of back-to-back
pairs (`serve_benchmark.paired`). With `--baseline-ref REF`, a second server runs the service
code of git revision REF (its `src/`, from `git archive`) on the same artifacts, and its plain
requests are measured in the same rounds: the default path before and after explanations
exist. Each run also records the server's CPU time per request (utime + stime from /proc),
steadier than latency on shared cores. Also measured in process, without HTTP: the CPU time of
scoring and of TreeSHAP (`pred_contrib`) per record.

Load comes from Debian's `wrk` (`serve_benchmark.wrk`) rotating through real test rows. Every
explained answer checked is compared with the offline probability, and base value plus
contributions with its logit. Results: bench/results/serve_explain.json.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from tests.artifacts import snapshot_serving_artifacts  # noqa: E402

from serve_benchmark import (  # noqa: E402
    LUA,
    Data,
    System,
    cpu_seconds,
    load_data,
    machine,
    paired,
    running,
    summarize,
    wrk,
)

RESULTS = REPO / "bench" / "results" / "serve_explain.json"
BATCH_ROWS = 20
ROTATING_RECORDS = 200
SCENARIOS = {"single c=1": (1, 1), "single c=8": (8, 1), f"batch {BATCH_ROWS} c=1": (1, BATCH_ROWS)}
VARIANTS = {"plain": "", "explain": "?explain=true", "explain top_k=3": "?explain=true&top_k=3"}


def server_env(pythonpath: Path | None = None) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TABML_", "MLFLOW_", "PROMETHEUS_", "OMP_", "PYTHONPATH"))
    }
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env["PATH"]])
    if pythonpath is not None:  # ahead of the editable install of this checkout
        env["PYTHONPATH"] = str(pythonpath)
    return env


def source_at(ref: str, dest: Path) -> Path:
    """`src/` of git revision `ref`, extracted into `dest`."""
    archive = subprocess.run(
        ["git", "archive", "--format=tar", ref, "src"], cwd=REPO, capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(dest, filter="data")
    return dest / "src"


def tabml_serve(name: str, pythonpath: Path | None = None) -> System:
    return System(
        name,
        [sys.executable, "-m", "tabml.serving.cli"],
        server_env(pythonpath),
        "/predict",
        wrap=lambda records: records,
        unwrap=lambda body: [p["probability"] for p in body["predictions"]],
    )


def check_explanations(system: System, data: Data, rows: list[int]) -> float:
    """Explained answers equal offline probabilities; the largest |margin - logit(p)|."""
    body = [data.records[i] for i in rows]
    response = httpx.post(system.url + "/predict?explain=true", json=body, timeout=120)
    response.raise_for_status()
    worst = 0.0
    for i, prediction in zip(rows, response.json()["predictions"], strict=True):
        p = prediction["probability"]
        assert p == data.probabilities[i], (system.name, i)
        explanation = prediction["explanation"]
        margin = explanation["base_value"] + math.fsum(
            c["value"] for c in explanation["contributions"]
        )
        worst = max(worst, abs(margin - (math.log(p) - math.log1p(-p))))
    assert worst <= 1e-9, worst
    return worst


def in_process(data: Data, seconds: float) -> dict[str, float]:
    """CPU microseconds per record, one thread, 20-record calls: scoring (predict_proba) and
    TreeSHAP of the same encoded records (`pred_contrib` + the raw-column mapping)."""
    from tabml.explain import RawAttribution
    from tabml.model import predict_proba

    attribution = RawAttribution(data.transform.feature_names_)
    names = data.transform.contract.feature_names
    calls = [data.records[i : i + BATCH_ROWS] for i in range(0, 10 * BATCH_ROWS, BATCH_ROWS)]
    matrices = [data.transform.transform({n: [r[n] for r in c] for n in names}) for c in calls]

    def per_record(work: Any) -> float:  # CPU time: steadier than wall time on shared cores
        done, started = 0, time.process_time()
        while time.process_time() - started < seconds:
            work(matrices[done % len(matrices)])
            done += 1
        return (time.process_time() - started) * 1e6 / (done * BATCH_ROWS)

    score = per_record(lambda x: predict_proba(data.booster, x))
    explain = per_record(lambda x: attribution.explain(data.booster, x))
    return {"score_us_per_record": round(score, 1), "treeshap_us_per_record": round(explain, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=3, help="seconds per run")
    parser.add_argument("--runs", type=int, default=5, help="runs per scenario (median)")
    parser.add_argument("--baseline-ref", help="also serve the code of this git revision")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found (Debian: apt-get install -y wrk)")
    workdir = Path(tempfile.mkdtemp(prefix="tabml-explain-bench-"))
    try:
        root = snapshot_serving_artifacts(workdir / "repo")
        results = run(root, load_data(root), args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(table(results))
    print(f"\nsaved {args.out.relative_to(REPO) if args.out.is_relative_to(REPO) else args.out}")
    return 0


def run(root: Path, data: Data, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    load_before = os.getloadavg()
    script = root / "post.lua"
    script.write_text(LUA)
    bodies = {1: root / "single.txt", BATCH_ROWS: root / "batch.txt"}
    bodies[1].write_text("".join(json.dumps(r) + "\n" for r in data.records[:ROTATING_RECORDS]))
    bodies[BATCH_ROWS].write_text(
        "".join(
            json.dumps(data.records[i : i + BATCH_ROWS]) + "\n"
            for i in range(0, 10 * BATCH_ROWS, BATCH_ROWS)
        )
    )
    ours = tabml_serve("tabml-serve")
    # (system, variant) pairs measured in every round
    measured: list[tuple[System, str]] = [(ours, variant) for variant in VARIANTS]
    systems = [ours]
    if args.baseline_ref:
        before = tabml_serve(
            f"tabml-serve@{args.baseline_ref}", source_at(args.baseline_ref, workdir)
        )
        systems.append(before)
        measured.append((before, "plain"))
    samples: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    with contextlib.ExitStack() as stack:
        for system in systems:
            stack.enter_context(running(system, root, data))
        additivity = check_explanations(ours, data, list(range(0, 2000, 2)))
        for system, variant in measured:  # warm-up
            for connections, rows in SCENARIOS.values():
                wrk(
                    system.url + "/predict" + VARIANTS[variant],
                    bodies[rows],
                    script,
                    connections,
                    1,
                )
        for round_ in range(args.runs):
            for scenario, (connections, rows) in SCENARIOS.items():
                for system, variant in measured:
                    url = system.url + "/predict" + VARIANTS[variant]
                    assert system.process is not None
                    cpu = cpu_seconds(system.process.pid)
                    sample = wrk(url, bodies[rows], script, connections, args.duration)
                    cpu = cpu_seconds(system.process.pid) - cpu
                    sample["cpu_ms_per_request"] = cpu * 1e3 / max(sample["rps"] * args.duration, 1)
                    samples.setdefault((system.name, variant, scenario), []).append(sample)
            print(f"round {round_ + 1}/{args.runs} done", flush=True)
        check_explanations(ours, data, list(range(5000, 6000)))

    series = {
        f"{system.name} {variant}": {
            scenario: summary(samples[system.name, variant, scenario], SCENARIOS[scenario][1])
            for scenario in SCENARIOS
        }
        for system, variant in measured
    }
    plain = series["tabml-serve plain"]
    ratios: dict[str, Any] = {}
    for variant in ("explain", "explain top_k=3"):
        explained = series[f"tabml-serve {variant}"]
        ratios[f"{variant} / plain"] = {
            scenario: {
                "p50_ms": round(paired(explained[scenario], plain[scenario], "p50_ms"), 2),
                "p99_ms": round(paired(explained[scenario], plain[scenario], "p99_ms"), 2),
                "requests_per_s": round(paired(explained[scenario], plain[scenario], "rps"), 3),
                "cpu_ms_per_request": round(
                    paired(explained[scenario], plain[scenario], "cpu_ms_per_request"), 2
                ),
            }
            for scenario in SCENARIOS
        }
    if args.baseline_ref:
        before = series[f"tabml-serve@{args.baseline_ref} plain"]
        ratios[f"plain / plain@{args.baseline_ref}"] = {
            scenario: {
                "p50_ms": round(paired(plain[scenario], before[scenario], "p50_ms"), 3),
                "requests_per_s": round(paired(plain[scenario], before[scenario], "rps"), 3),
                "cpu_ms_per_request": round(
                    paired(plain[scenario], before[scenario], "cpu_ms_per_request"), 3
                ),
            }
            for scenario in SCENARIOS
        }
    return {
        "benchmark": "explanations: /predict?explain=true vs plain /predict, one worker",
        "machine": machine(load_before),
        "settings": {
            "duration_s": args.duration,
            "runs": args.runs,
            "batch_rows": BATCH_ROWS,
            "rotating_records": ROTATING_RECORDS,
            "baseline_ref": args.baseline_ref,
        },
        "max_abs_margin_minus_logit": additivity,
        "in_process": in_process(data, args.duration),
        "series": series,
        "ratios": ratios,
    }


def summary(samples: list[dict[str, Any]], rows_per_request: int) -> dict[str, Any]:
    """`serve_benchmark.summarize`, plus the server's median CPU per request."""
    cpu = statistics.median(s["cpu_ms_per_request"] for s in samples)
    return {**summarize(samples, rows_per_request), "cpu_ms_per_request": round(cpu, 3)}


def table(results: dict[str, Any]) -> str:
    lines = [
        f"{'series':<34} {'scenario':<15} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'cpu ms':>8} {'err':>4}"
    ]
    for name, scenarios in results["series"].items():
        for scenario, r in scenarios.items():
            lines.append(
                f"{name:<34} {scenario:<15} {r['requests_per_s']:>9.1f} {r['p50_ms']:>8.2f}"
                f" {r['p99_ms']:>8.2f} {r['cpu_ms_per_request']:>8.3f} {r['errors']:>4}"
            )
    lines.append("")
    for name, scenarios in results["ratios"].items():
        for scenario, r in scenarios.items():
            lines.append(
                f"{name:<34} {scenario:<15} " + ", ".join(f"{k} {v}" for k, v in r.items())
            )
    lines.append("")
    lines.append(f"in process, CPU µs per record: {results['in_process']}")
    lines.append(
        f"max |base + contributions - logit(p)|: {results['max_abs_margin_minus_logit']:.1e}"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
