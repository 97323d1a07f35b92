"""`train.engine=dask`: fit LightGBM with `lightgbm.dask` on a Dask cluster, to the same model.

The cluster is an existing scheduler (`train.dask.scheduler`, else `DASK_SCHEDULER_ADDRESS`) or a
LocalCluster of `n_workers` processes. Each worker reads its own contiguous slice of the training
rows from the features parquet (only the row groups holding it), so the rows never pass through
this process; with a remote scheduler the workers must see the same path (shared storage).

lightgbm.dask has no early stopping (LightGBM #3712, #4189): each worker would score only its
local share of an `eval_set`, the workers' callbacks can then stop at different iterations and the
others hang on their sockets (#6351, #7009). Here every worker adds the *whole* validation split
to its booster before the first iteration (`_WholeValidationSplit`). Data-parallel workers hold
identical trees, so each computes the same validation metrics, LightGBM's own `early_stopping`
stops all of them at the same iteration, and the best iteration means what it means locally.

Workers unpickle the row reader and the callbacks from this module: they run in the project's
environment (LocalCluster processes inherit it; remote workers need the same lock file installed).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import dask
import dask.array as da
import distributed
import lightgbm as lgb
import numpy as np
import pyarrow.parquet as pq

from tabml.config import DaskConfig
from tabml.errors import TabmlError
from tabml.features import TARGET
from tabml.model import TrainingResult

SCHEDULER_ENV = "DASK_SCHEDULER_ADDRESS"
# How long a failed fit waits for the scheduler to report a worker it lost.
LOST_WORKER_GRACE_SECONDS = 5.0


class DistributedTrainingError(TabmlError, RuntimeError):
    """Training on the Dask cluster failed (unreachable scheduler, lost worker, network)."""


def scheduler_address(config: DaskConfig) -> str | None:
    return config.scheduler or os.environ.get(SCHEDULER_ENV) or None


@contextmanager
def dask_client(config: DaskConfig) -> Iterator[distributed.Client]:
    """A client of the configured scheduler, or of a LocalCluster that lives as long as it."""
    timeout = config.connect_timeout_seconds
    address = scheduler_address(config)
    if address is None:
        with (
            distributed.LocalCluster(
                n_workers=config.n_workers,
                threads_per_worker=config.threads_per_worker,
                processes=True,
                host="127.0.0.1",
                dashboard_address=None,
            ) as cluster,
            distributed.Client(cluster, timeout=timeout) as client,
        ):
            yield client
        return
    try:
        client = distributed.Client(address, timeout=timeout)
    except (OSError, TimeoutError) as exc:
        raise DistributedTrainingError(
            f"cannot reach the Dask scheduler at {address} within {timeout:g} s: {exc}"
        ) from None
    with client:
        try:
            client.wait_for_workers(1, timeout=timeout)
        except TimeoutError:
            raise DistributedTrainingError(
                f"the Dask scheduler at {address} has no worker after {timeout:g} s"
            ) from None
        yield client


def _read_rows(path: str, columns: list[str], start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) of `columns` as one float matrix, reading only the row groups needed."""
    file = pq.ParquetFile(path)
    groups: list[int] = []
    offset = first = 0
    for i in range(file.metadata.num_row_groups):
        rows = file.metadata.row_group(i).num_rows
        if offset < stop and offset + rows > start:
            first = offset if not groups else first
            groups.append(i)
        offset += rows
    table = file.read_row_groups(groups, columns=columns).slice(start - first, stop - start)
    return np.column_stack([table.column(c).to_numpy().astype(np.float64) for c in columns])


def partitioned_split(
    client: distributed.Client, path: str, feature_names: list[str]
) -> tuple[da.Array, da.Array]:
    """The split as (features, label) Dask arrays: one contiguous row slice on each worker."""
    workers = sorted(client.scheduler_info()["workers"])
    rows = pq.ParquetFile(path).metadata.num_rows
    if rows < len(workers):
        raise DistributedTrainingError(f"{path} has {rows} rows for {len(workers)} Dask workers")
    bounds = np.linspace(0, rows, len(workers) + 1).astype(int)
    xs, ys = [], []
    for worker, start, stop in zip(workers, bounds[:-1], bounds[1:], strict=True):
        pin = {"workers": [worker], "allow_other_workers": False, "pure": True}
        x = client.submit(_read_rows, path, feature_names, int(start), int(stop), **pin)
        y = client.submit(_read_rows, path, [TARGET], int(start), int(stop), **pin)
        n = int(stop - start)
        xs.append(da.from_delayed(dask.delayed(x), (n, len(feature_names)), np.float64))
        ys.append(da.from_delayed(dask.delayed(y), (n, 1), np.float64)[:, 0])
    return da.concatenate(xs), da.concatenate(ys)


def _booster(env: lgb.callback.CallbackEnv) -> lgb.Booster:
    if not isinstance(env.model, lgb.Booster):  # lgb.cv's CVBooster: not how lightgbm.dask trains
        raise TypeError(f"expected a Booster in the callback, got {type(env.model).__name__}")
    return env.model


