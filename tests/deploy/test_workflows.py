"""The GitHub Actions workflows and the pre-commit hooks: checked by the real tools, and tied to
the scripts .ci/run calls.

actionlint (requirements/dev.lock) checks the workflows: syntax, expressions, the inputs of
actions (ours in .github/actions too) and, when Debian's shellcheck is installed (.ci/run
installs it), every `run:` block. No forge is reachable from here, so the workflows never run
in this suite; what can drift is caught instead: a workflow calling a script that moved, a
script of .ci/run that no workflow calls, an action pinned by branch, a hook whose tool is
missing.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.support.project import REPO_ROOT

WORKFLOWS = sorted((REPO_ROOT / ".github" / "workflows").glob("*.yml"))
LOCAL_ACTIONS = sorted((REPO_ROOT / ".github" / "actions").glob("*/action.yml"))
CI_RUN = REPO_ROOT / ".ci" / "run"
PRE_COMMIT_CONFIG = REPO_ROOT / ".pre-commit-config.yaml"
# The project's scripts as commands name them.
SCRIPT = re.compile(r"(?<![\w/.])(?:\./)?((?:scripts|docker|\.ci)/[\w.-]+\.sh|\.ci/run)\b")
# Only for the air-gapped machine: on GitHub the real python:3.11-slim is pulled.
AIR_GAPPED_ONLY = {".ci/build-standin-base.sh"}
SHELLCHECK = shutil.which("shellcheck")


def venv_tool(name: str) -> Path:
    """A console script of this environment (next to the interpreter), else from PATH."""
    tool = Path(sys.executable).with_name(name)
    if tool.exists():
        return tool
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: scripts/install.sh installs requirements/dev.lock")
    return Path(found)


def actionlint(*args: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(venv_tool("actionlint")), "-oneline", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), path
    return data


def steps(document: dict[str, Any]) -> list[dict[str, Any]]:
    """Every step of a workflow's jobs, or of a composite action."""
    if "runs" in document:
        return list(document["runs"].get("steps", []))
    return [step for job in document["jobs"].values() for step in job.get("steps", [])]


def used_local_actions(step_list: list[dict[str, Any]]) -> list[Path]:
    uses = [s["uses"] for s in step_list if str(s.get("uses", "")).startswith("./")]
    return [REPO_ROOT / u / "action.yml" for u in uses]


def commands(step_list: list[dict[str, Any]]) -> str:
    """The shell of these steps, and of the local actions they use."""
    text = "\n".join(str(s["run"]) for s in step_list if "run" in s)
    for action in used_local_actions(step_list):
        text += "\n" + commands(steps(load(action)))
    return text


def scripts_in(text: str) -> set[str]:
    return {match.group(1) for match in SCRIPT.finditer(text)}


# --- actionlint -------------------------------------------------------------------------------


def test_workflows_pass_actionlint() -> None:
    assert WORKFLOWS, "no workflows in .github/workflows"
    result = actionlint(*(str(p.relative_to(REPO_ROOT)) for p in WORKFLOWS))
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr
    if SHELLCHECK is None:
        pytest.skip(
            "passed without shellcheck: `run:` blocks unchecked (apt-get install shellcheck)"
        )


