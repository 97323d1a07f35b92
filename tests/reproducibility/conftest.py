"""An S3-compatible server on loopback for the dvc-s3 remote tests.

No AWS or MinIO is reachable here; moto's server speaks the S3 protocol and is the closest real
stand-in. It lives in its own virtual environment (requirements/moto.lock), cached between runs,
because its boto3 conflicts with the aiobotocore that dvc-s3 uses.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.conftest import REPO_ROOT, run

MOTO_VENV = Path(os.environ.get("TABML_MOTO_VENV", Path.home() / ".cache" / "tabml" / "moto-venv"))


def _moto_server_binary() -> Path:
    binary = MOTO_VENV / "bin" / "moto_server"
    stamp = MOTO_VENV / "moto.lock"
    lock = (REPO_ROOT / "requirements" / "moto.lock").read_text()
    if binary.exists() and stamp.exists() and stamp.read_text() == lock:
        return binary
    run([sys.executable, "-m", "venv", "--clear", str(MOTO_VENV)], cwd=REPO_ROOT)
    pip = [str(MOTO_VENV / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    lock_file = REPO_ROOT / "requirements" / "moto.lock"
    run([*pip, "--disable-pip-version-check", "--require-hashes", "-r", str(lock_file)], REPO_ROOT)
    stamp.write_text(lock)
    return binary


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a running moto S3 server on loopback with the bucket `tabml-test` created."""
    port = _free_port()
    log = tmp_path_factory.mktemp("moto") / "server.log"
    with open(log, "w") as out:
        server = subprocess.Popen(
            [str(_moto_server_binary()), "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                request = urllib.request.Request(f"{endpoint}/tabml-test", method="PUT")
                urllib.request.urlopen(request, timeout=2).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError(f"moto server did not start:\n{log.read_text()}") from None
                time.sleep(0.2)
        yield endpoint
    finally:
        server.terminate()
        server.wait(timeout=10)
