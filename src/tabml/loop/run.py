"""One iteration of continuous training: `tabml-loop run` (safe to run from cron).

    1. decide   a challenger in canary with enough labelled traffic: promote or roll back
    2. resume   an interrupted retrain (data version written or model trained, not committed)
    3. triggers new labels ≥ K · drift ≥ alert · realized accuracy < floor · model age
    4. data     labelled feedback → a validated batch under data/ (a new data version)
    5. retrain  the pipeline (`python src/train.py --no-promote`): only changed stages run; the
                model is tracked, registered and gated against the champion on the fixed holdout
    6. commit   data.dvc, dvc.lock, params.yaml, reports on the configured branch; DVC push
    7. canary   a version that passed the gate becomes `@challenger`; the bundle is rewritten
                and the running service reloaded (no downtime)

One loop at a time (an exclusive lock; a second one exits with a clear message). `--dry-run`
prints what would be done and changes nothing.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tabml.atomic import write_text_atomic
from tabml.config import Params
from tabml.errors import TabmlError
from tabml.layout import MODEL_FILE, MODELS_DIR, PROFILE_FILE
from tabml.loop import steps, triggers
from tabml.loop.steps import Say

STATE_DIR = Path(".dvc/tmp/tabml-loop")
LOCK_FILE = STATE_DIR / "lock"
#: The evidence of the iteration in progress (for its commit message), and an audit trail.
PENDING_FILE = STATE_DIR / "pending.json"
AUDIT_FILE = STATE_DIR / "audit.jsonl"


class LoopBusyError(TabmlError):
    """Another `tabml-loop run` holds the lock."""


@contextmanager
def exclusive(lock_file: Path = LOCK_FILE) -> Iterator[None]:
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise LoopBusyError(
                f"another tabml-loop run holds {lock_file} (pid {holder}); this one does nothing"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield
        finally:
            handle.truncate(0)


def audit(event: str, **details: Any) -> None:
    entry = {"at": datetime.now(UTC).isoformat(timespec="seconds"), "event": event, **details}
    AUDIT_FILE.parent.mkdir(parents=True, exist_ok=True)
    with open(AUDIT_FILE, "a", encoding="utf-8") as out:
        out.write(json.dumps(entry, sort_keys=True) + "\n")


def champion_version_id(params: Params) -> str:
    """The version id the service reports for the workspace model (as in the prediction log)."""
    from tabml.bundle import load_bundle

    bundle_dir = Path(params.loop.bundle_dir)
    if (bundle_dir / "bundle.json").exists():
        return load_bundle(bundle_dir).version("champion").id
    from tabml.data import file_md5

    return file_md5(MODELS_DIR / MODEL_FILE)[:12]


def evaluate_triggers(
    params: Params, events: list[dict[str, Any]], new_rows: int
) -> list[triggers.Trigger]:
    from tabml.monitoring import ReferenceProfile

    version = champion_version_id(params)
    profile = ReferenceProfile.load(MODELS_DIR / PROFILE_FILE)
    label = params.dataset.label
    return [
        triggers.new_labels_trigger(new_rows, params.loop),
        triggers.drift_trigger(events, version, profile, params.monitor),
        triggers.accuracy_trigger(
            events, version, params.decision.threshold, label.positive, params.monitor
        ),
        triggers.age_trigger(steps.model_age_days(), params.loop),
    ]


def commit_message(fired: list[triggers.Trigger]) -> str:
    names = ", ".join(t.name for t in fired) or "resumed"
    body = "\n".join(f"- {t.name}: {t.evidence}" for t in fired)
    return f"{steps.COMMIT_SUBJECT}: {names}\n\n{body}\n"


def run_iteration(
    params: Params, overrides: list[str], *, dry_run: bool = False, say: Say = print
) -> int:
    """One iteration; 0 when it completed (including "nothing to do"), 1 when a step failed.
    `overrides` (Hydra) are the ones `params` was composed with; the retrain uses them too."""
    with exclusive():
        try:
            return _iterate(params, overrides, dry_run, say)
        except steps.LoopStepError as exc:
            say(f"error: {exc}")
            audit("failed", error=str(exc))
            return 1


def _iterate(params: Params, overrides: list[str], dry_run: bool, say: Say) -> int:
    from tabml.loop import data_version, deploy
    from tabml.monitoring.events import read_events

    if deploy.canary_running(params):
        return deploy.decide(params, dry_run=dry_run, say=say)
    if deploy.retrain_not_deployed():
        say("resume: the last retrain commit was not gated and deployed yet")
        return 0 if dry_run else deploy.canary(params, say=say)

    resumed = steps.data_version_pending(params.dataset) or bool(
        steps.uncommitted_outputs(params.dataset)
    )
    fired: list[triggers.Trigger] = []
    if resumed:
        pending = json.loads(PENDING_FILE.read_text()) if PENDING_FILE.exists() else []
        fired = [triggers.Trigger(**t) for t in pending]
        say("resume: an interrupted retrain left a data version or outputs uncommitted")
    else:
        contract = params.dataset.contract()
        batches = Path(params.dataset.data_dir) / params.dataset.batches_dir
        # The log is read once: the data version and the drift and accuracy triggers share it.
        log_dir = steps.log_dir_of(params)
        events = list(read_events(log_dir)) if log_dir.is_dir() else []
        joined, _ = data_version.new_labelled_rows(log_dir, batches, events)
        for trigger in evaluate_triggers(params, events, len(joined.rows)):
            say(
                f"trigger {trigger.name}: {'FIRED' if trigger.fired else 'no'} ({trigger.evidence})"
            )
            if trigger.fired:
                fired.append(trigger)
        if not fired:
            say("nothing to do")
            return 0
        since = steps.hours_since_last_retrain()
        if since < params.loop.min_retrain_interval_hours:
            say(
                f"cooldown: the last retrain was {since:.2f} h ago (at most one per "
                f"{params.loop.min_retrain_interval_hours} h); not retraining"
            )
            return 0
        if dry_run:
            say(
                f"dry run: would write a data version of {len(joined.rows)} labelled row(s), "
                "retrain, commit, gate and put a passing model in canary"
            )
            return 0
        write_text_atomic(PENDING_FILE, json.dumps([asdict(t) for t in fired]))
        if joined.rows:
            batch = data_version.write_batch(joined.rows, contract, batches)
            if batch is not None:
                say(f"data version: {batch.rows} row(s) in {batch.path}")
                for problem in batch.rejected:
                    say(f"  left out: {problem}")
                audit(
                    "data_version",
                    batch=str(batch.path),
                    rows=batch.rows,
                    rejected=len(batch.rejected),
                )
    if dry_run:
        say("dry run: would retrain, commit, gate and canary the interrupted retrain")
        return 0
    steps.retrain(overrides, say)
    if steps.uncommitted_outputs(params.dataset):
        sha = steps.commit(commit_message(fired), params.dataset, params.loop.branch, say)
        audit("commit", commit=sha, triggers=[t.name for t in fired])
        if params.loop.push:
            steps.push(say)
    PENDING_FILE.unlink(missing_ok=True)
    return deploy.canary(params, say=say)
