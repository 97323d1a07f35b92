"""`tabml-loop simulate --out DIR`: a year of traffic in minutes, through the real loop.

In a scratch clone of this repository (`DIR/repo`; the user's checkout is left untouched, and it
gets its own DVC remote and MLflow store), it trains and exports the champion, starts a real
`tabml-serve` on loopback with the prediction log on, and then, step by simulated step (a week
each): sends that week's traffic (census records, see `tabml.loop.traffic`, with the documented
shift from `shift_step` on), sends the labels back through `/feedback` once the week's answers
are in, and runs `tabml-loop run` in the scratch repository, exactly as cron would. Once a model
has been promoted, one iteration is run with a deliberately bad parameter
(`model.num_leaves=2 train.num_boost_round=2`) to show that the gate rejects it.

It writes `DIR/timeline.json` (per step: simulated date, served versions, drift, realized
accuracy per version, triggers, decisions), `DIR/timeline.png` and `DIR/summary.json`.

One module of about 500 lines because it is one script, read top to bottom: the scratch
repository, the service, the weekly steps and the timeline they produce; its parts are used
nowhere else (the traffic itself is `tabml.loop.traffic`).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tabml.atomic import write_text_atomic
from tabml.layout import DATA_DIR
from tabml.loop.traffic import Labelled, TrafficSource, load_rows

START = datetime(2026, 1, 5, tzinfo=UTC)
#: The service closes a log segment at least this often; the loop reads closed segments only,
#: so each week waits this long (and a little) after its last request before the loop runs.
SEGMENT_SECONDS = 1.0
BAD_RETRAIN = ("model.num_leaves=2", "train.num_boost_round=2")


@dataclass(frozen=True)
class Plan:
    """How much traffic, when the shift comes, and the loop's settings for the simulation."""

    steps: int
    records_per_step: int
    batch: int
    shift_step: int
    shift_share: float
    users: int
    overrides: tuple[str, ...]

    @classmethod
    def full(cls) -> Plan:
        return cls(20, 2400, 40, 6, 0.5, 20_000, (*_LOOP_OVERRIDES, "compare.min_labelled=1500"))

    @classmethod
    def quick(cls) -> Plan:
        return cls(8, 1600, 40, 2, 0.5, 10_000, (*_LOOP_OVERRIDES, "compare.min_labelled=600"))


