"""Helpers shared by the tests and the benchmarks under bench/ (which import only this package,
never a test module or a conftest):

- project: the repository root, its real commands (`src/train.py`, `dvc`), a fresh clone;
- processes: free loopback ports, background servers started and stopped alike, HTTP status;
- waiting: poll a condition until it holds, with a deadline;
- artifacts: a frozen, md5-checked copy of what the service serves;
- bundles, model_versions: trained checkouts and a second model version without the pipeline;
- reload_stub: a stand-in speaking the service's reload interface;
- docker: the Docker engine, the image build and a container on a loopback port;
- s3: a moto S3 server on loopback (the `s3_endpoint` fixture) for the dvc-s3 remote tests.
"""
