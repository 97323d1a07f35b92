"""The monitor process next to each worker (`tabml.serving.monitor_process`), on real
`tabml-serve` processes: it runs niced, a scrape or a label is answered after everything
answered before it, the service keeps answering when the monitor process dies, and the monitor
process writes what it was handed when its worker is killed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.serving.monitoring import sample
from tests.support.waiting import wait_for

from tabml.monitoring.events import OPEN_SUFFIX, read_events
from tabml.serving.monitor_process import NICE
from tabml.serving.prediction_log import recover_orphans

pytestmark = pytest.mark.slow


def stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state first), None if gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def children(pid: int) -> list[int]:
    """The live child processes of `pid`."""
    found = []
    for entry in Path("/proc").iterdir():
        fields = stat(int(entry.name)) if entry.name.isdigit() else None
        if fields is not None and int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry.name))
    return found


def exited(pid: int) -> bool:
    fields = stat(pid)
    return fields is None or fields[0] == "Z"


@contextlib.contextmanager
def logging_server(
    start_server: Any, workspace: Any, log_dir: Path
) -> Iterator[tuple[Any, httpx.Client]]:
    """A server logging every prediction to `log_dir`, and a client for it."""
    with (
        start_server(workspace, "--prediction-log-dir", str(log_dir)) as server,
        httpx.Client(base_url=server.url) as http,
    ):
        yield server, http


def monitor_process(server_pid: int) -> int:
    (pid,) = wait_for(lambda: children(server_pid), what="the monitor process")
    assert "tabml.serving.monitor_process" in Path(f"/proc/{pid}/cmdline").read_text()
    return pid


def test_a_scrape_and_a_label_come_after_every_answer_before_them(
    workspace: Any, start_server: Any, test_set: Any, tmp_path: Path
) -> None:
    log_dir = tmp_path / "log"
    with logging_server(start_server, workspace, log_dir) as (server, http):
        pid = monitor_process(server.process.pid)
        wait_for(lambda: os.getpriority(os.PRIO_PROCESS, pid) == NICE, what="nice 19")
        version = http.get("/metadata").json()["model"]["version"]
        answered = 0
        for start in (0, 40, 80):  # no waiting between the answers and the scrape
            for record in test_set.records[start : start + 40]:
                assert http.post("/predict", json=record).status_code == 200
            answered += 40
            assert (
                sample(server.url, "tabml_drift_window_records", model_version=version) == answered
            )
            assert (
                sample(server.url, "tabml_prediction_log_events_total", type="prediction")
                == answered
            )
        answer = http.post("/predict", json=test_set.records[200], headers={"x-request-id": "r1"})
        assert answer.status_code == 200
        label = {"request_id": "r1", "label": answer.json()["predictions"][0]["label"]}
        assert http.post("/feedback", json=label).json() == {"recorded": 1}
        assert sample(server.url, "tabml_realized_labels", model_version=version) == 1
        assert sample(server.url, "tabml_feedback_total") == 1
    assert sum(e["type"] == "prediction" for e in read_events(log_dir)) == answered + 1


def test_the_service_answers_on_when_its_monitor_process_dies(
    workspace: Any, start_server: Any, test_set: Any, tmp_path: Path
) -> None:
    log_dir = tmp_path / "log"
    with logging_server(start_server, workspace, log_dir) as (server, http):
        for record in test_set.records[:10]:
            assert http.post("/predict", json=record).status_code == 200
        assert sample(server.url, "tabml_prediction_log_events_total", type="prediction") == 10
        os.kill(monitor_process(server.process.pid), signal.SIGKILL)
        for record in test_set.records[10:25]:
            assert http.post("/predict", json=record).status_code == 200
        wait_for(
            lambda: (
                sample(server.url, "tabml_prediction_log_dropped_total", reason="monitor_exited")
                == 15
            ),
            what="15 events counted as dropped",
        )
        refused = http.post("/feedback", json={"request_id": "any", "label": ">50K"})
        assert refused.status_code == 503
        assert "monitor process" in refused.json()["detail"]
        assert http.get("/ready").status_code == 200
    errors = [
        line
        for line in server.log_lines()
        if line.get("logger") == "tabml.serving.monitor" and line["level"] == "ERROR"
    ]
    assert len(errors) == 1 and "monitor process exited" in errors[0]["message"], errors
    # what the killed process had written, once its open segment is closed (by the next writer)
    recover_orphans(log_dir, socket.gethostname())
    assert sum(e["type"] == "prediction" for e in read_events(log_dir)) == 10


def test_a_killed_workers_monitor_process_writes_what_it_was_handed(
    workspace: Any, start_server: Any, test_set: Any, tmp_path: Path
) -> None:
    log_dir = tmp_path / "log"
    with logging_server(start_server, workspace, log_dir) as (server, http):
        monitor = monitor_process(server.process.pid)
        for i, record in enumerate(test_set.records[:20]):
            answer = http.post("/predict", json=record, headers={"x-request-id": f"k{i}"})
            assert answer.status_code == 200
        time.sleep(0.5)  # the worker hands what it answered over every 0.1 s
        os.kill(server.process.pid, signal.SIGKILL)  # no graceful shutdown
        server.process.wait()
        wait_for(lambda: exited(monitor), what="the monitor process exits at the pipe's end")
    assert not list(log_dir.glob(f"*{OPEN_SUFFIX}"))  # its segment closed, not left open
    events = list(read_events(log_dir))
    assert sorted(e["request_id"] for e in events) == sorted(f"k{i}" for i in range(20))
