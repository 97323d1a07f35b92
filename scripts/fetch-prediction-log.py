"""Copy the closed segments of a prediction log shipped to S3 into a local directory.

usage: python scripts/fetch-prediction-log.py s3://bucket/prefix DIR

Only closed segments (`*.jsonl`, see tabml.monitoring.events) are copied, and only those not
already in DIR with the same size: segments never change once closed, so repeated runs fetch
just the new ones. Credentials come from the environment (AWS_*), as for the DVC remote.
"""

from __future__ import annotations

import sys
from pathlib import Path
from urllib.parse import urlsplit

import boto3


def main(uri: str, dest: Path) -> int:
    parts = urlsplit(uri)
    if parts.scheme != "s3" or not parts.netloc:
        print(f"error: {uri} is not an s3://bucket/prefix URI", file=sys.stderr)
        return 2
    bucket, prefix = parts.netloc, parts.path.lstrip("/")
    s3 = boto3.client("s3")
    fetched = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            key = item["Key"]
            if not key.endswith(".jsonl"):
                continue
            target = dest / Path(key).relative_to(prefix) if prefix else dest / key
            if target.exists() and target.stat().st_size == item["Size"]:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(target.name + ".part")
            s3.download_file(bucket, key, str(partial))
            partial.replace(target)
            fetched += 1
    print(f"fetched {fetched} new segment(s) from {uri} into {dest}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1], Path(sys.argv[2])))
