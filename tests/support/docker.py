"""A real Docker engine for the container tests and the container benchmark: the docker CLI, why
no engine can be used (when none answers `docker info`), the base image to build on, the image
build as users run it (`docker/build-image.sh`), and a container started on a loopback port.

TABML_BASE_IMAGE picks the base; by default `python:3.11-slim`, or, when the engine lacks it but
has the local stand-in made by `.ci/build-standin-base.sh` (where no registry is reachable), that
stand-in.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from tests.support.processes import free_port
from tests.support.project import REPO_ROOT

BUILD_SCRIPT = REPO_ROOT / "docker" / "build-image.sh"
OFFICIAL_BASE = "python:3.11-slim"
STANDIN_BASE = "localhost/tabml-python-standin:3.11-slim"  # .ci/build-standin-base.sh


def docker_cli() -> str | None:
    """The docker CLI the build helper uses as well."""
    if os.environ.get("DOCKER"):
        return os.environ["DOCKER"]
    if os.access("/usr/bin/docker", os.X_OK):
        return "/usr/bin/docker"
    return shutil.which("docker")


DOCKER = docker_cli()


def engine_problem() -> str | None:
    """Why no Docker engine can be used, or None when `docker info` answers."""
    if DOCKER is None:
        return "no docker CLI installed (.ci/engine.sh start installs docker.io and starts it)"
    try:
        result = subprocess.run([DOCKER, "info"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`docker info` failed: {exc}"
    if result.returncode != 0:
        lines = [line.strip() for line in (result.stderr + result.stdout).splitlines()]
        errors = [line for line in lines if re.search(r"cannot connect|error", line, re.I)]
        reason = next((e for e in errors if "pretty printing" not in e), "no details")
        return f"no Docker engine answers `docker info` ({reason}); start: .ci/engine.sh start"
    return None


ENGINE_PROBLEM = engine_problem()


def image_present(ref: str) -> bool:
    assert DOCKER is not None
    inspect = subprocess.run([DOCKER, "image", "inspect", ref], capture_output=True, timeout=20)
    return inspect.returncode == 0


def base_image() -> str:
    """TABML_BASE_IMAGE; else the official base, or the stand-in when only it is in the engine.

    So no setting is needed on an air-gapped machine where CI built the stand-in, and the
    stand-in never takes the place of an official image that is present or can be pulled.
    """
    if os.environ.get("TABML_BASE_IMAGE"):
        return os.environ["TABML_BASE_IMAGE"]
    if ENGINE_PROBLEM is None and not image_present(OFFICIAL_BASE) and image_present(STANDIN_BASE):
        return STANDIN_BASE
    return OFFICIAL_BASE


BASE_IMAGE = base_image()


def docker(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    assert DOCKER is not None
    result = subprocess.run([DOCKER, *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(
            f"docker {' '.join(args)} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
        )
    return result


def build_image(context: Path, tag: str, *options: str) -> subprocess.CompletedProcess:
    """docker/build-image.sh, output of docker build included (stdout and stderr merged)."""
    env = dict(os.environ, TABML_BASE_IMAGE=BASE_IMAGE)
    if DOCKER:
        env["DOCKER"] = DOCKER
    return subprocess.run(
        ["bash", str(BUILD_SCRIPT), "--context", str(context), "-t", tag, *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        timeout=1500,
    )


def remove_failed_build(output: str) -> None:
    """The classic builder keeps the last good step of a failed build as an untagged image."""
    steps = re.findall(r"^ ---> ([0-9a-f]{12})$", output, flags=re.MULTILINE)
    if steps:
        tags = docker("image", "inspect", "-f", "{{json .RepoTags}}", steps[-1], check=False)
        if tags.returncode == 0 and json.loads(tags.stdout) in ([], None):
            docker("image", "rm", steps[-1], check=False)


@dataclass
class Container:
    id: str
    url: str
    run_to_ready_s: float  # from calling `docker run` (creating the container included)
    start_to_ready_s: float  # from the container's start (State.StartedAt)


def start_container(
    tag: str, *, env: dict[str, str] | None = None, container_port: int = 8000, timeout: float = 60
) -> Container:
    """`docker run` on a free loopback port; returns once /ready answers 200."""
    port = free_port()
    name = f"tabml-test-{uuid.uuid4().hex[:8]}"
    options = [f"--env={key}={value}" for key, value in (env or {}).items()]
    started = time.monotonic()
    cid = docker(
        "run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:{container_port}", *options, tag
    ).stdout.strip()
    url = f"http://127.0.0.1:{port}"
    while True:
        try:
            with urllib.request.urlopen(f"{url}/ready", timeout=1) as response:
                if response.status == 200:
                    ready, run_to_ready = time.time(), time.monotonic() - started
                    return Container(cid, url, run_to_ready, ready - started_at(cid))
        except (OSError, urllib.error.URLError):
            pass
        state = docker("inspect", "-f", "{{.State.Status}}", cid, check=False).stdout.strip()
        if state not in ("created", "running") or time.monotonic() - started > timeout:
            logs = docker("logs", cid, check=False)
            docker("rm", "-f", cid, check=False)
            raise AssertionError(
                f"container of {tag} not ready after {time.monotonic() - started:.1f}s "
                f"(state {state}); logs:\n{logs.stdout}\n{logs.stderr}"
            )
        time.sleep(0.05)


def started_at(cid: str) -> float:
    """The container's start as a Unix time (docker prints RFC 3339 with nanoseconds, UTC)."""
    text = docker("inspect", "-f", "{{.State.StartedAt}}", cid).stdout.strip()
    match = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?Z", text)
    assert match, f"unexpected StartedAt {text!r}"
    whole = datetime.strptime(match.group(1), "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    return whole.timestamp() + float(f"0.{match.group(2) or 0}")
