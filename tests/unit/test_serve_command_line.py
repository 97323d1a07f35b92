"""`tabml-serve`'s command line (`tabml.serving.cli`): uvicorn's options, and one option per
serving setting generated from `ServingSettings`; the command line overrides the environment,
and what it sets reaches the uvicorn workers, which read only the environment. The same
settings in a real server: tests/serving."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tabml.serving.cli import build_parser, parse_command_line
from tabml.serving.settings import ServingSettings

# The options people, scripts and manifests use (docs/serving.md, docs/monitoring.md, Dockerfile,
# deploy/, bench/): their names are the interface and must keep working.
OPTIONS = [
    "--host",
    "--port",
    "--workers",
    "--loop",
    "--timeout-keep-alive",
    "--limit-concurrency",
    "--timeout-graceful-shutdown",
    "--model-dir",
    "--dvc-lock",
    "--metrics-file",
    "--max-batch",
    "--threshold",
    "--model-name",
    "--model-version",
    "--allow-md5-mismatch",
    "--log-level",
    "--bundle",
    "--challenger",
    "--challenger-dvc-lock",
    "--route",
    "--prediction-log-dir",
    "--prediction-log-sample",
    "--prediction-log-queue",
    "--prediction-log-segment-bytes",
    "--prediction-log-segment-seconds",
    "--feedback-index-size",
    "--no-live-monitoring",
]


def variable(field: str) -> str:
    return f"TABML_{field.upper()}"


@pytest.fixture(autouse=True)
def clean_environment() -> Iterator[None]:
    """No TABML_* variable from the caller; the environment is restored after, including the
    variables the command line wrote (monkeypatch restores only those it set itself)."""
    saved = dict(os.environ)
    for name in [n for n in os.environ if n.startswith("TABML_")]:
        del os.environ[name]
    yield
    os.environ.clear()
    os.environ.update(saved)


def help_text() -> str:
    return " ".join(build_parser()[0].format_help().split())


def test_every_option_in_use_is_listed_and_accepted() -> None:
    text = help_text()
    for option in OPTIONS:
        assert f"[{option}" in text, option
    parser, _ = build_parser()
    args = parser.parse_args(["--route", "shadow", "--no-live-monitoring", "--port", "8001"])
    assert (args.route, args.live_monitoring, args.port) == ("shadow", False, 8001)


def test_each_setting_is_an_option_named_after_it_with_its_variable() -> None:
    text = help_text()
    for field, info in ServingSettings.model_fields.items():
        if field == "admin_token":
            continue
        option = "--" + field.replace("_", "-")
        if info.default is True:  # on by default: the option turns it off
            option = "--no-" + field.replace("_", "-")
        assert f"{option} " in text, field
        assert f"[env: {variable(field)}]" in text, field
        assert info.description and " ".join(info.description.split()) in text, field


def test_command_line_overrides_the_environment_and_reaches_the_workers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TABML_MAX_BATCH", "5")
    monkeypatch.setenv("TABML_THRESHOLD", "0.3")
    monkeypatch.setenv("TABML_LOG_LEVEL", "DEBUG")  # not on the command line: stays
    argv = ["--workers", "2", "--port", "9001", "--max-batch", "7", "--model-dir", "elsewhere"]
    argv += ["--threshold", "null", "--allow-md5-mismatch", "--no-live-monitoring"]
    argv += ["--prediction-log-dir", "log", "--prediction-log-sample", "0.25"]
    args, settings = parse_command_line(argv)
    assert (args.workers, args.port, args.host) == (2, 9001, "127.0.0.1")
    assert settings.max_batch == 7 and settings.threshold is None
    assert settings.model_dir == Path("elsewhere") and settings.prediction_log_dir == Path("log")
    assert settings.allow_md5_mismatch and not settings.live_monitoring
    assert settings.prediction_log_sample == 0.25 and settings.log_level == "DEBUG"
    # What every worker builds from the environment is what this process validated.
    assert ServingSettings() == settings
    # uvicorn's options are the supervisor's, never settings.
    assert not {"TABML_WORKERS", "TABML_PORT", "TABML_HOST"} & set(os.environ)


def test_without_options_the_environment_and_defaults_decide(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TABML_MODEL_DIR", "/srv/tabml/models")
    monkeypatch.setenv("TABML_ALLOW_MD5_MISMATCH", "1")
    args, settings = parse_command_line([])
    assert (args.host, args.port, args.workers, args.loop) == ("127.0.0.1", 8000, 1, "auto")
    assert settings.model_dir == Path("/srv/tabml/models") and settings.allow_md5_mismatch
    assert settings.max_batch == 10_000 and settings.live_monitoring
    assert settings.metrics_file == Path("reports/metrics.json")
    assert settings == ServingSettings()


def test_admin_token_is_read_from_the_environment_only(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert "--admin-token" not in help_text()
    with pytest.raises(SystemExit) as exited:
        parse_command_line(["--admin-token", "s3cret"])
    assert exited.value.code == 2
    assert "--admin-token is not an option: set TABML_ADMIN_TOKEN" in capsys.readouterr().err
    monkeypatch.setenv("TABML_ADMIN_TOKEN", "s3cret")
    _, settings = parse_command_line([])
    assert settings.admin_token is not None and settings.admin_token.get_secret_value() == "s3cret"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--max-batch", "many"], "max_batch"),
        (["--route", "sideways"], "route"),
        (["--prediction-log-sample", "2"], "prediction_log_sample"),
        (["--workers", "0"], "--workers must be at least 1"),
    ],
)
def test_a_bad_option_stops_before_loading_anything(argv: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tabml.serving.cli", "--model-dir", "/nonexistent", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "/nonexistent" not in result.stderr
