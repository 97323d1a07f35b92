"""register: log the trained model as one MLflow run, register it and apply the quality gate.

Logs nothing when a finished run already holds this model trained on this data (no-op, forced
rerun, DVC run-cache restore). The stage has no outputs: run ids and timestamps must not reach
dvc.lock, which stays byte-identical across reruns.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import yaml

from tabml import tracking
from tabml.config import PARAMS_FILE, load_params
from tabml.stages._runner import run_stage

MODEL_NAME = "model"
DEFERRED = (
    "run in a DVC experiment workspace; a sweep promotes its best version at the end, "
    "or use `tabml-registry promote`"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--plots", type=Path, required=True)
    parser.add_argument("--curves", type=Path, required=True)
    parser.add_argument("--features", type=Path, required=True)
    args = parser.parse_args()

    params = load_params()
    raw_params = yaml.safe_load(PARAMS_FILE.read_text())
    files = tracking.RunFiles(args.models, args.metrics, args.plots, args.curves, args.features)
    uri = tracking.resolve_tracking_uri(params.tracking.uri)
    tracking.check_reachable(uri, require_server=params.tracking.require_server)
    lineage = tracking.collect_lineage(files.model_file, params.dataset.name, raw_params)
    watch = tracking.Stopwatch()

    with watch.time("import"):
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        import mlflow

        from tabml import registry
        from tabml.pyfunc_model import log_pyfunc_model
    with watch.time("connect"):
        client, experiment_id = tracking.connect(uri, params.tracking.experiment)
        existing = tracking.find_logged_run(
            client, experiment_id, lineage.model_md5, lineage.data_md5
        )
    if existing:
        print(
            f"model {lineage.model_md5} on data {lineage.data_md5} is already logged as run "
            f"{existing} in {uri}; nothing logged"
        )
        return

    name = params.tracking.registered_model
    # Queued experiments finish in arbitrary order; each promoting itself would leave the last
    # one that passed as champion, not the best. The sweep promotes its best at the end.
    promote = not tracking.in_experiment_workspace()
    metric = params.gate.metric
    value = float(json.loads(files.metrics.read_text())["test"][metric])
    with mlflow.start_run(
        experiment_id=experiment_id,
        run_name=os.environ.get("DVC_EXP_NAME"),
        tags=lineage.tags,
    ) as run:
        run_id = run.info.run_id
        with watch.time("log"):
            tracking.log_run_contents(client, run_id, files, raw_params)
        with watch.time("register"):
            info = log_pyfunc_model(files.models, MODEL_NAME, name)
            version = str(info.registered_model_version)
            decision = registry.register_with_gate(
                client, name, version, value, params.gate, promote, "" if promote else DEFERRED
            )
            mlflow.set_tags(decision.tags(params.gate) | {"registered_version": version})

    if decision.passed and promote:
        verdict = "promoted to champion"
    elif decision.passed:
        verdict = f"stays candidate: {DEFERRED}"
    else:
        verdict = "stays candidate (champion unchanged)"
    print(f"logged run {run_id} to {uri}")
    print(f"registered {name} v{version}: gate {'passed' if decision.passed else 'failed'}")
    for reason in decision.reasons:
        print(f"  - {reason}")
    print(f"{name} v{version} {verdict}")
    print(f"tracking time: {watch.summary()}")


def _main() -> None:
    try:
        run_stage("register", main)
    except tracking.TrackingUnavailableError as exc:
        print(f"stage register failed: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    _main()
