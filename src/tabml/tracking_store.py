"""The MLflow tracking store without importing MLflow: where runs go, whether it answers, and
whether it already holds a model.

MLflow costs about a second to import and another to connect, so everything a no-op run of
`python src/train.py` needs is answered here: the URI, a reachability check before training, and
"is this model (model md5 + data md5) already logged?", read straight from the SQLite file or
asked through the tracking server's public REST API. A positive answer is exact (a finished,
active run in the configured experiment carrying both tags); anything uncertain (an older store
layout, an error) answers "unknown", and the caller falls back to MLflow itself.
"""

from __future__ import annotations

import json
import os
import sqlite3
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from tabml.workspace import repo_root

DEFAULT_STORE = "mlflow.db"
# Tags on every run. TAG_MODEL_MD5 + TAG_DATA_MD5 identify a model: one finished run per pair.
TAG_MODEL_MD5 = "model_md5"
TAG_DATA_MD5 = "data_md5"
TAG_REGISTERED_MODEL = "registered_model"


class TrackingUnavailableError(RuntimeError):
    """The configured tracking server does not answer."""


def resolve_tracking_uri(configured: str | None, root: Path | None = None) -> str:
    """MLFLOW_TRACKING_URI, else `tracking.uri` from params, else sqlite:///<repo root>/mlflow.db.

    A relative SQLite path is made absolute against the repository root, so every workspace
    (main, queued, temp) writes to one store.
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI") or configured
    if not uri:
        return f"sqlite:///{(root or repo_root()) / DEFAULT_STORE}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{(root or repo_root()) / uri.removeprefix('sqlite:///')}"
    return uri


def is_server(uri: str) -> bool:
    return urlsplit(uri).scheme in ("http", "https")


def check_reachable(uri: str, *, require_server: bool = False, timeout: float = 5.0) -> None:
    """Fail fast, without importing MLflow, when a tracking server does not answer.

    Only http(s) URIs are checked (`GET <uri>/health`, which `mlflow server` answers). Any HTTP
    answer below 500 counts as reachable: authentication is MLflow's business, not this check's.
    With `require_server` (the production profile), a local store is refused outright.
    """
    if not is_server(uri):
        if require_server:
            raise TrackingUnavailableError(
                f"this profile needs a shared MLflow tracking server (tracking.require_server), "
                f"but runs would go to {uri}. Set MLFLOW_TRACKING_URI=http(s)://<server>."
            )
        return
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout):
            return
    except urllib.error.HTTPError as exc:
        if exc.code < 500:
            return
        problem = f"answers {url} with HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        problem = f"is unreachable ({getattr(exc, 'reason', exc)})"
    raise TrackingUnavailableError(
        f"MLflow tracking server {uri} {problem}. Start it, or point MLFLOW_TRACKING_URI "
        f"(or tracking.uri in conf/tracking/) at a reachable server; unset both to log to "
        f"the local {DEFAULT_STORE}."
    )


def identity_tags(model_md5: str, data_md5: str, registered_model: str) -> dict[str, str]:
    """The tags that identify a tracked model: one finished run per model, data and name."""
    return {
        TAG_MODEL_MD5: model_md5,
        TAG_DATA_MD5: data_md5,
        TAG_REGISTERED_MODEL: registered_model,
    }


def _sqlite_lookup(path: Path, experiment: str, tags: dict[str, str]) -> str | None:
    if not path.is_file():
        return None
    joins = "".join(
        f" JOIN tags t{i} ON t{i}.run_uuid = r.run_uuid AND t{i}.key = ? AND t{i}.value = ?"
        for i in range(len(tags))
    )
    query = (
        "SELECT r.run_uuid FROM runs r JOIN experiments e ON e.experiment_id = r.experiment_id"
        f"{joins} WHERE e.name = ? AND e.lifecycle_stage = 'active' AND r.status = 'FINISHED'"
        " AND r.lifecycle_stage = 'active' ORDER BY r.start_time LIMIT 1"
    )
    values = [v for pair in tags.items() for v in pair] + [experiment]
    try:
        with sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=5) as db:
            row = db.execute(query, values).fetchone()
    except sqlite3.Error:
        return None
    return str(row[0]) if row else None


def _auth_headers() -> dict[str, str]:
    """MLflow's own client credentials, so a secured server answers this lookup too."""
    if os.environ.get("MLFLOW_TRACKING_TOKEN"):
        return {"Authorization": f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}"}
    user, password = (
        os.environ.get("MLFLOW_TRACKING_USERNAME"),
        os.environ.get("MLFLOW_TRACKING_PASSWORD"),
    )
    if user and password:
        import base64

        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        return {"Authorization": f"Basic {token}"}
    return {}


def _rest(uri: str, endpoint: str, payload: dict | None, query: dict | None = None) -> dict:
    url = f"{uri.rstrip('/')}/api/2.0/mlflow/{endpoint}"
    if query:
        url += "?" + urllib.parse.urlencode(query)
    data = None if payload is None else json.dumps(payload).encode()
    headers = {"Content-Type": "application/json", **_auth_headers()}
    request = urllib.request.Request(url, data=data, headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def tag_filter(tags: dict[str, str]) -> str:
    """An MLflow search filter for runs with these tags that finished."""
    return " and ".join(
        [
            *(f"tags.{key} = '{value}'" for key, value in tags.items()),
            "attributes.status = 'FINISHED'",
        ]
    )


def _server_lookup(uri: str, experiment: str, tags: dict[str, str]) -> str | None:
    try:
        found = _rest(uri, "experiments/get-by-name", None, {"experiment_name": experiment})
        experiment_id = found["experiment"]["experiment_id"]
        runs = _rest(
            uri,
            "runs/search",
            {
                "experiment_ids": [experiment_id],
                "filter": tag_filter(tags),
                "run_view_type": "ACTIVE_ONLY",
                "max_results": 1,
            },
        ).get("runs", [])
    except (urllib.error.URLError, OSError, ValueError, KeyError):
        return None
    return str(runs[0]["info"]["run_id"]) if runs else None


def find_run_without_mlflow(uri: str, experiment: str, tags: dict[str, str]) -> str | None:
    """The finished run carrying `tags` (see `identity_tags`), if the store says so cheaply.

    None means "not found, or cannot tell": only a run id is conclusive.
    """
    if uri.startswith("sqlite:///"):
        return _sqlite_lookup(Path(uri.removeprefix("sqlite:///")), experiment, tags)
    if is_server(uri):
        return _server_lookup(uri, experiment, tags)
    return None
