"""Keep the tracking store in step with the model: exactly one finished MLflow run per model
(model md5 + data md5 + registered model name), registered and gated.

`python src/train.py` calls `track_model` after every `dvc repro`, whatever DVC ran. Tracking
is deliberately not a DVC stage: a fresh clone, a no-op or a run-cache restore rebuilds the model
byte-identically, so a stage would be skipped and the store left without the served model
(DVC decides on file hashes; it cannot see an empty MLflow store).

The common case, a model that is already tracked, is answered without importing MLflow
(`tracking_store.find_run_without_mlflow`), in milliseconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tabml.config import Params
from tabml.gate_rules import QualityEvidence
from tabml.layout import (
    MODEL_CARD_FILE,
    MODEL_CARD_FILES,
    MODEL_CARD_HTML_FILE,
    MODEL_FILE,
    MODELS_DIR,
)
from tabml.lineage import TAG_DVC_EXP, Lineage, collect_lineage
from tabml.tracking import RunFiles
from tabml.tracking_store import find_run_without_mlflow

#: Name of the logged pyfunc inside its run.
LOGGED_MODEL_NAME = "model"
#: Tag key linking a run to every DVC experiment that produced its model (`dvc_exp.<name>`).
EXPERIMENT_TAG_PREFIX = "dvc_exp."


#: (uri, experiment) → (client, experiment id), filled by `Preloader` or the first connect.
_CONNECTIONS: dict[tuple[str, str], tuple[Any, str]] = {}


class Preloader:
    """Import MLflow and connect to the store in a background thread while `dvc repro` runs
    its stages, so a new model's tracking does not pay those ~2 s after training.

    The thread waits `delay` seconds first: a no-op `dvc repro` finishes before that, is
    `cancel`led, and MLflow is never imported. The stages run as child processes, so the main
    process is otherwise idle while they do. 2 s: a loaded no-op of nine stages passed 1.5 s.
    """

    def __init__(self, uri: str, experiment: str, delay: float = 2.0) -> None:
        self._key = (uri, experiment)
        self._cancelled = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(delay,), daemon=True)
        self._thread.start()

    def _run(self, delay: float) -> None:
        if self._cancelled.wait(delay):
            return
        # Lowest CPU priority for this thread only (Linux schedules threads as tasks): the
        # stages keep the cores, the import gets what they leave idle.
        with contextlib.suppress(OSError, AttributeError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        try:
            _connection(*self._key)
        except BaseException as exc:  # reported by track_model's own connect, not here
            self.error = exc

    def cancel(self) -> None:
        """Stop before importing if it has not started; otherwise let it finish."""
        self._cancelled.set()
        self._thread.join()


def _connection(uri: str, experiment: str) -> tuple[Any, str]:
    if (uri, experiment) not in _CONNECTIONS:
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        from tabml import registry, tracking  # noqa: F401  (imports MLflow)
        from tabml.pyfunc_model import log_pyfunc_model  # noqa: F401

        _CONNECTIONS[(uri, experiment)] = tracking.connect(uri, experiment)
    return _CONNECTIONS[(uri, experiment)]


class TrackingError(RuntimeError):
    """The tracking store refused or failed an operation (MLflow's own message kept)."""


@dataclass
class Stopwatch:
    """Seconds spent per named step, to report what tracking costs next to training."""

    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def time(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def summary(self) -> str:
        total = sum(self.seconds.values())
        parts = ", ".join(f"{name} {secs:.2f}" for name, secs in self.seconds.items())
        return f"{total:.2f} s ({parts})"


@dataclass
class Tracked:
    """What `track_model` did: found the run, or logged and registered a new one."""

    run_id: str
    uri: str
    lineage: Lineage
    new: bool
    version: str | None = None
    passed: bool | None = None
    promoted: bool = False
    lines: list[str] = field(default_factory=list)


def track_model(
    params: Params,
    raw_params: Mapping[str, Any],
    uri: str,
    git_tags: dict[str, str],
    *,
    files: RunFiles | None = None,
    promote: bool = True,
    experiment_name: str | None = None,
    context: str = "",
) -> Tracked:
    """Make sure the model under `files` (default: the workspace) has its run; log, register
    and gate it if not. `promote=False` registers without moving `champion` (sweeps promote
    their best at the end); `experiment_name` names the DVC experiment that produced it."""
    files = files or RunFiles()
    name = params.tracking.registered_model
    lineage = collect_lineage(
        files.model_file,
        files.root / params.dataset.dvc_file,
        params.dataset.name,
        name,
        raw_params,
        git_tags,
        files.lock,
        (MODELS_DIR / MODEL_FILE).as_posix(),
    )
    existing = find_run_without_mlflow(uri, params.tracking.experiment, lineage.identity)
    if existing:
        return _already_tracked(existing, uri, lineage, experiment_name, fast=True)
    watch = Stopwatch()
    with watch.time("import"):
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        from mlflow.exceptions import MlflowException

        from tabml import registry, tracking  # noqa: F401  (timed here with MLflow)
        from tabml.pyfunc_model import log_pyfunc_model  # noqa: F401
    try:
        return _log_new(
            params, raw_params, uri, files, lineage, promote, experiment_name, context, watch
        )
    except MlflowException as exc:
        raise TrackingError(exc.message) from exc


def _log_new(
    params: Params,
    raw_params: Mapping[str, Any],
    uri: str,
    files: RunFiles,
    lineage: Lineage,
    promote: bool,
    experiment_name: str | None,
    context: str,
    watch: Stopwatch,
) -> Tracked:
    import mlflow

    from tabml import registry, tracking
    from tabml.pyfunc_model import log_pyfunc_model

    name = params.tracking.registered_model
    with watch.time("connect"):
        client, experiment_id = _connection(uri, params.tracking.experiment)
        existing = tracking.find_logged_run(client, experiment_id, lineage.identity)
    if existing:
        return _already_tracked(existing, uri, lineage, experiment_name, fast=False)

    tags = dict(lineage.tags)
    if experiment_name:
        tags |= {TAG_DVC_EXP: experiment_name, EXPERIMENT_TAG_PREFIX + experiment_name: "logged"}
    value = float(json.loads(files.metrics.read_text())["test"][params.gate.metric])
    evidence = QualityEvidence.from_files(
        files.metrics, files.slices, params.evaluate.min_slice_rows
    )
    with mlflow.start_run(experiment_id=experiment_id, run_name=experiment_name, tags=tags) as run:
        with watch.time("log"):
            tracking.log_run_contents(client, run.info.run_id, files, raw_params)
        with watch.time("register"):
            info = log_pyfunc_model(files.models, LOGGED_MODEL_NAME, name)
            version = str(info.registered_model_version)
            decision = registry.register_with_gate(
                client, name, version, value, params.gate, promote, context, evidence
            )
            mlflow.set_tags(decision.tags(params.gate) | {"registered_version": version})
        log_model_card(files, run.info.run_id, lineage, f"{name} v{version}", decision.passed)

    if decision.passed and promote:
        verdict = "promoted to champion"
    elif decision.passed:
        verdict = f"stays candidate: {context}"
    else:
        verdict = "stays candidate (champion unchanged)"
    lines = [
        f"logged run {run.info.run_id} to {uri}",
        f"registered {name} v{version}: gate {'passed' if decision.passed else 'failed'}",
        *(f"  - {reason}" for reason in decision.reasons),
        f"{name} v{version} {verdict}",
        f"tracking time: {watch.summary()}",
    ]
    return Tracked(
        run.info.run_id,
        uri,
        lineage,
        True,
        version,
        decision.passed,
        decision.passed and promote,
        lines,
    )


#: Where the model card (with the run's lineage) goes in the run's artifacts.
MODEL_CARD_ARTIFACT_DIR = "model_card"


def log_model_card(
    files: RunFiles, run_id: str, lineage: Lineage, version: str, passed: bool
) -> None:
    """Log the workspace's model card with what only the run knows: commit, run, version and
    gate decision (the DVC output cannot hold them and stay reproducible). The active run must
    be `run_id`; a models directory without a card (an older commit) logs none."""
    import mlflow

    from tabml.model_card import with_lineage

    card, page = (files.models / name for name in MODEL_CARD_FILES)
    if not (card.is_file() and page.is_file()):
        return
    markdown_card, html_card = with_lineage(
        card.read_text(),
        page.read_text(),
        "Run (added by tracking)",
        {
            "git commit": lineage.tags.get("git_commit"),
            "git dirty": lineage.tags.get("git_dirty"),
            "MLflow run": run_id,
            "registered version": version,
            "gate": "passed" if passed else "failed",
            "data md5": lineage.data_md5,
            "model md5": lineage.model_md5,
        },
    )
    mlflow.log_text(markdown_card, f"{MODEL_CARD_ARTIFACT_DIR}/{MODEL_CARD_FILE}")
    mlflow.log_text(html_card, f"{MODEL_CARD_ARTIFACT_DIR}/{MODEL_CARD_HTML_FILE}")


def _already_tracked(
    run_id: str, uri: str, lineage: Lineage, experiment_name: str | None, fast: bool
) -> Tracked:
    """A run holds this model already: nothing is logged; a sweep experiment that reproduced
    it (e.g. restored from DVC's run cache) is linked to that run by a tag."""
    if experiment_name:
        from mlflow import MlflowClient

        MlflowClient(uri, registry_uri=uri).set_tag(
            run_id, EXPERIMENT_TAG_PREFIX + experiment_name, "same model"
        )
    how = "" if fast else " (checked with MLflow)"
    line = (
        f"model {lineage.model_md5} on data {lineage.data_md5} is already logged as run "
        f"{run_id} in {uri}{how}; nothing logged"
    )
    return Tracked(run_id, uri, lineage, False, lines=[line])


def raw_params_of(path: Path) -> dict[str, Any]:
    import yaml

    return yaml.safe_load(path.read_text())
