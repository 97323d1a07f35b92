"""Put a gated model in front of traffic and decide about it: the loop's canary and decision.

The registry is the source of truth (`champion` and `challenger` aliases, each version's gate
and loop decision as tags); the served bundle is written from it with `tabml-registry export`
and the running service is told to reload (`POST <reload_url>/admin/reload`, token from
`TABML_ADMIN_TOKEN`), so a promotion or a rollback never restarts the service.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tabml.config import Params
from tabml.loop import steps
from tabml.loop.steps import CHALLENGER, LoopStepError, Say

PROMOTED, REJECTED = "promoted", "rejected"


def _client(params: Params) -> Any:
    from mlflow import MlflowClient

    from tabml.tracking_store import resolve_tracking_uri

    uri = resolve_tracking_uri(params.tracking.uri)
    return MlflowClient(uri, registry_uri=uri)


def canary_running(params: Params) -> bool:
    """Whether a challenger is serving and awaits the decision (no MLflow import otherwise:
    the bundle says whether it serves one)."""
    from tabml.bundle import load_bundle

    bundle = Path(params.loop.bundle_dir)
    return (bundle / "bundle.json").exists() and CHALLENGER in load_bundle(bundle).roles


#: The bundle generation the service was last told to load (a run killed between writing a
#: bundle and the reload is finished by the next, which sees the two differ).
RELOADED_FILE = Path(".dvc/tmp/tabml-loop/reloaded")
#: The last retrain commit whose model was gated and put in canary or rejected.
DEPLOYED_FILE = Path(".dvc/tmp/tabml-loop/deployed")


def retrain_not_deployed() -> bool:
    """HEAD is a retrain commit of the loop whose model was not yet gated and deployed (a run
    killed between the commit and the canary); git only, no MLflow import."""
    subject = steps.git("log", "-1", "--format=%s", check=False)
    if not subject.startswith(steps.COMMIT_SUBJECT):
        return False
    head = steps.git("rev-parse", "HEAD")
    return not DEPLOYED_FILE.exists() or DEPLOYED_FILE.read_text() != head


def _mark_deployed() -> None:
    from tabml.atomic import write_text_atomic

    write_text_atomic(DEPLOYED_FILE, steps.git("rev-parse", "HEAD"))


def publish(params: Params, with_challenger: bool, say: Say) -> None:
    """Rewrite the bundle from the registry's aliases, then reload the running service."""
    from tabml.registry_cli import main as registry

    aliases = ["--alias", "champion", *(["--alias", CHALLENGER] if with_challenger else [])]
    status = registry(["export", *aliases, "--out", params.loop.bundle_dir])
    if status != 0:
        raise LoopStepError(f"tabml-registry export exited {status}; the bundle is unchanged")
    ensure_reloaded(params, say)


def _generation(params: Params) -> str:
    return str(Path(params.loop.bundle_dir).resolve())


def ensure_reloaded(params: Params, say: Say) -> None:
    """Reload the service if the bundle changed since it was last told to."""
    from tabml.atomic import write_text_atomic

    current = _generation(params)
    if not RELOADED_FILE.exists() or RELOADED_FILE.read_text() != current:
        reload_service(params, say)
        write_text_atomic(RELOADED_FILE, current)


def reload_service(params: Params, say: Say) -> None:
    if params.loop.reload_command:
        import shlex
        import subprocess

        done = subprocess.run(shlex.split(params.loop.reload_command), check=False)
        if done.returncode != 0:
            raise LoopStepError(
                f"`{params.loop.reload_command}` exited {done.returncode}; the bundle is "
                "written, the next run retries the reload"
            )
        say(f"reload: {params.loop.reload_command}")
    url = params.loop.reload_url
    if not url:
        if not params.loop.reload_command:
            say("reload: neither loop.reload_url nor loop.reload_command; SIGHUP the service")
        return
    request = urllib.request.Request(
        url.rstrip("/") + "/admin/reload",
        method="POST",
        headers={"Authorization": f"Bearer {os.environ.get('TABML_ADMIN_TOKEN', '')}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            say(f"reload: {url} answered {response.status}")
    except (urllib.error.URLError, OSError) as exc:
        raise LoopStepError(
            f"the service at {url} did not reload ({exc}); the bundle is written, the next "
            "run retries the reload"
        ) from None


def canary(params: Params, say: Say) -> int:
    """After a retrain: a version that passed the gate becomes `challenger` and serves its
    share; one that failed is recorded as rejected and nothing else changes."""
    from tabml.registry import move_alias

    state = steps.workspace_version(params)
    if state.version == state.champion:
        say(f"{state.name} v{state.version} is the champion already: nothing to canary")
        _mark_deployed()
        return 0
    if state.decision is not None:
        say(f"{state.name} v{state.version} was {state.decision} before: nothing to do")
        _mark_deployed()
        return 0
    if state.gate != "passed":
        steps.record_decision(params, state.version, REJECTED, {"by": "gate"})
        say(f"gate: {state.name} v{state.version} rejected; the champion keeps serving")
        _mark_deployed()
        return 0
    if state.challenger != state.version:
        move_alias(
            _client(params),
            state.name,
            CHALLENGER,
            state.version,
            "loop",
            f"passed the gate; {params.loop.route} until the comparison decides",
        )
    say(f"canary: {state.name} v{state.version} is the challenger ({params.loop.route})")
    publish(params, with_challenger=True, say=say)
    _mark_deployed()
    return 0


def decide(params: Params, *, dry_run: bool, say: Say) -> int:
    """Promote or roll back the challenger by the comparison rule, once enough of its traffic
    is labelled; the decision and its evidence go to the model version's tags."""
    from tabml.bundle import load_bundle
    from tabml.monitoring.compare import compare, read_traffic
    from tabml.registry import CHAMPION, current_alias, move_alias

    ensure_reloaded(params, say)
    bundle = load_bundle(Path(params.loop.bundle_dir))
    champion, challenger = bundle.version(CHAMPION), bundle.version(CHALLENGER)
    label = params.dataset.label
    traffic = read_traffic(steps.log_dir_of(params), {label.negative: 0, label.positive: 1})
    result = compare(traffic, champion.id, challenger.id, params.compare, steps.log_dir_of(params))
    decision = result["decision"]
    say(f"compare {challenger.id} vs {champion.id}: {decision['decision']} ({decision['reason']})")
    if decision["decision"] == "collect" or dry_run:
        return 0
    name = params.tracking.registered_model
    version = challenger.id.removeprefix("v")
    client = _client(params)
    evidence = {"rule": decision["rule"], "result": decision.get("horizon"), "by": "comparison"}
    # Each move is skipped when already made: a run killed half-way is finished by the next.
    if decision["decision"] == "promote":
        if current_alias(client, name, CHAMPION) != version:
            move_alias(client, name, CHAMPION, version, "loop", decision["reason"])
        steps.record_decision(params, version, PROMOTED, evidence)
        say(f"promote: {name} v{version} is the champion")
    else:
        steps.record_decision(params, version, REJECTED, evidence)
        say(f"roll back: {name} v{version} rejected; v{champion.id.removeprefix('v')} serves alone")
    if current_alias(client, name, CHALLENGER) is not None:
        client.delete_registered_model_alias(name, CHALLENGER)
    publish(params, with_challenger=False, say=say)
    return 0
