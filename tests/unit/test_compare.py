"""`tabml-monitor compare` on synthetic prediction logs with known outcomes: exact counts, the
intervals against independent computations (SciPy's Wilson interval, scikit-learn's AUC, a
brute-force DeLong variance), and the promote / collect / reject rule."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from scipy.stats import binomtest
from sklearn.metrics import roc_auc_score
from tests.support.bundles import checkout

from tabml import monitor_cli
from tabml.bundle import describe_version, write_bundle
from tabml.config import CompareConfig, load_params
from tabml.lockfile import read_lock
from tabml.monitoring import compare as compare_module
from tabml.monitoring.intervals import delong_auc, newcombe_difference, wilson

REPO_ROOT = Path(__file__).resolve().parents[2]
PARAMS = load_params(REPO_ROOT / "params.yaml")
CONTRACT = PARAMS.dataset.contract()
POSITIVE, NEGATIVE = CONTRACT.label.positive, CONTRACT.label.negative
T0 = 1_700_000_000.0
CONFIG = CompareConfig(
    margin=0.02,
    confidence=0.95,
    min_labelled=1000,
    interval_level=0.95,
    score_quantiles=[0.05, 0.5, 0.95],
)


def prediction(version: str, request: str, index: int, p: float, label: int, **extra: Any):
    return {
        "type": "prediction",
        "ts": extra.get("ts", T0),
        "request_id": request,
        "index": index,
        "model_name": "adult",
        "model_version": version,
        "record": {"age": 39},
        "probability": p,
        "label": POSITIVE if label else NEGATIVE,
        "latency_ms": extra.get("latency_ms", 1.0),
    }


def feedback(request: str, index: int, label: int, ts: float) -> dict[str, Any]:
    label_text = POSITIVE if label else NEGATIVE
    return {
        "type": "feedback",
        "ts": ts,
        "request_id": request,
        "index": index,
        "label": label_text,
    }


def traffic(
    version: str, labelled: int, correct: int, *, seed: int, feedback_ts: float = T0 + 60
) -> list[dict[str, Any]]:
    """`labelled` single-record requests of which exactly `correct` were served the right
    label, each with its feedback; scores agree with the served label."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 2, labelled)
    right = rng.permutation(np.arange(labelled) < correct)
    events = []
    for i in range(labelled):
        served = int(truth[i]) if right[i] else 1 - int(truth[i])
        p = 0.5 + 0.5 * rng.random() if served else 0.5 * rng.random()
        request = f"{version}-{seed}-{i}"
        latency = float(rng.gamma(2.0, 1.5))
        events.append(prediction(version, request, 0, p, served, latency_ms=latency))
        events.append(feedback(request, 0, int(truth[i]), feedback_ts + i))
    return events


