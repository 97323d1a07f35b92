"""A loop killed after any step is finished by the next run, and the service never stops
answering: real `tabml-loop run` processes killed with SIGKILL right after they report a step."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from tests.support.project import REPO_ROOT

from tabml.loop.simulate import Plan, Scenario, scenario, send_step

pytestmark = pytest.mark.slow

#: Lines the loop prints right after a step's effect is durable, in the order they come.
STEPS = ("data version:", "commit:", "canary:", "wrote bundle")


def run_until(world: Scenario, marker: str) -> list[str]:
    """Start `tabml-loop run`; SIGKILL its process group as soon as it prints `marker`."""
    process = subprocess.Popen(
        world.loop_command(),
        cwd=world.repo,
        env=world.env | {"PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    seen = []
    assert process.stdout is not None
    for line in process.stdout:
        seen.append(line.rstrip())
        if line.strip().startswith(marker):
            os.killpg(process.pid, signal.SIGKILL)
            break
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "\n".join(seen)
    return seen


def still_answering(world: Scenario) -> None:
    record = world.source.step(1, 0.0)[0].record
    status, _, body = world.client.post("/predict", record, {})
    assert status == 200 and body["model_version"].startswith("v"), (status, body)


def test_a_loop_killed_after_each_step_is_finished_by_the_next(tmp_path: Path) -> None:
    plan = Plan.quick()
    with scenario(REPO_ROOT, tmp_path / "sim", plan, seed=7) as world:
        send_step(world.client, world.source, plan, 0, 0.5, world.contract)  # a drifted week
        time.sleep(2.5)  # the service closes its log segment
        for marker in STEPS:
            run_until(world, marker)
            still_answering(world)
        final = world.loop()
        still_answering(world)

        # The interrupted iteration completed: one retrain commit, one batch, v2 in canary
        # (the last run found the bundle not yet loaded, reloaded, and started comparing).
        log = subprocess.run(
            ["git", "log", "--format=%s"], cwd=world.repo, capture_output=True, text=True
        ).stdout.splitlines()
        assert sum(line.startswith("Retrain (tabml-loop)") for line in log) == 1, log
        assert len(list((world.repo / "data" / "batches").glob("*.data"))) == 1
        assert any(line.startswith("reload:") for line in final), final
        assert any(line.startswith("compare v2 vs v1: collect") for line in final), final
        served = send_step(world.client, world.source, plan, 1, 0.5, world.contract)[0].served
        assert set(served) == {"v1", "v2"}, served
        assert world.client.failed == 0
