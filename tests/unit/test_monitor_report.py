"""`tabml-monitor report`: real segment files in, summary numbers checked against independent
computations (PSI from numpy on the same rows, scikit-learn metrics on the joined rows).

Records are rows of the real Adult training file; the reference profile is built from other
rows of it with `build_profile` and saved as the pipeline would save it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, roc_auc_score

from tabml import monitor_cli
from tabml.config import load_params
from tabml.monitoring import ReferenceProfile, build_profile, verdict
from tabml.monitoring import report as report_module

REPO_ROOT = Path(__file__).resolve().parents[2]
PARAMS_FILE = REPO_ROOT / "params.yaml"
PARAMS = load_params(PARAMS_FILE)
CONTRACT = PARAMS.dataset.contract()
CONFIG = PARAMS.monitor
THRESHOLD = PARAMS.decision.threshold
ADULT = REPO_ROOT / "data" / "adult.data"
DAY0 = datetime(2024, 3, 1, tzinfo=UTC).timestamp()
PROFILE_ROWS = 8000
NAME = "adult-income"

Row = dict[str, Any]


def score_of(row: Row, noise: float) -> float:
    """A plausible, deterministic model score: education and age raise it."""
    z = 0.45 * (row["education_num"] - 10) + 0.05 * (row["age"] - 38) + noise
    return 1 / (1 + math.exp(-z))


@pytest.fixture(scope="module")
def adult() -> list[Row]:
    if not ADULT.exists():
        pytest.skip(f"{ADULT} is missing: `python src/train.py` fetches it")
    from tabml.data import read_raw
    from tabml.validation import validate_raw

    frame = validate_raw(read_raw(ADULT, CONTRACT, skip_rows=0), CONTRACT, ADULT.name)
    rows = frame.to_dict("records")
    noise = np.random.default_rng(0).normal(0, 1, len(rows))
    for row, n in zip(rows, noise, strict=True):
        for name, value in row.items():
            if isinstance(value, float) and math.isnan(value):
                row[name] = None
        row["score"] = score_of(row, float(n))
    return rows


@pytest.fixture(scope="module")
def profile_file(adult: list[Row], tmp_path_factory: pytest.TempPathFactory) -> Path:
    rows = adult[:PROFILE_ROWS]
    columns = {spec.name: [r[spec.name] for r in rows] for spec in CONTRACT.columns}
    profile = build_profile(columns, CONTRACT, np.array([r["score"] for r in rows]), CONFIG)
    path = tmp_path_factory.mktemp("models") / "reference_profile.json"
    profile.save(path)
    contract = path.parent / "contract.json"
    CONTRACT.save(contract)
    return path


def request_record(row: Row, drop_missing: bool) -> Row:
    """The validated raw input as logged: contract columns, absent nullable ones left out."""
    record = {spec.name: row[spec.name] for spec in CONTRACT.columns}
    if drop_missing:
        record = {k: v for k, v in record.items() if v is not None}
    return record


def prediction(row: Row, ts: float, request_id: str, index: int, version: str) -> Row:
    return {
        "type": "prediction",
        "ts": ts,
        "request_id": request_id,
        "index": index,
        "model_name": NAME,
        "model_version": version,
        "record": request_record(row, drop_missing=index % 2 == 0),
        "probability": row["score"],
        "label": CONTRACT.label.positive if row["score"] >= THRESHOLD else CONTRACT.label.negative,
        "latency_ms": 0.4,
    }


def feedback(request_id: str, index: int, label: str, ts: float) -> Row:
    return {"type": "feedback", "ts": ts, "request_id": request_id, "index": index, "label": label}


def write_segment(path: Path, events: Sequence[Row | str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [e if isinstance(e, str) else json.dumps(e) for e in events]
    path.write_text("\n".join(lines) + "\n")
    return path


class Log:
    """A realistic log: two versions (the challenger sees older people), three UTC days,
    batched requests, feedback for most predictions (some repeated, some for no prediction)."""

    def __init__(self, adult: list[Row]) -> None:
        rng = np.random.default_rng(7)
        pool = adult[PROFILE_ROWS : PROFILE_ROWS + 4000]
        champion = pool[:2400]
        challenger = [r for r in pool[2400:] if r["age"] > 45][:500]
        self.predictions: list[Row] = []
        for version, rows in (("1", champion), ("2", challenger)):
            position = 0
            while position < len(rows):
                size = int(rng.integers(1, 6))
                request_id = f"req-{version}-{position}"
                for index, row in enumerate(rows[position : position + size]):
                    ts = DAY0 + 3 * 86_400 * (position + index) / len(rows)
                    self.predictions.append(prediction(row, ts, request_id, index, version))
                position += size
        self.truth = {
            (p["request_id"], p["index"]): r["income"]
            for p, r in zip(self.predictions, [*champion, *challenger], strict=True)
        }
        keys = list(self.truth)
        labelled = [keys[i] for i in sorted(rng.choice(len(keys), 1800, replace=False))]
        self.feedback = [feedback(k[0], k[1], self.truth[k], DAY0 + 4 * 86_400) for k in labelled]
        flipped = {CONTRACT.label.positive: CONTRACT.label.negative}
        flipped[CONTRACT.label.negative] = CONTRACT.label.positive
        # repeats (half with the other label: the first label must win) ...
        self.repeats = [
            feedback(f["request_id"], f["index"], flipped[f["label"]] if i % 2 else f["label"], 0)
            for i, f in enumerate(self.feedback[:40])
        ]
        # ... and labels for predictions this log never saw
        self.orphans = [feedback(f"gone-{i}", 0, CONTRACT.label.positive, 0) for i in range(25)]

    def write(self, log_dir: Path) -> None:
        half = len(self.predictions) // 2
        # The feedback-only segment sorts first: labels may be read before their predictions.
        write_segment(log_dir / "a" / "20240301T000000Z-web2-7.jsonl", [*self.feedback[:300]])
        write_segment(
            log_dir / "20240301T000001Z-web1-9.jsonl",
            [*self.predictions[:half], "", {"type": "heartbeat", "ts": DAY0}],
        )
        write_segment(
            log_dir / "20240302T000000Z-web1-9.jsonl",
            [*self.predictions[half:], *self.feedback[300:], *self.repeats, *self.orphans],
        )
        # still being written: never read, even though it is not valid JSON yet
        (log_dir / "20240305T000000Z-web1-9.jsonl.open").write_text('{"type": "predic')


def run(log_dir: Path, out: Path, profile_file: Path, *extra: str) -> int:
    return monitor_cli.main(
        [
            "report",
            "--log",
            str(log_dir),
            "--out",
            str(out),
            "--profile",
            str(profile_file),
            "--contract",
            str(profile_file.parent / "contract.json"),
            "--params",
            str(PARAMS_FILE),
            *extra,
        ]
    )


def utc_day(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).date().isoformat()


def scratch_bin(histogram_raw: dict[str, Any], value: Any) -> int:
    """Bin a value from the profile's JSON, written out from the definitions."""
    if histogram_raw["kind"] == "numeric":
        edges = histogram_raw["edges"]
        if value is None:
            return len(edges) + 1
        return sum(1 for e in edges if e < value)  # right-closed: v <= edge stays below it
    levels = histogram_raw["levels"]
    if value is None:
        return len(levels) + 1
    return levels.index(value) if value in levels else len(levels)