class _WholeValidationSplit:
    """Before the first iteration: add the whole validation split to this worker's booster."""

    before_iteration = True

    def __init__(self, path: str, feature_names: list[str]) -> None:
        self.path, self.feature_names, self.order = path, feature_names, 10

    def __call__(self, env: lgb.callback.CallbackEnv) -> None:
        if env.iteration != env.begin_iteration:
            return
        rows = pq.ParquetFile(self.path).metadata.num_rows
        x = _read_rows(self.path, self.feature_names, 0, rows)
        y = _read_rows(self.path, [TARGET], 0, rows)[:, 0]
        booster = _booster(env)
        booster.set_train_data_name("train")
        # As lgb.train prepares a validation set: the training set's bins, names, categories.
        booster.add_valid(lgb.Dataset(x, y).set_reference(booster.train_set), "valid")


class _TrainMetricsFirst:
    """After each iteration: put LightGBM's training metrics first, as `lgb.train` lists them
    when the training set is a validation set (here: this worker's share of the rows)."""

    def __init__(self) -> None:
        self.order = 10

    def __call__(self, env: lgb.callback.CallbackEnv) -> None:
        if env.evaluation_result_list is not None:
            env.evaluation_result_list[:0] = _booster(env).eval_train()


def train_booster_on_dask(
    config: DaskConfig,
    train_path: str,
    valid_path: str,
    *,
    feature_names: list[str],
    categorical_features: list[str],
    params: dict[str, Any],
    num_boost_round: int,
    early_stopping_rounds: int,
) -> tuple[TrainingResult, dict[str, Any]]:
    """Fit on the cluster; return the result and the parameters the model was trained with
    (LightGBM's `num_threads` per worker, `tree_learner`, `num_machines`, `time_out`)."""
    with dask_client(config) as client:
        workers = sorted(client.scheduler_info()["workers"])
        threads = {w: client.ncores()[w] for w in workers}
        x, y = partitioned_split(client, train_path, feature_names)
        dask_params = {k: v for k, v in params.items() if k != "num_threads"}
        dask_params.update(tree_learner="data", time_out=config.network_timeout_minutes)
        model = lgb.DaskLGBMClassifier(client=client, n_estimators=num_boost_round, **dask_params)
        try:
            with dask.config.set(delayed_pure=True):
                model.fit(
                    x,
                    y,
                    feature_name=feature_names,
                    categorical_feature=categorical_features,
                    callbacks=[
                        _WholeValidationSplit(valid_path, feature_names),
                        _TrainMetricsFirst(),
                        lgb.early_stopping(early_stopping_rounds, verbose=False),
                    ],
                )
        except Exception as exc:
            lost = _lost_workers(client, workers)
            if lost or isinstance(exc, _CLUSTER_FAILURES):
                raise _explained(lost, exc) from exc
            raise  # a bug, not the cluster: keep its traceback
    booster = without_socket_addresses(model.booster_)
    per_worker = sorted(set(threads.values()))
    used = {
        **dask_params,
        "num_threads": per_worker[0] if len(per_worker) == 1 else per_worker,
        "num_machines": len(workers),
    }
    return TrainingResult(booster, model.booster_.best_iteration, model.evals_result_), used


# The sockets one run happened to use, as the model file's parameters section records them.
_SOCKET_PARAMETERS = re.compile(r"^\[(machines|local_listen_port): [^\]\n]*\]$", re.MULTILINE)
_SOCKET_DEFAULTS = {"machines": "", "local_listen_port": "12400"}


def without_socket_addresses(booster: lgb.Booster) -> lgb.Booster:
    """The booster with LightGBM's defaults for `machines` and `local_listen_port`.

    They are the random ports of a finished run, not part of the model (lightgbm.dask drops
    them from the estimator's parameters for that reason), and would make every run's model file
    differ; the trees, and what predictions read, are untouched.
    """
    text = _SOCKET_PARAMETERS.sub(
        lambda m: f"[{m.group(1)}: {_SOCKET_DEFAULTS[m.group(1)]}]", booster.model_to_string()
    )
    return lgb.Booster(model_str=text)


# What a cluster does to a fit: LightGBM's socket errors, lost connections and timeouts, a task
# whose workers kept dying.
_CLUSTER_FAILURES = (lgb.basic.LightGBMError, OSError, TimeoutError, distributed.KilledWorker)


def _lost_workers(client: distributed.Client, workers: list[str]) -> list[str]:
    """The training workers the scheduler no longer has.

    A killed worker's peers see their LightGBM sockets close at once, possibly before the
    scheduler has removed it, so the scheduler is asked for a few seconds.
    """
    deadline = time.monotonic() + LOST_WORKER_GRACE_SECONDS
    while True:
        try:
            remaining = set(client.scheduler_info()["workers"])
        except (OSError, TimeoutError):
            remaining = set()
        lost = [w for w in workers if w not in remaining]
        if lost or time.monotonic() >= deadline:
            return lost
        time.sleep(0.25)


def _explained(lost: list[str], exc: Exception) -> DistributedTrainingError:
    """Name what went wrong: a worker that left the cluster, or the error the fit raised."""
    cause = f"{type(exc).__name__}: {exc}"
    if lost:
        return DistributedTrainingError(
            f"Dask worker(s) {', '.join(lost)} left the cluster during training ({cause}); "
            "no model was written"
        )
    return DistributedTrainingError(f"distributed training failed ({cause}); no model was written")
