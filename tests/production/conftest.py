"""Fixtures for the production-profile tests: the moto S3 server is the one the reproducibility
tests use (its own virtual environment, loopback only), re-exported here."""

from tests.reproducibility.conftest import s3_endpoint  # noqa: F401  (fixture)