def scratch_psi(histogram_raw: dict[str, Any], values: Sequence[Any]) -> float:
    expected = np.array(histogram_raw["fractions"])
    counts = np.zeros(expected.size)
    for value in values:
        counts[scratch_bin(histogram_raw, value)] += 1
    e = np.maximum(expected, CONFIG.epsilon)
    a = np.maximum(counts / counts.sum(), CONFIG.epsilon)
    return float(np.sum((a - e) * np.log(a / e)))


@pytest.fixture(scope="module")
def log(adult: list[Row]) -> Log:
    return Log(adult)


@pytest.fixture
def summary(
    log: Log, profile_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, Any]:
    log.write(tmp_path / "log")
    # Flush binned rows every 100 predictions, so the report crosses many chunk boundaries.
    monkeypatch.setattr(report_module, "_CHUNK", 100)
    assert run(tmp_path / "log", tmp_path / "out", profile_file) == 0
    return json.loads((tmp_path / "out" / "summary.json").read_text())


def test_drift_matches_numpy_on_the_same_rows(
    summary: dict[str, Any], log: Log, profile_file: Path
) -> None:
    raw = json.loads(profile_file.read_text())
    histograms = {f["name"]: f for f in raw["features"]}
    by_version = {m["model_version"]: m for m in summary["models"]}
    assert [(m["model_name"], m["model_version"]) for m in summary["models"]] == [
        (NAME, "1"),
        (NAME, "2"),
    ]
    for version, model in by_version.items():
        logged = [p for p in log.predictions if p["model_version"] == version]
        assert model["records"] == len(logged)
        assert [f["name"] for f in model["features"]] == CONTRACT.feature_names
        for entry in model["features"]:
            values = [p["record"].get(entry["name"]) for p in logged]
            expected = scratch_psi(histograms[entry["name"]], values)
            assert entry["psi"] == pytest.approx(expected, rel=1e-12, abs=1e-15)
            assert entry["verdict"] == verdict(expected, CONFIG)
            assert sum(b["current"] for b in entry["bins"]) == len(logged)
        score_psi = scratch_psi(raw["score"], [p["probability"] for p in logged])
        assert model["score"]["psi"] == pytest.approx(score_psi, rel=1e-12)
        for day in model["by_day"]:
            on_day = [p for p in logged if utc_day(p["ts"]) == day["day"]]
            for name, entry in day["drift"]["features"].items():
                values = [p["record"].get(name) for p in on_day]
                expected = scratch_psi(histograms[name], values)
                assert entry["psi"] == pytest.approx(expected, rel=1e-12, abs=1e-15)
                assert entry["verdict"] == verdict(expected, CONFIG)
            score_psi = scratch_psi(raw["score"], [p["probability"] for p in on_day])
            assert day["drift"]["score"]["psi"] == pytest.approx(score_psi, rel=1e-12)
    # the challenger only saw people over 45: age has shifted, the champion's traffic has not
    age = {v: next(f for f in m["features"] if f["name"] == "age") for v, m in by_version.items()}
    assert age["2"]["verdict"] == "significant"
    assert age["1"]["verdict"] == "stable"


