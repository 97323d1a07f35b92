"""What live monitoring costs: the same `tabml-serve` with the prediction log and live drift ON
and OFF, in the same run.

    python bench/serve_monitoring_benchmark.py                 # about 5 minutes
    python bench/serve_monitoring_benchmark.py --duration 2 --runs 3

- OFF: `tabml-serve --no-live-monitoring`, no log directory: the request path without any
  monitoring (no queue, no thread);
- ON: the defaults plus `--prediction-log-dir`: every record logged (sample 1.0), the drift
  window, the feedback index and the realized window, all in the server's monitor process.

Scenarios as in `serve_benchmark.py` (its wrk runner, Lua script and helpers): single-record
requests at concurrency 8 (req/s, p99) and 1,000-record batches on one connection (rows/s). Each
round runs every scenario on OFF and ON back to back, ON first every other round; ratios are
medians over rounds of those pairs. Each run also records the CPU time per request of the
server and its monitor process (utime + stime over the run and the monitor's catching up after
it), which other load on the shared cores disturbs far less than req/s.
Also measured: memory of the monitoring state (drift window, feedback index, realized window;
resident memory of both servers after the load), the log's written and dropped events, and the
drift window's false-alarm rate on the held-out test rows (offline, with the service's
own `DriftWindow`, windows of 500 to 5,000 records sliding by 250).

Targets: ON single-record req/s >= 90 % of OFF with p99 <= 1.2x, batch rows/s >= 85 %.
Results: bench/results/serve_monitoring.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from tests.support.artifacts import snapshot_serving_artifacts  # noqa: E402

from serve_benchmark import (  # noqa: E402
    LUA,
    Data,
    System,
    background_cpu,
    check_answers,
    load_data,
    machine,
    paired,
    paired_spread,
    running,
    save,
    summarize,
    tree_cpu_seconds,
    tree_rss_mb,
    wrk,
    wrk_arguments,
)

RESULTS = REPO / "bench" / "results" / "serve_monitoring.json"
#: Default rounds: the single-record goal is a few percent; five rounds put it inside their
#: spread.
ROUNDS = 11
BATCH_ROWS = 1000
ROTATING_RECORDS = 200
SCENARIOS = {"single c=8": (8, 1), f"batch {BATCH_ROWS} c=1": (1, BATCH_ROWS)}


def false_alarms(root: Path, data: Data) -> dict[str, Any]:
    """PSI checks of full windows over the held-out rows, and how many reach the bands."""
    from tabml.monitoring import DriftWindow, ReferenceProfile

    profile = ReferenceProfile.load(root / "models" / "reference_profile.json")
    config = profile.monitor
    assert config is not None
    result = {}
    for size in (500, 1000, config.window_size):
        window = DriftWindow(profile, size, config.epsilon)
        checks = warns = alerts = 0
        largest = 0.0
        for start in range(0, len(data.records), 250):
            window.add(data.records[start : start + 250], data.probabilities[start : start + 250])
            if window.records < size:
                continue
            values = [*window.feature_psi().values(), window.prediction_psi()]
            checks += len(values)
            warns += sum(v >= config.psi_warn for v in values)
            alerts += sum(v >= config.psi_alert for v in values)
            largest = max(largest, *values)
        result[f"window {size}"] = {
            "psi_checks": checks,
            "at_or_above_psi_warn": warns,
            "at_or_above_psi_alert": alerts,
            "false_warn_rate": warns / checks,
            "largest_psi": round(largest, 4),
        }
    return result


def monitoring_memory(root: Path) -> dict[str, Any]:
    """Bytes of the monitoring state of one worker at the default settings."""
    from tabml.monitoring import DriftWindow, ReferenceProfile
    from tabml.serving.prediction_index import PredictionRing
    from tabml.serving.settings import ServingSettings

    profile = ReferenceProfile.load(root / "models" / "reference_profile.json")
    config = profile.monitor
    assert config is not None
    settings = ServingSettings()
    return {
        "drift_window_bytes": DriftWindow(
            profile, config.window_size, config.epsilon
        ).memory_bytes(),
        "feedback_index_bytes": PredictionRing.in_memory(settings.feedback_index_size).nbytes,
        "realized_window_bytes": config.realized_window_size * 9,  # float64 score + int8 label
        "window_size": config.window_size,
        "feedback_index_size": settings.feedback_index_size,
        "queue_bound_records": settings.prediction_log_queue,
    }


def log_counters(url: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    wanted = {"tabml_prediction_log_events_total", "tabml_prediction_log_dropped_total"}
    counters: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        for sample in family.samples:
            if sample.name in wanted:
                label = next(iter(sample.labels.values()))
                counters[f"{sample.name}{{{label}}}"] = sample.value
    return counters


def cpu_overhead(on: dict[str, Any], off: dict[str, Any]) -> dict[str, Any]:
    """CPU per request of the server and its monitor process, ON and OFF (medians of the runs),
    the paired ratio, and how much of the difference the monitor accounts for (the monitor
    process's CPU time and the server's sending to it, as the service reports them)."""
    result = {}
    for scenario in SCENARIOS:
        on_us = statistics.median(r["cpu_us"] for r in on[scenario]["runs"])
        off_us = statistics.median(r["cpu_us"] for r in off[scenario]["runs"])
        own_us = statistics.median(r["monitor_cpu_us"] for r in on[scenario]["runs"])
        result[scenario] = {
            "on_us": round(on_us, 1),
            "off_us": round(off_us, 1),
            "ratio": round(paired(on[scenario], off[scenario], "cpu_us"), 3),
            # the windows, the index, the log and the pickling for them, timed by the service
            # (the enqueue on the request path, ~2 us, aside); the rest is indirect
            "monitor_reported_us": round(own_us, 1),
            "rest_of_difference_us": round(on_us - off_us - own_us, 1),
        }
    return result


def goals(on: dict[str, Any], off: dict[str, Any]) -> list[dict[str, Any]]:
    single, batch = "single c=8", f"batch {BATCH_ROWS} c=1"
    rps = paired(on[single], off[single], "rps")
    p99 = paired(on[single], off[single], "p99_ms")
    rows = paired(on[batch], off[batch], "rps")
    return [
        {
            "goal": "single-record req/s at c=8 >= 90% of OFF",
            "measured": f"{rps:.1%}, paired rounds' interquartile range "
            f"{paired_spread(on[single], off[single], 'rps')}",
            "met": rps >= 0.9,
        },
        {
            "goal": "p99 at c=8 <= 1.2x OFF",
            "measured": f"{p99:.2f}x, paired rounds' interquartile range "
            f"{paired_spread(on[single], off[single], 'p99_ms')}",
            "met": p99 <= 1.2,
        },
        {
            "goal": f"{BATCH_ROWS}-record batches >= 85% of OFF rows/s",
            "measured": f"{rows:.1%}, paired rounds' interquartile range "
            f"{paired_spread(on[batch], off[batch], 'rps')}",
            "met": rows >= 0.85,
        },
    ]


def table(results: dict[str, Any]) -> str:
    lines = [
        f"{'system':<15} {'scenario':<15} {'req/s':>9} {'rows/s':>10} {'p50 ms':>8} {'p99 ms':>8}"
    ]
    for name, system in results["systems"].items():
        for scenario, r in system["scenarios"].items():
            lines.append(
                f"{name:<15} {scenario:<15} {r['requests_per_s']:>9.1f} {r['rows_per_s']:>10.0f}"
                f" {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f}"
            )
    lines.append("")
    for name, system in results["systems"].items():
        lines.append(f"{name:<15} RSS after the load {system['rss_mb']:.0f} MB")
    memory = results["monitoring_memory"]
    lines.append(
        f"monitoring state per worker: drift window {memory['drift_window_bytes'] / 1e3:.0f} kB, "
        f"feedback index {memory['feedback_index_bytes'] / 1e6:.1f} MB, realized window "
        f"{memory['realized_window_bytes'] / 1e3:.0f} kB"
    )
    for scenario, cpu in results["server_cpu_per_request"].items():
        lines.append(
            f"server CPU per request, {scenario}: {cpu['on_us']:.0f} us ON, {cpu['off_us']:.0f} us "
            f"OFF ({cpu['ratio']:.2f}x paired); the monitor reports "
            f"{cpu['monitor_reported_us']:.0f} us of its own, "
            f"{cpu['rest_of_difference_us']:.0f} us of the difference is indirect"
        )
    lines.append(f"log counters (ON): {results['log_counters']}")
    for window, alarms in results["false_alarms"].items():
        lines.append(
            f"false alarms, {window}: {alarms['at_or_above_psi_warn']} of {alarms['psi_checks']} "
            f"PSI checks at or above psi_warn (largest {alarms['largest_psi']})"
        )
    lines.append("")
    for goal in results["goals"]:
        lines.append(f"{'PASS' if goal['met'] else 'MISS'}  {goal['goal']}: {goal['measured']}")
    return "\n".join(lines)


def run(root: Path, data: Data, args: argparse.Namespace) -> dict[str, Any]:
    load_before = os.getloadavg()
    script = root / "post.lua"
    script.write_text(LUA)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TABML_", "MLFLOW_", "PROMETHEUS_", "OMP_"))
    }
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env["PATH"]])
    serve = [sys.executable, "-m", "tabml.serving.cli"]
    log_dir = root / "prediction-log"
    systems = [
        System("monitoring-off", [*serve, "--no-live-monitoring"], env, "/predict", *CODEC),
        System(
            "monitoring-on", [*serve, "--prediction-log-dir", str(log_dir)], env, "/predict", *CODEC
        ),
    ]
    single = root / "single.txt"
    single.write_text("".join(json.dumps(r) + "\n" for r in data.records[:ROTATING_RECORDS]))
    batch = root / "batch.txt"
    batch.write_text(
        "".join(
            json.dumps(data.records[i : i + BATCH_ROWS]) + "\n"
            for i in range(0, 3 * BATCH_ROWS, BATCH_ROWS)
        )
    )
    bodies = {1: single, BATCH_ROWS: batch}
    samples: dict[tuple[str, str], list[dict[str, Any]]] = {}
    with contextlib.ExitStack() as stack:
        for system in systems:
            stack.enter_context(running(system, root, data))
            check_answers(system, data, list(range(0, 3000, 3)))
        for system in systems:  # warm-up
            for connections, rows in SCENARIOS.values():
                wrk(system.url + system.path, bodies[rows], script, connections, 1)
        for round_ in range(args.runs):
            for scenario, (connections, rows) in SCENARIOS.items():
                for system in systems if round_ % 2 == 0 else systems[::-1]:
                    assert system.process is not None
                    on = system is systems[1]
                    own = background_cpu(system.url)["monitor"] if on else 0.0
                    before = tree_cpu_seconds(system.process.pid)
                    sample = wrk(
                        system.url + system.path, bodies[rows], script, connections, args.duration
                    )
                    time.sleep(0.3)  # the (niced) monitor process catches up with the run
                    used = tree_cpu_seconds(system.process.pid) - before
                    requests = sample["rps"] * args.duration
                    # CPU per request, server and monitor process: steadier than req/s here.
                    sample["cpu_us"] = used / requests * 1e6
                    if on:
                        own = background_cpu(system.url)["monitor"] - own
                        sample["monitor_cpu_us"] = own / requests * 1e6
                    samples.setdefault((system.name, scenario), []).append(sample)
            print(f"round {round_ + 1}/{args.runs} done", flush=True)
        for system in systems:
            check_answers(system, data, list(range(5000, 8000, 3)))
            assert system.process is not None
            system.results["rss_mb"] = round(tree_rss_mb(system.process.pid), 1)
        counters = log_counters(systems[1].url)
    results: dict[str, Any] = {
        "benchmark": "tabml-serve with the prediction log and live drift ON vs OFF",
        "machine": machine(load_before),
        "settings": {
            "duration_s": args.duration,
            "runs": args.runs,
            "wrk_threads": 1,
            "rotating_records": ROTATING_RECORDS,
            "batch_rows": BATCH_ROWS,
        },
        "systems": {
            system.name: {
                "rss_mb": system.results["rss_mb"],
                "scenarios": {
                    scenario: summarize(samples[system.name, scenario], rows)
                    for scenario, (_, rows) in SCENARIOS.items()
                },
            }
            for system in systems
        },
        "log_counters": counters,
        "log_bytes": sum(p.stat().st_size for p in log_dir.glob("*.jsonl*")),
        "monitoring_memory": monitoring_memory(root),
        "false_alarms": false_alarms(root, data),
    }
    on = results["systems"]["monitoring-on"]["scenarios"]
    off = results["systems"]["monitoring-off"]["scenarios"]
    results["server_cpu_per_request"] = cpu_overhead(on, off)
    results["goals"] = goals(on, off)
    return results


#: /predict bodies are the records themselves; answers' probabilities in order.
CODEC = (
    lambda records: records,
    lambda body: [p["probability"] for p in body["predictions"]],
)


def main() -> int:
    args = wrk_arguments(__doc__, RESULTS, ROUNDS)
    workdir = Path(tempfile.mkdtemp(prefix="tabml-monitoring-bench-"))
    try:
        root = snapshot_serving_artifacts(workdir / "repo")
        results = run(root, load_data(root), args)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    save(results, args.out, table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
