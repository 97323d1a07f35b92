"""The prediction log: real `tabml-serve` processes writing real segment files, read back with
the batch tools' reader (`tabml.monitoring.events`).

Every answered record is one event with the request's ID; SIGTERM under load loses nothing that
was answered; an unwritable directory never fails a request and is reported once; segments
rotate by size and age and never hold half a line, even when the disk refuses a write.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.serving.monitoring import sample
from tests.support.waiting import wait_for

from tabml.monitoring.events import OPEN_SUFFIX, closed_segments, read_events, segment_name
from tabml.serving.prediction_log import SegmentWriter, recover_orphans

pytestmark = pytest.mark.slow


def infer_body(records: list[dict[str, Any]]) -> dict[str, Any]:
    """An Open Inference Protocol request: one tensor per column."""
    kinds = {bool: "BOOL", int: "INT64", float: "FP64", str: "BYTES"}
    return {
        "inputs": [
            {
                "name": name,
                "shape": [len(records)],
                "datatype": kinds[type(value)],
                "data": [r[name] for r in records],
            }
            for name, value in records[0].items()
        ]
    }


def test_every_answered_record_is_one_event(
    workspace: Any, start_server: Any, test_set: Any, tmp_path: Path
) -> None:
    log_dir = tmp_path / "log"
    complete = [r for r in test_set.records if None not in r.values()]
    sent = {f"one-{i}": [r] for i, r in enumerate(test_set.records[:20])}
    sent["batch"] = test_set.records[100:700]  # 600 events of one request
    sent["infer"] = complete[:3]
    with (
        start_server(workspace, "--prediction-log-dir", str(log_dir)) as server,
        httpx.Client(base_url=server.url) as http,
    ):
        answers = {
            request_id: http.post(
                "/predict",
                json=records[0] if request_id.startswith("one-") else records,
                headers={"x-request-id": request_id},
            ).json()
            for request_id, records in sent.items()
            if request_id != "infer"
        }
        infer = http.post(
            "/v2/models/adult/infer",
            json=infer_body(sent["infer"]),
            headers={"x-request-id": "infer"},
        ).json()
        outputs = {o["name"]: o["data"] for o in infer["outputs"]}
        answers["infer"] = {
            "model_name": infer["model_name"],
            "model_version": infer["model_version"],
            "predictions": [
                {"probability": p, "label": y}
                for p, y in zip(outputs["probability"], outputs["label"], strict=True)
            ],
        }
    # The server has stopped: its segment is closed, nothing is left open.
    assert not list(log_dir.glob(f"*{OPEN_SUFFIX}"))
    events = list(read_events(log_dir))
    assert len(events) == sum(len(records) for records in sent.values())
    by_id: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        by_id.setdefault(event["request_id"], []).append(event)
    assert set(by_id) == set(sent)
    for request_id, body in answers.items():
        logged = by_id[request_id]
        assert [e["index"] for e in logged] == list(range(len(sent[request_id])))
        assert [e["record"] for e in logged] == sent[request_id]
        assert [(e["probability"], e["label"]) for e in logged] == [
            (p["probability"], p["label"]) for p in body["predictions"]
        ]
        for event in logged:
            assert event["type"] == "prediction"
            assert event["model_name"] == body["model_name"]
            assert event["model_version"] == body["model_version"]
            assert 0 < event["latency_ms"] < 10_000
            assert abs(event["ts"] - time.time()) < 600


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigterm_under_load_loses_no_answered_prediction(
    workspace: Any, start_server: Any, test_set: Any, tmp_path: Path, workers: str
) -> None:
    """Clients keep sending until the server goes away; every request answered 200 before (or
    while) it stopped has all its events in closed segments. Several workers: one writer each."""
    log_dir = tmp_path / "log"
    answered: list[tuple[str, int]] = []

    def client(k: int) -> None:
        with httpx.Client(base_url=server.url, timeout=10) as http:
            for i in range(100_000):
                rows = 1 + (i % 3) * 4  # 1, 5 and 9 records
                start = (k * 997 + i * 13) % (len(test_set.records) - rows)
                request_id = f"c{k}-{i}"
                # A new connection each time, so that every worker gets some of the requests.
                headers = {"x-request-id": request_id, "connection": "close"}
                try:
                    response = http.post(
                        "/predict", json=test_set.records[start : start + rows], headers=headers
                    )
                except httpx.HTTPError:
                    return  # the server is gone
                if response.status_code == 200:
                    answered.append((request_id, rows))

    options = ["--workers", workers, "--prediction-log-dir", str(log_dir)]
    with start_server(workspace, *options) as server:
        threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
        for thread in threads:
            thread.start()
        time.sleep(2.0)
        server.process.send_signal(signal.SIGTERM)  # as `docker stop` does to PID 1
        assert server.process.wait(timeout=60) in (0, -signal.SIGTERM)
        for thread in threads:
            thread.join(timeout=30)

    assert len(answered) > 100, "the load never got going"
    assert not list(log_dir.glob(f"*{OPEN_SUFFIX}"))
    logged = Counter(e["request_id"] for e in read_events(log_dir, kinds=("prediction",)))
    missing = [(rid, rows) for rid, rows in answered if logged[rid] != rows]
    assert missing == []
    writers = {segment.name.split("-")[-2] for segment in closed_segments(log_dir)}
    assert len(writers) == int(workers)  # one writer (pid) per worker process
    print(f"{workers} worker(s): {len(answered)} answered requests, all logged")


def test_unwritable_directory_never_fails_a_request_and_is_reported_once(
    workspace: Any, start_server: Any, test_set: Any, tmp_path: Path
) -> None:
    blocker = tmp_path / "volume"
    blocker.write_text("a file where the log directory should be\n")
    log_dir = blocker / "log"  # cannot be created, whoever runs the test (root included)
    with start_server(workspace, "--prediction-log-dir", str(log_dir)) as server:
        with httpx.Client(base_url=server.url) as http:
            for record in test_set.records[:30]:
                assert http.post("/predict", json=record).status_code == 200
            wait_for(
                lambda: (
                    sample(server.url, "tabml_prediction_log_dropped_total", reason="write_error")
                    == 30
                )
            )
            assert sample(server.url, "tabml_prediction_log_events_total", type="prediction") == 0
            # The volume comes back: writing resumes by itself.
            blocker.unlink()
            log_dir.mkdir(parents=True)
            for record in test_set.records[30:35]:
                assert http.post("/predict", json=record).status_code == 200
            wait_for(
                lambda: (
                    sample(server.url, "tabml_prediction_log_events_total", type="prediction") == 5
                )
            )
        lines = [
            line
            for line in server.log_lines()
            if line.get("logger") == "tabml.serving.prediction_log"
        ]
    errors = [line for line in lines if line["level"] == "ERROR"]
    assert len(errors) == 1, errors  # one line for the outage, not one per event
    assert str(log_dir) in errors[0]["message"] and "dropping events" in errors[0]["message"]
    assert any("works again" in line["message"] for line in lines)
    assert len(list(read_events(log_dir))) == 5


def test_segments_rotate_by_size_and_age_while_serving(
    workspace: Any, start_server: Any, test_set: Any, tmp_path: Path
) -> None:
    log_dir = tmp_path / "log"
    options = ["--prediction-log-dir", str(log_dir), "--prediction-log-segment-seconds", "0.5"]
    options += ["--prediction-log-segment-bytes", "4096"]
    with start_server(workspace, *options) as server, httpx.Client(base_url=server.url) as http:
        for record in test_set.records[:40]:  # ~600 bytes an event
            assert http.post("/predict", json=record).status_code == 200
            time.sleep(0.03)  # traffic spread over time, as the age rotation needs
        # Closed by size while serving, each below the limit.
        sized = wait_for(lambda: closed_segments(log_dir))
        assert [p.stat().st_size <= 4096 for p in sized] == [True] * len(sized)
        count = len(closed_segments(log_dir))
        assert http.post("/predict", json=test_set.records[40]).status_code == 200
        # ... and by age, with no further traffic.
        wait_for(
            lambda: (
                len(closed_segments(log_dir)) > count and not list(log_dir.glob(f"*{OPEN_SUFFIX}"))
            )
        )
    assert len(list(read_events(log_dir))) == 41


# The segment writer on its own, on real files ------------------------------------------------


def lines(n: int, width: int = 100) -> bytes:
    return b"".join(json.dumps({"i": i, "pad": "x" * width}).encode() + b"\n" for i in range(n))


def test_writer_closes_segments_atomically_and_by_age(tmp_path: Path) -> None:
    writer = SegmentWriter(tmp_path, max_bytes=10_000, max_seconds=0.2)
    assert writer.write(lines(3))
    assert [p.name.endswith(OPEN_SUFFIX) for p in tmp_path.iterdir()] == [True]
    assert closed_segments(tmp_path) == []  # readers never see the open one
    time.sleep(0.25)
    writer.rotate_if_due()
    (segment,) = closed_segments(tmp_path)
    assert segment.read_bytes() == lines(3)
    writer.close()  # nothing open: nothing to do
    assert len(list(tmp_path.iterdir())) == 1


def test_a_write_larger_than_a_segment_is_cut_at_line_ends(tmp_path: Path) -> None:
    """The monitor process writes everything it gathered at once: the segments still keep
    to `max_bytes`, every line whole and in order; only a line longer than that exceeds it,
    alone in its segment."""
    line = len(lines(1))
    writer = SegmentWriter(tmp_path, max_bytes=3 * line + 10, max_seconds=3600)
    assert writer.write(lines(2))
    assert writer.write(lines(8))  # one line fits the first segment's rest
    long = json.dumps({"pad": "y" * 400}).encode() + b"\n"
    assert writer.write(long + lines(1))
    writer.close()
    segments = [p.read_bytes() for p in closed_segments(tmp_path)]
    assert b"".join(segments) == lines(2) + lines(8) + long + lines(1)
    assert [len(s) for s in segments] == [3 * line, 3 * line, 3 * line, line, len(long), line]


def test_writer_recovers_segments_of_a_killed_process(tmp_path: Path) -> None:
    """SIGKILL (OOM, a crash) leaves `.jsonl.open`: the next process on the host closes it,
    cut after its last whole line; live processes' and other hosts' segments stay as they are."""
    finished = [sys.executable, "-c", "import os; print(os.getpid())"]
    dead_pid = int(subprocess.run(finished, capture_output=True, text=True, check=True).stdout)
    host = socket.gethostname()
    killed = tmp_path / (segment_name(time.time(), host, dead_pid, 1) + OPEN_SUFFIX)
    killed.write_bytes(lines(2) + b'{"half": ')
    alive = tmp_path / (segment_name(time.time(), host, os.getpid(), 1) + OPEN_SUFFIX)
    alive.write_bytes(lines(1))
    elsewhere = tmp_path / (segment_name(time.time(), "other-host", dead_pid, 1) + OPEN_SUFFIX)
    elsewhere.write_bytes(lines(1))
    assert recover_orphans(tmp_path, host) == [killed]
    (closed,) = closed_segments(tmp_path)
    assert closed.read_bytes() == lines(2)
    assert alive.exists() and elsewhere.exists()


FULL_DISK = r"""
import json, logging, resource, signal, sys
from pathlib import Path
from tabml.serving.prediction_log import SegmentWriter

logging.basicConfig(stream=sys.stderr, format="%(levelname)s %(message)s")
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # over the limit, write() fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), int(sys.argv[2])))
writer = SegmentWriter(Path(sys.argv[1]), max_bytes=10**9, max_seconds=3600)
chunk = b"".join(json.dumps({"i": i, "pad": "x" * 100}).encode() + b"\n" for i in range(30))
print(json.dumps([writer.write(chunk) for _ in range(3)]))
writer.close()
"""


def test_a_refused_write_leaves_only_whole_lines(tmp_path: Path) -> None:
    """The kernel refuses to grow the file past 5,000 bytes (RLIMIT_FSIZE, like a full disk):
    the write that crosses it is cut back to the last whole line and the segment closed."""
    result = subprocess.run(
        [sys.executable, "-c", FULL_DISK, str(tmp_path), "5000"],
        capture_output=True,
        text=True,
        check=True,
    )
    chunk = len(lines(30))
    assert chunk < 5000 < 2 * chunk
    assert json.loads(result.stdout) == [True, False, True]  # the third goes to a new segment
    first, second = closed_segments(tmp_path)
    assert first.read_bytes() == second.read_bytes() == lines(30)
    assert result.stderr.count("ERROR prediction log: cannot write") == 1
