"""Hyperparameter sweeps: Hydra's multirun syntax, run as DVC queued experiments.

`python src/train.py -m model.learning_rate=0.03,0.1 model.num_leaves=15,63` expands the
overrides into their combinations (Hydra's parser, in the order Hydra's basic sweeper uses),
validates every combination before anything is queued, queues one `dvc exp run --queue -S ...`
per combination, starts the queue's workers (one by default: DVC's queue is racy with several),
waits, and prints the experiments sorted by the primary metric. Each experiment runs the whole
pipeline in its own workspace, so each appears in `dvc exp show`; then every experiment's model
is tracked from its committed outputs (`track_experiments`): one MLflow run per model, tagged
`dvc_exp.<name>` for every experiment that produced it.

The native equivalent is `dvc exp run --queue -S 'model.learning_rate=0.03,0.1' ...` followed
by `dvc queue start`. Queued experiments see only what git tracks (plus uncommitted changes to
tracked files): commit new files first.

About 320 lines: expanding, queueing, waiting for and tracking one sweep are steps of one
command, each short; split, the order they depend on would be harder to see.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from tabml.config import ConfigError, Params, load_params, parse_params
from tabml.gate_rules import QualityEvidence
from tabml.layout import (
    LOCK_FILE,
    METRICS_FILE,
    MODEL_FILE,
    MODELS_DIR,
    PARAMS_FILE,
    REPORTS_DIR,
)
from tabml.lineage import commit_tags
from tabml.stage_deps import update_dvc_yaml
from tabml.track import Tracked, track_model
from tabml.tracking import RunFiles
from tabml.tracking_store import check_reachable, resolve_tracking_uri

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
        line = str(override.input_line)
        if not override.is_sweep_override():
            choices.append([line])
        elif override.is_discrete_sweep() and "glob" not in line:
            key = override.get_key_element()
            choices.append([f"{key}={value}" for value in override.sweep_string_iterator()])
        else:
            raise ConfigError(f"cannot expand {line!r}: use a list (a,b,c) or range(start,stop)")
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
                params = (data.get("params") or {}).get(str(PARAMS_FILE), {}).get("data", {})
                metrics = (data.get("metrics") or {}).get(str(METRICS_FILE), {}).get("data", {})
                model = (data.get("outs") or {}).get((MODELS_DIR / MODEL_FILE).as_posix()) or {}
                results[rev["name"]] = {
                    "rev": rev.get("rev"),
                    "baseline_rev": baseline.get("rev"),
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


def materialise(rev: str, dest: Path) -> RunFiles:
    """An experiment's outputs (models/, reports/) and its params.yaml, dvc.lock and its
    dataset's .dvc file, copied out of git and the DVC cache into `dest`, laid out like the
    repository."""
    from dvc.api import DVCFileSystem

    fs = DVCFileSystem(".", rev=rev)
    for path in (MODELS_DIR, REPORTS_DIR):
        fs.get(path.as_posix(), str(dest / path), recursive=True)
    for path in (PARAMS_FILE, LOCK_FILE):
        fs.get_file(path.as_posix(), str(dest / path))
    dvc_file = load_params(dest / PARAMS_FILE).dataset.dvc_file
    (dest / dvc_file).parent.mkdir(parents=True, exist_ok=True)
    fs.get_file(dvc_file.as_posix(), str(dest / dvc_file))
    return RunFiles(dest)


def track_experiments(
    rows: list[dict[str, Any]], results: dict[str, dict[str, Any]], uri: str, prefix: str
) -> dict[str, Tracked]:
    """One MLflow run per successful experiment's model, logged from its committed outputs;
    registered as a candidate without promotion. An experiment whose model is already tracked
    (DVC restored it from its run cache, or another experiment trained the same one) is linked
    to that run by a `dvc_exp.<name>` tag instead of logging a duplicate."""
    tracked = {}
    for row in rows:
        result = results.get(row["name"], {})
        if row["status"] != "Success" or not result.get("rev"):
            continue
        with tempfile.TemporaryDirectory(prefix="tabml-exp-") as tmp:
            files = materialise(result["rev"], Path(tmp))
            raw = yaml.safe_load(files.params.read_text())
            git_tags = commit_tags(result["baseline_rev"], [PARAMS_FILE.as_posix()]) | {
                "dvc_exp_baseline_rev": result["baseline_rev"],
                "dvc_exp_rev": result["rev"],
            }
            tracked[row["name"]] = track_model(
                parse_params(raw),
                raw,
                uri,
                git_tags,
                files=files,
                promote=False,
                experiment_name=row["name"],
                context=f"one of {prefix}; the sweep promotes its best",
            )
    return tracked


def promote_best(best: dict[str, Any], tracked: Tracked, params: Params, prefix: str) -> str:
    """Put the sweep's best model through the gate against the current champion."""
    from tabml import registry, tracking

    name = params.tracking.registered_model
    client, _ = tracking.connect(tracked.uri, params.tracking.experiment)
    version = tracked.version or client.get_run(tracked.run_id).data.tags.get("registered_version")
    if version is None:
        return f"{best['name']}: no registered version found in {tracked.uri}; champion unchanged"
    if registry.current_alias(client, name, registry.CHAMPION) == version:
        return f"{name} v{version} ({best['name']}) is already champion"
    metric = params.gate.metric
    evidence = QualityEvidence(client.get_run(tracked.run_id).data.metrics)
    decision = registry.apply_gate(
        client,
        name,
        version,
        float(best[metric]),
        params.gate,
        context=f"best of {prefix}",
        evidence=evidence,
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

    combinations = expand(overrides)
    params = [compose(combination)[0] for combination in combinations]
    uris = sorted({resolve_tracking_uri(p.tracking.uri) for p in params})
    if len(uris) != 1:
        raise ConfigError(f"a sweep logs to one tracking store, but its combinations name {uris}")
    (uri,) = uris
    check_reachable(uri)
    updated = update_dvc_yaml()  # queued experiments must run with complete code deps
    if updated:
        print(f"dvc.yaml: code deps of {', '.join(updated)} updated from their imports")
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
    results = experiment_results()
    rows = summary_rows(experiments, status, results, metric)
    print(f"\nsweep {prefix}: {len(rows)} experiment(s) in {elapsed:.0f} s, by test {metric}:")
    print(format_table(rows))
    tracked = track_experiments(rows, results, uri, prefix)
    for name, outcome in tracked.items():
        print(f"{name}: {'logged' if outcome.new else 'linked to'} run {outcome.run_id}")
    failed = [row["name"] for row in rows if row["status"] != "Success"]
    for name in failed:
        print(f"{name} failed: see `dvc queue logs {name}`")
    best = next((row for row in rows if row["status"] == "Success"), None)
    if best is not None and best["name"] in tracked:
        print(promote_best(best, tracked[best["name"]], params[0], prefix))
    if best is not None:
        print(
            f"\nbest: {best['name']} ({metric} {best[metric]}). Apply it to the workspace with\n"
            f"  dvc exp apply {best['name']}\n"
            f"or make it the default by putting `{best['overrides']}` into conf/ "
            f"(`python src/train.py {best['overrides']}` reproduces it from the run cache).\n"
            f"MLflow: each experiment's run carries the tag `dvc_exp.<name>` "
            f"(e.g. filter: tags.`dvc_exp.{best['name']}` != '')"
        )
    return 1 if failed else 0
