"""POST /feedback on a real `tabml-serve`: true labels of the test split for served predictions
move `tabml_realized_accuracy` / `tabml_realized_roc_auc` to scikit-learn's values on the same
rows; bad items are refused by name and nothing is half-recorded; two workers share one index
and one realized window.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from sklearn.metrics import accuracy_score, roc_auc_score
from tests.serving.conftest import PREPARED_TEST
from tests.serving.monitoring import sample
from tests.support.waiting import wait_for

from tabml.columnar import read_columns
from tabml.monitoring import ReferenceProfile
from tabml.monitoring.events import read_events
from tabml.serving.prediction_index import PredictionRing, prediction_key, prediction_keys

pytestmark = pytest.mark.slow

POSITIVE, NEGATIVE = ">50K", "<=50K"


@pytest.fixture(scope="module")
def truth() -> np.ndarray:
    """The test split's labels (1: income above 50K), row for row with `test_set`."""
    return np.asarray(read_columns(PREPARED_TEST)["target"], dtype=int)


def label_of(y: int) -> str:
    return POSITIVE if y else NEGATIVE


def predict_batches(url: str, records: list[dict[str, Any]], size: int, **headers: str) -> Any:
    """Send `records` in requests of `size`; yields (request id, index, row) per record."""
    for start in range(0, len(records), size):
        request_id = f"req-{start}"
        response = httpx.post(
            f"{url}/predict",
            json=records[start : start + size],
            headers={"x-request-id": request_id, **headers},
        )
        assert response.status_code == 200 and response.headers["x-request-id"] == request_id
        for index in range(len(response.json()["predictions"])):
            yield request_id, index, start + index


def labels(rows: list[tuple[str, int, int]], truth: np.ndarray) -> list[dict[str, Any]]:
    return [{"request_id": r, "index": i, "label": label_of(truth[row])} for r, i, row in rows]


def realized(url: str, version: str) -> tuple[float | None, float | None, float | None]:
    return (
        sample(url, "tabml_realized_labels", model_version=version),
        sample(url, "tabml_realized_accuracy", model_version=version),
        sample(url, "tabml_realized_roc_auc", model_version=version),
    )


def served_version(url: str) -> tuple[str, float]:
    model = httpx.get(f"{url}/metadata").json()["model"]
    return model["version"], model["threshold"]


def test_labels_move_the_realized_metrics_to_the_offline_values(
    workspace: Any, start_server: Any, test_set: Any, truth: np.ndarray, tmp_path: Path
) -> None:
    config = ReferenceProfile.load(workspace.models / "reference_profile.json").monitor
    assert config is not None
    log_dir = tmp_path / "log"
    with start_server(workspace, "--prediction-log-dir", str(log_dir)) as server:
        version, threshold = served_version(server.url)
        # Requests of many records: each record indexed by its position in the request.
        rows = list(predict_batches(server.url, test_set.records[:1200], 400))
        first = labels(rows[:150], truth)  # fewer than min_realized_labels
        response = httpx.post(f"{server.url}/feedback", json=first)
        assert response.status_code == 200 and response.json() == {"recorded": 150}
        assert realized(server.url, version) == (150, None, None)

        rest = labels(rows[150:], truth)
        assert httpx.post(f"{server.url}/feedback", json=rest).json() == {"recorded": 1050}
        held, accuracy, auc = realized(server.url, version)
        # The realized window holds the last realized_window_size labels received.
        last = np.arange(1200)[-config.realized_window_size :]
        p, y = test_set.probabilities[last], truth[last]
        assert held == config.realized_window_size
        assert accuracy == pytest.approx(accuracy_score(y, p >= threshold), abs=1e-12)
        assert auc == pytest.approx(roc_auc_score(y, p), abs=1e-12)
        assert sample(server.url, "tabml_feedback_total") == 1200
        assert sample(server.url, "tabml_feedback_unmatched_total") == 0
    feedback = list(read_events(log_dir, kinds=("feedback",)))
    assert [(e["request_id"], e["index"], e["label"]) for e in feedback] == [
        (x["request_id"], x["index"], x["label"]) for x in first + rest
    ]


def detail(response: httpx.Response) -> list[tuple[int, str, str]]:
    return [(e["index"], e["field"], e["type"]) for e in response.json()["detail"]]


