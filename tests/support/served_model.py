"""The workspace model of a repository, offline and served: its prepared test rows as request
records with their offline probabilities, and `tabml-serve` with no options on a free port, to
compare the two (serving parity) for whichever dataset the repository was last trained on."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.support.processes import background_process, free_port
from tests.support.project import command_env

SERVE = [sys.executable, "-m", "tabml.serving.cli"]


def offline_predictions(repo: Path) -> tuple[list[dict[str, Any]], list[float]]:
    """Every prepared test row of `repo`'s workspace model as a JSON-ready request record, and
    its offline probability (the pipeline's own transform and booster)."""
    from tabml.columnar import read_columns
    from tabml.contract import DataContract
    from tabml.features import FeatureTransform
    from tabml.model import load_booster, predict_proba

    models = repo / "models"
    contract = DataContract.load(models / "contract.json")
    transform = FeatureTransform.load(models / "feature_transform.json", contract)
    columns = read_columns(repo / "artifacts" / "prepared" / "test.parquet")
    probabilities = predict_proba(load_booster(models / "model.txt"), transform.transform(columns))
    names = contract.feature_names
    lists = [[_json_value(v) for v in columns[name].tolist()] for name in names]
    records = [dict(zip(names, row, strict=True)) for row in zip(*lists, strict=True)]
    return records, [float(p) for p in probabilities]


def _json_value(value: Any) -> Any:
    return None if value is None or (isinstance(value, float) and value != value) else value


@contextlib.contextmanager
def serving(repo: Path, timeout: float = 120.0) -> Iterator[str]:
    """`tabml-serve` (no options) in `repo` on a free loopback port; yields its URL once ready."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in command_env().items() if not k.startswith("TABML_")}
    with background_process(
        [*SERVE, "--port", str(port)],
        log=repo.parent / f"serve-{port}.log",
        ready_url=f"{url}/ready",
        cwd=repo,
        env=env,
        timeout=timeout,
    ):
        yield url
