"""Load test of the multi-worker prediction service on loopback, with wrk.

    python bench/load_test.py                       # 2 workers, 10 s per step, c = 1 4 16 64
    python bench/load_test.py --duration 5 --concurrency 1,8 --workers 4

Starts `tabml-serve --workers N` on a free loopback port (on a snapshot of models/ checked
against dvc.lock, so a pipeline run elsewhere cannot change the model mid-test), then runs wrk
for a fixed duration at each concurrency with two bodies: one record, and a batch of 100 real
test rows. For every step it records throughput, p50/p95/p99/max latency and errors; the
service's resident memory (supervisor + workers) is taken after a warm-up and again at the end
(the leak check; the warm-up runs at the highest concurrency, so buffers are already at their
high-water mark and growth means a leak), and after every step. Results go to
bench/results/load.json and a table is printed.

Baseline in the same run: plain `uvicorn --workers N --loop asyncio` (stock httptools
protocol) at concurrency 1. uvicorn then binds the socket itself and asyncio leaves TCP_NODELAY
off, so every keep-alive request waits ~40 ms for the client's delayed ACK (uvloop, the default
loop, sets it itself). `tabml-serve` sets TCP_NODELAY on each connection: its p50 at
concurrency 1 must stay near 1 ms with either loop.

wrk runs on the same machine and takes CPU from the service: the per-core figures are a lower
bound for a dedicated server. Needs Linux (/proc) and `wrk` (Debian: apt-get install wrk).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from tests.support.artifacts import snapshot_serving_artifacts  # noqa: E402
from tests.support.processes import background_process, free_port  # noqa: E402

RESULTS = REPO_ROOT / "bench" / "results" / "load.json"
PREPARED_TEST = REPO_ROOT / "artifacts" / "prepared" / "test.parquet"
BATCH_ROWS = 100
LEAK_MIB = 20  # growth of one process over the whole run that counts as a suspected leak

# wrk script: POST the body file given as the first script argument, print a JSON summary.
LUA = r"""
init = function(args)
  local f = assert(io.open(args[1], "rb"))
  wrk.body = f:read("*a")
  f:close()
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "bytes": %d, "p50_us": %d, "p90_us": %d, '
    .. '"p95_us": %d, "p99_us": %d, "max_us": %d, "mean_us": %.1f, "errors": {"connect": %d, '
    .. '"read": %d, "write": %d, "status": %d, "timeout": %d}}\n',
    summary.requests, summary.duration, summary.bytes, latency:percentile(50),
    latency:percentile(90), latency:percentile(95), latency:percentile(99), latency.max,
    latency.mean, e.connect, e.read, e.write, e.status, e.timeout))
