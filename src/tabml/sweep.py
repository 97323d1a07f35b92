"""Hyperparameter sweeps: Hydra's multirun syntax, run as DVC queued experiments.

`python src/train.py -m model.learning_rate=0.03,0.1 model.num_leaves=15,63` expands the
overrides into their combinations (Hydra's parser, in the order Hydra's basic sweeper uses),
validates every combination before anything is queued, queues one `dvc exp run --queue -S ...`
per combination, starts the queue's workers (one by default: DVC's queue is racy with several),
waits, and prints the experiments sorted by the primary metric. Each experiment runs the whole
pipeline in its own workspace, so each appears in `dvc exp show` and as one MLflow run (the
`register` stage), tagged `dvc_exp_name`.

The native equivalent is `dvc exp run --queue -S 'model.learning_rate=0.03,0.1' ...` followed
by `dvc queue start`. Queued experiments see only what git tracks (plus uncommitted changes to
tracked files): commit new files first.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from tabml.config import ConfigError, Params

METRICS_FILE = "reports/metrics.json"
MODEL_FILE = "models/model.txt"
PARAMS_FILE = "params.yaml"
LOG_DIR = Path(".dvc/tmp")
SHOWN_METRICS = ("roc_auc", "pr_auc", "log_loss", "best_iteration")
DONE = ("Success", "Failed")


def expand(overrides: list[str]) -> list[list[str]]:
    """Overrides with sweeps (`a=1,2`, `b=range(1,4)`) → one list of plain overrides per
    combination. The first sweep varies slowest, as in Hydra's basic sweeper."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as exc:
        raise ConfigError(f"invalid override: {exc}") from None
    choices = []
    for override in parsed:
        if not override.is_sweep_override():
            choices.append([override.input_line])
        elif override.is_discrete_sweep() and "glob" not in override.input_line:
            key = override.get_key_element()
            choices.append([f"{key}={value}" for value in override.sweep_string_iterator()])
        else:
            raise ConfigError(
                f"cannot expand {override.input_line!r}: use a list (a,b,c) or range(start,stop)"
            )
    return [list(combination) for combination in itertools.product(*choices)]


@dataclass(frozen=True)
class Experiment:
    name: str
    overrides: list[str]


def queue(combinations: list[list[str]], prefix: str) -> list[Experiment]:
    """`dvc exp run --queue --name <prefix>-<i> -S ...` for each combination, in-process."""
    from dvc.repo import Repo

    experiments = [Experiment(f"{prefix}-{i}", c) for i, c in enumerate(combinations, start=1)]
    with Repo() as repo:
        untracked = [p for p in repo.scm.untracked_files() if p.startswith(("src/", "conf/"))]
        if untracked:
            print(
                "warning: queued experiments do not see untracked files; commit them first: "
                + ", ".join(sorted(untracked)),
                file=sys.stderr,
            )
        for experiment in experiments:
            repo.experiments.run(params=experiment.overrides, queue=True, name=experiment.name)
    return experiments


