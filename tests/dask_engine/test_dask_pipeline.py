"""`python src/train.py train.engine=dask` through the real pipeline on a temp git repo: the engine
switch and back, and a Dask worker killed mid-training."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.support.processes import free_port
from tests.support.project import PYTHON, command_env, train

pytestmark = pytest.mark.slow


@pytest.fixture
def repo_copy(trained_repo: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(trained_repo, tmp_path / "repo", symlinks=True))


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_i_can_switch_to_dask_and_back_without_retraining(repo_copy: Path) -> None:
    lock = (repo_copy / "dvc.lock").read_bytes()
    local_auc = json.loads((repo_copy / "reports/metrics.json").read_text())["test"]["roc_auc"]

    result = train(repo_copy, "--no-push", "train.engine=dask")

    assert "stages run: train, evaluate, model_card, profile" in result.stdout
    metrics = json.loads((repo_copy / "reports/metrics.json").read_text())["test"]
    assert abs(metrics["roc_auc"] - local_auc) < 0.005, (metrics["roc_auc"], local_auc)
    assert "engine: dask" in (repo_copy / "dvc.lock").read_text()
    assert "gate passed" in result.stdout  # tracked and gated like any model

    back = train(repo_copy, "--no-push")
    # The local model comes back from DVC's run cache: nothing retrains, the lock is as before.
    assert "stages run: train, evaluate, model_card, profile" in back.stdout
    assert "Stage 'train' is cached - skipping run" in back.stdout + back.stderr
    assert (repo_copy / "dvc.lock").read_bytes() == lock


@pytest.fixture
def cluster(tmp_path: Path, repo_copy: Path) -> Iterator[tuple[str, dict[str, int]]]:
    """A real scheduler and two one-thread worker processes on loopback: (address, {worker
    address: pid})."""
    from distributed import Client

    dask_cli = str(Path(PYTHON).parent / "dask")
    address = f"tcp://127.0.0.1:{free_port()}"
    env = command_env(PYTHONPATH=str(repo_copy / "src"), OMP_WAIT_POLICY="PASSIVE")
    port = address.rsplit(":", 1)[1]
    commands = [[dask_cli, "scheduler", "--host", "127.0.0.1", "--port", port, "--no-dashboard"]]
    commands += [
        [dask_cli, "worker", address, "--nthreads", "1", "--no-nanny", "--no-dashboard"]
    ] * 2
    processes = []
    try:
        for i, cmd in enumerate(commands):
            with open(tmp_path / f"dask-{i}.log", "wb") as log:
                processes.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=log))
            if i == 0:
                time.sleep(2)
        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=60)
            pids = client.run(os.getpid)
        yield address, pids
    finally:
        for process in processes:
            process.kill()
            process.wait()


def test_a_worker_killed_mid_training_fails_the_stage_and_keeps_the_model(
    repo_copy: Path, cluster: tuple[str, dict[str, int]], tmp_path: Path
) -> None:
    from distributed import Client

    address, pids = cluster
    model = repo_copy / "models" / "model.txt"
    before, lock = md5(model), (repo_copy / "dvc.lock").read_bytes()
    with open(tmp_path / "train.out", "w") as out, open(tmp_path / "train.err", "w") as err:
        run = subprocess.Popen(
            # Rounds enough to train for minutes: the kill lands mid-training.
            [
                PYTHON,
                "src/train.py",
                "--no-push",
                "train.engine=dask",
                "train.num_boost_round=100000",
                "train.early_stopping_rounds=100000",
            ],
            cwd=repo_copy,
            env=command_env(DASK_SCHEDULER_ADDRESS=address, OMP_WAIT_POLICY="PASSIVE"),
            stdout=out,
            stderr=err,
        )
    try:
        with Client(address, timeout=60) as client:
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline and run.poll() is None:
                training = [
                    worker
                    for worker, keys in client.processing().items()
                    if any("_train_part" in str(key) for key in keys)
                ]
                if len(training) == 2:
                    break
                time.sleep(0.5)
            else:
                pytest.fail(
                    "training never started on both workers:\n"
                    + (tmp_path / "train.err").read_text()
                )
        time.sleep(3)  # well inside LightGBM's boosting loop
        victim_address = sorted(pids)[-1]
        os.kill(pids[victim_address], signal.SIGKILL)
        returncode = run.wait(timeout=180)
    finally:
        if run.poll() is None:
            run.kill()
    stderr = (tmp_path / "train.err").read_text()

    assert returncode == 1, stderr
    assert (
        f"stage train failed: Dask worker(s) {victim_address} left the cluster during training"
        in stderr
    )
    assert "outputs of earlier runs are unchanged" in stderr
    assert md5(model) == before  # the last good model, restored from the DVC cache
    assert (repo_copy / "dvc.lock").read_bytes() == lock