def test_realized_metrics_match_scikit_learn_overall_and_by_day(
    summary: dict[str, Any], log: Log
) -> None:
    first_label: dict[tuple[str, int], str] = {}
    for f in [*log.feedback, *log.repeats]:
        first_label.setdefault((f["request_id"], f["index"]), f["label"])
    for model in summary["models"]:
        joined = [
            (p, first_label[(p["request_id"], p["index"])])
            for p in log.predictions
            if p["model_version"] == model["model_version"]
            and (p["request_id"], p["index"]) in first_label
        ]
        assert model["labelled"] == model["realized"]["labelled"] == len(joined)
        days = sorted(
            {
                utc_day(p["ts"])
                for p in log.predictions
                if p["model_version"] == model["model_version"]
            }
        )
        assert [d["day"] for d in model["by_day"]] == days
        groups = [("all", joined, model["realized"])] + [
            (
                day,
                [(p, y) for p, y in joined if utc_day(p["ts"]) == day],
                entry,
            )
            for day, entry in zip(days, model["by_day"], strict=True)
        ]
        for _, rows, reported in groups:
            y = [int(label == CONTRACT.label.positive) for _, label in rows]
            s = [p["probability"] for p, _ in rows]
            assert reported["labelled"] == len(rows)
            assert reported["accuracy"] == pytest.approx(
                accuracy_score(y, [int(v >= THRESHOLD) for v in s]), rel=1e-12
            )
            assert reported["roc_auc"] == pytest.approx(roc_auc_score(y, s), rel=1e-12)
        per_day_records = [
            sum(
                1
                for p in log.predictions
                if p["model_version"] == model["model_version"] and utc_day(p["ts"]) == d["day"]
            )
            for d in model["by_day"]
        ]
        assert [d["records"] for d in model["by_day"]] == per_day_records
        assert sum(per_day_records) == model["records"]


def test_feedback_is_joined_once_and_the_rest_counted(summary: dict[str, Any], log: Log) -> None:
    counts = summary["feedback"]
    assert counts == {
        "events": len(log.feedback) + len(log.repeats) + len(log.orphans),
        "matched": len(log.feedback),
        "duplicate": len(log.repeats),
        "unmatched": len(log.orphans),
    }
    assert sum(m["labelled"] for m in summary["models"]) == len(log.feedback)
    assert summary["duplicate_predictions"] == 0
    assert summary["log"] == {
        "dir": summary["log"]["dir"],
        "segments": 3,
        "predictions": len(log.predictions),
    }
    times = [p["ts"] for p in log.predictions]
    assert summary["time_range"] == {
        "first": datetime.fromtimestamp(min(times), UTC).isoformat(timespec="seconds"),
        "last": datetime.fromtimestamp(max(times), UTC).isoformat(timespec="seconds"),
    }


def test_html_report_is_self_contained_and_names_every_feature(
    summary: dict[str, Any], tmp_path: Path
) -> None:
    html = (tmp_path / "out" / "report.html").read_text()
    for name in CONTRACT.feature_names:
        assert f"<td>{name}</td>" in html
    assert "significant" in html and "version 2" in html
    assert "<script" not in html and 'src="http' not in html and "<link" not in html


