"""The loop's schedules (a Kubernetes CronJob and a scheduled GitHub workflow) run the real
command with options the loop accepts. Schema validity (kubernetes-validate strict) and
actionlint are checked with the other manifests and workflows."""

from __future__ import annotations

from pathlib import Path

import yaml
from tests.support.project import REPO_ROOT

from tabml.pipeline import compose

CRONJOB = REPO_ROOT / "deploy" / "loop-cronjob.yaml"
WORKFLOW = REPO_ROOT / ".github" / "workflows" / "loop.yml"


def manifests(path: Path) -> dict[str, dict]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all(path.read_text()) if doc}


def test_the_cronjob_runs_one_loop_at_a_time_with_overrides_the_loop_accepts() -> None:
    docs = manifests(CRONJOB)
    cron = docs["CronJob"]["spec"]
    assert cron["concurrencyPolicy"] == "Forbid"
    job = cron["jobTemplate"]["spec"]
    assert job["backoffLimit"] == 0  # a crash is resumed by the next scheduled run
    (container,) = job["template"]["spec"]["containers"]
    assert container["command"] == ["tabml-loop", "run"]
    params, _ = compose(container["args"], REPO_ROOT / "conf")  # rejects unknown or mistyped keys
    assert params.loop.reload_command == "kubectl rollout restart deployment/tabml-serve"
    # Secrets come from a Secret, never from the manifest.
    assert container["envFrom"] == [{"secretRef": {"name": "tabml-loop-secrets"}}]
    assert all("value" not in e or "TOKEN" not in e["name"] for e in container.get("env", []))


def test_the_loop_may_restart_the_serving_deployment_and_nothing_else() -> None:
    docs = manifests(CRONJOB)
    (rule,) = docs["Role"]["rules"]
    assert rule == {
        "apiGroups": ["apps"],
        "resources": ["deployments"],
        "resourceNames": ["tabml-serve"],
        "verbs": ["get", "patch"],
    }
    binding = docs["RoleBinding"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "tabml-loop"}]
    spec = docs["CronJob"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == "tabml-loop"


def test_the_scheduled_workflow_runs_the_loop_with_its_secrets_from_the_forge() -> None:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    triggers = workflow[True]  # YAML 1.1 reads the key `on` as true
    assert triggers["schedule"] and "workflow_dispatch" in triggers
    assert workflow["concurrency"] == {"group": "tabml-loop", "cancel-in-progress": False}
    steps = workflow["jobs"]["loop"]["steps"]
    scripts = "\n".join(step.get("run", "") for step in steps)
    assert ".venv/bin/tabml-loop run" in scripts
    assert "scripts/fetch-prediction-log.py" in scripts
    for name, value in workflow["jobs"]["loop"]["env"].items():
        assert value.startswith("${{ secrets.") or value.startswith("${{ inputs."), name
