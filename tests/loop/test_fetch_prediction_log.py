"""scripts/fetch-prediction-log.py against an S3-protocol server (moto) on loopback: closed
segments are copied once, open ones never."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.project import REPO_ROOT, command_env

SCRIPT = REPO_ROOT / "scripts" / "fetch-prediction-log.py"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


def put(endpoint: str, key: str, body: bytes) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **_keys())
    s3.put_object(Bucket="tabml-test", Key=key, Body=body)


def _keys() -> dict[str, str]:
    return {
        "aws_access_key_id": CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    }


def fetch(endpoint: str, uri: str, dest: Path) -> subprocess.CompletedProcess[str]:
    env = command_env(**CREDENTIALS, AWS_ENDPOINT_URL=endpoint, AWS_DEFAULT_REGION="us-east-1")
    return subprocess.run(
        [sys.executable, str(SCRIPT), uri, str(dest)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


def test_closed_segments_are_fetched_once_and_open_ones_never(
    s3_endpoint: str, tmp_path: Path
) -> None:
    put(s3_endpoint, "logs/2026-12-01/a.jsonl", b'{"type": "prediction"}\n')
    put(s3_endpoint, "logs/2026-12-01/b.jsonl.open", b'{"type": "predi')
    dest = tmp_path / "predictions"

    first = fetch(s3_endpoint, "s3://tabml-test/logs", dest)
    assert first.returncode == 0, first.stderr
    assert "fetched 1 new segment(s)" in first.stdout
    assert (dest / "2026-12-01" / "a.jsonl").read_bytes() == b'{"type": "prediction"}\n'
    assert not list(dest.rglob("*.open"))

    put(s3_endpoint, "logs/2026-12-01/c.jsonl", b"{}\n")
    second = fetch(s3_endpoint, "s3://tabml-test/logs", dest)
    assert "fetched 1 new segment(s)" in second.stdout  # only the new one
    assert sorted(p.name for p in dest.rglob("*.jsonl")) == ["a.jsonl", "c.jsonl"]


def test_a_uri_that_is_not_s3_is_refused(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "/var/log/tabml", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2 and "is not an s3://bucket/prefix URI" in result.stderr
