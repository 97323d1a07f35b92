"""Pipeline overhead benchmark: `python src/train.py` (DVC + tracking) against bare stages.

Runs in a temporary clone of this repository (its own DVC cache; MLflow logs to a temporary
store) and reports medians of several runs, measured in the same invocation:

* full       `python src/train.py --force` (every stage; the model is already tracked) vs the
             same stage commands run bare as separate processes (no DVC), and vs the stage modules
             executed in one Python process (imports paid once, no hashing); every pipeline run
             here passes --no-push: the DVC push is optional and in no baseline
* param      a model-parameter change (a fresh value each run, so DVC's run cache cannot restore
             it and MLflow logs, registers and gates a new model) vs the same override composed
             into params.yaml, the affected stages run bare as processes and the model tracked by
             `tabml-registry track` as a process; and vs both in one process
* tracking   how long the new model's tracking takes after its stages (printed by
             `python src/train.py`), and a cold `tabml-registry track` process for a new model,
             each against the `train` stage run bare as a process on the same override
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

from tests.support.project import clone_repo, command_env  # noqa: E402


def timed(args: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{args} failed:\n{result.stdout}\n{result.stderr}")
    return elapsed


def stage_commands(repo: Path, names: list[str] | None = None) -> dict[str, list[str]]:
    """Stage name → its `python -m module args` command from dvc.yaml, in file order."""
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    return {
        name: shlex.split(spec["cmd"])
        for name, spec in stages.items()
        if not names or name in names
    }


PARAM_STAGES = ["train", "evaluate", "model_card", "profile"]


def run_processes(
    commands: dict[str, list[str]], repo: Path, env: dict[str, str]
) -> dict[str, float]:
    """Each stage command as its own process, as DVC runs it but without DVC: seconds each."""
    seconds = {}
    for name, cmd in commands.items():
        assignments = [part for part in cmd if "=" in part and not part.startswith("-")][:1]
        line = " ".join([*assignments, shlex.join(cmd[len(assignments) :])])
        seconds[name] = timed(["sh", "-c", line], repo, env)
    return seconds


def run_bare(commands: dict[str, list[str]]) -> None:
    """Execute each stage module in this process, as a plain function call (no DVC)."""
    for cmd in commands.values():
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
        # The clone's own code for every command (the installed package is this checkout's).
        env = command_env(
            MLFLOW_TRACKING_URI=f"sqlite:///{tmp}/mlflow.db", PYTHONPATH=str(repo / "src")
        )
        # Without the DVC push after a run (optional, and not part of any baseline).
        python, train = sys.executable, [sys.executable, "src/train.py", "--no-push"]
        bare = [python, __file__, "--bare"]
        timed(train, repo, env)  # warm-up: first run, data in place, caches warm

        compose = [python, __file__, "--compose"]
        track = [python, "-m", "tabml.registry_cli", "track"]
        names = ("full", "full_processes", "full_bare", "param", "param_processes", "param_bare")
        names += ("tracking_in_pipeline", "tracking_cold_process", "train_stage_process")
        names += ("noop", "noop_bare")
        samples: dict[str, list[float]] = {k: [] for k in names}
        everything = stage_commands(repo)
        for i in range(args.runs):
            samples["full"].append(timed([*train, "--force"], repo, env))
            samples["full_processes"].append(sum(run_processes(everything, repo, env).values()))
            samples["full_bare"].append(timed(bare, repo, env))

            rate = f"{0.05 + 0.001 * (i + 1):.4f}"
            start = time.perf_counter()
            output = subprocess.run(
                [*train, f"model.learning_rate={rate}"],
                cwd=repo,
                env=env,
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            samples["param"].append(time.perf_counter() - start)
            samples["tracking_in_pipeline"].append(tracking_seconds(output))

            rate = f"{0.06 + 0.001 * (i + 1):.4f}"
            start = time.perf_counter()
            timed([*compose, f"model.learning_rate={rate}"], repo, env)
            stages = run_processes(stage_commands(repo, PARAM_STAGES), repo, env)
            tracked = timed(track, repo, env)
            samples["param_processes"].append(time.perf_counter() - start)
            samples["train_stage_process"].append(stages["train"])
            samples["tracking_cold_process"].append(tracked)

            rate = f"{0.07 + 0.001 * (i + 1):.4f}"
            samples["param_bare"].append(
                timed([*bare, f"model.learning_rate={rate}", *PARAM_STAGES, "track"], repo, env)
            )
        timed(train, repo, env)  # back to one consistent state for the no-op
        for _ in range(max(5, args.runs)):
            samples["noop"].append(timed(train, repo, env))
            samples["noop_bare"].append(timed([python, "-m", "dvc", "repro"], repo, env))

    results = {name: summarize(values) for name, values in samples.items()}

    def ratio(a: str, b: str) -> float:
        """Median of the per-iteration ratios: each pair ran back to back, so a load change on
        these shared cores between iterations cancels out (a ratio of medians would not)."""
        pairs = zip(samples[a], samples[b], strict=False)
        return statistics.median(x / y for x, y in pairs)

    ratios = {
        "full_vs_processes": ratio("full", "full_processes"),
        "full_vs_in_process": ratio("full", "full_bare"),
        "param_vs_processes": ratio("param", "param_processes"),
        "param_vs_in_process": ratio("param", "param_bare"),
        "tracking_in_pipeline_vs_train_stage": ratio("tracking_in_pipeline", "train_stage_process"),
        "tracking_cold_process_vs_train_stage": ratio(
            "tracking_cold_process", "train_stage_process"
        ),
        "noop_vs_bare_dvc_repro": ratio("noop", "noop_bare"),
    }
    report = {
        "benchmark": "pipeline overhead",
        "baseline": "the same stages run bare as separate processes (and in one process) "
        "without DVC; the train stage as a process for tracking; bare `dvc repro` for no-op",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "runs": args.runs,
        "results": results,
        "ratios": {k: round(v, 3) for k, v in ratios.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'case':<22}{'median s':>9}   {'baseline':<22}{'median s':>9}   paired ratio")
    for case, base, key in (
        ("full", "full_processes", "full_vs_processes"),
        ("full", "full_bare", "full_vs_in_process"),
        ("param", "param_processes", "param_vs_processes"),
        ("param", "param_bare", "param_vs_in_process"),
        ("tracking_in_pipeline", "train_stage_process", "tracking_in_pipeline_vs_train_stage"),
        ("tracking_cold_process", "train_stage_process", "tracking_cold_process_vs_train_stage"),
        ("noop", "noop_bare", "noop_vs_bare_dvc_repro"),
    ):
        print(
            f"{case:<22}{results[case]['median_s']:>9.3f}   {base:<22}"
            f"{results[base]['median_s']:>9.3f}   {ratios[key]:.2f}x"
        )
    print(f"saved {args.out}")


def tracking_seconds(output: str) -> float:
    """The `tracking took X s after the stages` figure `python src/train.py` prints."""
    for line in output.splitlines():
        if line.startswith("tracking took "):
            return float(line.split()[2])
    raise RuntimeError(f"no new model was tracked:\n{output}")


def track_in_process() -> None:
    from tabml.config import PARAMS_FILE, load_params
    from tabml.lineage import git_lineage
    from tabml.track import raw_params_of, track_model
    from tabml.tracking_store import resolve_tracking_uri

    params = load_params()
    uri = resolve_tracking_uri(params.tracking.uri)
    track_model(params, raw_params_of(PARAMS_FILE), uri, git_lineage())


if __name__ == "__main__":
    if sys.argv[1:2] in (["--bare"], ["--compose"]):
        sys.path.insert(0, str(Path.cwd() / "src"))  # the clone's code, as the stages get it
        overrides = [a for a in sys.argv[2:] if "=" in a]
        if overrides:
            from tabml.pipeline import compose_params

            compose_params(overrides)
        if sys.argv[1] == "--bare":  # stage names to run (default all), "track" to track too
            names = [a for a in sys.argv[2:] if "=" not in a]
            stages = [name for name in names if name != "track"]
            if stages or not names:
                run_bare(stage_commands(Path.cwd(), stages))
            if "track" in names or not names:
                track_in_process()
    else:
        main()
