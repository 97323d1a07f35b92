"""The champion/challenger variants of deploy/: schema-valid offline, and equal to the base
manifests they vary except where they must differ.

Core kinds are validated like deploy/*.yaml (kubernetes-validate, strict, Kubernetes 1.30 and
the newest it ships). The HTTPRoute is a Gateway API custom resource, which kubernetes-validate
does not know: it is validated against the HTTPRoute v1 schema of the Gateway API v1.6.1 CRD
(standard channel), vendored in tests/deploy/schemas/ because nothing may be downloaded at test
time, with unknown fields refused as kubernetes-validate's strict mode does. That schema leaves
out the CRD's CEL rules, so the structural checks below cover what this route relies on:
backends that are the two Services on their ports, and the traffic share of each.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version
from tests.support.project import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"
IN_PROCESS = DEPLOY / "canary-in-process"
TWO = DEPLOY / "canary-two-deployments"
VARIANTS = sorted([*IN_PROCESS.glob("*.yaml"), *TWO.glob("*.yaml")])
VERSIONS = ["1.30.0", latest_version()]
HTTPROUTE_SCHEMA = Path(__file__).parent / "schemas" / "httproute-v1.json"
ROLES = ("champion", "challenger")
INSTANCE = "app.kubernetes.io/instance"


def documents(*paths: Path) -> list[dict[str, Any]]:
    return [d for path in paths for d in yaml.safe_load_all(path.read_text()) if d]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def base_deployment() -> dict[str, Any]:
    return one(documents(DEPLOY / "deployment.yaml"), "Deployment")


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return only


def env_of(deployment: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(deployment)["env"]}


def strict(schema: Any) -> Any:
    """The schema with unknown fields refused wherever it lists the known ones."""
    if isinstance(schema, dict):
        tightened = {k: strict(v) for k, v in schema.items()}
        if "properties" in tightened and "additionalProperties" not in tightened:
            tightened["additionalProperties"] = False
        return tightened
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    return schema


def httproute_validator() -> jsonschema.Draft7Validator:
    schema = json.loads(HTTPROUTE_SCHEMA.read_text())
    schema.pop("$comment")
    return jsonschema.Draft7Validator(strict(schema))


# ------------------------------------------------------------------------------ schema validity


def test_variants_exist() -> None:
    kinds = sorted(d["kind"] for d in documents(*VARIANTS))
    assert kinds == [
        "Deployment",
        "Deployment",
        "Deployment",
        "HTTPRoute",
        "HorizontalPodAutoscaler",
        "HorizontalPodAutoscaler",
        "PersistentVolumeClaim",
        "PodDisruptionBudget",
        "Service",
        "Service",
    ]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("path", VARIANTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_core_kinds_schema_valid_strict(path: Path, version: str) -> None:
    for doc in documents(path):
        if doc["kind"] != "HTTPRoute":
            kubernetes_validate.validate(doc, version, strict=True)


def test_httproute_valid_against_the_vendored_gateway_api_schema() -> None:
    route = one(documents(TWO / "httproute.yaml"), "HTTPRoute")
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    httproute_validator().validate(route)


@pytest.mark.parametrize(
    "break_it",
    [
        lambda r: r["spec"]["rules"][0]["backendRefs"][0].update(weigth=5),  # misspelt
        lambda r: r["spec"]["rules"][0]["backendRefs"][0].update(weight=-1),
        lambda r: r["spec"]["rules"][0]["backendRefs"][0].pop("name"),
        lambda r: r["spec"]["rules"][0]["matches"][0]["path"].update(type="Glob"),
        lambda r: r["spec"].update(rules=[{"backendRefs": []}] * 17),  # at most 16 rules
    ],
)
def test_the_httproute_schema_check_is_real(break_it) -> None:
    route = copy.deepcopy(one(documents(TWO / "httproute.yaml"), "HTTPRoute"))
    break_it(route)
    with pytest.raises(jsonschema.ValidationError):
        httproute_validator().validate(route)


# ---------------------------------------------------------------------- in-process (default)


def test_in_process_variant_is_the_base_deployment_with_a_bundle() -> None:
    docs = documents(*IN_PROCESS.glob("*.yaml"))
    variant, base = one(docs, "Deployment"), base_deployment()
    # Same name and labels: deploy/service.yaml, hpa.yaml and pdb.yaml apply unchanged.
    assert variant["metadata"] == base["metadata"]
    trimmed = copy.deepcopy(variant)
    for deployment in (trimmed, base):
        pod = deployment["spec"]["template"]["spec"]
        pod.pop("volumes")
        for key in ("env", "volumeMounts"):
            pod["containers"][0].pop(key)
    assert trimmed == base  # probes, resources, security, strategy: all the base's

    env, base_env = env_of(variant), env_of(base_deployment())
    assert base_env.items() <= env.items()
    mounts = {m["name"]: m for m in container(variant)["volumeMounts"]}
    bundle = mounts["bundle"]
    assert bundle["readOnly"] is True
    assert Path(env["TABML_BUNDLE"]).is_relative_to(bundle["mountPath"])
    assert re.fullmatch(r"champion|shadow|canary:(0(\.\d+)?|1(\.0+)?)", env["TABML_ROUTE"])
    volumes = {v["name"]: v for v in variant["spec"]["template"]["spec"]["volumes"]}
    claim = volumes["bundle"]["persistentVolumeClaim"]
    assert claim["readOnly"] is True
    pvc = one(docs, "PersistentVolumeClaim")
    assert pvc["metadata"]["name"] == claim["claimName"]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]  # written by export, read by pods
    token = env["TABML_ADMIN_TOKEN"]["secretKeyRef"]
    assert token["optional"] is True  # no secret: /admin/reload answers 404, SIGHUP still works
    assert "# - name: TABML_CHALLENGER" in (IN_PROCESS / "deployment.yaml").read_text()


# -------------------------------------------------------------------------- two Deployments


def two() -> list[dict[str, Any]]:
    return documents(*TWO.glob("*.yaml"))


def deployment_of(role: str) -> dict[str, Any]:
    return one(two(), "Deployment", f"tabml-serve-{role}")


def test_each_deployment_is_the_base_with_a_name_label_image_and_version() -> None:
    base = base_deployment()
    versions = set()
    for role in ROLES:
        deployment = copy.deepcopy(deployment_of(role))
        instance = f"tabml-serve-{role}"
        spec, pod = deployment["spec"], deployment["spec"]["template"]
        for labels in (
            deployment["metadata"]["labels"],
            spec["selector"]["matchLabels"],
            pod["metadata"]["labels"],
            pod["spec"]["topologySpreadConstraints"][0]["labelSelector"]["matchLabels"],
        ):
            assert labels.pop(INSTANCE) == instance
        assert deployment["metadata"].pop("name") == instance
        env = container(deployment)["env"]
        (version,) = [e for e in env if e["name"] == "TABML_MODEL_VERSION"]
        env.remove(version)
        versions.add(version["value"])
        assert container(deployment).pop("image").endswith(f":{version['value']}")
        spec.pop("replicas")
        expected = copy.deepcopy(base)
        expected["metadata"].pop("name")
        expected["spec"].pop("replicas")
        container(expected).pop("image")
        assert deployment == expected
    assert len(versions) == 2  # the log tells them apart for `tabml-monitor compare`


def test_each_service_selects_one_deployment() -> None:
    services = {role: one(two(), "Service", f"tabml-serve-{role}") for role in ROLES}
    pods = {role: deployment_of(role)["spec"]["template"]["metadata"]["labels"] for role in ROLES}
    for role, other in (ROLES, ROLES[::-1]):
        selector = services[role]["spec"]["selector"]
        assert selector.items() <= pods[role].items()
        assert not selector.items() <= pods[other].items()
        ports = {p["name"] for p in container(deployment_of(role))["ports"]}
        assert all(p["targetPort"] in ports for p in services[role]["spec"]["ports"])


def test_the_route_splits_90_10_between_the_two_services() -> None:
    route = one(two(), "HTTPRoute")
    assert route["spec"]["parentRefs"] and all(p["name"] for p in route["spec"]["parentRefs"])
    (rule,) = route["spec"]["rules"]
    assert rule["matches"] == [{"path": {"type": "PathPrefix", "value": "/"}}]  # every path
    service_ports = {
        s["metadata"]["name"]: {p["port"] for p in s["spec"]["ports"]}
        for s in two()
        if s["kind"] == "Service"
    }
    weights = {}
    for backend in rule["backendRefs"]:
        assert backend.get("kind", "Service") == "Service" and "namespace" not in backend
        assert backend["port"] in service_ports[backend["name"]]
        weights[backend["name"]] = backend["weight"]
    assert set(weights) == set(service_ports) == {f"tabml-serve-{r}" for r in ROLES}
    total = sum(weights.values())
    assert weights["tabml-serve-challenger"] / total == pytest.approx(0.10)
    assert weights["tabml-serve-champion"] / total == pytest.approx(0.90)


def test_scaling_and_disruption_follow_each_deployment() -> None:
    base_hpa = one(documents(DEPLOY / "hpa.yaml"), "HorizontalPodAutoscaler")["spec"]
    for role in ROLES:
        hpa = one(two(), "HorizontalPodAutoscaler", f"tabml-serve-{role}")["spec"]
        target = hpa["scaleTargetRef"]
        assert (target["kind"], target["name"]) == ("Deployment", f"tabml-serve-{role}")
        assert hpa["metrics"] == base_hpa["metrics"] and hpa["behavior"] == base_hpa["behavior"]
        assert 1 <= hpa["minReplicas"] < hpa["maxReplicas"]
    pdb = one(two(), "PodDisruptionBudget")["spec"]
    champion = deployment_of("champion")
    assert pdb["selector"]["matchLabels"] == champion["spec"]["selector"]["matchLabels"]
    champion_hpa = one(two(), "HorizontalPodAutoscaler", "tabml-serve-champion")["spec"]
    assert pdb["maxUnavailable"] < champion_hpa["minReplicas"]
