"""The moto S3 server for the dvc-s3 remote tests (tests.support.s3)."""

from tests.support.s3 import s3_endpoint  # noqa: F401  (fixture)
