"""What slices, fairness, the baseline and the model card cost the pipeline, per stage process.

Each stage command of dvc.yaml runs bare (as DVC runs it, without DVC) in this checkout,
alternating, and the medians are compared with the baseline measured in the same run: the
evaluate stage as it was before slices and fairness (its module at commit BEFORE, run against
the same inputs, writing to a temporary directory). The `baseline` stage is what a change of the
features costs once more; a change of the LightGBM parameters reruns `evaluate` and
`model_card` only.

usage: python bench/evaluate_quality_benchmark.py [--runs N] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
#: The last commit whose evaluate stage computed the overall metrics only.
BEFORE = "0dfbeb2"
STAGES = ("baseline", "evaluate", "model_card")


def timed(command: str, env: dict[str, str]) -> float:
    start = time.perf_counter()
    result = subprocess.run(
        ["sh", "-c", command], cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=False
    )
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{command} failed:\n{result.stdout}\n{result.stderr}")
    return elapsed


def commands(scratch: Path) -> dict[str, str]:
    """Stage → shell command; outputs go to `scratch`, so the workspace is left untouched
    (model_card reads the metrics and slices evaluate has just written there)."""
    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    found: dict[str, str] = {}
    for name in STAGES:
        cmd = stages[name]["cmd"]
        for option, path in (
            ("--out", "artifacts/baseline.json"),
            ("--metrics", "reports/metrics.json"),
            ("--plots", "reports/plots"),
            ("--slices", "reports/slices.json"),
            ("--markdown", "models/model_card.md"),
            ("--html", "models/model_card.html"),
        ):
            cmd = cmd.replace(f"{option} {path}", f"{option} {scratch}/{Path(path).name}")
        found[name] = cmd
    old = scratch / "old_evaluate.py"
    old.write_text(
        subprocess.run(
            ["git", "show", f"{BEFORE}:src/tabml/stages/evaluate.py"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    found["evaluate_before"] = (
        f"PYTHONPATH=src python {old} --features artifacts/features --model models/model.txt "
        f"--metadata models/model_metadata.json --metrics {scratch}/old_metrics.json "
        f"--plots {scratch}/old_plots"
    )
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--out", type=Path, default=REPO_ROOT / "bench/results/evaluate_quality.json"
    )
    args = parser.parse_args()
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    with tempfile.TemporaryDirectory(prefix="tabml-bench-eval-") as tmp:
        cmds = commands(Path(tmp))
        for command in cmds.values():  # warm the page cache and check every command works
            timed(command, env)
        seconds: dict[str, list[float]] = {name: [] for name in cmds}
        for _ in range(args.runs):
            for name, command in cmds.items():
                seconds[name].append(timed(command, env))
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    before = medians["evaluate_before"]
    result = {
        "baseline": f"evaluate stage at {BEFORE} (overall metrics only), same inputs, same run",
        "runs": args.runs,
        "median_s": {k: round(v, 3) for k, v in medians.items()},
        "evaluate_over_before": round(medians["evaluate"] / before, 2),
        "evaluate_plus_card_over_before": round(
            (medians["evaluate"] + medians["model_card"]) / before, 2
        ),
        "baseline_stage_over_before": round(medians["baseline"] / before, 2),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }
    print(json.dumps(result, indent=1))
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
