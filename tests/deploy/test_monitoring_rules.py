"""deploy/monitoring/: alert rules, their promtool unit tests, the Prometheus config, the dashboard.

promtool (Debian's prometheus package, installed by .ci/run) checks and unit-tests the rules and
parses every dashboard query. The other tests check what promtool cannot: each alert is tested
both ways, rule and dashboard thresholds are conf/monitor's, and only the service's real metric
names are used.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tabml.config import load_params

# Not tests.conftest: this module also runs under a bare `pytest` (no repository on sys.path).
REPO_ROOT = Path(__file__).resolve().parents[2]
MONITORING = REPO_ROOT / "deploy" / "monitoring"
ALERTS = MONITORING / "alerts.yaml"
DASHBOARD = MONITORING / "grafana-dashboard.json"
MONITOR = load_params(REPO_ROOT / "params.yaml").monitor


def service_metrics() -> set[str]:
    """Every series a serving process exposes (histograms by their _bucket series), read from a
    real `ServiceMetrics` registry with its scrape-time monitoring collector filled in."""
    from prometheus_client.parser import text_string_to_metric_families

    from tabml.serving.metrics import MonitorCollector, ServiceMetrics, VersionMonitoring

    metrics = ServiceMetrics(["age"])
    full = VersionMonitoring("v1", 10, {"age": 0.1}, 0.1, 500, 0.8, 0.9)
    metrics.add_collector(MonitorCollector(lambda: [full]))
    names = set()
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        if not family.name.startswith("tabml_") or family.name.endswith("_created"):
            continue  # the process and platform collectors; counters' creation times
        kind = {"counter": "_total", "histogram": "_bucket"}.get(family.type, "")
        names.add(family.name + kind)
    return names


# Every series tabml-serve exposes for monitoring; the dashboard shows each of them.
SERVICE_METRICS = service_metrics()

# The ones the alert rules use.
RULE_METRICS = {
    "tabml_http_requests_total",
    "tabml_http_request_duration_seconds_bucket",
    "tabml_predicted_rows_total",
    "tabml_feature_psi",
    "tabml_prediction_psi",
    "tabml_drift_window_records",
    "tabml_realized_accuracy",
    "tabml_feedback_total",
    "tabml_feedback_unmatched_total",
    "tabml_prediction_log_dropped_total",
    "tabml_ready",
}
METRIC_NAME = re.compile(r"\btabml_[a-z_]+")


def promtool(*args: str, cwd: Path = MONITORING) -> str:
    executable = shutil.which("promtool")
    if executable is None:
        pytest.fail(
            "promtool is not installed: `apt-get install --no-install-recommends prometheus` "
            "(.ci/run does this)"
        )
    result = subprocess.run(
        [executable, *args], cwd=cwd, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, f"promtool {' '.join(args)}:\n{result.stdout}{result.stderr}"
    return result.stdout


def rules() -> dict[str, dict[str, Any]]:
    (group,) = yaml.safe_load(ALERTS.read_text())["groups"]
    assert group["name"] == "tabml"
    return {rule["alert"]: rule for rule in group["rules"]}


def dashboard_queries() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [t["expr"] for p in panels for t in p.get("targets", [])]


def test_alert_rules_are_valid() -> None:
    assert f"SUCCESS: {len(rules())} rules found" in promtool("check", "rules", ALERTS.name)


def test_alert_rule_unit_tests_pass() -> None:
    promtool("test", "rules", "alerts.test.yaml")


def test_every_alert_is_tested_firing_and_quiet() -> None:
    suite = yaml.safe_load((MONITORING / "alerts.test.yaml").read_text())
    assert suite["rule_files"] == [ALERTS.name]
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in suite["tests"]:
        for check in case["alert_rule_test"]:
            (firing if check["exp_alerts"] else quiet).add(check["alertname"])
    assert firing == set(rules()) and quiet == set(rules())


def test_every_alert_waits_and_says_what_and_where() -> None:
    for name, rule in rules().items():
        assert re.fullmatch(r"\d+m", rule["for"]), name
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert {"summary", "description"} <= set(rule["annotations"]), name
    for name in ("TabmlFeatureDrift", "TabmlPredictionDrift", "TabmlRealizedAccuracyLow"):
        assert "$labels.model_version" in rules()[name]["annotations"]["summary"], name
    assert "$labels.feature" in rules()["TabmlFeatureDrift"]["annotations"]["summary"]


def test_rules_use_only_the_services_metric_names() -> None:
    used = {m for rule in rules().values() for m in METRIC_NAME.findall(rule["expr"])}
    assert used == RULE_METRICS
    assert used <= SERVICE_METRICS


def test_thresholds_are_those_of_conf_monitor() -> None:
    alerts = rules()
    window_guard = (
        "and on (job, instance, model_version) "
        f"tabml_drift_window_records >= {MONITOR.min_window_records}"
    )
    for name, metric in (
        ("TabmlFeatureDrift", "tabml_feature_psi"),
        ("TabmlPredictionDrift", "tabml_prediction_psi"),
    ):
        expr = " ".join(alerts[name]["expr"].split())
        assert expr == f"{metric} >= {MONITOR.psi_alert} {window_guard}", name
    accuracy = alerts["TabmlRealizedAccuracyLow"]["expr"]
    assert accuracy == f"tabml_realized_accuracy < {MONITOR.accuracy_floor}"

    panels = {p["title"]: p for p in json.loads(DASHBOARD.read_text())["panels"]}

    def steps(title: str) -> list[float]:
        thresholds = panels[title]["fieldConfig"]["defaults"]["thresholds"]["steps"]
        return [s["value"] for s in thresholds if s["value"] is not None]

    assert steps("Feature PSI") == steps("Score PSI") == [MONITOR.psi_warn, MONITOR.psi_alert]
    assert steps("Realized accuracy and ROC AUC") == [MONITOR.accuracy_floor]


def test_prometheus_config_is_valid_and_loads_the_rules() -> None:
    output = promtool("check", "config", "prometheus.yml")
    assert "SUCCESS: 1 rule files found" in output
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    assert config["rule_files"] == [ALERTS.name]
    assert [job["job_name"] for job in config["scrape_configs"]] == ["tabml-serve"]


def test_dashboard_covers_every_metric_with_queries_that_parse(tmp_path: Path) -> None:
    queries = dashboard_queries()
    mentioned = {m for q in queries for m in METRIC_NAME.findall(q)}
    assert mentioned == SERVICE_METRICS  # which includes every metric the rules use
    # Grafana's variables replaced by values Prometheus accepts, each query as a recording rule:
    # `promtool check rules` then parses all of them as PromQL.
    expressions = [q.replace("$__rate_interval", "5m").replace("$job", ".+") for q in queries]
    recording = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{i}", "expr": e} for i, e in enumerate(expressions)
                ],
            }
        ]
    }
    (tmp_path / "queries.yaml").write_text(yaml.safe_dump(recording))
    assert f"SUCCESS: {len(queries)} rules found" in promtool(
        "check", "rules", "queries.yaml", cwd=tmp_path
    )
