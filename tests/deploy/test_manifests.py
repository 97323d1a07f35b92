"""The Kubernetes manifests in deploy/: schema-valid offline, and consistent with the service.

Validation uses kubernetes-validate's bundled OpenAPI schemas (strict: unknown fields fail) for
the oldest Kubernetes release still commonly run (1.30) and the newest the package ships. The
other tests check what a schema cannot: the probes hit routes the app really has (and answer
200 on a real app instance), the pod runs as the image's non-root user with a read-only root
filesystem, resources are set and cover the memory the load test measured.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version
from tests.conftest import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"
LOAD_RESULTS = REPO_ROOT / "bench" / "results" / "load.json"
VERSIONS = ["1.30.0", latest_version()]
MANIFESTS = sorted(DEPLOY.glob("*.yaml"))


def documents() -> list[dict[str, Any]]:
    docs = []
    for path in MANIFESTS:
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def one(kind: str) -> dict[str, Any]:
    found = [d for d in documents() if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind} in deploy/, found {len(found)}"
    return found[0]


def container() -> dict[str, Any]:
    containers = one("Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def cpu_cores(quantity: str | int) -> float:
    text = str(quantity)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def mebibytes(quantity: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024, "K": 1e3 / 2**20, "M": 1e6 / 2**20}
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([KMG]i?)?", quantity)
    assert match, f"unsupported quantity {quantity}"
    number, unit = match.groups()
    return float(number) * units.get(unit or "", 1 / 2**20)


# ------------------------------------------------------------------------------ schema validity


def test_manifests_exist() -> None:
    kinds = sorted(d["kind"] for d in documents())
    assert kinds == [
        "CronJob",
        "Deployment",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "Role",
        "RoleBinding",
        "Service",
        "ServiceAccount",
    ]
    assert one("HorizontalPodAutoscaler")["apiVersion"] == "autoscaling/v2"
    assert one("PodDisruptionBudget")["apiVersion"] == "policy/v1"


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_schema_valid_strict(path: Path, version: str) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        if doc:
            kubernetes_validate.validate(doc, version, strict=True)


def test_strict_validation_rejects_unknown_fields() -> None:
    """The check above is real: a misspelt field fails."""
    deployment = one("Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["readynessProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, VERSIONS[-1], strict=True)


# ---------------------------------------------------------------------------------- consistency


def test_selectors_and_targets_line_up() -> None:
    deployment, service = one("Deployment"), one("Service")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"] == selector
    target = one("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    port_names = {p["name"]: p["containerPort"] for p in container()["ports"]}
    assert all(p["targetPort"] in port_names for p in service["spec"]["ports"])


def test_port_and_user_match_the_image() -> None:
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    c = container()
    env = {e["name"]: e["value"] for e in c["env"]}
    exposed = re.search(r"^EXPOSE (\d+)", dockerfile, re.M)
    user = re.search(r"^USER (\d+):(\d+)", dockerfile, re.M)
    assert exposed and user
    assert c["ports"][0]["containerPort"] == int(exposed.group(1)) == int(env["TABML_PORT"])
    pod = one("Deployment")["spec"]["template"]["spec"]["securityContext"]
    assert (pod["runAsUser"], pod["runAsGroup"]) == (int(user.group(1)), int(user.group(2)))
    assert "TABML_WORKERS" in dockerfile  # the image's CMD reads the variable set here


def test_probes_point_at_real_routes(pipeline_outputs: Path) -> None:
    from tabml.serving.app import create_app

    c = container()
    probes = {name: c[name]["httpGet"] for name in ("livenessProbe", "readinessProbe")}
    assert probes["livenessProbe"]["path"] == "/health"
    assert probes["readinessProbe"]["path"] == "/ready"
    assert c["startupProbe"]["httpGet"]["path"] in {"/health", "/ready"}
    port_names = {p["name"] for p in c["ports"]}
    for probe in [*probes.values(), c["startupProbe"]["httpGet"]]:
        assert probe["port"] in port_names

    from fastapi.testclient import TestClient

    from tabml.serving.settings import ServingSettings

    settings = ServingSettings(
        model_dir=REPO_ROOT / "models",
        dvc_lock=REPO_ROOT / "dvc.lock",
        allow_md5_mismatch=True,  # only the routes matter here, not which model version
    )
    app = create_app(settings)
    paths = app.openapi()["paths"]  # every route the app declares, with its methods
    for probe in [*probes.values(), c["startupProbe"]["httpGet"]]:
        assert "get" in paths.get(probe["path"], {}), f"no GET {probe['path']} in the app"
    with TestClient(app) as client:
        assert client.get(probes["livenessProbe"]["path"]).status_code == 200
        deadline = time.monotonic() + 30
        while client.get(probes["readinessProbe"]["path"]).status_code != 200:
            assert time.monotonic() < deadline, "/ready never answered 200"
            time.sleep(0.1)


def test_non_root_and_locked_down() -> None:
    pod = one("Deployment")["spec"]["template"]["spec"]
    c = container()
    security = c["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert security["runAsNonRoot"] is True
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert "add" not in security["capabilities"]
    assert security["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    # The only writable paths are emptyDirs: TMPDIR, where tabml-serve puts the
    # prometheus-client multiprocess directory, and the prediction log's directory (bounded,
    # so a log nobody ships cannot fill the node).
    env = {e["name"]: e["value"] for e in c["env"]}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert set(mounts) == {env["TMPDIR"], env["TABML_PREDICTION_LOG_DIR"]}
    assert "emptyDir" in volumes[mounts[env["TMPDIR"]]]
    assert volumes[mounts[env["TABML_PREDICTION_LOG_DIR"]]]["emptyDir"]["sizeLimit"]
    assert "PROMETHEUS_MULTIPROC_DIR" not in env or env["PROMETHEUS_MULTIPROC_DIR"].startswith(
        env["TMPDIR"]
    )


def test_graceful_shutdown() -> None:
    pod = one("Deployment")["spec"]["template"]["spec"]
    command = container()["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "python3"  # the only program the image is sure to have
    match = re.search(r"sleep\((\d+(?:\.\d+)?)\)", command[-1])
    assert match, command
    sleep = float(match.group(1))
    assert 0 < sleep < pod["terminationGracePeriodSeconds"] - 10  # time left to drain
    strategy = one("Deployment")["spec"]["strategy"]["rollingUpdate"]
    assert strategy["maxUnavailable"] == 0


def test_resources_cover_measured_memory() -> None:
    c = container()
    resources = c["resources"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= resources[kind].keys(), f"{kind} must set cpu and memory"
    assert cpu_cores(resources["requests"]["cpu"]) <= cpu_cores(resources["limits"]["cpu"])
    request = mebibytes(resources["requests"]["memory"])
    limit = mebibytes(resources["limits"]["memory"])
    assert request <= limit
    workers = int({e["name"]: e["value"] for e in c["env"]}["TABML_WORKERS"])
    assert cpu_cores(resources["requests"]["cpu"]) == workers  # one core per worker
    if not LOAD_RESULTS.is_file():
        pytest.skip("no bench/results/load.json: run bench/load_test.py")
    measured = json.loads(LOAD_RESULTS.read_text())
    assert measured["service"]["workers"] == workers
    rss = max(measured["rss_mib"][k]["total_mib"] for k in ("after_warm_up", "at_end"))
    assert request >= 1.2 * rss, f"memory request {request} MiB vs measured RSS {rss} MiB"
    assert limit >= 1.5 * rss


def test_autoscaling_and_disruption_budget() -> None:
    hpa = one("HorizontalPodAutoscaler")["spec"]
    (metric,) = hpa["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert 0 < metric["resource"]["target"]["averageUtilization"] <= 80
    assert 2 <= hpa["minReplicas"] < hpa["maxReplicas"]
    pdb = one("PodDisruptionBudget")["spec"]
    assert pdb["maxUnavailable"] < hpa["minReplicas"]  # a drain never takes all pods
