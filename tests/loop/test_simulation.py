"""The whole loop, end to end: `tabml-loop simulate --quick` on a scratch clone, a real
`tabml-serve` with the prediction log on, real retrains, gate, canary and promotion."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tests.support.project import REPO_ROOT, command_env

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def simulation(tmp_path_factory: pytest.TempPathFactory, pipeline_outputs: Path) -> Path:
    out = tmp_path_factory.mktemp("simulation")
    result = subprocess.run(
        [sys.executable, "-m", "tabml.loop.cli", "simulate", "--quick", "--out", str(out)],
        cwd=REPO_ROOT,
        env=command_env(),
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    (out / "stdout.log").write_text(result.stdout + result.stderr)
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return out


def summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def test_the_shift_is_detected_retrained_gated_canaried_and_promoted(simulation: Path) -> None:
    result = summary(simulation)
    shift = result["shift_step"]
    assert result["drift_detected_at_step"] == shift  # the first week of the shift
    (good, *_) = result["retrains"]
    assert "drift" in good["trigger"] and good["gate"] == "passed"
    assert result["promoted_versions"] == [good["version"]]
    assert result["final_version"] == good["version"] != result["initial_version"]


def test_accuracy_recovers_and_beats_the_old_champion_on_the_shifted_traffic(
    simulation: Path,
) -> None:
    result = summary(simulation)
    before, during = (
        result["realized_accuracy_before_shift"],
        result["realized_accuracy_during_shift"],
    )
    after = result["realized_accuracy_after_promotion"]
    assert during < before - 0.03  # the shift hurt the champion
    assert after >= before - 0.02  # the stated margin: back within two points
    old = result["old_champion_accuracy_on_shifted_traffic"]
    new = result["new_champion_accuracy_on_shifted_traffic"]
    assert new > old + 0.1


def test_a_deliberately_worse_retrain_is_rejected_and_never_serves(simulation: Path) -> None:
    result = summary(simulation)
    bad = result["retrains"][-1]
    assert bad["gate"] == "failed" and bad["version"] in result["rejected_versions"]
    timeline = json.loads((simulation / "timeline.json").read_text())
    assert all(bad["version"] not in entry["served"] for entry in timeline)


def test_no_request_failed_and_the_timeline_is_plotted(simulation: Path) -> None:
    result = summary(simulation)
    assert result["failed_requests"] == 0 and result["requests"] > 0
    assert (simulation / "timeline.png").stat().st_size > 10_000
    # Every retrain is an ordinary commit in the scratch clone, with the trigger in its message.
    log = subprocess.run(
        ["git", "log", "--format=%s"], cwd=simulation / "repo", capture_output=True, text=True
    ).stdout
    assert sum(line.startswith("Retrain (tabml-loop)") for line in log.splitlines()) == len(
        result["retrains"]
    )