def write_log(log_dir: Path, events: list[dict[str, Any]], segments: int = 3) -> list[Path]:
    """Closed segment files as the service leaves them (plus an open one, never read)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for s, chunk in enumerate(np.array_split(np.arange(len(events)), segments)):
        path = log_dir / f"20240301T00000{s}Z-host-{s}.jsonl"
        path.write_text("".join(json.dumps(events[i]) + "\n" for i in chunk))
        paths.append(path)
    (log_dir / "20240302T000000Z-host-9.jsonl.open").write_text('{"type": "predict')
    return paths


def run(log_dir: Path, champion: str = "v1", challenger: str = "v2", config=CONFIG):
    codes = {NEGATIVE: 0, POSITIVE: 1}
    traffic_ = compare_module.read_traffic(log_dir, codes)
    return compare_module.compare(traffic_, champion, challenger, config, log_dir)


def by_version(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["version"]: v for v in result["versions"]}


# --------------------------------------------------------------------------------- decisions


def test_clearly_better_challenger_is_promoted(tmp_path: Path) -> None:
    write_log(tmp_path, traffic("v1", 1000, 850, seed=1) + traffic("v2", 1000, 880, seed=2))
    result = run(tmp_path)
    decision = result["decision"]
    assert decision["decision"] == "promote"
    horizon = decision["horizon"]
    assert (horizon["champion_accuracy"], horizon["challenger_accuracy"]) == (0.85, 0.88)
    # The one-sided 95 % Newcombe bound from SciPy's two-sided 90 % Wilson intervals.
    a = binomtest(880, 1000).proportion_ci(0.90, "wilson")
    b = binomtest(850, 1000).proportion_ci(0.90, "wilson")
    expected = 0.03 - math.hypot(0.88 - a.low, b.high - 0.85)
    assert horizon["lower_bound"] == pytest.approx(expected, abs=1e-12)
    assert horizon["lower_bound"] > -CONFIG.margin
    assert "-0.02" in decision["rule"] and "1000" in decision["rule"]


def test_clearly_worse_challenger_is_rejected(tmp_path: Path) -> None:
    write_log(tmp_path, traffic("v1", 1000, 860, seed=1) + traffic("v2", 1000, 800, seed=2))
    decision = run(tmp_path)["decision"]
    assert decision["decision"] == "reject"
    assert decision["horizon"]["difference"] == pytest.approx(-0.06)
    assert decision["horizon"]["lower_bound"] < -CONFIG.margin
    assert "may be worse by more than the margin" in decision["reason"]


def test_too_few_labels_keeps_collecting(tmp_path: Path) -> None:
    events = traffic("v1", 1200, 1000, seed=1) + traffic("v2", 999, 990, seed=2)
    events.append(prediction("v2", "unlabelled", 0, 0.9, 1))
    write_log(tmp_path, events)
    decision = run(tmp_path)["decision"]
    assert decision["decision"] == "collect"
    assert decision["labelled"] == {"champion": 1200, "challenger": 999}
    assert decision["reason"] == "fewer than 1000 labelled predictions: challenger 999"
    assert decision["horizon"] is None


def test_a_challenger_absent_from_the_log_means_collect(tmp_path: Path) -> None:
    write_log(tmp_path, traffic("v1", 1000, 850, seed=1))
    result = run(tmp_path, challenger="v7")
    assert result["decision"]["decision"] == "collect"
    assert result["missing_versions"] == ["v7"]
    assert "note: no prediction of v7 in the log" in compare_module.render_table(result)


def test_the_horizon_fixes_the_decision(tmp_path: Path) -> None:
    """Labels that come back after the horizon change the reported accuracy, not the decision."""
    events = traffic("v1", 1000, 850, seed=1) + traffic("v2", 1000, 880, seed=2)
    late = traffic("v2", 600, 0, seed=3, feedback_ts=T0 + 10_000)  # all wrong, labelled later
    write_log(tmp_path, events + late)
    result = run(tmp_path)
    challenger = by_version(result)["v2"]
    assert challenger["labelled"] == 1600
    assert challenger["accuracy"]["value"] == pytest.approx(880 / 1600)
    assert result["decision"]["decision"] == "promote"
    assert result["decision"]["horizon"]["challenger_accuracy"] == 0.88


# ------------------------------------------------------------------------- counts and numbers


def test_counts_are_exact(tmp_path: Path) -> None:
    events = traffic("v1", 10, 8, seed=1)
    # A batch of three records in one request, two of them labelled.
    events += [prediction("v1", "batch", i, 0.2 + 0.3 * i, int(i > 0)) for i in range(3)]
    events += [feedback("batch", 0, 0, T0 + 500), feedback("batch", 2, 0, T0 + 501)]
    events.append(feedback("batch", 2, 1, T0 + 502))  # a repeat: the first label counts
    events.append(feedback("nowhere", 0, 1, T0 + 503))  # no such prediction
    events.append(prediction("v1", "batch", 1, 0.5, 1))  # a retried record: counted once
    # The challenger in shadow: it scored the same batch; the same feedback labels it.
    events += [prediction("v2", "batch", i, 0.1, 0) for i in range(3)]
    events.append({"type": "heartbeat", "ts": T0})  # not the comparison's business
    write_log(tmp_path, events)
    result = run(tmp_path)
    champion, challenger = by_version(result)["v1"], by_version(result)["v2"]
    assert (champion["requests"], champion["predictions"]) == (11, 13)
    assert (champion["labelled"], champion["labelled_requests"]) == (12, 11)
    assert champion["accuracy"]["value"] == pytest.approx(
        (8 + 1) / 12
    )  # batch: one right, one wrong
    assert (challenger["requests"], challenger["predictions"], challenger["labelled"]) == (1, 3, 2)
    assert challenger["accuracy"]["value"] == 1.0
    assert result["feedback"] == {"events": 14, "duplicate": 1, "unmatched": 1}
    assert result["duplicate_predictions"] == 1
    assert [v["role"] for v in result["versions"]] == ["champion", "challenger"]


def test_intervals_match_independent_computations(tmp_path: Path) -> None:
    events = traffic("v1", 1500, 1290, seed=4)
    write_log(tmp_path, events)
    champion = by_version(run(tmp_path))["v1"]

    wilson_ci = binomtest(1290, 1500).proportion_ci(0.95, "wilson")
    assert champion["accuracy"]["low"] == pytest.approx(wilson_ci.low, abs=1e-12)
    assert champion["accuracy"]["high"] == pytest.approx(wilson_ci.high, abs=1e-12)

    predictions = [e for e in events if e["type"] == "prediction"]
    truth = [e["label"] == POSITIVE for e in events if e["type"] == "feedback"]
    scores = np.array([e["probability"] for e in predictions])
    y = np.array(truth, dtype=int)
    auc = champion["roc_auc"]
    assert auc["value"] == pytest.approx(roc_auc_score(y, scores), abs=1e-12)
    low, high = brute_force_delong(scores, y, 1.959963984540054)
    assert (auc["low"], auc["high"]) == (pytest.approx(low, abs=1e-12), pytest.approx(high))

    quantiles = champion["score"]["quantiles"]
    assert quantiles == {f"{q:g}": pytest.approx(np.quantile(scores, q)) for q in (0.05, 0.5, 0.95)}
    assert champion["score"]["mean"] == pytest.approx(scores.mean())
    latencies = np.array([e["latency_ms"] for e in predictions])
    assert champion["latency_ms"]["p50"] == pytest.approx(np.quantile(latencies, 0.5))
    assert champion["latency_ms"]["p99"] == pytest.approx(np.quantile(latencies, 0.99))


def brute_force_delong(scores: np.ndarray, labels: np.ndarray, z: float) -> tuple[float, float]:
    """DeLong's interval from the pairwise kernel, O(positives x negatives)."""
    x, y = scores[labels == 1], scores[labels == 0]
    kernel = (x[:, None] > y[None, :]) + 0.5 * (x[:, None] == y[None, :])
    v10, v01 = kernel.mean(axis=1), kernel.mean(axis=0)
    auc = kernel.mean()
    se = math.sqrt(v10.var(ddof=1) / x.size + v01.var(ddof=1) / y.size)
    return max(0.0, auc - z * se), min(1.0, auc + z * se)


