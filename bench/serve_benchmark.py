"""Prediction service benchmark: this service vs `mlflow models serve` vs in-process prediction.

    python bench/serve_benchmark.py                 # about 3 minutes
    python bench/serve_benchmark.py --duration 2 --runs 2

Four ways to score the same model, in one run, on loopback:

- `tabml-serve`: this service, one uvicorn worker, with validation, metrics, request IDs and
  JSON access logs (written to a file) all on;
- `tabml-fastapi`: the same service with its short path off (`--no-short-path`): the prediction
  endpoints dispatched by FastAPI's routing like every other route, the baseline the short path
  (`tabml.serving.routing`) must beat by 10 % at concurrency 8 to earn its place;
- `mlflow models serve --env-manager local -w 1` on the pyfunc the pipeline registers
  (`tabml.pyfunc_model`), served from a temp sqlite registry as `models:/<name>@champion`:
  what a user would run instead;
- in-process (the limit): decoded records → `FeatureTransform.transform` → `predict_proba`,
  no HTTP, no JSON, no validation.

Scenarios: single-record requests at concurrency 1 and 8, and 1,000-record batches (one
connection). The load generator is Debian's `wrk` in its own process, with a Lua script that
rotates through real test rows and reports percentiles as JSON. Each scenario gets a warm-up and
`--runs` short runs (each round runs every system in turn, in reverse order every other round);
the table shows medians. Also measured: cold start (process spawn to the
first correct 200 on a prediction) and resident memory of the server's process tree after the
load. Every server answer checked is compared with the offline probability; wrk's non-2xx
count must be zero.

The machine has 2 cores shared with wrk (and anything else running): absolute figures are a
lower bound; the comparisons within one run are the point. Results: bench/results/serve.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.artifacts import snapshot_serving_artifacts  # noqa: E402
from tests.support.processes import free_port, mlflow_models_serve_cmd  # noqa: E402

RESULTS = REPO / "bench" / "results" / "serve.json"
BATCH_ROWS = 1000
ROTATING_RECORDS = 200
MODEL_NAME = "tabml-bench"

LUA = r"""
-- POST bodies from a file (one JSON body per line), formatted once, sent in rotation. A line
-- "<key>\t<body>" sends its body with the header X-Routing-Key: <key> (JSON bodies hold no tab).
local requests = {}
local n = 0
local i = 0
init = function(args)
  for line in io.lines(args[1]) do
    local headers = {["Content-Type"] = "application/json"}
    local key, body = line:match("^([^\t]*)\t(.*)$")
    if key then
      headers["X-Routing-Key"] = key
    else
      body = line
    end
    n = n + 1
    requests[n] = wrk.format("POST", nil, headers, body)
  end
end
request = function()
  i = i % n + 1
  return requests[i]
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "non2xx": %d, "socket_errors": %d, ' ..
    '"p50_us": %d, "p99_us": %d, "mean_us": %.1f}\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99), latency.mean))
end
"""


def machine(load_before: tuple[float, float, float]) -> dict[str, Any]:
    """What a result file records about the machine it was measured on."""
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }


# Data -------------------------------------------------------------------------------------


@dataclass
class Data:
    records: list[dict[str, Any]]
    probabilities: np.ndarray
    transform: Any
    booster: Any


def load_data(root: Path) -> Data:
    from tabml.columnar import read_columns
    from tabml.contract import DataContract
    from tabml.features import FeatureTransform
    from tabml.model import load_booster, predict_proba

    contract = DataContract.load(root / "models" / "contract.json")
    transform = FeatureTransform.load(root / "models" / "feature_transform.json", contract)
    booster = load_booster(root / "models" / "model.txt")
    columns = read_columns(REPO / "artifacts" / "prepared" / "test.parquet")
    names = contract.feature_names
    lists = [columns[name].tolist() for name in names]
    records = [dict(zip(names, row, strict=True)) for row in zip(*lists, strict=True)]
    return Data(records, predict_proba(booster, transform.transform(columns)), transform, booster)


# Processes --------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (its threads included), from /proc."""
    fields = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def background_cpu(url: str) -> dict[str, float]:
    """The service's own account of its off-response-path CPU seconds so far, by task
    (`tabml_background_cpu_seconds_total`: monitor, shadow)."""
    from prometheus_client.parser import text_string_to_metric_families

    found = {}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        for sample in family.samples:
            if sample.name == "tabml_background_cpu_seconds_total":
                found[sample.labels["task"]] = sample.value
    return found


