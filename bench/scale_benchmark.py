"""The pipeline at 50k, 300k and 3M census-KDD rows, with the local and the Dask engine, in one run.

    python bench/scale_benchmark.py                          # 50k, 300k, 3M
    python bench/scale_benchmark.py --sizes 50000 300000     # the sizes that fit your time

For each size (train + test rows, 2:1 like UCI's files), a temp clone of this repository gets a
census-KDD dataset of its own (conf/dataset/census_kdd_<size>.yaml, its data directory and data
version, census-KDD's settings):

- 50k: a seeded sample of the pinned files, without replacement;
- 300k: the pinned files themselves (199,523 + 99,762 = 299,285 rows, in their order);
- 3M: every line of the pinned files once, plus lines drawn with replacement from the same file
  (training lines from the training file, test lines from the test file, so no test row is a
  copy of a training row), each drawn line with noise (`Noise`): ages and weeks worked
  move by -1, 0 or +1 within the contract's range, non-zero amounts (wage, capital gains and
  losses, dividends) are scaled by a factor in [0.9, 1.1] and capped at the contract's maximum,
  and each categorical field takes, with probability 0.02, the value of the same column in
  another random line of the training file (so the column keeps its distribution and its null
  policy). The label and the ignored instance weight are kept. Without noise, resampled copies
  of training rows in the validation split would make early stopping measure memorisation.

Each stage runs as dvc.yaml runs it (its resolved command, in its own process, in the clone),
first all of them with `train.engine=local` (the baseline), then `train` and `evaluate` again
with `train.engine=dask` (a 2-worker LocalCluster, 1 thread each: the default). Per stage:
wall time and peak RSS of the stage's whole process tree (the Dask scheduler and workers
included; psutil samples every 0.1 s), and for each engine the test ROC AUC, PR AUC and log
loss, and the boosting rounds each engine ran (early stopping differs between them, so the
seconds per round compare the engines' speed). `--max-rounds` caps the rounds of both engines
to keep the 3M size within an afternoon on 2 cores. Swap in use is recorded before and after.
Results: bench/results/scale.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "src")]

from tests.support.census_kdd import (  # noqa: E402
    census_config,
    census_raw_files,
    write_sized_dataset,
)
from tests.support.project import clone_repo, command_env  # noqa: E402

RESULTS = REPO / "bench" / "results" / "scale.json"
STAGES = ("validate", "prepare", "featurize", "train", "baseline", "evaluate", "model_card")
STAGES += ("profile",)
DASK_STAGES = ("train", "evaluate")
SIZES = (50_000, 300_000, 3_000_000)
#: UCI's files: 199,523 training and 99,762 test lines. A size within 1,000 rows of their sum
#: (300,000 among them) means the files as they are.
UCI_TRAIN, UCI_TEST = 199_523, 99_762


def split_rows(rows: int) -> tuple[int, int]:
    """(train, test) rows for a size: UCI's files for about 300k, else their 2:1 share."""
    if abs(rows - UCI_TRAIN - UCI_TEST) <= 1000:
        return UCI_TRAIN, UCI_TEST
    train = round(rows * UCI_TRAIN / (UCI_TRAIN + UCI_TEST))
    return train, rows - train


JITTERED = {"age": (0, 90), "weeks_worked_in_year": (0, 52)}
SCALED = ("wage_per_hour", "capital_gains", "capital_losses", "dividends_from_stocks")
CATEGORY_SWAP = 0.02


class Noise:
    """The documented noise of a resampled line (module doc), for one contract."""

    def __init__(self, contract: Any, pool: list[str]) -> None:
        self.separator = contract.separator
        names = contract.raw_names
        self.jittered = {names.index(n): bounds for n, bounds in JITTERED.items()}
        self.scaled = {names.index(n): contract.column(n).max for n in SCALED}
        self.categorical = [names.index(c.name) for c in contract.columns if c.type == "category"]
        self.pool = pool

    def __call__(self, line: str, rng: random.Random) -> str:
        fields = line.rstrip("\n").split(self.separator)
        for i, (low, high) in self.jittered.items():
            fields[i] = str(min(high, max(low, int(fields[i]) + rng.randint(-1, 1))))
        for i, maximum in self.scaled.items():
            if fields[i] != "0":
                fields[i] = str(min(int(maximum), round(int(fields[i]) * rng.uniform(0.9, 1.1))))
        for i in self.categorical:
            if rng.random() < CATEGORY_SWAP:
                fields[i] = rng.choice(self.pool).rstrip("\n").split(self.separator)[i]
        return self.separator.join(fields) + "\n"


