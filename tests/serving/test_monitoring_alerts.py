"""deploy/monitoring/alerts.yaml on a real Prometheus scraping a real `tabml-serve`.

Prometheus (Debian's package, as CI installs it) runs on loopback with a generated config:
scrape every second, evaluate every second, and a test copy of the alert rules whose `for:`
durations are set to 0s (the production rules wait 15 minutes before a drift alert fires; the
expressions, thresholds and labels are the real ones). Held-out census rows leave the drift
alerts inactive; the same rows shifted in age and marital status fire them for those features.
"""

from __future__ import annotations

import shutil
import time
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest
import yaml
from tests.serving.monitoring import DRIFTED_FEATURES, drifted
from tests.support.processes import background_process, free_port
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow

ALERTS = Path(__file__).resolve().parents[2] / "deploy" / "monitoring" / "alerts.yaml"
DRIFT_ALERTS = ("TabmlFeatureDrift", "TabmlPredictionDrift")


def prometheus_binary() -> str:
    found = shutil.which("prometheus")
    if found is None:
        pytest.fail(
            "prometheus is not installed: `apt-get install --no-install-recommends prometheus` "
            "(.ci/system-packages.sh does this)"
        )
    return found


def immediate_rules(dest: Path) -> Path:
    """alerts.yaml with every `for:` at 0s, so an alert fires at the first evaluation."""
    rules = yaml.safe_load(ALERTS.read_text())
    for group in rules["groups"]:
        group["interval"] = "1s"
        for rule in group["rules"]:
            rule["for"] = "0s"
    dest.write_text(yaml.safe_dump(rules, sort_keys=False))
    return dest


def api(prometheus: str, path: str, **params: str) -> Any:
    response = httpx.get(f"{prometheus}/api/v1/{path}", params=params, timeout=5)
    response.raise_for_status()
    body = response.json()
    assert body["status"] == "success", body
    return body["data"]


def drift_rules(prometheus: str) -> dict[str, dict[str, Any]]:
    (group,) = api(prometheus, "rules", type="alert")["groups"]
    return {rule["name"]: rule for rule in group["rules"] if rule["name"] in DRIFT_ALERTS}


def evaluated_since(prometheus: str, moment: float) -> dict[str, dict[str, Any]] | None:
    """The drift rules, once both have been evaluated after `moment` (unix seconds)."""
    rules = drift_rules(prometheus)
    stamps = [datetime.fromisoformat(r["lastEvaluation"]).timestamp() for r in rules.values()]
    return rules if len(rules) == 2 and min(stamps) > moment else None


def window_records(prometheus: str) -> float:
    result = api(prometheus, "query", query="tabml_drift_window_records")["result"]
    return float(result[0]["value"][1]) if result else 0.0


def test_drift_alerts_stay_quiet_on_held_out_rows_and_fire_on_drift(
    workspace: Any, start_server: Any, test_set: Any, tmp_path: Path
) -> None:
    binary = prometheus_binary()
    config = tmp_path / "prometheus.yml"
    rules = immediate_rules(tmp_path / "alerts.yaml")
    port = free_port()
    prometheus = f"http://127.0.0.1:{port}"
    with start_server(workspace) as server:
        target = urlparse(server.url).netloc
        config.write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": [str(rules)],
                    "scrape_configs": [
                        {"job_name": "tabml-serve", "static_configs": [{"targets": [target]}]}
                    ],
                }
            )
        )
        command = [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ]
        with (
            background_process(
                command, log=tmp_path / "prometheus.log", ready_url=f"{prometheus}/-/ready"
            ),
            httpx.Client(base_url=server.url, timeout=60) as http,
        ):
            window = 5000  # the profile's window_size: fill it
            for start in range(0, window, 1000):
                batch = test_set.records[start : start + 1000]
                assert http.post("/predict", json=batch).status_code == 200
            wait_for(lambda: window_records(prometheus) == window, timeout=30)
            scraped = time.time()  # rules evaluated from now on see the full window
            quiet = wait_for(lambda: evaluated_since(prometheus, scraped), timeout=30)
            for name, rule in quiet.items():
                assert rule["health"] == "ok", rule
                assert (rule["state"], rule["alerts"]) == ("inactive", []), name

            for start in range(0, window, 1000):
                batch = drifted(test_set.records[start : start + 1000])
                assert http.post("/predict", json=batch).status_code == 200

            def firing() -> dict[str, set[str]] | None:
                alerts = [a for a in api(prometheus, "alerts")["alerts"] if a["state"] == "firing"]
                names = {a["labels"]["alertname"] for a in alerts}
                features = {
                    a["labels"]["feature"]
                    for a in alerts
                    if a["labels"]["alertname"] == "TabmlFeatureDrift"
                }
                done = set(DRIFT_ALERTS) <= names and features == set(DRIFTED_FEATURES)
                return {"alerts": names, "features": features} if done else None

            fired = wait_for(firing, timeout=60)
    assert fired["features"] == set(DRIFTED_FEATURES)