def test_a_repeated_prediction_key_counts_for_drift_and_joins_once(
    adult: list[Row], profile_file: Path, tmp_path: Path
) -> None:
    row = adult[PROFILE_ROWS]
    first, again = prediction(row, DAY0, "r", 0, "1"), prediction(row, DAY0 + 1, "r", 0, "1")
    again["probability"] = 0.99
    write_segment(
        tmp_path / "log" / "s.jsonl",
        [first, again, feedback("r", 0, CONTRACT.label.negative, DAY0)],
    )
    assert run(tmp_path / "log", tmp_path / "out", profile_file) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["duplicate_predictions"] == 1
    (model,) = summary["models"]
    assert model["records"] == 2 and model["labelled"] == 1
    # the label joined the first prediction (score below the threshold: correct)
    assert model["realized"]["accuracy"] == float(row["score"] < THRESHOLD)


def test_empty_log_reports_no_predictions(profile_file: Path, tmp_path: Path) -> None:
    write_segment(tmp_path / "log" / "s.jsonl", [feedback("x", 0, CONTRACT.label.positive, 0)])
    assert run(tmp_path / "log", tmp_path / "out", profile_file) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["no_predictions"] is True
    assert summary["models"] == [] and summary["time_range"] is None
    assert summary["feedback"]["unmatched"] == 1
    assert "No predictions" in (tmp_path / "out" / "report.html").read_text()


@pytest.mark.parametrize(
    ("line", "complaint"),
    [
        ('{"type": "prediction", "ts": 1', "not a JSON event"),
        ("[1, 2]", "must be a JSON object"),
        ('{"type": "prediction", "ts": 1, "request_id": "r", "index": 0}', "'model_name'"),
        ('{"type": "feedback", "ts": 1, "request_id": "r", "index": 0, "label": "yes"}', "'yes'"),
        (
            '{"type": "feedback", "ts": 1, "request_id": "r", "index": "0", "label": ">50K"}',
            "index",
        ),
    ],
)
def test_a_bad_line_exits_2_naming_file_and_line(
    log: Log,
    profile_file: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    line: str,
    complaint: str,
) -> None:
    segment = write_segment(tmp_path / "log" / "s.jsonl", [*log.predictions[:3], "", line])
    assert run(tmp_path / "log", tmp_path / "out", profile_file) == 2
    err = capsys.readouterr().err
    assert f"{segment}:5:" in err and complaint in err
    assert not (tmp_path / "out").exists()


def test_missing_log_dir_or_no_closed_segment_exits_2(
    profile_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(tmp_path / "nowhere", tmp_path / "out", profile_file) == 2
    assert f"{tmp_path / 'nowhere'} does not exist" in capsys.readouterr().err
    write_segment(tmp_path / "log" / "s.jsonl.open", ["{}"])
    assert run(tmp_path / "log", tmp_path / "out", profile_file) == 2
    assert "no closed segment" in capsys.readouterr().err


def test_missing_or_foreign_profile_exits_2(
    log: Log, profile_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_segment(tmp_path / "log" / "s.jsonl", log.predictions[:3])
    missing = tmp_path / "models" / "reference_profile.json"
    contract = profile_file.parent / "contract.json"
    args = ["report", "--log", str(tmp_path / "log"), "--out", str(tmp_path / "out")]
    args += ["--params", str(PARAMS_FILE)]
    code = monitor_cli.main([*args, "--profile", str(missing), "--contract", str(contract)])
    assert code == 2 and f"reference profile {missing} does not exist" in capsys.readouterr().err
    profile = ReferenceProfile.load(profile_file)
    foreign = ReferenceProfile(
        profile.rows, {"colour": next(iter(profile.features.values()))}, profile.score
    )
    foreign.save(missing)
    code = monitor_cli.main([*args, "--profile", str(missing), "--contract", str(contract)])
    assert code == 2 and "['colour']" in capsys.readouterr().err


def test_versions_are_listed_in_numeric_order(
    adult: list[Row], profile_file: Path, tmp_path: Path
) -> None:
    row = adult[PROFILE_ROWS]
    events = [prediction(row, DAY0, f"r{v}", 0, v) for v in ("10", "9", "canary")]
    write_segment(tmp_path / "log" / "s.jsonl", events)
    assert run(tmp_path / "log", tmp_path / "out", profile_file) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [m["model_version"] for m in summary["models"]] == ["canary", "9", "10"]
