"""`tabml-serve`: start the prediction service on the trained `models/` with uvicorn.

    tabml-serve                         # http://127.0.0.1:8000, one worker
    tabml-serve --host 0.0.0.0 --port 8080 --workers 4
    tabml-serve --prediction-log-dir /var/log/tabml   # also log every prediction
    tabml-serve --bundle /srv/tabml/bundle --route canary:0.1   # champion + challenger

The server options (--host to --timeout-graceful-shutdown) are uvicorn's. Every other option is a
setting of `tabml.serving.settings.ServingSettings`, also read from the environment variable in
brackets; an option given here overrides the variable, and is passed on to the workers.
Champion and challenger: docs/serving.md (reload: SIGHUP, or POST /admin/reload with
TABML_ADMIN_TOKEN, which is never an option: a command line is visible to every user of the
machine). Prediction log and live monitoring: docs/monitoring.md.
"""

from __future__ import annotations

import argparse
import atexit
import logging
import logging.config
import os
import shutil
import sys
import tempfile

from pydantic import ValidationError
from pydantic_settings import CliSettingsSource

from tabml.serving.settings import ServingSettings
from tabml.serving.worker import freeze_loaded_objects, prepare_process

log = logging.getLogger("tabml.serving")


def build_parser() -> tuple[argparse.ArgumentParser, CliSettingsSource[argparse.ArgumentParser]]:
    """The command line: uvicorn's options, then one option per serving setting, generated from
    `ServingSettings` (its field names in kebab case, its descriptions and defaults)."""
    parser = argparse.ArgumentParser(
        prog="tabml-serve",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="uvicorn worker processes (default 1; each loads the model)",
    )
    parser.add_argument(
        "--loop",
        choices=["auto", "uvloop", "asyncio"],
        default="auto",
        help="event loop (default: uvloop if installed)",
    )
    parser.add_argument(
        "--timeout-keep-alive",
        type=int,
        default=5,
        help="seconds an idle keep-alive connection stays open (default 5)",
    )
    parser.add_argument(
        "--limit-concurrency",
        type=int,
        help="most connections and tasks at once per worker; beyond it requests get a fast 503 "
        "instead of queueing (default: unlimited)",
    )
    parser.add_argument(
        "--timeout-graceful-shutdown",
        type=int,
        default=30,
        help="on SIGTERM, seconds to let in-flight requests finish before closing (default 30)",
    )
    settings: CliSettingsSource[argparse.ArgumentParser] = CliSettingsSource(
        ServingSettings,
        root_parser=parser,
        cli_kebab_case=True,
        # --allow-md5-mismatch (default off) and --no-live-monitoring (default on)
        cli_implicit_flags="toggle",
        cli_show_env_vars=True,
        cli_hide_none_type=True,
        cli_avoid_json=True,
    )
    return parser, settings


def parse_command_line(argv: list[str] | None) -> tuple[argparse.Namespace, ServingSettings]:
    """uvicorn's options, and the settings: command line over environment over defaults.

    The settings given on the command line are then written to the environment variables they
    override, which the uvicorn workers build their settings from (`--workers N`): every worker
    serves with what this process validated. Raises pydantic's ValidationError.
    """
    parser, cli = build_parser()
    args = parser.parse_args(argv)
    if "admin_token" in vars(args):  # hidden from --help, but pydantic-settings still parses it
        parser.error(
            "--admin-token is not an option: set TABML_ADMIN_TOKEN (a command line is visible "
            "to every user of the machine)"
        )
    settings = ServingSettings(_cli_settings_source=cli(parsed_args=args))
    variables = cli.env_var_names
    for name, value in cli.env_vars.items():
        if name in variables:  # not one of uvicorn's options
            (variable,) = variables[name]
            os.environ[variable] = str(value).lower() if isinstance(value, bool) else str(value)
    return args, settings


def _share_metrics_across_workers() -> None:
    """prometheus-client multiprocess mode: workers write samples to one directory."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return
    directory = tempfile.mkdtemp(prefix="tabml-metrics-")
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory


def main(argv: list[str] | None = None) -> int:
    prepare_process()
    try:
        args, settings = parse_command_line(argv)
    except ValidationError as exc:
        print(f"error: invalid setting: {exc}", file=sys.stderr)
        return 2
    if args.workers < 1:
        print("error: --workers must be at least 1", file=sys.stderr)
        return 2

    import uvicorn

    from tabml.errors import TabmlError
    from tabml.serving.logs import logging_config
    from tabml.serving.protocol import best_protocol
    from tabml.serving.provenance import ArtifactIntegrityError

    log_config = logging_config(settings.log_level)
    logging.config.dictConfig(log_config)
    common = {
        "host": args.host,
        "port": args.port,
        "log_config": log_config,
        "access_log": False,
        "http": best_protocol(),
        "loop": args.loop,
        "lifespan": "on",
        "timeout_keep_alive": args.timeout_keep_alive,
        "limit_concurrency": args.limit_concurrency,
        "timeout_graceful_shutdown": args.timeout_graceful_shutdown,
        "server_header": False,
    }
    try:
        if args.workers == 1:
            from tabml.serving.app import create_app

            app = create_app(settings)
            freeze_loaded_objects()
        else:  # check once here, with a clear message, before the workers load it again
            from tabml.serving.versions import ModelSources, load_served_models

            load_served_models(ModelSources.from_settings(settings), warm_up=False)
    except (TabmlError, ArtifactIntegrityError) as exc:
        log.error("cannot start: %s", exc)
        print(f"error: {exc}", file=sys.stderr)
        return 2

    if args.workers == 1:
        uvicorn.run(app, **common)
    else:
        from tabml.serving.supervisor import run_workers

        _share_metrics_across_workers()
        run_workers(args.workers, **common)  # uvicorn's supervisor; SIGHUP reloads every worker
    return 0


if __name__ == "__main__":
    sys.exit(main())
