"""Champion and challenger in a real `tabml-serve` on loopback: sticky canary routing, shadow
scoring, promotion and rollback by reload while requests flow, the admin endpoint.

The two versions are the session's trained model and a second booster trained from it
(conftest.py); every probability a server returns is compared with the offline prediction of
the version that says it answered."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from tests.model_versions import bundle_of
from tests.serving.champion_challenger.conftest import Holdout, serve_checkout

from tabml.data import file_md5
from tabml.monitoring.events import PREDICTION, read_events
from tabml.serving.traffic_split import ROUTING_KEY_HEADER, parse_route

pytestmark = pytest.mark.slow

TOKEN = "test-admin-token"
VERSION_HEADER = "x-model-version"


def version_id(checkout: Path) -> str:
    return file_md5(checkout / "models" / "model.txt")[:12]


@dataclass(frozen=True)
class Bundles:
    champion_only: Path
    pair: Path
    champion: str
    challenger: str


@pytest.fixture(scope="module")
def bundles(champion_checkout, challenger_checkout, tmp_path_factory) -> Bundles:
    root = tmp_path_factory.mktemp("bundles")
    return Bundles(
        bundle_of(root / "champion-only", champion_checkout),
        bundle_of(root / "pair", champion_checkout, challenger_checkout),
        version_id(champion_checkout),
        version_id(challenger_checkout),
    )


def offline(holdout: Holdout, bundles: Bundles, version: str) -> np.ndarray:
    assert version in (bundles.champion, bundles.challenger), version
    return holdout.champion if version == bundles.champion else holdout.challenger


def oip_body(records: list[dict[str, Any]]) -> dict[str, Any]:
    def datatype(values: list[Any]) -> str:
        present = [v for v in values if v is not None]
        if all(isinstance(v, str) for v in present):
            return "BYTES"
        return "INT64" if all(isinstance(v, int) for v in present) else "FP64"

    names = list(records[0])
    return {
        "inputs": [
            {
                "name": name,
                "shape": [len(records)],
                "datatype": datatype([r[name] for r in records]),
                "data": [r[name] for r in records],
            }
            for name in names
        ]
    }


# --------------------------------------------------------------------------------- canary


def test_canary_is_sticky_splits_as_configured_and_each_version_is_exact(
    champion_checkout, bundles, holdout
) -> None:
    route = parse_route("canary:0.2")
    requests = 5_000
    answered: dict[str, str] = {}
    with (
        serve_checkout(
            champion_checkout, "--bundle", str(bundles.pair), "--route", str(route)
        ) as server,
        httpx.Client(base_url=server.url, timeout=30) as http,
    ):
        for i in range(requests):
            row, key = i % len(holdout.records), f"customer-{i}"
            response = http.post(
                "/predict", json=holdout.records[row], headers={ROUTING_KEY_HEADER: key}
            )
            assert response.status_code == 200, response.text
            version = response.headers[VERSION_HEADER]
            body = response.json()
            assert body["model_version"] == version
            assert body["predictions"][0]["probability"] == offline(holdout, bundles, version)[row]
            answered[key] = version
        # the same key always gets the same version, on /predict and on OIP infer alike
        for i in range(0, requests, 10):
            key, rows = f"customer-{i}", [(i + k) % len(holdout.records) for k in range(3)]
            records = [holdout.records[r] for r in rows]
            again = http.post("/predict", json=records, headers={ROUTING_KEY_HEADER: key})
            assert again.headers[VERSION_HEADER] == answered[key]
            infer = http.post(
                "/v2/models/adult/infer", json=oip_body(records), headers={ROUTING_KEY_HEADER: key}
            )
            assert infer.status_code == 200, infer.text
            assert infer.headers[VERSION_HEADER] == infer.json()["model_version"] == answered[key]
            probabilities = infer.json()["outputs"][0]["data"]
            assert probabilities == offline(holdout, bundles, answered[key])[rows].tolist()
        # a version can be asked for by name (OIP); an unknown one is a 404
        records = holdout.records[:4]
        for version in (bundles.champion, bundles.challenger):
            named = http.post(f"/v2/models/adult/versions/{version}/infer", json=oip_body(records))
            assert named.json()["model_version"] == named.headers[VERSION_HEADER] == version
        assert (
            http.post("/v2/models/adult/versions/v0/infer", json=oip_body(records)).status_code
            == 404
        )
        # no routing key: random, still a valid version each time
        seen = {http.post("/predict", json=records[0]).headers[VERSION_HEADER] for _ in range(60)}
        assert seen == {bundles.champion, bundles.challenger}
        assert http.post("/admin/reload").status_code == 404  # no admin token configured
    share = sum(v == bundles.challenger for v in answered.values()) / requests
    assert abs(share - 0.2) <= 0.03, share
    # ... and the split is the documented hash of the key
    assert all(
        (v == bundles.challenger) == route.to_challenger(k.encode()) for k, v in answered.items()
    )


# --------------------------------------------------------------------------------- shadow


def test_shadow_answers_as_the_champion_alone_and_logs_both_versions(
    champion_checkout, bundles, holdout, tmp_path
) -> None:
    calls = [(f"req-{i}", [i] if i % 4 else list(range(i, i + 7))) for i in range(0, 400, 2)]

    def send(server: Any) -> dict[str, bytes]:
        bodies = {}
        with httpx.Client(base_url=server.url, timeout=30) as http:
            for request_id, rows in calls:
                records = [holdout.records[r] for r in rows]
                body = records[0] if len(records) == 1 else records
                response = http.post("/predict", json=body, headers={"x-request-id": request_id})
                assert response.status_code == 200
                assert response.headers[VERSION_HEADER] == bundles.champion
                bodies[request_id] = response.content
        return bodies

    with serve_checkout(champion_checkout, "--bundle", str(bundles.champion_only)) as alone:
        expected = send(alone)
    log_dir = tmp_path / "log"
    options = ["--bundle", str(bundles.pair), "--route", "shadow", "--prediction-log-dir"]
    with serve_checkout(champion_checkout, *options, str(log_dir)) as shadowed:
        got = send(shadowed)
        metrics = httpx.get(f"{shadowed.url}/metrics").text
    assert got == expected  # byte for byte

    events = defaultdict(list)
    for event in read_events(log_dir, (PREDICTION,)):
        events[event["request_id"], bool(event.get("shadow"))].append(event)
    for request_id, rows in calls:
        answered, shadow = events[request_id, False], events[request_id, True]
        assert (
            [e["index"] for e in answered] == [e["index"] for e in shadow] == list(range(len(rows)))
        )
        assert {e["model_version"] for e in answered} == {bundles.champion}
        assert {e["model_version"] for e in shadow} == {bundles.challenger}
        assert [e["probability"] for e in answered] == holdout.champion[rows].tolist()
        assert [e["probability"] for e in shadow] == holdout.challenger[rows].tolist()
        assert [e["record"] for e in answered] == [e["record"] for e in shadow]
    scored = sum(len(rows) for _, rows in calls)
    series = f'tabml_shadow_rows_total{{model_version="{bundles.challenger}",result="scored"}}'
    assert f"{series} {scored}.0" in metrics


def test_a_challenger_that_always_fails_changes_nothing_for_clients(
    champion_checkout, bundles, holdout, monkeypatch
) -> None:
    """In process (the one failure-injection case): the challenger's scoring raises."""
    from fastapi.testclient import TestClient

    from tabml.serving.app import create_app
    from tabml.serving.settings import ServingSettings

    monkeypatch.chdir(champion_checkout)

    def app(bundle: Path, route: str) -> Any:
        return create_app(ServingSettings(bundle=bundle, route=route, metrics_file=None))

    records = holdout.records[:40]
    with TestClient(app(bundles.champion_only, "champion")) as client:
        expected = [client.post("/predict", json=r).content for r in records]
        expected.append(client.post("/predict", json=records).content)
    shadowed = app(bundles.pair, "shadow")
    service = shadowed.state.service
    challenger = service.models.challenger

    def broken(_records: Any) -> np.ndarray:
        raise ValueError("category mismatch in the challenger's feature transform")

    monkeypatch.setattr(challenger.predictor, "predict", broken)
    with TestClient(shadowed) as client:
        got = [client.post("/predict", json=r) for r in records]
        got.append(client.post("/predict", json=records))
        assert all(r.status_code == 200 for r in got)
        assert [r.content for r in got] == expected
        assert service.shadow.wait_idle()
        metrics = client.get("/metrics").text
    failed = f'tabml_shadow_rows_total{{model_version="{challenger.id}",result="failed"}} 80.0'
    assert failed in metrics


