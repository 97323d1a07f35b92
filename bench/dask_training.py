"""The train stage on Dask against the local engine, on the workspace's features, in one run.

    python bench/dask_training.py                 # about 5 minutes on 2 cores
    python bench/dask_training.py --repeats 5

Runs the real stage command (`python -m tabml.stages.train_model`) with the workspace's
params.yaml, once per engine and repeat, alternating: `train.engine=local` (the baseline),
`dask` on a 2-worker LocalCluster (one thread each), and once `dask` on a 1-worker cluster (a
different cluster shape). Reports the median wall time of the whole stage command (start-up,
cluster, reading, training, writing), the test ROC AUC of each model and the md5 of each model
file, which shows what repeats byte for byte. Results: bench/results/dask_training.json (needs
`python src/train.py` first).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "dask_training.json"


def run_stage(workdir: Path, name: str, engine: str, n_workers: int) -> dict:
    from sklearn.metrics import roc_auc_score

    from tabml.columnar import read_columns
    from tabml.features import TARGET
    from tabml.model import load_booster, predict_proba

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train"]["engine"] = engine
    params["train"]["dask"]["n_workers"] = n_workers
    (workdir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = workdir / name
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_WAIT_POLICY": "PASSIVE"}
    env.pop("DASK_SCHEDULER_ADDRESS", None)  # it would replace the LocalCluster
    started = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "tabml.stages.train_model",
            *("--features", str(REPO / "artifacts" / "features")),
            *("--transform", str(REPO / "models" / "feature_transform.json")),
            *("--model", str(out / "model.txt"), "--metadata", str(out / "meta.json")),
            *("--curves", str(out / "curve.json")),
        ],
        cwd=workdir,
        env=env,
        check=True,
        capture_output=True,
    )
    seconds = time.perf_counter() - started
    meta = json.loads((out / "meta.json").read_text())
    test = read_columns(REPO / "artifacts" / "features" / "test.parquet")
    x = np.column_stack([test[f] for f in meta["feature_names"]])
    proba = predict_proba(load_booster(out / "model.txt"), x)
    return {
        "seconds": round(seconds, 2),
        "test_roc_auc": round(float(roc_auc_score(test[TARGET].astype(int), proba)), 6),
        "best_iteration": meta["best_iteration"],
        "model_md5": hashlib.md5((out / "model.txt").read_bytes()).hexdigest(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    shapes = {"local": ("local", 1), "dask_2_workers": ("dask", 2)}
    runs: dict[str, list[dict]] = {name: [] for name in [*shapes, "dask_1_worker"]}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            for name, (engine, workers) in shapes.items():
                runs[name].append(run_stage(Path(tmp), f"{name}-{i}", engine, workers))
                print(name, runs[name][-1], flush=True)
        runs["dask_1_worker"].append(run_stage(Path(tmp), "dask_1_worker", "dask", 1))
        print("dask_1_worker", runs["dask_1_worker"][-1], flush=True)

    summary = {
        name: {
            "median_seconds": statistics.median(r["seconds"] for r in results),
            "test_roc_auc": sorted({r["test_roc_auc"] for r in results}),
            "distinct_model_files": len({r["model_md5"] for r in results}),
            "runs": results,
        }
        for name, results in runs.items()
    }
    local, dask = summary["local"], summary["dask_2_workers"]
    report = {
        "baseline": "local",
        "repeats": args.repeats,
        "cpu_count": os.cpu_count(),
        "load_average_at_end": [round(v, 2) for v in os.getloadavg()],
        "dask_over_local_seconds": round(dask["median_seconds"] / local["median_seconds"], 2),
        "auc_difference_dask_minus_local": round(
            dask["test_roc_auc"][0] - local["test_roc_auc"][0], 6
        ),
        "engines": summary,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "engines"}, indent=1))
    for name, s in summary.items():
        print(
            f"{name:>15}: median {s['median_seconds']:.2f} s, test AUC {s['test_roc_auc']}, "
            f"{s['distinct_model_files']} distinct model file(s) in {len(s['runs'])} run(s)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