class PeakRss:
    """Peak summed RSS of a process and all its descendants, sampled every `interval` s."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.pid, self.interval, self.peak = pid, interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                root = psutil.Process(self.pid)
                tree = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            total = 0
            for process in tree:
                try:
                    total += process.memory_info().rss
                except psutil.NoSuchProcess:
                    continue
            self.peak = max(self.peak, total)
            self._stop.wait(self.interval)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def stage_commands(repo: Path) -> dict[str, str]:
    """Each stage's command as DVC resolves it from dvc.yaml and the clone's params.yaml."""
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc_repo:
        stages = dvc_repo.index.stages  # the .dvc files are stages too, without a name
        return {stage.name: stage.cmd for stage in stages if getattr(stage, "name", None)}


def compose(repo: Path, overrides: list[str]) -> None:
    code = (
        "import sys; from tabml import pipeline; "
        "params, _ = pipeline.compose_params(sys.argv[1:]); pipeline.ensure_data(params)"
    )
    subprocess.run(
        [sys.executable, "-c", code, *overrides], cwd=repo, env=_env(), check=True, text=True
    )


def _env() -> dict[str, str]:
    env = command_env(PYTHONPATH="src", OMP_WAIT_POLICY="PASSIVE")
    env.pop("DASK_SCHEDULER_ADDRESS", None)  # it would replace the LocalCluster
    return env


def run_stage(repo: Path, command: str, log: Path) -> dict[str, Any]:
    started = time.perf_counter()
    with open(log, "ab") as out:
        process = subprocess.Popen(
            ["bash", "-c", command], cwd=repo, env=_env(), stdout=out, stderr=subprocess.STDOUT
        )
        sampler = PeakRss(process.pid)
        status = process.wait()
    seconds = time.perf_counter() - started
    peak = sampler.stop()
    if status != 0:
        raise RuntimeError(f"{command[:80]} exited {status}; see {log}")
    return {"seconds": round(seconds, 2), "peak_rss_mib": round(peak / 2**20, 1)}


def test_metrics(repo: Path) -> dict[str, float]:
    test = json.loads((repo / "reports" / "metrics.json").read_text())["test"]
    return {k: test[k] for k in ("roc_auc", "pr_auc", "log_loss", "best_iteration", "rows")}


def boosting_rounds(repo: Path) -> int:
    """Rounds the train stage ran (its curve has one entry per round), early stopping included."""
    return len(json.loads((repo / "reports" / "training_curve.json").read_text()))


def measure_size(
    root: Path, raw: Path, rows: int, seed: int, overrides: list[str]
) -> dict[str, Any]:
    from tabml.config import DatasetConfig

    name = f"census_kdd_{rows // 1000}k" if rows < 1_000_000 else f"census_kdd_{rows // 10**6}m"
    repo = clone_repo(root / name, with_data=False)
    train_rows, test_rows = split_rows(rows)
    contract = DatasetConfig.model_validate(census_config()).contract()
    pool = (raw / "census_income_1994_1995_train.csv").read_text().splitlines(keepends=True)
    started = time.perf_counter()
    write_sized_dataset(
        repo, name, raw, train_rows, test_rows, seed=seed, noise=Noise(contract, pool)
    )
    del pool
    made = time.perf_counter() - started
    data = repo / "datasets" / name
    log = root / f"{name}.log"
    result: dict[str, Any] = {
        "rows": train_rows + test_rows,
        "train_rows": train_rows,
        "test_rows": test_rows,
        "dataset_written_seconds": round(made, 1),
        "raw_mib": round(sum(p.stat().st_size for p in data.glob("*.csv")) / 2**20, 1),
    }
    engines: dict[str, Any] = {}
    for engine, stages in (("local", STAGES), ("dask", DASK_STAGES)):
        compose(repo, [f"dataset={name}", f"train.engine={engine}", *overrides])
        commands = stage_commands(repo)
        measured = {}
        for stage in stages:
            measured[stage] = run_stage(repo, commands[stage], log)
            print(f"{name} {engine:>5} {stage:>10}: {measured[stage]}", flush=True)
        rounds = boosting_rounds(repo)
        engines[engine] = {
            "stages": measured,
            "boosting_rounds": rounds,
            "train_seconds_per_round": round(measured["train"]["seconds"] / rounds, 4),
            "test": test_metrics(repo),
        }
        print(f"{name} {engine:>5} test: {engines[engine]['test']}", flush=True)
    local, dask = engines["local"], engines["dask"]
    result["engines"] = engines
    result["dask_over_local_train_seconds"] = round(
        dask["stages"]["train"]["seconds"] / local["stages"]["train"]["seconds"], 2
    )
    result["dask_over_local_seconds_per_round"] = round(
        dask["train_seconds_per_round"] / local["train_seconds_per_round"], 2
    )
    result["dask_over_local_train_peak_rss"] = round(
        dask["stages"]["train"]["peak_rss_mib"] / local["stages"]["train"]["peak_rss_mib"], 2
    )
    result["auc_difference_dask_minus_local"] = round(
        dask["test"]["roc_auc"] - local["test"]["roc_auc"], 6
    )
    result["pipeline_seconds_local"] = round(sum(s["seconds"] for s in local["stages"].values()), 1)
    result["peak_rss_mib_local"] = max(s["peak_rss_mib"] for s in local["stages"].values())
    shutil.rmtree(repo, ignore_errors=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--max-rounds",
        type=int,
        default=None,
        help="cap train.num_boost_round for both engines (default: the pipeline's, 2000 with "
        "early stopping); the per-round times stay comparable, the AUC is that of the cap",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temp directory")
    args = parser.parse_args()

    overrides = [] if args.max_rounds is None else [f"train.num_boost_round={args.max_rounds}"]
    swap_before = psutil.swap_memory().used
    report: dict[str, Any] = {
        "baseline": "train.engine=local; the 50k-row size for the scaling ratios",
        "cpu_count": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "swap_total_gib": round(psutil.swap_memory().total / 2**30, 1),
        "dask": "LocalCluster, 2 workers x 1 thread",
        "max_rounds": args.max_rounds,
        "sizes": [],
    }
    with tempfile.TemporaryDirectory(prefix="tabml-scale-", dir=args.workdir) as tmp:
        root = Path(tmp)
        raw = census_raw_files(root / "raw")
        for rows in args.sizes:
            try:
                report["sizes"].append(measure_size(root, raw, rows, args.seed, overrides))
            except (RuntimeError, subprocess.CalledProcessError) as exc:  # recorded, not lost
                print(f"{rows} rows failed: {exc}", flush=True)
                report.setdefault("failed", {})[str(rows)] = str(exc)
            report["load_average"] = [round(v, 2) for v in os.getloadavg()]
            report["swap_used_mib_before_after"] = [
                round(swap_before / 2**20, 1),
                round(psutil.swap_memory().used / 2**20, 1),
            ]
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(report, indent=1) + "\n")  # after every size
    if not report["sizes"]:
        return 1
    first = report["sizes"][0]
    for size in report["sizes"]:
        size["local_pipeline_over_smallest"] = round(
            size["pipeline_seconds_local"] / first["pipeline_seconds_local"], 2
        )
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    for size in report["sizes"]:
        local, dask = size["engines"]["local"], size["engines"]["dask"]
        print(
            f"{size['rows']:>9,} rows: local pipeline {size['pipeline_seconds_local']} s "
            f"(x{size['local_pipeline_over_smallest']} the smallest), "
            f"peak {size['peak_rss_mib_local']} MiB; "
            f"train local {local['stages']['train']['seconds']} s / dask "
            f"{dask['stages']['train']['seconds']} s; AUC local {local['test']['roc_auc']} "
            f"dask {dask['test']['roc_auc']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