def test_bad_labels_are_named_and_nothing_is_half_recorded(
    workspace: Any, start_server: Any, test_set: Any, truth: np.ndarray
) -> None:
    with start_server(workspace) as server:
        url = f"{server.url}/feedback"
        version, _ = served_version(server.url)
        rows = list(predict_batches(server.url, test_set.records[:3], 3))
        good = labels(rows, truth)  # req-0, indices 0..2

        unknown = httpx.post(url, json=[good[0], {**good[1], "request_id": "never-sent"}])
        assert unknown.status_code == 404
        assert detail(unknown) == [(1, "request_id", "unknown_prediction")]
        assert "never-sent" in unknown.json()["detail"][0]["message"]
        beyond = httpx.post(url, json={**good[0], "index": 3})  # the request had 3 records
        assert beyond.status_code == 404 and detail(beyond) == [
            (0, "request_id", "unknown_prediction")
        ]
        assert sample(server.url, "tabml_feedback_unmatched_total") == 2

        wrong = httpx.post(url, json=[good[0], {**good[1], "label": "rich"}, {"label": POSITIVE}])
        assert wrong.status_code == 422
        assert detail(wrong) == [(1, "label", "literal_error"), (2, "request_id", "missing")]
        assert httpx.post(url, json={**good[0], "index": -1}).status_code == 422
        assert httpx.post(url, json={**good[0], "score": 1}).status_code == 422
        assert httpx.post(url, content=b"[{").status_code == 400
        assert httpx.post(url, json=[]).status_code == 422

        twice = httpx.post(url, json=[good[0], good[0]])
        assert twice.status_code == 409 and detail(twice) == [
            (1, "request_id", "duplicate_feedback")
        ]
        # None of the refused requests recorded anything.
        assert sample(server.url, "tabml_realized_labels", model_version=version) == 0

        assert httpx.post(url, json=good[:2]).json() == {"recorded": 2}
        again = httpx.post(url, json=[good[2], good[1]])
        assert again.status_code == 409 and detail(again) == [
            (1, "request_id", "duplicate_feedback")
        ]
        assert httpx.post(url, json=good[2]).json() == {"recorded": 1}  # one object, no list
        assert sample(server.url, "tabml_realized_labels", model_version=version) == 3


def test_two_workers_share_the_index_and_the_realized_window(
    workspace: Any, start_server: Any, test_set: Any, truth: np.ndarray
) -> None:
    """Predictions and labels each land on either worker (a new connection per request): every
    label finds its prediction, and every scrape reports all labels."""
    close = {"connection": "close"}
    with start_server(workspace, "--workers", "2") as server:
        version, threshold = served_version(server.url)
        rows = list(predict_batches(server.url, test_set.records[:600], 10, **close))
        items = labels(rows, truth)
        for start in range(0, len(items), 50):
            response = httpx.post(
                f"{server.url}/feedback", json=items[start : start + 50], headers=close
            )
            assert response.status_code == 200, response.text
        p, y = test_set.probabilities[:600], truth[:600]
        expected = (600, accuracy_score(y, p >= threshold), roc_auc_score(y, p))

        def converged() -> bool:
            held, accuracy, auc = realized(server.url, version)
            return (
                held == 600
                and abs(accuracy - expected[1]) < 1e-12
                and abs(auc - expected[2]) < 1e-12
            )

        # Each worker publishes its window every second: wait until scrapes on either worker
        # (new connections land on both) all report every label, however loaded the machine.
        wait_for(lambda: all(converged() for _ in range(8)), 30)
        for _ in range(8):  # scrapes land on either worker
            held, accuracy, auc = realized(server.url, version)
            assert held == 600
            assert accuracy == pytest.approx(accuracy_score(y, p >= threshold), abs=1e-12)
            assert auc == pytest.approx(roc_auc_score(y, p), abs=1e-12)
        for _ in range(6):  # a repeat is refused whichever worker it reaches
            repeat = httpx.post(f"{server.url}/feedback", json=items[7], headers=close)
            assert repeat.status_code == 409


# The feedback index on its own -----------------------------------------------------------------


def test_index_keys_are_the_same_one_by_one_and_per_request() -> None:
    keys = prediction_keys(["3f9c2a7e", "b", "c"], [1000, 1, 5], [0, 0, 300])
    assert keys.tolist() == [
        prediction_key(request_id, i)
        for request_id, count, first in (("3f9c2a7e", 1000, 0), ("b", 1, 0), ("c", 5, 300))
        for i in range(first, first + count)
    ]
    assert len(set(keys.tolist())) == 1006 and 0 not in keys
    assert prediction_key("3f9c2a7f", 0) != prediction_key("3f9c2a7e", 0)


@pytest.mark.parametrize("lookups", [3, 75])  # scanned key by key, or sorted once
def test_index_finds_the_last_capacity_predictions(lookups: int, tmp_path: Path) -> None:
    ring = PredictionRing.create(tmp_path / "ring", capacity=1000)
    for request in range(25):  # 2,500 predictions into 1,000 slots: requests 15-24 stay
        probabilities = np.full(100, request / 100)
        versions = np.full(100, request % 3, dtype=np.uint16)
        ring.append(prediction_keys([f"r{request}"], [100], [0]), probabilities, versions)
    wanted = [(r, i) for r in (24, 14, 15, *range(25)) for i in (0, 50, 99)][:lookups]
    keys = np.array([prediction_key(f"r{r}", i) for r, i in wanted], dtype=np.uint64)
    slots, entries = PredictionRing.attach(tmp_path / "ring").find(keys)  # as another worker
    for (request, _), slot, entry in zip(wanted, slots.tolist(), entries, strict=True):
        if request >= 15:
            assert slot >= 0
            assert (entry["probability"], entry["version"]) == (request / 100, request % 3)
        else:
            assert slot == -1
    ring.mark_labelled(slots[:1])
    assert PredictionRing.attach(tmp_path / "ring").find(keys[:1])[1]["labelled"].tolist() == [1]