def test_interval_edge_cases() -> None:
    assert wilson(0, 0, 1.96) is None
    none_right = wilson(0, 20, 1.96)
    assert none_right is not None and none_right.low == 0.0 and 0.1 < none_right.high < 0.2
    assert newcombe_difference(1, 2, 0, 0, 1.96) is None
    tied = delong_auc([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1], 1.96)
    assert tied is not None and tied.value == 0.5
    assert delong_auc([0.1, 0.9, 0.8], [0, 1, 1], 1.96) is None  # one negative: no variance


# ------------------------------------------------------------------------ the command line


def params_file(tmp_path: Path, **compare: Any) -> Path:
    raw = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    raw["compare"] |= compare
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def contract_bytes(tmp_path: Path) -> bytes:
    CONTRACT.save(tmp_path / "contract.json")
    return (tmp_path / "contract.json").read_bytes()


def test_command_with_a_bundle_writes_table_and_json(tmp_path: Path, capsys) -> None:
    log = tmp_path / "log"
    write_log(log, traffic("v1", 1000, 850, seed=1) + traffic("v2", 1000, 880, seed=2))
    contract = contract_bytes(tmp_path)
    versions = [
        describe_version(models, read_lock(models.parent / "dvc.lock"), registered_version=number)
        for number, models in (
            ("1", checkout(tmp_path / "a", "a", contract=contract)),
            ("2", checkout(tmp_path / "b", "b", contract=contract)),
        )
    ]
    bundle = tmp_path / "bundle"
    write_bundle(bundle, versions, champion="v1", challenger="v2")
    out = tmp_path / "out" / "compare.json"
    params = params_file(tmp_path, min_labelled=1000)

    argv = ["compare", "--log", str(log), "--bundle", str(bundle), "--params", str(params)]
    assert monitor_cli.main([*argv, "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "decision: promote challenger v2 (champion v1)" in table
    lines = table.splitlines()
    assert lines[0].split()[:5] == ["version", "role", "requests", "predictions", "labelled"]
    assert lines[1].split()[:5] == ["v1", "champion", "1,000", "1,000", "1,000"]
    assert "0.8500 [" in lines[1] and "0.8800 [" in lines[2]
    written = json.loads(out.read_text())
    assert written == json.loads(json.dumps(run(log, config=load_params(params).compare)))

    # --challenger overrides the bundle's; the default `compare` horizon is far away.
    assert compare_module.main([*argv[1:], "--challenger", "v1", "--champion", "v2"]) == 0
    assert "decision: reject challenger v1" in capsys.readouterr().out
    default = params_file(tmp_path)
    assert compare_module.main([*argv[1:-1], str(default)]) == 0
    assert "decision: collect" in capsys.readouterr().out


def write_lines(log: Path, *lines: str) -> Path:
    log.mkdir(exist_ok=True)
    segment = log / "20240301T000000Z-host-1.jsonl"
    segment.write_text("".join(line + "\n" for line in lines))
    return segment


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['{"type": "prediction", "ts": 1', ""], r"{segment}:1: not a JSON event"),
        (
            [json.dumps(prediction("v1", "r", 0, 0.2, 0)), json.dumps({"type": "prediction"})],
            r"{segment}:2: prediction event field 'ts' is None",
        ),
        (
            [json.dumps(prediction("v1", "r", 0, 0.2, 0) | {"latency_ms": "fast"})],
            r"{segment}:1: prediction event field 'latency_ms' is 'fast'",
        ),
        (
            [json.dumps(prediction("v1", "r", 0, 1.5, 0))],
            r"{segment}:1: prediction probability 1.5 is outside",
        ),
        (
            ["", json.dumps(feedback("r", 0, 1, T0) | {"label": "rich"})],
            r"{segment}:2: feedback label 'rich' is not one of",
        ),
    ],
)
def test_bad_lines_exit_2_naming_file_and_line(
    tmp_path: Path, capsys, lines: list[str], message: str
) -> None:
    segment = write_lines(tmp_path / "log", *lines)
    argv = ["--log", str(tmp_path / "log"), "--champion", "v1", "--challenger", "v2"]
    assert compare_module.main([*argv, "--contract", str(tmp_path / "c.json")]) == 2
    assert "contract" in capsys.readouterr().err  # the contract is checked first
    (tmp_path / "c.json").write_bytes(contract_bytes(tmp_path))
    params = ["--params", str(REPO_ROOT / "params.yaml")]
    assert compare_module.main([*argv, "--contract", str(tmp_path / "c.json"), *params]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message.format(segment=segment) in err


def test_unusable_arguments_exit_2(tmp_path: Path, capsys) -> None:
    params = ["--params", str(REPO_ROOT / "params.yaml")]
    missing = ["--log", str(tmp_path / "none"), "--champion", "v1", "--challenger", "v2"]
    contract = tmp_path / "contract.json"
    contract.write_bytes(contract_bytes(tmp_path))
    assert compare_module.main([*missing, "--contract", str(contract), *params]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert compare_module.main(["--log", str(tmp_path), *params]) == 2
    assert "--champion and --challenger" in capsys.readouterr().err
    v1 = describe_version(
        checkout(tmp_path / "a", "a", contract=contract.read_bytes()),
        read_lock(tmp_path / "a" / "dvc.lock"),
        registered_version="1",
    )
    write_bundle(tmp_path / "bundle", [v1], champion="v1")
    assert compare_module.main(["--log", str(tmp_path), "--bundle", str(tmp_path / "bundle")]) == 2
    assert "has no challenger" in capsys.readouterr().err
