"""Schemathesis fuzzes a real `tabml-serve` from the service's own OpenAPI document.

Every check runs (`--checks all`): no 5xx; status codes, content types, headers and bodies as
documented; schema-valid requests accepted and schema-violating ones rejected; undocumented
methods answered 405 with `Allow`. The two departures from schemathesis's defaults are in
tests/serving/schemathesis.toml, each with its reason. The seed is fixed and the example
database off, so every run sends the same cases and a failure reproduces.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from tests.support.project import REPO_ROOT

pytestmark = pytest.mark.slow

CONFIG = Path(__file__).with_name("schemathesis.toml")
# Per operation and phase: about 2,850 cases over the 17 operations, ~60 s on two cores.
MAX_EXAMPLES = 120
SEED = 20260611


def schemathesis_cli() -> Path:
    """The CLI from the dev extra; skipped only while requirements/dev.lock predates it."""
    cli = Path(sys.executable).with_name("schemathesis")
    if not cli.exists():
        cli = Path(shutil.which("schemathesis") or "schemathesis")
    if not cli.exists():
        if "\nschemathesis==" in (REPO_ROOT / "requirements" / "dev.lock").read_text():
            pytest.fail("schemathesis is not installed: scripts/install.sh installs dev.lock")
        pytest.skip("schemathesis is not in requirements/dev.lock yet (recompile it)")
    return cli


def test_fuzzed_service_conforms_to_its_openapi_document(
    workspace: Any, start_server: Any, tmp_path: Path, record_property: Any
) -> None:
    cli = schemathesis_cli()
    report = tmp_path / "report.json"
    command = [
        str(cli),
        "--config-file",
        str(CONFIG),
        "run",
        "--checks",
        "all",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        str(SEED),
        "--generation-database",
        "none",
        "--workers",
        "1",
        "--no-color",
        "--report",
        "json",
        "--report-json-path",
        str(report),
    ]
    # With an admin token, as in production; schemathesis gets it too (schemathesis.toml), so
    # POST /admin/reload is fuzzed with it (reloads) and without it (401).
    token = "fuzz-" + os.urandom(8).hex()
    with start_server(workspace, env={"TABML_ADMIN_TOKEN": token}) as server:
        result = subprocess.run(
            [*command, f"{server.url}/openapi.json"],
            cwd=tmp_path,
            env={**os.environ, "TABML_FUZZ_ADMIN_TOKEN": token},
            capture_output=True,
            text=True,
            timeout=600,
        )
    output = result.stdout[-30_000:] + result.stderr
    assert report.exists(), output
    summary = json.loads(report.read_text())
    cases = summary["test_cases"]["generated"]
    record_property("schemathesis_cases", cases)
    seconds = summary["running_time"]
    print(f"schemathesis: {cases} cases in {seconds:.0f} s, exit {result.returncode}")
    assert result.returncode == 0, output
    assert summary["operations"]["tested"] == summary["operations"]["total"] == 17
    # e.g. `unresolvable_reference`: parts of a schema that were never generated
    assert not any(summary["warnings"].values()), summary["warnings"]
    assert cases > 1000
