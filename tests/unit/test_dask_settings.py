"""`train.engine` and `train.dask.*`: validation, where the scheduler comes from, and a scheduler
that does not answer."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from tests.support.processes import free_port

from tabml.config import ConfigError, DaskConfig, parse_params

PARAMS = yaml.safe_load((Path(__file__).resolve().parents[2] / "params.yaml").read_text())


def with_train(**changes: object) -> dict:
    raw = copy.deepcopy(PARAMS)
    raw["train"].update(changes)
    return raw


def test_the_committed_default_is_the_local_engine() -> None:
    assert parse_params(PARAMS).train.engine == "local"


def test_an_unknown_engine_is_rejected_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"train\.engine: Input should be 'local' or 'dask'"):
        parse_params(with_train(engine="spark"))


def test_a_mistyped_dask_setting_is_rejected_naming_the_key() -> None:
    dask = {**PARAMS["train"]["dask"], "n_workers": 0, "threads": 2}
    with pytest.raises(ConfigError) as error:
        parse_params(with_train(dask=dask))
    assert "train.dask.n_workers: Input should be greater than or equal to 1" in str(error.value)
    assert "train.dask.threads: Extra inputs are not permitted" in str(error.value)


def settings(**changes: object) -> DaskConfig:
    return DaskConfig.model_validate({**PARAMS["train"]["dask"], **changes})


def test_the_scheduler_setting_wins_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from tabml.train_dask import SCHEDULER_ENV, scheduler_address

    monkeypatch.setenv(SCHEDULER_ENV, "tcp://from-env:8786")
    assert scheduler_address(settings(scheduler="tcp://from-conf:8786")) == "tcp://from-conf:8786"
    assert scheduler_address(settings()) == "tcp://from-env:8786"
    monkeypatch.delenv(SCHEDULER_ENV)
    assert scheduler_address(settings()) is None  # a LocalCluster


def test_a_scheduler_that_does_not_answer_fails_within_the_timeout() -> None:
    from tabml.train_dask import DistributedTrainingError, dask_client

    address = f"tcp://127.0.0.1:{free_port()}"
    with (
        pytest.raises(
            DistributedTrainingError, match=f"cannot reach the Dask scheduler at {address}"
        ),
        dask_client(settings(scheduler=address, connect_timeout_seconds=2)),
    ):
        pass