end
"""


# --------------------------------------------------------------------------------------- memory


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = (entry / "stat").read_text()
            ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
            tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:80]


def memory(root: int) -> dict[str, Any]:
    """RSS of a process tree in MiB: total, per process (`supervisor`, `worker-*`, helpers)."""
    tree = _children()
    pids, stack = [], [root]
    while stack:
        pid = stack.pop()
        pids.append(pid)
        stack.extend(tree.get(pid, []))
    processes: dict[str, float] = {}
    workers = 0
    for pid in sorted(pids):
        with contextlib.suppress(OSError):
            rss = round(_rss_kib(pid) / 1024, 1)
            command = _cmdline(pid)
            if pid == root:
                name = "supervisor"
            elif "spawn_main" in command:
                workers += 1
                name = f"worker-{workers}"
            elif "resource_tracker" in command:
                name = "resource-tracker"
            else:
                name = f"other-{pid}"
            processes[name] = rss
    return {"total_mib": round(sum(processes.values()), 1), "processes": processes}


# --------------------------------------------------------------------------------------- server


def _child_env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TABML_", "PROMETHEUS_MULTIPROC", "MLFLOW_"))
    }
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


@contextlib.contextmanager
def server(command: list[str], cwd: Path, log: Path, timeout: float = 90.0) -> Iterator[Any]:
    """Run `command` (which must listen on the port in its URL); yield once /ready answers 200
    ten times in a row, so every worker has had the chance to start."""
    url = f"http://127.0.0.1:{command[command.index('--port') + 1]}"
    with background_process(
        command,
        log=log,
        ready_url=f"{url}/ready",
        cwd=cwd,
        env=_child_env(),
        timeout=timeout,
        consecutive=10,
    ) as process:
        process.url = url  # type: ignore[attr-defined]
        yield process


# ---------------------------------------------------------------------------------------- bodies


def bodies(workspace: Path, directory: Path) -> dict[str, Path]:
    """`single`: one record (the first test row); `batch100`: the first 100 test rows."""
    from tabml.contract import DataContract
    from tabml.serving.examples import example_records

    contract = DataContract.load(workspace / "models" / "contract.json")
    names = contract.feature_names
    records: list[dict[str, Any]] = []
    if PREPARED_TEST.is_file():
        from tabml.columnar import read_columns

        columns = read_columns(PREPARED_TEST)
        lists = [columns[name][:BATCH_ROWS].tolist() for name in names]
        for row in zip(*lists, strict=True):
            records.append(
                {
                    n: None if isinstance(v, float) and math.isnan(v) else v
                    for n, v in zip(names, row, strict=True)
                }
            )
    if len(records) < BATCH_ROWS:  # no prepared split: cycle the built-in examples
        examples = example_records(contract)
        records = [examples[i % len(examples)] for i in range(BATCH_ROWS)]
    paths = {"single": directory / "single.json", "batch100": directory / "batch100.json"}
    paths["single"].write_text(json.dumps(records[0]))
    paths["batch100"].write_text(json.dumps(records[:BATCH_ROWS]))
    return paths


def check_body(url: str, body: Path, rows: int) -> None:
    request = urllib.request.Request(
        f"{url}/predict",
        data=body.read_bytes(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        answer = json.loads(response.read())
    text = json.dumps(answer)
    if response.status != 200 or text.count("probability") < rows:
        raise SystemExit(f"unexpected answer to {body.name}: {text[:300]}")


# ------------------------------------------------------------------------------------------- wrk


def wrk(url: str, script: Path, body: Path, connections: int, seconds: int) -> dict[str, Any]:
    threads = max(1, min(connections, 2))
    command = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        "5s",
        "-s",
        str(script),
        f"{url}/predict",
        "--",
        str(body),
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=seconds + 60, check=False
    )
    line = next((s for s in result.stdout.splitlines() if s.startswith("WRK_JSON ")), None)
    if result.returncode != 0 or line is None:
        raise SystemExit(f"wrk failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    raw = json.loads(line.removeprefix("WRK_JSON "))
    duration = raw["duration_us"] / 1e6
    return {
        "concurrency": connections,
        "wrk_threads": threads,
        "requests": raw["requests"],
        "duration_s": round(duration, 2),
        "requests_per_s": round(raw["requests"] / duration, 1),
        "latency_ms": {
            k: round(raw[f"{k}_us"] / 1000, 3) for k in ("p50", "p90", "p95", "p99", "max", "mean")
        },
        "errors": raw["errors"],
        "error_count": sum(raw["errors"].values()),
    }


def saturation(steps: list[dict[str, Any]], cores: int, rows: int) -> dict[str, Any]:
    """Peak throughput, and the lowest concurrency that reaches 90% of it."""
    peak = max(steps, key=lambda s: s["requests_per_s"])
    knee = next(s for s in steps if s["requests_per_s"] >= 0.9 * peak["requests_per_s"])
    return {
        "peak_requests_per_s": peak["requests_per_s"],
        "peak_at_concurrency": peak["concurrency"],
        "saturates_at_concurrency": knee["concurrency"],
        "p99_ms_at_saturation": knee["latency_ms"]["p99"],
        "requests_per_s_per_core": round(peak["requests_per_s"] / cores, 1),
        "records_per_s_per_core": round(peak["requests_per_s"] * rows / cores, 1),
    }


# ------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--duration", type=int, default=10, help="seconds per step")
    parser.add_argument("--concurrency", default="1,4,16,64", help="comma-separated")
    parser.add_argument("--baseline-duration", type=int, default=5)
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    if shutil.which("wrk") is None:
        print("error: wrk not found (Debian: apt-get install wrk)", file=sys.stderr)
        return 2
    cores = os.cpu_count() or 1

    with tempfile.TemporaryDirectory(prefix="tabml-load-") as tmp:
        tmp_path = Path(tmp)
        workspace = snapshot_serving_artifacts(tmp_path / "repo")
        script = tmp_path / "post.lua"
        script.write_text(LUA)
        payloads = bodies(workspace, tmp_path)
        rows = {"single": 1, "batch100": BATCH_ROWS}

        serve = [sys.executable, "-m", "tabml.serving.cli", "--port", str(free_port())]
        serve += ["--workers", str(args.workers)]
        results: dict[str, Any] = {}
        with server(serve, workspace, tmp_path / "serve.log") as process:
            url = process.url
            for name, body in payloads.items():
                check_body(url, body, rows[name])
            # Warm-up at the highest concurrency with both bodies: first requests, and buffers
            # and allocator pools at their high-water mark, so growth afterwards means a leak.
            for body in payloads.values():
                wrk(url, script, body, max(levels), 3)
            rss_before = memory(process.pid)
            print(f"tabml-serve --workers {args.workers}: RSS after warm-up {rss_before}")
            for name, body in payloads.items():
                steps = []
                for connections in levels:
                    step = wrk(url, script, body, connections, args.duration)
                    step["records_per_s"] = round(step["requests_per_s"] * rows[name], 1)
                    step["rss_mib_after"] = memory(process.pid)["total_mib"]
                    steps.append(step)
                    print(
                        f"{name:9} c={connections:<3} {step['requests_per_s']:8.1f} req/s "
                        f"p50 {step['latency_ms']['p50']:7.2f} ms "
                        f"p99 {step['latency_ms']['p99']:7.2f} ms errors {step['error_count']}",
                        flush=True,
                    )
                results[name] = {
                    "rows_per_request": rows[name],
                    "body_bytes": body.stat().st_size,
                    "steps": steps,
                    "saturation": saturation(steps, cores, rows[name]),
                }
            rss_after = memory(process.pid)
            print(f"RSS at the end {rss_after}")

        # The keep-alive check: with the asyncio event loop, stock uvicorn workers leave
        # TCP_NODELAY off (uvloop sets it itself); tabml-serve's protocol sets it either way.
        keep_alive: dict[str, Any] = {}
        if not args.no_baseline:
            ours = [sys.executable, "-m", "tabml.serving.cli", "--port", str(free_port())]
            ours += ["--workers", str(args.workers), "--loop", "asyncio"]
            stock = [sys.executable, "-m", "uvicorn", "tabml.serving.worker:create_app_from_env"]
            stock += ["--factory", "--workers", str(args.workers), "--port", str(free_port())]
            stock += ["--http", "httptools", "--loop", "asyncio", "--no-access-log"]
            variants = {
                "tabml_serve_asyncio_loop": ours,
                "stock_uvicorn_asyncio_loop": stock,
            }
            for name, command in variants.items():
                process_port = command[command.index("--port") + 1]
                with server(command, workspace, tmp_path / f"{name}.log") as process:
                    wrk(process.url, script, payloads["single"], 1, 1)
                    step = wrk(process.url, script, payloads["single"], 1, args.baseline_duration)
                step["command"] = " ".join(command[1:]).replace("--port " + process_port, "")
                keep_alive[name] = step
                print(
                    f"{name:27} c=1 {step['requests_per_s']:8.1f} req/s "
                    f"p50 {step['latency_ms']['p50']:7.2f} ms"
                )

    total_errors = sum(s["error_count"] for r in results.values() for s in r["steps"])
    growth = {
        name: round(rss_after["processes"].get(name, 0) - mib, 1)
        for name, mib in rss_before["processes"].items()
    }
    single_c1 = results["single"]["steps"][0] if levels[0] == 1 else None
    report = {
        "benchmark": "load test of tabml-serve on loopback (wrk)",
        "baseline": "stock `uvicorn --workers N --loop asyncio`, concurrency 1 (TCP_NODELAY off)",
        "machine": {
            "cpus": cores,
            "python": platform.python_version(),
            "wrk": subprocess.run(["wrk", "--version"], capture_output=True, text=True)
            .stdout.splitlines()[0]
            .strip(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
            "note": "wrk shares the cores with the service; per-core figures are a lower bound",
        },
        "service": {
            "command": f"tabml-serve --workers {args.workers}",
            "workers": args.workers,
            "duration_s_per_step": args.duration,
        },
        "results": results,
        "rss_mib": {
            "after_warm_up": rss_before,
            "at_end": rss_after,
            "growth": growth,
            "requests_served": sum(s["requests"] for r in results.values() for s in r["steps"]),
            "leak_suspected": any(mib > LEAK_MIB for mib in growth.values()),
        },
        "errors_total": total_errors,
        "keep_alive_check": {
            "p50_ms_at_concurrency_1": {
                "tabml_serve_default_loop": single_c1["latency_ms"]["p50"] if single_c1 else None,
                **{name: step["latency_ms"]["p50"] for name, step in keep_alive.items()},
            },
            "runs": keep_alive,
        },
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print()
    print(table(report))
    print(f"\nsaved {args.out}")
    return 0 if total_errors == 0 else 1


def table(report: dict[str, Any]) -> str:
    lines = [
        "| body | concurrency | req/s | records/s | p50 ms | p95 ms | p99 ms | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, result in report["results"].items():
        for s in result["steps"]:
            ms = s["latency_ms"]
            lines.append(
                f"| {name} | {s['concurrency']} | {s['requests_per_s']:.0f} | "
                f"{s['records_per_s']:.0f} | {ms['p50']:.2f} | {ms['p95']:.2f} | "
                f"{ms['p99']:.2f} | {s['error_count']} |"
            )
    labels = {
        "tabml_serve_asyncio_loop": "single, tabml-serve --loop asyncio",
        "stock_uvicorn_asyncio_loop": "single, stock uvicorn --workers, --loop asyncio",
    }
    for name, s in report["keep_alive_check"]["runs"].items():
        ms = s["latency_ms"]
        lines.append(
            f"| {labels.get(name, name)} | 1 | {s['requests_per_s']:.0f} | "
            f"{s['requests_per_s']:.0f} | {ms['p50']:.2f} | {ms['p95']:.2f} | "
            f"{ms['p99']:.2f} | {s['error_count']} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