def process_tree(pid: int) -> list[int]:
    """A process and all its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def tree_cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its live descendants (a server's monitor process)."""
    total = 0.0
    for member in process_tree(pid):
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += cpu_seconds(member)
    return total


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants (Linux /proc)."""
    total_kb = 0
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            for line in (Path("/proc") / str(member) / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kb += int(line.split()[1])
    return total_kb / 1024


@dataclass
class System:
    name: str
    command: list[str]
    env: dict[str, str]
    path: str
    wrap: Callable[[list[dict[str, Any]]], Any]
    unwrap: Callable[[Any], list[float]]
    port_flag: str = "--port"
    process: subprocess.Popen[bytes] | None = None
    url: str = ""
    results: dict[str, Any] = field(default_factory=dict)


@contextlib.contextmanager
def running(system: System, workdir: Path, data: Data) -> Iterator[System]:
    """Start the server; cold start = spawn → first 200 whose probability equals offline."""
    port = free_port()
    system.url = f"http://127.0.0.1:{port}"
    log = open(workdir / f"{system.name}.log", "wb")  # noqa: SIM115 - closed below
    probe = system.wrap([data.records[0]])
    started = time.perf_counter()
    system.process = subprocess.Popen(
        [*system.command, system.port_flag, str(port)],
        cwd=workdir,
        env=system.env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        with httpx.Client(timeout=5) as http:
            while True:
                if system.process.poll() is not None:
                    raise SystemExit(f"{system.name} exited; see {log.name}")
                with contextlib.suppress(httpx.HTTPError):
                    response = http.post(system.url + system.path, json=probe)
                    if response.status_code == 200:
                        got = system.unwrap(response.json())[0]
                        assert got == data.probabilities[0], (system.name, got)
                        break
                if time.perf_counter() - started > 180:
                    raise SystemExit(f"{system.name} did not answer within 180 s")
                time.sleep(0.01)
        system.results["cold_start_s"] = round(time.perf_counter() - started, 3)
        yield system
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(system.process.pid, signal.SIGTERM)
        try:
            system.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(system.process.pid, signal.SIGKILL)
            system.process.wait()
        log.close()


def check_answers(system: System, data: Data, rows: list[int]) -> None:
    """One batch through the server, compared with offline predictions."""
    response = httpx.post(
        system.url + system.path, json=system.wrap([data.records[i] for i in rows]), timeout=60
    )
    response.raise_for_status()
    got = np.asarray(system.unwrap(response.json()))
    assert np.array_equal(got, data.probabilities[rows]), f"{system.name}: predictions differ"


# Load -------------------------------------------------------------------------------------


def wrk(url: str, bodies: Path, script: Path, connections: int, seconds: int) -> dict[str, Any]:
    """One wrk run; its Lua `done` hook prints the statistics as JSON."""
    result = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{int(seconds)}s",
            "--timeout",
            "10s",
            "-s",
            str(script),
            url,
            "--",
            str(bodies),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    line = next(x for x in result.stdout.splitlines() if x.startswith("WRK_JSON "))
    stats = json.loads(line.removeprefix("WRK_JSON "))
    return {
        "rps": stats["requests"] / (stats["duration_us"] / 1e6),
        "p50_ms": stats["p50_us"] / 1e3,
        "p99_ms": stats["p99_us"] / 1e3,
        "errors": stats["non2xx"] + stats["socket_errors"],
    }


def in_process(data: Data, rows_per_call: int, seconds: float) -> dict[str, Any]:
    """The limit: decoded records → FeatureTransform → predict_proba, one thread, no HTTP."""
    from tabml.model import predict_proba

    names = data.transform.contract.feature_names
    count = ROTATING_RECORDS if rows_per_call == 1 else 3  # as the servers get them
    calls = [data.records[i * rows_per_call : (i + 1) * rows_per_call] for i in range(count)]
    durations = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        records = calls[len(durations) % len(calls)]
        start = time.perf_counter()
        columns = {name: [r[name] for r in records] for name in names}
        predict_proba(data.booster, data.transform.transform(columns))
        durations.append(time.perf_counter() - start)
    return {
        "rps": 1 / statistics.fmean(durations),
        "p50_ms": float(np.percentile(durations, 50)) * 1e3,
        "p99_ms": float(np.percentile(durations, 99)) * 1e3,
        "errors": 0,
    }


def summarize(samples: list[dict[str, Any]], rows_per_request: int) -> dict[str, Any]:
    rps = statistics.median(s["rps"] for s in samples)
    return {
        "requests_per_s": round(rps, 1),
        "rows_per_s": round(rps * rows_per_request, 1),
        "p50_ms": round(statistics.median(s["p50_ms"] for s in samples), 3),
        "p99_ms": round(statistics.median(s["p99_ms"] for s in samples), 3),
        "errors": sum(s["errors"] for s in samples),
        "runs": [{k: round(v, 3) for k, v in s.items()} for s in samples],
    }


# Report -----------------------------------------------------------------------------------

SCENARIOS = {  # name: (connections, rows per request)
    "single c=1": (1, 1),
    "single c=8": (8, 1),
    f"batch {BATCH_ROWS} c=1": (1, BATCH_ROWS),
}


def table(results: dict[str, Any]) -> str:
    lines = [
        f"{'system':<14} {'scenario':<15} {'req/s':>9} {'rows/s':>10} {'p50 ms':>8} "
        f"{'p99 ms':>8} {'errors':>6}"
    ]
    for system, result in results["systems"].items():
        for scenario, r in result["scenarios"].items():
            lines.append(
                f"{system:<14} {scenario:<15} {r['requests_per_s']:>9.1f} {r['rows_per_s']:>10.0f}"
                f" {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['errors']:>6}"
            )
    lines.append("")
    lines.append(f"{'system':<14} {'cold start s':>12} {'RSS MB':>8}")
    for system, result in results["systems"].items():
        if "cold_start_s" in result:
            lines.append(f"{system:<14} {result['cold_start_s']:>12.2f} {result['rss_mb']:>8.0f}")
    lines.append("")
    for goal in results["goals"]:
        lines.append(f"{'PASS' if goal['met'] else 'MISS'}  {goal['goal']}: {goal['measured']}")
    return "\n".join(lines)


def paired(a: dict[str, Any], b: dict[str, Any], key: str) -> float:
    """Median over rounds of a/b, each round's pair measured back to back (under the same
    background load), which is steadier than a ratio of medians on a shared machine."""
    return statistics.median(x[key] / y[key] for x, y in zip(a["runs"], b["runs"], strict=True))


def paired_spread(a: dict[str, Any], b: dict[str, Any], key: str) -> str:
    """The interquartile range of the rounds' a/b ratios, as "[q1, q3] over N rounds": how far
    one round strays, so a median near a goal reads as what it is."""
    ratios = [x[key] / y[key] for x, y in zip(a["runs"], b["runs"], strict=True)]
    if len(ratios) < 2:
        return f"[{ratios[0]:.3f}] over 1 round"
    q1, _, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
    return f"[{q1:.3f}, {q3:.3f}] over {len(ratios)} rounds"


def goals(results: dict[str, Any]) -> list[dict[str, Any]]:
    ours = results["systems"]["tabml-serve"]
    peer = results["systems"]["mlflow-serve"]
    limit = results["systems"]["in-process"]["scenarios"]
    c8, peer_c8 = ours["scenarios"]["single c=8"], peer["scenarios"]["single c=8"]
    batch = f"batch {BATCH_ROWS} c=1"
    speedup = paired(c8, peer_c8, "rps")
    p99 = paired(c8, peer_c8, "p99_ms")
    rows = paired(ours["scenarios"][batch], limit[batch], "rps")
    cold = ours["cold_start_s"] / peer["cold_start_s"]
    short_path = paired(c8, results["systems"]["tabml-fastapi"]["scenarios"]["single c=8"], "rps")
    return [
        {
            "goal": "short path: single-record req/s at c=8 >= 1.10x FastAPI's routing",
            "measured": f"{short_path:.2f}x",
            "met": short_path >= 1.10,
        },
        {
            "goal": "single-record req/s at c=8 >= 20x the peer",
            "measured": f"{speedup:.1f}x",
            "met": speedup >= 20,
        },
        {
            "goal": "p99 at c=8 <= 1/5 of the peer's",
            "measured": f"{p99:.3f} of the peer's",
            "met": p99 <= 0.2,
        },
        {
            "goal": f"{BATCH_ROWS}-record batches >= 60% of in-process rows/s",
            "measured": f"{rows:.0%}",
            "met": rows >= 0.6,
        },
        {
            "goal": "cold start <= 1/2 of the peer's",
            "measured": f"{cold:.2f} of the peer's",
            "met": cold <= 0.5,
        },
    ]


# Main -------------------------------------------------------------------------------------


def log_pyfunc(root: Path) -> str:
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    import logging

    import mlflow
    from mlflow import MlflowClient

    from tabml.pyfunc_model import log_pyfunc_model

    logging.getLogger("mlflow").setLevel(logging.ERROR)

    uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("serve-benchmark")
    with mlflow.start_run():
        info = log_pyfunc_model(root / "models", registered_model_name=MODEL_NAME)
    MlflowClient().set_registered_model_alias(
        MODEL_NAME, "champion", str(info.registered_model_version)
    )
    return uri


def wrk_arguments(doc: str | None, results: Path, runs: int = 5) -> argparse.Namespace:
    """The options of every wrk benchmark (seconds per run, runs, output file); exits with a
    clear message when wrk is not installed. `runs`: the default number of rounds, more where
    a goal is a few percent (five 3-second rounds put a 3 % effect inside their spread)."""
    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=3, help="seconds per run")
    parser.add_argument("--runs", type=int, default=runs, help="runs per scenario (median)")
    parser.add_argument("--out", type=Path, default=results)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found (Debian: apt-get install -y wrk)")
    return args


def save(results: dict[str, Any], out: Path, summary: str) -> None:
    """Write the results as JSON and print their summary and where they went."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(summary)
    print(f"\nsaved {out.relative_to(REPO) if out.is_relative_to(REPO) else out}")


