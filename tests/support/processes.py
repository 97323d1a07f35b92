"""Background servers for tests and benchmarks: free loopback ports, start, wait, stop.

Every real server the suite runs (tabml-serve, mlflow server, mlflow models serve, moto) goes
through `background_process`, so they all start, report a failed start, and stop the same way.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def mlflow_models_serve_cmd(model_uri: str) -> list[str]:
    """`mlflow models serve` as a user runs it, one worker on loopback (add `-p PORT`)."""
    return [
        sys.executable,
        "-m",
        "mlflow",
        "models",
        "serve",
        "-m",
        model_uri,
        "--env-manager",
        "local",
        "-w",
        "1",
        "-h",
        "127.0.0.1",
    ]


def mlflow_server_cmd(backend_store: str, artifacts: str, port: int) -> list[str]:
    """`mlflow server` with proxied artifacts, as docs/PRODUCTION.md runs it (one worker)."""
    return [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--backend-store-uri",
        backend_store,
        "--artifacts-destination",
        artifacts,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]


def http_status(url: str, timeout: float = 2.0) -> int | None:
    """The HTTP status of GET `url`, or None while nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


@contextlib.contextmanager
def background_process(
    cmd: list[str],
    *,
    log: Path,
    ready_url: str,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 60.0,
    consecutive: int = 1,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run `cmd` in its own process group (output to `log`) until the block ends.

    Yields once `ready_url` has answered 200 `consecutive` times in a row (more than one gives
    every worker of a multi-process server the chance to start). A process that exits or is not
    ready in time fails with its log. On exit the whole group gets SIGTERM, then SIGKILL after
    10 s, so workers and helper children stop with it.
    """
    with open(log, "wb") as out:
        process = subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline, answers = time.monotonic() + timeout, 0
        while answers < consecutive:
            if process.poll() is not None:
                raise RuntimeError(f"{cmd[:3]} exited {process.returncode}:\n{log.read_text()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{cmd[:3]} not ready after {timeout} s:\n{log.read_text()}")
            answers = answers + 1 if http_status(ready_url) == 200 else 0
            time.sleep(0.05 if answers else 0.2)
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