# --------------------------------------------------------------------------------- reload


@dataclass
class LoadLoop:
    """Threads posting single records back to back, recording every answer."""

    url: str
    holdout: Holdout
    threads: int = 2
    answers: list[tuple[float, float, int, str | None, float | None, int]] = field(
        default_factory=list
    )
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)

    def start(self) -> LoadLoop:
        for n in range(self.threads):
            worker = threading.Thread(target=self._run, args=(n,), daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def stop(self) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(30)

    def _run(self, n: int) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as http:
            i = n
            while not self._stop.is_set():
                row = i % len(self.holdout.records)
                started = time.monotonic()
                try:
                    response = http.post("/predict", json=self.holdout.records[row])
                except httpx.HTTPError as exc:
                    self.errors.append(repr(exc))
                    continue
                finished = time.monotonic()
                version = response.headers.get(VERSION_HEADER)
                p = (
                    response.json()["predictions"][0]["probability"]
                    if response.is_success
                    else None
                )
                self.answers.append((started, finished, response.status_code, version, p, row))
                i += self.threads

    def wait_for(self, version: str, after: float = 0.0, timeout: float = 30.0) -> float:
        """Block until `version` answers a request sent after `after`; return when it did."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for started, finished, _, answered, _, _ in list(self.answers):
                if answered == version and started > after:
                    return finished
            time.sleep(0.01)
        raise AssertionError(f"no answer from version {version} within {timeout} s")

    def answered_after(self, moment: float) -> set[str | None]:
        return {a[3] for a in self.answers if a[0] > moment}


def reload_over_http(url: str, token: str = TOKEN) -> httpx.Response:
    return httpx.post(
        f"{url}/admin/reload", headers={"Authorization": f"Bearer {token}"}, timeout=60
    )


def test_promotion_and_rollback_under_load_and_a_tampered_bundle_refused(
    champion_checkout, challenger_checkout, bundles, holdout, tmp_path
) -> None:
    live = bundle_of(tmp_path / "bundle", champion_checkout)
    old, new = bundles.champion, bundles.challenger
    env = {"TABML_ADMIN_TOKEN": TOKEN}
    with serve_checkout(champion_checkout, "--bundle", str(live), env=env) as server:
        load = LoadLoop(server.url, holdout).start()
        try:
            load.wait_for(old)
            # promotion: the bundle now names the challenger's model as champion, then SIGHUP
            bundle_of(live, challenger_checkout)
            signalled = time.monotonic()
            server.process.send_signal(signal.SIGHUP)
            swapped = load.wait_for(new, after=signalled)
            signal_to_new = swapped - signalled
            time.sleep(1.0)
            assert load.answered_after(swapped) == {new}
            # rollback over the admin endpoint, which says what serves now
            assert reload_over_http(server.url, "wrong").status_code == 401
            assert httpx.post(f"{server.url}/admin/reload").status_code == 401
            bundle_of(live, champion_checkout)
            answer = reload_over_http(server.url)
            assert answer.status_code == 200, answer.text
            assert answer.json()["serving"]["champion"]["version"] == old
            rolled_back = load.wait_for(old, after=swapped)
            time.sleep(1.0)
            assert load.answered_after(rolled_back) == {old}
            # a tampered bundle is refused; the old model keeps serving
            bundle_of(live, challenger_checkout)
            model = live / new / "model.txt"
            model.write_bytes(model.read_bytes() + b"\n")
            refused = reload_over_http(server.url)
            assert refused.status_code == 409, refused.text
            assert "md5" in refused.json()["detail"]
            assert refused.json()["serving"]["champion"]["version"] == old
            server.process.send_signal(signal.SIGHUP)  # refused the same way
            time.sleep(1.0)
            after_refusal = time.monotonic()
            time.sleep(0.5)
        finally:
            load.stop()
        metrics = httpx.get(f"{server.url}/metrics").text
    assert not load.errors, load.errors[:3]
    assert {status for _, _, status, _, _, _ in load.answers} == {200}
    assert load.answered_after(after_refusal) == {old}
    assert rolled_back > swapped
    for _, _, _, version, probability, row in load.answers:
        assert probability == offline(holdout, bundles, version)[row]
    assert len(load.answers) > 500
    assert 'tabml_model_reloads_total{outcome="ok"} 2.0' in metrics
    assert 'tabml_model_reloads_total{outcome="refused"} 2.0' in metrics
    assert signal_to_new < 5.0, signal_to_new
    refusals = [
        line
        for line in server.log_lines()
        if line.get("logger") == "tabml.serving.reload" and line.get("level") == "ERROR"
    ]
    assert len(refusals) == 2 and all("md5" in line["message"] for line in refusals)


def test_the_bundle_route_is_followed_on_reload_unless_set_at_start(
    champion_checkout, challenger_checkout, bundles, holdout, tmp_path
) -> None:
    """`tabml-registry route` rewrites the bundle's route and signals the service: a canary
    ramp without a restart. A route given at start (`--route`) stays."""
    live = bundle_of(tmp_path / "bundle", champion_checkout, challenger_checkout)

    def reroute(route: str, pid: int) -> None:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "tabml.registry_cli",
                "route",
                route,
                "--bundle",
                str(live),
                "--reload-pid",
                str(pid),
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert f"wrote bundle {live}" in done.stdout and f"sent SIGHUP to {pid}" in done.stdout

    def answering(http: httpx.Client) -> set[str]:
        headers = [{ROUTING_KEY_HEADER: f"user-{i}"} for i in range(40)]
        return {
            http.post("/predict", json=holdout.records[0], headers=h).headers[VERSION_HEADER]
            for h in headers
        }

    def serving(http: httpx.Client) -> dict[str, Any]:
        return http.get("/metadata").json()["serving"]

    def settles(http: httpx.Client, generation: int) -> dict[str, Any]:
        deadline = time.monotonic() + 30
        while serving(http)["generation"] < generation and time.monotonic() < deadline:
            time.sleep(0.1)
        return serving(http)

    with (
        serve_checkout(champion_checkout, "--bundle", str(live)) as server,
        httpx.Client(base_url=server.url, timeout=30) as http,
    ):
        assert serving(http)["route_from"] == "default"
        assert answering(http) == {bundles.champion}
        reroute("canary:1", server.process.pid)
        now = settles(http, 1)
        assert (now["route"], now["route_from"]) == ("canary:1", "bundle.json")
        assert answering(http) == {bundles.challenger}
        reroute("default", server.process.pid)
        now = settles(http, 2)
        assert (now["route"], now["route_from"]) == ("champion", "default")
        assert answering(http) == {bundles.champion}
    with (
        serve_checkout(champion_checkout, "--bundle", str(live), "--route", "champion") as server,
        httpx.Client(base_url=server.url, timeout=30) as http,
    ):
        reroute("canary:1", server.process.pid)
        now = settles(http, 1)
        assert (now["route"], now["route_from"]) == ("champion", "setting")
        assert answering(http) == {bundles.champion}


def test_sighup_with_several_workers_reloads_every_worker_in_place(
    champion_checkout, challenger_checkout, bundles, holdout, tmp_path
) -> None:
    """The supervisor passes SIGHUP on to each worker, which reloads in place, keeping its
    connections (uvicorn's own answer, a rolling restart, resets some keep-alive connections;
    `tabml.serving.supervisor`)."""
    live = bundle_of(tmp_path / "bundle", champion_checkout)
    with serve_checkout(champion_checkout, "--bundle", str(live), "--workers", "2") as server:
        load = LoadLoop(server.url, holdout, threads=4).start()  # connections on both workers
        try:
            load.wait_for(bundles.champion)
            time.sleep(1.0)
            bundle_of(live, challenger_checkout)
            signalled = time.monotonic()
            server.process.send_signal(signal.SIGHUP)
            swapped = load.wait_for(bundles.challenger, after=signalled)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                reloads = [
                    line
                    for line in server.log_lines()
                    if line.get("logger") == "tabml.serving.reload"
                    and "now serving" in line.get("message", "")
                ]
                if len(reloads) == 2:
                    break
                time.sleep(0.2)
            settled = time.monotonic()
            time.sleep(1.5)
        finally:
            load.stop()
    assert len(reloads) == 2, reloads  # one per worker, none restarted
    assert not load.errors, load.errors[:3]
    assert {status for _, _, status, _, _, _ in load.answers} == {200}
    assert load.answered_after(settled) == {bundles.challenger}
    assert settled - swapped < 10
    for _, _, _, version, probability, row in load.answers:
        assert probability == offline(holdout, bundles, version)[row]


def test_reload_keeps_metadata_and_openapi_current(
    champion_checkout, challenger_checkout, bundles, tmp_path
) -> None:
    live = bundle_of(tmp_path / "bundle", champion_checkout)
    env = {"TABML_ADMIN_TOKEN": TOKEN}
    with serve_checkout(champion_checkout, "--bundle", str(live), env=env) as server:
        bundle_of(live, champion_checkout, challenger_checkout)
        assert reload_over_http(server.url).status_code == 200
        with httpx.Client(base_url=server.url) as http:
            versions = http.get("/v2/models/adult").json()["versions"]
            assert versions == [bundles.champion, bundles.challenger]
            meta = http.get("/metadata").json()
            assert meta["serving"]["challenger"]["version"] == bundles.challenger
            paths = http.get("/openapi.json").json()["paths"]
            infer = paths["/v2/models/{model_name}/versions/{model_version}/infer"]["post"]
            enum = next(p for p in infer["parameters"] if p["name"] == "model_version")
            assert enum["schema"]["enum"] == [bundles.champion, bundles.challenger]
            ready = http.get("/ready").json()
            assert ready["model_version"] == bundles.champion
            assert json.loads(
                http.get("/v2/models/adult/versions/" + bundles.challenger + "/ready").text
            ) == {"ready": True}


def test_bad_routes_and_tampered_bundles_stop_the_start(
    champion_checkout, challenger_checkout, start_failing_server, tmp_path
) -> None:
    from tests.serving.conftest import Workspace

    checkout = Workspace(champion_checkout)
    bad_route = start_failing_server(checkout, "--route", "canary:1.5")
    assert bad_route.returncode == 2
    assert "canary fraction must be a number from 0 to 1" in bad_route.stderr
    bundle = bundle_of(tmp_path / "bundle", champion_checkout, challenger_checkout)
    profile = bundle / version_id(challenger_checkout) / "reference_profile.json"
    profile.write_text(profile.read_text() + "\n")
    for workers in ("1", "2"):
        tampered = start_failing_server(checkout, "--bundle", str(bundle), "--workers", workers)
        assert tampered.returncode == 2, tampered.stderr
        assert "reference_profile.json: md5" in tampered.stderr