def main() -> int:
    args = wrk_arguments(__doc__, RESULTS)

    workdir = Path(tempfile.mkdtemp(prefix="tabml-serve-bench-"))
    try:
        root = snapshot_serving_artifacts(workdir / "repo")
        data = load_data(root)
        tracking_uri = log_pyfunc(root)
        results = run(root, data, tracking_uri, args)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    save(results, args.out, table(results))
    return 0


def run(root: Path, data: Data, tracking_uri: str, args: argparse.Namespace) -> dict[str, Any]:
    """Cold starts one server at a time; then rounds in which every scenario runs on every
    system in turn (so a change in background load hits all of them alike); medians."""
    load_before = os.getloadavg()
    script = root / "post.lua"
    script.write_text(LUA)
    base_env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TABML_", "MLFLOW_", "PROMETHEUS_", "OMP_"))
    }
    base_env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), base_env["PATH"]])
    systems = [
        System(
            "tabml-serve",
            [sys.executable, "-m", "tabml.serving.cli"],
            base_env,
            "/predict",
            wrap=lambda records: records,
            unwrap=lambda body: [p["probability"] for p in body["predictions"]],
        ),
        System(
            "tabml-fastapi",
            [sys.executable, "-m", "tabml.serving.cli", "--no-short-path"],
            base_env,
            "/predict",
            wrap=lambda records: records,
            unwrap=lambda body: [p["probability"] for p in body["predictions"]],
        ),
        System(
            "mlflow-serve",
            mlflow_models_serve_cmd(f"models:/{MODEL_NAME}@champion"),
            {**base_env, "MLFLOW_TRACKING_URI": tracking_uri},
            "/invocations",
            wrap=lambda records: {"dataframe_records": records},
            unwrap=lambda body: body["predictions"],
            port_flag="-p",
        ),
    ]
    bodies: dict[tuple[str, int], Path] = {}
    for system in systems:
        single = root / f"{system.name}-single.txt"
        single.write_text(
            "".join(json.dumps(system.wrap([r])) + "\n" for r in data.records[:ROTATING_RECORDS])
        )
        batch = root / f"{system.name}-batch.txt"
        batch.write_text(
            "".join(
                json.dumps(system.wrap(data.records[i : i + BATCH_ROWS])) + "\n"
                for i in range(0, 3 * BATCH_ROWS, BATCH_ROWS)
            )
        )
        bodies[system.name, 1], bodies[system.name, BATCH_ROWS] = single, batch

    samples: dict[tuple[str, str], list[dict[str, Any]]] = {}
    with contextlib.ExitStack() as stack:
        for system in systems:  # one at a time: the cold start has the machine to itself
            stack.enter_context(running(system, root, data))
            check_answers(system, data, list(range(0, 3000, 3)))
            print(f"{system.name}: cold start {system.results['cold_start_s']:.2f} s", flush=True)
        for system in systems:  # warm-up
            for connections, rows in SCENARIOS.values():
                wrk(system.url + system.path, bodies[system.name, rows], script, connections, 1)
        for round_ in range(args.runs):
            order = systems if round_ % 2 == 0 else systems[::-1]
            for scenario, (connections, rows) in SCENARIOS.items():
                for system in order:
                    sample = wrk(
                        system.url + system.path,
                        bodies[system.name, rows],
                        script,
                        connections,
                        args.duration,
                    )
                    samples.setdefault((system.name, scenario), []).append(sample)
                if connections == 1:
                    sample = in_process(data, rows, args.duration)
                    samples.setdefault(("in-process", scenario), []).append(sample)
            print(f"round {round_ + 1}/{args.runs} done", flush=True)
        for system in systems:
            check_answers(system, data, list(range(5000, 8000, 3)))
            system.results["rss_mb"] = round(tree_rss_mb(system.process.pid), 1)

    results: dict[str, Any] = {
        "benchmark": "prediction service: tabml-serve vs its FastAPI routing vs mlflow models "
        "serve vs in-process",
        "machine": machine(load_before),
        "settings": {
            "duration_s": args.duration,
            "runs": args.runs,
            "wrk_threads": 1,
            "rotating_records": ROTATING_RECORDS,
            "batch_rows": BATCH_ROWS,
        },
        "systems": {},
    }
    for name in [s.name for s in systems] + ["in-process"]:
        entry: dict[str, Any] = {}
        system = next((s for s in systems if s.name == name), None)
        if system is not None:
            entry.update(
                cold_start_s=system.results["cold_start_s"], rss_mb=system.results["rss_mb"]
            )
        entry["scenarios"] = {
            scenario: summarize(samples[name, scenario], rows)
            for scenario, (_, rows) in SCENARIOS.items()
            if (name, scenario) in samples
        }
        results["systems"][name] = entry
    results["goals"] = goals(results)
    return results


if __name__ == "__main__":
    sys.exit(main())
