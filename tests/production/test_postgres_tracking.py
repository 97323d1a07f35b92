"""The production tracking profile for real: MLflow on PostgreSQL with artifacts in S3.

Debian's PostgreSQL (installed with apt-get when absent and running as root) runs on loopback
from a temporary data directory, moto's S3 server stands in for the object store, and a real
`mlflow server --backend-store-uri postgresql://... --artifacts-destination s3://...` serves
both, as docs/PRODUCTION.md describes (the password in PGPASSWORD, not on the command line).
The client side only knows the server's URL: a run with parameters, a metric and the model file
as an artifact, then a registered model version with the `champion` alias, all read back
through the server, and checked at the source (rows in PostgreSQL, the object in the bucket).
"""

from __future__ import annotations

import glob
import hashlib
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.support.processes import background_process, free_port, mlflow_server_cmd
from tests.support.project import REPO_ROOT, clone_repo, command_env, run

pytestmark = pytest.mark.slow

BUCKET = "tabml-test"  # created by the s3_endpoint fixture
PASSWORD = "tabml-test-password"
MODEL = REPO_ROOT / "models" / "model.txt"


def _postgres_bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def postgres_bindir() -> Path:
    """Debian's PostgreSQL server binaries, installed on demand (as root, with apt-get)."""
    bindir = _postgres_bindir()
    if bindir is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, check=False)
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "postgresql"],
            env=env,
            capture_output=True,
            check=False,
        )
        bindir = _postgres_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries not found (apt-get install postgresql)")
    return bindir


