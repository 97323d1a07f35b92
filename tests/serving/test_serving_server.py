"""The service as it runs: `tabml-serve` (uvicorn) in its own process on a loopback port."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow

BATCH = 1000


@pytest.fixture(scope="module")
def server(workspace: Any, start_server: Any) -> Any:
    with start_server(workspace) as server:
        yield server


def test_every_test_row_matches_offline_prediction(server: Any, test_set: Any) -> None:
    """Parity: all 16,281 test rows through real HTTP, in batches, equal offline `predict`."""
    got: list[float] = []
    with httpx.Client(base_url=server.url, timeout=60) as http:
        for start in range(0, len(test_set.records), BATCH):
            response = http.post("/predict", json=test_set.records[start : start + BATCH])
            assert response.status_code == 200, response.text
            got.extend(p["probability"] for p in response.json()["predictions"])
    assert len(got) == len(test_set.records) == 16281
    np.testing.assert_allclose(got, test_set.probabilities, rtol=0, atol=1e-12)
    assert np.array_equal(got, test_set.probabilities)  # in fact bit-identical


def test_concurrent_single_records_match_offline(server: Any, test_set: Any) -> None:
    """Single records from 8 keep-alive clients at once (coalesced scoring) stay exact."""
    rows = np.arange(0, len(test_set.records), 8)

    def worker(part: np.ndarray) -> list[tuple[int, float]]:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            return [
                (
                    i,
                    http.post("/predict", json=test_set.records[i]).json()["predictions"][0][
                        "probability"
                    ],
                )
                for i in part
            ]

    with ThreadPoolExecutor(8) as pool:
        results = [r for part in pool.map(worker, np.array_split(rows, 8)) for r in part]
    index, got = zip(*sorted(results), strict=True)
    np.testing.assert_array_equal(got, test_set.probabilities[list(index)])


def test_http_errors(server: Any, test_set: Any) -> None:
    with httpx.Client(base_url=server.url, timeout=60) as http:
        too_many = http.post("/predict", json=[test_set.records[0]] * 10_001)
        assert too_many.status_code == 413
        assert "10001 records exceeds the maximum of 10000" in too_many.json()["detail"]
        assert http.post("/predict", json=[test_set.records[0]] * 10_000).status_code == 200
        bad = http.post("/predict", content=b'{"age": 40,', headers={"x-request-id": "bad-1"})
        assert bad.status_code == 400 and bad.headers["x-request-id"] == "bad-1"
        record = {**test_set.records[1], "workclass": "Astronaut"}
        invalid = http.post("/predict", json=[test_set.records[0], record]).json()
        assert (invalid["detail"][0]["index"], invalid["detail"][0]["field"]) == (1, "workclass")
        assert http.get("/nowhere").status_code == 404
        assert http.get("/predict").status_code == 405


def test_json_logs_with_request_ids(server: Any, test_set: Any) -> None:
    with httpx.Client(base_url=server.url) as http:
        response = http.post("/predict", json=test_set.records[:3], headers={"X-Request-ID": "j-1"})
        assert response.headers["x-request-id"] == "j-1"
    (entry,) = wait_for(
        lambda: [e for e in server.log_lines() if e.get("request_id") == "j-1"],
        5,
        what="the access log line of request j-1",
    )
    assert entry["logger"] == "tabml.serving.access" and entry["level"] == "INFO"
    assert (entry["method"], entry["path"], entry["status"], entry["rows"]) == (
        "POST",
        "/predict",
        200,
        3,
    )
    assert entry["duration_ms"] > 0 and "time" in entry
    lines = server.log.read_text().splitlines()
    assert all(line.startswith("{") for line in lines), lines[:5]  # uvicorn's lines too


def test_metrics_and_metadata_over_http(server: Any, test_set: Any) -> None:
    with httpx.Client(base_url=server.url) as http:
        assert http.post("/predict", json=test_set.records[7]).status_code == 200
        text = http.get("/metrics").text
        meta = http.get("/metadata").json()
    assert 'tabml_http_requests_total{method="POST",route="/predict",status="200"}' in text
    assert f'model_version="{meta["model"]["version"]}"' in text
    assert meta["artifacts"]["verified"] is True


def test_two_workers_keep_alive_latency_and_shared_metrics(
    workspace: Any, start_server: Any, test_set: Any
) -> None:
    """`--workers 2`: keep-alive requests must not wait ~40 ms for a delayed ACK, and /metrics
    aggregates every worker. uvloop sets TCP_NODELAY itself; asyncio does not on the socket
    uvicorn shares between workers, so this runs on asyncio to check the service sets it."""
    with (
        start_server(workspace, "--workers", "2", "--loop", "asyncio") as server,
        httpx.Client(base_url=server.url, timeout=10) as http,
    ):
        for _ in range(5):
            http.post("/predict", json=test_set.records[0])
        durations = []
        for i in range(40):
            started = time.perf_counter()
            assert http.post("/predict", json=test_set.records[i]).status_code == 200
            durations.append(time.perf_counter() - started)
        assert statistics.median(durations) < 0.02, durations
        rows = 0
        for _ in range(10):  # whichever worker answers, the count covers both
            text = http.get("/metrics").text
            rows = next(
                float(line.split()[-1])
                for line in text.splitlines()
                if line.startswith("tabml_predicted_rows_total")
            )
            assert rows == 45
        # and there really are two worker processes
        wait_for(lambda: len(worker_pids(server)) >= 2, 15, what="two worker processes")
        assert len(worker_pids(server)) == 2


def worker_pids(server: Any) -> set[str]:
    return {
        e["message"] for e in server.log_lines() if "Started server process" in e.get("message", "")
    }


# Start-up failures: the process exits non-zero with the file named -------------------------


def test_start_fails_on_missing_model(
    workspace: Any, tmp_path: Path, start_failing_server: Any
) -> None:
    copy = workspace.copy(tmp_path / "repo")
    (copy.models / "model.txt").unlink()
    result = start_failing_server(copy)
    assert result.returncode == 2
    assert "models/model.txt does not exist" in result.stderr


def test_start_fails_on_md5_mismatch_and_corrupt_model(
    workspace: Any, tmp_path: Path, start_failing_server: Any
) -> None:
    copy = workspace.copy(tmp_path / "repo")
    (copy.models / "model.txt").write_text("garbage\n")
    result = start_failing_server(copy)
    assert result.returncode == 2
    assert "models/model.txt: md5" in result.stderr and "dvc.lock" in result.stderr
    result = start_failing_server(copy, "--allow-md5-mismatch")
    assert result.returncode == 2
    assert "models/model.txt is corrupt" in result.stderr


def test_serving_process_imports_no_pipeline_libraries(workspace: Any) -> None:
    """The service process (as uvicorn workers build it) loads none of pandas, scikit-learn,
    pyarrow, MLflow, DVC or Hydra: the image does not have them and the start-up stays fast."""
    code = (
        "import sys, json\n"
        "from tabml.serving.worker import create_app_from_env\n"
        "app = create_app_from_env()\n"
        "print(json.dumps(sorted(m for m, v in sys.modules.items() if v is not None)))\n"
    )
    env = {
        "TABML_MODEL_DIR": str(workspace.models),
        "TABML_DVC_LOCK": str(workspace.dvc_lock),
        "PATH": str(Path(sys.executable).parent),
    }
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    loaded = {name.split(".")[0] for name in json.loads(result.stdout.splitlines()[-1])}
    forbidden = {"pandas", "sklearn", "pyarrow", "mlflow", "dvc", "hydra", "omegaconf"}
    assert not loaded & forbidden
    assert {"lightgbm", "fastapi", "tabml"} <= loaded
