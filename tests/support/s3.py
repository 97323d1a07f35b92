"""An S3-compatible server on loopback for the dvc-s3 remote tests (reproducibility/, loop/,
production/: each conftest imports the `s3_endpoint` fixture from here).

No AWS or MinIO is reachable here; moto's server speaks the S3 protocol and is the closest real
stand-in. It lives in its own virtual environment (requirements/moto.lock), cached between runs,
because its boto3 conflicts with the aiobotocore that dvc-s3 uses.
"""

from __future__ import annotations

import os
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.support.processes import background_process, free_port
from tests.support.project import REPO_ROOT, run

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


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a running moto S3 server on loopback with the bucket `tabml-test` created."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    with background_process(
        [str(_moto_server_binary()), "-H", "127.0.0.1", "-p", str(port)],
        log=tmp_path_factory.mktemp("moto") / "server.log",
        ready_url=f"{endpoint}/",  # S3 ListBuckets
        timeout=30,
    ):
        request = urllib.request.Request(f"{endpoint}/tabml-test", method="PUT")
        urllib.request.urlopen(request, timeout=10).close()
        yield endpoint
