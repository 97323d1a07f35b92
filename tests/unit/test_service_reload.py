"""Asking a service to reload, against a real process speaking the agreed interface
(tests/support/reload_stub.py): the token, its 401 and 404 answers, SIGHUP, and a dead address."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.support.processes import background_process, free_port
from tests.support.project import command_env
from tests.support.reload_stub import command, reloads

from tabml.service_reload import (
    ReloadError,
    admin_token,
    reload_by_signal,
    reload_over_http,
)

TOKEN = "s3cret-token"


@contextlib.contextmanager
def stub(tmp_path: Path, token: str | None) -> Iterator[tuple[str, int, Path]]:
    """The stand-in service on a free port, with `token` (or none) as its admin token."""
    port, record = free_port(), tmp_path / f"reloads-{token}.txt"
    env = command_env()
    env.pop("TABML_ADMIN_TOKEN", None)
    if token:
        env["TABML_ADMIN_TOKEN"] = token
    url = f"http://127.0.0.1:{port}"
    with background_process(
        command(port, record),
        log=tmp_path / f"stub-{token}.log",
        ready_url=f"{url}/health",
        env=env,
    ) as process:
        yield url, process.pid, record


@pytest.fixture
def service(tmp_path: Path) -> Iterator[tuple[str, int, Path]]:
    with stub(tmp_path, TOKEN) as running:
        yield running


def test_reload_over_http_with_the_token(service) -> None:
    url, _, record = service
    assert reload_over_http(url + "/", TOKEN) == '{"reloaded": true}'
    assert reloads(record, 1) == ["http"]


def test_a_wrong_token_is_refused(service) -> None:
    url, _, record = service
    with pytest.raises(ReloadError, match=r"rejected the admin token .*\(401\)"):
        reload_over_http(url, "guess")
    assert not record.exists()


def test_a_service_without_a_token_answers_404(tmp_path: Path) -> None:
    with (
        stub(tmp_path, None) as (url, _, _),
        pytest.raises(ReloadError, match="404: no admin token is configured"),
    ):
        reload_over_http(url, TOKEN)


def test_sighup_and_dead_targets(service) -> None:
    _, pid, record = service
    reload_by_signal(pid)
    assert reloads(record, 1) == ["sighup"]
    with pytest.raises(ReloadError, match="is unreachable"):
        reload_over_http(f"http://127.0.0.1:{free_port()}", TOKEN, timeout=5)


def test_no_process_and_no_token(monkeypatch) -> None:
    with pytest.raises(ReloadError, match="no process"):
        reload_by_signal(2**22 + 12345)  # above Linux's pid_max default
    monkeypatch.delenv("TABML_ADMIN_TOKEN", raising=False)
    with pytest.raises(ReloadError, match="TABML_ADMIN_TOKEN"):
        admin_token()
    monkeypatch.setenv("TABML_ADMIN_TOKEN", TOKEN)
    assert admin_token() == TOKEN