def start_workers(jobs: int, log_file: Path) -> None:
    """`dvc queue start -j <jobs>`. Its output must go to a file: the detached worker keeps
    inherited pipes open, so a caller reading a pipe would wait for the whole queue."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        subprocess.run(
            [sys.executable, "-m", "dvc", "queue", "start", "-j", str(jobs)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            check=True,
        )


def queue_status(names: list[str]) -> dict[str, str]:
    from dvc.repo import Repo

    with Repo() as repo:
        entries = repo.experiments.celery_queue.status()
    wanted = set(names)
    return {e["name"]: e["status"] for e in entries if e.get("name") in wanted}


def wait(names: list[str], poll: float = 2.0, timeout: float | None = None) -> dict[str, str]:
    """Block until every named experiment succeeded or failed; report progress as it goes."""
    start, reported = time.monotonic(), -1
    while True:
        status = queue_status(names)
        done = sum(status.get(name) in DONE for name in names)
        if done != reported:
            running = [n for n in names if status.get(n) == "Running"]
            now = f", running {running[0]}" if running else ""
            print(f"sweep: {done}/{len(names)} done{now} ({time.monotonic() - start:.0f} s)")
            reported = done
        if done == len(names):
            return status
        if timeout is not None and time.monotonic() - start > timeout:
            raise TimeoutError(f"sweep did not finish within {timeout:.0f} s: {status}")
        time.sleep(poll)


def experiment_results() -> dict[str, dict[str, Any]]:
    """Name → {"params": ..., "metrics": ...} for every experiment `dvc exp show` lists."""
    from dvc.repo import Repo

    with Repo() as repo:
        states = [state.dumpd() for state in repo.experiments.show()]
    results = {}
    for baseline in states:
        for experiment in baseline.get("experiments") or []:
            for rev in experiment.get("revs", []):
                if not rev.get("name"):
                    continue
                data = rev.get("data") or {}
                params = (data.get("params") or {}).get(PARAMS_FILE, {}).get("data", {})
                metrics = (data.get("metrics") or {}).get(METRICS_FILE, {}).get("data", {})
                model = (data.get("outs") or {}).get(MODEL_FILE) or {}
                results[rev["name"]] = {
                    "params": params,
                    "metrics": metrics.get("test", {}),
                    "model_md5": model.get("hash"),
                }
    return results


def summary_rows(
    experiments: list[Experiment],
    status: dict[str, str],
    results: dict[str, dict[str, Any]],
    metric: str,
) -> list[dict[str, Any]]:
    """One row per experiment, best `metric` first, failed ones last."""
    rows = []
    for experiment in experiments:
        result = results.get(experiment.name, {})
        metrics = result.get("metrics", {})
        rows.append(
            {
                "name": experiment.name,
                "overrides": " ".join(experiment.overrides),
                "status": status.get(experiment.name, "unknown"),
                **{key: metrics.get(key) for key in dict.fromkeys((metric, *SHOWN_METRICS))},
                "model_md5": result.get("model_md5"),
            }
        )
    return sorted(rows, key=lambda row: (row[metric] is None, -(row[metric] or 0.0)))


def format_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no experiments)"
    header = [key for key in rows[0] if key != "model_md5"]
    cells = [header] + [["-" if row[k] is None else str(row[k]) for k in header] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in cells
    )


def promote_best(best: dict[str, Any], params: Params, prefix: str) -> str:
    """Put the sweep's best model through the gate against the current champion.

    Experiments in DVC's queue register their versions as candidates without promoting (they
    finish in arbitrary order); this makes the best of them champion if it passes the gate.
    """
    from tabml import registry, tracking
    from tabml.data import pinned_dir_md5

    uri = tracking.resolve_tracking_uri(params.tracking.uri)
    name = params.tracking.registered_model
    client, experiment_id = tracking.connect(uri, params.tracking.experiment)
    run_id = tracking.find_logged_run(
        client, experiment_id, best["model_md5"], pinned_dir_md5(tracking.DATA_DVC)
    )
    version = client.get_run(run_id).data.tags.get("registered_version") if run_id else None
    if version is None:
        return f"{best['name']}: no registered version found in {uri}; champion unchanged"
    if registry.current_alias(client, name, registry.CHAMPION) == version:
        return f"{name} v{version} ({best['name']}) is already champion"
    metric = params.gate.metric
    decision = registry.apply_gate(
        client, name, version, float(best[metric]), params.gate, context=f"best of {prefix}"
    )
    reasons = "".join(f"\n  - {reason}" for reason in decision.reasons)
    verdict = "promoted to champion" if decision.passed else "not promoted (champion unchanged)"
    return f"{name} v{version} ({best['name']}), best of the sweep: {verdict}{reasons}"


def run_sweep(overrides: list[str], jobs: int = 1) -> int:
    """Expand, validate, queue, run and summarise; 0 if every experiment succeeded.

    Every combination is composed and validated, the tracking store checked and the data made
    present before anything is queued, so a typo or an unreachable server fails in a second.
    """
    from tabml.pipeline import compose, ensure_data
    from tabml.tracking import check_reachable, resolve_tracking_uri

    combinations = expand(overrides)
    params = [compose(combination)[0] for combination in combinations]
    for uri in sorted({resolve_tracking_uri(p.tracking.uri) for p in params}):
        check_reachable(uri)
    ensure_data(params[0])
    metric = params[0].gate.metric
    prefix = f"sweep-{datetime.now():%Y%m%d-%H%M%S}"
    print(f"sweep {prefix}: {len(combinations)} experiment(s), {jobs} worker(s)")
    started = time.monotonic()
    experiments = queue(combinations, prefix)
    log_file = LOG_DIR / f"{prefix}.log"
    start_workers(jobs, log_file)
    status = wait([e.name for e in experiments])
    elapsed = time.monotonic() - started
    rows = summary_rows(experiments, status, experiment_results(), metric)
    print(f"\nsweep {prefix}: {len(rows)} experiment(s) in {elapsed:.0f} s, by test {metric}:")
    print(format_table(rows))
    failed = [row["name"] for row in rows if row["status"] != "Success"]
    for name in failed:
        print(f"{name} failed: see `dvc queue logs {name}`")
    best = next((row for row in rows if row["status"] == "Success"), None)
    if best is not None and best["model_md5"]:
        print(promote_best(best, params[0], prefix))
    if best is not None:
        print(
            f"\nbest: {best['name']} ({metric} {best[metric]}). Apply it to the workspace with\n"
            f"  dvc exp apply {best['name']}\n"
            f"or make it the default by putting `{best['overrides']}` into conf/ "
            f"(`python src/train.py {best['overrides']}` reproduces it from the run cache).\n"
            f"MLflow: runs tagged dvc_exp_name = '{prefix}-<n>' "
            f"(filter: tags.dvc_exp_name LIKE '{prefix}-%')"
        )
    return 1 if failed else 0
