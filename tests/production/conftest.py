"""Fixtures for the production-profile tests: the moto S3 server the reproducibility tests use
too (tests.support.s3: its own virtual environment, loopback only)."""

from tests.support.s3 import s3_endpoint  # noqa: F401  (fixture)
