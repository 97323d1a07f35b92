"""Fast checks of the tracking, registry and sweep logic that needs no pipeline run."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.support.processes import free_port

from tabml import lineage, registry, sweep, tracking, tracking_store
from tabml.config import ConfigError, GateConfig
from tabml.workspace import in_experiment_workspace, repo_root

GATE = GateConfig(metric="roc_auc", minimum=0.91, max_drop_from_champion=0.002)


def test_flatten_names_every_leaf_with_dotted_keys() -> None:
    raw = {
        "model": {"learning_rate": 0.05, "num_leaves": 31},
        "tracking": {"uri": None},
        "features": {"derived": ["capital_net"]},
        "dataset": {"columns": [{"name": "age", "min": 17}, {"name": "sex", "categories": ["F"]}]},
    }
    assert tracking.flatten(raw) == {
        "model.learning_rate": "0.05",
        "model.num_leaves": "31",
        "tracking.uri": "null",
        "features.derived": '["capital_net"]',
        "dataset.columns.0.name": "age",
        "dataset.columns.0.min": "17",
        "dataset.columns.1.name": "sex",
        "dataset.columns.1.categories": '["F"]',
    }


def test_params_md5_ignores_key_order() -> None:
    assert lineage.params_md5({"a": 1, "b": {"c": 2}}) == lineage.params_md5(
        {"b": {"c": 2}, "a": 1}
    )


def test_tracking_uri_defaults_to_absolute_sqlite_at_the_repo_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    (tmp_path / ".dvc").mkdir()
    workspace = tmp_path / ".dvc" / "tmp" / "exps" / "run" / "tmpabc123"
    workspace.mkdir(parents=True)

    assert repo_root(workspace) == tmp_path
    assert repo_root(tmp_path / "src") == tmp_path
    monkeypatch.chdir(workspace)
    assert tracking_store.resolve_tracking_uri(None) == f"sqlite:///{tmp_path}/mlflow.db"
    assert (
        tracking_store.resolve_tracking_uri("sqlite:///team.db") == f"sqlite:///{tmp_path}/team.db"
    )

    monkeypatch.setenv("DVC_ROOT", "/srv/project")
    assert tracking_store.resolve_tracking_uri(None) == "sqlite:////srv/project/mlflow.db"
    assert tracking_store.resolve_tracking_uri("http://mlflow:5000") == "http://mlflow:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://override:5000")
    assert tracking_store.resolve_tracking_uri("http://mlflow:5000") == "http://override:5000"


def test_experiment_workspaces_are_told_apart_from_the_repo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    workspace = tmp_path / ".dvc" / "tmp" / "exps" / "run" / "tmpabc123"
    workspace.mkdir(parents=True)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))  # what DVC sets for a queued experiment
    monkeypatch.chdir(workspace)
    assert in_experiment_workspace()
    monkeypatch.chdir(tmp_path)
    assert not in_experiment_workspace()


def test_sqlite_experiments_keep_artifacts_next_to_the_store() -> None:
    assert tracking.artifact_location("sqlite:////srv/p/mlflow.db") == "file:///srv/p/mlartifacts"
    assert tracking.artifact_location("http://127.0.0.1:5000") is None


@pytest.fixture
def health_server() -> Iterator[str]:
    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()
            self.wfile.write(b"OK")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_reachability_check_passes_a_live_server_and_names_a_dead_one(health_server: str) -> None:
    tracking_store.check_reachable(health_server)
    tracking_store.check_reachable("sqlite:////nowhere/mlflow.db")  # not a server: nothing to check
    dead = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(tracking_store.TrackingUnavailableError, match=dead.replace(".", r"\.")):
        tracking_store.check_reachable(dead, timeout=2)


def test_gate_passes_a_good_model_and_gives_reasons() -> None:
    first = registry.evaluate_gate(0.925, GATE)
    assert first.passed
    assert first.reasons == ["roc_auc 0.925000 >= minimum 0.91", "no current champion"]

    close = registry.evaluate_gate(0.9245, GATE, champion_version="3", champion_value=0.926)
    assert close.passed
    assert close.tags(GATE)["gate.champion_version"] == "3"


def test_gate_refuses_a_weak_model_and_one_worse_than_the_champion() -> None:
    weak = registry.evaluate_gate(0.88, GATE)
    assert not weak.passed
    assert "roc_auc 0.880000 < minimum 0.91" in weak.reasons

    worse = registry.evaluate_gate(0.920, GATE, champion_version="2", champion_value=0.926)
    assert not worse.passed
    assert worse.reasons[-1] == ("roc_auc 0.920000 < champion v2 roc_auc 0.926000 - max drop 0.002")
    assert worse.tags(GATE)["gate.decision"] == "failed"


def _move(version: str, action: str, alias: str = registry.CHAMPION) -> registry.AliasMove:
    return registry.AliasMove("t", alias, version, None, action, "", "tests")


def test_champion_stack_undoes_promotions_in_order() -> None:
    history = [
        _move("1", "gate"),
        _move("2", "gate", alias=registry.CANDIDATE),
        _move("3", "gate"),
        _move("4", "promote"),
    ]
    assert registry.champion_stack(history, "4") == ["1", "3", "4"]
    # Rolling back twice walks back two champions, not back and forth.
    history.append(_move("3", "rollback"))
    assert registry.champion_stack(history, "3") == ["1", "3"]
    history.append(_move("1", "rollback"))
    assert registry.champion_stack(history, "1") == ["1"]
    # An alias moved outside the tool counts as the latest champion.
    assert registry.champion_stack(history, "5") == ["1", "5"]


def test_sweep_expands_like_hydra_first_sweep_slowest() -> None:
    combos = sweep.expand(["model.learning_rate=0.03,0.1", "model.num_leaves=15,63", "seed=7"])
    assert combos == [
        ["model.learning_rate=0.03", "model.num_leaves=15", "seed=7"],
        ["model.learning_rate=0.03", "model.num_leaves=63", "seed=7"],
        ["model.learning_rate=0.1", "model.num_leaves=15", "seed=7"],
        ["model.learning_rate=0.1", "model.num_leaves=63", "seed=7"],
    ]
    assert sweep.expand(["model.num_leaves=range(15,18)"]) == [
        ["model.num_leaves=15"],
        ["model.num_leaves=16"],
        ["model.num_leaves=17"],
    ]
    with pytest.raises(ConfigError, match="interval"):
        sweep.expand(["model.learning_rate=interval(0.01,0.1)"])


def test_sweep_summary_sorts_by_metric_with_failures_last() -> None:
    experiments = [
        sweep.Experiment("s-1", ["model.learning_rate=0.03"]),
        sweep.Experiment("s-2", ["model.learning_rate=0.1"]),
        sweep.Experiment("s-3", ["model.learning_rate=0.5"]),
    ]
    results = {
        "s-1": {"metrics": {"roc_auc": 0.92, "pr_auc": 0.8}},
        "s-2": {"metrics": {"roc_auc": 0.93, "pr_auc": 0.81}},
    }
    status = {"s-1": "Success", "s-2": "Success", "s-3": "Failed"}
    rows = sweep.summary_rows(experiments, status, results, "roc_auc")
    assert [row["name"] for row in rows] == ["s-2", "s-1", "s-3"]
    table = sweep.format_table(rows).splitlines()
    assert table[0].split() == [
        "name",
        "overrides",
        "status",
        "roc_auc",
        "pr_auc",
        "log_loss",
        "best_iteration",
    ]
    assert table[3].split()[:4] == ["s-3", "model.learning_rate=0.5", "Failed", "-"]