def test_actionlint_reports_a_broken_workflow(tmp_path: Path) -> None:
    """The check above can fail: a wrong input of our own action, an injectable expression and
    (with shellcheck) an unquoted variable are each reported."""
    shutil.copytree(REPO_ROOT / ".github" / "actions", tmp_path / ".github" / "actions")
    workflow = tmp_path / ".github" / "workflows" / "broken.yml"
    workflow.parent.mkdir()
    workflow.write_text(
        "on: pull_request\n"
        "jobs:\n"
        "  build:\n"
        "    runs-on: ubuntu-24.04\n"
        "    steps:\n"
        "      - uses: actions/checkout@v5\n"
        "      - uses: ./.github/actions/install\n"
        "        with:\n"
        '          dvc_cache: "true"\n'
        "      - run: echo ${{ github.head_ref }} $HOME/x\n"
    )
    # actionlint resolves ./ actions against the repository root, found by its .git.
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    result = actionlint(str(workflow.relative_to(tmp_path)), cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert 'input "dvc_cache" is not defined in action "Install"' in result.stdout
    assert '"github.head_ref" is potentially untrusted' in result.stdout
    if SHELLCHECK is not None:
        assert "SC2086" in result.stdout, result.stdout


@pytest.mark.skipif(SHELLCHECK is None, reason="shellcheck not installed")
def test_shell_of_local_actions_passes_shellcheck(tmp_path: Path) -> None:
    """actionlint checks `run:` blocks of workflows only; these are the composite actions'."""
    assert SHELLCHECK is not None
    for action in LOCAL_ACTIONS:
        for index, step in enumerate(steps(load(action))):
            if "run" not in step:
                continue
            assert step.get("shell") == "bash", f"{action}: step {index} needs `shell: bash`"
            script = tmp_path / f"{action.parent.name}-{index}.sh"
            script.write_text("#!/usr/bin/env bash\nset -eo pipefail\n" + step["run"])
            result = subprocess.run(
                [SHELLCHECK, str(script)], capture_output=True, text=True, check=False
            )
            assert result.returncode == 0, f"{action} step {index}:\n{result.stdout}"


# --- the same scripts as .ci/run --------------------------------------------------------------


def test_every_script_the_workflows_call_exists_and_is_executable() -> None:
    called = set()
    for path in [*WORKFLOWS, *LOCAL_ACTIONS]:
        called |= scripts_in(commands(steps(load(path))))
    assert called, "the workflows call none of the project's scripts"
    for script in sorted(called):
        assert os.access(REPO_ROOT / script, os.X_OK), f"{script} is missing or not executable"


def test_workflows_call_what_ci_run_calls() -> None:
    ci_run = scripts_in(CI_RUN.read_text())
    assert {"scripts/install.sh", ".ci/engine.sh", ".ci/build-standin-base.sh"} <= ci_run
    ci = load(REPO_ROOT / ".github" / "workflows" / "ci.yml")
    called = set()
    for name, job in ci["jobs"].items():
        job_commands = commands(job["steps"])
        assert "scripts/install.sh" in job_commands, f"ci.yml job {name} does not install"
        called |= scripts_in(job_commands)
    assert ci_run - AIR_GAPPED_ONLY <= called, (
        f".ci/run calls {sorted(ci_run - AIR_GAPPED_ONLY - called)}, no ci.yml job does"
    )
    # .ci/run's test command, split over the jobs: the unit tests, the rest of the suite, and
    # the container tests on the image the job built with docker/build-image.sh.
    jobs = {name: commands(job["steps"]) for name, job in ci["jobs"].items()}
    assert any("pytest tests/unit" in c for c in jobs.values())
    assert any("pytest --ignore=tests/container" in c for c in jobs.values())
    image_job = next(c for c in jobs.values() if "pytest tests/container" in c)
    assert ".ci/engine.sh start" in image_job and "docker/build-image.sh" in image_job
    assert "pre-commit run --all-files" in jobs["lint"]


def test_model_workflow_retrains_and_reports_against_the_base_branch() -> None:
    model = load(REPO_ROOT / ".github" / "workflows" / "model.yml")
    # PyYAML reads the key `on` as True (YAML 1.1).
    trigger = model[True]["pull_request"]["paths"]
    assert set(trigger) == {
        "conf/**",
        "data.dvc",
        "dvc.yaml",
        "params.yaml",
        "reference/**",
        "src/**",
    }
    (job,) = model["jobs"].values()
    checkout = next(
        s for s in job["steps"] if str(s.get("uses", "")).startswith("actions/checkout")
    )
    assert checkout["with"]["fetch-depth"] == 0
    shell = commands(job["steps"])
    assert "scripts/install.sh" in shell
    assert "src/train.py --no-push" in shell
    for command in ("dvc metrics diff", "dvc params diff"):
        assert re.search(rf"{command} \"\$base\" --md", shell), command
    assert "GITHUB_STEP_SUMMARY" in shell and ": gate (passed|failed)" in shell


def test_actions_are_pinned_by_major_version() -> None:
    for path in [*WORKFLOWS, *LOCAL_ACTIONS]:
        for step in steps(load(path)):
            uses = str(step.get("uses", ""))
            if uses and not uses.startswith("./"):
                assert re.fullmatch(r"[\w.-]+/[\w.-]+@v\d+", uses), f"{path.name}: {uses}"


# --- pre-commit --------------------------------------------------------------------------------


def test_pre_commit_config_is_valid_and_needs_no_network() -> None:
    result = subprocess.run(
        [str(venv_tool("pre-commit")), "validate-config", str(PRE_COMMIT_CONFIG)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    config = load(PRE_COMMIT_CONFIG)
    hooks = [hook for repo in config["repos"] for hook in repo["hooks"]]
    assert {repo["repo"] for repo in config["repos"]} == {"local"}
    assert {hook["language"] for hook in hooks} == {"system"}
    for hook in hooks:
        program = hook["entry"].split()[0]
        if program.startswith(".venv/bin/"):
            assert venv_tool(Path(program).name).exists(), hook["id"]
        else:
            assert program == "bash", f"{hook['id']}: {program} is neither in .venv nor bash"
    ids = {hook["id"] for hook in hooks}
    assert {"ruff", "ruff-format", "hadolint", "shellcheck", "actionlint", "mypy"} <= ids


def test_pre_commit_hooks_pass_on_the_ci_files(tmp_path: Path) -> None:
    """The hooks, run for real on the files this suite owns (the CI lint job runs them on all)."""
    files = [*WORKFLOWS, *LOCAL_ACTIONS, CI_RUN, *(REPO_ROOT / ".ci").glob("*.sh")]
    files += [*(REPO_ROOT / "docker").glob("*.sh"), *(REPO_ROOT / "scripts").glob("*.sh")]
    files += [REPO_ROOT / "Dockerfile", Path(__file__)]
    result = subprocess.run(
        [str(venv_tool("pre-commit")), "run", "--files", *map(str, files)],
        cwd=REPO_ROOT,
        # pre-commit keeps a small state database; not in the user's cache during tests.
        env={**os.environ, "PRE_COMMIT_HOME": str(tmp_path / "pre-commit")},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for hook in ("ruff check", "hadolint", "shellcheck", "actionlint"):
        assert re.search(rf"^{hook}\.+Passed$", result.stdout, re.M), result.stdout


def test_mypy_hook_passes_on_src(tmp_path: Path) -> None:
    """The type check the CI lint job runs, through its hook, so `.ci/run` (the README's test
    command) enforces it too: one type error in src/ fails the suite."""
    result = subprocess.run(
        [str(venv_tool("pre-commit")), "run", "mypy", "--all-files"],
        cwd=REPO_ROOT,
        env={**os.environ, "PRE_COMMIT_HOME": str(tmp_path / "pre-commit")},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"^mypy src\.+Passed$", result.stdout, re.M), result.stdout
