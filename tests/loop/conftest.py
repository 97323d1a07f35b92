from tests.reproducibility.conftest import s3_endpoint  # noqa: F401  (fixture)
