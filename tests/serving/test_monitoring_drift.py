"""Live drift on /metrics of a real `tabml-serve`: held-out census rows (data/adult.test, never
trained on) stay below the warning band in every full window, a synthetic shift of two features
crosses the alert band for those two only, and several workers report one combined window.

Expected values come from `tabml.monitoring.DriftWindow` fed with exactly the records served
(the unit tests check that class against independent computations), so /metrics agrees with
the batch report and the loop to the last digit.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.serving.monitoring import DRIFTED_FEATURES, by_label, drifted, scrape
from tests.support.waiting import wait_for

from tabml.monitoring import DriftWindow, ReferenceProfile
from tabml.monitoring.events import closed_segments

pytestmark = pytest.mark.slow

BATCH = 500


def profile(workspace: Any) -> ReferenceProfile:
    return ReferenceProfile.load(workspace.models / "reference_profile.json")


def window_psi(url: str) -> tuple[float, dict[str, float], float]:
    """(records, feature → PSI, score PSI) of the served model version (PSIs absent: empty)."""
    samples = scrape(url)
    (records,) = samples["tabml_drift_window_records"].values()
    features = by_label(samples.get("tabml_feature_psi", {}), "feature")
    score = next(iter(samples.get("tabml_prediction_psi", {}).values()), math.nan)
    return records, features, score


def test_held_out_traffic_raises_no_false_alarm(
    workspace: Any, start_server: Any, test_set: Any, record_property: Any
) -> None:
    """Every full window over the 16,281 test rows, scraped after each 500-record request: no
    feature (nor the score) reaches psi_warn. The false-alarm rate is reported."""
    reference = profile(workspace)
    config = reference.monitor
    assert config is not None
    offline = DriftWindow(reference, config.window_size, config.epsilon)
    checks = warnings = alerts = 0
    largest = 0.0
    with start_server(workspace) as server, httpx.Client(base_url=server.url) as http:
        for start in range(0, len(test_set.records), BATCH):
            batch = test_set.records[start : start + BATCH]
            assert http.post("/predict", json=batch).status_code == 200
            offline.add(batch, test_set.probabilities[start : start + BATCH])
            expected = offline.feature_psi()
            # Every scrape counts the requests answered before it; waiting covers a slow start.
            records, features, score = wait_for(
                lambda expected=expected: (state := window_psi(server.url))[1] == expected and state
            )
            assert records == offline.records
            assert score == offline.prediction_psi()
            if records < config.window_size:
                continue
            values = [*features.values(), score]
            checks += len(values)
            warnings += sum(v >= config.psi_warn for v in values)
            alerts += sum(v >= config.psi_alert for v in values)
            largest = max(largest, *values)
    rate = warnings / checks
    record_property("drift_false_alarm_checks", checks)
    record_property("drift_false_warn_rate", rate)
    print(
        f"held-out traffic: {checks} PSI checks over full windows, {warnings} at or above "
        f"psi_warn ({rate:.1%}), {alerts} at or above psi_alert; largest PSI {largest:.4f}"
    )
    assert checks >= 15 * 20
    assert warnings == alerts == 0


def test_shifted_features_cross_the_alert_band_and_only_they(
    workspace: Any, start_server: Any, test_set: Any
) -> None:
    reference = profile(workspace)
    config = reference.monitor
    assert config is not None
    rows = drifted(test_set.records[: config.window_size])
    with start_server(workspace) as server, httpx.Client(base_url=server.url, timeout=60) as http:
        for start in range(0, len(rows), 1000):
            assert http.post("/predict", json=rows[start : start + 1000]).status_code == 200
        _, features, score = wait_for(
            lambda: (state := window_psi(server.url))[0] == config.window_size and state
        )
    shifted = {name: psi for name, psi in features.items() if name in DRIFTED_FEATURES}
    others = {name: psi for name, psi in features.items() if name not in DRIFTED_FEATURES}
    print(f"shifted: {shifted}; largest other: {max(others.values()):.4f}; score {score:.4f}")
    assert set(shifted) == set(DRIFTED_FEATURES)
    assert all(psi >= config.psi_alert for psi in shifted.values()), shifted
    assert all(psi < config.psi_warn for psi in others.values()), others


def test_two_workers_report_one_combined_window(
    workspace: Any, start_server: Any, test_set: Any, tmp_path: Path
) -> None:
    """4,000 records spread over two workers (new connection each request): whichever worker
    answers a scrape reports all 4,000, with the PSI of all of them, not of its own share."""
    reference = profile(workspace)
    config = reference.monitor
    assert config is not None
    rows = 4000
    assert rows < config.window_size  # so neither worker's window evicts anything
    log_dir = tmp_path / "log"
    options = ["--workers", "2", "--prediction-log-dir", str(log_dir)]
    with start_server(workspace, *options) as server:
        for start in range(0, rows, 100):
            response = httpx.post(
                f"{server.url}/predict",
                json=test_set.records[start : start + 100],
                headers={"connection": "close"},
            )
            assert response.status_code == 200
        offline = DriftWindow(reference, config.window_size, config.epsilon)
        offline.add(test_set.records[:rows], test_set.probabilities[:rows])
        # Each worker publishes its window every second: wait until scrapes on either worker
        # (new connections land on both) all see every record, however loaded the machine.
        wait_for(lambda: all(window_psi(server.url)[0] == rows for _ in range(8)), timeout=30)
        for _ in range(8):  # scrapes land on either worker
            records, features, score = window_psi(server.url)
            assert records == rows
            assert features == pytest.approx(offline.feature_psi(), abs=1e-12)
            assert score == pytest.approx(offline.prediction_psi(), abs=1e-12)
    writers = {segment.name.split("-")[-2] for segment in closed_segments(log_dir)}
    assert len(writers) == 2, "both workers must have served some of the records"


def test_no_live_monitoring_exports_no_window(
    workspace: Any, start_server: Any, test_set: Any
) -> None:
    with start_server(workspace, "--no-live-monitoring") as server:
        assert httpx.post(f"{server.url}/predict", json=test_set.records[0]).status_code == 200
        samples = scrape(server.url)
        feedback = httpx.post(f"{server.url}/feedback", json={"request_id": "abc", "label": ">50K"})
    assert "tabml_drift_window_records" not in samples
    assert feedback.status_code == 503 and "live monitoring is off" in feedback.json()["detail"]
    assert samples["tabml_ready"] == {frozenset(): 1.0}
