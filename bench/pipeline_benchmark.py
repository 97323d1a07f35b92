"""Pipeline overhead benchmark: `python src/train.py` (DVC) against the bare stage functions.

Runs in a temporary clone of this repository (its own DVC cache; MLflow logs to a temporary
store) and reports medians of several runs, measured in the same invocation:

* full       `python src/train.py --force` (every stage) vs the same stage modules executed in
             one Python process without DVC (the baseline: imports paid once, no hashing)
* param      a model-parameter change (train, evaluate, register: a fresh value each run, so DVC's
             run cache cannot restore it and MLflow logs a new run) vs the same override composed
             into params.yaml and those three stage modules run in one process
* noop       `python src/train.py` with nothing changed vs a bare `dvc repro` no-op

usage: python bench/pipeline_benchmark.py [--runs N] [--out bench/results/pipeline.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import runpy
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from tests.conftest import clone_repo, command_env  # noqa: E402


def timed(args: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{args} failed:\n{result.stdout}\n{result.stderr}")
    return elapsed


def stage_commands(repo: Path, names: list[str] | None = None) -> list[list[str]]:
    """The `python -m module args` commands of dvc.yaml's stages, in file order."""
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    return [shlex.split(spec["cmd"]) for name, spec in stages.items() if not names or name in names]


def run_bare(commands: list[list[str]]) -> None:
    """Execute each stage module in this process, as a plain function call (no DVC)."""
    for cmd in commands:
        while "=" in cmd[0]:  # leading environment assignments (PYTHONPATH=src): set in main
            cmd = cmd[1:]
        assert cmd[:2] == ["python", "-m"], cmd
        sys.argv = [cmd[2], *cmd[3:]]
        runpy.run_module(cmd[2], run_name="__main__")


def summarize(samples: list[float]) -> dict[str, float | list[float]]:
    return {
        "median_s": round(statistics.median(samples), 3),
        "runs_s": [round(s, 3) for s in samples],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--out", type=Path, default=REPO_ROOT / "bench" / "results" / "pipeline.json"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="tabml-bench-") as tmp:
        repo = clone_repo(Path(tmp) / "repo")
        env = command_env(MLFLOW_TRACKING_URI=f"sqlite:///{tmp}/mlflow.db")
        python, train = sys.executable, [sys.executable, "src/train.py"]
        bare = [python, __file__, "--bare"]
        timed(train, repo, env)  # warm-up: first run, data in place, caches warm

        results: dict[str, dict] = {}
        samples: dict[str, list[float]] = {
            k: [] for k in ("full", "full_bare", "param", "param_bare", "noop", "noop_bare")
        }
        for i in range(args.runs):
            samples["full"].append(timed([*train, "--force"], repo, env))
            samples["full_bare"].append(timed(bare, repo, env))
            rate = f"{0.05 + 0.001 * (i + 1):.3f}"
            samples["param"].append(timed([*train, f"model.learning_rate={rate}"], repo, env))
            bare_rate = f"{0.06 + 0.001 * (i + 1):.3f}"
            samples["param_bare"].append(
                timed(
                    [*bare, f"model.learning_rate={bare_rate}", "train", "evaluate", "register"],
                    repo,
                    env,
                )
            )
        for _ in range(max(5, args.runs)):
            samples["noop"].append(timed(train, repo, env))
            samples["noop_bare"].append(timed([python, "-m", "dvc", "repro"], repo, env))

    results = {name: summarize(values) for name, values in samples.items()}
    ratios = {
        "full_vs_bare": results["full"]["median_s"] / results["full_bare"]["median_s"],
        "param_vs_bare": results["param"]["median_s"] / results["param_bare"]["median_s"],
        "noop_vs_bare_dvc_repro": results["noop"]["median_s"] / results["noop_bare"]["median_s"],
    }
    report = {
        "benchmark": "pipeline overhead",
        "baseline": "stage modules run in one process without DVC; bare `dvc repro` for no-op",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "runs": args.runs,
        "results": results,
        "ratios": {k: round(v, 3) for k, v in ratios.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'case':<12}{'median s':>10}   baseline{'median s':>10}   ratio")
    for case, base, ratio in (
        ("full", "full_bare", "full_vs_bare"),
        ("param", "param_bare", "param_vs_bare"),
        ("noop", "noop_bare", "noop_vs_bare_dvc_repro"),
    ):
        print(
            f"{case:<12}{results[case]['median_s']:>10.3f}   {base:<10}"
            f"{results[base]['median_s']:>8.3f}   {ratios[ratio]:.2f}x"
        )
    print(f"saved {args.out}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--bare"]:
        sys.path.insert(0, str(Path.cwd() / "src"))  # the clone's code, as the stages get it
        overrides = [a for a in sys.argv[2:] if "=" in a]
        if overrides:
            from tabml.pipeline import compose_params

            compose_params(overrides)
        run_bare(stage_commands(Path.cwd(), [a for a in sys.argv[2:] if "=" not in a]))
    else:
        main()