def as_postgres_user() -> list[str]:
    """PostgreSQL refuses to run as root: run its programs as `postgres` then."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("running as root and there is no `postgres` user")
    return ["runuser", "-u", "postgres", "--"]


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """postgresql://mlflow:...@127.0.0.1:<port>/mlflow on a throwaway cluster."""
    bindir = postgres_bindir()
    prefix = as_postgres_user()
    root = Path(tempfile.mkdtemp(prefix="tabml-pg-"))
    data, log, pwfile = root / "data", root / "server.log", root / "pwfile"
    pwfile.write_text(PASSWORD + "\n")
    if prefix:
        user = pwd.getpwnam("postgres")
        os.chown(root, user.pw_uid, user.pw_gid)
        os.chown(pwfile, user.pw_uid, user.pw_gid)
    port = free_port()

    def pg(*args: str) -> None:
        result = subprocess.run([*prefix, *args], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            server_log = log.read_text() if log.exists() else ""
            raise AssertionError(f"{args} failed:\n{result.stdout}{result.stderr}{server_log}")

    pg(
        str(bindir / "initdb"),
        "-D",
        str(data),
        "-U",
        "mlflow",
        f"--pwfile={pwfile}",
        "--auth-local=scram-sha-256",
        "--auth-host=scram-sha-256",
        "--encoding=UTF8",
        "--no-sync",
    )
    options = f"-p {port} -c listen_addresses=127.0.0.1 -k {root} -c fsync=off"
    pg(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "start")
    try:
        import psycopg

        url = f"postgresql://mlflow:{PASSWORD}@127.0.0.1:{port}"
        with psycopg.connect(f"{url}/postgres", autocommit=True) as admin:
            admin.execute("CREATE DATABASE mlflow")
        yield f"{url}/mlflow"
    finally:
        pg(str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


def s3_env(endpoint: str) -> dict[str, str]:
    """What the tracking server needs to reach an S3-compatible store (dummy credentials)."""
    return {
        "MLFLOW_S3_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }


@pytest.fixture(scope="module")
def tracking_server(
    postgres_url: str, s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """`mlflow server` on PostgreSQL + S3, as docs/PRODUCTION.md runs it; yields its URL.

    The password reaches libpq through PGPASSWORD, not the command line (where `ps` shows it).
    """
    assert f":{PASSWORD}@" in postgres_url
    backend_store = postgres_url.replace(f":{PASSWORD}@", "@")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with background_process(
        mlflow_server_cmd(backend_store, f"s3://{BUCKET}/mlflow", port),
        log=tmp_path_factory.mktemp("mlflow-server") / "server.log",
        ready_url=f"{url}/health",
        env=command_env(PGPASSWORD=PASSWORD, **s3_env(s3_endpoint)),
        timeout=120,  # creating the schema runs every migration
    ):
        yield url


def test_run_and_registry_on_postgres_and_s3(
    pipeline_outputs: Path,
    tracking_server: str,
    postgres_url: str,
    s3_endpoint: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import mlflow
    from mlflow import MlflowClient

    # The client has no database or bucket credentials: only the server's URL.
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_S3_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_server)
    mlflow.set_tracking_uri(tracking_server)
    client = MlflowClient(tracking_server)

    experiment = client.create_experiment("tabml-production-profile")
    model_bytes = MODEL.read_bytes()
    with mlflow.start_run(experiment_id=experiment) as run:
        mlflow.log_params({"model": "lightgbm", "num_threads": 1})
        mlflow.log_metric("roc_auc", 0.9264)
        mlflow.set_tag("git_commit", "0" * 40)
        mlflow.log_artifact(str(MODEL), artifact_path="model")
    run_id = run.info.run_id

    name = "tabml-adult-production-profile"
    client.create_registered_model(name)
    version = client.create_model_version(
        name, source=f"runs:/{run_id}/model", run_id=run_id, tags={"gate": "passed"}
    )
    client.set_registered_model_alias(name, "champion", version.version)

    # Read back through the server.
    stored = client.get_run(run_id)
    assert stored.data.params == {"model": "lightgbm", "num_threads": "1"}
    assert stored.data.metrics["roc_auc"] == pytest.approx(0.9264)
    assert stored.data.tags["git_commit"] == "0" * 40
    assert stored.info.artifact_uri.startswith("mlflow-artifacts:")  # proxied by the server
    assert [a.path for a in client.list_artifacts(run_id, "model")] == ["model/model.txt"]
    downloaded = Path(
        mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path="model/model.txt", dst_path=str(tmp_path)
        )
    )
    assert hashlib.md5(downloaded.read_bytes()).hexdigest() == hashlib.md5(model_bytes).hexdigest()
    champion = client.get_model_version_by_alias(name, "champion")
    assert (champion.version, champion.run_id) == (version.version, run_id)
    assert champion.tags["gate"] == "passed"

    # And at the source: rows in PostgreSQL, the object in the bucket.
    import psycopg

    with psycopg.connect(postgres_url) as db, db.cursor() as cursor:
        cursor.execute("SELECT key, value FROM params WHERE run_uuid = %s ORDER BY key", (run_id,))
        assert cursor.fetchall() == [("model", "lightgbm"), ("num_threads", "1")]
        cursor.execute(
            "SELECT alias, version FROM registered_model_aliases WHERE name = %s", (name,)
        )
        assert cursor.fetchall() == [("champion", int(version.version))]
    with urllib.request.urlopen(f"{s3_endpoint}/{BUCKET}?list-type=2", timeout=10) as response:
        listing = response.read().decode()
    assert f"{run_id}/artifacts/model/model.txt" in listing


def test_pipeline_trains_and_promotes_against_the_production_server(
    tracking_server: str, s3_endpoint: str, tmp_path: Path
) -> None:
    """`python src/train.py` with only MLFLOW_TRACKING_URI set: the run, the registered version
    and the champion alias land in PostgreSQL, the model artifacts in the bucket."""
    from mlflow import MlflowClient

    repo = clone_repo(tmp_path / "repo")
    env = command_env(
        MLFLOW_TRACKING_URI=tracking_server,
        PYTHONPATH=str(repo / "src"),
        DVC_NO_ANALYTICS="1",
    )
    # The model is restored from DVC's run cache; this server has never seen it, so it is
    # tracked (tracking runs after every pipeline run, whatever DVC ran).
    name = "tabml-adult-production"
    overrides = [f"tracking.registered_model={name}", "tracking.experiment=production-profile"]
    result = run([sys.executable, "src/train.py", "--no-push", *overrides], cwd=repo, env=env)
    output = result.stdout + result.stderr
    assert f"{name} v1 promoted to champion" in output, output

    client = MlflowClient(tracking_server)
    model = client.get_registered_model(name)
    assert model.aliases.get("champion") == "1"
    version = client.get_model_version(name, "1")
    stored = client.get_run(version.run_id)
    commit = run(["git", "rev-parse", "HEAD"], cwd=repo).stdout.strip()
    assert commit in stored.data.tags.values()
    # The registered model's files are in the bucket (a logged model `models:/m-...` in MLflow 3,
    # else the run's artifacts).
    with urllib.request.urlopen(f"{s3_endpoint}/{BUCKET}?list-type=2", timeout=10) as response:
        keys = re.findall(r"<Key>([^<]+)</Key>", response.read().decode())
    source = version.source.rstrip("/")
    owner = source.split("/")[-1] if source.startswith("models:/") else version.run_id
    assert any(owner in key and key.endswith("/MLmodel") for key in keys), (source, keys)
