"""Reload semantics and the admin endpoint's decisions (`tabml.serving.reload`), with stand-in
versions; tests/serving/test_champion_challenger.py reloads real bundles in a real server."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any

import pytest

from tabml.bundle import BundleError
from tabml.serving.reload import Reloader, admin_refusal, admin_reload, install_sighup
from tabml.serving.traffic_split import Route, parse_route
from tabml.serving.versions import ServedModels

TOKEN = "s3cret-token"


@dataclass(eq=False)
class Version:
    id: str

    def describe(self) -> dict[str, Any]:
        return {"version": self.id}


def served(champion: str, challenger: str | None = None, route: str = "champion", gen: int = 0):
    return ServedModels(
        Version(champion),  # type: ignore[arg-type]
        Version(challenger) if challenger else None,  # type: ignore[arg-type]
        parse_route(route),
        "test",
        gen,
    )


class Disk:
    """What a reload would read: the next snapshot, or an error."""

    def __init__(self) -> None:
        self.champion, self.challenger, self.error = "v1", None, None
        self.loads = 0

    def load(self, generation: int) -> ServedModels:
        self.loads += 1
        if self.error is not None:
            raise self.error
        return served(self.champion, self.challenger, "canary:0.5", generation)


def test_reload_swaps_in_the_new_snapshot_and_counts() -> None:
    disk = Disk()
    swaps: list[tuple[str, str]] = []
    reloader = Reloader(
        served("v1"),
        disk.load,
        on_swap=lambda old, new: swaps.append((old.champion.id, new.champion.id)),
    )
    disk.champion, disk.challenger = "v1", "v2"
    outcome = reloader.reload("test")
    assert outcome.ok and reloader.current is outcome.served
    assert reloader.current.roles() == {"champion": "v1", "challenger": "v2"}
    assert reloader.current.generation == 1 and reloader.reloads == 1
    disk.champion, disk.challenger = "v2", None  # promotion
    assert reloader.reload().served.roles() == {"champion": "v2"}
    assert reloader.current.effective_route == Route()  # no challenger: champion only
    assert swaps == [("v1", "v1"), ("v1", "v2")]


def test_a_refused_reload_keeps_the_old_snapshot(caplog: pytest.LogCaptureFixture) -> None:
    disk = Disk()
    before = served("v1", "v2", "shadow")
    outcomes: list[bool] = []
    reloader = Reloader(before, disk.load, on_outcome=lambda o: outcomes.append(o.ok))
    disk.error = BundleError("bundle/v3/model.txt: md5 abc, but bundle/v3/provenance.json ...")
    outcome = reloader.reload("SIGHUP")
    assert not outcome.ok and reloader.current is before and outcome.served is before
    assert "md5 abc" in (outcome.error or "") and reloader.failures == 1
    assert outcomes == [False]
    [line] = [r for r in caplog.records if r.name == "tabml.serving.reload"]
    assert "refused" in line.getMessage() and "champion v1, challenger v2" in line.getMessage()
    assert line.exc_info is None  # an expected failure: its message says it all


def test_reloads_run_one_at_a_time() -> None:
    active, most = [0], [0]
    lock = threading.Lock()

    def slow_load(generation: int) -> ServedModels:
        with lock:
            active[0] += 1
            most[0] = max(most[0], active[0])
        time.sleep(0.05)
        with lock:
            active[0] -= 1
        return served("v1", gen=generation)

    reloader = Reloader(served("v1"), slow_load)
    threads = [threading.Thread(target=reloader.reload) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most[0] == 1 and reloader.current.generation == 4


@pytest.mark.parametrize(
    ("configured", "header", "status"),
    [
        (None, f"Bearer {TOKEN}", 404),
        ("", f"Bearer {TOKEN}", 404),
        (TOKEN, None, 401),
        (TOKEN, "", 401),
        (TOKEN, TOKEN, 401),
        (TOKEN, f"Basic {TOKEN}", 401),
        (TOKEN, "Bearer wrong", 401),
        (TOKEN, f"Bearer {TOKEN}x", 401),
        (TOKEN, "Bearer s3cret-toke", 401),
        (TOKEN, "Bearer ünïcode", 401),
        (TOKEN, f"Bearer {TOKEN}", None),
        (TOKEN, f"bearer  {TOKEN} ", None),
        (TOKEN, f"Bearer {TOKEN}".encode(), None),
    ],
)
def test_admin_token(configured: str | None, header: Any, status: int | None) -> None:
    assert admin_refusal(configured, header) == status


def test_admin_reload_answers() -> None:
    disk = Disk()
    reloader = Reloader(served("v1"), disk.load)
    assert admin_reload(reloader, None, f"Bearer {TOKEN}")[0] == 404
    assert admin_reload(reloader, TOKEN, "Bearer nope")[0] == 401
    assert disk.loads == 0  # refused requests never touch the disk
    disk.challenger = "v2"
    status, body = admin_reload(reloader, TOKEN, f"Bearer {TOKEN}")
    assert status == 200 and body["reloaded"] is True
    assert body["serving"]["challenger"] == {"version": "v2"}
    assert body["serving"]["route"] == "canary:0.5" and body["serving"]["generation"] == 1
    disk.error = BundleError("tampered")
    status, body = admin_reload(reloader, TOKEN, f"Bearer {TOKEN}")
    assert status == 409 and body["reloaded"] is False and "tampered" in body["detail"]
    assert body["serving"]["challenger"] == {"version": "v2"}  # still serving


def test_sighup_reloads_in_the_background() -> None:
    disk = Disk()
    reloader = Reloader(served("v1"), disk.load)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        assert install_sighup(reloader, loop)
        try:
            disk.champion = "v2"
            os.kill(os.getpid(), signal.SIGHUP)
            for _ in range(200):
                if reloader.current.champion.id == "v2":
                    break
                await asyncio.sleep(0.01)
        finally:
            loop.remove_signal_handler(signal.SIGHUP)

    asyncio.run(main())
    assert reloader.current.champion.id == "v2" and reloader.reloads == 1


def test_no_sighup_handler_off_the_main_thread() -> None:
    result: list[bool] = []

    def run() -> None:
        async def main() -> None:
            result.append(
                install_sighup(Reloader(served("v1"), Disk().load), asyncio.get_running_loop())
            )

        asyncio.run(main())

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert result == [False]


def test_admin_route_statuses_and_openapi() -> None:
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from tabml.serving import admin

    disk = Disk()
    for token, expected in ((None, 404), (TOKEN, 200)):
        app = FastAPI()
        app.include_router(admin.router(Reloader(served("v1"), disk.load), token))
        client = TestClient(app)
        assert client.post("/admin/reload").status_code == (404 if token is None else 401)
        wrong = client.post("/admin/reload", headers={"Authorization": "Bearer x"})
        assert wrong.status_code == (404 if token is None else 401)
        if token is not None:
            assert wrong.headers["www-authenticate"] == "Bearer"
        right = client.post("/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})
        assert right.status_code == expected
    assert right.json()["serving"]["generation"] == 1
    operation = app.openapi()["paths"]["/admin/reload"]["post"]
    assert {"200", "401", "404", "409"} <= set(operation["responses"])
    assert operation["security"] == [{"HTTPBearer": []}]
    assert app.openapi()["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