# Only drift, accuracy or age retrain here (new labels alone would retrain every week), at most
# once per 0.02 h of real time (a few simulated weeks); a third of the traffic goes to the
# challenger so the comparison's horizon is reached in two weeks. A model adapted to the new
# segment may give up up to a point of holdout ROC AUC (the segment's rule differs from the
# rest), so the simulation's gate allows 0.01 below the champion instead of 0.002.
_LOOP_OVERRIDES = (
    "loop.min_new_labels=1000000",
    "loop.min_retrain_interval_hours=0.02",
    "loop.route=canary:0.3",
    "loop.push=false",
    "gate.max_drop_from_champion=0.01",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run(args: list[str], cwd: Path, env: dict[str, str], log: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    with open(log, "a", encoding="utf-8") as out:
        out.write(f"$ {' '.join(args)}\n{result.stdout}{result.stderr}\n")
    return result


def scratch_repo(source: Path, out: Path, env: dict[str, str], log: Path) -> Path:
    """A clone of `source`'s HEAD with its data and DVC cache copied (nothing is downloaded or
    recomputed that the checkout already has), its own DVC remote and MLflow store."""
    repo = out / "repo"
    if repo.exists():
        shutil.rmtree(repo)
    for cmd in (
        ["git", "clone", "--quiet", str(source), str(repo)],
        ["git", "-C", str(repo), "config", "user.email", "tabml-loop@example.invalid"],
        ["git", "-C", str(repo), "config", "user.name", "tabml-loop simulation"],
    ):
        subprocess.run(cmd, check=True, capture_output=True)
    if (source / DATA_DIR).is_dir():
        shutil.copytree(source / DATA_DIR, repo / DATA_DIR)
    if (source / ".dvc" / "cache").is_dir():
        shutil.copytree(source / ".dvc" / "cache", repo / ".dvc" / "cache", dirs_exist_ok=True)
    dvc = [sys.executable, "-m", "dvc"]
    run(
        [*dvc, "remote", "add", "--local", "-f", "-d", "sim", str(out / "dvc-remote")],
        repo,
        env,
        log,
    )
    return repo


class Client:
    """Keep-alive HTTP to the service; counts every request that did not get a 2xx."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.failed = 0
        self.sent = 0

    def post(self, path: str, body: Any, headers: dict[str, str]) -> tuple[int, dict, Any]:
        payload = json.dumps(body).encode()
        for attempt in (1, 2):
            try:
                self.connection.request(
                    "POST", path, payload, {"Content-Type": "application/json", **headers}
                )
                response = self.connection.getresponse()
                data = json.loads(response.read() or b"null")
                break
            except (OSError, http.client.HTTPException):
                self.connection.close()
                self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
                if attempt == 2:
                    self.failed += 1
                    return 0, {}, None
        self.sent += 1
        if not 200 <= response.status < 300:
            self.failed += 1
        return response.status, dict(response.getheaders()), data


@dataclass
class StepResult:
    step: int
    date: str
    shift_share: float
    served: dict[str, int] = field(default_factory=dict)
    correct: dict[str, int] = field(default_factory=dict)
    shifted_correct: dict[str, list[int]] = field(default_factory=dict)
    drift: dict[str, float] = field(default_factory=dict)
    loop: list[str] = field(default_factory=list)

    def accuracy(self) -> dict[str, float]:
        return {v: self.correct[v] / n for v, n in self.served.items() if n}


def send_step(
    client: Client, source: TrafficSource, plan: Plan, step: int, share: float, contract: Any
) -> tuple[StepResult, list[dict]]:
    """One week of traffic, then its labels; returns what was served and the records sent."""
    result = StepResult(step, (START + timedelta(weeks=step)).date().isoformat(), share)
    sent: list[dict] = []
    rows = source.step(plan.records_per_step, share)
    feedback: list[dict] = []
    for start in range(0, len(rows), plan.batch):
        chunk: list[Labelled] = rows[start : start + plan.batch]
        request_id = f"s{step}-r{start // plan.batch}"
        user = f"user-{int(source.rng.integers(0, plan.users))}"
        status, _headers, body = client.post(
            "/predict",
            [row.record for row in chunk],
            {"X-Request-ID": request_id, "X-Routing-Key": user},
        )
        if status != 200:
            continue
        version = body["model_version"]
        result.served[version] = result.served.get(version, 0) + len(chunk)
        for index, (row, prediction) in enumerate(zip(chunk, body["predictions"], strict=True)):
            right = int(prediction["label"] == row.label)
            result.correct[version] = result.correct.get(version, 0) + right
            if row.shifted:
                result.shifted_correct.setdefault(version, [0, 0])
                result.shifted_correct[version][0] += right
                result.shifted_correct[version][1] += 1
            feedback.append({"request_id": request_id, "index": index, "label": row.label})
            sent.append({"record": row.record, "label": row.label, "shifted": row.shifted})
    for start in range(0, len(feedback), 500):
        client.post("/feedback", feedback[start : start + 500], {})
    return result, sent


_PSI = re.compile(r"^tabml_feature_psi\{(?P<labels>[^}]*)\} (?P<value>\S+)$", re.M)


def scrape_drift(port: int) -> dict[str, float]:
    """The service's live feature PSI (largest per feature over the served versions)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", "/metrics")
    text = connection.getresponse().read().decode()
    drift: dict[str, float] = {}
    for match in _PSI.finditer(text):
        feature = re.search(r'feature="([^"]+)"', match["labels"])
        value = float(match["value"])
        if feature and value == value:
            drift[feature[1]] = max(drift.get(feature[1], 0.0), value)
    return drift


@dataclass
class Scenario:
    """A scratch clone with its champion served by a real `tabml-serve` on loopback."""

    repo: Path
    out: Path
    env: dict[str, str]
    port: int
    overrides: list[str]
    client: Client
    source: TrafficSource
    contract: Any
    service: subprocess.Popen

    def loop_command(self, *extra: str) -> list[str]:
        return [sys.executable, "-m", "tabml.loop.cli", "run", *self.overrides, *extra]

    def loop(self, *extra: str) -> list[str]:
        """One `tabml-loop run` in the scratch repository, as cron would start it."""
        result = run(self.loop_command(*extra), self.repo, self.env, self.out / "loop.log")
        lines = [line for line in result.stdout.splitlines() if line.strip()]
        if result.returncode != 0:
            lines.append(f"exit {result.returncode}: {result.stderr.strip()[-500:]}")
        return lines


@contextmanager
def scenario(checkout: Path, out: Path, plan: Plan, seed: int) -> Iterator[Scenario]:
    """Clone, train and export the champion, and serve it until the block ends."""
    from tabml.config import load_params

    out.mkdir(parents=True, exist_ok=True)
    log = out / "loop.log"
    log.write_text("")
    base_env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env = base_env | {"TABML_ADMIN_TOKEN": secrets.token_hex(16), "DVC_NO_ANALYTICS": "1"}
    repo = scratch_repo(checkout, out, env, log)
    env["PYTHONPATH"] = str(repo / "src")
    python = sys.executable
    port = free_port()
    overrides = [
        *plan.overrides,
        f"loop.reload_url=http://127.0.0.1:{port}",
        "loop.bundle_dir=bundle",
        "loop.log_dir=predictions",
    ]
    first = run([python, "src/train.py", "--no-push"], repo, env, log)
    if first.returncode != 0:
        raise SystemExit(f"the scratch repository did not train:\n{first.stderr}")
    exported = run(
        [python, "-m", "tabml.registry_cli", "export", "--alias", "champion", "--out", "bundle"],
        repo,
        env,
        log,
    )
    if exported.returncode != 0:
        raise SystemExit(f"exporting the champion failed:\n{exported.stderr}")
    params = load_params(repo / "params.yaml")
    contract = params.dataset.contract()
    rows = load_rows(repo / DATA_DIR / params.dataset.files["train"].name, contract)
    serve_env = env | {
        "TABML_PREDICTION_LOG_DIR": str(repo / "predictions"),
        "TABML_PREDICTION_LOG_SEGMENT_SECONDS": str(SEGMENT_SECONDS),
        "TABML_ROUTE": "canary:0.3",
    }
    with open(out / "serve.log", "wb") as serve_log:
        service = subprocess.Popen(
            [python, "-m", "tabml.serving.cli", "--port", str(port), "--bundle", "bundle"],
            cwd=repo,
            env=serve_env,
            stdout=serve_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            _wait_ready(port, service)
            yield Scenario(
                repo,
                out,
                env,
                port,
                overrides,
                Client(port),
                TrafficSource(rows, contract, seed),
                contract,
                service,
            )
        finally:
            if service.poll() is None:
                os.killpg(service.pid, signal.SIGTERM)
                service.wait(timeout=30)


def simulate(checkout: Path, out: Path, plan: Plan, seed: int) -> int:
    started = time.monotonic()
    with scenario(checkout, out, plan, seed) as world:
        timeline = _run_steps(
            world.client, world.source, plan, world.port, world.loop, world.contract
        )
        failed, sent = world.client.failed, world.client.sent
    summary = summarize(timeline, plan, failed, sent, time.monotonic() - started)
    write_text_atomic(out / "timeline.json", json.dumps(timeline, indent=1) + "\n")
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    plot(timeline, plan, out / "timeline.png")
    print(json.dumps(summary, indent=2))
    return 0 if summary["failed_requests"] == 0 else 1


def _wait_ready(port: int, service: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.poll() is not None:
            raise SystemExit(f"tabml-serve exited {service.returncode} (see serve.log)")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/ready")
            if connection.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.3)
    raise SystemExit("tabml-serve did not become ready (see serve.log)")


def _run_steps(client, source, plan, port, loop, contract) -> list[dict]:
    timeline: list[dict] = []
    promoted_once = False
    bad_injected = False
    for step in range(plan.steps):
        share = plan.shift_share if step >= plan.shift_step else 0.0
        result, _ = send_step(client, source, plan, step, share, contract)
        time.sleep(SEGMENT_SECONDS + 1.0)
        result.drift = scrape_drift(port)
        if promoted_once and not bad_injected:
            result.loop = loop(
                *BAD_RETRAIN,
                "loop.max_model_age_days=0.000001",
                "loop.min_retrain_interval_hours=0",
            )
            bad_injected = True
        else:
            result.loop = loop()
        promoted_once = promoted_once or any(line.startswith("promote:") for line in result.loop)
        entry = {
            "step": step,
            "date": result.date,
            "shift_share": share,
            "served": result.served,
            "realized_accuracy": result.accuracy(),
            "shifted_accuracy": {v: c / n for v, (c, n) in result.shifted_correct.items() if n},
            "shifted_served": {v: n for v, (_, n) in result.shifted_correct.items()},
            "drift": result.drift,
            "loop": result.loop,
        }
        timeline.append(entry)
        print(
            f"step {step} ({result.date}, shift {share:.0%}): served {result.served}, "
            f"accuracy {json.dumps({k: round(v, 4) for k, v in result.accuracy().items()})}"
        )
        for line in result.loop:
            print(f"  {line}")
    return timeline


def _said(entry: dict, text: str) -> bool:
    return any(text in line for line in entry["loop"])


def _overall(entry: dict) -> float:
    served = sum(entry["served"].values())
    return sum(entry["realized_accuracy"][v] * n for v, n in entry["served"].items()) / served


def _retrains(timeline: list[dict]) -> tuple[list[dict], list[str], list[str]]:
    """Each retrain (its trigger, version, gate decision), and the promoted / rejected versions,
    read from what `tabml-loop run` printed."""
    retrains: list[dict] = []
    promoted: list[str] = []
    rejected: list[str] = []
    for entry in timeline:
        fired = [
            line.split()[1].rstrip(":")
            for line in entry["loop"]
            if line.startswith("trigger ") and "FIRED" in line
        ]
        for line in entry["loop"]:
            if line.startswith("commit:"):
                retrains.append(
                    {"step": entry["step"], "trigger": fired, "commit": line.split()[1]}
                )
            elif (m := re.match(r"canary: \S+ v(\d+)", line)) and retrains:
                retrains[-1] |= {"version": f"v{m[1]}", "gate": "passed"}
            elif m := re.match(r"gate: \S+ v(\d+) rejected", line):
                rejected.append(f"v{m[1]}")
                if retrains:
                    retrains[-1] |= {"version": f"v{m[1]}", "gate": "failed"}
            elif m := re.match(r"promote: \S+ v(\d+)", line):
                promoted.append(f"v{m[1]}")
            elif m := re.match(r"roll back: \S+ v(\d+)", line):
                rejected.append(f"v{m[1]}")
    return retrains, promoted, rejected


def _shifted_accuracy(timeline: list[dict], version: str) -> float | None:
    """A version's accuracy on the shifted records it answered."""
    right = total = 0
    for entry in timeline:
        share = entry["shifted_accuracy"].get(version)
        if share is not None:
            n = entry["shifted_served"][version]
            right, total = right + share * n, total + n
    return round(right / total, 4) if total else None


def summarize(timeline: list[dict], plan: Plan, failed: int, sent: int, seconds: float) -> dict:
    retrains, promoted, rejected = _retrains(timeline)
    drifted = [
        e["step"] for e in timeline if any("trigger drift: FIRED" in line for line in e["loop"])
    ]
    promoted_at = next(
        (e["step"] for e in timeline if any(line.startswith("promote:") for line in e["loop"])),
        None,
    )
    shifted = [e for e in timeline if e["shift_share"] > 0]
    initial = max(timeline[0]["served"], key=timeline[0]["served"].get)
    final = max(timeline[-1]["served"], key=timeline[-1]["served"].get)
    return {
        "initial_version": initial,
        "final_version": final,
        "shift_step": plan.shift_step,
        "drift_detected_at_step": drifted[0] if drifted else None,
        "retrains": retrains,
        "promoted_versions": promoted,
        "rejected_versions": rejected,
        "promoted_at_step": promoted_at,
        "failed_requests": failed,
        "requests": sent,
        "realized_accuracy_before_shift": _mean(
            [_overall(e) for e in timeline if e["shift_share"] == 0]
        ),
        # During the shift: the weeks the old champion alone answered (before any canary).
        "realized_accuracy_during_shift": _mean(
            [_overall(e) for e in shifted if set(e["served"]) == {initial}]
        ),
        "realized_accuracy_after_promotion": _mean(
            [_overall(e) for e in shifted if promoted_at is not None and e["step"] > promoted_at]
        ),
        "old_champion_accuracy_on_shifted_traffic": _shifted_accuracy(shifted, initial),
        "new_champion_accuracy_on_shifted_traffic": _shifted_accuracy(shifted, final),
        "seconds": round(seconds, 1),
    }


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


def plot(timeline: list[dict], plan: Plan, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [e["step"] for e in timeline]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    features = sorted({f for e in timeline for f in e["drift"]})
    for feature in features:
        values = [e["drift"].get(feature, float("nan")) for e in timeline]
        if max((v for v in values if v == v), default=0) >= 0.1:
            top.plot(steps, values, label=feature)
    top.axhline(0.25, linestyle=":", color="grey")
    top.set(ylabel="feature PSI (live window)", title="Drift and realized accuracy by week")
    top.legend(fontsize="small")
    versions = sorted({v for e in timeline for v in e["served"]})
    for version in versions:
        bottom.plot(
            steps,
            [e["realized_accuracy"].get(version, float("nan")) for e in timeline],
            marker="o",
            label=f"served by {version}",
        )
    bottom.set(xlabel="simulated week", ylabel="realized accuracy")
    for ax in (top, bottom):
        ax.axvline(plan.shift_step - 0.5, color="red", alpha=0.4)
        for entry in timeline:
            if any(line.startswith(("promote:", "canary:")) for line in entry["loop"]):
                ax.axvline(entry["step"] + 0.5, color="green", alpha=0.3, linestyle="--")
    bottom.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
